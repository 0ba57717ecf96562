//! A lean DWARF symbolizer for one binary and one batch of addresses.
//!
//! General-purpose symbolizers (addr2line's `Context`, backtrace-rs) index
//! every compilation unit up front — abbreviations and line-program headers
//! of all of them — which for a 25 MiB Rust binary costs tens of megabytes
//! that then stay resident. Here each batch maps the file, finds the units
//! its addresses fall in through `.debug_aranges`, parses only those, walks
//! each unit's DIE tree once for all its addresses, runs its line program
//! once, and drops everything: memory is bounded by the largest unit
//! touched, and nothing outlives the batch but the results (which the
//! caller caches per address).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

/// One frame of an inline chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DwarfFrame {
    pub(crate) function: String,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// Most memory the unit tables of one binary keep between batches; the
/// least recently used units are dropped beyond it. A batch builds what it
/// needs first, so a working set above the budget costs rebuilds, not
/// failures. (Measured working sets: a few MiB for a release service's
/// profile; 34 MiB for a CPU profile of a debug-built test binary.)
pub(crate) const UNIT_TABLES_BUDGET: usize = 48 << 20;

/// What is kept of one binary between batches: the address ranges of its
/// compilation units (about 24 bytes each; building them reads all of
/// `.debug_aranges`) and the lookup tables of recently used units, within
/// [`UNIT_TABLES_BUDGET`].
#[derive(Debug, Default)]
pub(crate) struct UnitIndex {
    ranges: Vec<(u64, u64, gimli::DebugInfoOffset)>,
    units: HashMap<gimli::DebugInfoOffset, Arc<UnitTables>>,
    recent: VecDeque<gimli::DebugInfoOffset>,
    unit_bytes: usize,
}

impl UnitIndex {
    /// Memory held, estimated, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.ranges.capacity() * std::mem::size_of::<(u64, u64, gimli::DebugInfoOffset)>()
            + self.unit_bytes
    }

    fn tables(
        &mut self,
        dwarf: &gimli::Dwarf<Reader<'_>>,
        offset: gimli::DebugInfoOffset,
    ) -> Option<Arc<UnitTables>> {
        if let Some(tables) = self.units.get(&offset) {
            let tables = Arc::clone(tables);
            self.recent.retain(|o| *o != offset);
            self.recent.push_back(offset);
            return Some(tables);
        }
        let tables = Arc::new(UnitTables::build(dwarf, offset).ok()?);
        self.unit_bytes += tables.bytes();
        self.units.insert(offset, Arc::clone(&tables));
        self.recent.push_back(offset);
        Some(tables)
    }

    /// Drops the least recently used unit tables beyond the budget.
    fn trim(&mut self) {
        while self.unit_bytes > UNIT_TABLES_BUDGET {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            if let Some(evicted) = self.units.remove(&old) {
                self.unit_bytes = self.unit_bytes.saturating_sub(evicted.bytes());
            }
        }
    }
}

/// Resolves `probes` (addresses as stated in the file, i.e. minus the load
/// bias) of the binary at `path`; the result has one inline chain per probe,
/// innermost first, empty where neither DWARF nor the symbol table knows
/// the address. `index` is the binary's unit index, built on first use.
pub(crate) fn resolve_batch(
    path: &str,
    probes: &[u64],
    index: &mut Option<UnitIndex>,
) -> Vec<Vec<DwarfFrame>> {
    let mut out = vec![Vec::new(); probes.len()];
    let Ok(file) = std::fs::File::open(path) else {
        return out;
    };
    #[allow(unsafe_code)]
    // SAFETY: the mapping is read-only and private to this call. As with
    // every symbolizer that maps binaries, a concurrent truncation of the
    // file by another process could fault; installed binaries are replaced
    // by rename, which leaves this mapping intact.
    let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else {
        return out;
    };
    let Ok(object) = object::File::parse(&*map) else {
        return out;
    };
    let endian = if object.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let section = |id: gimli::SectionId| -> Result<Reader<'_>, gimli::Error> {
        let data = object
            .section_by_name(id.name())
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, endian))
    };
    if let Ok(dwarf) = gimli::Dwarf::load(section) {
        let index = index.get_or_insert_with(|| UnitIndex {
            ranges: unit_index(&dwarf),
            ..UnitIndex::default()
        });
        let mut by_unit: HashMap<gimli::DebugInfoOffset, Vec<usize>> = HashMap::new();
        for (i, &probe) in probes.iter().enumerate() {
            let position = index.ranges.partition_point(|u| u.0 <= probe);
            if let Some(&(start, end, offset)) =
                position.checked_sub(1).and_then(|p| index.ranges.get(p))
            {
                if (start..end).contains(&probe) {
                    by_unit.entry(offset).or_default().push(i);
                }
            }
        }
        for (offset, indices) in by_unit {
            if let Some(tables) = index.tables(&dwarf, offset) {
                let mut unit = None;
                for i in indices {
                    out[i] = tables.frames(probes[i], &dwarf, offset, &mut unit);
                }
            }
        }
        index.trim();
    }
    // Addresses DWARF does not cover (C code without debug info, stripped
    // binaries) are named from the symbol table.
    if out.iter().any(Vec::is_empty) {
        let symbols = object.symbol_map();
        for (index, &probe) in probes.iter().enumerate() {
            if out[index].is_empty() {
                if let Some(symbol) = symbols.containing(probe).filter(|s| s.size() > 0) {
                    out[index].push(DwarfFrame {
                        function: demangle(symbol.name()),
                        file: None,
                        line: None,
                    });
                }
            }
        }
    }
    out
}

/// Address ranges of compilation units, sorted by start: from
/// `.debug_aranges`, or, when a binary has none, from each unit's root DIE.
fn unit_index(dwarf: &gimli::Dwarf<Reader<'_>>) -> Vec<(u64, u64, gimli::DebugInfoOffset)> {
    let mut units = Vec::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Ok(Some(header)) = headers.next() {
        let offset = header.debug_info_offset();
        let mut entries = header.entries();
        while let Ok(Some(range)) = entries.next() {
            if range.length() > 0 {
                units.push((
                    range.address(),
                    range.address().saturating_add(range.length()),
                    offset,
                ));
            }
        }
    }
    if units.is_empty() {
        let mut headers = dwarf.units();
        while let Ok(Some(header)) = headers.next() {
            let Some(offset) = header.debug_info_offset() else {
                continue;
            };
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let mut entries = unit.entries();
            let Ok(Some(root)) = entries.next_dfs() else {
                continue;
            };
            if let Ok(mut ranges) = dwarf.die_ranges(&unit, root) {
                while let Ok(Some(range)) = ranges.next() {
                    units.push((range.begin, range.end, offset));
                }
            }
        }
    }
    units.sort_unstable_by_key(|u| u.0);
    units
}

/// A function (subprogram) with code, and the calls inlined into it.
#[derive(Debug)]
struct Function {
    /// The DIE its name is read from, on first use.
    die: UnitOffset,
    /// Inlined calls, in DIE order (a callee after its caller).
    inlined: Vec<Inlined>,
}

/// One inlined call: where its code is, what it calls, and where from.
#[derive(Debug)]
struct Inlined {
    ranges: Vec<(u64, u64)>,
    depth: isize,
    die: UnitOffset,
    call_file: Option<Arc<str>>,
    call_line: Option<u32>,
}

/// The lookup tables of one compilation unit, built in one pass and kept
/// (bounded) so later batches touching the same unit are binary searches.
#[derive(Debug)]
pub(crate) struct UnitTables {
    /// (start, end, index into `functions`), sorted by start.
    ranges: Vec<(u64, u64, u32)>,
    functions: Vec<Function>,
    lines: Option<LineTable>,
    /// Function names by DIE, resolved when first needed (most functions of
    /// a unit never appear in a profile).
    names: std::sync::Mutex<HashMap<UnitOffset, Arc<str>>>,
    bytes: usize,
}

impl UnitTables {
    fn build(
        dwarf: &gimli::Dwarf<Reader<'_>>,
        offset: gimli::DebugInfoOffset,
    ) -> Result<Self, gimli::Error> {
        let header = dwarf.debug_info.header_from_offset(offset)?;
        let unit = dwarf.unit(header)?;
        let unit_ref = unit.unit_ref(dwarf);
        let lines = LineTable::of(dwarf, &unit);
        let mut ranges = Vec::new();
        let mut functions: Vec<Function> = Vec::new();
        // Subprograms currently open in the walk: (depth, index).
        let mut open: Vec<(isize, usize)> = Vec::new();
        let mut cursor = unit.entries();
        while let Some(entry) = cursor.next_dfs()? {
            let depth = entry.depth();
            while open.last().is_some_and(|&(d, _)| d >= depth) {
                open.pop();
            }
            let tag = entry.tag();
            if tag != gimli::DW_TAG_subprogram && tag != gimli::DW_TAG_inlined_subroutine {
                continue;
            }
            let mut spans = Vec::new();
            let mut iter = unit_ref.die_ranges(entry)?;
            while let Some(range) = iter.next()? {
                if range.end > range.begin {
                    spans.push((range.begin, range.end));
                }
            }
            if spans.is_empty() {
                continue; // a declaration or an abstract instance: no code
            }
            if tag == gimli::DW_TAG_subprogram {
                let index = functions.len();
                for &(begin, end) in &spans {
                    ranges.push((begin, end, index as u32));
                }
                functions.push(Function {
                    die: entry.offset(),
                    inlined: Vec::new(),
                });
                open.push((depth, index));
            } else if let Some(&(_, function)) = open.last() {
                let call_file = match entry.attr_value(gimli::DW_AT_call_file) {
                    Some(AttributeValue::FileIndex(i)) | Some(AttributeValue::Udata(i)) => {
                        lines.as_ref().and_then(|l| l.files.get(&i).cloned())
                    }
                    _ => None,
                };
                let call_line = match entry.attr_value(gimli::DW_AT_call_line) {
                    Some(AttributeValue::Udata(l)) => u32::try_from(l).ok(),
                    Some(AttributeValue::Data1(l)) => Some(u32::from(l)),
                    Some(AttributeValue::Data2(l)) => Some(u32::from(l)),
                    Some(AttributeValue::Data4(l)) => Some(l),
                    _ => None,
                };
                functions[function].inlined.push(Inlined {
                    ranges: spans,
                    depth,
                    die: entry.offset(),
                    call_file,
                    call_line,
                });
            }
        }
        ranges.sort_unstable_by_key(|r| r.0);
        let inlined: usize = functions.iter().map(|f| f.inlined.len()).sum();
        let bytes = ranges.len() * std::mem::size_of::<(u64, u64, u32)>()
            + functions.len() * std::mem::size_of::<Function>()
            + inlined * (std::mem::size_of::<Inlined>() + 16)
            + lines.as_ref().map_or(0, LineTable::bytes);
        Ok(Self {
            ranges,
            functions,
            lines,
            names: std::sync::Mutex::new(HashMap::new()),
            bytes,
        })
    }

    /// Memory held, estimated, in bytes (names resolved so far included).
    pub(crate) fn bytes(&self) -> usize {
        let names = self.names.lock().map_or(0, |names| {
            names.len() * 48 + names.values().map(|n| n.len()).sum::<usize>()
        });
        self.bytes + names
    }

    /// The name of the function whose DIE is at `die`, reading the unit
    /// (`unit`, parsed at most once per batch) when not yet known.
    fn name<'a>(
        &self,
        die: UnitOffset,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        offset: gimli::DebugInfoOffset,
        unit: &mut Option<gimli::Unit<Reader<'a>>>,
    ) -> Arc<str> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(name) = names.get(&die) {
            return Arc::clone(name);
        }
        if unit.is_none() {
            *unit = dwarf
                .debug_info
                .header_from_offset(offset)
                .and_then(|header| dwarf.unit(header))
                .ok();
        }
        let name: Arc<str> = unit
            .as_ref()
            .and_then(|unit| die_name(dwarf, unit, die, 0))
            .map_or_else(|| Arc::from("[unknown]"), Arc::from);
        names.insert(die, Arc::clone(&name));
        name
    }

    /// The inline chain at `probe`, innermost first.
    fn frames<'a>(
        &self,
        probe: u64,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        offset: gimli::DebugInfoOffset,
        unit: &mut Option<gimli::Unit<Reader<'a>>>,
    ) -> Vec<DwarfFrame> {
        let position = self.ranges.partition_point(|r| r.0 <= probe);
        // Ranges of different functions do not overlap; look back a little
        // for a function split into several ranges.
        let function = self.ranges[..position]
            .iter()
            .rev()
            .take(8)
            .find(|r| probe < r.1)
            .and_then(|r| self.functions.get(r.2 as usize));
        let Some(function) = function else {
            return Vec::new();
        };
        let mut chain: Vec<&Inlined> = function
            .inlined
            .iter()
            .filter(|i| i.ranges.iter().any(|&(b, e)| (b..e).contains(&probe)))
            .collect();
        chain.sort_by_key(|i| i.depth);
        let innermost_location = self
            .lines
            .as_ref()
            .and_then(|l| l.find(probe))
            .unwrap_or((None, None));
        let mut frames = Vec::with_capacity(chain.len() + 1);
        // Innermost first: each frame's line is where its callee was called
        // from; the innermost frame's comes from the line table.
        let mut location = innermost_location;
        for inlined in chain.iter().rev() {
            frames.push(DwarfFrame {
                function: self.name(inlined.die, dwarf, offset, unit).to_string(),
                file: location.0.as_deref().map(str::to_owned),
                line: location.1,
            });
            location = (inlined.call_file.clone(), inlined.call_line);
        }
        frames.push(DwarfFrame {
            function: self.name(function.die, dwarf, offset, unit).to_string(),
            file: location.0.as_deref().map(str::to_owned),
            line: location.1,
        });
        frames
    }
}

/// A function's name: its linkage name demangled, or its plain name,
/// following `DW_AT_abstract_origin` / `DW_AT_specification`.
fn die_name(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    offset: UnitOffset,
    hops: u32,
) -> Option<String> {
    if hops > 4 {
        return None;
    }
    let entry = unit.entry(offset).ok()?;
    let string = |value: AttributeValue<Reader<'_>>| {
        dwarf
            .attr_string(unit, value)
            .ok()
            .map(|s| s.to_string_lossy().into_owned())
    };
    for attribute in [gimli::DW_AT_linkage_name, gimli::DW_AT_MIPS_linkage_name] {
        if let Some(name) = entry.attr_value(attribute).and_then(string) {
            return Some(demangle(&name));
        }
    }
    if let Some(name) = entry.attr_value(gimli::DW_AT_name).and_then(string) {
        return Some(name);
    }
    for attribute in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        match entry.attr_value(attribute) {
            Some(AttributeValue::UnitRef(target)) => {
                return die_name(dwarf, unit, target, hops + 1)
            }
            Some(AttributeValue::DebugInfoRef(target)) => {
                // A reference into another unit (cross-unit inlining with LTO).
                let (other, local) = unit_containing(dwarf, target)?;
                return die_name(dwarf, &other, local, hops + 1);
            }
            _ => {}
        }
    }
    None
}

/// The unit holding a `.debug_info` offset, and the offset within it.
fn unit_containing<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    target: gimli::DebugInfoOffset,
) -> Option<(gimli::Unit<Reader<'a>>, UnitOffset)> {
    let mut headers = dwarf.units();
    while let Ok(Some(header)) = headers.next() {
        let start = header.debug_info_offset()?;
        let end = start.0 + header.length_including_self();
        if (start.0..end).contains(&target.0) {
            let local = target.to_unit_offset(&header)?;
            let unit = dwarf.unit(header).ok()?;
            return Some((unit, local));
        }
    }
    None
}

/// A unit's line table as address ranges, and its file names by index.
#[derive(Debug)]
struct LineTable {
    rows: Vec<(u64, u64, u64, u32)>,
    files: HashMap<u64, Arc<str>>,
}

impl LineTable {
    fn of(dwarf: &gimli::Dwarf<Reader<'_>>, unit: &gimli::Unit<Reader<'_>>) -> Option<Self> {
        let program = unit.line_program.clone()?;
        let header = program.header().clone();
        let mut files = HashMap::new();
        let mut index = 0u64;
        // File indices start at 0 (DWARF 5) or 1 (DWARF 4); look both up.
        while index <= header.file_names().len() as u64 + 1 {
            if let Some(entry) = header.file(index) {
                if let Some(path) = file_path(dwarf, unit, &header, entry) {
                    files.insert(index, Arc::from(path));
                }
            }
            index += 1;
        }
        let mut rows = Vec::new();
        let mut previous: Option<(u64, u64, u32)> = None;
        let mut state = program.rows();
        while let Ok(Some((_, row))) = state.next_row() {
            let address = row.address();
            if let Some((start, file, line)) = previous.take() {
                if address > start {
                    rows.push((start, address, file, line));
                }
            }
            if !row.end_sequence() {
                let line = row
                    .line()
                    .map_or(0, |l| u32::try_from(l.get()).unwrap_or(u32::MAX));
                previous = Some((address, row.file_index(), line));
            }
        }
        rows.sort_unstable_by_key(|r| r.0);
        Some(Self { rows, files })
    }

    fn bytes(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<(u64, u64, u64, u32)>()
            + self.files.values().map(|f| f.len() + 48).sum::<usize>()
    }

    fn find(&self, probe: u64) -> Option<(Option<Arc<str>>, Option<u32>)> {
        let position = self.rows.partition_point(|r| r.0 <= probe).checked_sub(1)?;
        let (start, end, file, line) = self.rows[position];
        if !(start..end).contains(&probe) {
            return None;
        }
        Some((self.files.get(&file).cloned(), (line > 0).then_some(line)))
    }
}

fn file_path(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    header: &gimli::LineProgramHeader<Reader<'_>>,
    entry: &gimli::FileEntry<Reader<'_>>,
) -> Option<String> {
    let string = |value| {
        dwarf
            .attr_string(unit, value)
            .ok()
            .map(|s| s.to_string_lossy().into_owned())
    };
    let name = string(entry.path_name())?;
    if name.starts_with('/') {
        return Some(name);
    }
    match entry.directory(header).and_then(string) {
        Some(directory) if !directory.is_empty() => {
            let directory = match &unit.comp_dir {
                Some(comp_dir) if !directory.starts_with('/') => {
                    Cow::Owned(format!("{}/{directory}", comp_dir.to_string_lossy()))
                }
                _ => Cow::Borrowed(directory.as_str()),
            };
            Some(format!("{}/{name}", directory.trim_end_matches('/')))
        }
        _ => Some(name),
    }
}

/// Demangles a Rust symbol (without its `::h…` hash); other names are kept.
pub(crate) fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function_for_dwarf() -> u64 {
        std::hint::black_box(11)
    }

    fn probe_of(address: u64) -> (String, u64) {
        let modules = super::super::modules::loaded_modules(false);
        let module = modules
            .iter()
            .find(|m| m.code_range().is_some_and(|r| r.contains(&address)))
            .expect("in a module");
        (module.open_path().to_owned(), address - module.base)
    }

    #[test]
    fn resolves_a_function_with_file_and_line() {
        let address = a_named_function_for_dwarf as *const () as usize as u64;
        let (path, probe) = probe_of(address);
        let mut index = None;
        let chains = resolve_batch(&path, &[probe, u64::MAX / 2], &mut index);
        assert!(
            index.as_ref().is_some_and(|i| i.bytes() > 0),
            "the unit index is kept"
        );
        let again = resolve_batch(&path, &[probe], &mut index);
        assert_eq!(again[0], chains[0]);
        let frame = chains[0].last().expect("a frame");
        assert!(
            frame.function.ends_with("a_named_function_for_dwarf"),
            "{frame:?}"
        );
        assert!(
            frame
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with("dwarf.rs")),
            "{frame:?}"
        );
        assert!(frame.line.is_some_and(|l| l > 0));
        assert!(
            chains[1].is_empty(),
            "an address outside the binary is unknown"
        );
    }

    #[test]
    fn demangles_rust_names_without_hash() {
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("memcpy"), "memcpy");
    }
}
