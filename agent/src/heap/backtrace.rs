//! Fast stacks for jemalloc's sampled allocations (Linux x86_64 and aarch64).
//!
//! jemalloc records the stack of every sampled allocation with libgcc's
//! `_Unwind_Backtrace`, which finds and interprets the DWARF call-frame
//! information of every frame afresh: tens of microseconds for the 40-odd
//! frames of a request handler under tokio, paid inside `malloc` on the
//! host's own threads. jemalloc lets a program replace that function
//! (`experimental.hooks.prof_backtrace`); we install one that walks the same
//! call-frame information with framehop and its per-address rule cache, and
//! reads the stack directly.
//!
//! Safety rules, because this runs inside `malloc` on any thread:
//! - nothing here allocates, locks or panics; state is reached through a
//!   [`SignalGate`] and scratch caches are claimed from [`Slots`], as in the
//!   signal handlers of the CPU sampler and the stuck-worker capture;
//! - stack memory is read only between the current stack pointer and the end
//!   of the thread's stack mapping (found once per thread in
//!   `/proc/self/maps`), so a wrong unwind rule cannot fault;
//! - whenever our walk is not certainly right — a frame outside every module
//!   known to us (code `dlopen`ed since), an unwinding error, a stack we do not
//!   know (fibers, signal stacks), every cache busy — the allocation is
//!   handed to jemalloc's own unwinder instead, so stacks are never worse
//!   than without this hook.
//!
//! On aarch64 the walk starts from the hook's `pc`, `sp`, `x29` and `x30`;
//! return addresses signed with pointer authentication (`paciasp` in
//! libraries built with `-mbranch-protection`) are stripped with a mask
//! derived from the highest code address loaded, as libgcc strips them.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_uint, c_void};
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use framehop::{CacheNative, MustNotAllocateDuringUnwind, UnwindRegsNative, Unwinder};
use tikv_jemalloc_ctl::raw;

use crate::symbols::modules::{loaded_modules, LoadedModule};
use crate::symbols::unwind::{build_unwinder, unwind_table_bytes, NativeUnwinder};
use crate::unwind::{SignalGate, Slots};
use crate::Error;

type BacktraceHook = unsafe extern "C" fn(*mut *mut c_void, *mut c_uint, c_uint);

const HOOK: &[u8] = b"experimental.hooks.prof_backtrace\0";

/// The state our hook reads; none when it should defer to jemalloc.
static GATE: SignalGate<HookState> = SignalGate::new();
/// jemalloc's own backtrace function, as found when we installed ours.
static FALLBACK: AtomicUsize = AtomicUsize::new(0);
/// Stacks our unwinder captured.
static FAST: AtomicU64 = AtomicU64::new(0);
/// Stacks handed to jemalloc's unwinder.
static DEFERRED: AtomicU64 = AtomicU64::new(0);

/// Install/refresh/uninstall bookkeeping; never touched by the hook.
struct Control {
    users: usize,
    /// Code ranges of the modules the active unwinder knows.
    modules: Vec<Range<u64>>,
}

static CONTROL: Mutex<Control> = Mutex::new(Control {
    users: 0,
    modules: Vec::new(),
});

/// Times a thread may look its stack up in `/proc/self/maps` before it is
/// left to jemalloc's unwinder for good (it keeps switching stacks).
const MAX_STACK_LOOKUPS: u32 = 8;

/// Keeps our backtrace hook installed; the last one dropped restores
/// jemalloc's own.
#[derive(Debug)]
pub(crate) struct FastBacktraces(());

impl Drop for FastBacktraces {
    fn drop(&mut self) {
        let mut control = CONTROL.lock().unwrap_or_else(PoisonError::into_inner);
        control.users = control.users.saturating_sub(1);
        if control.users > 0 {
            return;
        }
        let fallback = FALLBACK.load(Ordering::SeqCst);
        if fallback != 0 {
            // SAFETY: restoring the function jemalloc had installed, with the
            // option's exact type (a function pointer, pointer-sized).
            if let Err(error) = unsafe { raw::write::<usize>(HOOK, fallback) } {
                // Our hook stays installed and defers to jemalloc's (no state
                // is published below), which is correct, only one call slower.
                tracing::warn!(%error, "cannot restore jemalloc's backtrace hook");
            }
        }
        retire(GATE.swap(std::ptr::null_mut()));
        control.modules.clear();
        tracing::debug!("heap backtraces: jemalloc's unwinder restored");
    }
}

/// Installs the framehop backtrace hook (or adds a user to the installed
/// one). Needs jemalloc with `prof:true`; fails without changing anything.
pub(crate) fn install() -> Result<FastBacktraces, Error> {
    let mut control = CONTROL.lock().unwrap_or_else(PoisonError::into_inner);
    if control.users == 0 {
        // SAFETY: the option holds a function pointer; reading it as a
        // pointer-sized integer is what `raw::read` does with its bytes.
        let current = unsafe { raw::read::<usize>(HOOK) }.map_err(ctl_error)?;
        let ours = backtrace_hook as BacktraceHook as usize;
        if current != ours {
            if current == 0 {
                return Err(Error::Jemalloc {
                    call: "experimental.hooks.prof_backtrace",
                    source: io::Error::other("jemalloc has no backtrace function"),
                });
            }
            FALLBACK.store(current, Ordering::SeqCst);
        }
        let (state, modules) = HookState::build();
        retire(GATE.swap(Box::into_raw(state)));
        control.modules = modules;
        // SAFETY: `backtrace_hook` has jemalloc's `prof_backtrace_hook_t`
        // signature; FALLBACK is set before it can be called.
        if let Err(error) = unsafe { raw::write::<usize>(HOOK, ours) } {
            retire(GATE.swap(std::ptr::null_mut()));
            control.modules.clear();
            return Err(ctl_error(error));
        }
    }
    control.users += 1;
    Ok(FastBacktraces(()))
}

/// Rebuilds the unwinder when modules were loaded or unloaded since it was
/// built, so that code `dlopen`ed later is unwound quickly too. Called before
/// every heap dump; cheap when nothing changed.
pub(crate) fn refresh() {
    let mut control = CONTROL.lock().unwrap_or_else(PoisonError::into_inner);
    if control.users == 0 {
        return;
    }
    let current = code_ranges(&loaded_modules(false));
    if current == control.modules {
        return;
    }
    let (state, modules) = HookState::build();
    retire(GATE.swap(Box::into_raw(state)));
    control.modules = modules;
}

/// Stacks captured by our unwinder and stacks handed to jemalloc's, since
/// the process started; and whether our hook is installed.
pub(crate) fn counters() -> (bool, u64, u64) {
    let installed = CONTROL.lock().unwrap_or_else(PoisonError::into_inner).users > 0;
    (
        installed,
        FAST.load(Ordering::Relaxed),
        DEFERRED.load(Ordering::Relaxed),
    )
}

fn ctl_error(error: tikv_jemalloc_ctl::Error) -> Error {
    Error::Jemalloc {
        call: "experimental.hooks.prof_backtrace",
        source: io::Error::other(error),
    }
}

/// Frees a state once no hook can still be reading it. A hook that has
/// not finished after a second (never observed: a walk takes microseconds)
/// gets the state leaked rather than freed under its feet.
fn retire(old: *mut HookState) {
    if old.is_null() {
        return;
    }
    if !GATE.drain() {
        tracing::warn!("a heap backtrace did not finish within 1 s; leaking its unwinder");
        return;
    }
    // SAFETY: `old` came from Box::into_raw in `install`/`refresh`; it is no
    // longer published, and every hook that could have seen it has left.
    drop(unsafe { Box::from_raw(old) });
}

fn code_ranges(modules: &[LoadedModule]) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = modules.iter().filter_map(|m| m.code_range()).collect();
    ranges.sort_by_key(|r| r.start);
    ranges
}

/// What the hook needs: the unwinder, the code it covers, scratch caches.
struct HookState {
    unwinder: NativeUnwinder,
    code: Vec<Range<u64>>,
    /// framehop's per-address rule caches, one per walk in progress.
    caches: Slots<CacheNative<MustNotAllocateDuringUnwind>>,
}

impl HookState {
    fn build() -> (Box<Self>, Vec<Range<u64>>) {
        let modules = loaded_modules(true);
        let code = code_ranges(&modules);
        let slots = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(4, 32);
        let state = Box::new(HookState {
            unwinder: build_unwinder(&modules),
            code: code.clone(),
            caches: Slots::new((0..slots).map(|_| CacheNative::new_in())),
        });
        tracing::debug!(
            modules = modules.len(),
            unwind_table_bytes = unwind_table_bytes(&modules),
            caches = slots,
            "heap backtraces: framehop unwinder ready"
        );
        (state, code)
    }

    /// Whether `return_address` follows a call inside a module we know.
    fn is_code(&self, return_address: u64) -> bool {
        let call = return_address.wrapping_sub(1);
        let index = self.code.partition_point(|r| r.start <= call);
        index > 0 && self.code[index - 1].contains(&call)
    }

    /// Walks the stack from the hook's own frame into `out`, innermost
    /// caller first. None: let jemalloc do it.
    fn capture(&self, frame: HookFrame, out: &mut [*mut c_void]) -> Option<usize> {
        let stack_end = thread_stack_end(frame.sp)?;
        let mut cache = self.caches.claim()?;
        self.walk(frame, stack_end, &mut cache, out)
    }

    fn walk(
        &self,
        frame: HookFrame,
        stack_end: u64,
        cache: &mut CacheNative<MustNotAllocateDuringUnwind>,
        out: &mut [*mut c_void],
    ) -> Option<usize> {
        let (ip, sp) = (frame.pc, frame.sp);
        let mut read_stack = |address: u64| {
            if address >= sp && address.is_multiple_of(8) && address < stack_end.saturating_sub(7) {
                // SAFETY: [sp, stack_end) lies in this thread's stack
                // mapping, which stays mapped while the thread runs.
                Ok(unsafe { (address as *const u64).read() })
            } else {
                Err(())
            }
        };
        let regs = frame.regs(&self.unwinder);
        let mut frames = self.unwinder.iter_frames(ip, regs, cache, &mut read_stack);
        // The first frame is the hook itself.
        if !matches!(frames.next(), Ok(Some(_))) {
            return None;
        }
        let mut depth = 0;
        while depth < out.len() {
            match frames.next() {
                Ok(Some(frame)) => {
                    let address = frame.address();
                    if !self.is_code(address) {
                        return None;
                    }
                    out[depth] = address as *mut c_void;
                    depth += 1;
                }
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        (depth > 0).then_some(depth)
    }
}

/// The part of this thread's stack mapping we may read: its end.
#[derive(Clone, Copy)]
struct ThreadStack {
    low: u64,
    high: u64,
    lookups: u32,
}

thread_local! {
    // Const-initialized and without Drop: no registration, no allocation,
    // usable until the thread is gone.
    static STACK: Cell<ThreadStack> = const {
        Cell::new(ThreadStack { low: 0, high: 0, lookups: 0 })
    };
}

/// End of the readable mapping holding `sp` (this thread's stack), looked
/// up once per thread, again only if the thread moves to another stack.
fn thread_stack_end(sp: u64) -> Option<u64> {
    STACK
        .try_with(|cell| {
            let mut stack = cell.get();
            if (stack.low..stack.high).contains(&sp) {
                return Some(stack.high);
            }
            if stack.lookups >= MAX_STACK_LOOKUPS {
                return None;
            }
            stack.lookups += 1;
            let found = mapping_containing(sp);
            (stack.low, stack.high) = found.clone().map_or((0, 0), |r| (r.start, r.end));
            cell.set(stack);
            found.map(|r| r.end)
        })
        .ok()
        .flatten()
}

/// The readable and writable mapping containing `address`, from
/// `/proc/self/maps`, read with plain syscalls into a stack buffer.
fn mapping_containing(address: u64) -> Option<Range<u64>> {
    // SAFETY: open/read/close on a file descriptor we own, into a buffer we
    // own; nothing here allocates.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut parser = MapsParser::new(address);
    let mut buffer = [0u8; 4096];
    loop {
        // SAFETY: see above; `buffer` has `buffer.len()` writable bytes.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            break;
        }
        if parser.feed(&buffer[..n as usize]) {
            break;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    parser.found
}

/// Finds the mapping containing an address in `/proc/self/maps` text fed
/// in pieces, keeping only each line's `start-end perms` prefix.
struct MapsParser {
    address: u64,
    prefix: [u8; 48],
    len: usize,
    found: Option<Range<u64>>,
}

impl MapsParser {
    fn new(address: u64) -> Self {
        Self {
            address,
            prefix: [0; 48],
            len: 0,
            found: None,
        }
    }

    /// Consumes `bytes`; true once the mapping is found.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if byte == b'\n' {
                if let Some(range) = self.line() {
                    self.found = Some(range);
                    return true;
                }
                self.len = 0;
            } else if self.len < self.prefix.len() {
                self.prefix[self.len] = byte;
                self.len += 1;
            }
        }
        false
    }

    fn line(&self) -> Option<Range<u64>> {
        let line = &self.prefix[..self.len];
        let dash = line.iter().position(|&b| b == b'-')?;
        let space = line.iter().position(|&b| b == b' ')?;
        let start = hex(&line[..dash])?;
        let end = hex(line.get(dash + 1..space)?)?;
        let perms = line.get(space + 1..space + 3)?;
        (perms == b"rw" && (start..end).contains(&self.address)).then_some(start..end)
    }
}

fn hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        let nibble = (digit as char).to_digit(16)?;
        Some(value << 4 | u64::from(nibble))
    })
}

/// The registers of the hook's own frame the walk starts from.
#[derive(Clone, Copy)]
struct HookFrame {
    /// An address inside the hook.
    pc: u64,
    sp: u64,
    /// `rbp` on x86_64, `x29` on aarch64.
    fp: u64,
    /// `x30` on aarch64 (the unwind rules say whether it is still the
    /// return address); unused on x86_64.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    lr: u64,
}

impl HookFrame {
    #[cfg(target_arch = "x86_64")]
    fn regs(&self, _unwinder: &NativeUnwinder) -> UnwindRegsNative {
        UnwindRegsNative::new(self.pc, self.sp, self.fp)
    }

    #[cfg(target_arch = "aarch64")]
    fn regs(&self, unwinder: &NativeUnwinder) -> UnwindRegsNative {
        let mask = framehop::aarch64::PtrAuthMask::from_max_known_address(
            unwinder.max_known_code_address(),
        );
        UnwindRegsNative::new_with_ptr_auth_mask(mask, self.lr, self.sp, self.fp)
    }
}

/// jemalloc's `prof_backtrace_hook_t`: fill `vec` with up to `max` return
/// addresses of the allocating thread's stack and set `*len`.
unsafe extern "C" fn backtrace_hook(vec: *mut *mut c_void, len: *mut c_uint, max: c_uint) {
    let (pc, sp, fp, lr): (u64, u64, u64, u64);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads the instruction pointer, stack pointer and frame
    // pointer into registers; touches no memory and no flags.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {fp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            options(nomem, nostack, preserves_flags),
        );
        lr = 0;
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads the program counter, stack pointer, frame pointer and
    // link register into registers; touches no memory and no flags.
    unsafe {
        std::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            "mov {lr}, x30",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            lr = out(reg) lr,
            options(nomem, nostack, preserves_flags),
        );
    }
    let frame = HookFrame { pc, sp, fp, lr };
    // The gate keeps errno: the first capture on a thread reads
    // /proc/self/maps, and a failing open/read must not change the
    // allocating code's errno.
    let depth = if vec.is_null() || len.is_null() {
        None
    } else {
        GATE.enter(|state| {
            // SAFETY: jemalloc passes a vector of `max` entries.
            let out = unsafe { std::slice::from_raw_parts_mut(vec, max as usize) };
            state.capture(frame, out)
        })
        .flatten()
    };
    match depth {
        Some(depth) => {
            // SAFETY: `len` is jemalloc's out-parameter, checked non-null.
            unsafe { *len = depth as c_uint };
            FAST.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            DEFERRED.fetch_add(1, Ordering::Relaxed);
            let fallback = FALLBACK.load(Ordering::SeqCst);
            if fallback != 0 {
                // SAFETY: FALLBACK holds the `prof_backtrace_hook_t` jemalloc
                // had installed, set before our hook was.
                unsafe {
                    let fallback: BacktraceHook =
                        std::mem::transmute::<usize, BacktraceHook>(fallback);
                    fallback(vec, len, max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parser_finds_the_mapping_across_pieces() {
        let maps = b"55d1c0000000-55d1c0001000 r--p 00000000 fe:00 123 /bin/service\n\
7ffd0000a000-7ffd0002b000 rw-p 00000000 00:00 0                          [stack]\n\
7ffd0002b000-7ffd0002c000 r-xp 00000000 00:00 0 [vdso]\n";
        for split in [1, 7, 30, maps.len()] {
            let mut parser = MapsParser::new(0x7ffd_0002_0000);
            let found = maps.chunks(split).any(|chunk| parser.feed(chunk));
            assert!(found, "split {split}");
            assert_eq!(parser.found, Some(0x7ffd_0000_a000..0x7ffd_0002_b000));
        }
        // Not writable: not a stack.
        let mut parser = MapsParser::new(0x55d1_c000_0010);
        assert!(!parser.feed(maps));
        assert_eq!(parser.found, None);
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn maps_text_never_panics(
                maps in input_of(&["-", " ", "rw-p", "r-xp", "\n", "7ffd0000a000", "ffffffffffffffffff", "0", "[stack]"]),
                address in any::<u64>(),
                split in 1usize..64,
            ) {
                bounded("maps", &maps, || {
                    let mut parser = MapsParser::new(address);
                    let found = maps.as_bytes().chunks(split).any(|chunk| parser.feed(chunk));
                    if found {
                        assert!(parser.found.as_ref().is_some_and(|r| r.contains(&address)));
                    }
                });
            }
        }
    }

    #[test]
    fn return_addresses_must_follow_calls_into_known_code() {
        let state = HookState {
            unwinder: NativeUnwinder::new(),
            code: vec![0x1000..0x2000, 0x5000..0x6000],
            caches: Slots::new([]),
        };
        assert!(state.is_code(0x1001));
        assert!(
            state.is_code(0x2000),
            "a call ending the range returns to its end"
        );
        assert!(!state.is_code(0x1000));
        assert!(state.is_code(0x5fff));
        assert!(!state.is_code(0x3000));
        assert!(!state.is_code(0x6001));
        assert!(!state.is_code(0));
    }

    // libgcc's unwinder, which jemalloc uses, as the reference.
    #[repr(C)]
    struct UnwindContext {
        _private: [u8; 0],
    }
    extern "C" {
        fn _Unwind_Backtrace(
            trace: extern "C" fn(*mut UnwindContext, *mut c_void) -> c_uint,
            data: *mut c_void,
        ) -> c_uint;
        fn _Unwind_GetIP(context: *mut UnwindContext) -> usize;
    }

    extern "C" fn collect(context: *mut UnwindContext, data: *mut c_void) -> c_uint {
        // SAFETY: `data` is the Vec passed below; the context is libgcc's.
        let frames = unsafe { &mut *data.cast::<Vec<usize>>() };
        let ip = unsafe { _Unwind_GetIP(context) };
        if ip == 0 || frames.len() == 256 {
            return 5; // _URC_END_OF_STACK
        }
        frames.push(ip);
        0 // _URC_NO_REASON
    }

    #[inline(never)]
    fn libgcc_backtrace() -> Vec<usize> {
        let mut frames: Vec<usize> = Vec::with_capacity(256);
        // SAFETY: the callback only pushes into `frames` (capacity reserved).
        unsafe { _Unwind_Backtrace(collect, (&mut frames as *mut Vec<usize>).cast()) };
        std::hint::black_box(frames)
    }

    #[inline(never)]
    fn framehop_backtrace() -> Vec<usize> {
        let mut vec = [std::ptr::null_mut::<c_void>(); 128];
        let mut len: c_uint = 0;
        // SAFETY: a vector of 128 entries and its length, as jemalloc passes.
        unsafe { backtrace_hook(vec.as_mut_ptr(), &mut len, 128) };
        std::hint::black_box(vec[..len as usize].iter().map(|&p| p as usize).collect())
    }

    #[inline(never)]
    fn nested(depth: u32, visit: &mut dyn FnMut()) {
        if depth == 0 {
            visit();
        } else {
            nested(depth - 1, visit);
        }
        std::hint::black_box(depth);
    }

    /// Publishes a hook state for the tests, once.
    fn publish_for_tests() {
        static PUBLISHED: std::sync::Once = std::sync::Once::new();
        PUBLISHED.call_once(|| {
            // Leaked on purpose: the test binary has no jemalloc to install into.
            let (state, _) = HookState::build();
            GATE.publish(Box::into_raw(state));
        });
    }

    #[test]
    fn stacks_match_libgccs() {
        publish_for_tests();
        let fast_before = FAST.load(Ordering::Relaxed);
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        nested(20, &mut || {
            ours = framehop_backtrace();
            reference = libgcc_backtrace();
        });
        assert!(
            FAST.load(Ordering::Relaxed) > fast_before,
            "our unwinder deferred"
        );
        // ours: [return into framehop_backtrace, into the closure, into
        // `nested` ×21, …to the thread's start]; libgcc's: [inside
        // libgcc_backtrace, return into the closure (another call site),
        // into `nested` ×21, …]. From `nested` on they must be identical.
        assert!(ours.len() > 23, "ours is too short: {ours:x?}");
        assert_same_callers(&ours, &reference);
    }

    /// Through a frame shaped like aarch64 system libraries built with
    /// `pac-ret`: its return address is signed and saved without a frame
    /// record. libgcc authenticates and strips it; ours must agree.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn stacks_through_a_signed_frame_match_libgccs() {
        use crate::testing::signed::signed_frame_call;
        use std::cell::RefCell;
        thread_local! {
            static TRACES: RefCell<(Vec<usize>, Vec<usize>)> = const {
                RefCell::new((Vec::new(), Vec::new()))
            };
        }
        extern "C" fn capture(_: u64) {
            let ours = framehop_backtrace();
            let reference = libgcc_backtrace();
            TRACES.with(|t| *t.borrow_mut() = (ours, reference));
        }
        publish_for_tests();
        let fast_before = FAST.load(Ordering::Relaxed);
        nested(5, &mut || {
            // SAFETY: calls `capture` through the signed frame.
            unsafe { signed_frame_call(0, capture) };
        });
        let (ours, reference) = TRACES.with(|t| t.borrow().clone());
        assert!(
            FAST.load(Ordering::Relaxed) > fast_before,
            "our unwinder deferred"
        );
        // ours: [into framehop_backtrace, into capture, into
        // signed_frame_call, into the closure, into `nested` ×6, …];
        // libgcc's: [inside libgcc_backtrace, into capture (another call
        // site), then the same from `into signed_frame_call` on].
        assert!(ours.len() > 10, "ours is too short: {ours:x?}");
        assert!(
            ours.iter().all(|&a| (a as u64) >> 48 == 0),
            "authentication bits left: {ours:x?}"
        );
        assert_same_callers(&ours, &reference);
    }

    /// Ours and libgcc's are the same stack below the two helpers that
    /// took them (whose own frames differ, and which an optimized build may
    /// inline). On aarch64 framehop ends the walk one frame early, at the
    /// thread's first frame (its saved `x29` is 0): libgcc's last frame is
    /// then the return into libc's `thread_start`, the glue that started
    /// the thread.
    fn assert_same_callers(ours: &[usize], reference: &[usize]) {
        let root_glue = usize::from(cfg!(target_arch = "aarch64"));
        let reference = &reference[..reference.len().saturating_sub(root_glue)];
        let common = ours
            .iter()
            .rev()
            .zip(reference.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            common + 2 >= ours.len() && common + 2 >= reference.len(),
            "{common} frames in common\nours {ours:x?}\nlibgcc {reference:x?}"
        );
    }

    #[test]
    fn this_threads_stack_is_found() {
        let local = 0u64;
        let sp = std::hint::black_box(&local) as *const u64 as u64;
        let end = thread_stack_end(sp).expect("stack mapping");
        assert!(end > sp && end - sp < 1 << 30);
    }
}
