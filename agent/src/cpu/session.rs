//! One sampler per process, shared by every request at the same frequency.
//!
//! The first request starts a sampler session and a control thread
//! (`stethoscope-cpu`); later requests at the same `hz` join it, each with
//! its own window; a request at another `hz` is refused with the time until
//! the running windows end. The control thread drains the sampler's ring,
//! counts samples into windows, hands finished profiles to their requesters,
//! drops windows whose requester went away, and stops the sampler — leaving
//! SIGPROF ignored — when no window is left.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::sampler::{clock, Sampler, SamplerCounters};
use super::window::{Finished, StackTable, Window, WindowEnd};
use super::{CpuProfile, ProfileRequest, SamplerStatus};
use crate::profile::symbolize::Symbolizer;
use crate::Error;

/// How often the control thread drains the ring while a session runs.
const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// Time after a window's end before its profile is assembled, so that a
/// handler that stamped a sample just before the end has published it.
const PUBLISH_GRACE: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct State {
    session: Option<Session>,
    sessions_started: u64,
    /// Totals of finished sessions.
    finished: SamplerCounters,
}

#[derive(Debug)]
struct Session {
    hz: u32,
    /// Windows added by requesters, not yet taken by the control thread.
    pending: Vec<Window>,
    /// Latest deadline of any window of this session (monotonic ns).
    latest_deadline_ns: u64,
    /// Windows the control thread is serving.
    active: usize,
    counters: SamplerCounters,
    footprint_bytes: usize,
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
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        request: &ProfileRequest,
    ) -> Result<oneshot::Receiver<Result<CpuProfile, Error>>, Error> {
        let (reply, receiver) = oneshot::channel();
        let mut state = self.lock();
        let needs_start = match &state.session {
            Some(session) if session.hz != request.hz => {
                let remaining = session
                    .latest_deadline_ns
                    .saturating_sub(clock::monotonic_ns());
                return Err(Error::ProfilerBusy {
                    running_hz: session.hz,
                    retry_after: Duration::from_nanos(remaining),
                });
            }
            Some(_) => false,
            None => true,
        };
        if needs_start {
            let sampler = Sampler::start(request.hz)?;
            let footprint_bytes = sampler.footprint_bytes();
            let controller = Arc::clone(self);
            // The sampler moves into the thread; if the spawn fails the
            // closure (and the sampler in it) is dropped, which stops it.
            std::thread::Builder::new()
                .name("stethoscope-cpu".into())
                .spawn(move || controller.run(sampler))
                .map_err(Error::ServerStart)?;
            state.sessions_started += 1;
            state.session = Some(Session {
                hz: request.hz,
                pending: Vec::new(),
                latest_deadline_ns: 0,
                active: 0,
                counters: SamplerCounters::default(),
                footprint_bytes,
            });
        }
        let window = Window::new(
            request.hz,
            request.requester,
            SystemTime::now(),
            clock::monotonic_ns(),
            request.duration,
            clock::process_cpu_ns(),
            reply,
        );
        tracing::info!(
            seconds = request.duration.as_secs_f64(),
            hz = request.hz,
            requester = ?request.requester,
            joined = !needs_start,
            "CPU profile started"
        );
        if let Some(session) = state.session.as_mut() {
            session.latest_deadline_ns = session.latest_deadline_ns.max(window.deadline_ns);
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
            subscribers: session.map_or(0, |s| s.active + s.pending.len()),
            sessions_started: state.sessions_started,
            samples_recorded: state.finished.recorded + current.recorded,
            samples_dropped: state.finished.dropped + current.dropped,
            handler_time: Duration::from_nanos(state.finished.handler_ns + current.handler_ns),
            footprint_bytes: session.map_or(0, |s| s.footprint_bytes),
        }
    }

    /// The control thread of one session.
    fn run(self: Arc<Self>, mut sampler: Sampler) {
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
                    // Unreachable by construction (only this thread clears
                    // the session); stop sampling rather than spin.
                    for window in windows.drain(..) {
                        window.fail(Error::SamplerStopped);
                    }
                    return;
                };
                for mut window in session.pending.drain(..) {
                    window.dropped_at_start = Some(counters.dropped);
                    windows.push(window);
                }
                windows.retain(|w| {
                    let gone = w.abandoned();
                    if gone {
                        tracing::info!(requester = ?w.requester, "CPU profile cancelled: requester went away");
                    }
                    !gone
                });
                session.active = windows.len();
                session.counters = counters;
                if windows.is_empty() {
                    end_session(&mut state, sampler);
                    tracing::debug!(stacks = table.len(), "CPU sampler session ended");
                    return;
                }
                clock::monotonic_ns()
            };

            let dropped_total = sampler.counters().dropped;
            for window in windows
                .iter_mut()
                .filter(|w| w.end.is_none() && w.deadline_ns <= now_ns)
            {
                window.end = Some(WindowEnd {
                    at_ns: now_ns,
                    cpu_ns: clock::process_cpu_ns(),
                    dropped_total,
                });
            }

            let mut fresh_addresses = Vec::new();
            sampler.drain(|sample| {
                let (id, is_new) = table.intern(sample.thread_name(), sample.frames());
                if is_new {
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
            let finished: Vec<_> = done.into_iter().filter_map(|w| w.finish(&table)).collect();
            // When these were the last windows and nobody is waiting to join,
            // stop before delivering, so a requester that gets its profile
            // finds the sampler free (its next request at another hz must not
            // meet a stale 409).
            if windows.is_empty() && !finished.is_empty() {
                let mut state = self.lock();
                if state.session.as_ref().is_none_or(|s| s.pending.is_empty()) {
                    end_session(&mut state, sampler);
                    drop(state);
                    deliver(finished);
                    tracing::debug!(stacks = table.len(), "CPU sampler session ended");
                    return;
                }
            }
            deliver(finished);
        }
    }
}

fn deliver(finished: Vec<Finished>) {
    for window in finished {
        let profile = &window.profile;
        tracing::info!(
            seconds = profile.duration().as_secs_f64(),
            hz = profile.hz(),
            samples = profile.sample_count(),
            dropped = profile.dropped_samples(),
            cpu_seconds = profile.cpu_time().as_secs_f64(),
            requester = ?window.requester,
            "CPU profile finished"
        );
        window.deliver();
    }
}

/// Stops the sampler and clears the session. Called with the state lock
/// held, so a new request starts a fresh session only after this one has
/// released SIGPROF.
fn end_session(state: &mut State, sampler: Sampler) {
    let counters = sampler.counters();
    state.finished.recorded += counters.recorded;
    state.finished.dropped += counters.dropped;
    state.finished.handler_ns += counters.handler_ns;
    state.session = None;
    drop(sampler);
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
