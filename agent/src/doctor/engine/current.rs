//! What the rules need beyond the history: readings of "now" that are not
//! one number a second — the longest recent stall with its stack, the
//! route table, limits, user resources, which capabilities are available.

use std::time::{Duration, SystemTime};

/// The readings of "now" the rules read besides the [`History`](super::History).
/// Every field may stay at its default (unknown); rules that need it then
/// stay silent.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Current {
    /// The longest stall (a worker stuck in one poll) of the last minute
    /// or so, or one still going on.
    pub longest_stall: Option<StallReading>,
    /// Per-route RED numbers over [`routes_window`](Current::routes_window).
    pub routes: Vec<RouteReading>,
    /// Requests in flight now, per route.
    pub in_flight: Vec<InFlightReading>,
    /// The window `routes` cover (e.g. the last minute).
    pub routes_window: Duration,
    /// Soft limit of open file descriptors (else the history's `fd_limit`).
    pub fd_limit: Option<u64>,
    /// Most threads the process may have (else the history's `thread_limit`).
    pub thread_limit: Option<u64>,
    /// Memory limit in bytes (else the history's `memory_limit_bytes`).
    pub memory_limit_bytes: Option<u64>,
    /// Where the memory limit comes from.
    pub memory_limit_source: MemoryLimitSource,
    /// Registered user resources as `/debug/use` reports them now.
    pub resources: Vec<ResourceReading>,
    /// Heap profiling works (jemalloc with `prof:true`): heap URLs go into
    /// `next`, and memory findings can be given heap snapshots.
    pub heap_profiling: bool,
    /// CPU profiling works here: profile URLs go into `next`.
    pub cpu_profiling: bool,
}

/// Where a memory limit comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryLimitSource {
    /// Not known.
    #[default]
    Unknown,
    /// The memory cgroup's limit (the OOM killer acts at it).
    Cgroup,
    /// The host's memory (no cgroup limit).
    Host,
}

impl MemoryLimitSource {
    /// How the limit is named in text: "the cgroup limit", "host memory".
    pub(crate) fn describe(self) -> &'static str {
        match self {
            MemoryLimitSource::Cgroup => "the cgroup limit",
            MemoryLimitSource::Host => "host memory",
            MemoryLimitSource::Unknown => "the memory limit",
        }
    }
}

/// A worker stuck in one poll, as the watchdog saw it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StallReading {
    /// Worker index.
    pub worker: usize,
    /// When the worker entered the poll.
    pub started_at: SystemTime,
    /// How long it was stuck (so far, if `ongoing`).
    pub duration: Duration,
    /// Whether it is still stuck.
    pub ongoing: bool,
    /// Symbolized stack of the stuck thread, leaf first (empty if unknown).
    pub frames: Vec<String>,
}

impl StallReading {
    /// A stall of `duration` from `started_at` on `worker`, with its stack
    /// (leaf first).
    pub fn new(
        worker: usize,
        started_at: SystemTime,
        duration: Duration,
        frames: Vec<String>,
    ) -> Self {
        StallReading {
            worker,
            started_at,
            duration,
            ongoing: false,
            frames,
        }
    }

    /// Marks it as still going on.
    #[must_use]
    pub fn ongoing(mut self, ongoing: bool) -> Self {
        self.ongoing = ongoing;
        self
    }
}

/// One route's RED numbers over the window of [`Current::routes`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteReading {
    /// HTTP method.
    pub method: String,
    /// Route template, e.g. `/items/{id}`.
    pub route: String,
    /// Requests completed in the window.
    pub requests: u64,
    /// Of which errors (status ≥ 500 or no response).
    pub errors: u64,
    /// 95th percentile latency in the window.
    pub p95: Option<Duration>,
    /// 99th percentile latency in the window.
    pub p99: Option<Duration>,
}

impl RouteReading {
    /// `requests` to `method route`, `errors` of them failed.
    pub fn new(
        method: impl Into<String>,
        route: impl Into<String>,
        requests: u64,
        errors: u64,
    ) -> Self {
        RouteReading {
            method: method.into(),
            route: route.into(),
            requests,
            errors,
            p95: None,
            p99: None,
        }
    }

    /// Sets the latency percentiles.
    #[must_use]
    pub fn latency(mut self, p95: Duration, p99: Duration) -> Self {
        self.p95 = Some(p95);
        self.p99 = Some(p99);
        self
    }

    /// `errors / requests` (0 without requests).
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// `GET /items/{id}`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.route)
    }
}

/// One route's requests in flight now.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InFlightReading {
    /// HTTP method.
    pub method: String,
    /// Route template.
    pub route: String,
    /// Requests in flight.
    pub count: u64,
    /// Those in flight longer than the stuck threshold the recorder was
    /// given (all of them when it was not given one).
    pub stuck: u64,
    /// How long the oldest has been running.
    pub oldest: Duration,
}

impl InFlightReading {
    /// `count` requests to `method route` in flight, the oldest for `oldest`.
    pub fn new(
        method: impl Into<String>,
        route: impl Into<String>,
        count: u64,
        oldest: Duration,
    ) -> Self {
        InFlightReading {
            method: method.into(),
            route: route.into(),
            count,
            stuck: count,
            oldest,
        }
    }

    /// `GET /items/{id}`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.route)
    }
}

/// A registered user resource now (a row of `/debug/use`).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ResourceReading {
    /// Its name, as registered.
    pub name: String,
    /// Units in use.
    pub used: Option<f64>,
    /// Units in total.
    pub limit: Option<f64>,
    /// Callers waiting.
    pub saturation: Option<f64>,
    /// Unit of `used` and `limit` (`connections`).
    pub unit: String,
}

impl ResourceReading {
    /// `used` of `limit` `unit`s of `name`.
    pub fn new(name: impl Into<String>, used: f64, limit: f64, unit: impl Into<String>) -> Self {
        ResourceReading {
            name: name.into(),
            used: Some(used),
            limit: Some(limit),
            saturation: None,
            unit: unit.into(),
        }
    }

    /// Sets the number of waiters.
    #[must_use]
    pub fn saturation(mut self, waiting: f64) -> Self {
        self.saturation = Some(waiting);
        self
    }
}
