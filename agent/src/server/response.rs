//! The responses every endpoint builds its answer from: JSON of a report
//! type, a text report, a downloadable profile. None of them is cached.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use super::error::ApiError;
use super::query::ReportView;
use crate::profile::Format;

fn no_store(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A report as JSON (its type's `Serialize` is its shape).
pub(crate) fn json_response<T: serde::Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => no_store(Response::new(Body::from(body)), "application/json"),
        Err(error) => {
            tracing::error!(%error, "a report could not be serialized");
            ApiError::Internal.into_response()
        }
    }
}

/// A report in the view the request asked for: its JSON shape or its text.
pub(crate) fn report_response<R>(report: &R, view: ReportView) -> Response
where
    R: serde::Serialize + std::fmt::Display,
{
    match view {
        ReportView::Json => json_response(report),
        ReportView::Text => text_response(report.to_string()),
    }
}

/// A report as `text/plain`.
pub(crate) fn text_response(body: String) -> Response {
    no_store(Response::new(Body::from(body)), "text/plain; charset=utf-8")
}

/// A profile as a download with a `Content-Disposition` filename such as
/// `cpu-1763800000.pb.gz`, so that `curl -OJ` keeps it.
pub(crate) fn file_response(
    bytes: impl Into<Body>,
    format: Format,
    kind: &str,
    taken_at: SystemTime,
) -> Response {
    let ts = taken_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let disposition = if format == Format::Pprof {
        "attachment"
    } else {
        "inline"
    };
    let filename = format!(
        "{disposition}; filename=\"{kind}-{ts}.{}\"",
        format.extension()
    );
    let mut response = no_store(Response::new(bytes.into()), format.content_type());
    if let Ok(value) = HeaderValue::from_str(&filename) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The answer of an endpoint whose capability was compiled out.
#[cfg_attr(
    all(
        feature = "resources",
        feature = "red",
        feature = "metrics",
        feature = "runtime",
        feature = "spans"
    ),
    allow(dead_code)
)]
pub(crate) fn not_built(feature: &'static str) -> ApiError {
    ApiError::NotImplemented {
        message: format!("this endpoint is not part of this build (feature {feature:?} is off)"),
        hint: format!("build stethoscope with the {feature:?} feature (on by default)"),
    }
}

use axum::response::IntoResponse as _;
