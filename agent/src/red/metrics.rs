//! `http_server_request_duration_seconds` (OpenTelemetry's name and
//! buckets) for `/metrics`.

use super::RedMetrics;
use crate::metrics::{Collect, Desc, MetricWriter};

impl Collect for RedMetrics {
    fn collect(&self, out: &mut MetricWriter) {
        let mut family = out.family(Desc::histogram(
            "http_server_request_duration_seconds",
            Some("seconds"),
            "Duration of HTTP server requests until the response head, by method, route template and status.",
        ));
        self.for_each_series(|method, route, status, counts, sum| {
            family.histogram(
                &[("method", method), ("route", route), ("status", status)],
                super::BUCKET_BOUNDS,
                counts,
                sum,
            );
        });
    }
}
