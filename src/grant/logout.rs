//! Back-channel logout: the checks of a logout token (OpenID Connect Back-Channel Logout 1.0
//! §2.6) after its signature, issuer and expiry were verified against the upstream's keys
//! ([`super::verify`]), and what it asks the proxy to end (§2.7). Pure: the clock and the
//! clients are given.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

use super::capture::MAX_SESSION_ID;
use super::verify::CLOCK_LEEWAY_SECS;

/// The event a logout token carries (§2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Keycloak's member of `events` asking that offline sessions end too.
pub const REVOKE_OFFLINE_ACCESS: &str = "revoke_offline_access";
/// A logout token issued longer ago than this is refused (§2.6 step 4: "reject tokens issued
/// too far away from the current time"); its `jti` is remembered for as long.
pub const MAX_AGE_SECS: i64 = 600;
/// The longest `jti` accepted.
pub const MAX_JTI: usize = 256;

/// What a valid logout token asks: end the families of `session` (its `sid`), else of
/// `subject`, for each of `clients` (the handled clients in its `aud`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    pub clients: Vec<String>,
    pub subject: Option<String>,
    pub session: Option<String>,
    /// §2.7: families granted `offline_access` normally outlive a logout; Keycloak's
    /// `revoke_offline_access` event asks for them too.
    pub revoke_offline: bool,
    pub jti: String,
    /// Until when (seconds) the `jti` must be remembered to refuse a replay: after that the
    /// token is too old to be accepted anyway.
    pub remember_until: i64,
}

/// Why a logout token was refused. Each is a 400 to the IdP (§2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// `typ` names another kind of JWT (an ID or access token is not a logout token).
    Type,
    /// No `aud` names a client the proxy handles.
    Audience,
    /// No `iat`, or one in the future or too long ago; or no `exp`.
    Time,
    /// No `events` object with the back-channel logout member (an object).
    Events,
    /// Neither `sub` nor `sid` (§2.4: at least one).
    NoSubjectOrSession,
    /// A `nonce` (§2.4: prohibited, so an ID token is never taken for a logout token).
    Nonce,
    /// No `jti`, or not a short string.
    Jti,
}

impl Invalid {
    /// For the error body and the logs (never the token).
    pub fn describe(self) -> &'static str {
        match self {
            Invalid::Type => "the logout token's typ is not logout+jwt",
            Invalid::Audience => "the logout token's aud names no client the proxy handles",
            Invalid::Time => "the logout token's iat or exp is missing or out of range",
            Invalid::Events => "the logout token has no back-channel logout event",
            Invalid::NoSubjectOrSession => "the logout token has neither sub nor sid",
            Invalid::Nonce => "a logout token must not have a nonce",
            Invalid::Jti => "the logout token has no usable jti",
        }
    }
}

/// The JOSE header of a compact JWS, if it decodes to a JSON object.
pub fn header(token: &str) -> Option<Map<String, Value>> {
    let part = token.split('.').next()?;
    match serde_json::from_slice(&B64.decode(part).ok()?).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

/// Checks a verified logout token's header and claims at `now` (seconds); `handled` says
/// whether a client id is one the proxy handles.
pub fn check(
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
    handled: impl Fn(&str) -> bool,
    now: i64,
) -> Result<Logout, Invalid> {
    // §2.4 (RFC 8725 §3.11): explicitly typed `logout+jwt`; a plain `JWT` or none is accepted
    // from IdPs that do not type it, anything else is another kind of token.
    match header.get("typ") {
        None => {}
        Some(Value::String(t))
            if t.eq_ignore_ascii_case("logout+jwt")
                || t.eq_ignore_ascii_case("application/logout+jwt")
                || t.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(Invalid::Type),
    }
    // §2.6 step 3: aud as for ID tokens; the proxy acts for each handled client it names.
    let clients: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|c| handled(c))
    .collect();
    if clients.is_empty() {
        return Err(Invalid::Audience);
    }
    // §2.6 step 4: iat, and exp (the signature check already refused an expired one).
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or(Invalid::Time)? as i64;
    // exp is REQUIRED (§2.4); the signature check refused an expired one.
    claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(Invalid::Time)?;
    if iat > now + CLOCK_LEEWAY_SECS || iat < now - MAX_AGE_SECS {
        return Err(Invalid::Time);
    }
    // §2.6 step 5: events holds the back-channel logout member, whose value is an object.
    let events = claims
        .get("events")
        .and_then(Value::as_object)
        .ok_or(Invalid::Events)?;
    if !events
        .get(BACKCHANNEL_LOGOUT_EVENT)
        .is_some_and(Value::is_object)
    {
        return Err(Invalid::Events);
    }
    let revoke_offline = events.get(REVOKE_OFFLINE_ACCESS) == Some(&Value::Bool(true));
    // §2.6 step 6: sub, sid, or both.
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (subject, session) = (text("sub"), text("sid"));
    if subject.is_none() && session.is_none() {
        return Err(Invalid::NoSubjectOrSession);
    }
    // A session id longer than capture keeps cannot name any family; refuse rather than
    // answer 200 for a logout that ended nothing it named.
    if session.as_ref().is_some_and(|s| s.len() > MAX_SESSION_ID) {
        return Err(Invalid::NoSubjectOrSession);
    }
    // §2.6 step 7: no nonce.
    if claims.contains_key("nonce") {
        return Err(Invalid::Nonce);
    }
    // §2.6 step 8 (optional there, done here): jti, remembered against replays.
    let jti = text("jti")
        .filter(|j| j.len() <= MAX_JTI)
        .ok_or(Invalid::Jti)?;
    Ok(Logout {
        clients,
        subject,
        session,
        revoke_offline,
        jti,
        // Past this it is refused as too old anyway.
        remember_until: iat + MAX_AGE_SECS + CLOCK_LEEWAY_SECS,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    fn good() -> Value {
        json!({
            "iss": "https://idp", "aud": "www", "iat": NOW - 5, "exp": NOW + 115,
            "jti": "j1", "sub": "alice", "sid": "s1",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}}
        })
    }

    fn with(changes: Value) -> Map<String, Value> {
        let mut c = claims(good());
        for (k, v) in changes.as_object().expect("object") {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    }

    fn run(header: Value, c: Map<String, Value>) -> Result<Logout, Invalid> {
        check(&claims(header), &c, |id| id == "www" || id == "app", NOW)
    }

    #[test]
    fn a_good_token_names_the_session_the_clients_and_the_jti() {
        let l = run(json!({"alg": "RS256", "typ": "logout+jwt"}), claims(good())).expect("ok");
        assert_eq!(l.clients, ["www"]);
        assert_eq!(
            (l.subject.as_deref(), l.session.as_deref()),
            (Some("alice"), Some("s1"))
        );
        assert!(!l.revoke_offline);
        assert_eq!(l.jti, "j1");
        assert_eq!(l.remember_until, NOW - 5 + MAX_AGE_SECS + CLOCK_LEEWAY_SECS);
        // Untyped and `JWT` are accepted; aud as an array keeps only handled clients.
        let l = run(
            json!({"alg": "RS256"}),
            with(json!({"aud": ["other", "app", "www"], "typ": "JWT"})),
        )
        .expect("ok");
        assert_eq!(l.clients, ["app", "www"]);
        assert!(run(json!({"typ": "JWT"}), claims(good())).is_ok());
    }

    #[test]
    fn keycloaks_revoke_offline_access_event_is_read() {
        let c =
            with(json!({"events": {BACKCHANNEL_LOGOUT_EVENT: {}, REVOKE_OFFLINE_ACCESS: true}}));
        assert!(run(json!({}), c).expect("ok").revoke_offline);
    }

    #[test]
    fn each_rule_of_section_2_6_refuses() {
        let cases = [
            (json!({"typ": "at+jwt"}), claims(good()), Invalid::Type),
            (json!({}), with(json!({"aud": "other"})), Invalid::Audience),
            (json!({}), with(json!({"aud": null})), Invalid::Audience),
            (json!({}), with(json!({"iat": null})), Invalid::Time),
            (json!({}), with(json!({"exp": null})), Invalid::Time),
            (json!({}), with(json!({"iat": NOW + 61})), Invalid::Time),
            (
                json!({}),
                with(json!({"iat": NOW - MAX_AGE_SECS - 1})),
                Invalid::Time,
            ),
            (json!({}), with(json!({"events": null})), Invalid::Events),
            (json!({}), with(json!({"events": {}})), Invalid::Events),
            (
                json!({}),
                with(json!({"events": {BACKCHANNEL_LOGOUT_EVENT: true}})),
                Invalid::Events,
            ),
            (
                json!({}),
                with(json!({"sub": null, "sid": null})),
                Invalid::NoSubjectOrSession,
            ),
            (
                json!({}),
                with(json!({"sid": "x".repeat(257)})),
                Invalid::NoSubjectOrSession,
            ),
            (json!({}), with(json!({"nonce": "n"})), Invalid::Nonce),
            (json!({}), with(json!({"jti": null})), Invalid::Jti),
            (
                json!({}),
                with(json!({"jti": "j".repeat(257)})),
                Invalid::Jti,
            ),
        ];
        for (header, c, want) in cases {
            assert_eq!(run(header, c.clone()), Err(want), "{c:?}");
        }
        // sub alone and sid alone are each enough.
        assert!(run(json!({}), with(json!({"sid": null}))).is_ok());
        assert!(run(json!({}), with(json!({"sub": null}))).is_ok());
    }

    #[test]
    fn the_header_is_read_from_the_first_part() {
        let token = format!(
            "{}.e30.sig",
            B64.encode(r#"{"alg":"ES256","typ":"logout+jwt"}"#)
        );
        assert_eq!(header(&token).expect("header")["typ"], "logout+jwt");
        assert_eq!(header("not a jwt"), None);
    }
}
