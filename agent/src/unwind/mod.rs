//! Code that runs at an arbitrary point of another thread — a signal
//! handler, jemalloc's allocation hook — and the signal-safe stack
//! unwinding the CPU sampler (SIGPROF) and the runtime watchdog's
//! stuck-worker capture share.
//!
//! - [`gate`]: how such code finds its state (a published pointer and a
//!   count of runs in progress, so the owner knows when to free it);
//! - [`slots`]: its scratch space, claimed without locks or allocation;
//! - [`signals`]: installing handlers without taking a signal another
//!   owner has, and never leaving one at `SIG_DFL`;
//! - `stack`: [`Unwinding`], which prepares unwind tables before any signal
//!   and walks an interrupted thread's stack from its `ucontext_t`, reading
//!   memory only through a copy that cannot fault.
//!
//! The heap backtrace hook (`heap/backtrace.rs`) uses the gate and slots
//! but walks its *own* stack, which is mapped and running: it reads stack
//! memory directly within the thread's stack mapping instead of through a
//! copy, and defers to jemalloc's unwinder instead of dropping a sample
//! when it cannot be sure. Nothing in this module locks, allocates or calls
//! into libgcc on the handler side.

pub(crate) mod gate;
#[cfg(any(feature = "cpu", feature = "runtime"))]
mod memory;
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) mod signals;
pub(crate) mod slots;
#[cfg(any(feature = "cpu", feature = "runtime"))]
mod stack;

pub(crate) use gate::SignalGate;
#[cfg(feature = "cpu")]
pub(crate) use memory::seccomp_filtered;
#[cfg(feature = "heap")]
pub(crate) use slots::Slots;
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) use stack::Unwinding;

/// Deepest stack recorded; deeper stacks keep their innermost frames.
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) const MAX_DEPTH: usize = 128;

/// Offset from `SIGRTMIN` of the signal the runtime watchdog sends to a
/// stuck worker thread to capture its stack. glibc and musl reserve the
/// signals below `SIGRTMIN`; `SIGRTMIN` itself and `SIGRTMAX` are the ones
/// other runtimes and tools (.NET, Valgrind, POSIX timers) pick first.
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) const CAPTURE_SIGNAL_OFFSET: libc::c_int = 7;

/// The stack-capture signal's number in this process (`SIGRTMIN + 7`).
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) fn capture_signal() -> libc::c_int {
    libc::SIGRTMIN() + CAPTURE_SIGNAL_OFFSET
}

/// Offset from `SIGRTMIN` of the signal the wall-clock sampler's timer
/// thread sends to every sampled thread at each tick (`SIGRTMIN + 6`, next
/// to the capture signal and away from the ends other tools pick first).
#[cfg(feature = "cpu")]
pub(crate) const WALL_SIGNAL_OFFSET: libc::c_int = 6;

/// The wall-clock sampling signal's number in this process (`SIGRTMIN + 6`).
#[cfg(feature = "cpu")]
pub(crate) fn wall_signal() -> libc::c_int {
    libc::SIGRTMIN() + WALL_SIGNAL_OFFSET
}

/// The agent's signals other than `signal`: each of its handlers blocks the
/// others while it runs, so one never unwinds from inside another.
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) fn other_signals(signal: libc::c_int) -> Vec<libc::c_int> {
    let mut all = vec![libc::SIGPROF, capture_signal()];
    #[cfg(feature = "cpu")]
    all.push(wall_signal());
    all.retain(|&s| s != signal);
    all
}

/// Number of CPUs this process may use (at least 1).
#[cfg(any(feature = "cpu", feature = "runtime"))]
pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
