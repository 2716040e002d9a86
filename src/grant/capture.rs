//! Capture: reading an upstream token answer to open a token family. Pure: no I/O.
//!
//! When the upstream answers a grant for a handled client with a `refresh_token`, the proxy
//! needs the subject and the claims to carry into the tokens it will mint. In order:
//!
//! 1. the ID token's claims (OIDC Core §2), when the answer has one;
//! 2. the access token's claims, when it is a JWT (RFC 9068);
//! 3. the upstream's introspection answer about the access token (RFC 7662), which the caller
//!    fetches when [`identify`] says [`Identify::Introspect`] (IdPs such as Curity issue opaque
//!    access tokens without `openid`).
//!
//! Tokens in the answer come straight from the upstream over the proxy's own connection to
//! it, so their signatures are not checked again; only their payloads are read.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

/// Claims the proxy sets itself on minted access tokens; never carried from the upstream's.
/// `cnf` is dropped too: the proxy does not sender-constrain tokens.
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
}

/// What [`identify`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Identify {
    Found(Identity),
    /// Ask the upstream's introspection endpoint about this access token.
    Introspect {
        access_token: String,
    },
    /// No way to tell the subject; the answer is passed on untouched.
    Unknown(&'static str),
}

/// The payload of a JWS-compact JWT, without checking its signature.
pub fn jwt_payload(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Map<String, Value> = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    header.get("alg")?.as_str()?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
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

/// Reads the subject and claims from the upstream's token answer.
/// `default_audience` is the `aud` of minted access tokens when the upstream's has none.
pub fn identify(answer: &Map<String, Value>, default_audience: &str) -> Identify {
    let access_token = answer.get("access_token").and_then(Value::as_str);
    let at = access_token.and_then(jwt_payload);
    let id = answer
        .get("id_token")
        .and_then(Value::as_str)
        .and_then(jwt_payload);
    let subject = id
        .as_ref()
        .and_then(subject_of)
        .or_else(|| at.as_ref().and_then(subject_of));
    let Some(subject) = subject else {
        return match access_token {
            Some(t) => Identify::Introspect {
                access_token: t.to_owned(),
            },
            None => Identify::Unknown("the answer has no access token, ID token or subject"),
        };
    };
    let auth_time = id
        .as_ref()
        .and_then(|c| c.get("auth_time"))
        .or_else(|| at.as_ref().and_then(|c| c.get("auth_time")))
        .and_then(Value::as_i64);
    let upstream_jwt = at.is_some();
    let mut at_claims = at.map(|c| without(c, AT_OWN)).unwrap_or_default();
    at_claims
        .entry("aud")
        .or_insert_with(|| Value::String(default_audience.to_owned()));
    Identify::Found(Identity {
        subject,
        at_claims,
        id_claims: id.map(|c| without(c, ID_DROP)),
        auth_time,
        upstream_jwt,
    })
}

/// Reads an RFC 7662 introspection answer about the upstream's access token.
pub fn from_introspection(
    answer: &Map<String, Value>,
    default_audience: &str,
) -> Result<Identity, &'static str> {
    // RFC 7662 §2.2: "active" is REQUIRED; an inactive token says nothing else.
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Err("the upstream's introspection says the new access token is not active");
    }
    let subject = subject_of(answer).ok_or("the upstream's introspection answer has no subject")?;
    let mut at_claims = Map::new();
    at_claims.insert(
        "aud".to_owned(),
        answer
            .get("aud")
            .cloned()
            .unwrap_or_else(|| Value::String(default_audience.to_owned())),
    );
    Ok(Identity {
        subject,
        at_claims,
        id_claims: None,
        auth_time: answer.get("auth_time").and_then(Value::as_i64),
        upstream_jwt: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(payload: Value) -> String {
        format!(
            "{}.{}.c2ln",
            B64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            B64.encode(payload.to_string())
        )
    }

    fn answer(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn the_id_token_gives_subject_and_its_claims() {
        let a = answer(json!({
            "access_token": "opaque-at",
            "refresh_token": "rt",
            "id_token": jwt(json!({"iss":"https://idp","sub":"alice","aud":"www","exp":1,"iat":0,
                                   "nonce":"n","at_hash":"h","auth_time":42,"email":"a@x"})),
        }));
        let Identify::Found(i) = identify(&a, "www") else {
            panic!("found")
        };
        assert_eq!(i.subject, "alice");
        assert_eq!(i.auth_time, Some(42));
        assert!(!i.upstream_jwt);
        assert_eq!(json!(i.at_claims), json!({"aud":"www"}));
        assert_eq!(
            json!(i.id_claims),
            json!({"iss":"https://idp","sub":"alice","aud":"www","auth_time":42,"email":"a@x"})
        );
    }

    #[test]
    fn a_jwt_access_token_gives_subject_and_carried_claims() {
        let a = answer(json!({
            "access_token": jwt(json!({"iss":"https://idp","sub":"bob","aud":["api"],"exp":1,
                                      "client_id":"www","scope":"read","roles":["admin"],"cnf":{}})),
            "refresh_token": "rt",
        }));
        let Identify::Found(i) = identify(&a, "www") else {
            panic!("found")
        };
        assert_eq!(i.subject, "bob");
        assert!(i.upstream_jwt);
        assert_eq!(json!(i.at_claims), json!({"aud":["api"],"roles":["admin"]}));
        assert_eq!(i.id_claims, None);
    }

    #[test]
    fn opaque_tokens_need_introspection() {
        let a = answer(json!({"access_token":"opaque","refresh_token":"rt"}));
        assert_eq!(
            identify(&a, "www"),
            Identify::Introspect {
                access_token: "opaque".into()
            }
        );
        let a = answer(json!({"refresh_token":"rt"}));
        assert!(matches!(identify(&a, "www"), Identify::Unknown(_)));
    }

    #[test]
    fn introspection_answers_are_read() {
        let i = from_introspection(
            &answer(json!({"active":true,"sub":"carol","aud":"api","auth_time":7})),
            "www",
        )
        .expect("active");
        assert_eq!((i.subject.as_str(), i.auth_time), ("carol", Some(7)));
        assert_eq!(json!(i.at_claims), json!({"aud":"api"}));
        assert!(from_introspection(&answer(json!({"active":false})), "www").is_err());
        assert!(from_introspection(&answer(json!({"active":true})), "www").is_err());
    }

    #[test]
    fn non_jwts_are_not_read() {
        for t in ["a.b", "a.b.c.d", "x.eyJzdWIiOiJ4In0.sig", "", "...."] {
            assert_eq!(jwt_payload(t), None, "{t}");
        }
    }
}
