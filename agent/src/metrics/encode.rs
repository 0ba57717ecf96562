//! The text exposition writer: one family at a time, in either the
//! Prometheus text format 0.0.4 or OpenMetrics 1.0.
//!
//! The two formats differ in a few places this writer handles so that
//! collectors do not have to: a counter family is named without `_total`
//! in OpenMetrics (`# TYPE x counter`, sample `x_total`) and with it in
//! 0.0.4; OpenMetrics has `# UNIT` lines and ends with `# EOF`; its `HELP`
//! escapes `"` as well.

use std::fmt::Write as _;

/// Which text format `/metrics` answers in.
///
/// ```
/// use stethoscope::metrics::ExpositionFormat;
/// let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
/// assert_eq!(ExpositionFormat::negotiate(Some(prometheus)), ExpositionFormat::OpenMetrics);
/// assert_eq!(ExpositionFormat::negotiate(Some("*/*")), ExpositionFormat::Prometheus);
/// assert_eq!(ExpositionFormat::negotiate(None), ExpositionFormat::Prometheus);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpositionFormat {
    /// The Prometheus text format, version 0.0.4 (what `curl` and older
    /// scrapers get).
    Prometheus,
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
}

impl ExpositionFormat {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            ExpositionFormat::OpenMetrics => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
        }
    }

    /// OpenMetrics when the `Accept` header lists
    /// `application/openmetrics-text` with a non-zero quality, else the
    /// Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return ExpositionFormat::Prometheus;
        };
        let wants_openmetrics = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            if !media.eq_ignore_ascii_case("application/openmetrics-text") {
                return false;
            }
            // An explicit q=0 means "not acceptable".
            !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
        });
        if wants_openmetrics {
            ExpositionFormat::OpenMetrics
        } else {
            ExpositionFormat::Prometheus
        }
    }

    /// Parses the `format` query parameter of `/metrics`.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "prometheus" | "text" => Some(ExpositionFormat::Prometheus),
            "openmetrics" => Some(ExpositionFormat::OpenMetrics),
            _ => None,
        }
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricType {
    /// A monotonically increasing total; named without `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets with `_bucket`, `_sum` and `_count` samples.
    #[cfg_attr(
        not(any(feature = "red", feature = "runtime", feature = "spans")),
        allow(dead_code)
    )]
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Describes one metric family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Desc {
    /// Family name; counters without the `_total` suffix.
    pub(crate) name: &'static str,
    /// One line of help text.
    pub(crate) help: &'static str,
    /// Base unit (`seconds`, `bytes`), which must end the name; or `None`.
    pub(crate) unit: Option<&'static str>,
    /// Counter, gauge or histogram.
    pub(crate) kind: MetricType,
}

impl Desc {
    pub(crate) const fn counter(
        name: &'static str,
        unit: Option<&'static str>,
        help: &'static str,
    ) -> Self {
        Desc::new(MetricType::Counter, name, unit, help)
    }

    pub(crate) const fn gauge(
        name: &'static str,
        unit: Option<&'static str>,
        help: &'static str,
    ) -> Self {
        Desc::new(MetricType::Gauge, name, unit, help)
    }

    #[cfg_attr(
        not(any(feature = "red", feature = "runtime", feature = "spans")),
        allow(dead_code)
    )]
    pub(crate) const fn histogram(
        name: &'static str,
        unit: Option<&'static str>,
        help: &'static str,
    ) -> Self {
        Desc::new(MetricType::Histogram, name, unit, help)
    }

    const fn new(
        kind: MetricType,
        name: &'static str,
        unit: Option<&'static str>,
        help: &'static str,
    ) -> Self {
        Desc {
            name,
            help,
            unit,
            kind,
        }
    }
}

/// Writes metric families into a string. Each family's header is written
/// with its first sample, so a family without samples leaves no trace.
#[derive(Debug)]
pub(crate) struct MetricWriter {
    format: ExpositionFormat,
    out: String,
    /// Families written so far, to keep names unique (a repeated family is
    /// a parse error for OpenMetrics scrapers).
    seen: Vec<&'static str>,
}

impl MetricWriter {
    pub(crate) fn new(format: ExpositionFormat) -> Self {
        MetricWriter {
            format,
            out: String::with_capacity(16 * 1024),
            seen: Vec::new(),
        }
    }

    /// Starts a family. Writing the same family name twice is a bug in a
    /// collector; the second one's samples are dropped (and logged) rather
    /// than producing an exposition scrapers would reject.
    pub(crate) fn family(&mut self, desc: Desc) -> Family<'_> {
        let duplicate = self.seen.contains(&desc.name);
        if duplicate {
            tracing::warn!(
                family = desc.name,
                "metric family written twice; dropping the repeat"
            );
        } else {
            self.seen.push(desc.name);
        }
        Family {
            writer: self,
            desc,
            header_written: false,
            skip: duplicate,
        }
    }

    /// The exposition, terminated as the format requires.
    pub(crate) fn finish(mut self) -> String {
        if self.format == ExpositionFormat::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// Labels of one sample, as `(name, value)` pairs.
pub(crate) type Labels<'a> = &'a [(&'a str, &'a str)];

/// One family being written.
#[derive(Debug)]
pub(crate) struct Family<'w> {
    writer: &'w mut MetricWriter,
    desc: Desc,
    header_written: bool,
    skip: bool,
}

impl Family<'_> {
    fn header(&mut self) {
        if self.header_written {
            return;
        }
        self.header_written = true;
        let openmetrics = self.writer.format == ExpositionFormat::OpenMetrics;
        let name = self.desc.name;
        let suffix = if !openmetrics && self.desc.kind == MetricType::Counter {
            "_total"
        } else {
            ""
        };
        let out = &mut self.writer.out;
        let _ = write!(out, "# HELP {name}{suffix} ");
        escape_help(out, self.desc.help, openmetrics);
        let _ = writeln!(out, "\n# TYPE {name}{suffix} {}", self.desc.kind.as_str());
        if openmetrics {
            if let Some(unit) = self.desc.unit {
                let _ = writeln!(out, "# UNIT {name} {unit}");
            }
        }
    }

    /// A counter or gauge sample. Counters get their `_total` suffix here.
    pub(crate) fn value(&mut self, labels: Labels<'_>, value: f64) {
        if self.skip {
            return;
        }
        self.header();
        let suffix = if self.desc.kind == MetricType::Counter {
            "_total"
        } else {
            ""
        };
        sample(
            &mut self.writer.out,
            self.desc.name,
            suffix,
            labels,
            None,
            value,
        );
    }

    /// An unsigned integer sample (counts, bytes), written without a
    /// fractional part.
    pub(crate) fn count(&mut self, labels: Labels<'_>, value: u64) {
        self.value(labels, value as f64);
    }

    /// A histogram: `bounds` are the finite upper bounds (ascending),
    /// `counts` the non-cumulative count per bucket with the `+Inf` bucket
    /// last (`bounds.len() + 1` entries), `sum` the sum of observations.
    #[cfg_attr(
        not(any(feature = "red", feature = "runtime", feature = "spans")),
        allow(dead_code)
    )]
    pub(crate) fn histogram(
        &mut self,
        labels: Labels<'_>,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        if self.skip {
            return;
        }
        self.header();
        let name = self.desc.name;
        let out = &mut self.writer.out;
        let mut cumulative = 0u64;
        let mut le = String::with_capacity(24);
        for (i, count) in counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*count);
            le.clear();
            match bounds.get(i) {
                Some(bound) => push_float(&mut le, *bound),
                None => le.push_str("+Inf"),
            }
            sample(
                out,
                name,
                "_bucket",
                labels,
                Some(("le", &le)),
                cumulative as f64,
            );
            if i >= bounds.len() {
                break;
            }
        }
        sample(out, name, "_sum", labels, None, sum);
        sample(out, name, "_count", labels, None, cumulative as f64);
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: Labels<'_>,
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for (key, value) in labels.iter().copied().chain(extra) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(key);
            out.push_str("=\"");
            escape_label(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    push_float(out, value);
    out.push('\n');
}

/// Writes a sample value the way both formats parse it: integers without a
/// fraction, `+Inf`/`-Inf`/`NaN` spelled out, everything else in Rust's
/// shortest round-trip form (which never uses an exponent).
fn push_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(out: &mut String, help: &str, openmetrics: bool) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if openmetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Desc = Desc::counter(
        "process_cpu_seconds",
        Some("seconds"),
        "Total user and system CPU time spent in seconds.",
    );
    const FDS: Desc = Desc::gauge("process_open_fds", None, "Number of open file descriptors.");
    const LATENCY: Desc = Desc::histogram(
        "http_server_request_duration_seconds",
        Some("seconds"),
        "Duration of HTTP server requests.",
    );

    fn write(format: ExpositionFormat) -> String {
        let mut w = MetricWriter::new(format);
        w.family(CPU).value(&[], 1.25);
        w.family(FDS).count(&[], 12);
        let mut h = w.family(LATENCY);
        h.histogram(
            &[("method", "GET"), ("route", "/a\"b\\c\nd")],
            &[0.005, 0.01, 2.5],
            &[1, 2, 0, 4],
            0.5,
        );
        w.family(Desc::gauge("empty", None, "never written"));
        w.finish()
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_has_no_eof() {
        let text = write(ExpositionFormat::Prometheus);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("\nprocess_cpu_seconds_total 1.25\n"));
        assert!(text.contains("process_open_fds 12\n"));
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
        assert!(
            !text.contains("empty"),
            "families without samples are omitted"
        );
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{method=\"GET\",route=\"/a\\\"b\\\\c\\nd\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains("le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("le=\"2.5\"} 3\n"));
        assert!(text.contains("le=\"+Inf\"} 7\n"));
        assert!(text.contains("http_server_request_duration_seconds_count{method=\"GET\",route=\"/a\\\"b\\\\c\\nd\"} 7\n"));
        assert!(text.contains("http_server_request_duration_seconds_sum{"));
    }

    #[test]
    fn openmetrics_has_units_bare_counter_families_and_eof() {
        let text = write(ExpositionFormat::OpenMetrics);
        assert!(text
            .contains("# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n"));
        assert!(text.contains("\nprocess_cpu_seconds_total 1.25\n"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn duplicate_families_are_dropped() {
        let mut w = MetricWriter::new(ExpositionFormat::OpenMetrics);
        w.family(FDS).count(&[], 1);
        w.family(FDS).count(&[], 2);
        let text = w.finish();
        assert_eq!(text.matches("# TYPE process_open_fds").count(), 1);
        assert!(!text.contains("process_open_fds 2"));
    }

    #[test]
    fn floats_are_written_as_both_parsers_expect() {
        let mut s = String::new();
        for v in [
            0.0,
            1.0,
            -3.0,
            0.1,
            1e-7,
            2.5e20,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            push_float(&mut s, v);
            s.push(' ');
        }
        assert_eq!(
            s,
            "0 1 -3 0.1 0.0000001 250000000000000000000 +Inf -Inf NaN "
        );
    }

    #[test]
    fn negotiation_honours_quality_zero() {
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            ExpositionFormat::Prometheus
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("Application/OpenMetrics-Text;version=0.0.1;q=0.75")),
            ExpositionFormat::OpenMetrics
        );
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn accept_headers_and_formats_never_panic(value in input_of(&["application/openmetrics-text", "text/plain", ";", "version=", "1.0.0", "0.0.4", "q=", ",", "*/*", "prometheus", "openmetrics"])) {
                bounded("exposition negotiation", &value, || {
                    let _ = ExpositionFormat::negotiate(Some(&value));
                    let _ = ExpositionFormat::parse(&value);
                });
            }
        }
    }
}
