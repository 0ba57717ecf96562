//! A bounded multi-producer, single-consumer queue of raw samples.
//!
//! Producers are signal handlers on any thread: they must not lock or
//! allocate, so this is Dmitry Vyukov's bounded queue with a sequence number
//! per slot. A full queue drops the sample (counted by the caller) rather than
//! waiting.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::unwind::MAX_DEPTH;

/// Length of a kernel thread name (`comm`), including the terminating NUL.
pub(crate) const THREAD_NAME_LEN: usize = 16;

/// One sample as written by the signal handler.
pub(crate) struct RawSample {
    /// `CLOCK_MONOTONIC` time the signal was handled, in nanoseconds.
    pub(crate) timestamp_ns: u64,
    /// Kernel thread id.
    pub(crate) tid: u32,
    /// Thread name, NUL-padded.
    pub(crate) thread_name: [u8; THREAD_NAME_LEN],
    /// Label-set id of the code that was running (`crate::labels`).
    pub(crate) labels: u32,
    /// What the thread was doing, for wall-clock samples (a
    /// `SampleState` code; 0 for CPU samples).
    pub(crate) state: u8,
    /// Sampling periods this sample stands for: 1, plus the periods its
    /// thread's CPU timer expired without a signal being delivered (the
    /// timer's overrun count).
    pub(crate) periods: u32,
    /// Number of valid entries in `frames`.
    pub(crate) depth: usize,
    /// Lookup addresses, innermost first: the interrupted instruction, then
    /// each return address minus one (inside the call instruction).
    pub(crate) frames: [u64; MAX_DEPTH],
}

impl RawSample {
    /// When the sample was taken, `CLOCK_MONOTONIC` nanoseconds.
    pub(crate) fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// The thread name without NUL padding.
    pub(crate) fn thread_name(&self) -> &[u8] {
        let end = self
            .thread_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(THREAD_NAME_LEN);
        &self.thread_name[..end]
    }

    /// The recorded frames, innermost first.
    pub(crate) fn frames(&self) -> &[u64] {
        &self.frames[..self.depth.min(MAX_DEPTH)]
    }

    /// The label-set id read from the thread's slot.
    pub(crate) fn labels(&self) -> u32 {
        self.labels
    }

    /// The thread's state code, for wall-clock samples.
    pub(crate) fn state(&self) -> u8 {
        self.state
    }

    /// Sampling periods the sample stands for (at least 1).
    pub(crate) fn periods(&self) -> u32 {
        self.periods.max(1)
    }
}

struct Slot {
    sequence: AtomicUsize,
    sample: UnsafeCell<RawSample>,
}

pub(crate) struct SampleRing {
    slots: Box<[Slot]>,
    mask: usize,
    enqueue_pos: AtomicUsize,
    /// Only the consumer touches this; atomic so the ring is `Sync`.
    dequeue_pos: AtomicUsize,
}

// SAFETY: a slot's sample is written only by the producer that reserved it
// (the sequence number hands out each position once) and read only by the
// single consumer after the producer published it with a release store.
unsafe impl Sync for SampleRing {}

/// A reserved slot; the producer fills it, then publishes it.
pub(crate) struct Reservation<'a> {
    slot: &'a Slot,
    position: usize,
}

impl Reservation<'_> {
    /// Exclusive access to the reserved sample.
    pub(crate) fn sample(&mut self) -> &mut RawSample {
        // SAFETY: the reservation is the only holder of this position until
        // `publish`; the consumer does not read it before the sequence store.
        unsafe { &mut *self.slot.sample.get() }
    }

    /// Makes the sample visible to the consumer.
    pub(crate) fn publish(self) {
        self.slot
            .sequence
            .store(self.position.wrapping_add(1), Ordering::Release);
    }
}

impl SampleRing {
    /// A ring with `capacity` slots, rounded up to a power of two.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity)
            .map(|i| Slot {
                sequence: AtomicUsize::new(i),
                sample: UnsafeCell::new(RawSample {
                    timestamp_ns: 0,
                    tid: 0,
                    thread_name: [0; THREAD_NAME_LEN],
                    labels: 0,
                    state: 0,
                    periods: 1,
                    depth: 0,
                    frames: [0; MAX_DEPTH],
                }),
            })
            .collect();
        Self {
            slots,
            mask: capacity - 1,
            enqueue_pos: AtomicUsize::new(0),
            dequeue_pos: AtomicUsize::new(0),
        }
    }

    /// Reserves a slot, or `None` when the ring is full. Lock-free and
    /// allocation-free: safe to call from a signal handler.
    pub(crate) fn reserve(&self) -> Option<Reservation<'_>> {
        let mut position = self.enqueue_pos.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[position & self.mask];
            let sequence = slot.sequence.load(Ordering::Acquire);
            let lag = sequence.wrapping_sub(position) as isize;
            if lag == 0 {
                match self.enqueue_pos.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(Reservation { slot, position }),
                    Err(current) => position = current,
                }
            } else if lag < 0 {
                return None;
            } else {
                position = self.enqueue_pos.load(Ordering::Relaxed);
            }
        }
    }

    /// Hands every published sample, oldest first, to `visit`. Must only be
    /// called by one thread at a time (the session's control thread).
    pub(crate) fn drain(&self, mut visit: impl FnMut(&RawSample)) -> usize {
        let mut drained = 0;
        let mut position = self.dequeue_pos.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[position & self.mask];
            let sequence = slot.sequence.load(Ordering::Acquire);
            if sequence != position.wrapping_add(1) {
                break;
            }
            // SAFETY: the producer published this position (sequence ==
            // position + 1) and will not touch it again until we release it.
            visit(unsafe { &*slot.sample.get() });
            slot.sequence.store(
                position.wrapping_add(self.mask).wrapping_add(1),
                Ordering::Release,
            );
            position = position.wrapping_add(1);
            drained += 1;
        }
        self.dequeue_pos.store(position, Ordering::Relaxed);
        drained
    }

    /// Memory held by the ring, in bytes.
    pub(crate) fn footprint_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn push(ring: &SampleRing, value: u64) -> bool {
        match ring.reserve() {
            Some(mut reservation) => {
                let sample = reservation.sample();
                sample.timestamp_ns = value;
                sample.depth = 1;
                sample.frames[0] = value;
                reservation.publish();
                true
            }
            None => false,
        }
    }

    #[test]
    fn fills_drops_when_full_and_drains_in_order() {
        let ring = SampleRing::new(4);
        for i in 0..4 {
            assert!(push(&ring, i));
        }
        assert!(!push(&ring, 99), "a full ring drops instead of waiting");
        let mut seen = Vec::new();
        assert_eq!(ring.drain(|s| seen.push(s.frames()[0])), 4);
        assert_eq!(seen, vec![0, 1, 2, 3]);
        // Slots are reusable after draining, across wrap-around.
        for round in 0..10u64 {
            assert!(push(&ring, round));
            let mut got = Vec::new();
            ring.drain(|s| got.push(s.timestamp_ns));
            assert_eq!(got, vec![round]);
        }
    }

    #[test]
    fn an_unpublished_reservation_blocks_later_samples_until_published() {
        let ring = SampleRing::new(8);
        let mut first = ring.reserve().unwrap();
        first.sample().timestamp_ns = 1;
        assert!(push(&ring, 2));
        assert_eq!(ring.drain(|_| {}), 0, "in-progress slot is not read");
        first.publish();
        let mut got = Vec::new();
        ring.drain(|s| got.push(s.timestamp_ns));
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn concurrent_producers_lose_nothing_that_fits() {
        let ring = Arc::new(SampleRing::new(1 << 12));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        assert!(push(&ring, t * 1000 + i));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut seen = Vec::new();
        ring.drain(|s| seen.push(s.frames()[0]));
        seen.sort_unstable();
        let expected: Vec<u64> = (0..4u64)
            .flat_map(|t| (0..500u64).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn thread_name_stops_at_nul() {
        let ring = SampleRing::new(2);
        let mut r = ring.reserve().unwrap();
        r.sample().thread_name[..4].copy_from_slice(b"main");
        r.publish();
        ring.drain(|s| assert_eq!(s.thread_name(), b"main"));
    }
}
