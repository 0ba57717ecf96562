//! The doctor: a one-second history of every signal, rules over it that
//! turn numbers into findings with evidence and advice, hysteresis so
//! findings neither flap nor fire on a single spike, and performance
//! budgets (DESIGN §8). Clinic.js Doctor for Rust services.
//!
//! Everything here is plain data and pure functions, fed by the agent:
//!
//! - [`History`]: a fixed ring of one [`Row`] a second (default 15 min,
//!   about 443 KiB, allocation-free after [`History::new`]), read as
//!   [`HistoryColumns`] for `GET /debug/history?since=-5m&series=…`
//!   ([`parse_since`], [`parse_series`]).
//! - [`rules`]: one pure function per problem — [`Rule::ALL`] — from the
//!   history and the readings of now ([`Current`]) to [`Finding`]s whose
//!   condition holds now.
//! - [`RuleStates`]: per (rule, resource) hysteresis; a finding opens after
//!   its condition held for the rule's window and closes after it was clear
//!   for as long, reported as [`Transition`]s.
//! - [`Budgets`]: per-route latency and error targets and CPU / memory
//!   ceilings, from Rust ([`Budget`]) or `STETHOSCOPE_BUDGETS`
//!   ([`Budgets::parse`]).
//! - [`CaptureLimiter`]: what to capture when a finding opens (a heap
//!   snapshot for memory growth, a CPU profile for CPU saturation), bounded
//!   and rate-limited.
//! - [`diagnose`]: all of it at once, giving a [`DoctorReport`] (the JSON
//!   of `GET /debug/doctor`, and a text rendering).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use stethoscope::doctor::{diagnose, Current, DoctorConfig, History, Row, RuleStates, Series, Status};
//!
//! let mut history = History::new(900);
//! let mut states = RuleStates::new();
//! let config = DoctorConfig::default();
//! let start = SystemTime::now() - Duration::from_secs(60);
//! for s in 0..60 {
//!     let at = start + Duration::from_secs(s);
//!     // The executor lags 250 ms every second: blocked.
//!     history.push(&Row::new(at).with(Series::LagP50Ms, 30.0).with(Series::LagMaxMs, 250.0));
//!     let (report, transitions) = diagnose(&history, &Current::default(), &config, &mut states, at);
//!     for t in &transitions {
//!         println!("{} {} ({})", t.change.as_str(), t.rule, t.resource);
//!     }
//!     if s == 59 {
//!         assert_eq!(report.status, Status::Warning);
//!         assert_eq!(report.findings[0].rule.id(), "event_loop_blocked");
//!     }
//! }
//! ```
//!
//! docs/doctor.md describes every rule, its thresholds and windows.

mod budget;
mod capture;
mod current;
mod finding;
#[cfg(test)]
mod fixtures;
mod frames;
mod history;
#[cfg(feature = "doctor")]
mod live;
mod query;
#[cfg(feature = "doctor")]
mod recorder;
mod report;
pub mod rules;
mod settings;
mod state;
mod stats;
mod units;

pub use budget::{Budget, Budgets, RouteBudget, ANY_ROUTE, MAX_ROUTE_BUDGETS};
pub use capture::{CaptureLimiter, CapturePolicy};
pub use current::{Current, MemoryLimitSource, ResourceReading, RouteReading, StallReading};
pub use finding::{
    Artifact, ArtifactKind, Evidence, Finding, FindingState, Severity, StallEvidence,
};
pub use history::{
    History, HistoryColumns, ResourceSlot, Row, RowRef, Series, SeriesColumn, Window,
};
#[cfg(feature = "doctor")]
pub use live::{Doctor, MAX_CPU_ARTIFACTS, MAX_CPU_ARTIFACT_BYTES};
pub use query::{parse_history_length, parse_series, parse_since};
pub use report::{diagnose, DoctorReport, HistoryInfo, PendingFinding, Status};
pub use rules::{Rule, RuleInput};
pub use settings::{DoctorConfig, DoctorSettings, RuleWindows};
pub use state::{Change, PendingCondition, RuleState, RuleStates, Transition};
