//! Reading a stall's stack: which frame is the application's, and what
//! kind of blocking call sits above it.

use crate::profile::frames::crate_of;

/// Whether a frame is library code: a listed crate, a C symbol, an address.
fn is_library(frame: &str, library_crates: &[String]) -> bool {
    match crate_of(frame) {
        Some(name) => library_crates.iter().any(|c| c == name),
        None => true,
    }
}

/// The leaf-most frame of the application, with its index in `frames`
/// (leaf first). The application's crate is the one of the root-most frame
/// outside the library crates — on a worker thread, the future the runtime
/// polls (`demo::handler::{{closure}}`) — so a dependency called from it
/// (`postgres::Client::query`) is not mistaken for it.
pub(crate) fn application_frame<'a>(
    frames: &'a [String],
    library_crates: &[String],
) -> Option<(usize, &'a str)> {
    let root_most = frames
        .iter()
        .rev()
        .find(|f| !is_library(f, library_crates))?;
    let app = crate_of(root_most)?;
    frames
        .iter()
        .enumerate()
        .find(|(_, f)| crate_of(f) == Some(app))
        .map(|(i, f)| (i, f.as_str()))
}

/// The leaf-most frame outside both the library crates and the
/// application, above (leaf-ward of) frame `app_index`: the dependency the
/// application called into.
pub(crate) fn dependency_frame<'a>(
    frames: &'a [String],
    app_index: usize,
    library_crates: &[String],
) -> Option<&'a str> {
    let app = crate_of(frames.get(app_index)?)?;
    frames[..app_index]
        .iter()
        .find(|f| !is_library(f, library_crates) && crate_of(f) != Some(app))
        .map(String::as_str)
}

/// A frame without the closure and hash suffixes demangling leaves:
/// `demo::handler::{{closure}}` → `demo::handler`.
pub(crate) fn tidy(frame: &str) -> &str {
    let mut name = frame.trim();
    loop {
        let before = name;
        for suffix in ["::{{closure}}", "::{closure#0}", "::{closure#1}"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        if let Some((head, hash)) = name.rsplit_once("::h") {
            if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                name = head;
            }
        }
        if name == before {
            return name;
        }
    }
}

/// Advice for the blocking call the stack shows above the application's
/// frame, if it is a well-known one.
pub(crate) fn blocking_advice(leafward: &[String]) -> Option<&'static str> {
    const KNOWN: &[(&[&str], &str)] = &[
        (
            &["std::thread::sleep", "std::thread::functions::sleep"],
            "it sleeps with `std::thread::sleep`: use `tokio::time::sleep(..).await`",
        ),
        (
            &["std::fs::", "std::io::stdio::"],
            "it does file I/O with `std::fs`/`std::io`: use `tokio::fs` or `spawn_blocking`",
        ),
        (
            &["std::net::"],
            "it does network I/O with `std::net`: use `tokio::net`",
        ),
        (
            &["std::process::"],
            "it waits for a process with `std::process`: use `tokio::process`",
        ),
        (
            &["reqwest::blocking::"],
            "it uses `reqwest::blocking`: use reqwest's async client",
        ),
        (
            &[
                "::Mutex<",
                "mutex::",
                "::RwLock<",
                "rwlock::",
                "parking_lot",
                "Condvar",
            ],
            "it waits for a blocking lock: keep critical sections short and free of I/O, \
             or use `tokio::sync::Mutex` if the lock is held across `.await`",
        ),
    ];
    leafward.iter().find_map(|frame| {
        KNOWN
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| frame.contains(p)))
            .map(|(_, advice)| *advice)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::defaults::DEFAULT_LIBRARY_CRATES;

    fn library() -> Vec<String> {
        DEFAULT_LIBRARY_CRATES
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    }

    fn stack(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn crates_of_paths_trait_impls_and_symbols() {
        assert_eq!(
            crate_of("demo::blocking_handler::{{closure}}"),
            Some("demo")
        );
        assert_eq!(
            crate_of("<demo::Cache as core::ops::Drop>::drop"),
            Some("demo")
        );
        assert_eq!(
            crate_of("<&mut demo::X as core::fmt::Debug>::fmt"),
            Some("demo")
        );
        // A generic self type: the trait's crate (a library here).
        assert_eq!(
            crate_of("<F as core::future::future::Future>::poll"),
            Some("core")
        );
        assert_eq!(crate_of("__GI___clock_nanosleep"), None);
        assert_eq!(crate_of("0x7f3a2b1c"), None);
        assert_eq!(crate_of(""), None);
    }

    #[test]
    fn the_application_frame_is_the_leafmost_of_the_polled_crate() {
        let frames = stack(&[
            "__GI___clock_nanosleep",
            "std::thread::sleep",
            "postgres::client::Client::query",
            "orders::db::load_items",
            "orders::handlers::list::{{closure}}",
            "<core::pin::Pin<P> as core::future::future::Future>::poll",
            "axum::routing::route::Route::call",
            "tokio::runtime::task::harness::poll_future",
            "std::thread::Builder::spawn_unchecked_::{{closure}}",
            "start_thread",
        ]);
        let (index, frame) = application_frame(&frames, &library()).unwrap();
        assert_eq!((index, frame), (3, "orders::db::load_items"));
        assert_eq!(
            dependency_frame(&frames, index, &library()),
            Some("postgres::client::Client::query")
        );
        assert!(blocking_advice(&frames[..index])
            .unwrap()
            .contains("tokio::time::sleep"));
        assert_eq!(
            application_frame(&stack(&["std::thread::sleep", "tokio::x::y"]), &library()),
            None
        );
    }

    #[test]
    fn tidy_strips_closures_and_hashes() {
        assert_eq!(
            tidy("demo::handler::{{closure}}::{{closure}}"),
            "demo::handler"
        );
        assert_eq!(tidy("demo::handler::h0123456789abcdef"), "demo::handler");
        assert_eq!(tidy("demo::hot"), "demo::hot");
    }
}
