//! `GET/PUT /debug/log-level`: the tracing filter's directive, changed at
//! runtime with an optional `ttl`. Without a filter wired in by the host,
//! GET answers `installed: false` with the how-to and PUT 501.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::access::Peer;
use super::error::ApiError;
use super::usage::json_response;
use super::{blocking, AppState};
use crate::config::MAX_LOG_DIRECTIVE_BYTES;
use crate::profile::rfc3339;
use crate::spans::{parse_ttl, LogLevelStatus};
use crate::Error;

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
    use std::time::Duration;

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
}
