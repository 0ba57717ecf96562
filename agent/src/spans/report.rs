//! What [`SpanTimings::report`](super::SpanTimings::report) returns: plain
//! types the HTTP layer renders and rules (the doctor's "which span makes
//! this route slow?") read.

use std::time::{Duration, SystemTime};

use super::SpanSettings;
use crate::histogram::HistogramSummary;

/// Span timings at one moment: statistics per (target, name) and the
/// slow-span log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SpanReport {
    /// Whether the span layer is installed in a subscriber; without it the
    /// lists stay empty.
    pub installed: bool,
    /// One entry per (target, name) that closed a span, most total time
    /// first.
    pub spans: Vec<SpanSummary>,
    /// The slowest recent spans (up to
    /// [`slowest_per_name`](SpanSettings::slowest_per_name) per name,
    /// over [`slow_threshold`](SpanSettings::slow_threshold), closed within
    /// [`slow_window`](SpanSettings::slow_window)), slowest first.
    pub slowest: Vec<SlowSpan>,
    /// The settings the numbers were kept with.
    pub settings: SpanSettings,
}

impl SpanReport {
    /// The entry of `target` and `name`, if it recorded a span.
    ///
    /// ```
    /// let report = stethoscope::spans::SpanTimings::new().report();
    /// assert!(report.span("my_service::db", "query").is_none());
    /// ```
    pub fn span(&self, target: &str, name: &str) -> Option<&SpanSummary> {
        self.spans
            .iter()
            .find(|s| s.target == target && s.name == name)
    }
}

/// Timings of the spans of one (target, name) since start.
///
/// *Total* time runs from the span's creation to its close; *busy* time is
/// the part during which it was entered on some thread (for an async
/// operation: polled, not waiting). `busy ≤ total` always.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SpanSummary {
    /// The span's target (by default its module path).
    pub target: &'static str,
    /// The span's name.
    pub name: &'static str,
    /// Spans closed.
    pub count: u64,
    /// Of which recorded an `error` field (other than `error = false`) or
    /// had an event at `ERROR` level inside them.
    pub errors: u64,
    /// Creation-to-close time.
    pub total: HistogramSummary,
    /// Time entered (polled, for async code).
    pub busy: HistogramSummary,
    /// Sum of the total times.
    pub total_time: Duration,
    /// Sum of the busy times.
    pub busy_time: Duration,
}

impl SpanSummary {
    /// `errors / count` (0 without spans).
    pub fn error_ratio(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.errors as f64 / self.count as f64
        }
    }
}

/// One span of the slow-span log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlowSpan {
    /// The span's target.
    pub target: &'static str,
    /// The span's name.
    pub name: &'static str,
    /// When it was created.
    pub started_at: SystemTime,
    /// Creation-to-close time.
    pub total: Duration,
    /// Time entered.
    pub busy: Duration,
    /// Whether it recorded an error (see [`SpanSummary::errors`]).
    pub error: bool,
    /// Its fields as recorded (`Debug` of the values, strings without
    /// quotes), in recording order.
    pub fields: Vec<(String, String)>,
    /// Whether fields were cut to
    /// [`MAX_SPAN_FIELDS_BYTES`](crate::config::MAX_SPAN_FIELDS_BYTES).
    pub fields_truncated: bool,
    /// Names of the enclosing spans, nearest first (at most
    /// [`MAX_SPAN_PARENTS`](crate::config::MAX_SPAN_PARENTS)).
    pub parents: Vec<&'static str>,
}
