//! The debug HTTP server: its own OS thread and single-threaded tokio
//! runtime, bounded connections, header timeouts, access control, and a
//! thin axum router over the capability modules.

mod access;
mod compress;
mod connections;
mod dashboard;
#[cfg(feature = "doctor")]
mod doctor;
mod error;
mod heap;
mod limits;
#[cfg(feature = "metrics")]
mod metrics;
mod pprof;
mod profiles;
mod query;
#[cfg(feature = "red")]
mod red;
#[cfg(feature = "resources")]
mod resources;
mod response;
#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "spans")]
mod spans;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, put};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch, Semaphore};
use tower::ServiceExt;

use crate::agent::Capabilities;
use crate::config::{Config, DEFAULT_REQUEST_GRACE};
use crate::Error;
pub(crate) use connections::ConnectionTable;
use error::{ApiError, ErrorStyle};
pub(crate) use limits::ProfileSlots;
use limits::{ConnectionPhase, PhaseBody};

/// What handlers share: the agent's capabilities (reached through
/// `Deref`) and the server's own state.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) config: Arc<Config>,
    pub(crate) caps: Capabilities,
    pub(crate) started: Instant,
    /// Whether a host tokio runtime was found or given at start.
    pub(crate) host_runtime: bool,
    /// The server's open connections.
    pub(crate) connections: Arc<ConnectionTable>,
    /// CPU profiles running through this server.
    pub(crate) profiles: Arc<ProfileSlots>,
}

impl std::ops::Deref for AppState {
    type Target = Capabilities;

    fn deref(&self) -> &Capabilities {
        &self.caps
    }
}

/// The handler of a capability's endpoint, or — when its feature was
/// compiled out — one that says so with 501.
macro_rules! capability {
    ($feature:literal, $route:expr) => {{
        #[cfg(feature = $feature)]
        let route: axum::routing::MethodRouter<AppState> = $route;
        #[cfg(not(feature = $feature))]
        let route: axum::routing::MethodRouter<AppState> =
            axum::routing::any(|| async { response::not_built($feature) });
        route
    }};
}

/// Runs blocking work — file reads, symbolization, encoding — on the
/// agent's blocking pool, so that its single server thread keeps answering.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        tracing::error!(error = %join, "a debug-server task failed");
        ApiError::Internal
    })
}

/// The agent's routes. A pure function of the state, so tests can drive it
/// with `oneshot` and no socket.
pub(crate) fn router(state: AppState) -> Router {
    let time_limit =
        Duration::from_secs(state.config.max_profile_seconds).saturating_add(DEFAULT_REQUEST_GRACE);
    let body_timeout = state.config.body_read_timeout;
    Router::new()
        .route("/health", get(health))
        .route("/debug", get(dashboard::page))
        .route("/debug/", get(|| async { Redirect::permanent("/debug") }))
        .route("/debug/dashboard.json", get(dashboard::tick))
        .route("/debug/profiles", get(profiles::list).post(profiles::take))
        .route("/debug/profiles/{id}", get(profiles::get))
        .route(
            "/debug/pprof",
            get(|| async { Redirect::permanent("/debug/pprof/") }),
        )
        .route("/debug/pprof/", get(pprof::index))
        .route("/debug/pprof/profile", get(pprof::profile))
        .route("/debug/pprof/flamegraph", get(pprof::flamegraph))
        .route("/debug/pprof/heap", get(heap::pprof_heap))
        .route("/debug/pprof/allocs", get(heap::pprof_heap))
        .route("/debug/heap/stats", get(heap::stats))
        .route(
            "/debug/heap/profiling",
            get(heap::profiling_state).merge(put(heap::set_profiling)),
        )
        .route(
            "/debug/heap/snapshots",
            get(heap::list_snapshots).post(heap::take_snapshot),
        )
        .route(
            "/debug/heap/snapshots/{id}",
            get(heap::get_snapshot).delete(heap::delete_snapshot),
        )
        .route("/debug/heap/diff", get(heap::diff))
        .route(
            "/debug/pprof/symbol",
            get(pprof::symbol_get).post(pprof::symbol_post),
        )
        .route(
            "/debug/use",
            capability!("resources", get(resources::use_table)),
        )
        .route("/debug/red", capability!("red", get(red::red)))
        .route("/debug/lag", capability!("runtime", get(runtime::lag)))
        .route(
            "/debug/runtime",
            capability!("runtime", get(runtime::runtime)),
        )
        .route("/debug/spans", capability!("spans", get(spans::spans)))
        .route(
            "/debug/log-level",
            capability!("spans", get(spans::log_level).put(spans::set_log_level)),
        )
        .route("/debug/doctor", capability!("doctor", get(doctor::doctor)))
        .route(
            "/debug/doctor/artifacts/{id}",
            capability!("doctor", get(doctor::artifact)),
        )
        .route(
            "/debug/history",
            capability!("doctor", get(doctor::history)),
        )
        .route("/metrics", capability!("metrics", get(metrics::metrics)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            limits::time_limited(time_limit, request, next)
        }))
        // Bodies are read (bounded in time and size) before any handler, and
        // only for clients that passed access control.
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            limits::read_body(body_timeout, request, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), access::check))
        .layer(middleware::from_fn(compress::gzip_large_responses))
        .layer(middleware::from_fn(limits::uniform_errors))
        // `read_body` enforces each endpoint's limit; extractors must not
        // apply a smaller one of their own.
        .layer(DefaultBodyLimit::max(limits::SYMBOL_BODY_LIMIT))
        .with_state(state)
}

/// The answer of `/health`.
#[derive(Debug, serde::Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    pid: u32,
    uptime_s: f64,
    host_runtime: &'static str,
    cpu_sampler: SamplerHealth,
    connections: connections::ConnectionStats,
    profiles_running: usize,
    /// Delivery to the push server, when pushing is on.
    #[cfg(feature = "push")]
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<crate::push::PushStatus>,
}

#[derive(Debug, serde::Serialize)]
struct SamplerHealth {
    running_hz: Option<u32>,
    /// `mode=cpu`, `mode=wall` or `mode=wall&threads=workers`.
    running_mode: Option<&'static str>,
    subscribers: usize,
    /// The continuous profiler's rate when it records.
    continuous_hz: Option<u32>,
}

async fn health(
    State(state): State<AppState>,
    anonymous: Option<axum::Extension<access::Anonymous>>,
) -> Response {
    if anonymous.is_some() {
        // A token is configured and was not presented: liveness only.
        return response::json_response(&serde_json::json!({ "status": "ok" }));
    }
    let cpu = state.cpu.status();
    response::json_response(&Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        uptime_s: state.started.elapsed().as_secs_f64(),
        host_runtime: if state.host_runtime {
            "attached"
        } else {
            "unavailable"
        },
        cpu_sampler: SamplerHealth {
            running_hz: cpu.running_hz,
            running_mode: cpu.running_mode.map(crate::cpu::ProfileMode::query),
            subscribers: cpu.subscribers,
            continuous_hz: cpu.continuous_hz,
        },
        connections: state.connections.stats(),
        profiles_running: state.profiles.running(),
        #[cfg(feature = "push")]
        push: state.push.as_ref().map(crate::push::Pusher::status),
    })
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let style = ErrorStyle::for_path(&path);
    ApiError::NotFound { path }.render(style)
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed.render(ErrorStyle::for_path(request.uri().path()))
}

/// The running server thread.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl ServerHandle {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Asks the server to stop; returns at once.
    pub(crate) fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Asks the server to stop and waits until its thread has finished.
    pub(crate) async fn stop(mut self) {
        self.signal_stop();
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Binds (so bind errors surface from `start()`) and starts the server thread.
pub(crate) fn spawn(state: AppState) -> Result<ServerHandle, Error> {
    let config = Arc::clone(&state.config);
    let listener = std::net::TcpListener::bind(config.listen).map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    listener.set_nonblocking(true).map_err(Error::ServerStart)?;
    let local_addr = listener.local_addr().map_err(Error::ServerStart)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("stethoscope-http")
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .map_err(Error::ServerStart)?;
    let (stop, stop_rx) = watch::channel(false);
    let (stopped_tx, stopped) = oneshot::channel();
    let serving = state.clone();
    let app = router(state);
    std::thread::Builder::new()
        .name("stethoscope-http".into())
        .spawn(move || {
            runtime.block_on(serve(listener, app, serving, stop_rx));
            // Dropping the runtime cancels in-flight requests; their profile
            // windows are withdrawn and the sampler stops if idle.
            drop(runtime);
            tracing::info!(%local_addr, "stethoscope debug server stopped");
            let _ = stopped_tx.send(());
        })
        .map_err(Error::ServerStart)?;
    tracing::info!(%local_addr, "stethoscope debug server listening");
    Ok(ServerHandle {
        local_addr,
        stop,
        stopped: Some(stopped),
    })
}

/// Threads of the agent's blocking pool (symbolization, encoding, /proc
/// reads): a flood of expensive requests queues instead of growing the
/// host's thread count.
const MAX_BLOCKING_THREADS: usize = 8;

/// Refusals written at accept time that may be in flight at once; past
/// this, a refused connection is closed without an answer.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Time a refused client gets to read its answer before the socket closes.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "debug server cannot register its listener");
            return;
        }
    };
    let config = Arc::clone(&state.config);
    let table = Arc::clone(&state.connections);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    loop {
        // Accepting never waits for a free slot: every connection is looked
        // at as it arrives, so idle sockets and refused peers cannot queue
        // up in front of a client the agent should serve.
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "debug server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if !access::allowed(&config.allow, Some(peer)) {
            table.refused_forbidden();
            tracing::debug!(%peer, "refused at accept: client address not in the allowlist");
            refuse(stream, ApiError::Forbidden, &refusals);
            continue;
        }
        let connection = match table.admit(peer.ip()) {
            Ok(connection) => connection,
            Err(connections::Refusal::Full) => {
                tracing::warn!(%peer, "debug server refused a connection: every slot is serving a request");
                let max = config.max_connections;
                refuse(stream, ApiError::ConnectionsFull { max }, &refusals);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let phase = Arc::clone(&connection);
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                phase.reading();
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
                    .extensions_mut()
                    .insert(ConnectionPhase(Arc::clone(&phase)));
                let phase = Arc::clone(&phase);
                let response = app.clone().oneshot(request);
                async move {
                    let response = response.await?;
                    Ok::<_, std::convert::Infallible>(PhaseBody::wrap(response, phase))
                }
            },
        );
        let http = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let table = Arc::clone(&table);
        tokio::spawn(async move {
            tokio::select! {
                result = http => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "debug connection ended with an error");
                    }
                }
                _ = connection.evicted() => {}
            }
            table.release(&connection);
            if connection.has_served_large() {
                // Its buffers are all freed now.
                crate::memory::give_back_freed_later();
            }
        });
        // Let the connection just admitted read its request before the next
        // accept: under a flood, a client that has sent its request leaves
        // the idle (evictable) state before later arrivals could evict it.
        tokio::task::yield_now().await;
    }
}

/// Answers a connection the server will not serve with `error` and closes
/// it, without reading a request and without taking a connection slot.
fn refuse(stream: tokio::net::TcpStream, error: ApiError, in_flight: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(in_flight).try_acquire_owned() else {
        return;
    };
    let answer = error.raw_response();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes, so the kernel ends
            // the connection with FIN rather than a reset that could discard
            // the answer before the client reads it.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::StatusCode;
    use axum::http::{header, Request as HttpRequest};
    use http_body_util::BodyExt;

    fn state(config: Config) -> AppState {
        AppState {
            config: Arc::new(config),
            caps: Capabilities::for_tests(),
            started: Instant::now(),
            host_runtime: false,
            connections: Arc::new(ConnectionTable::new(64)),
            profiles: ProfileSlots::new(16),
        }
    }

    async fn call(
        app: Router,
        uri: &str,
        auth: Option<&str>,
        peer: &str,
    ) -> (StatusCode, Response) {
        let mut request = HttpRequest::get(uri);
        if let Some(value) = auth {
            request = request.header(header::AUTHORIZATION, value);
        }
        let peer: SocketAddr = peer.parse().unwrap();
        let response = app
            .layer(MockConnectInfo(peer))
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        (response.status(), response)
    }

    async fn json(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn health_answers_json() {
        let (status, response) = call(
            router(state(Config::default())),
            "/health",
            None,
            "127.0.0.1:1",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let body = json(response).await;
        assert_eq!(body["status"], "ok");
        assert_eq!(body["host_runtime"], "unavailable");
    }

    #[tokio::test]
    async fn unknown_paths_get_json_404_and_pprof_paths_get_text() {
        let app = router(state(Config::default()));
        let (status, response) = call(app.clone(), "/nope", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let body = json(response).await;
        assert!(body["error"].as_str().unwrap().contains("/nope"));
        assert!(body["hint"].is_string());
        let (status, response) = call(app, "/debug/pprof/nope", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["x-go-pprof"], "1");
        assert!(response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
    }

    #[tokio::test]
    async fn token_is_required_except_for_health() {
        let config = Config {
            token: Some(crate::config::BearerToken::new("s3cret").unwrap()),
            ..Config::default()
        };
        let app = router(state(config));
        let peer = "127.0.0.1:1";
        let (status, response) = call(app.clone(), "/debug/pprof/", None, peer).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["x-go-pprof"], "1");
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        let (status, _) = call(app.clone(), "/debug/pprof/", Some("Bearer wrong"), peer).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(app.clone(), "/debug/pprof/", Some("Basic s3cret"), peer).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(app.clone(), "/debug/pprof/", Some("Bearer s3cret"), peer).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(app.clone(), "/debug/pprof/", Some("bearer s3cret"), peer).await;
        assert_eq!(status, StatusCode::OK);
        let (status, response) = call(app.clone(), "/health", None, peer).await;
        assert_eq!(status, StatusCode::OK);
        let anonymous = json(response).await;
        assert_eq!(
            anonymous,
            serde_json::json!({"status": "ok"}),
            "no details without the token"
        );
        let (_, response) = call(app, "/health", Some("Bearer s3cret"), peer).await;
        assert!(json(response).await["pid"].is_number());
    }

    #[tokio::test]
    async fn allowlist_refuses_other_addresses_with_403() {
        let config = Config {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        let app = router(state(config));
        let (status, response) = call(app.clone(), "/health", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let body = json(response).await;
        assert_eq!(body["error"], "forbidden");
        let (status, _) = call(app, "/health", None, "10.2.3.4:1").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn bad_profile_parameters_get_400_in_go_style() {
        let app = router(state(Config {
            max_profile_seconds: 60,
            ..Config::default()
        }));
        for uri in [
            "/debug/pprof/profile?seconds=0",
            "/debug/pprof/profile?seconds=61",
            "/debug/pprof/profile?hz=5000",
            "/debug/pprof/profile?format=bmp",
            "/debug/pprof/flamegraph?seconds=x",
        ] {
            let (status, response) = call(app.clone(), uri, None, "127.0.0.1:1").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(response.headers()["x-go-pprof"], "1");
            let text = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&text);
            assert!(text.contains("hint:"), "{text}");
        }
    }

    #[tokio::test]
    async fn index_lists_the_profiles() {
        let (status, response) = call(
            router(state(Config::default())),
            "/debug/pprof/",
            None,
            "127.0.0.1:1",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let html = String::from_utf8_lossy(&body);
        assert!(html.contains("href=\"profile?seconds=30\""));
        assert!(html.contains("flamegraph"));
        for link in [
            "href=\"heap\"",
            "href=\"allocs\"",
            "../heap/snapshots",
            "../use",
            "../red",
        ] {
            assert!(html.contains(link), "{link} missing from the index");
        }
        // The unit-test binary does not allocate through jemalloc: the
        // heap row says why instead of a state.
        assert!(html.contains("global allocator"), "{html}");
    }

    #[tokio::test]
    async fn symbol_endpoint_speaks_go_protocol() {
        let app = router(state(Config::default())).layer(MockConnectInfo(
            "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
        ));
        let probe = app
            .clone()
            .oneshot(
                HttpRequest::get("/debug/pprof/symbol")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let text = probe.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"num_symbols: 1\n");

        let here = symbol_endpoint_speaks_go_protocol as *const () as usize as u64;
        let body = format!("{here:#x}+0x10");
        let answer = app
            .clone()
            .oneshot(
                HttpRequest::post("/debug/pprof/symbol")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let text = answer.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().next().unwrap_or_default();
        assert!(line.starts_with(&format!("{here:#x} ")), "{text}");
        assert!(
            line.contains("symbol_endpoint_speaks_go_protocol"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "unknown addresses are left out");

        let bad = app
            .oneshot(
                HttpRequest::post("/debug/pprof/symbol")
                    .body(Body::from("zzz"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn heap_endpoints_answer_501_with_the_fix_without_jemalloc() {
        // The unit-test binary does not use jemalloc as its allocator.
        let app = router(state(Config::default()));
        for uri in [
            "/debug/pprof/heap",
            "/debug/pprof/allocs",
            "/debug/heap/stats",
            "/debug/heap/profiling",
            "/debug/heap/snapshots",
            "/debug/heap/snapshots/9",
            "/debug/heap/diff?base=1",
        ] {
            let (status, response) = call(app.clone(), uri, None, "127.0.0.1:1").await;
            assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{uri}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("heap_profiling!"), "{uri}: {text}");
        }
        for (method, uri, body) in [
            ("POST", "/debug/heap/snapshots", ""),
            ("DELETE", "/debug/heap/snapshots/1", ""),
            ("PUT", "/debug/heap/profiling", r#"{"active":false}"#),
        ] {
            let response = app
                .clone()
                .layer(MockConnectInfo(
                    "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
                ))
                .oneshot(
                    HttpRequest::builder()
                        .method(method)
                        .uri(uri)
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::NOT_IMPLEMENTED,
                "{method} {uri}"
            );
        }
        let (status, _) = call(app.clone(), "/debug/heap/snapshots/x", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(app, "/debug/heap/diff?target=now", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "base is required");
    }

    #[tokio::test]
    async fn wrong_method_gets_405_json() {
        let app = router(state(Config::default())).layer(MockConnectInfo(
            "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
        ));
        let response = app
            .oneshot(HttpRequest::post("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    async fn send(app: Router, request: HttpRequest<Body>) -> Response {
        app.layer(MockConnectInfo(
            "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
        ))
        .oneshot(request)
        .await
        .unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn head_answers_without_running_a_profile() {
        let app = router(state(Config::default()));
        for uri in [
            "/debug/pprof/profile?seconds=30",
            "/debug/pprof/flamegraph?seconds=30",
        ] {
            let started = Instant::now();
            let response = send(
                app.clone(),
                HttpRequest::head(uri).body(Body::empty()).unwrap(),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{uri} ran a profile"
            );
            assert!(response.headers().contains_key(header::CONTENT_DISPOSITION));
        }
        let bad = send(
            app,
            HttpRequest::head("/debug/pprof/profile?seconds=0")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            bad.status(),
            StatusCode::BAD_REQUEST,
            "HEAD validates like GET"
        );
    }

    #[tokio::test]
    async fn rejections_use_the_agents_error_shape() {
        let app = router(state(Config::default()));
        // A path segment that is not UTF-8.
        let response = send(
            app.clone(),
            HttpRequest::get("/debug/heap/snapshots/%FF")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = json(response).await;
        assert!(body["hint"].is_string(), "{body}");
        // A body over the limit, announced or not.
        for announced in [true, false] {
            let big = vec![b'0'; 10 << 20];
            let mut request = HttpRequest::put("/debug/heap/profiling");
            if !announced {
                request = request.header(header::TRANSFER_ENCODING, "chunked");
            }
            let response = send(app.clone(), request.body(Body::from(big)).unwrap()).await;
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body = json(response).await;
            assert!(body["hint"].as_str().unwrap().contains("65536"), "{body}");
        }
        // A symbol request body that is not UTF-8: Go-style text.
        let response = send(
            app.clone(),
            HttpRequest::post("/debug/pprof/symbol")
                .body(Body::from(vec![0xff, 0xfe, 0x30]))
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()["x-go-pprof"], "1");
        assert!(text(response).await.contains("hint:"));
    }

    #[tokio::test]
    async fn the_profiling_toggle_takes_exactly_one_object() {
        let app = router(state(Config::default()));
        for body in [
            "[true]",
            "null",
            "true",
            "\"active\"",
            r#"{"active":"yes"}"#,
            r#"{"active":true,"extra":1}"#,
            "{}",
            "{",
        ] {
            let response = send(
                app.clone(),
                HttpRequest::put("/debug/heap/profiling")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
            let text = text(response).await;
            assert!(
                !text.contains("ProfilingToggle") && !text.contains("struct"),
                "{text}"
            );
            assert!(text.contains("hint"), "{text}");
        }
    }

    #[tokio::test]
    async fn profiles_beyond_the_cap_get_429_with_retry_after() {
        let state = state(Config::default());
        let held: Vec<_> = (0..16)
            .map(|_| state.profiles.acquire(Duration::from_secs(20)).unwrap())
            .collect();
        let response = send(
            router(state),
            HttpRequest::get("/debug/pprof/profile?seconds=1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = response.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((15..=20).contains(&retry), "{retry}");
        drop(held);
    }

    #[cfg(feature = "spans")]
    async fn put(app: Router, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .layer(MockConnectInfo(
                "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
            ))
            .oneshot(
                HttpRequest::put(uri)
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        (response.status(), json(response).await)
    }

    #[cfg(feature = "spans")]
    #[tokio::test]
    // The guard serializes whole tests, each on its own runtime and thread.
    #[allow(clippy::await_holding_lock)]
    async fn log_level_reads_changes_reverts_and_rejects_bad_directives() {
        use tracing_subscriber::layer::SubscriberExt;
        // Reloading rebuilds tracing's process-wide interest cache.
        let _serial = crate::spans::tracing_test_lock();

        let unwired = router(state(Config::default()));
        let (status, response) =
            call(unwired.clone(), "/debug/log-level", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        let body = json(response).await;
        assert_eq!(body["installed"], false);
        assert!(body["hint"].as_str().unwrap().contains("log_filter"));
        let (status, _) = put(unwired, "/debug/log-level", "debug").await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED);

        let (filter, level) = crate::spans::log_filter("info").unwrap();
        // Kept alive (not installed): the filter is part of a subscriber.
        let _subscriber = tracing_subscriber::registry().with(filter);
        let mut with_level = state(Config::default());
        with_level.caps.log_level = Some(level.clone());
        let app = router(with_level);
        let (_, response) = call(app.clone(), "/debug/log-level", None, "127.0.0.1:1").await;
        let body = json(response).await;
        assert_eq!(body["directive"], "info");
        assert_eq!(body["origin"], "startup");
        assert_eq!(body["active"], true);
        assert!(body["set_at"].as_str().unwrap().ends_with('Z'));
        assert!(body["revert_at"].is_null());

        let (status, body) = put(app.clone(), "/debug/log-level", "info,my_crate=lol").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("my_crate=lol"), "{body}");
        assert!(
            body["hint"].as_str().unwrap().contains("RUST_LOG"),
            "{body}"
        );
        assert_eq!(level.status().directive, "info", "unchanged");
        let (status, _) = put(app.clone(), "/debug/log-level?ttl=3d", "debug").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, body) = put(
            app.clone(),
            "/debug/log-level?ttl=200ms",
            "info,my_crate=debug",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["directive"], "info,my_crate=debug");
        assert_eq!(body["origin"], "api");
        assert_eq!(body["previous"], "info");
        assert_eq!(body["revert_to"], "info");
        assert!(body["revert_in_s"].as_f64().unwrap() <= 0.2);
        let (status, body) = put(
            app.clone(),
            "/debug/log-level",
            r#"{"directive": "warn", "ttl": "1h"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["revert_to"], "info",
            "the first temporary change's base"
        );
        let (_, body) = put(app.clone(), "/debug/log-level?ttl=100ms", "debug").await;
        assert_eq!(body["revert_to"], "info");
        for _ in 0..200 {
            if level.status().directive == "info" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, response) = call(app, "/debug/log-level", None, "127.0.0.1:1").await;
        let body = json(response).await;
        assert_eq!(body["directive"], "info", "{body}");
        assert_eq!(body["origin"], "startup");
    }

    #[cfg(feature = "spans")]
    #[tokio::test]
    // The guard serializes whole tests, each on its own runtime and thread.
    #[allow(clippy::await_holding_lock)]
    async fn spans_report_json_and_an_aligned_text_table() {
        use tracing_subscriber::layer::SubscriberExt;
        let _serial = crate::spans::tracing_test_lock();

        let unwired = router(state(Config::default()));
        let (status, response) = call(unwired, "/debug/spans", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        let body = json(response).await;
        assert_eq!(body["installed"], false);
        assert!(body["hint"]
            .as_str()
            .unwrap()
            .contains("AgentBuilder::spans"));

        let timings = crate::spans::SpanTimings::with_settings(
            crate::spans::SpanSettings::default().slow_threshold(Duration::from_millis(5)),
        );
        let mut wired = state(Config::default());
        wired.caps.spans = Some(timings.clone());
        let app = router(wired);
        let (_, response) = call(app.clone(), "/debug/spans", None, "127.0.0.1:1").await;
        assert_eq!(
            json(response).await["installed"],
            false,
            "layer not in a subscriber"
        );

        let subscriber = tracing_subscriber::registry().with(timings.layer());
        tracing::subscriber::with_default(subscriber, || {
            let _request = tracing::info_span!("request").entered();
            for i in 0..3u64 {
                let _q =
                    tracing::info_span!("a_rather_long_span_name", i, table = "items").entered();
                std::thread::sleep(Duration::from_millis(6));
            }
            drop(tracing::info_span!("q", error = "boom").entered());
        });
        let (status, response) = call(app.clone(), "/debug/spans", None, "127.0.0.1:1").await;
        assert_eq!(status, StatusCode::OK);
        let body = json(response).await;
        assert_eq!(body["installed"], true);
        assert_eq!(body["slow_threshold_ms"], 5.0);
        let spans = body["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0]["name"], "request", "most time first: {body}");
        let long = spans
            .iter()
            .find(|s| s["name"] == "a_rather_long_span_name")
            .unwrap();
        assert_eq!(long["count"], 3);
        assert!(long["total"]["p50_ms"].as_f64().unwrap() >= 6.0);
        assert!(long["busy"]["p99_ms"].is_number());
        let q = spans.iter().find(|s| s["name"] == "q").unwrap();
        assert_eq!(
            (q["errors"].as_u64(), q["error_ratio"].as_f64()),
            (Some(1), Some(1.0))
        );
        let slowest = body["slowest"].as_array().unwrap();
        let slow = slowest
            .iter()
            .find(|s| s["name"] == "a_rather_long_span_name")
            .unwrap();
        assert_eq!(slow["fields"]["table"], "items");
        assert_eq!(slow["parents"][0], "request");
        assert!(slow["started_at"].as_str().unwrap().ends_with('Z'));

        let (status, response) = call(
            app.clone(),
            "/debug/spans?format=text&sort=count",
            None,
            "127.0.0.1:1",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(text.to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SPAN "), "{text}");
        assert!(
            lines[1].starts_with("a_rather_long_span_name "),
            "sorted by count: {text}"
        );
        // Every row of the table puts TARGET in the same column (in
        // characters: µs is two bytes).
        let column = |line: &str, what: &str| line[..line.find(what).unwrap()].chars().count();
        let target = column(lines[0], "TARGET");
        for row in &lines[1..4] {
            assert_eq!(column(row, module_path!()), target, "{text}");
        }
        assert!(text.contains("table=items"), "{text}");
        assert!(text.contains("(in request)"), "{text}");

        let (_, response) = call(app.clone(), "/debug/spans?name=q", None, "127.0.0.1:1").await;
        let only_q = json(response).await;
        assert_eq!(only_q["spans"].as_array().unwrap().len(), 1, "{only_q}");
        assert_eq!(only_q["spans"][0]["name"], "q");
        assert!(only_q["slowest"].as_array().unwrap().is_empty());

        for bad in [
            "/debug/spans?format=svg",
            "/debug/spans?sort=x",
            "/debug/spans?limit=0",
        ] {
            let (status, response) = call(app.clone(), bad, None, "127.0.0.1:1").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(json(response).await["hint"].is_string());
        }
    }
}
