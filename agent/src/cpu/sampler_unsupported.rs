//! Stand-in for platforms and builds without the SIGPROF sampler: every
//! attempt to start reports why CPU profiling is unavailable.

use crate::Error;

#[cfg(not(feature = "cpu"))]
const REASON: &str = "this build of stethoscope has the `cpu` feature disabled";
#[cfg(feature = "cpu")]
const REASON: &str = "CPU sampling needs Linux on x86_64 or aarch64";

/// Cumulative counters of one sampler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SamplerCounters {
    pub(crate) recorded: u64,
    pub(crate) dropped: u64,
    pub(crate) handler_ns: u64,
}

/// Never constructed: there is no sampler here.
pub(crate) enum Sampler {}

/// Never constructed either; keeps the session code platform-neutral.
pub(crate) enum RawSample {}

impl RawSample {
    pub(crate) fn thread_name(&self) -> &[u8] {
        match *self {}
    }
    pub(crate) fn frames(&self) -> &[u64] {
        match *self {}
    }
    pub(crate) fn timestamp_ns(&self) -> u64 {
        match *self {}
    }
    pub(crate) fn labels(&self) -> u32 {
        match *self {}
    }
    pub(crate) fn state(&self) -> u8 {
        match *self {}
    }
    pub(crate) fn periods(&self) -> u32 {
        match *self {}
    }
}

/// How often the control thread would look for new threads.
pub(crate) const THREAD_REFRESH_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(100);

impl Sampler {
    pub(crate) fn start(_hz: u32, _mode: super::ProfileMode) -> Result<Self, Error> {
        Err(Error::Unsupported {
            what: "CPU profiling",
            reason: REASON,
        })
    }
    pub(crate) fn footprint_bytes(&self) -> usize {
        match *self {}
    }
    pub(crate) fn clock(&self) -> &'static str {
        match *self {}
    }
    pub(crate) fn drain(&mut self, _visit: impl FnMut(&RawSample)) -> usize {
        match *self {}
    }
    pub(crate) fn counters(&self) -> SamplerCounters {
        match *self {}
    }
    pub(crate) fn refresh_threads(&mut self) {
        match *self {}
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        match *self {}
    }
}

pub(crate) mod clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    pub(crate) fn monotonic_ns() -> u64 {
        static ANCHOR: OnceLock<Instant> = OnceLock::new();
        let anchor = *ANCHOR.get_or_init(Instant::now);
        u64::try_from(anchor.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn process_cpu_ns() -> u64 {
        0
    }
}
