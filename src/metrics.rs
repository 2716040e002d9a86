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
    Other,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Token,
        Route::Revocation,
        Route::Introspection,
        Route::Jwks,
        Route::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Token => "token",
            Route::Revocation => "revocation",
            Route::Introspection => "introspection",
            Route::Jwks => "jwks",
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
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::Forwarded,
        Outcome::InvalidRequest,
        Outcome::InvalidClient,
        Outcome::InvalidGrant,
        Outcome::InvalidScope,
        Outcome::UnauthorizedClient,
        Outcome::TemporarilyUnavailable,
        Outcome::UpstreamError,
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
        }
    }
}

/// Upper bounds (seconds) of the refresh latency histogram's buckets.
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
    refresh_latency: Histogram,
    pub rotations: AtomicU64,
    pub reuses: AtomicU64,
    pub grace_hits: AtomicU64,
    pub reuse_detections: AtomicU64,
    pub family_revocations: AtomicU64,
    pub captures: AtomicU64,
    pub capture_skips: AtomicU64,
    pub store_errors: AtomicU64,
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
                let n = self.requests[r][o].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "refresh_proxy_requests_total{{endpoint=\"{}\",outcome=\"{}\"}} {n}",
                        route.label(),
                        outcome.label()
                    );
                }
            }
        }
        out.push_str(
            "# HELP refresh_proxy_refresh_duration_seconds Refresh grants answered by the proxy.\n\
             # TYPE refresh_proxy_refresh_duration_seconds histogram\n",
        );
        self.refresh_latency
            .render(&mut out, "refresh_proxy_refresh_duration_seconds");
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
                "capture_skips",
                "Upstream answers passed on uncaptured (no subject, store error).",
                &self.capture_skips,
            ),
            (
                "store_errors",
                "Token store operations that failed.",
                &self.store_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP refresh_proxy_{name}_total {help}\n# TYPE refresh_proxy_{name}_total counter\nrefresh_proxy_{name}_total {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
