//! jemalloc's sample hooks: the agent sees every sampled allocation — its
//! address, size, stack and the labels of the code that allocated — and
//! every free of one.
//!
//! jemalloc 5.3 calls `experimental.hooks.prof_sample(ptr, size, backtrace,
//! length, usize)` after recording a sampled allocation (the backtrace is
//! the one it dumps, from whichever unwinder is installed) and
//! `experimental.hooks.prof_sample_free(ptr, usize)` before freeing one.
//! Both run on the allocating (freeing) thread inside `malloc` (`free`), so
//! the agent reads that thread's label slot there, and:
//! - keeps the live sampled allocations with their labels in a
//!   [`LiveTable`], which heap profiles use to share each stack among the
//!   labels that hold it (`live.rs`);
//! - counts each sampled allocation into the table the open allocation
//!   windows share, if any (`allocs.rs`); with none open that costs one
//!   relaxed load.
//!
//! Safety rules, as for the backtrace hook: nothing here allocates, locks
//! or panics; the states are reached through [`SignalGate`]s. The hooks
//! only run for sampled allocations (one per 512 KiB allocated by default),
//! so their cost is a small fraction of the sample's own (the unwinding).
#![allow(unsafe_code)]

use std::ffi::{c_uint, c_void};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tikv_jemalloc_ctl::raw;

use super::allocs::WindowTable;
use super::live::{stack_hash, LabelledStacks, LiveCounts, LiveTable, LIVE_SLOTS};
use crate::unwind::SignalGate;
use crate::Error;

type SampleHook = unsafe extern "C" fn(*const c_void, usize, *mut *mut c_void, c_uint, usize);
type SampleFreeHook = unsafe extern "C" fn(*const c_void, usize);

const SAMPLE: &[u8] = b"experimental.hooks.prof_sample\0";
const SAMPLE_FREE: &[u8] = b"experimental.hooks.prof_sample_free\0";

/// What the hooks read.
struct HookState {
    live: LiveTable,
}

static GATE: SignalGate<HookState> = SignalGate::new();
/// The table the open allocation windows share.
static WINDOWS: SignalGate<WindowTable> = SignalGate::new();
/// Whether a window table is published: the hook's one check when none is.
static WINDOWS_OPEN: AtomicBool = AtomicBool::new(false);
/// Sampled allocations and frees the hooks saw.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

static USERS: Mutex<usize> = Mutex::new(0);

/// Keeps the sample hooks installed; the last one dropped removes them.
#[derive(Debug)]
pub(crate) struct SampleHooks(());

fn ctl_error(call: &'static str, error: tikv_jemalloc_ctl::Error) -> Error {
    Error::Jemalloc {
        call,
        source: io::Error::other(error),
    }
}

/// Installs the sample hooks (or adds a user to the installed ones).
/// Needs jemalloc with `prof:true`; fails without changing anything, also
/// when another sample hook is installed (the agent does not chain).
pub(crate) fn install() -> Result<SampleHooks, Error> {
    let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
    if *users == 0 {
        let ours = sample_hook as SampleHook as usize;
        // SAFETY: the option holds a function pointer (or null); reading it
        // as a pointer-sized integer is what `raw::read` does with its bytes.
        let current = unsafe { raw::read::<usize>(SAMPLE) }
            .map_err(|e| ctl_error("experimental.hooks.prof_sample", e))?;
        if current != 0 && current != ours {
            return Err(Error::Jemalloc {
                call: "experimental.hooks.prof_sample",
                source: io::Error::other("another prof_sample hook is installed"),
            });
        }
        let state = Box::new(HookState {
            live: LiveTable::new(LIVE_SLOTS),
        });
        retire(GATE.swap(Box::into_raw(state)));
        // The free hook first: a free the table does not know is ignored,
        // while a sample whose free went unseen would stay forever.
        let free = sample_free_hook as SampleFreeHook as usize;
        // SAFETY: both functions have jemalloc's hook signatures
        // (`prof_sample_free_hook_t`, `prof_sample_hook_t`).
        let installed = unsafe { raw::write::<usize>(SAMPLE_FREE, free) }
            .map_err(|e| ctl_error("experimental.hooks.prof_sample_free", e))
            .and_then(|()| {
                // SAFETY: as above.
                unsafe { raw::write::<usize>(SAMPLE, ours) }
                    .map_err(|e| ctl_error("experimental.hooks.prof_sample", e))
            });
        if let Err(error) = installed {
            remove();
            return Err(error);
        }
        tracing::debug!(slots = LIVE_SLOTS, "heap sample hooks installed");
    }
    *users += 1;
    Ok(SampleHooks(()))
}

impl Drop for SampleHooks {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(PoisonError::into_inner);
        *users = users.saturating_sub(1);
        if *users == 0 {
            remove();
            tracing::debug!("heap sample hooks removed");
        }
    }
}

/// Takes the hooks out (the sample hook first) and frees their state.
fn remove() {
    for (name, call) in [
        (SAMPLE, "experimental.hooks.prof_sample"),
        (SAMPLE_FREE, "experimental.hooks.prof_sample_free"),
    ] {
        // SAFETY: jemalloc accepts a null sample hook (no hook).
        if let Err(error) = unsafe { raw::write::<usize>(name, 0) } {
            // The hooks stay and find no state below: they return at once.
            tracing::warn!(%error, call, "cannot remove a heap sample hook");
        }
    }
    retire(GATE.swap(std::ptr::null_mut()));
}

/// Frees a state once no hook can still be reading it (leaked if one did
/// not finish within a second, never observed).
fn retire(old: *mut HookState) {
    if old.is_null() {
        return;
    }
    if !GATE.drain() {
        tracing::warn!("a heap sample hook did not finish within 1 s; leaking its table");
        return;
    }
    // SAFETY: `old` came from Box::into_raw in `install`; it is no longer
    // published, and every hook that could have seen it has left.
    drop(unsafe { Box::from_raw(old) });
}

/// Publishes the table the allocation windows share; it must stay valid
/// until [`retract_window_table`] returns true.
pub(crate) fn publish_window_table(table: *mut WindowTable) {
    WINDOWS.swap(table);
    WINDOWS_OPEN.store(true, Ordering::SeqCst);
}

/// Hides the window table from the hook and waits for hooks using it to
/// finish: true when it may be freed (false after a second, never
/// observed: then it must be leaked).
pub(crate) fn retract_window_table() -> bool {
    WINDOWS_OPEN.store(false, Ordering::SeqCst);
    WINDOWS.swap(std::ptr::null_mut());
    WINDOWS.drain()
}

/// The labelled live samples per stack hash (see [`LiveTable::labelled`]),
/// and how full the table is; None while the hooks are not installed.
pub(crate) fn live_labels(interval: f64) -> Option<(LabelledStacks, LiveCounts)> {
    GATE.enter(|state| (state.live.labelled(interval), state.live.counts()))
}

/// How full the live table is (None while the hooks are not installed),
/// and the sampled allocations and frees seen since the process started.
pub(crate) fn counters() -> (Option<LiveCounts>, u64, u64) {
    (
        GATE.enter(|state| state.live.counts()),
        ALLOCATIONS.load(Ordering::Relaxed),
        FREES.load(Ordering::Relaxed),
    )
}

/// jemalloc's `prof_sample_hook_t`.
unsafe extern "C" fn sample_hook(
    ptr: *const c_void,
    _size: usize,
    backtrace: *mut *mut c_void,
    length: c_uint,
    usize: usize,
) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let frames: &[usize] = if backtrace.is_null() {
        &[]
    } else {
        // SAFETY: jemalloc passes the sample's backtrace vector with its
        // length; it lives in the stack's record at least until the sampled
        // object is freed. Return addresses are pointer-sized integers.
        unsafe { std::slice::from_raw_parts(backtrace.cast::<usize>(), length as usize) }
    };
    let labels = crate::labels::slot::read_in_signal_handler();
    let stack = stack_hash(frames.iter().map(|&a| (a as u64).saturating_sub(1)));
    GATE.enter(|state| state.live.insert(ptr as usize, stack, labels, usize as u64));
    if WINDOWS_OPEN.load(Ordering::Relaxed) {
        WINDOWS.enter(|table| table.record(stack, frames, labels, usize as u64));
    }
}

/// jemalloc's `prof_sample_free_hook_t`.
unsafe extern "C" fn sample_free_hook(ptr: *const c_void, _usize: usize) {
    FREES.fetch_add(1, Ordering::Relaxed);
    GATE.enter(|state| state.live.remove(ptr as usize));
}
