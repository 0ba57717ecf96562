//! The summary of a latency distribution that the RED layer, the span
//! timings and the executor-lag probe all report (docs/endpoints.md: `count`,
//! `min_ms`, …, `p999_ms`), and the lock-free histograms behind RED and
//! the span timings.

use std::time::Duration;

#[cfg_attr(not(any(feature = "red", feature = "spans")), allow(dead_code))]
mod buckets;
#[cfg_attr(not(any(feature = "red", feature = "spans")), allow(dead_code))]
mod latency;

#[cfg(any(feature = "red", feature = "spans"))]
pub(crate) use buckets::{seconds_to_nanos, BucketCounts};
#[cfg(any(feature = "red", feature = "spans"))]
pub(crate) use latency::LatencyHistogram;
#[cfg_attr(not(all(feature = "doctor", feature = "red")), allow(unused_imports))]
pub(crate) use latency::{dense, quantile_of, Counts};

/// Summary of a latency distribution: exact count, min, max and mean,
/// percentiles within the precision of the histogram behind it (6.25 % for
/// the log-linear buckets of RED and span timings, 1 % for the
/// executor-lag HDR histograms).
///
/// ```
/// let summary = stethoscope::histogram::HistogramSummary::default();
/// assert_eq!(summary.count, 0);
/// ```
///
/// It serializes in the shape docs/endpoints.md gives: `count` and `min_ms` …
/// `p999_ms` in float milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HistogramSummary {
    /// Observations.
    pub count: u64,
    /// Smallest observation.
    #[serde(rename = "min_ms", serialize_with = "crate::report::ms")]
    pub min: Duration,
    /// Largest observation.
    #[serde(rename = "max_ms", serialize_with = "crate::report::ms")]
    pub max: Duration,
    /// Arithmetic mean.
    #[serde(rename = "mean_ms", serialize_with = "crate::report::ms")]
    pub mean: Duration,
    /// Standard deviation.
    #[serde(rename = "stddev_ms", serialize_with = "crate::report::ms")]
    pub stddev: Duration,
    /// Median.
    #[serde(rename = "p50_ms", serialize_with = "crate::report::ms")]
    pub p50: Duration,
    /// 90th percentile.
    #[serde(rename = "p90_ms", serialize_with = "crate::report::ms")]
    pub p90: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_ms", serialize_with = "crate::report::ms")]
    pub p99: Duration,
    /// 99.9th percentile.
    #[serde(rename = "p999_ms", serialize_with = "crate::report::ms")]
    pub p999: Duration,
}
