//! Stand-in without jemalloc: every heap operation explains how to enable it.

use super::HeapStats;
use crate::Error;

#[cfg(not(feature = "heap"))]
fn unavailable() -> Error {
    Error::HeapUnavailable {
        reason: "this build of stethoscope has the `heap` feature disabled",
        hint: "enable stethoscope's `heap` feature (on by default) and use `stethoscope::heap_profiling!();`",
    }
}

#[cfg(feature = "heap")]
fn unavailable() -> Error {
    Error::HeapUnavailable {
        reason: "jemalloc heap profiling needs a Unix platform",
        hint: "heap profiling is available on Linux and other Unix systems",
    }
}

pub(crate) fn check_available() -> Result<(), Error> {
    Err(unavailable())
}

pub(crate) fn stats() -> Result<HeapStats, Error> {
    Err(unavailable())
}

pub(crate) fn active() -> Result<bool, Error> {
    Err(unavailable())
}

pub(crate) fn set_active(_active: bool) -> Result<(), Error> {
    Err(unavailable())
}

pub(crate) fn lg_sample() -> Result<u32, Error> {
    Err(unavailable())
}

pub(crate) fn dump() -> Result<String, Error> {
    Err(unavailable())
}
