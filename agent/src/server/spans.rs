//! The tracing integration's endpoints: `GET /debug/spans` (span timings
//! and the slow-span log, JSON or a text table) and `GET/PUT
//! /debug/log-level` (the filter's directive, changed at runtime with an
//! optional `ttl`). Without the pieces wired in by the host, GETs answer
//! `installed: false` with the how-to and PUT 501.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

use super::access::Peer;
use super::error::ApiError;
use super::query::{Query, ReportView};
use super::response::{json_response, report_response};
use super::{blocking, AppState};
use crate::config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::spans::MAX_LOG_DIRECTIVE_BYTES;
use crate::spans::{parse_ttl, LogLevelStatus, SpanSummary};
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
    pub(crate) view: ReportView,
    pub(crate) sort: SpanSort,
    /// Slow spans listed.
    pub(crate) limit: usize,
    /// Only spans of this name.
    pub(crate) name: Option<String>,
}

pub(crate) fn spans_params(query: &Query) -> Result<SpansParams, ApiError> {
    Ok(SpansParams {
        view: query.report_view()?,
        sort: query.choice(
            "sort",
            SpanSort::Time,
            &[
                ("time", SpanSort::Time),
                ("total", SpanSort::Time),
                ("p99", SpanSort::P99),
                ("count", SpanSort::Count),
                ("errors", SpanSort::Errors),
                ("name", SpanSort::Name),
            ],
        )?,
        limit: query.number("limit", DEFAULT_LIST_LIMIT, 1..=MAX_LIST_LIMIT)?,
        name: query.get("name").map(str::to_owned),
    })
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
    query: Query,
) -> Result<Response, ApiError> {
    let params = spans_params(&query)?;
    let mut report = match state.caps.spans.clone() {
        Some(timings) => blocking(move || timings.report()).await?,
        None => {
            let mut report = crate::spans::SpanTimings::new().report();
            report.hint = Some(SPANS_HOWTO);
            report
        }
    };
    if let Some(name) = &params.name {
        report.spans.retain(|s| s.name == name);
        report.slowest.retain(|s| s.name == name);
    }
    sort_spans(&mut report.spans, params.sort);
    report.slowest.truncate(params.limit);
    Ok(report_response(&report, params.view))
}

const LOG_LEVEL_HOWTO: &str =
    "create the filter with stethoscope::spans::log_filter, install it in \
     the service's subscriber and pass the LogLevel to AgentBuilder::log_level (docs/embedding.md)";

const DIRECTIVE_HINT: &str = "a directive is RUST_LOG syntax: a level (info), target=level pairs \
     (info,my_service::db=debug) or span filters (warn,[request{id=7}]=trace); send it as the body, \
     or as {\"directive\": \"…\", \"ttl\": \"10m\"}";

const TTL_HINT: &str = "ttl is a duration such as 30s, 10m or 1h30m (a bare number is seconds), \
     at most 24h";

/// The answer of `/debug/log-level`: the status, and whether (and how)
/// the filter is wired in.
#[derive(Debug, serde::Serialize)]
struct LogLevelAnswer<'a> {
    installed: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    status: Option<&'a LogLevelStatus>,
    /// The directive a PUT replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'static str>,
}

const DROPPED_HINT: &str = "the filter was dropped: it is not part of the installed subscriber; \
     install the layer log_filter returned";

/// `GET /debug/log-level`.
pub(crate) async fn log_level(State(state): State<AppState>) -> Response {
    match &state.caps.log_level {
        Some(level) => {
            let status = level.status();
            json_response(&LogLevelAnswer {
                installed: true,
                status: Some(&status),
                previous: None,
                hint: (!status.active).then_some(DROPPED_HINT),
            })
        }
        None => json_response(&LogLevelAnswer {
            installed: false,
            status: None,
            previous: None,
            hint: Some(LOG_LEVEL_HOWTO),
        }),
    }
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
pub(crate) fn parse_change(query: &Query, body: &[u8]) -> Result<LevelChange, ApiError> {
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
    let query_ttl = query.get("ttl").map(str::to_owned);
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
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(level) = state.caps.log_level.clone() else {
        return Err(ApiError::NotImplemented {
            message: "no log filter is wired into the agent".into(),
            hint: LOG_LEVEL_HOWTO.into(),
        });
    };
    let change = parse_change(&query, &body)?;
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
    Ok(json_response(&LogLevelAnswer {
        installed: true,
        status: Some(&change.status),
        previous: Some(&change.previous),
        hint: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn q(raw: Option<&str>) -> Query {
        Query::parse(raw)
    }

    #[test]
    fn plain_and_json_bodies_with_ttl_in_either_place() {
        let plain = parse_change(&q(Some("ttl=10m")), b" info,db=debug\n").unwrap();
        assert_eq!(plain.directive, "info,db=debug");
        assert_eq!(plain.ttl, Some(Duration::from_secs(600)));
        let json = parse_change(&q(None), br#"{"directive":"debug","ttl":"30s"}"#).unwrap();
        assert_eq!(
            (json.directive.as_str(), json.ttl),
            ("debug", Some(Duration::from_secs(30)))
        );
        let seconds = parse_change(&q(None), br#"{"directive":"debug","ttl":90}"#).unwrap();
        assert_eq!(seconds.ttl, Some(Duration::from_secs(90)));
        let same = parse_change(&q(Some("ttl=30s")), br#"{"directive":"debug","ttl":"30s"}"#);
        assert!(same.is_ok());
        assert_eq!(parse_change(&q(None), b"warn").unwrap().ttl, None);
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
            let result = parse_change(&q(query), body);
            assert!(
                matches!(result, Err(ApiError::BadRequest { .. })),
                "{query:?} {body:?}: {result:?}"
            );
        }
    }

    #[test]
    fn spans_parameters_are_checked() {
        let params =
            spans_params(&q(Some("format=text&sort=p99&limit=5&other=x&name=db"))).unwrap();
        assert_eq!(
            params,
            SpansParams {
                view: ReportView::Text,
                sort: SpanSort::P99,
                limit: 5,
                name: Some("db".into()),
            }
        );
        assert_eq!(spans_params(&q(None)).unwrap().sort, SpanSort::Time);
        for bad in [
            "format=svg",
            "sort=fast",
            "limit=0",
            "limit=x",
            "limit=100000",
        ] {
            assert!(
                matches!(
                    spans_params(&q(Some(bad))),
                    Err(ApiError::BadRequest { .. })
                ),
                "{bad}"
            );
        }
    }
}
