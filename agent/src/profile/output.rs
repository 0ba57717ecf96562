//! Where reports are written: a buffer that starts on the heap and moves to
//! pages of its own (an anonymous mapping) once it is large, so a 10 MB
//! flame graph is returned to the OS the moment it is freed instead of
//! staying in the allocator's arenas — and never raises glibc's dynamic
//! mmap threshold, which would make the host's later large buffers stay
//! resident too (see `crate::memory`).

use std::io;

use axum::body::Bytes;
use memmap2::MmapMut;

/// Size from which a report moves to its own pages.
const MAPPED_FROM: usize = 256 * 1024;

/// A growable output buffer for one report.
#[derive(Debug, Default)]
pub(crate) struct ReportBuffer {
    heap: Vec<u8>,
    mapped: Option<Mapped>,
}

#[derive(Debug)]
struct Mapped {
    map: MmapMut,
    len: usize,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl ReportBuffer {
    /// The bytes written, as a `Bytes` that unmaps its pages when dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self.mapped {
            Some(mapped) => Bytes::from_owner(mapped),
            None => Bytes::from(self.heap),
        }
    }

    /// The bytes written, copied into a `Vec` if they were mapped.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self.mapped {
            Some(mapped) => mapped.as_ref().to_vec(),
            None => self.heap,
        }
    }

    /// Bytes written so far.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.mapped.as_ref().map_or(self.heap.len(), |m| m.len)
    }

    /// Makes room for `more` bytes in the mapping, doubling it.
    fn reserve_mapped(&mut self, more: usize) -> io::Result<()> {
        let (len, capacity) = match &self.mapped {
            Some(m) => (m.len, m.map.len()),
            None => (self.heap.len(), 0),
        };
        let needed = len.checked_add(more).ok_or(io::ErrorKind::OutOfMemory)?;
        if needed <= capacity {
            return Ok(());
        }
        let new_capacity = needed.max(capacity.saturating_mul(2)).max(MAPPED_FROM * 2);
        let mut map = MmapMut::map_anon(new_capacity)?;
        match self.mapped.take() {
            Some(old) => map[..len].copy_from_slice(&old.map[..len]),
            None => {
                map[..len].copy_from_slice(&self.heap);
                self.heap = Vec::new();
            }
        }
        self.mapped = Some(Mapped { map, len });
        Ok(())
    }
}

impl io::Write for ReportBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.mapped.is_none() && self.heap.len() + buf.len() < MAPPED_FROM {
            self.heap.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.reserve_mapped(buf.len())?;
        if let Some(mapped) = &mut self.mapped {
            mapped.map[mapped.len..mapped.len + buf.len()].copy_from_slice(buf);
            mapped.len += buf.len();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn small_reports_stay_on_the_heap_and_large_ones_move_to_pages() {
        let mut small = ReportBuffer::default();
        small.write_all(b"hello").unwrap();
        assert!(small.mapped.is_none());
        assert_eq!(&small.into_bytes()[..], b"hello");

        let mut large = ReportBuffer::default();
        let line = b"frame;frame;frame 1\n";
        let mut expected = Vec::new();
        for _ in 0..100_000 {
            large.write_all(line).unwrap();
            expected.extend_from_slice(line);
        }
        assert!(large.mapped.is_some());
        assert_eq!(large.len(), expected.len());
        let bytes = large.into_bytes();
        assert_eq!(&bytes[..], &expected[..]);
    }
}
