//! Span duration histograms, busy time and errors for `/metrics`.

use super::SpanTimings;
use crate::metrics::{Collect, Desc, MetricWriter};

impl Collect for SpanTimings {
    fn collect(&self, out: &mut MetricWriter) {
        let series = self.series();
        let mut family = out.family(Desc::histogram(
            "stethoscope_span_duration_seconds",
            Some("seconds"),
            "Time from creation to close of tracing spans, by target and span name.",
        ));
        for s in &series {
            family.histogram(
                &[("target", s.target), ("name", s.name)],
                &super::SPAN_DURATION_BUCKETS,
                &s.buckets,
                s.sum_seconds,
            );
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_span_busy_seconds",
            Some("seconds"),
            "Time tracing spans were entered (polled, for async code), by target and span name.",
        ));
        for s in &series {
            family.value(&[("target", s.target), ("name", s.name)], s.busy_seconds);
        }
        let mut family = out.family(Desc::counter(
            "stethoscope_span_errors",
            None,
            "Tracing spans that recorded an error field or had an ERROR event inside them, by target and span name.",
        ));
        for s in &series {
            family.count(&[("target", s.target), ("name", s.name)], s.errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ExpositionFormat;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn span_families_are_written_per_target_and_name() {
        let _serial = crate::spans::tracing_test_lock();
        let timings = crate::spans::SpanTimings::new();
        let subscriber = tracing_subscriber::registry().with(timings.layer());
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::info_span!("db_query").entered());
            drop(tracing::info_span!("db_query", error = "timeout").entered());
        });
        for format in [ExpositionFormat::Prometheus, ExpositionFormat::OpenMetrics] {
            let mut out = MetricWriter::new(format);
            timings.collect(&mut out);
            let text = out.finish();
            let labels = format!("target=\"{}\",name=\"db_query\"", module_path!());
            assert!(
                text.contains(&format!(
                    "stethoscope_span_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2\n"
                )),
                "{text}"
            );
            assert!(text.contains(&format!(
                "stethoscope_span_duration_seconds_count{{{labels}}} 2\n"
            )));
            assert!(text.contains(&format!("stethoscope_span_busy_seconds_total{{{labels}}} ")));
            assert!(text.contains(&format!("stethoscope_span_errors_total{{{labels}}} 1\n")));
        }
    }
}
