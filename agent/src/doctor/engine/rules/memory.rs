//! Memory: growing, near its limit, and fragmented.

use std::time::Duration;

use super::{Rule, RuleInput, USE_TEXT};
use super::super::finding::{Evidence, Finding, Severity};
use super::super::history::Series;
use super::super::stats::{median, trend, trend_without_agent, Trend};
use crate::units::{bytes, count, percent, span, span_s};
use crate::doctor::MemoryLimitSource;

/// Bucket of the memory and count slopes: medians of 10 seconds.
pub(super) const SLOPE_BUCKET: Duration = Duration::from_secs(10);

/// The trend of `series` over `window`; for bytes, without what the agent
/// itself holds (its symbol cache grows when it symbolizes a profile).
fn memory_aware_trend(
    recent: &crate::doctor::Window<'_>,
    series: Series,
    window: Duration,
) -> Option<Trend> {
    if series.unit() == "bytes" {
        trend_without_agent(recent, series, slope_bucket(window))
    } else {
        trend(recent, series, slope_bucket(window))
    }
}

/// The slice length of a slope over `window`: a sixtieth of it, from one
/// second to [`SLOPE_BUCKET`] (10 s for the default 10 minutes; shorter
/// windows, as tests configure them, get finer slices).
pub(super) fn slope_bucket(window: Duration) -> Duration {
    (window / 60).clamp(Duration::from_secs(1), SLOPE_BUCKET)
}

/// Alive tasks growing by this many over the slope window are worth a line.
const TASK_GROWTH_NOTE: f64 = 100.0;

/// The memory limit in bytes: the current reading, else the history's.
fn memory_limit(input: &RuleInput<'_>) -> Option<f64> {
    input
        .current
        .memory_limit_bytes
        .map(|l| l as f64)
        .or_else(|| input.lookback().last(Series::MemoryLimitBytes))
        .filter(|l| *l > 0.0)
}

fn limit_name(input: &RuleInput<'_>) -> &'static str {
    input.current.memory_limit_source.describe()
}

/// A trend that counts as growth: enough history, a fitted growth of at
/// least `min_growth` and of `min_ratio` of the starting level.
pub(super) fn growing(
    input: &RuleInput<'_>,
    series: Series,
    window: Duration,
    min_growth: f64,
    min_ratio: f64,
) -> Option<Trend> {
    let recent = input.recent(window);
    let trend = memory_aware_trend(&recent, series, window)?;
    let enough = trend.span.as_secs_f64() >= window.as_secs_f64() / 2.0;
    let growth = trend.growth();
    (enough
        && trend.slope_per_s > 0.0
        && growth >= min_growth
        && growth >= min_ratio * trend.start.abs())
    .then_some(trend)
}

/// Seconds until `used` reaches `limit` at `slope_per_s`.
pub(super) fn eta_seconds(used: f64, limit: f64, slope_per_s: f64) -> Option<f64> {
    (slope_per_s > 0.0 && limit > used).then(|| (limit - used) / slope_per_s)
}

/// `memory_growing`: holds now when the Theil–Sen slope of jemalloc's
/// allocated bytes (else of RSS), fitted to 10-second medians over
/// [`memory_slope_window`], amounts to at least [`memory_growth_min_bytes`]
/// and [`memory_growth_min_ratio`] of the starting level, with at least
/// half the window in the history. Critical when the limit is reached
/// within [`critical_eta`] at that slope.
///
/// [`memory_slope_window`]: crate::doctor::DoctorConfig::memory_slope_window
/// [`memory_growth_min_bytes`]: crate::doctor::DoctorConfig::memory_growth_min_bytes
/// [`memory_growth_min_ratio`]: crate::doctor::DoctorConfig::memory_growth_min_ratio
/// [`critical_eta`]: crate::doctor::DoctorConfig::critical_eta
pub(crate) fn memory_growing(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let window = config.memory_slope_window;
    let grows = |series| {
        growing(
            input,
            series,
            window,
            config.memory_growth_min_bytes,
            config.memory_growth_min_ratio,
        )
    };
    let heap = grows(Series::JemallocAllocatedBytes);
    let rss = grows(Series::RssBytes);
    let (series, label, trend) = match (heap, rss) {
        (Some(t), _) => (Series::JemallocAllocatedBytes, "jemalloc allocated", t),
        (None, Some(t)) => (Series::RssBytes, "RSS", t),
        (None, None) => return None,
    };
    let recent = input.recent(window);
    let heap_known = recent.last(Series::JemallocAllocatedBytes).is_some();
    let outside_heap = series == Series::RssBytes && heap_known;
    let limit = memory_limit(input);
    let used = recent
        .last(Series::MemoryBytes)
        .or_else(|| recent.last(Series::RssBytes));
    let eta = match (used, limit) {
        (Some(used), Some(limit)) => eta_seconds(used, limit, trend.slope_per_s),
        _ => None,
    };
    let severity = if eta.is_some_and(|e| e <= config.critical_eta.as_secs_f64()) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let per_minute = trend.slope_per_s * 60.0;
    let mut title = format!(
        "Memory grows by {}/min: {label} +{} in {}",
        bytes(per_minute),
        bytes(trend.growth()),
        span(trend.span)
    );
    if let Some(eta) = eta {
        title += &format!("; {} is reached in ~{}", limit_name(input), span_s(eta));
    }
    let mut text = format!(
        "Theil–Sen slope of {label} over the last {} ({}-second medians): {}/min, from {} to {}",
        span(trend.span),
        slope_bucket(window).as_secs(),
        bytes(per_minute),
        bytes(trend.start),
        bytes(trend.end)
    );
    if let (Some(used), Some(limit)) = (used, limit) {
        text += &format!(
            "; memory now {} of {} ({})",
            bytes(used),
            bytes(limit),
            percent(used / limit)
        );
    }
    let mut evidence = Evidence::new(text, trend.span)
        .value("growth_bytes_per_s", trend.slope_per_s)
        .value("growth_bytes", trend.growth())
        .value("start_bytes", trend.start)
        .value("end_bytes", trend.end)
        .value_opt("memory_bytes", used)
        .value_opt("memory_limit_bytes", limit)
        .value_opt("eta_s", eta);
    if outside_heap {
        if let Some(heap) = trend_of(input, Series::JemallocAllocatedBytes, window) {
            evidence.details.push(format!(
                "jemalloc allocated changed by {} over the same time: the growth is outside \
                 live Rust allocations",
                bytes(heap.growth())
            ));
        }
    }
    let tasks =
        trend_of(input, Series::AliveTasks, window).filter(|t| t.growth() >= TASK_GROWTH_NOTE);
    if let Some(tasks) = tasks {
        evidence.details.push(format!(
            "alive tasks grew by {} (to {}): tasks that never finish hold memory",
            count(tasks.growth().round()),
            count(tasks.end.round())
        ));
        evidence = evidence.value("alive_tasks_growth", tasks.growth());
    }

    let heap_profiling = input.current.heap_profiling;
    let recommendation = if outside_heap {
        "RSS grows while jemalloc's live allocations stay flat: the memory is outside the Rust \
         heap — allocator caches (compare jemalloc resident with allocated in /debug/heap/stats), \
         thread stacks, memory-mapped files, or a C library's allocations."
            .to_owned()
    } else if heap_profiling {
        "Find what holds the growth: diff the heap snapshot taken when this finding opened \
         against now (the first link) — the call stacks that grew are where the memory is \
         allocated. Usual suspects: caches and maps without eviction, buffers kept per \
         connection, tasks that never finish, channels nobody drains."
            .to_owned()
    } else {
        "Find what holds the growth with heap profiling: run with jemalloc as the global \
         allocator and `prof:true` (docs/embedding.md), then diff two heap snapshots taken \
         minutes apart. Usual suspects: caches and maps without eviction, buffers kept per \
         connection, tasks that never finish, channels nobody drains."
            .to_owned()
    };
    let mut next = Vec::new();
    if heap_profiling {
        next.extend([
            "/debug/heap/diff?base={heap_snapshot}&target=now&format=text",
            "/debug/pprof/heap?format=text",
        ]);
    }
    if heap_known {
        next.push("/debug/heap/stats");
    }
    next.push("/debug/history?since=-15m&series=memory_bytes,rss_bytes,jemalloc_allocated_bytes");
    Some(
        Finding::new(
            Rule::MemoryGrowing,
            severity,
            "memory",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next(next),
    )
}

fn trend_of(input: &RuleInput<'_>, series: Series, window: Duration) -> Option<Trend> {
    memory_aware_trend(&input.recent(window), series, window)
}

/// `memory_near_limit`: holds now when the median memory use over the
/// lookback is at least [`memory_near_limit_ratio`] of the limit (the
/// cgroup's, else host memory), or the cgroup's OOM kill count rose within
/// [`oom_lookback`]. Critical from [`memory_critical_ratio`] or on an OOM
/// kill.
///
/// [`memory_near_limit_ratio`]: crate::doctor::DoctorConfig::memory_near_limit_ratio
/// [`memory_critical_ratio`]: crate::doctor::DoctorConfig::memory_critical_ratio
/// [`oom_lookback`]: crate::doctor::DoctorConfig::oom_lookback
pub(crate) fn memory_near_limit(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let recent = input.lookback();
    let limit = memory_limit(input);
    let used = median(recent.values(Series::MemoryBytes));
    let utilization = match (used, limit) {
        (Some(used), Some(limit)) => Some(used / limit),
        _ => None,
    };
    let oom_kills = input
        .recent(config.oom_lookback)
        .increase(Series::OomKillsTotal)
        .filter(|n| *n > 0.0);
    let near = utilization.is_some_and(|u| u >= config.memory_near_limit_ratio);
    if !near && oom_kills.is_none() {
        return None;
    }
    let critical =
        oom_kills.is_some() || utilization.is_some_and(|u| u >= config.memory_critical_ratio);
    let severity = if critical {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let name = limit_name(input);
    let usage = match (used, limit, utilization) {
        (Some(used), Some(limit), Some(u)) => Some(format!(
            "{} of {name} ({} of {})",
            percent(u),
            bytes(used),
            bytes(limit)
        )),
        _ => None,
    };
    let title = match (oom_kills, &usage) {
        (Some(kills), _) => format!(
            "The OOM killer killed {} process{} in this cgroup in the last {}",
            count(kills),
            if kills == 1.0 { "" } else { "es" },
            span(config.oom_lookback)
        ),
        (None, Some(usage)) => format!("Memory at {usage}"),
        (None, None) => "Memory near its limit".to_owned(),
    };
    let mut text = format!("over the last {}:", span(config.lookback));
    match &usage {
        Some(usage) => text += &format!(" memory {usage}"),
        None => text += " memory use unknown",
    }
    if let Some(kills) = oom_kills {
        text += &format!(
            "; {} OOM kills in the last {}",
            count(kills),
            span(config.oom_lookback)
        );
    }
    let evidence = Evidence::new(text, config.lookback)
        .value_opt("memory_bytes", used)
        .value_opt("memory_limit_bytes", limit)
        .value_opt("memory_utilization", utilization)
        .value_opt("oom_kills", oom_kills);
    let recommendation = match input.current.memory_limit_source {
        MemoryLimitSource::Host => "The process uses most of the host's memory: the kernel will \
             reclaim page cache hard and then kill the largest process. Give it a memory limit \
             with headroom, or find what holds the memory — a heap snapshot lists live \
             allocations by call stack — and cap caches and queues."
            .to_owned(),
        _ => "At the cgroup limit the kernel's OOM killer ends the process (and reclaims page \
              cache hard before that, stalling it). Raise the memory limit if this level is \
              expected; otherwise find what holds the memory — a heap snapshot lists live \
              allocations by call stack — and cap caches and queues."
            .to_owned(),
    };
    let mut next = Vec::new();
    if input.current.heap_profiling {
        next.push("/debug/pprof/heap?format=text");
    }
    if recent.last(Series::JemallocAllocatedBytes).is_some() {
        next.push("/debug/heap/stats");
    }
    next.extend([
        USE_TEXT,
        "/debug/history?since=-15m&series=memory_bytes,memory_limit_bytes,oom_kills_total",
    ]);
    Some(
        Finding::new(
            Rule::MemoryNearLimit,
            severity,
            "memory",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next(next),
    )
}

/// `allocator_fragmentation`: holds now when, over the lookback, jemalloc's
/// resident bytes are at least [`fragmentation_ratio`] times its allocated
/// bytes and exceed them by [`fragmentation_min_bytes`]. Severity info: the
/// memory is reclaimable, not leaked.
///
/// [`fragmentation_ratio`]: crate::doctor::DoctorConfig::fragmentation_ratio
/// [`fragmentation_min_bytes`]: crate::doctor::DoctorConfig::fragmentation_min_bytes
pub(crate) fn allocator_fragmentation(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let recent = input.lookback();
    let allocated = median(recent.values(Series::JemallocAllocatedBytes))?;
    let resident = median(recent.values(Series::JemallocResidentBytes))?;
    if allocated <= 0.0
        || resident < config.fragmentation_ratio * allocated
        || resident - allocated < config.fragmentation_min_bytes
    {
        return None;
    }
    let (length, window) = input.evidence_window(Rule::AllocatorFragmentation);
    let allocated = median(window.values(Series::JemallocAllocatedBytes)).unwrap_or(allocated);
    let resident = median(window.values(Series::JemallocResidentBytes)).unwrap_or(resident);
    let rss = median(window.values(Series::RssBytes));
    let extra = resident - allocated;
    let title = format!(
        "The allocator holds {} more than the live heap: {} resident for {} allocated ({:.1}×)",
        bytes(extra),
        bytes(resident),
        bytes(allocated),
        resident / allocated
    );
    let mut text = format!(
        "over the last {}: jemalloc resident {}, allocated {}",
        span(length),
        bytes(resident),
        bytes(allocated)
    );
    if let Some(rss) = rss {
        text += &format!(", RSS {}", bytes(rss));
    }
    let evidence = Evidence::new(text, length)
        .value("jemalloc_resident_bytes", resident)
        .value("jemalloc_allocated_bytes", allocated)
        .value("fragmentation_ratio", resident / allocated)
        .value_opt("rss_bytes", rss);
    let recommendation = "jemalloc keeps freed memory resident (dirty and muzzy pages waiting to \
         be purged) or spreads live objects over partly used pages. Let it return memory sooner: \
         add `background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0` to the jemalloc \
         configuration (`MALLOC_CONF`, or the `malloc_conf` the binary sets — see \
         docs/embedding.md). If it persists, reduce allocation bursts: reuse buffers, and avoid \
         interleaving many short-lived objects with long-lived ones.";
    Some(
        Finding::new(
            Rule::AllocatorFragmentation,
            Severity::Info,
            "heap",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next([
            "/debug/heap/stats",
            "/debug/history?since=-15m&series=jemalloc_allocated_bytes,jemalloc_resident_bytes,rss_bytes",
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::engine::fixtures::{Noise, Scenario, MIB};

    #[test]
    fn growth_fires_with_the_slope_and_time_to_the_limit() {
        // A leak of 4 MiB a minute on top of noisy memory, for 10 minutes.
        let mut noise = Noise::new(7);
        let s = Scenario::new(900, |second, row| {
            let leak = 4.0 * MIB * second as f64 / 60.0;
            row.set(
                Series::JemallocAllocatedBytes,
                120.0 * MIB + leak + 2.0 * MIB * noise.next(),
            );
            row.set(
                Series::RssBytes,
                200.0 * MIB + leak + 3.0 * MIB * noise.next(),
            );
            row.set(Series::MemoryBytes, 220.0 * MIB + leak);
        });
        let finding = memory_growing(&s.input()).expect("growing");
        let slope = finding.evidence.values["growth_bytes_per_s"] * 60.0 / MIB;
        assert!((3.8..4.2).contains(&slope), "{slope} MiB/min");
        assert!(
            finding.title.contains("jemalloc allocated"),
            "{}",
            finding.title
        );
        assert!(
            finding.title.contains("the cgroup limit is reached in ~"),
            "{}",
            finding.title
        );
        // 1024 − 280 MiB at 4 MiB/min: about three hours.
        let eta = finding.evidence.values["eta_s"] / 3600.0;
        assert!((2.8..3.4).contains(&eta), "{eta} h");
        assert_eq!(finding.severity, Severity::Warning);
        assert_eq!(
            finding.next[0],
            "/debug/heap/diff?base={heap_snapshot}&target=now&format=text"
        );
    }

    #[test]
    fn fast_growth_near_the_limit_is_critical() {
        let s = Scenario::new(900, |second, row| {
            let leak = 40.0 * MIB * second as f64 / 60.0;
            row.set(Series::RssBytes, 200.0 * MIB + leak);
            row.set(Series::JemallocAllocatedBytes, f64::NAN);
            row.set(Series::MemoryBytes, 220.0 * MIB + leak * 0.1);
        });
        let finding = memory_growing(&s.input()).expect("growing");
        assert!(finding.title.contains("RSS"), "{}", finding.title);
        assert_eq!(finding.severity, Severity::Critical);
    }

    #[test]
    fn rss_growth_with_a_flat_heap_points_outside_the_heap() {
        let s = Scenario::new(900, |second, row| {
            row.set(
                Series::RssBytes,
                200.0 * MIB + 3.0 * MIB * second as f64 / 60.0,
            );
        });
        let finding = memory_growing(&s.input()).expect("growing");
        assert!(finding.recommendation.contains("outside the Rust heap"));
        assert!(finding.evidence.details[0].contains("outside live Rust allocations"));
    }

    #[test]
    fn noisy_flat_and_young_memory_do_not_grow() {
        // ±20 MiB of noise around 300 MiB, with spikes.
        let mut noise = Noise::new(3);
        let s = Scenario::new(900, |second, row| {
            let spike = if second % 97 == 0 { 80.0 * MIB } else { 0.0 };
            row.set(
                Series::RssBytes,
                300.0 * MIB + 20.0 * MIB * noise.next() + spike,
            );
            row.set(
                Series::JemallocAllocatedBytes,
                200.0 * MIB + 20.0 * MIB * noise.next() + spike,
            );
        });
        assert!(memory_growing(&s.input()).is_none());
        // A sawtooth (caches filling and being flushed) is not a leak.
        let s = Scenario::new(900, |second, row| {
            row.set(
                Series::JemallocAllocatedBytes,
                120.0 * MIB + (second % 120) as f64 * MIB,
            );
        });
        assert!(memory_growing(&s.input()).is_none());
        // Real growth but only 4 minutes of history: not enough to judge.
        let s = Scenario::new(240, |second, row| {
            row.set(
                Series::JemallocAllocatedBytes,
                120.0 * MIB + 4.0 * MIB * second as f64 / 60.0,
            );
        });
        assert!(memory_growing(&s.input()).is_none());
    }

    #[test]
    fn near_limit_fires_at_ninety_percent_and_on_oom_kills() {
        let s = Scenario::new(120, |_, row| row.set(Series::MemoryBytes, 940.0 * MIB));
        let finding = memory_near_limit(&s.input()).expect("near");
        assert_eq!(finding.severity, Severity::Warning);
        assert!(
            finding
                .title
                .starts_with("Memory at 92 % of the cgroup limit"),
            "{}",
            finding.title
        );

        let s = Scenario::new(120, |second, row| {
            row.set(Series::OomKillsTotal, if second >= 100 { 1.0 } else { 0.0 });
        });
        let finding = memory_near_limit(&s.input()).expect("oom");
        assert_eq!(finding.severity, Severity::Critical);
        assert!(
            finding.title.contains("killed 1 process in this cgroup"),
            "{}",
            finding.title
        );

        let s = Scenario::new(120, |_, _| {});
        assert!(memory_near_limit(&s.input()).is_none());
    }

    #[test]
    fn fragmentation_fires_only_when_large_and_relative() {
        let s = Scenario::new(120, |_, row| {
            row.set(Series::JemallocAllocatedBytes, 100.0 * MIB);
            row.set(Series::JemallocResidentBytes, 260.0 * MIB);
        });
        let finding = allocator_fragmentation(&s.input()).expect("fragmented");
        assert_eq!(finding.severity, Severity::Info);
        assert!(finding.title.contains("160 MiB more"), "{}", finding.title);
        // 2× but only 20 MiB apart: not worth it.
        let s = Scenario::new(120, |_, row| {
            row.set(Series::JemallocAllocatedBytes, 20.0 * MIB);
            row.set(Series::JemallocResidentBytes, 40.0 * MIB);
        });
        assert!(allocator_fragmentation(&s.input()).is_none());
        let s = Scenario::new(120, |_, _| {});
        assert!(allocator_fragmentation(&s.input()).is_none());
    }
}
