//! The CPU sampler's clock: one POSIX timer per thread of the process, on
//! that thread's own CPU clock, each sending SIGPROF to its own thread
//! (`SIGEV_THREAD_ID`) every `1/hz` of the CPU time the thread consumes —
//! Go's choice since 1.18 — or, where the kernel or a sandbox refuses
//! per-thread timers, the process-wide `ITIMER_PROF`.
//!
//! Why per thread: `ITIMER_PROF` is one timer for the whole process, and
//! its signal is *process*-directed. At high rates the kernel fires it at
//! every scheduler tick on every CPU running a thread of the process, and
//! a second signal while one is still pending is dropped; a signal that
//! arrives while its thread has SIGPROF blocked (inside a handler) goes to
//! any other thread, even a sleeping one. Rescaling to the process's CPU
//! keeps the total true but not who gets it: in the e2e suite at 999 Hz
//! two burning threads were credited 94–97 % of the CPU their own clocks
//! said they used, the difference landing on other threads
//! (docs/overhead.md, "Attribution per thread").
//!
//! A per-thread timer's signal is thread-directed: it waits for its own
//! thread, and the kernel counts the periods it could not deliver
//! (`si_overrun`). The handler weights each sample by `1 + overrun`
//! periods, so a thread's samples add up to the CPU time its clock
//! measured, whatever the tick rate allows and whatever else runs.
//!
//! Threads started after the sampler are found by [`ThreadTimers::refresh`],
//! which the control thread calls every [`REFRESH_INTERVAL`]: it lists
//! `/proc/self/task` when the number of threads changed (one `fstat` of the
//! open directory, whose link count is the thread count plus two) and at
//! least every [`FULL_REFRESH_INTERVAL`] (a thread that exited and another
//! that started in between). Their CPU before that (and that of threads too
//! short-lived to be seen) is in the process's CPU total, which profiles
//! are still rescaled to.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// How often the control thread looks for threads without a timer.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// Longest time between two listings of the process's threads.
const FULL_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Most threads given a timer; beyond it, threads are sampled only through
/// the rescaling to the process's CPU time (each timer holds a kernel
/// object and a queued-signal slot counted against `RLIMIT_SIGPENDING`).
pub(crate) const MAX_TIMED_THREADS: usize = 4096;

/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)` of `<linux/posix-timers.h>`:
/// the clock id of thread `tid`'s scheduler CPU time.
fn thread_cpu_clock(tid: u32) -> libc::clockid_t {
    const CPUCLOCK_PERTHREAD_MASK: libc::clockid_t = 4;
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    ((!(tid as libc::clockid_t)) << 3) | CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED
}

/// Timers of the threads of this process, by thread id.
#[derive(Debug)]
pub(crate) struct ThreadTimers {
    interval: libc::timespec,
    signal: libc::c_int,
    /// Kernel timer id per thread id.
    timers: HashMap<u32, libc::c_int>,
    /// `/proc/self/task`, kept open to read the thread count cheaply.
    task_dir: Option<std::fs::File>,
    /// The thread count at the last listing, and when that was.
    listed: (u64, Instant),
}

impl ThreadTimers {
    /// Arms a timer for every thread of the process, firing `signal` every
    /// `1/hz` of that thread's CPU time.
    ///
    /// # Errors
    /// The kernel's error when not even the calling thread's timer can be
    /// made (a seccomp filter, an emulator without CPU-clock timers): the
    /// caller then falls back to `ITIMER_PROF`.
    pub(crate) fn start(hz: u32, signal: libc::c_int) -> io::Result<Self> {
        let period_ns = 1_000_000_000 / i64::from(hz.max(1));
        let mut timers = ThreadTimers {
            interval: libc::timespec {
                tv_sec: (period_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (period_ns % 1_000_000_000) as libc::c_long,
            },
            signal,
            timers: HashMap::new(),
            task_dir: std::fs::File::open("/proc/self/task").ok(),
            listed: (0, Instant::now()),
        };
        // The calling thread first: if its timer cannot be made, none can.
        let me = crate::threads::current_tid();
        timers.arm(me)?;
        timers.list();
        Ok(timers)
    }

    /// Threads with a timer now.
    pub(crate) fn len(&self) -> usize {
        self.timers.len()
    }

    /// Arms timers for threads started since the last look and deletes
    /// those of threads that have exited, when the thread count changed or
    /// the last listing is [`FULL_REFRESH_INTERVAL`] old.
    pub(crate) fn refresh(&mut self) {
        let count = self.thread_count();
        if count.is_some_and(|c| c == self.listed.0)
            && self.listed.1.elapsed() < FULL_REFRESH_INTERVAL
        {
            return;
        }
        self.list();
    }

    /// The process's thread count (the task directory's link count minus
    /// its `.` and `..`).
    fn thread_count(&self) -> Option<u64> {
        let metadata = self.task_dir.as_ref()?.metadata().ok()?;
        Some(metadata.nlink().saturating_sub(2))
    }

    /// Lists the threads and arms or deletes timers accordingly.
    fn list(&mut self) {
        let count = self.thread_count().unwrap_or(0);
        let alive = crate::threads::all_threads();
        self.timers.retain(|tid, id| {
            let keep = alive.binary_search(tid).is_ok();
            if !keep {
                delete(*id);
            }
            keep
        });
        for tid in alive {
            if self.timers.len() >= MAX_TIMED_THREADS {
                break;
            }
            if !self.timers.contains_key(&tid) {
                // A thread that exited since the listing has no clock any
                // more: nothing to arm.
                let _ = self.arm(tid);
            }
        }
        self.listed = (count, Instant::now());
    }

    fn arm(&mut self, tid: u32) -> io::Result<()> {
        // SAFETY: a zeroed sigevent is valid; the fields set are the ones
        // SIGEV_THREAD_ID reads.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = self.signal;
        event.sigev_notify_thread_id = tid as libc::c_int;
        let mut id: libc::c_int = 0;
        // SAFETY: raw timer_create with a valid sigevent and an out
        // parameter we own (the kernel's timer id is an int).
        let created = unsafe {
            libc::syscall(
                libc::SYS_timer_create,
                thread_cpu_clock(tid),
                &mut event as *mut libc::sigevent,
                &mut id as *mut libc::c_int,
            )
        };
        if created != 0 {
            return Err(io::Error::last_os_error());
        }
        let spec = libc::itimerspec {
            it_interval: self.interval,
            it_value: self.interval,
        };
        // SAFETY: raw timer_settime of the timer just created, with a
        // valid itimerspec and no old-value pointer.
        let armed = unsafe {
            libc::syscall(
                libc::SYS_timer_settime,
                id,
                0,
                &spec as *const libc::itimerspec,
                std::ptr::null_mut::<libc::itimerspec>(),
            )
        };
        if armed != 0 {
            let error = io::Error::last_os_error();
            delete(id);
            return Err(error);
        }
        self.timers.insert(tid, id);
        Ok(())
    }
}

impl Drop for ThreadTimers {
    fn drop(&mut self) {
        for (_, id) in self.timers.drain() {
            delete(id);
        }
    }
}

fn delete(id: libc::c_int) {
    // SAFETY: raw timer_delete of a timer this set created; deleting also
    // discards its signal if one is still queued.
    unsafe { libc::syscall(libc::SYS_timer_delete, id) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_gets_a_timer_and_exited_ones_lose_theirs() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel::<u32>();
        let thread = std::thread::spawn(move || {
            let _ = ready.send(crate::threads::current_tid());
            let _ = wait.recv();
        });
        let tid = started.recv().unwrap();
        // SIGURG's default action is to ignore it, should a test thread
        // burn a whole second of CPU meanwhile.
        let mut timers = ThreadTimers::start(1, libc::SIGURG);
        let Ok(timers) = timers.as_mut() else {
            return; // The kernel refuses per-thread timers here.
        };
        assert!(timers.timers.contains_key(&tid), "{timers:?}");
        assert!(timers.len() >= 2);
        drop(go);
        thread.join().unwrap();
        // The count changed: the next refresh lists the threads again.
        timers.refresh();
        assert!(!timers.timers.contains_key(&tid), "{timers:?}");
    }

    #[test]
    fn the_thread_clock_id_is_the_kernels() {
        // pthread_getcpuclockid of the calling thread would give the
        // clock id glibc builds the same way.
        let me = crate::threads::current_tid();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into our timespec.
        let read = unsafe { libc::clock_gettime(thread_cpu_clock(me), &mut ts) };
        assert_eq!(read, 0, "{}", io::Error::last_os_error());
    }
}
