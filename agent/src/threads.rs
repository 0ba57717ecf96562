//! The process's threads: their ids (`/proc/self/task`), the tokio worker
//! threads seen so far, and a thread's scheduler state
//! (`/proc/self/task/<tid>/stat`). A leaf: the samplers (which threads to
//! time and signal), labels (which poller is a worker) and the runtime
//! watchdog read it; it imports nothing of the crate.
//!
//! A thread counts as a tokio worker once it has polled a labelled future
//! (every request through the RED layer does) or run the agent's lag
//! probe, from inside a worker (`tokio::runtime::worker_index()`); the
//! registry is bounded and forgets threads that have exited.
#![cfg_attr(target_os = "linux", allow(unsafe_code))]
// Without the wall-clock sampler only the registry is used.
#![cfg_attr(not(all(feature = "cpu", native_unwind)), allow(dead_code))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// Most worker threads remembered.
const MAX_WORKERS: usize = 256;

static WORKERS: [AtomicU32; MAX_WORKERS] = [const { AtomicU32::new(0) }; MAX_WORKERS];

/// The calling thread's kernel id (0 where there is none).
pub(crate) fn current_tid() -> u32 {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe {
        libc::syscall(libc::SYS_gettid) as u32
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Remembers the calling thread as a tokio worker thread. When the
/// registry is full, threads that have exited make room.
pub(crate) fn register_current_worker() {
    let tid = current_tid();
    if tid == 0 || WORKERS.iter().any(|w| w.load(Ordering::Relaxed) == tid) {
        return;
    }
    for attempt in 0..2 {
        for slot in &WORKERS {
            if slot
                .compare_exchange(0, tid, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
        if attempt == 0 {
            let alive = all_threads();
            for slot in &WORKERS {
                let known = slot.load(Ordering::Relaxed);
                if alive.binary_search(&known).is_err() {
                    let _ = slot.compare_exchange(known, 0, Ordering::Relaxed, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The tokio worker threads seen so far.
pub(crate) fn workers() -> Vec<u32> {
    WORKERS
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .filter(|&tid| tid != 0)
        .collect()
}

/// Forgets `tid` (it has exited).
pub(crate) fn forget_worker(tid: u32) {
    for slot in &WORKERS {
        let _ = slot.compare_exchange(tid, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Every thread of this process, by kernel id, ascending.
pub(crate) fn all_threads() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// What a thread was doing when looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// On a CPU or ready to run (`R`).
    Running,
    /// Asleep, in a blocking call or uninterruptible I/O (`S`, `D`, …).
    Waiting,
    /// Gone, a zombie or stopped: not sampled.
    Absent,
}

/// Most `stat` files a [`StateReader`] keeps open (a read of an open one
/// costs a third of open, read and close); threads beyond them are read
/// by opening the file each time.
const KEPT_OPEN: usize = 32;

/// Reads threads' states from `/proc/self/task/<tid>/stat`, keeping the
/// files of up to [`KEPT_OPEN`] threads open between reads.
#[derive(Debug, Default)]
pub(crate) struct StateReader {
    open: HashMap<u32, std::fs::File>,
    path: String,
    buffer: Vec<u8>,
}

impl StateReader {
    /// The state of thread `tid` now.
    pub(crate) fn read(&mut self, tid: u32) -> RunState {
        use std::fmt::Write as _;
        use std::os::unix::fs::FileExt as _;
        // A `stat` line is a few hundred bytes.
        self.buffer.resize(1024, 0);
        if let Some(file) = self.open.get(&tid) {
            return match file.read_at(&mut self.buffer, 0) {
                Ok(n) => parse_state(&self.buffer[..n]),
                Err(_) => {
                    self.open.remove(&tid);
                    RunState::Absent
                }
            };
        }
        self.path.clear();
        let _ = write!(self.path, "/proc/self/task/{tid}/stat");
        let Ok(file) = std::fs::File::open(&self.path) else {
            return RunState::Absent;
        };
        let state = match file.read_at(&mut self.buffer, 0) {
            Ok(n) => parse_state(&self.buffer[..n]),
            Err(_) => RunState::Absent,
        };
        if state != RunState::Absent && self.open.len() < KEPT_OPEN {
            self.open.insert(tid, file);
        }
        state
    }

    /// Closes the files of threads not in `tids` (they exited or are no
    /// longer sampled).
    pub(crate) fn keep_only(&mut self, tids: &[u32]) {
        self.open.retain(|tid, _| tids.contains(tid));
    }
}

/// The state letter of a `stat` line: the field after the parenthesized
/// command name (which may itself contain `)`).
fn parse_state(stat: &[u8]) -> RunState {
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return RunState::Absent;
    };
    match stat.get(close + 2) {
        Some(b'R') => RunState::Running,
        Some(b'S' | b'D' | b'I' | b'W' | b'P') => RunState::Waiting,
        _ => RunState::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_states_even_with_parentheses_in_the_name() {
        assert_eq!(parse_state(b"12 (a) b) R 1 2 3"), RunState::Running);
        assert_eq!(parse_state(b"12 (x) S 1"), RunState::Waiting);
        assert_eq!(parse_state(b"12 (x) D 1"), RunState::Waiting);
        assert_eq!(parse_state(b"12 (x) Z 1"), RunState::Absent);
        assert_eq!(parse_state(b"garbage"), RunState::Absent);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sees_this_thread_running_and_a_sleeper_waiting() {
        let me = current_tid();
        assert!(all_threads().contains(&me));
        let mut reader = StateReader::default();
        assert_eq!(reader.read(me), RunState::Running);
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(reader.read(tid), RunState::Waiting);
        sleeper.join().unwrap();
        // `join` returns when the thread's tid word is cleared; under
        // qemu-user the host thread still runs its exit path then, so the
        // kernel may list it a moment longer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut state = reader.read(tid);
        while state != RunState::Absent && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            state = reader.read(tid);
        }
        assert_eq!(state, RunState::Absent, "read through the kept file");
        assert!(!reader.open.contains_key(&tid), "and the file closed");
        reader.keep_only(&[me]);
        assert_eq!(reader.open.len(), 1);
        assert_eq!(reader.read(tid), RunState::Absent, "opened anew");
    }

    #[test]
    fn the_registry_remembers_and_forgets_workers() {
        let tid = std::thread::spawn(|| {
            register_current_worker();
            current_tid()
        })
        .join()
        .unwrap();
        assert!(workers().contains(&tid));
        forget_worker(tid);
        assert!(!workers().contains(&tid));
    }
}
