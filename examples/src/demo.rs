//! The demo service: a small axum app whose routes misbehave on purpose so
//! every stethoscope endpoint has something to show.
//!
//! Its database queries and upstream calls are `tracing` spans
//! (`db_query`, `upstream_call`) with fields, so `/debug/spans` has
//! something to time, and they log at `debug` level under this module's
//! target (`stethoscope_examples::demo`), which `PUT /debug/log-level`
//! can turn on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use stethoscope::resources::{Resource, ResourceSample};
use tokio::sync::Semaphore;

use crate::workload;

/// Connections in the demo's pretend database pool.
pub const POOL_SIZE: usize = 4;

/// How long `/items/{id}` waits for a pool connection before giving up
/// with 503.
pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(200);

/// A pretend database connection pool: a semaphore whose permits are
/// connections. Registered with the agent as a [`Resource`], it shows up
/// as the `db_pool` row of `/debug/use` (connections in use out of
/// [`POOL_SIZE`], callers waiting, acquire timeouts).
#[derive(Debug, Clone)]
pub struct DemoPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    connections: Semaphore,
    size: usize,
    waiting: AtomicU64,
    timeouts: AtomicU64,
}

impl DemoPool {
    /// A pool of `size` connections.
    pub fn new(size: usize) -> Self {
        DemoPool {
            inner: Arc::new(PoolInner {
                connections: Semaphore::new(size),
                size,
                waiting: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
            }),
        }
    }

    /// A pretend query of row `id` of `table`: holds a connection for
    /// `hold`, or fails after [`POOL_ACQUIRE_TIMEOUT`] waiting for one.
    #[tracing::instrument(
        name = "db_query",
        skip(self, hold),
        fields(wait_ms = tracing::field::Empty, error = tracing::field::Empty)
    )]
    async fn query(&self, table: &'static str, id: u64, hold: Duration) -> Result<(), StatusCode> {
        let started = std::time::Instant::now();
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let permit =
            tokio::time::timeout(POOL_ACQUIRE_TIMEOUT, self.inner.connections.acquire()).await;
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        let wait_ms = started.elapsed().as_millis() as u64;
        tracing::Span::current().record("wait_ms", wait_ms);
        match permit {
            Ok(Ok(_connection)) => {
                tokio::time::sleep(hold).await;
                tracing::debug!(rows = 1, "query finished");
                Ok(())
            }
            _ => {
                self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::Span::current().record("error", "pool acquire timeout");
                tracing::debug!("query gave up waiting for a connection");
                Err(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }
}

impl DemoPool {
    /// Keeps every connection busy for `wall`: `3 × size` background tasks
    /// each take a connection (waiting as long as it takes), hold it for
    /// 250 ms and queue again — a saturated pool with callers waiting.
    pub fn hog(&self, wall: Duration) {
        let until = tokio::time::Instant::now() + wall;
        for _ in 0..self.inner.size * 3 {
            let pool = self.clone();
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    pool.inner.waiting.fetch_add(1, Ordering::Relaxed);
                    let permit = pool.inner.connections.acquire().await;
                    pool.inner.waiting.fetch_sub(1, Ordering::Relaxed);
                    if permit.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
    }
}

impl Resource for DemoPool {
    fn name(&self) -> &str {
        "db_pool"
    }

    fn sample(&self) -> ResourceSample {
        let free = self.inner.connections.available_permits();
        let used = self.inner.size.saturating_sub(free);
        ResourceSample::new(used as f64, self.inner.size as f64)
            .saturation(self.inner.waiting.load(Ordering::Relaxed) as f64)
            .errors(self.inner.timeouts.load(Ordering::Relaxed))
            .unit("connections")
    }
}

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

/// Longest block one `/block` request may ask for.
pub const MAX_BLOCK_MS: u64 = 10_000;

/// Query of `/block`.
#[derive(Debug, Deserialize)]
pub struct BlockQuery {
    /// Milliseconds to block the worker (default 300, at most [`MAX_BLOCK_MS`]).
    pub ms: Option<u64>,
}

/// Most tasks one `/spawn` request may ask for.
pub const MAX_SPAWN_TASKS: usize = 100_000;

/// Query of `/spawn`.
#[derive(Debug, Deserialize)]
pub struct SpawnQuery {
    /// Tasks to spawn (default 1,000, at most [`MAX_SPAWN_TASKS`]).
    pub n: Option<usize>,
    /// Microseconds of CPU each task spends before yielding once and
    /// finishing (default 50, at most 1,000).
    pub us: Option<u64>,
}

/// What the demo's handlers share.
#[derive(Debug, Clone)]
struct DemoState {
    pool: DemoPool,
    /// Calls of `/flaky` on this router.
    flaky_calls: Arc<AtomicU64>,
    /// Calls of the pretend payments service.
    upstream_calls: Arc<AtomicU64>,
    /// Instruments the tasks `/spawn` starts.
    spawned: tokio_metrics::TaskMonitor,
}

/// The demo's routes. Add the agent's RED layer on top:
/// `router(pool).layer(agent.red_layer())`.
pub fn router(pool: DemoPool) -> Router {
    router_with_monitor(pool, tokio_metrics::TaskMonitor::new())
}

/// [`router`] whose `/spawn` tasks are instrumented with `spawned`, e.g.
/// `agent.task_monitor("demo_spawned")`, so they show in `/debug/runtime`.
pub fn router_with_monitor(pool: DemoPool, spawned: tokio_metrics::TaskMonitor) -> Router {
    let state = DemoState {
        pool,
        flaky_calls: Arc::new(AtomicU64::new(0)),
        upstream_calls: Arc::new(AtomicU64::new(0)),
        spawned,
    };
    Router::new()
        .route("/", get(index))
        .route("/burn", get(burn))
        .route("/memcpy", get(memcpy))
        .route("/leak", get(leak))
        .route("/churn", get(churn))
        .route("/orders", get(orders))
        .route("/items/{id}", get(item))
        .route("/checkout/{id}", get(checkout))
        .route("/flaky", get(flaky))
        .route("/block", get(blocking_handler))
        .route("/spawn", get(spawn_many))
        .route("/downstream", get(downstream))
        .route("/trouble/leak", get(trouble_leak))
        .route("/trouble/fds", get(trouble_fds))
        .route("/trouble/threads", get(trouble_threads))
        .route("/trouble/cpu", get(trouble_cpu))
        .route("/trouble/pool", get(trouble_pool))
        .route("/trouble/hang/permit", get(hang_on_a_permit))
        .route("/trouble/hang/channel", get(hang_on_a_channel))
        .route("/trouble/tasks", get(trouble_tasks))
        .with_state(state)
}

async fn index() -> &'static str {
    "stethoscope demo service\n\
     GET /burn?ms=N    burn N ms of CPU on the request's worker thread:\n\
     \x20                 3/4 in workload::burn_hot, 1/4 in workload::burn_cold\n\
     GET /memcpy?ms=N  spend N ms of CPU inside libc memcpy (workload::copy_buffers)\n\
     GET /leak?mb=N    leak N MiB in 64 KiB chunks, kept forever (workload::leak_chunks)\n\
     GET /churn?mb=N   allocate and free N MiB (workload::churn), which never shows as growth\n\
     GET /orders?n=N   build a JSON list of N orders: ordinary allocation-heavy request work\n\
     GET /items/ID     a 20 ms query on one of 4 pooled connections (503 after 200 ms waiting)\n\
     GET /checkout/ID  a 5-30 ms query, then a payments call: 20 ms, every 5th 80 ms, every 20th fails\n\
     GET /flaky        5 ms, and every 10th request fails with 500\n\
     GET /block?ms=N   block the request's tokio worker for N ms in std::thread::sleep\n\
     \x20                 (demo::blocking_handler): a stall in /debug/runtime, a spike in /debug/lag\n\
     GET /spawn?n=N    spawn N short tasks (50 us of CPU, one yield each) and wait for them\n\
     GET /downstream?ms=N  wait N ms (default 600) on a pretend slow dependency: I/O-bound\n\
     \n\
     Trouble on purpose, for /debug/doctor (each returns at once and runs in the background):\n\
     GET /trouble/leak?mb=N&secs=S  leak N MiB (default 2) every second for S s (default 300)\n\
     GET /trouble/fds?n=N           open N more handles to /dev/null and never close them\n\
     GET /trouble/threads?n=N       start N more threads that never exit\n\
     GET /trouble/cpu?secs=S        burn every CPU, plus one thread, for S s (default 60)\n\
     GET /trouble/pool?secs=S       keep every db_pool connection busy with callers waiting for S s\n\
     GET /trouble/tasks?secs=S      spawn a task every 100 ms that never finishes, for S s (default 300)\n\
     \n\
     Requests that hang for ever with the CPU idle (the request itself waits; /debug/red,\n\
     /debug/threads and /debug/tasks show where):\n\
     GET /trouble/hang/permit       wait for a semaphore permit a leaked guard never returns\n\
     GET /trouble/hang/channel      wait on a channel whose sender is kept but never sends\n"
}

/// The semaphore of `/trouble/hang/permit`: its only permit was leaked
/// (`mem::forget` of the guard), so every acquire waits for ever.
fn leaked_semaphore() -> &'static Semaphore {
    static SEMAPHORE: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    SEMAPHORE.get_or_init(|| {
        let semaphore = Semaphore::new(1);
        if let Ok(permit) = semaphore.try_acquire() {
            std::mem::forget(permit);
        }
        semaphore
    })
}

/// Senders of `/trouble/hang/channel`: kept, never used.
static SILENT_SENDERS: std::sync::Mutex<Vec<tokio::sync::mpsc::Sender<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Most hung requests (and never-finishing tasks) the demo keeps.
const MAX_HUNG: usize = 10_000;

/// Waits for a permit that never comes back.
#[inline(never)]
async fn wait_for_a_leaked_permit() -> &'static str {
    match leaked_semaphore().acquire().await {
        Ok(_permit) => "a permit came back\n",
        Err(_) => "the semaphore closed\n",
    }
}

/// Waits on a channel nobody sends on.
#[inline(never)]
async fn wait_for_a_silent_channel() -> &'static str {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<()>(1);
    {
        let mut senders = SILENT_SENDERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if senders.len() >= MAX_HUNG {
            return "too many hung requests already\n";
        }
        senders.push(sender);
    }
    match receiver.recv().await {
        Some(()) => "a message came\n",
        None => "the channel closed\n",
    }
}

async fn hang_on_a_permit() -> &'static str {
    wait_for_a_leaked_permit().await
}

async fn hang_on_a_channel() -> &'static str {
    wait_for_a_silent_channel().await
}

/// A task that waits for ever: spawned by `/trouble/tasks`, never joined.
#[inline(never)]
async fn a_task_that_never_finishes() {
    std::future::pending::<()>().await;
}

/// Spawns [`a_task_that_never_finishes`] every 100 ms for `secs`.
async fn trouble_tasks(Query(query): Query<TroubleQuery>) -> String {
    let secs = trouble_secs(&query, 300);
    tokio::spawn(async move {
        let ticks = (secs.as_millis() / 100).min(MAX_HUNG as u128) as usize;
        for _ in 0..ticks {
            tokio::spawn(a_task_that_never_finishes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    format!(
        "spawning a task that never finishes every 100 ms for {} s\n",
        secs.as_secs()
    )
}

/// Holds one of the pool's connections for 20 ms.
async fn item(State(state): State<DemoState>, Path(id): Path<u64>) -> Result<String, StatusCode> {
    state
        .pool
        .query("items", id, Duration::from_millis(20))
        .await?;
    Ok(format!("item {id}\n"))
}

/// A query of 5 to 30 ms (depending on the id), then a call to the
/// pretend payments service: the spans `/debug/spans` shows, inside this
/// handler's own `checkout` span.
#[tracing::instrument(name = "checkout", skip(state))]
async fn checkout(
    State(state): State<DemoState>,
    Path(id): Path<u64>,
) -> Result<String, StatusCode> {
    let hold = Duration::from_millis(5 + (id * 7) % 26);
    state.pool.query("carts", id, hold).await?;
    let call = state.upstream_calls.fetch_add(1, Ordering::Relaxed) + 1;
    payments(id, call).await?;
    Ok(format!("checked out cart {id}\n"))
}

/// The payments service: 20 ms, every 5th call 80 ms, every 20th call
/// fails after its wait.
#[tracing::instrument(
    name = "upstream_call",
    fields(service = "payments", status = tracing::field::Empty, error = tracing::field::Empty)
)]
async fn payments(cart: u64, call: u64) -> Result<(), StatusCode> {
    let latency = if call.is_multiple_of(5) { 80 } else { 20 };
    tokio::time::sleep(Duration::from_millis(latency)).await;
    let span = tracing::Span::current();
    if call.is_multiple_of(20) {
        span.record("status", 502);
        span.record("error", "payments answered 502");
        tracing::debug!(latency, "payments call failed");
        return Err(StatusCode::BAD_GATEWAY);
    }
    span.record("status", 200);
    tracing::debug!(latency, "payments call finished");
    Ok(())
}

/// Every 10th request fails: a known 10 % error ratio for `/debug/red`.
async fn flaky(State(state): State<DemoState>) -> Result<&'static str, StatusCode> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    if state.flaky_calls.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
        Err(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        Ok("ok\n")
    }
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

/// Deliberately blocks its tokio worker: a synchronous sleep inside an
/// async handler, the classic mistake `spawn_blocking` exists for. The
/// agent's watchdog reports it as a stall whose stack names this function.
async fn blocking_handler(Query(query): Query<BlockQuery>) -> String {
    let ms = query.ms.unwrap_or(300).min(MAX_BLOCK_MS);
    std::thread::sleep(Duration::from_millis(ms));
    format!("blocked this worker for {ms} ms\n")
}

/// Query of the `/trouble/*` and `/downstream` routes.
#[derive(Debug, Deserialize)]
pub struct TroubleQuery {
    /// Per-step size (MiB for `/trouble/leak`) or count (`fds`, `threads`).
    pub mb: Option<usize>,
    /// Count of handles or threads.
    pub n: Option<usize>,
    /// How long, in seconds.
    pub secs: Option<u64>,
    /// Milliseconds (`/downstream`).
    pub ms: Option<u64>,
}

/// Longest trouble one request may start, in seconds.
pub const MAX_TROUBLE_SECS: u64 = 600;

fn trouble_secs(query: &TroubleQuery, default: u64) -> Duration {
    Duration::from_secs(query.secs.unwrap_or(default).min(MAX_TROUBLE_SECS))
}

/// A slow dependency: the handler awaits it and uses no CPU, so the
/// route is slow while the process is idle.
async fn downstream(Query(query): Query<TroubleQuery>) -> String {
    let ms = query.ms.unwrap_or(600).min(MAX_BLOCK_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("the dependency answered after {ms} ms\n")
}

async fn trouble_leak(Query(query): Query<TroubleQuery>) -> String {
    let mb = query.mb.unwrap_or(2).min(64);
    let secs = trouble_secs(&query, 300);
    tokio::task::spawn_blocking(move || {
        workload::leak_steadily(mb << 20, Duration::from_secs(1), secs.as_secs() as u32)
    });
    format!("leaking {mb} MiB a second for {} s\n", secs.as_secs())
}

async fn trouble_fds(Query(query): Query<TroubleQuery>) -> Result<String, StatusCode> {
    let n = query.n.unwrap_or(100).min(10_000);
    match workload::leak_files(n) {
        Ok(total) => Ok(format!("{total} descriptors leaked in total\n")),
        Err(_) => Err(StatusCode::INSUFFICIENT_STORAGE),
    }
}

async fn trouble_threads(Query(query): Query<TroubleQuery>) -> Result<String, StatusCode> {
    let n = query.n.unwrap_or(20).min(200);
    match workload::leak_threads(n) {
        Ok(total) => Ok(format!("{total} threads leaked in total\n")),
        Err(_) => Err(StatusCode::INSUFFICIENT_STORAGE),
    }
}

async fn trouble_cpu(Query(query): Query<TroubleQuery>) -> String {
    let secs = trouble_secs(&query, 60);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    std::thread::spawn(move || workload::saturate_cpu(threads, secs));
    format!("burning {threads} threads for {} s\n", secs.as_secs())
}

async fn trouble_pool(State(state): State<DemoState>, Query(query): Query<TroubleQuery>) -> String {
    let secs = trouble_secs(&query, 60);
    state.pool.hog(secs);
    format!(
        "holding every db_pool connection for {} s\n",
        secs.as_secs()
    )
}

/// Many short tasks: healthy, yielding executor load.
async fn spawn_many(State(state): State<DemoState>, Query(query): Query<SpawnQuery>) -> String {
    let n = query.n.unwrap_or(1000).min(MAX_SPAWN_TASKS);
    let work = Duration::from_micros(query.us.unwrap_or(50).min(1000));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(state.spawned.instrument(async move {
                workload::spin(work);
                tokio::task::yield_now().await;
            }))
        })
        .collect();
    let mut finished = 0;
    for task in tasks {
        if task.await.is_ok() {
            finished += 1;
        }
    }
    format!(
        "{finished} of {n} tasks finished in {:.1} ms\n",
        started.elapsed().as_secs_f64() * 1e3
    )
}
