//! The documentation's links hold: every relative link in the README, `docs/`, `bench/` and
//! `deploy/` pages names a file that exists, and every `#anchor` a heading of that page (as
//! GitHub makes anchors of headings). A page moved or a heading renamed fails here, not in a
//! reader's browser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pages checked: the README and every Markdown file under docs/, bench/ and deploy/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    for dir in ["docs", "bench", "deploy"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "md") {
                    pages.push(p);
                }
            }
        }
    }
    pages
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped (but `-` and `_`), spaces
/// made `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings (outside fenced code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            out.insert(slug(&line[hashes + 1..]));
        }
    }
    out
}

/// The targets of `[text](target)` links outside fenced code blocks and inline code.
fn links(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code spans: `[a](b)` inside backticks is not a link.
        let mut plain = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                plain.push(c);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// What is wrong with the links of `page`.
fn broken(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).expect("read page");
    let mut wrong = Vec::new();
    for target in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (target.as_str(), None),
        };
        let file_path = if file.is_empty() {
            page.to_path_buf()
        } else {
            page.parent().expect("a page has a directory").join(file)
        };
        if !file_path.exists() {
            wrong.push(format!("{target}: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            let linked = std::fs::read_to_string(&file_path).unwrap_or_default();
            if !anchors(&linked).contains(anchor) {
                wrong.push(format!("{target}: no such heading"));
            }
        }
    }
    wrong
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut report = Vec::new();
    for page in pages() {
        for wrong in broken(&page) {
            let name = page.strip_prefix(root()).unwrap_or(&page).display();
            report.push(format!("{name}: {wrong}"));
        }
    }
    assert!(report.is_empty(), "broken links:\n{}", report.join("\n"));
}

/// The checker finds what it is for: a missing file and a missing heading.
#[test]
fn the_checker_reports_a_missing_file_and_a_missing_heading() {
    let dir = std::env::temp_dir().join(format!("docs-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("other.md"),
        "# Other page\n## A `[server]` table\n",
    )
    .expect("write");
    let page = dir.join("page.md");
    std::fs::write(
        &page,
        "# Page\nSee [ok](other.md#a-server-table), [self](#page), [gone](missing.md),\n\
         [typo](other.md#nope), `[code](not-a-link.md)` and [web](https://example.com).\n\
         ```\n[fenced](also-not.md)\n```\n",
    )
    .expect("write");
    assert_eq!(
        broken(&page),
        [
            "missing.md: no such file".to_owned(),
            "other.md#nope: no such heading".to_owned()
        ]
    );
    assert_eq!(
        slug("Key rotation and reload (SIGHUP)"),
        "key-rotation-and-reload-sighup"
    );
    assert_eq!(slug("`[clients.<id>]`"), "clientsid");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
