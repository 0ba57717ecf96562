//! Per (target, span name) statistics and the slow-span log, shared by the
//! [`SpanLayer`](super::SpanLayer) that records and the agent that reports.
//!
//! A closing span finds its statistics through the callsite table (no
//! lock), records into atomic histograms, and offers itself to the
//! slow-span log only when it beats the log's admission floor, an atomic
//! read; only those spans take the per-name log's lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::Metadata;

use super::callsites::CallsiteTable;
use super::fields::FieldText;
use super::report::{SlowSpan, SpanReport, SpanSummary};
use crate::spans::{DEFAULT_SLOW_SPANS_PER_NAME, DEFAULT_SLOW_SPAN_THRESHOLD, DEFAULT_SLOW_SPAN_WINDOW, DEFAULT_SPAN_MAX_NAMES};
use crate::histogram::{seconds_to_nanos, BucketCounts, LatencyHistogram};

/// Target and name of the entry that counts spans beyond
/// [`SpanSettings::max_names`].
pub const OVERFLOW_NAME: &str = "<overflow>";

/// Upper bounds, in seconds, of the `stethoscope_span_duration_seconds`
/// buckets (`+Inf` follows): from sub-millisecond cache hits to
/// multi-second upstream calls.
pub const SPAN_DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

static SPAN_BOUNDS_NS: [u64; SPAN_DURATION_BUCKETS.len()] = seconds_to_nanos(SPAN_DURATION_BUCKETS);

pub(crate) type SpanBuckets = BucketCounts<{ SPAN_DURATION_BUCKETS.len() + 1 }>;

/// What the span timings keep, fixed when [`SpanTimings`] is created.
///
/// ```
/// use std::time::Duration;
/// use stethoscope::spans::{SpanSettings, SpanTimings};
///
/// let timings = SpanTimings::with_settings(
///     SpanSettings::default()
///         .slow_threshold(Duration::from_millis(20))
///         .slowest_per_name(5),
/// );
/// assert_eq!(timings.settings().slow_threshold, Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SpanSettings {
    /// Distinct (target, name) pairs kept; more are counted under
    /// [`OVERFLOW_NAME`].
    pub max_names: usize,
    /// Spans at least this long are candidates for the slow-span log.
    #[serde(rename = "slow_threshold_ms", serialize_with = "crate::report::ms")]
    pub slow_threshold: Duration,
    /// Slowest spans kept per (target, name).
    pub slowest_per_name: usize,
    /// Spans leave the slow-span log this long after they closed.
    #[serde(rename = "slow_window_s", serialize_with = "crate::report::secs")]
    pub slow_window: Duration,
    /// CPU and wall-clock samples taken inside a span carry `span=<name>`
    /// (the innermost span's), added to the route and task labels.
    pub label_samples: bool,
}

impl Default for SpanSettings {
    fn default() -> Self {
        SpanSettings {
            max_names: DEFAULT_SPAN_MAX_NAMES,
            slow_threshold: DEFAULT_SLOW_SPAN_THRESHOLD,
            slowest_per_name: DEFAULT_SLOW_SPANS_PER_NAME,
            slow_window: DEFAULT_SLOW_SPAN_WINDOW,
            label_samples: false,
        }
    }
}

impl SpanSettings {
    /// Distinct (target, span name) pairs kept, at least 1. Default
    /// [`DEFAULT_SPAN_MAX_NAMES`]. Each costs about 5.5 KiB (two
    /// histograms) plus its slow-span records.
    #[must_use]
    pub fn max_names(mut self, names: usize) -> Self {
        self.max_names = names.max(1);
        self
    }

    /// Shortest span the slow-span log considers. Default
    /// [`DEFAULT_SLOW_SPAN_THRESHOLD`] (50 ms).
    #[must_use]
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.slow_threshold = threshold;
        self
    }

    /// Slowest spans kept per (target, name); 0 turns the slow-span log
    /// off. Default [`DEFAULT_SLOW_SPANS_PER_NAME`] (10).
    #[must_use]
    pub fn slowest_per_name(mut self, spans: usize) -> Self {
        self.slowest_per_name = spans;
        self
    }

    /// How long a slow span stays in the log after it closed. Default
    /// [`DEFAULT_SLOW_SPAN_WINDOW`] (15 minutes).
    #[must_use]
    pub fn slow_window(mut self, window: Duration) -> Self {
        self.slow_window = window;
        self
    }

    /// Labels every CPU and wall-clock sample taken inside a span with
    /// `span=<name>` of the innermost span (added to `route`, `method`,
    /// `task` and the service's own labels), so `by=span` ranks spans by
    /// CPU and `-tagfocus span=db_query` keeps one. Off by default: it
    /// costs a thread-local switch per enter and exit (and one label-set
    /// merge per span and route, cached).
    ///
    /// ```
    /// use stethoscope::spans::SpanSettings;
    /// assert!(SpanSettings::default().label_samples(true).label_samples);
    /// ```
    #[must_use]
    pub fn label_samples(mut self, label: bool) -> Self {
        self.label_samples = label;
        self
    }
}

/// Span timings: per (target, span name) histograms of total and busy
/// time, counts and errors, and the slowest recent spans with their
/// fields. Cheap to clone (one `Arc`); every clone and every
/// [`layer`](Self::layer) shares the same numbers.
///
/// Create it before the tracing subscriber, add [`layer`](Self::layer) to
/// the subscriber, and hand it to
/// [`AgentBuilder::spans`](crate::AgentBuilder::spans) so `/debug/spans`
/// and `/metrics` serve it:
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let timings = stethoscope::spans::SpanTimings::new();
/// let subscriber = tracing_subscriber::registry().with(timings.layer());
/// tracing::subscriber::with_default(subscriber, || {
///     let _query = tracing::info_span!("db_query", table = "items").entered();
/// });
/// let report = timings.report();
/// assert_eq!((report.spans[0].name, report.spans[0].count), ("db_query", 1));
/// ```
#[derive(Debug, Clone)]
pub struct SpanTimings {
    inner: Arc<Recorder>,
}

impl Default for SpanTimings {
    fn default() -> Self {
        Self::new()
    }
}

impl SpanTimings {
    /// Span timings with the default [`SpanSettings`].
    pub fn new() -> Self {
        Self::with_settings(SpanSettings::default())
    }

    /// Span timings with `settings`.
    pub fn with_settings(settings: SpanSettings) -> Self {
        SpanTimings {
            inner: Arc::new(Recorder::new(settings)),
        }
    }

    /// The `tracing` layer that records into these timings. Add it to the
    /// service's subscriber with `.with(timings.layer())`.
    pub fn layer(&self) -> super::SpanLayer {
        super::SpanLayer::new(Arc::clone(&self.inner))
    }

    /// Rings `alarm` whenever a span is entered from now on.
    pub(crate) fn ring_on_enter(&self, alarm: Arc<crate::periodic::Alarm>) {
        let _ = self.inner.alarm.set(alarm);
    }

    /// The settings these timings were created with.
    pub fn settings(&self) -> &SpanSettings {
        &self.inner.settings
    }

    /// Whether a [`layer`](Self::layer) was installed in a subscriber
    /// (turned into a dispatcher): without it, no span is ever recorded.
    pub fn installed(&self) -> bool {
        self.inner.installed.load(Ordering::Relaxed)
    }

    /// Every (target, name) with its statistics, most total time first,
    /// and the slow-span log, slowest first.
    pub fn report(&self) -> SpanReport {
        let inner = &self.inner;
        let mut spans = Vec::new();
        let mut slowest = Vec::new();
        let now = inner.now_nanos();
        for stats in inner.stats.iter().filter_map(|slot| slot.get()) {
            let summary = stats.summary();
            if summary.count == 0 {
                continue;
            }
            spans.push(summary);
            slowest.extend(stats.slow.recent(now, inner.window_ns));
        }
        spans.sort_by(|a, b| {
            b.total_time
                .cmp(&a.total_time)
                .then_with(|| (a.target, a.name).cmp(&(b.target, b.name)))
        });
        slowest.sort_by_key(|s| std::cmp::Reverse(s.total));
        let installed = self.installed();
        SpanReport {
            installed,
            hint: (!installed).then_some(
                "the span layer is not installed in a subscriber: add timings.layer() to it",
            ),
            spans,
            slowest,
            settings: inner.settings.clone(),
        }
    }

    /// Every (target, name) that recorded a span, for `/metrics`.
    #[cfg(feature = "metrics")]
    pub(crate) fn series(&self) -> Vec<SpanSeries> {
        self.inner
            .stats
            .iter()
            .filter_map(|slot| slot.get())
            .filter_map(|stats| {
                let (buckets, sum_seconds) = stats.buckets.snapshot();
                (buckets.iter().sum::<u64>() > 0).then(|| SpanSeries {
                    target: stats.target,
                    name: stats.name,
                    buckets,
                    sum_seconds,
                    busy_seconds: stats.busy.sum_nanos() as f64 / 1e9,
                    errors: stats.errors.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

/// One (target, name) as `/metrics` exports it.
#[cfg(feature = "metrics")]
#[derive(Debug)]
pub(crate) struct SpanSeries {
    pub(crate) target: &'static str,
    pub(crate) name: &'static str,
    /// Duration buckets, non-cumulative, `+Inf` last.
    pub(crate) buckets: [u64; SPAN_DURATION_BUCKETS.len() + 1],
    pub(crate) sum_seconds: f64,
    pub(crate) busy_seconds: f64,
    pub(crate) errors: u64,
}

/// The shared state behind [`SpanTimings`] and its layers.
#[derive(Debug)]
pub(crate) struct Recorder {
    settings: SpanSettings,
    threshold_ns: u64,
    window_ns: u64,
    epoch: Instant,
    callsites: CallsiteTable,
    /// Slot 0 is the overflow entry; the others fill in order.
    stats: Box<[OnceLock<Box<SpanStats>>]>,
    registration: Mutex<Registration>,
    installed: AtomicBool,
    /// Rung when a span is entered: wakes the agent's dormant stall
    /// watchdog when work arrives after a quiet spell.
    pub(crate) alarm: OnceLock<Arc<crate::periodic::Alarm>>,
}

impl Recorder {
    /// Whether samples inside spans carry `span=<name>`.
    pub(crate) fn labels_samples(&self) -> bool {
        self.settings.label_samples
    }
}

/// Cold-path bookkeeping, under the registration lock.
#[derive(Debug, Default)]
struct Registration {
    by_name: HashMap<(&'static str, &'static str), usize>,
    /// Callsites the table had no room for (practically never: it holds
    /// four per name).
    unmapped: HashMap<usize, usize>,
}

impl Recorder {
    fn new(settings: SpanSettings) -> Self {
        let max_names = settings.max_names.max(1);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Recorder {
            threshold_ns: nanos(settings.slow_threshold).max(1),
            window_ns: nanos(settings.slow_window),
            epoch: Instant::now(),
            callsites: CallsiteTable::with_capacity(max_names * 4),
            stats: (0..=max_names).map(|_| OnceLock::new()).collect(),
            registration: Mutex::new(Registration::default()),
            installed: AtomicBool::new(false),
            alarm: OnceLock::new(),
            settings,
        }
    }

    pub(crate) fn mark_installed(&self) {
        self.installed.store(true, Ordering::Relaxed);
    }

    /// Nanoseconds since the recorder was created.
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn now_nanos(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// The statistics spans of `metadata`'s callsite record into.
    #[inline]
    pub(crate) fn stats_for(&self, metadata: &'static Metadata<'static>) -> Option<&SpanStats> {
        let key = metadata as *const Metadata<'static> as usize;
        let index = match self.callsites.get(key) {
            Some(index) => index,
            None => self.register(key, metadata),
        };
        self.stats.get(index)?.get().map(|stats| &**stats)
    }

    #[cold]
    fn register(&self, key: usize, metadata: &'static Metadata<'static>) -> usize {
        let mut registration = self
            .registration
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = self.callsites.get(key) {
            return index;
        }
        if let Some(&index) = registration.unmapped.get(&key) {
            return index;
        }
        let name = (metadata.target(), metadata.name());
        let index = match registration.by_name.get(&name) {
            Some(&index) => index,
            None if registration.by_name.len() < self.stats.len() - 1 => {
                let index = registration.by_name.len() + 1;
                registration.by_name.insert(name, index);
                self.init(index, name.0, name.1);
                index
            }
            None => {
                self.init(0, OVERFLOW_NAME, OVERFLOW_NAME);
                0
            }
        };
        if !self.callsites.insert(key, index) && registration.unmapped.len() < self.stats.len() {
            registration.unmapped.insert(key, index);
        }
        index
    }

    fn init(&self, index: usize, target: &'static str, name: &'static str) {
        if let Some(slot) = self.stats.get(index) {
            slot.get_or_init(|| {
                Box::new(SpanStats::new(target, name, self.settings.slowest_per_name))
            });
        }
    }

    /// Whether a span of `total_ns` closing at `now_ns` would enter the
    /// slow-span log of `stats`: over the threshold and over the log's
    /// floor (or the floor has expired). A pair of atomic reads.
    #[inline]
    pub(crate) fn is_slow_candidate(&self, stats: &SpanStats, total_ns: u64, now_ns: u64) -> bool {
        total_ns >= self.threshold_ns
            && self.settings.slowest_per_name > 0
            && stats.slow.admits(total_ns, now_ns)
    }

    pub(crate) fn offer_slow(&self, stats: &SpanStats, record: SlowRecord) {
        stats
            .slow
            .offer(record, self.window_ns, self.settings.slowest_per_name);
    }
}

/// Statistics of one (target, name).
#[derive(Debug)]
pub(crate) struct SpanStats {
    target: &'static str,
    name: &'static str,
    total: LatencyHistogram,
    busy: LatencyHistogram,
    buckets: SpanBuckets,
    errors: AtomicU64,
    slow: SlowLog,
}

impl SpanStats {
    fn new(target: &'static str, name: &'static str, slowest: usize) -> Self {
        SpanStats {
            target,
            name,
            total: LatencyHistogram::default(),
            busy: LatencyHistogram::default(),
            buckets: SpanBuckets::new(&SPAN_BOUNDS_NS),
            errors: AtomicU64::new(0),
            slow: SlowLog::new(slowest),
        }
    }

    #[inline]
    pub(crate) fn record(&self, total_ns: u64, busy_ns: u64, error: bool) {
        self.total.record(total_ns);
        self.busy.record(busy_ns);
        self.buckets.record(total_ns);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn summary(&self) -> SpanSummary {
        let total = self.total.summary();
        let busy = self.busy.summary();
        let (_, total_seconds) = self.buckets.snapshot();
        let errors = self.errors.load(Ordering::Relaxed);
        SpanSummary {
            target: self.target,
            name: self.name,
            count: total.count,
            errors,
            error_ratio: if total.count == 0 {
                0.0
            } else {
                errors as f64 / total.count as f64
            },
            total,
            busy,
            total_time: Duration::from_secs_f64(total_seconds.max(0.0)),
            busy_time: Duration::from_nanos(self.busy.sum_nanos()),
        }
    }
}

/// A closed span offered to the slow-span log.
#[derive(Debug)]
pub(crate) struct SlowRecord {
    pub(crate) target: &'static str,
    pub(crate) name: &'static str,
    pub(crate) fields: FieldText,
    pub(crate) parents: Vec<&'static str>,
    pub(crate) started_at: SystemTime,
    pub(crate) total_ns: u64,
    pub(crate) busy_ns: u64,
    pub(crate) error: bool,
    /// When it closed, in recorder nanoseconds.
    pub(crate) closed_ns: u64,
}

/// The slowest recent spans of one (target, name).
#[derive(Debug)]
struct SlowLog {
    /// While the log is full: its fastest span's total; else 0.
    floor_ns: AtomicU64,
    /// When the oldest kept span expires (recorder nanoseconds), after
    /// which any span over the threshold is let in to evict it.
    floor_until: AtomicU64,
    kept: Mutex<Vec<SlowRecord>>,
}

impl SlowLog {
    fn new(capacity: usize) -> Self {
        SlowLog {
            floor_ns: AtomicU64::new(0),
            floor_until: AtomicU64::new(u64::MAX),
            kept: Mutex::new(Vec::with_capacity(capacity.min(16))),
        }
    }

    #[inline]
    fn admits(&self, total_ns: u64, now_ns: u64) -> bool {
        total_ns > self.floor_ns.load(Ordering::Relaxed)
            || now_ns >= self.floor_until.load(Ordering::Relaxed)
    }

    fn offer(&self, record: SlowRecord, window_ns: u64, capacity: usize) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let now_ns = record.closed_ns;
        kept.retain(|r| now_ns.saturating_sub(r.closed_ns) < window_ns);
        if kept.len() < capacity {
            kept.push(record);
        } else if let Some((fastest, _)) = kept
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.total_ns)
            .filter(|(_, r)| r.total_ns < record.total_ns)
        {
            kept[fastest] = record;
        }
        let full = kept.len() >= capacity;
        let floor = if full {
            kept.iter().map(|r| r.total_ns).min().unwrap_or(0)
        } else {
            0
        };
        let until = kept
            .iter()
            .map(|r| r.closed_ns.saturating_add(window_ns))
            .min()
            .unwrap_or(u64::MAX);
        self.floor_ns.store(floor, Ordering::Relaxed);
        self.floor_until.store(until, Ordering::Relaxed);
    }

    /// The kept spans that closed within the window.
    fn recent(&self, now_ns: u64, window_ns: u64) -> Vec<SlowSpan> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter()
            .filter(|r| now_ns.saturating_sub(r.closed_ns) < window_ns)
            .map(|r| SlowSpan {
                target: r.target,
                name: r.name,
                started_at: r.started_at,
                total: Duration::from_nanos(r.total_ns),
                busy: Duration::from_nanos(r.busy_ns),
                error: r.error,
                fields: r
                    .fields
                    .pairs()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                fields_truncated: r.fields.truncated(),
                parents: r.parents.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &'static str, total_ms: u64, closed_ns: u64) -> SlowRecord {
        SlowRecord {
            target: "t",
            name,
            fields: FieldText::default(),
            parents: vec![],
            started_at: SystemTime::UNIX_EPOCH,
            total_ns: total_ms * 1_000_000,
            busy_ns: 0,
            error: false,
            closed_ns,
        }
    }

    #[test]
    fn slow_log_keeps_the_slowest_and_raises_its_floor() {
        let log = SlowLog::new(3);
        let window = 1_000_000_000_000;
        for (i, ms) in [60u64, 90, 70, 55, 120, 80].into_iter().enumerate() {
            if log.admits(ms * 1_000_000, i as u64) {
                log.offer(record("q", ms, i as u64), window, 3);
            }
        }
        let mut kept: Vec<u128> = log
            .recent(10, window)
            .iter()
            .map(|s| s.total.as_millis())
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, [80, 90, 120]);
        assert_eq!(log.floor_ns.load(Ordering::Relaxed), 80_000_000);
        assert!(!log.admits(79_000_000, 10));
        assert!(log.admits(81_000_000, 10));
    }

    #[test]
    fn slow_log_forgets_spans_older_than_the_window() {
        let log = SlowLog::new(2);
        let window = 1_000;
        log.offer(record("q", 500, 0), window, 2);
        log.offer(record("q", 400, 10), window, 2);
        // Full, floor 400 ms: a 60 ms span is refused until the oldest expires.
        assert!(!log.admits(60_000_000, 500));
        assert!(log.admits(60_000_000, 1_000));
        log.offer(record("q", 60, 1_000), window, 2);
        let kept: Vec<u128> = log
            .recent(1_000, window)
            .iter()
            .map(|s| s.total.as_millis())
            .collect();
        assert_eq!(kept, [400, 60]);
        assert!(log.recent(5_000, window).is_empty(), "all expired");
    }
}
