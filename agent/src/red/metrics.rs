//! `http_server_request_duration_seconds` (OpenTelemetry's name and
//! buckets) and `http_server_active_requests` for `/metrics`.

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
        // OpenTelemetry's `http.server.active_requests`: every route that
        // has served or is serving requests, 0 when none is in flight.
        let (in_flight, _) = self.in_flight();
        let mut family = out.family(Desc::gauge(
            "http_server_active_requests",
            None,
            "HTTP server requests in flight now, by method and route template.",
        ));
        let mut seen = std::collections::HashSet::new();
        for group in &in_flight {
            seen.insert((group.method.clone(), group.route.clone()));
            family.count(
                &[("method", &group.method), ("route", &group.route)],
                group.in_flight,
            );
        }
        self.for_each_route(|method, route, _, _| {
            if !seen.contains(&(method.to_owned(), route.to_owned())) {
                family.count(&[("method", method), ("route", route)], 0);
            }
        });
    }
}
