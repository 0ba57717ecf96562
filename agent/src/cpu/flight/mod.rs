//! The flight recorder: continuous low-rate CPU sampling aggregated into a
//! ring of segments (10 s each, 15 minutes kept by default), so that "what
//! was it doing five minutes ago?" is answered at once, from memory.
//!
//! The one sampler feeds it: at the ring's rate when nothing else runs, at
//! an on-demand profile's higher rate while one does. Every sample carries
//! the period it was taken at as its weight, so a segment that saw both
//! rates attributes CPU by time, not by count; a segment's CPU time is the
//! process's measured CPU clock over it, minus the time the ring was not
//! fed (a wall-clock profile held the sampler), so each view stays true.
//!
//! Memory is bounded: distinct stacks per segment are capped (the rest go
//! to a `[truncated]` bucket that keeps their weight), stacks are shared
//! between segments, and expired segments free theirs. Segments around a
//! doctor finding's onset can be pinned, so an incident's profile outlives
//! the ring.

mod batch;
mod ring;
mod settings;
mod view;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::cpu::{ClosedSegment, CpuProfile};

pub(crate) use batch::Batch;
use ring::*;
pub use settings::{
    ContinuousSettings, DEFAULT_CONTINUOUS_KEEP, DEFAULT_CONTINUOUS_SEGMENT,
    DEFAULT_MAX_PINNED_SEGMENTS, DEFAULT_MAX_STACKS_PER_SEGMENT,
};
use view::*;
pub use view::{Coverage, FlightStatus, PinInfo};

/// Time a window may miss (before the ring's first segment, or unsampled
/// while the sampler switched rates) and still count as fully covered.
const PARTIAL_TOLERANCE: Duration = Duration::from_secs(1);

/// How far the wall clock may have moved from a segment's end (by its
/// monotonic length) when the next segment opens, and the next one still
/// start exactly there.
const TILE_TOLERANCE: Duration = Duration::from_secs(1);

/// The thread name of the bucket that keeps the weight of the stacks over
/// a segment's cap.
pub(crate) const TRUNCATED: &str = "[truncated]";

/// The continuous profiler's ring.
#[derive(Debug)]
pub(crate) struct FlightRecorder {
    settings: ContinuousSettings,
    ring: Mutex<Ring>,
}

impl FlightRecorder {
    pub(crate) fn new(settings: ContinuousSettings) -> Self {
        FlightRecorder {
            settings,
            ring: Mutex::new(Ring {
                open: None,
                closed: VecDeque::new(),
                pins: VecDeque::new(),
                next_pin: 0,
                stacks: HashMap::new(),
                stack_bytes: 0,
                hasher: RandomState::new(),
                // Not fed until the sampler runs.
                paused: Some((0, 0)),
                closed_total: 0,
            }),
        }
    }

    pub(crate) fn settings(&self) -> &ContinuousSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a drain's samples under one lock.
    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch {
            ring: self.lock(),
            settings: &self.settings,
        }
    }

    /// The sampler feeds the ring from now on (`cpu_ns`: the process CPU
    /// clock now).
    pub(crate) fn resume(&self, wall: SystemTime, now_ns: u64, cpu_ns: u64) {
        let mut ring = self.lock();
        let Some((since_ns, since_cpu)) = ring.paused.take() else {
            return;
        };
        match ring.open.as_mut() {
            Some(segment) => {
                segment.uncovered_ns += now_ns.saturating_sub(since_ns.max(segment.start_ns));
                segment.uncovered_cpu_ns +=
                    cpu_ns.saturating_sub(since_cpu.max(segment.cpu_start_ns));
            }
            None => ring.open = Some(Segment::open(wall, now_ns, cpu_ns)),
        }
    }

    /// The ring is not fed from now on (the sampler stopped or samples
    /// wall-clock time).
    pub(crate) fn pause(&self, now_ns: u64, cpu_ns: u64) {
        let mut ring = self.lock();
        if ring.paused.is_none() {
            ring.paused = Some((now_ns, cpu_ns));
        }
    }

    /// Closes the open segment when it is due, expires old segments and
    /// fills pins; `clock` reads (wall, process CPU ns) when needed.
    /// Returns whether a segment closed.
    pub(crate) fn tick(&self, now_ns: u64, clock: impl Fn() -> (SystemTime, u64)) -> bool {
        self.close_open(now_ns, clock, false)
    }

    /// Closes the open segment now, however short (a final push before the
    /// process exits). Returns whether there was one with time in it.
    pub(crate) fn seal(&self, now_ns: u64, clock: impl Fn() -> (SystemTime, u64)) -> bool {
        self.close_open(now_ns, clock, true)
    }

    fn close_open(&self, now_ns: u64, clock: impl Fn() -> (SystemTime, u64), force: bool) -> bool {
        let mut ring = self.lock();
        let length = u64::try_from(self.settings.segment.as_nanos()).unwrap_or(u64::MAX);
        let due = ring.open.as_ref().is_some_and(|s| {
            let open_for = now_ns.saturating_sub(s.start_ns);
            open_for >= length || (force && open_for > 0)
        });
        if !due {
            return false;
        }
        let (wall, cpu_ns) = clock();
        let Some(mut segment) = ring.open.take() else {
            return false;
        };
        // Time the ring was not fed, up to the close.
        if let Some((since_ns, since_cpu)) = ring.paused.as_mut() {
            segment.uncovered_ns += now_ns.saturating_sub((*since_ns).max(segment.start_ns));
            segment.uncovered_cpu_ns +=
                cpu_ns.saturating_sub((*since_cpu).max(segment.cpu_start_ns));
            *since_ns = now_ns;
            *since_cpu = cpu_ns;
        }
        segment.close(now_ns, cpu_ns);
        segment.seq = ring.closed_total;
        ring.closed_total += 1;
        // The next segment starts where this one ends, so that segments
        // tile time exactly (a pusher's `from`/`until` neither overlap nor
        // leave gaps); a wall clock stepped further than that starts afresh.
        let end = segment.wall_end();
        let next_start = match wall.duration_since(end) {
            Ok(ahead) if ahead <= TILE_TOLERANCE => end,
            Err(behind) if behind.duration() <= TILE_TOLERANCE => end,
            _ => wall,
        };
        let segment = Arc::new(segment);
        for pin in ring.pins.iter_mut() {
            if segment.wall_start < pin.to && segment.wall_end() > pin.from {
                pin.segments.push(Arc::clone(&segment));
            }
        }
        ring.closed.push_back(segment);
        ring.open = Some(Segment::open(next_start, now_ns, cpu_ns));
        let keep = self.settings.segments().saturating_sub(1).max(1);
        let mut expired = false;
        while ring.closed.len() > keep {
            ring.closed.pop_front();
            expired = true;
        }
        if expired {
            Self::free_stacks(&mut ring);
        }
        true
    }

    /// The closed segments numbered `next` and on, the newest `max` of them
    /// each as its own profile; how many of them were skipped (expired from
    /// the ring before this read, or beyond `max`); and the number to read
    /// from next time.
    pub(crate) fn closed_since(&self, next: u64, max: usize) -> (Vec<ClosedSegment>, u64, u64) {
        let ring = self.lock();
        let total = ring.closed_total;
        let available: Vec<&Arc<Segment>> = ring.closed.iter().filter(|s| s.seq >= next).collect();
        let first = available.first().map_or(total, |s| s.seq);
        let skip = available.len().saturating_sub(max);
        let missed = first.saturating_sub(next) + skip as u64;
        let segments = available[skip..]
            .iter()
            .map(|s| {
                let (from, to) = (s.wall_start, s.wall_end());
                let (profile, coverage) = build(
                    self.settings.hz,
                    from,
                    to,
                    Some(from),
                    vec![SegmentView::of(s)],
                );
                ClosedSegment {
                    seq: s.seq,
                    profile,
                    from,
                    to,
                    partial: coverage.partial,
                }
            })
            .collect();
        (segments, missed, total.max(next))
    }

    /// Segments closed so far (the number the next one gets).
    pub(crate) fn closed_total(&self) -> u64 {
        self.lock().closed_total
    }

    /// Drops stacks only the interner still holds.
    fn free_stacks(ring: &mut Ring) {
        let mut freed = 0;
        ring.stacks.retain(|_, candidates| {
            candidates.retain(|s| {
                let held = Arc::strong_count(s) > 1;
                if !held {
                    freed += s.bytes();
                }
                held
            });
            !candidates.is_empty()
        });
        ring.stack_bytes = ring.stack_bytes.saturating_sub(freed);
    }

    /// What the ring holds now.
    pub(crate) fn status(&self) -> FlightStatus {
        let ring = self.lock();
        let held: std::collections::HashSet<*const Segment> =
            ring.closed.iter().map(Arc::as_ptr).collect();
        let pinned_only: Vec<&Arc<Segment>> = ring
            .pins
            .iter()
            .flat_map(|p| p.segments.iter())
            .filter(|s| !held.contains(&Arc::as_ptr(s)))
            .collect();
        let segments_bytes: usize = ring
            .closed
            .iter()
            .map(|s| s.bytes())
            .chain(pinned_only.iter().map(|s| s.bytes()))
            .chain(ring.open.as_ref().map(Segment::bytes))
            .sum();
        let stacks: usize = ring.stacks.values().map(Vec::len).sum();
        let history_ms = match (ring.closed.front(), ring.open.as_ref()) {
            (Some(first), Some(open)) => {
                open.end_ns
                    .max(open.start_ns)
                    .saturating_sub(first.start_ns)
                    / 1_000_000
            }
            (None, Some(open)) => open.end_ns.saturating_sub(open.start_ns) / 1_000_000,
            (Some(first), None) => ring.closed.back().map_or(0, |last| {
                last.end_ns.saturating_sub(first.start_ns) / 1_000_000
            }),
            (None, None) => 0,
        };
        FlightStatus {
            hz: self.settings.hz,
            segments: ring.closed.len() + usize::from(ring.open.is_some()),
            pinned_segments: pinned_only.len(),
            stacks,
            memory_bytes: segments_bytes + ring.stack_bytes + ring.stacks.capacity() * 40,
            history_ms,
        }
    }

    /// The profile of the segments overlapping `from..to` (wall clock), as
    /// of `now_ns` (monotonic) and `cpu_now_ns` (the open segment's CPU so
    /// far), with what it covers.
    pub(crate) fn look_back(
        &self,
        from: SystemTime,
        to: SystemTime,
        now: (SystemTime, u64, u64),
    ) -> (CpuProfile, Coverage) {
        let ring = self.lock();
        let (wall_now, now_ns, cpu_now) = now;
        // The open segment as of now.
        let open = ring.open.as_ref().map(|s| {
            let mut uncovered_ns = s.uncovered_ns;
            let mut uncovered_cpu = s.uncovered_cpu_ns;
            if let Some((since_ns, since_cpu)) = ring.paused {
                uncovered_ns += now_ns.saturating_sub(since_ns.max(s.start_ns));
                uncovered_cpu += cpu_now.saturating_sub(since_cpu.max(s.cpu_start_ns));
            }
            (s, now_ns, cpu_now, uncovered_ns, uncovered_cpu)
        });
        let mut chosen: Vec<SegmentView<'_>> =
            ring.closed.iter().map(|s| SegmentView::of(s)).collect();
        if let Some((s, end_ns, cpu_end, uncovered_ns, uncovered_cpu)) = open {
            let length = end_ns.saturating_sub(s.start_ns);
            chosen.push(SegmentView {
                wall_start: s.wall_start,
                wall_end: s.wall_start + Duration::from_nanos(length),
                cpu_ns: cpu_end
                    .saturating_sub(s.cpu_start_ns)
                    .saturating_sub(uncovered_cpu),
                covered_ns: length.saturating_sub(uncovered_ns),
                length_ns: length,
                samples: s.samples,
                rates: s.rates,
                entries: Box::new(s.entries()),
            });
        }
        let _ = wall_now;
        chosen.retain(|s| s.wall_start < to && s.wall_end > from && s.length_ns > 0);
        let oldest = ring
            .closed
            .front()
            .map(|s| s.wall_start)
            .or(ring.open.as_ref().map(|s| s.wall_start));
        build(self.settings.hz, from, to, oldest, chosen)
    }

    /// The newest closed segment alone: what a scraper that comes once a
    /// segment reads, so that its profiles neither overlap nor leave gaps.
    pub(crate) fn latest(&self) -> (CpuProfile, Coverage) {
        let ring = self.lock();
        let views: Vec<SegmentView<'_>> = ring
            .closed
            .back()
            .map(|s| SegmentView::of(s))
            .into_iter()
            .collect();
        let (from, to) = views
            .first()
            .map_or((SystemTime::now(), SystemTime::now()), |s| {
                (s.wall_start, s.wall_end)
            });
        build(self.settings.hz, from, to, Some(from), views)
    }

    /// Pins the segments around `onset` (from one segment before it to one
    /// after) for `reason`; segments still to close join as they close.
    /// Returns the pin's id. The oldest pins go when the pinned segments
    /// exceed the cap.
    pub(crate) fn pin(&self, onset: SystemTime, reason: &str) -> u64 {
        let segment = self.settings.segment;
        let from = onset.checked_sub(segment).unwrap_or(onset);
        let to = onset + segment;
        let mut ring = self.lock();
        ring.next_pin += 1;
        let id = ring.next_pin;
        let segments: Vec<Arc<Segment>> = ring
            .closed
            .iter()
            .filter(|s| s.wall_start < to && s.wall_end() > from)
            .cloned()
            .collect();
        ring.pins.push_back(Pin {
            id,
            reason: reason.to_owned(),
            from,
            to,
            segments,
        });
        // Room for the segments of the newest pins: drop the oldest pins.
        let per_pin = 3;
        while ring.pins.len() > 1
            && ring.pins.len() * per_pin > self.settings.max_pinned_segments.max(per_pin)
        {
            ring.pins.pop_front();
        }
        id
    }

    /// Pins kept, oldest first.
    pub(crate) fn pins(&self) -> Vec<PinInfo> {
        self.lock()
            .pins
            .iter()
            .map(|p| PinInfo {
                id: p.id,
                reason: p.reason.clone(),
                from: p.segments.first().map_or(p.from, |s| s.wall_start),
                to: p.segments.last().map_or(p.from, |s| s.wall_end()),
                segments: p.segments.len(),
            })
            .collect()
    }

    /// The profile of a pin's segments.
    pub(crate) fn pinned(&self, id: u64) -> Option<(CpuProfile, Coverage)> {
        let ring = self.lock();
        let pin = ring.pins.iter().find(|p| p.id == id)?;
        let views: Vec<SegmentView<'_>> = pin.segments.iter().map(|s| SegmentView::of(s)).collect();
        let oldest = views.first().map(|s| s.wall_start);
        Some(build(self.settings.hz, pin.from, pin.to, oldest, views))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::window::StackKey;

    fn key(thread: &str, frames: &[u64]) -> StackKey {
        StackKey {
            thread: Arc::from(thread),
            frames: Arc::from(frames),
            labels: 0,
            state: 0,
        }
    }

    const S: u64 = 1_000_000_000;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn recorder(segment_s: u64, keep_s: u64) -> FlightRecorder {
        let settings = ContinuousSettings::new(19)
            .segment(Duration::from_secs(segment_s))
            .keep(Duration::from_secs(keep_s));
        let recorder = FlightRecorder::new(settings);
        recorder.resume(t0(), 0, 0);
        recorder
    }

    /// One second of samples at `hz`: `a` share on stack A, the rest B; the
    /// process burns one core.
    fn second(recorder: &FlightRecorder, at_s: u64, hz: u32, a_share: f64) {
        let mut batch = recorder.batch();
        for i in 0..hz {
            let stack = if f64::from(i) < a_share * f64::from(hz) {
                key("w", &[1, 2])
            } else {
                key("w", &[3, 2])
            };
            batch.record(&stack, hz, 1, at_s * S + u64::from(i) * (S / u64::from(hz)));
        }
        drop(batch);
        let next = (at_s + 1) * S;
        recorder.tick(next, || (t0() + Duration::from_secs(at_s + 1), next));
    }

    fn share(profile: &CpuProfile, frames: &[u64]) -> f64 {
        let total: u64 = profile.stacks().iter().map(|s| s.weight).sum();
        let part: u64 = profile
            .stacks()
            .iter()
            .filter(|s| *s.frames == *frames)
            .map(|s| s.weight)
            .sum();
        part as f64 / total as f64
    }

    #[test]
    fn phases_are_told_apart_by_window_and_cpu_stays_true() {
        let recorder = recorder(10, 900);
        for s in 0..30 {
            second(&recorder, s, 19, 1.0);
        }
        for s in 30..60 {
            second(&recorder, s, 19, 0.0);
        }
        let now = (t0() + Duration::from_secs(60), 60 * S, 60 * S);
        let (a, coverage) = recorder.look_back(t0(), t0() + Duration::from_secs(30), now);
        assert!(!coverage.partial, "{coverage:?}");
        assert_eq!(coverage.segments, 3);
        assert!(share(&a, &[1, 2]) > 0.99);
        assert_eq!(a.cpu_time(), Duration::from_secs(30));
        let (b, _) = recorder.look_back(
            t0() + Duration::from_secs(30),
            t0() + Duration::from_secs(60),
            now,
        );
        assert!(share(&b, &[3, 2]) > 0.99);
        let (mix, _) = recorder.look_back(
            t0() + Duration::from_secs(20),
            t0() + Duration::from_secs(40),
            now,
        );
        assert!((share(&mix, &[1, 2]) - 0.5).abs() < 0.01);
        assert_eq!(mix.cpu_time(), Duration::from_secs(20));
    }

    #[test]
    fn a_faster_sampler_is_weighted_by_its_period() {
        let recorder = recorder(10, 900);
        // 5 s of A at 19 Hz, then 5 s of B at 999 Hz (an on-demand profile).
        for s in 0..5 {
            second(&recorder, s, 19, 1.0);
        }
        for s in 5..10 {
            second(&recorder, s, 999, 0.0);
        }
        let now = (t0() + Duration::from_secs(10), 10 * S, 10 * S);
        let (p, _) = recorder.look_back(t0(), t0() + Duration::from_secs(10), now);
        assert!(
            (share(&p, &[1, 2]) - 0.5).abs() < 0.01,
            "{}",
            share(&p, &[1, 2])
        );
        assert!(p.notes.iter().any(|n| n.contains("19 Hz and at 999 Hz")));
    }

    #[test]
    fn asking_for_more_than_the_ring_holds_says_so() {
        let recorder = recorder(10, 30);
        for s in 0..100 {
            second(&recorder, s, 19, 0.5);
        }
        let now = (t0() + Duration::from_secs(100), 100 * S, 100 * S);
        let status = recorder.status();
        assert!(status.segments <= 3, "{status:?}");
        let (p, coverage) = recorder.look_back(t0(), t0() + Duration::from_secs(100), now);
        assert!(coverage.partial);
        assert!(
            coverage
                .note
                .as_deref()
                .unwrap_or("")
                .contains("ring starts at"),
            "{coverage:?}"
        );
        assert!(p.cpu_time() <= Duration::from_secs(30));
        // Stacks of expired segments are freed.
        assert_eq!(status.stacks, 2);
    }

    #[test]
    fn pauses_are_not_charged_to_the_samples() {
        let recorder = recorder(10, 900);
        for s in 0..4 {
            second(&recorder, s, 19, 1.0);
        }
        // 4 s of a wall-clock profile: no CPU samples, CPU keeps burning.
        recorder.pause(4 * S, 4 * S);
        for s in 4..8 {
            recorder.tick((s + 1) * S, || (t0(), (s + 1) * S));
        }
        recorder.resume(t0() + Duration::from_secs(8), 8 * S, 8 * S);
        for s in 8..10 {
            second(&recorder, s, 19, 0.0);
        }
        let now = (t0() + Duration::from_secs(10), 10 * S, 10 * S);
        let (p, coverage) = recorder.look_back(t0(), t0() + Duration::from_secs(10), now);
        assert_eq!(p.cpu_time(), Duration::from_secs(6));
        assert!(coverage.partial, "{coverage:?}");
        assert!((share(&p, &[1, 2]) - 4.0 / 6.0).abs() < 0.02);
    }

    #[test]
    fn stacks_over_the_cap_keep_their_weight_in_one_bucket() {
        let settings = ContinuousSettings::new(19).max_stacks_per_segment(16);
        let recorder = FlightRecorder::new(settings);
        recorder.resume(t0(), 0, 0);
        let mut batch = recorder.batch();
        for i in 0..100u64 {
            batch.record(&key("w", &[i, 7]), 19, 1, i);
        }
        drop(batch);
        let (p, _) = recorder.look_back(t0(), t0() + Duration::from_secs(1), (t0(), S, S));
        assert_eq!(p.stacks().len(), 17);
        let truncated = p.stacks().iter().find(|s| &*s.thread == TRUNCATED).unwrap();
        assert_eq!(truncated.samples, 84);
        assert_eq!(p.sample_count(), 100);
    }

    #[test]
    fn pins_outlive_the_ring_and_the_oldest_pin_goes_first() {
        let settings = ContinuousSettings::new(19)
            .segment(Duration::from_secs(10))
            .keep(Duration::from_secs(30))
            .max_pinned_segments(6);
        let recorder = FlightRecorder::new(settings);
        recorder.resume(t0(), 0, 0);
        for s in 0..25 {
            second(&recorder, s, 19, 1.0);
        }
        let id = recorder.pin(
            t0() + Duration::from_secs(25),
            "event_loop_blocked executor",
        );
        for s in 25..200 {
            second(&recorder, s, 19, 0.0);
        }
        let (p, coverage) = recorder.pinned(id).unwrap();
        assert_eq!(coverage.segments, 3, "{coverage:?}");
        assert!(share(&p, &[1, 2]) > 0.3, "the onset's segment is kept");
        let second_pin = recorder.pin(t0() + Duration::from_secs(190), "b");
        let third = recorder.pin(t0() + Duration::from_secs(195), "c");
        assert!(recorder.pinned(id).is_none(), "the oldest pin went");
        assert!(recorder.pinned(second_pin).is_some() && recorder.pinned(third).is_some());
    }

    /// Fills a default ring (90 segments of 10 s) with `per_segment`
    /// samples a segment drawn from `distinct` stacks 24 frames deep.
    fn filled(per_segment: u64, distinct: u64) -> FlightStatus {
        let recorder = FlightRecorder::new(ContinuousSettings::new(19));
        recorder.resume(t0(), 0, 0);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for segment in 0..100u64 {
            let mut batch = recorder.batch();
            for i in 0..per_segment {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let which = (seed >> 33) % distinct;
                let frames: Vec<u64> = (0..24).map(|d| which * 64 + d).collect();
                batch.record(&key("worker", &frames), 19, 1, segment * 10 * S + i);
            }
            drop(batch);
            let next = (segment + 1) * 10 * S;
            recorder.tick(next, || (t0() + Duration::from_nanos(next), next));
        }
        recorder.status()
    }

    #[test]
    fn fifteen_minutes_of_five_thousand_stacks_fit_in_16_mib() {
        // Two busy threads at 19 Hz: 380 samples a segment.
        let typical = filled(380, 5_000);
        assert_eq!(typical.segments, 90);
        assert!(typical.memory_bytes <= 16 << 20, "{typical:?}");
        // Every segment at its cap of distinct stacks (a 999 Hz profile
        // running all along): still bounded.
        let worst = filled(20_000, 5_000);
        assert!(worst.memory_bytes <= 16 << 20, "{worst:?}");
        assert!(worst.stacks <= 5_000, "{worst:?}");
    }
}
