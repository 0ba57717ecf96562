//! One sampler per process, shared by every request at the same frequency
//! and mode (CPU or wall-clock).
//!
//! A request registers a pending window and returns at once; the control
//! thread (`stethoscope-cpu`) does everything that takes time: it starts the
//! sampler, adopts pending windows (stamping their start), drains the ring,
//! counts samples into windows, hands finished profiles to their
//! requesters, drops windows whose requester went away, and stops the
//! sampler — leaving its signal ignored — when no window is left. Requests
//! at another `hz` or in another mode are refused while windows run, with
//! the time until they end.
//!
//! Nothing slow happens under the state lock, so a request (on the agent's
//! runtime or a host task calling the Rust API) never waits for the sampler
//! to start or stop.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};

use super::flight::FlightRecorder;
use super::sampler::{clock, Sampler, SamplerCounters, THREAD_REFRESH_INTERVAL};
use super::window::{Finished, PendingWindow, StackTable, Window, WindowEnd, WindowStart};
use super::{CpuProfile, ProfileMode, ProfileRequest, SamplerStatus};
use crate::symbols::symbolize::Symbolizer;
use crate::Error;

/// How often the control thread drains the ring while a session runs.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// How often it drains when only the continuous profiler samples (at a
/// low rate: a few samples per thread between drains).
const CONTINUOUS_DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// Time after a window's end before its profile is assembled, so that a
/// handler that stamped a sample just before the end has published it.
const PUBLISH_GRACE: Duration = Duration::from_millis(5);

/// Stack-table size above which it is compacted when it holds mostly
/// stacks no open window counts.
const COMPACT_ABOVE_STACKS: usize = 16 * 1024;

#[derive(Debug, Default)]
struct State {
    session: Option<Session>,
    sessions_started: u64,
    /// Totals of finished sampler sessions.
    finished: SamplerCounters,
    /// The continuous profiler's ring, when it is on: it keeps a sampler
    /// running at its rate whenever no on-demand window needs another.
    flight: Option<Arc<FlightRecorder>>,
}

/// The rate the sampler runs at for on-demand windows at `hz` in `mode`:
/// theirs, or the continuous profiler's when it is higher (CPU only; the
/// ring is weighted by period, so it takes any rate).
fn sampler_hz(hz: u32, mode: ProfileMode, flight: Option<&Arc<FlightRecorder>>) -> u32 {
    match (mode, flight) {
        (ProfileMode::Cpu, Some(flight)) => hz.max(flight.settings().hz),
        _ => hz,
    }
}

#[derive(Debug)]
struct Session {
    /// The rate the sampler runs at.
    hz: u32,
    mode: ProfileMode,
    /// The rate on-demand windows asked for (`None`: only the continuous
    /// profiler samples).
    window_hz: Option<u32>,
    /// The control thread must restart the sampler at `hz` in `mode` (set
    /// only while no window runs).
    restart: bool,
    /// Windows added by requesters, not yet adopted by the control thread.
    pending: Vec<PendingWindow>,
    /// Windows the control thread is serving.
    active: usize,
    /// Latest deadline of the windows being served (monotonic ns).
    active_deadline_ns: u64,
    /// The control thread is stopping the sampler; a new request may then
    /// change the frequency.
    stopping: bool,
    counters: SamplerCounters,
    footprint_bytes: usize,
    /// The running sampler's [`Sampler::clock`].
    clock: Option<&'static str>,
}

impl Session {
    fn new(hz: u32, mode: ProfileMode, window_hz: Option<u32>) -> Self {
        Session {
            hz,
            mode,
            window_hz,
            restart: false,
            pending: Vec::new(),
            active: 0,
            active_deadline_ns: 0,
            stopping: false,
            counters: SamplerCounters::default(),
            footprint_bytes: 0,
            clock: None,
        }
    }

    /// Time until every running and pending window has ended.
    fn busy_for(&self, now_ns: u64) -> Duration {
        let running = Duration::from_nanos(self.active_deadline_ns.saturating_sub(now_ns));
        let pending = self
            .pending
            .iter()
            .map(|w| w.duration)
            .max()
            .unwrap_or_default();
        running.max(pending)
    }
}

/// What [`Controller::admit`] decided.
enum Admitted {
    /// Drain the ring now (at monotonic `now_ns`), the sampler running at
    /// `hz`, into the windows and, when it is fed, the continuous ring.
    Drain {
        now_ns: u64,
        hz: u32,
        flight: Option<Arc<FlightRecorder>>,
    },
    /// Restart the sampler at the session's new rate or mode.
    Switch(Option<Arc<FlightRecorder>>),
    /// The session is gone: stop.
    Gone,
}

/// What the serving loop keeps between drains: the windows being served,
/// the stacks they count, the addresses already sent to the symbolizer.
struct Serving {
    windows: Vec<Window>,
    table: StackTable,
    announced: HashSet<u64>,
    threads_refreshed_ns: u64,
}

impl Serving {
    fn new() -> Self {
        Serving {
            windows: Vec::new(),
            table: StackTable::default(),
            announced: HashSet::new(),
            threads_refreshed_ns: clock::monotonic_ns(),
        }
    }

    /// Gives threads started since the last look their CPU timer.
    fn refresh_threads(&mut self, sampler: &mut Sampler, now_ns: u64) {
        if now_ns.saturating_sub(self.threads_refreshed_ns) >= duration_ns(THREAD_REFRESH_INTERVAL)
        {
            sampler.refresh_threads();
            self.threads_refreshed_ns = now_ns;
        }
    }

    /// Stamps the end (time, process CPU, drops) of windows past their
    /// deadline.
    fn close_due_windows(&mut self, sampler: &Sampler, now_ns: u64) {
        let dropped = sampler.counters().dropped;
        for window in self
            .windows
            .iter_mut()
            .filter(|w| w.end.is_none() && w.deadline_ns <= now_ns)
        {
            window.end = Some(WindowEnd {
                at_ns: now_ns,
                cpu_ns: clock::process_cpu_ns(),
                dropped,
            });
        }
    }

    /// Counts every sample the handlers recorded since the last drain into
    /// the windows that cover it and into the continuous ring, and sends
    /// new addresses to the symbolizer while the windows are still open.
    /// Returns whether the ring closed a segment.
    fn drain(
        &mut self,
        sampler: &mut Sampler,
        hz: u32,
        flight: Option<&Arc<FlightRecorder>>,
    ) -> bool {
        let symbolize = self.windows.iter().any(|w| w.symbolize);
        let mut fresh_addresses = Vec::new();
        {
            let Serving {
                windows,
                table,
                announced,
                ..
            } = self;
            let mut ring = flight.map(|f| f.batch());
            sampler.drain(|sample| {
                let (id, is_new) = table.intern(
                    sample.thread_name(),
                    sample.frames(),
                    sample.labels(),
                    sample.state(),
                );
                if is_new && symbolize {
                    fresh_addresses.extend(
                        sample
                            .frames()
                            .iter()
                            .copied()
                            .filter(|a| announced.insert(*a)),
                    );
                }
                let (timestamp, periods) = (sample.timestamp_ns(), sample.periods());
                if let (Some(ring), Some(key)) = (ring.as_mut(), table.get(id)) {
                    ring.record(key, hz, periods, timestamp);
                }
                for window in windows.iter_mut().filter(|w| w.covers(timestamp)) {
                    window.count(id, periods);
                }
            });
        }
        let closed = flight.is_some_and(|flight| {
            flight.tick(clock::monotonic_ns(), || {
                (SystemTime::now(), clock::process_cpu_ns())
            })
        });
        // Resolve while the window is still open, off this thread, so the
        // report at the end finds the symbols cached.
        Symbolizer::global().prefetch(fresh_addresses);
        closed
    }

    /// Takes out the windows that ended at least [`PUBLISH_GRACE`] ago, as
    /// profiles to deliver.
    fn finished_windows(&mut self, now_ns: u64) -> Vec<Finished> {
        let grace = duration_ns(PUBLISH_GRACE);
        let (done, open): (Vec<Window>, Vec<Window>) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| {
                w.end
                    .is_some_and(|end| end.at_ns.saturating_add(grace) <= now_ns)
            });
        self.windows = open;
        done.into_iter()
            .filter_map(|w| w.finish(&self.table))
            .collect()
    }

    /// Drops stacks no open window counts once the table has grown large.
    fn compact(&mut self) {
        let referenced: usize = self.windows.iter().map(Window::distinct_stacks).sum();
        if self.table.len() > COMPACT_ABOVE_STACKS && self.table.len() > 2 * referenced {
            self.table.compact(&mut self.windows);
            self.announced.clear();
        }
    }
}

/// Process-wide coordinator of CPU sampling.
#[derive(Debug, Default)]
pub(crate) struct Controller {
    state: Mutex<State>,
    wake: Condvar,
    /// Bumped when the continuous profiler closes a segment or its ring is
    /// replaced: what segment feeds wait on.
    segments: watch::Sender<u64>,
}

impl Controller {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a window; the result arrives on the returned receiver.
    /// Only takes the state lock briefly and may spawn the control thread.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        request: &ProfileRequest,
    ) -> Result<oneshot::Receiver<Result<CpuProfile, Error>>, Error> {
        let (reply, receiver) = oneshot::channel();
        let window = PendingWindow {
            duration: request.duration,
            requester: request.requester,
            symbolize: request.symbolize,
            reply,
        };
        let mut state = self.lock();
        let hz = sampler_hz(request.hz, request.mode, state.flight.as_ref());
        let joined = match state.session.as_mut() {
            Some(session) if session.active > 0 || !session.pending.is_empty() => {
                if session.window_hz != Some(request.hz) || session.mode != request.mode {
                    return Err(Error::ProfilerBusy {
                        running_hz: session.window_hz.unwrap_or(session.hz),
                        running_mode: session.mode,
                        retry_after: session.busy_for(clock::monotonic_ns()),
                    });
                }
                true
            }
            Some(session) => {
                // No window runs: only the continuous profiler samples, or
                // the sampler is winding down. Take it over at this rate.
                session.window_hz = Some(request.hz);
                if (session.hz, session.mode) != (hz, request.mode) {
                    session.hz = hz;
                    session.mode = request.mode;
                    // A stopping sampler restarts for the pending window
                    // by itself.
                    session.restart = !session.stopping;
                }
                false
            }
            None => {
                state.session = Some(Session::new(hz, request.mode, Some(request.hz)));
                let controller = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("stethoscope-cpu".into())
                    .spawn(move || controller.run());
                if let Err(source) = spawned {
                    state.session = None;
                    return Err(Error::Os {
                        call: "spawning the CPU sampler thread",
                        source,
                    });
                }
                false
            }
        };
        tracing::info!(
            seconds = request.duration.as_secs_f64(),
            hz = request.hz,
            mode = %request.mode,
            requester = ?request.requester,
            joined,
            "CPU profile requested"
        );
        if let Some(session) = state.session.as_mut() {
            session.pending.push(window);
        }
        drop(state);
        self.wake.notify_all();
        Ok(receiver)
    }

    pub(crate) fn status(&self) -> SamplerStatus {
        let state = self.lock();
        let session = state.session.as_ref();
        let current = session.map(|s| s.counters).unwrap_or_default();
        // On-demand windows' rate and mode; a session that only feeds the
        // continuous profiler is reported there.
        let on_demand = session.and_then(|s| s.window_hz.map(|hz| (hz, s.mode)));
        SamplerStatus {
            running_hz: on_demand.map(|(hz, _)| hz),
            running_mode: on_demand.map(|(_, mode)| mode),
            sampling_hz: session.filter(|s| !s.stopping).map(|s| s.hz),
            continuous_hz: state.flight.as_ref().map(|f| f.settings().hz),
            subscribers: session.map_or(0, |s| s.active + s.pending.len()),
            active_windows: session.map_or(0, |s| s.active),
            sessions_started: state.sessions_started,
            samples_recorded: state.finished.recorded + current.recorded,
            samples_dropped: state.finished.dropped + current.dropped,
            handler_time: Duration::from_nanos(state.finished.handler_ns + current.handler_ns),
            footprint_bytes: session.map_or(0, |s| s.footprint_bytes),
            clock: session.and_then(|s| s.clock),
        }
    }

    /// Turns the continuous profiler on (with its ring) or off. On, it
    /// keeps a sampler running at its rate whenever no on-demand window
    /// needs another; off, the sampler stops with the last window.
    pub(crate) fn set_flight(
        self: &Arc<Self>,
        flight: Option<Arc<FlightRecorder>>,
    ) -> Result<(), Error> {
        let mut state = self.lock();
        state.flight = flight.clone();
        self.segment_closed();
        if let Some(flight) = flight {
            let hz = flight.settings().hz;
            match state.session.as_mut() {
                None => {
                    state.session = Some(Session::new(hz, ProfileMode::Cpu, None));
                    let controller = Arc::clone(self);
                    let spawned = std::thread::Builder::new()
                        .name("stethoscope-cpu".into())
                        .spawn(move || controller.run());
                    if let Err(source) = spawned {
                        state.session = None;
                        state.flight = None;
                        return Err(Error::Os {
                            call: "spawning the CPU sampler thread",
                            source,
                        });
                    }
                }
                Some(session) => {
                    let idle = session.active == 0 && session.pending.is_empty();
                    if idle
                        && !session.stopping
                        && (session.hz, session.mode) != (hz, ProfileMode::Cpu)
                    {
                        session.hz = hz;
                        session.mode = ProfileMode::Cpu;
                        session.restart = true;
                    }
                    // A window's sampler at a lower rate picks the ring's
                    // rate up at its next start.
                }
            }
        }
        drop(state);
        self.wake.notify_all();
        Ok(())
    }

    /// The continuous profiler's ring, when it is on.
    pub(crate) fn flight(&self) -> Option<Arc<FlightRecorder>> {
        self.lock().flight.clone()
    }

    /// A receiver that changes when a segment closes or the ring changes.
    pub(crate) fn segment_events(&self) -> watch::Receiver<u64> {
        self.segments.subscribe()
    }

    /// Tells segment feeds that a segment closed (or the ring changed).
    pub(crate) fn segment_closed(&self) {
        self.segments.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Closes the continuous profiler's open segment now, however short,
    /// so that segment feeds read it; whether there was one.
    pub(crate) fn seal_segment(&self) -> bool {
        let Some(flight) = self.flight() else {
            return false;
        };
        let sealed = flight.seal(clock::monotonic_ns(), || {
            (SystemTime::now(), clock::process_cpu_ns())
        });
        if sealed {
            self.segment_closed();
        }
        sealed
    }

    /// Installs a ring without starting the sampler (unit tests feed it).
    #[cfg(test)]
    pub(crate) fn install_flight_for_tests(&self, flight: Arc<FlightRecorder>) {
        self.lock().flight = Some(flight);
        self.segment_closed();
    }

    /// The control thread: one sampler session after another while
    /// requests keep arriving.
    fn run(self: Arc<Self>) {
        let _guard = ClearOnPanic(&self);
        loop {
            let Some((hz, mode)) = self.lock().session.as_ref().map(|s| (s.hz, s.mode)) else {
                return;
            };
            let sampler = match Sampler::start(hz, mode) {
                Ok(sampler) => sampler,
                Err(error) => {
                    tracing::warn!(%error, hz, %mode, "sampler could not start");
                    let pending = {
                        let mut state = self.lock();
                        // The continuous profiler cannot run either.
                        state.flight = None;
                        state.session.take().map(|s| s.pending).unwrap_or_default()
                    };
                    for window in pending {
                        window.fail(error.for_another_waiter());
                    }
                    return;
                }
            };
            let flight = {
                let mut state = self.lock();
                state.sessions_started += 1;
                if let Some(session) = state.session.as_mut() {
                    session.footprint_bytes = sampler.footprint_bytes();
                    session.clock = Some(sampler.clock());
                    session.counters = SamplerCounters::default();
                }
                state.flight.clone()
            };
            if let (Some(flight), ProfileMode::Cpu) = (&flight, mode) {
                flight.resume(
                    SystemTime::now(),
                    clock::monotonic_ns(),
                    clock::process_cpu_ns(),
                );
            }
            if !self.serve(sampler) {
                return;
            }
        }
    }

    /// Serves windows (and the continuous profiler's ring) until none is
    /// left; returns whether the sampler must start again (requests arrived
    /// while it was stopping, or the rate or mode changes). Each round:
    /// [`admit`](Self::admit) windows (under the state lock), close the
    /// windows that are due, drain the ring into windows and segments,
    /// publish finished profiles.
    fn serve(&self, mut sampler: Sampler) -> bool {
        let mut serving = Serving::new();
        loop {
            let (now_ns, hz, flight) = match self.admit(&sampler, &mut serving.windows) {
                Admitted::Drain { now_ns, hz, flight } => (now_ns, hz, flight),
                Admitted::Switch(flight) => return self.switch(sampler, flight.as_ref()),
                Admitted::Gone => return false,
            };
            if serving.windows.is_empty() && flight.is_none() {
                return self.stop(sampler, Vec::new());
            }
            serving.refresh_threads(&mut sampler, now_ns);
            serving.close_due_windows(&sampler, now_ns);
            if serving.drain(&mut sampler, hz, flight.as_ref()) {
                self.segment_closed();
            }
            let finished = serving.finished_windows(now_ns);
            if serving.windows.is_empty()
                && !finished.is_empty()
                && !self.has_pending()
                && self.lock().flight.is_none()
            {
                return self.stop(sampler, finished);
            }
            deliver(finished);
            serving.compact();
        }
    }

    /// Under the state lock: waits for the next window end or request,
    /// adopts pending windows (stamping their start), drops abandoned ones,
    /// publishes the session's status, and says what to do next.
    fn admit(&self, sampler: &Sampler, windows: &mut Vec<Window>) -> Admitted {
        let mut state = self.lock();
        let idle = state
            .session
            .as_ref()
            .is_none_or(|s| s.pending.is_empty() && !s.restart);
        if idle {
            let wait = next_wake_in(windows, clock::monotonic_ns());
            state = self
                .wake
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let counters = sampler.counters();
        let flight = state.flight.clone();
        let Some(session) = state.session.as_mut() else {
            // Only this thread clears the session; stop if it is gone.
            return Admitted::Gone;
        };
        if session.restart && windows.is_empty() {
            // Another rate or mode: pending windows start on the new sampler.
            session.restart = false;
            return Admitted::Switch(flight);
        }
        let now_ns = clock::monotonic_ns();
        if !session.pending.is_empty() {
            // The process CPU clock is a system call: read it only when a
            // window opens, not at every drain.
            let start = WindowStart {
                wall: SystemTime::now(),
                at_ns: now_ns,
                cpu_ns: clock::process_cpu_ns(),
                dropped: counters.dropped,
            };
            for pending in session.pending.drain(..) {
                windows.push(Window::start(pending, session.hz, session.mode, start));
            }
        }
        windows.retain(|w| {
            let gone = w.abandoned();
            if gone {
                tracing::info!(requester = ?w.requester, "CPU profile cancelled: requester went away");
            }
            !gone
        });
        session.active = windows.len();
        session.active_deadline_ns = windows.iter().map(|w| w.deadline_ns).max().unwrap_or(0);
        session.counters = counters;
        if windows.is_empty() {
            session.window_hz = None;
            if let Some(flight) = &flight {
                let ring = (flight.settings().hz, ProfileMode::Cpu);
                if (session.hz, session.mode) != ring {
                    // Back to the continuous profiler's rate.
                    (session.hz, session.mode) = ring;
                    return Admitted::Switch(Some(Arc::clone(flight)));
                }
            }
        }
        let feeds_ring = session.mode == ProfileMode::Cpu;
        Admitted::Drain {
            now_ns,
            hz: session.hz,
            flight: flight.filter(|_| feeds_ring),
        }
    }

    fn has_pending(&self) -> bool {
        self.lock()
            .session
            .as_ref()
            .is_some_and(|s| !s.pending.is_empty())
    }

    /// Stops the sampler to start it again at the session's (new) rate or
    /// mode; the ring is not fed in between.
    fn switch(&self, sampler: Sampler, flight: Option<&Arc<FlightRecorder>>) -> bool {
        if let Some(flight) = flight {
            flight.pause(clock::monotonic_ns(), clock::process_cpu_ns());
        }
        let counters = sampler.counters();
        drop(sampler);
        let mut state = self.lock();
        state.finished.recorded += counters.recorded;
        state.finished.dropped += counters.dropped;
        state.finished.handler_ns += counters.handler_ns;
        tracing::debug!("CPU sampler restarts at another rate or mode");
        state.session.is_some()
    }

    /// Stops the sampler, then delivers `finished`. The sampler is dropped
    /// outside the state lock, with the session marked `stopping` meanwhile.
    /// Delivery comes last, so a requester that has its profile finds the
    /// sampler free (its next request at another hz does not meet a stale
    /// 409). Returns whether requests arrived meanwhile (or the continuous
    /// profiler was turned on), in which case the caller starts a new
    /// sampler for them.
    fn stop(&self, sampler: Sampler, finished: Vec<Finished>) -> bool {
        let flight = {
            let mut state = self.lock();
            if let Some(session) = state.session.as_mut() {
                session.stopping = true;
            }
            state.flight.clone()
        };
        if let Some(flight) = flight {
            flight.pause(clock::monotonic_ns(), clock::process_cpu_ns());
        }
        let counters = sampler.counters();
        drop(sampler);
        let restart = {
            let mut state = self.lock();
            state.finished.recorded += counters.recorded;
            state.finished.dropped += counters.dropped;
            state.finished.handler_ns += counters.handler_ns;
            let flight_hz = state.flight.as_ref().map(|f| f.settings().hz);
            match state.session.as_mut() {
                Some(session) if !session.pending.is_empty() => {
                    session.stopping = false;
                    session.restart = false;
                    session.counters = SamplerCounters::default();
                    true
                }
                Some(session) if flight_hz.is_some() => {
                    session.stopping = false;
                    session.restart = false;
                    session.window_hz = None;
                    session.hz = flight_hz.unwrap_or(session.hz);
                    session.mode = ProfileMode::Cpu;
                    session.counters = SamplerCounters::default();
                    true
                }
                _ => {
                    state.session = None;
                    false
                }
            }
        };
        tracing::debug!(restart, "CPU sampler session ended");
        deliver(finished);
        restart
    }
}

fn deliver(finished: Vec<Finished>) {
    for window in finished {
        let profile = &window.profile;
        tracing::info!(
            seconds = profile.duration().as_secs_f64(),
            hz = profile.hz(),
            mode = %profile.mode(),
            samples = profile.sample_count(),
            dropped = profile.dropped_samples(),
            cpu_seconds = profile.cpu_time().as_secs_f64(),
            requester = ?window.requester,
            "profile finished"
        );
        super::routes::record(profile);
        window.deliver();
    }
}

/// Clears the session if the control thread unwinds, so that waiting
/// requests fail fast (their reply channels close) and new requests can
/// start a fresh sampler instead of queueing behind a dead thread. The
/// sampler itself stops in its own Drop, before this guard runs.
struct ClearOnPanic<'a>(&'a Controller);

impl Drop for ClearOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the CPU sampler thread panicked; its requests fail");
            self.0.lock().session = None;
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sleep until the next drain, window deadline or publication (only the
/// continuous profiler: a slower drain).
fn next_wake_in(windows: &[Window], now_ns: u64) -> Duration {
    if windows.is_empty() {
        return CONTINUOUS_DRAIN_INTERVAL;
    }
    let grace = duration_ns(PUBLISH_GRACE);
    let next = windows
        .iter()
        .map(|w| match w.end {
            Some(end) => end.at_ns.saturating_add(grace),
            None => w.deadline_ns,
        })
        .min()
        .unwrap_or(u64::MAX);
    Duration::from_nanos(next.saturating_sub(now_ns)).min(DRAIN_INTERVAL)
}
