//! Makes bpftool print the maps' text fields as strings.
//!
//! bpftool prints an array as a string only when its element is a 1-byte BTF INT with
//! the CHAR encoding, and no Rust type gets that from bpf-linker: `c_char` becomes INT
//! `i8` SIGNED. So before loading, the object's `.BTF` is patched: INT `i8` becomes
//! CHAR. `common` uses `c_char` for text only, so nothing else changes meaning.

use object::{LittleEndian, Object, ObjectSection, read::elf::ElfFile64};
use thiserror::Error;

/// Why the object's BTF could not be patched.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfTextError {
    #[error("not a 64-bit little-endian ELF object")]
    NotElf,
    #[error("the object has no .BTF section")]
    NoBtf,
    #[error("the .BTF section is truncated or malformed at byte {0}")]
    Malformed(usize),
}

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_INT: u32 = 1;
const BTF_INT_CHAR: u32 = 2;

/// Returns how many INT `i8` types were turned into CHAR in `object`.
pub fn mark_i8_as_char(object: &mut [u8]) -> Result<usize, BtfTextError> {
    let (start, len) = btf_section(object)?;
    let btf = object
        .get_mut(start..start + len)
        .ok_or(BtfTextError::Malformed(start))?;
    patch_btf(btf)
}

/// File offset and size of the `.BTF` section.
fn btf_section(elf: &[u8]) -> Result<(usize, usize), BtfTextError> {
    let file = ElfFile64::<LittleEndian>::parse(elf).map_err(|_| BtfTextError::NotElf)?;
    let (offset, size) = file
        .section_by_name(".BTF")
        .and_then(|section| section.file_range())
        .ok_or(BtfTextError::NoBtf)?;
    let offset = usize::try_from(offset).map_err(|_| BtfTextError::NotElf)?;
    let size = usize::try_from(size).map_err(|_| BtfTextError::Malformed(offset))?;
    Ok((offset, size))
}

/// Walks the BTF type section and rewrites the encoding of every INT named `i8`.
fn patch_btf(btf: &mut [u8]) -> Result<usize, BtfTextError> {
    let bad = BtfTextError::Malformed;
    if read_u16(btf, 0) != Some(BTF_MAGIC) {
        return Err(bad(0));
    }
    let hdr_len = read_u32(btf, 4).ok_or(bad(4))? as usize;
    let type_off = read_u32(btf, 8).ok_or(bad(8))? as usize;
    let type_len = read_u32(btf, 12).ok_or(bad(12))? as usize;
    let str_off = read_u32(btf, 16).ok_or(bad(16))? as usize;
    let types = hdr_len + type_off;
    let types_end = types + type_len;
    let strings = hdr_len + str_off;
    if types_end > btf.len() {
        return Err(bad(types_end));
    }
    let mut at = types;
    let mut patched = 0;
    while at < types_end {
        let name_off = read_u32(btf, at).ok_or(bad(at))? as usize;
        let info = read_u32(btf, at + 4).ok_or(bad(at))?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let extra = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
            _ => return Err(bad(at)),
        };
        if kind == BTF_KIND_INT && c_str(btf, strings + name_off) == Some(b"i8") {
            let word_at = at + 12;
            let word = read_u32(btf, word_at).ok_or(bad(word_at))?;
            let word = (word & !(0xf << 24)) | (BTF_INT_CHAR << 24);
            btf[word_at..word_at + 4].copy_from_slice(&word.to_le_bytes());
            patched += 1;
        }
        at += 12 + extra;
    }
    Ok(patched)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The NUL-terminated string at `at`.
fn c_str(b: &[u8], at: usize) -> Option<&[u8]> {
    let rest = b.get(at..)?;
    Some(&rest[..rest.iter().position(|&c| c == 0)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_object_gets_its_text_type_marked() {
        let mut object = crate::ebpf::XDP_OBJECT.to_vec();
        assert_eq!(mark_i8_as_char(&mut object), Ok(1), "exactly one i8 type");
        assert_eq!(mark_i8_as_char(&mut object), Ok(1), "idempotent");
        assert_ne!(object, crate::ebpf::XDP_OBJECT, "the encoding changed");
    }

    #[test]
    fn garbage_and_truncated_objects_are_errors_not_panics() {
        assert_eq!(mark_i8_as_char(&mut [0u8; 64]), Err(BtfTextError::NotElf));
        let object = crate::ebpf::XDP_OBJECT;
        for cut in [0, 6, 64, object.len() / 2, object.len() - 1] {
            let _ = mark_i8_as_char(&mut object[..cut].to_vec());
        }
        let mut flipped = object.to_vec();
        for i in (0..flipped.len()).step_by(97) {
            flipped[i] ^= 0x5a;
        }
        let _ = mark_i8_as_char(&mut flipped);
    }
}
