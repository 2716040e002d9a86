//! The refresh-token chains: one per connection from the token file, the remaining lines kept
//! as spares for chains that die (an `invalid_grant` ends a chain).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct ChainPool {
    total: usize,
    initial: Vec<String>,
    spares: Mutex<Vec<String>>,
}

impl ChainPool {
    /// Reads one token per line (blank lines and surrounding whitespace ignored); needs at least
    /// one per connection.
    pub fn load(path: &Path, connections: usize) -> Result<ChainPool, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let mut tokens: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if tokens.len() < connections {
            return Err(format!(
                "{} holds {} refresh tokens; {connections} connections need at least one each",
                path.display(),
                tokens.len()
            ));
        }
        let total = tokens.len();
        let mut spares = tokens.split_off(connections);
        // Spares are handed out from the end: keep the file's order.
        spares.reverse();
        Ok(ChainPool {
            total,
            initial: tokens,
            spares: Mutex::new(spares),
        })
    }

    /// No chains (`--get`).
    pub fn empty() -> ChainPool {
        ChainPool {
            total: 0,
            initial: Vec::new(),
            spares: Mutex::new(Vec::new()),
        }
    }

    /// Tokens read from the file.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connection `i`'s first token (empty without chains).
    pub fn first(&self, i: usize) -> String {
        self.initial.get(i).cloned().unwrap_or_default()
    }

    /// A fresh chain for a connection whose chain died.
    pub fn spare(&self) -> Option<String> {
        self.spares.lock().expect("spares lock poisoned").pop()
    }

    pub fn spares_left(&self) -> usize {
        self.spares.lock().expect("spares lock poisoned").len()
    }

    /// Writes the live chains' last tokens, then the unused spares, one per line.
    pub fn save(&self, path: &Path, live: &[String]) -> Result<(), String> {
        let spares = self.spares.lock().expect("spares lock poisoned");
        let mut out = Vec::with_capacity((live.len() + spares.len()) * 110);
        for token in live.iter().chain(spares.iter().rev()) {
            out.extend_from_slice(token.as_bytes());
            out.push(b'\n');
        }
        // Write next to the target and rename, so a crash never leaves a half-written file
        // (the target is often the --tokens file itself).
        let tmp = path.with_extension("tmp-refresh-bench");
        std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&out))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}
