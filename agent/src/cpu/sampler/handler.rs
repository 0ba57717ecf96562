//! The signal handlers: timestamp, unwind, enqueue. SIGPROF (CPU mode)
//! samples whichever thread the kernel interrupted; the wall-clock signal
//! samples the thread the timer thread chose, with the state it read.
//! Nothing here locks, allocates or calls into libgcc; unwinding is
//! [`Unwinding`]'s, which reads memory only through a copy that cannot
//! fault.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::clock;
use super::ring::{SampleRing, THREAD_NAME_LEN};
use crate::unwind::{SignalGate, Unwinding};

/// Everything a handler needs, published through its gate.
pub(crate) struct HandlerState {
    pub(crate) unwinding: Unwinding,
    pub(crate) ring: SampleRing,
    /// Samples recorded into the ring.
    pub(crate) recorded: AtomicU64,
    /// Samples lost because every unwind context was busy or the ring was
    /// full (or, wall-clock, the thread had not answered its previous
    /// signal yet).
    pub(crate) dropped: AtomicU64,
    /// Time spent inside the handler, summed over all signals, in nanoseconds.
    pub(crate) handler_ns: AtomicU64,
    /// Wall-clock mode: the threads being signalled (empty in CPU mode).
    pub(crate) targets: Box<[Target]>,
    /// This process's id: wall-clock signals from anyone else are ignored.
    pub(crate) pid: i32,
}

/// One thread the wall-clock timer signals.
#[derive(Debug, Default)]
pub(crate) struct Target {
    /// Kernel thread id (0: slot free).
    pub(crate) tid: AtomicU32,
    /// A signal was sent and its handler has not finished yet: the timer
    /// sends no other, so a thread that blocks the signal never
    /// accumulates queued real-time signals.
    pub(crate) pending: AtomicBool,
}

/// The `siginfo_t` layout of a signal queued with `rt_tgsigqueueinfo`
/// (the kernel's `_rt` member), the same on x86_64 and aarch64: the
/// timer thread fills one, the handler reads the value back.
#[repr(C)]
pub(crate) struct QueuedInfo {
    pub(crate) signo: libc::c_int,
    pub(crate) errno: libc::c_int,
    pub(crate) code: libc::c_int,
    _pad: libc::c_int,
    pub(crate) pid: libc::pid_t,
    pub(crate) uid: libc::uid_t,
    pub(crate) value: usize,
    _rest: [u64; 12],
}

const _: () = assert!(std::mem::size_of::<QueuedInfo>() == 128);

/// `si_code` of a signal sent with `sigqueue` / `rt_tgsigqueueinfo`.
pub(crate) const SI_QUEUE: libc::c_int = -1;

impl QueuedInfo {
    /// The info for a wall-clock signal to target `index` in `state`.
    pub(crate) fn new(signal: libc::c_int, pid: i32, index: usize, state: u8) -> Self {
        QueuedInfo {
            signo: signal,
            errno: 0,
            code: SI_QUEUE,
            _pad: 0,
            pid,
            // SAFETY: getuid has no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
            value: (index << 8) | usize::from(state),
            _rest: [0; 12],
        }
    }
}

static CPU_GATE: SignalGate<HandlerState> = SignalGate::new();
static WALL_GATE: SignalGate<HandlerState> = SignalGate::new();

/// Which signal a state serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// SIGPROF.
    Cpu,
    /// The wall-clock signal.
    Wall,
}

impl Gate {
    fn gate(self) -> &'static SignalGate<HandlerState> {
        match self {
            Gate::Cpu => &CPU_GATE,
            Gate::Wall => &WALL_GATE,
        }
    }
}

/// Makes `state` visible to `gate`'s handler. Returns the pointer to hand
/// back to [`retract`].
pub(crate) fn publish(gate: Gate, state: Box<HandlerState>) -> *mut HandlerState {
    let raw = Box::into_raw(state);
    gate.gate().publish(raw);
    raw
}

/// Hides the state from handlers and waits for running handlers to finish.
/// Returns the state if it may be freed; after a (never observed) 1 s wait
/// it is leaked instead, because freeing memory a handler still reads would
/// crash the host.
pub(crate) fn retract(gate: Gate, raw: *mut HandlerState) -> Option<Box<HandlerState>> {
    if !gate.gate().retract(raw) {
        tracing::warn!("a sampler signal handler did not finish within 1 s; leaking its state");
        return None;
    }
    // SAFETY: `raw` came from `publish` (Box::into_raw); no handler can
    // reach it any more (see `SignalGate::retract`).
    Some(unsafe { Box::from_raw(raw) })
}

/// The `siginfo_t` layout of a POSIX timer's signal (the kernel's
/// `_timer` member), the same on x86_64 and aarch64.
#[repr(C)]
struct TimerInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    timer: libc::c_int,
    overrun: libc::c_int,
    _rest: [u64; 13],
}

const _: () = assert!(std::mem::size_of::<TimerInfo>() == 128);

/// `si_code` of a POSIX timer's signal.
const SI_TIMER: libc::c_int = -2;

/// Sampling periods a SIGPROF stands for: 1, plus the periods a per-thread
/// CPU timer expired while its signal waited (`si_overrun`). `ITIMER_PROF`
/// signals count one.
fn periods_of(info: *const libc::siginfo_t) -> u32 {
    if info.is_null() {
        return 1;
    }
    // SAFETY: the kernel passes a valid 128-byte siginfo_t to SA_SIGINFO
    // handlers; `TimerInfo` has its size and the `_timer` layout, read
    // only when `si_code` says it is a timer's.
    let info = unsafe { &*info.cast::<TimerInfo>() };
    if info.code != SI_TIMER {
        return 1;
    }
    u32::try_from(info.overrun).unwrap_or(0).saturating_add(1)
}

/// The SIGPROF handler installed with `SA_SIGINFO`.
pub(crate) extern "C" fn on_sigprof(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let periods = periods_of(info);
    CPU_GATE.enter_signal(context, |state, context| state.record(context, 0, periods));
}

/// The wall-clock signal's handler installed with `SA_SIGINFO`.
pub(crate) extern "C" fn on_wall_signal(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    if info.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo_t to SA_SIGINFO handlers;
    // `QueuedInfo` has its size and the layout of its `_rt` member.
    let info = unsafe { &*info.cast::<QueuedInfo>() };
    let (code, sender, value) = (info.code, info.pid, info.value);
    WALL_GATE.enter_signal(context, |state, context| {
        if code != SI_QUEUE || sender != state.pid {
            return;
        }
        let Some(target) = state.targets.get(value >> 8) else {
            return;
        };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        if target.tid.load(Ordering::Acquire) != tid {
            // A signal for a slot since given to another thread.
            return;
        }
        state.record(context, (value & 0xff) as u8, 1);
        target.pending.store(false, Ordering::Release);
    });
}

impl HandlerState {
    /// Records the interrupted thread's stack and labels; `state` is the
    /// wall-clock timer's reading of the thread (0 for CPU samples),
    /// `periods` the sampling periods the sample stands for.
    fn record(&self, context: &libc::ucontext_t, state: u8, periods: u32) {
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
        sample.state = state;
        sample.periods = periods;
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
