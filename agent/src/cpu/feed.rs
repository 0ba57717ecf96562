//! Reading each closed segment of the continuous profiler exactly once: a
//! cursor over the ring's numbered segments, and a wake-up when one closes.
//!
//! The ring numbers its closed segments 0, 1, 2, … A feed remembers the
//! number it reads next; a read returns the segments from there on (each
//! as its own profile, in order) and moves past them, so no segment is
//! read twice and none is skipped without being counted. A ring replaced
//! by another ([`CpuProfiler::start_continuous`](super::CpuProfiler::start_continuous))
//! is read from its first segment.

use std::sync::{Arc, Weak};
use std::time::SystemTime;

use tokio::sync::watch;

use super::flight::FlightRecorder;
use super::session::Controller;
use super::CpuProfile;

/// One closed segment of the continuous profile, as a [`SegmentFeed`] reads
/// it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClosedSegment {
    /// Its number: the ring's closed segments are numbered from 0, one
    /// after another.
    pub seq: u64,
    /// Its profile: every stack with its labels, and the CPU time the
    /// process consumed over the segment.
    pub profile: CpuProfile,
    /// Wall-clock start: the previous segment's `to`.
    pub from: SystemTime,
    /// Wall-clock end: the next segment's `from`.
    pub to: SystemTime,
    /// Part of it was not sampled (a wall-clock profile held the sampler).
    pub partial: bool,
}

/// What one [`SegmentFeed::read`] returns.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SegmentBatch {
    /// The segments closed since the previous read, oldest first.
    pub segments: Vec<ClosedSegment>,
    /// Segments closed since the previous read that are not in
    /// `segments`: expired from the ring before this read, or older than
    /// the newest `max` asked for.
    pub missed: u64,
}

/// A cursor over the continuous profiler's closed segments: every segment
/// closed after the feed was made is read once
/// ([`CpuProfiler::segment_feed`](super::CpuProfiler::segment_feed)).
///
/// ```no_run
/// # async fn run() -> Result<(), stethoscope::Error> {
/// use stethoscope::cpu::{ContinuousSettings, CpuProfiler};
///
/// let cpu = CpuProfiler::global();
/// cpu.start_continuous(ContinuousSettings::new(19))?;
/// let mut feed = cpu.segment_feed();
/// loop {
///     feed.changed().await;
///     for segment in feed.read(16).segments {
///         println!("segment {}: {:?} of CPU", segment.seq, segment.profile.cpu_time());
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct SegmentFeed {
    controller: Arc<Controller>,
    /// The ring being read (dangling before there is one).
    ring: Weak<FlightRecorder>,
    /// The number of the next segment to read from `ring`.
    next: u64,
    /// Bumped when a segment closes or the ring is replaced.
    changes: watch::Receiver<u64>,
}

impl SegmentFeed {
    pub(crate) fn new(controller: Arc<Controller>) -> Self {
        let changes = controller.segment_events();
        let (ring, next) = match controller.flight() {
            Some(ring) => (Arc::downgrade(&ring), ring.closed_total()),
            None => (Weak::new(), 0),
        };
        SegmentFeed {
            controller,
            ring,
            next,
            changes,
        }
    }

    /// The segments closed since the previous read (or since the feed was
    /// made), oldest first; at most the newest `max` of them, the others
    /// counted in [`SegmentBatch::missed`]. Empty while continuous
    /// profiling is off.
    pub fn read(&mut self, max: usize) -> SegmentBatch {
        self.changes.mark_unchanged();
        let Some(ring) = self.controller.flight() else {
            return SegmentBatch::default();
        };
        if !Weak::ptr_eq(&self.ring, &Arc::downgrade(&ring)) {
            // A new ring: all of its segments closed after this feed began.
            self.ring = Arc::downgrade(&ring);
            self.next = 0;
        }
        let (segments, missed, next) = ring.closed_since(self.next, max);
        self.next = next;
        SegmentBatch { segments, missed }
    }

    /// Waits until a segment may have closed since the last
    /// [`read`](Self::read): one closed, or the ring was replaced or
    /// turned off. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // The process-wide sampler never goes away; should it, there is
            // nothing left to wait for.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::window::StackKey;
    use crate::cpu::ContinuousSettings;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn key(frames: &[u64]) -> StackKey {
        StackKey {
            thread: Arc::from("w"),
            frames: Arc::from(frames),
            labels: 0,
            state: 0,
        }
    }

    /// A controller with a ring of 1 s segments kept for `keep_s`, fed
    /// one sample a second; the wall clock runs 3 ms a second ahead of
    /// the monotonic one (segments must tile all the same).
    fn controller(keep_s: u64) -> (Arc<Controller>, Arc<FlightRecorder>) {
        let controller = Arc::new(Controller::default());
        let ring = Arc::new(FlightRecorder::new(
            ContinuousSettings::new(19)
                .segment(Duration::from_secs(1))
                .keep(Duration::from_secs(keep_s)),
        ));
        ring.resume(t0(), 0, 0);
        controller.install_flight_for_tests(Arc::clone(&ring));
        (controller, ring)
    }

    fn run_seconds(controller: &Controller, ring: &FlightRecorder, from_s: u64, to_s: u64) {
        for s in from_s..to_s {
            let mut batch = ring.batch();
            batch.record(&key(&[s + 1, 7]), 19, 1, s * S + 1);
            drop(batch);
            let next = (s + 1) * S;
            let wall = t0() + Duration::from_nanos(next + (s + 1) * 3_000_000);
            if ring.tick(next, || (wall, next)) {
                controller.segment_closed();
            }
        }
    }

    #[test]
    fn every_segment_is_read_once_in_order_and_they_tile_time() {
        let (controller, ring) = controller(100);
        // Segments closed before the feed began are not its business.
        run_seconds(&controller, &ring, 0, 3);
        let mut feed = SegmentFeed::new(Arc::clone(&controller));
        assert!(feed.read(100).segments.is_empty());
        let mut seen = Vec::new();
        for round in 0..5 {
            run_seconds(&controller, &ring, 3 + round * 4, 3 + (round + 1) * 4);
            assert!(feed.changes.has_changed().unwrap_or(false));
            let batch = feed.read(100);
            assert_eq!(batch.missed, 0);
            assert_eq!(batch.segments.len(), 4);
            seen.extend(batch.segments);
            assert!(feed.read(100).segments.is_empty(), "read once");
        }
        let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (3..23).collect::<Vec<_>>());
        for pair in seen.windows(2) {
            assert_eq!(pair[0].to, pair[1].from, "no gap, no overlap");
        }
        for segment in &seen {
            assert_eq!(segment.profile.sample_count(), 1);
            assert_eq!(segment.profile.cpu_time(), Duration::from_secs(1));
            assert_eq!(segment.profile.started_at(), segment.from);
            assert!(!segment.partial);
            // The sample of second `s` is on the stack [s + 1, 7].
            assert_eq!(*segment.profile.stacks()[0].frames, [segment.seq + 1, 7]);
        }
    }

    #[test]
    fn segments_the_ring_let_go_or_beyond_max_are_counted_as_missed() {
        let (controller, ring) = controller(5);
        let mut feed = SegmentFeed::new(Arc::clone(&controller));
        run_seconds(&controller, &ring, 0, 20);
        // The ring keeps 4 closed segments: 16 expired unread.
        let batch = feed.read(100);
        assert_eq!(batch.missed, 16);
        assert_eq!(
            batch.segments.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [16, 17, 18, 19]
        );
        run_seconds(&controller, &ring, 20, 23);
        let batch = feed.read(2);
        assert_eq!(batch.missed, 1, "the oldest of three, beyond max");
        assert_eq!(
            batch.segments.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [21, 22]
        );
    }

    #[test]
    fn a_replaced_ring_is_read_from_its_start_and_an_early_seal_is_a_short_segment() {
        let (controller, ring) = controller(100);
        let mut feed = SegmentFeed::new(Arc::clone(&controller));
        run_seconds(&controller, &ring, 0, 2);
        assert_eq!(feed.read(100).segments.len(), 2);
        let (_, replacement) = {
            let ring = Arc::new(FlightRecorder::new(
                ContinuousSettings::new(19)
                    .segment(Duration::from_secs(1))
                    .keep(Duration::from_secs(100)),
            ));
            ring.resume(t0(), 0, 0);
            controller.install_flight_for_tests(Arc::clone(&ring));
            ((), ring)
        };
        run_seconds(&controller, &replacement, 0, 3);
        let batch = feed.read(100);
        assert_eq!(
            batch.segments.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Half a second into the next segment, sealed for a final push.
        let at = 3 * S + S / 2;
        assert!(replacement.seal(at, || (t0() + Duration::from_nanos(at), at)));
        let sealed = feed.read(100).segments;
        assert_eq!(sealed.len(), 1);
        assert_eq!(
            sealed[0].to.duration_since(sealed[0].from).unwrap(),
            Duration::from_millis(500)
        );
        assert!(!replacement.seal(at, || (t0(), at)), "nothing left to seal");
    }
}
