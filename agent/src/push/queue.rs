//! The bounded queue of profiles waiting for delivery, and the wait
//! between failed attempts.
//!
//! The queue is bounded in profiles and in bytes; a new profile that does
//! not fit pushes the oldest out (the newest profiles are the ones worth
//! having once the server answers again). The wait doubles with each
//! failure in a row up to a cap, with jitter, so that many instances that
//! lost the same server do not come back in step.

use std::collections::VecDeque;
use std::time::Duration;

/// Profiles waiting, oldest first, each with its size in bytes.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

impl<T> Queue<T> {
    pub(crate) fn new(max_items: usize, max_bytes: usize) -> Self {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Adds `item` of `bytes` at the back; returns how many profiles were
    /// dropped to make room (the oldest first; `item` itself when it alone
    /// is over the byte bound).
    pub(crate) fn push(&mut self, item: T, bytes: usize) -> u64 {
        if bytes > self.max_bytes {
            return 1;
        }
        let mut dropped = 0;
        while !self.items.is_empty()
            && (self.items.len() >= self.max_items || self.bytes + bytes > self.max_bytes)
        {
            self.pop();
            dropped += 1;
        }
        self.items.push_back((item, bytes));
        self.bytes += bytes;
        dropped
    }

    /// The oldest profile.
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.items.front_mut().map(|(item, _)| item)
    }

    /// Corrects the size of the oldest profile (once it is encoded);
    /// returns how many profiles behind it were dropped to stay in bounds.
    pub(crate) fn resize_front(&mut self, bytes: usize) -> u64 {
        let Some((_, size)) = self.items.front_mut() else {
            return 0;
        };
        self.bytes = self.bytes - *size + bytes;
        *size = bytes;
        let mut dropped = 0;
        // The front is being sent: make room behind it, oldest first.
        while self.items.len() > 1 && self.bytes > self.max_bytes {
            if let Some((_, size)) = self.items.remove(1) {
                self.bytes -= size;
                dropped += 1;
            }
        }
        dropped
    }

    /// Removes the oldest profile.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let (item, bytes) = self.items.pop_front()?;
        self.bytes -= bytes;
        Some(item)
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Most profiles it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.max_items
    }
}

/// Capped exponential backoff with jitter: the `n`th failure in a row
/// waits `min(max, min × 2ⁿ⁻¹)`, drawn between half of it and all of it.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    random: std::collections::hash_map::RandomState,
    draws: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
            random: std::collections::hash_map::RandomState::new(),
            draws: 0,
        }
    }

    /// The wait after one more failure.
    pub(crate) fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.draws = self.draws.wrapping_add(1);
        let unit = std::hash::BuildHasher::hash_one(&self.random, self.draws) as f64 / u64::MAX as f64;
        self.wait(unit)
    }

    /// The wait for the current failure count with the jitter draw `unit`
    /// (0..=1).
    fn wait(&self, unit: f64) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(32);
        let ceiling = self
            .min
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Failures in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from the shortest wait again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_when_profiles_or_bytes_run_out() {
        let mut q = Queue::new(3, 100);
        assert_eq!(q.push(1, 10), 0);
        assert_eq!(q.push(2, 10), 0);
        assert_eq!(q.push(3, 10), 0);
        assert_eq!(q.push(4, 10), 1, "over 3 profiles: 1 goes");
        assert_eq!(q.front_mut().copied(), Some(2));
        assert_eq!(q.push(5, 85), 2, "over 3 profiles, then 100 bytes: 2 and 3 go");
        assert_eq!((q.len(), q.bytes()), (2, 95));
        assert_eq!(q.push(6, 101), 1, "alone over the bound: itself");
        assert_eq!((q.len(), q.bytes()), (2, 95));
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.pop(), Some(5));
        assert!(q.is_empty() && q.bytes() == 0);
    }

    #[test]
    fn an_encoded_front_that_grew_pushes_out_the_oldest_behind_it() {
        let mut q = Queue::new(10, 100);
        for i in 0..4 {
            q.push(i, 20);
        }
        assert_eq!(q.resize_front(70), 2, "the front stays; 1 and 2 go");
        assert_eq!((q.len(), q.bytes()), (2, 90));
        assert_eq!(q.pop(), Some(0));
        assert_eq!(q.pop(), Some(3));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for ceiling in ceilings {
            let wait = b.next().as_secs_f64();
            assert!(wait >= ceiling / 2.0 - 1e-9 && wait <= ceiling + 1e-9, "{wait} vs {ceiling}");
            assert_eq!(b.wait(1.0).as_secs_f64(), ceiling);
            assert_eq!(b.wait(0.0).as_secs_f64(), ceiling / 2.0);
        }
        for _ in 0..100 {
            assert!(b.next() <= Duration::from_secs(30), "capped however long it fails");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(500));
        assert_eq!(b.failures(), 1);
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let waits: std::collections::HashSet<u128> = (0..50).map(|_| b.next().as_millis()).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }
}
