//! Per-route series: sharded maps of atomic histograms. The hot path takes
//! one shard's read lock (shared, never blocking other readers) and updates
//! atomics; only the first request of a new (route, method, status)
//! combination takes a write lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::inflight::{InFlight, InFlightRequest, RouteInFlight, Ticket};
use super::histogram::{
    OtelBuckets, RateWindow, OTEL_BOUNDS_NS, RATE_WINDOW_SECS,
};
use crate::red::DEFAULT_RED_MAX_SERIES;
use crate::histogram::{HistogramSummary, LatencyHistogram};

/// Route label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "<unmatched>";
/// Route label that absorbs new series once the series limit is reached.
pub const OVERFLOW_ROUTE: &str = "<overflow>";

/// Status value recorded when the service returned an error instead of a
/// response, or panicked.
pub(crate) const STATUS_ERROR: u16 = 0;

const SHARDS: usize = 16;

/// Request rate, errors and duration per route: the recorder behind
/// [`RedLayer`](super::RedLayer). Cheap to clone (one `Arc`).
///
/// ```
/// use std::time::Duration;
/// use stethoscope::red::RedMetrics;
///
/// let metrics = RedMetrics::new();
/// metrics.record("GET", Some("/items/{id}"), 200, Duration::from_millis(12));
/// metrics.record("GET", Some("/items/{id}"), 503, Duration::from_millis(40));
/// let report = metrics.report();
/// let route = &report.routes[0];
/// assert_eq!((route.route.as_str(), route.requests, route.errors), ("/items/{id}", 2, 1));
/// assert_eq!(route.error_ratio, 0.5);
/// ```
#[derive(Debug, Clone)]
pub struct RedMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: [RwLock<HashMap<Box<str>, RouteEntry>>; SHARDS],
    started: Instant,
    series: AtomicUsize,
    max_series: usize,
    /// Whether a layer was ever made, to tell "no traffic" from "not installed".
    layer_made: AtomicBool,
    /// Rung at the start of every request: wakes the agent's dormant
    /// stall watchdog when work arrives after a quiet spell.
    alarm: std::sync::OnceLock<Arc<crate::periodic::Alarm>>,
    /// Requests the layer is serving now.
    in_flight: Arc<InFlight>,
}

#[derive(Debug, Default)]
struct RouteEntry {
    methods: Vec<MethodEntry>,
}

#[derive(Debug)]
struct MethodEntry {
    method: &'static str,
    errors: AtomicU64,
    latency: LatencyHistogram,
    requests_window: RateWindow,
    errors_window: RateWindow,
    statuses: Vec<StatusSeries>,
}

#[derive(Debug)]
struct StatusSeries {
    status: u16,
    buckets: OtelBuckets,
}

impl Default for RedMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RedMetrics {
    /// An empty recorder keeping at most
    /// [`DEFAULT_RED_MAX_SERIES`](crate::red::DEFAULT_RED_MAX_SERIES)
    /// (method, route, status) series.
    pub fn new() -> Self {
        Self::with_max_series(DEFAULT_RED_MAX_SERIES)
    }

    /// An empty recorder keeping at most `max_series` (method, route,
    /// status) series; requests beyond it are counted under the route
    /// [`OVERFLOW_ROUTE`].
    pub fn with_max_series(max_series: usize) -> Self {
        RedMetrics {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
                started: Instant::now(),
                series: AtomicUsize::new(0),
                max_series: max_series.max(1),
                layer_made: AtomicBool::new(false),
                alarm: std::sync::OnceLock::new(),
                in_flight: Arc::default(),
            }),
        }
    }

    /// Rings `alarm` at the start of every request from now on.
    pub(crate) fn ring_on_request(&self, alarm: Arc<crate::periodic::Alarm>) {
        let _ = self.inner.alarm.set(alarm);
    }

    /// A request with `labels` (its `method` and `route`) starts at
    /// `started`: wakes a dormant watchdog, and holds the request's place
    /// among those in flight until the ticket drops.
    #[inline]
    pub(crate) fn request_started(&self, labels: u32, started: Instant) -> Ticket {
        if let Some(alarm) = self.inner.alarm.get() {
            alarm.ring();
        }
        self.inner.in_flight.enter(labels, started)
    }

    /// Calls `visit` with the method, route and age of every request in
    /// flight now (those beyond the listed [`MAX_LISTED_IN_FLIGHT`](super::MAX_LISTED_IN_FLIGHT) are not
    /// visited).
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn for_each_in_flight(&self, mut visit: impl FnMut(&str, &str, Duration)) {
        let mut names: HashMap<u32, (String, String)> = HashMap::new();
        self.inner.in_flight.each(Instant::now(), |labels, age| {
            let (method, route) = names.entry(labels).or_insert_with(|| {
                let set = crate::labels::resolve(labels);
                (
                    set.get("method").unwrap_or("_OTHER").to_owned(),
                    set.get("route").unwrap_or(UNMATCHED_ROUTE).to_owned(),
                )
            });
            visit(method, route, age);
        });
    }

    /// Requests in flight now, per (method, route) with the age of the
    /// oldest, busiest first; and the oldest requests, oldest first.
    pub fn in_flight(&self) -> (Vec<RouteInFlight>, Vec<InFlightRequest>) {
        let snapshot = self.inner.in_flight.snapshot(Instant::now());
        let names = |labels: u32| {
            let set = crate::labels::resolve(labels);
            (
                set.get("method").unwrap_or("_OTHER").to_owned(),
                set.get("route").unwrap_or(UNMATCHED_ROUTE).to_owned(),
                set,
            )
        };
        let mut routes: Vec<RouteInFlight> = snapshot
            .groups
            .iter()
            .map(|&(labels, count, oldest)| {
                let (method, route, _) = names(labels);
                RouteInFlight {
                    method,
                    route,
                    in_flight: count,
                    oldest_ms: oldest,
                }
            })
            .collect();
        routes.sort_by(|a, b| {
            b.in_flight
                .cmp(&a.in_flight)
                .then(b.oldest_ms.cmp(&a.oldest_ms))
                .then_with(|| a.route.cmp(&b.route))
        });
        if snapshot.unlisted > 0 {
            routes.push(RouteInFlight {
                method: "_OTHER".to_owned(),
                route: UNLISTED_ROUTE.to_owned(),
                in_flight: snapshot.unlisted,
                oldest_ms: Duration::ZERO,
            });
        }
        let oldest = snapshot
            .oldest
            .iter()
            .map(|&(labels, age)| {
                let (method, route, labels) = names(labels);
                InFlightRequest {
                    method,
                    route,
                    age_ms: age,
                    labels,
                }
            })
            .collect();
        (routes, oldest)
    }

    /// A tower layer recording into this recorder.
    pub fn layer(&self) -> super::RedLayer {
        self.inner.layer_made.store(true, Ordering::Relaxed);
        super::RedLayer::new(self.clone())
    }

    /// Whether [`layer`](Self::layer) was ever called: without a layer on
    /// the service, an empty report means "not installed", not "no traffic".
    pub fn layer_installed(&self) -> bool {
        self.inner.layer_made.load(Ordering::Relaxed)
    }

    /// Records one request. `method` outside the standard HTTP methods is
    /// recorded as `_OTHER`; `route` is the route *template* (`None` when
    /// no route matched); `status` is the response status (≥ 500 counts as
    /// an error).
    pub fn record(&self, method: &str, route: Option<&str>, status: u16, duration: Duration) {
        self.record_at(
            method_label(method),
            route,
            status,
            duration,
            Instant::now(),
        );
    }

    pub(crate) fn record_at(
        &self,
        method: &'static str,
        route: Option<&str>,
        status: u16,
        duration: Duration,
        now: Instant,
    ) {
        let route = route.unwrap_or(UNMATCHED_ROUTE);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let second = self.second_of(now);
        let is_error = status >= 500 || status == STATUS_ERROR;
        let shard = &self.inner.shards[shard_of(route)];
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((entry, series)) = map.get(route).and_then(|r| r.find(method, status)) {
                entry.record(series, nanos, second, is_error);
                return;
            }
        }
        self.record_new(route, method, status, nanos, second, is_error);
    }

    #[cold]
    fn record_new(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        nanos: u64,
        second: u32,
        is_error: bool,
    ) {
        let inner = &self.inner;
        let full = inner.series.load(Ordering::Relaxed) >= inner.max_series;
        let route = if full && route != OVERFLOW_ROUTE {
            // Only an existing series may still be used.
            let exists = inner.shards[shard_of(route)]
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(route)
                .and_then(|r| r.find(method, status))
                .is_some();
            if exists {
                route
            } else {
                OVERFLOW_ROUTE
            }
        } else {
            route
        };
        let mut map = inner.shards[shard_of(route)]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(route.into()).or_default();
        let method_index = match entry.methods.iter().position(|m| m.method == method) {
            Some(index) => index,
            None => {
                entry.methods.push(MethodEntry::new(method));
                entry.methods.len() - 1
            }
        };
        let Some(method_entry) = entry.methods.get_mut(method_index) else {
            return;
        };
        if !method_entry.statuses.iter().any(|s| s.status == status) {
            method_entry.statuses.push(StatusSeries {
                status,
                buckets: OtelBuckets::new(&OTEL_BOUNDS_NS),
            });
            inner.series.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(series) = method_entry.statuses.iter().find(|s| s.status == status) {
            method_entry.record(series, nanos, second, is_error);
        }
    }

    fn second_of(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.inner.started).as_secs())
            .unwrap_or(u32::MAX)
    }

    /// Calls `visit` with every (method, route), its errors since start and
    /// its latency histogram (whose count is its requests), under each
    /// shard's read lock in turn: the request path waits at most for one
    /// shard's visit.
    #[cfg_attr(not(any(feature = "doctor", feature = "metrics")), allow(dead_code))]
    pub(crate) fn for_each_route(
        &self,
        mut visit: impl FnMut(&'static str, &str, u64, &crate::histogram::LatencyHistogram),
    ) {
        for shard in &self.inner.shards {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (route, entry) in map.iter() {
                for method in &entry.methods {
                    visit(
                        method.method,
                        route,
                        method.errors.load(Ordering::Relaxed),
                        &method.latency,
                    );
                }
            }
        }
    }

    /// Per (method, route): totals since start, rate over the last minute
    /// and latency percentiles, busiest route first.
    pub fn report(&self) -> RedReport {
        self.report_with(crate::cpu::routes::last().as_deref())
    }

    /// The report, with each route's CPU from `cpu` (a CPU profile window's
    /// CPU per route).
    fn report_with(&self, cpu: Option<&crate::cpu::routes::RouteCpu>) -> RedReport {
        let now = Instant::now();
        let now_second = self.second_of(now);
        let window = now
            .saturating_duration_since(self.inner.started)
            .as_secs_f64()
            .clamp(1.0, f64::from(RATE_WINDOW_SECS));
        let mut routes = Vec::new();
        for shard in &self.inner.shards {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (route, entry) in map.iter() {
                for method in &entry.methods {
                    let latency = method.latency.summary();
                    let errors = method.errors.load(Ordering::Relaxed);
                    let mut statuses = BTreeMap::new();
                    for series in &method.statuses {
                        let (counts, _) = series.buckets.snapshot();
                        statuses.insert(status_label(series.status), counts.iter().sum());
                    }
                    routes.push(RouteReport {
                        method: method.method.to_owned(),
                        route: route.to_string(),
                        requests: latency.count,
                        errors,
                        error_ratio: ratio(errors, latency.count),
                        rate_per_s: method.requests_window.recent(now_second) as f64 / window,
                        error_rate_per_s: method.errors_window.recent(now_second) as f64 / window,
                        statuses,
                        latency,
                        cpu_seconds: cpu
                            .map(|cpu| cpu.of(method.method, route).as_secs_f64()),
                        in_flight: 0,
                        oldest_in_flight: None,
                    });
                }
            }
        }
        // Requests in flight: on their route's row, or on a row of their
        // own for a route none of whose requests has finished yet.
        let (in_flight, oldest_in_flight) = self.in_flight();
        for group in &in_flight {
            match routes
                .iter_mut()
                .find(|r| r.method == group.method && r.route == group.route)
            {
                Some(row) => {
                    row.in_flight = group.in_flight;
                    row.oldest_in_flight = Some(group.oldest_ms);
                }
                None => routes.push(RouteReport {
                    method: group.method.clone(),
                    route: group.route.clone(),
                    requests: 0,
                    errors: 0,
                    error_ratio: 0.0,
                    rate_per_s: 0.0,
                    error_rate_per_s: 0.0,
                    statuses: BTreeMap::new(),
                    latency: HistogramSummary::default(),
                    cpu_seconds: cpu.map(|cpu| cpu.of(&group.method, &group.route).as_secs_f64()),
                    in_flight: group.in_flight,
                    oldest_in_flight: Some(group.oldest_ms),
                }),
            }
        }
        routes.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| b.in_flight.cmp(&a.in_flight))
                .then_with(|| a.route.cmp(&b.route))
                .then_with(|| a.method.cmp(&b.method))
        });
        let layer_installed = self.layer_installed();
        RedReport {
            in_flight: in_flight.iter().map(|g| g.in_flight).sum(),
            oldest_in_flight,
            routes,
            window: Duration::from_secs_f64(window),
            layer_installed,
            hint: (!layer_installed).then_some(NO_LAYER_HINT),
            cpu_window: cpu.map(|cpu| CpuWindow {
                started_at: cpu.started_at,
                duration: cpu.duration,
            }),
        }
    }

    /// Calls `f` with every (method, route, status) series: its OpenTelemetry
    /// bucket counts (non-cumulative, `+Inf` last) and sum in seconds.
    #[cfg(any(test, feature = "metrics"))]
    pub(crate) fn for_each_series(&self, mut f: impl FnMut(&str, &str, &str, &[u64], f64)) {
        for shard in &self.inner.shards {
            // Copy under the lock, format after it: a request creating a
            // series waits for this lock, and requests queue behind it.
            let mut copied = Vec::new();
            {
                let map = shard.read().unwrap_or_else(PoisonError::into_inner);
                for (route, entry) in map.iter() {
                    for method in &entry.methods {
                        for series in &method.statuses {
                            let (counts, sum) = series.buckets.snapshot();
                            copied.push((method.method, route.clone(), series.status, counts, sum));
                        }
                    }
                }
            }
            for (method, route, status, counts, sum) in copied {
                f(method, &route, &status_label(status), &counts, sum);
            }
        }
    }

    /// Series currently kept.
    pub fn series_count(&self) -> usize {
        self.inner.series.load(Ordering::Relaxed)
    }
}

/// The OpenTelemetry bucket bounds, re-exported for the exposition.
#[cfg(any(test, feature = "metrics"))]
pub(crate) const BUCKET_BOUNDS: &[f64] = &super::OTEL_DURATION_BUCKETS;

impl RouteEntry {
    fn find(&self, method: &str, status: u16) -> Option<(&MethodEntry, &StatusSeries)> {
        let entry = self.methods.iter().find(|m| m.method == method)?;
        let series = entry.statuses.iter().find(|s| s.status == status)?;
        Some((entry, series))
    }
}

impl MethodEntry {
    fn new(method: &'static str) -> Self {
        MethodEntry {
            method,
            errors: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
            requests_window: RateWindow::default(),
            errors_window: RateWindow::default(),
            statuses: Vec::new(),
        }
    }

    fn record(&self, series: &StatusSeries, nanos: u64, second: u32, is_error: bool) {
        series.buckets.record(nanos);
        self.latency.record(nanos);
        self.requests_window.record(second);
        if is_error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.errors_window.record(second);
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// FNV-1a of the route, to pick a shard: routes come from the
/// application's route table, not from clients, so no keyed hash is needed.
fn shard_of(route: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in route.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize % SHARDS
}

/// The method label: the standard methods as themselves, anything else as
/// `_OTHER` (OpenTelemetry's convention), so clients cannot create series.
pub(crate) fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

fn status_label(status: u16) -> String {
    if status == STATUS_ERROR {
        "error".to_owned()
    } else {
        status.to_string()
    }
}

/// What to do when no RED layer was installed.
const NO_LAYER_HINT: &str = "add agent.red_layer() to the service's router";

/// The route under which requests in flight are counted when the table of
/// [`MAX_LISTED_IN_FLIGHT`](super::MAX_LISTED_IN_FLIGHT) listed ones is full.
pub const UNLISTED_ROUTE: &str = "<unlisted>";

/// What [`RedMetrics::report`] returns; its JSON is `/debug/red`'s and its
/// `Display` the `format=text` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RedReport {
    /// Length of the window `rate_per_s` is computed over: the last minute,
    /// or the time since the recorder started if shorter.
    #[serde(rename = "window_s", serialize_with = "crate::report::secs")]
    pub window: Duration,
    /// Whether a RED layer was ever made: without one, an empty report
    /// means "not installed", not "no traffic".
    pub layer_installed: bool,
    /// One entry per (method, route), most requests first.
    pub routes: Vec<RouteReport>,
    /// What to do when the layer is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
    /// The CPU profile window the routes' `cpu_seconds` come from: the last
    /// one that finished in this process (`null` before any).
    pub cpu_window: Option<CpuWindow>,
    /// Requests in flight now, all routes together.
    pub in_flight: u64,
    /// The oldest requests in flight, oldest first (at most 20).
    pub oldest_in_flight: Vec<InFlightRequest>,
}

/// A CPU profile window.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct CpuWindow {
    /// Its start.
    #[serde(serialize_with = "crate::report::time")]
    pub started_at: SystemTime,
    /// Its length.
    #[serde(rename = "duration_ms", serialize_with = "crate::report::ms")]
    pub duration: Duration,
}

impl std::fmt::Display for RedReport {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.layer_installed {
            return writeln!(out, "no RED layer installed: {NO_LAYER_HINT}");
        }
        let ms = crate::report::millis;
        writeln!(
            out,
            "{:<7} {:<32} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>10}",
            "METHOD",
            "ROUTE",
            "REQUESTS",
            "ERRORS",
            "ERR%",
            "RATE/S",
            "P50 ms",
            "P99 ms",
            "MAX ms",
            "CPU s",
            "IN FLIGHT",
            "OLDEST"
        )?;
        for r in &self.routes {
            let cpu = r.cpu_seconds.map_or("-".to_owned(), |s| format!("{s:.3}"));
            let oldest = r
                .oldest_in_flight
                .map_or("-".to_owned(), crate::units::human);
            writeln!(
                out,
                "{:<7} {:<32} {:>9} {:>8} {:>6.2}% {:>9.2} {:>9.2} {:>9.2} {:>9.2} {cpu:>8} {:>9} {oldest:>10}",
                r.method,
                r.route,
                r.requests,
                r.errors,
                r.error_ratio * 100.0,
                r.rate_per_s,
                ms(r.latency.p50),
                ms(r.latency.p99),
                ms(r.latency.max),
                r.in_flight,
            )?;
        }
        if !self.oldest_in_flight.is_empty() {
            writeln!(
                out,
                "\n{} requests in flight; the oldest:",
                self.in_flight
            )?;
            for request in &self.oldest_in_flight {
                writeln!(
                    out,
                    "  {:>10}  {} {}",
                    crate::units::human(request.age_ms),
                    request.method,
                    request.route
                )?;
            }
        }
        writeln!(
            out,
            "\nrates over the last {:.0} s; totals and latency since start",
            self.window.as_secs_f64()
        )?;
        match &self.cpu_window {
            Some(w) => writeln!(
                out,
                "CPU s: in the last CPU profile window ({:.1} s from {})",
                w.duration.as_secs_f64(),
                crate::units::rfc3339(w.started_at)
            ),
            None => writeln!(out, "CPU s: no CPU profile has run yet"),
        }
    }
}

/// Rate, errors and duration of one (method, route).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RouteReport {
    /// HTTP method (`_OTHER` for non-standard ones).
    pub method: String,
    /// Route template, e.g. `/items/{id}`; [`UNMATCHED_ROUTE`] for requests
    /// no route matched.
    pub route: String,
    /// Requests completed since the recorder started.
    pub requests: u64,
    /// Of which errors: status ≥ 500, or the service failed or panicked.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_ratio: f64,
    /// Requests per second over the last minute.
    pub rate_per_s: f64,
    /// Errors per second over the last minute.
    pub error_rate_per_s: f64,
    /// Requests per status code (`"error"` when there was no response).
    pub statuses: BTreeMap<String, u64>,
    /// Duration until the response head was ready, since start.
    pub latency: HistogramSummary,
    /// CPU seconds this route's requests used during the last CPU profile
    /// window ([`RedReport::cpu_window`]), from the profile's `route` and
    /// `method` labels (0 if none of its samples fell in the window);
    /// `None` before any CPU profile has finished.
    pub cpu_seconds: Option<f64>,
    /// Its requests in flight now.
    pub in_flight: u64,
    /// How long the oldest of them has been running (`null` with none in
    /// flight), in milliseconds.
    #[serde(rename = "oldest_in_flight_ms", serialize_with = "crate::report::opt_ms")]
    pub oldest_in_flight: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_carry_the_cpu_of_the_last_profile_window() {
        let m = RedMetrics::new();
        let _installed = m.layer();
        m.record("GET", Some("/items/{id}"), 200, Duration::from_millis(20));
        m.record("GET", Some("/health"), 200, Duration::from_millis(1));
        let before = m.report_with(None);
        assert_eq!(before.routes[0].cpu_seconds, None);
        assert!(before.cpu_window.is_none());
        let window = crate::cpu::routes::RouteCpu {
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(30),
            by_route: [(
                ("GET".to_owned(), "/items/{id}".to_owned()),
                Duration::from_millis(1500),
            )]
            .into(),
        };
        let report = m.report_with(Some(&window));
        let cpu = |route: &str| {
            report
                .routes
                .iter()
                .find(|r| r.route == route)
                .and_then(|r| r.cpu_seconds)
        };
        assert_eq!(cpu("/items/{id}"), Some(1.5));
        assert_eq!(cpu("/health"), Some(0.0));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["cpu_window"]["duration_ms"], 30_000.0);
        assert!(report.to_string().contains("CPU s: in the last CPU profile window (30.0 s"));
    }

    #[test]
    fn records_per_method_route_and_status() {
        let m = RedMetrics::new();
        for i in 0..100u64 {
            let status = if i % 10 == 0 { 500 } else { 200 };
            m.record(
                "GET",
                Some("/items/{id}"),
                status,
                Duration::from_millis(20),
            );
        }
        m.record("POST", Some("/items/{id}"), 201, Duration::from_millis(5));
        m.record("BREW", None, 404, Duration::from_micros(30));
        let report = m.report();
        assert_eq!(report.routes.len(), 3);
        let get = &report.routes[0];
        assert_eq!(
            (get.method.as_str(), get.route.as_str()),
            ("GET", "/items/{id}")
        );
        assert_eq!((get.requests, get.errors), (100, 10));
        assert!((get.error_ratio - 0.1).abs() < 1e-9);
        assert_eq!(get.statuses["200"], 90);
        assert_eq!(get.statuses["500"], 10);
        assert!(get.rate_per_s > 1.0);
        let p50 = get.latency.p50.as_secs_f64();
        assert!((p50 - 0.020).abs() < 0.020 * 0.0625, "{p50}");
        let other = report.routes.iter().find(|r| r.method == "_OTHER").unwrap();
        assert_eq!(other.route, UNMATCHED_ROUTE);
        let mut series = 0;
        m.for_each_series(|_, _, _, counts, _| {
            series += 1;
            assert_eq!(counts.len(), BUCKET_BOUNDS.len() + 1);
        });
        assert_eq!(series, 4);
        assert_eq!(m.series_count(), 4);
    }

    #[test]
    fn new_series_beyond_the_limit_go_to_the_overflow_route() {
        let m = RedMetrics::with_max_series(2);
        m.record("GET", Some("/a"), 200, Duration::from_millis(1));
        m.record("GET", Some("/b"), 200, Duration::from_millis(1));
        m.record("GET", Some("/c"), 200, Duration::from_millis(1));
        m.record("GET", Some("/d"), 200, Duration::from_millis(1));
        m.record("GET", Some("/a"), 200, Duration::from_millis(1));
        let report = m.report();
        let routes: Vec<_> = report
            .routes
            .iter()
            .map(|r| (r.route.as_str(), r.requests))
            .collect();
        assert!(routes.contains(&("/a", 2)));
        assert!(routes.contains(&(OVERFLOW_ROUTE, 2)));
        assert_eq!(routes.len(), 3);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let m = RedMetrics::new();
        std::thread::scope(|s| {
            for t in 0..4 {
                let m = m.clone();
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        let route = if i % 2 == 0 { "/x" } else { "/y" };
                        m.record("GET", Some(route), 200 + (t % 2), Duration::from_nanos(i));
                    }
                });
            }
        });
        let total: u64 = m.report().routes.iter().map(|r| r.requests).sum();
        assert_eq!(total, 40_000);
    }
}
