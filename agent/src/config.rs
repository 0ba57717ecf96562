//! Defaults and environment overrides.
//!
//! Every default the agent uses is a `pub const` here, and every setter of
//! [`AgentBuilder`](crate::AgentBuilder) quotes the one it replaces.
//! [`AgentBuilder::with_default_env`](crate::AgentBuilder::with_default_env)
//! is the only place that reads environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::Error;

/// Address the debug server binds when none is given: loopback only.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:6060";

/// Longest CPU profile a request may ask for, in seconds. Longer requests get 400.
pub const DEFAULT_MAX_PROFILE_SECONDS: u64 = 300;

/// Highest value `max_profile_seconds` accepts: one hour.
pub const MAX_PROFILE_SECONDS_LIMIT: u64 = 3600;

/// Window of `/debug/pprof/profile` when `seconds` is not given (Go's default).
pub const DEFAULT_PROFILE_SECONDS: u64 = 30;

/// Window of `/debug/pprof/flamegraph` when `seconds` is not given.
pub const DEFAULT_FLAMEGRAPH_SECONDS: u64 = 10;

/// Sampling frequency when `hz` is not given, in samples per second of CPU.
///
/// 99 rather than 100 so that sampling does not run in lockstep with periodic
/// work of the host.
pub const DEFAULT_PROFILE_HZ: u32 = 99;

/// Highest sampling frequency a request may ask for.
///
/// The kernel's CPU timers fire at most once per scheduler tick per busy CPU
/// (`CONFIG_HZ`, commonly 250), so higher values would not give more samples.
pub const MAX_PROFILE_HZ: u32 = 1000;

/// Most threads a wall-clock profile (`mode=wall`) samples; a process with
/// more has its lowest thread ids sampled and the profile's comments say
/// how many were left out.
pub const MAX_WALL_THREADS: usize = 256;

/// Most connections the debug server keeps open. When all are taken, a new
/// connection replaces the oldest idle or slow one; only when every one is
/// serving a request does it get 503 (docs/security.md).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Range `max_connections` accepts.
pub const MAX_CONNECTIONS_RANGE: (usize, usize) = (2, 4096);

/// Most CPU profiles the debug server runs at once (each holds its
/// connection for the whole window); more get 429 with `Retry-After`. It
/// stays below `max_connections` so quick requests such as `/health`
/// always find a connection.
pub const DEFAULT_MAX_CONCURRENT_PROFILES: usize = 16;

/// Time a client has to send its request headers — on a new connection, and
/// between requests on a kept-alive one — before the connection is closed.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a request body may take to arrive after its headers; slower bodies
/// get 408.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Extra time beyond the requested profile window that a request may take
/// (symbolization and encoding) before it is cut off.
pub const DEFAULT_REQUEST_GRACE: Duration = Duration::from_secs(60);

/// Heap snapshots an agent keeps before evicting the oldest.
pub const DEFAULT_HEAP_SNAPSHOTS: usize = 16;

/// Most heap snapshots an agent may be configured to keep.
pub const MAX_HEAP_SNAPSHOTS: usize = 1024;

/// Stacks a heap diff or snapshot lists in `text`/`json` unless `limit` says otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 50;

/// Largest `limit` a request may ask for.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Most (method, route, status) series the RED recorder keeps; requests
/// that would create more are counted under the route `<overflow>`.
pub const DEFAULT_RED_MAX_SERIES: usize = 2000;

/// Shortest window over which USE rates and utilizations (CPU, executor,
/// disk, throttling) are computed: two samples of a cumulative counter
/// closer than this give too coarse a rate (CPU time has 10 ms ticks).
pub const MIN_USE_WINDOW: Duration = Duration::from_millis(200);

/// How often the agent's own thread samples the cumulative counters behind
/// USE utilizations, so `/debug/use` and `/metrics` describe the last
/// second or so rather than the time since the previous request.
pub const DEFAULT_USE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the agent's sampling thread also reads the values whose rates
/// need no one-second resolution (network, disk and I/O counters, open
/// descriptors, run-queue delay, PSI — itself a ten-second average —, the
/// memory and pids cgroups, limits): every tenth sample. An on-demand
/// `/debug/use` reads everything.
pub const USE_SLOW_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// How often the executor-lag probe runs and the stuck-worker watchdog
/// looks at the runtime's workers (Node's `monitorEventLoopDelay` default).
pub const DEFAULT_LAG_RESOLUTION: Duration = Duration::from_millis(10);

/// Shortest and longest lag resolution the builder accepts.
pub const LAG_RESOLUTION_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(1));

/// A worker that stays inside one poll longer than this is reported as a
/// stall, with the stack it is stuck in.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// Longest stall threshold the builder accepts.
pub const MAX_STALL_THRESHOLD: Duration = Duration::from_secs(60);

/// How long the watchdog keeps the unwind tables it copied for a stack
/// capture after the last stall (~2 MiB), so a burst of stalls copies them
/// once.
pub const STALL_CAPTURE_KEEP: Duration = Duration::from_secs(60);

/// Most distinct (target, span name) pairs the span timings keep; spans of
/// further names are counted under the target and name `<overflow>`.
pub const DEFAULT_SPAN_MAX_NAMES: usize = 1000;

/// Spans that take at least this long (creation to close) are candidates
/// for the slow-span log. Half of a typical 100 ms request budget: a query
/// or upstream call this slow is worth reading about.
pub const DEFAULT_SLOW_SPAN_THRESHOLD: Duration = Duration::from_millis(50);

/// Slowest spans the slow-span log keeps per (target, span name).
pub const DEFAULT_SLOW_SPANS_PER_NAME: usize = 10;

/// How long a span stays in the slow-span log: "recent" means closed within
/// this window (the doctor's history length).
pub const DEFAULT_SLOW_SPAN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Bytes of field text (`name=value …`) kept per span for the slow-span
/// log; longer values are cut at a character boundary and marked with `…`.
pub const MAX_SPAN_FIELDS_BYTES: usize = 256;

/// Ancestor span names a slow-span record keeps, nearest first.
pub const MAX_SPAN_PARENTS: usize = 8;

/// Longest `ttl` a log-level change may ask for before it reverts.
pub const MAX_LOG_LEVEL_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest log filter directive `PUT /debug/log-level` accepts, in bytes.
pub const MAX_LOG_DIRECTIVE_BYTES: usize = 4096;

/// Environment variable with the listen address (`host:port`).
pub const ENV_ADDR: &str = "STETHOSCOPE_ADDR";
/// Environment variable with the bearer token clients must send.
pub const ENV_TOKEN: &str = "STETHOSCOPE_TOKEN";
/// Environment variable with a comma-separated CIDR allowlist (`10.0.0.0/8,127.0.0.1/32`).
pub const ENV_ALLOW: &str = "STETHOSCOPE_ALLOW";
/// Environment variable with the longest allowed profile, in seconds.
pub const ENV_MAX_PROFILE_SECONDS: &str = "STETHOSCOPE_MAX_PROFILE_SECONDS";

// ---- The doctor: history, rules, hysteresis, budgets, auto-capture ----
//
// The rules of `doctor` compare against the thresholds below; each is a
// field of `DoctorConfig` that starts at this value. docs/doctor.md
// explains every one and where it comes from.

/// Rows the doctor's history keeps, one per second: 15 minutes.
pub const DEFAULT_HISTORY_ROWS: usize = 900;

/// Shortest and longest history the agent accepts, in rows (seconds):
/// one minute to one hour.
pub const HISTORY_ROWS_RANGE: (usize, usize) = (60, 3600);

/// Registered user resources the history records (two series each:
/// utilization and saturation). Resources registered beyond this many
/// still appear in `/debug/use` and `/metrics`, not in the history.
pub const MAX_HISTORY_RESOURCES: usize = 16;

/// Seconds of history over which a rule judges "now" (medians and maxima
/// of the latest per-second values). Shorter than every rule's window, so
/// a single spike keeps a condition true for at most this long and never
/// opens a finding by itself.
pub const DEFAULT_DOCTOR_LOOKBACK: Duration = Duration::from_secs(5);

/// Window of `event_loop_blocked`: how long the executor must stay blocked
/// before the finding opens (and clear before it closes).
pub const DEFAULT_WINDOW_EVENT_LOOP_BLOCKED: Duration = Duration::from_secs(10);

/// Window of `executor_saturated`.
pub const DEFAULT_WINDOW_EXECUTOR_SATURATED: Duration = Duration::from_secs(10);

/// Window of `cpu_saturated`.
pub const DEFAULT_WINDOW_CPU_SATURATED: Duration = Duration::from_secs(30);

/// Window of `io_bound`.
pub const DEFAULT_WINDOW_IO_BOUND: Duration = Duration::from_secs(30);

/// Window of `memory_growing`.
pub const DEFAULT_WINDOW_MEMORY_GROWING: Duration = Duration::from_secs(120);

/// Window of `memory_near_limit`.
pub const DEFAULT_WINDOW_MEMORY_NEAR_LIMIT: Duration = Duration::from_secs(10);

/// Window of `allocator_fragmentation`.
pub const DEFAULT_WINDOW_ALLOCATOR_FRAGMENTATION: Duration = Duration::from_secs(120);

/// Window of `fds_near_limit` and `threads_near_limit`.
pub const DEFAULT_WINDOW_NEAR_LIMIT: Duration = Duration::from_secs(10);

/// Window of `fds_climbing` and `threads_climbing`.
pub const DEFAULT_WINDOW_CLIMBING: Duration = Duration::from_secs(120);

/// Window of `resource_saturated`.
pub const DEFAULT_WINDOW_RESOURCE_SATURATED: Duration = Duration::from_secs(30);

/// Window of the budget rules (`route_over_budget`, `cpu_over_budget`,
/// `memory_over_budget`).
pub const DEFAULT_WINDOW_BUDGET: Duration = Duration::from_secs(60);

/// Executor blocked when the median of the per-second lag p50 over the
/// lookback reaches this, in milliseconds (Clinic Doctor's "event loop
/// delay median ≥ 10 ms").
pub const DEFAULT_LAG_MEDIAN_MS: f64 = 10.0;

/// Executor blocked when a second of the lookback saw a lag this long, in
/// milliseconds (Clinic Doctor's "max ≥ 100 ms").
pub const DEFAULT_LAG_MAX_MS: f64 = 100.0;

/// A blocked executor is `critical` once a delay this long was seen in
/// its window, in milliseconds.
pub const DEFAULT_LAG_CRITICAL_MS: f64 = 1000.0;

/// A stall is evidence of `event_loop_blocked` if it ended (or is still
/// going on) at most this long ago.
pub const DEFAULT_STALL_RECENCY: Duration = Duration::from_secs(60);

/// Executor saturated when the least busy worker is busy at least this
/// share of every second (median over the lookback).
pub const DEFAULT_WORKER_BUSY_RATIO: f64 = 0.9;

/// Window over which the global queue depth must rise (Theil–Sen slope
/// above 0) for `executor_saturated`.
pub const DEFAULT_EXECUTOR_TREND_WINDOW: Duration = Duration::from_secs(15);

/// With every worker busy, a lag p99 this high (median over the lookback,
/// milliseconds) means tasks queue: `executor_saturated`.
pub const DEFAULT_SATURATED_LAG_P99_MS: f64 = 10.0;

/// CPU saturated when the process uses this share of its CPU limit (cgroup
/// quota, else the CPUs it may run on), median over the lookback.
pub const DEFAULT_CPU_SATURATED_RATIO: f64 = 0.9;

/// CPU quota exhausted when at least this share of CFS periods were
/// throttled (median over the lookback); kube-prometheus'
/// `CPUThrottlingHigh` alert uses the same 25 %.
pub const DEFAULT_CPU_THROTTLED_RATIO: f64 = 0.25;

/// I/O- or downstream-bound needs CPU below this share of the limit
/// (Clinic Doctor's I/O rule: CPU stays low while requests are slow).
pub const DEFAULT_IO_CPU_RATIO: f64 = 0.5;

/// I/O-bound needs a responsive executor: lag p99 below this, milliseconds.
pub const DEFAULT_IO_LAG_P99_MS: f64 = 10.0;

/// A route is slow for `io_bound` when its p99 reaches this (or it is over
/// its latency budget).
pub const DEFAULT_SLOW_ROUTE_P99: Duration = Duration::from_millis(500);

/// Requests a route needs in its window before its percentiles and error
/// ratio are judged (one slow request is not a p95).
pub const DEFAULT_MIN_ROUTE_REQUESTS: u64 = 20;

/// Window of the robust memory slope (Theil–Sen over 10-second medians);
/// at least half of it must be in the history before the rule can fire.
pub const DEFAULT_MEMORY_SLOPE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Memory growing only if the fitted growth over the slope window is at
/// least this many bytes …
pub const DEFAULT_MEMORY_GROWTH_MIN_BYTES: u64 = 8 << 20;

/// … and at least this share of the level at the start of the window.
pub const DEFAULT_MEMORY_GROWTH_MIN_RATIO: f64 = 0.05;

/// A growing amount (memory, descriptors, threads) is `critical` when, at
/// its current slope, it reaches its limit within this time.
pub const DEFAULT_CRITICAL_ETA: Duration = Duration::from_secs(30 * 60);

/// Memory near its limit (cgroup limit, else host memory) from this share.
pub const DEFAULT_MEMORY_NEAR_LIMIT_RATIO: f64 = 0.9;

/// Memory near its limit is `critical` from this share.
pub const DEFAULT_MEMORY_CRITICAL_RATIO: f64 = 0.95;

/// An OOM kill in the cgroup keeps `memory_near_limit`'s condition true
/// this long.
pub const DEFAULT_OOM_LOOKBACK: Duration = Duration::from_secs(5 * 60);

/// Allocator fragmentation when jemalloc's resident bytes are at least this
/// multiple of its allocated bytes …
pub const DEFAULT_FRAGMENTATION_RATIO: f64 = 1.5;

/// … and exceed them by at least this many bytes.
pub const DEFAULT_FRAGMENTATION_MIN_BYTES: u64 = 64 << 20;

/// Descriptors or threads near their limit from this share of it.
pub const DEFAULT_LIMIT_WARNING_RATIO: f64 = 0.8;

/// Descriptors or threads near their limit are `critical` from this share.
pub const DEFAULT_LIMIT_CRITICAL_RATIO: f64 = 0.95;

/// Window of the slopes of open descriptors and threads.
pub const DEFAULT_COUNT_SLOPE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Descriptors climbing only if the fitted growth over the slope window is
/// at least this many …
pub const DEFAULT_FD_GROWTH_MIN: f64 = 100.0;

/// Threads climbing only if the fitted growth over the slope window is at
/// least this many …
pub const DEFAULT_THREAD_GROWTH_MIN: f64 = 50.0;

/// … and (both) at least this share of the count at the window's start.
pub const DEFAULT_COUNT_GROWTH_MIN_RATIO: f64 = 0.1;

/// A user resource is saturated from this utilization (median over the
/// lookback) …
pub const DEFAULT_RESOURCE_UTILIZATION: f64 = 0.95;

/// … or when its saturation (waiters) is above this in most seconds of
/// the lookback.
pub const DEFAULT_RESOURCE_SATURATION: f64 = 0.0;

/// Latency budget of every route without one of its own: p95 below this
/// (the seeds' "API p95 < 500 ms").
pub const DEFAULT_ROUTE_P95_BUDGET: Duration = Duration::from_millis(500);

/// Error budget of every route without one of its own: the share of
/// requests that may fail (status ≥ 500).
pub const DEFAULT_ROUTE_ERROR_RATIO_BUDGET: f64 = 0.01;

/// CPU budget: the share of the CPU limit the service should stay under
/// (the seeds' "CPU < 70 %").
pub const DEFAULT_CPU_BUDGET: f64 = 0.7;

/// Memory budget: the share of the memory limit the service should stay
/// under (the seeds' "memory < 80 % of the limit").
pub const DEFAULT_MEMORY_BUDGET: f64 = 0.8;

/// Most findings one rule reports at once (routes, resources); the worst
/// are kept.
pub const MAX_FINDINGS_PER_RULE: usize = 10;

/// Most (rule, resource) conditions the doctor tracks at once; new ones
/// wait while the table is full.
pub const MAX_TRACKED_FINDINGS: usize = 256;

/// Most artifacts one finding lists; the oldest are dropped.
pub const MAX_ARTIFACTS_PER_FINDING: usize = 8;

/// Crates whose frames are library code: the blocked-executor advice names
/// the leaf-most frame of any other crate as the application's. A frame
/// without `::` (a C symbol) or that is a bare address is library code too.
pub const DEFAULT_LIBRARY_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "tokio_stream",
    "futures",
    "futures_core",
    "futures_util",
    "futures_executor",
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "http_body",
    "http_body_util",
    "axum",
    "axum_core",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "tonic",
    "tracing",
    "tracing_core",
    "tracing_subscriber",
    "tracing_futures",
    "stethoscope",
    "parking_lot",
    "parking_lot_core",
    "crossbeam_channel",
    "crossbeam_utils",
    "mio",
    "pin_project_lite",
    "libc",
    "backtrace",
];

/// Whether the doctor captures artifacts (heap snapshots, CPU profiles)
/// when findings open.
pub const DEFAULT_AUTO_CAPTURE: bool = true;

/// Length of the CPU profile captured when a CPU finding opens.
pub const DEFAULT_AUTO_CAPTURE_PROFILE: Duration = Duration::from_secs(10);

/// Sampling rate of that profile: the on-demand default, so that an
/// operator's `/debug/pprof/profile` at the default rate joins the running
/// capture instead of waiting for it (one sampler per process). At 99 Hz
/// sampling costs ~0.2 % of the CPU for the capture's 10 s, at most once
/// per rule every 15 minutes.
pub const DEFAULT_AUTO_CAPTURE_HZ: u32 = DEFAULT_PROFILE_HZ;

/// After a memory-growth finding opens with a heap snapshot, the second
/// snapshot (the diff's target) is taken this much later.
pub const DEFAULT_AUTO_CAPTURE_FOLLOW_UP: Duration = Duration::from_secs(5 * 60);

/// Least time between two captures for the same rule.
pub const DEFAULT_AUTO_CAPTURE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Most captures (of any kind) per hour.
pub const MAX_AUTO_CAPTURES_PER_HOUR: usize = 8;

/// Environment variable with the doctor's budgets, e.g.
/// `GET /items/{id}: p95<500ms, errors<1%; cpu<70%; memory<80%` (docs/doctor.md).
pub const ENV_BUDGETS: &str = "STETHOSCOPE_BUDGETS";

/// Environment variable with the history's length, e.g. `15m` (one row a second).
pub const ENV_HISTORY: &str = "STETHOSCOPE_HISTORY";

/// Environment variable turning the doctor's auto-capture `on` or `off`.
pub const ENV_AUTO_CAPTURE: &str = "STETHOSCOPE_AUTO_CAPTURE";

/// Environment variable turning continuous profiling on at a rate, e.g.
/// `19` (Hz); `0` or `off` turns it off.
pub const ENV_CONTINUOUS_HZ: &str = "STETHOSCOPE_CONTINUOUS_HZ";

/// Environment variable with the continuous profiler's segment length, e.g.
/// `10s` (1 s to 10 minutes): the time resolution of look-back, of
/// `segment=latest` and of pushes.
pub const ENV_CONTINUOUS_SEGMENT: &str = "STETHOSCOPE_CONTINUOUS_SEGMENT";

/// Parses a segment length: 1 s to 10 minutes.
pub(crate) fn parse_segment(value: &str) -> Result<Duration, Error> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(600) => Ok(d),
        _ => Err(Error::InvalidEnv {
            var: ENV_CONTINUOUS_SEGMENT,
            value: value.to_owned(),
            expected: "a duration from 1s to 10m, e.g. 10s",
        }),
    }
}

/// The bearer token clients must present, kept so that checking it reveals
/// neither its content nor its length through timing.
#[derive(Clone)]
pub(crate) struct BearerToken {
    secret: Box<str>,
    keys: std::collections::hash_map::RandomState,
    digest: u64,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Validates a token: surrounding whitespace (a trailing newline from a
    /// mounted secret) is dropped; what remains must be non-empty visible
    /// ASCII, as an `Authorization` header can carry it.
    pub(crate) fn new(raw: &str) -> Result<Self, &'static str> {
        let secret = raw.trim();
        if secret.is_empty() {
            return Err("the token must not be empty");
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces");
        }
        let keys = std::collections::hash_map::RandomState::new();
        let digest = std::hash::BuildHasher::hash_one(&keys, secret.as_bytes());
        Ok(Self {
            secret: secret.into(),
            keys,
            digest,
        })
    }

    /// Whether `presented` is the token. The first comparison is of keyed
    /// SipHash digests (fixed length, keys random per process), so its time
    /// depends only on the presented length; the exact comparison that
    /// follows runs only for a presented value whose digest matched.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let digest = std::hash::BuildHasher::hash_one(&self.keys, presented);
        constant_time_eq::constant_time_eq(&digest.to_ne_bytes(), &self.digest.to_ne_bytes())
            && constant_time_eq::constant_time_eq(presented, self.secret.as_bytes())
    }
}

/// Resolved settings of one agent. Built by the builder, read by the server.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) token: Option<BearerToken>,
    pub(crate) allow: Vec<IpNet>,
    pub(crate) allow_insecure_bind: bool,
    pub(crate) max_profile_seconds: u64,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_profiles: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) heap_snapshots: usize,
    /// Continuous profiling, when on.
    pub(crate) continuous: Option<crate::cpu::ContinuousSettings>,
    pub(crate) fast_heap_backtraces: bool,
    pub(crate) lag_resolution: Duration,
    pub(crate) stall_threshold: Duration,
    pub(crate) doctor: crate::doctor::DoctorSettings,
    /// Pushing segments to a Pyroscope server, when on.
    #[cfg(feature = "push")]
    pub(crate) push: Option<crate::push::PushSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6060)),
            token: None,
            allow: Vec::new(),
            allow_insecure_bind: false,
            max_profile_seconds: DEFAULT_MAX_PROFILE_SECONDS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_profiles: DEFAULT_MAX_CONCURRENT_PROFILES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            heap_snapshots: DEFAULT_HEAP_SNAPSHOTS,
            continuous: None,
            fast_heap_backtraces: true,
            lag_resolution: DEFAULT_LAG_RESOLUTION,
            stall_threshold: DEFAULT_STALL_THRESHOLD,
            doctor: Default::default(),
            #[cfg(feature = "push")]
            push: None,
        }
    }
}

impl Config {
    /// Applies the `STETHOSCOPE_*` variables `var` finds (it returns a
    /// variable's value, `None` when unset): every valid one is applied,
    /// and the first invalid one is returned, naming the variable.
    pub(crate) fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Option<Error> {
        let mut first_error = None;
        let mut fail = |error: Error| {
            first_error.get_or_insert(error);
        };
        if let Some(addr) = var(ENV_ADDR) {
            match parse_listen(&addr) {
                Ok(addr) => self.listen = addr,
                Err(_) => fail(Error::InvalidEnv {
                    var: ENV_ADDR,
                    value: addr,
                    expected: "host:port, e.g. 127.0.0.1:6060",
                }),
            }
        }
        if let Some(token) = var(ENV_TOKEN) {
            match BearerToken::new(&token) {
                Ok(token) => self.token = Some(token),
                Err(_) => fail(Error::InvalidEnv {
                    var: ENV_TOKEN,
                    // Never echo a secret, even a malformed one.
                    value: "<redacted>".to_owned(),
                    expected: "a non-empty token of visible ASCII characters",
                }),
            }
        }
        if let Some(list) = var(ENV_ALLOW) {
            match parse_cidr_list(&list) {
                Ok(nets) => self.allow.extend(nets),
                Err(error @ Error::InvalidEnv { .. }) => fail(error),
                Err(_) => fail(Error::InvalidEnv {
                    var: ENV_ALLOW,
                    value: list,
                    expected: "comma-separated CIDR blocks, e.g. 10.0.0.0/8,192.168.1.7",
                }),
            }
        }
        if let Some(seconds) = var(ENV_MAX_PROFILE_SECONDS) {
            match parse_max_profile_seconds(&seconds) {
                Ok(seconds) => self.max_profile_seconds = seconds,
                Err(error) => fail(error),
            }
        }
        if let Some(budgets) = var(ENV_BUDGETS) {
            // Names the bad part of the string (Error::InvalidBudget).
            if let Err(error) = self.doctor.config.budgets.apply(&budgets) {
                fail(error);
            }
        }
        if let Some(length) = var(ENV_HISTORY) {
            match crate::doctor::parse_history_length(&length) {
                Ok(rows) => self.doctor.history_rows = rows,
                Err(error) => fail(error),
            }
        }
        if let Some(rate) = var(ENV_CONTINUOUS_HZ) {
            match rate.trim().to_ascii_lowercase().as_str() {
                "0" | "off" | "false" | "no" => self.continuous = None,
                text => match text.parse::<u32>() {
                    Ok(hz) if (1..=MAX_PROFILE_HZ).contains(&hz) => {
                        let settings = self
                            .continuous
                            .take()
                            .unwrap_or_else(|| crate::cpu::ContinuousSettings::new(hz));
                        self.continuous = Some(crate::cpu::ContinuousSettings { hz, ..settings });
                    }
                    _ => fail(Error::InvalidEnv {
                        var: ENV_CONTINUOUS_HZ,
                        value: rate,
                        expected: "a rate from 1 to 1000 (Hz), e.g. 19, or off",
                    }),
                },
            }
        }
        #[cfg(feature = "push")]
        if let Some(error) = crate::push::apply_env(&mut self.push, &var) {
            fail(error);
        }
        if let Some(length) = var(ENV_CONTINUOUS_SEGMENT) {
            match parse_segment(&length) {
                Ok(segment) => match self.continuous.take() {
                    Some(settings) => self.continuous = Some(settings.segment(segment)),
                    #[cfg(feature = "push")]
                    None if self.push.is_some() => {
                        let hz = crate::push::DEFAULT_PUSH_CONTINUOUS_HZ;
                        self.continuous =
                            Some(crate::cpu::ContinuousSettings::new(hz).segment(segment));
                    }
                    None => fail(Error::InvalidEnv {
                        var: ENV_CONTINUOUS_SEGMENT,
                        value: length,
                        expected: "continuous profiling on (STETHOSCOPE_CONTINUOUS_HZ) for a segment length",
                    }),
                },
                Err(error) => fail(error),
            }
        }
        if let Some(switch) = var(ENV_AUTO_CAPTURE) {
            match switch.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" | "yes" => self.doctor.capture.enabled = true,
                "off" | "false" | "0" | "no" => self.doctor.capture.enabled = false,
                _ => fail(Error::InvalidEnv {
                    var: ENV_AUTO_CAPTURE,
                    value: switch,
                    expected: "on or off",
                }),
            }
        }
        first_error
    }
}

/// Parses a listen address such as `127.0.0.1:6060` or `[::1]:0`.
pub(crate) fn parse_listen(addr: &str) -> Result<SocketAddr, Error> {
    addr.trim()
        .parse()
        .map_err(|source| Error::InvalidListenAddr {
            addr: addr.to_owned(),
            source,
        })
}

/// Parses one CIDR block; a bare IP address means that single host.
pub(crate) fn parse_cidr(cidr: &str) -> Result<IpNet, Error> {
    let text = cidr.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => text.parse::<IpNet>().map_err(|source| Error::InvalidCidr {
            cidr: cidr.to_owned(),
            source,
        }),
    }
}

/// Parses a comma-separated CIDR list, ignoring empty items between
/// commas. A list without any block is an error, not "allow everyone": an
/// allowlist variable that is set but empty is a mistake (a template that
/// did not expand), and silently serving every client would hide it.
pub(crate) fn parse_cidr_list(list: &str) -> Result<Vec<IpNet>, Error> {
    let nets = list
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(parse_cidr)
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err(Error::InvalidEnv {
            var: ENV_ALLOW,
            value: list.to_owned(),
            expected:
                "at least one CIDR block, e.g. 10.0.0.0/8; unset the variable to allow every client",
        });
    }
    Ok(nets)
}

/// Parses the maximum profile length: a whole number of seconds from 1 to
/// [`MAX_PROFILE_SECONDS_LIMIT`].
pub(crate) fn parse_max_profile_seconds(value: &str) -> Result<u64, Error> {
    match value.trim().parse::<u64>() {
        Ok(seconds) if (1..=MAX_PROFILE_SECONDS_LIMIT).contains(&seconds) => Ok(seconds),
        _ => Err(Error::InvalidEnv {
            var: ENV_MAX_PROFILE_SECONDS,
            value: value.to_owned(),
            expected: "a whole number of seconds from 1 to 3600",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env;

    #[test]
    fn env_applies_valid_values_and_names_the_first_bad_variable() {
        let mut config = Config::default();
        let error = config.apply_env(env(&[
            ("STETHOSCOPE_ADDR", "127.0.0.1:7070"),
            ("STETHOSCOPE_TOKEN", "t\n"),
            ("STETHOSCOPE_ALLOW", "10.0.0.0/8, 192.168.1.7"),
            ("STETHOSCOPE_MAX_PROFILE_SECONDS", "60"),
        ]));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(config.listen.port(), 7070);
        assert!(config.token.as_ref().is_some_and(|t| t.matches(b"t")));
        assert_eq!(config.allow.len(), 2);
        assert_eq!(config.max_profile_seconds, 60);

        let mut config = Config::default();
        let error = config.apply_env(env(&[
            ("STETHOSCOPE_TOKEN", "sec ret"),
            ("STETHOSCOPE_MAX_PROFILE_SECONDS", "0"),
            ("STETHOSCOPE_ADDR", "127.0.0.1:7071"),
        ]));
        let Some(Error::InvalidEnv { var, value, .. }) = error else {
            panic!("{error:?}");
        };
        assert_eq!(var, ENV_TOKEN, "the first bad variable in reading order");
        assert_eq!(value, "<redacted>", "a secret is never echoed");
        assert_eq!(config.listen.port(), 7071, "valid ones still apply");
    }

    #[test]
    fn an_empty_allowlist_variable_says_how_to_allow_everyone() {
        for list in ["", " , ", "10.0.0.0/99"] {
            let error = Config::default().apply_env(env(&[("STETHOSCOPE_ALLOW", list)]));
            let Some(Error::InvalidEnv { var, expected, .. }) = error else {
                panic!("{list:?}: {error:?}");
            };
            assert_eq!(var, ENV_ALLOW);
            assert_eq!(
                expected.contains("unset the variable"),
                list != "10.0.0.0/99",
                "{list:?}: {expected}"
            );
        }
    }

    #[test]
    fn cidr_accepts_blocks_and_bare_addresses() {
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert!(net.contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        let host = parse_cidr(" 127.0.0.1 ").unwrap();
        assert_eq!(host.prefix_len(), 32);
        let v6 = parse_cidr("::1").unwrap();
        assert_eq!(v6.prefix_len(), 128);
        assert!(matches!(
            parse_cidr("10.0.0.0/33"),
            Err(Error::InvalidCidr { .. })
        ));
        assert!(parse_cidr("nonsense").is_err());
    }

    #[test]
    fn cidr_list_skips_empty_items_but_not_an_empty_list() {
        let list = parse_cidr_list("10.0.0.0/8, ,192.168.0.0/16,").unwrap();
        assert_eq!(list.len(), 2);
        assert!(parse_cidr_list("10.0.0.0/8,bad").is_err());
        for empty in ["", ",", " , ,", "\t"] {
            assert!(
                matches!(parse_cidr_list(empty), Err(Error::InvalidEnv { .. })),
                "{empty:?} must not disable the allowlist"
            );
        }
    }

    #[test]
    fn max_profile_seconds_is_range_checked() {
        assert_eq!(parse_max_profile_seconds("60").unwrap(), 60);
        assert_eq!(parse_max_profile_seconds("3600").unwrap(), 3600);
        for bad in [
            "0",
            "-5",
            "1.5",
            "3601",
            "18446744073709551615",
            "99999999999999999999999",
            "",
        ] {
            assert!(parse_max_profile_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_trimmed_validated_and_compared_exactly() {
        let token = BearerToken::new("s3cret-token\n").unwrap();
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-toke"));
        assert!(!token.matches(b"s3cret-token2"));
        assert!(!token.matches(b""));
        assert!(BearerToken::new("  ").is_err());
        assert!(BearerToken::new("two words").is_err());
        assert!(BearerToken::new("t\u{7}ab").is_err());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn listen_addr_parses_v4_and_v6() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen("[::1]:6060").unwrap().ip().is_loopback());
        assert!(matches!(
            parse_listen("localhost:6060"),
            Err(Error::InvalidListenAddr { .. })
        ));
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const SETTINGS: &[&str] = &[
            "127.0.0.1",
            ":",
            "6060",
            "[::1]",
            "/",
            "32",
            "10.0.0.0",
            ",",
            " ",
            "0.0.0.0",
            "300",
            "18446744073709551615",
            "-",
            "\n",
            "::ffff:",
            "%eth0",
        ];

        proptest! {
            #[test]
            fn settings_never_panic(value in input_of(SETTINGS)) {
                bounded("listen", &value, || { let _ = parse_listen(&value); });
                bounded("allowlist", &value, || {
                    if let Ok(nets) = parse_cidr_list(&value) {
                        assert!(!nets.is_empty(), "an allowlist that allows everyone");
                    }
                });
                bounded("max profile seconds", &value, || {
                    if let Ok(seconds) = parse_max_profile_seconds(&value) {
                        assert!((1..=MAX_PROFILE_SECONDS_LIMIT).contains(&seconds));
                    }
                });
                bounded("token", &value, || { let _ = BearerToken::new(&value); });
            }
        }
    }
}
