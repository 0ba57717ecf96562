//! Stand-in where the fast heap backtraces are not built: jemalloc keeps
//! its own unwinder.

use crate::Error;

#[derive(Debug)]
pub(crate) struct FastBacktraces(());

pub(crate) fn install() -> Result<FastBacktraces, Error> {
    Err(Error::HeapUnavailable {
        reason: "fast heap backtraces are built for Linux x86_64 and aarch64 only",
        hint: "jemalloc's own unwinder is used; heap profiles are unaffected",
    })
}

pub(crate) fn refresh() {}

pub(crate) fn counters() -> (bool, u64, u64) {
    (false, 0, 0)
}
