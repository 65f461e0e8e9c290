//! The ELF ABI note. Every guest image carries one `PT_NOTE` entry of this form; the hypervisor
//! refuses an image without it, with another ABI major, or requiring a feature it lacks.
//!
//! On disk the note is the standard ELF note record: `namesz`, `descsz`, `type` (three `u32`),
//! the name `"HVPV\0"` padded to 8 bytes, then the descriptor [`AbiNoteDesc`].

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{Features, ABI_MAJOR, ABI_MINOR};

/// The note's name, with its terminating NUL (`namesz` = 5).
pub const NOTE_NAME: &[u8; 5] = b"HVPV\0";
/// The note type of the ABI note.
pub const NOTE_TYPE_ABI: u32 = 1;

/// The descriptor of the ABI note: which ABI the guest was built against and what it needs.
/// It is 4-byte aligned, as ELF notes are, so `required_features` may sit at an address that
/// is not a multiple of 8.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AbiNoteDesc {
    /// ABI major the guest was built for; must equal the hypervisor's.
    pub major: u16,
    /// ABI minor the guest was built for (informational: a newer hv serves older minors).
    pub minor: u16,
    /// Reserved, must be zero.
    pub reserved: u32,
    /// [`Features`] bits the guest cannot run without.
    pub required_features: u64,
}
const _: () = assert!(size_of::<AbiNoteDesc>() == 16);
const _: () = assert!(offset_of!(AbiNoteDesc, required_features) == 8);

/// A complete ELF note record carrying an [`AbiNoteDesc`], laid out as it appears in the image.
/// A guest places one in a section that its linker script puts in a `PT_NOTE` segment (the
/// guest SDK does this for you).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AbiNote {
    /// Length of the name including NUL: 5.
    pub namesz: u32,
    /// Length of the descriptor: 16.
    pub descsz: u32,
    /// [`NOTE_TYPE_ABI`].
    pub note_type: u32,
    /// `"HVPV\0"` padded with zeros to 8 bytes.
    pub name: [u8; 8],
    /// The descriptor.
    pub desc: AbiNoteDesc,
}
const _: () = assert!(size_of::<AbiNote>() == 36);
const _: () = assert!(offset_of!(AbiNote, name) == 12);
const _: () = assert!(offset_of!(AbiNote, desc) == 20);

impl AbiNote {
    /// The note for a guest built against this crate's ABI version, requiring `required`.
    pub const fn new(required: Features) -> AbiNote {
        AbiNote {
            namesz: NOTE_NAME.len() as u32,
            descsz: size_of::<AbiNoteDesc>() as u32,
            note_type: NOTE_TYPE_ABI,
            name: *b"HVPV\0\0\0\0",
            desc: AbiNoteDesc {
                major: ABI_MAJOR,
                minor: ABI_MINOR,
                reserved: 0,
                required_features: required.bits(),
            },
        }
    }
}
