//! The tracing integration's endpoints: `GET /debug/spans` (span timings
//! and the slow-span log, JSON or a text table) and `GET/PUT
//! /debug/log-level` (the filter's directive, changed at runtime with an
//! optional `ttl`). Without the pieces wired in by the host, GETs answer
//! `installed: false` with the how-to and PUT 501.

use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::access::Peer;
use super::error::ApiError;
use super::usage::{json_response, ms, text_response};
use super::{blocking, AppState};
use crate::config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_LOG_DIRECTIVE_BYTES};
use crate::profile::rfc3339;
use crate::spans::{parse_ttl, LogLevelStatus, SlowSpan, SpanReport, SpanSummary};
use crate::Error;

const SPANS_HOWTO: &str = "create stethoscope::spans::SpanTimings, add timings.layer() to the \
     service's subscriber and pass the timings to AgentBuilder::spans (docs/embedding.md)";

/// How `/debug/spans` ranks its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanSort {
    /// Sum of total time: where the time goes.
    Time,
    /// 99th percentile of total time: the slowest kinds of operation.
    P99,
    Count,
    Errors,
    Name,
}

/// Query of `/debug/spans`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpansParams {
    pub(crate) text: bool,
    pub(crate) sort: SpanSort,
    /// Slow spans listed.
    pub(crate) limit: usize,
    /// Only spans of this name.
    pub(crate) name: Option<String>,
}

pub(crate) fn spans_params(query: Option<&str>) -> Result<SpansParams, ApiError> {
    let mut params = SpansParams {
        text: false,
        sort: SpanSort::Time,
        limit: DEFAULT_LIST_LIMIT,
        name: None,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.trim();
        match key.as_ref() {
            "format" => {
                params.text = match value {
                    "" | "json" => false,
                    "text" | "txt" => true,
                    other => {
                        return Err(ApiError::bad_request(
                            format!("unknown format {other:?}"),
                            "format is json (default) or text",
                        ))
                    }
                }
            }
            "sort" => {
                params.sort = match value {
                    "" | "time" | "total" => SpanSort::Time,
                    "p99" => SpanSort::P99,
                    "count" => SpanSort::Count,
                    "errors" => SpanSort::Errors,
                    "name" => SpanSort::Name,
                    other => {
                        return Err(ApiError::bad_request(
                            format!("unknown sort {other:?}"),
                            "sort is time (total time spent, default), p99, count, errors or name",
                        ))
                    }
                }
            }
            "limit" => {
                params.limit = match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(
                            format!("limit={value} is out of range"),
                            format!("limit (slow spans listed) is a whole number from 1 to {MAX_LIST_LIMIT} (default {DEFAULT_LIST_LIMIT})"),
                        ))
                    }
                }
            }
            "name" if !value.is_empty() => params.name = Some(value.to_owned()),
            _ => {}
        }
    }
    Ok(params)
}

fn sort_spans(spans: &mut [SpanSummary], sort: SpanSort) {
    let by_name = |a: &SpanSummary, b: &SpanSummary| (a.name, a.target).cmp(&(b.name, b.target));
    spans.sort_by(|a, b| {
        match sort {
            SpanSort::Time => b.total_time.cmp(&a.total_time),
            SpanSort::P99 => b.total.p99.cmp(&a.total.p99),
            SpanSort::Count => b.count.cmp(&a.count),
            SpanSort::Errors => b.errors.cmp(&a.errors),
            SpanSort::Name => std::cmp::Ordering::Equal,
        }
        .then_with(|| by_name(a, b))
    });
}

/// `GET /debug/spans?format=json|text&sort=time|p99|count|errors|name&limit=N&name=SPAN`.
pub(crate) async fn spans(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = spans_params(query.as_deref())?;
    let Some(timings) = state.spans.clone() else {
        return Ok(not_installed(&params, SPANS_HOWTO));
    };
    let mut report = blocking(move || timings.report()).await?;
    if !report.installed {
        return Ok(not_installed(
            &params,
            "the span layer is not installed in a subscriber: add timings.layer() to it",
        ));
    }
    if let Some(name) = &params.name {
        report.spans.retain(|s| s.name == name);
        report.slowest.retain(|s| s.name == name);
    }
    sort_spans(&mut report.spans, params.sort);
    report.slowest.truncate(params.limit);
    Ok(if params.text {
        text_response(spans_text(&report))
    } else {
        json_response(spans_json(&report))
    })
}

fn not_installed(params: &SpansParams, hint: &str) -> Response {
    if params.text {
        text_response(format!("no span timings: {hint}\n"))
    } else {
        json_response(serde_json::json!({
            "installed": false,
            "hint": hint,
            "spans": [],
            "slowest": [],
        }))
    }
}

fn spans_json(report: &SpanReport) -> serde_json::Value {
    let settings = &report.settings;
    serde_json::json!({
        "installed": true,
        "slow_threshold_ms": ms(settings.slow_threshold),
        "slow_window_s": settings.slow_window.as_secs_f64(),
        "slowest_per_name": settings.slowest_per_name,
        "max_names": settings.max_names,
        "spans": report.spans.iter().map(|s| serde_json::json!({
            "target": s.target,
            "name": s.name,
            "count": s.count,
            "errors": s.errors,
            "error_ratio": s.error_ratio(),
            "total": s.total.to_json(),
            "busy": s.busy.to_json(),
            "total_time_ms": ms(s.total_time),
            "busy_time_ms": ms(s.busy_time),
        })).collect::<Vec<_>>(),
        "slowest": report.slowest.iter().map(slow_json).collect::<Vec<_>>(),
    })
}

fn slow_json(s: &SlowSpan) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = s
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect();
    serde_json::json!({
        "target": s.target,
        "name": s.name,
        "started_at": rfc3339(s.started_at),
        "total_ms": ms(s.total),
        "busy_ms": ms(s.busy),
        "error": s.error,
        "fields": fields,
        "fields_truncated": s.fields_truncated,
        "parents": s.parents,
    })
}

/// A duration in the unit that keeps three significant digits.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1e-3 {
        format!("{:.0}µs", secs * 1e6)
    } else if secs < 1e-2 {
        format!("{:.2}ms", secs * 1e3)
    } else if secs < 1.0 {
        format!("{:.1}ms", secs * 1e3)
    } else if secs < 60.0 {
        format!("{secs:.2}s")
    } else if secs < 3600.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

fn spans_text(report: &SpanReport) -> String {
    let mut out = String::new();
    let width = report
        .spans
        .iter()
        .map(|s| s.name.chars().count())
        .chain(report.slowest.iter().map(|s| s.name.chars().count()))
        .max()
        .unwrap_or(0)
        .clamp(4, 40);
    let _ = writeln!(
        out,
        "{:<width$} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  TARGET",
        "SPAN", "COUNT", "ERR%", "P50", "P99", "MAX", "BUSY P50", "BUSY P99", "TIME"
    );
    for s in &report.spans {
        let _ = writeln!(
            out,
            "{:<width$} {:>8} {:>6.2}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            clip(s.name, width),
            s.count,
            s.error_ratio() * 100.0,
            human(s.total.p50),
            human(s.total.p99),
            human(s.total.max),
            human(s.busy.p50),
            human(s.busy.p99),
            human(s.total_time),
            s.target,
        );
    }
    if report.spans.is_empty() {
        out.push_str("(no span has closed yet)\n");
    }
    let settings = &report.settings;
    let _ = writeln!(
        out,
        "\nSLOWEST: at least {} and closed in the last {}, up to {} per span name",
        human(settings.slow_threshold),
        human(settings.slow_window),
        settings.slowest_per_name
    );
    let _ = writeln!(
        out,
        "{:>9} {:>9} {:<5} {:<24} {:<width$}  FIELDS  (PARENTS)",
        "TOTAL", "BUSY", "ERROR", "STARTED", "SPAN"
    );
    for s in &report.slowest {
        let mut fields = String::new();
        for (key, value) in &s.fields {
            if !fields.is_empty() {
                fields.push(' ');
            }
            let _ = write!(fields, "{key}={value}");
        }
        let parents = if s.parents.is_empty() {
            String::new()
        } else {
            format!("  (in {})", s.parents.join(" < "))
        };
        let _ = writeln!(
            out,
            "{:>9} {:>9} {:<5} {:<24} {:<width$}  {}{}",
            human(s.total),
            human(s.busy),
            if s.error { "yes" } else { "" },
            rfc3339(s.started_at),
            clip(s.name, width),
            fields,
            parents,
        );
    }
    out
}

/// `name` cut to `width` characters.
fn clip(name: &str, width: usize) -> &str {
    match name.char_indices().nth(width) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

const LOG_LEVEL_HOWTO: &str =
    "create the filter with stethoscope::spans::log_filter, install it in \
     the service's subscriber and pass the LogLevel to AgentBuilder::log_level (docs/embedding.md)";

const DIRECTIVE_HINT: &str = "a directive is RUST_LOG syntax: a level (info), target=level pairs \
     (info,my_service::db=debug) or span filters (warn,[request{id=7}]=trace); send it as the body, \
     or as {\"directive\": \"…\", \"ttl\": \"10m\"}";

const TTL_HINT: &str = "ttl is a duration such as 30s, 10m or 1h30m (a bare number is seconds), \
     at most 24h";

fn status_json(status: &LogLevelStatus) -> serde_json::Value {
    let revert_in = status.revert_at.map(|at| {
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .as_secs_f64()
    });
    serde_json::json!({
        "installed": true,
        "active": status.active,
        "directive": status.directive,
        "origin": status.origin.as_str(),
        "set_at": rfc3339(status.set_at),
        "revert_at": status.revert_at.map(rfc3339),
        "revert_to": status.revert_to,
        "revert_in_s": revert_in,
    })
}

/// `GET /debug/log-level`.
pub(crate) async fn log_level(State(state): State<AppState>) -> Response {
    let body = match &state.log_level {
        Some(level) => {
            let mut body = status_json(&level.status());
            if body["active"] == false {
                body["hint"] =
                    "the filter was dropped: it is not part of the installed subscriber; \
                     install the layer log_filter returned"
                        .into();
            }
            body
        }
        None => serde_json::json!({ "installed": false, "hint": LOG_LEVEL_HOWTO }),
    };
    json_response(body)
}

/// What `PUT /debug/log-level` asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LevelChange {
    pub(crate) directive: String,
    pub(crate) ttl: Option<std::time::Duration>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    directive: String,
    #[serde(default)]
    ttl: Option<serde_json::Value>,
}

/// Reads the body (a plain directive, or JSON `{"directive", "ttl"}`) and
/// the `ttl` query parameter.
pub(crate) fn parse_change(query: Option<&str>, body: &[u8]) -> Result<LevelChange, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8", DIRECTIVE_HINT))?
        .trim();
    let (directive, body_ttl) = if text.starts_with('{') {
        let body: LevelBody = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request(format!("the body is not valid JSON: {e}"), DIRECTIVE_HINT)
        })?;
        let ttl = match body.ttl {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(ttl)) => Some(ttl),
            Some(serde_json::Value::Number(seconds)) => Some(seconds.to_string()),
            Some(other) => {
                return Err(ApiError::bad_request(
                    format!("ttl {other} is not a duration"),
                    TTL_HINT,
                ))
            }
        };
        (body.directive, ttl)
    } else {
        (text.to_owned(), None)
    };
    if directive.trim().is_empty() {
        return Err(ApiError::bad_request("no directive", DIRECTIVE_HINT));
    }
    if directive.len() > MAX_LOG_DIRECTIVE_BYTES {
        return Err(ApiError::bad_request(
            format!("the directive is longer than {MAX_LOG_DIRECTIVE_BYTES} bytes"),
            DIRECTIVE_HINT,
        ));
    }
    let mut query_ttl = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "ttl" && !value.trim().is_empty() {
            query_ttl = Some(value.into_owned());
        }
    }
    let ttl = match (body_ttl, query_ttl) {
        (Some(a), Some(b)) if a.trim() != b.trim() => {
            return Err(ApiError::bad_request(
                format!("two ttls: {a:?} in the body and {b:?} in the query"),
                "give ttl once",
            ))
        }
        (Some(ttl), _) | (None, Some(ttl)) => {
            Some(parse_ttl(&ttl).map_err(|message| ApiError::bad_request(message, TTL_HINT))?)
        }
        (None, None) => None,
    };
    Ok(LevelChange { directive, ttl })
}

/// `PUT /debug/log-level[?ttl=10m]` with the directive as the body.
pub(crate) async fn set_log_level(
    State(state): State<AppState>,
    Peer(peer): Peer,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(level) = state.log_level.clone() else {
        return Err(ApiError::NotImplemented {
            message: "no log filter is wired into the agent".into(),
            hint: LOG_LEVEL_HOWTO.into(),
        });
    };
    let change = parse_change(query.as_deref(), &body)?;
    // Reloading rebuilds tracing's interest cache: off the server thread.
    let result = blocking(move || level.set_by(&change.directive, change.ttl, peer)).await?;
    let change = result.map_err(|error| match error {
        Error::InvalidLogDirective { directive, source } => ApiError::bad_request(
            format!("invalid directive {directive:?}: {source}"),
            DIRECTIVE_HINT,
        ),
        Error::InvalidSetting { setting, reason } => {
            ApiError::bad_request(format!("{setting} {reason}"), DIRECTIVE_HINT)
        }
        Error::LogFilter(_) => ApiError::NotImplemented {
            message: "the log filter is not part of a live subscriber".into(),
            hint: LOG_LEVEL_HOWTO.into(),
        },
        other => other.into(),
    })?;
    let mut body = status_json(&change.status);
    body["previous"] = change.previous.into();
    Ok(json_response(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_json_bodies_with_ttl_in_either_place() {
        let plain = parse_change(Some("ttl=10m"), b" info,db=debug\n").unwrap();
        assert_eq!(plain.directive, "info,db=debug");
        assert_eq!(plain.ttl, Some(Duration::from_secs(600)));
        let json = parse_change(None, br#"{"directive":"debug","ttl":"30s"}"#).unwrap();
        assert_eq!(
            (json.directive.as_str(), json.ttl),
            ("debug", Some(Duration::from_secs(30)))
        );
        let seconds = parse_change(None, br#"{"directive":"debug","ttl":90}"#).unwrap();
        assert_eq!(seconds.ttl, Some(Duration::from_secs(90)));
        let same = parse_change(Some("ttl=30s"), br#"{"directive":"debug","ttl":"30s"}"#);
        assert!(same.is_ok());
        assert_eq!(parse_change(None, b"warn").unwrap().ttl, None);
    }

    #[test]
    fn malformed_changes_are_client_errors() {
        for (query, body) in [
            (None, &b""[..]),
            (None, b"  \n"),
            (None, b"\xff\xfe"),
            (None, br#"{"directive": 3}"#),
            (None, br#"{"directive":"info","level":"debug"}"#),
            (None, br#"{"directive":"info","ttl":true}"#),
            (Some("ttl=forever"), b"info"),
            (Some("ttl=0s"), b"info"),
            (Some("ttl=48h"), b"info"),
            (Some("ttl=1m"), br#"{"directive":"info","ttl":"2m"}"#),
        ] {
            let result = parse_change(query, body);
            assert!(
                matches!(result, Err(ApiError::BadRequest { .. })),
                "{query:?} {body:?}: {result:?}"
            );
        }
    }

    #[test]
    fn spans_parameters_are_checked() {
        let params = spans_params(Some("format=text&sort=p99&limit=5&other=x&name=db")).unwrap();
        assert_eq!(
            params,
            SpansParams {
                text: true,
                sort: SpanSort::P99,
                limit: 5,
                name: Some("db".into()),
            }
        );
        assert_eq!(spans_params(None).unwrap().sort, SpanSort::Time);
        for bad in [
            "format=svg",
            "sort=fast",
            "limit=0",
            "limit=x",
            "limit=100000",
        ] {
            assert!(
                matches!(spans_params(Some(bad)), Err(ApiError::BadRequest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn human_units_keep_three_digits() {
        assert_eq!(human(Duration::from_nanos(850_400)), "850µs");
        assert_eq!(human(Duration::from_micros(2_346)), "2.35ms");
        assert_eq!(human(Duration::from_micros(81_240)), "81.2ms");
        assert_eq!(human(Duration::from_millis(1_500)), "1.50s");
        assert_eq!(human(Duration::from_secs(900)), "15.0m");
        assert_eq!(human(Duration::from_secs(7200)), "2.0h");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("ab", 3), "ab");
    }
}
