//! Where a refresh grant's time goes, for `server.server_timing` (docs/behaviour.md, "Server
//! timing"): the layer and the engine mark the end of each phase, and the answer says how long
//! each took in a W3C `Server-Timing` header, so a load generator can tell, request by request,
//! the proxy's own time from the time outside it (the kernel, the connection's queueing, the
//! network) and see which phase the slowest requests spent theirs in. Pure: the clock is read,
//! nothing else.
//!
//! ```
//! use refresh_proxy::internal::timing::{Phase, Timing};
//! let t = Timing::start();
//! for phase in [Phase::Form, Phase::Auth, Phase::Prepare, Phase::Store] {
//!     t.mark(phase);
//! }
//! let header = t.header();
//! let text = header.to_str().expect("ASCII");
//! assert!(text.starts_with("form;dur=") && text.contains(", mint;dur=") && text.contains(", total;dur="));
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use http::HeaderValue;

/// The phases of a refresh grant at the proxy, each ended by a mark, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The body was read and parsed (from the call of the layer).
    Form,
    /// The client was authenticated.
    Auth,
    /// The token was parsed and the redemption made ready (DPoP proof, successor tokens).
    Prepare,
    /// The store answered (with an upstream check, when one was due).
    Store,
}

const PHASES: [(Phase, &str); 4] = [
    (Phase::Form, "form"),
    (Phase::Auth, "auth"),
    (Phase::Prepare, "prep"),
    (Phase::Store, "store"),
];

/// The marks of one request: microseconds since its start (0: not reached).
#[derive(Debug)]
pub struct Timing {
    start: Instant,
    marks: [AtomicU32; 4],
}

impl Timing {
    pub fn start() -> Timing {
        Timing {
            start: Instant::now(),
            marks: Default::default(),
        }
    }

    /// The end of `phase`, now.
    pub fn mark(&self, phase: Phase) {
        let us = u32::try_from(self.start.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.marks[phase as usize].store(us.max(1), Ordering::Relaxed);
    }

    /// `Server-Timing` (W3C Server Timing, durations in milliseconds): each phase reached,
    /// `mint` (signing and the answer, from the store's answer to now) and `total`, now.
    pub fn header(&self) -> HeaderValue {
        use std::fmt::Write as _;
        let now = u32::try_from(self.start.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut text = String::with_capacity(96);
        let mut last = 0;
        for (phase, name) in PHASES {
            let at = self.marks[phase as usize].load(Ordering::Relaxed);
            if at == 0 {
                continue;
            }
            let _ = write!(text, "{name};dur={}, ", millis(at.saturating_sub(last)));
            last = at;
        }
        if self.marks[Phase::Store as usize].load(Ordering::Relaxed) != 0 {
            let _ = write!(text, "mint;dur={}, ", millis(now.saturating_sub(last)));
        }
        let _ = write!(text, "total;dur={}", millis(now));
        HeaderValue::try_from(text).expect("ASCII digits and names")
    }
}

/// Microseconds as milliseconds with three decimals.
fn millis(us: u32) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_not_reached_are_left_out_and_the_parts_add_up() {
        let t = Timing::start();
        t.mark(Phase::Form);
        let text = t.header().to_str().expect("ASCII").to_owned();
        assert!(text.starts_with("form;dur=") && text.contains("total;dur="));
        assert!(!text.contains("store") && !text.contains("mint"), "{text}");
        for phase in [Phase::Auth, Phase::Prepare, Phase::Store] {
            std::thread::sleep(std::time::Duration::from_millis(2));
            t.mark(phase);
        }
        let text = t.header().to_str().expect("ASCII").to_owned();
        let durs: Vec<(String, f64)> = text
            .split(", ")
            .map(|part| {
                let (name, dur) = part.split_once(";dur=").expect("name;dur=");
                (name.to_owned(), dur.parse().expect("milliseconds"))
            })
            .collect();
        let names: Vec<&str> = durs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["form", "auth", "prep", "store", "mint", "total"]);
        let parts: f64 = durs[..5].iter().map(|(_, d)| d).sum();
        let total = durs[5].1;
        assert!((parts - total).abs() < 0.0015, "{text}");
        assert!(durs[1].1 >= 2.0 && total >= 6.0, "{text}");
    }

    #[test]
    fn milliseconds_have_three_decimals() {
        assert_eq!(millis(0), "0.000");
        assert_eq!(millis(1_234), "1.234");
        assert_eq!(millis(12), "0.012");
    }
}
