//! Every capability of one agent, in one place: what the builder hands
//! over ([`Settings`], [`Wiring`]), the handles the agent and its debug
//! server share ([`Capabilities`]), and the threads they run ([`Threads`]).
//! Each capability starts in a function of its own; this module sits above
//! the capability modules and below the server and the agent.

use std::sync::Arc;
#[cfg(any(test, feature = "runtime"))]
use std::time::Duration;

use crate::cpu::{ContinuousSettings, CpuProfiler};
use crate::heap::HeapProfiler;
use crate::periodic::Alarm;
use crate::profile::shelf::ProfileShelf;
use crate::Error;

/// The capabilities' settings, as the builder resolved them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Heap snapshots kept before the oldest is evicted.
    pub(crate) heap_snapshots: usize,
    /// Whether the agent's own unwinder replaces jemalloc's.
    pub(crate) fast_heap_backtraces: bool,
    pub(crate) heap_sample_hooks: bool,
    /// Continuous profiling, when on.
    pub(crate) continuous: Option<ContinuousSettings>,
    /// How often the lag probe and the watchdog look.
    #[cfg(feature = "runtime")]
    pub(crate) lag_resolution: Duration,
    /// A poll longer than this is a stall.
    #[cfg(feature = "runtime")]
    pub(crate) stall_threshold: Duration,
    #[cfg(feature = "doctor")]
    pub(crate) doctor: crate::doctor::DoctorSettings,
    /// Pushing segments to a Pyroscope server, when on.
    #[cfg(feature = "push")]
    pub(crate) push: Option<crate::push::PushSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heap_snapshots: crate::heap::DEFAULT_HEAP_SNAPSHOTS,
            fast_heap_backtraces: true,
            heap_sample_hooks: true,
            continuous: None,
            #[cfg(feature = "runtime")]
            lag_resolution: crate::runtime::DEFAULT_LAG_RESOLUTION,
            #[cfg(feature = "runtime")]
            stall_threshold: crate::runtime::DEFAULT_STALL_THRESHOLD,
            #[cfg(feature = "doctor")]
            doctor: crate::doctor::DoctorSettings::default(),
            #[cfg(feature = "push")]
            push: None,
        }
    }
}

impl Settings {
    /// Applies the capabilities' environment variables `var` finds; the
    /// first invalid one is returned, naming the variable.
    pub(crate) fn apply_env(&mut self, var: &impl Fn(&str) -> Option<String>) -> Option<Error> {
        use crate::config::{ENV_CONTINUOUS_HZ, ENV_CONTINUOUS_SEGMENT};
        let mut first_error = None;
        let mut fail = |error: Error| {
            first_error.get_or_insert(error);
        };
        if let Some(rate) = var(ENV_CONTINUOUS_HZ) {
            match crate::cpu::parse_continuous_hz(&rate) {
                Some(None) => self.continuous = None,
                Some(Some(hz)) => {
                    let settings = self
                        .continuous
                        .take()
                        .unwrap_or_else(|| ContinuousSettings::new(hz));
                    self.continuous = Some(ContinuousSettings { hz, ..settings });
                }
                None => fail(Error::InvalidEnv {
                    var: ENV_CONTINUOUS_HZ,
                    value: rate,
                    expected: "a rate from 1 to 1000 (Hz), e.g. 19, or off",
                }),
            }
        }
        #[cfg(feature = "push")]
        if let Some(error) = crate::push::apply_env(&mut self.push, var) {
            fail(error);
        }
        if let Some(length) = var(ENV_CONTINUOUS_SEGMENT) {
            match crate::cpu::parse_continuous_segment(&length) {
                Some(segment) => match self.continuous.take() {
                    Some(settings) => self.continuous = Some(settings.segment(segment)),
                    #[cfg(feature = "push")]
                    None if self.push.is_some() => {
                        let hz = crate::push::DEFAULT_PUSH_CONTINUOUS_HZ;
                        self.continuous = Some(ContinuousSettings::new(hz).segment(segment));
                    }
                    None => fail(Error::InvalidEnv {
                        var: ENV_CONTINUOUS_SEGMENT,
                        value: length,
                        expected: "continuous profiling on (STETHOSCOPE_CONTINUOUS_HZ) for a segment length",
                    }),
                },
                None => fail(Error::InvalidEnv {
                    var: ENV_CONTINUOUS_SEGMENT,
                    value: length,
                    expected: "a duration from 1s to 10m, e.g. 10s",
                }),
            }
        }
        #[cfg(feature = "doctor")]
        {
            if let Some(budgets) = var(crate::config::ENV_BUDGETS) {
                // Names the bad part of the string (Error::InvalidBudget).
                if let Err(error) = self.doctor.config.budgets.apply(&budgets) {
                    fail(error);
                }
            }
            if let Some(length) = var(crate::config::ENV_HISTORY) {
                match crate::doctor::parse_history_length(&length) {
                    Ok(rows) => self.doctor.history_rows = rows,
                    Err(error) => fail(error),
                }
            }
            let capture = &mut self.doctor.capture;
            for (name, setting) in [
                (crate::config::ENV_AUTO_CAPTURE, &mut capture.enabled),
                (
                    crate::config::ENV_AUTO_CAPTURE_TASK_DUMPS,
                    &mut capture.task_dumps,
                ),
            ] {
                let Some(switch) = var(name) else { continue };
                match crate::config::parse_switch(&switch) {
                    Some(on) => *setting = on,
                    None => fail(Error::InvalidEnv {
                        var: name,
                        value: switch,
                        expected: "on or off",
                    }),
                }
            }
        }
        first_error
    }
}

/// What the host hands over for the capabilities to use.
#[derive(Debug, Default)]
pub(crate) struct Wiring {
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    #[cfg(feature = "resources")]
    pub(crate) resources: Vec<Arc<dyn crate::resources::Resource>>,
    #[cfg(feature = "spans")]
    pub(crate) log_level: Option<crate::spans::LogLevel>,
    #[cfg(feature = "spans")]
    pub(crate) spans: Option<crate::spans::SpanTimings>,
}

/// Handles to every capability of one agent, shared by the agent and its
/// debug server.
#[derive(Debug, Clone)]
pub(crate) struct Capabilities {
    pub(crate) cpu: CpuProfiler,
    pub(crate) heap: HeapProfiler,
    /// Profiles taken through `POST /debug/profiles` (the dashboard's).
    pub(crate) kept: Arc<ProfileShelf>,
    #[cfg(feature = "resources")]
    pub(crate) resources: crate::resources::ResourceMonitor,
    #[cfg(feature = "red")]
    pub(crate) red: crate::red::RedMetrics,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::MetricsHandle,
    #[cfg(feature = "runtime")]
    pub(crate) runtime: crate::runtime::RuntimeHealth,
    #[cfg(feature = "spans")]
    pub(crate) spans: Option<crate::spans::SpanTimings>,
    #[cfg(feature = "spans")]
    pub(crate) log_level: Option<crate::spans::LogLevel>,
    #[cfg(feature = "doctor")]
    pub(crate) doctor: crate::doctor::Doctor,
    #[cfg(feature = "push")]
    pub(crate) push: Option<crate::push::Pusher>,
}

/// The agent's own threads, stopped when dropped.
#[derive(Debug, Default)]
pub(crate) struct Threads {
    #[cfg(feature = "runtime")]
    _watchdog: Option<crate::runtime::WatchdogGuard>,
    #[cfg(feature = "resources")]
    _use_sampler: Option<crate::periodic::StopOnDrop>,
    #[cfg(feature = "doctor")]
    _doctor: Option<crate::periodic::StopOnDrop>,
    _continuous: Option<ContinuousGuard>,
    #[cfg(feature = "push")]
    _push: Option<crate::push::PushGuard>,
}

/// Turns the process's continuous profiling off when the agent that
/// turned it on goes.
#[derive(Debug)]
struct ContinuousGuard(CpuProfiler);

impl Drop for ContinuousGuard {
    fn drop(&mut self) {
        self.0.stop_continuous();
    }
}

impl Capabilities {
    /// Starts every capability; the threads they start stop when the
    /// returned [`Threads`] drop.
    pub(crate) fn start(settings: &Settings, wiring: Wiring) -> Result<(Self, Threads), Error> {
        let mut threads = Threads::default();
        #[cfg_attr(
            not(any(feature = "runtime", feature = "resources")),
            allow(unused_variables)
        )]
        let runtime = wiring
            .runtime
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        // Work arriving through the RED layer or a span wakes a dormant
        // watchdog.
        #[cfg_attr(
            not(any(feature = "runtime", feature = "red", feature = "spans")),
            allow(unused_variables)
        )]
        let alarm = Arc::new(Alarm::default());
        #[allow(unused_mut)] // set below by the features built
        let mut caps = Capabilities {
            cpu: start_cpu(settings, &mut threads)?,
            heap: start_heap(settings),
            kept: Arc::default(),
            #[cfg(feature = "resources")]
            resources: start_resources(runtime.clone(), wiring.resources, &mut threads)?,
            #[cfg(feature = "red")]
            red: start_red(&alarm),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::MetricsHandle::default(),
            #[cfg(feature = "runtime")]
            runtime: start_runtime(settings, runtime, &alarm, &mut threads)?,
            #[cfg(feature = "spans")]
            spans: start_spans(wiring.spans, &alarm),
            #[cfg(feature = "spans")]
            log_level: wiring.log_level,
            #[cfg(feature = "doctor")]
            doctor: crate::doctor::Doctor::new(settings.doctor.clone()),
            #[cfg(feature = "push")]
            push: None,
        };
        #[cfg(feature = "push")]
        if let Some(push) = &settings.push {
            let (pusher, guard) = crate::push::start(push, &caps.cpu, &caps.heap)?;
            threads._push = Some(guard);
            caps.push = Some(pusher);
        }
        // Made last, from the others.
        #[cfg(feature = "metrics")]
        {
            caps.metrics = caps.metrics_handle();
        }
        #[cfg(feature = "doctor")]
        {
            threads._doctor = Some(caps.doctor.start(caps.doctor_sources())?);
        }
        Ok((caps, threads))
    }

    /// The collectors of every capability, for `/metrics`.
    #[cfg(feature = "metrics")]
    fn metrics_handle(&self) -> crate::metrics::MetricsHandle {
        use crate::metrics::Collect;
        #[allow(unused_mut)] // the capabilities pushed depend on features
        let mut collectors: Vec<Arc<dyn Collect>> =
            vec![Arc::new(self.cpu.clone()), Arc::new(self.heap.clone())];
        #[cfg(feature = "resources")]
        collectors.push(Arc::new(self.resources.clone()));
        #[cfg(feature = "red")]
        collectors.push(Arc::new(self.red.clone()));
        #[cfg(feature = "runtime")]
        collectors.push(Arc::new(self.runtime.clone()));
        #[cfg(feature = "spans")]
        if let Some(spans) = &self.spans {
            collectors.push(Arc::new(spans.clone()));
        }
        #[cfg(feature = "doctor")]
        collectors.push(Arc::new(self.doctor.clone()));
        #[cfg(feature = "push")]
        collectors.extend(self.push.clone().map(|p| Arc::new(p) as Arc<dyn Collect>));
        crate::metrics::MetricsHandle::new(collectors)
    }

    /// What the doctor reads once a second and captures with.
    #[cfg(feature = "doctor")]
    fn doctor_sources(&self) -> crate::doctor::Sources {
        crate::doctor::Sources {
            cpu: self.cpu.clone(),
            heap: self.heap.clone(),
            kept: Arc::clone(&self.kept),
            #[cfg(feature = "resources")]
            resources: self.resources.clone(),
            #[cfg(feature = "runtime")]
            runtime: self.runtime.clone(),
            #[cfg(feature = "red")]
            red: self.red.clone(),
        }
    }

    /// The capabilities of an agent without a server, host runtime or
    /// threads, for tests of the server.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Capabilities {
        let settings = Settings {
            #[cfg(feature = "runtime")]
            lag_resolution: Duration::from_millis(10),
            #[cfg(feature = "runtime")]
            stall_threshold: Duration::from_millis(100),
            ..Settings::default()
        };
        let (mut caps, threads) =
            Capabilities::start(&settings, Wiring::default()).expect("capabilities start");
        drop(threads);
        caps.heap = HeapProfiler::default();
        caps
    }
}

/// The process's CPU profiler, recording continuously when asked to.
fn start_cpu(settings: &Settings, threads: &mut Threads) -> Result<CpuProfiler, Error> {
    let cpu = CpuProfiler::global();
    if let Some(continuous) = &settings.continuous {
        cpu.start_continuous(continuous.clone())?;
        threads._continuous = Some(ContinuousGuard(cpu.clone()));
    }
    Ok(cpu)
}

/// The heap profiler, with the agent's sample hooks (labels, allocation
/// windows) and its unwinder for sampled allocations when jemalloc
/// profiles and it is wanted.
fn start_heap(settings: &Settings) -> HeapProfiler {
    let mut heap = HeapProfiler::with_capacity(settings.heap_snapshots);
    if settings.heap_sample_hooks {
        heap = heap.with_sample_hooks();
    }
    if !settings.fast_heap_backtraces || heap.check().is_err() {
        return heap;
    }
    match heap.clone().with_fast_backtraces() {
        Ok(fast) => fast,
        Err(error) => {
            tracing::debug!(%error, "heap backtraces: keeping jemalloc's unwinder");
            heap
        }
    }
}

/// Executor lag, runtime health and the stall watchdog of `runtime`.
#[cfg(feature = "runtime")]
fn start_runtime(
    settings: &Settings,
    runtime: Option<tokio::runtime::Handle>,
    alarm: &Arc<Alarm>,
    threads: &mut Threads,
) -> Result<crate::runtime::RuntimeHealth, Error> {
    let (health, watchdog) = crate::runtime::RuntimeHealth::start(
        runtime,
        settings.lag_resolution,
        settings.stall_threshold,
        Arc::clone(alarm),
    )?;
    threads._watchdog = watchdog;
    Ok(health)
}

/// USE readings, sampled on a thread of their own, with the host's
/// resources.
#[cfg(feature = "resources")]
fn start_resources(
    runtime: Option<tokio::runtime::Handle>,
    resources: Vec<Arc<dyn crate::resources::Resource>>,
    threads: &mut Threads,
) -> Result<crate::resources::ResourceMonitor, Error> {
    let monitor = crate::resources::ResourceMonitor::new(runtime);
    for resource in resources {
        monitor.register_arc(resource)?;
    }
    threads._use_sampler =
        Some(monitor.sample_every(crate::resources::DEFAULT_USE_SAMPLE_INTERVAL)?);
    Ok(monitor)
}

/// The RED recorder; every request wakes a dormant watchdog.
#[cfg(feature = "red")]
fn start_red(alarm: &Arc<Alarm>) -> crate::red::RedMetrics {
    let red = crate::red::RedMetrics::new();
    red.ring_on_request(Arc::clone(alarm));
    red
}

/// The host's span timings, if it wired them; every span entered wakes a
/// dormant watchdog.
#[cfg(feature = "spans")]
fn start_spans(
    spans: Option<crate::spans::SpanTimings>,
    alarm: &Arc<Alarm>,
) -> Option<crate::spans::SpanTimings> {
    if let Some(spans) = &spans {
        spans.ring_on_enter(Arc::clone(alarm));
    }
    spans
}
