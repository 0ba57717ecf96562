//! The executor: blocked (Clinic Doctor's event-loop rule) or saturated.

use std::time::Duration;

use super::{Rule, RuleInput, CPU_PROFILE_SVG};
use crate::units::rfc3339;
use super::super::finding::{Evidence, Finding, Severity, StallEvidence};
use super::super::frames::{application_frame, blocking_advice, dependency_frame, tidy};
use super::super::history::Series;
use super::super::stats::{max, median, raw_slope};
use crate::units::{cores, count, duration_ms, ms, percent, span};
use crate::doctor::StallReading;

/// Frames of a stall the text shows.
const STACK_LINES: usize = 12;

/// The longest stall, if it is recent enough to be evidence now.
fn recent_stall<'a>(input: &RuleInput<'a>) -> Option<&'a StallReading> {
    let stall = input.current.longest_stall.as_ref()?;
    let ended = stall.started_at + stall.duration;
    let age = input.now.duration_since(ended).unwrap_or(Duration::ZERO);
    (stall.ongoing || age <= input.config.stall_recency).then_some(stall)
}

fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `event_loop_blocked`: Clinic Doctor's event-loop thresholds on the
/// per-second lag. Holds now when, over the lookback, the median of the
/// per-second lag p50 is at least [`lag_median_ms`] (Clinic: "median ≥ 10
/// ms"), or some second's lag max is at least [`lag_max_ms`] (Clinic: "max
/// ≥ 100 ms"), or the watchdog counted a stall, or a stall longer than
/// [`lag_max_ms`] is still going on. The evidence adds the longest recent
/// stall's stack, and the advice names its leaf-most application frame.
///
/// [`lag_median_ms`]: crate::doctor::DoctorConfig::lag_median_ms
/// [`lag_max_ms`]: crate::doctor::DoctorConfig::lag_max_ms
pub(crate) fn event_loop_blocked(input: &RuleInput<'_>) -> Option<Finding> {
    let blocked = Blocked::detect(input)?;
    let measured = blocked.measure(input);
    Some(measured.explain(input))
}

/// The executor is blocked now: what [`Blocked::detect`] found.
struct Blocked<'a> {
    /// The longest recent stall, if any.
    stall: Option<&'a StallReading>,
    /// A stall longer than `lag_max_ms` still going on.
    stuck: bool,
}

/// What the evidence window says about a blocked executor.
struct BlockedEvidence<'a> {
    length: Duration,
    /// Median of the per-second lag p50, p99, and the window's max, in ms.
    p50: Option<f64>,
    p99: Option<f64>,
    lag_max: Option<f64>,
    /// The worst delay seen: the lag max or the stall, in ms.
    worst: f64,
    /// Seconds in the window, and those with a delay ≥ `lag_max_ms`.
    seconds: usize,
    slow_seconds: usize,
    /// Stalls counted in the window.
    stalls: Option<f64>,
    stall: Option<&'a StallReading>,
    stuck: bool,
}

impl<'a> Blocked<'a> {
    /// Clinic Doctor's thresholds over the lookback, or a stall.
    fn detect(input: &RuleInput<'a>) -> Option<Self> {
        let config = input.config;
        let recent = input.lookback();
        let stall = recent_stall(input);
        let stuck = stall.is_some_and(|s| s.ongoing && as_ms(s.duration) >= config.lag_max_ms);
        let holds = median(recent.values(Series::LagP50Ms))
            .is_some_and(|m| m >= config.lag_median_ms)
            || max(recent.values(Series::LagMaxMs)).is_some_and(|m| m >= config.lag_max_ms)
            || recent
                .increase(Series::StallsTotal)
                .is_some_and(|n| n > 0.0)
            || stuck;
        holds.then_some(Blocked { stall, stuck })
    }

    /// The numbers of the rule's evidence window.
    fn measure(self, input: &RuleInput<'_>) -> BlockedEvidence<'a> {
        let config = input.config;
        let (length, window) = input.evidence_window(Rule::EventLoopBlocked);
        let lag_max = max(window.values(Series::LagMaxMs));
        let stall_ms = self.stall.map(|s| as_ms(s.duration));
        BlockedEvidence {
            length,
            p50: median(window.values(Series::LagP50Ms)),
            p99: median(window.values(Series::LagP99Ms)),
            lag_max,
            worst: max(lag_max.into_iter().chain(stall_ms)).unwrap_or(0.0),
            seconds: window.values(Series::LagMaxMs).count(),
            slow_seconds: window
                .values(Series::LagMaxMs)
                .filter(|m| *m >= config.lag_max_ms)
                .count(),
            stalls: window.increase(Series::StallsTotal),
            stall: self.stall,
            stuck: self.stuck,
        }
    }
}

impl BlockedEvidence<'_> {
    /// The finding: severity, title, evidence text and values, the stall's
    /// stack, and advice naming the application function that blocked.
    fn explain(&self, input: &RuleInput<'_>) -> Finding {
        let config = input.config;
        let severity = if self.worst >= config.lag_critical_ms || self.stuck {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let title = match self.p50 {
            Some(p50) if p50 >= config.lag_median_ms => format!(
                "The executor is blocked: tasks wait {} for a worker at the median, up to {}",
                ms(p50),
                ms(self.worst)
            ),
            _ => format!(
                "The executor is blocked: tasks waited up to {} for a worker",
                ms(self.worst)
            ),
        };
        let mut evidence = Evidence::new(self.text(config.lag_max_ms), self.length)
            .value_opt("lag_p50_ms", self.p50)
            .value_opt("lag_p99_ms", self.p99)
            .value_opt("lag_max_ms", self.lag_max)
            .value("seconds", self.seconds as f64)
            .value("slow_seconds", self.slow_seconds as f64)
            .value_opt("stalls", self.stalls)
            .value_opt("stall_ms", self.stall.map(|s| as_ms(s.duration)));
        let library = &config.library_crates;
        let app = self
            .stall
            .and_then(|s| application_frame(&s.frames, library));
        if let Some(stall) = self.stall {
            add_stall(&mut evidence, stall, app.map(|(_, f)| f));
        }
        let recommendation = match (self.stall, app) {
            (Some(stall), Some((index, frame))) => blocking_recommendation(stall, index, frame, library),
            _ => GENERIC_BLOCKING_ADVICE.to_owned(),
        };
        let mut next = vec!["/debug/runtime?format=text", "/debug/lag?format=svg"];
        if input.current.cpu_profiling {
            next.push(CPU_PROFILE_SVG);
        }
        Finding::new(
            Rule::EventLoopBlocked,
            severity,
            "executor",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next(next)
    }

    /// The evidence in words.
    fn text(&self, lag_max_ms: f64) -> String {
        let mut text = format!("executor lag over the last {}:", span(self.length));
        if let Some(p50) = self.p50 {
            text += &format!(" p50 {} (median of the per-second p50),", ms(p50));
        }
        if let Some(p99) = self.p99 {
            text += &format!(" p99 {},", ms(p99));
        }
        if let Some(lag_max) = self.lag_max {
            text += &format!(" max {};", ms(lag_max));
        }
        text += &format!(
            " {} of {} seconds had a delay of {} or more",
            self.slow_seconds,
            self.seconds,
            ms(lag_max_ms)
        );
        if let Some(stalls) = self.stalls.filter(|n| *n > 0.0) {
            text += &format!("; {} stalls", count(stalls));
        }
        text
    }
}

/// The advice when no stall names the code that blocked.
const GENERIC_BLOCKING_ADVICE: &str =
    "Find the code that holds a worker inside one poll: a blocking call (std::fs, std::net, \
     std::thread::sleep, a std Mutex, a synchronous client) or a long computation inside a \
     future. /debug/runtime lists stalls with the stuck stack when one lasts long enough; a CPU \
     profile taken while it happens shows the widest frames under the worker threads. Move that \
     work into `tokio::task::spawn_blocking`.";

/// Advice naming the application function `frame` (at `index` in the
/// stall's frames) that blocked, the dependency it called, and what kind
/// of blocking it was.
fn blocking_recommendation(
    stall: &StallReading,
    index: usize,
    frame: &str,
    library: &[String],
) -> String {
    let function = tidy(frame);
    let mut advice = format!(
        "Move the blocking call in `{function}` off the executor: wrap it in \
         `tokio::task::spawn_blocking` (or use its async equivalent), so a worker \
         never waits inside one poll."
    );
    if let Some(dependency) = dependency_frame(&stall.frames, index, library) {
        advice += &format!(
            " The worker was inside `{}` called from it.",
            tidy(dependency)
        );
    }
    match blocking_advice(&stall.frames[..index]) {
        Some(hint) => advice += &format!(" Here {hint}."),
        None => {
            advice += " If it computes, spawn_blocking (or a rayon pool) keeps the \
                           workers free; if it waits (I/O, sleep, a lock), use the async \
                           version of the call."
        }
    }
    advice
}

/// The stall's details, stack and typed evidence.
fn add_stall(evidence: &mut Evidence, stall: &StallReading, app: Option<&str>) {
    let mut detail = format!(
        "longest stall: {} on worker {}, started {}",
        duration_ms(stall.duration),
        stall.worker,
        rfc3339(stall.started_at)
    );
    if stall.ongoing {
        detail += " (still stuck)";
    }
    if stall.frames.is_empty() {
        detail += "; its stack could not be captured";
    }
    evidence.details.push(detail);
    evidence.frames = stall.frames.iter().take(STACK_LINES * 4).cloned().collect();
    evidence.stall = Some(StallEvidence {
        worker: stall.worker,
        started_at: stall.started_at,
        duration_ms: as_ms(stall.duration),
        ongoing: stall.ongoing,
        application_frame: app.map(str::to_owned),
    });
}

/// `executor_saturated`: holds now when the least busy worker was busy at
/// least [`worker_busy_ratio`] of each second (median over the lookback)
/// and work queues up: the global queue depth rises (Theil–Sen slope > 0
/// over [`executor_trend_window`]) and is not empty, or holds at least one
/// task per worker, or the lag p99 is at least [`saturated_lag_p99_ms`].
///
/// [`worker_busy_ratio`]: crate::doctor::DoctorConfig::worker_busy_ratio
/// [`executor_trend_window`]: crate::doctor::DoctorConfig::executor_trend_window
/// [`saturated_lag_p99_ms`]: crate::doctor::DoctorConfig::saturated_lag_p99_ms
pub(crate) fn executor_saturated(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let recent = input.lookback();
    let busy_min = median(recent.values(Series::WorkerBusyMin))?;
    if busy_min < config.worker_busy_ratio {
        return None;
    }
    let workers = recent.last(Series::Workers);
    let queue_now = recent.last(Series::GlobalQueueDepth).unwrap_or(0.0);
    let queue_median = median(recent.values(Series::GlobalQueueDepth)).unwrap_or(0.0);
    let queue_slope = raw_slope(
        &input.recent(config.executor_trend_window),
        Series::GlobalQueueDepth,
    );
    let lag_p99 = median(recent.values(Series::LagP99Ms));
    let queue_rising = queue_slope.is_some_and(|s| s > 0.0) && queue_now > 0.0;
    let queue_long = workers.is_some_and(|w| w > 0.0 && queue_median >= w);
    let lag_high = lag_p99.is_some_and(|l| l >= config.saturated_lag_p99_ms);
    if !(queue_rising || queue_long || lag_high) {
        return None;
    }

    let (length, window) = input.evidence_window(Rule::ExecutorSaturated);
    let busy_mean = median(window.values(Series::WorkerBusyMean));
    let window_busy_min = median(window.values(Series::WorkerBusyMin));
    let window_queue = median(window.values(Series::GlobalQueueDepth));
    let window_lag = median(window.values(Series::LagP99Ms));
    let cpu = median(window.values(Series::CpuCores));
    let limit = window.last(Series::CpuLimitCores);

    let severity = if window_lag.is_some_and(|l| l >= config.lag_max_ms) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let workers_text = workers.map_or_else(|| "every".to_owned(), |w| format!("all {}", count(w)));
    let title =
        format!("The executor is saturated: {workers_text} workers busy, tasks queue for a worker");
    let mut text = format!(
        "over the last {}: least busy worker {} busy",
        span(length),
        percent(window_busy_min.unwrap_or(busy_min))
    );
    if let Some(mean) = busy_mean {
        text += &format!(" (mean {})", percent(mean));
    }
    text += &format!(
        "; global queue {} tasks (median), {} now",
        count(window_queue.unwrap_or(0.0).round()),
        count(queue_now)
    );
    if let Some(slope) = queue_slope.filter(|s| *s > 0.0) {
        text += &format!(", rising by {:.1}/s", slope);
    }
    if let Some(lag) = window_lag {
        text += &format!("; lag p99 {}", ms(lag));
    }
    if let (Some(cpu), Some(limit)) = (cpu, limit) {
        text += &format!("; CPU {} of {} cores", cores(cpu), cores(limit));
    }
    let evidence = Evidence::new(text, length)
        .value_opt("workers", workers)
        .value_opt("worker_busy_min", window_busy_min)
        .value_opt("worker_busy_mean", busy_mean)
        .value_opt("global_queue_depth", window_queue)
        .value_opt("global_queue_slope_per_s", queue_slope)
        .value_opt("lag_p99_ms", window_lag)
        .value_opt("cpu_cores", cpu)
        .value_opt("cpu_limit_cores", limit);

    let spare_cpu = match (cpu, limit, workers) {
        (Some(cpu), Some(limit), Some(workers)) => cpu < 0.8 * limit && workers < limit.ceil(),
        _ => false,
    };
    let mut recommendation = String::from(
        "Every worker is busy all the time, so new work waits in the queue. Find what keeps \
         them busy in a CPU profile: make the hot path cheaper, and move long computations to \
         `tokio::task::spawn_blocking` or a rayon pool so request handling keeps its workers.",
    );
    if spare_cpu {
        recommendation += " The process has CPU to spare: more worker threads \
                           (`worker_threads`) would use it.";
    } else {
        recommendation += " If the work is already lean, the service needs more CPU or more \
                           instances.";
    }
    let mut next = Vec::new();
    if input.current.cpu_profiling {
        next.push(CPU_PROFILE_SVG);
    }
    next.extend(["/debug/runtime?format=text", "/debug/lag?format=svg"]);
    Some(
        Finding::new(
            Rule::ExecutorSaturated,
            severity,
            "executor",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next(next),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::engine::fixtures::Scenario;

    fn sleep_stack() -> Vec<String> {
        [
            "__GI___clock_nanosleep",
            "std::thread::sleep",
            "demo::blocking_handler::{{closure}}",
            "<core::pin::Pin<P> as core::future::future::Future>::poll",
            "tokio::runtime::task::harness::poll_future",
            "start_thread",
        ]
        .iter()
        .map(|f| (*f).to_owned())
        .collect()
    }

    #[test]
    fn blocked_fires_on_repeated_long_polls_with_the_culprit_named() {
        // From minute 10, a handler sleeps 300 ms every other second.
        let mut s = Scenario::new(900, |second, row| {
            if second >= 600 && second % 2 == 0 {
                row.set(Series::LagMaxMs, 300.0);
                row.set(Series::LagP99Ms, 290.0);
                row.set(Series::StallsTotal, ((second - 598) / 2) as f64);
            } else if second >= 600 {
                row.set(Series::StallsTotal, ((second - 599) / 2) as f64);
            }
        });
        let stall_start = s.end - Duration::from_secs(3);
        s.current.longest_stall = Some(StallReading::new(
            1,
            stall_start,
            Duration::from_millis(312),
            sleep_stack(),
        ));
        let finding = event_loop_blocked(&s.input()).expect("blocked");
        assert_eq!(finding.severity, Severity::Warning);
        assert_eq!(finding.resource, "executor");
        assert!(finding.title.contains("up to 312 ms"), "{}", finding.title);
        assert!(
            finding
                .recommendation
                .contains("`demo::blocking_handler` off the executor: wrap it in `tokio::task::spawn_blocking`"),
            "{}",
            finding.recommendation
        );
        assert!(finding.recommendation.contains("tokio::time::sleep"));
        assert_eq!(finding.evidence.frames, sleep_stack());
        let stall = finding.evidence.stall.as_ref().unwrap();
        assert_eq!(
            stall.application_frame.as_deref(),
            Some("demo::blocking_handler::{{closure}}")
        );
        assert_eq!(stall.started_at, stall_start);
        assert_eq!(finding.evidence.values["slow_seconds"], 5.0);
        assert_eq!(finding.evidence.values["seconds"], 10.0);
        assert!(finding
            .next
            .contains(&"/debug/runtime?format=text".to_owned()));
        let json = serde_json::to_value(&finding).unwrap();
        assert_eq!(json["rule"], "event_loop_blocked");
        assert_eq!(json["evidence"]["frames"][1], "std::thread::sleep");
        assert_eq!(json["evidence"]["window_s"], 10.0);
    }

    #[test]
    fn blocked_fires_on_a_high_median_and_on_a_worker_stuck_now() {
        let s = Scenario::new(120, |second, row| {
            if second >= 100 {
                row.set(Series::LagP50Ms, 15.0);
                row.set(Series::LagMaxMs, 60.0);
            }
        });
        let finding = event_loop_blocked(&s.input()).expect("median ≥ 10 ms");
        assert!(finding.title.contains("at the median"), "{}", finding.title);

        let mut s = Scenario::new(120, |_, _| {});
        s.current.longest_stall = Some(
            StallReading::new(
                0,
                s.end - Duration::from_secs(20),
                Duration::from_secs(20),
                vec![],
            )
            .ongoing(true),
        );
        let finding = event_loop_blocked(&s.input()).expect("stuck");
        assert_eq!(finding.severity, Severity::Critical);
        assert!(finding.recommendation.contains("Find the code"));
    }

    #[test]
    fn blocked_stays_silent_on_healthy_and_cpu_heavy_load() {
        let s = Scenario::new(900, |_, _| {});
        assert!(event_loop_blocked(&s.input()).is_none());
        // CPU-heavy but unsaturated: 1.6 of 2 cores, workers 75 % busy,
        // lag p50 2 ms, p99 15 ms, max 40 ms.
        let s = Scenario::new(900, |_, row| {
            row.set(Series::CpuCores, 1.6);
            row.set(Series::WorkerBusyMin, 0.7);
            row.set(Series::WorkerBusyMean, 0.75);
            row.set(Series::LagP50Ms, 2.0);
            row.set(Series::LagP99Ms, 15.0);
            row.set(Series::LagMaxMs, 40.0);
        });
        assert!(event_loop_blocked(&s.input()).is_none());
        assert!(executor_saturated(&s.input()).is_none());
        // An old stall is not evidence now.
        let mut s = Scenario::new(900, |_, _| {});
        s.current.longest_stall = Some(StallReading::new(
            0,
            s.end - Duration::from_secs(300),
            Duration::from_millis(500),
            sleep_stack(),
        ));
        assert!(event_loop_blocked(&s.input()).is_none());
    }

    #[test]
    fn saturated_fires_when_every_worker_is_busy_and_work_queues() {
        let s = Scenario::new(300, |second, row| {
            if second >= 200 {
                row.set(Series::WorkerBusyMin, 0.97);
                row.set(Series::WorkerBusyMean, 0.99);
                row.set(Series::CpuCores, 1.95);
                row.set(Series::GlobalQueueDepth, (second - 200) as f64 * 2.0);
                row.set(Series::LagP99Ms, 4.0);
            }
        });
        let finding = executor_saturated(&s.input()).expect("saturated");
        assert_eq!(finding.severity, Severity::Warning);
        assert!(
            finding.title.contains("all 2 workers busy"),
            "{}",
            finding.title
        );
        assert!(finding.evidence.values["global_queue_slope_per_s"] > 1.9);
        assert!(finding
            .recommendation
            .contains("more CPU or more instances"));

        // Busy with a high lag but a flat, empty queue: still saturated.
        let s = Scenario::new(300, |_, row| {
            row.set(Series::WorkerBusyMin, 0.95);
            row.set(Series::LagP99Ms, 40.0);
        });
        assert!(executor_saturated(&s.input()).is_some());
    }

    #[test]
    fn saturated_stays_silent_when_busy_workers_keep_up() {
        // Busy but nothing waits: a well-sized executor at its best.
        let s = Scenario::new(300, |_, row| {
            row.set(Series::WorkerBusyMin, 0.95);
            row.set(Series::LagP99Ms, 3.0);
        });
        assert!(executor_saturated(&s.input()).is_none());
        let s = Scenario::new(300, |_, _| {});
        assert!(executor_saturated(&s.input()).is_none());
    }
}
