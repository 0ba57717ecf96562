//! Which statistics a span's callsite records into: a fixed-size
//! open-addressing table from the callsite's `Metadata` address to an
//! index, read without locks or writes (two atomic loads on a hit), filled
//! under the recorder's registration lock the first time a callsite closes
//! a span.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A table of `callsite address → index`. Keys are never removed;
/// inserts are serialized by the caller, lookups run concurrently.
#[derive(Debug)]
pub(crate) struct CallsiteTable {
    keys: Box<[AtomicUsize]>,
    /// `index + 1`; 0 while the key's insert is in progress.
    values: Box<[AtomicUsize]>,
    /// Inserts allowed, half the slots, so probes stay short.
    capacity: usize,
    len: AtomicUsize,
}

impl CallsiteTable {
    /// A table for at least `callsites` entries.
    pub(crate) fn with_capacity(callsites: usize) -> Self {
        let slots = (callsites.max(8) * 2).next_power_of_two();
        CallsiteTable {
            keys: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            values: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            capacity: slots / 2,
            len: AtomicUsize::new(0),
        }
    }

    fn start(&self, key: usize) -> usize {
        // Fibonacci hashing of the address; metadata is at least 8-aligned.
        let hash = (key as u64 >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (hash >> 32) as usize & (self.keys.len() - 1)
    }

    /// The index stored for `key`, if its insert has completed.
    #[inline]
    pub(crate) fn get(&self, key: usize) -> Option<usize> {
        let mask = self.keys.len() - 1;
        let mut slot = self.start(key);
        for _ in 0..self.keys.len() {
            let found = self.keys.get(slot)?.load(Ordering::Acquire);
            if found == key {
                return self
                    .values
                    .get(slot)?
                    .load(Ordering::Acquire)
                    .checked_sub(1);
            }
            if found == 0 {
                return None;
            }
            slot = (slot + 1) & mask;
        }
        None
    }

    /// Stores `key → index`. The caller serializes inserts. `false` when
    /// the table is full (the caller then records the callsite elsewhere).
    pub(crate) fn insert(&self, key: usize, index: usize) -> bool {
        if key == 0 || self.len.load(Ordering::Relaxed) >= self.capacity {
            return false;
        }
        let mask = self.keys.len() - 1;
        let mut slot = self.start(key);
        for _ in 0..self.keys.len() {
            let (Some(k), Some(v)) = (self.keys.get(slot), self.values.get(slot)) else {
                return false;
            };
            match k.load(Ordering::Acquire) {
                0 => {
                    k.store(key, Ordering::Release);
                    v.store(index + 1, Ordering::Release);
                    self.len.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                found if found == key => {
                    v.store(index + 1, Ordering::Release);
                    return true;
                }
                _ => slot = (slot + 1) & mask,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_inserted_and_refuses_when_full() {
        let table = CallsiteTable::with_capacity(8);
        assert_eq!(table.capacity, 8);
        // Addresses that collide in the low bits, as 'static metadata does.
        let keys: Vec<usize> = (1..=8).map(|i| 0x1000 * i + 8).collect();
        for (index, &key) in keys.iter().enumerate() {
            assert_eq!(table.get(key), None);
            assert!(table.insert(key, index));
        }
        for (index, &key) in keys.iter().enumerate() {
            assert_eq!(table.get(key), Some(index));
        }
        assert!(!table.insert(0xdead_0000, 99), "full at half the slots");
        assert_eq!(table.get(0xdead_0000), None);
        assert!(!table.insert(0, 1), "0 marks an empty slot");
    }

    #[test]
    fn concurrent_readers_see_complete_entries_only() {
        let table = CallsiteTable::with_capacity(1000);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 1..=1000usize {
                    table.insert(i * 64, i);
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..50 {
                        for i in 1..=1000usize {
                            if let Some(index) = table.get(i * 64) {
                                assert_eq!(index, i);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(table.get(64 * 500), Some(500));
    }
}
