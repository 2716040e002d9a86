//! Per-second data of the measured window, for `--report`: answers, errors and a small
//! logarithmic latency histogram per second.
//!
//! Kept cheap on the request path: recording is an index computation and two increments in
//! the connection's own vector (no lock, no atomic); the vectors are merged at the end. The
//! latency buckets are 8 per power of two, all of the same width on a logarithmic scale (each
//! edge 2^(1/8), about 9 %, above the last) from 1 µs to about 67 s, so a second costs under
//! 1 KiB per connection whatever the load, a histogram drawn with bars of equal width is
//! faithful, and a percentile read from them is the upper edge of its bucket (at most 9 % high).

use std::time::Duration;

/// Sub-buckets per power of two.
pub const PER_OCTAVE: usize = 8;
/// Powers of two covered: 2^0 µs to 2^26 µs (about 67 s).
const OCTAVES: usize = 26;
pub const BUCKETS: usize = OCTAVES * PER_OCTAVE;

/// The bucket of a latency in microseconds: ⌊8·log2(us)⌋ (0 counts as 1; beyond the last
/// bucket: the last).
pub fn bucket(us: u64) -> usize {
    let i = ((us.max(1) as f64).log2() * PER_OCTAVE as f64).floor() as usize;
    i.min(BUCKETS - 1)
}

/// The lower edge of bucket `i`, in microseconds: 2^(i/8).
pub fn bucket_low(i: usize) -> f64 {
    2f64.powf(i as f64 / PER_OCTAVE as f64)
}

/// The upper edge of bucket `i` (the lower edge of the next one).
pub fn bucket_high(i: usize) -> f64 {
    bucket_low(i + 1)
}

/// One second of the measured window.
#[derive(Clone)]
pub struct Second {
    /// HTTP 200 answers.
    pub ok: u32,
    /// Other answers and requests without an answer.
    pub errors: u32,
    /// Latencies of every answer (any status), by [`bucket`].
    pub latency: [u32; BUCKETS],
}

impl Second {
    fn new() -> Second {
        Second {
            ok: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }

    #[cfg(test)]
    pub fn answers(&self) -> u64 {
        self.latency.iter().map(|&n| u64::from(n)).sum()
    }

    /// The upper edge of the bucket holding percentile `q` (0-100) of this second's
    /// latencies, in microseconds; `None` without answers.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        percentile(&self.latency, q)
    }
}

/// Percentile `q` (0-100) of a bucket array: the upper edge of its bucket, in microseconds.
pub fn percentile(buckets: &[u32], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    // The rank of the percentile, 1-based: the smallest count whose share reaches q.
    let rank = ((q / 100.0 * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return Some(bucket_high(i));
        }
    }
    Some(bucket_high(buckets.len() - 1))
}

/// The seconds of one connection (and, merged, of the run), from the start of the window.
#[derive(Clone, Default)]
pub struct Timeline {
    pub seconds: Vec<Second>,
}

impl Timeline {
    fn second(&mut self, since_window: Duration) -> &mut Second {
        let i = since_window.as_secs() as usize;
        if i >= self.seconds.len() {
            self.seconds.resize_with(i + 1, Second::new);
        }
        &mut self.seconds[i]
    }

    /// An answer: `ok` for a 200, its latency in microseconds.
    pub fn answer(&mut self, since_window: Duration, ok: bool, latency_us: u64) {
        let s = self.second(since_window);
        if ok {
            s.ok += 1;
        } else {
            s.errors += 1;
        }
        s.latency[bucket(latency_us)] += 1;
    }

    /// A request without an answer.
    pub fn failure(&mut self, since_window: Duration) {
        self.second(since_window).errors += 1;
    }

    pub fn merge(&mut self, other: &Timeline) {
        if other.seconds.len() > self.seconds.len() {
            self.seconds.resize_with(other.seconds.len(), Second::new);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.ok += theirs.ok;
            mine.errors += theirs.errors;
            for (a, b) in mine.latency.iter_mut().zip(theirs.latency.iter()) {
                *a += b;
            }
        }
    }

    /// Every second's latency buckets summed: the run's histogram.
    pub fn histogram(&self) -> [u32; BUCKETS] {
        let mut all = [0u32; BUCKETS];
        for s in &self.seconds {
            for (a, b) in all.iter_mut().zip(s.latency.iter()) {
                *a = a.saturating_add(*b);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_eight_per_power_of_two_of_equal_log_width() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 8);
        assert_eq!(bucket(3), 12);
        assert_eq!(bucket(1024), 80);
        assert_eq!(bucket(1116), 80);
        assert_eq!(bucket(1117), 81);
        assert_eq!(bucket(2047), 87);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // Every value lies within its bucket's edges.
        for us in [1u64, 5, 9, 100, 1000, 1234, 4096, 99_999, 5_000_000] {
            let i = bucket(us);
            assert!(
                bucket_low(i) <= us as f64 && (us as f64) < bucket_high(i),
                "{us} in {i}"
            );
        }
    }

    #[test]
    fn percentiles_come_from_the_buckets() {
        let mut t = Timeline::default();
        for _ in 0..90 {
            t.answer(Duration::from_millis(300), true, 1000);
        }
        for _ in 0..10 {
            t.answer(Duration::from_millis(700), false, 100_000);
        }
        t.failure(Duration::from_millis(2500));
        assert_eq!(t.seconds.len(), 3);
        let s = &t.seconds[0];
        assert_eq!((s.ok, s.errors, s.answers()), (90, 10, 100));
        assert_eq!(s.percentile(50.0), Some(bucket_high(bucket(1000))));
        assert_eq!(s.percentile(90.0), Some(bucket_high(bucket(1000))));
        assert_eq!(s.percentile(99.0), Some(bucket_high(bucket(100_000))));
        assert_eq!(t.seconds[1].percentile(50.0), None);
        assert_eq!(t.seconds[2].errors, 1);

        let mut merged = Timeline::default();
        merged.merge(&t);
        merged.merge(&t);
        assert_eq!(merged.seconds[0].ok, 180);
        assert_eq!(merged.histogram()[bucket(100_000)], 20);
    }
}
