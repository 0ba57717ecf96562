//! Per-worker progress from tokio's stable `RuntimeMetrics`.
//!
//! A multi-thread worker publishes its counters (busy time, parks, park +
//! unpark transitions) when it parks, right after it unparks, and during
//! maintenance, every `event_interval` (61) scheduler ticks. A worker
//! whose park/unpark count is even is not parked; if its counters then stay
//! unchanged, it has not come back to the scheduler since: it is inside one
//! poll (or, rarely, inside 61 consecutive slow polls). When the counters
//! move again, the busy time they publish covers the whole streak with
//! tokio's own clock, so its length is known to the microsecond even though
//! the watchdog only looks every few milliseconds.
//!
//! This file is pure bookkeeping over readings, so tests feed it directly.

use std::time::Duration;

/// One worker's published counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WorkerCounters {
    /// `worker_total_busy_duration`, nanoseconds.
    pub(crate) busy_ns: u64,
    /// `worker_park_count`.
    pub(crate) parks: u64,
    /// `worker_park_unpark_count`: odd while parked.
    pub(crate) park_unparks: u64,
}

impl WorkerCounters {
    pub(crate) fn parked(&self) -> bool {
        !self.park_unparks.is_multiple_of(2)
    }
}

/// What one look at a worker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerEvent {
    /// Nothing worth reporting.
    Quiet,
    /// The worker has not come back to the scheduler for `stuck_for`,
    /// which just crossed the stall threshold.
    StallStarted { stuck_for: Duration },
    /// A streak the watchdog saw frozen has ended; the worker was away
    /// from the scheduler for `duration`. `stalled` tells whether it had
    /// been reported as a stall.
    StreakEnded { duration: Duration, stalled: bool },
}

/// The watchdog's view of one worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerTrack {
    last: WorkerCounters,
    /// When `last` was first seen (time since the watchdog's epoch).
    changed_at: Duration,
    /// Whether a look found the counters unchanged while not parked.
    frozen_seen: bool,
    stalled: bool,
    /// When the current streak began at the earliest: the previous look,
    /// when the watchdog slept dormant since and found the worker away
    /// from the scheduler on waking.
    start_bound: Option<Duration>,
    /// Busy-ratio baseline: (time, estimated busy ns).
    ratio_base: Option<(Duration, u64)>,
    busy_ratio: Option<f64>,
}

/// How often the busy ratio is recomputed.
pub(crate) const BUSY_RATIO_WINDOW: Duration = Duration::from_secs(1);

impl WorkerTrack {
    pub(crate) fn new(now: Duration, counters: WorkerCounters) -> Self {
        WorkerTrack {
            last: counters,
            changed_at: now,
            ..WorkerTrack::default()
        }
    }

    /// Folds in a reading taken at `now`. `unseen_since` is the previous
    /// look's time when the watchdog slept dormant since: a worker found
    /// away from the scheduler may have been so since then.
    ///
    /// A stall is reported once the worker has been seen away for the
    /// threshold — or, right after a dormant sleep, once it may have been
    /// away for the threshold and has been seen away for a quarter of it;
    /// the streak's exact length (tokio's busy time, when it ends) then
    /// tells whether it really was a stall.
    pub(crate) fn observe(
        &mut self,
        now: Duration,
        counters: WorkerCounters,
        threshold: Duration,
        unseen_since: Option<Duration>,
    ) -> WorkerEvent {
        let event = if counters != self.last {
            let event = if self.frozen_seen {
                let wall = now.saturating_sub(self.changed_at);
                let busy = Duration::from_nanos(counters.busy_ns.saturating_sub(self.last.busy_ns));
                // The busy time tokio published is exact; the wall time
                // between two looks is only accurate to one look.
                let duration = if busy.is_zero() { wall } else { busy };
                WorkerEvent::StreakEnded {
                    duration,
                    stalled: self.stalled,
                }
            } else {
                WorkerEvent::Quiet
            };
            self.last = counters;
            self.changed_at = now;
            self.frozen_seen = false;
            self.stalled = false;
            self.start_bound = unseen_since.filter(|_| !counters.parked());
            event
        } else if counters.parked() {
            self.frozen_seen = false;
            self.start_bound = None;
            WorkerEvent::Quiet
        } else {
            self.frozen_seen = true;
            let seen = now.saturating_sub(self.changed_at);
            let stuck_for = match self.start_bound {
                Some(bound) if seen >= threshold / 4 => now.saturating_sub(bound),
                _ => seen,
            };
            if !self.stalled && stuck_for >= threshold {
                self.stalled = true;
                WorkerEvent::StallStarted { stuck_for }
            } else {
                WorkerEvent::Quiet
            }
        };
        self.update_ratio(now);
        event
    }

    /// Busy time including the unpublished time of a worker that is away
    /// from the scheduler now.
    fn estimated_busy_ns(&self, now: Duration) -> u64 {
        let unpublished = if self.last.parked() {
            0
        } else {
            u64::try_from(now.saturating_sub(self.changed_at).as_nanos()).unwrap_or(u64::MAX)
        };
        self.last.busy_ns.saturating_add(unpublished)
    }

    fn update_ratio(&mut self, now: Duration) {
        let busy = self.estimated_busy_ns(now);
        match self.ratio_base {
            Some((at, base)) if now.saturating_sub(at) >= BUSY_RATIO_WINDOW => {
                let window = now.saturating_sub(at).as_nanos() as f64;
                self.busy_ratio = Some((busy.saturating_sub(base) as f64 / window).clamp(0.0, 1.0));
                self.ratio_base = Some((now, busy));
            }
            Some(_) => {}
            None => self.ratio_base = Some((now, busy)),
        }
    }

    /// Share of the last second the worker was busy, 0..1 (`None` in the
    /// first second).
    pub(crate) fn busy_ratio(&self) -> Option<f64> {
        self.busy_ratio
    }

    /// The counters last published.
    pub(crate) fn counters(&self) -> WorkerCounters {
        self.last
    }

    /// How long the worker has been away from the scheduler, if it is
    /// not parked and a look found it frozen.
    pub(crate) fn away_for(&self, now: Duration) -> Option<Duration> {
        self.frozen_seen
            .then(|| now.saturating_sub(self.changed_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn c(busy_ms: u64, parks: u64, park_unparks: u64) -> WorkerCounters {
        WorkerCounters {
            busy_ns: busy_ms * 1_000_000,
            parks,
            park_unparks,
        }
    }

    #[test]
    fn a_long_poll_is_a_stall_measured_by_published_busy_time() {
        let mut w = WorkerTrack::new(ms(0), c(10, 5, 10));
        // Unparked at 2 ms (published right after unpark), then stuck.
        assert_eq!(w.observe(ms(10), c(10, 5, 10), T, None), WorkerEvent::Quiet);
        let mut started = None;
        for tick in 2..=30u64 {
            if let WorkerEvent::StallStarted { stuck_for } =
                w.observe(ms(tick * 10), c(10, 5, 10), T, None)
            {
                started = Some((tick, stuck_for));
            }
        }
        assert_eq!(started, Some((10, ms(100))));
        assert_eq!(w.away_for(ms(300)), Some(ms(300)));
        // It parks after a 297.5 ms poll.
        let end = w.observe(
            ms(310),
            WorkerCounters {
                busy_ns: 10_000_000 + 297_500_000,
                parks: 6,
                park_unparks: 11,
            },
            T,
            None,
        );
        assert_eq!(
            end,
            WorkerEvent::StreakEnded {
                duration: Duration::from_micros(297_500),
                stalled: true
            }
        );
        assert_eq!(w.away_for(ms(320)), None);
    }

    #[test]
    fn parked_and_progressing_workers_are_quiet() {
        let mut w = WorkerTrack::new(ms(0), c(0, 1, 1));
        for tick in 1..100u64 {
            assert_eq!(
                w.observe(ms(tick * 10), c(0, 1, 1), T, None),
                WorkerEvent::Quiet,
                "parked"
            );
        }
        // Busy but publishing every look: never frozen.
        for tick in 100..200u64 {
            assert_eq!(
                w.observe(ms(tick * 10), c(tick, 1, 2), T, None),
                WorkerEvent::Quiet
            );
        }
        let ratio = w.busy_ratio().unwrap();
        assert!(ratio > 0.05 && ratio < 0.15, "{ratio}");
    }

    #[test]
    fn a_short_frozen_streak_ends_without_a_stall() {
        let mut w = WorkerTrack::new(ms(0), c(0, 0, 0));
        assert_eq!(w.observe(ms(10), c(0, 0, 0), T, None), WorkerEvent::Quiet);
        assert_eq!(
            w.observe(ms(20), c(15, 0, 0), T, None),
            WorkerEvent::StreakEnded {
                duration: ms(15),
                stalled: false
            }
        );
    }

    #[test]
    fn a_stuck_worker_counts_as_busy() {
        let mut w = WorkerTrack::new(ms(0), c(0, 0, 0));
        for tick in 1..=250u64 {
            w.observe(ms(tick * 10), c(0, 0, 0), Duration::from_secs(10), None);
        }
        assert!(w.busy_ratio().unwrap() > 0.95);
    }

    #[test]
    fn after_a_dormant_sleep_a_long_poll_counts_from_the_previous_look() {
        // Parked at 0; the watchdog sleeps 200 ms; on waking the worker is
        // away (unparked at some unknown time since).
        let mut w = WorkerTrack::new(ms(0), c(10, 5, 9));
        let woke = ms(200);
        assert_eq!(
            w.observe(woke, c(10, 5, 10), T, Some(ms(0))),
            WorkerEvent::Quiet
        );
        // Seen away for less than a quarter threshold: not yet.
        assert_eq!(
            w.observe(ms(220), c(10, 5, 10), T, None),
            WorkerEvent::Quiet
        );
        // 25 ms seen, up to 225 ms in all: a stall (confirmed or retracted
        // by its exact length at the end).
        assert_eq!(
            w.observe(ms(225), c(10, 5, 10), T, None),
            WorkerEvent::StallStarted { stuck_for: ms(225) }
        );
        // Without a dormant sleep, the same readings wait for the threshold.
        let mut w = WorkerTrack::new(ms(0), c(10, 5, 9));
        assert_eq!(w.observe(woke, c(10, 5, 10), T, None), WorkerEvent::Quiet);
        assert_eq!(
            w.observe(ms(225), c(10, 5, 10), T, None),
            WorkerEvent::Quiet
        );
        // A worker that is parked on waking gets no bound.
        let mut w = WorkerTrack::new(ms(0), c(10, 5, 9));
        assert_eq!(
            w.observe(woke, c(11, 6, 11), T, Some(ms(0))),
            WorkerEvent::Quiet
        );
        assert_eq!(w.start_bound, None);
    }
}
