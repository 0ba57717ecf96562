//! One name for each platform predicate the crate uses in many places:
//!
//! - `native_unwind` — Linux on x86_64 or aarch64, where the agent can
//!   interrupt another thread with a signal and unwind its stack (CPU
//!   sampling, stall capture) and take jemalloc's sample hooks
//!   (allocation profiles, labels on the live heap);
//! - `native_heap_hook` — Linux on x86_64 or aarch64, where the agent's own
//!   unwinder takes jemalloc's sampled allocations' stacks;
//! - `stethoscope_taskdump` — the `taskdump` feature, `--cfg tokio_unstable`
//!   and a platform where tokio's task dumps exist (Linux on x86, x86_64,
//!   aarch64 or s390x): `/debug/tasks` serves `Handle::dump()`.
//!
//! Elsewhere those pieces compile as stand-ins (`<module>_unsupported.rs`,
//! chosen with `#[path]`) that report "unsupported" or defer to jemalloc.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(native_unwind)");
    println!("cargo::rustc-check-cfg=cfg(native_heap_hook)");
    println!("cargo::rustc-check-cfg=cfg(stethoscope_taskdump)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && (arch == "x86_64" || arch == "aarch64") {
        println!("cargo::rustc-cfg=native_unwind");
        println!("cargo::rustc-cfg=native_heap_hook");
    }
    // Cargo hands a build script the features and every cfg of the target,
    // those of RUSTFLAGS included.
    let taskdump = std::env::var_os("CARGO_FEATURE_TASKDUMP").is_some()
        && std::env::var_os("CARGO_CFG_TOKIO_UNSTABLE").is_some()
        && os == "linux"
        && matches!(arch.as_str(), "x86" | "x86_64" | "aarch64" | "s390x");
    if taskdump {
        println!("cargo::rustc-cfg=stethoscope_taskdump");
    }
}
