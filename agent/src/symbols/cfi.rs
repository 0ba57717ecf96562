//! Pointer authentication in aarch64 call-frame information.
//!
//! Code built with `-mbranch-protection=pac-ret` (the system libraries of
//! Ubuntu, Fedora and Amazon Linux 2023 on arm64) signs its return addresses
//! (`paciasp`) and says so in its FDEs with `DW_CFA_AARCH64_negate_ra_state`
//! (opcode `0x2d`). gimli decodes that opcode only in a section whose vendor
//! is set to AArch64, which framehop does not do: such an FDE fails to parse
//! and framehop falls back to frame pointers, which skips the caller of a
//! function without a frame record. The sign state only says whether the
//! saved return address carries authentication bits; the unwinder strips
//! them from every return address with a mask derived from the highest code
//! address, signed or not. So [`neutralize_ra_state`] rewrites the opcode
//! (and its `_with_pc` variant, `0x2c`) into `DW_CFA_nop` in the agent's own
//! copy of `.eh_frame`, in place: every offset stays, and so does
//! `.eh_frame_hdr`'s table.
//!
//! Entries this parser does not fully understand (an unknown opcode or
//! augmentation) are left as they are: framehop then behaves as it would
//! without this pass.

/// `DW_CFA_AARCH64_negate_ra_state`.
const NEGATE_RA_STATE: u8 = 0x2d;
/// `DW_CFA_AARCH64_negate_ra_state_with_pc`.
const NEGATE_RA_STATE_WITH_PC: u8 = 0x2c;
/// `DW_CFA_nop`.
const NOP: u8 = 0x00;

/// What an FDE needs from its CIE.
#[derive(Debug, Clone, Copy)]
struct Cie {
    /// Whether FDEs carry augmentation data (`z`).
    augmented: bool,
    /// The FDE pointer encoding (`R`; `DW_EH_PE_absptr` without one).
    pointer_encoding: u8,
}

/// What [`neutralize_ra_state`] did to a section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rewrite {
    /// CIEs and FDEs found.
    pub(crate) entries: usize,
    /// Entries whose instructions were read to their end.
    pub(crate) understood: usize,
    /// Sign-state opcodes rewritten into `DW_CFA_nop`.
    pub(crate) rewritten: usize,
}

/// Rewrites every `DW_CFA_AARCH64_negate_ra_state` (and `_with_pc`) of an
/// `.eh_frame` section into `DW_CFA_nop`, in place.
pub(crate) fn neutralize_ra_state(eh_frame: &mut [u8]) -> Rewrite {
    let mut result = Rewrite::default();
    let mut cies: Vec<(usize, Option<Cie>)> = Vec::new();
    let mut offset = 0usize;
    while let Some(entry) = Entry::at(eh_frame, offset) {
        result.entries += 1;
        let body = entry.body.clone();
        let (cie, instructions) = if entry.is_cie {
            let parsed = parse_cie(&eh_frame[body.clone()]);
            cies.push((offset, parsed.map(|(cie, _)| cie)));
            (parsed.map(|(cie, _)| cie), parsed.map(|(_, at)| at))
        } else {
            let cie = cies
                .iter()
                .find(|(at, _)| Some(*at) == entry.cie_offset)
                .and_then(|(_, cie)| *cie)
                .or_else(|| {
                    let at = entry.cie_offset?;
                    let cie_entry = Entry::at(eh_frame, at).filter(|e| e.is_cie)?;
                    parse_cie(&eh_frame[cie_entry.body]).map(|(cie, _)| cie)
                });
            let at = cie.and_then(|cie| fde_instructions(&eh_frame[body.clone()], cie));
            (cie, at)
        };
        if let (Some(cie), Some(at)) = (cie, instructions) {
            let start = body.start + at;
            if let Some(rewritten) = patch(&mut eh_frame[start..body.end], cie.pointer_encoding) {
                result.understood += 1;
                result.rewritten += rewritten;
            }
        }
        offset = entry.end;
    }
    result
}

/// One CIE or FDE: `body` is what follows the CIE id / CIE pointer.
struct Entry {
    is_cie: bool,
    /// An FDE's CIE, as an offset into the section.
    cie_offset: Option<usize>,
    body: std::ops::Range<usize>,
    end: usize,
}

impl Entry {
    fn at(section: &[u8], offset: usize) -> Option<Entry> {
        let length = u32::from_le_bytes(section.get(offset..offset + 4)?.try_into().ok()?);
        if length == 0 {
            return None; // the terminator
        }
        let (length, id_at, id_size) = if length == u32::MAX {
            let long = u64::from_le_bytes(section.get(offset + 4..offset + 12)?.try_into().ok()?);
            (usize::try_from(long).ok()?, offset + 12, 8)
        } else {
            (length as usize, offset + 4, 4)
        };
        let end = id_at.checked_add(length)?;
        if end > section.len() || length < id_size {
            return None;
        }
        let id = if id_size == 8 {
            u64::from_le_bytes(section.get(id_at..id_at + 8)?.try_into().ok()?)
        } else {
            u64::from(u32::from_le_bytes(
                section.get(id_at..id_at + 4)?.try_into().ok()?,
            ))
        };
        let is_cie = id == 0;
        // In .eh_frame an FDE's CIE pointer counts back from the pointer itself.
        let cie_offset = (!is_cie)
            .then(|| id_at.checked_sub(usize::try_from(id).ok()?))
            .flatten();
        Some(Entry {
            is_cie,
            cie_offset,
            body: id_at + id_size..end,
            end,
        })
    }
}

/// A CIE's body (after its id): what FDEs need, and where its initial
/// instructions start.
fn parse_cie(body: &[u8]) -> Option<(Cie, usize)> {
    let mut at = 0usize;
    let version = *body.get(at)?;
    at += 1;
    let nul = body.get(at..)?.iter().position(|&b| b == 0)?;
    let augmentation = &body[at..at + nul];
    at += nul + 1;
    if version >= 4 {
        at += 2; // address size, segment selector size
    }
    uleb(body, &mut at)?; // code alignment
    sleb(body, &mut at)?; // data alignment
    if version == 1 {
        at += 1; // return address register
    } else {
        uleb(body, &mut at)?;
    }
    let mut cie = Cie {
        augmented: false,
        pointer_encoding: 0,
    };
    match augmentation.split_first() {
        None => {}
        Some((b'z', letters)) => {
            cie.augmented = true;
            let length = usize::try_from(uleb(body, &mut at)?).ok()?;
            let data_end = at.checked_add(length)?;
            let mut data = at;
            for letter in letters {
                match letter {
                    b'L' => data += 1,
                    b'R' => {
                        cie.pointer_encoding = *body.get(data)?;
                        data += 1;
                    }
                    b'P' => {
                        let encoding = *body.get(data)?;
                        data += 1;
                        skip_pointer(body, &mut data, encoding)?;
                    }
                    b'S' | b'B' | b'G' => {}
                    _ => return None,
                }
            }
            if data > data_end {
                return None;
            }
            at = data_end;
        }
        Some(_) => return None,
    }
    (at <= body.len()).then_some((cie, at))
}

/// Where an FDE's instructions start in its body (after the CIE pointer).
fn fde_instructions(body: &[u8], cie: Cie) -> Option<usize> {
    let mut at = 0usize;
    skip_pointer(body, &mut at, cie.pointer_encoding)?; // initial location
    skip_pointer(body, &mut at, cie.pointer_encoding & 0x0f)?; // address range
    if cie.augmented {
        let length = usize::try_from(uleb(body, &mut at)?).ok()?;
        at = at.checked_add(length)?;
    }
    (at <= body.len()).then_some(at)
}

/// Rewrites the sign-state opcodes of one instruction stream and returns
/// how many; `None` when it stopped at an opcode it does not know (those
/// before it are rewritten).
fn patch(instructions: &mut [u8], pointer_encoding: u8) -> Option<usize> {
    let mut rewritten = 0;
    let mut at = 0usize;
    while let Some(&opcode) = instructions.get(at) {
        let here = at;
        at += 1;
        let step = match opcode >> 6 {
            1 | 3 => Some(()),                          // advance_loc, restore
            2 => uleb(instructions, &mut at).map(drop), // offset
            _ => operands(instructions, &mut at, opcode, pointer_encoding),
        };
        if step.is_none() || at > instructions.len() {
            return None;
        }
        if opcode == NEGATE_RA_STATE || opcode == NEGATE_RA_STATE_WITH_PC {
            instructions[here] = NOP;
            rewritten += 1;
        }
    }
    Some(rewritten)
}

/// Skips the operands of an extended (`opcode < 0x40`) instruction.
fn operands(bytes: &[u8], at: &mut usize, opcode: u8, pointer_encoding: u8) -> Option<()> {
    match opcode {
        // nop, remember_state, restore_state, the sign-state opcodes.
        0x00 | 0x0a | 0x0b | NEGATE_RA_STATE_WITH_PC | NEGATE_RA_STATE => {}
        0x01 => skip_pointer(bytes, at, pointer_encoding)?, // set_loc
        0x02 => *at += 1,                                   // advance_loc1
        0x03 => *at += 2,                                   // advance_loc2
        0x04 => *at += 4,                                   // advance_loc4
        // One ULEB operand: restore_extended, undefined, same_value,
        // def_cfa_register, def_cfa_offset, GNU_args_size.
        0x06 | 0x07 | 0x08 | 0x0d | 0x0e | 0x2e => {
            uleb(bytes, at)?;
        }
        // Two ULEBs: offset_extended, register, def_cfa, val_offset,
        // GNU_negative_offset_extended.
        0x05 | 0x09 | 0x0c | 0x14 | 0x2f => {
            uleb(bytes, at)?;
            uleb(bytes, at)?;
        }
        // ULEB then SLEB: offset_extended_sf, def_cfa_sf, val_offset_sf.
        0x11 | 0x12 | 0x15 => {
            uleb(bytes, at)?;
            sleb(bytes, at)?;
        }
        0x13 => {
            sleb(bytes, at)?; // def_cfa_offset_sf
        }
        0x0f => block(bytes, at)?, // def_cfa_expression
        // expression, val_expression: a register, then a block.
        0x10 | 0x16 => {
            uleb(bytes, at)?;
            block(bytes, at)?;
        }
        _ => return None,
    }
    Some(())
}

/// Skips a ULEB128 length and that many bytes.
fn block(bytes: &[u8], at: &mut usize) -> Option<()> {
    let length = usize::try_from(uleb(bytes, at)?).ok()?;
    *at = at.checked_add(length)?;
    Some(())
}

/// Skips a pointer encoded with `encoding` (`DW_EH_PE_*`).
fn skip_pointer(bytes: &[u8], at: &mut usize, encoding: u8) -> Option<()> {
    if encoding == 0xff {
        return Some(()); // DW_EH_PE_omit
    }
    match encoding & 0x0f {
        0x00 | 0x04 | 0x0c => *at += 8, // absptr (64-bit), udata8, sdata8
        0x02 | 0x0a => *at += 2,
        0x03 | 0x0b => *at += 4,
        0x01 => {
            uleb(bytes, at)?;
        }
        0x09 => {
            sleb(bytes, at)?;
        }
        _ => return None,
    }
    Some(())
}

fn uleb(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn sleb(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value = 0i64;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
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
        if shift > 70 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIE ("zR", pcrel|sdata4) and one FDE whose instructions sign the
    /// return address: `advance_loc 1; negate_ra_state; advance_loc 1;
    /// def_cfa_offset 0x2d; offset x30 at cfa-8; negate_ra_state`, as GCC
    /// emits for a `pac-ret` function (plus an operand that looks like the
    /// opcode and must stay).
    fn section() -> Vec<u8> {
        let cie_body: &[u8] = &[
            0, 0, 0, 0, // CIE id
            1, b'z', b'R', 0,    // version, augmentation
            4,    // code alignment
            0x78, // data alignment -8
            30,   // return address register (x30)
            1, 0x1b, // augmentation data: R = pcrel|sdata4
            0x0c, 31, 0, // def_cfa sp, 0
        ];
        let fde_instructions: &[u8] = &[
            0x41,
            NEGATE_RA_STATE,
            0x41,
            0x0e,
            0x2d,
            0x9e,
            0x01,
            NEGATE_RA_STATE,
        ];
        let mut out = Vec::new();
        out.extend_from_slice(&(cie_body.len() as u32).to_le_bytes());
        out.extend_from_slice(cie_body);
        let fde_start = out.len();
        let mut fde_body = Vec::new();
        fde_body.extend_from_slice(&((fde_start + 4) as u32).to_le_bytes()); // CIE pointer
        fde_body.extend_from_slice(&0x100i32.to_le_bytes()); // initial location
        fde_body.extend_from_slice(&0x40u32.to_le_bytes()); // address range
        fde_body.push(0); // augmentation data length
        fde_body.extend_from_slice(fde_instructions);
        while (fde_body.len() + 4) % 4 != 0 {
            fde_body.push(NOP);
        }
        out.extend_from_slice(&(fde_body.len() as u32).to_le_bytes());
        out.extend_from_slice(&fde_body);
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    fn parses_with_gimli(bytes: &[u8]) -> bool {
        use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
        let eh_frame = EhFrame::new(bytes, LittleEndian);
        let bases = BaseAddresses::default().set_eh_frame(0x1000);
        let mut entries = eh_frame.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry {
                let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
                    return false;
                };
                let mut instructions = fde.instructions(&eh_frame, &bases);
                loop {
                    match instructions.next() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return false,
                    }
                }
            }
        }
        true
    }

    #[test]
    fn sign_state_opcodes_become_nops_and_operands_stay() {
        let original = section();
        assert!(
            !parses_with_gimli(&original),
            "gimli without the AArch64 vendor rejects the opcode"
        );
        let mut patched = original.clone();
        let rewrite = neutralize_ra_state(&mut patched);
        assert_eq!(
            rewrite,
            Rewrite {
                entries: 2,
                understood: 2,
                rewritten: 2
            }
        );
        assert!(parses_with_gimli(&patched));
        let changed: Vec<usize> = (0..original.len())
            .filter(|&i| original[i] != patched[i])
            .collect();
        assert_eq!(changed.len(), 2, "only the two opcodes: {changed:?}");
        assert!(changed.iter().all(|&i| original[i] == NEGATE_RA_STATE));
        // The operand 0x2d of def_cfa_offset is still there.
        assert!(patched.windows(2).any(|w| w == [0x0e, 0x2d]));
        // Idempotent.
        assert_eq!(neutralize_ra_state(&mut patched).rewritten, 0);
    }

    #[test]
    fn an_unknown_opcode_leaves_the_rest_of_its_entry_alone() {
        let mut bytes = section();
        let first = bytes.iter().position(|&b| b == NEGATE_RA_STATE).unwrap();
        // An opcode this parser does not know before the first sign state.
        bytes[first - 1] = 0x3f;
        let rewrite = neutralize_ra_state(&mut bytes);
        assert_eq!(
            (rewrite.entries, rewrite.understood, rewrite.rewritten),
            (2, 1, 0)
        );
    }

    #[test]
    fn truncated_and_garbage_sections_do_not_panic() {
        let full = section();
        for end in 0..full.len() {
            let mut bytes = full[..end].to_vec();
            neutralize_ra_state(&mut bytes);
        }
        let mut noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        neutralize_ra_state(&mut noise);
    }

    #[test]
    fn every_entry_of_real_sections_is_understood() {
        // This binary's (Rust code is not built with pac-ret; on aarch64
        // the signed functions of `crate::testing` are) and libc's (on
        // aarch64 perhaps signed): every entry's instructions are read to
        // their end, and only sign-state opcodes change.
        let modules = super::super::modules::loaded_modules(true);
        let exe = std::env::current_exe().unwrap();
        let main = modules
            .iter()
            .find(|m| m.path == exe.to_string_lossy())
            .and_then(|m| m.unwind.as_ref())
            .expect("the test binary's unwind tables");
        let libc = modules
            .iter()
            .find(|m| m.path.contains("libc.so"))
            .and_then(|m| m.unwind.as_ref())
            .expect("libc's unwind tables");
        for original in [&main.eh_frame, &libc.eh_frame] {
            let mut copy = original.clone();
            let rewrite = neutralize_ra_state(&mut copy);
            assert!(rewrite.entries > 100, "{rewrite:?}");
            assert_eq!(rewrite.understood, rewrite.entries, "{rewrite:?}");
            let changed: Vec<u8> = (0..copy.len())
                .filter(|&i| copy[i] != original[i])
                .map(|i| original[i])
                .collect();
            assert_eq!(changed.len(), rewrite.rewritten);
            assert!(changed
                .iter()
                .all(|&b| b == NEGATE_RA_STATE || b == NEGATE_RA_STATE_WITH_PC));
        }
    }
}
