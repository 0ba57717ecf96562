//! The watchdog thread (`stethoscope-lag`): every resolution tick it
//! collects the last probe's delay and spawns the next, reads every
//! worker's published counters, records the streaks of workers that were
//! away from the scheduler, and on a stall captures the stuck thread's
//! stack. It runs outside the host runtime, so it keeps measuring while
//! every worker is blocked.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::capture::{Captured, StackCapture, ANSWER_TIMEOUT};
use super::probe::ProbeState;
use super::stall::{self, RawCandidate, StallJob};
use super::workers::{WorkerCounters, WorkerEvent, WorkerTrack};
use super::{Inner, WorkerView};
use crate::runtime::STALL_CAPTURE_KEEP;
use crate::periodic::Wake;

/// With a worker parked, a probe runs every this many resolutions.
const IDLE_PROBE_FACTOR: u32 = 10;

/// With every worker parked, a probe runs every this many resolutions
/// (500 ms at the default): each one wakes a worker from an idle CPU only
/// to measure that wake-up, the same few tens of µs every time.
const PARKED_PROBE_FACTOR: u32 = 50;

/// Time between looks while the runtime is quiet (every worker parked, and
/// less than [`QUIET_BUSY`] of work done since the last look): the watchdog
/// sleeps dormant and is woken early by the agent's alarm when a request
/// arrives through the RED layer. Work that arrives otherwise is seen
/// within this time.
pub(crate) const DORMANT_LOOK: Duration = Duration::from_millis(200);

/// Work done by all workers between two looks below which the runtime
/// still counts as quiet (a probe, a timer firing).
const QUIET_BUSY: Duration = Duration::from_millis(1);

/// While the runtime is quiet, a probe runs every this many resolutions
/// (two seconds at the default): enough to show the lag of an idle runtime,
/// few enough wake-ups of the host's workers.
const DORMANT_PROBE_FACTOR: u32 = 200;

/// Time between looks while every worker is parked: ten resolutions, but
/// at most half the stall threshold so a stall cannot begin and end
/// between two looks.
fn idle_interval(resolution: Duration, threshold: Duration) -> Duration {
    (resolution * IDLE_PROBE_FACTOR)
        .min(threshold / 2)
        .max(resolution)
}

/// Time between looks while some workers run and at least one is parked:
/// a quarter of the stall threshold (25 ms at the default), at least one
/// resolution. A stall is still seen within a quarter threshold of crossing
/// it; what is lost is per-worker streaks shorter than this interval that
/// begin and end between two looks — and with a worker parked, the runtime
/// had a free worker to steal the stuck one's tasks.
fn partly_idle_interval(resolution: Duration, threshold: Duration) -> Duration {
    (threshold / 4).max(resolution)
}

/// Time between probes: every resolution while no worker is parked (the
/// probe then wakes nobody), less often while a probe must wake a worker,
/// least often while the runtime is quiet.
fn probe_interval(
    resolution: Duration,
    any_parked: bool,
    all_parked: bool,
    quiet: bool,
) -> Duration {
    if quiet {
        resolution * DORMANT_PROBE_FACTOR
    } else if all_parked {
        resolution * PARKED_PROBE_FACTOR
    } else if any_parked {
        resolution * IDLE_PROBE_FACTOR
    } else {
        resolution
    }
}

/// Most candidate threads signalled for one stall.
const MAX_CANDIDATES: usize = 64;

/// Most thread ids remembered as having run a probe.
const MAX_KNOWN_THREADS: usize = 1024;

/// The name tokio gives worker threads unless the host chose another
/// (`comm` keeps 15 bytes).
const TOKIO_DEFAULT_COMM: &str = "tokio-runtime-w";

/// When the watchdog looks next, and whether it sleeps dormant until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    wait: Duration,
    dormant: bool,
}

struct Watchdog {
    inner: Arc<Inner>,
    tracks: Vec<WorkerTrack>,
    /// Thread of each worker, as identified by probes.
    worker_tids: Vec<Option<u32>>,
    /// Threads that ran a probe, with their names.
    known_threads: HashMap<u32, String>,
    /// Open stall id per worker.
    open_stalls: HashMap<usize, u64>,
    capture: Option<StackCapture>,
    last_capture: Instant,
    stall_jobs: Option<mpsc::Sender<StallJob>>,
    /// When the last probe was spawned (since the epoch).
    last_probe: Duration,
    /// All workers' published busy time at the previous look, to tell a
    /// quiet runtime.
    previous_busy_ns: u64,
    /// When the watchdog went to sleep dormant, until its next look.
    dormant_since: Option<Duration>,
}

pub(super) fn spawn(inner: Arc<Inner>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stethoscope-lag".into())
        .spawn(move || {
            let mut watchdog = Watchdog {
                inner,
                tracks: Vec::new(),
                worker_tids: Vec::new(),
                known_threads: HashMap::new(),
                open_stalls: HashMap::new(),
                capture: None,
                last_capture: Instant::now(),
                stall_jobs: None,
                last_probe: Duration::ZERO,
                previous_busy_ns: 0,
                dormant_since: None,
            };
            watchdog.inner.alarm.attach_current_thread();
            // Dormant looks need no precision; active ones a fraction of
            // the resolution.
            crate::periodic::relax_timer_slack(watchdog.inner.resolution / 20);
            watchdog.run();
        })
        .map(drop)
}

impl Watchdog {
    fn run(&mut self) {
        let mut next = Instant::now();
        let mut dormant = false;
        loop {
            match self.inner.sleep_until(next, dormant) {
                Wake::Stopped => {
                    tracing::debug!("executor-lag watchdog stopped");
                    return;
                }
                // Work arrived just now: whatever a worker is doing began
                // after the alarm, not at the previous look.
                Wake::Rung => self.dormant_since = None,
                Wake::Deadline => {}
            }
            let Some(look) = self.tick() else {
                return;
            };
            dormant = look.dormant;
            let now = Instant::now();
            // After an early wake-up (the alarm) the schedule restarts now.
            next = if next > now { now } else { next } + look.wait;
            if next < now {
                // Fell behind (a capture, a descheduled thread): do not
                // burst to catch up.
                next = now + look.wait;
            }
        }
    }

    /// One look at the runtime. Returns when to look next, or `None` once
    /// the runtime has shut down.
    ///
    /// Every thread wake-up costs CPU (10-20 µs on a small VM), so the
    /// watchdog backs off while the runtime has idle workers: with every
    /// worker parked it looks every [`idle_interval`] (half the stall
    /// threshold, so no stall can pass between two looks), with some parked
    /// every [`partly_idle_interval`], and a probe only wakes a parked
    /// worker every [`IDLE_PROBE_FACTOR`] resolutions ([`PARKED_PROBE_FACTOR`]
    /// when all are parked) — with a worker parked, new work waits only for
    /// that worker's wake-up. It looks
    /// every resolution while no worker is parked or a stall is open. When
    /// the runtime is quiet (every worker parked, nothing published since
    /// the last look) it sleeps dormant for [`DORMANT_LOOK`] without probes,
    /// unless the alarm rings first.
    fn tick(&mut self) -> Option<Look> {
        let inner = Arc::clone(&self.inner);
        let now = inner.epoch.elapsed();
        let metrics = inner.handle.metrics();
        let workers = metrics.num_workers();
        if self.tracks.len() != workers {
            self.tracks = (0..workers)
                .map(|w| WorkerTrack::new(now, read(&metrics, w)))
                .collect();
            self.worker_tids = vec![None; workers];
        }
        let mut views = Vec::with_capacity(workers);
        let unseen_since = self.dormant_since.take();
        for worker in 0..workers {
            let counters = read(&metrics, worker);
            let event = self.tracks[worker].observe(now, counters, inner.threshold, unseen_since);
            match event {
                WorkerEvent::StreakEnded { duration, stalled }
                    if stalled && duration < inner.threshold =>
                {
                    // Reported on the bound a dormant sleep left; tokio's
                    // exact busy time says it was shorter: not a stall.
                    if let Some(id) = self.open_stalls.remove(&worker) {
                        inner.stalls.retract(id);
                    }
                    if duration >= inner.resolution {
                        inner.record_lag(now, duration);
                    }
                }
                WorkerEvent::StreakEnded { duration, stalled } => {
                    if duration >= inner.resolution {
                        inner.record_lag(now, duration);
                    }
                    if !stalled && duration >= inner.threshold {
                        // It began and ended between two looks of an idle
                        // watchdog: counted, without a stack.
                        let started_at = SystemTime::now()
                            .checked_sub(duration)
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        inner.stalls.record_missed(worker, started_at, duration);
                    }
                    if let Some(id) = self.open_stalls.remove(&worker).filter(|_| stalled) {
                        if let Some(stall) = inner.stalls.finish(id, duration) {
                            tracing::warn!(
                                worker,
                                duration_ms = duration.as_secs_f64() * 1e3,
                                tid = stall.thread.as_ref().map(|t| t.0),
                                "tokio worker back in the scheduler after a stall"
                            );
                        }
                    }
                }
                WorkerEvent::StallStarted { stuck_for } => {
                    let started_at = SystemTime::now()
                        .checked_sub(stuck_for)
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let id = inner.stalls.start(worker, started_at, stuck_for);
                    self.open_stalls.insert(worker, id);
                    self.capture_stall(id, worker);
                }
                WorkerEvent::Quiet => {
                    if let (Some(id), Some(away)) = (
                        self.open_stalls.get(&worker),
                        self.tracks[worker].away_for(inner.epoch.elapsed()),
                    ) {
                        inner.stalls.extend(*id, away);
                    }
                }
            }
            let track = &self.tracks[worker];
            views.push(WorkerView {
                counters: track.counters(),
                busy_ratio: track.busy_ratio(),
                away_for: track.away_for(now),
                tid: self.worker_tids.get(worker).copied().flatten(),
            });
        }
        inner.publish_workers(views);
        let any_parked = self.tracks.iter().any(|t| t.counters().parked());
        let all_parked =
            !self.tracks.is_empty() && self.tracks.iter().all(|t| t.counters().parked());
        let busy_ns = self
            .tracks
            .iter()
            .map(|t| t.counters().busy_ns)
            .fold(0u64, u64::saturating_add);
        let worked = Duration::from_nanos(busy_ns.saturating_sub(self.previous_busy_ns));
        let quiet = all_parked && worked < QUIET_BUSY;
        self.previous_busy_ns = busy_ns;

        match inner.probe.state() {
            ProbeState::Done(result) => {
                inner.record_lag(now, Duration::from_nanos(result.delay_ns));
                self.learn_thread(result.tid, result.unparked);
                inner.probe.reset();
            }
            ProbeState::Pending { .. } | ProbeState::Idle => {}
            ProbeState::Dropped => {
                inner.set_shut_down();
                tracing::info!(
                    "the host tokio runtime has shut down; executor-lag watchdog stopped"
                );
                return None;
            }
        }
        let probe_every = probe_interval(inner.resolution, any_parked, all_parked, quiet);
        if inner.probe.state() == ProbeState::Idle
            && now.saturating_sub(self.last_probe) + inner.resolution / 2 >= probe_every
        {
            inner.probe.spawn(&inner.handle);
            self.last_probe = now;
        }

        if self.open_stalls.is_empty()
            && self.capture.is_some()
            && self.last_capture.elapsed() > STALL_CAPTURE_KEEP
        {
            self.capture = None;
            tracing::debug!("released the stack-capture unwind tables");
        }
        // A probe just spawned is collected at the next look either way.
        let dormant = quiet && self.open_stalls.is_empty();
        if dormant {
            self.dormant_since = Some(now);
        }
        Some(Look {
            wait: if dormant {
                DORMANT_LOOK.max(idle_interval(inner.resolution, inner.threshold))
            } else if !self.open_stalls.is_empty() || !any_parked {
                inner.resolution
            } else if all_parked {
                idle_interval(inner.resolution, inner.threshold)
            } else {
                partly_idle_interval(inner.resolution, inner.threshold)
            },
            dormant,
        })
    }

    /// Remembers the thread a probe ran on; when it was the only worker
    /// not parked, that worker is this thread.
    fn learn_thread(&mut self, tid: u32, unparked: u64) {
        if tid == 0 {
            return;
        }
        if !self.known_threads.contains_key(&tid) && self.known_threads.len() < MAX_KNOWN_THREADS {
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            self.known_threads.insert(tid, name);
        }
        if unparked.count_ones() == 1 {
            let worker = unparked.trailing_zeros() as usize;
            for slot in self.worker_tids.iter_mut() {
                if *slot == Some(tid) {
                    *slot = None;
                }
            }
            if let Some(slot) = self.worker_tids.get_mut(worker) {
                *slot = Some(tid);
            }
        }
    }

    /// Threads that may be the stuck worker: those named like threads that
    /// ran probes (the runtime's workers), else tokio's default name, else
    /// every thread but the agent's own.
    fn candidates(&self, mapped: Option<u32>) -> Vec<(u32, String)> {
        let threads = stall::threads();
        let names: Vec<&str> = self.known_threads.values().map(String::as_str).collect();
        let mut out: Vec<(u32, String)> = threads
            .iter()
            .filter(|(tid, comm)| names.contains(&comm.as_str()) || Some(*tid) == mapped)
            .cloned()
            .collect();
        if out.is_empty() {
            out = threads
                .iter()
                .filter(|(_, comm)| comm.starts_with(TOKIO_DEFAULT_COMM))
                .cloned()
                .collect();
        }
        if out.is_empty() {
            out = threads
                .into_iter()
                .filter(|(_, comm)| !comm.starts_with("stethoscope-"))
                .collect();
        }
        // The mapped thread first, so it is captured in the first batch.
        out.sort_by_key(|(tid, _)| Some(*tid) != mapped);
        out.truncate(MAX_CANDIDATES);
        out
    }

    fn capture_stall(&mut self, id: u64, worker: usize) {
        let mapped = self.worker_tids.get(worker).copied().flatten();
        let other_workers: Vec<u32> = self
            .worker_tids
            .iter()
            .enumerate()
            .filter(|(w, _)| *w != worker)
            .filter_map(|(_, tid)| *tid)
            .collect();
        let candidates = self.candidates(mapped);
        self.last_capture = Instant::now();
        if self.capture.as_ref().is_some_and(StackCapture::poisoned) {
            // Leaked on drop; a fresh one is prepared below.
            self.capture = None;
        }
        let capture = match self.capture.take() {
            Some(capture) => Ok(capture),
            None => StackCapture::prepare(),
        };
        let (raw, error) = match capture {
            Ok(mut capture) => {
                let tids: Vec<u32> = candidates.iter().map(|(tid, _)| *tid).collect();
                let result = capture.capture(&tids, Instant::now() + ANSWER_TIMEOUT);
                self.capture = Some(capture);
                match result {
                    Ok(answers) => (
                        candidates
                            .into_iter()
                            .zip(answers)
                            .filter(|(_, a)| *a != Captured::Gone)
                            .map(|((tid, name), answer)| RawCandidate {
                                tid,
                                name,
                                addresses: match answer {
                                    Captured::Frames(frames, _) => Some(frames),
                                    _ => None,
                                },
                            })
                            .collect(),
                        None,
                    ),
                    Err(error) => (Vec::new(), Some(crate::error::one_line(&error))),
                }
            }
            Err(error) => (Vec::new(), Some(crate::error::one_line(&error))),
        };
        let job = StallJob {
            id,
            candidates: raw,
            mapped,
            other_workers,
            error,
        };
        self.send(job);
    }

    /// Hands a job to the symbolizing thread, starting it if needed.
    fn send(&mut self, job: StallJob) {
        let job = match &self.stall_jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<StallJob>();
        let history = self.inner.stalls.clone();
        let spawned = std::thread::Builder::new()
            .name("stethoscope-stall".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    history.resolve(job);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(job);
                self.stall_jobs = Some(tx);
            }
            Err(error) => tracing::warn!(%error, "cannot start the stall symbolizer thread"),
        }
    }
}

fn read(metrics: &tokio::runtime::RuntimeMetrics, worker: usize) -> WorkerCounters {
    WorkerCounters {
        busy_ns: u64::try_from(metrics.worker_total_busy_duration(worker).as_nanos())
            .unwrap_or(u64::MAX),
        parks: metrics.worker_park_count(worker),
        park_unparks: metrics.worker_park_unpark_count(worker),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_back_off_with_idle_workers_but_never_miss_a_stall() {
        let ms = Duration::from_millis;
        // Defaults: 10 ms resolution, 100 ms threshold.
        assert_eq!(idle_interval(ms(10), ms(100)), ms(50));
        assert_eq!(partly_idle_interval(ms(10), ms(100)), ms(25));
        // Never coarser than the threshold allows, never finer than the resolution.
        assert_eq!(idle_interval(ms(10), ms(20)), ms(10));
        assert_eq!(partly_idle_interval(ms(10), ms(20)), ms(10));
        assert_eq!(partly_idle_interval(ms(1), ms(1000)), ms(250));
    }

    #[test]
    fn probes_wake_parked_workers_rarely() {
        let ms = Duration::from_millis;
        assert_eq!(probe_interval(ms(10), false, false, false), ms(10));
        assert_eq!(probe_interval(ms(10), true, false, false), ms(100));
        assert_eq!(probe_interval(ms(10), true, true, false), ms(500));
        assert_eq!(probe_interval(ms(10), true, true, true), ms(2000));
    }
}
