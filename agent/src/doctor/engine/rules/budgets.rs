//! Budgets: breaches of the route, CPU and memory budgets, measured value
//! next to the budget.

use std::time::Duration;

use super::{Rule, RuleInput, USE_TEXT};
use super::super::defaults::MAX_FINDINGS_PER_RULE;
use super::super::finding::{Evidence, Finding, Severity};
use super::super::history::Series;
use super::super::stats::median;
use crate::units::{bytes, cores, duration_ms, percent, span};

fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `route_over_budget`: one finding per route with at least
/// [`min_route_requests`] requests in the route window whose p95, p99 or
/// error ratio is over its budget ([`Budgets::for_route`]: its own, else
/// the `*` one). The [`MAX_FINDINGS_PER_RULE`] worst breaches are reported.
///
/// [`min_route_requests`]: crate::doctor::DoctorConfig::min_route_requests
/// [`Budgets::for_route`]: crate::doctor::Budgets::for_route
pub(crate) fn route_over_budget(input: &RuleInput<'_>) -> Vec<Finding> {
    let config = input.config;
    let window = input.current.routes_window;
    let mut breaches: Vec<(f64, Finding)> = Vec::new();
    for route in &input.current.routes {
        if route.requests < config.min_route_requests {
            continue;
        }
        let Some(budget) = config.budgets.for_route(&route.method, &route.route) else {
            continue;
        };
        let mut parts = Vec::new();
        let mut worst: f64 = 0.0;
        let mut evidence =
            Evidence::new(String::new(), window).value("requests", route.requests as f64);
        let latency = [
            (
                "p95",
                route.p95,
                budget.p95_target(),
                "p95_ms",
                "p95_budget_ms",
            ),
            (
                "p99",
                route.p99,
                budget.p99_target(),
                "p99_ms",
                "p99_budget_ms",
            ),
        ];
        let mut slow = false;
        for (name, measured, target, key, budget_key) in latency {
            let (Some(measured), Some(target)) = (measured, target) else {
                continue;
            };
            evidence = evidence
                .value(key, as_ms(measured))
                .value(budget_key, as_ms(target));
            if measured > target {
                slow = true;
                worst = worst.max(as_ms(measured) / as_ms(target));
                parts.push(format!(
                    "{name} {} (budget {})",
                    duration_ms(measured),
                    duration_ms(target)
                ));
            }
        }
        let ratio = route.error_ratio();
        let mut failing = false;
        if let Some(target) = budget.error_ratio_target() {
            evidence = evidence
                .value("error_ratio", ratio)
                .value("error_ratio_budget", target);
            if ratio > target {
                failing = true;
                worst = worst.max(if target > 0.0 {
                    ratio / target
                } else {
                    f64::MAX
                });
                parts.push(format!(
                    "errors {} (budget {})",
                    percent(ratio),
                    percent(target)
                ));
            }
        }
        if parts.is_empty() {
            continue;
        }
        let name = route.name();
        let title = format!("{name} is over its budget: {}", parts.join(", "));
        evidence.text = format!(
            "over the last {}: {} requests, {} errors ({}); p95 {}, p99 {}",
            span(window),
            route.requests,
            route.errors,
            percent(ratio),
            route.p95.map_or_else(|| "?".to_owned(), duration_ms),
            route.p99.map_or_else(|| "?".to_owned(), duration_ms),
        );
        let mut recommendation = String::new();
        if slow {
            recommendation += "See where the route's time goes: its span timings break a \
                request down, and the doctor's other findings tell a slow executor (every \
                route slow) from a slow dependency (only some).";
        }
        if failing {
            if !recommendation.is_empty() {
                recommendation.push(' ');
            }
            recommendation += &format!(
                "{} of {} requests failed (status 5xx or no response): the service's logs for \
                 {name} say why; /debug/red lists the route's status codes.",
                route.errors, route.requests
            );
        }
        let finding = Finding::new(
            Rule::RouteOverBudget,
            Severity::Warning,
            name,
            title,
            evidence,
            recommendation,
            input.now,
        )
        .next(["/debug/red?format=text", "/debug/spans?format=text"]);
        breaches.push((worst, finding));
    }
    breaches.sort_by(|a, b| b.0.total_cmp(&a.0));
    breaches
        .into_iter()
        .take(MAX_FINDINGS_PER_RULE)
        .map(|(_, f)| f)
        .collect()
}

/// `cpu_over_budget`: holds now when the median CPU use over the lookback
/// is above the CPU budget (a share of the limit) but below
/// [`cpu_saturated_ratio`], where `cpu_saturated` takes over.
///
/// [`cpu_saturated_ratio`]: crate::doctor::DoctorConfig::cpu_saturated_ratio
pub(crate) fn cpu_over_budget(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let budget = config.budgets.cpu()?;
    let utilization = median(
        input
            .lookback()
            .ratios(Series::CpuCores, Series::CpuLimitCores),
    )?;
    if utilization <= budget || utilization >= config.cpu_saturated_ratio {
        return None;
    }
    let (length, window) = input.evidence_window(Rule::CpuOverBudget);
    let used = median(window.values(Series::CpuCores));
    let limit = window.last(Series::CpuLimitCores);
    let utilization =
        median(window.ratios(Series::CpuCores, Series::CpuLimitCores)).unwrap_or(utilization);
    let title = format!(
        "CPU at {} of its limit, over its {} budget",
        percent(utilization),
        percent(budget)
    );
    let mut text = format!(
        "over the last {}: CPU {} of the limit",
        span(length),
        percent(utilization)
    );
    if let (Some(used), Some(limit)) = (used, limit) {
        text += &format!(" ({} of {} cores)", cores(used), cores(limit));
    }
    let evidence = Evidence::new(text, length)
        .value("cpu_utilization", utilization)
        .value("cpu_budget", budget)
        .value_opt("cpu_cores", used)
        .value_opt("cpu_limit_cores", limit);
    let mut next = Vec::new();
    if input.current.cpu_profiling {
        next.push(super::CPU_PROFILE_SVG);
    }
    next.push(USE_TEXT);
    Some(
        Finding::new(
            Rule::CpuOverBudget,
            Severity::Warning,
            "cpu",
            title,
            evidence,
            "The headroom the budget keeps for bursts is being used up. Find the hot path in a \
             CPU profile and make it cheaper, or plan more CPU before load grows further.",
            input.now,
        )
        .next(next),
    )
}

/// `memory_over_budget`: holds now when the median memory use over the
/// lookback is above the memory budget (a share of the limit) but below
/// [`memory_near_limit_ratio`], where `memory_near_limit` takes over.
///
/// [`memory_near_limit_ratio`]: crate::doctor::DoctorConfig::memory_near_limit_ratio
pub(crate) fn memory_over_budget(input: &RuleInput<'_>) -> Option<Finding> {
    let config = input.config;
    let budget = config.budgets.memory()?;
    let recent = input.lookback();
    let limit = input
        .current
        .memory_limit_bytes
        .map(|l| l as f64)
        .or_else(|| recent.last(Series::MemoryLimitBytes))
        .filter(|l| *l > 0.0)?;
    let used = median(recent.values(Series::MemoryBytes))?;
    let utilization = used / limit;
    if utilization <= budget || utilization >= config.memory_near_limit_ratio {
        return None;
    }
    let limit_name = input.current.memory_limit_source.describe();
    let title = format!(
        "Memory at {} of {limit_name}, over its {} budget",
        percent(utilization),
        percent(budget)
    );
    let text = format!(
        "over the last {}: memory {} of {} ({})",
        span(config.lookback),
        bytes(used),
        bytes(limit),
        percent(utilization)
    );
    let evidence = Evidence::new(text, config.lookback)
        .value("memory_bytes", used)
        .value("memory_limit_bytes", limit)
        .value("memory_utilization", utilization)
        .value("memory_budget", budget);
    let mut next = Vec::new();
    if input.current.heap_profiling {
        next.push("/debug/pprof/heap?format=text");
    }
    next.extend([
        USE_TEXT,
        "/debug/history?since=-15m&series=memory_bytes,memory_limit_bytes",
    ]);
    Some(
        Finding::new(
            Rule::MemoryOverBudget,
            Severity::Warning,
            "memory",
            title,
            evidence,
            "The headroom the budget keeps for spikes is being used up. Check what holds memory \
             (a heap profile lists live allocations by call stack) and whether it still grows; \
             plan a higher limit if this level is the new normal.",
            input.now,
        )
        .next(next),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::engine::fixtures::{Scenario, MIB};
    use crate::doctor::{Budget, RouteReading};

    #[test]
    fn routes_over_their_budget_show_measured_and_budget() {
        let mut s = Scenario::new(60, |_, _| {});
        s.config
            .budgets
            .add(
                Budget::route("GET /items/{id}")
                    .p95(Duration::from_millis(20))
                    .p99(Duration::from_secs(1)),
            )
            .unwrap();
        s.current.routes.push(
            RouteReading::new("GET", "/flaky", 200, 9)
                .latency(Duration::from_millis(30), Duration::from_millis(40)),
        );
        let findings = route_over_budget(&s.input());
        assert_eq!(findings.len(), 2);
        let flaky = &findings[0];
        assert_eq!(flaky.resource, "GET /flaky");
        assert_eq!(
            flaky.title,
            "GET /flaky is over its budget: errors 4.5 % (budget 1.0 %)"
        );
        assert_eq!(flaky.evidence.values["error_ratio_budget"], 0.01);
        let items = &findings[1];
        assert_eq!(
            items.title,
            "GET /items/{id} is over its budget: p95 25.0 ms (budget 20.0 ms)"
        );
        assert_eq!(items.evidence.values["p95_ms"], 25.0);
        assert_eq!(items.evidence.values["p95_budget_ms"], 20.0);
        assert!(
            !items.evidence.values.contains_key("error_ratio"),
            "its own budget has no error target"
        );
    }

    #[test]
    fn routes_within_budget_or_with_few_requests_are_fine() {
        let mut s = Scenario::new(60, |_, _| {});
        assert!(route_over_budget(&s.input()).is_empty());
        s.current.routes.push(
            RouteReading::new("GET", "/rare", 5, 5)
                .latency(Duration::from_secs(3), Duration::from_secs(3)),
        );
        assert!(route_over_budget(&s.input()).is_empty());
        s.config.budgets = crate::doctor::Budgets::none();
        s.current.routes.push(
            RouteReading::new("GET", "/slow", 500, 100)
                .latency(Duration::from_secs(3), Duration::from_secs(3)),
        );
        assert!(
            route_over_budget(&s.input()).is_empty(),
            "no budgets, no breach"
        );
    }

    #[test]
    fn cpu_and_memory_over_budget_below_saturation() {
        let s = Scenario::new(120, |_, row| {
            row.set(Series::CpuCores, 1.6);
            row.set(Series::MemoryBytes, 870.0 * MIB);
        });
        let cpu = cpu_over_budget(&s.input()).expect("cpu");
        assert_eq!(cpu.title, "CPU at 80 % of its limit, over its 70 % budget");
        let memory = memory_over_budget(&s.input()).expect("memory");
        assert_eq!(
            memory.title,
            "Memory at 85 % of the cgroup limit, over its 80 % budget"
        );
        // Above saturation the stronger rules speak instead.
        let s = Scenario::new(120, |_, row| {
            row.set(Series::CpuCores, 1.9);
            row.set(Series::MemoryBytes, 950.0 * MIB);
        });
        assert!(cpu_over_budget(&s.input()).is_none());
        assert!(memory_over_budget(&s.input()).is_none());
        let s = Scenario::new(120, |_, _| {});
        assert!(cpu_over_budget(&s.input()).is_none());
        assert!(memory_over_budget(&s.input()).is_none());
    }
}
