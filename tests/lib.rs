//! End-to-end tests live in `e2e/`. This library holds what they share
//! with the `seccomp-exec` helper: a real seccomp filter.

pub mod seccomp;
