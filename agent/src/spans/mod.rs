//! `tracing` integration: span timings and the slow-span log.
//!
//! The agent plugs into the service's own `tracing-subscriber` stack
//! instead of replacing it; it never installs a global subscriber. The
//! host creates the pieces before its subscriber (which `main` installs
//! first) and hands them to the agent:
//!
//! - [`log_filter`]: a reloadable `EnvFilter` and its [`LogLevel`] control,
//!   so `PUT /debug/log-level` can turn on debug logs for one module for
//!   ten minutes, and they turn themselves off again.
//! - [`SpanTimings`] and its [`SpanLayer`]: per (target, span name)
//!   histograms of total and busy time, counts and errors, and the slowest
//!   recent spans with their fields and parent chain — the slow-query log
//!   of every instrumented operation. Served at `/debug/spans` and as
//!   `stethoscope_span_*` in `/metrics`.
//!
//! ```
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let timings = stethoscope::spans::SpanTimings::new();
//! let subscriber = tracing_subscriber::registry().with(timings.layer());
//! # let _guard = tracing::subscriber::set_default(subscriber);
//! # /*
//! tracing::subscriber::set_global_default(subscriber)?;
//! # */
//! let agent = stethoscope::Agent::builder()
//!     .listen("127.0.0.1:0")
//!     .spans(timings)
//!     .start()?;
//!
//! #[tracing::instrument]
//! async fn load_item(id: u64) { /* query the database */ }
//! load_item(7).await;
//!
//! // Also at http://127.0.0.1:<port>/debug/spans?format=text
//! let report = agent.spans().expect("given to the builder").report();
//! assert_eq!((report.spans[0].name, report.spans[0].count), ("load_item", 1));
//! # agent.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod callsites;
mod fields;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod level;
mod recorder;
mod report;

pub use layer::SpanLayer;
pub(crate) use level::parse_ttl;
pub use level::{log_filter, LogFilter, LogLevel, LogLevelChange, LogLevelOrigin, LogLevelStatus};
pub use recorder::{SpanSettings, SpanTimings, OVERFLOW_NAME, SPAN_DURATION_BUCKETS};
pub use report::{SlowSpan, SpanReport, SpanSummary};

use std::time::Duration;

/// Most distinct (target, span name) pairs the span timings keep; spans of
/// further names are counted under the target and name `<overflow>`.
pub const DEFAULT_SPAN_MAX_NAMES: usize = 1000;

/// Spans that take at least this long (creation to close) are candidates
/// for the slow-span log. Half of a typical 100 ms request budget: a query
/// or upstream call this slow is worth reading about.
pub const DEFAULT_SLOW_SPAN_THRESHOLD: Duration = Duration::from_millis(50);

/// Slowest spans the slow-span log keeps per (target, span name).
pub const DEFAULT_SLOW_SPANS_PER_NAME: usize = 10;

/// How long a span stays in the slow-span log: "recent" means closed within
/// this window (the doctor's history length).
pub const DEFAULT_SLOW_SPAN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Bytes of field text (`name=value …`) kept per span for the slow-span
/// log; longer values are cut at a character boundary and marked with `…`.
pub const MAX_SPAN_FIELDS_BYTES: usize = 256;

/// Ancestor span names a slow-span record keeps, nearest first.
pub const MAX_SPAN_PARENTS: usize = 8;

/// Longest `ttl` a log-level change may ask for before it reverts.
pub const MAX_LOG_LEVEL_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest log filter directive `PUT /debug/log-level` accepts, in bytes.
pub const MAX_LOG_DIRECTIVE_BYTES: usize = 4096;

/// The name of the span the current thread is in, if any — the hook for
/// labelling CPU samples by span (docs/embedding.md, "Span timings"): where the label slot is set
/// around each poll of an instrumented future, it can take this name as
/// the `span` label.
///
/// It asks the current dispatcher (a thread-local read and the registry's
/// span stack), so call it when a poll starts, never from a signal handler.
///
/// ```
/// let subscriber = tracing_subscriber::registry();
/// tracing::subscriber::with_default(subscriber, || {
///     assert_eq!(stethoscope::spans::current_span_name(), None);
///     let _query = tracing::info_span!("db_query").entered();
///     assert_eq!(stethoscope::spans::current_span_name(), Some("db_query"));
/// });
/// ```
pub fn current_span_name() -> Option<&'static str> {
    tracing::dispatcher::get_default(|dispatch| {
        dispatch
            .current_span()
            .metadata()
            .map(|metadata| metadata.name())
    })
}

/// Serializes the unit tests that install scoped `tracing` dispatchers or
/// reload a filter: a reload rebuilds tracing's process-wide interest cache
/// and maximum level from the dispatchers it can see, which can disable the
/// callsites of a test running at the same time on another thread.
#[cfg(test)]
pub(crate) fn tracing_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
