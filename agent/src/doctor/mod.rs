//! The doctor: a one-second history of every signal, rules over it that
//! turn numbers into findings with evidence and advice, hysteresis so
//! findings neither flap nor fire on a single spike, and performance
//! budgets. Clinic.js Doctor for Rust services; docs/doctor.md describes
//! every rule, its thresholds and windows.
//!
//! Three parts, each in its own place:
//!
//! - the **engine** (`engine/`): plain data and pure functions — the
//!   history ring, one rule per problem, hysteresis, budgets, the capture
//!   limiter — giving a [`DoctorReport`];
//! - the **live doctor** (`live/`): [`Doctor`], whose thread reads every
//!   capability once a second into the history, evaluates the rules, logs
//!   and counts transitions and captures heap snapshots and CPU profiles
//!   for new findings;
//! - the HTTP side (`/debug/doctor`, `/debug/history`) lives with the
//!   server, which parses queries and renders these types.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stethoscope::Error> {
//! use std::time::Duration;
//! use stethoscope::doctor::{Budget, Status};
//!
//! let agent = stethoscope::Agent::builder()
//!     .listen("127.0.0.1:0")
//!     .budget(Budget::route("GET /items/{id}").p95(Duration::from_millis(300)))
//!     .start()?;
//! let report = agent.doctor().diagnose();
//! if report.status != Status::Healthy {
//!     for finding in &report.findings {
//!         println!("{}: {} (next: {:?})", finding.rule.id(), finding.title, finding.next);
//!     }
//! }
//! println!("{}", report.to_text());
//! # agent.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub(crate) mod engine;
mod live;

pub use engine::{
    Artifact, ArtifactKind, Budget, Budgets, CapturePolicy, DoctorConfig, DoctorReport,
    DoctorSettings, Evidence, Finding, FindingState, HistoryColumns, HistoryInfo,
    PendingFinding, RouteBudget, Rule, RuleWindows, Series, SeriesColumn, Severity,
    StallEvidence, Status, ANY_ROUTE, DEFAULT_HISTORY_ROWS, HISTORY_ROWS_RANGE,
    MAX_HISTORY_RESOURCES, MAX_ROUTE_BUDGETS,
};
pub(crate) use engine::{
    defaults, diagnose, parse_history_length, CaptureLimiter, Change, Current, History,
    InFlightReading, MemoryLimitSource, RouteReading, Row, RuleStates, StallReading, Transition, Window,
};
#[cfg(feature = "resources")]
pub(crate) use engine::ResourceReading;
pub use live::{Doctor, MAX_CPU_ARTIFACTS, MAX_CPU_ARTIFACT_BYTES};
pub(crate) use live::Sources;
#[cfg(feature = "runtime")]
pub(crate) use live::DumpArtifact;
