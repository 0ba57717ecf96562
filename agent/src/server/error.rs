//! HTTP errors: a status, a short message and a hint, as JSON — or as
//! `text/plain` with `X-Go-Pprof: 1` on the Go-compatible pprof paths, which
//! makes `go tool pprof` print the message instead of a parse error.
//! Details of internal failures are logged, never sent.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::retry_after_secs;
use crate::Error;

/// Marks a response rendered from an [`ApiError`], so the last-resort
/// error shaper leaves it alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rendered;

/// At most the first 40 characters of client input, for error messages.
pub(crate) fn clip(text: &str) -> &str {
    text.char_indices()
        .nth(40)
        .map_or(text, |(end, _)| &text[..end])
}

/// How an error is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorStyle {
    Json,
    GoPprof,
}

impl ErrorStyle {
    pub(crate) fn for_path(path: &str) -> Self {
        if path.starts_with("/debug/pprof") {
            ErrorStyle::GoPprof
        } else {
            ErrorStyle::Json
        }
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The request is malformed or out of range.
    BadRequest { message: String, hint: String },
    /// Missing or wrong bearer token.
    Unauthorized,
    /// Client address not in the allowlist.
    Forbidden,
    /// No such endpoint.
    NotFound { path: String },
    /// No such resource behind an existing endpoint.
    Missing { message: String, hint: String },
    /// Wrong method for an existing endpoint.
    MethodNotAllowed,
    /// The sampler is busy at another frequency.
    Conflict {
        message: String,
        retry_after: Duration,
    },
    /// The request conflicts with the host's state (a task dump that
    /// could hurt it).
    Refused { message: String, hint: String },
    /// The capability is not available in this build or on this platform.
    NotImplemented { message: String, hint: String },
    /// Temporarily unavailable (another profiler owns SIGPROF, shutdown).
    Unavailable { message: String, hint: String },
    /// The request ran past its time limit.
    Timeout,
    /// The request body did not arrive within the body read timeout.
    RequestTimeout { timeout: Duration },
    /// The request body is larger than the endpoint accepts.
    PayloadTooLarge { limit: usize },
    /// As many CPU profiles as the server runs at once are running.
    TooManyProfiles {
        running: usize,
        retry_after: Duration,
    },
    /// Every connection slot is handling a request (answered at accept).
    ConnectionsFull { max: usize },
    /// An internal failure; details were logged.
    Internal,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::Missing { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } | ApiError::Refused { .. } => StatusCode::CONFLICT,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyProfiles { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ConnectionsFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message_and_hint(&self) -> (String, String) {
        match self {
            ApiError::BadRequest { message, hint }
            | ApiError::Missing { message, hint }
            | ApiError::Refused { message, hint }
            | ApiError::NotImplemented { message, hint }
            | ApiError::Unavailable { message, hint } => (message.clone(), hint.clone()),
            ApiError::Unauthorized => (
                "unauthorized".into(),
                "send the agent's token as 'Authorization: Bearer <token>'".into(),
            ),
            ApiError::Forbidden => (
                "forbidden".into(),
                "this client address is not in the agent's allowlist".into(),
            ),
            ApiError::NotFound { path } => (
                format!("no endpoint at {path}"),
                "see /debug/pprof/ for the profiles; /debug/use, /debug/red, /debug/lag, /debug/runtime, /debug/spans, /debug/log-level and /metrics for the other signals".into(),
            ),
            ApiError::MethodNotAllowed => (
                "method not allowed".into(),
                "see docs/endpoints.md for each endpoint's methods".into(),
            ),
            ApiError::Conflict {
                message,
                retry_after,
            } => (
                message.clone(),
                format!(
                    "retry in {} s, or use the running frequency",
                    retry_after_secs(*retry_after)
                ),
            ),
            ApiError::Timeout => (
                "the request took too long".into(),
                "ask for a shorter profile".into(),
            ),
            ApiError::RequestTimeout { timeout } => (
                "the request body did not arrive in time".into(),
                format!(
                    "send the whole body within {} s of the headers",
                    retry_after_secs(*timeout)
                ),
            ),
            ApiError::PayloadTooLarge { limit } => (
                "the request body is too large".into(),
                format!("this endpoint accepts at most {limit} bytes"),
            ),
            ApiError::TooManyProfiles {
                running,
                retry_after,
            } => (
                format!("{running} CPU profiles are running, as many as this agent runs at once"),
                format!(
                    "retry in {} s, when the first of them ends",
                    retry_after_secs(*retry_after)
                ),
            ),
            ApiError::ConnectionsFull { max } => (
                format!("all {max} debug connections are serving requests"),
                "retry in a second".into(),
            ),
            ApiError::Internal => (
                "internal error".into(),
                "the agent logged the details".into(),
            ),
        }
    }

    /// The JSON body of the error.
    fn json_body(&self) -> Vec<u8> {
        let (message, hint) = self.message_and_hint();
        serde_json::to_vec(&serde_json::json!({ "error": message, "hint": hint }))
            .unwrap_or_default()
    }

    /// A complete HTTP/1.1 response that closes the connection, for
    /// refusals written at accept time before any request is read.
    pub(crate) fn raw_response(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.json_body();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let ApiError::ConnectionsFull { .. } = self {
            head.push_str("retry-after: 1\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Renders the error in `style`.
    pub(crate) fn render(self, style: ErrorStyle) -> Response {
        let status = self.status();
        let (message, hint) = self.message_and_hint();
        let mut response = match style {
            ErrorStyle::Json => (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                self.json_body(),
            )
                .into_response(),
            ErrorStyle::GoPprof => {
                let mut response = (status, format!("{message}\nhint: {hint}\n")).into_response();
                response
                    .headers_mut()
                    .insert("x-go-pprof", HeaderValue::from_static("1"));
                response
            }
        };
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"stethoscope\""),
                );
            }
            ApiError::Conflict { retry_after, .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            ApiError::TooManyProfiles { retry_after, .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            ApiError::ConnectionsFull { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            ApiError::RequestTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.extensions_mut().insert(Rendered);
        response
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            busy @ Error::ProfilerBusy { retry_after, .. } => ApiError::Conflict {
                message: busy.to_string(),
                retry_after,
            },
            Error::InvalidRequest(reason) => ApiError::bad_request(reason, "see /debug/pprof/"),
            Error::Unsupported { what, reason } => ApiError::NotImplemented {
                message: format!("{what} is not supported here"),
                hint: reason.into(),
            },
            Error::HeapUnavailable { reason, hint } => ApiError::NotImplemented {
                message: format!("heap profiling is unavailable: {reason}"),
                hint: hint.into(),
            },
            Error::SnapshotNotFound { id, known } => ApiError::Missing {
                message: format!("no heap snapshot {id}"),
                hint: if known.is_empty() {
                    "no snapshots are kept; take one with POST /debug/heap/snapshots".to_owned()
                } else {
                    let ids: Vec<String> = known.iter().map(u64::to_string).collect();
                    format!("known snapshot ids: {}", ids.join(", "))
                },
            },
            Error::ForeignProfiler(reason) => ApiError::Unavailable {
                message: "another profiler is active in this process".into(),
                hint: reason.into(),
            },
            Error::SamplerStopped => ApiError::Unavailable {
                message: "the profiler stopped (agent shutting down)".into(),
                hint: "retry once the agent is up".into(),
            },
            off @ Error::ContinuousProfilingOff => ApiError::bad_request(
                off.to_string(),
                "start the agent with AgentBuilder::continuous_profiling(19) or \
                 STETHOSCOPE_CONTINUOUS_HZ=19; without it, profile the next seconds with ?seconds=30",
            ),
            since @ Error::InvalidSince { .. } => ApiError::bad_request(
                since.to_string(),
                "since is a time relative to now (-90s, -5m, -1h30m) or an RFC 3339 time \
                 (2024-05-01T12:00:00Z)",
            ),
            Error::UnknownSeries { name, known } => ApiError::bad_request(
                format!("unknown series {:?}", clip(&name)),
                format!("series is a comma-separated list of: {known}"),
            ),
            budget @ Error::InvalidBudget { .. } => ApiError::bad_request(
                budget.to_string(),
                "a budget reads like GET /items/{id}: p95<500ms, errors<1%; cpu<70%",
            ),
            Error::TaskDumpRefused { reason, hint } => ApiError::Refused {
                message: format!("task dump refused: {reason}"),
                hint: hint.into(),
            },
            timed_out @ Error::TaskDumpTimedOut(_) => ApiError::Unavailable {
                message: timed_out.to_string(),
                hint: "a worker may be stuck: /debug/runtime?format=text and /debug/threads show \
                       the stacks; task dumps stay off until the service restarts (tokio#6343)"
                    .into(),
            },
            Error::StackCapture(source) => ApiError::Unavailable {
                message: format!(
                    "the threads' stacks cannot be captured: {}",
                    crate::error::one_line(source.as_ref())
                ),
                hint: "/debug/runtime lists the workers; a CPU or wall-clock profile \
                       (/debug/pprof/profile?mode=wall) samples stacks another way"
                    .into(),
            },
            other => {
                tracing::error!(error = %other, source = ?std::error::Error::source(&other), "request failed");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(ErrorStyle::Json)
    }
}

/// An [`ApiError`] on a Go-compatible pprof path.
#[derive(Debug)]
pub(crate) struct PprofError(pub(crate) ApiError);

impl<E: Into<ApiError>> From<E> for PprofError {
    fn from(error: E) -> Self {
        PprofError(error.into())
    }
}

impl IntoResponse for PprofError {
    fn into_response(self) -> Response {
        self.0.render(ErrorStyle::GoPprof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let error = Error::Os {
            call: "setitimer",
            source: std::io::Error::other("secret detail"),
        };
        let (message, hint) = ApiError::from(error).message_and_hint();
        assert!(!message.contains("secret") && !hint.contains("secret"));
    }

    #[test]
    fn style_follows_the_path() {
        assert_eq!(
            ErrorStyle::for_path("/debug/pprof/profile"),
            ErrorStyle::GoPprof
        );
        assert_eq!(ErrorStyle::for_path("/health"), ErrorStyle::Json);
    }
}
