//! On-demand CPU and wall-clock profiling.
//!
//! A process-wide sampler, started by the first request and stopped when the
//! last one ends: a CPU-clock timer per thread delivers SIGPROF to its thread
//! every `1/hz` of that thread's CPU time (each sample weighted by the periods
//! the kernel could not deliver), and the handler unwinds the stack with
//! [framehop](https://docs.rs/framehop) (DWARF CFI from `.eh_frame`, no libgcc,
//! no locks, no allocation) into a lock-free ring, with the thread's
//! [labels](crate::labels). Requests at the same frequency share the sampler
//! and each gets a profile of exactly its own window; CPU time is rescaled
//! to the process's measured CPU time.
//!
//! In wall-clock mode ([`ProfileMode::Wall`]) a timer thread signals every
//! chosen thread `hz` times per second of real time, whether it runs or
//! waits, and each sample is labelled with the thread's `state`
//! (`running`, `waiting`, `parked`): where a slow handler with little CPU
//! waits. One sampler runs at a time, of either kind.
//!
//! ```no_run
//! # async fn run() -> Result<(), stethoscope::Error> {
//! use std::time::Duration;
//! use stethoscope::cpu::{CpuProfiler, ProfileRequest};
//! use stethoscope::profile::Format;
//!
//! let profile = CpuProfiler::global()
//!     .profile(ProfileRequest::new(Duration::from_secs(10)).hz(199))
//!     .await?;
//! // Symbolization blocks (it may load debug info): keep it off the runtime.
//! let svg = tokio::task::spawn_blocking(move || profile.to_profile().render(Format::Svg))
//!     .await
//!     .expect("render task")?;
//! std::fs::write("cpu.svg", svg).ok();
//! # Ok(())
//! # }
//! ```

mod feed;
pub(crate) mod flight;
#[cfg(feature = "metrics")]
mod metrics;
mod mode;
pub(crate) mod routes;
#[cfg(all(feature = "cpu", native_unwind))]
mod sampler;
#[cfg(not(all(feature = "cpu", native_unwind)))]
#[path = "sampler_unsupported.rs"]
mod sampler;
mod session;
mod window;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::labels::LabelSet;
use crate::profile::{Profile, ProfileMeta, RawStack, ValueType};
use crate::Error;
use session::Controller;

pub use crate::mode::{ProfileMode, WallThreads};
pub use feed::{ClosedSegment, SegmentBatch, SegmentFeed};
pub use flight::{
    ContinuousSettings, Coverage, FlightStatus, PinInfo, DEFAULT_CONTINUOUS_KEEP,
    DEFAULT_CONTINUOUS_SEGMENT, DEFAULT_MAX_PINNED_SEGMENTS, DEFAULT_MAX_STACKS_PER_SEGMENT,
};
pub(crate) use mode::SampleState;

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

/// A continuous-profiling rate as `STETHOSCOPE_CONTINUOUS_HZ` gives it:
/// `Some(Some(hz))` for 1..=[`MAX_PROFILE_HZ`], `Some(None)` for off
/// (`0`, `off`, `false`, `no`), `None` for anything else.
pub(crate) fn parse_continuous_hz(text: &str) -> Option<Option<u32>> {
    match text.trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "false" | "no" => Some(None),
        text => match text.parse::<u32>() {
            Ok(hz) if (1..=MAX_PROFILE_HZ).contains(&hz) => Some(Some(hz)),
            _ => None,
        },
    }
}

/// A continuous-profiling segment length as
/// `STETHOSCOPE_CONTINUOUS_SEGMENT` gives it: 1 s to 10 minutes.
pub(crate) fn parse_continuous_segment(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim())
        .ok()
        .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(600)).contains(d))
}

/// What to profile: a window length and a sampling frequency.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProfileRequest {
    /// Length of the window.
    pub duration: Duration,
    /// Samples per second of CPU time (wall-clock mode: per second of real
    /// time, per thread), 1..=[`MAX_PROFILE_HZ`]. Default
    /// [`DEFAULT_PROFILE_HZ`].
    pub hz: u32,
    /// CPU (default) or wall-clock time.
    pub mode: ProfileMode,
    /// Who asked, for logs.
    pub requester: Option<SocketAddr>,
    /// Whether the profile will be symbolized (default `true`). With
    /// `false` the sampler does not resolve symbols while the window is
    /// open, so a profile meant for server-side symbolization costs no
    /// debug-info memory.
    pub symbolize: bool,
}

impl ProfileRequest {
    /// A request for a window of `duration` at [`DEFAULT_PROFILE_HZ`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let request = stethoscope::cpu::ProfileRequest::new(Duration::from_secs(5)).hz(199);
    /// assert_eq!(request.hz, 199);
    /// ```
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            hz: DEFAULT_PROFILE_HZ,
            mode: ProfileMode::Cpu,
            requester: None,
            symbolize: true,
        }
    }

    /// Sets what is sampled: CPU time (the default) or wall-clock time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stethoscope::cpu::{ProfileMode, ProfileRequest, WallThreads};
    /// let request = ProfileRequest::new(Duration::from_secs(5))
    ///     .mode(ProfileMode::Wall(WallThreads::Workers));
    /// assert_eq!(request.mode.query(), "mode=wall&threads=workers");
    /// ```
    #[must_use]
    pub fn mode(mut self, mode: ProfileMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the sampling frequency (samples per CPU-second).
    #[must_use]
    pub fn hz(mut self, hz: u32) -> Self {
        self.hz = hz;
        self
    }

    /// Records who asked, for the agent's logs.
    #[must_use]
    pub fn requester(mut self, addr: SocketAddr) -> Self {
        self.requester = Some(addr);
        self
    }

    /// Sets whether symbols are resolved while the window is open.
    #[must_use]
    pub fn symbolize(mut self, symbolize: bool) -> Self {
        self.symbolize = symbolize;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.duration.is_zero() {
            return Err(Error::InvalidRequest("the window must be longer than zero"));
        }
        if self.hz == 0 || self.hz > MAX_PROFILE_HZ {
            return Err(Error::InvalidRequest("hz must be between 1 and 1000"));
        }
        Ok(())
    }
}

/// Handle to the process-wide CPU sampler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CpuProfiler {
    controller: Arc<Controller>,
}

impl CpuProfiler {
    /// The process's sampler. There is only one: SIGPROF and the profiling
    /// timer are process-wide.
    pub fn global() -> CpuProfiler {
        static CONTROLLER: OnceLock<Arc<Controller>> = OnceLock::new();
        CpuProfiler {
            controller: Arc::clone(CONTROLLER.get_or_init(Arc::default)),
        }
    }

    /// Profiles the process for `request.duration` and returns the raw
    /// (unsymbolized) profile. Joins the running sampler if it runs at the
    /// same frequency in the same mode.
    ///
    /// Dropping the future before it completes withdraws the request; the
    /// sampler stops once no request is left.
    ///
    /// # Errors
    /// [`Error::ProfilerBusy`] if the sampler runs at another frequency or
    /// in another mode,
    /// [`Error::Unsupported`] where CPU sampling is unavailable,
    /// [`Error::ForeignProfiler`] if another profiler owns SIGPROF,
    /// [`Error::InvalidRequest`] for a zero window or an out-of-range `hz`.
    pub async fn profile(&self, request: ProfileRequest) -> Result<CpuProfile, Error> {
        request.validate()?;
        let receiver = self.controller.subscribe(&request)?;
        match receiver.await {
            Ok(result) => result,
            Err(_) => Err(Error::SamplerStopped),
        }
    }

    /// What the sampler is doing now.
    pub fn status(&self) -> SamplerStatus {
        self.controller.status()
    }

    /// Turns continuous profiling on: the sampler runs at `settings.hz`
    /// whenever no on-demand profile needs another rate, into a ring of
    /// aggregated segments that [`look_back`](Self::look_back) reads.
    /// Replaces the ring of an earlier call (its history is lost).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] for a rate outside 1–1000 Hz or a segment
    /// longer than the ring; [`Error::Os`] if the sampler thread cannot
    /// start.
    pub fn start_continuous(&self, settings: ContinuousSettings) -> Result<(), Error> {
        if !(1..=MAX_PROFILE_HZ).contains(&settings.hz) {
            return Err(Error::InvalidSetting {
                setting: "continuous profiling rate",
                reason: "outside 1–1000 Hz",
            });
        }
        if settings.segment > settings.keep {
            return Err(Error::InvalidSetting {
                setting: "continuous profiling ring",
                reason: "a segment is longer than the history kept",
            });
        }
        self.controller
            .set_flight(Some(Arc::new(flight::FlightRecorder::new(settings))))
    }

    /// Turns continuous profiling off and drops its ring.
    pub fn stop_continuous(&self) {
        let _ = self.controller.set_flight(None);
    }

    /// The continuous profiler's ring: rate, segments, memory; `None` when
    /// it is off.
    pub fn continuous_status(&self) -> Option<FlightStatus> {
        self.controller.flight().map(|f| f.status())
    }

    /// The profile the continuous profiler recorded between `from` and
    /// `to` (whole segments overlapping the range), at once, with what it
    /// covers: a range older than the ring gets what the ring holds, marked
    /// partial.
    ///
    /// # Errors
    ///
    /// [`Error::ContinuousProfilingOff`] when continuous profiling is off.
    pub fn look_back(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<(CpuProfile, Coverage), Error> {
        let flight = self
            .controller
            .flight()
            .ok_or(Error::ContinuousProfilingOff)?;
        let now = (
            SystemTime::now(),
            sampler::clock::monotonic_ns(),
            sampler::clock::process_cpu_ns(),
        );
        Ok(flight.look_back(from, to, now))
    }

    /// The continuous profiler's newest closed segment alone (for a
    /// scraper that comes once a segment).
    ///
    /// # Errors
    ///
    /// [`Error::ContinuousProfilingOff`] when continuous profiling is off.
    pub fn latest_segment(&self) -> Result<(CpuProfile, Coverage), Error> {
        let flight = self
            .controller
            .flight()
            .ok_or(Error::ContinuousProfilingOff)?;
        Ok(flight.latest())
    }

    /// A feed of the continuous profiler's segments: each segment closed
    /// from now on is read once, in order, as its own profile (what a
    /// pusher sends). Works whether or not continuous profiling is on yet;
    /// a ring started later is read from its first segment.
    pub fn segment_feed(&self) -> SegmentFeed {
        SegmentFeed::new(Arc::clone(&self.controller))
    }

    /// Closes the continuous profiler's open segment now, however short,
    /// so that [segment feeds](Self::segment_feed) read it (a final push
    /// before the process exits); whether there was one to close.
    pub fn seal_segment(&self) -> bool {
        self.controller.seal_segment()
    }

    /// Keeps the continuous profiler's segments around `onset` past the
    /// ring (an incident's profile); returns the pin's id, or `None` when
    /// continuous profiling is off.
    pub fn pin(&self, onset: SystemTime, reason: &str) -> Option<u64> {
        self.controller.flight().map(|f| f.pin(onset, reason))
    }

    /// The pins kept, oldest first.
    pub fn pins(&self) -> Vec<PinInfo> {
        self.controller.flight().map_or_else(Vec::new, |f| f.pins())
    }

    /// The profile of a pin's segments.
    pub fn pinned(&self, id: u64) -> Option<(CpuProfile, Coverage)> {
        self.controller.flight()?.pinned(id)
    }
}

/// A snapshot of the sampler's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SamplerStatus {
    /// Frequency of the running session, if one runs.
    pub running_hz: Option<u32>,
    /// Mode of the running session, if one runs.
    pub running_mode: Option<ProfileMode>,
    /// Requests currently waiting for a profile.
    pub subscribers: usize,
    /// Of those, the windows being sampled now: the sampler has started
    /// and stamped their start (the others wait for it to start).
    pub active_windows: usize,
    /// The rate the sampler runs at now (the on-demand rate, or the
    /// continuous profiler's when it is higher or alone), if it runs.
    pub sampling_hz: Option<u32>,
    /// The continuous profiler's rate, when it is on.
    pub continuous_hz: Option<u32>,
    /// Sessions started since the process began (a session spans all the
    /// requests that overlap in time).
    pub sessions_started: u64,
    /// Samples recorded, all sessions together.
    pub samples_recorded: u64,
    /// Samples lost (ring full or every unwinder busy; wall-clock: a thread
    /// still handling its previous signal), all sessions together.
    pub samples_dropped: u64,
    /// Time spent inside the SIGPROF handler, all sessions together: the
    /// sampler's direct cost to the threads it interrupts.
    pub handler_time: Duration,
    /// Memory held by the running session (unwind tables, ring, stack
    /// copies), in bytes; 0 when idle.
    pub footprint_bytes: usize,
    /// What sends the running session its signals: `per-thread CPU
    /// timers`, `ITIMER_PROF` (where per-thread timers are refused: an old
    /// kernel, a seccomp filter) or `wall-clock timer thread`; `None` when
    /// idle.
    pub clock: Option<&'static str>,
}

/// One distinct stack of a CPU profile.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuStack {
    /// Name of the thread it was sampled on.
    pub thread: Arc<str>,
    /// Lookup addresses, innermost first.
    pub frames: Arc<[u64]>,
    /// Labels of the code that was running ([`crate::labels`]).
    pub labels: LabelSet,
    /// Samples that hit this stack.
    pub samples: u64,
    /// Its weight: the sum of its samples' periods in nanoseconds
    /// (`samples × 1 s / hz` when the rate did not change). The measured CPU
    /// time is shared by weight, so samples taken at different rates (a
    /// continuous profile that an on-demand one sped up) count by the time
    /// they stand for.
    pub weight: u64,
}

/// The raw result of one profile window, before symbolization.
#[derive(Debug, Clone)]
pub struct CpuProfile {
    started_at: SystemTime,
    duration: Duration,
    hz: u32,
    mode: ProfileMode,
    cpu_time: Duration,
    samples: u64,
    dropped: u64,
    stacks: Vec<CpuStack>,
    /// Lines for the profile's comments (a look-back's coverage).
    notes: Vec<String>,
}

impl CpuProfile {
    /// Wall-clock start of the window.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Length of the window.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Requested sampling frequency.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// CPU or wall-clock.
    pub fn mode(&self) -> ProfileMode {
        self.mode
    }

    /// CPU time the whole process consumed during the window, measured with
    /// `CLOCK_PROCESS_CPUTIME_ID`.
    pub fn cpu_time(&self) -> Duration {
        self.cpu_time
    }

    /// Samples taken during the window.
    pub fn sample_count(&self) -> u64 {
        self.samples
    }

    /// Samples lost during the window.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped
    }

    /// Time each sample stands for. CPU: measured CPU time divided by
    /// samples, or the requested period when there are none. Wall-clock:
    /// the requested period, `1 s / hz`.
    pub fn period(&self) -> Duration {
        if self.samples == 0 || self.mode != ProfileMode::Cpu {
            Duration::from_nanos(1_000_000_000 / u64::from(self.hz.max(1)))
        } else {
            self.cpu_time / u32::try_from(self.samples).unwrap_or(u32::MAX)
        }
    }

    /// Distinct stacks, most sampled first.
    pub fn stacks(&self) -> &[CpuStack] {
        &self.stacks
    }

    /// What the profile says about itself besides its window (a look-back's
    /// coverage and rates).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Symbolizes the stacks into a [`Profile`] that renders in every format.
    /// Values are `samples/count` and `cpu/nanoseconds` (wall-clock:
    /// `wall/nanoseconds`, and waiting samples of threads idle in a tokio
    /// scheduler are relabelled `state=parked`).
    ///
    /// This blocks: the first call in a process loads the binaries' debug
    /// info (tens of milliseconds to seconds). From async code, call it in
    /// `spawn_blocking`.
    pub fn to_profile(&self) -> Profile {
        self.build_profile(true)
    }

    /// Like [`to_profile`](Self::to_profile) without resolving symbols:
    /// locations keep their addresses and mappings (with build IDs) for a
    /// server-side symbolizer, and text formats show `binary+0xoffset`.
    pub fn to_unsymbolized_profile(&self) -> Profile {
        self.build_profile(false)
    }

    /// [`to_profile`](Self::to_profile) or
    /// [`to_unsymbolized_profile`](Self::to_unsymbolized_profile).
    pub(crate) fn to_profile_symbolized(&self, symbolize: bool) -> Profile {
        self.build_profile(symbolize)
    }

    fn build_profile(&self, symbolize: bool) -> Profile {
        match self.mode {
            ProfileMode::Cpu => self.build_cpu_profile(symbolize),
            ProfileMode::Wall(threads) => self.build_wall_profile(symbolize, threads),
        }
    }

    /// Everything but the stacks: sample types `samples/count` and
    /// `<kind>/nanoseconds` (the default), period in `kind` nanoseconds.
    fn meta(
        &self,
        kind: &str,
        period_ns: i64,
        what: &str,
        comments: Vec<String>,
        symbolize: bool,
    ) -> ProfileMeta {
        let exe = crate::profile::process_name();
        ProfileMeta {
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new(kind, "nanoseconds"),
            ],
            default_value: 1,
            flame_value: 0,
            period_type: ValueType::new(kind, "nanoseconds"),
            period: period_ns,
            started_at: self.started_at,
            duration: self.duration,
            title: format!("{what} of {exe} (pid {})", std::process::id()),
            comments,
            symbolize,
            drop_frames: None,
        }
    }

    fn window_comment(&self, per: &str) -> String {
        format!(
            "window {:.2} s from {}, {} Hz {per}requested",
            self.duration.as_secs_f64(),
            crate::units::rfc3339(self.started_at),
            self.hz
        )
    }

    fn stack_of(stack: &CpuStack, value: i64) -> RawStack<'_> {
        RawStack {
            thread: Some(Arc::clone(&stack.thread)),
            addresses: &stack.frames,
            values: vec![i64::try_from(stack.samples).unwrap_or(i64::MAX), value],
            labels: stack.labels.clone(),
        }
    }

    fn build_cpu_profile(&self, symbolize: bool) -> Profile {
        let period_ns = i64::try_from(self.period().as_nanos()).unwrap_or(i64::MAX);
        let cpu_ns = i64::try_from(self.cpu_time.as_nanos()).unwrap_or(i64::MAX);
        let effective_hz = if self.cpu_time.is_zero() {
            0.0
        } else {
            self.samples as f64 / self.cpu_time.as_secs_f64()
        };
        // A look-back's notes (its coverage first) lead; a live window's
        // comments start with the window.
        let window = if self.notes.is_empty() {
            self.window_comment("")
        } else {
            format!(
                "recorded {:.2} s from {}",
                self.duration.as_secs_f64(),
                crate::units::rfc3339(self.started_at)
            )
        };
        let mut comments: Vec<String> = self.notes.clone();
        comments.extend([
            window,
            format!(
                "{} samples ({:.0}/s of CPU), {} dropped; process CPU {:.3} s ({:.0}% of one core)",
                self.samples,
                effective_hz,
                self.dropped,
                self.cpu_time.as_secs_f64(),
                100.0 * self.cpu_time.as_secs_f64() / self.duration.as_secs_f64().max(1e-9)
            ),
            "cpu values are samples scaled to the process CPU time measured over the window"
                .to_owned(),
        ]);
        let meta = self.meta("cpu", period_ns, "CPU profile", comments, symbolize);
        // Distribute the measured CPU time exactly, by weight: each stack
        // gets its share, the last one the remainder of the divisions.
        let total_weight: u128 = self.stacks.iter().map(|s| u128::from(s.weight)).sum();
        let mut remaining = cpu_ns;
        let mut weight_left = total_weight;
        let stacks = self.stacks.iter().map(|stack| {
            let weight = u128::from(stack.weight);
            let share = if weight_left == weight {
                remaining
            } else {
                (u128::try_from(cpu_ns.max(0)).unwrap_or(0) * weight)
                    .checked_div(total_weight)
                    .map_or(0, |share| i64::try_from(share).unwrap_or(i64::MAX))
            };
            remaining = remaining.saturating_sub(share);
            weight_left = weight_left.saturating_sub(weight);
            Self::stack_of(stack, share)
        });
        Profile::build(meta, stacks)
    }

    fn build_wall_profile(&self, symbolize: bool, threads: WallThreads) -> Profile {
        let period_ns = i64::try_from(self.period().as_nanos()).unwrap_or(i64::MAX);
        let ticks = self.duration.as_secs_f64() * f64::from(self.hz);
        let meta = self.meta(
            "wall",
            period_ns,
            "Wall-clock profile",
            vec![
                self.window_comment("per thread "),
                format!(
                    "{} threads: {} samples (≈ {:.1} threads sampled per tick), {} dropped \
                     (a thread still handling its previous signal, or every unwinder busy); \
                     process CPU {:.3} s",
                    match threads {
                        WallThreads::All => "all",
                        WallThreads::Workers => "tokio worker",
                    },
                    self.samples,
                    self.samples as f64 / ticks.max(1.0),
                    self.dropped,
                    self.cpu_time.as_secs_f64(),
                ),
                "wall values are samples × 1/hz; state: running (on a CPU or ready), \
                 waiting (asleep or blocked), parked (a tokio worker idle in its scheduler)"
                    .to_owned(),
            ],
            symbolize,
        );
        let mut meta = meta;
        if self.samples == 0 && threads == WallThreads::Workers {
            meta.comments.push(
                "no tokio worker thread had been seen: workers are found when they poll a \
                 labelled future (a request through the RED layer) or the agent's lag probe; \
                 threads=all samples every thread"
                    .to_owned(),
            );
        }
        let stacks = self.stacks.iter().map(|stack| {
            let wall = period_ns.saturating_mul(i64::try_from(stack.samples).unwrap_or(i64::MAX));
            Self::stack_of(stack, wall)
        });
        let mut profile = Profile::build(meta, stacks);
        if symbolize {
            mode::mark_parked(&mut profile);
        }
        profile
    }
}

/// Serializes the unit tests that run the process-wide sampler (or read
/// what its windows leave behind).
#[cfg(test)]
pub(crate) static SAMPLER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// [`SAMPLER_TESTS`], from an async test.
#[cfg(all(test, feature = "cpu", native_unwind))]
pub(crate) async fn exclusive_sampler() -> tokio::sync::MutexGuard<'static, ()> {
    SAMPLER_TESTS.lock().await
}

#[cfg(all(test, feature = "cpu", native_unwind))]
mod unwind_tests;

#[cfg(all(test, feature = "cpu", native_unwind))]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[inline(never)]
    pub(crate) fn spin_in_a_named_function(stop: &AtomicBool) -> u64 {
        let mut x = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        x
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn samples_a_spinning_thread_and_releases_sigprof() {
        let _sampler = exclusive_sampler().await;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let spinner = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::Builder::new()
                .name("spinner".into())
                .spawn(move || {
                    let _ = tid_tx.send(crate::threads::current_tid());
                    let _labels = crate::labels::scope([("job", "spin")]);
                    spin_in_a_named_function(&stop)
                })
                .unwrap()
        };
        // What the spinner really gets: the unit tests run in parallel on
        // few cores, so it never has one to itself.
        let watch = crate::testing::ThreadCpuWatch::start(tid_rx.recv().unwrap());
        let profiler = CpuProfiler::global();
        let raw = profiler
            .profile(ProfileRequest::new(Duration::from_millis(1500)).hz(250))
            .await
            .unwrap();
        let spinner_cpu = watch.between(raw.started_at(), raw.duration());
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();

        assert!(raw.sample_count() >= 20, "{} samples", raw.sample_count());
        assert!(
            raw.cpu_time() >= spinner_cpu,
            "the process's CPU {:?} includes the spinner's {spinner_cpu:?}",
            raw.cpu_time()
        );
        let profile = raw.to_profile();
        let on_spinner: Vec<_> = profile
            .samples
            .iter()
            .filter(|s| s.thread.as_deref() == Some("spinner"))
            .collect();
        let total_on_spinner: i64 = on_spinner.iter().map(|s| s.values[0]).sum();
        let in_function: i64 = on_spinner
            .iter()
            .filter(|s| {
                profile
                    .frames_root_first(s)
                    .any(|f| f.function.ends_with("spin_in_a_named_function"))
            })
            .map(|s| s.values[0])
            .sum();
        // The spinner's share of the samples, in CPU time, matches what its
        // own clock says it got in the window: within four standard
        // deviations of the sampling noise (1/sqrt(samples)), plus the
        // watcher's 2 ms readings at each end.
        assert!(
            total_on_spinner >= 20,
            "{total_on_spinner} samples on the spinner, which got {spinner_cpu:?} of CPU"
        );
        let attributed = raw.cpu_time().as_secs_f64() * total_on_spinner as f64
            / raw.sample_count().max(1) as f64;
        let truth = spinner_cpu.as_secs_f64();
        let tolerance = 4.0 / (total_on_spinner as f64).sqrt() * truth + 0.004;
        assert!(
            (attributed - truth).abs() <= tolerance,
            "the spinner's samples stand for {attributed:.3} s, its clock says {truth:.3} s \
             (± {tolerance:.3} s; {total_on_spinner} of {} samples)",
            raw.sample_count()
        );
        assert!(
            in_function as f64 >= 0.95 * total_on_spinner as f64,
            "{in_function} of {total_on_spinner} spinner samples unwound through the spin function"
        );
        // The handler read the spinner's label slot; nothing else has it.
        let labelled: i64 = profile
            .samples
            .iter()
            .filter(|s| s.labels.get("job") == Some("spin"))
            .map(|s| s.values[0])
            .sum();
        assert!(
            labelled as f64 >= 0.95 * total_on_spinner as f64,
            "{labelled} of {total_on_spinner} spinner samples carry job=spin"
        );
        assert!(profile
            .samples
            .iter()
            .filter(|s| s.labels.get("job").is_some())
            .all(|s| s.thread.as_deref() == Some("spinner")));
        // Totals are rescaled to the measured CPU time.
        let cpu_total = profile.total(1);
        assert_eq!(cpu_total, i64::try_from(raw.cpu_time().as_nanos()).unwrap());

        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while profiler.status().running_hz.is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            profiler.status().running_hz,
            None,
            "sampler stops when idle"
        );
        assert!(
            sampler::sigprof_ignored(),
            "SIGPROF is left ignored, not SIG_DFL"
        );
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_before_sampling() {
        let profiler = CpuProfiler::global();
        let zero = profiler.profile(ProfileRequest::new(Duration::ZERO)).await;
        assert!(matches!(zero, Err(Error::InvalidRequest(_))));
        let fast = profiler
            .profile(ProfileRequest::new(Duration::from_secs(1)).hz(5000))
            .await;
        assert!(matches!(fast, Err(Error::InvalidRequest(_))));
    }
}
