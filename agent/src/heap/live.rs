//! Labels for the live heap: which labelled code (a route, a task) holds
//! each sampled allocation that is still alive.
//!
//! jemalloc's dump aggregates its samples by stack and knows nothing of the
//! agent's labels, so the agent's sample hook (`hooks.rs`) records every
//! sampled allocation here — its address, a hash of its stack, the label-set
//! id in the allocating thread's slot and its size — and the free hook
//! removes it. When a heap profile is taken, each dumped stack's estimate is
//! shared among the labels of its live samples in this table
//! ([`split`]); what the table does not know stays unlabelled.
//!
//! The table is fixed-size and lock-free (inserts and removes run inside
//! `malloc` and `free`): a slot is claimed with one compare-and-swap within
//! a short probe window from the address's hash; a full window drops the
//! sample from the table (counted, and then counted unlabelled). Lookups
//! scan the whole window rather than stopping at a hole, so removing is a
//! plain store.
//!
//! One subtlety: an in-place `realloc` whose old and new blocks are both
//! sampled reports the new block first and then frees the old one — the
//! same address. The insert marks the older entry of that address
//! superseded, and the free removes a superseded entry before a live one.

// Recording runs only in the hooks, built for Linux x86_64 and aarch64.
#![cfg_attr(not(all(feature = "heap", native_unwind)), allow(dead_code))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Slots of the table: at the default sampling (one sample per 512 KiB)
/// enough for the samples of about 8 GiB of live heap at half load.
pub(crate) const LIVE_SLOTS: usize = 1 << 14;

/// Slots looked at from an address's home slot.
const PROBE: usize = 8;

const EMPTY: u32 = 0;
const LIVE: u32 = 1;
const SUPERSEDED: u32 = 2;

/// One sampled allocation. 32 bytes: two share a cache line.
#[repr(C, align(32))]
struct Slot {
    /// The allocation's address; 0 when the slot is free.
    address: AtomicUsize,
    /// [`EMPTY`] while claimed and being written, then [`LIVE`] or
    /// [`SUPERSEDED`].
    state: AtomicU32,
    label: AtomicU32,
    stack: AtomicU64,
    size: AtomicU64,
}

/// The live sampled allocations the agent's hook has seen.
pub(crate) struct LiveTable {
    slots: Box<[Slot]>,
    /// Entries in the table.
    tracked: AtomicU64,
    /// Samples that found no free slot.
    dropped: AtomicU64,
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTable")
            .field("slots", &self.slots.len())
            .field("tracked", &self.tracked.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the table holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiveCounts {
    pub(crate) tracked: u64,
    pub(crate) dropped: u64,
    pub(crate) capacity: u64,
}

/// Estimated live objects and bytes per label-set id, of one stack.
pub(crate) type StackLabels = Vec<(u32, f64, f64)>;

/// [`StackLabels`] per stack hash.
pub(crate) type LabelledStacks = HashMap<u64, StackLabels>;

impl LiveTable {
    /// A table of `slots` slots (a power of two). Allocates: call it
    /// before the hooks can reach it.
    pub(crate) fn new(slots: usize) -> Self {
        let slots = slots.next_power_of_two().max(PROBE);
        LiveTable {
            slots: (0..slots)
                .map(|_| Slot {
                    address: AtomicUsize::new(0),
                    state: AtomicU32::new(EMPTY),
                    label: AtomicU32::new(0),
                    stack: AtomicU64::new(0),
                    size: AtomicU64::new(0),
                })
                .collect(),
            tracked: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn home(&self, address: usize) -> usize {
        // Fibonacci hashing of the address without its alignment bits.
        let hash = ((address as u64) >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (hash >> 32) as usize
    }

    fn window(&self, address: usize) -> impl Iterator<Item = &Slot> {
        let mask = self.slots.len() - 1;
        let home = self.home(address);
        (0..PROBE).map(move |i| &self.slots[(home + i) & mask])
    }

    /// Records a sampled allocation. Lock-free, allocation-free.
    pub(crate) fn insert(&self, address: usize, stack: u64, label: u32, size: u64) {
        if address == 0 {
            return;
        }
        let mut claimed: Option<&Slot> = None;
        let mut previous: Option<&Slot> = None;
        for slot in self.window(address) {
            let current = slot.address.load(Ordering::Acquire);
            if current == address {
                if previous.is_none() && slot.state.load(Ordering::Acquire) == LIVE {
                    previous = Some(slot);
                }
            } else if current == 0
                && claimed.is_none()
                && slot
                    .address
                    .compare_exchange(0, address, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                claimed = Some(slot);
            }
        }
        if let Some(old) = previous {
            // An in-place realloc: the old block's free follows.
            old.state.store(SUPERSEDED, Ordering::Release);
        }
        match claimed {
            Some(slot) => {
                slot.stack.store(stack, Ordering::Relaxed);
                slot.label.store(label, Ordering::Relaxed);
                slot.size.store(size, Ordering::Relaxed);
                slot.state.store(LIVE, Ordering::Release);
                self.tracked.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets a sampled allocation being freed (a superseded entry of
    /// that address first). Lock-free, allocation-free.
    pub(crate) fn remove(&self, address: usize) {
        if address == 0 {
            return;
        }
        let mut chosen: Option<&Slot> = None;
        for slot in self.window(address) {
            if slot.address.load(Ordering::Acquire) != address {
                continue;
            }
            match slot.state.load(Ordering::Acquire) {
                SUPERSEDED => {
                    chosen = Some(slot);
                    break;
                }
                LIVE if chosen.is_none() => chosen = Some(slot),
                _ => {}
            }
        }
        if let Some(slot) = chosen {
            slot.state.store(EMPTY, Ordering::Relaxed);
            slot.address.store(0, Ordering::Release);
            self.tracked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// How full the table is.
    pub(crate) fn counts(&self) -> LiveCounts {
        LiveCounts {
            tracked: self.tracked.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            capacity: self.slots.len() as u64,
        }
    }

    /// The labelled live samples, unsampled into estimates (jeprof's
    /// formula, per sample with its own size) and summed per stack hash and
    /// label-set id. `interval` is the average bytes between samples.
    pub(crate) fn labelled(&self, interval: f64) -> LabelledStacks {
        let mut sums: HashMap<(u64, u32), (f64, f64)> = HashMap::new();
        for slot in self.slots.iter() {
            let address = slot.address.load(Ordering::Acquire);
            if address == 0 || slot.state.load(Ordering::Acquire) == EMPTY {
                continue;
            }
            let (stack, label, size) = (
                slot.stack.load(Ordering::Relaxed),
                slot.label.load(Ordering::Relaxed),
                slot.size.load(Ordering::Relaxed),
            );
            if label == 0 || slot.address.load(Ordering::Acquire) != address {
                continue;
            }
            let (objects, bytes) = unsampled(size, interval);
            let sum = sums.entry((stack, label)).or_default();
            sum.0 += objects;
            sum.1 += bytes;
        }
        let mut by_stack: LabelledStacks = HashMap::new();
        for ((stack, label), (objects, bytes)) in sums {
            by_stack
                .entry(stack)
                .or_default()
                .push((label, objects, bytes));
        }
        by_stack
    }
}

/// One sampled allocation of `size` bytes stands for `1 / (1 − e^(−size/interval))`
/// allocations like it (jemalloc samples each allocated byte with equal
/// probability): the estimated objects and bytes it represents.
pub(crate) fn unsampled(size: u64, interval: f64) -> (f64, f64) {
    let size = size as f64;
    if size <= 0.0 || interval <= 0.0 {
        return (1.0, size.max(0.0));
    }
    let scale = 1.0 / (1.0 - (-size / interval).exp());
    (scale, size * scale)
}

/// A hash of a stack of lookup addresses (return addresses minus one, as
/// the dump parser yields them), the same in the hook and at dump time.
pub(crate) fn stack_hash(lookup_addresses: impl Iterator<Item = u64>) -> u64 {
    let mut hash: u64 = 0x243f_6a88_85a3_08d3;
    for address in lookup_addresses {
        hash = (hash ^ address).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        hash ^= hash >> 29;
    }
    // A final mix (murmur3's fmix64), so that nearby stacks spread.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// One part of a dumped stack's estimate: `labels` (0: none) and its
/// estimated objects and bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Share {
    pub(crate) labels: u32,
    pub(crate) objects: f64,
    pub(crate) bytes: f64,
}

/// Shares a dumped stack's estimate (`objects`, `bytes`) among the labels
/// of its live samples; the rest stays unlabelled. When the labelled parts
/// exceed the total (samples allocated or freed while the dump was
/// written), they are scaled down to fit.
pub(crate) fn split(objects: f64, bytes: f64, labelled: Option<&StackLabels>) -> Vec<Share> {
    let Some(parts) = labelled.filter(|p| !p.is_empty()) else {
        return vec![Share {
            labels: 0,
            objects,
            bytes,
        }];
    };
    let labelled_bytes: f64 = parts.iter().map(|p| p.2).sum();
    let labelled_objects: f64 = parts.iter().map(|p| p.1).sum();
    let fit = |total: f64, part: f64| {
        if part > total && part > 0.0 {
            total / part
        } else {
            1.0
        }
    };
    let (byte_scale, object_scale) = (fit(bytes, labelled_bytes), fit(objects, labelled_objects));
    let mut shares: Vec<Share> = parts
        .iter()
        .map(|&(labels, o, b)| Share {
            labels,
            objects: o * object_scale,
            bytes: b * byte_scale,
        })
        .collect();
    let rest_bytes = (bytes - labelled_bytes * byte_scale).max(0.0);
    let rest_objects = (objects - labelled_objects * object_scale).max(0.0);
    if rest_bytes >= 0.5 || rest_objects >= 0.5 {
        shares.push(Share {
            labels: 0,
            objects: rest_objects,
            bytes: rest_bytes,
        });
    }
    shares.sort_by_key(|s| s.labels);
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_and_removes_by_address() {
        let table = LiveTable::new(64);
        table.insert(0x1000, 7, 3, 4096);
        table.insert(0x2000, 7, 0, 4096);
        table.insert(0x3000, 9, 3, 65536);
        assert_eq!(table.counts().tracked, 3);
        let labelled = table.labelled(65536.0);
        assert_eq!(labelled.len(), 2, "unlabelled samples are left out");
        assert_eq!(labelled[&7].len(), 1);
        assert_eq!(labelled[&7][0].0, 3);
        table.remove(0x1000);
        table.remove(0x1000);
        table.remove(0x4000);
        assert_eq!(table.counts().tracked, 2);
        assert!(!table.labelled(65536.0).contains_key(&7));
    }

    #[test]
    fn an_in_place_realloc_keeps_the_new_block() {
        let table = LiveTable::new(64);
        table.insert(0x1000, 1, 5, 4096);
        // realloc in place: the new block is reported, then the old freed.
        table.insert(0x1000, 2, 6, 8192);
        table.remove(0x1000);
        let labelled = table.labelled(65536.0);
        assert!(!labelled.contains_key(&1), "{labelled:?}");
        assert_eq!(labelled[&2][0].0, 6);
        assert_eq!(table.counts().tracked, 1);
        table.remove(0x1000);
        assert_eq!(table.counts().tracked, 0);
    }

    #[test]
    fn a_full_probe_window_drops_and_counts() {
        let table = LiveTable::new(8);
        for i in 1..=12usize {
            table.insert(i << 12, 1, 1, 64);
        }
        let counts = table.counts();
        assert_eq!(counts.tracked + counts.dropped, 12);
        assert_eq!(counts.tracked, 8);
        for i in 1..=12usize {
            table.remove(i << 12);
        }
        assert_eq!(table.counts().tracked, 0);
    }

    #[test]
    fn concurrent_inserts_and_removes_balance() {
        let table = std::sync::Arc::new(LiveTable::new(1 << 12));
        let threads: Vec<_> = (0..4usize)
            .map(|t| {
                let table = std::sync::Arc::clone(&table);
                std::thread::spawn(move || {
                    for round in 0..200usize {
                        let base = (t << 40) | (round << 20);
                        for i in 0..64usize {
                            table.insert(base + (i << 6), 1, 1, 64);
                        }
                        for i in 0..64usize {
                            table.remove(base + (i << 6));
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(table.counts().tracked, 0);
        assert!(table.labelled(512.0).is_empty());
    }

    #[test]
    fn unsampling_follows_the_size() {
        let (objects, bytes) = unsampled(64, 524_288.0);
        assert!((objects - 8192.5).abs() < 1.0, "{objects}");
        assert!((bytes - 64.0 * 8192.5).abs() < 64.0, "{bytes}");
        let (objects, bytes) = unsampled(64 << 20, 524_288.0);
        assert!((objects - 1.0).abs() < 1e-9 && (bytes - (64 << 20) as f64).abs() < 1.0);
    }

    #[test]
    fn stack_hashes_depend_on_order_and_content() {
        let a = stack_hash([1u64, 2, 3].into_iter());
        assert_eq!(a, stack_hash([1u64, 2, 3].into_iter()));
        assert_ne!(a, stack_hash([3u64, 2, 1].into_iter()));
        assert_ne!(a, stack_hash([1u64, 2].into_iter()));
        assert_ne!(
            stack_hash(std::iter::empty()),
            stack_hash([0u64].into_iter())
        );
    }

    #[test]
    fn splits_keep_the_total_and_scale_down_what_exceeds_it() {
        let whole = split(10.0, 1000.0, None);
        assert_eq!(
            whole,
            vec![Share {
                labels: 0,
                objects: 10.0,
                bytes: 1000.0
            }]
        );
        let parts = vec![(4, 2.0, 200.0), (2, 4.0, 400.0)];
        let shares = split(10.0, 1000.0, Some(&parts));
        assert_eq!(shares.len(), 3);
        assert_eq!(shares[0].labels, 0);
        assert!((shares[0].bytes - 400.0).abs() < 1e-9);
        let total: f64 = shares.iter().map(|s| s.bytes).sum();
        assert!((total - 1000.0).abs() < 1e-9);
        // More labelled than the dump holds: scaled to fit, nothing left.
        let shares = split(3.0, 300.0, Some(&parts));
        assert_eq!(shares.len(), 2);
        let total: f64 = shares.iter().map(|s| s.bytes).sum();
        assert!((total - 300.0).abs() < 1e-9);
        assert!((shares[0].bytes - 200.0).abs() < 1e-9, "{shares:?}");
    }
}
