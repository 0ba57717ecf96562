//! Linux samplers. CPU: a CPU-time timer per thread (`timers`, falling
//! back to the process-wide `ITIMER_PROF`) and a SIGPROF handler. Wall-clock: a timer thread signalling each chosen
//! thread (`wall`). Both handlers unwind with framehop into a lock-free
//! ring, with the unwind tables of every loaded module prepared before the
//! first signal.
#![allow(unsafe_code)]

mod handler;
mod ring;
mod timers;
mod wall;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ProfileMode, WallThreads};
use crate::cpu::MAX_WALL_THREADS;
use crate::unwind::signals::{self, InstallError};
use crate::unwind::{cpu_count, wall_signal, Unwinding};
use crate::Error;
use handler::{Gate, HandlerState, Target};
use timers::ThreadTimers;
use wall::WallTimer;

pub(crate) use timers::REFRESH_INTERVAL as THREAD_REFRESH_INTERVAL;

pub(crate) use ring::RawSample;

/// Cumulative counters of one sampler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SamplerCounters {
    pub(crate) recorded: u64,
    pub(crate) dropped: u64,
    pub(crate) handler_ns: u64,
}

/// Ring slots per CPU session: at 250 signals/s on each of 16 busy CPUs
/// this is ~250 ms of samples, ten times the control thread's drain
/// interval. Wall-clock sessions size theirs for `hz` × threads.
const RING_SLOTS: usize = 1024;

/// Most ring slots of a wall-clock session (~8.7 MB).
const MAX_WALL_RING_SLOTS: usize = 8192;

/// Most handlers that can unwind at the same instant; a signal arriving
/// while all are busy is counted as dropped.
const MAX_CONCURRENT_UNWINDS: usize = 8;

/// Signal-safe clocks.
pub(crate) mod clock {
    #![allow(unsafe_code)]

    fn read(clock: libc::clockid_t) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own; it is
        // async-signal-safe (vDSO) and cannot fail for these clock ids.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }

    /// `CLOCK_MONOTONIC`, in nanoseconds.
    pub(crate) fn monotonic_ns() -> u64 {
        read(libc::CLOCK_MONOTONIC)
    }

    /// CPU time consumed by all threads of this process, in nanoseconds
    /// (the same accounting as `utime + stime` in `/proc/self/stat`).
    pub(crate) fn process_cpu_ns() -> u64 {
        read(libc::CLOCK_PROCESS_CPUTIME_ID)
    }
}

/// A running sampler. Sampling stops when it is dropped, and its signal is
/// left ignored (never `SIG_DFL`, whose action would kill the process if a
/// late signal arrived).
pub(crate) struct Sampler {
    state: *mut HandlerState,
    footprint_bytes: usize,
    gate: Gate,
    /// Wall-clock mode: the timer thread (stopped first when dropped).
    timer: Option<WallTimer>,
    /// CPU mode: what sends SIGPROF.
    cpu_timer: Option<CpuTimer>,
}

/// What sends SIGPROF in CPU mode.
#[derive(Debug)]
enum CpuTimer {
    /// A CPU-clock timer per thread (thread-directed signals, overruns
    /// counted).
    PerThread(ThreadTimers),
    /// The process-wide `ITIMER_PROF`, where per-thread timers are refused.
    Process,
}

// SAFETY: `state` is only dereferenced immutably (all shared fields are
// atomics or read-only) and freed in Drop after handlers are retracted.
unsafe impl Send for Sampler {}

impl Sampler {
    /// Prepares unwind tables and starts sampling at `hz`: per CPU-second
    /// in CPU mode, per second of real time per thread in wall-clock mode.
    pub(crate) fn start(hz: u32, mode: ProfileMode) -> Result<Self, Error> {
        match mode {
            ProfileMode::Cpu => Self::start_cpu(hz),
            ProfileMode::Wall(threads) => Self::start_wall(hz, threads),
        }
    }

    fn prepare(gate: Gate, ring_slots: usize, targets: usize) -> Result<Self, Error> {
        // Signals go to threads, not CPUs (per-thread CPU timers, the
        // wall-clock timer thread): a handler preempted on one CPU may still
        // hold its context while others run, and a dropped sample loses the
        // periods it stood for.
        let concurrency = MAX_CONCURRENT_UNWINDS.min(2 * cpu_count().max(2));
        let unwinding = Unwinding::prepare(concurrency)?;
        let ring = ring::SampleRing::new(ring_slots);
        let targets: Box<[Target]> = (0..targets).map(|_| Target::default()).collect();
        let footprint_bytes = unwinding.footprint_bytes()
            + ring.footprint_bytes()
            + targets.len() * std::mem::size_of::<Target>();
        let state = handler::publish(
            gate,
            Box::new(HandlerState {
                unwinding,
                ring,
                recorded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                handler_ns: AtomicU64::new(0),
                targets,
                pid: std::process::id() as i32,
            }),
        );
        Ok(Sampler {
            state,
            footprint_bytes,
            gate,
            timer: None,
            cpu_timer: None,
        })
    }

    fn start_cpu(hz: u32) -> Result<Self, Error> {
        check_no_foreign_profiler()?;
        let mut sampler = Self::prepare(Gate::Cpu, RING_SLOTS, 0)?;
        install_handler()?;
        let probe = timers::probe();
        let timers = if probe.may_create() {
            ThreadTimers::start(hz, libc::SIGPROF)
        } else {
            Err(io::Error::other(format!(
                "the seccomp filter forbids them ({probe:?})"
            )))
        };
        let cpu_timer = match timers {
            Ok(timers) => {
                tracing::debug!(threads = timers.len(), "per-thread CPU timers armed");
                CpuTimer::PerThread(timers)
            }
            Err(error) => {
                tracing::debug!(%error, "no per-thread CPU timers; sampling with ITIMER_PROF");
                set_timer(hz)?;
                CpuTimer::Process
            }
        };
        sampler.cpu_timer = Some(cpu_timer);
        tracing::debug!(
            hz,
            clock = sampler.clock(),
            footprint_bytes = sampler.footprint_bytes,
            "CPU sampler armed"
        );
        Ok(sampler)
    }

    /// What drives the sampler: `per-thread CPU timers`, `ITIMER_PROF`, or
    /// `wall-clock timer thread`.
    pub(crate) fn clock(&self) -> &'static str {
        match self.cpu_timer {
            Some(CpuTimer::PerThread(_)) => "per-thread CPU timers",
            Some(CpuTimer::Process) => "ITIMER_PROF",
            None => "wall-clock timer thread",
        }
    }

    /// Gives threads started since the last call their CPU timer and
    /// forgets exited ones (per-thread timers only).
    pub(crate) fn refresh_threads(&mut self) {
        if let Some(CpuTimer::PerThread(timers)) = &mut self.cpu_timer {
            timers.refresh();
        }
    }

    fn start_wall(hz: u32, threads: WallThreads) -> Result<Self, Error> {
        let signal = wall_signal();
        let handler = handler::on_wall_signal as *const () as usize;
        if !signals::is_free(signal, handler).map_err(|source| Error::Os {
            call: "sigaction",
            source,
        })? {
            return Err(Error::ForeignProfiler(
                "the wall-clock signal (SIGRTMIN+6) has another handler in this process",
            ));
        }
        let expected = match threads {
            WallThreads::All => crate::threads::all_threads().len(),
            WallThreads::Workers => crate::threads::workers().len(),
        };
        let per_drain = (hz as usize).saturating_mul(expected.max(1)) / 10;
        let ring_slots = per_drain.clamp(RING_SLOTS, MAX_WALL_RING_SLOTS);
        let mut sampler = Self::prepare(Gate::Wall, ring_slots, MAX_WALL_THREADS)?;
        signals::install(signal, handler).map_err(|error| match error {
            InstallError::Taken => Error::ForeignProfiler(
                "the wall-clock signal (SIGRTMIN+6) has another handler in this process",
            ),
            InstallError::Os(source) => Error::Os {
                call: "sigaction",
                source,
            },
        })?;
        let timer =
            WallTimer::start(sampler.state, signal, hz, threads).map_err(|source| Error::Os {
                call: "spawning the wall-clock timer thread",
                source,
            })?;
        sampler.timer = Some(timer);
        tracing::debug!(
            hz,
            ?threads,
            footprint_bytes = sampler.footprint_bytes,
            "wall-clock sampler armed"
        );
        Ok(sampler)
    }

    /// Memory the sampler holds (unwind tables, ring, stack copies), in bytes.
    pub(crate) fn footprint_bytes(&self) -> usize {
        self.footprint_bytes
    }

    fn state(&self) -> &HandlerState {
        // SAFETY: `state` stays valid until Drop retracts it.
        unsafe { &*self.state }
    }

    /// Hands every sample recorded since the last drain to `visit`.
    pub(crate) fn drain(&mut self, visit: impl FnMut(&RawSample)) -> usize {
        self.state().ring.drain(visit)
    }

    /// Samples recorded and dropped, and time spent in the handler, since start.
    pub(crate) fn counters(&self) -> SamplerCounters {
        let state = self.state();
        SamplerCounters {
            recorded: state.recorded.load(Ordering::Relaxed),
            dropped: state.dropped.load(Ordering::Relaxed),
            handler_ns: state.handler_ns.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        match self.gate {
            Gate::Cpu => {
                match self.cpu_timer.take() {
                    // Deleting a timer also discards its queued signal.
                    Some(CpuTimer::PerThread(timers)) => drop(timers),
                    Some(CpuTimer::Process) | None => {
                        if let Err(error) = set_timer(0) {
                            tracing::warn!(%error, "cannot disarm ITIMER_PROF");
                        }
                    }
                }
                signals::ignore(libc::SIGPROF);
            }
            Gate::Wall => {
                // No signal is sent once the timer thread has stopped;
                // ignoring the signal discards any still queued.
                drop(self.timer.take());
                signals::ignore(wall_signal());
            }
        }
        // Dropped here, after the handler can no longer see it.
        drop(handler::retract(self.gate, self.state));
        tracing::debug!(gate = ?self.gate, "sampler stopped; its signal ignored");
    }
}

fn os_error(call: &'static str) -> Error {
    Error::Os {
        call,
        source: io::Error::last_os_error(),
    }
}

/// Refuses to start when something else (pprof-rs, gperftools, a second
/// copy of this crate) owns SIGPROF or has armed the profiling timer.
fn check_no_foreign_profiler() -> Result<(), Error> {
    // SAFETY: a zeroed itimerval is a valid out-parameter.
    let timer = unsafe {
        let mut timer: libc::itimerval = std::mem::zeroed();
        if libc::getitimer(libc::ITIMER_PROF, &mut timer) != 0 {
            return Err(os_error("getitimer"));
        }
        timer
    };
    if timer.it_value.tv_sec != 0 || timer.it_value.tv_usec != 0 {
        return Err(Error::ForeignProfiler(
            "ITIMER_PROF is already armed (is pprof-rs or gperftools profiling?)",
        ));
    }
    let free =
        signals::is_free(libc::SIGPROF, on_sigprof_address()).map_err(|source| Error::Os {
            call: "sigaction",
            source,
        })?;
    if !free {
        return Err(foreign_handler());
    }
    Ok(())
}

fn foreign_handler() -> Error {
    Error::ForeignProfiler("SIGPROF has another handler (is pprof-rs or gperftools installed?)")
}

fn on_sigprof_address() -> usize {
    handler::on_sigprof as *const () as usize
}

/// Installs the SIGPROF handler. The runtime watchdog's stack capture
/// waits until it returns instead of unwinding from inside it.
fn install_handler() -> Result<(), Error> {
    signals::install(libc::SIGPROF, on_sigprof_address()).map_err(|error| match error {
        InstallError::Taken => foreign_handler(),
        InstallError::Os(source) => Error::Os {
            call: "sigaction",
            source,
        },
    })
}

/// Arms `ITIMER_PROF` at `hz` signals per CPU-second of the process, or
/// disarms it with 0.
fn set_timer(hz: u32) -> Result<(), Error> {
    let interval_us = if hz == 0 {
        0
    } else {
        (1_000_000 / i64::from(hz)).max(1)
    };
    let interval = libc::timeval {
        tv_sec: (interval_us / 1_000_000) as libc::time_t,
        tv_usec: (interval_us % 1_000_000) as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: setitimer with a valid itimerval and no old-value pointer.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) } != 0 {
        return Err(os_error("setitimer"));
    }
    Ok(())
}

/// Whether SIGPROF is currently ignored (read from the kernel's view in
/// `/proc/self/status`).
#[cfg(test)]
pub(crate) fn sigprof_ignored() -> bool {
    signals::is_ignored(libc::SIGPROF)
}

/// Whether the wall-clock signal is currently ignored.
#[cfg(test)]
pub(crate) fn wall_signal_ignored() -> bool {
    signals::is_ignored(wall_signal())
}
