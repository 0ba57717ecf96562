//! RED request metrics — rate, errors and duration per HTTP route — from a
//! tower layer on the host's own service.
//!
//! [`RedLayer`] goes on an axum `Router` (or any tower HTTP service);
//! [`RedMetrics`] holds the numbers: per (method, route template, status)
//! an OpenTelemetry-bucketed duration histogram for Prometheus
//! (`http_server_request_duration_seconds`), and per (method, route) exact
//! totals, a one-minute rate window and a log-linear histogram for
//! percentiles (`/debug/red`).
//!
//! ```
//! use std::time::Duration;
//! use stethoscope::red::RedMetrics;
//!
//! let metrics = RedMetrics::new();
//! metrics.record("GET", Some("/health"), 200, Duration::from_micros(80));
//! let report = metrics.report();
//! assert_eq!(report.routes[0].requests, 1);
//! ```

mod histogram;
mod inflight;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod recorder;

pub use histogram::OTEL_DURATION_BUCKETS;
pub use inflight::{InFlightRequest, RouteInFlight, MAX_LISTED_IN_FLIGHT};
pub use layer::{RedLayer, RedService, ResponseFuture};
#[cfg(feature = "metrics")]
pub(crate) use recorder::BUCKET_BOUNDS;
pub use recorder::{
    CpuWindow, RedMetrics, RedReport, RouteReport, OVERFLOW_ROUTE, UNLISTED_ROUTE, UNMATCHED_ROUTE,
};

/// Most (method, route, status) series the RED recorder keeps; requests
/// that would create more are counted under the route `<overflow>`.
pub const DEFAULT_RED_MAX_SERIES: usize = 2000;
