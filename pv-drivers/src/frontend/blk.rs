//! The block frontend: a guest's side of [`hypercall_abi::io::blk`].
//!
//! [`BlockDevice::open`] connects to disk `vbd/<n>` through the store's device states: it waits
//! for the backend's `InitWait`, reads its keys (size, read-only, flush, discard, max-segments),
//! grants the ring page and a pool of data pages to the backend's domain (`backend-id`),
//! allocates an unbound event channel port for it, publishes `ring-ref` and `event-channel`,
//! moves to `Initialised`, waits for the backend's `Connected` and moves to `Connected`.
//!
//! # Simple use
//!
//! ```no_run
//! use pv_drivers::frontend::blk::BlockDevice;
//!
//! let mut disk = BlockDevice::open(0).unwrap();
//! let mut sector = [0u8; 512];
//! disk.read(0, &mut sector).unwrap();
//! sector[..5].copy_from_slice(b"hello");
//! disk.write(0, &sector).unwrap();
//! disk.flush().unwrap(); // on stable storage now
//! guest_sdk::println!("{} sectors", disk.sectors());
//! ```
//!
//! Offsets and lengths are in bytes, multiples of 512 ([`SECTOR_SIZE`]). A large read or write
//! is cut into ring requests of at most [`BlockDevice::max_request_bytes`] each, all in flight
//! at once as far as the ring and the page pool allow.
//!
//! # Many requests in flight
//!
//! The lower-level API submits requests without waiting ([`submit_read`], [`submit_write`],
//! [`submit_flush`], [`submit_discard`], [`submit_raw`]), each returning a [`ReqId`], then
//! reaps their completions ([`wait`] blocks until one is there, [`complete`] hands each to a
//! callback, which may copy a read's data out with [`Completion::copy_to`]). Submissions are
//! pushed on the ring but published (and the backend notified) only by [`kick`], [`wait`] or
//! [`complete`], so a batch costs at most one notification; the ring's event indices decide
//! whether one is needed at all.
//!
//! ```no_run
//! use pv_drivers::frontend::blk::{BlkError, BlockDevice};
//!
//! let mut disk = BlockDevice::open(0).unwrap();
//! let mut done = 0;
//! for i in 0..32u64 {
//!     disk.submit_read(i * 4096, 4096).unwrap();
//! }
//! while done < 32 {
//!     disk.wait().unwrap();
//!     disk.complete(|c| {
//!         c.status().unwrap();
//!         done += 1;
//!     })
//!     .unwrap();
//! }
//! ```
//!
//! # Design
//!
//! - **Persistent grants.** The ring page, a pool of data pages ([`Config::data_pages`]) and a
//!   few indirect-segment pages ([`Config::indirect_pages`]) are granted once, when the device
//!   opens, and reused by every request: a write copies the caller's data into pool pages
//!   before it is submitted, a read's data is copied out of them when it completes. No grant
//!   hypercall happens per request. Data pages are granted read-write (the backend writes them
//!   for a read), indirect pages read-only (the backend only reads them). The pool is sized to
//!   leave [`Config::reserve_grants`] entries of the SDK's grant table free for the rest of the
//!   guest.
//! - **Indirect segments.** A request of more than [`MAX_DIRECT_SEGMENTS`] pages names one
//!   indirect page holding its segment list, up to the backend's `max-segments` (and the
//!   pool's size).
//! - **Notification suppression.** Waiting first spins on the ring for [`Config::spin_ns`]
//!   (reading the ring costs no exit); only then does it ask the backend for a notification
//!   (`rsp_event`: after half the requests in flight have completed, so that one wakeup
//!   serves a batch), re-check, and block in `sched_op(poll)` on the masked port.
//!
//! Errors: every call returns [`BlkError`]; a request's status from the backend is mapped to a
//! variant ([`BlkError::from_status`]): `EINVAL` is [`BlkError::Invalid`], `EACCES`
//! [`BlkError::Access`], `EROFS` [`BlkError::ReadOnly`], `EOPNOTSUPP`
//! [`BlkError::NotSupported`], `EIO` [`BlkError::Io`].
//!
//! [`submit_read`]: BlockDevice::submit_read
//! [`submit_write`]: BlockDevice::submit_write
//! [`submit_flush`]: BlockDevice::submit_flush
//! [`submit_discard`]: BlockDevice::submit_discard
//! [`submit_raw`]: BlockDevice::submit_raw
//! [`wait`]: BlockDevice::wait
//! [`complete`]: BlockDevice::complete
//! [`kick`]: BlockDevice::kick

use alloc::vec::Vec;
use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use guest_sdk::abi::evtchn::Port;
use guest_sdk::abi::io::blk::{
    BlkRequest, BlkResponse, BlkSegment, KEY_FEATURE_DISCARD, KEY_FEATURE_FLUSH, KEY_MAX_SEGMENTS,
    KEY_READ_ONLY, KEY_SECTORS, KEY_SECTOR_SIZE, MAX_DIRECT_SEGMENTS, MAX_SEGMENTS, OP_DISCARD,
    OP_FLUSH, OP_READ, OP_WRITE, REQ_INDIRECT, SECTORS_PER_PAGE, SEGMENTS_PER_INDIRECT_PAGE,
};
use guest_sdk::abi::ring::{FrontRing, RingError, RingHeader};
use guest_sdk::abi::store::{key, DeviceState};
use guest_sdk::abi::{DomId, Errno, PAGE_SIZE};
use guest_sdk::grant;
use guest_sdk::store::Value;
use guest_sdk::{events, sched, time};

use super::device::{DeviceError, FrontendDir};
use super::granted::Granted;

pub use guest_sdk::abi::io::blk::SECTOR_SIZE;

/// The device class in the store.
pub const CLASS: &str = "vbd";

const PAGE: usize = PAGE_SIZE as usize;
const SECTOR: usize = SECTOR_SIZE as usize;
const SECTORS_PER_PAGE_U32: u32 = SECTORS_PER_PAGE as u32;
/// Low bits of a request id: the slot; the rest: a generation number.
const SLOT_BITS: u32 = 16;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The most data pages a pool may have (page numbers are `u16`).
const MAX_POOL_PAGES: usize = 4096;
/// Where the ring's `rsp_event` is.
const RSP_EVENT_OFFSET: usize = offset_of!(RingHeader, rsp_event);

/// Why a block operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// Connecting through the store failed (no such device, a missing key, the backend closed
    /// or never answered, ...).
    Device(DeviceError),
    /// A grant, event channel or heap call of the SDK failed.
    Sdk(guest_sdk::Error),
    /// The backend's disk does not use 512-byte sectors.
    SectorSize(u64),
    /// An offset or length that is not a multiple of 512 bytes, or an empty request.
    Unaligned,
    /// The range does not lie inside the disk.
    OutOfRange,
    /// One request larger than [`BlockDevice::max_request_bytes`] (lower-level API).
    TooLarge,
    /// No ring slot or pool page free now: complete some requests first (lower-level API).
    Busy,
    /// The high-level call needs the lower-level API idle, but requests are in flight.
    InFlight,
    /// The backend answered `EINVAL`: it found the request malformed.
    Invalid,
    /// The backend answered `EACCES`: it could not use a grant of the request.
    Access,
    /// The disk is read-only (`EROFS` from the backend, or refused before submitting).
    ReadOnly,
    /// Flush or discard is not offered (`EOPNOTSUPP` from the backend, or refused before
    /// submitting).
    NotSupported,
    /// The backing store failed (`EIO`).
    Io,
    /// The backend answered another status (`-errno`).
    Status(i32),
    /// The backend broke the ring protocol: an impossible index ([`RingError`]), or a
    /// response for no request in flight. The device is unusable afterwards.
    Protocol(ProtocolError),
    /// The backend closed the device.
    Disconnected,
    /// No response came within [`Config::timeout_ns`].
    Timeout,
}

/// How the backend broke the ring protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The ring reported an error (an impossible response producer index).
    Ring(RingError),
    /// A response carried an id that no request in flight has.
    UnknownId(u64),
}

impl BlkError {
    /// Maps a response's `status` (0 or `-errno`) to `Ok` or the error it stands for.
    ///
    /// ```
    /// use pv_drivers::frontend::blk::BlkError;
    /// assert_eq!(BlkError::from_status(0), Ok(()));
    /// assert_eq!(BlkError::from_status(-30), Err(BlkError::ReadOnly));
    /// assert_eq!(BlkError::from_status(-7), Err(BlkError::Status(-7)));
    /// ```
    pub fn from_status(status: i32) -> Result<(), BlkError> {
        if status == 0 {
            return Ok(());
        }
        let is = |e: Errno| i64::from(status) == e.to_raw();
        Err(if is(Errno::EINVAL) {
            BlkError::Invalid
        } else if is(Errno::EACCES) {
            BlkError::Access
        } else if is(Errno::EROFS) {
            BlkError::ReadOnly
        } else if is(Errno::EOPNOTSUPP) {
            BlkError::NotSupported
        } else if is(Errno::EIO) {
            BlkError::Io
        } else {
            BlkError::Status(status)
        })
    }
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkError::Device(e) => write!(f, "vbd: {e}"),
            BlkError::Sdk(e) => write!(f, "vbd: {e}"),
            BlkError::SectorSize(s) => write!(f, "vbd: unsupported sector size {s}"),
            BlkError::Unaligned => f.write_str("vbd: offset or length not a multiple of 512"),
            BlkError::OutOfRange => f.write_str("vbd: range beyond the end of the disk"),
            BlkError::TooLarge => f.write_str("vbd: request larger than the largest request"),
            BlkError::Busy => f.write_str("vbd: no free ring slot or page"),
            BlkError::InFlight => f.write_str("vbd: lower-level requests are in flight"),
            BlkError::Invalid => f.write_str("vbd: request refused as malformed (EINVAL)"),
            BlkError::Access => f.write_str("vbd: grant refused (EACCES)"),
            BlkError::ReadOnly => f.write_str("vbd: read-only disk (EROFS)"),
            BlkError::NotSupported => f.write_str("vbd: not supported (EOPNOTSUPP)"),
            BlkError::Io => f.write_str("vbd: I/O error (EIO)"),
            BlkError::Status(s) => write!(f, "vbd: status {s}"),
            BlkError::Protocol(ProtocolError::Ring(e)) => write!(f, "vbd: broken ring: {e}"),
            BlkError::Protocol(ProtocolError::UnknownId(id)) => {
                write!(f, "vbd: response for unknown request {id:#x}")
            }
            BlkError::Disconnected => f.write_str("vbd: the backend closed the device"),
            BlkError::Timeout => f.write_str("vbd: no response in time"),
        }
    }
}

impl core::error::Error for BlkError {}

impl From<DeviceError> for BlkError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::BackendClosed => BlkError::Disconnected,
            e => BlkError::Device(e),
        }
    }
}

impl From<guest_sdk::Error> for BlkError {
    fn from(e: guest_sdk::Error) -> Self {
        BlkError::Sdk(e)
    }
}

/// Tunables of [`BlockDevice::open_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Data pages granted once and reused (at most; fewer if the grant table is short, and at
    /// most 4096). A request needs one per 4 KiB; the largest request is the smaller of this
    /// and the backend's `max-segments` pages.
    pub data_pages: u32,
    /// Indirect-segment pages (at most): one per request of more than 11 pages in flight.
    pub indirect_pages: u32,
    /// Grant-table entries to leave free for the rest of the guest.
    pub reserve_grants: u32,
    /// How long [`BlockDevice::wait`] polls the ring before it blocks (ns).
    pub spin_ns: u64,
    /// How long [`BlockDevice::wait`] waits for a response before [`BlkError::Timeout`] (ns).
    pub timeout_ns: u64,
    /// How long opening and closing wait for the backend (ns).
    pub connect_timeout_ns: u64,
}

impl Default for Config {
    /// 512 data pages (2 MiB: two 1 MiB requests, if the grant table has room), 32 indirect
    /// pages, 8 grants in reserve, 50 us of spinning, 30 s timeout, 10 s to connect.
    fn default() -> Self {
        Config {
            data_pages: 512,
            indirect_pages: 32,
            reserve_grants: 8,
            spin_ns: 50 * time::NS_PER_US,
            timeout_ns: 30 * time::NS_PER_SEC,
            connect_timeout_ns: 10 * time::NS_PER_SEC,
        }
    }
}

/// What the backend published about the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Writes and discards are refused.
    pub read_only: bool,
    /// Flush is offered.
    pub flush: bool,
    /// Discard is offered.
    pub discard: bool,
    /// Segments one request may carry (the backend's `max-segments`).
    pub max_segments: u16,
}

/// Counters of a [`BlockDevice`] since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontStats {
    /// Requests submitted.
    pub requests: u64,
    /// Notifications sent to the backend (event channel sends: one hypercall each).
    pub notifications: u64,
    /// Times [`BlockDevice::wait`] blocked in `sched_op(poll)` (one hypercall each).
    pub blocks: u64,
    /// Responses reaped.
    pub responses: u64,
}

/// A request's id, as the lower-level API hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// A request in flight.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u64,
    op: u8,
    sectors: u32,
    nr_pages: u16,
    /// The indirect page, if any.
    indirect: Option<u16>,
}

/// One completed request, handed to the callback of [`BlockDevice::complete`].
pub struct Completion<'a> {
    id: ReqId,
    op: u8,
    status: i32,
    response: BlkResponse,
    sectors: u32,
    pages: &'a [u16],
    data: &'a Granted,
}

impl fmt::Debug for Completion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("id", &self.id)
            .field("op", &self.op)
            .field("status", &self.status)
            .field("sectors", &self.sectors)
            .finish_non_exhaustive()
    }
}

impl Completion<'_> {
    /// The id its submission returned.
    pub fn id(&self) -> ReqId {
        self.id
    }

    /// The request's operation ([`OP_READ`], [`OP_WRITE`], [`OP_FLUSH`], [`OP_DISCARD`], or
    /// whatever a raw request carried).
    pub fn op(&self) -> u8 {
        self.op
    }

    /// The backend's status, mapped ([`BlkError::from_status`]).
    pub fn status(&self) -> Result<(), BlkError> {
        BlkError::from_status(self.status)
    }

    /// The backend's status as is: 0 or `-errno`.
    pub fn raw_status(&self) -> i32 {
        self.status
    }

    /// The response exactly as the backend wrote it (for conformance tests).
    pub fn response(&self) -> BlkResponse {
        self.response
    }

    /// Bytes the request moved (0 for flush, discard and raw requests).
    pub fn bytes(&self) -> usize {
        self.sectors as usize * SECTOR
    }

    /// Copies a read's data into `dst` (at most [`bytes`](Self::bytes), at most
    /// `dst.len()`); returns how many bytes were copied. Meaningful only if the status is
    /// `Ok` and the request was a read.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let total = self.bytes().min(dst.len());
        let mut done = 0;
        for &p in self.pages {
            if done >= total {
                break;
            }
            let n = (total - done).min(PAGE);
            let src = self.data.ptr(usize::from(p));
            // SAFETY: `src` is pool page `p` (4096 bytes, owned by the pool), `n <= 4096`; `dst`
            // has `n` bytes from `done`. The request is complete, so an honest backend no
            // longer writes the page; a hostile one could only change the bytes copied (any
            // byte value is a valid u8). No reference to the page exists.
            unsafe { core::ptr::copy_nonoverlapping(src, dst[done..].as_mut_ptr(), n) };
            done += n;
        }
        done
    }
}

/// A block device (`vbd/<n>`) of this domain, connected to its backend. See the [module
/// documentation](self).
pub struct BlockDevice {
    n: u32,
    front: FrontendDir,
    info: DiskInfo,
    cfg: Config,
    ring: FrontRing<BlkRequest, BlkResponse>,
    port: Option<Port>,
    /// The port's doorbell, when the backend offers one: notifications are then an `out`
    /// instead of a hypercall.
    doorbell: Option<u16>,
    /// Set once we published `Initialised`: the backend may map the ring from then on.
    published: bool,
    closed: bool,
    broken: Option<BlkError>,
    /// Most segments per request (pool, indirect pages and backend allowing).
    max_segs: usize,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u16>,
    /// `max_segs` page numbers per slot.
    page_lists: Vec<u16>,
    free_data: Vec<u16>,
    free_indirect: Vec<u16>,
    generation: u64,
    unpublished: u32,
    /// Responses consumed from the ring (the ring's `rsp_cons`: both start at 0).
    rsp_cons: u32,
    stats: FrontStats,
    // Dropped last, after the ring that points into `ring_page`.
    indirect: Granted,
    data: Granted,
    ring_page: Granted,
}

impl fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockDevice")
            .field("n", &self.n)
            .field("info", &self.info)
            .field("max_segs", &self.max_segs)
            .field("data_pages", &self.data.grefs.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

fn check_aligned(offset: u64, len: u64) -> Result<(), BlkError> {
    if !offset.is_multiple_of(SECTOR_SIZE) || !len.is_multiple_of(SECTOR_SIZE) {
        Err(BlkError::Unaligned)
    } else {
        Ok(())
    }
}

impl BlockDevice {
    /// Opens disk `vbd/<n>` with the default [`Config`].
    pub fn open(n: u32) -> Result<BlockDevice, BlkError> {
        Self::open_with(n, Config::default())
    }

    /// Opens disk `vbd/<n>` with `cfg`: connects to its backend (see the [module
    /// documentation](self)). [`BlkError::Device`] with [`DeviceError::NoDevice`] if the
    /// domain has no such disk.
    pub fn open_with(n: u32, cfg: Config) -> Result<BlockDevice, BlkError> {
        let front = FrontendDir::find(CLASS, n)?;
        let deadline = time::monotonic_ns().saturating_add(cfg.connect_timeout_ns);
        front.wait_backend(deadline, |s| s == DeviceState::InitWait)?;
        let sector_size = front.backend_u64(KEY_SECTOR_SIZE)?;
        if sector_size != SECTOR_SIZE {
            return Err(BlkError::SectorSize(sector_size));
        }
        let max_segments = match front.backend_u64(KEY_MAX_SEGMENTS) {
            Ok(v) => u16::try_from(v).unwrap_or(u16::MAX),
            Err(_) => MAX_DIRECT_SEGMENTS as u16,
        };
        let info = DiskInfo {
            sectors: front.backend_u64(KEY_SECTORS)?,
            read_only: front.backend_bool(KEY_READ_ONLY)?,
            flush: front.backend_bool(KEY_FEATURE_FLUSH)?,
            discard: front.backend_bool(KEY_FEATURE_DISCARD)?,
            max_segments,
        };
        let mut dev = Self::allocate(n, front, info, cfg)?;
        dev.connect(deadline)?;
        Ok(dev)
    }

    /// Grants the ring and the pools, sets up the ring and the port.
    fn allocate(
        n: u32,
        front: FrontendDir,
        info: DiskInfo,
        cfg: Config,
    ) -> Result<BlockDevice, BlkError> {
        let backend = front.backend_id;
        let ring_page = Granted::new(1, backend, false)?;
        // The grants left for the pools.
        let avail = grant::TABLE_ENTRIES
            .saturating_sub(grant::active_grants())
            .saturating_sub(cfg.reserve_grants);
        let backend_segs = usize::from(info.max_segments.min(MAX_SEGMENTS)).max(1);
        let want_data = (cfg.data_pages as usize).clamp(1, MAX_POOL_PAGES);
        // Indirect pages are only worth having if requests can exceed the slot's segments.
        let want_ind = if backend_segs > MAX_DIRECT_SEGMENTS && want_data > MAX_DIRECT_SEGMENTS {
            cfg.indirect_pages as usize
        } else {
            0
        };
        let avail = avail as usize;
        let ind = want_ind.min(avail / 8);
        let data = want_data.min(avail.saturating_sub(ind)).max(1);
        let data_pool = Granted::new(data, backend, false)?;
        let indirect = if ind > 0 {
            Granted::new(ind, backend, true)?
        } else {
            Granted::none()
        };
        let max_segs = if ind > 0 {
            backend_segs.min(data)
        } else {
            backend_segs.min(data).min(MAX_DIRECT_SEGMENTS)
        };
        // SAFETY: the ring page is ours (kept in `ring_page`, freed only after its grant ended
        // and the backend closed, or never), 4096 bytes, page-aligned; this program accesses it
        // only through this ring; the backend writes it concurrently, as rings expect.
        let ring = unsafe { FrontRing::new(ring_page.ptr(0), PAGE) }
            .map_err(|e| BlkError::Protocol(ProtocolError::Ring(e)))?;
        let nslots = ring.size() as usize;
        let mut dev = BlockDevice {
            n,
            front,
            info,
            cfg,
            ring,
            port: None,
            doorbell: None,
            published: false,
            closed: false,
            broken: None,
            max_segs,
            slots: (0..nslots).map(|_| None).collect(),
            free_slots: (0..nslots as u16).rev().collect(),
            page_lists: alloc::vec![0; nslots * max_segs],
            free_data: (0..data as u16).rev().collect(),
            free_indirect: (0..ind as u16).rev().collect(),
            generation: 1,
            unpublished: 0,
            rsp_cons: 0,
            stats: FrontStats::default(),
            indirect,
            data: data_pool,
            ring_page,
        };
        let port = events::alloc_unbound(backend)?;
        dev.port = Some(port);
        // Waited on with sched_op(poll): no upcall may clear its pending bit.
        events::mask(port)?;
        Ok(dev)
    }

    /// The store handshake, from our `Initialised` to our `Connected`.
    fn connect(&mut self, deadline: u64) -> Result<(), BlkError> {
        let port = self.port.ok_or(BlkError::Disconnected)?;
        let ring_ref = self.ring_page.grefs.first().copied().unwrap_or(0);
        self.front
            .write(key::RING_REF, Value::U64(u64::from(ring_ref)))?;
        self.front
            .write(key::EVENT_CHANNEL, Value::U64(u64::from(port)))?;
        self.published = true;
        self.front.set_state(DeviceState::Initialised)?;
        self.front
            .wait_backend(deadline, |s| s == DeviceState::Connected)?;
        // A backend in the hypervisor may give the port a doorbell (ABI feature DOORBELLS);
        // without one, notifications stay `send` hypercalls.
        self.doorbell = events::doorbell(port).ok();
        self.front.set_state(DeviceState::Connected)?;
        Ok(())
    }

    /// The device number (`vbd/<n>`).
    pub fn number(&self) -> u32 {
        self.n
    }

    /// Disk size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.info.sectors
    }

    /// Disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.info.sectors.saturating_mul(SECTOR_SIZE)
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.info.read_only
    }

    /// Everything the backend published.
    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// The largest request, in bytes (segments per request times 4 KiB).
    pub fn max_request_bytes(&self) -> usize {
        self.max_segs * PAGE
    }

    /// Data pages in the pool.
    pub fn pool_pages(&self) -> usize {
        self.data.grefs.len()
    }

    /// Ring slots (the most requests in flight).
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    /// Requests submitted and not yet reaped.
    pub fn in_flight(&self) -> u32 {
        self.ring.pending_requests()
    }

    /// The backend's domain.
    pub fn backend_id(&self) -> DomId {
        self.front.backend_id
    }

    /// The event channel port shared with the backend.
    pub fn port(&self) -> Option<Port> {
        self.port
    }

    /// The counters.
    pub fn stats(&self) -> FrontStats {
        self.stats
    }

    /// The ring page, for conformance tests that break the ring on purpose: writing through
    /// this pointer (4096 bytes) bypasses every check, and the device is unusable afterwards.
    pub fn raw_ring_page(&self) -> *mut u8 {
        self.ring_page.ptr(0)
    }

    fn usable(&self) -> Result<(), BlkError> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: BlkError) -> BlkError {
        self.broken = Some(e.clone());
        e
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), BlkError> {
        check_aligned(offset, len)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes() => Ok(()),
            _ => Err(BlkError::OutOfRange),
        }
    }

    /// Takes a free slot and a ring slot, or `Busy`.
    fn take_slot(&mut self) -> Result<usize, BlkError> {
        if self.ring.free_requests() == 0 {
            return Err(BlkError::Busy);
        }
        self.free_slots.pop().map(usize::from).ok_or(BlkError::Busy)
    }

    fn next_id(&mut self, slot: usize) -> u64 {
        let id = (self.generation << SLOT_BITS) | slot as u64;
        self.generation = self.generation.wrapping_add(1) & (u64::MAX >> SLOT_BITS);
        id
    }

    /// Pushes `req` (from `slot`) on the ring; it is published by the next kick.
    fn push(&mut self, slot: usize, req: &BlkRequest, s: Slot) -> Result<ReqId, BlkError> {
        if let Err(e) = self.ring.push_request(req) {
            // Cannot happen (take_slot checked the ring): undo.
            self.release(slot, &s);
            return Err(BlkError::Protocol(ProtocolError::Ring(e)));
        }
        self.slots[slot] = Some(s);
        self.unpublished += 1;
        self.stats.requests += 1;
        Ok(ReqId(req.id))
    }

    /// Frees the slot's pages, indirect page and the slot.
    fn release(&mut self, slot: usize, s: &Slot) {
        let base = slot * self.max_segs;
        for i in 0..usize::from(s.nr_pages) {
            self.free_data.push(self.page_lists[base + i]);
        }
        if let Some(p) = s.indirect {
            self.free_indirect.push(p);
        }
        self.slots[slot] = None;
        self.free_slots.push(slot as u16);
    }

    /// Submits a read or write of `sectors` sectors from `sector`; `data` (for a write) is
    /// copied into pool pages.
    fn submit_data(
        &mut self,
        op: u8,
        offset: u64,
        len: usize,
        data: Option<&[u8]>,
    ) -> Result<ReqId, BlkError> {
        self.usable()?;
        if len == 0 {
            return Err(BlkError::Unaligned);
        }
        self.check_range(offset, len as u64)?;
        if op == OP_WRITE && self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        let nsegs = len.div_ceil(PAGE);
        if nsegs > self.max_segs {
            return Err(BlkError::TooLarge);
        }
        let indirect = nsegs > MAX_DIRECT_SEGMENTS;
        if self.free_data.len() < nsegs || (indirect && self.free_indirect.is_empty()) {
            return Err(BlkError::Busy);
        }
        let slot = self.take_slot()?;
        let sectors = (len / SECTOR) as u32;
        let base = slot * self.max_segs;
        let mut req = BlkRequest {
            id: self.next_id(slot),
            sector: offset / SECTOR_SIZE,
            op,
            flags: 0,
            nr_segments: nsegs as u16,
            nr_sectors: 0,
            segs: [BlkSegment::default(); MAX_DIRECT_SEGMENTS],
        };
        let ind_page = if indirect {
            self.free_indirect.pop()
        } else {
            None
        };
        let mut left = sectors;
        for k in 0..nsegs {
            // Checked above: enough free pages.
            let page = self.free_data.pop().unwrap_or(0);
            self.page_lists[base + k] = page;
            let n = left.min(SECTORS_PER_PAGE_U32);
            left -= n;
            if let Some(src) = data {
                let from = k * PAGE;
                let bytes = (n as usize) * SECTOR;
                let chunk = &src[from..from + bytes];
                // SAFETY: pool page `page` is ours, 4096 bytes >= `bytes`, and no request in
                // flight names it (it was free), so the backend does not access it now; no
                // reference to it exists.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        chunk.as_ptr(),
                        self.data.ptr(usize::from(page)),
                        bytes,
                    )
                };
            }
            let seg = BlkSegment {
                gref: self.data.grefs[usize::from(page)],
                first_sect: 0,
                last_sect: (n - 1) as u8,
                pad: 0,
            };
            match ind_page {
                Some(ip) => write_indirect(self.indirect.ptr(usize::from(ip)), k, seg),
                None => req.segs[k] = seg,
            }
        }
        if let Some(ip) = ind_page {
            req.flags = REQ_INDIRECT;
            req.segs[0] = BlkSegment {
                gref: self.indirect.grefs[usize::from(ip)],
                ..BlkSegment::default()
            };
        }
        let s = Slot {
            id: req.id,
            op,
            sectors,
            nr_pages: nsegs as u16,
            indirect: ind_page,
        };
        self.push(slot, &req, s)
    }

    /// Submits a read of `len` bytes at `offset` (multiples of 512, `len` at most
    /// [`max_request_bytes`](Self::max_request_bytes)); its data is copied out in the
    /// callback of [`complete`](Self::complete) ([`Completion::copy_to`]). [`BlkError::Busy`]
    /// if no ring slot or not enough pool pages are free.
    pub fn submit_read(&mut self, offset: u64, len: usize) -> Result<ReqId, BlkError> {
        self.submit_data(OP_READ, offset, len, None)
    }

    /// Submits a write of `data` at `offset` (multiples of 512, at most
    /// [`max_request_bytes`](Self::max_request_bytes)); `data` is copied at once.
    /// [`BlkError::Busy`] if no ring slot or not enough pool pages are free.
    pub fn submit_write(&mut self, offset: u64, data: &[u8]) -> Result<ReqId, BlkError> {
        self.submit_data(OP_WRITE, offset, data.len(), Some(data))
    }

    /// Submits a flush: it completes once every write completed before it is on stable
    /// storage. [`BlkError::NotSupported`] if the backend does not offer it.
    pub fn submit_flush(&mut self) -> Result<ReqId, BlkError> {
        self.usable()?;
        if !self.info.flush {
            return Err(BlkError::NotSupported);
        }
        self.submit_plain(OP_FLUSH, 0, 0)
    }

    /// Submits a discard of `len` bytes at `offset` (multiples of 512, at most
    /// `u32::MAX` sectors): they read as zeros afterwards.
    pub fn submit_discard(&mut self, offset: u64, len: u64) -> Result<ReqId, BlkError> {
        self.usable()?;
        self.check_range(offset, len)?;
        if self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        if !self.info.discard {
            return Err(BlkError::NotSupported);
        }
        let sectors = u32::try_from(len / SECTOR_SIZE).map_err(|_| BlkError::TooLarge)?;
        self.submit_plain(OP_DISCARD, offset / SECTOR_SIZE, sectors)
    }

    fn submit_plain(&mut self, op: u8, sector: u64, nr_sectors: u32) -> Result<ReqId, BlkError> {
        let slot = self.take_slot()?;
        let req = BlkRequest {
            id: self.next_id(slot),
            sector,
            op,
            flags: 0,
            nr_segments: 0,
            nr_sectors,
            segs: [BlkSegment::default(); MAX_DIRECT_SEGMENTS],
        };
        let s = Slot {
            id: req.id,
            op,
            sectors: 0,
            nr_pages: 0,
            indirect: None,
        };
        self.push(slot, &req, s)
    }

    /// Submits `req` exactly as given except its `id` (replaced by the returned one), with no
    /// check at all: for conformance tests of the backend. The grants it names are the
    /// caller's business (granting is `unsafe`; the backend writes only pages granted
    /// read-write to it).
    pub fn submit_raw(&mut self, req: &BlkRequest) -> Result<ReqId, BlkError> {
        self.usable()?;
        let slot = self.take_slot()?;
        let mut req = *req;
        req.id = self.next_id(slot);
        let s = Slot {
            id: req.id,
            op: req.op,
            sectors: 0,
            nr_pages: 0,
            indirect: None,
        };
        self.push(slot, &req, s)
    }

    /// Publishes the requests submitted since the last kick and notifies the backend if the
    /// ring says it waits for them.
    pub fn kick(&mut self) -> Result<(), BlkError> {
        if self.unpublished == 0 {
            return Ok(());
        }
        self.unpublished = 0;
        if self.ring.push_requests_and_check_notify() {
            if let Some(port) = self.port {
                self.stats.notifications += 1;
                match self.doorbell {
                    Some(bell) => events::ring_doorbell(bell),
                    None => events::send(port)?,
                }
            }
        }
        Ok(())
    }

    /// Publishes pending submissions ([`kick`](Self::kick)), then waits until at least one
    /// response can be reaped (returns at once if one can, or if nothing is in flight):
    /// spins on the ring for [`Config::spin_ns`], then blocks on the event channel. When it
    /// blocks with many requests in flight it asks to be woken only once half of them have
    /// completed (the ring's `rsp_event`), so one wakeup serves a batch.
    /// [`BlkError::Timeout`] after [`Config::timeout_ns`] without a response;
    /// [`BlkError::Disconnected`] if the backend closed meanwhile.
    pub fn wait(&mut self) -> Result<(), BlkError> {
        self.usable()?;
        self.kick()?;
        if self.ring.pending_requests() == 0 {
            return Ok(());
        }
        let Some(port) = self.port else {
            return Err(BlkError::Disconnected);
        };
        let start = time::monotonic_ns();
        let deadline = start.saturating_add(self.cfg.timeout_ns);
        let spin_until = start.saturating_add(self.cfg.spin_ns);
        loop {
            if self.available()? > 0 {
                return Ok(());
            }
            if time::monotonic_ns() >= spin_until {
                break;
            }
            core::hint::spin_loop();
        }
        loop {
            // Clear first: an event sent after this leaves the bit set and poll returns.
            events::clear_pending(port);
            if self.arm_responses()? {
                return Ok(());
            }
            let now = time::monotonic_ns();
            if now >= deadline {
                return Err(BlkError::Timeout);
            }
            // Wake at least every second to notice a backend that closed.
            let until = deadline.min(now.saturating_add(time::NS_PER_SEC));
            self.stats.blocks += 1;
            match sched::poll(&[port], until) {
                Ok(()) => {}
                Err(e) if e.is(Errno::ETIMEDOUT) => {
                    if matches!(
                        self.front.backend_state(),
                        Ok(DeviceState::Closing | DeviceState::Closed)
                    ) {
                        return Err(self.fail(BlkError::Disconnected));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Before blocking: asks the backend to notify once half of the requests in flight (at
    /// least one) have their responses, and re-checks the ring. `true` if responses are there
    /// already (reap them instead of blocking).
    fn arm_responses(&mut self) -> Result<bool, BlkError> {
        let want = (self.ring.pending_requests() / 2).max(1);
        if want == 1 {
            return match self.ring.final_check_for_responses() {
                Ok(more) => Ok(more),
                Err(e) => Err(self.fail(BlkError::Protocol(ProtocolError::Ring(e)))),
            };
        }
        // The ring's final check with a later event index: the backend notifies when its
        // `rsp_prod` passes `rsp_cons + want`, which it will, since every one of the
        // `2 * want` or more requests in flight gets a response.
        let event = self
            .ring_page
            .ptr(0)
            .wrapping_add(RSP_EVENT_OFFSET)
            .cast::<u32>();
        // SAFETY: `rsp_event` is the u32 at byte 12 of our ring page (4-aligned, inside the
        // page); the ring accesses it only atomically too, and the backend only reads it.
        let event = unsafe { AtomicU32::from_ptr(event) };
        event.store(self.rsp_cons.wrapping_add(want), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Ok(self.available()? > 0)
    }

    /// Responses published and not reaped yet.
    fn available(&mut self) -> Result<u32, BlkError> {
        match self.ring.unconsumed_responses() {
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(BlkError::Protocol(ProtocolError::Ring(e)))),
        }
    }

    /// Publishes pending submissions, then reaps every response already there without
    /// waiting: calls `f` with each completion (inside `f`, a read's data can be copied out),
    /// then frees its slot and pages. Returns how many were reaped.
    pub fn complete(&mut self, mut f: impl FnMut(&Completion<'_>)) -> Result<usize, BlkError> {
        self.usable()?;
        self.kick()?;
        let mut n = 0;
        loop {
            let rsp = match self.ring.poll_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(n),
                Err(e) => return Err(self.fail(BlkError::Protocol(ProtocolError::Ring(e)))),
            };
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
            let idx = (rsp.id & SLOT_MASK) as usize;
            let slot = match self.slots.get(idx).copied().flatten() {
                Some(s) if s.id == rsp.id => s,
                _ => return Err(self.fail(BlkError::Protocol(ProtocolError::UnknownId(rsp.id)))),
            };
            let base = idx * self.max_segs;
            let c = Completion {
                id: ReqId(slot.id),
                op: slot.op,
                status: rsp.status,
                response: rsp,
                sectors: slot.sectors,
                pages: &self.page_lists[base..base + usize::from(slot.nr_pages)],
                data: &self.data,
            };
            f(&c);
            self.release(idx, &slot);
            self.stats.responses += 1;
            n += 1;
        }
    }

    /// Runs submissions of up to [`max_request_bytes`](Self::max_request_bytes) over
    /// `total` bytes from `offset`, keeping as many in flight as possible; `submit` starts
    /// the chunk at byte `at` of `len` bytes, `done` handles its completion. Returns the
    /// first error (after every submitted chunk completed).
    fn pipeline(
        &mut self,
        total: usize,
        submit: &mut dyn FnMut(&mut Self, usize, usize) -> Result<ReqId, BlkError>,
        done: &mut dyn FnMut(&Completion<'_>, usize),
    ) -> Result<(), BlkError> {
        self.usable()?;
        if self.in_flight() != 0 {
            return Err(BlkError::InFlight);
        }
        let chunk = self.max_request_bytes();
        // (request id, byte position) of the chunks in flight.
        let mut track: Vec<(ReqId, usize)> = Vec::with_capacity(self.ring.size() as usize);
        let mut next = 0;
        let mut first_err: Option<BlkError> = None;
        loop {
            while next < total && first_err.is_none() {
                let len = (total - next).min(chunk);
                match submit(self, next, len) {
                    Ok(id) => {
                        track.push((id, next));
                        next += len;
                    }
                    Err(BlkError::Busy) if !track.is_empty() => break,
                    Err(e) => first_err = Some(e),
                }
            }
            if track.is_empty() {
                break;
            }
            self.wait()?;
            let r = self.complete(|c| {
                if let Some(i) = track.iter().position(|(id, _)| *id == c.id()) {
                    let (_, at) = track.swap_remove(i);
                    match c.status() {
                        Ok(()) => done(c, at),
                        Err(e) => {
                            if first_err.is_none() {
                                first_err = Some(e);
                            }
                        }
                    }
                }
            });
            r?;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of 512) into `buf`, with as many
    /// requests in flight as the ring and pool allow. [`BlkError::InFlight`] if requests of
    /// the lower-level API are in flight.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.check_range(offset, buf.len() as u64)?;
        let total = buf.len();
        self.pipeline(
            total,
            &mut |d, at, len| d.submit_read(offset + at as u64, len),
            &mut |c, at| {
                c.copy_to(&mut buf[at..]);
            },
        )
    }

    /// Writes `data` at `offset` (both multiples of 512), with as many requests in flight as
    /// the ring and pool allow. Not durable until [`flush`](Self::flush).
    /// [`BlkError::ReadOnly`] on a read-only disk.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlkError> {
        self.check_range(offset, data.len() as u64)?;
        if self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        self.pipeline(
            data.len(),
            &mut |d, at, len| d.submit_write(offset + at as u64, &data[at..at + len]),
            &mut |_, _| {},
        )
    }

    /// Makes every completed write durable (the backend's flush). [`BlkError::NotSupported`]
    /// if the backend does not offer flush.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        if !self.info.flush {
            return Err(BlkError::NotSupported);
        }
        self.one(|d| d.submit_flush())
    }

    /// Discards `len` bytes at `offset` (multiples of 512): they read as zeros afterwards.
    /// [`BlkError::NotSupported`] if the backend does not offer discard,
    /// [`BlkError::ReadOnly`] on a read-only disk.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlkError> {
        self.check_range(offset, len)?;
        if self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        if !self.info.discard {
            return Err(BlkError::NotSupported);
        }
        // At most u32::MAX sectors per request, cut at a page boundary.
        const MAX_DISCARD: u64 = (u32::MAX as u64 / 8 * 8) * SECTOR_SIZE;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(MAX_DISCARD);
            self.one(|d| d.submit_discard(offset + at, n))?;
            at += n;
        }
        Ok(())
    }

    /// Submits one request and waits for its completion.
    fn one(
        &mut self,
        submit: impl FnOnce(&mut Self) -> Result<ReqId, BlkError>,
    ) -> Result<(), BlkError> {
        self.usable()?;
        if self.in_flight() != 0 {
            return Err(BlkError::InFlight);
        }
        let id = submit(self)?;
        let mut status = None;
        while status.is_none() {
            self.wait()?;
            self.complete(|c| {
                if c.id() == id {
                    status = Some(c.status());
                }
            })?;
        }
        status.unwrap_or(Ok(()))
    }

    /// Closes the device: waits (bounded) for requests in flight, moves to `Closing`, waits
    /// for the backend's `Closed`, ends the grants, closes the port and moves to `Closed`.
    /// Dropping the device does the same, ignoring errors.
    pub fn close(mut self) -> Result<(), BlkError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), BlkError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let mut result = Ok(());
        if self.published {
            if self.broken.is_none() {
                // Let the requests in flight finish (errors ignored: we are leaving anyway).
                let until = time::monotonic_ns().saturating_add(self.cfg.connect_timeout_ns);
                while self.ring.pending_requests() > 0 && time::monotonic_ns() < until {
                    if self.wait().is_err() || self.complete(|_| {}).is_err() {
                        break;
                    }
                }
            }
            let deadline = time::monotonic_ns().saturating_add(self.cfg.connect_timeout_ns);
            let closed = self.front.set_state(DeviceState::Closing).is_ok()
                && self
                    .front
                    .wait_backend(deadline, |s| s == DeviceState::Closed)
                    .is_ok()
                || matches!(self.front.backend_state(), Ok(DeviceState::Closed));
            if !closed {
                // The backend may still use the ring and the pages: keep them for ever.
                self.ring_page.leak = true;
                self.data.leak = true;
                self.indirect.leak = true;
                result = Err(BlkError::Timeout);
            }
        }
        if let Some(port) = self.port.take() {
            let _ = events::close(port);
        }
        let _ = self.front.set_state(DeviceState::Closed);
        result
    }
}

impl Drop for BlockDevice {
    fn drop(&mut self) {
        let _ = self.shutdown();
        // The Granted fields end their grants (and free or leak their pages) after this.
    }
}

/// Writes segment `k` of an indirect page with one volatile 8-byte store.
fn write_indirect(page: *mut u8, k: usize, seg: BlkSegment) {
    if k >= SEGMENTS_PER_INDIRECT_PAGE || page.is_null() {
        return;
    }
    let mut word = [0u8; 8];
    word[..4].copy_from_slice(&seg.gref.to_le_bytes());
    word[4] = seg.first_sect;
    word[5] = seg.last_sect;
    word[6..].copy_from_slice(&seg.pad.to_le_bytes());
    // SAFETY: `page` is one of our 4096-byte, page-aligned indirect pages, `k < 512`, so the
    // 8-byte word at `k * 8` is inside it and aligned; the page is not in use by a request in
    // flight (it was free) and no reference to it exists.
    unsafe { core::ptr::write_volatile(page.add(k * 8).cast::<u64>(), u64::from_le_bytes(word)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_errors() {
        assert_eq!(BlkError::from_status(0), Ok(()));
        for (e, want) in [
            (Errno::EINVAL, BlkError::Invalid),
            (Errno::EACCES, BlkError::Access),
            (Errno::EROFS, BlkError::ReadOnly),
            (Errno::EOPNOTSUPP, BlkError::NotSupported),
            (Errno::EIO, BlkError::Io),
            (Errno::ENOSPC, BlkError::Status(-28)),
        ] {
            assert_eq!(BlkError::from_status(e.to_raw() as i32), Err(want));
        }
        assert_eq!(BlkError::from_status(5), Err(BlkError::Status(5)));
    }

    #[test]
    fn alignment() {
        assert_eq!(check_aligned(512, 1024), Ok(()));
        assert_eq!(check_aligned(0, 0), Ok(()));
        assert_eq!(check_aligned(1, 512), Err(BlkError::Unaligned));
        assert_eq!(check_aligned(512, 100), Err(BlkError::Unaligned));
    }

    #[test]
    fn indirect_entries_have_the_wire_layout() {
        let mut page = [0u64; 512];
        let p = page.as_mut_ptr().cast::<u8>();
        write_indirect(
            p,
            3,
            BlkSegment {
                gref: 0x0102_0304,
                first_sect: 2,
                last_sect: 7,
                pad: 0,
            },
        );
        write_indirect(p, 512, BlkSegment::default()); // out of the page: ignored
        assert_eq!(page[3].to_le_bytes(), [4, 3, 2, 1, 2, 7, 0, 0]);
        assert!(page.iter().enumerate().all(|(i, &w)| i == 3 || w == 0));
    }

    #[test]
    fn errors_display_one_line() {
        extern crate std;
        use std::string::ToString;
        for e in [
            BlkError::ReadOnly,
            BlkError::Protocol(ProtocolError::UnknownId(7)),
            BlkError::Device(DeviceError::NoDevice),
        ] {
            let s = e.to_string();
            assert!(s.starts_with("vbd: ") && !s.contains('\n'), "{s}");
        }
        assert_eq!(
            BlkError::from(DeviceError::BackendClosed),
            BlkError::Disconnected
        );
    }
}
