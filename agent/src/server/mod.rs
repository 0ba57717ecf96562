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
mod listener;
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
#[cfg(feature = "runtime")]
mod threads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, put};
use axum::Router;

use crate::capabilities::Capabilities;
use crate::config::{Config, DEFAULT_REQUEST_GRACE};
pub(crate) use connections::ConnectionTable;
use error::{ApiError, ErrorStyle};
pub(crate) use limits::ProfileSlots;
pub(crate) use listener::{spawn, ServerHandle};

/// What handlers share: the agent's capabilities and the server's own
/// state.
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
        .route("/debug/pprof/allocs", get(heap::pprof_allocs))
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
        // Where go tool pprof looks symbols up for a profile fetched from a
        // path outside /debug/pprof/ (a heap diff, a snapshot).
        .route("/symbolz", get(pprof::symbol_get).post(pprof::symbol_post))
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
        .route(
            "/debug/threads",
            capability!("runtime", get(threads::threads)),
        )
        .route("/debug/tasks", capability!("runtime", get(threads::tasks)))
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
    let cpu = state.caps.cpu.status();
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
        push: state.caps.push.as_ref().map(crate::push::Pusher::status),
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

#[cfg(test)]
mod tests;
