//! How code that runs at an arbitrary point of another thread — a signal
//! handler, jemalloc's allocation hook — finds its state: a pointer
//! published before that code can run and swapped out after, with a count
//! of runs in progress so the owner knows when the old state may be freed.
//! Shared by the SIGPROF sampler, the stuck-worker capture and the heap
//! backtrace hook.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The published state of one kind of handler.
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
    #[cfg_attr(not(any(test, feature = "cpu", feature = "runtime")), allow(dead_code))]
    pub(crate) fn publish(&self, state: *mut T) {
        self.active.store(state, Ordering::SeqCst);
    }

    /// Hides `state` from handlers and waits for running ones to finish.
    /// Returns false if one was still running after 1 s (never observed):
    /// the state must then be leaked, because freeing memory a handler
    /// still reads would crash the host.
    #[cfg_attr(not(any(feature = "cpu", feature = "runtime")), allow(dead_code))]
    pub(crate) fn retract(&self, state: *mut T) -> bool {
        let _ = self.active.compare_exchange(
            state,
            std::ptr::null_mut(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.drain()
    }

    /// Publishes `state` in place of the current one and returns the
    /// current one, which may be freed once [`drain`](Self::drain) returns
    /// true.
    #[cfg_attr(not(feature = "heap"), allow(dead_code))]
    pub(crate) fn swap(&self, state: *mut T) -> *mut T {
        self.active.swap(state, Ordering::SeqCst)
    }

    /// Waits for the handlers running now to finish; false after 1 s.
    pub(crate) fn drain(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Runs `run` with the published state, if there is one, preserving
    /// the interrupted code's `errno`. Async-signal-safe; no allocation,
    /// no lock.
    pub(crate) fn enter<R>(&self, run: impl FnOnce(&T) -> R) -> Option<R> {
        // SAFETY: reading and restoring this thread's errno, which the
        // syscalls `run` makes may change under the interrupted code's feet.
        let saved_errno = unsafe { *libc::__errno_location() };
        // Increment before loading `active`: the owner clears or swaps it
        // first and then waits for `in_flight` to drain, so a handler
        // either sees the new value or is waited for.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let state = self.active.load(Ordering::SeqCst);
        let result = if state.is_null() {
            None
        } else {
            // SAFETY: a non-null pointer is a published state, valid until
            // the owner has seen `in_flight` drop to zero after hiding it.
            Some(run(unsafe { &*state }))
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: see above.
        unsafe { *libc::__errno_location() = saved_errno };
        result
    }

    /// The body of an `SA_SIGINFO` handler: runs `record` with the
    /// published state and the interrupted context, if both exist.
    /// Async-signal-safe.
    #[cfg_attr(not(any(feature = "cpu", feature = "runtime")), allow(dead_code))]
    pub(crate) fn enter_signal(
        &self,
        context: *mut libc::c_void,
        record: impl FnOnce(&T, &libc::ucontext_t),
    ) {
        if context.is_null() {
            return;
        }
        self.enter(|state| {
            // SAFETY: the kernel passes a valid ucontext_t to SA_SIGINFO
            // handlers, checked non-null above.
            record(state, unsafe { &*context.cast::<libc::ucontext_t>() })
        });
    }
}
