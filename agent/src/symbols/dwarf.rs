//! A lean DWARF symbolizer for one binary and one batch of addresses.
//!
//! General-purpose symbolizers (addr2line's `Context`, backtrace-rs) index
//! every compilation unit up front — abbreviations and line-program headers
//! of all of them — which for a 25 MiB Rust binary costs tens of megabytes
//! that then stay resident. Here each batch maps the file, finds the units
//! its addresses fall in through `.debug_aranges`, and reads of each unit
//! only what its addresses need:
//!
//! - the unit's functions (start, end, DIE), found in one pass that skips
//!   every other entry's attributes without decoding them, kept between
//!   batches (~24 bytes per function);
//! - the inline chain of each address, read from the subtree of the one
//!   function it falls in;
//! - line rows of the line-program sequences holding those functions,
//!   kept for the next batch; file and function names as they are needed.
//!
//! The file is mapped with `MADV_RANDOM`: debug info is read in small
//! pieces scattered over tens of MiB, and without it every page fault
//! reads the device's whole read-ahead window around it (8 MiB on some
//! VMs: most of the binary, to name three functions). The ranges read
//! whole — `.debug_aranges`, each unit's entries, its line program — are
//! asked for ahead with `MADV_WILLNEED`. Memory is bounded by
//! [`UNIT_TABLES_BUDGET`]; nothing but the results and those tables
//! outlives the batch (the caller caches results per address).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

use super::lines::{LineProgram, Row, Sequence};

/// One frame of an inline chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DwarfFrame {
    pub(crate) function: String,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type Unit<'a> = gimli::Unit<Reader<'a>>;

/// Most memory the unit tables of one binary keep between batches; the
/// least recently used units are dropped beyond it. A batch builds what it
/// needs first, so a working set above the budget costs rebuilds, not
/// failures. (Measured: under 1 MiB for a release service's profiles; the
/// tables hold functions and the line rows of profiled code only.)
pub(crate) const UNIT_TABLES_BUDGET: usize = 16 << 20;

/// What is kept of one binary between batches: the address ranges of its
/// compilation units (about 24 bytes each; building them reads all of
/// `.debug_aranges`) and the tables of recently used units, within
/// [`UNIT_TABLES_BUDGET`].
#[derive(Debug, Default)]
pub(crate) struct UnitIndex {
    ranges: Vec<(u64, u64, gimli::DebugInfoOffset)>,
    /// Distinct unit offsets, sorted: the unit holding a cross-unit
    /// reference is found by binary search.
    unit_starts: Vec<gimli::DebugInfoOffset>,
    units: HashMap<gimli::DebugInfoOffset, UnitTables>,
    recent: VecDeque<gimli::DebugInfoOffset>,
    unit_bytes: usize,
}

impl UnitIndex {
    fn new(ranges: Vec<(u64, u64, gimli::DebugInfoOffset)>) -> Self {
        let mut unit_starts: Vec<_> = ranges.iter().map(|r| r.2).collect();
        unit_starts.sort_unstable_by_key(|o| o.0);
        unit_starts.dedup();
        UnitIndex {
            ranges,
            unit_starts,
            ..UnitIndex::default()
        }
    }

    /// Memory held, estimated, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.ranges.capacity() * std::mem::size_of::<(u64, u64, gimli::DebugInfoOffset)>()
            + self.unit_starts.capacity() * std::mem::size_of::<gimli::DebugInfoOffset>()
            + self.unit_bytes
    }

    /// The unit whose address ranges hold `probe`.
    fn unit_of(&self, probe: u64) -> Option<gimli::DebugInfoOffset> {
        let position = self.ranges.partition_point(|u| u.0 <= probe);
        let &(start, end, offset) = self.ranges.get(position.checked_sub(1)?)?;
        (start..end).contains(&probe).then_some(offset)
    }

    /// Marks `offset` as the most recently used unit.
    fn touch(&mut self, offset: gimli::DebugInfoOffset) {
        if self.recent.back() != Some(&offset) {
            self.recent.retain(|o| *o != offset);
            self.recent.push_back(offset);
        }
    }

    /// Drops the least recently used unit tables beyond the budget.
    fn trim(&mut self) {
        while self.unit_bytes > UNIT_TABLES_BUDGET {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            if let Some(evicted) = self.units.remove(&old) {
                self.unit_bytes = self.unit_bytes.saturating_sub(evicted.bytes);
            }
        }
    }
}

/// Asks the kernel to read `bytes` (a part of `map`) ahead, in one go.
fn read_ahead(map: &memmap2::Mmap, bytes: &[u8]) {
    let base = map.as_ptr() as usize;
    let start = bytes.as_ptr() as usize;
    if bytes.is_empty() || start < base || start - base + bytes.len() > map.len() {
        return;
    }
    // Advice only: without it the pages are read as they are touched.
    let _ = map.advise_range(memmap2::Advice::WillNeed, start - base, bytes.len());
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
    // Advice only (see the module docs); reads work the same without it.
    let _ = map.advise(memmap2::Advice::Random);
    let Ok(object) = object::File::parse(&*map) else {
        return out;
    };
    let endian = if object.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let data = |name: &str| -> &[u8] {
        object
            .section_by_name(name)
            .and_then(|s| s.data().ok())
            .unwrap_or(&[])
    };
    let section = |id: gimli::SectionId| -> Result<Reader<'_>, gimli::Error> {
        Ok(EndianSlice::new(data(id.name()), endian))
    };
    if let Ok(dwarf) = gimli::Dwarf::load(section) {
        let index = index.get_or_insert_with(|| {
            let aranges = data(".debug_aranges");
            read_ahead(&map, aranges);
            UnitIndex::new(unit_index(&dwarf, aranges.len() / 16))
        });
        let mut by_unit: BTreeMap<gimli::DebugInfoOffset, Vec<usize>> = BTreeMap::new();
        for (i, &probe) in probes.iter().enumerate() {
            if let Some(offset) = index.unit_of(probe) {
                by_unit.entry(offset).or_default().push(i);
            }
        }
        // Every unit this batch reads, asked for at once so the reads overlap.
        let info = data(".debug_info");
        let mut headers = Vec::with_capacity(by_unit.len());
        for (&offset, indices) in &by_unit {
            if let Ok(header) = dwarf.debug_info.header_from_offset(offset) {
                let start = offset.0.min(info.len());
                let end = start
                    .saturating_add(header.length_including_self())
                    .min(info.len());
                read_ahead(&map, &info[start..end]);
                headers.push((offset, header, indices));
            }
        }
        for (offset, header, indices) in headers {
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            if let Some(program) = &unit.line_program {
                read_ahead(&map, program.header().raw_program_buf().slice());
            }
            let UnitIndex {
                units,
                unit_starts,
                unit_bytes,
                ..
            } = &mut *index;
            let tables = match units.entry(offset) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let Ok(tables) = UnitTables::build(&dwarf, &unit) else {
                        continue;
                    };
                    *unit_bytes += tables.bytes;
                    entry.insert(tables)
                }
            };
            let before = tables.bytes;
            let context = UnitContext {
                dwarf: &dwarf,
                unit: &unit,
                unit_starts,
            };
            tables.resolve(&context, probes, indices, &mut out);
            *unit_bytes = (*unit_bytes + tables.bytes).saturating_sub(before);
            index.touch(offset);
        }
        index.trim();
    }
    // Addresses DWARF does not cover (C code without debug info, stripped
    // binaries) are named from the symbol table.
    if out.iter().any(Vec::is_empty) {
        read_ahead(&map, data(".symtab"));
        read_ahead(&map, data(".strtab"));
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
/// `.debug_aranges` (about `capacity` entries), or, when a binary has none,
/// from each unit's root DIE.
fn unit_index(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    capacity: usize,
) -> Vec<(u64, u64, gimli::DebugInfoOffset)> {
    let mut units = Vec::with_capacity(capacity);
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
    // Stable: units list their ranges in address order and mostly follow
    // each other, so this merges a few runs instead of sorting from scratch.
    units.sort_by_key(|u| u.0);
    units.shrink_to_fit();
    units
}

/// What reading one unit needs: its debug info, the unit, and where the
/// other units start (for references into them).
struct UnitContext<'d, 'a> {
    dwarf: &'d gimli::Dwarf<Reader<'a>>,
    unit: &'d Unit<'a>,
    unit_starts: &'d [gimli::DebugInfoOffset],
}

/// One inlined call in the function an address falls in.
#[derive(Debug)]
struct Inlined {
    depth: isize,
    die: UnitOffset,
    call_file: Option<u64>,
    call_line: Option<u32>,
}

/// What is kept of one compilation unit between batches: its functions,
/// the line rows of the sequences looked up so far, and the names resolved
/// so far.
#[derive(Debug)]
pub(crate) struct UnitTables {
    /// (start, end, DIE) of every function with code, sorted by start.
    functions: Vec<(u64, u64, UnitOffset)>,
    /// The line program's sequences, sorted by start, read when lines are
    /// first needed.
    sequences: Option<Vec<Sequence>>,
    /// Function names by DIE.
    names: HashMap<UnitOffset, Arc<str>>,
    /// Source file paths by the line program's file index.
    files: HashMap<u64, Option<Arc<str>>>,
    /// Memory held, estimated, in bytes.
    bytes: usize,
}

impl UnitTables {
    /// The unit's functions, in one pass over its entries that decodes
    /// only the attributes of subprograms with code.
    fn build(dwarf: &gimli::Dwarf<Reader<'_>>, unit: &Unit<'_>) -> Result<Self, gimli::Error> {
        let mut functions = Vec::new();
        let mut spans = Vec::new();
        let mut entries = unit.entries_raw(None)?;
        while !entries.is_empty() {
            let offset = entries.next_offset();
            let Some(abbrev) = entries.read_abbreviation()? else {
                continue;
            };
            let has_code = abbrev.tag() == gimli::DW_TAG_subprogram
                && abbrev
                    .attributes()
                    .iter()
                    .any(|a| a.name() == gimli::DW_AT_low_pc || a.name() == gimli::DW_AT_ranges);
            if !has_code {
                entries.skip_attributes(abbrev.attributes())?;
                continue;
            }
            let mut code = CodeRanges::default();
            for spec in abbrev.attributes() {
                code.read(dwarf, unit, entries.read_attribute(*spec)?)?;
            }
            spans.clear();
            code.ranges(dwarf, unit, &mut spans)?;
            functions.extend(spans.iter().map(|&(begin, end)| (begin, end, offset)));
        }
        functions.sort_unstable_by_key(|f| f.0);
        functions.shrink_to_fit();
        let mut tables = UnitTables {
            functions,
            sequences: None,
            names: HashMap::new(),
            files: HashMap::new(),
            bytes: 0,
        };
        tables.count_bytes();
        Ok(tables)
    }

    fn count_bytes(&mut self) {
        self.bytes = self.functions.capacity() * std::mem::size_of::<(u64, u64, UnitOffset)>()
            + self
                .sequences
                .as_ref()
                .map_or(0, |s| s.capacity() * std::mem::size_of::<Sequence>())
            + self.names.values().map(|n| n.len() + 48).sum::<usize>()
            + self
                .files
                .values()
                .map(|f| f.as_ref().map_or(0, |f| f.len()) + 48)
                .sum::<usize>();
    }

    /// The function range holding `probe`: (start, end, DIE).
    fn function_of(&self, probe: u64) -> Option<(u64, u64, UnitOffset)> {
        let position = self.functions.partition_point(|f| f.0 <= probe);
        // Ranges of different functions do not overlap; look back a little
        // for a function split into several ranges.
        self.functions[..position]
            .iter()
            .rev()
            .take(8)
            .find(|f| probe < f.1)
            .copied()
    }

    /// Writes the inline chains of `probes[indices]` into `out`.
    fn resolve(
        &mut self,
        context: &UnitContext<'_, '_>,
        probes: &[u64],
        indices: &[usize],
        out: &mut [Vec<DwarfFrame>],
    ) {
        let addresses: Vec<u64> = indices.iter().map(|&i| probes[i]).collect();
        let lines = self.lines(context.unit, &addresses);
        let mut by_function: BTreeMap<UnitOffset, Vec<usize>> = BTreeMap::new();
        for (k, &address) in addresses.iter().enumerate() {
            if let Some((_, _, die)) = self.function_of(address) {
                by_function.entry(die).or_default().push(k);
            }
        }
        for (die, ks) in by_function {
            let mut chains: Vec<Vec<Inlined>> = ks.iter().map(|_| Vec::new()).collect();
            let wanted: Vec<u64> = ks.iter().map(|&k| addresses[k]).collect();
            // A function whose subtree cannot be read still gets its name
            // and line.
            let _ = inlined_calls(context, die, &wanted, &mut chains);
            for (&k, mut chain) in ks.iter().zip(chains) {
                chain.sort_by_key(|c| c.depth);
                out[indices[k]] = self.frames(context, lines[k], die, &chain);
            }
        }
        self.count_bytes();
    }

    /// File index and line of each of `addresses`, from the rows of the
    /// sequences holding them (each decoded once).
    fn lines(&mut self, unit: &Unit<'_>, addresses: &[u64]) -> Vec<Option<(u64, Option<u32>)>> {
        let mut lines = vec![None; addresses.len()];
        let Some(program) = unit
            .line_program
            .as_ref()
            .and_then(|p| LineProgram::new(p.header()))
        else {
            return lines;
        };
        let sequences = self.sequences.get_or_insert_with(|| program.sequences());
        let mut by_sequence: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, &address) in addresses.iter().enumerate() {
            let position = sequences.partition_point(|s| s.start <= address);
            if let Some(p) = position.checked_sub(1) {
                if address < sequences[p].end {
                    by_sequence.entry(p).or_default().push(k);
                }
            }
        }
        for (sequence, mut ks) in by_sequence {
            ks.sort_by_key(|&k| addresses[k]);
            let mut next = 0;
            let mut current: Option<Row> = None;
            // Rows come in address order; each address takes the last row
            // at or before it.
            program.rows(&sequences[sequence], |row| {
                while next < ks.len() && addresses[ks[next]] < row.address {
                    lines[ks[next]] = current.filter(|r| !r.end_sequence).map(location);
                    next += 1;
                }
                current = Some(row);
            });
            for &k in &ks[next..] {
                lines[k] = current.filter(|r| !r.end_sequence).map(location);
            }
        }
        lines
    }

    /// The inline chain of an address in the function at `function`,
    /// given its inlined calls (outermost first) and the address's file
    /// and line: innermost frame first.
    fn frames(
        &mut self,
        context: &UnitContext<'_, '_>,
        location: Option<(u64, Option<u32>)>,
        function: UnitOffset,
        chain: &[Inlined],
    ) -> Vec<DwarfFrame> {
        let mut frames = Vec::with_capacity(chain.len() + 1);
        // Innermost first: each frame's line is where its callee was called
        // from; the innermost frame's comes from the line table.
        let (mut file, mut line) = match location {
            Some((file, line)) => (Some(file), line),
            None => (None, None),
        };
        for inlined in chain.iter().rev() {
            frames.push(DwarfFrame {
                function: self.name(context, inlined.die).to_string(),
                file: file
                    .and_then(|f| self.file(context, f))
                    .map(|f| f.to_string()),
                line,
            });
            (file, line) = (inlined.call_file, inlined.call_line);
        }
        frames.push(DwarfFrame {
            function: self.name(context, function).to_string(),
            file: file
                .and_then(|f| self.file(context, f))
                .map(|f| f.to_string()),
            line,
        });
        frames
    }

    /// The name of the function whose DIE is at `die`.
    fn name(&mut self, context: &UnitContext<'_, '_>, die: UnitOffset) -> Arc<str> {
        if let Some(name) = self.names.get(&die) {
            return Arc::clone(name);
        }
        let name: Arc<str> = die_name(context, context.unit, die, 0)
            .map_or_else(|| Arc::from("[unknown]"), Arc::from);
        self.names.insert(die, Arc::clone(&name));
        name
    }

    /// The path of the line program's file `index`.
    fn file(&mut self, context: &UnitContext<'_, '_>, index: u64) -> Option<Arc<str>> {
        self.files
            .entry(index)
            .or_insert_with(|| {
                let header = context.unit.line_program.as_ref()?.header();
                let entry = header.file(index)?;
                file_path(context.dwarf, context.unit, header, entry).map(Arc::from)
            })
            .clone()
    }
}

/// A row's file index and line (none for line 0: no source line).
fn location(row: Row) -> (u64, Option<u32>) {
    let line = u32::try_from(row.line).unwrap_or(u32::MAX);
    (row.file, (line > 0).then_some(line))
}

/// The code ranges of a DIE, from its attributes.
#[derive(Default)]
struct CodeRanges<'a> {
    low: Option<u64>,
    high: Option<u64>,
    size: Option<u64>,
    list: Option<gimli::RangeListsOffset<usize>>,
    _reader: std::marker::PhantomData<Reader<'a>>,
}

impl<'a> CodeRanges<'a> {
    /// Takes the attribute if it says where code is.
    fn read(
        &mut self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        unit: &Unit<'a>,
        attribute: gimli::Attribute<Reader<'a>>,
    ) -> Result<(), gimli::Error> {
        match attribute.name() {
            gimli::DW_AT_low_pc => self.low = dwarf.attr_address(unit, attribute.value())?,
            gimli::DW_AT_high_pc => match attribute.value() {
                AttributeValue::Udata(size) => self.size = Some(size),
                value => self.high = dwarf.attr_address(unit, value)?,
            },
            gimli::DW_AT_ranges => {
                self.list = dwarf.attr_ranges_offset(unit, attribute.value())?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends the non-empty ranges to `out`.
    fn ranges(
        &self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        unit: &Unit<'a>,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), gimli::Error> {
        if let Some(list) = self.list {
            let mut ranges = dwarf.ranges(unit, list)?;
            while let Some(range) = ranges.next()? {
                if range.end > range.begin {
                    out.push((range.begin, range.end));
                }
            }
        } else if let Some(low) = self.low {
            let high = self.size.map(|s| low.saturating_add(s)).or(self.high);
            if let Some(high) = high.filter(|&h| h > low) {
                out.push((low, high));
            }
        }
        Ok(())
    }
}

/// Reads the subtree of the function at `function` and appends to
/// `chains[k]` the inlined calls whose code holds `probes[k]`.
fn inlined_calls(
    context: &UnitContext<'_, '_>,
    function: UnitOffset,
    probes: &[u64],
    chains: &mut [Vec<Inlined>],
) -> Result<(), gimli::Error> {
    let (dwarf, unit) = (context.dwarf, context.unit);
    let mut entries = unit.entries_raw(Some(function))?;
    let Some(abbrev) = entries.read_abbreviation()? else {
        return Ok(());
    };
    entries.skip_attributes(abbrev.attributes())?;
    let mut spans = Vec::new();
    // Children have depth 1 and more; the null entry ending them brings
    // the depth back to 0.
    while entries.next_depth() > 0 && !entries.is_empty() {
        let depth = entries.next_depth();
        let die = entries.next_offset();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        if abbrev.tag() != gimli::DW_TAG_inlined_subroutine {
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        }
        let mut code = CodeRanges::default();
        let (mut call_file, mut call_line) = (None, None);
        for spec in abbrev.attributes() {
            let attribute = entries.read_attribute(*spec)?;
            match (attribute.name(), attribute.value()) {
                (
                    gimli::DW_AT_call_file,
                    AttributeValue::FileIndex(i) | AttributeValue::Udata(i),
                ) => {
                    call_file = Some(i);
                }
                (gimli::DW_AT_call_line, value) => {
                    call_line = value.udata_value().and_then(|l| u32::try_from(l).ok());
                }
                _ => code.read(dwarf, unit, attribute)?,
            }
        }
        spans.clear();
        code.ranges(dwarf, unit, &mut spans)?;
        for (k, &probe) in probes.iter().enumerate() {
            if spans.iter().any(|&(b, e)| (b..e).contains(&probe)) {
                chains[k].push(Inlined {
                    depth,
                    die,
                    call_file,
                    call_line,
                });
            }
        }
    }
    Ok(())
}

/// A function's name: its linkage name demangled, or its plain name,
/// following `DW_AT_abstract_origin` / `DW_AT_specification`.
fn die_name(
    context: &UnitContext<'_, '_>,
    unit: &Unit<'_>,
    offset: UnitOffset,
    hops: u32,
) -> Option<String> {
    if hops > 4 {
        return None;
    }
    let dwarf = context.dwarf;
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
                return die_name(context, unit, target, hops + 1)
            }
            Some(AttributeValue::DebugInfoRef(target)) => {
                // A reference into another unit (cross-unit inlining with LTO).
                let (other, local) = unit_containing(context, target)?;
                return die_name(context, &other, local, hops + 1);
            }
            _ => {}
        }
    }
    None
}

/// The unit holding a `.debug_info` offset, and the offset within it.
fn unit_containing<'a>(
    context: &UnitContext<'_, 'a>,
    target: gimli::DebugInfoOffset,
) -> Option<(Unit<'a>, UnitOffset)> {
    let dwarf = context.dwarf;
    let position = context.unit_starts.partition_point(|o| o.0 <= target.0);
    let header = match position
        .checked_sub(1)
        .and_then(|p| context.unit_starts.get(p))
        .and_then(|&start| dwarf.debug_info.header_from_offset(start).ok())
        .filter(|header| {
            header
                .debug_info_offset()
                .is_some_and(|start| start.0 + header.length_including_self() > target.0)
        }) {
        Some(header) => header,
        // Units without address ranges are not in the index: walk them all.
        None => {
            let mut headers = dwarf.units();
            loop {
                let header = headers.next().ok()??;
                let start = header.debug_info_offset()?;
                if (start.0..start.0 + header.length_including_self()).contains(&target.0) {
                    break header;
                }
            }
        }
    };
    let local = target.to_unit_offset(&header)?;
    let unit = dwarf.unit(header).ok()?;
    Some((unit, local))
}

fn file_path(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &Unit<'_>,
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

    #[inline(always)]
    fn an_inlined_helper_for_dwarf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(3)
    }

    #[inline(never)]
    fn a_caller_with_inlined_code_for_dwarf() -> u64 {
        let x = std::hint::black_box(5);
        an_inlined_helper_for_dwarf(x).wrapping_add(1) // the call's line
    }

    #[test]
    fn inlined_calls_are_frames_with_the_line_they_were_called_from() {
        let address = a_caller_with_inlined_code_for_dwarf as *const () as usize as u64;
        let (path, probe) = probe_of(address);
        let probes: Vec<u64> = (0..96).map(|i| probe + i).collect();
        let chains = resolve_batch(&path, &probes, &mut None);
        // Other inlined code (`black_box`, in an optimized build) has chains
        // too: look for the helper's, wherever it sits in its chain.
        let inlined = chains
            .iter()
            .find(|chain| {
                chain
                    .iter()
                    .any(|f| f.function.ends_with("an_inlined_helper_for_dwarf"))
            })
            .unwrap_or_else(|| panic!("no address inside the inlined helper: {chains:?}"));
        let helper = inlined
            .iter()
            .position(|f| f.function.ends_with("an_inlined_helper_for_dwarf"))
            .unwrap();
        assert_eq!(helper + 2, inlined.len(), "the caller is next: {inlined:?}");
        let caller = inlined.last().unwrap();
        assert!(
            caller
                .function
                .ends_with("a_caller_with_inlined_code_for_dwarf"),
            "{inlined:?}"
        );
        let source = include_str!("dwarf.rs");
        let call_line = source
            .lines()
            .position(|l| l.ends_with("// the call's line"))
            .unwrap() as u32
            + 1;
        assert_eq!(caller.line, Some(call_line), "{inlined:?}");
        assert!(caller
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("dwarf.rs")));
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
