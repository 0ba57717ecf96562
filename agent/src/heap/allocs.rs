//! Allocation profiles: every sampled allocation made during a window,
//! freed or not, by stack and label — Go's `/debug/pprof/allocs?seconds=N`
//! (`alloc_objects`, `alloc_space`).
//!
//! The agent's sample hook (`hooks.rs`) sees each sampled allocation with
//! its stack, size and the labels of the code that allocated. While at
//! least one window is open it counts them into a [`WindowTable`]: a
//! fixed-size, lock-free table of distinct (stack, labels) buckets with
//! atomic counters, its stacks in a bump-allocated frame arena — nothing
//! locks or allocates inside `malloc`. Windows share the table like CPU
//! windows share the sampler: the first one creates and publishes it, each
//! later one notes the counters at its start and subtracts them at its
//! end, and the last one to close retracts and frees it. With no window
//! open the hook's cost for this is one relaxed load.
//!
//! Why the hook and not jemalloc's cumulative counts (`opt.prof_accum`):
//! those can only be switched on at process start, keep a record of every
//! stack ever sampled for the life of the process, come without labels,
//! and a window would need two full dumps (measured in docs/overhead.md).
//!
//! Bounded: at most [`MAX_ALLOCATION_STACKS`] distinct stacks per table
//! (beyond, samples count in a `[truncated]` bucket that keeps their
//! weight), at most [`FRAME_ARENA`] frames for their stacks.

// Recording runs only in the hooks, built for Linux x86_64 and aarch64.
#![cfg_attr(not(all(feature = "heap", native_unwind)), allow(dead_code))]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::profile::{Profile, ProfileMeta, RawStack, ValueType};

/// Most distinct (stack, labels) buckets an allocation window counts;
/// further ones go to a `[truncated]` bucket that keeps their weight.
pub const MAX_ALLOCATION_STACKS: usize = 4096;

/// Frames the window table can hold for its stacks (8 bytes each: 1.5
/// MiB), an average of 48 frames a stack at the stack cap.
pub(crate) const FRAME_ARENA: usize = 48 * MAX_ALLOCATION_STACKS;

/// Slots looked at from a bucket's home slot.
const PROBE: usize = 16;

/// Fixed-point scale of estimated object counts.
const OBJECT_SCALE: f64 = 1024.0;

/// `depth` of a bucket whose frames did not fit in the arena.
const NO_FRAMES: u32 = u32::MAX;

/// The name of the bucket that keeps what the caps left out.
pub(crate) const TRUNCATED: &str = "[truncated]";

/// Sample counters: sampled allocations, estimated objects (fixed point)
/// and estimated bytes.
#[derive(Default)]
struct Counters {
    samples: AtomicU64,
    objects: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn add(&self, objects: u64, bytes: u64) {
        self.samples.fetch_add(1, Ordering::Relaxed);
        self.objects.fetch_add(objects, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn read(&self) -> Counts {
        Counts {
            samples: self.samples.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A reading of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    samples: u64,
    objects: u64,
    bytes: u64,
}

impl Counts {
    fn since(self, base: Counts) -> Counts {
        Counts {
            samples: self.samples.saturating_sub(base.samples),
            objects: self.objects.saturating_sub(base.objects),
            bytes: self.bytes.saturating_sub(base.bytes),
        }
    }

    fn add(&mut self, other: Counts) {
        self.samples += other.samples;
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

/// One distinct (stack, labels) of a window table.
#[derive(Default)]
struct Bucket {
    /// 0: free; else the bucket's key (never 0).
    key: AtomicU64,
    labels: AtomicU32,
    /// Frames in the arena, or [`NO_FRAMES`].
    depth: AtomicU32,
    frames_at: AtomicU32,
    /// Set once `labels`, `depth` and the frames are written.
    ready: AtomicBool,
    counts: Counters,
}

/// The allocations counted while windows are open.
pub(crate) struct WindowTable {
    buckets: Box<[Bucket]>,
    /// Buckets claimed (at most `max_stacks`).
    used: AtomicUsize,
    max_stacks: usize,
    frames: Box<[AtomicU64]>,
    next_frame: AtomicUsize,
    /// Average bytes between samples when the table was made.
    interval: f64,
    truncated: Counters,
}

impl WindowTable {
    /// A table for `max_stacks` buckets and `arena` frames. Allocates.
    pub(crate) fn new(max_stacks: usize, arena: usize, interval: f64) -> Self {
        let slots = (max_stacks * 2).next_power_of_two().max(PROBE);
        WindowTable {
            buckets: (0..slots).map(|_| Bucket::default()).collect(),
            used: AtomicUsize::new(0),
            max_stacks,
            frames: (0..arena).map(|_| AtomicU64::new(0)).collect(),
            next_frame: AtomicUsize::new(0),
            interval,
            truncated: Counters::default(),
        }
    }

    /// Counts one sampled allocation of `size` bytes with the stack
    /// `frames` (return addresses, innermost first; `stack` their hash)
    /// allocated under label set `labels`. Lock-free, allocation-free.
    pub(crate) fn record(&self, stack: u64, frames: &[usize], labels: u32, size: u64) {
        let (objects, bytes) = super::live::unsampled(size, self.interval);
        let (objects, bytes) = (
            (objects * OBJECT_SCALE).round() as u64,
            bytes.round() as u64,
        );
        let key = bucket_key(stack, labels);
        let mask = self.buckets.len() - 1;
        let home = (key >> 16) as usize;
        for i in 0..PROBE {
            let bucket = &self.buckets[(home + i) & mask];
            let current = bucket.key.load(Ordering::Acquire);
            if current == key {
                bucket.counts.add(objects, bytes);
                return;
            }
            if current != 0 {
                continue;
            }
            if self.used.fetch_add(1, Ordering::Relaxed) >= self.max_stacks {
                self.used.fetch_sub(1, Ordering::Relaxed);
                break;
            }
            match bucket
                .key
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.fill(bucket, frames, labels);
                    bucket.counts.add(objects, bytes);
                    return;
                }
                Err(actual) => {
                    self.used.fetch_sub(1, Ordering::Relaxed);
                    if actual == key {
                        bucket.counts.add(objects, bytes);
                        return;
                    }
                }
            }
        }
        self.truncated.add(objects, bytes);
    }

    /// Writes a claimed bucket's labels and frames (lookup addresses) and
    /// marks it ready.
    fn fill(&self, bucket: &Bucket, frames: &[usize], labels: u32) {
        let depth = frames.len();
        let at = self.next_frame.fetch_add(depth, Ordering::Relaxed);
        let stored = match self.frames.get(at..at.saturating_add(depth)) {
            Some(arena) if u32::try_from(at).is_ok() => {
                for (slot, &address) in arena.iter().zip(frames) {
                    slot.store((address as u64).saturating_sub(1), Ordering::Relaxed);
                }
                bucket.frames_at.store(at as u32, Ordering::Relaxed);
                depth as u32
            }
            _ => NO_FRAMES,
        };
        bucket.labels.store(labels, Ordering::Relaxed);
        bucket.depth.store(stored, Ordering::Relaxed);
        bucket.ready.store(true, Ordering::Release);
    }

    /// The counters of every claimed bucket now, by bucket index, and the
    /// truncated bucket's.
    fn counts(&self) -> (Vec<(u32, Counts)>, Counts) {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.key.load(Ordering::Acquire) != 0)
            .map(|(i, b)| (i as u32, b.counts.read()))
            .collect();
        (buckets, self.truncated.read())
    }

    /// The stacks counted since `base` (counters at a window's start).
    fn since(&self, base: &Baseline) -> (Vec<CountedStack>, Counts) {
        let (now, truncated_now) = self.counts();
        let mut truncated = truncated_now.since(base.truncated);
        let mut stacks = Vec::new();
        for (index, counts) in now {
            let before = base
                .buckets
                .binary_search_by_key(&index, |(i, _)| *i)
                .map_or(Counts::default(), |at| base.buckets[at].1);
            let counts = counts.since(before);
            if counts.samples == 0 {
                continue;
            }
            let bucket = &self.buckets[index as usize];
            let depth = bucket.depth.load(Ordering::Relaxed);
            if !bucket.ready.load(Ordering::Acquire) || depth == NO_FRAMES {
                truncated.add(counts);
                continue;
            }
            let at = bucket.frames_at.load(Ordering::Relaxed) as usize;
            let addresses = self
                .frames
                .get(at..at + depth as usize)
                .unwrap_or_default()
                .iter()
                .map(|f| f.load(Ordering::Relaxed))
                .collect();
            stacks.push(CountedStack {
                addresses,
                labels: bucket.labels.load(Ordering::Relaxed),
                counts,
            });
        }
        (stacks, truncated)
    }
}

fn bucket_key(stack: u64, labels: u32) -> u64 {
    let key = (stack ^ u64::from(labels).wrapping_mul(0xd6e8_feb8_6659_fd93))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    key | 1
}

/// Counters at a window's start.
#[derive(Debug, Default)]
struct Baseline {
    /// Sorted by bucket index.
    buckets: Vec<(u32, Counts)>,
    truncated: Counts,
}

/// One stack of a finished window.
#[derive(Debug, Clone)]
struct CountedStack {
    addresses: Vec<u64>,
    labels: u32,
    counts: Counts,
}

/// The windows open now and the table they share.
struct Session {
    windows: usize,
    /// Published to the hook while `windows > 0`.
    table: Option<Box<WindowTable>>,
}

static SESSION: Mutex<Session> = Mutex::new(Session {
    windows: 0,
    table: None,
});

fn session() -> std::sync::MutexGuard<'static, Session> {
    SESSION.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Windows open now.
pub(crate) fn open_windows() -> usize {
    session().windows
}

/// Opens a window: creates and publishes the table if it is the first,
/// else notes the shared table's counters.
fn open(interval: f64) -> Baseline {
    let mut session = session();
    if let Some(table) = session.table.as_deref() {
        let (buckets, truncated) = table.counts();
        session.windows += 1;
        return Baseline { buckets, truncated };
    }
    let table = Box::new(WindowTable::new(
        MAX_ALLOCATION_STACKS,
        FRAME_ARENA,
        interval,
    ));
    // The box's contents stay where they are while it is kept below.
    super::hooks::publish_window_table(std::ptr::from_ref(&*table).cast_mut());
    session.table = Some(table);
    session.windows = 1;
    Baseline::default()
}

/// Closes a window: what it counted (when `read`), and the table retracted
/// and freed if it was the last.
fn close(base: &Baseline, read: bool) -> Option<(Vec<CountedStack>, Counts, f64)> {
    let mut session = session();
    let table = session.table.as_deref()?;
    let result = read.then(|| {
        let (stacks, truncated) = table.since(base);
        (stacks, truncated, table.interval)
    });
    session.windows = session.windows.saturating_sub(1);
    if session.windows == 0 {
        let table = session.table.take();
        if !super::hooks::retract_window_table() {
            // A hook may still read it: never free memory under its feet.
            tracing::warn!("an allocation hook did not finish within 1 s; leaking its table");
            std::mem::forget(table);
        }
    }
    result
}

/// An allocation window being recorded: every sampled allocation from its
/// start until [`finish`](Self::finish) is counted. Dropping it without
/// finishing (a client that went away) closes it; the table the windows
/// share is freed when the last one closes.
#[derive(Debug)]
pub struct AllocationWindow {
    started_at: SystemTime,
    started: Instant,
    base: Baseline,
    active_at_start: bool,
    closed: bool,
    /// Keeps the hooks installed while the window is open.
    _hooks: Arc<super::hooks::SampleHooks>,
}

impl AllocationWindow {
    pub(crate) fn open(hooks: Arc<super::hooks::SampleHooks>, interval: u64, active: bool) -> Self {
        let (started_at, started) = (SystemTime::now(), Instant::now());
        let base = open(interval as f64);
        tracing::debug!("allocation window opened");
        AllocationWindow {
            started_at,
            started,
            base,
            active_at_start: active,
            closed: false,
            _hooks: hooks,
        }
    }

    /// When the window started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Closes the window and returns what it counted.
    pub fn finish(mut self) -> Allocations {
        let duration = self.started.elapsed();
        let (stacks, truncated, interval) =
            close(&self.base, true).unwrap_or((Vec::new(), Counts::default(), 0.0));
        self.closed = true;
        let active_at_end = super::jemalloc::active().unwrap_or(false);
        Allocations {
            started_at: self.started_at,
            duration,
            interval: interval as u64,
            stacks,
            truncated,
            paused: !self.active_at_start || !active_at_end,
        }
    }
}

impl Drop for AllocationWindow {
    fn drop(&mut self) {
        if !self.closed {
            close(&self.base, false);
            tracing::debug!("allocation window abandoned");
        }
    }
}

/// What an allocation window counted: its sampled allocations by stack and
/// labels, unsampled into estimates. Turn it into a [`Profile`] with
/// [`to_profile`](Self::to_profile).
#[derive(Debug, Clone)]
pub struct Allocations {
    started_at: SystemTime,
    duration: Duration,
    interval: u64,
    stacks: Vec<CountedStack>,
    truncated: Counts,
    paused: bool,
}

impl Allocations {
    /// When the window started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// How long it lasted.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Sampled allocations counted.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.counts.samples).sum::<u64>() + self.truncated.samples
    }

    /// Estimated bytes allocated during the window.
    pub fn estimated_bytes(&self) -> u64 {
        self.stacks.iter().map(|s| s.counts.bytes).sum::<u64>() + self.truncated.bytes
    }

    /// The allocation profile (`alloc_objects/count`, `alloc_space/bytes`,
    /// period `space/bytes` = the sampling interval), symbolized (or, with
    /// `symbolize` false, addresses and mappings only), each stack with the
    /// labels of the code that allocated.
    pub fn to_profile(&self, symbolize: bool) -> Profile {
        let exe = crate::profile::process_name();
        let seconds = self.duration.as_secs_f64().max(1e-3);
        let bytes = self.estimated_bytes() as f64;
        let objects = (self.stacks.iter().map(|s| s.counts.objects).sum::<u64>()
            + self.truncated.objects) as f64
            / OBJECT_SCALE;
        let mut comments = vec![
            format!(
                "allocated {:.1} MiB in {:.0} objects over {:.1} s: {:.2} MiB/s, {:.0} objects/s (estimated from {} samples)",
                bytes / 1048576.0,
                objects,
                seconds,
                bytes / 1048576.0 / seconds,
                objects / seconds,
                self.samples()
            ),
            format!(
                "jemalloc samples one allocation per {} KiB on average; values are unsampled estimates, freed or not",
                self.interval / 1024
            ),
        ];
        if self.truncated.samples > 0 {
            comments.push(format!(
                "{} samples beyond the {MAX_ALLOCATION_STACKS} distinct stacks a window keeps are counted in {TRUNCATED}",
                self.truncated.samples
            ));
        }
        if self.paused {
            comments.push(
                "heap sampling was paused (prof.active false) during the window: allocations made then are missing"
                    .to_owned(),
            );
        }
        let meta = ProfileMeta {
            sample_types: vec![
                ValueType::new("alloc_objects", "count"),
                ValueType::new("alloc_space", "bytes"),
            ],
            default_value: 1,
            flame_value: 1,
            period_type: ValueType::new("space", "bytes"),
            period: i64::try_from(self.interval).unwrap_or(i64::MAX),
            started_at: self.started_at,
            duration: self.duration,
            title: format!(
                "Allocations of {exe} (pid {}) over {seconds:.1} s",
                std::process::id()
            ),
            comments,
            symbolize,
            drop_frames: Some(crate::profile::frames::ALLOCATOR_FRAMES),
        };
        let values = |c: Counts| {
            vec![
                (c.objects as f64 / OBJECT_SCALE).round() as i64,
                i64::try_from(c.bytes).unwrap_or(i64::MAX),
            ]
        };
        let truncated: Arc<str> = Arc::from(TRUNCATED);
        let mut raw: Vec<RawStack<'_>> = self
            .stacks
            .iter()
            .map(|stack| RawStack {
                thread: None,
                addresses: &stack.addresses,
                values: values(stack.counts),
                labels: crate::labels::resolve(stack.labels),
            })
            .collect();
        if self.truncated.samples > 0 {
            raw.push(RawStack {
                thread: Some(truncated),
                addresses: &[],
                values: values(self.truncated),
                labels: crate::labels::LabelSet::default(),
            });
        }
        super::build_profile(meta, raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(leaf: usize) -> Vec<usize> {
        vec![leaf + 1, 0x2001, 0x3001]
    }

    #[test]
    fn counts_by_stack_and_labels_with_unsampled_weights() {
        let table = WindowTable::new(16, 256, 65536.0);
        for _ in 0..3 {
            table.record(11, &frames(0x1000), 0, 256 << 10);
        }
        table.record(11, &frames(0x1000), 7, 256 << 10);
        table.record(12, &frames(0x5000), 0, 4096);
        let (stacks, truncated) = table.since(&Baseline::default());
        assert_eq!(truncated, Counts::default());
        assert_eq!(stacks.len(), 3);
        let big = stacks
            .iter()
            .find(|s| s.labels == 0 && s.addresses[0] == 0x1000)
            .unwrap();
        assert_eq!(big.addresses, vec![0x1000, 0x2000, 0x3000]);
        assert_eq!(big.counts.samples, 3);
        // 256 KiB at a 64 KiB interval: sampled with p = 1 − e^−4.
        let expected = 3.0 * (256 << 10) as f64 / (1.0 - (-4.0f64).exp());
        assert!((big.counts.bytes as f64 - expected).abs() < 4.0);
        let small = stacks.iter().find(|s| s.addresses[0] == 0x5000).unwrap();
        let scale = 1.0 / (1.0 - (-4096.0f64 / 65536.0).exp());
        assert!((small.counts.objects as f64 / OBJECT_SCALE - scale).abs() < 0.01);
    }

    #[test]
    fn caps_send_the_rest_to_the_truncated_bucket() {
        let table = WindowTable::new(2, 4, 65536.0);
        table.record(1, &[0x11, 0x12], 0, 65536);
        // Fits a bucket but its frames no longer fit the arena.
        table.record(2, &[0x21, 0x22, 0x23], 0, 65536);
        table.record(3, &[0x31], 0, 65536);
        table.record(1, &[0x11, 0x12], 0, 65536);
        let (stacks, truncated) = table.since(&Baseline::default());
        assert_eq!(stacks.len(), 1);
        assert_eq!(stacks[0].counts.samples, 2);
        assert_eq!(truncated.samples, 2, "no frames, and over the stack cap");
        assert!(truncated.bytes > 2 * 65536);
    }

    #[test]
    fn a_later_window_counts_only_what_came_after_its_start() {
        let table = WindowTable::new(16, 256, 65536.0);
        table.record(1, &[0x11], 0, 65536);
        let (buckets, truncated) = table.counts();
        let base = Baseline { buckets, truncated };
        table.record(1, &[0x11], 0, 65536);
        table.record(2, &[0x21], 0, 65536);
        let (stacks, _) = table.since(&base);
        assert_eq!(stacks.len(), 2);
        assert!(stacks.iter().all(|s| s.counts.samples == 1), "{stacks:?}");
    }

    #[test]
    fn concurrent_records_add_up() {
        let table = Arc::new(WindowTable::new(64, 1024, 65536.0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let stack = (i + t) % 8;
                        table.record(stack, &[stack as usize + 1], 0, 65536);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (stacks, truncated) = table.since(&Baseline::default());
        assert_eq!(stacks.len(), 8);
        let samples: u64 = stacks.iter().map(|s| s.counts.samples).sum();
        assert_eq!(samples + truncated.samples, 40_000);
        assert_eq!(truncated.samples, 0);
    }

    #[test]
    fn profiles_carry_the_sample_types_go_names() {
        let allocations = Allocations {
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(10),
            interval: 65536,
            stacks: vec![CountedStack {
                addresses: vec![0x1000],
                labels: 0,
                counts: Counts {
                    samples: 2,
                    objects: 2048,
                    bytes: 131072,
                },
            }],
            truncated: Counts {
                samples: 1,
                objects: 1024,
                bytes: 65536,
            },
            paused: false,
        };
        assert_eq!(allocations.samples(), 3);
        assert_eq!(allocations.estimated_bytes(), 196608);
        let profile = allocations.to_profile(false);
        let kinds: Vec<&str> = profile
            .sample_types
            .iter()
            .map(|t| t.kind.as_str())
            .collect();
        assert_eq!(kinds, ["alloc_objects", "alloc_space"]);
        assert_eq!(profile.period_type, ValueType::new("space", "bytes"));
        assert_eq!(profile.period, 65536);
        assert_eq!(profile.total(1), 196608);
        assert_eq!(profile.total(0), 3);
        assert!(profile
            .samples
            .iter()
            .any(|s| s.thread.as_deref() == Some(TRUNCATED)));
        assert!(
            profile.comments[0].contains("0.02 MiB/s"),
            "{:?}",
            profile.comments
        );
    }
}
