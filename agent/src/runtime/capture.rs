//! Captures the current stack of chosen threads of this process — also of
//! threads blocked off-CPU in `nanosleep`, a futex or a `read`, which CPU
//! sampling never sees. Each thread is sent a real-time signal with
//! `tgkill`; its handler unwinds its own interrupted context with the CPU
//! sampler's signal-safe machinery ([`Unwinding`]) into a pre-allocated
//! slot: no locks, no allocation, no libgcc, no faults.
//!
//! The signal is `SIGRTMIN + 7` ([`capture_signal`]). Its handler is
//! installed only for the duration of one capture and the signal is left
//! ignored afterwards — never at `SIG_DFL`, whose action would kill the
//! process if a late signal arrived. If another handler owns the signal the
//! capture is refused and the stall is reported without frames. The CPU
//! and wall-clock samplers' signals are blocked while the handler runs, and
//! the samplers block this signal during their own handlers, so they never
//! nest.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::unwind::signals::{self, InstallError};
use crate::unwind::{cpu_count, SignalGate, Unwinding, MAX_DEPTH};
use crate::Error;

use crate::unwind::CAPTURE_SIGNAL_OFFSET as SIGNAL_OFFSET;

/// How long the signalled threads have to answer, in all; a thread dump of
/// more than [`THREADS_IN_ANSWER_TIMEOUT`] threads gets proportionally more.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_millis(100);

/// Threads [`ANSWER_TIMEOUT`] is meant for.
pub(crate) const THREADS_IN_ANSWER_TIMEOUT: usize = 256;

/// Requests in flight at once: each is a slot a handler looks up by its
/// thread id; the unwind contexts (fewer) limit how many handlers unwind
/// at the same instant, and one that finds none busy is asked again.
const SLOTS: usize = 64;

/// Times a thread whose handler found every unwind context busy is asked
/// again.
const RETRIES: u8 = 3;

pub(crate) use crate::unwind::capture_signal;

const EMPTY: u8 = 0;
const REQUESTED: u8 = 1;
const WRITING: u8 = 2;
const DONE: u8 = 3;
const FAILED: u8 = 4;

/// Where one thread's handler writes its stack.
struct Slot {
    tid: AtomicU32,
    state: AtomicU8,
    depth: AtomicUsize,
    /// The label set in the thread's slot when it was interrupted.
    labels: AtomicU32,
    frames: UnsafeCell<[u64; MAX_DEPTH]>,
}

struct CaptureState {
    unwinding: Unwinding,
    slots: Box<[Slot]>,
}

// SAFETY: a slot's frames are written only by the handler that moved its
// state from REQUESTED to WRITING, and read by the owner only after DONE
// (release/acquire) or after the state is retracted from every handler.
unsafe impl Sync for CaptureState {}

static GATE: SignalGate<CaptureState> = SignalGate::new();

/// Why a capture did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    /// Another library has a handler for the capture signal.
    #[error(
        "signal {0} (SIGRTMIN+{SIGNAL_OFFSET}) has another handler in this process; \
         stacks are not captured"
    )]
    SignalTaken(libc::c_int),
    /// A system call failed.
    #[error("{call} failed")]
    Os {
        /// The call.
        call: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The unwind tables could not be prepared.
    #[error("cannot prepare unwind tables")]
    Prepare(#[source] Error),
    /// A handler of an earlier capture did not finish; its state was leaked.
    #[error("a previous capture overran; a fresh one is prepared for the next stall")]
    Overran,
}

/// One thread's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Captured {
    /// Lookup addresses, innermost first, and the label set the thread's
    /// code was running with.
    Frames(Vec<u64>, u32),
    /// The thread exited before it was signalled.
    Gone,
    /// The thread did not run its handler in time (blocked in an
    /// uninterruptible sleep, or the signal is blocked on it).
    NoAnswer,
}

/// Unwind tables and slots, kept between captures while stalls happen.
pub(crate) struct StackCapture {
    state: Box<CaptureState>,
    /// A handler did not finish in time: the state may still be read and
    /// is leaked instead of freed.
    poisoned: bool,
}

/// One capture at a time in the process: the handler finds its state
/// through one global pointer (several agents may run in one process).
static CAPTURE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl fmt::Debug for StackCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackCapture")
            .field("footprint_bytes", &self.footprint_bytes())
            .finish()
    }
}

impl StackCapture {
    /// Copies the unwind tables of every loaded module (tens of
    /// milliseconds, ~2 MiB) and allocates the request slots and one unwind
    /// context per CPU (2 to 8).
    pub(crate) fn prepare() -> Result<Self, CaptureError> {
        let contexts = cpu_count().clamp(2, 8);
        let unwinding = Unwinding::prepare(contexts).map_err(CaptureError::Prepare)?;
        let slots = (0..SLOTS)
            .map(|_| Slot {
                tid: AtomicU32::new(0),
                state: AtomicU8::new(EMPTY),
                depth: AtomicUsize::new(0),
                labels: AtomicU32::new(0),
                frames: UnsafeCell::new([0; MAX_DEPTH]),
            })
            .collect();
        Ok(StackCapture {
            state: Box::new(CaptureState { unwinding, slots }),
            poisoned: false,
        })
    }

    /// Whether this capture can no longer be used (a handler overran).
    pub(crate) fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Memory held, in bytes.
    pub(crate) fn footprint_bytes(&self) -> usize {
        self.state.unwinding.footprint_bytes()
            + self.state.slots.len() * std::mem::size_of::<Slot>()
    }

    /// Captures the stacks of `tids` (threads of this process): up to
    /// [`SLOTS`] asked at once, the next one as soon as one answers; a
    /// thread whose handler found every unwind context busy is asked again.
    /// Returns when every thread answered or at `deadline`, whichever
    /// comes first: the threads that did not answer by then (blocked in an
    /// uninterruptible sleep, or with the signal blocked) are
    /// [`Captured::NoAnswer`], and their signal, still queued, is discarded.
    pub(crate) fn capture(
        &mut self,
        tids: &[u32],
        deadline: Instant,
    ) -> Result<Vec<Captured>, CaptureError> {
        if self.poisoned {
            return Err(CaptureError::Overran);
        }
        let _one_at_a_time = CAPTURE_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let signal = capture_signal();
        install(signal)?;
        let raw: *mut CaptureState = &mut *self.state;
        GATE.publish(raw);
        let answers = self.ask(signal, tids, deadline);
        // Ignoring the signal discards any still pending, so no handler can
        // start after this; then wait for handlers already running.
        signals::ignore(signal);
        if !GATE.retract(raw) {
            // Freeing memory a handler still reads would crash the host.
            tracing::warn!("a stack-capture handler did not finish within 1 s; leaking its state");
            self.poisoned = true;
        }
        Ok(answers)
    }

    fn ask(&self, signal: libc::c_int, tids: &[u32], deadline: Instant) -> Vec<Captured> {
        let slots = &self.state.slots;
        let mut answers = vec![Captured::NoAnswer; tids.len()];
        let mut retries = vec![0u8; tids.len()];
        let mut queue: std::collections::VecDeque<usize> = (0..tids.len()).collect();
        // The thread (index into `tids`) each slot asks.
        let mut asking: Vec<Option<usize>> = vec![None; slots.len()];
        let pid = std::process::id() as libc::pid_t;
        loop {
            for (slot, asked) in slots.iter().zip(asking.iter_mut()) {
                if let Some(index) = *asked {
                    match slot.state.load(Ordering::Acquire) {
                        DONE => {
                            let depth = slot.depth.load(Ordering::Relaxed).min(MAX_DEPTH);
                            // SAFETY: DONE was stored with release after the
                            // frames were written; no handler writes a DONE slot.
                            let frames: &[u64; MAX_DEPTH] = unsafe { &*slot.frames.get() };
                            answers[index] = Captured::Frames(
                                frames[..depth].to_vec(),
                                slot.labels.load(Ordering::Relaxed),
                            );
                        }
                        FAILED if retries[index] < RETRIES => {
                            retries[index] += 1;
                            queue.push_back(index);
                        }
                        FAILED => {}
                        _ => continue,
                    }
                    slot.state.store(EMPTY, Ordering::Release);
                    *asked = None;
                }
                let Some(index) = queue.pop_front() else {
                    continue;
                };
                slot.depth.store(0, Ordering::Relaxed);
                slot.tid.store(tids[index], Ordering::Relaxed);
                slot.state.store(REQUESTED, Ordering::Release);
                // SAFETY: tgkill to a thread of our own process with a signal
                // whose handler is installed.
                let sent = unsafe {
                    libc::syscall(libc::SYS_tgkill, pid, tids[index] as libc::pid_t, signal)
                };
                if sent == 0 {
                    *asked = Some(index);
                } else {
                    slot.state.store(EMPTY, Ordering::Release);
                    answers[index] = Captured::Gone;
                }
            }
            if (queue.is_empty() && asking.iter().all(Option::is_none)) || Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        for (slot, asked) in slots.iter().zip(asking.iter()) {
            let Some(index) = *asked else {
                continue;
            };
            // Withdraw the request: a handler that has not started yet finds
            // no slot; one that is writing finishes into memory we still own.
            if let Err(DONE) =
                slot.state
                    .compare_exchange(REQUESTED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
            {
                let depth = slot.depth.load(Ordering::Relaxed).min(MAX_DEPTH);
                // SAFETY: as above.
                let frames: &[u64; MAX_DEPTH] = unsafe { &*slot.frames.get() };
                answers[index] =
                    Captured::Frames(frames[..depth].to_vec(), slot.labels.load(Ordering::Relaxed));
            }
        }
        // A handler still WRITING when we gave up: wait for it (it cannot
        // block) before the slots are reused.
        let wait = Instant::now() + Duration::from_secs(1);
        while slots
            .iter()
            .any(|s| s.state.load(Ordering::Acquire) == WRITING)
            && Instant::now() < wait
        {
            std::thread::yield_now();
        }
        for slot in slots.iter() {
            slot.state.store(EMPTY, Ordering::Release);
            slot.tid.store(0, Ordering::Relaxed);
        }
        answers
    }
}

impl Drop for StackCapture {
    fn drop(&mut self) {
        if self.poisoned {
            let state = std::mem::replace(
                &mut self.state,
                Box::new(CaptureState {
                    unwinding: Unwinding::empty(),
                    slots: Box::new([]),
                }),
            );
            std::mem::forget(state);
        }
    }
}

/// Installs the handler unless another one owns the signal. The samplers'
/// signals are blocked while it runs so their handlers never nest inside it.
fn install(signal: libc::c_int) -> Result<(), CaptureError> {
    let ours = on_capture_signal as *const () as usize;
    signals::install(signal, ours).map_err(|error| match error {
        InstallError::Taken => CaptureError::SignalTaken(signal),
        InstallError::Os(source) => CaptureError::Os {
            call: "sigaction",
            source,
        },
    })
}

/// The capture signal's handler, installed with `SA_SIGINFO`.
extern "C" fn on_capture_signal(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    GATE.enter_signal(context, CaptureState::record);
}

impl CaptureState {
    fn record(&self, context: &libc::ucontext_t) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        let Some(slot) = self.slots.iter().find(|s| {
            s.tid.load(Ordering::Relaxed) == tid
                && s.state
                    .compare_exchange(REQUESTED, WRITING, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        }) else {
            return;
        };
        let Some(mut claimed) = self.unwinding.claim() else {
            slot.state.store(FAILED, Ordering::Release);
            return;
        };
        // SAFETY: this handler moved the slot to WRITING; nobody else
        // touches its frames until it stores DONE.
        let frames = unsafe { &mut *slot.frames.get() };
        let depth = claimed.walk(context, frames);
        drop(claimed);
        slot.depth.store(depth, Ordering::Relaxed);
        slot.labels.store(
            crate::labels::slot::read_in_signal_handler(),
            Ordering::Relaxed,
        );
        slot.state.store(DONE, Ordering::Release);
    }
}

/// Whether the capture signal is currently ignored (kernel view).
#[cfg(test)]
pub(crate) fn signal_ignored() -> bool {
    signals::is_ignored(capture_signal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[inline(never)]
    fn sleep_in_a_named_function(stop: &AtomicBool, tid: &AtomicU32) {
        // SAFETY: gettid has no preconditions.
        tid.store(
            unsafe { libc::syscall(libc::SYS_gettid) } as u32,
            Ordering::SeqCst,
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn captures_a_sleeping_thread_and_leaves_the_signal_ignored() {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU32::new(0));
        let sleeper = {
            let (stop, tid) = (Arc::clone(&stop), Arc::clone(&tid));
            std::thread::spawn(move || sleep_in_a_named_function(&stop, &tid))
        };
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut capture = StackCapture::prepare().unwrap();
        let answers = capture
            .capture(
                &[tid.load(Ordering::SeqCst), u32::MAX - 1],
                Instant::now() + ANSWER_TIMEOUT,
            )
            .unwrap();
        stop.store(true, Ordering::SeqCst);
        sleeper.join().unwrap();
        let Captured::Frames(frames, _) = &answers[0] else {
            panic!("no frames: {answers:?}");
        };
        assert_eq!(answers[1], Captured::Gone);
        let names = crate::symbols::function_names(frames);
        assert!(
            names
                .iter()
                .any(|(_, n)| n.contains("sleep_in_a_named_function")),
            "{names:?}"
        );
        assert!(
            signal_ignored(),
            "the signal is left ignored, never SIG_DFL"
        );
    }

    fn gettid() -> u32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::syscall(libc::SYS_gettid) as u32 }
    }

    #[inline(never)]
    fn wait_for_a_mutex_in_a_named_function(lock: &std::sync::Mutex<u32>, tid: &AtomicU32) -> u32 {
        tid.store(gettid(), Ordering::SeqCst);
        *lock.lock().unwrap()
    }

    #[inline(never)]
    fn read_a_socket_in_a_named_function(
        socket: &mut std::os::unix::net::UnixStream,
        tid: &AtomicU32,
    ) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        tid.store(gettid(), Ordering::SeqCst);
        let mut buffer = [0u8; 16];
        let read = socket.read(&mut buffer)?;
        Ok(buffer[..read].to_vec())
    }

    /// Blocked off-CPU in a futex or a blocking read: both are captured,
    /// and both carry on correctly afterwards (the read is restarted, not
    /// failed with EINTR).
    #[test]
    fn captures_threads_blocked_on_a_mutex_and_in_a_read() {
        let lock = Arc::new(std::sync::Mutex::new(7u32));
        let held = lock.lock().unwrap();
        let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mutex_tid, read_tid) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let waiter = {
            let (lock, tid) = (Arc::clone(&lock), Arc::clone(&mutex_tid));
            std::thread::spawn(move || wait_for_a_mutex_in_a_named_function(&lock, &tid))
        };
        let reader = {
            let tid = Arc::clone(&read_tid);
            std::thread::spawn(move || read_a_socket_in_a_named_function(&mut theirs, &tid))
        };
        while mutex_tid.load(Ordering::SeqCst) == 0 || read_tid.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let both threads reach the futex and the read.
        std::thread::sleep(Duration::from_millis(100));
        let mut capture = StackCapture::prepare().unwrap();
        let answers = capture
            .capture(
                &[
                    mutex_tid.load(Ordering::SeqCst),
                    read_tid.load(Ordering::SeqCst),
                ],
                Instant::now() + ANSWER_TIMEOUT,
            )
            .unwrap();
        // After the signals: both calls are still waiting, then complete.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished() && !reader.is_finished());
        drop(held);
        std::io::Write::write_all(&mut ours, b"after").unwrap();
        assert_eq!(waiter.join().unwrap(), 7);
        assert_eq!(reader.join().unwrap().unwrap(), b"after");

        for (answer, function) in answers.iter().zip([
            "wait_for_a_mutex_in_a_named_function",
            "read_a_socket_in_a_named_function",
        ]) {
            let Captured::Frames(frames, _) = answer else {
                panic!("no frames for {function}: {answers:?}");
            };
            let names = crate::symbols::function_names(frames);
            assert!(
                names.iter().any(|(_, n)| n.contains(function)),
                "{function} not in {names:?}"
            );
        }
    }

    #[test]
    fn a_foreign_handler_is_respected() {
        extern "C" fn foreign(_: libc::c_int) {}
        // Another real-time signal than the capture's, so the other test
        // in this binary is unaffected.
        let signal = capture_signal() + 1;
        // SAFETY: installing a trivial handler on an unused RT signal.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = foreign as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        assert!(matches!(
            install(signal),
            Err(CaptureError::SignalTaken(taken)) if taken == signal
        ));
        signals::ignore(signal);
    }
}
