//! Binary images loaded in this process: the executable, shared libraries and
//! the vDSO, with their address ranges, file offsets and GNU build IDs.
//!
//! They become the `mapping` table of pprof profiles (so server-side
//! symbolizers such as Parca can match addresses to debug files) and, for the
//! CPU sampler, the unwind tables framehop needs.

use std::ops::Range;

/// One `PT_LOAD` segment of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Address range as stated in the file (SVMA).
    pub(crate) svma: Range<u64>,
    /// Offset of the segment's first byte in the file.
    pub(crate) file_offset: u64,
    /// Whether the segment holds code.
    pub(crate) executable: bool,
}

/// `.eh_frame_hdr` and `.eh_frame` copied out of a module's memory.
#[derive(Debug, Clone, Default)]
#[cfg_attr(
    not(any(feature = "cpu", feature = "heap", feature = "runtime")),
    allow(dead_code)
)]
pub(crate) struct UnwindSections {
    pub(crate) eh_frame_hdr_svma: Range<u64>,
    pub(crate) eh_frame_hdr: Vec<u8>,
    pub(crate) eh_frame_svma: Range<u64>,
    pub(crate) eh_frame: Vec<u8>,
}

/// A binary image mapped into this process.
#[derive(Debug, Clone)]
pub(crate) struct LoadedModule {
    /// File path, or `[vdso]`.
    pub(crate) path: String,
    /// Load bias: actual address = stated address + `base`.
    pub(crate) base: u64,
    pub(crate) segments: Vec<Segment>,
    /// GNU build ID (`NT_GNU_BUILD_ID` note), if the image has one.
    pub(crate) build_id: Option<Vec<u8>>,
    /// Whether this is the main executable.
    pub(crate) main: bool,
    /// Present when requested and the image has an `.eh_frame_hdr`.
    #[cfg_attr(
        not(any(feature = "cpu", feature = "heap", feature = "runtime")),
        allow(dead_code)
    )]
    pub(crate) unwind: Option<UnwindSections>,
}

impl LoadedModule {
    /// Actual address range covering all executable segments.
    pub(crate) fn code_range(&self) -> Option<Range<u64>> {
        let mut code = self.segments.iter().filter(|s| s.executable);
        let first = code.next()?;
        let mut range = first.svma.clone();
        for segment in code {
            range.start = range.start.min(segment.svma.start);
            range.end = range.end.max(segment.svma.end);
        }
        Some(range.start.wrapping_add(self.base)..range.end.wrapping_add(self.base))
    }

    /// The build ID as lowercase hex, the form pprof and debuginfod use.
    pub(crate) fn build_id_hex(&self) -> Option<String> {
        use std::fmt::Write;
        let bytes = self.build_id.as_ref()?;
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        Some(hex)
    }

    /// Where to open the file: the main executable through
    /// `/proc/self/exe`, which stays the running binary even if the path now
    /// holds another one.
    pub(crate) fn open_path(&self) -> &str {
        if self.main && cfg!(target_os = "linux") {
            "/proc/self/exe"
        } else {
            &self.path
        }
    }

    /// The file name without directories, for display.
    pub(crate) fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// A function symbol of the vDSO: its actual address range and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VdsoSymbol {
    pub(crate) range: Range<u64>,
    pub(crate) name: String,
}

/// The vDSO's function symbols (`__vdso_clock_gettime`, …), read once from
/// its in-memory ELF image: there is no file for the symbolizer to open.
pub(crate) fn vdso_symbols() -> &'static [VdsoSymbol] {
    static SYMBOLS: std::sync::OnceLock<Vec<VdsoSymbol>> = std::sync::OnceLock::new();
    SYMBOLS.get_or_init(imp::vdso_symbols)
}

/// Lists the modules currently loaded. With `with_unwind_tables`, copies each
/// module's `.eh_frame_hdr` and `.eh_frame` (the CPU sampler needs them; they
/// are copied while the dynamic loader's lock is held, so a concurrent
/// `dlclose` cannot unmap them mid-copy).
pub(crate) fn loaded_modules(with_unwind_tables: bool) -> Vec<LoadedModule> {
    imp::loaded_modules(with_unwind_tables)
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[allow(unsafe_code)]
mod imp {
    use super::{LoadedModule, Segment, UnwindSections};
    use std::ffi::CStr;

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
    const PF_X: u32 = 1;
    const NT_GNU_BUILD_ID: u32 = 3;

    struct Collect {
        with_unwind_tables: bool,
        modules: Vec<LoadedModule>,
        exe_path: String,
    }

    pub(super) fn loaded_modules(with_unwind_tables: bool) -> Vec<LoadedModule> {
        let exe_path = std::env::current_exe()
            .map(|p| {
                let text = p.to_string_lossy().into_owned();
                text.strip_suffix(" (deleted)")
                    .map(str::to_owned)
                    .unwrap_or(text)
            })
            .unwrap_or_else(|_| "[exe]".to_owned());
        let mut collect = Collect {
            with_unwind_tables,
            modules: Vec::new(),
            exe_path,
        };
        // SAFETY: the callback only reads the `dl_phdr_info` it is given and
        // the memory of the segments that info describes, which the loader
        // keeps mapped while it holds its lock for the duration of the call.
        unsafe {
            libc::dl_iterate_phdr(
                Some(visit),
                (&mut collect as *mut Collect).cast::<libc::c_void>(),
            );
        }
        collect.modules
    }

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Collect` passed above; `info` is valid for
        // the duration of this callback.
        let (collect, info) = unsafe { (&mut *data.cast::<Collect>(), &*info) };
        // SAFETY: as above; the loader provides `dlpi_phnum` headers.
        if let Some(module) = unsafe { describe(info, collect) } {
            collect.modules.push(module);
        }
        0
    }

    unsafe fn describe(info: &libc::dl_phdr_info, collect: &Collect) -> Option<LoadedModule> {
        if info.dlpi_phdr.is_null() || info.dlpi_phnum == 0 {
            return None;
        }
        // SAFETY: the loader passes `dlpi_phnum` program headers at `dlpi_phdr`.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        let main = name.is_empty();
        let path = if main {
            collect.exe_path.clone()
        } else if name.starts_with("linux-vdso") || name.starts_with("linux-gate") {
            "[vdso]".to_owned()
        } else {
            name
        };
        let base = info.dlpi_addr;
        let segments: Vec<Segment> = headers
            .iter()
            .filter(|h| h.p_type == PT_LOAD)
            .map(|h| Segment {
                svma: h.p_vaddr..h.p_vaddr.saturating_add(h.p_memsz),
                file_offset: h.p_offset,
                executable: h.p_flags & PF_X != 0,
            })
            .collect();
        if segments.is_empty() {
            return None;
        }
        let build_id = headers
            .iter()
            .filter(|h| h.p_type == PT_NOTE)
            // SAFETY: PT_NOTE lies inside a loaded, readable segment.
            .find_map(|h| {
                unsafe { segment_bytes(base, h.p_vaddr, h.p_memsz) }.and_then(gnu_build_id)
            });
        let unwind = if collect.with_unwind_tables {
            headers
                .iter()
                .find(|h| h.p_type == PT_GNU_EH_FRAME)
                // SAFETY: as above, for the eh_frame_hdr and eh_frame ranges.
                .and_then(|h| unsafe { unwind_sections(base, h, &segments) })
        } else {
            None
        };
        Some(LoadedModule {
            main,
            path,
            base,
            segments,
            build_id,
            unwind,
        })
    }

    pub(super) fn vdso_symbols() -> Vec<super::VdsoSymbol> {
        use object::{Object, ObjectSymbol};
        // SAFETY: getauxval has no preconditions.
        let ehdr = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        let Some(vdso) = loaded_modules(false)
            .into_iter()
            .find(|m| m.path == "[vdso]")
        else {
            return Vec::new();
        };
        if ehdr == 0 {
            return Vec::new();
        }
        // The kernel maps the whole vDSO image in whole pages, section
        // headers included (they follow the PT_LOAD segment on its last page).
        let Some(end) = vdso.segments.iter().map(|s| s.svma.end).max() else {
            return Vec::new();
        };
        let page = super::super::page_size();
        let end = end.wrapping_add(vdso.base).saturating_add(page - 1) & !(page - 1);
        let length = end.saturating_sub(ehdr);
        // SAFETY: the vDSO is mapped for the life of the process, readable,
        // from AT_SYSINFO_EHDR over its loaded segment.
        let Some(image) = (unsafe { segment_bytes(ehdr, 0, length) }) else {
            return Vec::new();
        };
        let Ok(file) = object::File::parse(image) else {
            return Vec::new();
        };
        file.dynamic_symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .filter_map(|s| {
                let start = s.address().wrapping_add(vdso.base);
                Some(super::VdsoSymbol {
                    range: start..start.wrapping_add(s.size()),
                    name: s.name().ok()?.to_owned(),
                })
            })
            .collect()
    }

    /// The bytes of `[svma, svma + len)` of a loaded module.
    ///
    /// # Safety
    /// The range must lie inside a loaded, readable segment of the module
    /// whose load bias is `base`, and stay loaded while the slice is used.
    unsafe fn segment_bytes<'a>(base: u64, svma: u64, len: u64) -> Option<&'a [u8]> {
        let start = base.checked_add(svma)?;
        if start == 0 || len == 0 || len > (1 << 32) {
            return None;
        }
        // SAFETY: guaranteed by the caller.
        Some(unsafe { std::slice::from_raw_parts(start as *const u8, len as usize) })
    }

    fn gnu_build_id(notes: &[u8]) -> Option<Vec<u8>> {
        let mut rest = notes;
        let align4 = |n: usize| (n + 3) & !3;
        while rest.len() >= 12 {
            let word =
                |i: usize| u32::from_ne_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
            let (name_len, desc_len, kind) = (word(0) as usize, word(4) as usize, word(8));
            let name_end = 12 + align4(name_len);
            let desc_end = name_end.checked_add(align4(desc_len))?;
            if desc_end > rest.len() || 12 + name_len > rest.len() {
                return None;
            }
            if kind == NT_GNU_BUILD_ID && &rest[12..12 + name_len] == b"GNU\0" {
                return Some(rest[name_end..name_end + desc_len].to_vec());
            }
            rest = &rest[desc_end..];
        }
        None
    }

    /// Copies `.eh_frame_hdr` and the `.eh_frame` it points to.
    ///
    /// # Safety
    /// `header` must be the module's PT_GNU_EH_FRAME header and `segments`
    /// its PT_LOAD segments, all loaded at bias `base`.
    unsafe fn unwind_sections(
        base: u64,
        header: &libc::Elf64_Phdr,
        segments: &[Segment],
    ) -> Option<UnwindSections> {
        let hdr_svma = header.p_vaddr;
        let containing = |svma: u64| segments.iter().find(|s| s.svma.contains(&svma));
        let hdr_segment = containing(hdr_svma)?;
        let hdr_len = header.p_memsz.min(hdr_segment.svma.end - hdr_svma);
        // SAFETY: inside a loaded segment (checked above).
        let hdr = unsafe { segment_bytes(base, hdr_svma, hdr_len) }?;
        let eh_frame_svma = decode_eh_frame_ptr(hdr, hdr_svma)?;
        let frame_segment = containing(eh_frame_svma)?;
        // SAFETY: from the eh_frame start to the end of its segment is mapped.
        let tail =
            unsafe { segment_bytes(base, eh_frame_svma, frame_segment.svma.end - eh_frame_svma) }?;
        let eh_frame_len = eh_frame_length(tail);
        Some(UnwindSections {
            eh_frame_hdr_svma: hdr_svma..hdr_svma + hdr_len,
            eh_frame_hdr: hdr.to_vec(),
            eh_frame_svma: eh_frame_svma..eh_frame_svma + eh_frame_len as u64,
            eh_frame: tail[..eh_frame_len].to_vec(),
        })
    }

    /// Reads the `eh_frame_ptr` field of an `.eh_frame_hdr` (version 1).
    pub(super) fn decode_eh_frame_ptr(hdr: &[u8], hdr_svma: u64) -> Option<u64> {
        if hdr.len() < 8 || hdr[0] != 1 {
            return None;
        }
        let encoding = hdr[1];
        let field = &hdr[4..];
        let value: i64 = match encoding & 0x0f {
            0x00 | 0x04 | 0x0c => i64::from_ne_bytes(field.get(..8)?.try_into().ok()?),
            0x03 => i64::from(u32::from_ne_bytes(field.get(..4)?.try_into().ok()?)),
            0x0b => i64::from(i32::from_ne_bytes(field.get(..4)?.try_into().ok()?)),
            _ => return None,
        };
        let relative_to = match encoding & 0x70 {
            0x00 => 0,
            0x10 => hdr_svma + 4,
            0x30 => hdr_svma,
            _ => return None,
        };
        Some(relative_to.wrapping_add(value as u64))
    }

    /// Length of an `.eh_frame` section: its CIE/FDE records up to and
    /// including the zero terminator, bounded by the bytes available.
    pub(super) fn eh_frame_length(bytes: &[u8]) -> usize {
        let mut offset = 0usize;
        while offset + 4 <= bytes.len() {
            let length = u32::from_ne_bytes([
                bytes[offset],
                bytes[offset + 1],
                bytes[offset + 2],
                bytes[offset + 3],
            ]);
            if length == 0 {
                return offset + 4;
            }
            let (header, body) = if length == u32::MAX {
                let Some(ext) = bytes.get(offset + 4..offset + 12) else {
                    break;
                };
                let mut eight = [0u8; 8];
                eight.copy_from_slice(ext);
                (12usize, u64::from_ne_bytes(eight))
            } else {
                (4usize, u64::from(length))
            };
            let Some(next) = usize::try_from(body)
                .ok()
                .and_then(|b| offset.checked_add(header)?.checked_add(b))
            else {
                break;
            };
            if next > bytes.len() {
                break;
            }
            offset = next;
        }
        offset.min(bytes.len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn finds_the_executable_with_build_id_and_unwind_tables() {
            let modules = super::super::loaded_modules(true);
            let exe = std::env::current_exe().unwrap();
            let main = modules
                .iter()
                .find(|m| m.path == exe.to_string_lossy())
                .expect("the test binary is listed");
            assert!(main.code_range().is_some());
            let here =
                finds_the_executable_with_build_id_and_unwind_tables as *const () as usize as u64;
            assert!(main.code_range().unwrap().contains(&here));
            let unwind = main
                .unwind
                .as_ref()
                .expect("Rust binaries have .eh_frame_hdr");
            assert!(unwind.eh_frame.len() > 1000);
            assert_eq!(unwind.eh_frame_hdr[0], 1);
            // rustc passes --build-id to the linker on Linux.
            assert!(main.build_id_hex().is_some_and(|id| id.len() >= 16));
            // SAFETY: getauxval has no preconditions.
            let has_vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } != 0;
            // qemu-user before 8.1 maps no vDSO; the kernel always does.
            if has_vdso {
                assert!(modules.iter().any(|m| m.path == "[vdso]"));
                // `__vdso_clock_gettime` on x86_64, `__kernel_clock_gettime`
                // on aarch64.
                let vdso = super::super::vdso_symbols();
                assert!(
                    vdso.iter().any(|s| s.name.contains("clock_gettime")),
                    "{vdso:?}"
                );
            } else {
                assert!(!modules.iter().any(|m| m.path == "[vdso]"));
            }
            assert!(modules.iter().any(|m| m.path.contains("libc.so")));
        }

        #[test]
        fn eh_frame_length_stops_at_terminator() {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&8u32.to_ne_bytes());
            bytes.extend_from_slice(&[1; 8]);
            bytes.extend_from_slice(&4u32.to_ne_bytes());
            bytes.extend_from_slice(&[2; 4]);
            bytes.extend_from_slice(&0u32.to_ne_bytes());
            bytes.extend_from_slice(&[9; 32]);
            assert_eq!(eh_frame_length(&bytes), 4 + 8 + 4 + 4 + 4);
            // A record running past the end stops the walk.
            assert_eq!(eh_frame_length(&[200, 0, 0, 0, 1, 2]), 0);
        }

        #[test]
        fn decodes_pcrel_sdata4_eh_frame_ptr() {
            let mut hdr = vec![1u8, 0x1b, 0x03, 0x3b];
            hdr.extend_from_slice(&(-0x100i32).to_ne_bytes());
            hdr.extend_from_slice(&[0; 4]);
            assert_eq!(decode_eh_frame_ptr(&hdr, 0x2000), Some(0x2000 + 4 - 0x100));
            hdr[0] = 2;
            assert_eq!(decode_eh_frame_ptr(&hdr, 0x2000), None);
        }

        #[test]
        fn build_id_note_is_found_among_other_notes() {
            let mut notes = Vec::new();
            // An ABI tag note first.
            notes.extend_from_slice(&4u32.to_ne_bytes());
            notes.extend_from_slice(&16u32.to_ne_bytes());
            notes.extend_from_slice(&1u32.to_ne_bytes());
            notes.extend_from_slice(b"GNU\0");
            notes.extend_from_slice(&[0; 16]);
            notes.extend_from_slice(&4u32.to_ne_bytes());
            notes.extend_from_slice(&3u32.to_ne_bytes());
            notes.extend_from_slice(&NT_GNU_BUILD_ID.to_ne_bytes());
            notes.extend_from_slice(b"GNU\0");
            notes.extend_from_slice(&[0xab, 0xcd, 0xef, 0]);
            assert_eq!(gnu_build_id(&notes), Some(vec![0xab, 0xcd, 0xef]));
            assert_eq!(gnu_build_id(&notes[..20]), None);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
mod imp {
    pub(super) fn loaded_modules(_with_unwind_tables: bool) -> Vec<super::LoadedModule> {
        Vec::new()
    }

    pub(super) fn vdso_symbols() -> Vec<super::VdsoSymbol> {
        Vec::new()
    }
}
