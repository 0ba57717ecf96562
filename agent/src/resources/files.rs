//! The `/proc` and cgroup files one sample reads, kept open between
//! samples and re-read with `pread` from offset 0 (the kernel regenerates
//! their content on every read), so a sample costs one system call per file
//! instead of four (open, stat, read, close). Files whose content changes
//! rarely (limits, the CPU affinity) are re-read at most every
//! [`SLOW_REFRESH`].

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a rarely changing file's content is reused.
pub(crate) const SLOW_REFRESH: Duration = Duration::from_secs(10);

/// Most files kept open; past this, files are opened for each read. Every
/// kept file is one of the process's descriptors.
const MAX_KEPT: usize = 48;

/// Largest file content read (the biggest, `/proc/net/netstat`, is ~3 KiB).
const MAX_BYTES: usize = 1 << 20;

#[derive(Debug)]
enum Entry {
    Open(File),
    /// Opening failed; retried after [`SLOW_REFRESH`].
    Missing {
        error: io::ErrorKind,
        at: Instant,
    },
}

/// Kept-open files and the cached content of slow ones.
#[derive(Debug, Default)]
pub(crate) struct ProcFiles {
    entries: HashMap<PathBuf, Entry>,
    slow: HashMap<PathBuf, (Instant, Result<String, io::ErrorKind>)>,
    buffer: Vec<u8>,
    /// Read every file now, whatever was cached (a person asked).
    fresh: bool,
}

impl ProcFiles {
    /// The current content of `path`.
    pub(crate) fn read(&mut self, path: &Path) -> io::Result<String> {
        match self.entries.get(path) {
            Some(Entry::Missing { error, at }) if at.elapsed() < SLOW_REFRESH && !self.fresh => {
                return Err(io::Error::from(*error))
            }
            Some(Entry::Open(file)) => match read_from_start(file, &mut self.buffer) {
                Ok(text) => return Ok(text),
                // The file went away (a cgroup was removed): reopen below.
                Err(_) => {
                    self.entries.remove(path);
                }
            },
            _ => {}
        }
        match File::open(path) {
            Ok(file) => {
                let text = read_from_start(&file, &mut self.buffer);
                if self.entries.len() < MAX_KEPT || self.entries.contains_key(path) {
                    self.entries.insert(path.to_owned(), Entry::Open(file));
                }
                text
            }
            Err(error) => {
                if self.entries.len() < MAX_KEPT || self.entries.contains_key(path) {
                    self.entries.insert(
                        path.to_owned(),
                        Entry::Missing {
                            error: error.kind(),
                            at: Instant::now(),
                        },
                    );
                }
                Err(error)
            }
        }
    }

    /// The content of a rarely changing file, at most [`SLOW_REFRESH`] old.
    pub(crate) fn read_slow(&mut self, path: &Path) -> io::Result<String> {
        if let Some((at, content)) = self.slow.get(path).filter(|_| !self.fresh) {
            if at.elapsed() < SLOW_REFRESH {
                return content.clone().map_err(io::Error::from);
            }
        }
        let content = std::fs::read_to_string(path);
        self.slow.insert(
            path.to_owned(),
            (
                Instant::now(),
                content.as_ref().map(Clone::clone).map_err(io::Error::kind),
            ),
        );
        content
    }

    /// Whether the next reads bypass the cached content of slow files and
    /// the memory of missing ones (a person's request), or may use them
    /// (the periodic sampler, scrapes).
    pub(crate) fn set_fresh(&mut self, fresh: bool) {
        self.fresh = fresh;
    }

    /// Files kept open now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::Open(_)))
            .count()
    }
}

    /// What went wrong reading a file, for a report's `source` text: "not
/// present" rather than "entity not found", "permission denied", and the
/// OS's message without its `(os error N)` suffix otherwise.
pub(crate) fn reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "not present".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => {
            let text = error.to_string();
            match text.rfind(" (os error ") {
                Some(at) if text.ends_with(')') => text[..at].to_owned(),
                _ => text,
            }
        }
    }
}

/// Reads at `offset` without moving the file's position.
#[cfg(unix)]
fn read_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buffer, offset)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::io::{Read, Seek};
    file.seek(io::SeekFrom::Start(offset))?;
    file.read(buffer)
}

/// Reads `file` from offset 0 to its end into `buffer`, as text.
fn read_from_start(file: &File, buffer: &mut Vec<u8>) -> io::Result<String> {
    buffer.clear();
    if buffer.capacity() < 4096 {
        buffer.reserve(4096);
    }
    loop {
        let filled = buffer.len();
        buffer.resize(buffer.capacity().max(filled + 1024), 0);
        let read = read_at(file, &mut buffer[filled..], filled as u64)?;
        buffer.truncate(filled + read);
        if read == 0 || buffer.len() >= MAX_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(buffer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_file_shows_its_new_content_on_every_read() {
        let dir = std::env::temp_dir().join(format!("stethoscope-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("counter");
        std::fs::write(&path, "1\n").unwrap();
        let mut files = ProcFiles::default();
        assert_eq!(files.read(&path).unwrap(), "1\n");
        // Rewritten in place (as the kernel regenerates /proc content).
        std::fs::write(&path, "22222\n").unwrap();
        assert_eq!(files.read(&path).unwrap(), "22222\n");
        assert_eq!(files.kept(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proc_files_are_regenerated_and_large_ones_read_whole() {
        let mut files = ProcFiles::default();
        let first = files.read(Path::new("/proc/self/stat")).unwrap();
        let again = files.read(Path::new("/proc/self/stat")).unwrap();
        assert!(first.contains(") ") && again.contains(") "));
        // Bigger than one buffer: read to the end.
        let maps = files.read(Path::new("/proc/self/maps")).unwrap();
        assert!(maps.len() > 4096 && maps.ends_with('\n'), "{}", maps.len());
    }

    #[test]
    fn missing_files_are_errors_and_not_retried_at_once() {
        let mut files = ProcFiles::default();
        let missing = Path::new("/proc/self/does-not-exist");
        assert!(files.read(missing).is_err());
        assert!(files.read(missing).is_err());
        assert_eq!(files.kept(), 0);
    }

    #[test]
    fn slow_files_are_cached() {
        let dir = std::env::temp_dir().join(format!("stethoscope-slow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("limit");
        std::fs::write(&path, "100\n").unwrap();
        let mut files = ProcFiles::default();
        assert_eq!(files.read_slow(&path).unwrap(), "100\n");
        std::fs::write(&path, "200\n").unwrap();
        assert_eq!(
            files.read_slow(&path).unwrap(),
            "100\n",
            "within SLOW_REFRESH"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
