//! `GET /metrics`: the Prometheus / OpenMetrics exposition, negotiated
//! from `Accept` (OpenMetrics when asked for), or forced with
//! `?format=openmetrics|prometheus`; gzip-compressed by the server's
//! compression layer when the scraper accepts it (Prometheus always does),
//! as Go's `promhttp` does.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{blocking, AppState};
use crate::metrics::ExpositionFormat;

pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let mut format = ExpositionFormat::negotiate(accept);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "format" && !value.trim().is_empty() {
            format = ExpositionFormat::parse(value.trim()).ok_or_else(|| {
                ApiError::bad_request(
                    format!("unknown format {value:?}"),
                    "format is prometheus (text 0.0.4) or openmetrics; by default it follows Accept",
                )
            })?;
        }
    }
    let metrics = state.caps.metrics.clone();
    // Formatting (and on a cold cache, sampling /proc) off the server
    // thread; the compression layer gzips it for scrapers that accept it.
    let body = blocking(move || metrics.encode(format)).await?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
