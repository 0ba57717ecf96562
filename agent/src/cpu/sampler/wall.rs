//! The wall-clock sampler's timer thread (`stethoscope-wall`): at every
//! tick, for each chosen thread, it reads the thread's scheduler state
//! (`/proc/self/task/<tid>/stat`) and queues it the wall-clock signal
//! (`SIGRTMIN + 6`) with `rt_tgsigqueueinfo`, the state and the thread's
//! slot in the signal's value. The thread's handler unwinds its own stack
//! — running or blocked, as the signal wakes it — and records the sample.
//!
//! A thread whose previous signal is still pending (it blocks the signal,
//! or has not been scheduled since) is skipped and the sample counted as
//! dropped, so no thread ever has more than one of our signals queued.
//! Handlers are installed with `SA_RESTART`: a thread blocked in `read` or
//! a futex resumes its call; calls the kernel never restarts (`epoll_wait`,
//! `nanosleep` with its remaining time, `poll`) return `EINTR`, which tokio,
//! mio and the standard library retry.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::clock;
use super::handler::{HandlerState, QueuedInfo, Target};
use crate::cpu::{SampleState, WallThreads};
use crate::threads::{self, RunState, StateReader};

/// How often the list of threads to sample is refreshed.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The handler state, handed to the timer thread.
struct StatePtr(*const HandlerState);

// SAFETY: the timer thread only reads the state's atomics and read-only
// fields, and is joined before the state is retracted and freed.
unsafe impl Send for StatePtr {}

/// The running timer thread; stops it when dropped.
pub(crate) struct WallTimer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WallTimer {
    /// Starts signalling `threads` `hz` times per second. `state` must stay
    /// valid until the returned timer is dropped.
    pub(crate) fn start(
        state: *const HandlerState,
        signal: libc::c_int,
        hz: u32,
        threads: WallThreads,
    ) -> std::io::Result<WallTimer> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let state = StatePtr(state);
            std::thread::Builder::new()
                .name("stethoscope-wall".into())
                .spawn(move || {
                    let state = state;
                    // SAFETY: valid until this thread is joined (see `StatePtr`).
                    let state = unsafe { &*state.0 };
                    run(state, signal, hz, threads, &stop);
                })?
        };
        Ok(WallTimer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WallTimer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // It notices within one period (at most 1 s, at hz=1).
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    state: &HandlerState,
    signal: libc::c_int,
    hz: u32,
    threads: WallThreads,
    stop: &AtomicBool,
) {
    let period_ns = 1_000_000_000 / u64::from(hz.max(1));
    let refresh_ns = u64::try_from(REFRESH_EVERY.as_nanos()).unwrap_or(u64::MAX);
    let me = threads::current_tid();
    let mut reader = StateReader::default();
    let mut next_refresh = 0u64;
    let mut next = clock::monotonic_ns();
    while !stop.load(Ordering::Acquire) {
        let now = clock::monotonic_ns();
        if now >= next_refresh {
            let tids = match threads {
                WallThreads::All => threads::all_threads(),
                WallThreads::Workers => threads::workers(),
            };
            assign(&state.targets, &tids, me);
            reader.keep_only(&tids);
            next_refresh = now.saturating_add(refresh_ns);
        }
        for (index, target) in state.targets.iter().enumerate() {
            let tid = target.tid.load(Ordering::Relaxed);
            if tid == 0 {
                continue;
            }
            if target.pending.load(Ordering::Acquire) {
                state.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let run_state = match reader.read(tid) {
                RunState::Running => SampleState::Running,
                RunState::Waiting => SampleState::Waiting,
                RunState::Absent => {
                    if threads == WallThreads::Workers {
                        threads::forget_worker(tid);
                    }
                    continue;
                }
            };
            target.pending.store(true, Ordering::Release);
            if !send(signal, state.pid, tid, index, run_state) {
                // Gone since the last refresh.
                target.pending.store(false, Ordering::Release);
                if threads == WallThreads::Workers {
                    threads::forget_worker(tid);
                }
            }
        }
        // The next tick; ticks missed while this thread was not scheduled
        // are skipped, not made up in a burst.
        next = next.saturating_add(period_ns).max(clock::monotonic_ns());
        sleep_until(next);
    }
}

/// Puts `tids` (but `me`) into the target slots, keeping threads that are
/// already there in their slots; at most as many as there are slots.
fn assign(targets: &[Target], tids: &[u32], me: u32) {
    for target in targets {
        let tid = target.tid.load(Ordering::Relaxed);
        if tid != 0 && !tids.contains(&tid) {
            target.tid.store(0, Ordering::Release);
        }
    }
    for &tid in tids {
        if tid == me || targets.iter().any(|t| t.tid.load(Ordering::Relaxed) == tid) {
            continue;
        }
        let Some(free) = targets.iter().find(|t| t.tid.load(Ordering::Relaxed) == 0) else {
            return;
        };
        free.pending.store(false, Ordering::Release);
        free.tid.store(tid, Ordering::Release);
    }
}

/// Queues the wall-clock signal to thread `tid` with its slot and state.
fn send(signal: libc::c_int, pid: i32, tid: u32, index: usize, state: SampleState) -> bool {
    let info = QueuedInfo::new(signal, pid, index, state.code());
    // SAFETY: rt_tgsigqueueinfo to a thread of our own process, with a
    // fully initialized siginfo of the kernel's size and SI_QUEUE code;
    // the signal's handler is installed before the timer starts.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid as libc::pid_t,
            signal,
            &info as *const QueuedInfo,
        )
    };
    sent == 0
}

/// Sleeps until `CLOCK_MONOTONIC` reaches `deadline_ns`.
fn sleep_until(deadline_ns: u64) {
    let deadline = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: an absolute sleep on a valid timespec; an interruption just
    // ends this tick early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &deadline,
            std::ptr::null_mut(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_keeps_slots_stable_and_skips_the_timer_thread() {
        let targets: Vec<Target> = (0..3).map(|_| Target::default()).collect();
        assign(&targets, &[10, 11, 12, 13], 11);
        let tids = |t: &[Target]| -> Vec<u32> {
            t.iter().map(|t| t.tid.load(Ordering::Relaxed)).collect()
        };
        assert_eq!(tids(&targets), [10, 12, 13]);
        targets[1].pending.store(true, Ordering::Relaxed);
        assign(&targets, &[13, 12, 14], 11);
        assert_eq!(tids(&targets), [14, 12, 13], "12 and 13 keep their slots");
        assert!(
            targets[1].pending.load(Ordering::Relaxed),
            "and their pending signal"
        );
        assert!(!targets[0].pending.load(Ordering::Relaxed));
    }
}
