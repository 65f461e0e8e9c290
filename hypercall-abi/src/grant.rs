//! Grant tables: `grant_op(cmd, a1, a2, a3, a4)` with `cmd` in `rdi` and the arguments in `rsi`,
//! `rdx`, `r10`, `r8`.
//!
//! A domain shares one of its frames with one named domain by writing a [`GrantEntry`] in its
//! grant table (an array in its own RAM, registered with [`SET_TABLE`]) and telling the other
//! domain the entry's index, the grant reference (for example through the store). The grantee
//! then maps the frame into its grant window ([`MAP`]) or has the hypervisor copy to or from it
//! ([`COPY`]). The entry is the guest's to write; the hypervisor keeps its own record of who has
//! the frame mapped and never stores status in the entry (it only clears `flags` on
//! [`END_ACCESS`] and [`REVOKE`]). The hypervisor reads an entry once per operation and checks
//! the copy.
//!
//! Errors common to the commands that name a grant (`MAP`, `COPY`):
//! `ESRCH` the granting domain does not exist; `EINVAL` it is the caller itself, or the
//! reference is not below the granter's table size (or it has no table), or the entry has
//! unknown flags, a non-zero reserved field or a frame that is not a page-aligned address in the
//! granter's RAM; `ENOENT` the entry does not have [`GTF_PERMIT_ACCESS`]; `EACCES` the entry
//! names another domain, or a write was asked of a [`GTF_READONLY`] grant.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A grant reference: an index into the granter's grant table.
pub type GrantRef = u32;

/// `set_table(gpa, nr_entries)`: use the `nr_entries` [`GrantEntry`]s at `gpa` (page-aligned, in
/// the caller's RAM) as the caller's grant table, replacing any previous table. `EINVAL` if
/// `gpa` is not page-aligned or `nr_entries` is 0 or above [`MAX_GRANT_ENTRIES`]; `EFAULT` if the
/// table is not inside the caller's RAM; `EBUSY` if another domain has one of the caller's
/// grants mapped.
pub const SET_TABLE: u64 = 0;
/// `map(domid, gref, gpa, flags) -> 0`: map the frame granted by `domid` under `gref` at
/// `gpa`, a page of the caller's grant window, read-only with [`MAP_READONLY`]. `EINVAL` for
/// `gpa` outside the window or not page-aligned, or unknown flags; `EBUSY` if that window page
/// is already in use; plus the common errors above. The page is then accessible at `gpa`
/// (guest-virtual = guest-physical) until [`UNMAP`] or the granter's [`REVOKE`].
pub const MAP: u64 = 1;
/// `unmap(gpa)`: unmap the grant-window page at `gpa`. `EINVAL` if nothing is mapped there
/// (including a second unmap). A page whose grant was revoked unmaps successfully.
pub const UNMAP: u64 = 2;
/// `end_access(gref)`: the granter withdraws grant `gref`: the hypervisor clears the entry's
/// `flags`. `EINVAL` for a reference outside the caller's table; `EBUSY` while a grantee has it
/// mapped (use [`REVOKE`] to force it).
pub const END_ACCESS: u64 = 3;
/// `revoke(gref) -> n`: the granter withdraws grant `gref` even if it is mapped: every mapping
/// of it is removed from the grantees' windows (their accesses then page-fault), and the entry's
/// `flags` are cleared. Returns the number of mappings removed. `EINVAL` for a reference outside
/// the caller's table.
pub const REVOKE: u64 = 4;
/// `copy(gpa, count)`: perform the `count` [`GrantCopy`] operations at `gpa`, writing each
/// one's `status`; returns 0 once all were attempted. `E2BIG` if `count` is above
/// [`MAX_COPY_OPS`]; `EFAULT` if the array is not in the caller's RAM. Per-element errors
/// (in `status`): `EINVAL` for unknown flags, a non-zero reserved field, a length of 0 or above
/// a page, or a granted range crossing its page; `EFAULT` for an own range outside the caller's
/// RAM; and the common errors above.
pub const COPY: u64 = 5;

/// Most entries a grant table may have.
pub const MAX_GRANT_ENTRIES: u64 = 1024;
/// Most operations one [`COPY`] accepts.
pub const MAX_COPY_OPS: u64 = 16;

/// [`GrantEntry::flags`]: the grant is in force.
pub const GTF_PERMIT_ACCESS: u16 = 1 << 0;
/// [`GrantEntry::flags`]: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 1;
/// All entry flags ABI 1.0 defines.
pub const GTF_ALL: u16 = GTF_PERMIT_ACCESS | GTF_READONLY;

/// [`MAP`] flag: map read-only.
pub const MAP_READONLY: u64 = 1 << 0;

/// One entry of a grant table, written by the granter.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GrantEntry {
    /// [`GTF_PERMIT_ACCESS`], optionally with [`GTF_READONLY`]. Write the other fields first,
    /// then the flags.
    pub flags: u16,
    /// The one domain allowed to use the grant.
    pub domid: u16,
    /// Reserved, must be zero.
    pub reserved: u32,
    /// Guest-physical address of the granted page (page-aligned, in the granter's RAM).
    pub frame: u64,
}
const _: () = assert!(size_of::<GrantEntry>() == 16);
const _: () = assert!(offset_of!(GrantEntry, frame) == 8);

/// One side of a [`GrantCopy`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct CopyPtr {
    /// With the side's `COPY_*_GREF` flag: byte offset in the granted page. Without: a
    /// guest-physical address in the caller's RAM.
    pub addr: u64,
    /// The grant reference (with the `COPY_*_GREF` flag; otherwise must be 0).
    pub gref: GrantRef,
    /// The granting domain (with the `COPY_*_GREF` flag; otherwise must be 0).
    pub domid: u16,
    /// Reserved, must be zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<CopyPtr>() == 16);

/// [`GrantCopy::flags`]: the source is a grant.
pub const COPY_SRC_GREF: u16 = 1 << 0;
/// [`GrantCopy::flags`]: the destination is a grant.
pub const COPY_DST_GREF: u16 = 1 << 1;

/// One copy operation of [`COPY`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GrantCopy {
    /// Where to copy from.
    pub src: CopyPtr,
    /// Where to copy to.
    pub dst: CopyPtr,
    /// Bytes to copy, 1..=4096.
    pub len: u32,
    /// [`COPY_SRC_GREF`], [`COPY_DST_GREF`].
    pub flags: u16,
    /// Reserved, must be zero.
    pub pad: u16,
    /// Written by the hypervisor: 0, or `-errno` for this element.
    pub status: i64,
}
const _: () = assert!(size_of::<GrantCopy>() == 48);
const _: () = assert!(offset_of!(GrantCopy, len) == 32);
const _: () = assert!(offset_of!(GrantCopy, status) == 40);
