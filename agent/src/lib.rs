//! # stethoscope
//!
//! An in-process profiling and diagnostics agent for Rust services. Add the
//! crate, start the agent in `main`, and a private debug HTTP server inside
//! the process serves on-demand CPU profiles: interactive flame graphs for a
//! browser, and gzip pprof protobufs for `go tool pprof`, Grafana Pyroscope,
//! Parca or speedscope.
//!
//! The debug server runs on its own OS thread with its own single-threaded
//! tokio runtime, so it answers even when every worker of the host's runtime
//! is busy or blocked. It binds `127.0.0.1:6060` by default and refuses a
//! non-loopback address unless a bearer token is set.
//!
//! ```no_run
//! # async fn run() -> Result<(), stethoscope::Error> {
//! let agent = stethoscope::Agent::builder()
//!     .listen("127.0.0.1:6060") // the default; port 0 picks a free port
//!     .with_default_env()       // STETHOSCOPE_ADDR, STETHOSCOPE_TOKEN, ...
//!     .start()?;
//! println!("debug server on http://{}/debug/pprof/", agent.local_addr());
//! // ... run the service ...
//! agent.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Then, from the internal network:
//!
//! ```text
//! curl -o cpu.svg 'http://127.0.0.1:6060/debug/pprof/profile?seconds=30&format=svg'
//! go tool pprof 'http://127.0.0.1:6060/debug/pprof/profile?seconds=30'
//! ```
//!
//! CPU profiles can also be taken from Rust, without the server:
//!
//! ```no_run
//! # async fn run() -> Result<(), stethoscope::Error> {
//! use std::time::Duration;
//! use stethoscope::cpu::{CpuProfiler, ProfileRequest};
//!
//! let profile = CpuProfiler::global()
//!     .profile(ProfileRequest::new(Duration::from_secs(5)))
//!     .await?;
//! println!("{} samples, {:?} of CPU", profile.sample_count(), profile.cpu_time());
//! # Ok(())
//! # }
//! ```
//!
//! The same server answers "which resource is the bottleneck?" with a USE
//! table ([`resources`], `/debug/use`), "how are my routes doing?" with RED
//! metrics from a tower layer ([`Agent::red_layer`], `/debug/red`), and
//! exposes everything to Prometheus ([`metrics`], `/metrics`):
//!
//! ```no_run
//! # async fn run() -> Result<(), stethoscope::Error> {
//! let agent = stethoscope::Agent::builder().start()?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/items/{id}", axum::routing::get(|| async { "item" }))
//!     .layer(agent.red_layer());
//! let report = agent.resources().report();
//! for row in &report.resources {
//!     println!("{}: utilization {:?} ({})", row.name, row.utilization, row.source);
//! }
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! The [`doctor`] turns all of this into an answer: a one-second history of
//! every signal (`/debug/history`) and rules over it that report findings
//! with evidence, advice and the next URL to open (`/debug/doctor`).
//!
//! See the `docs/` folder of the repository for the endpoint reference, the
//! embedding guide, the security model, fleet configuration (Prometheus,
//! Parca, Grafana Alloy) and measured overhead.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Puts the items behind `feature`, and says so in the docs.
macro_rules! cfg_feature {
    ($feature:literal, $($item:item)*) => {
        $(
            #[cfg(feature = $feature)]
            #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
            $item
        )*
    };
}

mod agent;
mod capabilities;
pub mod config;
pub mod cpu;
cfg_feature! { "doctor", pub mod doctor; }
mod error;
pub mod heap;
pub mod histogram;
pub mod labels;
mod memory;
mod mode;
cfg_feature! { "metrics", pub mod metrics; }
// The sampling thread and the watchdog's alarm are used by whichever of
// their capabilities are built.
#[cfg_attr(not(all(feature = "resources", feature = "runtime")), allow(dead_code))]
mod periodic;
pub mod profile;
cfg_feature! { "push", pub mod push; }
// What serializes reports is used by whichever capabilities are built.
#[cfg_attr(
    not(all(feature = "runtime", feature = "spans", feature = "red")),
    allow(dead_code)
)]
mod report;
cfg_feature! { "red", pub mod red; }
cfg_feature! { "resources", pub mod resources; }
cfg_feature! { "runtime", pub mod runtime; }
mod server;
cfg_feature! { "spans", pub mod spans; }
pub mod symbols;
#[cfg(test)]
mod testing;
mod threads;
// Text units are used by whichever reports are built.
#[cfg_attr(
    not(all(feature = "doctor", feature = "runtime", feature = "spans")),
    allow(dead_code)
)]
mod units;
#[cfg(any(
    all(
        native_unwind,
        any(feature = "cpu", feature = "runtime", feature = "heap")
    ),
    all(native_heap_hook, feature = "heap")
))]
mod unwind;

pub use agent::{Agent, AgentBuilder};

/// The Rust examples of the README and the user docs compile and run as
/// doctests, so that what users copy keeps working.
#[cfg(doctest)]
mod user_docs {
    #[doc = include_str!("../../README.md")]
    struct Readme;
    #[doc = include_str!("../../docs/embedding.md")]
    struct Embedding;
    #[doc = include_str!("../../docs/endpoints.md")]
    struct Endpoints;
    #[doc = include_str!("../../docs/runtime.md")]
    struct Runtime;
    #[doc = include_str!("../../docs/security.md")]
    struct Security;
    #[doc = include_str!("../../docs/fleet.md")]
    struct Fleet;
    #[doc = include_str!("../../docs/doctor.md")]
    struct Doctor;
    #[doc = include_str!("../../docs/overhead.md")]
    struct Overhead;
}
pub use error::Error;
