//! gzip for large responses when the client accepts it (`curl --compressed`,
//! browsers, Prometheus): flame graphs, folded stacks, JSON and text
//! reports shrink five- to twentyfold. Compression runs on the agent's
//! blocking pool.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

/// Responses smaller than this are sent as they are: gzip would save less
/// than its own header and the CPU it costs.
const MIN_COMPRESSED_BYTES: usize = 1024;

/// Compresses the response body when the request accepts gzip, the body is
/// large enough, of a textual type, and not encoded already (pprof is a
/// gzip file by itself and is left alone).
pub(crate) async fn gzip_large_responses(request: Request, next: Next) -> Response {
    let wanted = accepts_gzip(request.headers());
    let response = next.run(request).await;
    if !wanted || !compressible(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(%error, "debug response body failed before compression");
            return Response::from_parts(parts, Body::empty());
        }
    };
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if bytes.len() < MIN_COMPRESSED_BYTES {
        return Response::from_parts(parts, Body::from(bytes));
    }
    if bytes.len() as u64 >= crate::memory::LARGE_RESPONSE_BYTES {
        // Sent small, but made large: the connection trims after it.
        parts.extensions.insert(super::limits::LargeReport);
    }
    let original = bytes.clone();
    match super::blocking(move || gzip(&bytes)).await {
        Ok(Some(compressed)) => {
            parts
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(compressed))
        }
        _ => Response::from_parts(parts, Body::from(original)),
    }
}

/// Whether a response's type is text that compresses well and it carries
/// no encoding of its own.
fn compressible(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let Some(kind) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let kind = kind.split(';').next().unwrap_or_default().trim();
    kind.starts_with("text/")
        || kind == "application/json"
        || kind == "image/svg+xml"
        || kind == "application/openmetrics-text"
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
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

/// `body` compressed at the fastest level: text reports shrink about
/// tenfold at a fraction of the cost of producing them. `None` if the
/// encoder fails (it writes to memory, so it does not).
pub(crate) fn gzip(body: &[u8]) -> Option<Vec<u8>> {
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
    fn only_textual_unencoded_types_are_compressed() {
        let mut headers = HeaderMap::new();
        for (kind, expected) in [
            ("image/svg+xml", true),
            ("text/plain; charset=utf-8", true),
            ("application/json", true),
            ("text/plain; version=0.0.4; charset=utf-8", true),
            ("application/octet-stream", false),
            ("application/vnd.google.protobuf+gzip", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            assert_eq!(compressible(&headers), expected, "{kind}");
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!compressible(&headers), "already encoded");
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

    mod properties {
        use super::*;
        use crate::testing::{bounded, input_of};
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn accept_encodings_never_panic(value in input_of(&["gzip", "br", ";", "q=", "0", "1.0", ",", "*", " ", "x-gzip"])) {
                bounded("accept-encoding", &value, || {
                    if let Ok(header) = HeaderValue::from_str(&value) {
                        let mut headers = HeaderMap::new();
                        headers.insert(header::ACCEPT_ENCODING, header);
                        let _ = accepts_gzip(&headers);
                    }
                });
            }
        }
    }
}
