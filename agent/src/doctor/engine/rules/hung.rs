//! The hung service: requests that wait for ever while nothing is busy.

use super::{Rule, RuleInput};
use super::super::finding::{Evidence, Finding, Severity};
use super::super::history::Series;
use super::super::stats::median;
use crate::doctor::InFlightReading;
use crate::units::{count, ms, percent, span};

/// Routes named in the title; the evidence lists up to [`DETAILED`].
const IN_TITLE: usize = 3;
const DETAILED: usize = 10;

/// `requests_stuck`: holds now when some route has requests in flight for
/// longer than max([`stuck_request_min`], [`stuck_request_p99_factor`] ×
/// its p99) — the recorder counts them per route — while the CPU is below
/// [`io_cpu_ratio`] of its limit and the executor answers (lag p99 below
/// [`io_lag_p99_ms`]), both over the lookback and unknown counting as
/// fine. Nothing is busy, yet requests do not finish: an await that never
/// completes (a lock held across an await, a channel nobody sends on, a
/// leaked permit, a lost wake-up). Critical once the oldest has waited 10×
/// the threshold floor.
///
/// [`stuck_request_min`]: crate::doctor::DoctorConfig::stuck_request_min
/// [`stuck_request_p99_factor`]: crate::doctor::DoctorConfig::stuck_request_p99_factor
/// [`io_cpu_ratio`]: crate::doctor::DoctorConfig::io_cpu_ratio
/// [`io_lag_p99_ms`]: crate::doctor::DoctorConfig::io_lag_p99_ms
pub(crate) fn requests_stuck(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let stuck: Vec<&InFlightReading> = input
        .current
        .in_flight
        .iter()
        .filter(|r| r.stuck > 0)
        .collect();
    if stuck.is_empty() {
        return None;
    }
    let recent = input.lookback();
    let utilization = median(recent.ratios(Series::CpuCores, Series::CpuLimitCores));
    if utilization.is_some_and(|u| u >= config.io_cpu_ratio) {
        return None;
    }
    let lag_p99 = median(recent.values(Series::LagP99Ms));
    if lag_p99.is_some_and(|l| l >= config.io_lag_p99_ms) {
        return None;
    }
    let total: u64 = stuck.iter().map(|r| r.stuck).sum();
    let oldest = stuck.iter().map(|r| r.oldest).max().unwrap_or_default();
    let mut names: Vec<String> = stuck
        .iter()
        .take(IN_TITLE)
        .map(|r| format!("{} on {}", count(r.stuck as f64), r.name()))
        .collect();
    if stuck.len() > IN_TITLE {
        names.push(format!("{} more routes", stuck.len() - IN_TITLE));
    }
    let title = format!(
        "{} requests stuck ({}), the oldest for {}, while nothing is busy",
        count(total as f64),
        names.join(", "),
        span(oldest)
    );
    let (length, window) = input.evidence_window(Rule::RequestsStuck);
    let mut text = format!(
        "now: {} requests in flight longer than max({}, {}× their route's p99)",
        count(total as f64),
        span(config.stuck_request_min),
        config.stuck_request_p99_factor
    );
    let window_utilization = median(window.ratios(Series::CpuCores, Series::CpuLimitCores));
    let window_lag = median(window.values(Series::LagP99Ms));
    text += &format!("; over the last {}: CPU ", span(length));
    text += &window_utilization.map_or_else(|| "unknown".to_owned(), percent);
    text += " of its limit, executor lag p99 ";
    text += &window_lag.map_or_else(|| "unknown".to_owned(), ms);
    let mut evidence = Evidence::new(text, length)
        .value("stuck_requests", total as f64)
        .value("oldest_s", oldest.as_secs_f64())
        .value("stuck_routes", stuck.len() as f64)
        .value_opt("cpu_utilization", window_utilization)
        .value_opt("lag_p99_ms", window_lag);
    for route in stuck.iter().take(DETAILED) {
        evidence.details.push(format!(
            "{}: {} stuck of {} in flight, the oldest for {}",
            route.name(),
            count(route.stuck as f64),
            count(route.count as f64),
            span(route.oldest)
        ));
    }
    let severity = if oldest >= config.stuck_request_min * 10 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let recommendation = "These requests wait for something that does not come: the CPU \
        idles and the executor answers, so nothing is computing or blocking — an `.await` \
        never completes. The usual causes: a lock (`tokio::sync::Mutex`, `RwLock`) held across \
        an await by a task that is itself waiting, a channel nobody sends on (the sender kept \
        alive but idle), a semaphore permit leaked with `mem::forget` or never returned, a \
        lost wake-up in a hand-written future, a downstream call without a timeout. The task \
        dump shows the await each request waits at; the thread dump whether a thread holds \
        what they wait for. Put a timeout on the wait (`tokio::time::timeout`) so a stuck \
        request fails instead of piling up.";
    Some(
        Finding::new(
            Rule::RequestsStuck,
            severity,
            "requests",
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next([
            "/debug/red?format=text",
            "/debug/doctor/artifacts/{task_dump}?format=text",
            "/debug/doctor/artifacts/{thread_dump}?format=text",
            "/debug/tasks",
            "/debug/threads",
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::engine::fixtures::Scenario;
    use std::time::Duration;

    fn stuck(route: &str, count: u64, stuck: u64, oldest_s: u64) -> InFlightReading {
        let mut reading =
            InFlightReading::new("GET", route, count, Duration::from_secs(oldest_s));
        reading.stuck = stuck;
        reading
    }

    #[test]
    fn stuck_requests_with_idle_cpu_name_their_routes_and_counts() {
        let mut s = Scenario::new(120, |_, row| row.set(Series::CpuCores, 0.05));
        s.current.in_flight = vec![stuck("/a", 12, 12, 45), stuck("/b", 9, 7, 40)];
        let finding = requests_stuck(&s.input()).expect("stuck");
        assert_eq!(
            finding.title,
            "19 requests stuck (12 on GET /a, 7 on GET /b), the oldest for 45 s, while \
             nothing is busy"
        );
        assert_eq!(finding.evidence.details.len(), 2);
        assert!(finding.evidence.details[1].starts_with("GET /b: 7 stuck of 9 in flight"));
        assert_eq!(finding.severity, Severity::Warning);
        assert!(finding.next.iter().any(|u| u == "/debug/threads"));
    }

    #[test]
    fn busy_cpu_or_a_blocked_executor_or_no_stuck_request_stay_silent() {
        let mut s = Scenario::new(120, |_, row| row.set(Series::CpuCores, 1.9));
        s.current.in_flight = vec![stuck("/a", 12, 12, 45)];
        assert!(requests_stuck(&s.input()).is_none(), "CPU-bound");
        let mut s = Scenario::new(120, |_, row| row.set(Series::LagP99Ms, 400.0));
        s.current.in_flight = vec![stuck("/a", 12, 12, 45)];
        assert!(requests_stuck(&s.input()).is_none(), "executor blocked");
        let mut s = Scenario::new(120, |_, _| {});
        s.current.in_flight = vec![stuck("/a", 50, 0, 20)];
        assert!(requests_stuck(&s.input()).is_none(), "in flight, none stuck");
    }

    #[test]
    fn waiting_ten_times_the_floor_is_critical() {
        let mut s = Scenario::new(120, |_, _| {});
        s.current.in_flight = vec![stuck("/a", 3, 3, 301)];
        assert_eq!(
            requests_stuck(&s.input()).expect("stuck").severity,
            Severity::Critical
        );
    }
}
