//! The SIGPROF handler: timestamp, unwind, enqueue. Nothing here locks,
//! allocates or calls into libgcc; unwinding is [`Unwinding`]'s, which reads
//! memory only through a copy that cannot fault.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::clock;
use super::ring::{SampleRing, THREAD_NAME_LEN};
use crate::unwind::Unwinding;

/// Everything a handler needs, published through [`ACTIVE`].
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

static ACTIVE: AtomicPtr<HandlerState> = AtomicPtr::new(std::ptr::null_mut());
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Makes `state` visible to the handler. Returns the pointer to hand back
/// to [`retract`].
pub(crate) fn publish(state: Box<HandlerState>) -> *mut HandlerState {
    let raw = Box::into_raw(state);
    ACTIVE.store(raw, Ordering::SeqCst);
    raw
}

/// Hides the state from handlers and waits for running handlers to finish.
/// Returns the state if it may be freed; after a (never observed) 1 s wait
/// it is leaked instead, because freeing memory a handler still reads would
/// crash the host.
pub(crate) fn retract(raw: *mut HandlerState) -> Option<Box<HandlerState>> {
    let _ = ACTIVE.compare_exchange(
        raw,
        std::ptr::null_mut(),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 {
        if Instant::now() > deadline {
            tracing::warn!("a SIGPROF handler did not finish within 1 s; leaking its state");
            return None;
        }
        std::thread::yield_now();
    }
    // SAFETY: `raw` came from `publish` (Box::into_raw); no handler can
    // reach it any more: ACTIVE no longer points to it and every handler
    // that loaded it has decremented IN_FLIGHT.
    Some(unsafe { Box::from_raw(raw) })
}

/// The SIGPROF handler installed with `SA_SIGINFO`.
pub(crate) extern "C" fn on_sigprof(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: reading and restoring this thread's errno, which the
    // syscalls below may change under the interrupted code's feet.
    let saved_errno = unsafe { *libc::__errno_location() };
    // Increment before loading ACTIVE: `retract` clears ACTIVE first and then
    // waits for IN_FLIGHT to drain, so a handler either sees null or is
    // waited for.
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let state = ACTIVE.load(Ordering::SeqCst);
    if !state.is_null() && !context.is_null() {
        // SAFETY: non-null ACTIVE points to a live HandlerState (see
        // `retract`); the kernel passes a valid ucontext_t with SA_SIGINFO.
        unsafe { (*state).record(&*context.cast::<libc::ucontext_t>()) };
    }
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = saved_errno };
}

impl HandlerState {
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
