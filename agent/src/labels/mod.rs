//! Labels on profile samples: which request, tenant or task the sampled
//! code was working for — Go's `pprof.Do` and `pprof.Labels` for Rust
//! futures.
//!
//! A label set (`route=/items/{id}`, `method=GET`, `tenant=acme`, …) is
//! interned once into a bounded table and then travels as a `u32`. A
//! [`Labelled`] future writes that id into a per-thread slot at the start of
//! every poll and puts the previous one back at the end, so nesting works
//! (inner labels add to outer ones) and a future moved to another worker
//! thread keeps its labels. The CPU and wall-clock samplers' signal handlers
//! read the slot of the thread they interrupt and store the id with the
//! sample — no lock, no allocation.
//!
//! Sources of labels:
//! - the RED layer ([`Agent::red_layer`](crate::Agent::red_layer)) labels
//!   every request with `route` (the matched template) and `method`, with
//!   no code;
//! - [`with_labels`] / [`Labels::instrument`] label any future;
//! - [`task`] names a spawned task (`task=<name>`);
//! - [`scope`] / [`Labels::enter`] label synchronous code until a guard is
//!   dropped.
//!
//! In profiles, labels appear as pprof sample labels (`go tool pprof -tags`,
//! `-tagfocus route=/items/{id}`), as `by=<key>` tables and `group=<key>`
//! flame-graph roots (`docs/endpoints.md`), and in JSON.
//!
//! ```
//! use stethoscope::labels::{task, with_labels, Labels};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Per call:
//! let report = with_labels([("tenant", "acme")], async { "report" }).await;
//! // Interned once, applied many times:
//! let tenant = Labels::new([("tenant", "acme")]);
//! for _ in 0..3 {
//!     tenant.instrument(async { /* work */ }).await;
//! }
//! // A named background task; spawned work can inherit the current labels:
//! tokio::spawn(task("cache-refresher", async {
//!     tokio::spawn(Labels::current().instrument(async { /* also task=cache-refresher */ }));
//! }));
//! # let _ = report;
//! # }
//! ```

mod future;
mod set;
pub(crate) mod slot;
mod table;

pub use future::{scope, task, with_labels, LabelGuard, Labelled};
pub use set::{LabelSet, MAX_LABEL_BYTES, RESERVED_KEYS};
#[cfg(feature = "red")]
pub(crate) use table::intern_sorted;
#[cfg(feature = "spans")]
pub(crate) use table::merge;
pub(crate) use table::resolve;
pub use table::{Labels, MAX_LABEL_SETS, OVERFLOW_VALUE};
