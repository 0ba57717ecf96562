//! The SIGPROF handler: timestamp, unwind, enqueue. Nothing here locks,
//! allocates or calls into libgcc; unwinding is [`Unwinding`]'s, which reads
//! memory only through a copy that cannot fault.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use super::clock;
use super::ring::{SampleRing, THREAD_NAME_LEN};
use crate::unwind::{SignalGate, Unwinding};

/// Everything a handler needs, published through `GATE`.
pub(crate) struct HandlerState {
    pub(crate) unwinding: Unwinding,
    pub(crate) ring: SampleRing,
    /// Samples recorded into the ring.
    pub(crate) recorded: AtomicU64,
    /// Samples lost because every unwind context was busy or the ring was full.
    pub(crate) dropped: AtomicU64,
    /// Time spent inside the handler, summed over all signals, in nanoseconds.
    pub(crate) handler_ns: AtomicU64,
}

static GATE: SignalGate<HandlerState> = SignalGate::new();

/// Makes `state` visible to the handler. Returns the pointer to hand back
/// to [`retract`].
pub(crate) fn publish(state: Box<HandlerState>) -> *mut HandlerState {
    let raw = Box::into_raw(state);
    GATE.publish(raw);
    raw
}

/// Hides the state from handlers and waits for running handlers to finish.
/// Returns the state if it may be freed; after a (never observed) 1 s wait
/// it is leaked instead, because freeing memory a handler still reads would
/// crash the host.
pub(crate) fn retract(raw: *mut HandlerState) -> Option<Box<HandlerState>> {
    if !GATE.retract(raw) {
        tracing::warn!("a SIGPROF handler did not finish within 1 s; leaking its state");
        return None;
    }
    // SAFETY: `raw` came from `publish` (Box::into_raw); no handler can
    // reach it any more (see `SignalGate::retract`).
    Some(unsafe { Box::from_raw(raw) })
}

/// The SIGPROF handler installed with `SA_SIGINFO`.
pub(crate) extern "C" fn on_sigprof(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    GATE.enter_signal(context, HandlerState::record);
}

impl HandlerState {
    /// Records the interrupted thread's stack and labels.
    fn record(&self, context: &libc::ucontext_t) {
        let timestamp_ns = clock::monotonic_ns();
        let Some(mut claimed) = self.unwinding.claim() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(mut slot) = self.ring.reserve() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let sample = slot.sample();
        sample.timestamp_ns = timestamp_ns;
        // SAFETY: gettid and prctl(PR_GET_NAME) are plain syscalls; the name
        // buffer is 16 bytes as PR_GET_NAME requires.
        unsafe {
            sample.tid = libc::syscall(libc::SYS_gettid) as u32;
            sample.thread_name = [0; THREAD_NAME_LEN];
            libc::prctl(libc::PR_GET_NAME, sample.thread_name.as_mut_ptr());
        }
        sample.labels = crate::labels::slot::read_in_signal_handler();
        sample.depth = claimed.walk(context, &mut sample.frames);
        slot.publish();
        drop(claimed);
        self.recorded.fetch_add(1, Ordering::Relaxed);
        self.handler_ns.fetch_add(
            clock::monotonic_ns().saturating_sub(timestamp_ns),
            Ordering::Relaxed,
        );
    }
}
