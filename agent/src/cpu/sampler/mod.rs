//! Linux SIGPROF sampler: a process CPU-time timer (`ITIMER_PROF`), a
//! signal handler that unwinds with framehop into a lock-free ring, and the
//! unwind tables of every loaded module, prepared before the first signal.
#![allow(unsafe_code)]

mod handler;
mod ring;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::unwind::signals::{self, InstallError};
use crate::unwind::{cpu_count, Unwinding};
use crate::Error;
use handler::HandlerState;

pub(crate) use ring::RawSample;

/// Cumulative counters of one sampler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SamplerCounters {
    pub(crate) recorded: u64,
    pub(crate) dropped: u64,
    pub(crate) handler_ns: u64,
}

/// Ring slots per session: at 250 signals/s on each of 16 busy CPUs this is
/// ~250 ms of samples, ten times the control thread's drain interval.
const RING_SLOTS: usize = 1024;

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

/// A running sampler. Sampling stops when it is dropped, and SIGPROF is
/// left ignored (never `SIG_DFL`, whose action would kill the process if a
/// late signal arrived).
pub(crate) struct Sampler {
    state: *mut HandlerState,
    footprint_bytes: usize,
}

// SAFETY: `state` is only dereferenced immutably (all shared fields are
// atomics or read-only) and freed in Drop after handlers are retracted.
unsafe impl Send for Sampler {}

impl Sampler {
    /// Prepares unwind tables and starts sampling at `hz` per CPU-second.
    pub(crate) fn start(hz: u32) -> Result<Self, Error> {
        check_no_foreign_profiler()?;
        let unwinding = Unwinding::prepare(MAX_CONCURRENT_UNWINDS.min(cpu_count().max(2)))?;
        let ring = ring::SampleRing::new(RING_SLOTS);
        let footprint_bytes = unwinding.footprint_bytes() + ring.footprint_bytes();
        let state = handler::publish(Box::new(HandlerState {
            unwinding,
            ring,
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            handler_ns: AtomicU64::new(0),
        }));
        let sampler = Sampler {
            state,
            footprint_bytes,
        };
        install_handler()?;
        set_timer(hz)?;
        tracing::debug!(hz, footprint_bytes, "CPU sampler armed");
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
        if let Err(error) = set_timer(0) {
            tracing::warn!(%error, "cannot disarm ITIMER_PROF");
        }
        signals::ignore(libc::SIGPROF);
        // Dropped here, after the handler can no longer see it.
        drop(handler::retract(self.state));
        tracing::debug!("CPU sampler stopped; SIGPROF ignored");
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
    signals::install(
        libc::SIGPROF,
        on_sigprof_address(),
        crate::unwind::capture_signal(),
    )
    .map_err(|error| match error {
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
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGPROF - 1)) != 0)
}
