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
        let id = create_and_arm(tid, self.signal, self.interval, self.interval)?;
        self.timers.insert(tid, id);
        Ok(())
    }
}

/// Creates a timer on thread `tid`'s CPU clock sending `signal` to that
/// thread, first after `value`, then every `interval`; returns its kernel
/// id. Raw system calls only: the seccomp probe's child runs it too.
fn create_and_arm(
    tid: u32,
    signal: libc::c_int,
    value: libc::timespec,
    interval: libc::timespec,
) -> io::Result<libc::c_int> {
    // SAFETY: a zeroed sigevent is valid; the fields set are the ones
    // SIGEV_THREAD_ID reads.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = signal;
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
        it_interval: interval,
        it_value: value,
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
    Ok(id)
}

/// What the seccomp probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerProbe {
    /// No seccomp filter: nothing to probe.
    Unfiltered,
    /// Under a filter, a child made, armed and deleted a per-thread timer.
    Allowed,
    /// Under a filter, the child's calls failed (with this errno).
    Refused(i32),
    /// Under a filter, the child was killed (by this signal; `SIGSYS` for
    /// a filter's kill action): calling them here would kill the process.
    Killed(i32),
    /// The child could not be started or waited for.
    Unknown,
}

impl TimerProbe {
    /// Whether this process may call `timer_create` and `timer_settime`.
    pub(crate) fn may_create(self) -> bool {
        matches!(self, TimerProbe::Unfiltered | TimerProbe::Allowed)
    }
}

/// Whether per-thread CPU timers may be tried in this process, decided once.
///
/// A seccomp filter's action for a forbidden call may be an error or the
/// death of the process (systemd's `SystemCallFilter=` without
/// `SystemCallErrorNumber=`, a `SCMP_ACT_KILL` profile). The calls are
/// tried directly where no filter applies (`Seccomp: 0` in
/// `/proc/self/status`). Under a filter, they are tried first in a child
/// that shares this process's memory (`clone(CLONE_VM | CLONE_VFORK)`: no
/// copy of the address space, only the calling thread waits, for the
/// microseconds the child runs) and inherits the filter: a kill takes the
/// child, and the sampler uses `ITIMER_PROF`.
pub(crate) fn probe() -> TimerProbe {
    static PROBE: std::sync::OnceLock<TimerProbe> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        let probe = if crate::unwind::seccomp_filtered() {
            probe_in_child()
        } else {
            TimerProbe::Unfiltered
        };
        tracing::debug!(?probe, "per-thread CPU timer probe");
        probe
    })
}

/// Bytes of stack the probe's child runs on.
const PROBE_STACK: usize = 64 * 1024;

fn probe_in_child() -> TimerProbe {
    let mut stack = vec![0u8; PROBE_STACK];
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + PROBE_STACK) & !15;
    // SAFETY: errno is this thread's; the child shares it (same memory and
    // thread pointer) and may change it, so it is put back below.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the child runs `probe_child` on its own stack, which lives
    // until the waitpid below; it makes raw system calls only and exits.
    // With CLONE_VFORK this thread resumes once it has exited. SIGCHLD as
    // its exit signal is what emulators (qemu-user) accept for a fork.
    let pid = unsafe {
        libc::clone(
            probe_child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    let result = if pid <= 0 {
        TimerProbe::Unknown
    } else {
        wait_for_probe(pid)
    };
    // SAFETY: restoring this thread's errno.
    unsafe { *libc::__errno_location() = errno };
    drop(stack);
    result
}

/// Longest wait for the probe's child. With `CLONE_VFORK` it has exited
/// when `clone` returns; an emulator that turns the call into a plain fork
/// (qemu-user) runs it alongside, and a forked emulator can hang.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// What the probe's child `pid` did, killing it if it takes longer than
/// [`PROBE_WAIT`].
fn wait_for_probe(pid: libc::pid_t) -> TimerProbe {
    let deadline = Instant::now() + PROBE_WAIT;
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: polling our own child into our int.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if waited == pid {
            break;
        }
        let interrupted =
            waited < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if waited < 0 && !interrupted {
            // Reaped by someone else (SIGCHLD ignored, a reaper thread).
            return TimerProbe::Unknown;
        }
        if Instant::now() >= deadline {
            // SAFETY: killing and reaping the child we started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, libc::__WALL);
            }
            tracing::debug!("the CPU timer probe's child hung; killed");
            return TimerProbe::Unknown;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if libc::WIFSIGNALED(status) {
        TimerProbe::Killed(libc::WTERMSIG(status))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        TimerProbe::Allowed
    } else if libc::WIFEXITED(status) {
        TimerProbe::Refused(libc::WEXITSTATUS(status))
    } else {
        TimerProbe::Unknown
    }
}

/// The probe's child: makes, arms (far in the future: it never fires) and
/// deletes a timer on its own CPU clock, as the sampler would; exits 0, or
/// with the errno of the call that failed.
extern "C" fn probe_child(_: *mut libc::c_void) -> libc::c_int {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    let hour = libc::timespec {
        tv_sec: 3600,
        tv_nsec: 0,
    };
    match create_and_arm(tid, libc::SIGPROF, hour, hour) {
        Ok(id) => {
            delete(id);
            0
        }
        Err(error) => error.raw_os_error().unwrap_or(255).clamp(1, 255),
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
        // `join` returns when the thread's tid word is cleared; under
        // qemu-user the host thread still runs its exit path then, so the
        // kernel may list it a moment longer.
        let deadline = Instant::now() + Duration::from_secs(5);
        timers.refresh();
        while timers.timers.contains_key(&tid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            timers.refresh();
        }
        assert!(!timers.timers.contains_key(&tid), "{timers:?}");
    }

    #[test]
    fn a_child_can_make_a_timer_where_no_filter_forbids_it() {
        // No seccomp filter in the unit tests: the child's calls succeed.
        assert_eq!(probe_in_child(), TimerProbe::Allowed);
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
