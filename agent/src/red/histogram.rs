//! RED's histograms: the fixed OpenTelemetry buckets for Prometheus (the
//! log-linear histogram for percentiles is [`crate::histogram`]'s), plus a
//! per-second rate window. Recording is a handful of relaxed atomic
//! operations and never allocates or locks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{seconds_to_nanos, BucketCounts};

/// Upper bounds, in seconds, of the `http.server.request.duration`
/// histogram buckets that OpenTelemetry's HTTP semantic conventions
/// recommend (stable since v1.23); the `+Inf` bucket follows them.
pub const OTEL_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Counts per OpenTelemetry bucket (`+Inf` last) and the sum of
/// observations.
pub(crate) type OtelBuckets = BucketCounts<{ OTEL_DURATION_BUCKETS.len() + 1 }>;

/// [`OTEL_DURATION_BUCKETS`] in nanoseconds.
pub(crate) static OTEL_BOUNDS_NS: [u64; OTEL_DURATION_BUCKETS.len()] =
    seconds_to_nanos(OTEL_DURATION_BUCKETS);

/// Seconds of history the rate window keeps.
pub(crate) const RATE_WINDOW_SECS: u32 = 60;

/// Events per second over the last minute: one slot per second, each
/// tagged with the second it counts, so stale slots are recognised
/// without a background sweeper.
#[derive(Debug)]
pub(crate) struct RateWindow {
    /// `second << 32 | count`.
    slots: [AtomicU64; RATE_WINDOW_SECS as usize],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            slots: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        }
    }
}

impl RateWindow {
    /// Counts one event in `second` (seconds since the recorder started).
    pub(crate) fn record(&self, second: u32) {
        let Some(slot) = self.slots.get((second % RATE_WINDOW_SECS) as usize) else {
            return;
        };
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            if (current >> 32) as u32 == second && current != u64::MAX {
                slot.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match slot.compare_exchange_weak(
                current,
                (u64::from(second) << 32) | 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Events in the last [`RATE_WINDOW_SECS`] seconds up to and including
    /// `now_second`.
    pub(crate) fn recent(&self, now_second: u32) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&v| v != u64::MAX)
            .filter(|&v| {
                let second = (v >> 32) as u32;
                second <= now_second && now_second - second < RATE_WINDOW_SECS
            })
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otel_buckets_follow_prometheus_le_semantics() {
        assert_eq!(OTEL_BOUNDS_NS[0], 5_000_000);
        assert_eq!(OTEL_BOUNDS_NS[13], 10_000_000_000);
        let b = OtelBuckets::new(&OTEL_BOUNDS_NS);
        b.record(5_000_000); // exactly 5 ms: in the 0.005 bucket
        b.record(5_000_001);
        b.record(20_000_000_000);
        let (counts, sum) = b.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[14], 1);
        assert!((sum - 20.010000001).abs() < 1e-9);
    }

    #[test]
    fn rate_window_forgets_old_seconds() {
        let w = RateWindow::default();
        for second in 0..120 {
            w.record(second);
            w.record(second);
        }
        assert_eq!(w.recent(119), 120);
        assert_eq!(w.recent(150), 2 * 29);
        assert_eq!(w.recent(500), 0);
        assert_eq!(RateWindow::default().recent(0), 0);
    }
}
