//! The demo service: a small axum app whose routes misbehave on purpose so
//! every stethoscope endpoint has something to show.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::workload;

/// Longest CPU burn one request may ask for.
pub const MAX_BURN_MS: u64 = 10_000;

/// Query of `/burn` and `/memcpy`.
#[derive(Debug, Deserialize)]
pub struct BurnQuery {
    /// Milliseconds of CPU time to spend (default 100, at most [`MAX_BURN_MS`]).
    pub ms: Option<u64>,
}

/// The demo's routes.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/burn", get(burn))
        .route("/memcpy", get(memcpy))
}

async fn index() -> &'static str {
    "stethoscope demo service\n\
     GET /burn?ms=N    burn N ms of CPU on the request's worker thread:\n\
     \x20                 3/4 in workload::burn_hot, 1/4 in workload::burn_cold\n\
     GET /memcpy?ms=N  spend N ms of CPU inside libc memcpy (workload::copy_buffers)\n"
}

fn budget(query: &BurnQuery) -> Duration {
    Duration::from_millis(query.ms.unwrap_or(100).min(MAX_BURN_MS))
}

/// Deliberately CPU-bound on the async worker: the classic mistake of
/// computing inside a handler instead of `spawn_blocking`.
async fn burn(Query(query): Query<BurnQuery>) -> String {
    let cpu = budget(&query);
    let checksum = workload::burn(cpu);
    format!(
        "burned {} ms of CPU (checksum {checksum:x})\n",
        cpu.as_millis()
    )
}

async fn memcpy(Query(query): Query<BurnQuery>) -> String {
    let cpu = budget(&query);
    let rounds = workload::copy_buffers(cpu);
    format!(
        "copied 4 MiB {rounds} times in {} ms of CPU\n",
        cpu.as_millis()
    )
}
