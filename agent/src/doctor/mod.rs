//! The doctor (DESIGN §8): a one-second history of every signal, rules
//! over it that turn numbers into findings with evidence and advice, and
//! performance budgets.
//!
//! - [`History`]: a fixed ring of one [`Row`] a second (default 15 min,
//!   about 436 KiB, allocation-free after [`History::new`]), read as
//!   [`HistoryColumns`] for `GET /debug/history?since=-5m&series=…`
//!   ([`parse_since`], [`parse_series`]).
//! - [`rules`]: one pure function per problem — [`Rule::ALL`] — from the
//!   history and the readings of now ([`Current`]) to [`Finding`]s whose
//!   condition holds now.
//! - [`Budgets`]: per-route latency and error targets and CPU / memory
//!   ceilings, from Rust ([`Budget`]) or `STETHOSCOPE_BUDGETS`
//!   ([`Budgets::parse`]).

mod budget;
mod current;
mod finding;
#[cfg(test)]
mod fixtures;
mod frames;
mod history;
mod query;
pub mod rules;
mod settings;
mod stats;
mod units;

pub use budget::{Budget, Budgets, RouteBudget, ANY_ROUTE, MAX_ROUTE_BUDGETS};
pub use current::{Current, MemoryLimitSource, ResourceReading, RouteReading, StallReading};
pub use finding::{
    Artifact, ArtifactKind, Evidence, Finding, FindingState, Severity, StallEvidence,
};
pub use history::{
    History, HistoryColumns, ResourceSlot, Row, RowRef, Series, SeriesColumn, Window,
};
pub use query::{parse_history_length, parse_series, parse_since};
pub use rules::{Rule, RuleInput};
pub use settings::{DoctorConfig, RuleWindows};
