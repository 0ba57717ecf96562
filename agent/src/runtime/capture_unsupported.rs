//! Stand-in where stack capture is not implemented: stalls are reported
//! with their duration and without frames.

/// Why a capture did not happen.
#[derive(Debug)]
pub(crate) enum CaptureError {
    /// Not implemented on this platform.
    Unsupported,
}

impl std::error::Error for CaptureError {}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("capturing a stuck worker's stack needs Linux on x86_64 or aarch64")
    }
}

/// One thread's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Captured {
    /// Lookup addresses, innermost first, and the thread's label set.
    Frames(Vec<u64>, u32),
    /// The thread exited.
    Gone,
    /// No answer.
    NoAnswer,
}

/// Never constructed here.
#[derive(Debug)]
pub(crate) enum StackCapture {}

impl StackCapture {
    pub(crate) fn prepare() -> Result<Self, CaptureError> {
        Err(CaptureError::Unsupported)
    }
    pub(crate) fn poisoned(&self) -> bool {
        match *self {}
    }
    pub(crate) fn capture(
        &mut self,
        _tids: &[u32],
        _deadline: std::time::Instant,
    ) -> Result<Vec<Captured>, CaptureError> {
        match *self {}
    }
}

/// How long the signalled threads would have to answer.
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Threads [`ANSWER_TIMEOUT`] is meant for.
pub(crate) const THREADS_IN_ANSWER_TIMEOUT: usize = 256;
