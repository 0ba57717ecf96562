//! Signal-safe stack unwinding, shared by the CPU sampler (SIGPROF) and the
//! stuck-worker stack capture of the runtime watchdog.
//!
//! [`Unwinding::prepare`] does everything that allocates or takes locks
//! before any signal is sent: it lists the loaded modules, copies their
//! `.eh_frame`/`.eh_frame_hdr` into a [framehop](https://docs.rs/framehop)
//! unwinder, and allocates a few unwind contexts (framehop's rule cache and
//! a stack-copy buffer each). [`Unwinding::walk`] then runs inside a signal
//! handler: it claims a context with one atomic swap, unwinds the
//! interrupted thread from its `ucontext_t`, and reads stack memory only
//! through [`StackCopy`], which cannot fault. No locks, no allocation, no
//! libgcc.
#![allow(unsafe_code)]

mod gate;
mod memory;

pub(crate) use gate::SignalGate;

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use framehop::{CacheNative, MustNotAllocateDuringUnwind, Unwinder};

use crate::symbols::modules::loaded_modules;
use crate::symbols::unwind::{build_unwinder, unwind_table_bytes, NativeUnwinder};
use crate::Error;
use memory::{CopyMethod, StackCopy};

/// Deepest stack recorded; deeper stacks keep their innermost frames.
pub(crate) const MAX_DEPTH: usize = 128;

/// Offset from `SIGRTMIN` of the signal the runtime watchdog sends to a
/// stuck worker thread to capture its stack. glibc and musl reserve the
/// signals below `SIGRTMIN`; `SIGRTMIN` itself and `SIGRTMAX` are the ones
/// other runtimes and tools (.NET, Valgrind, POSIX timers) pick first.
pub(crate) const CAPTURE_SIGNAL_OFFSET: libc::c_int = 7;

/// The stack-capture signal's number in this process (`SIGRTMIN + 7`).
pub(crate) fn capture_signal() -> libc::c_int {
    libc::SIGRTMIN() + CAPTURE_SIGNAL_OFFSET
}

/// Unwind tables of every loaded module and the scratch space for a few
/// concurrent unwinds, ready for use from a signal handler.
pub(crate) struct Unwinding {
    unwinder: NativeUnwinder,
    contexts: Box<[UnwindContext]>,
    footprint_bytes: usize,
}

/// Scratch state for one unwind in progress: framehop's rule cache and the
/// stack copy. A handler claims one with `busy`.
struct UnwindContext {
    busy: AtomicBool,
    scratch: UnsafeCell<Scratch>,
}

struct Scratch {
    cache: CacheNative<MustNotAllocateDuringUnwind>,
    stack: StackCopy,
}

// SAFETY: `scratch` is only accessed by the handler that won `busy` (or by
// the owner while no handler can reach the context); everything else is
// immutable or atomic.
unsafe impl Sync for UnwindContext {}

impl Unwinding {
    /// Lists the loaded modules, copies their unwind tables and allocates
    /// `concurrency` unwind contexts (at least one). Allocates and reads
    /// files: call it before installing a handler, never inside one.
    pub(crate) fn prepare(concurrency: usize) -> Result<Self, Error> {
        let copy_method = CopyMethod::probe();
        let modules = loaded_modules(true);
        let unwinder = build_unwinder(&modules);
        let contexts = (0..concurrency.max(1))
            .map(|_| {
                StackCopy::new(copy_method).map(|stack| UnwindContext {
                    busy: AtomicBool::new(false),
                    scratch: UnsafeCell::new(Scratch {
                        cache: CacheNative::new_in(),
                        stack,
                    }),
                })
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| Error::Os {
                call: "pipe2",
                source,
            })?
            .into_boxed_slice();
        let unwind_bytes = unwind_table_bytes(&modules);
        let context_bytes = contexts.len()
            * std::mem::size_of::<CacheNative<MustNotAllocateDuringUnwind>>()
            + contexts
                .iter()
                // SAFETY: no handler can hold a context before `prepare` returns.
                .map(|c| unsafe { &*c.scratch.get() }.stack.footprint_bytes())
                .sum::<usize>();
        tracing::debug!(
            modules = modules.len(),
            copy_method = ?copy_method,
            unwind_bytes,
            "unwind tables prepared"
        );
        Ok(Unwinding {
            unwinder,
            contexts,
            footprint_bytes: unwind_bytes + context_bytes,
        })
    }

    /// No modules and no contexts: every claim fails. Allocates nothing.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn empty() -> Self {
        Unwinding {
            unwinder: NativeUnwinder::new(),
            contexts: Box::new([]),
            footprint_bytes: 0,
        }
    }

    /// Memory held by the unwind tables and contexts, in bytes.
    pub(crate) fn footprint_bytes(&self) -> usize {
        self.footprint_bytes
    }

    /// Claims a free unwind context, or `None` when every context is busy
    /// with another unwind. Async-signal-safe (one atomic swap per context).
    pub(crate) fn claim(&self) -> Option<Claimed<'_>> {
        let context = self.contexts.iter().find(|c| {
            c.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        Some(Claimed {
            unwinder: &self.unwinder,
            context,
        })
    }
}

/// An unwind context won by one handler; released on drop.
pub(crate) struct Claimed<'a> {
    unwinder: &'a NativeUnwinder,
    context: &'a UnwindContext,
}

impl Claimed<'_> {
    /// Walks the interrupted thread's stack into `frames` (lookup
    /// addresses, innermost first) and returns the depth.
    /// Async-signal-safe.
    pub(crate) fn walk(
        &mut self,
        context: &libc::ucontext_t,
        frames: &mut [u64; MAX_DEPTH],
    ) -> usize {
        // SAFETY: this claim won `busy`, so the scratch is ours until drop.
        let scratch = unsafe { &mut *self.context.scratch.get() };
        unwind(self.unwinder, scratch, context, frames)
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.context.busy.store(false, Ordering::Release);
    }
}

/// Walks the interrupted thread's stack into `frames` (lookup addresses,
/// innermost first) and returns the depth.
fn unwind(
    unwinder: &NativeUnwinder,
    scratch: &mut Scratch,
    context: &libc::ucontext_t,
    frames: &mut [u64; MAX_DEPTH],
) -> usize {
    let (pc, sp, regs) = registers(context, unwinder);
    let Scratch { cache, stack } = scratch;
    stack.reset(sp);
    let mut read_stack = |address: u64| stack.read_u64(address);
    let mut iter = unwinder.iter_frames(pc, regs, cache, &mut read_stack);
    let mut depth = 0;
    while depth < MAX_DEPTH {
        match iter.next() {
            Ok(Some(frame)) => {
                frames[depth] = frame.address_for_lookup();
                depth += 1;
            }
            // End of stack, or a frame that cannot be unwound: keep what we have.
            Ok(None) | Err(_) => break,
        }
    }
    depth
}

#[cfg(target_arch = "x86_64")]
fn registers(
    context: &libc::ucontext_t,
    _unwinder: &NativeUnwinder,
) -> (u64, u64, framehop::UnwindRegsNative) {
    let gregs = &context.uc_mcontext.gregs;
    let ip = gregs[libc::REG_RIP as usize] as u64;
    let sp = gregs[libc::REG_RSP as usize] as u64;
    let bp = gregs[libc::REG_RBP as usize] as u64;
    (ip, sp, framehop::UnwindRegsNative::new(ip, sp, bp))
}

#[cfg(target_arch = "aarch64")]
fn registers(
    context: &libc::ucontext_t,
    unwinder: &NativeUnwinder,
) -> (u64, u64, framehop::UnwindRegsNative) {
    use framehop::aarch64::PtrAuthMask;
    let mcontext = &context.uc_mcontext;
    // The interrupted instruction is `pc`; `lr` is the caller's return
    // address and only becomes a frame after unwinding the leaf.
    let pc = mcontext.pc;
    let sp = mcontext.sp;
    let fp = mcontext.regs[29];
    let lr = mcontext.regs[30];
    let mask = PtrAuthMask::from_max_known_address(unwinder.max_known_code_address());
    (
        pc,
        sp,
        framehop::UnwindRegsNative::new_with_ptr_auth_mask(mask, lr, sp, fp),
    )
}

/// Number of CPUs this process may use (at least 1).
pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
