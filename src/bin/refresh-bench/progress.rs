//! The redrawn progress line on a terminal: elapsed time, requests per second over the last
//! interval, errors so far. Only when stderr is a terminal; otherwise nothing is counted or
//! printed (the connections then skip the two counters).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counters the connections add to (relaxed: only the printer reads them).
#[derive(Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn answer(&self, ok: bool) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failure(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Redraws the line every `every` until [`Printer::stop`].
pub struct Printer {
    done: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The line itself, without the terminal's control sequences.
pub fn line(elapsed: Duration, total: Duration, per_s: f64, errors: u64) -> String {
    format!(
        "{:.1} s of {:.1} s  {per_s:.0} req/s  {errors} errors",
        elapsed.as_secs_f64(),
        total.as_secs_f64()
    )
}

impl Printer {
    pub fn start(counters: Arc<Counters>, total: Duration, every: Duration) -> Printer {
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut last = (start, 0u64);
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(every);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                let answered = counters.answered.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                let dt = now.duration_since(last.0).as_secs_f64().max(1e-9);
                let per_s = answered.saturating_sub(last.1) as f64 / dt;
                last = (now, answered);
                let text = line(now.duration_since(start), total, per_s, errors);
                // Carriage return and erase the line: the line is redrawn in place.
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{text}");
                let _ = err.flush();
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        });
        Printer { done, handle }
    }

    /// Stops the printer and erases its line, so the summary starts on a clean line.
    pub fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_time_rate_and_errors() {
        assert_eq!(
            line(
                Duration::from_millis(2500),
                Duration::from_secs(11),
                41_234.4,
                7
            ),
            "2.5 s of 11.0 s  41234 req/s  7 errors"
        );
    }
}
