//! The module layering written in `src/lib.rs` is true: no module of the library uses a module
//! of a higher layer, and every top-level module has a layer.
//!
//! The layers are read from the crate doc of `src/lib.rs`, between the lines
//! `<!-- layers -->` and `<!-- /layers -->`: one numbered line per layer, lowest first, each
//! naming its modules in backticks. Every file under `src/` (not `src/main.rs` or `src/bin/`,
//! which are binaries and use the library by its name) is scanned for `crate::<module>`
//! references, in `use` statements (grouped ones, `use crate::{a, b::c}`, included) and in
//! paths; comments, string literals and `#[cfg(test)]` modules are skipped (a test module may
//! use anything). A module may use its own layer's modules only when it is itself (its own
//! submodules), modules of a lower layer, and nothing above.
//!
//! A failing example, checked by `upward_use_is_reported` below: with the layers
//! `1. \`net\`` and `2. \`proxy\``, a file `src/net.rs` holding `use crate::proxy::Forward;`
//! fails the test with
//!
//! ```text
//! src/net.rs: module net (layer 1) uses module proxy (layer 2)
//! ```
//!
//! and a file `src/extra.rs` that no layer names fails it with
//! `src/extra.rs: module extra is in no layer of src/lib.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layer of each module, from the doc between the markers.
fn layers(lib_rs: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    let mut layer = 0;
    for line in lib_rs.lines() {
        let line = line.trim_start_matches("//!").trim();
        if line == "<!-- layers -->" {
            inside = true;
            continue;
        }
        if line == "<!-- /layers -->" {
            break;
        }
        if !inside || line.is_empty() {
            continue;
        }
        // "1. `net`, `config` — …": a new layer starts at a numbered line; its modules are the
        // backticked names before any dash.
        let Some((num, rest)) = line.split_once(". ") else {
            continue;
        };
        if num.parse::<usize>().is_err() {
            continue;
        }
        layer += 1;
        let names = rest.split(" — ").next().unwrap_or(rest);
        for name in names.split('`').skip(1).step_by(2) {
            out.insert(name.to_string(), layer);
        }
    }
    out
}

/// The source with comments and string/char literals blanked, so that only code remains.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if b[i] == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // r"…" or r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
            // a char literal ('x', '\n', '\u{..}'), not a lifetime
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().expect("i is on a char boundary");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The code without `#[cfg(test)] mod … { … }` blocks.
fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub(crate) mod ");
        match (is_mod, trimmed.find(['{', ';'])) {
            (true, Some(open)) if trimmed.as_bytes()[open] == b'{' => {
                let body = &trimmed[open..];
                let mut depth = 0usize;
                let mut end = body.len();
                for (k, c) in body.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &body[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// The top-level modules a piece of code names through `crate::`.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `$crate::` is fine, `mycrate::` is not ours
        }
        let tail = rest.trim_start();
        if let Some(group) = tail.strip_prefix('{') {
            // use crate::{a, b::c, d::{e, f}}: the first segment of each top-level item
            let mut depth = 0usize;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    if item_start {
                        word.push(c);
                    }
                    continue;
                }
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                    item_start = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ => {}
                }
            }
            if !word.is_empty() {
                out.push(word);
            }
        } else {
            let name: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs`).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Every violation in a set of files (path relative to `src/`, source).
fn violations(layers: &BTreeMap<String, usize>, files: &[(PathBuf, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, src) in files {
        let Some(module) = module_of(rel) else {
            continue;
        };
        let shown = Path::new("src").join(rel).display().to_string();
        let Some(&own) = layers.get(&module) else {
            out.push(format!(
                "{shown}: module {module} is in no layer of src/lib.rs"
            ));
            continue;
        };
        let code = without_test_modules(&code_only(src));
        let mut seen = Vec::new();
        for used in crate_refs(&code) {
            if used == module || matches!(used.as_str(), "self" | "super") || seen.contains(&used) {
                continue;
            }
            seen.push(used.clone());
            match layers.get(&used) {
                Some(&theirs) if theirs < own => {}
                Some(&theirs) => out.push(format!(
                    "{shown}: module {module} (layer {own}) uses module {used} (layer {theirs})"
                )),
                None if used.chars().next().is_some_and(|c| c.is_uppercase()) => {
                    // a crate-root re-export (`crate::RefreshGrantLayer`): resolved by name below
                }
                None => out.push(format!(
                    "{shown}: module {module} (layer {own}) uses module {used}, which is in no layer"
                )),
            }
        }
    }
    out
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let rel = path.strip_prefix(root).expect("under src/").to_path_buf();
        if rel == Path::new("bin") || rel == Path::new("main.rs") {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((rel, std::fs::read_to_string(&path).expect("a source file")));
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let layers = layers(&lib);
    assert!(
        layers.len() > 10,
        "the layer list between <!-- layers --> and <!-- /layers --> in src/lib.rs: {layers:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    files.sort();
    let found = violations(&layers, &files);
    assert!(
        found.is_empty(),
        "imports against the layering of src/lib.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn upward_use_is_reported() {
    let layers = layers(
        "//! <!-- layers -->\n//! 1. `net`\n//! 2. `proxy`, `layer`\n//! <!-- /layers -->\n",
    );
    assert_eq!(layers.len(), 3);
    let files = vec![
        (
            PathBuf::from("net.rs"),
            "use crate::proxy::Forward;\n".to_string(),
        ),
        (
            PathBuf::from("proxy/mod.rs"),
            "use crate::{net::Ip, layer::{A, B}};\n// crate::nothing\n\
             fn f() -> crate::proxy::X { \"crate::nothing\" }\n"
                .to_string(),
        ),
        (
            PathBuf::from("layer.rs"),
            "#[cfg(test)]\nmod tests {\n    use crate::anything;\n}\n".to_string(),
        ),
        (PathBuf::from("extra.rs"), String::new()),
    ];
    assert_eq!(
        violations(&layers, &files),
        [
            "src/net.rs: module net (layer 1) uses module proxy (layer 2)",
            "src/proxy/mod.rs: module proxy (layer 2) uses module layer (layer 2)",
            "src/extra.rs: module extra is in no layer of src/lib.rs",
        ]
    );
}

#[test]
fn grouped_and_nested_paths_are_seen() {
    let code = code_only(
        "use crate::{a, b::c, d::{e, f}};\nlet x = crate::g::h(); // crate::i\nlet s = r#\"crate::j\"#; let c = '\"';\nlet y = crate::k;",
    );
    assert_eq!(crate_refs(&code), ["a", "b", "d", "g", "k"]);
}
