//! jemalloc heap profiles, snapshots and leak diffs.
//!
//! jemalloc samples allocations (one per 2^`lg_prof_sample` bytes on average)
//! and can dump the live sampled heap with each sample's stack. This module
//! turns dumps into symbolized [`Profile`]s with estimated live bytes and
//! objects (jeprof's unsampling), keeps [`HeapSnapshot`]s in a bounded ring,
//! and compares two of them — "which call stacks grew?" — as a
//! [`SnapshotDiff`]. It also counts the sampled allocations made during a
//! window, freed or not — "who churns memory?" — as [`Allocations`]
//! (Go's `alloc_objects` / `alloc_space`).
//!
//! The agent's sample hooks see every sampled allocation with the labels
//! of the code that made it (a route, a task, a span: see
//! [`labels`](crate::labels)), so heap profiles, diffs and allocation
//! profiles can be ranked by label (`by=route`).
//!
//! Heap profiling needs jemalloc as the global allocator with profiling on
//! from the first allocation; [`heap_profiling!`](crate::heap_profiling)
//! does both in one line:
//!
//! ```
//! stethoscope::heap_profiling!();
//!
//! fn main() -> Result<(), stethoscope::Error> {
//!     let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
//!     // GET /debug/pprof/heap, POST /debug/heap/snapshots, GET /debug/heap/diff …
//!     assert!(agent.heap().stats().is_ok(), "jemalloc is the allocator");
//!     Ok(())
//! }
//! ```
//!
//! Without it every operation returns [`Error::HeapUnavailable`] with the
//! fix in its hint; nothing else in the agent is affected. Heap weights are
//! estimates from samples, not exact counts.
//!
//! Snapshot semantics: a snapshot is the live sampled heap at one instant.
//! Toggling `prof.active` never resets jemalloc's samples (no `prof.reset`),
//! so allocations sampled before a pause still count while they live;
//! allocations made while profiling is paused are not sampled and never
//! appear, even after it resumes.

mod allocs;
#[cfg(all(feature = "heap", native_heap_hook))]
mod backtrace;
#[cfg(not(all(feature = "heap", native_heap_hook)))]
#[path = "backtrace_unsupported.rs"]
mod backtrace;
mod diff;
mod dump;
#[cfg(all(feature = "heap", native_unwind))]
mod hooks;
#[cfg(not(all(feature = "heap", native_unwind)))]
#[path = "hooks_unsupported.rs"]
mod hooks;
#[cfg(all(feature = "heap", unix))]
mod jemalloc;
#[cfg(not(all(feature = "heap", unix)))]
#[path = "jemalloc_unsupported.rs"]
mod jemalloc;
mod live;
#[cfg(feature = "metrics")]
mod metrics;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::profile::{Profile, ProfileMeta, RawStack, ValueType};
use crate::Error;
pub use allocs::{AllocationWindow, Allocations, MAX_ALLOCATION_STACKS};
pub use diff::{DiffEntry, DiffTarget, SnapshotDiff};

/// The allocator [`heap_profiling!`](crate::heap_profiling) installs:
/// tikv-jemallocator's jemalloc, built with profiling and statistics.
///
/// Re-exported rather than wrapped: the macro expands in the service's
/// crate, and the global allocator must be this exact type for the agent's
/// `mallctl` calls to reach the jemalloc it links; a service that names it
/// itself (`#[global_allocator] static A: stethoscope::heap::Jemalloc`)
/// gets the one stethoscope was built with, whatever tikv-jemallocator
/// version it depends on.
#[cfg(all(feature = "heap", unix))]
pub use tikv_jemallocator::Jemalloc;

/// Heap snapshots an agent keeps before evicting the oldest.
pub const DEFAULT_HEAP_SNAPSHOTS: usize = 16;

/// Most heap snapshots an agent may be configured to keep.
pub const MAX_HEAP_SNAPSHOTS: usize = 1024;

/// jemalloc's startup options used by [`heap_profiling!`](crate::heap_profiling):
/// profiling on and active, one sample per 512 KiB allocated on average.
pub const DEFAULT_MALLOC_CONF: &str = "prof:true,prof_active:true,lg_prof_sample:19";

/// A NUL-terminated jemalloc option string exported as `malloc_conf`, which
/// jemalloc reads before its first allocation. Built by
/// [`heap_profiling!`](crate::heap_profiling).
#[derive(Debug)]
#[repr(transparent)]
pub struct MallocConf(*const u8);

// SAFETY: the pointer refers to a `'static` immutable byte string.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

impl MallocConf {
    /// Wraps a `'static` NUL-terminated option string; a missing NUL is a
    /// compile-time error when used in a `static`.
    pub const fn new(conf: &'static [u8]) -> Self {
        assert!(
            !conf.is_empty() && conf[conf.len() - 1] == 0,
            "malloc_conf must end with a NUL byte"
        );
        Self(conf.as_ptr())
    }
}

/// Installs jemalloc (with profiling) as the global allocator and turns heap
/// profiling on from the first allocation. Use it once, at the top level of
/// the binary crate (`main.rs`), not in a library:
///
/// ```
/// // The defaults (sample every 512 KiB), or other jemalloc options:
/// stethoscope::heap_profiling!("prof:true,prof_active:true,lg_prof_sample:17");
/// # fn main() {}
/// ```
///
/// It exports the options under both names jemalloc may read —
/// `_rjem_malloc_conf` (tikv-jemallocator's default prefixed build) and
/// `malloc_conf` (when something enables its
/// `unprefixed_malloc_on_supported_platforms` feature) — so the right one
/// is picked up whichever build Cargo's feature unification produces. The
/// `MALLOC_CONF` / `_RJEM_MALLOC_CONF` environment variables still override
/// them at startup.
#[cfg(all(feature = "heap", unix))]
#[macro_export]
macro_rules! heap_profiling {
    () => {
        $crate::heap_profiling!("prof:true,prof_active:true,lg_prof_sample:19");
    };
    ($conf:literal) => {
        #[global_allocator]
        static STETHOSCOPE_GLOBAL_ALLOCATOR: $crate::heap::Jemalloc = $crate::heap::Jemalloc;

        #[allow(non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        static STETHOSCOPE_RJEM_MALLOC_CONF: $crate::heap::MallocConf =
            $crate::heap::MallocConf::new(concat!($conf, "\0").as_bytes());

        #[allow(non_upper_case_globals)]
        #[export_name = "malloc_conf"]
        static STETHOSCOPE_MALLOC_CONF: $crate::heap::MallocConf =
            $crate::heap::MallocConf::new(concat!($conf, "\0").as_bytes());
    };
}

/// jemalloc's memory statistics, in bytes. Its JSON is
/// `/debug/heap/stats`'s (with `fragmentation`), its `Display` the
/// `format=text` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeapStats {
    /// Bytes in live allocations (what the application asked for).
    pub allocated_bytes: u64,
    /// Bytes in active pages (allocations rounded up to their size class).
    pub active_bytes: u64,
    /// Bytes in physically resident data pages mapped by jemalloc.
    pub resident_bytes: u64,
    /// Bytes in extents mapped by jemalloc.
    pub mapped_bytes: u64,
    /// Bytes retained as virtual memory for reuse (not returned to the OS).
    pub retained_bytes: u64,
    /// Bytes of jemalloc's own metadata.
    pub metadata_bytes: u64,
}

impl Serialize for HeapStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("HeapStats", 7)?;
        out.serialize_field("allocated_bytes", &self.allocated_bytes)?;
        out.serialize_field("active_bytes", &self.active_bytes)?;
        out.serialize_field("resident_bytes", &self.resident_bytes)?;
        out.serialize_field("mapped_bytes", &self.mapped_bytes)?;
        out.serialize_field("retained_bytes", &self.retained_bytes)?;
        out.serialize_field("metadata_bytes", &self.metadata_bytes)?;
        out.serialize_field("fragmentation", &self.fragmentation())?;
        out.end()
    }
}

impl std::fmt::Display for HeapStats {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            out,
            "jemalloc statistics\n\
             allocated  {:>10.1} MiB  live allocations\n\
             active     {:>10.1} MiB  pages holding them\n\
             resident   {:>10.1} MiB  physically resident\n\
             mapped     {:>10.1} MiB  mapped extents\n\
             retained   {:>10.1} MiB  kept for reuse, not returned to the OS\n\
             metadata   {:>10.1} MiB  jemalloc's own\n\
             fragmentation {:.2} (resident / allocated)\n",
            mib(self.allocated_bytes),
            mib(self.active_bytes),
            mib(self.resident_bytes),
            mib(self.mapped_bytes),
            mib(self.retained_bytes),
            mib(self.metadata_bytes),
            self.fragmentation()
        )
    }
}

impl HeapStats {
    /// `resident / allocated`: 1.0 means every resident byte holds data the
    /// application asked for; higher values are fragmentation and caches.
    pub fn fragmentation(&self) -> f64 {
        if self.allocated_bytes == 0 {
            0.0
        } else {
            self.resident_bytes as f64 / self.allocated_bytes as f64
        }
    }
}

/// Whether allocations are being sampled, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HeapProfilingState {
    /// `prof.active`.
    pub active: bool,
    /// `prof.lg_sample`: log2 of the average bytes between samples.
    pub lg_prof_sample: u32,
    /// Average bytes allocated between two samples.
    pub sample_interval_bytes: u64,
    /// How sampled allocations get their stacks.
    pub backtraces: BacktraceStats,
    /// Allocation windows open now (`/debug/pprof/allocs?seconds=N`); they
    /// share one table, freed when the last one closes.
    pub allocation_windows: usize,
    /// What the agent's sample hooks see: sampled allocations and frees,
    /// and the live samples they track for labels.
    pub sample_hooks: SampleHookStats,
}

/// What the agent's jemalloc sample hooks see (they record the labels of
/// the code that allocated, and feed allocation windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SampleHookStats {
    /// Whether the hooks are installed.
    pub installed: bool,
    /// Sampled allocations seen since the process started.
    pub allocations: u64,
    /// Frees of sampled allocations seen since the process started.
    pub frees: u64,
    /// Live sampled allocations tracked with their labels now.
    pub tracked: u64,
    /// Most live sampled allocations tracked; beyond, they count
    /// unlabelled.
    pub capacity: u64,
    /// Sampled allocations that found no room in the table (counted
    /// unlabelled), since the hooks were installed.
    pub untracked: u64,
}

impl SampleHookStats {
    fn now() -> Self {
        let (live, allocations, frees) = hooks::counters();
        Self {
            installed: live.is_some(),
            allocations,
            frees,
            tracked: live.map_or(0, |l| l.tracked),
            capacity: live.map_or(0, |l| l.capacity),
            untracked: live.map_or(0, |l| l.dropped),
        }
    }
}

/// How jemalloc's sampled allocations get their stacks: the agent's
/// framehop unwinder (Linux x86_64 and aarch64, see
/// [`AgentBuilder::fast_heap_backtraces`](crate::AgentBuilder::fast_heap_backtraces))
/// or jemalloc's own, libgcc's `_Unwind_Backtrace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BacktraceStats {
    /// `"framehop"` while the agent's unwinder is installed, else `"libgcc"`.
    pub unwinder: &'static str,
    /// Stacks the agent's unwinder captured since the process started.
    pub fast: u64,
    /// Stacks it handed to jemalloc's unwinder instead (code loaded after
    /// the last heap dump, a stack it does not know, an unwinding error).
    pub deferred: u64,
}

impl BacktraceStats {
    fn now() -> Self {
        let (installed, fast, deferred) = backtrace::counters();
        Self {
            unwinder: if installed { "framehop" } else { "libgcc" },
            fast,
            deferred,
        }
    }
}

/// One heap snapshot: the live sampled heap at an instant, symbolized and
/// aggregated by stack.
#[derive(Debug)]
#[non_exhaustive]
pub struct HeapSnapshot {
    /// Identifier, increasing from 1.
    pub id: u64,
    /// When it was taken.
    pub taken_at: SystemTime,
    /// The heap profile (`inuse_objects/count`, `inuse_space/bytes`).
    pub profile: Profile,
    /// Estimated live bytes.
    pub total_bytes: i64,
    /// Estimated live objects.
    pub total_objects: i64,
    /// Memory this snapshot holds in the agent, estimated.
    pub memory_bytes: usize,
}

/// The snapshot ring: what `GET /debug/heap/snapshots` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SnapshotList {
    /// The snapshots kept, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Most snapshots kept before the oldest is evicted.
    pub capacity: usize,
    /// Memory the snapshots hold in the agent, estimated.
    pub memory_bytes: usize,
}

/// A snapshot's summary, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Identifier.
    pub id: u64,
    /// When it was taken, RFC 3339.
    pub taken_at: String,
    /// Estimated live bytes.
    pub total_bytes: i64,
    /// Estimated live objects.
    pub total_objects: i64,
    /// Distinct stacks.
    pub stacks: usize,
    /// Memory this snapshot holds in the agent, estimated.
    pub memory_bytes: usize,
}

impl HeapSnapshot {
    /// Its summary.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id,
            taken_at: crate::units::rfc3339(self.taken_at),
            total_bytes: self.total_bytes,
            total_objects: self.total_objects,
            stacks: self.profile.samples.len(),
            memory_bytes: self.memory_bytes,
        }
    }
}

#[derive(Debug)]
struct Ring {
    next_id: u64,
    snapshots: VecDeque<Arc<HeapSnapshot>>,
}

/// Heap profiling for one agent: jemalloc control (process-wide) and this
/// agent's snapshot ring. Cheap to clone.
///
/// Every method that reads a profile blocks (dumping and symbolizing take
/// milliseconds to, the first time, a few hundred); call them from
/// `spawn_blocking` in async code.
#[derive(Debug, Clone)]
pub struct HeapProfiler {
    ring: Arc<Mutex<Ring>>,
    capacity: usize,
    /// Keeps the fast backtrace hook installed while this profiler lives.
    backtraces: Option<Arc<backtrace::FastBacktraces>>,
    /// Keeps the sample hooks (labels, allocation windows) installed.
    sample_hooks: Option<Arc<hooks::SampleHooks>>,
}

impl Default for HeapProfiler {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_HEAP_SNAPSHOTS)
    }
}

impl HeapProfiler {
    /// A profiler keeping at most `capacity` snapshots (at least 1); the
    /// oldest is evicted first.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            ring: Arc::new(Mutex::new(Ring {
                next_id: 1,
                snapshots: VecDeque::new(),
            })),
            capacity: capacity.max(1),
            backtraces: None,
            sample_hooks: None,
        }
    }

    /// Installs the agent's jemalloc sample hooks while this profiler or a
    /// clone lives: they record which labels allocated each live sample and
    /// feed allocation windows. Where they cannot be installed (no heap
    /// profiling, an unsupported platform, another sample hook), the
    /// profiler works without them: no labels on heap samples, allocation
    /// windows refused.
    pub(crate) fn with_sample_hooks(mut self) -> Self {
        if jemalloc::check_available().is_err() {
            return self;
        }
        match hooks::install() {
            Ok(hooks) => self.sample_hooks = Some(Arc::new(hooks)),
            Err(error) => tracing::debug!(%error, "heap sample hooks not installed"),
        }
        self
    }

    /// Replaces jemalloc's unwinder for sampled allocations with the
    /// agent's (framehop, with a rule cache: several times faster, same
    /// stacks) while this profiler or a clone lives. Linux x86_64 and
    /// aarch64; elsewhere,
    /// or when heap profiling is unavailable, returns an error and changes
    /// nothing.
    pub(crate) fn with_fast_backtraces(mut self) -> Result<Self, Error> {
        jemalloc::check_available()?;
        self.backtraces = Some(Arc::new(backtrace::install()?));
        Ok(self)
    }

    /// Ok when heap profiles can be taken in this process.
    ///
    /// # Errors
    /// [`Error::HeapUnavailable`] with the reason and the fix.
    pub fn check(&self) -> Result<(), Error> {
        jemalloc::check_available()
    }

    /// jemalloc's statistics, refreshed. Needs jemalloc as global allocator
    /// but not profiling.
    pub fn stats(&self) -> Result<HeapStats, Error> {
        jemalloc::stats()
    }

    /// Whether allocations are being sampled, and how often.
    pub fn state(&self) -> Result<HeapProfilingState, Error> {
        jemalloc::check_available()?;
        let lg = jemalloc::lg_sample()?;
        Ok(HeapProfilingState {
            active: jemalloc::active()?,
            lg_prof_sample: lg,
            sample_interval_bytes: 1u64.checked_shl(lg).unwrap_or(u64::MAX),
            backtraces: BacktraceStats::now(),
            allocation_windows: allocs::open_windows(),
            sample_hooks: SampleHookStats::now(),
        })
    }

    /// Opens an allocation window: every sampled allocation from now until
    /// [`AllocationWindow::finish`] is counted, by stack and by the labels
    /// of the code that allocated. Windows opened together share one table
    /// (bounded by [`MAX_ALLOCATION_STACKS`]), freed when the last closes.
    ///
    /// # Errors
    /// [`Error::HeapUnavailable`] when heap profiling is unavailable or the
    /// agent's sample hooks could not be installed.
    pub fn start_allocations(&self) -> Result<AllocationWindow, Error> {
        jemalloc::check_available()?;
        let hooks = self.sample_hooks.clone().ok_or(Error::HeapUnavailable {
            reason: "the agent's jemalloc sample hook is not installed (another program installed one, or the platform is not supported)",
            hint: "allocation profiles need Linux x86_64 or aarch64 and stethoscope::heap_profiling!(); the live heap (/debug/pprof/heap) still works",
        })?;
        let interval = 1u64.checked_shl(jemalloc::lg_sample()?).unwrap_or(u64::MAX);
        Ok(AllocationWindow::open(hooks, interval, jemalloc::active()?))
    }

    /// The allocations of the next `duration`: blocks the calling thread
    /// for that long (use [`start_allocations`](Self::start_allocations)
    /// in async code).
    ///
    /// # Errors
    /// As [`start_allocations`](Self::start_allocations).
    pub fn allocations(&self, duration: Duration) -> Result<Allocations, Error> {
        let window = self.start_allocations()?;
        std::thread::sleep(duration);
        Ok(window.finish())
    }

    /// Starts or pauses sampling (`prof.active`), keeping what was sampled.
    pub fn set_active(&self, active: bool) -> Result<HeapProfilingState, Error> {
        jemalloc::check_available()?;
        jemalloc::set_active(active)?;
        tracing::info!(active, "heap profiling toggled");
        self.state()
    }

    /// The live sampled heap now, symbolized (or, with `symbolize` false,
    /// with addresses and mappings only).
    pub fn profile(&self, symbolize: bool) -> Result<Profile, Error> {
        let taken_at = SystemTime::now();
        if self.backtraces.is_some() {
            backtrace::refresh();
        }
        let text = jemalloc::dump()?;
        let dump = dump::parse(&text)?;
        Ok(heap_profile(&dump, taken_at, symbolize))
    }

    /// Takes a snapshot and keeps it, evicting the oldest beyond capacity.
    pub fn take_snapshot(&self) -> Result<Arc<HeapSnapshot>, Error> {
        let profile = self.profile(true)?;
        let mut ring = self.lock();
        let id = ring.next_id;
        ring.next_id += 1;
        let snapshot = Arc::new(snapshot_of(id, profile));
        ring.snapshots.push_back(Arc::clone(&snapshot));
        while ring.snapshots.len() > self.capacity {
            if let Some(evicted) = ring.snapshots.pop_front() {
                tracing::debug!(id = evicted.id, "heap snapshot evicted");
            }
        }
        tracing::info!(
            id,
            total_bytes = snapshot.total_bytes,
            stacks = snapshot.profile.samples.len(),
            "heap snapshot taken"
        );
        Ok(snapshot)
    }

    /// The snapshots kept, oldest first.
    pub fn snapshots(&self) -> Vec<Arc<HeapSnapshot>> {
        self.lock().snapshots.iter().cloned().collect()
    }

    /// Most snapshots kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The snapshots kept, oldest first, with the ring's capacity and the
    /// memory they hold (`GET /debug/heap/snapshots`).
    ///
    /// # Errors
    /// [`Error::HeapUnavailable`] when heap profiling is unavailable.
    pub fn snapshot_list(&self) -> Result<SnapshotList, Error> {
        self.check()?;
        let snapshots: Vec<SnapshotInfo> = self.snapshots().iter().map(|s| s.info()).collect();
        Ok(SnapshotList {
            memory_bytes: snapshots.iter().map(|i| i.memory_bytes).sum(),
            capacity: self.capacity,
            snapshots,
        })
    }

    /// One snapshot by id.
    ///
    /// # Errors
    /// [`Error::SnapshotNotFound`] listing the ids kept.
    pub fn snapshot(&self, id: u64) -> Result<Arc<HeapSnapshot>, Error> {
        jemalloc::check_available()?;
        let ring = self.lock();
        ring.snapshots
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| Error::SnapshotNotFound {
                id,
                known: ring.snapshots.iter().map(|s| s.id).collect(),
            })
    }

    /// Forgets a snapshot.
    pub fn delete_snapshot(&self, id: u64) -> Result<(), Error> {
        jemalloc::check_available()?;
        let mut ring = self.lock();
        let before = ring.snapshots.len();
        ring.snapshots.retain(|s| s.id != id);
        if ring.snapshots.len() == before {
            return Err(Error::SnapshotNotFound {
                id,
                known: ring.snapshots.iter().map(|s| s.id).collect(),
            });
        }
        Ok(())
    }

    /// Compares snapshot `base` with snapshot `target` (or the heap now):
    /// which stacks grew, by how many bytes and objects.
    pub fn diff(&self, base: u64, target: DiffTarget) -> Result<SnapshotDiff, Error> {
        let base = self.snapshot(base)?;
        Ok(match target {
            DiffTarget::Snapshot(id) => SnapshotDiff::between(&base, &self.snapshot(id)?),
            DiffTarget::Now => {
                // Not kept, so it has no id of its own.
                let now = Arc::new(snapshot_of(0, self.profile(true)?));
                SnapshotDiff::until_now(&base, &now)
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// jemalloc's statistics when it is the global allocator (profiling not
/// required).
#[cfg_attr(not(feature = "resources"), allow(dead_code))]
pub(crate) fn jemalloc_stats() -> Result<HeapStats, Error> {
    jemalloc::stats()
}

fn snapshot_of(id: u64, profile: Profile) -> HeapSnapshot {
    HeapSnapshot {
        id,
        taken_at: profile.started_at,
        total_bytes: profile.total(1),
        total_objects: profile.total(0),
        memory_bytes: profile.approx_bytes(),
        profile,
    }
}

/// Builds the symbolized heap profile of a dump.
/// Metadata of a heap profile or heap delta: `inuse_objects/count` and
/// `inuse_space/bytes` per stack, bytes shown by default.
pub(crate) fn heap_meta(
    period: i64,
    started_at: SystemTime,
    duration: Duration,
    title: String,
    comments: Vec<String>,
    symbolize: bool,
) -> ProfileMeta {
    ProfileMeta {
        sample_types: vec![
            ValueType::new("inuse_objects", "count"),
            ValueType::new("inuse_space", "bytes"),
        ],
        default_value: 1,
        flame_value: 1,
        period_type: ValueType::new("space", "bytes"),
        period,
        started_at,
        duration,
        title,
        comments,
        symbolize,
        drop_frames: Some(crate::profile::frames::ALLOCATOR_FRAMES),
    }
}

fn heap_profile(dump: &dump::HeapDump, taken_at: SystemTime, symbolize: bool) -> Profile {
    let exe = crate::profile::process_name();
    let total_bytes: f64 = dump.stacks.iter().map(|s| s.bytes).sum();
    let total_objects: f64 = dump.stacks.iter().map(|s| s.objects).sum();
    let meta = heap_meta(
        i64::try_from(dump.sample_interval).unwrap_or(i64::MAX),
        taken_at,
        Duration::ZERO,
        format!("Heap profile of {exe} (pid {})", std::process::id()),
        vec![
            format!(
                "live heap at {}: {:.1} MiB in {:.0} objects, {} stacks (estimated)",
                crate::units::rfc3339(taken_at),
                total_bytes / (1024.0 * 1024.0),
                total_objects,
                dump.stacks.len()
            ),
            format!(
                "jemalloc samples one allocation per {} KiB on average; values are unsampled estimates",
                dump.sample_interval / 1024
            ),
        ],
        symbolize,
    );
    // Each stack's estimate shared among the labels of the live samples
    // the agent's hook saw for it (none without the hook).
    let labelled = hooks::live_labels(dump.sample_interval as f64).map(|(stacks, _)| stacks);
    let mut label_sets: std::collections::HashMap<u32, crate::labels::LabelSet> =
        std::collections::HashMap::new();
    let mut stacks = Vec::with_capacity(dump.stacks.len());
    for stack in &dump.stacks {
        let parts = labelled
            .as_ref()
            .and_then(|labelled| labelled.get(&live::stack_hash(stack.addresses.iter().copied())));
        for share in live::split(stack.objects, stack.bytes, parts) {
            stacks.push(RawStack {
                thread: None,
                addresses: &stack.addresses,
                values: vec![share.objects.round() as i64, share.bytes.round() as i64],
                labels: label_sets
                    .entry(share.labels)
                    .or_insert_with(|| crate::labels::resolve(share.labels))
                    .clone(),
            });
        }
    }
    build_profile(meta, stacks)
}

/// Builds a heap profile (or a heap delta) from raw stacks, without the
/// allocator's own frames at the leaf.
pub(crate) fn build_profile<'a>(
    meta: ProfileMeta,
    stacks: impl IntoIterator<Item = RawStack<'a>>,
) -> Profile {
    let mut profile = Profile::build(meta, stacks);
    trim_allocator_frames(&mut profile);
    profile
}

/// Whether a function is an entry point of the allocator: Rust's global
/// allocator shims and `alloc::alloc` functions, tikv-jemallocator, and
/// jemalloc's / libc's `malloc` family. Everything on the leaf side of the
/// last such frame is the allocator's own work (jemalloc's internal helpers
/// have all kinds of names: `prof_alloc_prep`, `do_rallocx`, …).
fn is_allocator_entry(name: &str) -> bool {
    // Recent compilers put the global-allocator shims under `__rustc::`.
    let name = name.strip_prefix("__rustc::").unwrap_or(name);
    const PREFIXES: &[&str] = &[
        "__rust_alloc",
        "__rust_realloc",
        "__rdl_",
        "__rg_",
        "alloc::alloc::",
        "<alloc::alloc::Global",
        "<tikv_jemallocator::Jemalloc",
        "tikv_jemallocator::",
        "_rjem_",
        "je_",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
    ];
    const NAMES: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "mallocx",
        "rallocx",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix)) || NAMES.contains(&name)
}

/// How far from the leaf to look for the allocator's entry point.
const ALLOCATOR_FRAME_WINDOW: usize = 64;

/// Drops the allocator's frames from the leaf end of every stack, so the
/// leaf is the code that asked for memory. Works on inline frames: when a
/// location's inline chain holds both allocator and caller frames (the
/// allocation path inlined into `Vec::with_capacity`), the sample gets a
/// copy of that location without the allocator's frames.
fn trim_allocator_frames(profile: &mut Profile) {
    use std::collections::HashMap;
    let mut trimmed: HashMap<(usize, usize), usize> = HashMap::new();
    for sample_index in 0..profile.samples.len() {
        // Leaf-first (location position, frames of it to drop) pairs.
        let mut cut: Option<(usize, usize)> = None;
        let mut seen = 0usize;
        'scan: for (position, &location) in
            profile.samples[sample_index].locations.iter().enumerate()
        {
            let Some(loc) = profile.locations.get(location) else {
                break;
            };
            if !loc.symbolized {
                break;
            }
            for (depth, frame) in loc.frames.iter().enumerate() {
                if seen >= ALLOCATOR_FRAME_WINDOW {
                    break 'scan;
                }
                seen += 1;
                if is_allocator_entry(&frame.function) {
                    cut = Some((position, depth + 1));
                }
            }
        }
        let Some((position, frames_in_it)) = cut else {
            continue;
        };
        let sample_len = profile.samples[sample_index].locations.len();
        let location = profile.samples[sample_index].locations[position];
        let location_frames = profile.locations[location].frames.len();
        let (drop_locations, replacement) = if frames_in_it >= location_frames {
            (position + 1, None)
        } else {
            let key = (location, frames_in_it);
            let index = match trimmed.get(&key) {
                Some(&index) => index,
                None => {
                    let mut copy = profile.locations[location].clone();
                    copy.frames = copy.frames[frames_in_it..].into();
                    profile.locations.push(copy);
                    let index = profile.locations.len() - 1;
                    trimmed.insert(key, index);
                    index
                }
            };
            (position, Some(index))
        };
        if drop_locations >= sample_len && replacement.is_none() {
            continue; // nothing but allocator frames: keep the stack as is
        }
        let sample = &mut profile.samples[sample_index];
        sample.locations.drain(..drop_locations);
        if let Some(index) = replacement {
            if let Some(first) = sample.locations.first_mut() {
                *first = index;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_entry_points_are_recognized() {
        for name in [
            "_rjem_malloc",
            "__rust_alloc",
            "__rustc::__rust_alloc_zeroed",
            "__rdl_alloc",
            "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc",
            "alloc::alloc::exchange_malloc",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "malloc",
        ] {
            assert!(is_allocator_entry(name), "{name}");
        }
        for name in [
            "alloc::raw_vec::RawVec<T,A>::allocate_in",
            "my_service::cache::insert",
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            "prof_alloc_prep",
        ] {
            assert!(!is_allocator_entry(name), "{name}");
        }
    }

    fn frame(name: &str) -> crate::symbols::SymbolizedFrame {
        crate::symbols::SymbolizedFrame {
            function: name.into(),
            file: None,
            line: None,
        }
    }

    #[test]
    fn trimming_cuts_through_inline_chains_up_to_the_last_entry_point() {
        use crate::profile::{Location, Sample};
        let location = |address: u64, names: &[&str]| Location {
            address,
            mapping: None,
            frames: names.iter().map(|n| frame(n)).collect::<Vec<_>>().into(),
            symbolized: true,
        };
        let mut profile = crate::profile::build::tests::sample_profile();
        profile.locations = vec![
            location(1, &["prof_alloc_prep", "do_rallocx"]),
            location(
                2,
                &[
                    "alloc::alloc::realloc",
                    "alloc::raw_vec::finish_grow",
                    "my::grow_buffer",
                ],
            ),
            location(3, &["my::main"]),
        ];
        profile.samples = vec![Sample {
            locations: vec![0, 1, 2],
            values: vec![1, 1],
            thread: None,
            labels: crate::labels::LabelSet::default(),
        }];
        trim_allocator_frames(&mut profile);
        let sample = &profile.samples[0];
        assert_eq!(sample.locations.len(), 2);
        let leaf = &profile.locations[sample.locations[0]];
        assert_eq!(leaf.address, 2);
        let names: Vec<&str> = leaf.frames.iter().map(|f| &*f.function).collect();
        assert_eq!(names, ["alloc::raw_vec::finish_grow", "my::grow_buffer"]);
        // The original location keeps its full inline chain for others.
        assert_eq!(profile.locations[1].frames.len(), 3);
    }

    #[test]
    fn without_jemalloc_every_operation_explains_the_fix() {
        // The unit-test binary does not install jemalloc.
        let heap = HeapProfiler::default();
        for result in [
            heap.check(),
            heap.profile(true).map(|_| ()),
            heap.take_snapshot().map(|_| ()),
            heap.state().map(|_| ()),
            heap.stats().map(|_| ()),
        ] {
            match result {
                Err(Error::HeapUnavailable { hint, .. }) => {
                    assert!(
                        hint.contains("heap_profiling!") || hint.contains("heap"),
                        "{hint}"
                    )
                }
                other => panic!("expected HeapUnavailable, got {other:?}"),
            }
        }
    }

    #[test]
    fn snapshots_without_jemalloc_say_how_to_enable_it() {
        // The unit-test binary does not use jemalloc as its allocator; the
        // 404 listing known ids is covered end to end (tests/e2e/heap.rs).
        let heap = HeapProfiler::with_capacity(2);
        for result in [
            heap.snapshot(7).map(drop),
            heap.delete_snapshot(7),
            heap.diff(7, DiffTarget::Now).map(drop),
        ] {
            assert!(
                matches!(result, Err(Error::HeapUnavailable { .. })),
                "{result:?}"
            );
        }
        assert_eq!(heap.capacity(), 2);
    }

    #[test]
    fn malloc_conf_points_at_a_nul_terminated_string() {
        static CONF: MallocConf = MallocConf::new(b"prof:true\0");
        // SAFETY: reading the static string the pointer refers to.
        #[allow(unsafe_code)]
        let text = unsafe { std::ffi::CStr::from_ptr(CONF.0.cast()) };
        assert_eq!(text.to_str().unwrap(), "prof:true");
    }
}
