//! Capture: reading an upstream token answer to open a token family. Pure: no I/O.
//!
//! When the upstream answers a grant for a handled client with a `refresh_token`, the proxy
//! needs the subject and the claims to carry into the tokens it will mint. In order:
//!
//! 1. the ID token's claims (OIDC Core §2), when the answer has one;
//! 2. the access token's claims, when it is a JWT (RFC 9068);
//! 3. the upstream's introspection answer about the access token (RFC 7662), which the caller
//!    fetches when the access token is opaque and the tokens name no subject (IdPs such as
//!    Curity issue opaque access tokens without `openid`) or the answer names no scope.
//!
//! The granted scope comes from the upstream alone ([`granted_scope`]): the answer, the access
//! token, or introspection; with none of them the answer is not captured. A DPoP-bound answer
//! opens a family bound to the same key ([`binding`], docs/design.md §4.16); tokens bound to
//! anything the proxy cannot bind to (a certificate, a key it saw no proof of) are not
//! captured.
//!
//! The claims handed to [`identify`] are those of tokens the caller verified against the
//! upstream's JWKS (`grant::verify`): capture trusts no token it could not verify.

use serde_json::{Map, Value};

use crate::client_cert::X5T_S256;
use crate::metrics::CaptureSkip;

/// Claims the proxy sets itself on minted access tokens; never carried from the upstream's
/// (`cnf` comes from the family's binding, docs/design.md §4.16).
const AT_OWN: &[&str] = &[
    "iss",
    "sub",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
    "auth_time",
    "cnf",
    "typ",
];
/// Claims of the original ID token a re-issued one must not keep (RFC 7519 times, OIDC
/// hashes and nonce belong to the original response).
const ID_DROP: &[&str] = &[
    "exp", "iat", "nbf", "jti", "nonce", "at_hash", "c_hash", "s_hash",
];

/// Who the tokens are for and what to carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub subject: String,
    /// Claims copied into every minted access token (always has `aud`).
    pub at_claims: Map<String, Value>,
    /// The original ID token's claims, for ID tokens on refresh (`None` without an ID token).
    pub id_claims: Option<Map<String, Value>>,
    pub auth_time: Option<i64>,
    /// Whether the upstream's access token was a JWT (decides `access_token_format = "auto"`).
    pub upstream_jwt: bool,
    /// The upstream session (`sid`, OpenID Connect Front/Back-Channel Logout) the tokens
    /// belong to, from the ID token, else the access token, else introspection.
    pub session: Option<String>,
    /// The key the family is bound to ([`binding`]); `identify` leaves it `None`.
    pub binding: Option<String>,
}

/// The longest `sid` the proxy indexes families by; a longer one is not kept (such a family
/// ends on a logout by subject, not by session).
pub const MAX_SESSION_ID: usize = 256;

/// Why an answer is not captured: the metric's reason and a log message (never a token).
pub type Skip = (CaptureSkip, &'static str);

/// What the upstream said about the tokens of one answer: the claims of its access token (a
/// JWT) and ID token, and its introspection answer about the access token, when asked.
#[derive(Debug, Default)]
pub struct Upstream<'a> {
    pub access: Option<Map<String, Value>>,
    pub id: Option<Map<String, Value>>,
    pub introspection: Option<&'a Map<String, Value>>,
}

fn without(mut claims: Map<String, Value>, drop: &[&str]) -> Map<String, Value> {
    claims.retain(|k, _| !drop.contains(&k.as_str()));
    claims
}

fn subject_of(claims: &Map<String, Value>) -> Option<String> {
    claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A space-separated scope from `scope` (RFC 6749 §3.3, RFC 9068 §2.2.3, RFC 7662 §2.2), or
/// from `scp` as a string or an array of strings (Okta, Azure AD).
fn scope_claim(claims: &Map<String, Value>) -> Option<String> {
    if let Some(Value::String(s)) = claims.get("scope") {
        return Some(s.clone());
    }
    match claims.get("scp")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str())
            .collect::<Option<Vec<&str>>>()
            .map(|v| v.join(" ")),
        _ => None,
    }
}

/// The scope the upstream granted: the answer's `scope`, else its access token's, else its
/// introspection answer's. Never the client's request: RFC 6749 §5.1 lets an answer omit
/// `scope` when it is "identical to the scope requested by the client", but the proxy cannot
/// tell that from a client that asked for more than it got.
pub fn granted_scope(answer: &Map<String, Value>, upstream: &Upstream<'_>) -> Option<String> {
    answer
        .get("scope")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| upstream.access.as_ref().and_then(scope_claim))
        .or_else(|| upstream.introspection.and_then(scope_claim))
}

/// What an answer's `token_type` says of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Bearer,
    /// RFC 9449 §5: bound to the key of the DPoP proof the client sent.
    Dpop,
}

/// The answer's token type, when the proxy may stand in for it.
pub fn check_token_type(answer: &Map<String, Value>) -> Result<TokenType, Skip> {
    let token_type = match answer.get("token_type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        // RFC 6749 §5.1: a string; anything else is an answer the proxy does not understand.
        Some(_) => {
            return Err((
                CaptureSkip::UnsupportedTokenType,
                "the upstream's answer has a token_type that is not a string",
            ));
        }
    };
    match token_type {
        None => Ok(TokenType::Bearer),
        // RFC 6749 §7.1, RFC 6750 §4: "Bearer", matched case-insensitively.
        Some(t) if t.eq_ignore_ascii_case("bearer") => Ok(TokenType::Bearer),
        // RFC 9449 §5: a DPoP-bound access token is answered with token_type "DPoP".
        Some(t) if t.eq_ignore_ascii_case("dpop") => Ok(TokenType::Dpop),
        Some(_) => Err((
            CaptureSkip::UnsupportedTokenType,
            "the upstream's answer has a token_type other than Bearer",
        )),
    }
}

/// Whether claims bind the token to a key: RFC 7800 §3.1 `cnf`, used by RFC 8705 §3.1
/// (mTLS, `x5t#S256`) and RFC 9449 §6 (DPoP, `jkt`), in a JWT or an introspection answer.
pub fn is_sender_constrained(claims: &Map<String, Value>) -> bool {
    claims.contains_key("cnf")
}

/// The prefix of a DPoP binding: `jkt:` and the key's RFC 7638 thumbprint.
pub const JKT: &str = "jkt:";

/// What the client proved with its token request, as the proxy checked it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The DPoP proof: its key's thumbprint, or why it was refused; `None` without one.
    pub proof: Option<Result<&'a str, &'static str>>,
    /// The `x5t#S256` thumbprint of the client certificate the proxy took (docs/design.md
    /// §4.17), if any.
    pub cert: Option<&'a str>,
}

/// The key a new family is bound to (docs/design.md §4.16, §4.17), from the answer's token
/// type, the `cnf` of its access token or introspection answer (`confirmations`), what the
/// client proved with its request, and `required` (`dpop_bound = "required"`).
///
/// A DPoP answer binds the family to the proof's key, which must be the key the upstream
/// names when it names one; a bearer answer whose tokens the upstream bound to a certificate
/// (`cnf.x5t#S256`) binds it to that certificate, which the client must have presented to the
/// proxy; another bearer answer binds it only when `required`. Anything else (a `cnf` the
/// proxy does not know, two keys, a key the client did not prove) is not captured: the proxy
/// never answers a bound grant with a bearer token.
pub fn binding<'p>(
    token_type: TokenType,
    confirmations: impl IntoIterator<Item = &'p Map<String, Value>>,
    presented: &Presented<'_>,
    required: bool,
) -> Result<Option<String>, Skip> {
    let refuse = |why| Err((CaptureSkip::SenderConstrained, why));
    let (mut upstream_jkt, mut upstream_x5t) = (None, None);
    for claims in confirmations {
        let Some(cnf) = claims.get("cnf") else {
            continue;
        };
        let one = cnf
            .as_object()
            .filter(|c| c.len() == 1)
            .and_then(|c| c.iter().next())
            .and_then(|(k, v)| Some((k.as_str(), v.as_str()?)));
        let (seen, value) = match (one, token_type) {
            (Some(("jkt", v)), TokenType::Dpop) => (&mut upstream_jkt, v),
            (Some(("x5t#S256", v)), TokenType::Bearer) => (&mut upstream_x5t, v),
            _ => {
                return refuse(
                    "the upstream's tokens are bound (cnf) to something the proxy cannot bind \
                     a family to",
                );
            }
        };
        if seen.is_some_and(|s| s != value) {
            return refuse("the upstream's tokens name two different keys (cnf)");
        }
        *seen = Some(value);
    }
    if let Some(x5t) = upstream_x5t {
        // RFC 8705 §3: certificate-bound tokens; the family needs the same certificate.
        return match presented.cert {
            _ if required => refuse(
                "the upstream bound its tokens to a certificate and dpop_bound = \"required\"",
            ),
            Some(cert) if cert == x5t => Ok(Some(format!("{X5T_S256}{cert}"))),
            Some(_) => refuse("the upstream bound its tokens to another certificate"),
            None => refuse(
                "the upstream's tokens are bound to a certificate the proxy did not see \
                 (server.tls_client_certificates, server.client_cert_header)",
            ),
        };
    }
    let proof_jkt = match presented.proof {
        Some(Ok(jkt)) => Some(jkt),
        Some(Err(why)) if token_type == TokenType::Dpop || required => return refuse(why),
        _ => None,
    };
    match (token_type, proof_jkt) {
        (TokenType::Dpop, None) => refuse(
            "the upstream's tokens are DPoP-bound and the token request carried no DPoP proof",
        ),
        (TokenType::Dpop, Some(jkt)) if upstream_jkt.is_some_and(|u| u != jkt) => {
            refuse("the upstream bound its tokens to another key than the DPoP proof's")
        }
        (TokenType::Dpop, Some(jkt)) => Ok(Some(format!("{JKT}{jkt}"))),
        (TokenType::Bearer, Some(jkt)) if required => Ok(Some(format!("{JKT}{jkt}"))),
        (TokenType::Bearer, None) if required => {
            refuse("dpop_bound = \"required\" and the token request carried no DPoP proof")
        }
        (TokenType::Bearer, _) => Ok(None),
    }
}

/// Who the tokens are for, from the ID token, else the access token, else introspection.
/// `default_audience` is the `aud` of minted access tokens when the upstream names none.
pub fn identify(upstream: Upstream<'_>, default_audience: &str) -> Result<Identity, Skip> {
    identify_with(upstream, default_audience, None)
}

/// [`identify`], with `subject_claim` (`upstream.subject_claim`) naming the introspection claim
/// that carries the subject when the introspection answer has no `sub`.
pub fn identify_with(
    upstream: Upstream<'_>,
    default_audience: &str,
    subject_claim: Option<&str>,
) -> Result<Identity, Skip> {
    let Upstream {
        access,
        id,
        introspection,
    } = upstream;
    if let Some(i) = introspection {
        // RFC 7662 §2.2: "active" is REQUIRED; an inactive token says nothing else.
        if i.get("active") != Some(&Value::Bool(true)) {
            return Err((
                CaptureSkip::Introspection,
                "the upstream's introspection says the new access token is not active",
            ));
        }
    }
    let subject = id
        .as_ref()
        .and_then(subject_of)
        .or_else(|| access.as_ref().and_then(subject_of))
        .or_else(|| introspection.and_then(subject_of))
        // RFC 7662 §2.2 lists "sub" as OPTIONAL: an IdP may name the user only in another
        // claim (e.g. "username"), which the operator names. Only a string is a subject.
        .or_else(|| {
            let claim = subject_claim?;
            introspection?
                .get(claim)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .ok_or((
            CaptureSkip::NoSubject,
            "neither the ID token, the access token nor introspection names a subject \
             (sub, or upstream.subject_claim in introspection)",
        ))?;
    let auth_time = [id.as_ref(), access.as_ref(), introspection]
        .into_iter()
        .flatten()
        .find_map(|c| c.get("auth_time").and_then(Value::as_i64));
    let session = [id.as_ref(), access.as_ref(), introspection]
        .into_iter()
        .flatten()
        .find_map(|c| c.get("sid").and_then(Value::as_str))
        .filter(|s| !s.is_empty() && s.len() <= MAX_SESSION_ID)
        .map(str::to_owned);
    let upstream_jwt = access.is_some();
    let mut at_claims = access.map(|c| without(c, AT_OWN)).unwrap_or_default();
    if !at_claims.contains_key("aud") {
        let aud = introspection
            .and_then(|i| i.get("aud"))
            .cloned()
            .unwrap_or_else(|| Value::String(default_audience.to_owned()));
        at_claims.insert("aud".to_owned(), aud);
    }
    Ok(Identity {
        subject,
        at_claims,
        id_claims: id.map(|c| without(c, ID_DROP)),
        auth_time,
        upstream_jwt,
        session,
        binding: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    fn claims(v: Value) -> Option<Map<String, Value>> {
        Some(answer(v))
    }

    #[test]
    fn the_id_token_gives_subject_and_its_claims() {
        let i = identify(
            Upstream {
                id: claims(
                    json!({"iss":"https://idp","sub":"alice","aud":"www","exp":1,"iat":0,
                                  "nonce":"n","at_hash":"h","auth_time":42,"email":"a@x"}),
                ),
                ..Upstream::default()
            },
            "https://idp",
        )
        .expect("found");
        assert_eq!(i.subject, "alice");
        assert_eq!(i.auth_time, Some(42));
        assert!(!i.upstream_jwt);
        assert_eq!(json!(i.at_claims), json!({"aud":"https://idp"}));
        assert_eq!(
            json!(i.id_claims),
            json!({"iss":"https://idp","sub":"alice","aud":"www","auth_time":42,"email":"a@x"})
        );
    }

    #[test]
    fn a_jwt_access_token_gives_subject_and_carried_claims() {
        let i = identify(
            Upstream {
                access: claims(
                    json!({"iss":"https://idp","sub":"bob","aud":["api"],"exp":1,
                                      "client_id":"www","scope":"read","roles":["admin"]}),
                ),
                ..Upstream::default()
            },
            "https://idp",
        )
        .expect("found");
        assert_eq!(i.subject, "bob");
        assert!(i.upstream_jwt);
        assert_eq!(json!(i.at_claims), json!({"aud":["api"],"roles":["admin"]}));
        assert_eq!(i.id_claims, None);
        let none = identify(Upstream::default(), "x").expect_err("no subject");
        assert_eq!(none.0, CaptureSkip::NoSubject);
    }

    #[test]
    fn introspection_answers_are_read() {
        let intro = answer(json!({"active":true,"sub":"carol","aud":"api","auth_time":7}));
        let i = identify(
            Upstream {
                introspection: Some(&intro),
                ..Upstream::default()
            },
            "https://idp",
        )
        .expect("active");
        assert_eq!((i.subject.as_str(), i.auth_time), ("carol", Some(7)));
        assert_eq!(json!(i.at_claims), json!({"aud":"api"}));
        for bad in [json!({"active":false,"sub":"x"}), json!({"active":true})] {
            let bad = answer(bad);
            let up = Upstream {
                introspection: Some(&bad),
                ..Upstream::default()
            };
            assert!(identify(up, "x").is_err());
        }
    }

    #[test]
    fn the_granted_scope_comes_from_the_upstream_only() {
        let intro = answer(json!({"active":true,"scope":"c"}));
        let at = claims(json!({"scope":"b"}));
        let up = |access: Option<Map<String, Value>>, introspection| Upstream {
            access,
            id: None,
            introspection,
        };
        let with_scope = answer(json!({"scope":"a"}));
        let without_scope = answer(json!({}));
        assert_eq!(
            granted_scope(&with_scope, &up(at.clone(), Some(&intro))).as_deref(),
            Some("a")
        );
        assert_eq!(
            granted_scope(&without_scope, &up(at, Some(&intro))).as_deref(),
            Some("b")
        );
        assert_eq!(
            granted_scope(&without_scope, &up(claims(json!({"scp":["x","y"]})), None)).as_deref(),
            Some("x y")
        );
        assert_eq!(
            granted_scope(&without_scope, &up(claims(json!({"scp":"x y"})), None)).as_deref(),
            Some("x y")
        );
        assert_eq!(
            granted_scope(&without_scope, &up(None, Some(&intro))).as_deref(),
            Some("c")
        );
        assert_eq!(
            granted_scope(&without_scope, &up(claims(json!({"scp":[1]})), None)),
            None
        );
        assert_eq!(granted_scope(&without_scope, &up(None, None)), None);
    }

    #[test]
    fn bearer_and_dpop_answers_may_be_captured() {
        for ok in [
            json!({}),
            json!({"token_type":"Bearer"}),
            json!({"token_type":"bearer"}),
        ] {
            assert_eq!(check_token_type(&answer(ok)), Ok(TokenType::Bearer));
        }
        for dpop in ["DPoP", "dpop"] {
            let got = check_token_type(&answer(json!({ "token_type": dpop })));
            assert_eq!(got, Ok(TokenType::Dpop));
        }
        for (bad, why) in [
            ("N_A", CaptureSkip::UnsupportedTokenType),
            ("mac", CaptureSkip::UnsupportedTokenType),
        ] {
            let got = check_token_type(&answer(json!({ "token_type": bad })));
            assert_eq!(got.map_err(|e| e.0), Err(why), "{bad}");
        }
        // Found by fuzzing (fuzz/corpus/capture): a token_type that is not a string was taken
        // for none, and the answer captured.
        for bad in [
            json!(null),
            json!(1),
            json!(["DPoP"]),
            json!({"type": "DPoP"}),
        ] {
            let got = check_token_type(&answer(json!({ "token_type": bad.clone() })));
            assert_eq!(
                got.map_err(|e| e.0),
                Err(CaptureSkip::UnsupportedTokenType),
                "{bad}"
            );
        }
        assert!(is_sender_constrained(&answer(json!({"cnf":{"jkt":"x"}}))));
        assert!(!is_sender_constrained(&answer(json!({"sub":"x"}))));
    }

    /// Issue 19: an introspection answer with `username` and no `sub` (RFC 7662 §2.2 makes
    /// `sub` optional) names the subject only through `upstream.subject_claim`.
    #[test]
    fn a_named_introspection_claim_is_the_subject_when_sub_is_absent() {
        let i = answer(json!({"active": true, "username": "alice", "scope": "read"}));
        let up = || Upstream {
            access: None,
            id: None,
            introspection: Some(&i),
        };
        let (reason, _) = identify(up(), "x").expect_err("no sub");
        assert_eq!(reason, CaptureSkip::NoSubject);
        let got = identify_with(up(), "x", Some("username")).expect("username");
        assert_eq!(got.subject, "alice");
        // sub wins over the named claim; the claim must be a non-empty string.
        let both = answer(json!({"active": true, "sub": "u-1", "username": "alice"}));
        let got = identify_with(
            Upstream {
                introspection: Some(&both),
                ..Upstream::default()
            },
            "x",
            Some("username"),
        )
        .expect("sub");
        assert_eq!(got.subject, "u-1");
        for bad in [
            json!({"active": true, "username": ""}),
            json!({"active": true, "username": 7}),
        ] {
            let bad = answer(bad);
            let up = Upstream {
                introspection: Some(&bad),
                ..Upstream::default()
            };
            assert!(identify_with(up, "x", Some("username")).is_err());
        }
        // Never from the tokens' claims: only introspection is read with the named claim.
        let at = claims(json!({"username": "alice"}));
        let up = Upstream {
            access: at,
            ..Upstream::default()
        };
        assert!(identify_with(up, "x", Some("username")).is_err());
    }

    #[test]
    fn a_family_is_bound_to_the_proofs_key_only_when_the_answer_says_so() {
        use TokenType::{Bearer, Dpop};
        let none: [&Map<String, Value>; 0] = [];
        let proof = |p| Presented {
            proof: p,
            cert: None,
        };
        let bound = |jkt: &str| Ok(Some(format!("{JKT}{jkt}")));
        let refused = |r: Result<Option<String>, Skip>| r.map_err(|e| e.0);
        let constrained = Err(CaptureSkip::SenderConstrained);
        // A DPoP answer: bound to the proof's key; without a valid proof, not captured.
        assert_eq!(
            binding(Dpop, none, &proof(Some(Ok("k1"))), false),
            bound("k1")
        );
        for p in [None, Some(Err("bad proof"))] {
            assert_eq!(refused(binding(Dpop, none, &proof(p), false)), constrained);
        }
        // The upstream's cnf.jkt must be the proof's key.
        let at = answer(json!({"cnf":{"jkt":"k1"}}));
        let other = answer(json!({"cnf":{"jkt":"k2"}}));
        let k1 = proof(Some(Ok("k1")));
        assert_eq!(binding(Dpop, [&at], &k1, false), bound("k1"));
        assert_eq!(refused(binding(Dpop, [&other], &k1, false)), constrained);
        let k2 = proof(Some(Ok("k2")));
        assert_eq!(
            refused(binding(Dpop, [&at, &other], &k2, false)),
            constrained
        );
        // Mixed or unknown cnf, a jkt on a bearer answer, a certificate on a DPoP one: never.
        let x5t = answer(json!({"cnf":{"x5t#S256":"c"}}));
        let both = answer(json!({"cnf":{"jkt":"k1","x5t#S256":"c"}}));
        let odd = answer(json!({"cnf":{"jwk":{"kty":"EC"}}}));
        let cert = Presented {
            proof: Some(Ok("k1")),
            cert: Some("c"),
        };
        for (tt, cnf) in [
            (Dpop, &x5t),
            (Dpop, &both),
            (Bearer, &both),
            (Bearer, &at),
            (Bearer, &odd),
        ] {
            assert_eq!(
                refused(binding(tt, [cnf], &cert, false)),
                constrained,
                "{tt:?} {cnf:?}"
            );
        }
        // A bearer answer: unbound, whatever proof the client sent, unless required.
        assert_eq!(binding(Bearer, none, &k1, false), Ok(None));
        assert_eq!(
            binding(Bearer, none, &proof(Some(Err("bad"))), false),
            Ok(None)
        );
        assert_eq!(binding(Bearer, none, &proof(None), false), Ok(None));
        assert_eq!(binding(Bearer, none, &k1, true), bound("k1"));
        for p in [None, Some(Err("bad proof"))] {
            assert_eq!(refused(binding(Bearer, none, &proof(p), true)), constrained);
        }
    }

    #[test]
    fn a_certificate_bound_answer_binds_the_family_to_the_certificate_the_proxy_saw() {
        let x5t = answer(json!({"cnf":{"x5t#S256":"c1"}}));
        let with = |cert| Presented { proof: None, cert };
        let refused = |r: Result<Option<String>, Skip>| r.map_err(|e| e.0);
        let constrained = Err(CaptureSkip::SenderConstrained);
        assert_eq!(
            binding(TokenType::Bearer, [&x5t], &with(Some("c1")), false),
            Ok(Some("x5t#S256:c1".to_owned()))
        );
        assert_eq!(
            refused(binding(TokenType::Bearer, [&x5t], &with(Some("c2")), false)),
            constrained
        );
        assert_eq!(
            refused(binding(TokenType::Bearer, [&x5t], &with(None), false)),
            constrained
        );
        assert_eq!(
            refused(binding(TokenType::Bearer, [&x5t], &with(Some("c1")), true)),
            constrained
        );
        // A certificate the upstream did not bind to changes nothing.
        assert_eq!(
            binding(TokenType::Bearer, [], &with(Some("c1")), false),
            Ok(None)
        );
    }
}
