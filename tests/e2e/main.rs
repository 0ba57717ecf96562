//! End-to-end tests: real agents on `127.0.0.1:0`, real clients (HTTP,
//! `go tool pprof`, `promtool`, a Prometheus server), ground-truth workloads.

mod access;
mod cpu;
mod metrics;
mod support;
mod use_red;
