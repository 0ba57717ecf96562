//! What a frame is, judged by the crate its function belongs to: the
//! standard library, a library the application or the agent builds on, the
//! agent itself, or the application's own code.
//!
//! Function names are the demangled Rust paths the symbolizer produces:
//! `crate::module::function`, `<Type as crate::Trait>::method`,
//! `<crate::Type<T>>::method`, `crate::a::<impl crate::b::Type>::method`,
//! with `{{closure}}` segments. C functions (`malloc`, `memcpy`,
//! `start_thread`) have no path.

/// The crates of Rust's standard library.
const STANDARD: &[&str] = &["std", "core", "alloc", "proc_macro", "__rustc", "hashbrown"];

/// Crates that applications build on rather than write: runtimes, HTTP and
/// RPC frameworks, future combinators, tracing, allocators, and the
/// libraries the agent itself uses. A frame of one of them is never the
/// answer to "whose code is this?".
const LIBRARIES: &[&str] = &[
    // Async runtime and its pieces.
    "tokio",
    "tokio_util",
    "tokio_stream",
    "mio",
    "futures",
    "futures_util",
    "futures_core",
    "futures_task",
    "futures_channel",
    "futures_executor",
    "pin_project",
    "pin_project_lite",
    "async_trait",
    "async_stream",
    // HTTP and RPC.
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "http_body",
    "http_body_util",
    "httparse",
    "axum",
    "axum_core",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "tonic",
    "bytes",
    // Logging and synchronisation.
    "tracing",
    "tracing_core",
    "tracing_subscriber",
    "tracing_futures",
    "parking_lot",
    "parking_lot_core",
    "crossbeam_channel",
    "crossbeam_utils",
    "crossbeam_epoch",
    "crossbeam_deque",
    // Allocators.
    "tikv_jemallocator",
    "tikv_jemalloc_sys",
    "tikv_jemalloc_ctl",
    "jemallocator",
    "mimalloc",
    // What the agent builds on: symbols, encoders, /proc readers.
    "gimli",
    "object",
    "addr2line",
    "framehop",
    "memmap2",
    "rustc_demangle",
    "inferno",
    "quick_xml",
    "flate2",
    "miniz_oxide",
    "crc32fast",
    "prost",
    "serde",
    "serde_json",
    "hdrhistogram",
    "procfs",
    "procfs_core",
    "tokio_metrics",
    "ipnet",
    "humantime",
    "form_urlencoded",
    "indexmap",
    "smallvec",
    "str_stack",
    "itoa",
    "ryu",
    "memchr",
];

/// Modules of the agent that wrap the application's own futures (the RED
/// layer's response future): their frames sit on the application's stacks
/// and say nothing about who allocated.
const AGENT_WRAPPERS: &[&str] = &["stethoscope::red::"];

/// The path a function belongs to: for a method of `<Type as Trait>`, the
/// type's path when it is a named type and the trait's otherwise (a
/// primitive or a generic parameter); for `<Type>::method`, the type's.
fn owner(name: &str) -> &str {
    let name = name.trim_start();
    let Some(qualified) = name.strip_prefix('<') else {
        return name;
    };
    // Split `Type as Trait>::…` (or `Type>::…`) at depth 0.
    let mut depth = 0usize;
    let mut self_end = qualified.len();
    let mut trait_start = None;
    let bytes = qualified.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' if depth == 0 => {
                self_end = self_end.min(i);
                break;
            }
            b'>' => depth -= 1,
            b' ' if depth == 0 && qualified[i..].starts_with(" as ") => {
                self_end = i;
                trait_start = Some(i + 4);
            }
            _ => {}
        }
        i += 1;
    }
    let self_ty = qualified[..self_end]
        .trim_start_matches(['&', '*', '['])
        .trim_start_matches("mut ")
        .trim_start_matches("const ")
        .trim_start_matches("dyn ");
    if self_ty.contains("::") {
        return self_ty;
    }
    match trait_start {
        Some(start) => &qualified[start..],
        None => self_ty,
    }
}

/// The crate a function belongs to, `None` for a C function or an address.
pub(crate) fn crate_of(name: &str) -> Option<&str> {
    let owner = owner(name);
    let end = owner.find("::")?;
    let krate = &owner[..end];
    let valid = !krate.is_empty()
        && krate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    valid.then_some(krate)
}

/// Whether `name` is code nobody in the service wrote: the standard
/// library, a well-known library, C (allocator, libc) or an address.
pub(crate) fn is_library(name: &str) -> bool {
    match crate_of(name) {
        None => true,
        Some(krate) => STANDARD.contains(&krate) || LIBRARIES.contains(&krate),
    }
}

/// Whether `name` is the agent's own code (not a wrapper it puts around
/// the application's futures).
fn is_agent(name: &str) -> bool {
    let owner = owner(name);
    crate_of(name) == Some("stethoscope") && !AGENT_WRAPPERS.iter().any(|w| owner.starts_with(w))
}

/// Whether a stack (leaf first) belongs to the agent: decided by the
/// innermost frame that is neither a library's nor a wrapper the agent puts
/// around the application's futures. The agent's symbolizer tables are the
/// agent's; a leak in a handler that runs under the RED layer is the
/// application's, although the layer's frame is on its stack.
pub(crate) fn is_agent_stack<S: AsRef<str>>(frames_leaf_first: &[S]) -> bool {
    for frame in frames_leaf_first {
        let name = frame.as_ref();
        if is_agent(name) {
            return true;
        }
        if crate_of(name) == Some("stethoscope") || is_library(name) {
            continue;
        }
        return false;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaf-first stacks captured from the demo (`/debug/heap/diff?format=json`
    /// after `/leak` and a first snapshot), frames trimmed to the part that
    /// decides.
    const APP_LEAK_UNDER_RED: &[&str] = &[
        "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
        "alloc::vec::Vec<T,A>::with_capacity_in",
        "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
        "alloc::vec::from_elem",
        "stethoscope_examples::workload::filled_chunk",
        "core::ops::function::FnMut::call_mut",
        "<alloc::vec::Vec<T> as core::iter::traits::collect::FromIterator<T>>::from_iter",
        "stethoscope_examples::workload::leak_chunks",
        "stethoscope_examples::demo::leak::{{closure}}",
        "<F as axum::handler::Handler<(M,T1),S>>::call::{{closure}}",
        "<core::pin::Pin<P> as core::future::future::Future>::poll",
        "<axum::routing::route::RouteFuture<E> as core::future::future::Future>::poll",
        "<stethoscope::red::layer::ResponseFuture<F> as core::future::future::Future>::poll",
        "<F as futures_core::future::TryFuture>::try_poll",
        "tokio::runtime::task::harness::poll_future",
        "std::thread::lifecycle::spawn_unchecked::{{closure}}::{{closure}}",
        "start_thread",
        "clone3",
    ];

    const AGENT_DEBUG_INFO: &[&str] = &[
        "alloc::raw_vec::RawVecInner<A>::finish_grow",
        "alloc::vec::Vec<T,A>::push",
        "stethoscope::symbols::dwarf::LineTable::of",
        "stethoscope::symbols::dwarf::UnitTables::build",
        "stethoscope::symbols::symbolize::Symbolizer::resolve",
        "stethoscope::profile::build::<impl stethoscope::profile::Profile>::build",
        "stethoscope::heap::HeapProfiler::take_snapshot",
        "stethoscope::server::heap::take_snapshot::{{closure}}::{{closure}}",
        "<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll",
        "tokio::runtime::blocking::pool::Inner::run",
        "std::sys::backtrace::__rust_begin_short_backtrace",
    ];

    #[test]
    fn owners_and_crates_of_rust_paths() {
        for (name, krate) in [
            ("alloc::vec::from_elem", Some("alloc")),
            (
                "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
                Some("alloc"),
            ),
            (
                "<F as axum::handler::Handler<(M,T1),S>>::call::{{closure}}",
                Some("axum"),
            ),
            (
                "<stethoscope::red::layer::ResponseFuture<F> as core::future::future::Future>::poll",
                Some("stethoscope"),
            ),
            (
                "stethoscope::profile::build::<impl stethoscope::profile::Profile>::build",
                Some("stethoscope"),
            ),
            ("<alloc::string::String>::push_str", Some("alloc")),
            (
                "<&mut serde_json::de::Deserializer<R> as serde::de::Deserializer>::deserialize_map",
                Some("serde_json"),
            ),
            ("<[T] as core::slice::Join<&[T]>>::join", Some("core")),
            ("memcpy", None),
            ("0x7f00deadbeef", None),
            ("demo::main", Some("demo")),
        ] {
            assert_eq!(crate_of(name), krate, "{name}");
        }
    }

    #[test]
    fn a_leak_under_the_red_layer_is_the_applications() {
        assert!(!is_agent_stack(APP_LEAK_UNDER_RED));
        // Even with the application frames gone (inlined), the RED layer
        // alone does not make it the agent's.
        let only_wrappers: Vec<&str> = APP_LEAK_UNDER_RED
            .iter()
            .copied()
            .filter(|f| !f.starts_with("stethoscope_examples"))
            .collect();
        assert!(!is_agent_stack(&only_wrappers));
    }

    #[test]
    fn the_symbolizers_tables_are_the_agents() {
        assert!(is_agent_stack(AGENT_DEBUG_INFO));
    }

    #[test]
    fn the_innermost_own_frame_decides() {
        // Application code called from an agent thread is still the
        // application's (a user `Resource::sample`), and agent code called
        // from an application thread is the agent's.
        assert!(!is_agent_stack(&[
            "alloc::vec::Vec<T,A>::push",
            "myservice::pool::Pool::sample",
            "stethoscope::resources::ResourceMonitor::tick",
        ]));
        assert!(is_agent_stack(&[
            "alloc::vec::Vec<T,A>::push",
            "stethoscope::runtime::probe::ProbeSlot::spawn",
            "myservice::main",
        ]));
        assert!(!is_agent_stack::<&str>(&[]));
    }
}
