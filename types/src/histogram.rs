//! A latency histogram with fixed log-scale buckets, shared by every process role (the
//! broker's request and commit latencies, a WAL replica's fdatasyncs) so that their series
//! aggregate across nodes, and its samples in the Prometheus text format.
//!
//! Bucket upper bounds are `LATENCY_BASE_US · 2^i` µs for `i` in `0..LATENCY_BUCKETS`: 50 µs up
//! to about 26 s, then `+Inf`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const LATENCY_BASE_US: u64 = 50;
pub const LATENCY_BUCKETS: usize = 20;

/// One counter per bucket (not cumulative; rendering adds them up, so a scrape always sees
/// `_count` equal to the `+Inf` bucket) and the sum in microseconds. One relaxed `fetch_add`
/// per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_us: AtomicU64,
}

/// The bucket of a duration in µs: the smallest `i` with `us <= BASE · 2^i`, or the `+Inf`
/// bucket. `(us − 1) / BASE` lies in `[2^(i−1), 2^i − 1]` exactly for bucket `i`.
pub fn bucket_of(us: u64) -> usize {
    let q = us.saturating_sub(1) / LATENCY_BASE_US;
    ((u64::BITS - q.leading_zeros()) as usize).min(LATENCY_BUCKETS)
}

fn bucket_bound_seconds(i: usize) -> f64 {
    (LATENCY_BASE_US << i) as f64 / 1e6
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `_bucket`, `_sum` and `_count` samples (no `# HELP`/`# TYPE` lines); `labels` is
    /// empty or `k="v",…` (no braces).
    pub fn render_samples(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            if i < LATENCY_BUCKETS {
                let le = bucket_bound_seconds(i);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                );
            } else {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                );
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_smallest_bound_at_or_above() {
        let check = |us: u64, expected: usize| {
            assert_eq!(bucket_of(us), expected, "{us} µs");
            if expected < LATENCY_BUCKETS {
                assert!(us <= LATENCY_BASE_US << expected);
            }
            if expected > 0 {
                assert!(us > LATENCY_BASE_US << (expected - 1));
            }
        };
        for (us, b) in [
            (0, 0),
            (1, 0),
            (50, 0),
            (51, 1),
            (100, 1),
            (101, 2),
            (200, 2),
            (201, 3),
            (1_000_000, 15),
            (50 << 19, 19),
            ((50 << 19) + 1, 20),
            (u64::MAX, 20),
        ] {
            check(us, b);
        }
    }

    #[test]
    fn samples_are_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(150));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render_samples(&mut out, "x_seconds", "");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.0002\"} 2\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{le=\"26.2144\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 100.00019\n"), "{out}");
        assert_eq!(h.count(), 3);

        let mut labelled = String::new();
        h.render_samples(&mut labelled, "x_seconds", "api=\"fetch\"");
        assert!(
            labelled.contains("x_seconds_bucket{api=\"fetch\",le=\"+Inf\"} 3\n"),
            "{labelled}"
        );
        assert!(
            labelled.contains("x_seconds_count{api=\"fetch\"} 3\n"),
            "{labelled}"
        );
    }
}
