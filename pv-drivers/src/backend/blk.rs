//! The block backend: serves [`hypercall_abi::io::blk`] requests from a [`Disk`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::vec::Vec;

use hypercall_abi::io::blk::{
    BlkRequest, BlkResponse, BlkSegment, MAX_DIRECT_SEGMENTS, MAX_INDIRECT_PAGES, MAX_SEGMENTS,
    OP_DISCARD, OP_FLUSH, OP_READ, OP_WRITE, REQ_INDIRECT, SECTORS_PER_PAGE, SECTOR_SIZE,
    SEGMENTS_PER_INDIRECT_PAGE,
};
use hypercall_abi::ring::BackRing;
use hypercall_abi::Errno;

use super::disk::{Disk, RawBuf};
use super::{GrantHost, GrantedPage, PAGE_SIZE};

// One indirect page is enough for the largest request, and its segments fit in a page.
const _: () = assert!(MAX_SEGMENTS as usize <= MAX_INDIRECT_PAGES * SEGMENTS_PER_INDIRECT_PAGE);
const _: () = assert!(SEGMENTS_PER_INDIRECT_PAGE * 8 <= PAGE_SIZE);
const _: () = assert!(SECTORS_PER_PAGE as u64 * SECTOR_SIZE == PAGE_SIZE as u64);

/// The back end of a block ring.
pub type BlkRing = BackRing<BlkRequest, BlkResponse>;

/// What a block backend offers, as published in the store (`read-only`, `feature-flush`,
/// `feature-discard`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlkFeatures {
    /// Writes and discards are refused with `EROFS`.
    pub read_only: bool,
    /// `OP_FLUSH` is served (otherwise `EOPNOTSUPP`).
    pub flush: bool,
    /// `OP_DISCARD` is served (otherwise `EOPNOTSUPP`).
    pub discard: bool,
}

/// Why [`BlkBackend::process`] stopped serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendError {
    /// The frontend wrote an impossible ring index: the ring is broken (or the frontend
    /// hostile). Stop serving the device and move its state to `Closed`; every later call of
    /// [`BlkBackend::process`] fails the same way without touching the ring.
    Disconnect,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Disconnect => {
                f.write_str("the frontend wrote an impossible ring index; device disconnected")
            }
        }
    }
}

impl std::error::Error for BackendError {}

/// Live counters of a block backend, readable from any thread ([`BlkBackend::counters`]).
#[derive(Debug, Default)]
pub struct BlkCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// A snapshot of [`BlkCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlkStats {
    /// Requests answered (whatever their status).
    pub requests: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Discards completed.
    pub discards: u64,
    /// Bytes read from the disk into granted pages.
    pub bytes_read: u64,
    /// Bytes written from granted pages to the disk.
    pub bytes_written: u64,
}

impl BlkCounters {
    /// The counters' current values.
    pub fn snapshot(&self) -> BlkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlkStats {
            requests: get(&self.requests),
            errors: get(&self.errors),
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            discards: get(&self.discards),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
        }
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A block backend: serves one frontend's ring from one [`Disk`], reaching granted pages and
/// the frontend's event channel through its [`GrantHost`].
///
/// Requests are served synchronously, in ring order, one response each. Data moves between the
/// image file and the granted pages by `preadv`/`pwritev` straight into or out of the pages (one
/// system call per request normally); a write's response is sent after its `pwritev` returned,
/// and a flush (`fdatasync`) therefore covers every write answered before it.
///
/// # Validation
///
/// Each request is copied out of the ring once, and only the copy is looked at. Its status is
/// the first failing check in this order:
///
/// 1. `EINVAL` for what the slot itself gets wrong: an unknown `op`; a flag other than
///    `REQ_INDIRECT`, or any flag on flush and discard; `nr_sectors` not zero outside discard;
///    `nr_segments` not zero for flush and discard, and for read and write 0 or above
///    `MAX_DIRECT_SEGMENTS` (direct) or `MAX_SEGMENTS` (indirect); a direct segment with `pad`
///    not zero or not `first_sect <= last_sect <= 7`; an indirect-page reference with
///    `first_sect`, `last_sect` or `pad` not zero; a range (direct segments or discard) that
///    does not end inside the disk, overflow included.
/// 2. `EROFS` for a write or discard to a read-only disk; `EOPNOTSUPP` for a flush or discard
///    not offered in [`BlkFeatures`].
/// 3. For an indirect request: `EACCES` if the host refuses the indirect page (asked
///    read-only); its segments are copied out once, then checked as in 1 (`EINVAL`).
/// 4. `EACCES` if the host refuses a data page (asked writable for a read, read-only for a
///    write). No data moves before every page of the request was granted.
/// 5. `EIO` if the image file fails (or, for a discard, `EOPNOTSUPP` if the file system turns
///    out not to punch holes after all).
///
/// Not checked (the protocol gives them no meaning): `sector` of a flush, the slots of `segs`
/// past the ones in use, and the entries of an indirect page past `nr_segments`. A discard of
/// 0 sectors inside the disk succeeds and does nothing.
pub struct BlkBackend<H: GrantHost> {
    ring: BlkRing,
    disk: Disk,
    host: H,
    features: BlkFeatures,
    counters: Arc<BlkCounters>,
    disconnected: bool,
    /// Scratch for one request, kept to avoid allocating per request.
    segs: Vec<BlkSegment>,
    pages: Vec<GrantedPage<H::Guard>>,
    bufs: Vec<RawBuf>,
}

impl<H: GrantHost> fmt::Debug for BlkBackend<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlkBackend")
            .field("ring", &self.ring)
            .field("disk", &self.disk)
            .field("features", &self.features)
            .field("disconnected", &self.disconnected)
            .finish_non_exhaustive()
    }
}

/// The outcome of one request.
type Status = Result<(), Errno>;

fn seg_ok(s: &BlkSegment) -> bool {
    s.pad == 0 && s.first_sect <= s.last_sect && s.last_sect < SECTORS_PER_PAGE
}

fn seg_sectors(s: &BlkSegment) -> u64 {
    u64::from(s.last_sect - s.first_sect) + 1
}

/// Whether `count` sectors from `sector` end inside a disk of `sectors`.
fn in_disk(sector: u64, count: u64, sectors: u64) -> bool {
    sector.checked_add(count).is_some_and(|end| end <= sectors)
}

impl<H: GrantHost> BlkBackend<H> {
    /// A backend serving `ring` (already attached to the frontend's ring page) from `disk`.
    ///
    /// The features actually offered ([`features`](Self::features)) are `wanted` narrowed by
    /// the disk: read-only if either says so, discard only on a writable disk that
    /// [supports it](Disk::supports_discard). Publish those, not `wanted`.
    pub fn new(ring: BlkRing, disk: Disk, wanted: BlkFeatures, host: H) -> Self {
        let read_only = wanted.read_only || disk.read_only();
        let features = BlkFeatures {
            read_only,
            flush: wanted.flush,
            discard: wanted.discard && !read_only && disk.supports_discard(),
        };
        BlkBackend {
            ring,
            disk,
            host,
            features,
            counters: Arc::default(),
            disconnected: false,
            segs: Vec::with_capacity(usize::from(MAX_SEGMENTS)),
            pages: Vec::with_capacity(usize::from(MAX_SEGMENTS)),
            bufs: Vec::with_capacity(usize::from(MAX_SEGMENTS)),
        }
    }

    /// The features offered.
    pub fn features(&self) -> BlkFeatures {
        self.features
    }

    /// The disk's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Most segments a request may carry (`max-segments`).
    pub fn max_segments(&self) -> u16 {
        MAX_SEGMENTS
    }

    /// The disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The live counters (share them with a stats printer).
    pub fn counters(&self) -> Arc<BlkCounters> {
        Arc::clone(&self.counters)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BlkStats {
        self.counters.snapshot()
    }

    /// Whether [`process`](Self::process) found the ring broken.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Takes the backend apart (to close the device).
    pub fn into_parts(self) -> (BlkRing, Disk, H) {
        (self.ring, self.disk, self.host)
    }

    /// Serves every request the frontend has published, until the ring is empty after the
    /// final check (so the caller may wait for the next notification); returns how many were
    /// answered. Each response is published as soon as it is written, and the host is asked to
    /// notify the frontend whenever the ring says it is waiting.
    ///
    /// [`BackendError::Disconnect`] if the frontend broke the ring; the backend then stays
    /// disconnected.
    pub fn process(&mut self) -> Result<usize, BackendError> {
        if self.disconnected {
            return Err(BackendError::Disconnect);
        }
        let mut served = 0;
        loop {
            loop {
                let req = match self.ring.poll_request() {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(_) => return Err(self.disconnect()),
                };
                let status = self.serve(&req);
                self.release();
                self.account(&req, status);
                let rsp = BlkResponse {
                    id: req.id,
                    op: req.op,
                    pad: [0; 3],
                    status: status.err().map_or(0, |e| -(e as i32)),
                };
                // Cannot fail: the request just consumed is unanswered.
                if self.ring.push_response(&rsp).is_err() {
                    return Err(self.disconnect());
                }
                served += 1;
                if self.ring.push_responses_and_check_notify() {
                    self.host.notify();
                }
            }
            match self.ring.final_check_for_requests() {
                Ok(true) => continue,
                Ok(false) => return Ok(served),
                Err(_) => return Err(self.disconnect()),
            }
        }
    }

    fn disconnect(&mut self) -> BackendError {
        self.disconnected = true;
        BackendError::Disconnect
    }

    /// Drops the request's pages (releasing the host's guards) and scratch.
    fn release(&mut self) {
        self.bufs.clear();
        self.pages.clear();
        self.segs.clear();
    }

    fn account(&self, req: &BlkRequest, status: Status) {
        let c = &*self.counters;
        BlkCounters::add(&c.requests, 1);
        if status.is_err() {
            BlkCounters::add(&c.errors, 1);
            return;
        }
        match req.op {
            OP_READ => BlkCounters::add(&c.reads, 1),
            OP_WRITE => BlkCounters::add(&c.writes, 1),
            OP_FLUSH => BlkCounters::add(&c.flushes, 1),
            _ => BlkCounters::add(&c.discards, 1),
        }
    }

    fn serve(&mut self, req: &BlkRequest) -> Status {
        match req.op {
            OP_READ | OP_WRITE => self.read_write(req),
            OP_FLUSH => self.flush(req),
            OP_DISCARD => self.discard(req),
            _ => Err(Errno::EINVAL),
        }
    }

    fn flush(&mut self, req: &BlkRequest) -> Status {
        if req.flags != 0 || req.nr_segments != 0 || req.nr_sectors != 0 {
            return Err(Errno::EINVAL);
        }
        if !self.features.flush {
            return Err(Errno::EOPNOTSUPP);
        }
        // Every write answered so far has completed (they are synchronous).
        self.disk.flush().map_err(|_| Errno::EIO)
    }

    fn discard(&mut self, req: &BlkRequest) -> Status {
        if req.flags != 0 || req.nr_segments != 0 {
            return Err(Errno::EINVAL);
        }
        let count = u64::from(req.nr_sectors);
        if !in_disk(req.sector, count, self.disk.sectors()) {
            return Err(Errno::EINVAL);
        }
        if self.features.read_only {
            return Err(Errno::EROFS);
        }
        if !self.features.discard {
            return Err(Errno::EOPNOTSUPP);
        }
        // In the disk, so the byte range fits in u64.
        let res = self
            .disk
            .discard(req.sector * SECTOR_SIZE, count * SECTOR_SIZE);
        res.map_err(|e| {
            if e.kind() == std::io::ErrorKind::Unsupported
                || e.raw_os_error() == Some(libc::EOPNOTSUPP)
            {
                Errno::EOPNOTSUPP
            } else {
                Errno::EIO
            }
        })
    }

    fn read_write(&mut self, req: &BlkRequest) -> Status {
        let read = req.op == OP_READ;
        let indirect = match req.flags {
            0 => false,
            REQ_INDIRECT => true,
            _ => return Err(Errno::EINVAL),
        };
        if req.nr_sectors != 0 {
            return Err(Errno::EINVAL);
        }
        let n = usize::from(req.nr_segments);
        let limit = if indirect {
            usize::from(MAX_SEGMENTS)
        } else {
            MAX_DIRECT_SEGMENTS
        };
        if n == 0 || n > limit {
            return Err(Errno::EINVAL);
        }
        let sectors = self.disk.sectors();
        let nr_indirect = n.div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
        if indirect {
            // nr_indirect <= MAX_INDIRECT_PAGES <= MAX_DIRECT_SEGMENTS (const-asserted above).
            let refs = &req.segs[..nr_indirect];
            if refs
                .iter()
                .any(|s| s.first_sect != 0 || s.last_sect != 0 || s.pad != 0)
            {
                return Err(Errno::EINVAL);
            }
        } else {
            let segs = &req.segs[..n];
            if !segs.iter().all(seg_ok)
                || !in_disk(req.sector, segs.iter().map(seg_sectors).sum(), sectors)
            {
                return Err(Errno::EINVAL);
            }
        }
        if !read && self.features.read_only {
            return Err(Errno::EROFS);
        }

        // The segments, copied once (the slot copy, or out of the indirect pages).
        if indirect {
            for r in &req.segs[..nr_indirect] {
                let page = self.host.page(r.gref, false).map_err(|_| Errno::EACCES)?;
                let want = (n - self.segs.len()).min(SEGMENTS_PER_INDIRECT_PAGE);
                copy_segments(&page, want, &mut self.segs);
            }
            if !self.segs.iter().all(seg_ok)
                || !in_disk(req.sector, self.segs.iter().map(seg_sectors).sum(), sectors)
            {
                return Err(Errno::EINVAL);
            }
        } else {
            self.segs.extend_from_slice(&req.segs[..n]);
        }

        // Every data page, before any data moves.
        for s in &self.segs {
            let page = self.host.page(s.gref, read).map_err(|_| Errno::EACCES)?;
            self.bufs.push(RawBuf {
                // first_sect <= 7: inside the page.
                ptr: page
                    .as_ptr()
                    .wrapping_add(usize::from(s.first_sect) * SECTOR_SIZE as usize),
                len: seg_sectors(s) as usize * SECTOR_SIZE as usize,
            });
            self.pages.push(page);
        }

        // In the disk (checked above), so the byte offset fits in u64.
        let offset = req.sector * SECTOR_SIZE;
        let bytes: u64 = self.bufs.iter().map(|b| b.len as u64).sum();
        // SAFETY: every buffer lies inside one page of `self.pages` (first_sect..=last_sect of
        // a page of PAGE_SIZE bytes), which stay alive until `release`, after the transfer.
        // By the GrantedPage contract they are valid for reads, and for writes when asked with
        // `write` = true, which is the case for a read; nothing holds a reference to them.
        let res = unsafe {
            if read {
                self.disk.read_vectored_at(&self.bufs, offset)
            } else {
                self.disk.write_vectored_at(&self.bufs, offset)
            }
        };
        res.map_err(|_| Errno::EIO)?;
        let c = if read {
            &self.counters.bytes_read
        } else {
            &self.counters.bytes_written
        };
        BlkCounters::add(c, bytes);
        Ok(())
    }
}

/// Appends the first `count` (at most [`SEGMENTS_PER_INDIRECT_PAGE`]) segments of an indirect
/// page to `out`, each read once with an atomic load (the frontend may be writing the page).
fn copy_segments<G>(page: &GrantedPage<G>, count: usize, out: &mut Vec<BlkSegment>) {
    let base = page.as_ptr();
    for i in 0..count.min(SEGMENTS_PER_INDIRECT_PAGE) {
        // SAFETY: i * 8 + 8 <= 512 * 8 <= PAGE_SIZE, so the word is inside the page, which is
        // page-aligned and readable (GrantedPage contract); it is only accessed atomically or
        // by system calls in this program, and the frontend's concurrent writes are outside it.
        let word = unsafe { std::sync::atomic::AtomicU64::from_ptr(base.add(i * 8).cast()) };
        let [g0, g1, g2, g3, first_sect, last_sect, p0, p1] =
            word.load(Ordering::Relaxed).to_le_bytes();
        out.push(BlkSegment {
            gref: u32::from_le_bytes([g0, g1, g2, g3]),
            first_sect,
            last_sect,
            pad: u16::from_le_bytes([p0, p1]),
        });
    }
}
