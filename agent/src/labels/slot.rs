//! The per-thread label slot: the id of the labels of the code running on
//! this thread, written around every poll of a labelled future and read by
//! the samplers' signal handlers on the same thread.
//!
//! Why a thread-local read is fine inside a signal handler here: the slot
//! is a `const`-initialized `AtomicU32` without a destructor, so reading it
//! never runs lazy initialization, never registers a destructor and never
//! fails after the thread's other thread-locals are gone; the crate is an
//! rlib linked into the executable, whose thread-locals live in the static
//! TLS block set up when the thread was created, so the access is a load
//! relative to the thread pointer — no allocation, no lock. (A copy of this
//! crate inside a `dlopen`ed library would reach its thread-locals through
//! `__tls_get_addr`, which may allocate on a thread's first access; the
//! agent does not support that embedding.) The handler interrupts its own
//! thread, so it sees the slot exactly as the interrupted code left it; the
//! compiler fences keep the slot's stores where the code puts them
//! relative to the labelled work.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering};

/// The id of "no labels" (interned sets are numbered from 1).
pub(crate) const NO_LABELS: u32 = 0;

thread_local! {
    /// The label-set id of the code running on this thread (0: none).
    static SLOT: AtomicU32 = const { AtomicU32::new(NO_LABELS) };
    /// Whether this thread's kind (tokio worker or not) was recorded.
    static SEEN: Cell<bool> = const { Cell::new(false) };
}

/// The id in this thread's slot.
#[inline]
pub(crate) fn current() -> u32 {
    SLOT.with(|slot| slot.load(Ordering::Relaxed))
}

/// Puts `id` in this thread's slot; returns the id it replaces, to hand
/// back to [`restore`].
#[inline]
pub(crate) fn enter(id: u32) -> u32 {
    let previous = SLOT.with(|slot| {
        let previous = slot.load(Ordering::Relaxed);
        slot.store(id, Ordering::Relaxed);
        previous
    });
    // Samples taken from here on carry `id`: the labelled work may not be
    // moved above the store.
    compiler_fence(Ordering::SeqCst);
    previous
}

/// Puts back the id [`enter`] replaced.
#[inline]
pub(crate) fn restore(previous: u32) {
    compiler_fence(Ordering::SeqCst);
    SLOT.with(|slot| slot.store(previous, Ordering::Relaxed));
}

/// The id in this thread's slot, for a signal handler interrupting this
/// thread. Async-signal-safe (see the module docs).
#[cfg_attr(not(all(feature = "cpu", native_unwind)), allow(dead_code))]
#[inline]
pub(crate) fn read_in_signal_handler() -> u32 {
    current()
}

/// Records, once per thread, whether it is a tokio worker thread, so the
/// wall-clock sampler's `threads=workers` finds it.
#[inline]
pub(crate) fn note_thread() {
    if !SEEN.with(Cell::get) {
        SEEN.with(|seen| seen.set(true));
        if tokio::runtime::worker_index().is_some() {
            crate::threads::register_current_worker();
        }
    }
}
