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

/// Crates whose frames carry the application's work without being it: the
/// async runtime, HTTP and RPC servers, service middleware, future
/// combinators and instrumentation wrappers. Their frames are *plumbing*.
const PLUMBING_CRATES: &[&str] = &[
    "tokio",
    "tokio_util",
    "tokio_stream",
    "mio",
    "futures",
    "futures_util",
    "futures_core",
    "futures_task",
    "futures_executor",
    "pin_project",
    "pin_project_lite",
    "async_trait",
    "hyper",
    "hyper_util",
    "h2",
    "axum",
    "axum_core",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "tonic",
    "tracing",
    "tracing_futures",
];

/// Standard-library modules that only start threads, catch panics, call
/// closures and poll futures: plumbing, unlike the rest of `std` (`Vec`,
/// `HashMap`, `memcpy`'s callers), whose frames say where the time goes.
const PLUMBING_STD: &[&str] = &[
    "std::rt::",
    "std::sys::backtrace::",
    "std::sys_common::backtrace::",
    "std::sys::thread::unix::Thread",
    "std::sys::pal::unix::thread::Thread",
    "std::thread::lifecycle::",
    "std::thread::local::",
    "std::thread::Builder",
    "std::thread::spawn",
    "std::thread::scoped::",
    "std::panicking::",
    "std::panic::",
    "core::panic::",
    "core::ops::function::",
    "core::future::",
    "core::pin::",
    "core::task::",
    "core::iter::",
];

/// Traits whose implementations are glue: closure calls, future polls,
/// iterator adapters and `collect`'s specializations. A method of one of
/// them is plumbing whatever type implements it.
const PLUMBING_TRAITS: &[&str] = &[
    "core::ops::function::",
    "core::future::",
    "core::iter::",
    "alloc::vec::spec_",
];

/// C functions that start processes and threads.
const PLUMBING_C: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
    "__rust_try",
];

/// The allocator's functions as a pprof `drop_frames` expression (RE2,
/// matched against whole function names as they appear in our pprof
/// output, generic arguments removed): the global allocator and jemalloc,
/// and the standard library's allocating primitives — growing a `Vec` or
/// `String`, `vec![x; n]`, boxing, `Arc`/`Rc` allocation, hash-table
/// growth. Only functions that never call back into the application are
/// listed: pprof cuts a stack at the outermost match, and a match on, say,
/// `FromIterator::from_iter` would cut away the closure that allocated.
pub(crate) const ALLOCATOR_FRAMES: &str = concat!(
    r"__rust_(alloc|dealloc|realloc|alloc_zeroed|no_alloc_shim_is_unstable.*)",
    r"|(__rdl_|__rg_|_rjem_).*",
    r"|malloc|calloc|realloc|free|posix_memalign|aligned_alloc|memalign|valloc|mallocx|rallocx",
    r"|<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::.*",
    r"|<std::alloc::System as core::alloc::global::GlobalAlloc>::.*",
    r"|alloc::alloc::.*|<alloc::alloc::Global as core::alloc::Allocator>::.*",
    r"|alloc::raw_vec::.*|<alloc::raw_vec::.*",
    r"|<?alloc::vec::Vec>?::(with_capacity.*|reserve.*|try_reserve.*|push.*|extend_from_slice|append_elements|insert|resize|into_boxed_slice|shrink_to.*)",
    r"|<.* as alloc::slice::.*ConvertVec>::to_vec|alloc::slice::.*::to_vec.*",
    r"|alloc::vec::from_elem|<.* as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
    r"|<?alloc::string::String>?::(with_capacity|reserve.*|push.*|insert.*|from_utf8_lossy)",
    r"|<alloc::string::String as core::convert::From>::from|<str as alloc::string::ToString>::to_string",
    r"|<?alloc::boxed::Box>?::(new.*|try_new.*|from.*|(try_)?clone_from_ref.*|box_new.*)|alloc::boxed::box_new.*",
    r"|<?alloc::sync::Arc>?::(new.*|allocate_for.*|from.*|try_allocate_for.*)(::\{\{closure\}\})?",
    r"|<?alloc::rc::Rc>?::(new.*|allocate_for.*|from.*)(::\{\{closure\}\})?",
    r"|hashbrown::raw::alloc::.*|<?hashbrown::raw::RawTableInner>?::(new_uninitialized|fallible_with_capacity|prepare_resize)",
    r"|<?alloc::collections::.*::(with_capacity|reserve.*|push.*)",
);

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

/// The trait of a `<Type as Trait>::method` path.
fn trait_of(name: &str) -> Option<&str> {
    let qualified = name.trim_start().strip_prefix('<')?;
    let mut depth = 0usize;
    for (i, b) in qualified.bytes().enumerate() {
        match b {
            b'<' => depth += 1,
            b'>' if depth == 0 => return None,
            b'>' => depth -= 1,
            b' ' if depth == 0 && qualified[i..].starts_with(" as ") => {
                return Some(&qualified[i + 4..]);
            }
            _ => {}
        }
    }
    None
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

/// Whether `name` is plumbing: runtime, server, middleware and combinator
/// frames, thread starts, panic catchers, closure shims and `Pin` polls —
/// frames that appear on every request's stack and answer nothing. Never
/// true for a function the application wrote.
pub(crate) fn is_plumbing(name: &str) -> bool {
    let name = name.trim();
    // glibc's internal aliases: `__GI___clone3` is `__clone3`.
    if PLUMBING_C.contains(&name.trim_start_matches("__GI_")) {
        return true;
    }
    let owner = owner(name);
    if AGENT_WRAPPERS.iter().any(|w| owner.starts_with(w)) {
        return true;
    }
    // `<{closure} as FnOnce>::call_once`, `<Box<F> as FnOnce>::call_once`,
    // `<Vec<T> as FromIterator<T>>::from_iter`: the self type may be
    // anything, the trait says what they are.
    if trait_of(name).is_some_and(|t| PLUMBING_TRAITS.iter().any(|p| t.starts_with(p))) {
        return true;
    }
    match crate_of(name) {
        Some(krate) if PLUMBING_CRATES.contains(&krate) => true,
        Some("std" | "core" | "alloc") => PLUMBING_STD.iter().any(|p| owner.starts_with(p)),
        _ => false,
    }
}

/// A short name for the library a plumbing frame belongs to, for markers:
/// its crate with `_util`/`_core`-style suffixes dropped (`futures_util` →
/// `futures`), `std` for the standard library, `libc` for C.
fn plumbing_family(name: &str) -> &str {
    match crate_of(name) {
        None => "libc",
        Some("std" | "core" | "alloc") => "std",
        Some("stethoscope") => "stethoscope",
        Some(krate) => krate
            .split('_')
            .next()
            .filter(|k| !k.is_empty())
            .unwrap_or(krate),
    }
}

/// The marker a run of folded frames becomes: the libraries it crossed,
/// root side first, and how many frames it hides, e.g.
/// `[std → tokio → hyper → axum: 43 frames]`.
pub(crate) fn marker(run: &[&str]) -> String {
    let mut families: Vec<&str> = Vec::new();
    for frame in run {
        let family = plumbing_family(frame);
        if !families.contains(&family) {
            families.push(family);
        }
    }
    let shown = if families.len() > 5 {
        format!("{} → …", families[..5].join(" → "))
    } else {
        families.join(" → ")
    };
    let noun = if run.len() == 1 { "frame" } else { "frames" };
    format!("[{shown}: {} {noun}]", run.len())
}

/// Shortest run of plumbing folded into a marker: one frame is clearer as
/// itself than as a marker that names it.
pub(crate) const MIN_FOLDED_RUN: usize = 2;

/// Folds each run of plumbing frames of a root-first stack into one marker
/// frame that says what it hides (see [`is_plumbing`]), so a handler sits a
/// few frames from its thread's root. The leaf is never folded: where the
/// time or memory is spent stays visible even when it is a library's.
/// Frames the application wrote are never folded.
pub(crate) fn fold_plumbing<'a>(
    frames_root_first: impl IntoIterator<Item = &'a str>,
) -> Vec<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    let frames: Vec<&str> = frames_root_first.into_iter().collect();
    let mut out: Vec<Cow<'a, str>> = Vec::with_capacity(frames.len().min(32));
    let leaf = frames.len().saturating_sub(1);
    let mut run: Vec<&'a str> = Vec::new();
    let flush = |run: &mut Vec<&'a str>, out: &mut Vec<Cow<'a, str>>| {
        if run.len() >= MIN_FOLDED_RUN {
            out.push(Cow::Owned(marker(run)));
        } else {
            out.extend(run.iter().map(|f| Cow::Borrowed(*f)));
        }
        run.clear();
    };
    for (index, frame) in frames.iter().enumerate() {
        if index != leaf && is_plumbing(frame) {
            run.push(frame);
        } else {
            flush(&mut run, &mut out);
            out.push(Cow::Borrowed(frame));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Whether `name` is the agent's own code (not a wrapper it puts around
/// the application's futures).
pub(crate) fn is_agent(name: &str) -> bool {
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

    /// A real stack of the demo's `/burn` handler, root first, as the
    /// sampler captured it (`format=folded&trim=none`, thread name removed).
    const BURN_STACK: &str = include_str!("fixtures/burn_stack.txt");

    #[test]
    fn a_handler_is_a_few_frames_from_its_thread_root() {
        let frames: Vec<&str> = BURN_STACK.lines().collect();
        assert!(frames.len() > 90, "the fixture is the whole stack");
        let folded = fold_plumbing(frames.iter().copied());
        let burn_hot = folded
            .iter()
            .position(|f| f == "stethoscope_examples::workload::burn_hot")
            .expect("burn_hot is kept");
        assert!(burn_hot <= 4, "{folded:#?}");
        assert_eq!(
            folded[0], "[libc → std → tokio → axum → hyper → …: 94 frames]",
            "{folded:#?}"
        );
        assert_eq!(folded[1], "stethoscope_examples::demo::burn::{{closure}}");
        // Nothing the service wrote is folded away, and the leaf stays.
        for frame in &frames {
            if !is_library(frame) && crate_of(frame) != Some("stethoscope") {
                assert!(folded.iter().any(|f| f == frame), "{frame} was folded");
            }
        }
        assert_eq!(
            folded.last(),
            frames
                .last()
                .map(|f| std::borrow::Cow::Borrowed(*f))
                .as_ref()
        );
        // The frames hidden by markers add up to the whole stack.
        let hidden: usize = folded
            .iter()
            .filter_map(|f| {
                f.strip_suffix(" frames]")?
                    .rsplit_once(": ")?
                    .1
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        let shown = folded.iter().filter(|f| !f.starts_with('[')).count();
        assert_eq!(hidden + shown, frames.len());
    }

    #[test]
    fn plumbing_is_runtime_framework_and_shims_never_the_service() {
        for name in [
            "tokio::runtime::task::harness::poll_future",
            "<F as axum::handler::Handler<(M,T1),S>>::call::{{closure}}",
            "<core::pin::Pin<P> as core::future::future::Future>::poll",
            "<stethoscope::red::layer::ResponseFuture<F> as core::future::future::Future>::poll",
            "<alloc::boxed::Box<dyn core::ops::function::FnOnce<()>> as core::ops::function::FnOnce<()>>::call_once",
            "core::ops::function::FnOnce::call_once{{vtable.shim}}",
            "std::panicking::catch_unwind::do_call",
            "__GI___clone3",
            "start_thread",
            "<futures_util::future::future::Map<Fut,F> as core::future::future::Future>::poll",
            "<alloc::vec::Vec<T> as core::iter::traits::collect::FromIterator<T>>::from_iter",
            "<alloc::vec::Vec<T> as alloc::vec::spec_from_iter::SpecFromIter<T,I>>::from_iter",
            "core::iter::adapters::map::map_fold::{{closure}}",
        ] {
            assert!(is_plumbing(name), "{name}");
        }
        for name in [
            "my_service::handler::{{closure}}",
            "<my_service::Codec as tokio_util::codec::Decoder>::decode",
            "alloc::vec::Vec<T,A>::push",
            "core::slice::sort::stable::driftsort_main",
            "memcpy",
            "std::thread::functions::sleep",
            "std::sys::thread::unix::sleep::nanosleep",
            "stethoscope::symbols::dwarf::LineTable::of",
            "<{closure} as my_service::Job>::run",
        ] {
            assert!(!is_plumbing(name), "{name}");
        }
    }

    #[test]
    fn short_runs_and_a_plumbing_leaf_stay_as_they_are() {
        let stack = [
            "start_thread",
            "my::main",
            "core::ops::function::FnOnce::call_once",
            "my::work",
            "tokio::runtime::park::CachedParkThread::block_on",
            "tokio::runtime::park::Inner::park",
        ];
        let folded = fold_plumbing(stack);
        assert_eq!(
            folded,
            [
                "start_thread",
                "my::main",
                "core::ops::function::FnOnce::call_once",
                "my::work",
                "tokio::runtime::park::CachedParkThread::block_on",
                "tokio::runtime::park::Inner::park",
            ]
        );
        let longer = fold_plumbing(["my::work", "tokio::a", "tokio::b", "tokio::c"]);
        assert_eq!(longer, ["my::work", "[tokio: 2 frames]", "tokio::c"]);
    }

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
