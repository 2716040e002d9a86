//! OAuth scopes (RFC 6749 §3.3): space-delimited, case-sensitive strings.

/// Splits a scope string into its tokens, dropping empty ones and duplicates (first wins).
pub fn tokens(scope: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for t in scope.split(' ').filter(|t| !t.is_empty()) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// `requested` normalised (single spaces, no duplicates, request order kept) when every token
/// of it is in `granted`; `None` otherwise.
///
/// RFC 6749 §6: "The requested scope MUST NOT include any scope not originally granted by the
/// resource owner."
pub fn narrow(requested: &str, granted: &str) -> Option<String> {
    let granted = tokens(granted);
    let requested = tokens(requested);
    if requested.iter().all(|t| granted.contains(t)) {
        Some(requested.join(" "))
    } else {
        None
    }
}

/// Whether `token` is one of the scope's tokens.
pub fn contains(scope: &str, token: &str) -> bool {
    scope.split(' ').any(|t| t == token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_keeps_request_order_and_drops_duplicates() {
        assert_eq!(
            narrow("read profile", "openid profile read").as_deref(),
            Some("read profile")
        );
        assert_eq!(narrow("read  read ", "read").as_deref(), Some("read"));
        assert_eq!(narrow("", "read").as_deref(), Some(""));
    }

    #[test]
    fn widening_beyond_the_grant_is_refused() {
        assert_eq!(narrow("read write", "read"), None);
        assert_eq!(narrow("Read", "read"), None, "scopes are case-sensitive");
    }

    #[test]
    fn contains_matches_whole_tokens() {
        assert!(contains("openid profile", "openid"));
        assert!(!contains("openidx profile", "openid"));
    }
}
