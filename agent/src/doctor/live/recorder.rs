//! Reads the agent's capabilities once a second into a history [`Row`] and
//! the [`Current`] readings the rules need. Everything here runs on the
//! doctor's own thread; it reads what the capabilities already keep (the
//! USE sampler's latest sample, the watchdog's per-second lag, the RED
//! layer's histograms) and never touches the host's runtime.

use std::collections::HashMap;
#[cfg(any(feature = "red", feature = "runtime"))]
use std::time::Duration;
use std::time::SystemTime;

#[cfg(feature = "red")]
use crate::doctor::{InFlightReading, RouteReading};
use crate::doctor::{Current, DoctorConfig, History, Row, Series};
#[cfg(feature = "resources")]
use crate::doctor::{MemoryLimitSource, ResourceReading};
use super::Sources;

#[cfg(feature = "red")]
/// RED routes the doctor follows (the busiest, by requests); the rest are
/// still in `/debug/red`.
const MAX_ROUTES: usize = 256;
/// How often a snapshot of every route's histogram is kept for the route
/// window, and how many: the window is 60–70 s.
#[cfg(feature = "red")]
const ROUTE_SNAPSHOT_EVERY: Duration = Duration::from_secs(10);
#[cfg(feature = "red")]
const ROUTE_SNAPSHOTS: usize = 7;

/// State the recorder keeps between seconds.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    #[cfg_attr(not(feature = "red"), allow(dead_code))]
    red: RedWindows,
}

impl Recorder {
    /// One second of every signal, and the readings of now.
    pub(crate) fn read(
        &mut self,
        caps: &Sources,
        history: &mut History,
        config: &DoctorConfig,
        artifact_bytes: usize,
        now: SystemTime,
    ) -> (Row, Current) {
        let mut row = Row::new(now);
        #[allow(unused_mut)] // filled by the capabilities built
        let mut current = Current {
            heap_profiling: caps.heap.check().is_ok(),
            cpu_profiling: cfg!(all(native_unwind, feature = "cpu")),
            ..Current::default()
        };
        #[cfg(feature = "resources")]
        read_resources(caps, history, &mut row, &mut current);
        #[cfg(feature = "runtime")]
        read_runtime(caps, config.stall_recency, now, &mut row, &mut current);
        #[cfg(feature = "red")]
        {
            self.red.read(&caps.red, now, &mut row, &mut current);
            read_in_flight(&caps.red, config, &mut row, &mut current);
        }
        row.set(Series::AgentBytes, (agent_bytes(caps) + artifact_bytes) as f64);
        #[cfg(not(feature = "resources"))]
        let _ = history;
        #[cfg(not(any(feature = "runtime", feature = "red")))]
        let _ = config;
        (row, current)
    }
}

/// Memory the agent holds that grows with use: the symbolizer's cache and
/// debug-info indexes, heap snapshots, kept CPU profiles (estimates); the
/// doctor adds its own captured profiles.
fn agent_bytes(caps: &Sources) -> usize {
    let symbols = crate::symbols::symbolizer_stats().cache_bytes;
    let snapshots: usize = caps
        .heap
        .snapshots()
        .iter()
        .map(|s| s.profile.approx_bytes())
        .sum();
    symbols + snapshots + caps.kept.memory_bytes()
}

#[cfg(feature = "resources")]
fn read_resources(
    caps: &Sources,
    history: &mut History,
    row: &mut Row,
    current: &mut Current,
) {
    // The USE sampler's latest sample (taken within the last second); a
    // new one only if it is late.
    let (base, now) = caps.resources.recent(Duration::from_millis(1500));
    let table = caps.resources.table(base.as_deref(), &now);
    let mut set = |series: Series, value: Option<f64>| {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            row.set(series, value);
        }
    };
    for usage in &table.resources {
        let detail = |key: &str| usage.details.get(key).copied();
        match usage.name.as_str() {
            "cpu" => {
                set(Series::CpuCores, usage.used);
                set(Series::CpuLimitCores, usage.limit);
                set(Series::PsiCpuSomeAvg10, detail("psi_some_avg10_ratio"));
            }
            "memory" => {
                set(Series::MemoryBytes, usage.used);
                set(Series::MemoryLimitBytes, usage.limit);
                set(Series::RssBytes, detail("resident_bytes"));
                set(Series::OomKillsTotal, usage.errors.map(|e| e as f64));
                set(Series::PsiMemorySomeAvg10, usage.saturation);
                current.memory_limit_bytes = usage.limit.map(|l| l as u64);
            }
            "file_descriptors" => {
                set(Series::OpenFds, usage.used);
                set(Series::FdLimit, usage.limit);
                current.fd_limit = usage.limit.map(|l| l as u64);
            }
            "threads" => {
                set(Series::Threads, usage.used);
                set(Series::ThreadLimit, usage.limit);
                current.thread_limit = usage.limit.map(|l| l as u64);
            }
            "disk" => set(Series::PsiIoSomeAvg10, usage.saturation),
            "heap" => {
                set(Series::JemallocAllocatedBytes, usage.used);
                set(Series::JemallocResidentBytes, usage.limit);
            }
            "network" | "executor" => {}
            name => {
                if let Some(slot) = history.resource_slot(name) {
                    set(Series::ResourceUtilization(slot), usage.utilization);
                    set(Series::ResourceSaturation(slot), usage.saturation);
                }
                current.resources.push(ResourceReading {
                    name: name.to_owned(),
                    used: usage.used,
                    limit: usage.limit,
                    saturation: usage.saturation,
                    unit: usage.unit.clone(),
                });
            }
        }
    }
    current.memory_limit_source = match &now.slow.memory_cgroup {
        Ok(cgroup) if cgroup.limit_bytes.is_some() => MemoryLimitSource::Cgroup,
        _ if current.memory_limit_bytes.is_some() => MemoryLimitSource::Host,
        _ => MemoryLimitSource::Unknown,
    };
    // Throttling of this second: only where a CFS quota applies.
    if let (Ok(cgroup), Some(Ok(before))) = (&now.cpu_cgroup, base.as_ref().map(|b| &b.cpu_cgroup))
    {
        let periods = cgroup.periods.saturating_sub(before.periods);
        if cgroup.quota_cores.is_some() && periods > 0 {
            let throttled = cgroup
                .throttled_periods
                .saturating_sub(before.throttled_periods);
            row.set(Series::CpuThrottledRatio, throttled as f64 / periods as f64);
        }
    }
}

#[cfg(feature = "runtime")]
fn read_runtime(
    caps: &Sources,
    stall_recency: Duration,
    now: SystemTime,
    row: &mut Row,
    current: &mut Current,
) {
    let since = now
        .checked_sub(stall_recency)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let Some(sample) = caps.runtime.doctor_sample(since) else {
        return;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if let Some(second) = &sample.last_second {
        row.set(Series::LagP50Ms, ms(second.p50));
        row.set(Series::LagP99Ms, ms(second.p99));
        row.set(Series::LagMaxMs, ms(second.max));
    }
    row.set(Series::Workers, sample.workers as f64);
    for (series, value) in [
        (Series::WorkerBusyMean, sample.busy_mean),
        (Series::WorkerBusyMin, sample.busy_min),
        (Series::WorkerBusyMax, sample.busy_max),
    ] {
        if let Some(value) = value {
            row.set(series, value);
        }
    }
    row.set(Series::GlobalQueueDepth, sample.global_queue_depth as f64);
    row.set(Series::AliveTasks, sample.alive_tasks as f64);
    row.set(Series::StallsTotal, sample.stalls_total as f64);
    current.longest_stall = sample.longest_stall.map(|stall| {
        crate::doctor::StallReading::new(stall.worker, stall.started_at, stall.duration, stall.frames)
            .ongoing(stall.ongoing)
    });
}

/// Requests in flight now: per route how many, how many of them are stuck
/// (in flight longer than max(`stuck_request_min`, `stuck_request_p99_factor`
/// × the route's p99 over the route window)), and the oldest's age; the
/// second's totals into the row. Runs after the route window is read.
#[cfg(feature = "red")]
fn read_in_flight(
    red: &crate::red::RedMetrics,
    config: &DoctorConfig,
    row: &mut Row,
    current: &mut Current,
) {
    let threshold = |method: &str, route: &str| {
        let p99 = current
            .routes
            .iter()
            .find(|r| r.method == method && r.route == route)
            .and_then(|r| r.p99)
            .unwrap_or(Duration::ZERO);
        config
            .stuck_request_min
            .max(p99.mul_f64(config.stuck_request_p99_factor.max(0.0)))
    };
    let mut routes: HashMap<(String, String), (u64, u64, Duration, Duration)> = HashMap::new();
    red.for_each_in_flight(|method, route, age| {
        let key = (method.to_owned(), route.to_owned());
        let entry = match routes.get_mut(&key) {
            Some(entry) => entry,
            None => {
                let limit = threshold(method, route);
                routes.entry(key).or_insert((0, 0, Duration::ZERO, limit))
            }
        };
        entry.0 += 1;
        if age >= entry.3 {
            entry.1 += 1;
        }
        entry.2 = entry.2.max(age);
    });
    let total: u64 = routes.values().map(|r| r.0).sum();
    let oldest = routes.values().map(|r| r.2).max().unwrap_or(Duration::ZERO);
    row.set(Series::RequestsInFlight, total as f64);
    row.set(Series::OldestInFlightMs, oldest.as_secs_f64() * 1e3);
    current.in_flight = routes
        .into_iter()
        .map(|((method, route), (count, stuck, oldest, _))| {
            let mut reading = InFlightReading::new(method, route, count, oldest);
            reading.stuck = stuck;
            reading
        })
        .collect();
    current
        .in_flight
        .sort_by(|a, b| b.stuck.cmp(&a.stuck).then(b.oldest.cmp(&a.oldest)));
}

/// Per-route latency over the last minute and the requests of the last
/// second, from the RED layer's since-start histograms: snapshots of their
/// bucket counts, subtracted.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "red"), allow(dead_code))]
struct RedWindows {
    /// Each route's counts at the previous second.
    last: RouteMap,
    /// Every route's counts every [`ROUTE_SNAPSHOT_EVERY`], oldest first.
    snapshots: std::collections::VecDeque<(SystemTime, RouteMap)>,
    /// Scratch: the second's buckets over every route.
    second: Vec<u64>,
}

/// Counts per (method, route).
type RouteMap = HashMap<(&'static str, Box<str>), RouteCounts>;

#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "red"), allow(dead_code))]
struct RouteCounts {
    errors: u64,
    latency: crate::histogram::Counts,
}

#[cfg(feature = "red")]
impl RedWindows {
    fn read(
        &mut self,
        red: &crate::red::RedMetrics,
        now: SystemTime,
        row: &mut Row,
        current: &mut Current,
    ) {
        use crate::histogram::{dense, quantile_of, Counts};
        if self.second.is_empty() {
            self.second = dense();
        }
        self.second.iter_mut().for_each(|n| *n = 0);
        let (mut requests, mut errors) = (0u64, 0u64);
        // On the first read every count is history, not this second's.
        let first_read = self.snapshots.is_empty();
        let mut routes: RouteMap = HashMap::with_capacity(self.last.len());
        red.for_each_route(|method, route, route_errors, latency| {
            let key = (method, Box::<str>::from(route));
            let mut counts = self
                .last
                .remove(&key)
                .map(|c| c.latency)
                .unwrap_or_default();
            let previous = counts.clone();
            latency.counts_into(&mut counts);
            requests += counts.total();
            errors += route_errors;
            if !first_read {
                let then = Some(&previous).filter(|p| p.total() > 0);
                Counts::add_delta(&counts, then, &mut self.second);
            }
            routes.insert(
                key,
                RouteCounts {
                    errors: route_errors,
                    latency: counts,
                },
            );
        });
        row.set(Series::RequestsTotal, requests as f64);
        row.set(Series::ErrorsTotal, errors as f64);
        if let Some(p99) = quantile_of(&self.second, 0.99) {
            row.set(Series::RequestP99Ms, p99.as_secs_f64() * 1e3);
        }
        // Keep the busiest routes only.
        if routes.len() > MAX_ROUTES {
            let mut by_requests: Vec<_> = routes.drain().collect();
            by_requests.sort_by_key(|(_, c)| std::cmp::Reverse(c.latency.total()));
            by_requests.truncate(MAX_ROUTES);
            routes = by_requests.into_iter().collect();
        }
        let due = self.snapshots.back().is_none_or(|(at, _)| {
            now.duration_since(*at).unwrap_or(Duration::ZERO) >= ROUTE_SNAPSHOT_EVERY
        });
        if due {
            if self.snapshots.len() == ROUTE_SNAPSHOTS {
                self.snapshots.pop_front();
            }
            self.snapshots.push_back((now, routes.clone()));
        }
        // The route window: from the oldest snapshot to now.
        if let Some((since, oldest)) = self.snapshots.front() {
            current.routes_window = now.duration_since(*since).unwrap_or(Duration::ZERO);
            let mut buckets = dense();
            for ((method, route), counts) in &routes {
                let then = oldest.get(&(*method, route.clone()));
                buckets.iter_mut().for_each(|n| *n = 0);
                Counts::add_delta(&counts.latency, then.map(|t| &t.latency), &mut buckets);
                let in_window: u64 = buckets.iter().sum();
                if in_window == 0 {
                    continue;
                }
                let window_errors = counts.errors.saturating_sub(then.map_or(0, |t| t.errors));
                let mut reading = RouteReading::new(*method, &**route, in_window, window_errors);
                if let (Some(p95), Some(p99)) =
                    (quantile_of(&buckets, 0.95), quantile_of(&buckets, 0.99))
                {
                    reading = reading.latency(p95, p99);
                }
                current.routes.push(reading);
            }
            current
                .routes
                .sort_by_key(|r| std::cmp::Reverse(r.requests));
        }
        self.last = routes;
    }
}
