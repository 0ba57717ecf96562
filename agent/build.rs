//! One name for each platform predicate the crate uses in many places:
//!
//! - `native_unwind` — Linux on x86_64 or aarch64, where the agent can
//!   interrupt another thread with a signal and unwind its stack (CPU
//!   sampling, stall capture) and take jemalloc's sample hooks
//!   (allocation profiles, labels on the live heap);
//! - `native_heap_hook` — Linux on x86_64 or aarch64, where the agent's own
//!   unwinder takes jemalloc's sampled allocations' stacks.
//!
//! Elsewhere those pieces compile as stand-ins (`<module>_unsupported.rs`,
//! chosen with `#[path]`) that report "unsupported" or defer to jemalloc.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(native_unwind)");
    println!("cargo::rustc-check-cfg=cfg(native_heap_hook)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && (arch == "x86_64" || arch == "aarch64") {
        println!("cargo::rustc-cfg=native_unwind");
        println!("cargo::rustc-cfg=native_heap_hook");
    }
}
