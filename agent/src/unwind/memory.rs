//! Fault-free reads of the interrupted thread's stack.
//!
//! The unwinder follows pointers it finds on the stack; a corrupt or
//! unusual frame can point anywhere. Dereferencing such an address inside a
//! signal handler would crash the host, so every read goes through the
//! kernel, which reports an unmapped address as an error instead of a fault:
//! `process_vm_readv` on our own pid (one syscall per 16 KiB chunk), or, where
//! a seccomp profile forbids it, a `write`/`read` round trip through a pipe.
//! Chunks are cached for the duration of one unwind, so a typical stack costs
//! one or two syscalls.
#![allow(unsafe_code)]

use std::io;

const PAGE: u64 = 4096;
const PAGES_PER_CHUNK: usize = 4;
const CHUNK: usize = PAGE as usize * PAGES_PER_CHUNK;
const CHUNKS: usize = 8;

/// How the sampler copies memory of its own process without faulting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyMethod {
    /// `process_vm_readv(getpid(), ...)`.
    VmReadv,
    /// `write` into a non-blocking pipe, then `read` back.
    Pipe,
}

impl CopyMethod {
    /// Picks `process_vm_readv` if this process may use it, else the pipe
    /// round trip. Under a seccomp filter the probe is not even attempted:
    /// a filter whose action for the call is "kill" (systemd's
    /// `SystemCallFilter=@system-service` without `SystemCallErrorNumber=`)
    /// would take the host down instead of returning an error.
    pub(crate) fn probe() -> Self {
        if seccomp_filtered() {
            return CopyMethod::Pipe;
        }
        let source = [0x5au8; 64];
        let mut target = [0u8; 64];
        let copied = vm_readv(&mut target, source.as_ptr() as u64);
        if copied == source.len() && target == source {
            CopyMethod::VmReadv
        } else {
            CopyMethod::Pipe
        }
    }
}

/// Whether a seccomp filter applies to this process (`Seccomp:` in
/// `/proc/self/status` is 2 for filter mode, 1 for strict mode). Unknown
/// counts as filtered: the pipe works everywhere, and the CPU timers are
/// then tried in a child first.
pub(crate) fn seccomp_filtered() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .is_none_or(|mode| mode.trim() != "0")
}

/// Copies up to `dst.len()` bytes from our own address `src`, page by page,
/// stopping at the first unreadable page. Returns the bytes copied.
fn vm_readv(dst: &mut [u8], src: u64) -> usize {
    let mut remote = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; PAGES_PER_CHUNK + 1];
    let mut count = 0;
    let mut address = src;
    let end = src.saturating_add(dst.len() as u64);
    while address < end && count < remote.len() {
        let page_end = ((address / PAGE) + 1) * PAGE;
        let piece_end = page_end.min(end);
        remote[count] = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: (piece_end - address) as usize,
        };
        count += 1;
        address = piece_end;
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    // SAFETY: `local` describes memory we own exclusively; the kernel
    // validates every remote range and returns EFAULT (or a short count)
    // instead of faulting. Partial transfers stop at an iovec boundary,
    // which is why the remote side is split per page.
    let copied = unsafe {
        libc::process_vm_readv(
            libc::getpid(),
            &local,
            1,
            remote.as_ptr(),
            count as libc::c_ulong,
            0,
        )
    };
    usize::try_from(copied).unwrap_or(0)
}

/// Copies `[src, src + dst.len())` of our own memory into `dst` through
/// `pipe`, or with `process_vm_readv` without one, up to the first
/// unreadable byte. Returns the bytes copied.
fn copy(pipe: Option<&ProbePipe>, dst: &mut [u8], src: u64) -> usize {
    match pipe {
        Some(pipe) => pipe.copy(dst, src),
        None => vm_readv(dst, src),
    }
}

/// A non-blocking pipe used to copy memory where `process_vm_readv` is not
/// allowed.
pub(crate) struct ProbePipe {
    read_fd: libc::c_int,
    write_fd: libc::c_int,
    capacity: usize,
}

impl ProbePipe {
    pub(crate) fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl on descriptors we just created.
        let capacity = unsafe { libc::fcntl(fds[1], libc::F_GETPIPE_SZ) };
        Ok(Self {
            read_fd: fds[0],
            write_fd: fds[1],
            capacity: usize::try_from(capacity).unwrap_or(PAGE as usize).max(1),
        })
    }

    fn copy(&self, dst: &mut [u8], src: u64) -> usize {
        let want = dst.len().min(self.capacity);
        // SAFETY: write(2) reads `want` bytes at `src` in the kernel and
        // reports EFAULT (or a short count) for unmapped memory.
        let written = unsafe { libc::write(self.write_fd, src as *const libc::c_void, want) };
        let written = usize::try_from(written).unwrap_or(0);
        if written == 0 {
            return 0;
        }
        // Read back everything written so the pipe is empty for the next copy.
        let mut total = 0;
        while total < written {
            // SAFETY: `dst[total..written]` is ours and in bounds.
            let read = unsafe {
                libc::read(
                    self.read_fd,
                    dst[total..].as_mut_ptr().cast(),
                    written - total,
                )
            };
            match usize::try_from(read) {
                Ok(n) if n > 0 => total += n,
                _ => break,
            }
        }
        if total < written {
            // Bytes left in the pipe would shift every later copy: discard
            // them and report nothing for this one.
            self.discard();
            return 0;
        }
        total
    }

    fn discard(&self) {
        let mut sink = [0u8; 512];
        loop {
            // SAFETY: reading into a local buffer; the pipe is non-blocking,
            // so this ends with EAGAIN once it is empty.
            let read = unsafe { libc::read(self.read_fd, sink.as_mut_ptr().cast(), sink.len()) };
            if read <= 0 {
                return;
            }
        }
    }
}

impl Drop for ProbePipe {
    fn drop(&mut self) {
        // SAFETY: closing descriptors this struct owns.
        unsafe {
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}

/// Chunks of the stack copied during one unwind. Owned by one unwind
/// context; reset before each sample.
pub(crate) struct StackCopy {
    method: CopyMethod,
    pipe: Option<ProbePipe>,
    /// Lowest and highest address the unwinder may read for this sample.
    low: u64,
    high: u64,
    starts: [u64; CHUNKS],
    lens: [usize; CHUNKS],
    next_victim: usize,
    data: Box<[u8]>,
}

impl StackCopy {
    pub(crate) fn new(method: CopyMethod) -> io::Result<Self> {
        let pipe = match method {
            CopyMethod::VmReadv => None,
            CopyMethod::Pipe => Some(ProbePipe::new()?),
        };
        Ok(Self {
            method,
            pipe,
            low: 0,
            high: 0,
            starts: [0; CHUNKS],
            lens: [0; CHUNKS],
            next_victim: 0,
            data: vec![0u8; CHUNK * CHUNKS].into_boxed_slice(),
        })
    }

    /// Forgets previous chunks and limits reads to a window around `sp`.
    pub(crate) fn reset(&mut self, sp: u64) {
        // Unwinding reads upward from the stack pointer; a little below it
        // covers red-zone spills. 8 MiB is the default main-thread stack.
        self.low = sp.saturating_sub(256);
        self.high = sp.saturating_add(8 << 20);
        self.lens = [0; CHUNKS];
        self.next_victim = 0;
    }

    /// Reads the 8-byte word at `address`, or `Err` if it is misaligned
    /// (stack slots are 8-byte aligned; a misaligned address comes from a
    /// garbage frame pointer), outside the stack window, or unmapped. Never
    /// faults.
    pub(crate) fn read_u64(&mut self, address: u64) -> Result<u64, ()> {
        if address & 7 != 0 || address < self.low || address.saturating_add(8) > self.high {
            return Err(());
        }
        for i in 0..CHUNKS {
            let start = self.starts[i];
            if self.lens[i] >= 8 && address >= start && address + 8 <= start + self.lens[i] as u64 {
                return Ok(self.word(i, (address - start) as usize));
            }
        }
        let victim = self.next_victim;
        self.next_victim = (victim + 1) % CHUNKS;
        let start = address & !(PAGE - 1);
        let pipe = match self.method {
            CopyMethod::Pipe => self.pipe.as_ref(),
            CopyMethod::VmReadv => None,
        };
        let buffer = &mut self.data[victim * CHUNK..(victim + 1) * CHUNK];
        let mut copied = copy(pipe, buffer, start);
        if copied < PAGE as usize {
            // The kernel copies up to the first unreadable page; an emulator
            // (qemu-user checks the whole range first) may copy nothing when
            // the chunk runs past the end of the stack's mapping. The page
            // holding the address alone is enough.
            copied = copy(pipe, &mut buffer[..PAGE as usize], start);
        }
        self.starts[victim] = start;
        self.lens[victim] = copied;
        if address + 8 <= start + copied as u64 {
            Ok(self.word(victim, (address - start) as usize))
        } else {
            Err(())
        }
    }

    fn word(&self, chunk: usize, offset: usize) -> u64 {
        let at = chunk * CHUNK + offset;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.data[at..at + 8]);
        u64::from_ne_bytes(bytes)
    }

    /// Memory held by this copy buffer, in bytes.
    pub(crate) fn footprint_bytes(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_reads(method: CopyMethod) {
        let values: Vec<u64> = (0..10_000u64).map(|i| i * 7 + 1).collect();
        let base = values.as_ptr() as u64;
        let mut copy = StackCopy::new(method).unwrap();
        copy.reset(base);
        for (i, v) in values.iter().enumerate().step_by(37) {
            assert_eq!(copy.read_u64(base + 8 * i as u64), Ok(*v));
        }
        // Below the window, and misaligned.
        assert_eq!(copy.read_u64(base - 4096), Err(()));
        assert_eq!(copy.read_u64(base + 4), Err(()));
        // Null page: unmapped, reported as an error instead of a crash.
        copy.reset(0);
        assert_eq!(copy.read_u64(8), Err(()));
    }

    #[test]
    fn vm_readv_reads_and_reports_unmapped() {
        if CopyMethod::probe() == CopyMethod::VmReadv {
            check_reads(CopyMethod::VmReadv);
        }
    }

    #[test]
    fn pipe_reads_and_reports_unmapped() {
        check_reads(CopyMethod::Pipe);
    }

    #[test]
    fn a_read_past_a_mapping_end_is_an_error_not_a_fault() {
        // A guard page: map two pages, make the second inaccessible.
        // SAFETY: anonymous mapping we own; unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as u64;
        // SAFETY: second page of our own mapping.
        unsafe {
            libc::mprotect(
                (base + PAGE) as *mut libc::c_void,
                PAGE as usize,
                libc::PROT_NONE,
            )
        };
        for method in [CopyMethod::probe(), CopyMethod::Pipe] {
            let mut copy = StackCopy::new(method).unwrap();
            copy.reset(base);
            assert_eq!(copy.read_u64(base + PAGE - 8), Ok(0));
            assert_eq!(copy.read_u64(base + PAGE), Err(()));
        }
        // SAFETY: unmapping the mapping created above.
        unsafe { libc::munmap(base as *mut libc::c_void, 2 * PAGE as usize) };
    }
}
