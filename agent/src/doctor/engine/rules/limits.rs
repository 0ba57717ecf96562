//! Counted resources with a limit: file descriptors, threads, and the
//! service's own pools.

use super::memory::{eta_seconds, growing};
use super::{Rule, RuleInput, USE_TEXT};
use super::super::defaults::MAX_FINDINGS_PER_RULE;
use super::super::finding::{Evidence, Finding, Severity};
use super::super::history::Series;
use super::super::stats::{median, share};
use crate::units::{count, percent, span, span_s};

/// What differs between descriptors and threads.
struct Counted {
    near: Rule,
    climbing: Rule,
    resource: &'static str,
    /// "open file descriptors".
    noun: &'static str,
    series: Series,
    limit_series: Option<Series>,
    current_limit: Option<u64>,
    growth_min: f64,
    near_advice: &'static str,
    climbing_advice: &'static str,
    history_url: &'static str,
}

fn fds(input: &RuleInput<'_>) -> Counted {
    Counted {
        near: Rule::FdsNearLimit,
        climbing: Rule::FdsClimbing,
        resource: "file_descriptors",
        noun: "open file descriptors",
        series: Series::OpenFds,
        limit_series: Some(Series::FdLimit),
        current_limit: input.current.fd_limit,
        growth_min: input.config.fd_growth_min,
        near_advice: "Every connection, file and socket holds a descriptor; at the limit, \
            accept() and open() fail with EMFILE and the service stops taking connections. \
            Raise the limit (`ulimit -n`, systemd's LimitNOFILE, the container runtime's \
            nofile) if this many is expected; if the count only grows, connections or files \
            are not being closed.",
        climbing_advice: "A count that only grows is a leak: connections that are never \
            closed (missing timeouts, a client per request instead of a shared one), files \
            opened and kept. Compare the count with the connections you expect, and check that \
            clients and pools are shared and bounded.",
        history_url: "/debug/history?since=-15m&series=open_fds,fd_limit",
    }
}

fn threads(input: &RuleInput<'_>) -> Counted {
    Counted {
        near: Rule::ThreadsNearLimit,
        climbing: Rule::ThreadsClimbing,
        resource: "threads",
        noun: "threads",
        series: Series::Threads,
        limit_series: Some(Series::ThreadLimit),
        current_limit: input.current.thread_limit,
        growth_min: input.config.thread_growth_min,
        near_advice: "At the limit, starting a thread fails — tokio's blocking pool, \
            std::thread::spawn, and libraries that start their own. Cap the blocking pool \
            (`max_blocking_threads`), look for blocking work piling up in `spawn_blocking`, \
            or raise the pids limit if this many is expected.",
        climbing_advice: "Threads that only grow mean work that never ends: blocking tasks \
            stuck in `spawn_blocking` (each holds a blocking-pool thread), or threads started \
            per request or per connection. The stalls and the blocking pool in \
            /debug/runtime show which.",
        history_url: "/debug/history?since=-15m&series=threads,thread_limit",
    }
}

/// Tasks alive in the watched runtime: no limit, only a climb.
fn tasks(input: &RuleInput<'_>) -> Counted {
    Counted {
        near: Rule::TasksClimbing,
        climbing: Rule::TasksClimbing,
        resource: "tasks",
        noun: "tokio tasks alive",
        series: Series::AliveTasks,
        limit_series: None,
        current_limit: None,
        growth_min: input.config.task_growth_min,
        near_advice: "",
        climbing_advice: "Tasks that are spawned and never finish pile up — tokio's \
            goroutine leak: a task per request or connection awaiting a channel nobody sends \
            on, a lock never released, a timer or stream that never ends. Each holds its \
            memory and whatever it captured. The task dump (/debug/tasks, in a build with \
            tokio_unstable) groups them by the await they wait at; otherwise give every \
            spawned loop an exit (a cancellation token, a closed channel) and every wait a \
            timeout.",
        history_url: "/debug/history?since=-15m&series=alive_tasks",
    }
}

fn limit_of(input: &RuleInput<'_>, what: &Counted) -> Option<f64> {
    what.current_limit
        .map(|l| l as f64)
        .or_else(|| input.lookback().last(what.limit_series?))
        .filter(|l| *l > 0.0)
}

fn near_limit(input: &RuleInput<'_>, what: &Counted) -> Option<Finding> {
    let config = input.config;
    let limit = limit_of(input, what)?;
    let recent = input.lookback();
    let used = median(recent.values(what.series))?;
    let utilization = used / limit;
    if utilization < config.limit_warning_ratio {
        return None;
    }
    let severity = if utilization >= config.limit_critical_ratio {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let title = format!(
        "Near the limit of {}: {} of {} in use ({})",
        what.noun,
        count(used),
        count(limit),
        percent(utilization)
    );
    let text = format!(
        "over the last {}: {} {} (median) of a limit of {}",
        span(config.lookback),
        count(used),
        what.noun,
        count(limit)
    );
    let evidence = Evidence::new(text, config.lookback)
        .value("used", used)
        .value("limit", limit)
        .value("utilization", utilization);
    Some(
        Finding::new(
            what.near,
            severity,
            what.resource,
            title,
            evidence,
            what.near_advice,
            input.now,
        )
        .next([USE_TEXT, what.history_url]),
    )
}

fn climbing(input: &RuleInput<'_>, what: &Counted) -> Option<Finding> {
    let config = input.config;
    let window = config.count_slope_window;
    let trend = growing(
        input,
        what.series,
        window,
        what.growth_min,
        config.count_growth_min_ratio,
    )?;
    let limit = limit_of(input, what);
    let now = input.lookback().last(what.series).unwrap_or(trend.end);
    let eta = limit.and_then(|l| eta_seconds(now, l, trend.slope_per_s));
    let severity = if eta.is_some_and(|e| e <= config.critical_eta.as_secs_f64()) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let per_minute = trend.slope_per_s * 60.0;
    let mut title = format!(
        "{} climb by {:.1}/min: +{} in {}",
        capitalized(what.noun),
        per_minute,
        count(trend.growth().round()),
        span(trend.span)
    );
    if let Some(eta) = eta {
        title += &format!("; the limit is reached in ~{}", span_s(eta));
    }
    let mut text = format!(
        "Theil–Sen slope over the last {} ({}-second medians): {:.1}/min, from {} to {}",
        span(trend.span),
        super::memory::slope_bucket(window).as_secs(),
        per_minute,
        count(trend.start.max(0.0).round()),
        count(trend.end.round())
    );
    if let Some(limit) = limit {
        text += &format!("; limit {}", count(limit));
    }
    let evidence = Evidence::new(text, trend.span)
        .value("growth_per_s", trend.slope_per_s)
        .value("growth", trend.growth())
        .value("used", now)
        .value_opt("limit", limit)
        .value_opt("eta_s", eta);
    Some(
        Finding::new(
            what.climbing,
            severity,
            what.resource,
            title,
            evidence,
            what.climbing_advice,
            input.now,
        )
        .next([what.history_url, USE_TEXT]),
    )
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `fds_near_limit`: holds now when the median of open descriptors over
/// the lookback is at least [`limit_warning_ratio`] of their soft limit;
/// critical from [`limit_critical_ratio`].
///
/// [`limit_warning_ratio`]: crate::doctor::DoctorConfig::limit_warning_ratio
/// [`limit_critical_ratio`]: crate::doctor::DoctorConfig::limit_critical_ratio
pub(crate) fn fds_near_limit(input: &RuleInput<'_>) -> Option<Finding> {
    near_limit(input, &fds(input))
}

/// `threads_near_limit`: as [`fds_near_limit`], for threads and their
/// limit (pids cgroup, `threads-max`).
pub(crate) fn threads_near_limit(input: &RuleInput<'_>) -> Option<Finding> {
    near_limit(input, &threads(input))
}

/// `fds_climbing`: holds now when the Theil–Sen slope of open descriptors
/// (10-second medians over [`count_slope_window`], at least half of it in
/// the history) amounts to at least [`fd_growth_min`] and
/// [`count_growth_min_ratio`] of the starting count. Critical when the
/// limit is reached within [`critical_eta`].
///
/// [`count_slope_window`]: crate::doctor::DoctorConfig::count_slope_window
/// [`fd_growth_min`]: crate::doctor::DoctorConfig::fd_growth_min
/// [`count_growth_min_ratio`]: crate::doctor::DoctorConfig::count_growth_min_ratio
/// [`critical_eta`]: crate::doctor::DoctorConfig::critical_eta
pub(crate) fn fds_climbing(input: &RuleInput<'_>) -> Option<Finding> {
    climbing(input, &fds(input))
}

/// `threads_climbing`: as [`fds_climbing`], for threads, with
/// [`thread_growth_min`](crate::doctor::DoctorConfig::thread_growth_min).
pub(crate) fn threads_climbing(input: &RuleInput<'_>) -> Option<Finding> {
    climbing(input, &threads(input))
}

/// `tasks_climbing`: as [`fds_climbing`], for the tasks alive in the
/// watched runtime (no limit), with
/// [`task_growth_min`](crate::doctor::DoctorConfig::task_growth_min);
/// `next` leads with the task dump.
pub(crate) fn tasks_climbing(input: &RuleInput<'_>) -> Option<Finding> {
    climbing(input, &tasks(input)).map(|mut finding| {
        finding
            .next
            .insert(0, "/debug/doctor/artifacts/{task_dump}?format=text".to_owned());
        finding
    })
}

/// `resource_saturated`: one finding per user resource whose median
/// utilization over the lookback is at least [`resource_utilization`], or
/// whose saturation (callers waiting) was above [`resource_saturation`] in
/// most seconds of the lookback. The worst [`MAX_FINDINGS_PER_RULE`] are
/// reported.
///
/// [`resource_utilization`]: crate::doctor::DoctorConfig::resource_utilization
/// [`resource_saturation`]: crate::doctor::DoctorConfig::resource_saturation
pub(crate) fn resource_saturated(input: &RuleInput<'_>) -> Vec<Finding> {
    let config = input.config;
    let recent = input.lookback();
    let mut saturated: Vec<(f64, Finding)> = Vec::new();
    for (slot, name) in input.history.resources() {
        let utilization = median(recent.values(Series::ResourceUtilization(slot)));
        let waiting_share = share(recent.values(Series::ResourceSaturation(slot)), |w| {
            w > config.resource_saturation
        });
        let full = utilization.is_some_and(|u| u >= config.resource_utilization);
        let queued = waiting_share.is_some_and(|s| s > 0.5);
        if !(full || queued) {
            continue;
        }
        let (length, window) = input.evidence_window(Rule::ResourceSaturated);
        let utilization = median(window.values(Series::ResourceUtilization(slot))).or(utilization);
        let waiting = median(window.values(Series::ResourceSaturation(slot)));
        let reading = input.current.resources.iter().find(|r| r.name == name);
        let unit = reading.map_or("", |r| r.unit.as_str());
        let mut state =
            utilization.map_or_else(|| "in use".to_owned(), |u| format!("{} in use", percent(u)));
        if let Some((used, limit)) = reading.and_then(|r| Some((r.used?, r.limit?))) {
            state += &format!(" ({} of {} {unit})", count(used), count(limit));
        }
        let waiters = waiting.filter(|w| *w > 0.0);
        if let Some(w) = waiters {
            state += &format!(", {} callers waiting", count(w.round()));
        }
        let title = format!("`{name}` is saturated: {state}");
        let text = format!("over the last {}: `{name}` {state} (medians)", span(length));
        let evidence = Evidence::new(text, length)
            .value_opt("utilization", utilization)
            .value_opt("saturation", waiting)
            .value_opt("used", reading.and_then(|r| r.used))
            .value_opt("limit", reading.and_then(|r| r.limit));
        let recommendation = format!(
            "Callers queue for `{name}`. If what it guards has capacity to spare (the database, \
             the downstream), make it larger; otherwise shorten how long each caller holds it — \
             no slow work or `.await` on unrelated I/O while holding it — and give acquiring it \
             a timeout so waiting does not pile up."
        );
        let history =
            format!("/debug/history?since=-15m&series={name}.utilization,{name}.saturation");
        let finding = Finding::new(
            Rule::ResourceSaturated,
            Severity::Warning,
            name,
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next([USE_TEXT.to_owned(), history]);
        let rank = utilization.unwrap_or(0.0) + waiters.unwrap_or(0.0);
        saturated.push((rank, finding));
    }
    saturated.sort_by(|a, b| b.0.total_cmp(&a.0));
    saturated
        .into_iter()
        .take(MAX_FINDINGS_PER_RULE)
        .map(|(_, f)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::engine::fixtures::{pool_slot, Noise, Scenario};
    use crate::doctor::ResourceReading;

    #[test]
    fn descriptors_near_their_limit() {
        let mut s = Scenario::new(120, |_, row| row.set(Series::OpenFds, 900.0));
        s.current.fd_limit = Some(1024);
        let finding = fds_near_limit(&s.input()).expect("near");
        assert_eq!(finding.severity, Severity::Warning);
        assert_eq!(
            finding.title,
            "Near the limit of open file descriptors: 900 of 1024 in use (88 %)"
        );
        s.current.fd_limit = Some(920);
        assert_eq!(
            fds_near_limit(&s.input()).unwrap().severity,
            Severity::Critical
        );
        let s = Scenario::new(120, |_, _| {});
        assert!(fds_near_limit(&s.input()).is_none());
        assert!(threads_near_limit(&s.input()).is_none());
    }

    #[test]
    fn threads_near_their_limit_from_the_history() {
        let mut s = Scenario::new(120, |_, row| {
            row.set(Series::Threads, 460.0);
            row.set(Series::ThreadLimit, 500.0);
        });
        s.current.thread_limit = None;
        let finding = threads_near_limit(&s.input()).expect("near");
        assert_eq!(finding.resource, "threads");
        assert!(finding.recommendation.contains("max_blocking_threads"));
    }

    #[test]
    fn descriptors_climbing_with_a_time_to_the_limit() {
        let mut noise = Noise::new(11);
        let mut s = Scenario::new(900, |second, row| {
            row.set(
                Series::OpenFds,
                (120.0 + second as f64 * 0.5 + 3.0 * noise.next()).round(),
            );
        });
        s.current.fd_limit = Some(1024);
        let finding = fds_climbing(&s.input()).expect("climbing");
        assert!(
            finding
                .title
                .starts_with("Open file descriptors climb by 30.0/min"),
            "{}",
            finding.title
        );
        // (1024 − 570) / 30 per minute ≈ 15 minutes: critical.
        assert_eq!(finding.severity, Severity::Critical);
        let s = Scenario::new(900, |_, _| {});
        assert!(fds_climbing(&s.input()).is_none());
        assert!(threads_climbing(&s.input()).is_none());
    }

    #[test]
    fn threads_climbing_but_not_a_pool_warming_up() {
        let s = Scenario::new(900, |second, row| {
            row.set(Series::Threads, 24.0 + (second / 6) as f64);
        });
        assert!(threads_climbing(&s.input()).is_some());
        // 40 threads started in the first minute, then flat: not climbing.
        let s = Scenario::new(900, |second, row| {
            row.set(Series::Threads, 24.0 + second.min(60) as f64 * 0.66);
        });
        assert!(threads_climbing(&s.input()).is_none());
    }

    #[test]
    fn a_full_pool_with_waiters_is_saturated() {
        let mut s = Scenario::new(120, |second, row| {
            if second >= 100 {
                row.set(Series::ResourceUtilization(pool_slot()), 1.0);
                row.set(Series::ResourceSaturation(pool_slot()), 4.0);
            }
        });
        s.current.resources[0] =
            ResourceReading::new("db_pool", 10.0, 10.0, "connections").saturation(4.0);
        let findings = resource_saturated(&s.input());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].resource, "db_pool");
        assert_eq!(
            findings[0].title,
            "`db_pool` is saturated: 100 % in use (10 of 10 connections), 4 callers waiting"
        );
        // Busy at times, waiters in a few seconds only: fine.
        let s = Scenario::new(120, |second, row| {
            let pool = pool_slot();
            row.set(Series::ResourceUtilization(pool), 0.8);
            row.set(
                Series::ResourceSaturation(pool),
                if second % 5 == 0 { 2.0 } else { 0.0 },
            );
        });
        assert!(resource_saturated(&s.input()).is_empty());
    }
}
