//! What bounds a request once its connection is admitted: the time its body
//! may take to arrive and its size, the time its handler may run, and the
//! shape of every error on the way out — including the rejections axum and
//! hyper produce themselves, which get the agent's `{"error","hint"}` (or
//! Go-style text) like every other error.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use super::connections::Connection;
use super::error::{ApiError, ErrorStyle, Rendered};

/// Largest request body most endpoints accept (a JSON toggle, a budget).
pub(crate) const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Largest request body `/debug/pprof/symbol` (and `/symbolz`) accepts
/// (≈ 50,000 addresses).
pub(crate) const SYMBOL_BODY_LIMIT: usize = 1 << 20;

/// The connection a request arrived on, so the body reader can mark when
/// the request is complete.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionPhase(pub(crate) Arc<Connection>);

fn body_limit(path: &str) -> usize {
    if path == "/debug/pprof/symbol" || path == "/symbolz" {
        SYMBOL_BODY_LIMIT
    } else {
        DEFAULT_BODY_LIMIT
    }
}

/// Reads a request's whole body within `timeout` (408 otherwise) and at
/// most the endpoint's limit (413), before any handler sees it. A client
/// that announces a body and sends it slowly holds an evictable connection
/// meanwhile, and never a handler.
pub(crate) async fn read_body(timeout: Duration, request: Request, next: Next) -> Response {
    let phase = request.extensions().get::<ConnectionPhase>().cloned();
    let style = ErrorStyle::for_path(request.uri().path());
    let limit = body_limit(request.uri().path());
    let (parts, body) = request.into_parts();
    let request = if body.is_end_stream() {
        Request::from_parts(parts, body)
    } else {
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit as u64) {
            return ApiError::PayloadTooLarge { limit }.render(style);
        }
        let limited = http_body_util::Limited::new(body, limit);
        match tokio::time::timeout(timeout, limited.collect()).await {
            Ok(Ok(collected)) => Request::from_parts(parts, Body::from(collected.to_bytes())),
            Ok(Err(error)) => {
                return if error.is::<http_body_util::LengthLimitError>() {
                    ApiError::PayloadTooLarge { limit }.render(style)
                } else {
                    tracing::debug!(%error, "debug request body could not be read");
                    ApiError::bad_request(
                        "the request body could not be read",
                        "send the whole body with a correct Content-Length",
                    )
                    .render(style)
                };
            }
            Err(_) => return ApiError::RequestTimeout { timeout }.render(style),
        }
    };
    if let Some(ConnectionPhase(connection)) = phase {
        connection.handling();
    }
    next.run(request).await
}

/// Cuts a handler off after `limit` (503).
pub(crate) async fn time_limited(limit: Duration, request: Request, next: Next) -> Response {
    let style = ErrorStyle::for_path(request.uri().path());
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.render(style),
    }
}

/// Gives every error response the agent's shape: responses that did not
/// come from [`ApiError`] (axum's extractor rejections, its method router)
/// are replaced by the `ApiError` of their status, so no client sees a bare
/// text rejection or an internal type name.
pub(crate) async fn uniform_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Rendered>().is_some()
    {
        return response;
    }
    let style = ErrorStyle::for_path(&path);
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound { path },
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            limit: body_limit(&path),
        },
        StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::bad_request(
            "unsupported content type",
            "send JSON with Content-Type: application/json, or plain text where the endpoint takes it",
        ),
        status if status.is_server_error() => {
            tracing::error!(%method, %path, %status, "a debug endpoint failed without an agent error");
            ApiError::Internal
        }
        _ => {
            // The rejection's own text names extractor internals: log it, do
            // not send it.
            let detail = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            tracing::debug!(%method, %path, %detail, "debug request rejected");
            ApiError::bad_request(
                "the request could not be understood",
                "check the URL (percent-escapes must decode to UTF-8, ids are whole numbers) and that the body is UTF-8",
            )
        }
    };
    error.render(style)
}

/// A response body that tells its connection when it has been written
/// completely (hyper drops it then), so the connection becomes idle again;
/// a large one also has the connection hand the memory the agent freed
/// back to the OS when it ends ([`crate::memory`]).
#[derive(Debug)]
pub(crate) struct PhaseBody {
    inner: Body,
    connection: Arc<Connection>,
    large: bool,
}

/// Marks a response whose report was large before compression.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LargeReport;

impl PhaseBody {
    /// Wraps `response`'s body.
    pub(crate) fn wrap(response: Response, connection: Arc<Connection>) -> Response {
        let made_large = response.extensions().get::<LargeReport>().is_some();
        response.map(|body| Body::new(PhaseBody::new(body, connection, made_large)))
    }

    fn new(inner: Body, connection: Arc<Connection>, made_large: bool) -> Self {
        connection.sending();
        let large = made_large
            || inner
                .size_hint()
                .exact()
                .is_some_and(|bytes| bytes >= crate::memory::LARGE_RESPONSE_BYTES);
        PhaseBody {
            inner,
            connection,
            large,
        }
    }
}

impl HttpBody for PhaseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PhaseBody {
    fn drop(&mut self) {
        self.connection.idle();
        if self.large {
            // hyper may still hold the last chunk: the memory is handed
            // back when the connection ends.
            self.connection.served_large();
        }
    }
}

/// Whether a request only asks for the headers of what `GET` would send:
/// expensive endpoints answer it without doing the work.
pub(crate) fn is_head(method: &Method) -> bool {
    method == Method::HEAD
}

/// The CPU profiles this server runs at once, capped below the connection
/// limit so that long requests never take every connection.
#[derive(Debug)]
pub(crate) struct ProfileSlots {
    max: usize,
    /// When each running profile's window ends.
    running: std::sync::Mutex<Vec<(u64, std::time::Instant)>>,
    next: std::sync::atomic::AtomicU64,
}

/// A running profile's hold on its slot, released on drop (also when the
/// client goes away and the request is cancelled).
#[derive(Debug)]
pub(crate) struct ProfileSlot {
    slots: Arc<ProfileSlots>,
    id: u64,
}

impl ProfileSlots {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(ProfileSlots {
            max: max.max(1),
            running: std::sync::Mutex::new(Vec::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Takes a slot for a profile of `window`, or says when one frees up.
    pub(crate) fn acquire(self: &Arc<Self>, window: Duration) -> Result<ProfileSlot, ApiError> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if running.len() >= self.max {
            let first_end = running.iter().map(|(_, end)| *end).min().unwrap_or(now);
            return Err(ApiError::TooManyProfiles {
                running: running.len(),
                retry_after: first_end.saturating_duration_since(now),
            });
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        running.push((id, now + window));
        Ok(ProfileSlot {
            slots: Arc::clone(self),
            id,
        })
    }

    /// Profiles running now.
    pub(crate) fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

impl Drop for ProfileSlot {
    fn drop(&mut self) {
        let mut running = self
            .slots
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        running.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_slots_are_capped_and_released() {
        let slots = ProfileSlots::new(2);
        let a = slots.acquire(Duration::from_secs(5)).unwrap();
        let _b = slots.acquire(Duration::from_secs(30)).unwrap();
        match slots.acquire(Duration::from_secs(1)) {
            Err(ApiError::TooManyProfiles {
                running,
                retry_after,
            }) => {
                assert_eq!(running, 2);
                assert!(
                    retry_after <= Duration::from_secs(5) && retry_after > Duration::from_secs(3)
                );
            }
            other => panic!("{other:?}"),
        }
        drop(a);
        assert_eq!(slots.running(), 1);
        assert!(slots.acquire(Duration::from_secs(1)).is_ok());
    }
}
