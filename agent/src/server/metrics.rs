//! `GET /metrics`: the Prometheus / OpenMetrics exposition, negotiated
//! from `Accept` (OpenMetrics when asked for), or forced with
//! `?format=openmetrics|prometheus`; gzip-compressed when the scraper
//! accepts it (Prometheus always does), as Go's `promhttp` does.

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
    let metrics = state.metrics.clone();
    let compress = accepts_gzip(&headers);
    // Formatting (and on a cold cache, sampling /proc) off the server thread.
    let (body, gzipped) = blocking(move || {
        let body = metrics.encode(format);
        let gzipped = compress.then(|| gzip(body.as_bytes())).flatten();
        (body, gzipped)
    })
    .await?;
    let mut response = match gzipped {
        Some(compressed) => {
            let mut response = compressed.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            response
        }
        None => body.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Ok(response)
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|param| {
                param
                    .trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused
                && ["gzip", "x-gzip", "*"]
                    .iter()
                    .any(|known| name.eq_ignore_ascii_case(known))
        })
}

/// The exposition compressed at the fastest level: text metrics shrink
/// about tenfold at a fraction of the cost of encoding them. `None` if the
/// encoder fails (it writes to memory, so it does not).
fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn gzip_is_negotiated_like_prometheus_and_browsers_ask() {
        assert!(accepts_gzip(&with("gzip")));
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("deflate, GZIP;q=0.5")));
        assert!(accepts_gzip(&with("*")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&with("br, deflate")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let text = "# TYPE up gauge\nup 1\n".repeat(1000);
        let compressed = gzip(text.as_bytes()).unwrap();
        assert!(compressed.len() * 10 < text.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }
}
