//! Unwinding a thread interrupted by a signal: [`Unwinding::prepare`] does
//! everything that allocates or takes locks before any signal is sent (lists
//! the loaded modules, copies their `.eh_frame`/`.eh_frame_hdr` into a
//! [framehop](https://docs.rs/framehop) unwinder, allocates a few unwind
//! contexts: framehop's rule cache and a stack-copy buffer each).
//! [`Claimed::walk`] then runs inside the handler: it claims a context from
//! [`Slots`], unwinds the interrupted thread from its `ucontext_t`, and reads
//! stack memory only through [`StackCopy`], which cannot fault.

use std::io;

use framehop::{CacheNative, MustNotAllocateDuringUnwind, Unwinder};

use super::memory::{CopyMethod, StackCopy};
use super::slots::{Claim, Slots};
use super::MAX_DEPTH;
use crate::symbols::modules::loaded_modules;
use crate::symbols::unwind::{build_unwinder, unwind_table_bytes, NativeUnwinder};
use crate::Error;

/// Unwind tables of every loaded module and the scratch space for a few
/// concurrent unwinds, ready for use from a signal handler.
pub(crate) struct Unwinding {
    unwinder: NativeUnwinder,
    contexts: Slots<Scratch>,
    footprint_bytes: usize,
}

/// Scratch state for one unwind in progress: framehop's rule cache and the
/// stack copy.
struct Scratch {
    cache: CacheNative<MustNotAllocateDuringUnwind>,
    stack: StackCopy,
}

impl Unwinding {
    /// Lists the loaded modules, copies their unwind tables and allocates
    /// `concurrency` unwind contexts (at least one). Allocates and reads
    /// files: call it before installing a handler, never inside one.
    pub(crate) fn prepare(concurrency: usize) -> Result<Self, Error> {
        let copy_method = CopyMethod::probe();
        let modules = loaded_modules(true);
        let unwinder = build_unwinder(&modules);
        let scratch = (0..concurrency.max(1))
            .map(|_| {
                StackCopy::new(copy_method).map(|stack| Scratch {
                    cache: CacheNative::new_in(),
                    stack,
                })
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| Error::Os {
                call: "pipe2",
                source,
            })?;
        let unwind_bytes = unwind_table_bytes(&modules);
        let context_bytes = scratch
            .iter()
            .map(|s| std::mem::size_of_val(&s.cache) + s.stack.footprint_bytes())
            .sum::<usize>();
        tracing::debug!(
            modules = modules.len(),
            copy_method = ?copy_method,
            unwind_bytes,
            "unwind tables prepared"
        );
        Ok(Unwinding {
            unwinder,
            contexts: Slots::new(scratch),
            footprint_bytes: unwind_bytes + context_bytes,
        })
    }

    /// No modules and no contexts: every claim fails. Allocates nothing.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn empty() -> Self {
        Unwinding {
            unwinder: NativeUnwinder::new(),
            contexts: Slots::new([]),
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
        Some(Claimed {
            unwinder: &self.unwinder,
            scratch: self.contexts.claim()?,
        })
    }
}

/// An unwind context won by one handler; released on drop.
pub(crate) struct Claimed<'a> {
    unwinder: &'a NativeUnwinder,
    scratch: Claim<'a, Scratch>,
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
        unwind(self.unwinder, &mut self.scratch, context, frames)
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
