//! The block device protocol (`vbd`), in the manner of Xen's blkif.
//!
//! # Connection
//!
//! The hypervisor creates the device directories (see [`crate::store`] §8) for disk `<n>` of
//! domain `<front>`: the frontend directory `/local/domain/<front>/device/vbd/<n>` and the
//! backend directory (`backend` key). The backend publishes in its directory: [`KEY_SECTORS`]
//! (`U64`, disk size in sectors of [`SECTOR_SIZE`] bytes), [`KEY_SECTOR_SIZE`] (`U64`, 512),
//! [`KEY_READ_ONLY`] (`Bool`), [`KEY_FEATURE_FLUSH`] (`Bool`), [`KEY_FEATURE_DISCARD`] (`Bool`),
//! [`KEY_MAX_SEGMENTS`] (`U64`, segments one request may carry, direct or indirect), then moves
//! its `state` to `InitWait`. The frontend allocates one page for the ring, grants it to the
//! backend domain, allocates an unbound event channel port for the backend domain, writes
//! `ring-ref` (`U64`) and `event-channel` (`U64`) in its directory and moves its `state` to
//! `Initialised`. The backend maps the ring, connects to the port and moves to `Connected`; the
//! frontend then moves to `Connected` too. Either side leaves with `Closing` then `Closed`.
//!
//! # Requests
//!
//! The ring is a [`crate::ring`] ring of [`BlkRequest`] / [`BlkResponse`] on one page (32
//! slots). Each request names data pages by grant reference ([`BlkSegment`]): the frontend
//! grants each data page to the backend domain (read-only is enough for a write, since the
//! backend only reads it; read-write for a read). A request carries up to
//! [`MAX_DIRECT_SEGMENTS`] segments in the slot; with [`REQ_INDIRECT`] it instead names up to
//! [`MAX_INDIRECT_PAGES`] granted pages that hold arrays of [`BlkSegment`] (512 per page), for
//! up to [`MAX_SEGMENTS`] segments (1 MiB). Segments are transferred in order: the first
//! segment's sectors start at `sector`, and each further segment continues where the previous
//! one ended.
//!
//! Every request gets exactly one response with its `id` (responses may come in any order).
//! `status` is 0 or `-errno`: `EINVAL` for a malformed request (unknown operation or flag,
//! non-zero reserved field, segment count 0 or above the limit, a segment whose sectors are
//! out of its page, a range beyond the disk), `EACCES` for a grant the backend cannot use,
//! `EROFS` for a write or discard to a read-only disk, `EOPNOTSUPP` for a flush or discard the
//! backend did not advertise, `EIO` when the backing store fails. A [`OP_FLUSH`] completes
//! when every write completed before it is on stable storage. A backend that finds the ring
//! itself broken (impossible indices) disconnects (`Closed`).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Sectors per page.
pub const SECTORS_PER_PAGE: u8 = 8;
/// Segments a request carries in its slot.
pub const MAX_DIRECT_SEGMENTS: usize = 11;
/// Indirect pages one request may name.
pub const MAX_INDIRECT_PAGES: usize = 1;
/// Segments per indirect page.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = 512;
/// Most segments one request may carry (1 MiB of data).
pub const MAX_SEGMENTS: u16 = 256;

/// Read sectors into the segments' pages.
pub const OP_READ: u8 = 0;
/// Write sectors from the segments' pages.
pub const OP_WRITE: u8 = 1;
/// Make every completed write durable; no segments.
pub const OP_FLUSH: u8 = 2;
/// Discard `nr_sectors` sectors from `sector` (they read as zeros afterwards); no segments.
pub const OP_DISCARD: u8 = 3;

/// Flag: `segs[..]` name indirect pages (`gref` only; `first_sect`/`last_sect` zero) instead of
/// data segments.
pub const REQ_INDIRECT: u8 = 1 << 0;

/// Store key: disk size in sectors.
pub const KEY_SECTORS: &str = "sectors";
/// Store key: sector size in bytes.
pub const KEY_SECTOR_SIZE: &str = "sector-size";
/// Store key: the disk is read-only.
pub const KEY_READ_ONLY: &str = "read-only";
/// Store key: flush is supported.
pub const KEY_FEATURE_FLUSH: &str = "feature-flush";
/// Store key: discard is supported.
pub const KEY_FEATURE_DISCARD: &str = "feature-discard";
/// Store key: most segments per request.
pub const KEY_MAX_SEGMENTS: &str = "max-segments";

/// One data segment: sectors `first_sect..=last_sect` of a granted page.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkSegment {
    /// Grant reference of the page (granted to the backend domain).
    pub gref: u32,
    /// First sector within the page, 0..=7.
    pub first_sect: u8,
    /// Last sector within the page, `first_sect..=7`.
    pub last_sect: u8,
    /// Reserved, must be zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<BlkSegment>() == 8);

/// A request.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkRequest {
    /// Chosen by the frontend; echoed in the response.
    pub id: u64,
    /// First sector.
    pub sector: u64,
    /// [`OP_READ`], [`OP_WRITE`], [`OP_FLUSH`] or [`OP_DISCARD`].
    pub op: u8,
    /// [`REQ_INDIRECT`] or 0.
    pub flags: u8,
    /// Data segments (read/write; with [`REQ_INDIRECT`] the total across the indirect pages).
    pub nr_segments: u16,
    /// Sectors to discard ([`OP_DISCARD`] only; otherwise zero).
    pub nr_sectors: u32,
    /// Direct segments, or indirect pages with [`REQ_INDIRECT`].
    pub segs: [BlkSegment; MAX_DIRECT_SEGMENTS],
}
const _: () = assert!(size_of::<BlkRequest>() == 112);
const _: () = assert!(offset_of!(BlkRequest, op) == 16);
const _: () = assert!(offset_of!(BlkRequest, nr_sectors) == 20);
const _: () = assert!(offset_of!(BlkRequest, segs) == 24);

/// A response.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `op`.
    pub op: u8,
    /// Reserved, zero.
    pub pad: [u8; 3],
    /// 0, or `-errno`.
    pub status: i32,
}
const _: () = assert!(size_of::<BlkResponse>() == 16);

/// Ring slots on one page for this protocol.
pub const RING_SLOTS: u32 = crate::ring::ring_slots::<BlkRequest, BlkResponse>(4096);
const _: () = assert!(RING_SLOTS == 32);
