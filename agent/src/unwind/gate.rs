//! How a signal handler finds its state: a pointer published before
//! signals are sent and retracted after, with a count of handlers running
//! so the owner knows when the state may be freed. Shared by the SIGPROF
//! sampler and the stuck-worker capture.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The published state of one kind of signal handler.
pub(crate) struct SignalGate<T> {
    active: AtomicPtr<T>,
    in_flight: AtomicUsize,
}

impl<T> SignalGate<T> {
    pub(crate) const fn new() -> Self {
        SignalGate {
            active: AtomicPtr::new(std::ptr::null_mut()),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Makes `state` visible to handlers. It must stay valid until
    /// [`retract`](Self::retract) returns true.
    pub(crate) fn publish(&self, state: *mut T) {
        self.active.store(state, Ordering::SeqCst);
    }

    /// Hides `state` from handlers and waits for running ones to finish.
    /// Returns false if one was still running after 1 s (never observed):
    /// the state must then be leaked, because freeing memory a handler
    /// still reads would crash the host.
    pub(crate) fn retract(&self, state: *mut T) -> bool {
        let _ = self.active.compare_exchange(
            state,
            std::ptr::null_mut(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// The body of an `SA_SIGINFO` handler: runs `record` with the
    /// published state and the interrupted context, if both exist,
    /// preserving the interrupted code's `errno`. Async-signal-safe.
    pub(crate) fn enter(
        &self,
        context: *mut libc::c_void,
        record: impl FnOnce(&T, &libc::ucontext_t),
    ) {
        // SAFETY: reading and restoring this thread's errno, which the
        // syscalls `record` makes may change under the interrupted code's feet.
        let saved_errno = unsafe { *libc::__errno_location() };
        // Increment before loading `active`: `retract` clears it first and
        // then waits for `in_flight` to drain, so a handler either sees
        // null or is waited for.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let state = self.active.load(Ordering::SeqCst);
        if !state.is_null() && !context.is_null() {
            // SAFETY: a non-null pointer is a published state, valid until
            // `retract` has seen `in_flight` drop to zero; the kernel passes
            // a valid ucontext_t to SA_SIGINFO handlers.
            unsafe { record(&*state, &*context.cast::<libc::ucontext_t>()) };
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: see above.
        unsafe { *libc::__errno_location() = saved_errno };
    }
}
