//! Lag samples aggregated into HDR histograms: since start, and over
//! rolling windows of 10 s, 1 min and 5 min; plus a per-second timeline of
//! percentiles for the SVG plot and the cumulative buckets `/metrics`
//! exports. Only the agent's watchdog thread records; readers take the
//! same lock briefly. Nothing here runs on the host's runtime.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use crate::histogram::HistogramSummary;

/// Lag is recorded in microseconds, from 1 µs to 10 minutes (longer values
/// are clamped), with two significant digits: every percentile is within
/// 1 % of the true value.
const HIGHEST_US: u64 = 600_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// Upper bounds, in seconds, of the `stethoscope_executor_lag_seconds`
/// buckets (`+Inf` follows): from a healthy runtime's sub-millisecond lag
/// to multi-second blocks.
pub const LAG_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Seconds of per-second points kept for the timeline (the 5 min window).
pub(crate) const TIMELINE_SECS: usize = 300;

/// One second of the timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TimelinePoint {
    /// End of the second.
    pub(crate) at: SystemTime,
    /// Samples recorded in it.
    pub(crate) count: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

fn histogram<T: hdrhistogram::Counter>() -> Result<Histogram<T>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
}

fn summary<T: hdrhistogram::Counter>(h: &Histogram<T>) -> HistogramSummary {
    if h.is_empty() {
        return HistogramSummary::default();
    }
    let us = |v: u64| Duration::from_micros(v);
    HistogramSummary {
        count: h.len(),
        min: us(h.min()),
        max: us(h.max()),
        mean: Duration::from_secs_f64(h.mean().max(0.0) / 1e6),
        stddev: Duration::from_secs_f64(h.stdev().max(0.0) / 1e6),
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
    }
}

/// Slices of equal length; a window is the merge of the newest `keep`
/// slices, so it covers between `keep - 1` and `keep` slice lengths
/// back from now plus the current partial slice.
#[derive(Debug)]
struct Ring {
    slice_secs: u64,
    keep: usize,
    /// (slice index, histogram), oldest first.
    slices: VecDeque<(u64, Histogram<u32>)>,
}

impl Ring {
    fn new(slice_secs: u64, window_secs: u64) -> Self {
        Ring {
            slice_secs,
            // One more than the window so that it covers at least the window.
            keep: (window_secs / slice_secs) as usize + 1,
            slices: VecDeque::new(),
        }
    }

    /// Drops slices that fell out of the window at `now_s`.
    fn expire(&mut self, now_s: u64) {
        let current = now_s / self.slice_secs;
        while let Some((index, _)) = self.slices.front() {
            if index + (self.keep as u64) <= current {
                self.slices.pop_front();
            } else {
                break;
            }
        }
    }

    fn record(&mut self, now_s: u64, value_us: u64) -> Result<(), hdrhistogram::CreationError> {
        self.expire(now_s);
        let current = now_s / self.slice_secs;
        if self
            .slices
            .back()
            .is_none_or(|(index, _)| *index != current)
        {
            self.slices.push_back((current, histogram()?));
        }
        if let Some((_, h)) = self.slices.back_mut() {
            h.saturating_record(value_us.clamp(1, HIGHEST_US));
        }
        Ok(())
    }

    fn merged(&mut self, now_s: u64) -> Result<Histogram<u32>, hdrhistogram::CreationError> {
        self.expire(now_s);
        let mut out = histogram()?;
        for (_, h) in &self.slices {
            // Same bounds and precision: addition cannot fail.
            let _ = out.add(h);
        }
        Ok(out)
    }
}

/// The lag histograms of one runtime.
#[derive(Debug)]
pub(crate) struct LagWindows {
    all: Histogram<u64>,
    sum_us: u64,
    ten_seconds: Ring,
    one_minute: Ring,
    five_minutes: Ring,
    /// The second being filled for the timeline: (second, histogram).
    second: Option<(u64, Histogram<u32>)>,
    timeline: VecDeque<TimelinePoint>,
    /// Wall-clock time of second 0.
    epoch: SystemTime,
}

/// Summaries of every window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowSummaries {
    pub(crate) all: HistogramSummary,
    pub(crate) ten_seconds: HistogramSummary,
    pub(crate) one_minute: HistogramSummary,
    pub(crate) five_minutes: HistogramSummary,
}

impl LagWindows {
    pub(crate) fn new(epoch: SystemTime) -> Result<Self, hdrhistogram::CreationError> {
        Ok(LagWindows {
            all: histogram()?,
            sum_us: 0,
            ten_seconds: Ring::new(1, 10),
            one_minute: Ring::new(10, 60),
            five_minutes: Ring::new(60, 300),
            second: None,
            timeline: VecDeque::with_capacity(TIMELINE_SECS),
            epoch,
        })
    }

    /// Records one lag sample at `now` (time since the epoch).
    pub(crate) fn record(&mut self, now: Duration, lag: Duration) {
        let now_s = now.as_secs();
        let value_us = u64::try_from(lag.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_US);
        self.all.saturating_record(value_us);
        self.sum_us = self.sum_us.saturating_add(value_us);
        let _ = self.ten_seconds.record(now_s, value_us);
        let _ = self.one_minute.record(now_s, value_us);
        let _ = self.five_minutes.record(now_s, value_us);
        self.roll_second(now_s);
        if self.second.is_none() {
            if let Ok(h) = histogram() {
                self.second = Some((now_s, h));
            }
        }
        if let Some((_, h)) = self.second.as_mut() {
            h.saturating_record(value_us);
        }
    }

    /// Closes the timeline's second if `now_s` is past it.
    pub(crate) fn roll_second(&mut self, now_s: u64) {
        let Some((second, h)) = &self.second else {
            return;
        };
        if *second == now_s {
            return;
        }
        let s = summary(h);
        let point = TimelinePoint {
            at: self.epoch + Duration::from_secs(second + 1),
            count: s.count,
            p50: s.p50,
            p99: s.p99,
            max: s.max,
        };
        if self.timeline.len() == TIMELINE_SECS {
            self.timeline.pop_front();
        }
        self.timeline.push_back(point);
        self.second = None;
    }

    /// Summaries of every window at `now` (time since the epoch).
    pub(crate) fn summaries(&mut self, now: Duration) -> WindowSummaries {
        let now_s = now.as_secs();
        let window = |ring: &mut Ring| ring.merged(now_s).map(|h| summary(&h)).unwrap_or_default();
        WindowSummaries {
            all: summary(&self.all),
            ten_seconds: window(&mut self.ten_seconds),
            one_minute: window(&mut self.one_minute),
            five_minutes: window(&mut self.five_minutes),
        }
    }

    /// The newest completed second, if any.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn last_point(&mut self, now: Duration) -> Option<TimelinePoint> {
        self.roll_second(now.as_secs());
        self.timeline.back().copied()
    }

    /// The per-second points of the last five minutes, oldest first.
    pub(crate) fn timeline(&mut self, now: Duration) -> Vec<TimelinePoint> {
        self.roll_second(now.as_secs());
        self.timeline.iter().copied().collect()
    }

    /// Non-cumulative counts per [`LAG_BUCKETS`] bucket (`+Inf` last) since
    /// start, and the sum of all samples in seconds.
    pub(crate) fn buckets(&self) -> ([u64; LAG_BUCKETS.len() + 1], f64) {
        let mut counts = [0u64; LAG_BUCKETS.len() + 1];
        for value in self.all.iter_recorded() {
            // Values are bucketed at the histogram's resolution (1 %).
            let seconds = value.value_iterated_to() as f64 / 1e6;
            let index = LAG_BUCKETS
                .iter()
                .position(|&bound| seconds <= bound)
                .unwrap_or(LAG_BUCKETS.len());
            counts[index] += value.count_at_value();
        }
        (counts, self.sum_us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn windows_forget_old_samples_and_all_keeps_them() {
        let mut w = LagWindows::new(SystemTime::now()).unwrap();
        w.record(Duration::from_secs(1), ms(500));
        for second in 100..110u64 {
            for _ in 0..100 {
                w.record(Duration::from_secs(second), ms(1));
            }
        }
        let s = w.summaries(Duration::from_secs(109));
        assert_eq!(s.all.count, 1001);
        assert!(
            s.all.max >= ms(495) && s.all.max <= ms(505),
            "{:?}",
            s.all.max
        );
        assert_eq!(s.ten_seconds.count, 1000);
        assert!(s.ten_seconds.max <= ms(2));
        assert_eq!(s.five_minutes.count, 1001, "second 1 is 108 s old");
        // 10 s later the 10 s window is empty, the minute still has them.
        let s = w.summaries(Duration::from_secs(121));
        assert_eq!(s.ten_seconds.count, 0);
        assert_eq!(s.one_minute.count, 1000);
        assert_eq!(s.five_minutes.count, 1001);
        assert_eq!(w.summaries(Duration::from_secs(500)).five_minutes.count, 0);
    }

    #[test]
    fn percentiles_are_within_one_percent() {
        let mut w = LagWindows::new(SystemTime::now()).unwrap();
        for v in 1..=1000u64 {
            w.record(Duration::from_secs(5), ms(v));
        }
        let s = w.summaries(Duration::from_secs(5)).ten_seconds;
        for (got, want) in [(s.p50, 500.0), (s.p99, 990.0), (s.max, 1000.0)] {
            let got = got.as_secs_f64() * 1e3;
            assert!((got - want).abs() / want <= 0.01, "{got} vs {want}");
        }
        assert!((s.mean.as_secs_f64() * 1e3 - 500.5).abs() < 5.0);
    }

    #[test]
    fn buckets_follow_le_semantics_and_timeline_closes_seconds() {
        let mut w = LagWindows::new(SystemTime::now()).unwrap();
        w.record(Duration::from_secs(0), Duration::from_micros(50));
        w.record(Duration::from_secs(0), ms(7));
        w.record(Duration::from_secs(2), Duration::from_secs(20));
        let (counts, sum) = w.buckets();
        assert_eq!(counts[0], 1, "50 µs <= 0.1 ms");
        assert_eq!(counts[6], 1, "7 ms <= 10 ms");
        assert_eq!(counts[LAG_BUCKETS.len()], 1, "20 s in +Inf");
        assert!((sum - 20.00705).abs() < 1e-6, "{sum}");
        let timeline = w.timeline(Duration::from_secs(3));
        assert_eq!(timeline.len(), 2);
        assert_eq!(timeline[0].count, 2);
        assert!(timeline[1].max >= Duration::from_secs(19));
    }
}
