//! A unit's line program read the way the symbolizer needs it: one pass
//! that finds where each sequence's opcodes start and which addresses it
//! covers (kept: a sequence is one function in Rust's code), then the rows
//! of only the sequences that hold the addresses being resolved.
//!
//! gimli's `LineRows` runs a whole program to reach any row, building every
//! row on the way; the first pass here decodes opcodes without building
//! rows, and a later lookup starts at its sequence. The state machine is
//! DWARF's (§6.2.5) as gimli executes it, tombstoned sequences included;
//! programs with several operations per instruction (VLIW) are left to
//! gimli (`LineProgram::new` returns `None`).

use gimli::{EndianSlice, Reader as _, RunTimeEndian};

/// A line program's opcodes and the header fields that decode them.
#[derive(Debug)]
pub(super) struct LineProgram<'a> {
    program: &'a [u8],
    big_endian: bool,
    opcode_base: u8,
    standard_lengths: &'a [u8],
    min_inst_length: u64,
    line_base: i64,
    line_range: u8,
    address_size: u8,
}

/// One sequence: the addresses it covers and where its opcodes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sequence {
    pub(super) start: u64,
    pub(super) end: u64,
    offset: u32,
}

/// One row of the line table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) address: u64,
    pub(super) file: u64,
    pub(super) line: u64,
    /// The first address after the sequence (no file or line).
    pub(super) end_sequence: bool,
}

#[derive(Debug, Clone, Copy)]
struct State {
    address: u64,
    file: u64,
    line: u64,
    /// Rows are dropped until the next valid `DW_LNE_set_address`.
    tombstone: bool,
}

impl State {
    fn new() -> Self {
        State {
            address: 0,
            file: 1,
            line: 1,
            tombstone: false,
        }
    }
}

/// What one opcode did.
enum Step {
    Nothing,
    Row,
    EndSequence,
    /// The end of the program, or opcodes that cannot be decoded.
    Stop,
}

impl<'a> LineProgram<'a> {
    /// The program of `header`, or `None` when it has several operations
    /// per instruction or a header this decoder does not take.
    pub(super) fn new(
        header: &gimli::LineProgramHeader<EndianSlice<'a, RunTimeEndian>>,
    ) -> Option<Self> {
        let line_range = header.line_range();
        if header.maximum_operations_per_instruction() != 1
            || line_range == 0
            || header.opcode_base() == 0
            || !matches!(header.address_size(), 1 | 2 | 4 | 8)
        {
            return None;
        }
        let program = header.raw_program_buf();
        Some(LineProgram {
            program: program.slice(),
            big_endian: program.endian() == RunTimeEndian::Big,
            opcode_base: header.opcode_base(),
            standard_lengths: header.standard_opcode_lengths().slice(),
            min_inst_length: u64::from(header.minimum_instruction_length()),
            line_base: i64::from(header.line_base()),
            line_range,
            address_size: header.address_size(),
        })
    }

    /// Every sequence with rows, sorted by start address.
    pub(super) fn sequences(&self) -> Vec<Sequence> {
        let mut sequences = Vec::new();
        let mut state = State::new();
        let mut position = 0;
        let mut start: Option<(u64, usize)> = None;
        let mut sequence_offset = 0;
        loop {
            match self.step(&mut position, &mut state) {
                Step::Nothing => {}
                Step::Row => {
                    if start.is_none() {
                        start = Some((state.address, sequence_offset));
                    }
                }
                Step::EndSequence => {
                    if let Some((first, offset)) = start.take() {
                        // Linkers point the sequences of code they dropped
                        // at address 0.
                        if !state.tombstone && state.address > first && first != 0 {
                            sequences.push(Sequence {
                                start: first,
                                end: state.address,
                                offset: u32::try_from(offset).unwrap_or(u32::MAX),
                            });
                        }
                    }
                    state = State::new();
                    sequence_offset = position;
                }
                Step::Stop => break,
            }
        }
        sequences.sort_unstable_by_key(|s| s.start);
        sequences
    }

    /// The rows of `sequence`, its end row last.
    pub(super) fn rows(&self, sequence: &Sequence, mut each: impl FnMut(Row)) {
        let mut state = State::new();
        let mut position = sequence.offset as usize;
        loop {
            match self.step(&mut position, &mut state) {
                Step::Nothing => {}
                Step::Row => each(Row {
                    address: state.address,
                    file: state.file,
                    line: state.line,
                    end_sequence: false,
                }),
                Step::EndSequence => {
                    if !state.tombstone {
                        each(Row {
                            address: state.address,
                            file: state.file,
                            line: state.line,
                            end_sequence: true,
                        });
                    }
                    return;
                }
                Step::Stop => return,
            }
        }
    }

    /// Decodes and executes the opcode at `position`.
    fn step(&self, position: &mut usize, state: &mut State) -> Step {
        let Some(&opcode) = self.program.get(*position) else {
            return Step::Stop;
        };
        *position += 1;
        let row = |state: &State| {
            if state.tombstone {
                Step::Nothing
            } else {
                Step::Row
            }
        };
        if opcode >= self.opcode_base {
            let adjusted = opcode - self.opcode_base;
            advance_line(
                state,
                self.line_base + i64::from(adjusted % self.line_range),
            );
            if !self.advance(
                state,
                u64::from(adjusted / self.line_range) * self.min_inst_length,
            ) {
                return Step::Stop;
            }
            return row(state);
        }
        let mut reader = Bytes {
            data: self.program,
            position: *position,
        };
        let step = match opcode {
            0 => {
                let Some(length) = reader.uleb() else {
                    return Step::Stop;
                };
                let Some(end) = usize::try_from(length)
                    .ok()
                    .and_then(|l| reader.position.checked_add(l))
                    .filter(|&end| end <= self.program.len())
                else {
                    return Step::Stop;
                };
                let step = match (length > 0).then(|| reader.byte()).flatten() {
                    Some(1) => Step::EndSequence,
                    Some(2) => {
                        let Some(address) = reader.address(self.address_size, self.big_endian)
                        else {
                            return Step::Stop;
                        };
                        let tombstone_at = 0u64.wrapping_sub(2) & ones(self.address_size);
                        state.tombstone = address < state.address || address >= tombstone_at;
                        if !state.tombstone {
                            state.address = address;
                        }
                        Step::Nothing
                    }
                    _ => Step::Nothing,
                };
                reader.position = end;
                step
            }
            1 => row(state),
            2 => {
                let Some(advance) = reader.uleb() else {
                    return Step::Stop;
                };
                if !self.advance(state, advance.wrapping_mul(self.min_inst_length)) {
                    return Step::Stop;
                }
                Step::Nothing
            }
            3 => {
                let Some(delta) = reader.sleb() else {
                    return Step::Stop;
                };
                advance_line(state, delta);
                Step::Nothing
            }
            4 => {
                let Some(file) = reader.uleb() else {
                    return Step::Stop;
                };
                state.file = file;
                Step::Nothing
            }
            5 | 12 => {
                if reader.uleb().is_none() {
                    return Step::Stop;
                }
                Step::Nothing
            }
            6 | 7 | 10 | 11 => Step::Nothing,
            8 => {
                let advance = u64::from((255 - self.opcode_base) / self.line_range);
                if !self.advance(state, advance * self.min_inst_length) {
                    return Step::Stop;
                }
                Step::Nothing
            }
            9 => {
                let Some(advance) = reader.u16(self.big_endian) else {
                    return Step::Stop;
                };
                if !state.tombstone && !self.add(state, u64::from(advance)) {
                    return Step::Stop;
                }
                Step::Nothing
            }
            _ => {
                // An opcode this decoder does not know: skip its operands.
                let count = self
                    .standard_lengths
                    .get(usize::from(opcode) - 1)
                    .copied()
                    .unwrap_or(0);
                for _ in 0..count {
                    if reader.uleb().is_none() {
                        return Step::Stop;
                    }
                }
                Step::Nothing
            }
        };
        *position = reader.position;
        step
    }

    /// Advances the address by `by` unless in a tombstone; false when it
    /// overflows the address size (gimli stops reading there too).
    fn advance(&self, state: &mut State, by: u64) -> bool {
        state.tombstone || self.add(state, by)
    }

    fn add(&self, state: &mut State, by: u64) -> bool {
        match state.address.checked_add(by) {
            Some(address) if address & !ones(self.address_size) == 0 => {
                state.address = address;
                true
            }
            _ => false,
        }
    }
}

fn ones(size: u8) -> u64 {
    u64::MAX >> (64 - u32::from(size) * 8)
}

fn advance_line(state: &mut State, delta: i64) {
    state.line = if delta < 0 {
        state.line.saturating_sub(delta.unsigned_abs())
    } else {
        state.line.wrapping_add(delta as u64)
    };
}

/// A cursor over a byte slice.
struct Bytes<'a> {
    data: &'a [u8],
    position: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.position)?;
        self.position += 1;
        Some(byte)
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            if shift < 64 {
                value |= u64::from(byte & 0x7f) << shift;
            }
            shift += 7;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut value = 0i64;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            if shift < 64 {
                value |= i64::from(byte & 0x7f) << shift;
            }
            shift += 7;
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Some(value);
            }
        }
    }

    fn u16(&mut self, big_endian: bool) -> Option<u16> {
        let bytes = [self.byte()?, self.byte()?];
        Some(if big_endian {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        })
    }

    fn address(&mut self, size: u8, big_endian: bool) -> Option<u64> {
        let end = self.position.checked_add(usize::from(size))?;
        let bytes = self.data.get(self.position..end)?;
        self.position = end;
        Some(bytes.iter().enumerate().fold(0u64, |value, (i, &b)| {
            if big_endian {
                value << 8 | u64::from(b)
            } else {
                value | u64::from(b) << (8 * i)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection};

    /// Every sequence of every unit of this test binary decodes to the
    /// rows gimli's `LineRows` gives.
    #[test]
    fn rows_are_gimlis_rows() {
        let data = std::fs::read("/proc/self/exe").expect("this binary");
        let object = object::File::parse(&*data).expect("ELF");
        let load = |id: gimli::SectionId| -> Result<EndianSlice<'_, RunTimeEndian>, gimli::Error> {
            let bytes = object
                .section_by_name(id.name())
                .and_then(|s| s.data().ok())
                .unwrap_or(&[]);
            Ok(EndianSlice::new(bytes, RunTimeEndian::Little))
        };
        let dwarf = gimli::Dwarf::load(load).expect("DWARF");
        let mut units = dwarf.units();
        let (mut checked_units, mut checked_rows) = (0, 0);
        while let Ok(Some(header)) = units.next() {
            let unit = dwarf.unit(header).expect("unit");
            let Some(program) = unit.line_program.clone() else {
                continue;
            };
            let ours = LineProgram::new(program.header()).expect("x86_64/aarch64 programs");
            // gimli's rows, split into sequences.
            let mut expected: Vec<Vec<Row>> = Vec::new();
            let mut current = Vec::new();
            let mut rows = program.rows();
            while let Ok(Some((_, row))) = rows.next_row() {
                current.push(Row {
                    address: row.address(),
                    file: row.file_index(),
                    line: row.line().map_or(0, |l| l.get()),
                    end_sequence: row.end_sequence(),
                });
                if row.end_sequence() {
                    expected.push(std::mem::take(&mut current));
                }
            }
            expected.retain(|s| {
                s.len() > 1 && s.last().unwrap().address > s[0].address && s[0].address != 0
            });
            let sequences = ours.sequences();
            assert!(sequences.windows(2).all(|w| w[0].start <= w[1].start));
            let mut decoded: Vec<Vec<Row>> = Vec::new();
            for sequence in &sequences {
                let mut rows = Vec::new();
                ours.rows(sequence, |row| rows.push(row));
                assert_eq!(sequence.start, rows[0].address);
                assert_eq!(sequence.end, rows.last().unwrap().address);
                checked_rows += rows.len();
                decoded.push(rows);
            }
            let key = |s: &Vec<Row>| -> Vec<(u64, u64, u64, bool)> {
                s.iter()
                    .map(|r| (r.address, r.file, r.line, r.end_sequence))
                    .collect()
            };
            let mut decoded: Vec<_> = decoded.iter().map(key).collect();
            let mut expected: Vec<_> = expected.iter().map(key).collect();
            decoded.sort();
            expected.sort();
            assert_eq!(decoded, expected);
            checked_units += 1;
        }
        assert!(
            checked_units > 10 && checked_rows > 10_000,
            "{checked_units} {checked_rows}"
        );
    }

    #[test]
    fn leb128_both_ways() {
        let data = [0xe5, 0x8e, 0x26, 0x7f, 0x80, 0x7f];
        let mut bytes = Bytes {
            data: &data,
            position: 0,
        };
        assert_eq!(bytes.uleb(), Some(624_485));
        assert_eq!(bytes.sleb(), Some(-1));
        assert_eq!(bytes.sleb(), Some(-128));
        assert_eq!(bytes.uleb(), None, "past the end");
    }
}
