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

mod agent;
pub mod config;
pub mod cpu;
pub mod doctor;
mod error;
pub mod heap;
pub mod histogram;
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub mod lag;
mod memory;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg_attr(not(feature = "system"), allow(dead_code))]
mod periodic;
pub mod profile;
#[cfg(feature = "red")]
#[cfg_attr(docsrs, doc(cfg(feature = "red")))]
pub mod red;
#[cfg(feature = "system")]
#[cfg_attr(docsrs, doc(cfg(feature = "system")))]
pub mod resources;
mod server;
#[cfg(feature = "spans")]
#[cfg_attr(docsrs, doc(cfg(feature = "spans")))]
pub mod spans;
#[cfg(test)]
mod testing;
#[cfg(all(
    any(feature = "cpu", feature = "runtime"),
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod unwind;

pub use agent::{Agent, AgentBuilder};
pub use error::Error;
