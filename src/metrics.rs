//! Prometheus metrics: a fixed set of counters and one histogram, all atomics.
//!
//! Every label value comes from a closed set (endpoints, grant types, OAuth error codes), so no
//! client-supplied string can grow the label space. [`Metrics::render`] writes the Prometheus
//! text exposition format (version 0.0.4) served at `/metrics` on the admin port.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a request to the proxy was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Token,
    Revocation,
    Introspection,
    Jwks,
    BackchannelLogout,
    Other,
}

impl Route {
    const ALL: [Route; 6] = [
        Route::Token,
        Route::Revocation,
        Route::Introspection,
        Route::Jwks,
        Route::BackchannelLogout,
        Route::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Token => "token",
            Route::Revocation => "revocation",
            Route::Introspection => "introspection",
            Route::Jwks => "jwks",
            Route::BackchannelLogout => "backchannel_logout",
            Route::Other => "other",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by the proxy, successfully.
    Ok,
    /// Passed to the upstream (whatever it answered).
    Forwarded,
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    UnauthorizedClient,
    TemporarilyUnavailable,
    /// The upstream could not be reached or timed out.
    UpstreamError,
    /// RFC 9449: a DPoP proof was refused (`invalid_dpop_proof`).
    InvalidDpopProof,
    /// RFC 9449 §8: the client was told to use the server's nonce (`use_dpop_nonce`).
    UseDpopNonce,
}

impl Outcome {
    const ALL: [Outcome; 11] = [
        Outcome::Ok,
        Outcome::Forwarded,
        Outcome::InvalidRequest,
        Outcome::InvalidClient,
        Outcome::InvalidGrant,
        Outcome::InvalidScope,
        Outcome::UnauthorizedClient,
        Outcome::TemporarilyUnavailable,
        Outcome::UpstreamError,
        Outcome::InvalidDpopProof,
        Outcome::UseDpopNonce,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Forwarded => "forwarded",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::InvalidClient => "invalid_client",
            Outcome::InvalidGrant => "invalid_grant",
            Outcome::InvalidScope => "invalid_scope",
            Outcome::UnauthorizedClient => "unauthorized_client",
            Outcome::TemporarilyUnavailable => "temporarily_unavailable",
            Outcome::UpstreamError => "upstream_error",
            Outcome::InvalidDpopProof => "invalid_dpop_proof",
            Outcome::UseDpopNonce => "use_dpop_nonce",
        }
    }
}

/// The `grant_type` of a token-endpoint request, from a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    RefreshToken,
    AuthorizationCode,
    ClientCredentials,
    Password,
    DeviceCode,
    TokenExchange,
    Other,
}

impl Grant {
    const ALL: [Grant; 7] = [
        Grant::RefreshToken,
        Grant::AuthorizationCode,
        Grant::ClientCredentials,
        Grant::Password,
        Grant::DeviceCode,
        Grant::TokenExchange,
        Grant::Other,
    ];

    /// Maps a request's `grant_type`; anything unknown (or client-made-up) is `other`.
    pub fn of(grant_type: Option<&str>) -> Grant {
        match grant_type {
            Some("refresh_token") => Grant::RefreshToken,
            Some("authorization_code") => Grant::AuthorizationCode,
            Some("client_credentials") => Grant::ClientCredentials,
            Some("password") => Grant::Password,
            Some("urn:ietf:params:oauth:grant-type:device_code") => Grant::DeviceCode,
            Some("urn:ietf:params:oauth:grant-type:token-exchange") => Grant::TokenExchange,
            _ => Grant::Other,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Grant::RefreshToken => "refresh_token",
            Grant::AuthorizationCode => "authorization_code",
            Grant::ClientCredentials => "client_credentials",
            Grant::Password => "password",
            Grant::DeviceCode => "device_code",
            Grant::TokenExchange => "token_exchange",
            Grant::Other => "other",
        }
    }
}

/// Why a handled client's upstream answer was passed on uncaptured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureSkip {
    /// Nothing in the answer (or introspection) names the subject.
    NoSubject,
    /// Neither the answer, nor the upstream's access token, nor introspection says what scope
    /// was granted.
    NoScope,
    /// The tokens are bound to a key the proxy cannot bind its family to (a certificate, a
    /// DPoP key whose proof it could not check, another key than the proof's), or must be
    /// (`dpop_bound = "required"`) and the request carried no valid proof.
    SenderConstrained,
    /// A `token_type` other than `Bearer` (or DPoP).
    UnsupportedTokenType,
    /// An upstream JWT failed verification (signature, algorithm, key, issuer, expiry,
    /// audience, or not a JWS at all).
    InvalidToken,
    /// The upstream's JWKS is not known or could not be fetched.
    NoJwks,
    /// The upstream's introspection endpoint did not give a usable answer.
    Introspection,
    /// The token store failed.
    Store,
    /// The answer is larger than the proxy reads to decide capture; it is streamed on as is.
    TooLarge,
    /// The IdP accepted the client's assertion but the proxy's own check of it failed
    /// (docs/design.md §4.18): the proxy could not authenticate the client's refreshes.
    ClientAuth,
}

impl CaptureSkip {
    pub const ALL: [CaptureSkip; 10] = [
        CaptureSkip::NoSubject,
        CaptureSkip::NoScope,
        CaptureSkip::SenderConstrained,
        CaptureSkip::UnsupportedTokenType,
        CaptureSkip::InvalidToken,
        CaptureSkip::NoJwks,
        CaptureSkip::Introspection,
        CaptureSkip::Store,
        CaptureSkip::TooLarge,
        CaptureSkip::ClientAuth,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CaptureSkip::NoSubject => "no_subject",
            CaptureSkip::NoScope => "no_scope",
            CaptureSkip::SenderConstrained => "sender_constrained",
            CaptureSkip::UnsupportedTokenType => "unsupported_token_type",
            CaptureSkip::InvalidToken => "invalid_token",
            CaptureSkip::NoJwks => "no_jwks",
            CaptureSkip::Introspection => "introspection",
            CaptureSkip::Store => "store",
            CaptureSkip::TooLarge => "too_large",
            CaptureSkip::ClientAuth => "client_auth",
        }
    }
}

/// What became of a family end the proxy told (or tried to tell) the upstream
/// (docs/design.md §4.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamRevocation {
    /// The upstream's revocation endpoint answered 200.
    Revoked,
    /// It answered another 4xx (not retried: the same request would get the same answer).
    Rejected,
    /// A try failed (5xx, 429, no answer); another follows after a backoff.
    Retried,
    /// Every try failed; the upstream token stays live there until it expires.
    Failed,
    /// The queue was full; not tried.
    Dropped,
    /// The kept token did not open with any key of `tokens.upstream_token_keys`.
    Unreadable,
    /// The upstream's revocation endpoint is not known (or declared absent).
    NoEndpoint,
}

impl UpstreamRevocation {
    pub const ALL: [UpstreamRevocation; 7] = [
        UpstreamRevocation::Revoked,
        UpstreamRevocation::Rejected,
        UpstreamRevocation::Retried,
        UpstreamRevocation::Failed,
        UpstreamRevocation::Dropped,
        UpstreamRevocation::Unreadable,
        UpstreamRevocation::NoEndpoint,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamRevocation::Revoked => "revoked",
            UpstreamRevocation::Rejected => "rejected",
            UpstreamRevocation::Retried => "retried",
            UpstreamRevocation::Failed => "failed",
            UpstreamRevocation::Dropped => "dropped",
            UpstreamRevocation::Unreadable => "unreadable",
            UpstreamRevocation::NoEndpoint => "no_endpoint",
        }
    }
}

/// What an upstream session check found (docs/design.md §4.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCheck {
    /// The upstream redeemed the kept token: the family goes on.
    Confirmed,
    /// The same, and the upstream rotated its token (the new one is kept).
    Rotated,
    /// The upstream said `invalid_grant`: the family is revoked.
    Revoked,
    /// The upstream could not be asked (the family is served or refused as configured).
    Failed,
    /// A refresh answered 503: the check failed and the serve window is over (or the wait
    /// for another's check ran out).
    Refused,
}

impl UpstreamCheck {
    pub const ALL: [UpstreamCheck; 5] = [
        UpstreamCheck::Confirmed,
        UpstreamCheck::Rotated,
        UpstreamCheck::Revoked,
        UpstreamCheck::Failed,
        UpstreamCheck::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamCheck::Confirmed => "confirmed",
            UpstreamCheck::Rotated => "rotated",
            UpstreamCheck::Revoked => "revoked",
            UpstreamCheck::Failed => "failed",
            UpstreamCheck::Refused => "refused",
        }
    }
}

/// What became of a logout token the upstream sent (docs/design.md §4.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutReceived {
    /// Valid: the families it names were ended (possibly none).
    Done,
    /// Refused with 400: not a valid logout token (signature, claims).
    Invalid,
    /// Refused with 400: its `jti` was seen before.
    Replayed,
    /// Answered 503: the store or the upstream's keys were unavailable.
    Unavailable,
}

impl LogoutReceived {
    pub const ALL: [LogoutReceived; 4] = [
        LogoutReceived::Done,
        LogoutReceived::Invalid,
        LogoutReceived::Replayed,
        LogoutReceived::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LogoutReceived::Done => "done",
            LogoutReceived::Invalid => "invalid",
            LogoutReceived::Replayed => "replayed",
            LogoutReceived::Unavailable => "unavailable",
        }
    }
}

/// Upstream answers by status class.
const UPSTREAM_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// A Prometheus histogram over fixed buckets.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The proxy's metrics. Share one behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; Outcome::ALL.len()]; Route::ALL.len()],
    token_requests: [[AtomicU64; Outcome::ALL.len()]; Grant::ALL.len()],
    refresh_latency: Histogram,
    store_latency: Histogram,
    upstream_latency: Histogram,
    upstream_responses: [AtomicU64; UPSTREAM_CLASSES.len()],
    in_flight: AtomicU64,
    /// Connections open on the proxy port.
    open_connections: AtomicU64,
    /// Times the proxy port reached `server.max_connections` and stopped accepting.
    pub connection_limit_reached: AtomicU64,
    pub rotations: AtomicU64,
    pub reuses: AtomicU64,
    pub grace_hits: AtomicU64,
    pub reuse_detections: AtomicU64,
    pub family_revocations: AtomicU64,
    pub captures: AtomicU64,
    capture_skips: [AtomicU64; CaptureSkip::ALL.len()],
    upstream_revocations: [AtomicU64; UpstreamRevocation::ALL.len()],
    /// Family ends waiting to be told to the upstream (queued or between tries).
    pub upstream_revocations_pending: AtomicU64,
    logouts: [AtomicU64; LogoutReceived::ALL.len()],
    upstream_checks: [AtomicU64; UpstreamCheck::ALL.len()],
    /// Refreshes that waited for another's upstream check of their family (coalesced).
    pub upstream_check_waiters: AtomicU64,
    /// Logout tokens passed on to a client's own `backchannel_logout_uri`, by whether it
    /// answered 200/204.
    pub logouts_passed_on: AtomicU64,
    pub logouts_pass_on_failed: AtomicU64,
    pub store_errors: AtomicU64,
    pub integrity_failures: AtomicU64,
    /// Per endpoint of [`KNOWN_ENDPOINTS`]: 1 when the proxy knows its upstream path.
    endpoint_known: [AtomicU64; KNOWN_ENDPOINTS.len()],
}

/// The endpoints the proxy answers for, whose upstream paths discovery or config must give.
pub const KNOWN_ENDPOINTS: [&str; 4] = ["token", "revocation", "introspection", "jwks"];

/// The index of `value` in a label's closed set `all` (its counter's slot).
fn slot<T: PartialEq>(all: &[T], value: T) -> usize {
    all.iter().position(|x| *x == value).unwrap_or(0)
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn request(&self, route: Route, outcome: Outcome) {
        let r = Route::ALL.iter().position(|x| *x == route).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        inc(&self.requests[r][o]);
    }

    /// A token-endpoint request by grant type.
    pub fn token_request(&self, grant: Grant, outcome: Outcome) {
        let g = Grant::ALL.iter().position(|x| *x == grant).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        inc(&self.token_requests[g][o]);
    }

    /// Time of one store round trip.
    pub fn store_latency(&self, d: Duration) {
        self.store_latency.observe(d);
    }

    /// An upstream answer's head arrived (status) or the request failed (`None`), after `d`.
    pub fn upstream(&self, status: Option<u16>, d: Duration) {
        let class = match status {
            Some(s @ 200..=599) => (s / 100 - 2) as usize,
            _ => 4,
        };
        inc(&self.upstream_responses[class]);
        self.upstream_latency.observe(d);
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts an open connection on the proxy port until the guard drops.
    pub fn open_connection(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// An upstream answer passed on uncaptured, and why.
    pub fn capture_skip(&self, reason: CaptureSkip) {
        inc(&self.capture_skips[slot(&CaptureSkip::ALL, reason)]);
    }

    /// What became of one try to tell the upstream of a family end.
    pub fn upstream_revocation(&self, outcome: UpstreamRevocation) {
        inc(&self.upstream_revocations[slot(&UpstreamRevocation::ALL, outcome)]);
    }

    /// An upstream session check's outcome.
    pub fn upstream_check(&self, outcome: UpstreamCheck) {
        inc(&self.upstream_checks[slot(&UpstreamCheck::ALL, outcome)]);
    }

    /// A logout token received, and what became of it.
    pub fn logout(&self, outcome: LogoutReceived) {
        inc(&self.logouts[slot(&LogoutReceived::ALL, outcome)]);
    }

    /// Upstream revocations with `outcome` so far.
    pub fn upstream_revocations(&self, outcome: UpstreamRevocation) -> u64 {
        self.upstream_revocations[slot(&UpstreamRevocation::ALL, outcome)].load(Ordering::Relaxed)
    }

    /// Upstream answers passed on uncaptured, whatever the reason.
    #[cfg(test)]
    pub fn capture_skips(&self) -> u64 {
        self.capture_skips
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Which endpoints the proxy can locate now (after discovery, or from config).
    pub fn set_endpoints(&self, e: &crate::classify::Endpoints) {
        let known = [
            &e.token_path,
            &e.revocation_path,
            &e.introspection_path,
            &e.jwks_path,
        ];
        for (gauge, path) in self.endpoint_known.iter().zip(known) {
            gauge.store(u64::from(path.is_some()), Ordering::Relaxed);
        }
    }

    /// Time taken by a refresh grant the proxy answered (any outcome).
    pub fn refresh_latency(&self, d: Duration) {
        self.refresh_latency.observe(d);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = writeln!(
            out,
            "# HELP refresh_proxy_build_info Build information.\n\
             # TYPE refresh_proxy_build_info gauge\n\
             refresh_proxy_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out.push_str(
            "# HELP refresh_proxy_requests_total Requests by endpoint and outcome.\n\
             # TYPE refresh_proxy_requests_total counter\n",
        );
        for (r, route) in Route::ALL.iter().enumerate() {
            for (o, outcome) in Outcome::ALL.iter().enumerate() {
                // Every pair from the start, zeros too: a rate() over a series that appears
                // with its first event never sees that event (an alert on the first 503).
                let n = self.requests[r][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "refresh_proxy_requests_total{{endpoint=\"{}\",outcome=\"{}\"}} {n}",
                    route.label(),
                    outcome.label()
                );
            }
        }
        out.push_str(
            "# HELP refresh_proxy_token_requests_total Token-endpoint requests by grant type and outcome.\n\
             # TYPE refresh_proxy_token_requests_total counter\n",
        );
        for (g, grant) in Grant::ALL.iter().enumerate() {
            for (o, outcome) in Outcome::ALL.iter().enumerate() {
                let n = self.token_requests[g][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "refresh_proxy_token_requests_total{{grant_type=\"{}\",outcome=\"{}\"}} {n}",
                    grant.label(),
                    outcome.label()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP refresh_proxy_in_flight_requests Requests being served.\n\
             # TYPE refresh_proxy_in_flight_requests gauge\n\
             refresh_proxy_in_flight_requests {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP refresh_proxy_open_connections Connections open on the proxy port.\n\
             # TYPE refresh_proxy_open_connections gauge\n\
             refresh_proxy_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP refresh_proxy_upstream_responses_total Upstream answers by status class (error: no answer).\n\
             # TYPE refresh_proxy_upstream_responses_total counter\n",
        );
        for (i, class) in UPSTREAM_CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "refresh_proxy_upstream_responses_total{{class=\"{class}\"}} {}",
                self.upstream_responses[i].load(Ordering::Relaxed)
            );
        }
        for (name, help, histogram) in [
            (
                "refresh_duration_seconds",
                "Refresh grants answered by the proxy.",
                &self.refresh_latency,
            ),
            (
                "store_duration_seconds",
                "Token store round trips of refresh grants.",
                &self.store_latency,
            ),
            (
                "upstream_duration_seconds",
                "Time to the upstream's response head.",
                &self.upstream_latency,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP refresh_proxy_{name} {help}\n# TYPE refresh_proxy_{name} histogram"
            );
            histogram.render(&mut out, &format!("refresh_proxy_{name}"));
        }
        for (name, help, counter) in [
            ("rotations", "Refresh tokens rotated.", &self.rotations),
            (
                "reuses",
                "Refresh tokens reused (reuse_refresh_tokens).",
                &self.reuses,
            ),
            (
                "grace_hits",
                "Previous tokens answered within the grace period.",
                &self.grace_hits,
            ),
            (
                "reuse_detections",
                "Rotated-out tokens presented again; their family was revoked.",
                &self.reuse_detections,
            ),
            (
                "family_revocations",
                "Families revoked (reuse, revocation endpoint, admin API).",
                &self.family_revocations,
            ),
            (
                "captures",
                "Upstream refresh tokens captured into new families.",
                &self.captures,
            ),
            (
                "store_errors",
                "Token store operations that failed.",
                &self.store_errors,
            ),
            (
                "connection_limit_reached",
                "Times the proxy port reached server.max_connections and stopped accepting until a connection closed.",
                &self.connection_limit_reached,
            ),
            (
                "integrity_failures",
                "Tokens or family records refused by an integrity check (a token not the family's, a record changed in the store).",
                &self.integrity_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP refresh_proxy_{name}_total {help}\n# TYPE refresh_proxy_{name}_total counter\nrefresh_proxy_{name}_total {}",
                counter.load(Ordering::Relaxed)
            );
        }
        labelled(
            &mut out,
            "capture_skips_total",
            "Upstream answers passed on uncaptured, by reason.",
            "reason",
            CaptureSkip::ALL
                .iter()
                .map(|r| r.label())
                .zip(&self.capture_skips),
        );
        labelled(
            &mut out,
            "upstream_revocations_total",
            "Family ends told to the upstream's revocation endpoint, by outcome.",
            "outcome",
            UpstreamRevocation::ALL
                .iter()
                .map(|r| r.label())
                .zip(&self.upstream_revocations),
        );
        labelled(
            &mut out,
            "upstream_checks_total",
            "Upstream session checks (a family's kept refresh token redeemed at the upstream), by outcome.",
            "outcome",
            UpstreamCheck::ALL
                .iter()
                .map(|r| r.label())
                .zip(&self.upstream_checks),
        );
        let _ = writeln!(
            out,
            "# HELP refresh_proxy_upstream_check_waiters_total Refreshes that waited for another refresh's upstream check of their family.\n\
             # TYPE refresh_proxy_upstream_check_waiters_total counter\n\
             refresh_proxy_upstream_check_waiters_total {}",
            self.upstream_check_waiters.load(Ordering::Relaxed)
        );
        labelled(
            &mut out,
            "logouts_received_total",
            "Back-channel logout tokens received from the upstream, by outcome.",
            "outcome",
            LogoutReceived::ALL
                .iter()
                .map(|r| r.label())
                .zip(&self.logouts),
        );
        labelled(
            &mut out,
            "logouts_passed_on_total",
            "Logout tokens passed on to a client's own back-channel logout endpoint, by outcome.",
            "outcome",
            [
                ("ok", &self.logouts_passed_on),
                ("failed", &self.logouts_pass_on_failed),
            ]
            .into_iter(),
        );
        let _ = writeln!(
            out,
            "# HELP refresh_proxy_upstream_revocations_pending Family ends waiting to be told to the upstream.\n\
             # TYPE refresh_proxy_upstream_revocations_pending gauge\n\
             refresh_proxy_upstream_revocations_pending {}",
            self.upstream_revocations_pending.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP refresh_proxy_endpoint_known Whether the proxy knows the upstream path of an endpoint it answers for (0 before discovery).\n\
             # TYPE refresh_proxy_endpoint_known gauge\n",
        );
        for (i, endpoint) in KNOWN_ENDPOINTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "refresh_proxy_endpoint_known{{endpoint=\"{endpoint}\"}} {}",
                self.endpoint_known[i].load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Writes one counter family with a label from a closed set.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(
        out,
        "# HELP refresh_proxy_{name} {help}\n# TYPE refresh_proxy_{name} counter"
    );
    for (value, counter) in values {
        let _ = writeln!(
            out,
            "refresh_proxy_{name}{{{label}=\"{value}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
}

/// Decrements the open-connections gauge when dropped (the connection closed).
#[derive(Debug)]
pub struct OpenConnection(std::sync::Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the in-flight gauge when dropped (the request finished or was abandoned).
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_counter_is_there_from_the_start() {
        // A series that appears with its first event hides that event from rate(): an alert
        // on the first 503 would not fire (deploy/prometheus/).
        let text = Metrics::default().render();
        for line in [
            "refresh_proxy_requests_total{endpoint=\"token\",outcome=\"temporarily_unavailable\"} 0",
            "refresh_proxy_requests_total{endpoint=\"backchannel_logout\",outcome=\"ok\"} 0",
            "refresh_proxy_token_requests_total{grant_type=\"refresh_token\",outcome=\"ok\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
    }

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.request(Route::Token, Outcome::Ok);
        m.request(Route::Token, Outcome::Ok);
        m.request(Route::Other, Outcome::Forwarded);
        inc(&m.reuse_detections);
        m.refresh_latency(Duration::from_micros(300));
        m.refresh_latency(Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("refresh_proxy_requests_total{endpoint=\"token\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "refresh_proxy_requests_total{endpoint=\"other\",outcome=\"forwarded\"} 1"
            )
        );
        assert!(text.contains("refresh_proxy_reuse_detections_total 1"));
        assert!(text.contains("refresh_proxy_refresh_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("refresh_proxy_refresh_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("refresh_proxy_refresh_duration_seconds_count 2"));
        assert!(text.contains("# TYPE refresh_proxy_rotations_total counter"));
        m.capture_skip(CaptureSkip::SenderConstrained);
        let text = m.render();
        assert!(
            text.contains("refresh_proxy_capture_skips_total{reason=\"sender_constrained\"} 1")
        );
        assert!(text.contains("refresh_proxy_capture_skips_total{reason=\"store\"} 0"));
        assert_eq!(m.capture_skips(), 1);
        let m = std::sync::Arc::new(m);
        let open = m.open_connection();
        inc(&m.connection_limit_reached);
        let text = m.render();
        assert!(text.contains("refresh_proxy_open_connections 1"), "{text}");
        assert!(text.contains("refresh_proxy_connection_limit_reached_total 1"));
        drop(open);
        assert!(m.render().contains("refresh_proxy_open_connections 0"));
    }
}
