use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::capabilities::{Capabilities, Settings, Threads, Wiring};
use crate::config::{self, Config};
use crate::cpu::CpuProfiler;
use crate::heap::HeapProfiler;
use crate::server::{self, AppState, ServerHandle};
use crate::Error;

/// A running agent: the debug server thread and handles to the
/// capabilities it serves.
///
/// Dropping the agent asks the server to stop without waiting;
/// [`Agent::shutdown`] waits until it has stopped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stethoscope::Error> {
/// let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
/// assert!(agent.local_addr().ip().is_loopback());
/// agent.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Agent {
    server: ServerHandle,
    caps: Capabilities,
    /// Stop the agent's threads (watchdog, USE sampling) when it goes away.
    _threads: Threads,
}

impl Agent {
    /// A builder with the defaults of [`crate::config`].
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// The address the debug server is bound to (the real port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The process-wide CPU profiler this agent serves.
    pub fn cpu(&self) -> &CpuProfiler {
        &self.caps.cpu
    }

    /// This agent's heap profiler and snapshots.
    pub fn heap(&self) -> &HeapProfiler {
        &self.caps.heap
    }

    /// Stops the debug server and waits for its thread to finish. Profiles
    /// in progress are cancelled. With push on, the open segment and the
    /// queue are pushed first ([`Pusher::finish`](crate::push::Pusher::finish)).
    pub async fn shutdown(self) {
        #[cfg(feature = "push")]
        if let Some(push) = &self.caps.push {
            push.finish().await;
        }
        self.server.stop().await;
    }
}

cfg_feature! { "red",
    impl Agent {
        /// A tower layer recording RED metrics (rate, errors, duration per
        /// route template) of the service it wraps, served at `/debug/red`
        /// and as `http_server_request_duration_seconds` in `/metrics`. Add
        /// it with axum's `Router::layer`; every layer of one agent records
        /// into the same [`RedMetrics`](crate::red::RedMetrics).
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), stethoscope::Error> {
        /// let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
        /// let app: axum::Router = axum::Router::new()
        ///     .route("/items/{id}", axum::routing::get(|| async { "item" }))
        ///     .layer(agent.red_layer());
        /// # let _ = app;
        /// # agent.shutdown().await;
        /// # Ok(())
        /// # }
        /// ```
        pub fn red_layer(&self) -> crate::red::RedLayer {
            self.caps.red.layer()
        }

        /// The RED recorder behind [`red_layer`](Self::red_layer).
        pub fn red(&self) -> &crate::red::RedMetrics {
            &self.caps.red
        }
    }
}

cfg_feature! { "resources",
    impl Agent {
        /// The USE readings this agent serves at `/debug/use`.
        pub fn resources(&self) -> &crate::resources::ResourceMonitor {
            &self.caps.resources
        }

        /// Adds a service-owned resource (a connection pool, …) to
        /// `/debug/use` and `/metrics`; the same as
        /// [`AgentBuilder::resource`] after start.
        ///
        /// # Errors
        /// [`Error::InvalidSetting`] if the name is invalid or taken.
        pub fn register_resource(
            &self,
            resource: impl crate::resources::Resource,
        ) -> Result<(), Error> {
            self.caps.resources.register(resource)
        }
    }
}

cfg_feature! { "metrics",
    impl Agent {
        /// The collectors behind `/metrics`, to render the exposition from Rust.
        pub fn metrics(&self) -> &crate::metrics::MetricsHandle {
            &self.caps.metrics
        }
    }
}

cfg_feature! { "runtime",
    impl Agent {
        /// Executor lag, runtime health and stalls of the runtime the agent
        /// watches (see [`crate::runtime`]).
        pub fn runtime(&self) -> &crate::runtime::RuntimeHealth {
            &self.caps.runtime
        }

        /// A [`TaskMonitor`](tokio_metrics::TaskMonitor) named `name`,
        /// created on first use (the same name returns the same monitor).
        /// Instrument the service's tasks with it; their poll, schedule and
        /// idle times and slow-poll ratio appear in `/debug/runtime` and
        /// `/metrics` under that name.
        ///
        /// The type is tokio-metrics' own, not a wrapper: services that
        /// already instrument with tokio-metrics keep their code, and its
        /// `instrument` is what a wrapper would forward to. The cost is that
        /// a tokio-metrics release with a new `TaskMonitor` is a
        /// stethoscope release too.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), stethoscope::Error> {
        /// let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
        /// let monitor = agent.task_monitor("checkout");
        /// monitor.instrument(async { /* handle one checkout */ }).await;
        /// assert_eq!(agent.runtime().task_monitors()[0].instrumented, 1);
        /// # agent.shutdown().await;
        /// # Ok(())
        /// # }
        /// ```
        pub fn task_monitor(&self, name: &str) -> tokio_metrics::TaskMonitor {
            self.caps.runtime.task_monitor(name)
        }
    }
}

cfg_feature! { "push",
    impl Agent {
        /// The pusher, when [`AgentBuilder::push`] (or
        /// [`ENV_PUSH_URL`](crate::push::ENV_PUSH_URL)) turned it on.
        pub fn push(&self) -> Option<&crate::push::Pusher> {
            self.caps.push.as_ref()
        }
    }
}

cfg_feature! { "doctor",
    impl Agent {
        /// The doctor: the one-second history, the latest diagnosis and
        /// what it captured for its findings (`/debug/doctor`,
        /// `/debug/history`).
        pub fn doctor(&self) -> &crate::doctor::Doctor {
            &self.caps.doctor
        }
    }
}

cfg_feature! { "spans",
    impl Agent {
        /// The log filter control given to [`AgentBuilder::log_level`],
        /// behind `/debug/log-level`.
        pub fn log_level(&self) -> Option<&crate::spans::LogLevel> {
            self.caps.log_level.as_ref()
        }

        /// The span timings given to [`AgentBuilder::spans`], behind
        /// `/debug/spans`.
        pub fn spans(&self) -> Option<&crate::spans::SpanTimings> {
            self.caps.spans.as_ref()
        }
    }
}

/// Configures and starts an [`Agent`].
///
/// Setters consume and return the builder and never fail: a value out of
/// range is remembered, and [`start`](AgentBuilder::start) returns the
/// first one as an error naming the setting (or the environment variable).
/// So a chain of setters reads straight through, and nothing runs with a
/// half-applied configuration.
///
/// ```
/// let builder = stethoscope::Agent::builder()
///     .listen("127.0.0.1:6060")
///     .max_profile_seconds(120)
///     .allow("10.0.0.0/8");
/// # let _ = builder;
/// ```
#[derive(Debug, Default)]
#[must_use = "an AgentBuilder does nothing until .start() is called"]
pub struct AgentBuilder {
    config: Config,
    settings: Settings,
    wiring: Wiring,
    /// The first error of a setter, reported by `start()`.
    deferred: Option<Error>,
}

impl AgentBuilder {
    fn defer(mut self, error: Error) -> Self {
        self.deferred.get_or_insert(error);
        self
    }

    /// Address for the debug server, `host:port`; port 0 picks a free port.
    /// Default [`DEFAULT_LISTEN_ADDR`](config::DEFAULT_LISTEN_ADDR).
    /// An unparsable address makes [`start`](Self::start) fail.
    ///
    /// # Security considerations
    /// Anything but a loopback address exposes CPU profiles (function names,
    /// timing) to the network; `start()` refuses it unless a
    /// [`token`](Self::token) is set or [`allow_insecure_bind`](Self::allow_insecure_bind)
    /// is `true`.
    pub fn listen(mut self, addr: &str) -> Self {
        match config::parse_listen(addr) {
            Ok(addr) => {
                self.config.listen = addr;
                self
            }
            Err(error) => self.defer(error),
        }
    }

    /// Like [`listen`](Self::listen) with an already parsed address.
    pub fn listen_addr(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every endpoint; without
    /// it `/health` still answers, with `{"status":"ok"}` only. Surrounding
    /// whitespace is ignored; the rest must be visible ASCII. Compared
    /// without revealing content or length through timing. Default: no token.
    ///
    /// # Security considerations
    /// The token travels in clear text over plain HTTP: use it on a trusted
    /// network segment or behind a TLS-terminating proxy.
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        match config::BearerToken::new(token.as_ref()) {
            Ok(token) => {
                self.config.token = Some(token);
                self
            }
            Err(reason) => self.defer(Error::InvalidSetting {
                setting: "token",
                reason,
            }),
        }
    }

    /// Adds a CIDR block (or single IP) to the allowlist; clients outside
    /// every block get 403. Default: empty, which allows every client that
    /// can reach the address. An entry that is neither a block nor an
    /// address makes [`start`](Self::start) fail with
    /// [`Error::InvalidCidr`].
    ///
    /// # Security considerations
    /// The allowlist checks the TCP peer address; behind a proxy every
    /// request comes from the proxy.
    pub fn allow(mut self, cidr: &str) -> Self {
        match config::parse_cidr(cidr) {
            Ok(net) => {
                self.config.allow.push(net);
                self
            }
            Err(error) => self.defer(error),
        }
    }

    /// Allows binding a non-loopback address without a token. Default `false`.
    ///
    /// # Security considerations
    /// Only for networks where every host that can connect may read
    /// profiles of this process.
    pub fn allow_insecure_bind(mut self, allow: bool) -> Self {
        self.config.allow_insecure_bind = allow;
        self
    }

    /// Longest profile a request may ask for, in seconds, from 1 to
    /// [`MAX_PROFILE_SECONDS_LIMIT`](config::MAX_PROFILE_SECONDS_LIMIT)
    /// (one hour); other values make [`start`](Self::start) fail. Default
    /// [`DEFAULT_MAX_PROFILE_SECONDS`](config::DEFAULT_MAX_PROFILE_SECONDS).
    pub fn max_profile_seconds(mut self, seconds: u64) -> Self {
        if !(1..=config::MAX_PROFILE_SECONDS_LIMIT).contains(&seconds) {
            return self.defer(Error::InvalidSetting {
                setting: "max_profile_seconds",
                reason: "must be from 1 to 3600 seconds",
            });
        }
        self.config.max_profile_seconds = seconds;
        self
    }

    /// Turns continuous profiling on at `hz` (19 is a good rate: about
    /// 0.07 % of one core with two busy threads): the CPU sampler runs all
    /// the time into a
    /// ring of 10-second segments covering the last 15 minutes, so
    /// `GET /debug/pprof/profile?since=-5m` answers at once with what the
    /// process did, and the doctor pins the segments around each finding's
    /// onset. On-demand profiles at other rates still run (the ring takes
    /// their samples, weighted by period). A rate outside 1–1000 makes
    /// [`start`](Self::start) fail. Off by default;
    /// [`ENV_CONTINUOUS_HZ`](config::ENV_CONTINUOUS_HZ) sets it too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stethoscope::Error> {
    /// let agent = stethoscope::Agent::builder()
    ///     .listen("127.0.0.1:0")
    ///     .continuous_profiling(19)
    ///     .start()?;
    /// assert_eq!(agent.cpu().status().continuous_hz, Some(19));
    /// # agent.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn continuous_profiling(self, hz: u32) -> Self {
        let settings = match self.settings.continuous.clone() {
            Some(settings) => crate::cpu::ContinuousSettings { hz, ..settings },
            None => crate::cpu::ContinuousSettings::new(hz),
        };
        self.continuous(settings)
    }

    /// Turns continuous profiling on with every setting chosen: rate,
    /// segment length, history kept, caps
    /// ([`ContinuousSettings`](crate::cpu::ContinuousSettings)).
    pub fn continuous(mut self, settings: crate::cpu::ContinuousSettings) -> Self {
        if !(1..=crate::cpu::MAX_PROFILE_HZ).contains(&settings.hz) {
            return self.defer(Error::InvalidSetting {
                setting: "continuous_profiling",
                reason: "the rate must be from 1 to 1000 Hz",
            });
        }
        if settings.segment > settings.keep {
            return self.defer(Error::InvalidSetting {
                setting: "continuous_profiling",
                reason: "a segment must not be longer than the history kept",
            });
        }
        self.settings.continuous = Some(settings);
        self
    }

    /// Pushes every segment of the continuous profiler to a Grafana
    /// Pyroscope server as it closes (docs/fleet.md, "Push to Pyroscope"):
    /// for services no scraper can reach. Turns continuous profiling on at
    /// [`DEFAULT_PUSH_CONTINUOUS_HZ`](crate::push::DEFAULT_PUSH_CONTINUOUS_HZ)
    /// when it is not configured. An invalid setting makes
    /// [`start`](Self::start) fail naming it. Default: off;
    /// [`ENV_PUSH_URL`](crate::push::ENV_PUSH_URL) and the other
    /// `STETHOSCOPE_PUSH_*` variables set it too.
    ///
    /// # Security considerations
    /// Profiles name the service's functions and carry its labels (routes,
    /// task names): push them over `https://` (feature `push-tls`) beyond a
    /// trusted network. Credentials never appear in logs, `/health`,
    /// `/debug` or `Debug` output.
    #[cfg(feature = "push")]
    #[cfg_attr(docsrs, doc(cfg(feature = "push")))]
    pub fn push(mut self, settings: crate::push::PushSettings) -> Self {
        if let Err(error) = settings.validate() {
            return self.defer(error);
        }
        self.settings.push = Some(settings);
        self
    }

    /// Most connections the debug server keeps open, within
    /// [`MAX_CONNECTIONS_RANGE`](config::MAX_CONNECTIONS_RANGE). When all
    /// are taken, a new connection replaces the oldest idle or slow one
    /// (docs/security.md). Default
    /// [`DEFAULT_MAX_CONNECTIONS`](config::DEFAULT_MAX_CONNECTIONS).
    pub fn max_connections(mut self, connections: usize) -> Self {
        let (low, high) = config::MAX_CONNECTIONS_RANGE;
        if !(low..=high).contains(&connections) {
            return self.defer(Error::InvalidSetting {
                setting: "max_connections",
                reason: "must be from 2 to 4096",
            });
        }
        self.config.max_connections = connections;
        self
    }

    /// Most CPU profiles served at once; more get 429 with `Retry-After`.
    /// At least 1 and below [`max_connections`](Self::max_connections)
    /// (checked at start), so that `/health` and quick requests always find
    /// a connection while profiles run. Default
    /// [`DEFAULT_MAX_CONCURRENT_PROFILES`](config::DEFAULT_MAX_CONCURRENT_PROFILES).
    pub fn max_concurrent_profiles(mut self, profiles: usize) -> Self {
        if profiles == 0 {
            return self.defer(Error::InvalidSetting {
                setting: "max_concurrent_profiles",
                reason: "must be at least 1",
            });
        }
        self.config.max_concurrent_profiles = profiles;
        self
    }

    /// Heap snapshots kept before the oldest is evicted, from 1 to
    /// [`MAX_HEAP_SNAPSHOTS`](crate::heap::MAX_HEAP_SNAPSHOTS).
    /// Default [`DEFAULT_HEAP_SNAPSHOTS`](crate::heap::DEFAULT_HEAP_SNAPSHOTS).
    pub fn heap_snapshots(mut self, snapshots: usize) -> Self {
        if !(1..=crate::heap::MAX_HEAP_SNAPSHOTS).contains(&snapshots) {
            return self.defer(Error::InvalidSetting {
                setting: "heap_snapshots",
                reason: "must be from 1 to 1024",
            });
        }
        self.settings.heap_snapshots = snapshots;
        self
    }

    /// Whether the agent replaces jemalloc's unwinder for sampled
    /// allocations with its own (Linux x86_64 and aarch64; default on). jemalloc's,
    /// libgcc's `_Unwind_Backtrace`, interprets every frame's unwind
    /// information afresh, tens of microseconds per sampled allocation in a
    /// deep async stack; the agent's walks the same information through a
    /// per-address cache and defers to jemalloc's whenever it cannot be
    /// certain (docs/overhead.md, "Heap profiling"). Turn it off to rule it
    /// out when investigating a heap profile.
    pub fn fast_heap_backtraces(mut self, enabled: bool) -> Self {
        self.settings.fast_heap_backtraces = enabled;
        self
    }

    /// Whether the agent installs jemalloc's sample hooks (Linux x86_64 and
    /// aarch64; default on): they record the labels of the code that made
    /// each sampled allocation (so heap profiles and diffs rank routes with
    /// `by=route`) and feed allocation profiles
    /// (`/debug/pprof/allocs?seconds=N`). They run only for sampled
    /// allocations and cost nothing measurable beside the sampling itself
    /// (docs/overhead.md, "Heap profiling"); without them heap samples are
    /// unlabelled and allocation profiles are refused.
    pub fn heap_sample_hooks(mut self, enabled: bool) -> Self {
        self.settings.heap_sample_hooks = enabled;
        self
    }

    /// Reports a service-owned resource (a connection pool, a worker pool)
    /// next to the built-in ones in `/debug/use` and `/metrics`. An
    /// invalid or duplicate name makes [`start`](Self::start) fail.
    #[cfg(feature = "resources")]
    #[cfg_attr(docsrs, doc(cfg(feature = "resources")))]
    pub fn resource(mut self, resource: impl crate::resources::Resource) -> Self {
        self.wiring.resources.push(Arc::new(resource));
        self
    }

    /// Serves the host's log filter at `GET/PUT /debug/log-level`, so an
    /// operator can raise one module to `debug` for ten minutes without a
    /// restart. Create both with [`log_filter`](crate::spans::log_filter)
    /// and install the filter in the service's subscriber before starting
    /// the agent. Default: none (`GET` says how to wire it, `PUT` answers
    /// 501).
    ///
    /// ```
    /// use tracing_subscriber::layer::SubscriberExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (filter, log_level) = stethoscope::spans::log_filter("info")?;
    /// let subscriber = tracing_subscriber::registry().with(filter);
    /// # let _guard = tracing::subscriber::set_default(subscriber);
    /// # /*
    /// tracing::subscriber::set_global_default(subscriber)?;
    /// # */
    /// let agent = stethoscope::Agent::builder()
    ///     .listen("127.0.0.1:0")
    ///     .log_level(log_level)
    ///     .start()?;
    /// # agent.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Security considerations
    /// Anyone who can reach the debug server can make the service log more
    /// (debug logs may contain request data, and cost CPU and disk); every
    /// change is logged with the client's address. Protect the server with
    /// a [`token`](Self::token) beyond loopback.
    #[cfg(feature = "spans")]
    #[cfg_attr(docsrs, doc(cfg(feature = "spans")))]
    pub fn log_level(mut self, level: crate::spans::LogLevel) -> Self {
        self.wiring.log_level = Some(level);
        self
    }

    /// Serves span timings — per span name histograms of total and busy
    /// time, errors, and the slowest recent spans with their fields — at
    /// `/debug/spans` and as `stethoscope_span_*` in `/metrics`. Create
    /// them with [`SpanTimings::new`](crate::spans::SpanTimings::new) and
    /// add [`layer`](crate::spans::SpanTimings::layer) to the service's
    /// subscriber before starting the agent. Default: none (`/debug/spans`
    /// says how to wire them).
    ///
    /// ```
    /// use tracing_subscriber::layer::SubscriberExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let timings = stethoscope::spans::SpanTimings::new();
    /// let subscriber = tracing_subscriber::registry().with(timings.layer());
    /// # let _guard = tracing::subscriber::set_default(subscriber);
    /// # /*
    /// tracing::subscriber::set_global_default(subscriber)?;
    /// # */
    /// let agent = stethoscope::Agent::builder()
    ///     .listen("127.0.0.1:0")
    ///     .spans(timings)
    ///     .start()?;
    /// # agent.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Security considerations
    /// The slow-span log shows span fields as recorded (a query's
    /// parameters, a user id): what the service puts in spans is readable
    /// by whoever can reach the debug server.
    #[cfg(feature = "spans")]
    #[cfg_attr(docsrs, doc(cfg(feature = "spans")))]
    pub fn spans(mut self, timings: crate::spans::SpanTimings) -> Self {
        self.wiring.spans = Some(timings);
        self
    }

    /// The tokio runtime to watch for the runtime health features: executor
    /// lag (`/debug/lag`), runtime health and stalls (`/debug/runtime`), the
    /// `executor` USE row and the `stethoscope_tokio_*` metrics. Default:
    /// the runtime `start()` is called in, if any; without one these
    /// report "unavailable".
    pub fn watch_runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.wiring.runtime = Some(handle);
        self
    }

    /// How often the executor-lag probe runs and the watchdog looks at the
    /// runtime's workers, 1 ms to 1 s. Default
    /// [`DEFAULT_LAG_RESOLUTION`](crate::runtime::DEFAULT_LAG_RESOLUTION) (10 ms),
    /// which costs about 0.1 % of a core on a small VM (docs/overhead.md).
    /// The watchdog looks and probes less often while workers are parked
    /// (docs/runtime.md).
    #[cfg(feature = "runtime")]
    #[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
    pub fn lag_resolution(mut self, resolution: std::time::Duration) -> Self {
        let (low, high) = crate::runtime::LAG_RESOLUTION_RANGE;
        if resolution < low || resolution > high {
            return self.defer(Error::InvalidSetting {
                setting: "lag_resolution",
                reason: "must be between 1 ms and 1 s",
            });
        }
        self.settings.lag_resolution = resolution;
        self
    }

    /// A worker inside one poll for longer than this is a stall: its stack
    /// is captured and kept in `/debug/runtime`. At least twice the lag
    /// resolution (checked at start) and at most
    /// [`MAX_STALL_THRESHOLD`](crate::runtime::MAX_STALL_THRESHOLD). Default
    /// [`DEFAULT_STALL_THRESHOLD`](crate::runtime::DEFAULT_STALL_THRESHOLD) (100 ms).
    #[cfg(feature = "runtime")]
    #[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
    pub fn stall_threshold(mut self, threshold: std::time::Duration) -> Self {
        if threshold > crate::runtime::MAX_STALL_THRESHOLD {
            return self.defer(Error::InvalidSetting {
                setting: "stall_threshold",
                reason: "must be at most 60 s",
            });
        }
        self.settings.stall_threshold = threshold;
        self
    }

    /// Adds a performance budget the doctor checks (a route's p95/p99
    /// latency and error ratio, or a CPU or memory ceiling), next to the
    /// defaults (`*: p95<500ms, errors<1%; cpu<70%; memory<80%`); see
    /// docs/doctor.md. An invalid budget makes [`start`](Self::start) fail
    /// naming its bad part.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stethoscope::doctor::Budget;
    ///
    /// let builder = stethoscope::Agent::builder()
    ///     .budget(Budget::route("GET /items/{id}").p95(Duration::from_millis(300)))
    ///     .budget(Budget::cpu(0.6));
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "doctor")]
    #[cfg_attr(docsrs, doc(cfg(feature = "doctor")))]
    pub fn budget(mut self, budget: impl Into<crate::doctor::Budget>) -> Self {
        match self.settings.doctor.config.budgets.add(budget) {
            Ok(()) => self,
            Err(error) => self.defer(error),
        }
    }

    /// Replaces the doctor's settings: rule thresholds and windows
    /// ([`DoctorConfig`](crate::doctor::DoctorConfig), budgets included),
    /// the auto-capture policy and the history length (within
    /// [`HISTORY_ROWS_RANGE`](crate::doctor::HISTORY_ROWS_RANGE) rows, one
    /// a second; others make [`start`](Self::start) fail). Default:
    /// [`DoctorSettings::default`](crate::doctor::DoctorSettings).
    #[cfg(feature = "doctor")]
    #[cfg_attr(docsrs, doc(cfg(feature = "doctor")))]
    pub fn doctor(mut self, settings: crate::doctor::DoctorSettings) -> Self {
        let (low, high) = crate::doctor::HISTORY_ROWS_RANGE;
        if !(low..=high).contains(&settings.history_rows) {
            return self.defer(Error::InvalidSetting {
                setting: "doctor.history_rows",
                reason: "must be from 60 to 3600 rows (one a second)",
            });
        }
        self.settings.doctor = settings;
        self
    }

    /// Applies the `STETHOSCOPE_*` environment variables that are set:
    /// [`ENV_ADDR`](config::ENV_ADDR), [`ENV_TOKEN`](config::ENV_TOKEN),
    /// [`ENV_ALLOW`](config::ENV_ALLOW) (comma-separated),
    /// [`ENV_MAX_PROFILE_SECONDS`](config::ENV_MAX_PROFILE_SECONDS),
    /// [`ENV_CONTINUOUS_HZ`](config::ENV_CONTINUOUS_HZ), and the doctor's
    /// [`ENV_BUDGETS`](config::ENV_BUDGETS),
    /// [`ENV_HISTORY`](config::ENV_HISTORY) and
    /// [`ENV_AUTO_CAPTURE`](config::ENV_AUTO_CAPTURE),
    /// [`ENV_AUTO_CAPTURE_TASK_DUMPS`](config::ENV_AUTO_CAPTURE_TASK_DUMPS),
    /// [`ENV_CONTINUOUS_SEGMENT`](config::ENV_CONTINUOUS_SEGMENT), and
    /// (feature `push`) `STETHOSCOPE_PUSH_URL` with the other
    /// `STETHOSCOPE_PUSH_*` (docs/fleet.md). They override earlier setters;
    /// later setters override them. Invalid values make
    /// [`start`](Self::start) fail and name the variable.
    pub fn with_default_env(self) -> Self {
        self.with_env(|name| std::env::var(name).ok())
    }

    fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(error) = self.config.apply_env(&var) {
            self = self.defer(error);
        }
        match self.settings.apply_env(&var) {
            Some(error) => self.defer(error),
            None => self,
        }
    }

    /// Binds the debug server and starts its thread.
    ///
    /// # Errors
    /// The first invalid setting, [`Error::InsecureBind`] for a non-loopback
    /// address without a token, [`Error::Bind`] if the address is taken.
    #[cfg_attr(not(feature = "push"), allow(unused_mut))]
    pub fn start(mut self) -> Result<Agent, Error> {
        if let Some(error) = self.deferred {
            return Err(error);
        }
        #[cfg(feature = "push")]
        crate::push::enable_ring(&mut self.settings.continuous, self.settings.push.as_ref());
        let config = self.config;
        if !config.listen.ip().is_loopback()
            && config.token.is_none()
            && !config.allow_insecure_bind
        {
            return Err(Error::InsecureBind {
                addr: config.listen,
            });
        }
        #[cfg(feature = "runtime")]
        if self.settings.stall_threshold < 2 * self.settings.lag_resolution {
            return Err(Error::InvalidSetting {
                setting: "stall_threshold",
                reason: "must be at least twice the lag resolution",
            });
        }
        if config.max_concurrent_profiles >= config.max_connections {
            return Err(Error::InvalidSetting {
                setting: "max_concurrent_profiles",
                reason: "must be below max_connections, so that /health and quick requests \
                         always find a connection while profiles run",
            });
        }
        let host_runtime =
            self.wiring.runtime.is_some() || tokio::runtime::Handle::try_current().is_ok();
        let (caps, threads) = Capabilities::start(&self.settings, self.wiring)?;
        let state = AppState {
            connections: Arc::new(server::ConnectionTable::new(config.max_connections)),
            profiles: server::ProfileSlots::new(config.max_concurrent_profiles),
            config: Arc::new(config),
            caps: caps.clone(),
            started: Instant::now(),
            host_runtime,
        };
        let server = server::spawn(state)?;
        Ok(Agent {
            server,
            caps,
            _threads: threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env;

    #[test]
    fn non_loopback_without_token_is_refused() {
        let result = Agent::builder().listen("0.0.0.0:0").start();
        assert!(matches!(result, Err(Error::InsecureBind { .. })));
        let message = result.unwrap_err().to_string();
        assert!(message.contains("token") && message.contains("allow_insecure_bind"));
    }

    #[test]
    fn env_overrides_earlier_setters_and_fails_start() {
        let builder = Agent::builder()
            .listen("127.0.0.1:1")
            .with_env(env(&[("STETHOSCOPE_ADDR", "127.0.0.1:7070")]));
        assert_eq!(builder.config.listen.port(), 7070);
        assert_start_refuses("STETHOSCOPE_MAX_PROFILE_SECONDS", "0");
    }

    /// `start()` fails on `var=value`, naming the variable.
    fn assert_start_refuses(var: &'static str, value: &str) {
        let started = Agent::builder().with_env(env(&[(var, value)])).start();
        match started {
            Err(Error::InvalidEnv { var: named, .. }) => assert_eq!(named, var),
            Err(other) => panic!("{var}={value}: {other}"),
            Ok(_) => panic!("{var}={value} started"),
        }
    }

    #[cfg(feature = "doctor")]
    #[test]
    fn doctor_capture_switches_come_from_the_env() {
        let default = Agent::builder();
        assert!(default.settings.doctor.capture.enabled);
        assert!(
            !default.settings.doctor.capture.task_dumps,
            "task dumps are opt-in"
        );
        let set = Agent::builder().with_env(env(&[
            ("STETHOSCOPE_AUTO_CAPTURE", "off"),
            ("STETHOSCOPE_AUTO_CAPTURE_TASK_DUMPS", "on"),
        ]));
        assert!(!set.settings.doctor.capture.enabled);
        assert!(set.settings.doctor.capture.task_dumps);
        assert_start_refuses("STETHOSCOPE_AUTO_CAPTURE_TASK_DUMPS", "sometimes");
    }

    #[test]
    fn invalid_setters_fail_at_start() {
        assert!(matches!(
            Agent::builder().listen("nope").start(),
            Err(Error::InvalidListenAddr { .. })
        ));
        assert!(matches!(
            Agent::builder().token("  ").start(),
            Err(Error::InvalidSetting {
                setting: "token",
                ..
            })
        ));
        assert!(matches!(
            Agent::builder().max_profile_seconds(0).start(),
            Err(Error::InvalidSetting { .. })
        ));
        assert!(matches!(
            Agent::builder().allow("300.0.0.1").start(),
            Err(Error::InvalidCidr { .. })
        ));
    }

    #[test]
    fn a_taken_port_is_a_bind_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let result = Agent::builder().listen_addr(addr).start();
        assert!(matches!(result, Err(Error::Bind { .. })));
    }

    #[tokio::test]
    async fn starts_on_an_ephemeral_port_and_shuts_down() {
        let agent = Agent::builder().listen("127.0.0.1:0").start().unwrap();
        let addr = agent.local_addr();
        assert_ne!(addr.port(), 0);
        assert!(std::net::TcpStream::connect(addr).is_ok());
        agent.shutdown().await;
        // The listener is closed once shutdown returns.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
