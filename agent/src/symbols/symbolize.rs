//! Address → function, file and line, with inline frames, cached per address.
//!
//! Application binaries are resolved from their DWARF by [`super::dwarf`]:
//! per batch of new addresses, only the compilation units they fall in are
//! parsed, and nothing but the results is kept (a general-purpose indexer
//! held 26–50 MiB for a 25 MiB binary). Inline chains, files and lines come
//! from there; names fall back to the ELF symbol table. System libraries
//! (libc, libm…) are named from their symbol table only, read from their
//! detached debug file when one is installed. The main executable is opened
//! through `/proc/self/exe`, so a binary replaced on disk by a deployment
//! still symbolizes against the running one.
//!
//! The CPU sampler resolves addresses in a background thread while the
//! profile window is still open (coalesced into a few batches per second),
//! so a report only resolves what is new. The address cache is bounded by
//! [`MAX_CACHED_ADDRESSES`]; system symbol tables and the per-binary unit
//! index (address ranges of compilation units, ~24 bytes each) are dropped
//! after [`DEBUG_INFO_IDLE_RELEASE`] without use.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::modules::{loaded_modules, vdso_symbols, LoadedModule};
use super::SymbolizedFrame;

/// Most addresses kept in the cache; beyond it the cache starts over.
pub const MAX_CACHED_ADDRESSES: usize = 256 * 1024;

/// Quiet time after which queued prefetch batches are resolved together.
const PREFETCH_COALESCE_GAP: Duration = Duration::from_millis(100);

/// Longest a prefetch batch waits for more addresses.
const PREFETCH_COALESCE_MAX: Duration = Duration::from_millis(500);

/// How long the symbolizer keeps the symbol tables of system libraries and
/// the unit indexes of application binaries after their last use.
pub const DEBUG_INFO_IDLE_RELEASE: Duration = Duration::from_secs(60);

/// Cache and resolver statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SymbolizerStats {
    /// Addresses currently cached.
    pub cached_addresses: usize,
    /// Estimated bytes held by the cache (entries, interned strings, unit
    /// indexes).
    pub cache_bytes: usize,
    /// Addresses resolved since the process started.
    pub resolved_total: u64,
    /// Time spent resolving, summed over all calls.
    pub resolve_time: Duration,
    /// Whether symbol tables of system libraries are currently held
    /// (released after [`DEBUG_INFO_IDLE_RELEASE`] without use). Debug info
    /// of application binaries is never held between lookups.
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
}

/// Function symbols of a binary, sorted by address.
struct SymbolTable {
    symbols: Vec<(u64, u64, Box<str>)>,
}

impl SymbolTable {
    fn read(path: &str) -> Option<Self> {
        use object::{Object, ObjectSymbol};
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let collect = |symbols: &mut dyn Iterator<Item = object::Symbol<'_, '_>>| {
            symbols
                .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
                .filter_map(|s| {
                    let name = super::dwarf::demangle(s.name().ok()?);
                    Some((s.address(), s.size(), name.into_boxed_str()))
                })
                .collect::<Vec<_>>()
        };
        let mut symbols = collect(&mut file.symbols());
        if symbols.is_empty() {
            symbols = collect(&mut file.dynamic_symbols());
        }
        symbols.sort_by_key(|s| s.0);
        Some(Self { symbols })
    }

    fn find(&self, probe: u64) -> Option<&str> {
        let index = self
            .symbols
            .partition_point(|s| s.0 <= probe)
            .checked_sub(1)?;
        let (start, size, name) = &self.symbols[index];
        (probe < start.saturating_add(*size)).then_some(&**name)
    }
}

/// Whether a binary is part of the operating system rather than the
/// application.
fn is_system_library(module: &LoadedModule) -> bool {
    !module.main
        && ["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"]
            .iter()
            .any(|prefix| module.path.starts_with(prefix))
}

/// Symbol tables of system libraries, by path (`None`: unreadable), unit
/// indexes of application binaries, and the module list.
#[derive(Default)]
struct Resolver {
    sources: HashMap<String, Option<SymbolTable>>,
    indexes: HashMap<String, Option<super::dwarf::UnitIndex>>,
    modules: Vec<LoadedModule>,
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

#[derive(Clone)]
struct RawFrame {
    function: String,
    file: Option<String>,
    line: Option<u32>,
}

/// The process-wide symbolizer.
pub(crate) struct Symbolizer {
    cache: Mutex<Cache>,
    /// Held while resolving; separate from the cache so lookups and stats
    /// never wait for debug info to load.
    resolver: Mutex<Resolver>,
    prefetch: Mutex<Option<mpsc::Sender<Vec<u64>>>>,
    /// The unit indexes' bytes when last counted: stats read while the
    /// resolver is busy report this rather than nothing.
    index_bytes: std::sync::atomic::AtomicUsize,
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
            resolver: Mutex::new(Resolver::default()),
            index_bytes: std::sync::atomic::AtomicUsize::new(0),
            prefetch: Mutex::new(None),
        })
    }

    /// Resolves lookup addresses (an interrupted instruction, or a return
    /// address minus one). Unknown addresses map to an empty frame list.
    /// Debug info is parsed without holding the cache lock.
    pub(crate) fn resolve(
        &'static self,
        addresses: &[u64],
    ) -> HashMap<u64, Arc<[SymbolizedFrame]>> {
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
        let resolved: Vec<(u64, Vec<RawFrame>)> = {
            let mut resolver = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
            let frames = resolver.resolve_batch(&missing);
            let index_bytes = resolver
                .indexes
                .values()
                .flatten()
                .map(super::dwarf::UnitIndex::bytes)
                .sum();
            self.index_bytes
                .store(index_bytes, std::sync::atomic::Ordering::Relaxed);
            missing.into_iter().zip(frames).collect()
        };
        let elapsed = started.elapsed();
        // Whoever loaded the debug info (a CPU profile, a heap profile, a
        // stall, /debug/pprof/symbol), the worker releases it when idle.
        self.ensure_worker();
        let mut cache = self.lock();
        cache.resolved_total += resolved.len() as u64;
        cache.resolve_time += elapsed;
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

    /// Starts the background worker if it is not running: it also releases
    /// the debug info after [`DEBUG_INFO_IDLE_RELEASE`] without use.
    fn ensure_worker(&'static self) {
        let mut sender = self.prefetch.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.is_none() {
            self.spawn_worker(&mut sender, Vec::new());
        }
    }

    fn spawn_worker(&'static self, sender: &mut Option<mpsc::Sender<Vec<u64>>>, first: Vec<u64>) {
        let (tx, rx) = mpsc::channel::<Vec<u64>>();
        let spawned = std::thread::Builder::new()
            .name("stethoscope-sym".into())
            .spawn(move || loop {
                match rx.recv_timeout(DEBUG_INFO_IDLE_RELEASE) {
                    Ok(mut batch) => {
                        // Coalesce the stream of small batches a profile
                        // window produces (one per drain) into fewer,
                        // larger ones: each costs a file mapping and a
                        // pass over the units it touches.
                        let started = Instant::now();
                        while started.elapsed() < PREFETCH_COALESCE_MAX {
                            match rx.recv_timeout(PREFETCH_COALESCE_GAP) {
                                Ok(more) => batch.extend(more),
                                Err(_) => break,
                            }
                        }
                        batch.sort_unstable();
                        batch.dedup();
                        self.resolve(&batch);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => self.release_debug_info(),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            });
        match spawned {
            Ok(_) => {
                // The worker owns the receiver; a send can only fail if it died.
                if !first.is_empty() {
                    let _ = tx.send(first);
                }
                *sender = Some(tx);
            }
            Err(error) => tracing::debug!(%error, "no symbolizer thread; resolving on demand"),
        }
    }

    /// Drops the opened binaries and their parsed debug info; cached
    /// addresses stay. The next new address opens them again.
    pub(crate) fn release_debug_info(&self) {
        let mut resolver = self.resolver.lock().unwrap_or_else(PoisonError::into_inner);
        if !resolver.sources.is_empty() || !resolver.indexes.is_empty() {
            resolver.sources.clear();
            resolver.indexes.clear();
            drop(resolver);
            self.index_bytes
                .store(0, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("symbolizer released its debug info");
            crate::memory::give_back_freed();
        }
    }

    pub(crate) fn stats(&self) -> SymbolizerStats {
        use std::sync::atomic::Ordering;
        let index_bytes = match self.resolver.try_lock() {
            Ok(r) => {
                let bytes = r
                    .indexes
                    .values()
                    .flatten()
                    .map(super::dwarf::UnitIndex::bytes)
                    .sum();
                self.index_bytes.store(bytes, Ordering::Relaxed);
                bytes
            }
            Err(_) => self.index_bytes.load(Ordering::Relaxed),
        };
        let cache = self.lock();
        SymbolizerStats {
            cached_addresses: cache.entries.len(),
            cache_bytes: cache.bytes() + index_bytes,
            resolved_total: cache.resolved_total,
            resolve_time: cache.resolve_time,
            debug_info_loaded: self
                .resolver
                .try_lock()
                .map_or(true, |r| !r.sources.is_empty() || !r.indexes.is_empty()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a module's symbols are best read: its detached debug file when one
/// is installed under `/usr/lib/debug/.build-id/` (Debian, Ubuntu and Fedora
/// `-dbg`/`-debuginfo` packages; `split-debuginfo` builds), else the binary.
fn symbol_file(module: &LoadedModule) -> String {
    if let Some(id) = module.build_id_hex().filter(|id| id.len() > 2) {
        let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
        if std::path::Path::new(&debug).is_file() {
            return debug;
        }
    }
    module.open_path().to_owned()
}

impl Resolver {
    /// Resolves lookup addresses into inline chains, innermost first, one
    /// chain per address (empty when unknown).
    fn resolve_batch(&mut self, addresses: &[u64]) -> Vec<Vec<RawFrame>> {
        let mut out = vec![Vec::new(); addresses.len()];
        // Group by module so each binary is opened once per batch.
        let mut by_module: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut relisted = false;
        for (index, &address) in addresses.iter().enumerate() {
            if address == 0 {
                continue;
            }
            if let Some(module) = self.module_index(address, &mut relisted) {
                by_module.entry(module).or_default().push(index);
            }
        }
        for (module, indices) in by_module {
            let Some(module) = self.modules.get(module).cloned() else {
                continue;
            };
            if module.path == "[vdso]" {
                // No file to open; its symbols come from memory.
                for index in indices {
                    let address = addresses[index];
                    out[index] = vdso_symbols()
                        .iter()
                        .find(|s| s.range.contains(&address))
                        .map(|s| RawFrame {
                            function: s.name.clone(),
                            file: None,
                            line: None,
                        })
                        .into_iter()
                        .collect();
                }
                continue;
            }
            let path = symbol_file(&module);
            if is_system_library(&module) {
                let table = self
                    .sources
                    .entry(module.path.clone())
                    .or_insert_with(|| SymbolTable::read(&path));
                for index in indices {
                    let probe = addresses[index].wrapping_sub(module.base);
                    if let Some(name) = table.as_ref().and_then(|t| t.find(probe)) {
                        out[index] = vec![RawFrame {
                            function: name.to_owned(),
                            file: None,
                            line: None,
                        }];
                    }
                }
                continue;
            }
            let probes: Vec<u64> = indices
                .iter()
                .map(|&i| addresses[i].wrapping_sub(module.base))
                .collect();
            let index = self.indexes.entry(module.path.clone()).or_default();
            let chains = super::dwarf::resolve_batch(&path, &probes, index);
            for (index, chain) in indices.into_iter().zip(chains) {
                out[index] = chain
                    .into_iter()
                    .map(|f| RawFrame {
                        function: f.function,
                        file: f.file,
                        line: f.line,
                    })
                    .collect();
            }
        }
        out
    }

    /// The index of the module containing `address`, listing modules again
    /// if it is not among the known ones (a library loaded since) — at most
    /// once per batch (`relisted`): listing holds the dynamic loader's lock,
    /// and garbage or JIT addresses are never in any module.
    fn module_index(&mut self, address: u64, relisted: &mut bool) -> Option<usize> {
        let contains = |m: &LoadedModule| m.code_range().is_some_and(|r| r.contains(&address));
        if !*relisted && !self.modules.iter().any(contains) {
            self.modules = loaded_modules(false);
            *relisted = true;
        }
        self.modules.iter().position(contains)
    }
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
        // The very frames again (other tests resolve through the global
        // symbolizer at the same time, so its counters may move).
        let again = symbolizer.resolve(&[address]);
        assert!(
            Arc::ptr_eq(&again[&address], &frames[&address]),
            "second lookup is cached"
        );
        assert!(symbolizer.stats().cache_bytes > 0);
    }

    #[test]
    fn detached_debug_files_are_found_by_build_id() {
        let modules = loaded_modules(false);
        let Some(libc) = modules.iter().find(|m| m.path.contains("libc.so")) else {
            return;
        };
        let Some(id) = libc.build_id_hex() else {
            return;
        };
        let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
        if !std::path::Path::new(&debug).is_file() {
            // libc6-dbg is not installed here; nothing to find.
            return;
        }
        assert_eq!(symbol_file(libc), debug);
        // memcpy's internal variants are only named in the debug file.
        let memcpy = libc::memcpy as *const () as usize as u64;
        let frames = Symbolizer::global().resolve(&[memcpy]);
        let name = frames[&memcpy]
            .first()
            .map(|f| f.function.to_string())
            .unwrap_or_default();
        assert!(name.contains("mem"), "{name}");
    }

    #[test]
    fn unknown_addresses_resolve_to_nothing() {
        let frames = Symbolizer::global().resolve(&[0, 8]);
        assert!(frames[&0].is_empty());
        assert!(frames[&8].is_empty());
    }
}
