//! Symbols: the modules loaded in this process (with their build IDs and
//! unwind sections), their DWARF debug info, and the process-wide
//! symbolizer that turns addresses into functions, files and lines — with
//! a cache per address, run off the host's runtime, releasing its debug
//! info after a minute without use.
//!
//! Profiles ([`crate::profile`]) and stall captures use it; it depends on
//! nothing of theirs.

// Used by the unwinder on aarch64; its parser is tested everywhere.
#[cfg(all(
    any(target_arch = "aarch64", test),
    any(
        all(native_unwind, any(feature = "cpu", feature = "runtime")),
        all(native_heap_hook, feature = "heap")
    )
))]
pub(crate) mod cfi;
pub(crate) mod dwarf;
mod lines;
pub(crate) mod modules;
pub(crate) mod symbolize;
#[cfg(any(
    all(native_unwind, any(feature = "cpu", feature = "runtime")),
    all(native_heap_hook, feature = "heap")
))]
pub(crate) mod unwind;

use std::sync::Arc;

pub use symbolize::{SymbolizerStats, DEBUG_INFO_IDLE_RELEASE, MAX_CACHED_ADDRESSES};

/// One frame of a symbolized location; a location with inlined calls has
/// several.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SymbolizedFrame {
    /// Demangled function name, without the Rust symbol hash.
    pub function: Arc<str>,
    /// Source file, when debug info is present.
    pub file: Option<Arc<str>>,
    /// Source line, when debug info is present.
    pub line: Option<u32>,
}

/// Statistics of the process-wide symbol cache shared by all profiles.
pub fn symbolizer_stats() -> SymbolizerStats {
    symbolize::Symbolizer::global().stats()
}

/// The function containing each address (the outermost of an inline
/// chain, as a symbol table would say), for addresses that resolve.
/// Blocks while debug info loads.
pub fn function_names(addresses: &[u64]) -> Vec<(u64, String)> {
    let resolved = symbolize::Symbolizer::global().resolve(addresses);
    let vdso = modules::vdso_symbols();
    addresses
        .iter()
        .filter_map(|address| {
            let name = match resolved.get(address).and_then(|frames| frames.last()) {
                Some(frame) => frame.function.to_string(),
                None => vdso
                    .iter()
                    .find(|s| s.range.contains(address))?
                    .name
                    .clone(),
            };
            Some((*address, name))
        })
        .collect()
}

/// Releases the parsed debug info now instead of after
/// [`DEBUG_INFO_IDLE_RELEASE`]; resolved addresses stay cached.
pub fn release_debug_info() {
    symbolize::Symbolizer::global().release_debug_info();
}

pub(crate) fn page_size() -> u64 {
    #[cfg(unix)]
    {
        #[allow(unsafe_code)]
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two())
            .unwrap_or(4096)
    }
    #[cfg(not(unix))]
    {
        4096
    }
}
