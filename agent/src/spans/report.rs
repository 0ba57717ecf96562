//! What [`SpanTimings::report`](super::SpanTimings::report) returns: plain
//! types the HTTP layer renders and rules (the doctor's "which span makes
//! this route slow?") read.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use serde::ser::SerializeMap;

use super::SpanSettings;
use crate::histogram::HistogramSummary;
use crate::units::{human, rfc3339};

/// Span timings at one moment: statistics per (target, name) and the
/// slow-span log. Its JSON is `/debug/spans`'s and its `Display` the
/// `format=text` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SpanReport {
    /// Whether the span layer is installed in a subscriber; without it the
    /// lists stay empty.
    pub installed: bool,
    /// How to install it, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    /// One entry per (target, name) that closed a span, most total time
    /// first.
    pub spans: Vec<SpanSummary>,
    /// The slowest recent spans (up to
    /// [`slowest_per_name`](SpanSettings::slowest_per_name) per name,
    /// over [`slow_threshold`](SpanSettings::slow_threshold), closed within
    /// [`slow_window`](SpanSettings::slow_window)), slowest first.
    pub slowest: Vec<SlowSpan>,
    /// The settings the numbers were kept with.
    #[serde(flatten)]
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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    /// `errors / count` (0 without spans).
    pub error_ratio: f64,
    /// Creation-to-close time.
    pub total: HistogramSummary,
    /// Time entered (polled, for async code).
    pub busy: HistogramSummary,
    /// Sum of the total times.
    #[serde(rename = "total_time_ms", serialize_with = "crate::report::ms")]
    pub total_time: Duration,
    /// Sum of the busy times.
    #[serde(rename = "busy_time_ms", serialize_with = "crate::report::ms")]
    pub busy_time: Duration,
}

impl SpanSummary {
    /// `errors / count` (0 without spans).
    pub fn error_ratio(&self) -> f64 {
        self.error_ratio
    }
}

/// One span of the slow-span log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SlowSpan {
    /// The span's target.
    pub target: &'static str,
    /// The span's name.
    pub name: &'static str,
    /// When it was created.
    #[serde(serialize_with = "crate::report::time")]
    pub started_at: SystemTime,
    /// Creation-to-close time.
    #[serde(rename = "total_ms", serialize_with = "crate::report::ms")]
    pub total: Duration,
    /// Time entered.
    #[serde(rename = "busy_ms", serialize_with = "crate::report::ms")]
    pub busy: Duration,
    /// Whether it recorded an error (see [`SpanSummary::errors`]).
    pub error: bool,
    /// Its fields as recorded (`Debug` of the values, strings without
    /// quotes), in recording order; a JSON object.
    #[serde(serialize_with = "fields_object")]
    pub fields: Vec<(String, String)>,
    /// Whether fields were cut to
    /// [`MAX_SPAN_FIELDS_BYTES`](crate::spans::MAX_SPAN_FIELDS_BYTES).
    pub fields_truncated: bool,
    /// Names of the enclosing spans, nearest first (at most
    /// [`MAX_SPAN_PARENTS`](crate::spans::MAX_SPAN_PARENTS)).
    pub parents: Vec<&'static str>,
}

/// The fields as a JSON object, in recording order.
fn fields_object<S: serde::Serializer>(fields: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(fields.len()))?;
    for (key, value) in fields {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

/// `name` cut to `width` characters.
fn clip(name: &str, width: usize) -> &str {
    match name.char_indices().nth(width) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

impl fmt::Display for SpanReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(hint) = self.hint {
            return writeln!(out, "no span timings: {hint}");
        }
        let width = self
            .spans
            .iter()
            .map(|s| s.name.chars().count())
            .chain(self.slowest.iter().map(|s| s.name.chars().count()))
            .max()
            .unwrap_or(0)
            .clamp(4, 40);
        writeln!(
            out,
            "{:<width$} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  TARGET",
            "SPAN", "COUNT", "ERR%", "P50", "P99", "MAX", "BUSY P50", "BUSY P99", "TIME"
        )?;
        for s in &self.spans {
            writeln!(
                out,
                "{:<width$} {:>8} {:>6.2}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
                clip(s.name, width),
                s.count,
                s.error_ratio * 100.0,
                human(s.total.p50),
                human(s.total.p99),
                human(s.total.max),
                human(s.busy.p50),
                human(s.busy.p99),
                human(s.total_time),
                s.target,
            )?;
        }
        if self.spans.is_empty() {
            out.write_str("(no span has closed yet)\n")?;
        }
        let settings = &self.settings;
        writeln!(
            out,
            "\nSLOWEST: at least {} and closed in the last {}, up to {} per span name",
            human(settings.slow_threshold),
            human(settings.slow_window),
            settings.slowest_per_name
        )?;
        writeln!(
            out,
            "{:>9} {:>9} {:<5} {:<24} {:<width$}  FIELDS  (PARENTS)",
            "TOTAL", "BUSY", "ERROR", "STARTED", "SPAN"
        )?;
        for s in &self.slowest {
            let mut fields = String::new();
            for (key, value) in &s.fields {
                if !fields.is_empty() {
                    fields.push(' ');
                }
                let _ = write!(fields, "{key}={value}");
            }
            let parents = if s.parents.is_empty() {
                String::new()
            } else {
                format!("  (in {})", s.parents.join(" < "))
            };
            writeln!(
                out,
                "{:>9} {:>9} {:<5} {:<24} {:<width$}  {}{}",
                human(s.total),
                human(s.busy),
                if s.error { "yes" } else { "" },
                rfc3339(s.started_at),
                clip(s.name, width),
                fields,
                parents,
            )?;
        }
        Ok(())
    }
}
