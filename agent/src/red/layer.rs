//! The tower layer: times each request, reads the route template axum
//! recorded, and records the outcome when the response head is ready.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::inflight::Ticket;
use super::recorder::{method_label, RedMetrics, STATUS_ERROR};
use super::UNMATCHED_ROUTE;
use crate::labels::{Labelled, Labels};

/// A tower [`Layer`] that records rate, errors and duration per
/// (method, route template, status) — the RED method. Get one from
/// [`Agent::red_layer`](crate::Agent::red_layer) (or
/// [`RedMetrics::layer`]) and add it with axum's `Router::layer`:
///
/// ```
/// use axum::{routing::get, Router};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stethoscope::Error> {
/// let agent = stethoscope::Agent::builder().listen("127.0.0.1:0").start()?;
/// let app: Router = Router::new()
///     .route("/items/{id}", get(|| async { "item" }))
///     .layer(agent.red_layer());
/// # let _ = app;
/// # agent.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// The route label is axum's [`MatchedPath`] (the template, such as
/// `/items/{id}`), never the raw path; requests no route matched are
/// recorded under [`UNMATCHED_ROUTE`](super::UNMATCHED_ROUTE). Added with
/// `Router::route_layer` instead, unmatched requests are not recorded at
/// all. Duration ends when the inner service returns the response head
/// (the handler's time), not when a streamed body finishes.
///
/// Every request's future also runs with the labels `route` (the same
/// template, or `<unmatched>`) and `method`, so CPU and wall-clock profiles
/// can be split by route (`by=route`, `go tool pprof -tagfocus`) with no
/// further code; see [`crate::labels`].
///
/// Cost: two clock reads, one shared (read) lock of a shard, one lookup in
/// the label table (a shared lock) and a few relaxed atomic increments per
/// request, two thread-local stores per poll; no allocation once a series
/// exists. See `docs/overhead.md`.
#[derive(Debug, Clone)]
pub struct RedLayer {
    metrics: RedMetrics,
}

impl RedLayer {
    pub(crate) fn new(metrics: RedMetrics) -> Self {
        RedLayer { metrics }
    }
}

impl<S> Layer<S> for RedLayer {
    type Service = RedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RedService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RedLayer`] wraps around an inner service.
#[derive(Debug, Clone)]
pub struct RedService<S> {
    inner: S,
    metrics: RedMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RedService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = method_label(request.method().as_str());
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let route = matched.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        // Sorted by key, as the table wants them.
        let labels = Labels {
            id: crate::labels::intern_sorted(&[("method", method), ("route", route)]),
        };
        let started = Instant::now();
        let pending = Pending {
            in_flight: self.metrics.request_started(labels.id, started),
            metrics: self.metrics.clone(),
            method,
            route: matched,
            started,
        };
        ResponseFuture {
            inner: labels.instrument(self.inner.call(request)),
            pending: Some(pending),
        }
    }
}

#[derive(Debug)]
struct Pending {
    /// The request's place among those in flight, given back when the
    /// request finishes or its future is dropped.
    #[allow(dead_code)] // held for its Drop
    in_flight: Ticket,
    metrics: RedMetrics,
    method: &'static str,
    route: Option<MatchedPath>,
    started: Instant,
}

impl Pending {
    fn finish(self, status: u16) {
        let now = Instant::now();
        self.metrics.record_at(
            self.method,
            self.route.as_ref().map(MatchedPath::as_str),
            status,
            now.saturating_duration_since(self.started),
            now,
        );
    }
}

pin_project! {
    /// The future of [`RedService`]: the inner future, timed and labelled
    /// with its `route` and `method`.
    ///
    /// A request whose future is dropped before it completes (the client
    /// went away) is not recorded; one whose handler panics is recorded as
    /// an error with status `"error"`.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Labelled<F>,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(pending) = this.pending.take() {
                if std::thread::panicking() {
                    pending.finish(STATUS_ERROR);
                }
            }
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = match this.inner.poll(cx) {
            Poll::Ready(output) => output,
            Poll::Pending => return Poll::Pending,
        };
        if let Some(pending) = this.pending.take() {
            let status = match &output {
                Ok(response) => response.status().as_u16(),
                Err(_) => STATUS_ERROR,
            };
            pending.finish(status);
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[tokio::test]
    async fn records_templates_statuses_and_unmatched_requests() {
        let metrics = RedMetrics::new();
        let app = Router::new()
            .route("/items/{id}", get(|| async { "ok" }))
            .route(
                "/fail",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no") }),
            )
            .layer(metrics.layer());
        for uri in ["/items/1", "/items/2", "/fail", "/nope/secret-token"] {
            let response = app
                .clone()
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let _ = response.status();
        }
        let report = metrics.report();
        let find = |route: &str| report.routes.iter().find(|r| r.route == route).unwrap();
        assert_eq!(find("/items/{id}").requests, 2);
        assert_eq!(find("/fail").errors, 1);
        assert_eq!(find(super::super::UNMATCHED_ROUTE).statuses["404"], 1);
        assert!(report.routes.iter().all(|r| !r.route.contains("secret")));
    }

    #[tokio::test]
    async fn handlers_run_with_route_and_method_labels() {
        let metrics = RedMetrics::new();
        let labels_of = || async { crate::labels::Labels::current().set().to_string() };
        let app = Router::new()
            .route("/items/{id}", get(labels_of))
            .fallback(labels_of)
            .layer(metrics.layer());
        for (uri, expected) in [
            ("/items/7", "method=GET,route=/items/{id}"),
            ("/elsewhere", "method=GET,route=<unmatched>"),
        ] {
            let response = app
                .clone()
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
            assert_eq!(&body[..], expected.as_bytes());
        }
        assert_eq!(crate::labels::Labels::current(), crate::labels::Labels::none());
    }

    #[tokio::test]
    async fn a_failing_inner_service_counts_as_an_error() {
        let metrics = RedMetrics::new();
        let service = tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, _>(std::io::Error::other("boom"))
        });
        let result = metrics
            .layer()
            .layer(service)
            .oneshot(Request::post("/x").body(Body::empty()).unwrap())
            .await;
        assert!(result.is_err());
        let report = metrics.report();
        assert_eq!(report.routes[0].statuses["error"], 1);
        assert_eq!(report.routes[0].errors, 1);
    }
}
