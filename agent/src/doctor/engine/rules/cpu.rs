//! CPU: quota exhausted or saturated, and its opposite — slow requests
//! while the CPU idles (Clinic Doctor's I/O rule).

use super::{Rule, RuleInput, CPU_PROFILE_SVG, CPU_PROFILE_TEXT, USE_TEXT};
use super::super::finding::{Evidence, Finding, Severity};
use super::super::history::Series;
use super::super::stats::median;
use crate::units::{cores, count, duration_ms, ms, percent, span};
use crate::doctor::RouteReading;

/// `cpu_saturated`: holds now when, over the lookback, the median share of
/// CFS periods throttled is at least [`cpu_throttled_ratio`] (the quota is
/// exhausted), or the median CPU use is at least [`cpu_saturated_ratio`] of
/// the limit (the cgroup quota, else the CPUs the process may run on).
///
/// [`cpu_throttled_ratio`]: crate::doctor::DoctorConfig::cpu_throttled_ratio
/// [`cpu_saturated_ratio`]: crate::doctor::DoctorConfig::cpu_saturated_ratio
pub(crate) fn cpu_saturated(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let recent = input.lookback();
    let utilization = median(recent.ratios(Series::CpuCores, Series::CpuLimitCores));
    let throttled = median(recent.values(Series::CpuThrottledRatio));
    let is_throttled = throttled.is_some_and(|t| t >= config.cpu_throttled_ratio);
    let is_saturated = utilization.is_some_and(|u| u >= config.cpu_saturated_ratio);
    if !(is_throttled || is_saturated) {
        return None;
    }

    let (length, window) = input.evidence_window(Rule::CpuSaturated);
    let used = median(window.values(Series::CpuCores));
    let limit = window.last(Series::CpuLimitCores);
    let window_utilization = median(window.ratios(Series::CpuCores, Series::CpuLimitCores));
    let window_throttled = median(window.values(Series::CpuThrottledRatio));
    let psi = median(window.values(Series::PsiCpuSomeAvg10));
    let workers = window.last(Series::Workers);
    let use_text = match (used, limit) {
        (Some(used), Some(limit)) => format!("{} of {} cores", cores(used), cores(limit)),
        (Some(used), None) => format!("{} cores", cores(used)),
        _ => "CPU use unknown".to_owned(),
    };

    let title = if is_throttled {
        format!(
            "CPU quota exhausted: throttled in {} of scheduler periods ({use_text} used)",
            percent(window_throttled.or(throttled).unwrap_or(0.0))
        )
    } else {
        format!(
            "CPU saturated: {use_text} in use ({})",
            percent(window_utilization.or(utilization).unwrap_or(0.0))
        )
    };
    let mut text = format!("over the last {}: CPU {use_text}", span(length));
    if let Some(u) = window_utilization {
        text += &format!(" ({} of the limit)", percent(u));
    }
    if let Some(t) = window_throttled {
        text += &format!("; throttled in {} of CFS periods", percent(t));
    }
    if let Some(p) = psi {
        text += &format!("; CPU pressure {}", percent(p));
    }
    let evidence = Evidence::new(text, length)
        .value_opt("cpu_cores", used)
        .value_opt("cpu_limit_cores", limit)
        .value_opt("cpu_utilization", window_utilization)
        .value_opt("cpu_throttled_ratio", window_throttled)
        .value_opt("psi_cpu_some_avg10", psi)
        .value_opt("workers", workers);

    let limit_text =
        limit.map_or_else(|| "its limit".to_owned(), |l| format!("{} cores", cores(l)));
    let mut recommendation = if is_throttled {
        format!(
            "The container uses up its CPU quota and the kernel pauses the whole process until \
             the next period: every pause adds up to a period (100 ms by default) to the \
             requests in flight. Raise the CPU limit (now {limit_text}) or cut CPU work — the \
             flame graph shows where the time goes."
        )
    } else {
        format!(
            "The process uses nearly all the CPU it may use ({limit_text}), so work queues for \
             a CPU. Find the hot path in a CPU profile and make it cheaper, or give the service \
             more CPU or more instances."
        )
    };
    if let (Some(workers), Some(limit)) = (workers, limit) {
        if is_throttled && workers > limit.ceil() {
            recommendation += &format!(
                " The runtime runs {} workers on a {}-core quota: with `worker_threads({})` \
                 fewer threads compete for it and burst less.",
                count(workers),
                cores(limit),
                limit.ceil()
            );
        }
    }
    let mut next = Vec::new();
    if input.current.cpu_profiling {
        next.extend([CPU_PROFILE_SVG, CPU_PROFILE_TEXT]);
    }
    next.push(USE_TEXT);
    Some(
        Finding::new(
            Rule::CpuSaturated,
            Severity::Warning,
            "cpu",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next(next),
    )
}

/// Whether a route is slow enough for `io_bound`: p99 at least
/// [`slow_route_p99`](crate::doctor::DoctorConfig::slow_route_p99), or
/// over its latency budget.
fn is_slow(input: &RuleInput<'_>, route: &RouteReading) -> bool {
    let config = input.config;
    if route.requests < config.min_route_requests {
        return false;
    }
    let budget = config.budgets.for_route(&route.method, &route.route);
    let over = |measured: Option<std::time::Duration>, target: Option<std::time::Duration>| matches!((measured, target), (Some(m), Some(t)) if m > t);
    route.p99.is_some_and(|p99| p99 >= config.slow_route_p99)
        || budget
            .is_some_and(|b| over(route.p95, b.p95_target()) || over(route.p99, b.p99_target()))
}

/// `io_bound`: Clinic Doctor's I/O rule ("CPU stays low while requests are
/// slow"). Holds now when, over the lookback, CPU is below
/// [`io_cpu_ratio`] of its limit, the executor is responsive (lag p99
/// below [`io_lag_p99_ms`], or unknown), and some route with enough
/// requests has a p99 of [`slow_route_p99`] or is over its latency budget:
/// the time goes to waiting on I/O, a downstream, a pool or a lock.
///
/// [`io_cpu_ratio`]: crate::doctor::DoctorConfig::io_cpu_ratio
/// [`io_lag_p99_ms`]: crate::doctor::DoctorConfig::io_lag_p99_ms
/// [`slow_route_p99`]: crate::doctor::DoctorConfig::slow_route_p99
pub(crate) fn io_bound(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let recent = input.lookback();
    let utilization = median(recent.ratios(Series::CpuCores, Series::CpuLimitCores))?;
    if utilization >= config.io_cpu_ratio {
        return None;
    }
    let lag_p99 = median(recent.values(Series::LagP99Ms));
    if lag_p99.is_some_and(|l| l >= config.io_lag_p99_ms) {
        return None;
    }
    let mut slow: Vec<&RouteReading> = input
        .current
        .routes
        .iter()
        .filter(|r| is_slow(input, r))
        .collect();
    if slow.is_empty() {
        return None;
    }
    slow.sort_by_key(|r| std::cmp::Reverse(r.p99));

    let (length, window) = input.evidence_window(Rule::IoBound);
    let window_utilization = median(window.ratios(Series::CpuCores, Series::CpuLimitCores));
    let window_lag = median(window.values(Series::LagP99Ms));
    let request_p99 = median(window.values(Series::RequestP99Ms));
    let psi_io = median(window.values(Series::PsiIoSomeAvg10));
    let worst = slow[0];
    let worst_p99 = worst.p99.map_or_else(|| "?".to_owned(), duration_ms);
    let title = format!(
        "Requests wait on I/O: {} takes {worst_p99} at p99 while the CPU idles at {}",
        worst.name(),
        percent(window_utilization.unwrap_or(utilization))
    );
    let mut text = format!(
        "over the last {}: CPU {} of its limit",
        span(length),
        percent(window_utilization.unwrap_or(utilization))
    );
    match window_lag {
        Some(lag) => text += &format!(", executor lag p99 {}", ms(lag)),
        None => text += ", executor lag unknown",
    }
    if let Some(p99) = request_p99 {
        text += &format!(", request p99 {} (all routes)", ms(p99));
    }
    if let Some(psi) = psi_io {
        text += &format!(", I/O pressure {}", percent(psi));
    }
    let mut evidence = Evidence::new(text, length)
        .value_opt("cpu_utilization", window_utilization)
        .value_opt("lag_p99_ms", window_lag)
        .value_opt("request_p99_ms", request_p99)
        .value_opt("psi_io_some_avg10", psi_io)
        .value_opt("route_p99_ms", worst.p99.map(|d| d.as_secs_f64() * 1e3))
        .value("slow_routes", slow.len() as f64);
    let routes_window = span(input.current.routes_window);
    for route in slow.iter().take(3) {
        evidence.details.push(format!(
            "{}: p95 {}, p99 {} over {} requests in the last {routes_window}",
            route.name(),
            route.p95.map_or_else(|| "?".to_owned(), duration_ms),
            route.p99.map_or_else(|| "?".to_owned(), duration_ms),
            route.requests
        ));
    }

    let mut recommendation = format!(
        "The time goes to waiting, not computing: CPU is at {} of its limit and the executor \
         answers promptly, yet {} takes {worst_p99} at p99. Its requests wait on I/O — a \
         database, a downstream service, a connection pool, a lock or the disk. The route's \
         span timings show which call waits; the USE table shows whether a pool is full. \
         Check that dependency's own latency, and give calls to it a timeout so slowness does \
         not pile up.",
        percent(window_utilization.unwrap_or(utilization)),
        worst.name()
    );
    if psi_io.is_some_and(|p| p >= 0.1) {
        recommendation += " I/O pressure is high: tasks wait for the disk.";
    }
    Some(
        Finding::new(
            Rule::IoBound,
            Severity::Warning,
            "io",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next([
            "/debug/spans?format=text",
            USE_TEXT,
            "/debug/red?format=text",
        ]),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::doctor::engine::fixtures::Scenario;

    #[test]
    fn throttling_fires_with_the_quota_and_worker_advice() {
        let s = Scenario::new(300, |second, row| {
            row.set(Series::Workers, 8.0);
            if second >= 200 {
                row.set(Series::CpuCores, 1.7);
                row.set(Series::CpuThrottledRatio, 0.4);
            }
        });
        let finding = cpu_saturated(&s.input()).expect("throttled");
        assert!(
            finding
                .title
                .starts_with("CPU quota exhausted: throttled in 40 %"),
            "{}",
            finding.title
        );
        assert!(
            finding.recommendation.contains("worker_threads(2)"),
            "{}",
            finding.recommendation
        );
        assert_eq!(finding.evidence.values["cpu_throttled_ratio"], 0.4);
        assert!(finding.next.contains(&CPU_PROFILE_SVG.to_owned()));
    }

    #[test]
    fn saturation_without_quota_fires_at_ninety_percent() {
        let s = Scenario::new(300, |second, row| {
            row.set(Series::CpuThrottledRatio, f64::NAN);
            row.set(Series::CpuLimitCores, 4.0);
            if second >= 250 {
                row.set(Series::CpuCores, 3.8);
            }
        });
        let finding = cpu_saturated(&s.input()).expect("saturated");
        assert!(
            finding
                .title
                .starts_with("CPU saturated: 3.80 of 4.00 cores"),
            "{}",
            finding.title
        );
    }

    #[test]
    fn cpu_stays_silent_below_thresholds() {
        let s = Scenario::new(300, |_, row| {
            row.set(Series::CpuCores, 1.6);
            row.set(Series::CpuThrottledRatio, 0.05);
        });
        assert!(cpu_saturated(&s.input()).is_none());
    }

    #[test]
    fn io_bound_fires_on_slow_routes_with_idle_cpu() {
        let mut s = Scenario::new(300, |_, row| {
            row.set(Series::CpuCores, 0.2);
            row.set(Series::RequestP99Ms, 900.0);
        });
        s.current.routes[1] = RouteReading::new("POST", "/orders", 600, 0)
            .latency(Duration::from_millis(700), Duration::from_millis(950));
        let finding = io_bound(&s.input()).expect("io bound");
        assert!(
            finding.title.contains("POST /orders takes 950 ms at p99"),
            "{}",
            finding.title
        );
        assert!(finding.evidence.details[0].starts_with("POST /orders: p95 700 ms, p99 950 ms"));
        assert!(finding.recommendation.contains("database"));
    }

    #[test]
    fn io_bound_stays_silent_when_cpu_or_lag_explain_it_or_routes_are_fast() {
        let slow = RouteReading::new("GET", "/slow", 600, 0)
            .latency(Duration::from_millis(700), Duration::from_millis(950));
        let mut s = Scenario::new(300, |_, row| row.set(Series::CpuCores, 1.5));
        s.current.routes.push(slow.clone());
        assert!(io_bound(&s.input()).is_none(), "CPU-bound");
        let mut s = Scenario::new(300, |_, row| row.set(Series::LagP99Ms, 80.0));
        s.current.routes.push(slow.clone());
        assert!(io_bound(&s.input()).is_none(), "executor-bound");
        let s = Scenario::new(300, |_, _| {});
        assert!(io_bound(&s.input()).is_none(), "healthy");
        let mut s = Scenario::new(300, |_, _| {});
        s.current.routes.push(
            RouteReading::new("GET", "/rare", 3, 0)
                .latency(Duration::from_secs(2), Duration::from_secs(2)),
        );
        assert!(io_bound(&s.input()).is_none(), "too few requests");
    }
}
