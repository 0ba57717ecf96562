//! Address → function, file and line, with inline frames, cached per address.
//!
//! Resolution uses `backtrace::resolve` (gimli/addr2line over the binaries'
//! DWARF). Its first use in a process loads the debug info of the binary,
//! which costs tens of megabytes and up to seconds for large binaries, so the
//! CPU sampler starts resolving addresses in a background thread while the
//! profile window is still open, and a report only resolves what is new.
//! The cache is bounded by [`MAX_CACHED_ADDRESSES`].

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::SymbolizedFrame;

/// Most addresses kept in the cache; beyond it the cache starts over.
pub const MAX_CACHED_ADDRESSES: usize = 256 * 1024;

/// How long the symbolizer keeps the parsed debug info of the binaries after
/// its last use. Parsing it again costs about a tenth of a second of CPU per
/// 30 MB binary; keeping it costs tens of megabytes of resident memory.
pub const DEBUG_INFO_IDLE_RELEASE: Duration = Duration::from_secs(60);

/// Cache and resolver statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SymbolizerStats {
    /// Addresses currently cached.
    pub cached_addresses: usize,
    /// Estimated bytes held by the cache (entries and interned strings).
    pub cache_bytes: usize,
    /// Addresses resolved since the process started.
    pub resolved_total: u64,
    /// Time spent resolving, summed over all calls.
    pub resolve_time: Duration,
    /// Whether parsed debug info is currently held (released after
    /// [`DEBUG_INFO_IDLE_RELEASE`] without use).
    pub debug_info_loaded: bool,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<u64, Arc<[SymbolizedFrame]>>,
    strings: HashSet<Arc<str>>,
    string_bytes: usize,
    frame_count: usize,
    resolved_total: u64,
    resolve_time: Duration,
    debug_info_loaded: bool,
}

impl Cache {
    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(text) {
            return Arc::clone(found);
        }
        let shared: Arc<str> = Arc::from(text);
        self.string_bytes += text.len() + 2 * std::mem::size_of::<usize>();
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    fn insert(&mut self, address: u64, frames: Vec<RawFrame>) -> Arc<[SymbolizedFrame]> {
        if self.entries.len() >= MAX_CACHED_ADDRESSES {
            self.entries.clear();
            self.strings.clear();
            self.string_bytes = 0;
            self.frame_count = 0;
        }
        let frames: Arc<[SymbolizedFrame]> = frames
            .into_iter()
            .map(|f| SymbolizedFrame {
                function: self.intern(&f.function),
                file: f.file.as_deref().map(|file| self.intern(file)),
                line: f.line,
            })
            .collect();
        self.frame_count += frames.len();
        self.entries.insert(address, Arc::clone(&frames));
        frames
    }

    fn bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, Arc<[SymbolizedFrame]>)>() + 8;
        self.entries.capacity() * entry
            + self.frame_count * std::mem::size_of::<SymbolizedFrame>()
            + self.string_bytes
            + self.strings.capacity() * std::mem::size_of::<Arc<str>>()
    }
}

struct RawFrame {
    function: String,
    file: Option<String>,
    line: Option<u32>,
}

/// The process-wide symbolizer.
pub(crate) struct Symbolizer {
    cache: Mutex<Cache>,
    prefetch: Mutex<Option<mpsc::Sender<Vec<u64>>>>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Symbolizer {
    pub(crate) fn global() -> &'static Symbolizer {
        static GLOBAL: OnceLock<Symbolizer> = OnceLock::new();
        GLOBAL.get_or_init(|| Symbolizer {
            cache: Mutex::new(Cache::default()),
            prefetch: Mutex::new(None),
        })
    }

    /// Resolves lookup addresses (an interrupted instruction, or a return
    /// address minus one). Unknown addresses map to an empty frame list.
    /// Debug info is parsed without holding the cache lock.
    pub(crate) fn resolve(&self, addresses: &[u64]) -> HashMap<u64, Arc<[SymbolizedFrame]>> {
        let mut out: HashMap<u64, Arc<[SymbolizedFrame]>> = HashMap::with_capacity(addresses.len());
        let missing: Vec<u64> = {
            let cache = self.lock();
            for &address in addresses {
                if let Some(frames) = cache.entries.get(&address) {
                    out.insert(address, Arc::clone(frames));
                }
            }
            let mut seen = HashSet::new();
            addresses
                .iter()
                .copied()
                .filter(|a| !out.contains_key(a) && seen.insert(*a))
                .collect()
        };
        if missing.is_empty() {
            return out;
        }
        let started = Instant::now();
        let resolved: Vec<(u64, Vec<RawFrame>)> = missing
            .into_iter()
            .map(|a| (a, resolve_uncached(a)))
            .collect();
        let elapsed = started.elapsed();
        let mut cache = self.lock();
        cache.resolved_total += resolved.len() as u64;
        cache.resolve_time += elapsed;
        cache.debug_info_loaded |= !resolved.is_empty();
        for (address, frames) in resolved {
            out.insert(address, cache.insert(address, frames));
        }
        out
    }

    /// Queues addresses for resolution on a background thread, so that a
    /// report at the end of a profile window finds them cached.
    pub(crate) fn prefetch(&'static self, addresses: Vec<u64>) {
        if addresses.is_empty() {
            return;
        }
        let mut sender = self.prefetch.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = sender.as_ref() {
            if let Err(mpsc::SendError(back)) = tx.send(addresses) {
                *sender = None;
                self.spawn_worker(&mut sender, back);
            }
        } else {
            self.spawn_worker(&mut sender, addresses);
        }
    }

    fn spawn_worker(&'static self, sender: &mut Option<mpsc::Sender<Vec<u64>>>, first: Vec<u64>) {
        let (tx, rx) = mpsc::channel::<Vec<u64>>();
        let spawned = std::thread::Builder::new()
            .name("stethoscope-sym".into())
            .spawn(move || loop {
                match rx.recv_timeout(DEBUG_INFO_IDLE_RELEASE) {
                    Ok(batch) => {
                        self.resolve(&batch);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => self.release_debug_info(),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            });
        match spawned {
            Ok(_) => {
                // The worker owns the receiver; a send can only fail if it died.
                let _ = tx.send(first);
                *sender = Some(tx);
            }
            Err(error) => tracing::debug!(%error, "no symbolizer thread; resolving on demand"),
        }
    }

    /// Drops the parsed debug info (backtrace's cache of mapped binaries and
    /// DWARF); cached addresses stay. The next new address loads it again.
    pub(crate) fn release_debug_info(&self) {
        let mut cache = self.lock();
        if cache.debug_info_loaded {
            backtrace::clear_symbol_cache();
            cache.debug_info_loaded = false;
            tracing::debug!("symbolizer released its debug info");
        }
    }

    pub(crate) fn stats(&self) -> SymbolizerStats {
        let cache = self.lock();
        SymbolizerStats {
            cached_addresses: cache.entries.len(),
            cache_bytes: cache.bytes(),
            resolved_total: cache.resolved_total,
            resolve_time: cache.resolve_time,
            debug_info_loaded: cache.debug_info_loaded,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves one lookup address into its inline chain, innermost first.
fn resolve_uncached(address: u64) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    if address == 0 {
        return frames;
    }
    // backtrace::resolve subtracts one byte, treating every address as a
    // return address; ours are already lookup addresses.
    let probe = address.wrapping_add(1) as usize as *mut std::ffi::c_void;
    backtrace::resolve(probe, |symbol| {
        let function = match symbol.name() {
            // `{:#}` drops the `::h0123…` hash of Rust symbols.
            Some(name) => format!("{name:#}"),
            None => return,
        };
        frames.push(RawFrame {
            function,
            file: symbol.filename().map(|p| p.to_string_lossy().into_owned()),
            line: symbol.lineno(),
        });
    });
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_known_name() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn resolves_a_function_of_this_binary_and_caches_it() {
        let address = a_function_with_a_known_name as *const () as usize as u64;
        let symbolizer = Symbolizer::global();
        let frames = symbolizer.resolve(&[address, address]);
        assert_eq!(frames.len(), 1);
        let innermost = &frames[&address][0];
        assert!(
            innermost.function.ends_with("a_function_with_a_known_name"),
            "{}",
            innermost.function
        );
        assert!(!innermost.function.contains("::h"), "hash is stripped");
        assert!(innermost
            .file
            .as_deref()
            .unwrap_or("")
            .ends_with("symbolize.rs"));
        let before = symbolizer.stats().resolved_total;
        symbolizer.resolve(&[address]);
        assert_eq!(
            symbolizer.stats().resolved_total,
            before,
            "second lookup is cached"
        );
        assert!(symbolizer.stats().cache_bytes > 0);
    }

    #[test]
    fn unknown_addresses_resolve_to_nothing() {
        let frames = Symbolizer::global().resolve(&[0, 8]);
        assert!(frames[&0].is_empty());
        assert!(frames[&8].is_empty());
    }
}
