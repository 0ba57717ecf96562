//! Handing memory the agent freed back to the operating system.
//!
//! A report of a long CPU profile needs tens of MiB for a moment (a 30 s
//! profile's SVG, folded and JSON are 7–13 MB each, plus what builds them).
//! glibc's allocator keeps freed memory for reuse: after a first large
//! free it raises its mmap threshold, so later large buffers come from its
//! arenas and stay there once freed — a host without jemalloc would stay
//! ~60 MiB heavier for having been profiled once. After a large response
//! the agent asks glibc to return what is free (`malloc_trim`), on its
//! blocking pool. jemalloc returns dirty pages by itself after ten seconds
//! (its decay), so nothing is done when jemalloc is the global allocator.
//!
//! Which allocator that is, is asked here too ([`jemalloc_is_global_allocator`]):
//! the heap profiler and this module both need to know.

/// A response at least this large is followed by a trim.
pub(crate) const LARGE_RESPONSE_BYTES: u64 = 1 << 20;

/// Returns freed memory to the OS where the allocator keeps it. Takes each
/// glibc arena's lock in turn while it walks its free chunks: call it off
/// latency-sensitive threads, after rare large work.
pub(crate) fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !jemalloc_is_global_allocator() {
        let started = std::time::Instant::now();
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim has no preconditions; it only returns free
        // pages of glibc's heap to the kernel.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            took_us = started.elapsed().as_micros() as u64,
            "returned freed memory to the OS after a large report"
        );
    }
}

/// After the current task, on the agent's blocking pool if there is one.
pub(crate) fn give_back_freed_later() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn_blocking(give_back_freed));
    } else {
        give_back_freed();
    }
}

/// Whether the process allocates through the jemalloc this crate links
/// (`heap_profiling!` makes it the global allocator): an allocation through
/// the global allocator must move jemalloc's count of the bytes this thread
/// allocated (`thread.allocated`), which no other thread touches. The
/// global allocator cannot change, so the answer is kept.
#[cfg(all(feature = "heap", unix))]
pub(crate) fn jemalloc_is_global_allocator() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        const PROBE: usize = 64 << 10;
        #[allow(unsafe_code)]
        // SAFETY: "thread.allocated" is a uint64_t.
        let read = || unsafe { tikv_jemalloc_ctl::raw::read::<u64>(b"thread.allocated\0") };
        let before = read();
        let probe: Vec<u8> = std::hint::black_box(Vec::with_capacity(PROBE));
        let after = read();
        drop(probe);
        matches!((before, after), (Ok(before), Ok(after)) if after >= before + PROBE as u64)
    })
}

/// Without jemalloc support compiled in, it is not the allocator.
#[cfg(not(all(feature = "heap", unix)))]
pub(crate) fn jemalloc_is_global_allocator() -> bool {
    false
}
