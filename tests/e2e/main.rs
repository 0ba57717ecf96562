//! End-to-end tests: real agents on `127.0.0.1:0`, real clients (HTTP,
//! `go tool pprof`, `promtool`, a Prometheus server), ground-truth workloads.

// The test binary runs with jemalloc as its allocator and heap profiling on
// from the first allocation, one sample per 64 KiB on average (denser than
// the default 512 KiB so that ±20% truth checks are far outside sampling
// noise).
stethoscope::heap_profiling!("prof:true,prof_active:true,lg_prof_sample:16");

mod access;
mod allocs;
mod browser;
mod continuous;
mod cpu;
mod current_thread;
mod dashboard;
mod doctor;
mod hardening;
mod heap;
mod hung;
mod labels;
mod lag;

mod metrics;
mod push;
mod sandbox;
mod shapes;
mod spans;
mod support;
mod tour;
mod use_red;
mod wall;
