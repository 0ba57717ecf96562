//! The probe task: the watchdog spawns one onto the host runtime every
//! resolution tick (from outside, so it lands in the injection queue like
//! any work the runtime is handed) and measures how long it waits for its
//! first poll. While it runs, the probe notes the OS thread it runs on and
//! which workers are not parked: when it is the only one, that worker index
//! belongs to this thread, which is how the watchdog learns which thread to
//! signal for a stuck worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

const IDLE: u8 = 0;
const PENDING: u8 = 1;
const DONE: u8 = 2;
/// The runtime dropped the probe without polling it (it is shutting down).
const DROPPED: u8 = 3;

/// Shared between the watchdog and the probe in flight (one at a time).
#[derive(Debug)]
pub(crate) struct ProbeSlot {
    state: AtomicU8,
    epoch: Instant,
    spawned_ns: AtomicU64,
    polled_ns: AtomicU64,
    tid: AtomicU32,
    /// Bit `i` set: worker `i` was not parked when the probe ran.
    unparked: AtomicU64,
}

/// The outcome of the probe in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeState {
    /// None in flight: spawn one.
    Idle,
    /// Spawned at this time (since the epoch, ns), not polled yet.
    Pending { spawned_ns: u64 },
    /// Polled.
    Done(ProbeResult),
    /// The runtime dropped it unpolled: it has shut down.
    Dropped,
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeResult {
    /// Time from spawn to first poll, nanoseconds.
    pub(crate) delay_ns: u64,
    /// Kernel thread id it ran on.
    pub(crate) tid: u32,
    /// Workers not parked while it ran (bit per worker index, up to 64).
    pub(crate) unparked: u64,
}

impl ProbeSlot {
    pub(crate) fn new(epoch: Instant) -> Self {
        ProbeSlot {
            state: AtomicU8::new(IDLE),
            epoch,
            spawned_ns: AtomicU64::new(0),
            polled_ns: AtomicU64::new(0),
            tid: AtomicU32::new(0),
            unparked: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> ProbeState {
        match self.state.load(Ordering::Acquire) {
            PENDING => ProbeState::Pending {
                spawned_ns: self.spawned_ns.load(Ordering::Relaxed),
            },
            DONE => ProbeState::Done(ProbeResult {
                delay_ns: self
                    .polled_ns
                    .load(Ordering::Relaxed)
                    .saturating_sub(self.spawned_ns.load(Ordering::Relaxed)),
                tid: self.tid.load(Ordering::Relaxed),
                unparked: self.unparked.load(Ordering::Relaxed),
            }),
            DROPPED => ProbeState::Dropped,
            _ => ProbeState::Idle,
        }
    }

    /// Marks the result consumed.
    pub(crate) fn reset(&self) {
        self.state.store(IDLE, Ordering::Release);
    }

    /// Spawns a probe onto `handle`'s runtime.
    pub(crate) fn spawn(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        self.spawned_ns.store(self.now_ns(), Ordering::Relaxed);
        self.state.store(PENDING, Ordering::Release);
        let probe = Probe {
            slot: Arc::clone(self),
            metrics: handle.metrics(),
            ran: false,
        };
        // The JoinHandle is dropped: the probe is detached.
        drop(handle.spawn(probe));
    }
}

/// The future the runtime polls once.
struct Probe {
    slot: Arc<ProbeSlot>,
    metrics: tokio::runtime::RuntimeMetrics,
    ran: bool,
}

impl Future for Probe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        let slot = &self.slot;
        slot.polled_ns.store(slot.now_ns(), Ordering::Relaxed);
        slot.tid.store(current_tid(), Ordering::Relaxed);
        slot.unparked
            .store(unparked_workers(&self.metrics), Ordering::Relaxed);
        slot.state.store(DONE, Ordering::Release);
        // Lets wall-clock profiles with threads=workers find this worker.
        crate::labels::slot::note_thread();
        self.ran = true;
        Poll::Ready(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.ran {
            self.slot.state.store(DROPPED, Ordering::Release);
        }
    }
}

/// The calling thread's OS thread id, asked of the kernel once per thread
/// (the probe runs on host workers); 0 where there is none to signal.
fn current_tid() -> u32 {
    thread_local! {
        static TID: u32 = crate::threads::current_tid();
    }
    TID.with(|tid| *tid)
}

/// Bit per worker (up to 64) whose park/unpark count is even: not parked.
pub(crate) fn unparked_workers(metrics: &tokio::runtime::RuntimeMetrics) -> u64 {
    let workers = metrics.num_workers();
    if workers > 64 {
        return 0;
    }
    (0..workers)
        .filter(|&w| metrics.worker_park_unpark_count(w).is_multiple_of(2))
        .fold(0u64, |mask, w| mask | (1 << w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reports_its_delay_thread_and_worker() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let slot = Arc::new(ProbeSlot::new(Instant::now()));
        assert_eq!(slot.state(), ProbeState::Idle);
        slot.spawn(runtime.handle());
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !matches!(slot.state(), ProbeState::Done(_)) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let ProbeState::Done(result) = slot.state() else {
            panic!("probe did not run: {:?}", slot.state());
        };
        assert!(result.delay_ns < 1_000_000_000);
        assert_ne!(result.tid, 0);
        assert_ne!(
            result.unparked, 0,
            "the worker running the probe is not parked"
        );
        slot.reset();
        drop(runtime);
        // A shut-down runtime drops new probes unpolled.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        slot.spawn(&handle);
        assert_eq!(slot.state(), ProbeState::Dropped);
    }
}
