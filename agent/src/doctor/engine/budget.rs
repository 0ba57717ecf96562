//! Performance budgets: per-route latency and error targets, CPU and
//! memory ceilings — from Rust or from `STETHOSCOPE_BUDGETS`.
//!
//! The string syntax is items separated by `;`:
//!
//! ```text
//! GET /items/{id}: p95<500ms, p99<1s, errors<1%; /health: p99<50ms; *: p95<800ms; cpu<70%; memory<80%
//! ```
//!
//! - `[METHOD] /route: target, target…` — a route template as the RED
//!   layer reports it (without a method: every method), or `*` for every
//!   route without a budget of its own. Targets: `p95<DURATION`,
//!   `p99<DURATION` (`250ms`, `1s`, `1.5s`, `1m`), `errors<PERCENT`
//!   (`1%`, `0.5%`, or a ratio `0.01`).
//! - `cpu<PERCENT`, `memory<PERCENT` — shares of the CPU limit and the
//!   memory limit.
//! - `none` — forgets every budget so far, the defaults included.
//!
//! Items add to (and for the same route, replace) the seeds' defaults:
//! `*: p95<500ms, errors<1%; cpu<70%; memory<80%`.

use std::fmt;
use std::time::Duration;

use super::defaults::{
    DEFAULT_CPU_BUDGET, DEFAULT_MEMORY_BUDGET, DEFAULT_ROUTE_ERROR_RATIO_BUDGET,
    DEFAULT_ROUTE_P95_BUDGET,
};
use crate::Error;

/// Longest budget string accepted.
const MAX_BUDGETS_LEN: usize = 16 * 1024;

/// Most route budgets kept.
pub const MAX_ROUTE_BUDGETS: usize = 256;

/// The route key of the budget that applies to every route without one.
pub const ANY_ROUTE: &str = "*";

const EXPECTED_ITEM: &str =
    "`[METHOD] /route: p95<500ms, p99<1s, errors<1%`, `*: …`, `cpu<70%`, `memory<80%` or `none`";
const EXPECTED_TARGET: &str = "a target such as p95<500ms, p99<1s or errors<1%";
const EXPECTED_DURATION: &str = "a positive duration such as 250ms, 1s or 1.5s";
const EXPECTED_PERCENT: &str = "a percentage such as 70% or 0.5% (or a ratio from 0 to 1)";
const EXPECTED_ROUTE: &str =
    "a route template starting with `/` (e.g. /items/{id}), optionally after a method such as GET, or `*`";

/// One budget: a route's targets, or a resource ceiling.
///
/// ```
/// use std::time::Duration;
/// use stethoscope::doctor::{Budget, Budgets};
///
/// let mut budgets = Budgets::default();
/// budgets.add(Budget::route("GET /items/{id}").p95(Duration::from_millis(300)).error_ratio(0.01))?;
/// budgets.add(Budget::cpu(0.6))?;
/// assert_eq!(budgets.cpu(), Some(0.6));
/// let items = budgets.for_route("GET", "/items/{id}").unwrap();
/// assert_eq!(items.p95_target(), Some(Duration::from_millis(300)));
/// # Ok::<(), stethoscope::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Budget {
    /// Latency and error targets of a route (or of every route: `*`).
    Route(RouteBudget),
    /// Most CPU the service should use, as a share of its limit.
    Cpu(f64),
    /// Most memory the service should use, as a share of its limit.
    Memory(f64),
}

impl Budget {
    /// A budget for `route`: `"GET /items/{id}"`, `"/items/{id}"` (every
    /// method) or `"*"` (every route without its own); add targets with
    /// [`RouteBudget::p95`], [`RouteBudget::p99`], [`RouteBudget::error_ratio`].
    pub fn route(route: &str) -> RouteBudget {
        let route = route.trim();
        let (method, path) = match route.split_once(char::is_whitespace) {
            Some((method, path)) => (Some(method.to_owned()), path.trim().to_owned()),
            None => (None, route.to_owned()),
        };
        RouteBudget {
            method,
            route: path,
            p95: None,
            p99: None,
            error_ratio: None,
        }
    }

    /// CPU below `share` of the limit (0.7 = 70 %).
    pub fn cpu(share: f64) -> Budget {
        Budget::Cpu(share)
    }

    /// Memory below `share` of the limit (0.8 = 80 %).
    pub fn memory(share: f64) -> Budget {
        Budget::Memory(share)
    }
}

/// Latency and error targets of one route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteBudget {
    method: Option<String>,
    route: String,
    p95: Option<Duration>,
    p99: Option<Duration>,
    error_ratio: Option<f64>,
}

impl From<RouteBudget> for Budget {
    fn from(budget: RouteBudget) -> Self {
        Budget::Route(budget)
    }
}

impl RouteBudget {
    /// 95 % of requests faster than `target`.
    #[must_use]
    pub fn p95(mut self, target: Duration) -> Self {
        self.p95 = Some(target);
        self
    }

    /// 99 % of requests faster than `target`.
    #[must_use]
    pub fn p99(mut self, target: Duration) -> Self {
        self.p99 = Some(target);
        self
    }

    /// At most this share of requests fail (0.01 = 1 %).
    #[must_use]
    pub fn error_ratio(mut self, target: f64) -> Self {
        self.error_ratio = Some(target);
        self
    }

    /// The method it applies to (`None`: every method).
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The route template, or `*`.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The p95 target.
    pub fn p95_target(&self) -> Option<Duration> {
        self.p95
    }

    /// The p99 target.
    pub fn p99_target(&self) -> Option<Duration> {
        self.p99
    }

    /// The error-ratio target.
    pub fn error_ratio_target(&self) -> Option<f64> {
        self.error_ratio
    }

    fn key(&self) -> (Option<&str>, &str) {
        (self.method.as_deref(), &self.route)
    }

    fn validate(&self) -> Result<(), Error> {
        let item = self.to_string();
        let invalid = |part: String, expected| Error::InvalidBudget {
            item: item.clone(),
            part,
            expected,
        };
        let route_ok = self.route == ANY_ROUTE
            || (self.route.starts_with('/') && !self.route.contains(char::is_whitespace));
        let method_ok = self.method.as_deref().is_none_or(|m| {
            !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && self.route != ANY_ROUTE
        });
        if !route_ok || !method_ok {
            let route = match &self.method {
                Some(method) => format!("{method} {}", self.route),
                None => self.route.clone(),
            };
            return Err(invalid(route, EXPECTED_ROUTE));
        }
        for (name, target) in [("p95", self.p95), ("p99", self.p99)] {
            if target.is_some_and(|t| t.is_zero()) {
                return Err(invalid(format!("{name}<0"), EXPECTED_DURATION));
            }
        }
        if let Some(ratio) = self.error_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(invalid(format!("errors<{ratio}"), EXPECTED_PERCENT));
            }
        }
        if self.p95.is_none() && self.p99.is_none() && self.error_ratio.is_none() {
            return Err(invalid(
                item.clone(),
                "at least one target: p95<…, p99<… or errors<…",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for RouteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(method) = &self.method {
            write!(f, "{method} ")?;
        }
        write!(f, "{}:", self.route)?;
        let mut separator = " ";
        for (name, target) in [("p95", self.p95), ("p99", self.p99)] {
            if let Some(target) = target {
                write!(f, "{separator}{name}<{}", DisplayDuration(target))?;
                separator = ", ";
            }
        }
        if let Some(ratio) = self.error_ratio {
            write!(f, "{separator}errors<{}", DisplayPercent(ratio))?;
        }
        Ok(())
    }
}

/// A duration in the budget syntax: `500ms`, `1s`, `1.5s`.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", nanos / 1_000_000_000)
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else {
            write!(f, "{}ms", nanos as f64 / 1e6)
        }
    }
}

/// A ratio in the budget syntax: `70%`, `0.5%`.
struct DisplayPercent(f64);

impl fmt::Display for DisplayPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rounded to hide binary noise (0.07 * 100 = 7.000000000000001),
        // unless that would round a tiny share to nothing.
        let percent = self.0 * 100.0;
        let rounded = (percent * 1e6).round() / 1e6;
        if rounded == 0.0 && percent != 0.0 {
            write!(f, "{percent}%")
        } else {
            write!(f, "{rounded}%")
        }
    }
}

/// Every budget of the service: route targets, a default for every other
/// route, CPU and memory ceilings. [`Budgets::default`] holds the seeds'
/// performance budget (`*: p95<500ms, errors<1%; cpu<70%; memory<80%`);
/// [`Budgets::none`] holds nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    routes: Vec<RouteBudget>,
    any_route: Option<RouteBudget>,
    cpu: Option<f64>,
    memory: Option<f64>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            routes: Vec::new(),
            any_route: Some(
                Budget::route(ANY_ROUTE)
                    .p95(DEFAULT_ROUTE_P95_BUDGET)
                    .error_ratio(DEFAULT_ROUTE_ERROR_RATIO_BUDGET),
            ),
            cpu: Some(DEFAULT_CPU_BUDGET),
            memory: Some(DEFAULT_MEMORY_BUDGET),
        }
    }
}

impl Budgets {
    /// No budget at all.
    pub fn none() -> Self {
        Budgets {
            routes: Vec::new(),
            any_route: None,
            cpu: None,
            memory: None,
        }
    }

    /// Adds a budget; a route budget replaces the one of the same method
    /// and route.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBudget`] for a malformed route, a target that is
    /// zero or out of range, a route budget without targets, a ceiling
    /// outside 0 < share ≤ 1, or more than [`MAX_ROUTE_BUDGETS`] routes.
    pub fn add(&mut self, budget: impl Into<Budget>) -> Result<(), Error> {
        match budget.into() {
            Budget::Route(route) => {
                route.validate()?;
                if route.route == ANY_ROUTE {
                    self.any_route = Some(route);
                } else if let Some(existing) =
                    self.routes.iter_mut().find(|r| r.key() == route.key())
                {
                    *existing = route;
                } else if self.routes.len() >= MAX_ROUTE_BUDGETS {
                    return Err(Error::InvalidBudget {
                        item: route.to_string(),
                        part: route.to_string(),
                        expected: "at most 256 route budgets",
                    });
                } else {
                    self.routes.push(route);
                }
            }
            Budget::Cpu(share) => self.cpu = Some(ceiling("cpu", share)?),
            Budget::Memory(share) => self.memory = Some(ceiling("memory", share)?),
        }
        Ok(())
    }

    /// [`add`](Budgets::add), by value.
    ///
    /// # Errors
    ///
    /// As [`add`](Budgets::add).
    pub fn with(mut self, budget: impl Into<Budget>) -> Result<Self, Error> {
        self.add(budget)?;
        Ok(self)
    }

    /// The defaults with the items of `text` applied (the syntax of
    /// [`ENV_BUDGETS`](crate::config::ENV_BUDGETS), see the module docs).
    ///
    /// ```
    /// use stethoscope::doctor::Budgets;
    /// let budgets = Budgets::parse("GET /items/{id}: p95<300ms, errors<0.5%; cpu<60%")?;
    /// assert_eq!(budgets.cpu(), Some(0.6));
    /// assert_eq!(budgets.memory(), Some(0.8)); // the default
    /// assert!(Budgets::parse("cpu>60%").unwrap_err().to_string().contains("\"cpu>60%\""));
    /// # Ok::<(), stethoscope::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidBudget`] naming the item, the part that is wrong and
    /// what was expected there.
    pub fn parse(text: &str) -> Result<Budgets, Error> {
        let mut budgets = Budgets::default();
        budgets.apply(text)?;
        Ok(budgets)
    }

    /// Applies the items of `text` to these budgets.
    ///
    /// # Errors
    ///
    /// As [`parse`](Budgets::parse); nothing is applied then.
    pub fn apply(&mut self, text: &str) -> Result<(), Error> {
        if text.len() > MAX_BUDGETS_LEN {
            return Err(Error::InvalidBudget {
                item: text.chars().take(60).collect(),
                part: format!("{} bytes", text.len()),
                expected: "at most 16 KiB of budgets",
            });
        }
        let mut next = self.clone();
        for item in text.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            match parse_item(item)? {
                None => next = Budgets::none(),
                Some(budget) => next.add(budget)?,
            }
        }
        *self = next;
        Ok(())
    }

    /// The budget that applies to `method route`: its own (with the
    /// method, else without), else the `*` budget.
    pub fn for_route(&self, method: &str, route: &str) -> Option<&RouteBudget> {
        self.routes
            .iter()
            .find(|b| b.method.as_deref() == Some(method) && b.route == route)
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|b| b.method.is_none() && b.route == route)
            })
            .or(self.any_route.as_ref())
    }

    /// Route budgets, in the order added (the `*` one apart).
    pub fn routes(&self) -> &[RouteBudget] {
        &self.routes
    }

    /// The budget of every route without its own.
    pub fn any_route(&self) -> Option<&RouteBudget> {
        self.any_route.as_ref()
    }

    /// CPU ceiling, share of the limit.
    pub fn cpu(&self) -> Option<f64> {
        self.cpu
    }

    /// Memory ceiling, share of the limit.
    pub fn memory(&self) -> Option<f64> {
        self.memory
    }
}

impl fmt::Display for Budgets {
    /// The budgets in the syntax [`Budgets::parse`] reads, starting with
    /// `none` so the text stands on its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("none")?;
        for route in self.routes.iter().chain(&self.any_route) {
            write!(f, "; {route}")?;
        }
        if let Some(cpu) = self.cpu {
            write!(f, "; cpu<{}", DisplayPercent(cpu))?;
        }
        if let Some(memory) = self.memory {
            write!(f, "; memory<{}", DisplayPercent(memory))?;
        }
        Ok(())
    }
}

fn ceiling(name: &'static str, share: f64) -> Result<f64, Error> {
    if share > 0.0 && share <= 1.0 {
        Ok(share)
    } else {
        Err(Error::InvalidBudget {
            item: format!("{name}<{}", DisplayPercent(share)),
            part: format!("{}", DisplayPercent(share)),
            expected: "a share above 0 % and at most 100 %",
        })
    }
}

/// One item: a budget, or `None` for `none`.
fn parse_item(item: &str) -> Result<Option<Budget>, Error> {
    let invalid = |part: &str, expected| Error::InvalidBudget {
        item: item.chars().take(200).collect(),
        part: part.chars().take(200).collect(),
        expected,
    };
    if item.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    for (keyword, make) in [
        ("cpu", Budget::Cpu as fn(f64) -> Budget),
        ("memory", Budget::Memory),
    ] {
        let Some(rest) = strip_keyword(item, keyword) else {
            continue;
        };
        let value = comparison(rest).ok_or_else(|| invalid(item, EXPECTED_ITEM))?;
        let share = parse_percent(value).ok_or_else(|| invalid(value, EXPECTED_PERCENT))?;
        return Ok(Some(make(share)));
    }
    let Some((head, targets)) = item.rsplit_once(':') else {
        return Err(invalid(item, EXPECTED_ITEM));
    };
    let head = head.trim();
    let mut budget = Budget::route(head);
    let well_formed = budget.route == ANY_ROUTE
        || (budget.route.starts_with('/')
            && budget
                .method
                .as_deref()
                .is_none_or(|m| m.bytes().all(|b| b.is_ascii_uppercase())));
    if head.is_empty() || !well_formed {
        return Err(invalid(head, EXPECTED_ROUTE));
    }
    for target in targets.split(',').map(str::trim) {
        if target.is_empty() {
            return Err(invalid(targets.trim(), EXPECTED_TARGET));
        }
        let (name, value) = target
            .find(['<', '>', '='])
            .map(|at| target.split_at(at))
            .ok_or_else(|| invalid(target, EXPECTED_TARGET))?;
        let value = comparison(value).ok_or_else(|| invalid(target, EXPECTED_TARGET))?;
        match name.trim().to_ascii_lowercase().as_str() {
            "p95" => {
                budget.p95 =
                    Some(parse_duration(value).ok_or_else(|| invalid(value, EXPECTED_DURATION))?)
            }
            "p99" => {
                budget.p99 =
                    Some(parse_duration(value).ok_or_else(|| invalid(value, EXPECTED_DURATION))?)
            }
            "errors" | "error_ratio" => {
                budget.error_ratio =
                    Some(parse_percent(value).ok_or_else(|| invalid(value, EXPECTED_PERCENT))?);
            }
            _ => return Err(invalid(target, EXPECTED_TARGET)),
        }
    }
    Ok(Some(Budget::Route(budget)))
}

/// `rest` of `item` after `keyword` if the keyword is the whole first word.
fn strip_keyword<'a>(item: &'a str, keyword: &str) -> Option<&'a str> {
    let head = item.get(..keyword.len())?;
    let rest = &item[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword)
        && !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
    .then_some(rest)
}

/// The value after `<` (or `<=`); `None` for another comparison.
fn comparison(text: &str) -> Option<&str> {
    let text = text.trim_start();
    let value = text.strip_prefix("<=").or_else(|| text.strip_prefix('<'))?;
    Some(value.trim())
}

/// `70%`, `0.5 %`, or a ratio `0.7`.
fn parse_percent(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number.trim(), 100.0),
        None => (text, 1.0),
    };
    let value = parse_decimal(number)? / scale;
    (0.0..=1.0).contains(&value).then_some(value)
}

/// A plain decimal number: digits with at most one `.`.
fn parse_decimal(text: &str) -> Option<f64> {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let dots = text.bytes().filter(|b| *b == b'.').count();
    if digits == 0 || digits + dots != text.len() || dots > 1 || text.len() > 32 {
        return None;
    }
    text.parse().ok()
}

/// `250ms`, `1s`, `1.5s`, `1m`, `2min`, `500us`, or humantime's `1m30s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        _ => {
            return humantime::parse_duration(text)
                .ok()
                .filter(|_| text.starts_with(|c: char| c.is_ascii_digit()))
                .filter(|d| !d.is_zero());
        }
    };
    let value = parse_decimal(number)? * seconds;
    (value > 0.0 && value <= 86_400.0).then(|| Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_budget_is_the_default() {
        let budgets = Budgets::default();
        let any = budgets.for_route("GET", "/anything").unwrap();
        assert_eq!(any.p95_target(), Some(Duration::from_millis(500)));
        assert_eq!(any.error_ratio_target(), Some(0.01));
        assert_eq!((budgets.cpu(), budgets.memory()), (Some(0.7), Some(0.8)));
        assert_eq!(
            budgets.to_string(),
            "none; *: p95<500ms, errors<1%; cpu<70%; memory<80%"
        );
        assert_eq!(Budgets::none().for_route("GET", "/"), None);
    }

    #[test]
    fn the_syntax_of_the_issue_parses() {
        let budgets =
            Budgets::parse("GET /items/{id}: p95<500ms, p99<1s, errors<1%; cpu<70%; memory<80%")
                .unwrap();
        let items = budgets.for_route("GET", "/items/{id}").unwrap();
        assert_eq!(items.p95_target(), Some(Duration::from_millis(500)));
        assert_eq!(items.p99_target(), Some(Duration::from_secs(1)));
        assert_eq!(items.error_ratio_target(), Some(0.01));
        assert_eq!(
            budgets.for_route("POST", "/items/{id}"),
            budgets.any_route()
        );
    }

    #[test]
    fn routes_methods_wildcards_units_and_none() {
        let budgets = Budgets::parse(
            " none ; /health: p99 < 50ms ;GET /a/:id: p95<=1.5s; *: p95<0.8s, errors<0.005 ; \
             POST /orders: errors<0.5 %; CPU<0.6",
        )
        .unwrap();
        assert_eq!(budgets.memory(), None);
        assert_eq!(budgets.cpu(), Some(0.6));
        assert_eq!(
            budgets.for_route("DELETE", "/health").unwrap().p99_target(),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            budgets.for_route("GET", "/a/:id").unwrap().p95_target(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            budgets
                .for_route("POST", "/orders")
                .unwrap()
                .error_ratio_target(),
            Some(0.005)
        );
        assert_eq!(
            budgets
                .for_route("GET", "/other")
                .unwrap()
                .error_ratio_target(),
            Some(0.005)
        );
        let round_trip = Budgets::parse(&budgets.to_string()).unwrap();
        assert_eq!(round_trip, budgets);
        // A later item for the same route replaces the earlier one.
        let budgets = Budgets::parse("GET /x: p95<1s; GET /x: p99<2s").unwrap();
        assert_eq!(budgets.routes().len(), 1);
        assert_eq!(budgets.routes()[0].p95_target(), None);
    }

    #[test]
    fn malformed_budgets_name_the_bad_part_and_what_was_expected() {
        for (text, part, expected) in [
            ("GET /x: p95>500ms", "p95>500ms", "a target such as"),
            ("GET /x: p95<fast", "fast", "a positive duration"),
            ("GET /x: p95<0ms", "0ms", "a positive duration"),
            ("GET /x: p90<1s", "p90<1s", "a target such as"),
            ("GET /x: errors<120%", "120%", "a percentage"),
            ("GET /x: errors<-1%", "-1%", "a percentage"),
            ("GET /x: errors<1.2", "1.2", "a percentage"),
            ("GET /x: p95<500ms,", "p95<500ms,", "a target such as"),
            ("GET /x:", "", "a target such as"),
            ("GET x: p95<1s", "GET x", "a route template"),
            ("get /x: p95<1s", "get /x", "a route template"),
            (": p95<1s", "", "a route template"),
            ("cpu>70%", "cpu>70%", "`[METHOD] /route"),
            ("cpu<lots", "lots", "a percentage"),
            ("cpu<0%", "0%", "a share above 0 %"),
            ("memory", "memory", "`[METHOD] /route"),
            ("latency<1s", "latency<1s", "`[METHOD] /route"),
        ] {
            let error = Budgets::parse(text).unwrap_err();
            let Error::InvalidBudget {
                part: got,
                expected: why,
                ..
            } = &error
            else {
                panic!("{text}: {error:?}");
            };
            assert_eq!(got, part, "{text}: {error}");
            assert!(why.contains(expected), "{text}: {error}");
            assert!(error.to_string().contains(&format!("{part:?}")), "{error}");
        }
        let mut budgets = Budgets::default();
        assert!(Budgets::parse("cpu<50%; GET /x: p95>1s").is_err());
        assert!(budgets.apply("cpu<50%; nonsense").is_err());
        assert_eq!(budgets.cpu(), Some(0.7), "nothing applied on error");
    }

    #[test]
    fn the_rust_api_validates_like_the_parser() {
        let mut budgets = Budgets::none();
        budgets
            .add(
                Budget::route("GET /items/{id}")
                    .p95(Duration::from_millis(500))
                    .error_ratio(0.01),
            )
            .unwrap();
        assert!(
            budgets.add(Budget::route("GET /items/{id}")).is_err(),
            "no target"
        );
        assert!(budgets
            .add(Budget::route("items").p95(Duration::from_secs(1)))
            .is_err());
        assert!(budgets.add(Budget::route("/x").error_ratio(2.0)).is_err());
        assert!(budgets
            .add(Budget::route("/x").p99(Duration::ZERO))
            .is_err());
        assert!(budgets.add(Budget::cpu(1.5)).is_err());
        assert!(budgets.add(Budget::memory(f64::NAN)).is_err());
        budgets.add(Budget::memory(0.9)).unwrap();
        assert_eq!(budgets.memory(), Some(0.9));
    }

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        const TOKENS: &[&str] = &[
            "GET",
            "/items/{id}",
            "*",
            ":",
            ";",
            ",",
            "p95",
            "p99",
            "errors",
            "<",
            "<=",
            ">",
            "500ms",
            "1s",
            "1.5s",
            "%",
            "0.",
            "cpu",
            "memory",
            "none",
            " ",
            "us",
            "min",
        ];

        proptest! {
            #[test]
            fn budgets_never_panic_and_stay_in_range(text in input_of(TOKENS)) {
                bounded("budgets", &text, || {
                    if let Ok(budgets) = Budgets::parse(&text) {
                        for share in budgets.cpu().into_iter().chain(budgets.memory()) {
                            assert!(share > 0.0 && share <= 1.0);
                        }
                        for route in budgets.routes().iter().chain(budgets.any_route()) {
                            assert!(route.error_ratio_target().is_none_or(|r| (0.0..=1.0).contains(&r)));
                            assert!(route.p95_target().is_none_or(|d| !d.is_zero()));
                        }
                        let text = budgets.to_string();
                        assert!(Budgets::parse(&text).is_ok(), "{text:?} does not parse back");
                    }
                });
            }
        }
    }
}
