//! What a symbolized stack says about its thread's place in a tokio
//! runtime: parked in the scheduler, inside a task poll, or in the blocking
//! pool. Used by the stall capture to find the stuck worker among candidate
//! threads, and by wall-clock profiles to tell parked workers from workers
//! blocked inside a poll.

/// Where a thread was in a tokio runtime, judged from its stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadState {
    /// Parked in the scheduler (or waiting in `block_on`).
    Parked,
    /// A blocking-pool thread.
    Blocking,
    /// Inside a task poll.
    Polling,
    /// Neither could be told from the frames (stripped binary).
    Unknown,
}

/// Classifies a symbolized stack by tokio's own frames. Worker threads
/// are started through the blocking pool too, so the scheduler's frames
/// decide first.
pub(crate) fn classify<S: AsRef<str>>(frames: &[S]) -> ThreadState {
    let has = |pattern: &str| frames.iter().any(|f| f.as_ref().contains(pattern));
    let parked = frames.iter().map(AsRef::as_ref).any(|f| {
        (f.starts_with("tokio::runtime::scheduler::")
            && f.contains("::park")
            && !f.contains("park_yield"))
            || f.starts_with("tokio::runtime::park::")
    });
    if parked {
        ThreadState::Parked
    } else if has("tokio::runtime::scheduler::")
        && (has("tokio::runtime::task::") || has("run_task"))
    {
        ThreadState::Polling
    } else if has("tokio::runtime::blocking::pool") {
        ThreadState::Blocking
    } else {
        ThreadState::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classifies_by_tokio_frames() {
        assert_eq!(
            classify(&names(&[
                "epoll_wait",
                "mio::poll::Poll::poll",
                "tokio::runtime::scheduler::multi_thread::worker::Context::park_internal",
            ])),
            ThreadState::Parked
        );
        assert_eq!(
            classify(&names(&[
                "clock_nanosleep",
                "std::thread::sleep",
                "demo::blocking_handler::{{closure}}",
                "tokio::runtime::task::raw::poll",
                "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
                "tokio::runtime::blocking::pool::Inner::run",
            ])),
            ThreadState::Polling
        );
        assert_eq!(
            classify(&names(&[
                "std::fs::read",
                "tokio::runtime::task::raw::poll",
                "tokio::runtime::blocking::pool::Inner::run",
            ])),
            ThreadState::Blocking
        );
        assert_eq!(classify(&names(&["0x1234"])), ThreadState::Unknown);
    }
}
