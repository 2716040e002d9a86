//! Where the slowest requests spent their time, from the proxy's `Server-Timing` answers
//! (`server.server_timing = true`; docs/behaviour.md, "Server timing").
//!
//! Every measured answer that carries the header is kept as one [`Sample`]: its latency (from
//! the intended send time in open loop, as the histogram counts it), its service time (from the
//! actual send) and the proxy's phases. The latency then splits into
//!
//! - `queued`: latency − service time: the request could not be sent on time because its
//!   connection's previous answer was late (the server's backlog; 0 in closed loop);
//! - `outside`: service time − the proxy's total: the kernel's socket work on both sides, the
//!   time the request waited to be read (accept, worker hand-off, head read) and for its answer
//!   to be written, the network, and the generator;
//! - the proxy's own phases: `form` (body read), `auth`, `prep`, `store`, `mint` (signing, the
//!   answer).
//!
//! [`breakdown`] averages each part over a band of requests ranked by latency: all of them,
//! the slowest 1 % and the slowest 0.1 %, so a reader sees which part grows in the tail.

use serde_json::{Map, Value, json};

/// The proxy's phases, in the header's order; `total` last.
pub const PHASES: [&str; 6] = ["form", "auth", "prep", "store", "mint", "total"];

/// One answer: microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub latency: u32,
    pub service: u32,
    pub phases: [u32; 6],
}

/// The phases of a `Server-Timing` value (`name;dur=<ms>` items, comma-separated); unknown
/// names are ignored; `None` without a `total`.
pub fn parse(value: &[u8]) -> Option<[u32; 6]> {
    let text = std::str::from_utf8(value).ok()?;
    let mut out = [0u32; 6];
    let mut total = false;
    for item in text.split(',') {
        let mut params = item.trim().split(';');
        let name = params.next()?.trim();
        let Some(i) = PHASES.iter().position(|p| *p == name) else {
            continue;
        };
        let ms: f64 = params
            .find_map(|p| p.trim().strip_prefix("dur="))
            .and_then(|d| d.trim().parse().ok())?;
        out[i] = (ms * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32;
        total |= i == PHASES.len() - 1;
    }
    total.then_some(out)
}

/// Mean microseconds of each part over the slowest `share` of `samples` (1.0: all of them),
/// ranked by latency; `samples` is sorted in place.
fn band(samples: &mut [Sample], share: f64) -> Option<Map<String, Value>> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable_by_key(|s| s.latency);
    let n = ((samples.len() as f64 * share).ceil() as usize).clamp(1, samples.len());
    let tail = &samples[samples.len() - n..];
    let mean = |f: &dyn Fn(&Sample) -> u32| {
        (tail.iter().map(|s| f64::from(f(s))).sum::<f64>() / n as f64).round()
    };
    let mut m = Map::new();
    m.insert("requests".into(), json!(n));
    m.insert("latency".into(), json!(mean(&|s| s.latency)));
    m.insert(
        "queued".into(),
        json!(mean(&|s| s.latency.saturating_sub(s.service))),
    );
    m.insert(
        "outside".into(),
        json!(mean(&|s| s.service.saturating_sub(s.phases[5]))),
    );
    for (i, name) in PHASES.iter().enumerate() {
        m.insert((*name).into(), json!(mean(&|s| s.phases[i])));
    }
    Some(m)
}

/// The breakdown of all answers, the slowest 1 % and the slowest 0.1 % (µs, means); `None`
/// when no answer carried the header.
pub fn breakdown(samples: &mut [Sample]) -> Option<Value> {
    let all = band(samples, 1.0)?;
    Some(json!({
        "all": all,
        "slowest_1pct": band(samples, 0.01),
        "slowest_0_1pct": band(samples, 0.001),
    }))
}

/// The breakdown as a few lines of text.
pub fn human(breakdown: &Value) -> String {
    let mut out = String::from(
        "where the time went (µs, means; Server-Timing)   latency   queued  outside     form     auth     prep    store     mint\n",
    );
    for (key, label) in [
        ("all", "all answers"),
        ("slowest_1pct", "slowest 1 %"),
        ("slowest_0_1pct", "slowest 0.1 %"),
    ] {
        let b = &breakdown[key];
        let n = |k: &str| b[k].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "  {label:<15} ({:>7} answers)            {:>9.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}\n",
            n("requests"),
            n("latency"),
            n("queued"),
            n("outside"),
            n("form"),
            n("auth"),
            n("prep"),
            n("store"),
            n("mint"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_header_is_read_in_microseconds() {
        let v = b"form;dur=0.012, auth;dur=0.003, prep;dur=0.010, store;dur=1.250, mint;dur=0.040, total;dur=1.315";
        assert_eq!(parse(v), Some([12, 3, 10, 1250, 40, 1315]));
        assert_eq!(
            parse(b"form;dur=0.012, total;dur=0.020"),
            Some([12, 0, 0, 0, 0, 20])
        );
        assert_eq!(
            parse(b"db;desc=x;dur=5, total;dur=1"),
            Some([0, 0, 0, 0, 0, 1000])
        );
        assert_eq!(parse(b"form;dur=0.012"), None, "no total");
        assert_eq!(parse(b"total;dur=abc"), None);
    }

    #[test]
    fn the_tail_band_averages_the_slowest_requests() {
        let mut samples: Vec<Sample> = (1..=1000)
            .map(|i| Sample {
                latency: i * 10,
                service: i * 10 - if i > 990 { 100 } else { 0 },
                phases: [1, 1, 1, if i > 990 { 500 } else { 5 }, 1, 9],
            })
            .collect();
        let b = breakdown(&mut samples).expect("samples");
        let tail = &b["slowest_1pct"];
        assert_eq!(tail["requests"], 10);
        assert_eq!(tail["queued"], 100.0);
        assert_eq!(tail["store"], 500.0);
        assert_eq!(b["slowest_0_1pct"]["requests"], 1);
        assert_eq!(b["slowest_0_1pct"]["latency"], 10000.0);
        assert_eq!(b["all"]["requests"], 1000);
        assert!(human(&b).contains("slowest 1 %"));
        assert_eq!(breakdown(&mut []), None);
    }
}
