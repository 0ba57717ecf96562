//! Workloads and services for trying and testing stethoscope.
//!
//! [`workload`] holds ground-truth CPU workloads (a known 3:1 split between
//! two functions, time spent inside libc's `memcpy`, thousands of distinct
//! stacks); [`demo`] is the axum service behind
//! `cargo run --release -p stethoscope-examples --bin demo`.

pub mod bench;
pub mod demo;
pub mod receiver;
pub mod workload;
