//! The SIGPROF handler: timestamp, unwind, enqueue. Nothing here locks,
//! allocates or calls into libgcc; memory is read only through
//! [`StackCopy`], which cannot fault.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use framehop::{CacheNative, MustNotAllocateDuringUnwind, Unwinder};

use super::clock;
use super::memory::StackCopy;
use super::ring::{SampleRing, MAX_DEPTH, THREAD_NAME_LEN};
use crate::profile::unwind::NativeUnwinder;

/// Scratch state for one unwind in progress: framehop's rule cache and the
/// stack copy. A handler claims one with `busy`; there are a few so that
/// signals on several CPUs at once can all be recorded.
pub(crate) struct UnwindContext {
    busy: AtomicBool,
    scratch: UnsafeCell<Scratch>,
}

struct Scratch {
    cache: CacheNative<MustNotAllocateDuringUnwind>,
    stack: StackCopy,
}

impl UnwindContext {
    pub(crate) fn new(stack: StackCopy) -> Self {
        Self {
            busy: AtomicBool::new(false),
            scratch: UnsafeCell::new(Scratch {
                cache: CacheNative::new_in(),
                stack,
            }),
        }
    }

    pub(crate) fn footprint_bytes(&self) -> usize {
        // SAFETY: called by the owner while no handler can hold the context
        // (before publication or after retraction) or for a size estimate
        // that only reads an immutable length.
        let stack = unsafe { &(*self.scratch.get()).stack };
        stack.footprint_bytes() + std::mem::size_of::<CacheNative<MustNotAllocateDuringUnwind>>()
    }
}

/// Everything a handler needs, published through [`ACTIVE`].
pub(crate) struct HandlerState {
    pub(crate) unwinder: NativeUnwinder,
    pub(crate) contexts: Box<[UnwindContext]>,
    pub(crate) ring: SampleRing,
    /// Samples recorded into the ring.
    pub(crate) recorded: AtomicU64,
    /// Samples lost because every unwind context was busy or the ring was full.
    pub(crate) dropped: AtomicU64,
    /// Time spent inside the handler, summed over all signals, in nanoseconds.
    pub(crate) handler_ns: AtomicU64,
}

// SAFETY: `UnwindContext::scratch` is only accessed by the handler that won
// its `busy` flag; everything else is immutable or atomic.
unsafe impl Sync for UnwindContext {}

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
        let Some(claimed) = self.contexts.iter().find(|c| {
            c.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(mut slot) = self.ring.reserve() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            claimed.busy.store(false, Ordering::Release);
            return;
        };
        // SAFETY: we won `busy`, so this scratch is ours until released.
        let scratch = unsafe { &mut *claimed.scratch.get() };
        let sample = slot.sample();
        sample.timestamp_ns = timestamp_ns;
        // SAFETY: gettid and prctl(PR_GET_NAME) are plain syscalls; the name
        // buffer is 16 bytes as PR_GET_NAME requires.
        unsafe {
            sample.tid = libc::syscall(libc::SYS_gettid) as u32;
            sample.thread_name = [0; THREAD_NAME_LEN];
            libc::prctl(libc::PR_GET_NAME, sample.thread_name.as_mut_ptr());
        }
        sample.depth = unwind(&self.unwinder, scratch, context, &mut sample.frames);
        slot.publish();
        claimed.busy.store(false, Ordering::Release);
        self.recorded.fetch_add(1, Ordering::Relaxed);
        self.handler_ns.fetch_add(
            clock::monotonic_ns().saturating_sub(timestamp_ns),
            Ordering::Relaxed,
        );
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
