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

use tokio::sync::oneshot;

use super::sampler::{clock, Sampler, SamplerCounters};
use super::window::{Finished, PendingWindow, StackTable, Window, WindowEnd, WindowStart};
use super::{CpuProfile, ProfileMode, ProfileRequest, SamplerStatus};
use crate::symbols::symbolize::Symbolizer;
use crate::Error;

/// How often the control thread drains the ring while a session runs.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

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
}

#[derive(Debug)]
struct Session {
    hz: u32,
    mode: ProfileMode,
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
}

impl Session {
    fn new(hz: u32, mode: ProfileMode) -> Self {
        Session {
            hz,
            mode,
            pending: Vec::new(),
            active: 0,
            active_deadline_ns: 0,
            stopping: false,
            counters: SamplerCounters::default(),
            footprint_bytes: 0,
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

/// Process-wide coordinator of CPU sampling.
#[derive(Debug, Default)]
pub(crate) struct Controller {
    state: Mutex<State>,
    wake: Condvar,
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
        let joined = match state.session.as_mut() {
            Some(session) if session.hz == request.hz && session.mode == request.mode => true,
            Some(session) if session.stopping && session.pending.is_empty() => {
                // Winding down with nobody waiting: restart at the new rate.
                session.hz = request.hz;
                session.mode = request.mode;
                false
            }
            Some(session) => {
                return Err(Error::ProfilerBusy {
                    running_hz: session.hz,
                    running_mode: session.mode,
                    retry_after: session.busy_for(clock::monotonic_ns()),
                });
            }
            None => {
                state.session = Some(Session::new(request.hz, request.mode));
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
        SamplerStatus {
            running_hz: session.map(|s| s.hz),
            running_mode: session.map(|s| s.mode),
            subscribers: session.map_or(0, |s| s.active + s.pending.len()),
            sessions_started: state.sessions_started,
            samples_recorded: state.finished.recorded + current.recorded,
            samples_dropped: state.finished.dropped + current.dropped,
            handler_time: Duration::from_nanos(state.finished.handler_ns + current.handler_ns),
            footprint_bytes: session.map_or(0, |s| s.footprint_bytes),
        }
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
                    let pending = self
                        .lock()
                        .session
                        .take()
                        .map(|s| s.pending)
                        .unwrap_or_default();
                    for window in pending {
                        window.fail(error.for_another_waiter());
                    }
                    return;
                }
            };
            {
                let mut state = self.lock();
                state.sessions_started += 1;
                if let Some(session) = state.session.as_mut() {
                    session.footprint_bytes = sampler.footprint_bytes();
                    session.counters = SamplerCounters::default();
                }
            }
            if !self.serve(sampler) {
                return;
            }
        }
    }

    /// Serves windows until none is left; returns whether requests arrived
    /// while the sampler was stopping (the caller then starts it again).
    fn serve(&self, mut sampler: Sampler) -> bool {
        let mut windows: Vec<Window> = Vec::new();
        let mut table = StackTable::default();
        let mut announced: HashSet<u64> = HashSet::new();
        loop {
            let now_ns = {
                let mut state = self.lock();
                let idle = state.session.as_ref().is_none_or(|s| s.pending.is_empty());
                if idle {
                    let wait = next_wake_in(&windows, clock::monotonic_ns());
                    state = self
                        .wake
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                let counters = sampler.counters();
                let Some(session) = state.session.as_mut() else {
                    // Only this thread clears the session; stop if it is gone.
                    return false;
                };
                let now_ns = clock::monotonic_ns();
                if !session.pending.is_empty() {
                    // The process CPU clock is a system call: read it only
                    // when a window opens, not at every drain.
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
                session.active_deadline_ns =
                    windows.iter().map(|w| w.deadline_ns).max().unwrap_or(0);
                session.counters = counters;
                now_ns
            };
            if windows.is_empty() {
                return self.stop(sampler, Vec::new());
            }

            let dropped = sampler.counters().dropped;
            for window in windows
                .iter_mut()
                .filter(|w| w.end.is_none() && w.deadline_ns <= now_ns)
            {
                window.end = Some(WindowEnd {
                    at_ns: now_ns,
                    cpu_ns: clock::process_cpu_ns(),
                    dropped,
                });
            }

            let symbolize = windows.iter().any(|w| w.symbolize);
            let mut fresh_addresses = Vec::new();
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
                let timestamp = sample.timestamp_ns();
                for window in windows.iter_mut().filter(|w| w.covers(timestamp)) {
                    window.count(id);
                }
            });
            // Resolve while the window is still open, off this thread, so the
            // report at the end finds the symbols cached.
            Symbolizer::global().prefetch(fresh_addresses);

            let grace = duration_ns(PUBLISH_GRACE);
            let (done, open): (Vec<Window>, Vec<Window>) = windows.into_iter().partition(|w| {
                w.end
                    .is_some_and(|end| end.at_ns.saturating_add(grace) <= now_ns)
            });
            windows = open;
            let finished: Vec<Finished> =
                done.into_iter().filter_map(|w| w.finish(&table)).collect();
            if windows.is_empty() && !finished.is_empty() && !self.has_pending() {
                return self.stop(sampler, finished);
            }
            deliver(finished);
            let referenced: usize = windows.iter().map(Window::distinct_stacks).sum();
            if table.len() > COMPACT_ABOVE_STACKS && table.len() > 2 * referenced {
                table.compact(&mut windows);
                announced.clear();
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.lock()
            .session
            .as_ref()
            .is_some_and(|s| !s.pending.is_empty())
    }

    /// Stops the sampler, then delivers `finished`. The sampler is dropped
    /// outside the state lock, with the session marked `stopping` meanwhile.
    /// Delivery comes last, so a requester that has its profile finds the
    /// sampler free (its next request at another hz does not meet a stale
    /// 409). Returns whether requests arrived meanwhile, in which case the
    /// caller starts a new sampler for them.
    fn stop(&self, sampler: Sampler, finished: Vec<Finished>) -> bool {
        if let Some(session) = self.lock().session.as_mut() {
            session.stopping = true;
        }
        let counters = sampler.counters();
        drop(sampler);
        let restart = {
            let mut state = self.lock();
            state.finished.recorded += counters.recorded;
            state.finished.dropped += counters.dropped;
            state.finished.handler_ns += counters.handler_ns;
            match state.session.as_mut() {
                Some(session) if !session.pending.is_empty() => {
                    session.stopping = false;
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

/// Sleep until the next drain, window deadline or publication.
fn next_wake_in(windows: &[Window], now_ns: u64) -> Duration {
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
