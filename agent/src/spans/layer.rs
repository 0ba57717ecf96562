//! The `tracing` layer: per-span timing kept in the span's own extensions
//! (no shared state on enter and exit), recorded into the shared
//! [`Recorder`] when the span closes.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::fields::{FieldRecorder, FieldText};
use super::recorder::{Recorder, SlowRecord};
use crate::spans::MAX_SPAN_PARENTS;

/// A [`tracing_subscriber::Layer`] that times every span the subscriber
/// enables: total (creation to close) and busy (entered) time, errors, and
/// the fields of slow ones. Get it from
/// [`SpanTimings::layer`](super::SpanTimings::layer).
///
/// Cost: two clock reads per enter/exit pair and one at creation and
/// close, each under the span's own extension lock; a lock-free lookup and
/// a few relaxed atomic additions at close; formatting of the span's
/// fields (capped) at creation. Measured in `docs/overhead.md`.
///
/// The layer sees only spans the subscriber's filters let through: with a
/// global `EnvFilter` at `info`, `debug` spans are neither logged nor
/// timed.
#[derive(Debug, Clone)]
pub struct SpanLayer {
    recorder: Arc<Recorder>,
}

impl SpanLayer {
    pub(crate) fn new(recorder: Arc<Recorder>) -> Self {
        SpanLayer { recorder }
    }
}

thread_local! {
    /// The label ids span entries replaced on this thread, innermost last
    /// (enter and exit of a span happen on one thread, properly nested).
    static REPLACED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Timing of one open span, kept in its extensions.
#[derive(Debug)]
struct Timing {
    /// `span=<name>` when samples are labelled with spans (0: not).
    label: u32,
    /// The last (labels on entry, merged labels) pair: a span entered again
    /// under the same route merges nothing.
    merged: (u32, u32),
    created: Instant,
    /// Threads currently inside the span (re-entry counts too).
    entered: u32,
    /// When `entered` last went from 0 to 1.
    since: Instant,
    busy_ns: u64,
    error: bool,
    fields: FieldText,
}

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

impl<S> Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, _subscriber: &Dispatch) {
        self.recorder.mark_installed();
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let now = Instant::now();
        let Some(span) = ctx.span(id) else { return };
        let label = if self.recorder.labels_samples() {
            crate::labels::Labels::new([("span", span.name())]).id
        } else {
            0
        };
        let mut timing = Timing {
            label,
            merged: (u32::MAX, 0),
            created: now,
            entered: 0,
            since: now,
            busy_ns: 0,
            error: false,
            fields: FieldText::default(),
        };
        if !attrs.fields().is_empty() {
            attrs.record(&mut FieldRecorder {
                text: &mut timing.fields,
                error: &mut timing.error,
            });
        }
        span.extensions_mut().insert(timing);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(timing) = extensions.get_mut::<Timing>() {
            values.record(&mut FieldRecorder {
                text: &mut timing.fields,
                error: &mut timing.error,
            });
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(alarm) = self.recorder.alarm.get() {
            alarm.ring();
        }
        let now = Instant::now();
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(timing) = extensions.get_mut::<Timing>() {
            if timing.entered == 0 {
                timing.since = now;
            }
            timing.entered = timing.entered.saturating_add(1);
            if timing.label != 0 {
                use crate::labels::slot;
                slot::note_thread();
                let outer = slot::current();
                if timing.merged.0 != outer {
                    timing.merged = (outer, crate::labels::merge(outer, timing.label));
                }
                let replaced = slot::enter(timing.merged.1);
                REPLACED.with(|stack| stack.borrow_mut().push(replaced));
            }
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let now = Instant::now();
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(timing) = extensions.get_mut::<Timing>() {
            if timing.entered == 1 {
                timing.busy_ns = timing.busy_ns.saturating_add(nanos(timing.since, now));
            }
            timing.entered = timing.entered.saturating_sub(1);
            if timing.label != 0 {
                if let Some(replaced) = REPLACED.with(|stack| stack.borrow_mut().pop()) {
                    crate::labels::slot::restore(replaced);
                }
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        if let Some(span) = ctx.event_span(event) {
            if let Some(timing) = span.extensions_mut().get_mut::<Timing>() {
                timing.error = true;
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let now = Instant::now();
        let Some(span) = ctx.span(&id) else { return };
        let metadata = span.metadata();
        let Some(stats) = self.recorder.stats_for(metadata) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(timing) = extensions.get_mut::<Timing>() else {
            return;
        };
        let total_ns = nanos(timing.created, now);
        let mut busy_ns = timing.busy_ns;
        if timing.entered > 0 {
            // Closed while entered (a span dropped inside itself).
            busy_ns = busy_ns.saturating_add(nanos(timing.since, now));
        }
        let busy_ns = busy_ns.min(total_ns);
        let error = timing.error;
        stats.record(total_ns, busy_ns, error);
        let now_ns = self.recorder.nanos_at(now);
        if !self.recorder.is_slow_candidate(stats, total_ns, now_ns) {
            return;
        }
        let fields = std::mem::take(&mut timing.fields);
        drop(extensions);
        let parents = span
            .scope()
            .skip(1)
            .take(MAX_SPAN_PARENTS)
            .map(|parent| parent.name())
            .collect();
        let started_at = SystemTime::now()
            .checked_sub(std::time::Duration::from_nanos(total_ns))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.recorder.offer_slow(
            stats,
            SlowRecord {
                target: metadata.target(),
                name: metadata.name(),
                fields,
                parents,
                started_at,
                total_ns,
                busy_ns,
                error,
                closed_ns: now_ns,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    use super::super::{SpanSettings, SpanTimings};
    use crate::spans::{tracing_test_lock, OVERFLOW_NAME};

    fn with_timings<T>(timings: &SpanTimings, f: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::registry().with(timings.layer());
        tracing::subscriber::with_default(subscriber, f)
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn spans_label_the_samples_inside_them_and_restore_on_exit() {
        use crate::labels::Labels;
        let _serial = tracing_test_lock();
        let timings = SpanTimings::with_settings(SpanSettings::default().label_samples(true));
        let route = Labels::new([("route", "/orders/{id}")]);
        with_timings(&timings, || {
            let _request = route.enter();
            let outer = tracing::info_span!("checkout");
            let inner = tracing::info_span!("db_query");
            for _ in 0..3 {
                let _o = outer.enter();
                assert_eq!(Labels::current().set().get("span"), Some("checkout"));
                assert_eq!(Labels::current().set().get("route"), Some("/orders/{id}"));
                {
                    let _i = inner.enter();
                    assert_eq!(Labels::current().set().get("span"), Some("db_query"));
                    assert_eq!(Labels::current().set().get("route"), Some("/orders/{id}"));
                }
                assert_eq!(Labels::current().set().get("span"), Some("checkout"));
            }
            assert_eq!(Labels::current(), route);
        });
        // Off by default: spans leave the labels alone.
        let plain = SpanTimings::new();
        with_timings(&plain, || {
            let span = tracing::info_span!("checkout");
            let _e = span.enter();
            assert_eq!(Labels::current(), Labels::none());
        });
    }

    #[test]
    fn sync_spans_are_busy_for_their_whole_life() {
        let _serial = tracing_test_lock();
        let timings = SpanTimings::new();
        assert!(!timings.installed());
        with_timings(&timings, || {
            for _ in 0..3 {
                let _span = tracing::info_span!("work", kind = "sync").entered();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        assert!(timings.installed());
        let report = timings.report();
        let work = report.span(module_path!(), "work").expect("work span");
        assert_eq!(work.count, 3);
        assert_eq!(work.errors, 0);
        assert!(ms(work.total.p50) >= 10.0, "{:?}", work.total);
        assert!(work.busy.p50 <= work.total.p50 + Duration::from_micros(1));
        // Entered for all but the creation-to-enter instant.
        assert!(ms(work.busy.min) >= 9.5, "{:?}", work.busy);
        assert!(work.busy_time <= work.total_time);
    }

    #[test]
    fn async_spans_are_busy_only_while_polled_and_nesting_keeps_busy_within_total() {
        let _serial = tracing_test_lock();
        let timings = SpanTimings::new();
        with_timings(&timings, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(
                async {
                    for _ in 0..3 {
                        async {
                            tokio::time::sleep(Duration::from_millis(15)).await;
                            let _cpu = tracing::info_span!("parse").entered();
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        .instrument(tracing::info_span!("query", table = "items"))
                        .await;
                    }
                }
                .instrument(tracing::info_span!("request")),
            );
        });
        let report = timings.report();
        for s in &report.spans {
            assert!(s.busy.max <= s.total.max, "{s:?}");
            assert!(s.busy_time <= s.total_time, "{s:?}");
        }
        let query = report.span(module_path!(), "query").unwrap();
        assert!(ms(query.total.p50) >= 15.0, "{:?}", query.total);
        assert!(
            ms(query.busy.p50) < 10.0,
            "waiting is not busy: {:?}",
            query.busy
        );
        assert!(
            ms(query.busy.p50) >= 1.5,
            "the nested parse is: {:?}",
            query.busy
        );
        let request = report.span(module_path!(), "request").unwrap();
        assert_eq!(request.count, 1);
        assert!(request.total_time >= query.total_time);
    }

    #[test]
    fn slow_spans_keep_fields_and_parents_and_fast_ones_stay_out() {
        let _serial = tracing_test_lock();
        let timings = SpanTimings::with_settings(
            SpanSettings::default()
                .slow_threshold(Duration::from_millis(20))
                .slowest_per_name(2),
        );
        with_timings(&timings, || {
            let _request = tracing::info_span!("request", route = "/items/{id}").entered();
            for (i, ms) in [25u64, 1, 40, 30, 2].into_iter().enumerate() {
                let span = tracing::info_span!("db_query", i, sql = tracing::field::Empty);
                let _entered = span.enter();
                span.record("sql", "SELECT 1");
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
        let report = timings.report();
        let slow: Vec<_> = report
            .slowest
            .iter()
            .filter(|s| s.name == "db_query")
            .collect();
        assert_eq!(slow.len(), 2, "{slow:?}");
        assert!(slow[0].total >= slow[1].total);
        assert!(ms(slow[1].total) >= 30.0, "{slow:?}");
        assert_eq!(
            slow[0].fields,
            [
                ("i".to_owned(), "2".to_owned()),
                ("sql".to_owned(), "SELECT 1".to_owned())
            ]
        );
        assert_eq!(slow[0].parents, ["request"]);
        assert!(slow[0].busy <= slow[0].total);
        let started = slow[0].started_at.elapsed().unwrap_or_default();
        assert!(started < Duration::from_secs(10), "{started:?}");
    }

    #[test]
    fn errors_come_from_an_error_field_or_an_error_event() {
        let _serial = tracing_test_lock();
        let timings = SpanTimings::new();
        with_timings(&timings, || {
            drop(tracing::info_span!("call", error = false).entered());
            drop(tracing::info_span!("call", error = "timeout").entered());
            let recorded = tracing::info_span!("call", error = tracing::field::Empty);
            recorded.record("error", tracing::field::display("refused"));
            drop(recorded);
            let event = tracing::info_span!("call").entered();
            tracing::error!("upstream failed");
            drop(event);
            let warned = tracing::info_span!("call").entered();
            tracing::warn!("slow");
            drop(warned);
        });
        let call = timings.report().spans[0].clone();
        assert_eq!((call.count, call.errors), (5, 3));
        assert!((call.error_ratio() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn callsites_of_one_name_share_an_entry_and_the_cap_overflows() {
        let _serial = tracing_test_lock();
        let timings = SpanTimings::with_settings(SpanSettings::default().max_names(2));
        with_timings(&timings, || {
            drop(tracing::info_span!("a").entered());
            drop(tracing::info_span!("a", other = 1).entered());
            drop(tracing::info_span!("b").entered());
            drop(tracing::info_span!(target: "elsewhere", "a").entered());
            drop(tracing::info_span!("c").entered());
        });
        let report = timings.report();
        let mut names: Vec<_> = report
            .spans
            .iter()
            .map(|s| (s.target, s.name, s.count))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                (OVERFLOW_NAME, OVERFLOW_NAME, 2),
                (module_path!(), "a", 2),
                (module_path!(), "b", 1)
            ]
        );
    }

    #[test]
    fn spans_across_threads_and_reentry_count_busy_once() {
        let _serial = tracing_test_lock();
        let timings = SpanTimings::new();
        let subscriber = tracing_subscriber::registry().with(timings.layer());
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            let shared = tracing::info_span!("shared");
            let together = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let shared = shared.clone();
                    let dispatch = dispatch.clone();
                    let together = &together;
                    s.spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            together.wait();
                            let _outer = shared.enter();
                            let _inner = shared.enter();
                            std::thread::sleep(Duration::from_millis(20));
                        })
                    });
                }
            });
            std::thread::sleep(Duration::from_millis(10));
        });
        let shared = timings.report().spans[0].clone();
        assert_eq!(shared.count, 1);
        // Two threads inside at once for ~20 ms: busy is their union, not the sum.
        assert!(ms(shared.busy.max) >= 19.0, "{:?}", shared.busy);
        assert!(ms(shared.busy.max) < 35.0, "{:?}", shared.busy);
        assert!(shared.total.max >= shared.busy.max + Duration::from_millis(9));
    }
}
