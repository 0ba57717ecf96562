//! jemalloc control through `mallctl`: whether heap profiling is usable,
//! statistics, `prof.active`, and `prof.dump` into a private directory.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tikv_jemalloc_ctl::{epoch, raw, stats};

use super::HeapStats;
use crate::Error;

const NOT_GLOBAL_HINT: &str =
    "add `stethoscope::heap_profiling!();` to the binary's main.rs: it installs \
    jemalloc with profiling as the global allocator (docs/embedding.md, \"Heap profiling\")";

fn ctl_error(call: &'static str, error: tikv_jemalloc_ctl::Error) -> Error {
    Error::Jemalloc {
        call,
        source: io::Error::other(error),
    }
}

/// Ok when heap profiles can be taken; else why not and what to change.
pub(crate) fn check_available() -> Result<(), Error> {
    if !crate::memory::jemalloc_is_global_allocator() {
        return Err(Error::HeapUnavailable {
            reason: "jemalloc is not the global allocator of this process",
            hint: NOT_GLOBAL_HINT,
        });
    }
    // SAFETY: "opt.prof" is a bool option.
    match unsafe { raw::read::<bool>(b"opt.prof\0") } {
        Err(_) => Err(Error::HeapUnavailable {
            reason: "jemalloc was built without profiling support",
            hint: "enable tikv-jemallocator's `profiling` feature (stethoscope's default `heap` \
                   feature does) and use `stethoscope::heap_profiling!();`",
        }),
        Ok(false) => Err(Error::HeapUnavailable {
            reason: "jemalloc was started with prof:false",
            hint: "profiling must be on before the first allocation: use `stethoscope::heap_profiling!();` \
                   or start the process with _RJEM_MALLOC_CONF=prof:true,prof_active:true \
                   (MALLOC_CONF if tikv-jemallocator is unprefixed)",
        }),
        Ok(true) => Ok(()),
    }
}

/// jemalloc's statistics, refreshed (`epoch` advanced) first.
pub(crate) fn stats() -> Result<HeapStats, Error> {
    if !crate::memory::jemalloc_is_global_allocator() {
        return Err(Error::HeapUnavailable {
            reason: "jemalloc is not the global allocator of this process",
            hint: NOT_GLOBAL_HINT,
        });
    }
    epoch::advance().map_err(|e| ctl_error("epoch", e))?;
    let read = |call: &'static str, value: tikv_jemalloc_ctl::Result<usize>| {
        value.map(|v| v as u64).map_err(|e| ctl_error(call, e))
    };
    Ok(HeapStats {
        allocated_bytes: read("stats.allocated", stats::allocated::read())?,
        active_bytes: read("stats.active", stats::active::read())?,
        resident_bytes: read("stats.resident", stats::resident::read())?,
        mapped_bytes: read("stats.mapped", stats::mapped::read())?,
        retained_bytes: read("stats.retained", stats::retained::read())?,
        metadata_bytes: read("stats.metadata", stats::metadata::read())?,
    })
}

/// `prof.active`: whether allocations are being sampled now.
pub(crate) fn active() -> Result<bool, Error> {
    // SAFETY: "prof.active" is a bool.
    unsafe { raw::read::<bool>(b"prof.active\0") }.map_err(|e| ctl_error("prof.active", e))
}

/// Sets `prof.active` (without `prof.reset`, so sampled data is kept).
pub(crate) fn set_active(active: bool) -> Result<(), Error> {
    // SAFETY: "prof.active" is a bool.
    unsafe { raw::write::<bool>(b"prof.active\0", active) }.map_err(|e| ctl_error("prof.active", e))
}

/// `prof.lg_sample`: log2 of the average bytes between samples.
pub(crate) fn lg_sample() -> Result<u32, Error> {
    // SAFETY: "prof.lg_sample" is a size_t.
    unsafe { raw::read::<libc::size_t>(b"prof.lg_sample\0") }
        .map(|v| v as u32)
        .map_err(|e| ctl_error("prof.lg_sample", e))
}

/// Dumps the sampled heap (`prof.dump`) into a fresh private directory
/// (0700; the file 0600), reads it back and removes both.
pub(crate) fn dump() -> Result<String, Error> {
    check_available()?;
    // One dump at a time: jemalloc serializes them anyway, and the file
    // name is ours to choose.
    static DUMPING: Mutex<()> = Mutex::new(());
    let _one = DUMPING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = PrivateDir::create()?;
    let path = dir.path.join("heap.prof");
    let io_error = |source: io::Error| Error::Jemalloc {
        call: "prof.dump",
        source,
    };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io_error(io::Error::other(e)))?;
    // SAFETY: "prof.dump" takes a NUL-terminated path; `c_path` outlives the call.
    unsafe { raw::write::<*const libc::c_char>(b"prof.dump\0", c_path.as_ptr()) }
        .map_err(|e| ctl_error("prof.dump", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    let text = std::fs::read_to_string(&path).map_err(io_error)?;
    let _ = std::fs::remove_file(&path);
    Ok(text)
}

/// A temporary directory only this user can enter, removed on drop.
struct PrivateDir {
    path: std::path::PathBuf,
}

impl PrivateDir {
    fn create() -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nonce = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        );
        let path = std::env::temp_dir().join(format!(
            "stethoscope-heap-{}-{nonce:016x}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| Error::Jemalloc {
                call: "prof.dump",
                source,
            })?;
        Ok(Self { path })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_directories_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create().unwrap();
        let path = dir.path.clone();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        std::fs::write(path.join("heap.prof"), "x").unwrap();
        let other = PrivateDir::create().unwrap();
        assert_ne!(other.path, path);
        drop(dir);
        assert!(!path.exists());
    }
}
