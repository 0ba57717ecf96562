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

/// Largest leak one request may ask for, in MiB.
pub const MAX_LEAK_MB: usize = 1024;

/// Query of `/leak` and `/churn`.
#[derive(Debug, Deserialize)]
pub struct LeakQuery {
    /// MiB to allocate (default 16, at most [`MAX_LEAK_MB`]).
    pub mb: Option<usize>,
}

/// The demo's routes.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/burn", get(burn))
        .route("/memcpy", get(memcpy))
        .route("/leak", get(leak))
        .route("/churn", get(churn))
        .route("/orders", get(orders))
}

async fn index() -> &'static str {
    "stethoscope demo service\n\
     GET /burn?ms=N    burn N ms of CPU on the request's worker thread:\n\
     \x20                 3/4 in workload::burn_hot, 1/4 in workload::burn_cold\n\
     GET /memcpy?ms=N  spend N ms of CPU inside libc memcpy (workload::copy_buffers)\n\
     GET /leak?mb=N    leak N MiB in 64 KiB chunks, kept forever (workload::leak_chunks)\n\
     GET /churn?mb=N   allocate and free N MiB (workload::churn), which never shows as growth\n\
     GET /orders?n=N   build a JSON list of N orders: ordinary allocation-heavy request work\n"
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

fn megabytes(query: &LeakQuery) -> usize {
    query.mb.unwrap_or(16).min(MAX_LEAK_MB)
}

/// Deliberately leaks: the chunks stay referenced forever.
async fn leak(Query(query): Query<LeakQuery>) -> String {
    let mb = megabytes(&query);
    let total = workload::leak_chunks(mb << 20);
    format!(
        "leaked {mb} MiB more ({} MiB leaked in total)\n",
        total >> 20
    )
}

async fn churn(Query(query): Query<LeakQuery>) -> String {
    let mb = megabytes(&query);
    let checksum = workload::churn(mb << 20);
    format!("allocated and freed {mb} MiB (checksum {checksum:x})\n")
}

/// Query of `/orders`.
#[derive(Debug, Deserialize)]
pub struct OrdersQuery {
    /// Orders to render (default 100, at most 10,000).
    pub n: Option<usize>,
}

async fn orders(Query(query): Query<OrdersQuery>) -> String {
    workload::render_orders(query.n.unwrap_or(100).min(10_000))
}
