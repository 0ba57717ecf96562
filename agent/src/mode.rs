//! What a profile samples — CPU time, or wall-clock time of chosen
//! threads. A leaf, so that every module (the error type among them) can
//! name the modes; [`crate::cpu`] re-exports them.

use std::fmt;

/// What a profile samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ProfileMode {
    /// CPU time: each thread is interrupted `hz` times per second of its
    /// own CPU time (a CPU-clock timer per thread).
    #[default]
    Cpu,
    /// Wall-clock time: the chosen threads are each interrupted `hz` times
    /// per second of real time, running or not, and every sample is
    /// labelled `state=running`, `waiting` (asleep or blocked: in a
    /// syscall, on a lock, in `sleep`) or `parked` (a tokio worker idle in
    /// its scheduler, as opposed to blocked inside a poll).
    Wall(WallThreads),
}

/// Which threads a wall-clock profile samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WallThreads {
    /// Every thread of the process (up to
    /// [`MAX_WALL_THREADS`](crate::cpu::MAX_WALL_THREADS)), but the
    /// sampler's own timer thread.
    #[default]
    All,
    /// The tokio worker threads the agent has seen: threads that polled a
    /// labelled future (every request through the RED layer does) or ran
    /// the agent's executor-lag probe, inside a runtime.
    Workers,
}

impl ProfileMode {
    /// The query parameters that ask for this mode, e.g.
    /// `mode=wall&threads=workers`.
    pub fn query(self) -> &'static str {
        match self {
            ProfileMode::Cpu => "mode=cpu",
            ProfileMode::Wall(WallThreads::All) => "mode=wall",
            ProfileMode::Wall(WallThreads::Workers) => "mode=wall&threads=workers",
        }
    }
}

/// `CPU`, `wall-clock (threads=all)`, `wall-clock (threads=workers)`.
impl fmt::Display for ProfileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileMode::Cpu => f.write_str("CPU"),
            ProfileMode::Wall(WallThreads::All) => f.write_str("wall-clock (threads=all)"),
            ProfileMode::Wall(WallThreads::Workers) => f.write_str("wall-clock (threads=workers)"),
        }
    }
}
