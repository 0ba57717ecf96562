//! The doctor's engine: plain data and pure functions, fed by the live
//! doctor (or by tests) and touching nothing else.
//!
//! - [`History`]: a fixed ring of one [`Row`] a second (default 15 min,
//!   about 443 KiB, allocation-free after [`History::new`]), read as
//!   [`HistoryColumns`] for `GET /debug/history`.
//! - [`rules`]: one pure function per problem — [`Rule::ALL`] — from the
//!   history and the readings of now ([`Current`]) to [`Finding`]s whose
//!   condition holds now.
//! - [`RuleStates`]: per (rule, resource) hysteresis; a finding opens after
//!   its condition held for the rule's window and closes after it was clear
//!   for as long, reported as [`Transition`]s.
//! - [`Budgets`]: per-route latency and error targets and CPU / memory
//!   ceilings, from Rust ([`Budget`]) or `STETHOSCOPE_BUDGETS`.
//! - [`CaptureLimiter`]: what to capture when a finding opens, bounded and
//!   rate-limited.
//! - [`diagnose`]: all of it at once, giving a [`DoctorReport`].

pub(crate) mod budget;
pub(crate) mod capture;
pub(crate) mod current;
pub(crate) mod defaults;
pub use defaults::{DEFAULT_HISTORY_ROWS, HISTORY_ROWS_RANGE, MAX_HISTORY_RESOURCES};
pub(crate) mod finding;
#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod frames;
pub(crate) mod history;
pub(crate) mod report;
pub(crate) mod rules;
pub(crate) mod settings;
pub(crate) mod state;
pub(crate) mod stats;

pub use budget::{Budget, Budgets, RouteBudget, ANY_ROUTE, MAX_ROUTE_BUDGETS};
pub(crate) use capture::CaptureLimiter;
pub use capture::CapturePolicy;
pub(crate) use current::{Current, InFlightReading, MemoryLimitSource, RouteReading, StallReading};
#[cfg(any(test, feature = "resources"))]
pub(crate) use current::ResourceReading;
pub use finding::{
    Artifact, ArtifactKind, Evidence, Finding, FindingState, Severity, StallEvidence,
};
pub(crate) use history::{History, Row, Window};
pub use history::{HistoryColumns, Series, SeriesColumn};
pub(crate) use report::diagnose;
pub use report::{DoctorReport, HistoryInfo, PendingFinding, Status};
pub use rules::Rule;
pub(crate) use settings::parse_history_length;
pub use settings::{DoctorConfig, DoctorSettings, RuleWindows};
pub(crate) use state::{Change, RuleStates, Transition};
