//! Loading a guest image: a static ELF64 x86_64 executable with the hv ABI note.
//!
//! We read ELF with a small reader of our own over `zerocopy` rather than a general ELF crate:
//! we need a strict subset (file header, program headers, one note, the symbol table), every
//! offset and size comes from an untrusted file and is checked here, and the one general crate
//! we tried changes its API between minor versions.

use std::path::{Path, PathBuf};

use hypercall_abi::note::{AbiNoteDesc, NOTE_NAME, NOTE_TYPE_ABI};
use hypercall_abi::{Features, ABI_MAJOR, ABI_MINOR};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::error::ImageError;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;

#[repr(C)]
#[derive(FromBytes, Immutable, KnownLayout)]
struct Ehdr {
    ident: [u8; 16],
    e_type: u16,
    machine: u16,
    version: u32,
    entry: u64,
    phoff: u64,
    shoff: u64,
    flags: u32,
    ehsize: u16,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

#[repr(C)]
#[derive(FromBytes, Immutable, KnownLayout)]
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

#[repr(C)]
#[derive(FromBytes, Immutable, KnownLayout)]
struct Shdr {
    name: u32,
    sh_type: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    addralign: u64,
    entsize: u64,
}

#[repr(C)]
#[derive(FromBytes, Immutable, KnownLayout)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// One loadable segment of the image.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Guest address (virtual = physical) of the first byte.
    pub addr: u64,
    /// Bytes from the file; the rest up to `mem_size` is zero.
    pub data: Vec<u8>,
    /// Size in memory.
    pub mem_size: u64,
    /// Writable.
    pub writable: bool,
    /// Executable.
    pub executable: bool,
}

/// A function symbol, for crash reports.
#[derive(Debug, Clone)]
struct Symbol {
    addr: u64,
    size: u64,
    name: String,
}

/// The function symbols of an image, for naming a crash address.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
}

impl SymbolTable {
    /// `name+0xoff` for the function containing `addr`, if the image has one.
    pub fn describe(&self, addr: u64) -> Option<String> {
        let i = self.symbols.partition_point(|s| s.addr <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        let off = addr - s.addr;
        if off >= s.size.max(1) {
            return None;
        }
        let name = format!("{:#}", rustc_demangle::demangle(&s.name));
        Some(format!("{name}+{off:#x}"))
    }
}

/// A validated guest image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Where the file came from.
    pub path: PathBuf,
    /// Entry point.
    pub entry: u64,
    /// Loadable segments, sorted by address, not overlapping.
    pub segments: Vec<Segment>,
    /// The ABI note.
    pub note: AbiNoteDesc,
    /// Function symbols.
    pub symbols: SymbolTable,
}

impl GuestImage {
    /// Lowest and one-past-highest address the segments occupy.
    pub fn extent(&self) -> (u64, u64) {
        let lo = self.segments.first().map_or(0, |s| s.addr);
        let hi = self
            .segments
            .iter()
            .map(|s| s.addr + s.mem_size)
            .max()
            .unwrap_or(0);
        (lo, hi)
    }

    /// Reads and validates the image at `path` against this hv's ABI and `offered` features.
    pub fn load(path: &Path, offered: Features) -> Result<GuestImage, ImageError> {
        let data = std::fs::read(path).map_err(|source| ImageError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &data, offered)
    }

    /// Validates an image already in memory.
    pub fn parse(path: &Path, data: &[u8], offered: Features) -> Result<GuestImage, ImageError> {
        let p = || path.to_path_buf();
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(ImageError::NotElf { path: p() });
        }
        let wrong = |what: String| ImageError::WrongArch { path: p(), what };
        let malformed = |why: &str| ImageError::Malformed {
            path: p(),
            why: why.to_string(),
        };
        if data.len() < 20 {
            return Err(malformed("truncated ELF header"));
        }
        if data[4] != 2 {
            return Err(wrong("a 32-bit ELF".into()));
        }
        if data[5] != 1 {
            return Err(wrong("a big-endian ELF".into()));
        }
        let (eh, _) =
            Ehdr::read_from_prefix(data).map_err(|_| malformed("truncated ELF header"))?;
        if eh.machine != EM_X86_64 {
            return Err(wrong(format!("an ELF for {}", machine_name(eh.machine))));
        }
        match eh.e_type {
            ET_EXEC => {}
            ET_DYN => {
                return Err(wrong(
                    "a position-independent ELF (ET_DYN; link with -C relocation-model=static and guest-sdk's linker script)".into(),
                ))
            }
            t => return Err(wrong(format!("an ELF of type {t} (not an executable)"))),
        }
        if eh.phentsize as usize != size_of::<Phdr>() {
            return Err(malformed("unexpected program header size"));
        }
        let phdrs = table::<Phdr>(data, eh.phoff, eh.phnum as u64)
            .ok_or_else(|| malformed("program headers outside the file"))?;

        let mut note = None;
        let mut segments = Vec::new();
        for ph in phdrs {
            match ph.p_type {
                PT_NOTE => {
                    let bytes = slice(data, ph.offset, ph.filesz)
                        .ok_or_else(|| malformed("note segment outside the file"))?;
                    match (find_abi_note(bytes), note) {
                        (Some(_), Some(_)) => return Err(malformed("more than one hv ABI note")),
                        (Some(n), None) => note = Some(n),
                        (None, _) => {}
                    }
                }
                PT_LOAD if ph.memsz > 0 => {
                    if ph.filesz > ph.memsz {
                        return Err(malformed("segment file size exceeds its memory size"));
                    }
                    let bytes = slice(data, ph.offset, ph.filesz)
                        .ok_or_else(|| malformed("segment outside the file"))?;
                    if ph.vaddr.checked_add(ph.memsz).is_none() {
                        return Err(malformed("segment wraps the address space"));
                    }
                    segments.push(Segment {
                        addr: ph.vaddr,
                        data: bytes.to_vec(),
                        mem_size: ph.memsz,
                        writable: ph.flags & PF_W != 0,
                        executable: ph.flags & PF_X != 0,
                    });
                }
                _ => {}
            }
        }
        let note = note.ok_or_else(|| ImageError::NoAbiNote { path: p() })?;
        if note.reserved != 0 {
            return Err(malformed("the ABI note's reserved field is not zero"));
        }
        if note.major != ABI_MAJOR {
            return Err(ImageError::AbiMajor {
                path: p(),
                guest_major: note.major,
                guest_minor: note.minor,
                hv_major: ABI_MAJOR,
                hv_minor: ABI_MINOR,
            });
        }
        let missing = note.required_features & !offered.bits();
        if missing != 0 {
            return Err(ImageError::MissingFeatures {
                path: p(),
                missing,
                hv_major: ABI_MAJOR,
                hv_minor: ABI_MINOR,
            });
        }
        if segments.is_empty() {
            return Err(malformed("no loadable segment"));
        }
        segments.sort_by_key(|s| s.addr);
        if !segments
            .iter()
            .any(|s| s.executable && (s.addr..s.addr + s.mem_size).contains(&eh.entry))
        {
            return Err(malformed("the entry point is not in an executable segment"));
        }
        if segments
            .windows(2)
            .any(|w| w[0].addr + w[0].mem_size > w[1].addr)
        {
            return Err(malformed("overlapping segments"));
        }
        let symbols = read_symbols(data, &eh).unwrap_or_default();
        Ok(GuestImage {
            path: p(),
            entry: eh.entry,
            segments,
            note,
            symbols,
        })
    }
}

fn machine_name(m: u16) -> String {
    match m {
        3 => "i386".into(),
        40 => "ARM".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        _ => format!("machine {m}"),
    }
}

fn slice(data: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

fn table<T: FromBytes + Immutable + KnownLayout>(data: &[u8], off: u64, n: u64) -> Option<&[T]> {
    let bytes = slice(data, off, n.checked_mul(size_of::<T>() as u64)?)?;
    <[T]>::ref_from_bytes(bytes).ok()
}

/// Finds the `HVPV` ABI note among the notes of a PT_NOTE segment (4-byte aligned records).
fn find_abi_note(mut bytes: &[u8]) -> Option<AbiNoteDesc> {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while bytes.len() >= 12 {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let (namesz, descsz, ntype) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = bytes.get(12..12 + namesz)?;
        let desc = bytes.get(name_end..name_end.checked_add(descsz)?)?;
        if name == NOTE_NAME && ntype == NOTE_TYPE_ABI {
            return AbiNoteDesc::read_from_bytes(desc).ok();
        }
        bytes = bytes.get(desc_end.min(bytes.len())..)?;
    }
    None
}

fn read_symbols(data: &[u8], eh: &Ehdr) -> Option<SymbolTable> {
    if eh.shentsize as usize != size_of::<Shdr>() {
        return None;
    }
    let shdrs = table::<Shdr>(data, eh.shoff, eh.shnum as u64)?;
    let symtab = shdrs.iter().find(|s| s.sh_type == SHT_SYMTAB)?;
    let strtab = shdrs.get(symtab.link as usize)?;
    let strings = slice(data, strtab.offset, strtab.size)?;
    let syms = table::<Sym>(data, symtab.offset, symtab.size / size_of::<Sym>() as u64)?;
    let mut symbols: Vec<Symbol> = syms
        .iter()
        .filter(|s| s.info & 0xf == STT_FUNC && s.value != 0)
        .filter_map(|s| {
            let rest = strings.get(s.name as usize..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(Symbol {
                addr: s.value,
                size: s.size,
                name: String::from_utf8_lossy(&rest[..end]).into_owned(),
            })
        })
        .collect();
    symbols.sort_by_key(|s| s.addr);
    Some(SymbolTable { symbols })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::note::AbiNote;
    use zerocopy::IntoBytes;

    /// Builds a minimal ELF64 x86_64 executable: one PT_LOAD, one PT_NOTE.
    pub(crate) fn tiny_elf(note: Option<AbiNote>, machine: u16, class: u8) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = class;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&2u16.to_le_bytes()); // phnum
        let ph = |t: u32, flags: u32, off: u64, addr: u64, sz: u64| {
            let mut v = Vec::new();
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&flags.to_le_bytes());
            for x in [off, addr, addr, sz, sz, 0x1000] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        };
        f[64..120].copy_from_slice(&ph(PT_LOAD, 5, 0x100, 0x20_0000, 0x10));
        f[120..176].copy_from_slice(&ph(PT_NOTE, 4, 0x180, 0, 36));
        f[0x100] = 0xf4;
        if let Some(n) = note {
            f[0x180..0x180 + 36].copy_from_slice(n.as_bytes());
        }
        f
    }

    #[test]
    fn accepts_a_good_image() {
        let elf = tiny_elf(Some(AbiNote::new(Features::TIMER)), EM_X86_64, 2);
        let img = GuestImage::parse(Path::new("t"), &elf, Features::V1_0).unwrap();
        assert_eq!(img.entry, 0x20_0000);
        assert_eq!(img.segments.len(), 1);
        assert!(img.segments[0].executable && !img.segments[0].writable);
        assert_eq!(img.extent(), (0x20_0000, 0x20_0010));
    }

    #[test]
    fn refuses_bad_images_with_the_right_error() {
        let good = AbiNote::new(Features::empty());
        let p = Path::new("t");
        let err = |d: &[u8]| GuestImage::parse(p, d, Features::V1_0).unwrap_err();
        assert!(matches!(err(b"#!/bin/sh\n"), ImageError::NotElf { .. }));
        assert!(matches!(
            err(&tiny_elf(Some(good), 183, 2)),
            ImageError::WrongArch { .. }
        ));
        assert!(matches!(
            err(&tiny_elf(Some(good), EM_X86_64, 1)),
            ImageError::WrongArch { .. }
        ));
        assert!(matches!(
            err(&tiny_elf(None, EM_X86_64, 2)),
            ImageError::NoAbiNote { .. }
        ));
        let mut other = good;
        other.desc.major = 2;
        assert!(matches!(
            err(&tiny_elf(Some(other), EM_X86_64, 2)),
            ImageError::AbiMajor { guest_major: 2, .. }
        ));
        let needs_more = AbiNote::new(Features::SMP);
        let e = GuestImage::parse(
            p,
            &tiny_elf(Some(needs_more), EM_X86_64, 2),
            Features::TIMER,
        )
        .unwrap_err();
        assert!(matches!(e, ImageError::MissingFeatures { .. }));
        // Truncations anywhere never panic.
        let elf = tiny_elf(Some(good), EM_X86_64, 2);
        for n in 0..elf.len() {
            let _ = GuestImage::parse(p, &elf[..n], Features::V1_0);
        }
    }

    #[test]
    fn symbols_describe_addresses() {
        let t = SymbolTable {
            symbols: vec![
                Symbol {
                    addr: 0x1000,
                    size: 0x10,
                    name: "a".into(),
                },
                Symbol {
                    addr: 0x2000,
                    size: 0x20,
                    name: "b".into(),
                },
            ],
        };
        assert_eq!(t.describe(0x1004).as_deref(), Some("a+0x4"));
        assert_eq!(t.describe(0x201f).as_deref(), Some("b+0x1f"));
        assert_eq!(t.describe(0x1010), None);
        assert_eq!(t.describe(0x10), None);
    }
}
