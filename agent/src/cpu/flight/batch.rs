//! One drain's worth of samples, counted into the open segment under one
//! lock, each weighted by the periods it stands for.

use std::hash::BuildHasher as _;
use std::sync::{Arc, MutexGuard};

use super::ring::*;
use super::*;
use crate::cpu::window::StackKey;

/// One drain's worth of samples, recorded under one lock.
pub(crate) struct Batch<'a> {
    pub(super) ring: MutexGuard<'a, Ring>,
    pub(super) settings: &'a ContinuousSettings,
}

impl Batch<'_> {
    /// Counts one sample of `key` taken at `hz` at `timestamp_ns`, standing
    /// for `periods` sampling periods.
    pub(crate) fn record(&mut self, key: &StackKey, hz: u32, periods: u32, timestamp_ns: u64) {
        let ring = &mut *self.ring;
        if ring.paused.is_some() {
            return;
        }
        let Some(segment) = ring.open.as_mut() else {
            return;
        };
        if timestamp_ns < segment.start_ns {
            // Taken before this segment opened (drained late): the closed
            // segment's time, which is sealed; it is dropped.
            return;
        }
        let weight = u64::from(periods.max(1)) * (1_000_000_000 / u64::from(hz.max(1)));
        segment.samples += 1;
        segment.weight += weight;
        segment.rates = (segment.rates.0.min(hz), segment.rates.1.max(hz));
        let hash = ring
            .hasher
            .hash_one((&*key.thread, &*key.frames, key.labels));
        let stack = {
            let candidates = ring.stacks.entry(hash).or_default();
            match candidates.iter().find(|s| {
                *s.thread == *key.thread && *s.frames == *key.frames && s.labels == key.labels
            }) {
                Some(stack) => Arc::clone(stack),
                None => {
                    let stack = Arc::new(RingStack {
                        thread: Arc::clone(&key.thread),
                        frames: Arc::clone(&key.frames),
                        labels: key.labels,
                    });
                    ring.stack_bytes += stack.bytes();
                    candidates.push(Arc::clone(&stack));
                    stack
                }
            }
        };
        let slot = Arc::as_ptr(&stack) as usize;
        let cap = self.settings.max_stacks_per_segment;
        if let Some(count) = segment.counts.get_mut(&slot) {
            count.samples += 1;
            count.weight += weight;
        } else if segment.counts.len() < cap {
            segment.counts.insert(
                slot,
                Count {
                    stack,
                    samples: 1,
                    weight,
                },
            );
        } else {
            let truncated = segment.truncated.get_or_insert_with(|| Count {
                stack: Arc::new(RingStack {
                    thread: Arc::from(TRUNCATED),
                    frames: Arc::from(Vec::new()),
                    labels: 0,
                }),
                samples: 0,
                weight: 0,
            });
            truncated.samples += 1;
            truncated.weight += weight;
        }
    }
}
