//! How the continuous profiler runs: rate, segment length, history kept,
//! caps.

use std::time::Duration;

/// How the continuous profiler runs.
///
/// ```
/// use std::time::Duration;
/// use stethoscope::cpu::ContinuousSettings;
///
/// let settings = ContinuousSettings::new(19).segment(Duration::from_secs(10)).keep(Duration::from_secs(900));
/// assert_eq!(settings.hz, 19);
/// assert_eq!(settings.segments(), 90);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContinuousSettings {
    /// Samples per second of CPU time when nothing else samples (1–1000).
    pub hz: u32,
    /// Length of one aggregated segment: the time resolution of look-back.
    pub segment: Duration,
    /// How much history the ring keeps.
    pub keep: Duration,
    /// Distinct stacks a segment keeps; the rest are counted in one
    /// `[truncated]` stack.
    pub max_stacks_per_segment: usize,
    /// Segments that pinned incidents may hold in all; the oldest pin goes
    /// first.
    pub max_pinned_segments: usize,
}

/// Default segment length.
pub const DEFAULT_CONTINUOUS_SEGMENT: Duration = Duration::from_secs(10);
/// Default history kept.
pub const DEFAULT_CONTINUOUS_KEEP: Duration = Duration::from_secs(15 * 60);
/// Default cap of distinct stacks per segment.
pub const DEFAULT_MAX_STACKS_PER_SEGMENT: usize = 4096;
/// Default number of segments pins may hold.
pub const DEFAULT_MAX_PINNED_SEGMENTS: usize = 24;

impl ContinuousSettings {
    /// Continuous profiling at `hz` with the default segment (10 s), ring
    /// (15 min) and caps.
    pub fn new(hz: u32) -> Self {
        ContinuousSettings {
            hz,
            segment: DEFAULT_CONTINUOUS_SEGMENT,
            keep: DEFAULT_CONTINUOUS_KEEP,
            max_stacks_per_segment: DEFAULT_MAX_STACKS_PER_SEGMENT,
            max_pinned_segments: DEFAULT_MAX_PINNED_SEGMENTS,
        }
    }

    /// Sets the segment length (at least 1 s).
    #[must_use]
    pub fn segment(mut self, segment: Duration) -> Self {
        self.segment = segment.max(Duration::from_secs(1));
        self
    }

    /// Sets how much history is kept (at least one segment).
    #[must_use]
    pub fn keep(mut self, keep: Duration) -> Self {
        self.keep = keep;
        self
    }

    /// Sets the cap of distinct stacks per segment (at least 16).
    #[must_use]
    pub fn max_stacks_per_segment(mut self, stacks: usize) -> Self {
        self.max_stacks_per_segment = stacks.max(16);
        self
    }

    /// Sets how many segments pins may hold in all.
    #[must_use]
    pub fn max_pinned_segments(mut self, segments: usize) -> Self {
        self.max_pinned_segments = segments;
        self
    }

    /// Segments the ring holds.
    pub fn segments(&self) -> usize {
        let segment = self.segment.as_nanos().max(1);
        usize::try_from(self.keep.as_nanos().div_ceil(segment))
            .unwrap_or(usize::MAX)
            .max(1)
    }
}
