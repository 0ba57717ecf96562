//! End-to-end tests: real agents on `127.0.0.1:0`, real clients (HTTP,
//! `go tool pprof`), ground-truth workloads.

mod access;
mod cpu;
mod support;
