//! Generic shared request/response rings with the semantics of Xen's `io/ring.h`, written to be
//! safe against a hostile peer.
//!
//! A ring lives in a shared-memory area (usually one page, possibly a few contiguous ones) that
//! two parties map at the same time: the **front** end produces requests and consumes responses,
//! the **back** end consumes requests and produces responses. Either party may be the guest or
//! the hypervisor. Each side uses [`FrontRing`] or [`BackRing`], typed by the request type `Req`
//! and the response type `Rsp`; both must implement [`RingMessage`] (any `zerocopy`
//! `FromBytes + IntoBytes + Immutable + KnownLayout` type does), so every byte pattern the peer
//! may leave in a slot is a valid value.
//!
//! # Layout
//!
//! The area starts at an 8-byte aligned address and is `len` bytes long. All integers are
//! little-endian (the ABI is x86-64 only). Let `S` be the slot size and `N` the number of slots:
//!
//! - `S = round_up(max(size_of::<Req>(), size_of::<Rsp>(), 1), 8)` (see [`slot_size`]);
//! - `N` is the largest power of two such that `64 + N * S <= len`, at most 2^31 (see
//!   [`ring_slots`]). A `len` with room for no slot is refused.
//!
//! | offset | size | type | field | written by |
//! | --- | --- | --- | --- | --- |
//! | 0 | 4 | u32 | `req_prod` | front: number of requests produced (free-running) |
//! | 4 | 4 | u32 | `req_event` | back: notify me when `req_prod` passes this value |
//! | 8 | 4 | u32 | `rsp_prod` | back: number of responses produced (free-running) |
//! | 12 | 4 | u32 | `rsp_event` | front: notify me when `rsp_prod` passes this value |
//! | 16 | 48 | u8\[48\] | `pad` | front zeroes it at initialisation; ignored by both |
//! | 64 | `N * S` | slot\[N\] | slots | see below |
//! | `64 + N * S` | rest | - | unused | nobody |
//!
//! The header is [`RingHeader`]. Request number `i` (a free-running `u32`, wrapping at 2^32) is
//! in slot `i & (N - 1)`, at byte `64 + (i & (N - 1)) * S`, in the first `size_of::<Req>()`
//! bytes of the slot. The response number `i` reuses the same slot, in its first
//! `size_of::<Rsp>()` bytes: the back end answers requests in the order it consumes them, so
//! when it writes response `i` it has already copied request `i` out. The bytes of a slot past
//! the message are left as they were.
//!
//! # Protocol
//!
//! Indices are free-running `u32`s and all arithmetic on them is wrapping; `a - b` below means
//! `a.wrapping_sub(b)`.
//!
//! Initialisation: the front writes the header (`req_prod = rsp_prod = start`,
//! `req_event = rsp_event = start + 1`, `pad` zero, with `start = 0` normally) before telling the
//! back where the ring is; the back attaches without writing and starts from the same `start`.
//!
//! Producing: a producer writes messages into the slots after its producer index, then publishes
//! them by storing the new producer index (release). It then issues a full fence and reads the
//! consumer's event index `event`: having published from `old` to `new`, it must notify the
//! consumer (typically by an event channel) iff `new - event < new - old`, that is iff `event`
//! lies in `(old, new]` (see [`need_notify`]).
//!
//! Consuming: a consumer reads the producer index (acquire), validates it, then copies each
//! message out of its slot once. Before waiting for a notification, a consumer that has drained
//! the ring stores `event = cons + 1`, issues a full fence, and checks the producer index once
//! more ("final check"): a message published between its last poll and the store of `event`
//! would otherwise be missed, because its producer may have read the old `event` and not
//! notified.
//!
//! Flow control: the front never has more than `N` requests outstanding
//! (`req_prod - rsp_cons <= N`, where `rsp_cons` counts the responses it has consumed), so a slot
//! is reused for request `i + N` only after response `i` has been consumed.
//!
//! # A hostile peer
//!
//! Each side keeps **private** copies of its own indices (the front: `req_prod_pvt`, the last
//! published `req_prod`, `rsp_cons`; the back: `req_cons`, `rsp_prod_pvt`, the last published
//! `rsp_prod`) and never reads its own indices back from shared memory. The only values read from
//! the peer are its producer index, its event index and the contents of the slots it produced:
//!
//! - the producer index is read once per operation (an atomic acquire load) and checked; a value
//!   that no honest peer could have written is [`RingError::Overflow`], after which the caller
//!   should disconnect the peer. For the front, the response producer may not run ahead of the
//!   requests it has published (`rsp_prod - rsp_cons > req_prod - rsp_cons`, with `req_prod`
//!   its private copy). For the back, the request producer may not run more than `N` ahead of
//!   the oldest request not yet answered
//!   (`req_prod - req_cons > N - (req_cons - rsp_prod_pvt)`; this implies the plain
//!   `req_prod - req_cons > N` check, and also catches a front that overwrites slots the back
//!   has not answered yet). When an operation fails, the ring's private state is unchanged;
//! - a message is copied out of shared memory once, into a local value, and only that copy is
//!   returned (no double fetch); the caller validates the copy;
//! - the event index only decides whether to notify, so any value is accepted;
//! - slot positions are always `index & (N - 1)`, so no value written by the peer can make the
//!   ring access memory outside the area, and no operation panics.
//!
//! # Memory ordering
//!
//! Every access to the shared area is atomic (`Relaxed` for slot contents, which are copied as
//! aligned `u64` words plus trailing bytes), so the ring is free of data races in the Rust memory
//! model even though the peer writes concurrently, and the compiler can neither re-read a slot
//! nor tear a word. Publishing a producer index is a `Release` store, which orders the slot
//! writes before it; reading the peer's producer index is an `Acquire` load, which orders the
//! slot reads after it. Between publishing a producer index (or an event index) and reading the
//! peer's event index (or producer index), each side issues a `SeqCst` fence (Xen's `mb()`), so
//! that of two racing sides at least one sees the other's store: either the producer sees the
//! new event index and notifies, or the consumer's final check sees the new messages.
//!
//! # Example
//!
//! ```
//! use hypercall_abi::ring::{BackRing, FrontRing, RingError};
//!
//! let mut page = [0u64; 512];
//! let len = core::mem::size_of_val(&page);
//! let ptr = page.as_mut_ptr().cast::<u8>();
//! // SAFETY: `page` is 8-byte aligned, `len` bytes long, outlives both rings, and is accessed
//! // only through them while they exist.
//! let mut front = unsafe { FrontRing::<u64, u32>::new(ptr, len) }?;
//! // SAFETY: as above.
//! let mut back = unsafe { BackRing::<u64, u32>::new(ptr, len) }?;
//! assert_eq!(front.size(), 256); // (4096 - 64) / 8 = 504 slots fit; rounded down to 2^8
//!
//! // The front sends a request; the back was waiting (req_event = 1), so it must be notified.
//! front.push_request(&41)?;
//! assert!(front.push_requests_and_check_notify());
//!
//! // The back serves it and answers; the front was waiting too.
//! let req = back.poll_request()?.expect("a request");
//! assert_eq!(back.poll_request()?, None);
//! back.push_response(&(req as u32 + 1))?;
//! assert!(back.push_responses_and_check_notify());
//! assert!(!back.final_check_for_requests()?); // drained: back may sleep
//!
//! assert_eq!(front.poll_response()?, Some(42));
//! assert_eq!(front.pending_requests(), 0);
//! assert!(!front.final_check_for_responses()?); // drained: front may sleep
//! # Ok::<(), RingError>(())
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size in bytes of the ring header ([`RingHeader`]); the slots start at this offset.
pub const HEADER_SIZE: usize = 64;
/// Required alignment of the shared area, and granularity of the slot size.
pub const AREA_ALIGN: usize = 8;
/// The most slots a ring has, whatever the area's length.
pub const MAX_SLOTS: u32 = 1 << 31;

/// The header at the start of every ring area. See the [module documentation](self) for who
/// writes each field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RingHeader {
    /// Requests produced by the front (free-running).
    pub req_prod: u32,
    /// The back wants a notification when `req_prod` passes this value.
    pub req_event: u32,
    /// Responses produced by the back (free-running).
    pub rsp_prod: u32,
    /// The front wants a notification when `rsp_prod` passes this value.
    pub rsp_event: u32,
    /// Zero at initialisation; ignored.
    pub pad: [u8; 48],
}
const _: () = assert!(size_of::<RingHeader>() == HEADER_SIZE);
const _: () = assert!(offset_of!(RingHeader, req_prod) == 0);
const _: () = assert!(offset_of!(RingHeader, req_event) == 4);
const _: () = assert!(offset_of!(RingHeader, rsp_prod) == 8);
const _: () = assert!(offset_of!(RingHeader, rsp_event) == 12);
const _: () = assert!(offset_of!(RingHeader, pad) == 16);

const REQ_PROD: usize = offset_of!(RingHeader, req_prod);
const REQ_EVENT: usize = offset_of!(RingHeader, req_event);
const RSP_PROD: usize = offset_of!(RingHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(RingHeader, rsp_event);
const PAD: usize = offset_of!(RingHeader, pad);
const _: () = assert!(PAD & 7 == 0 && HEADER_SIZE & 7 == 0);

/// A type that can travel in a ring slot: any sequence of bytes is a valid value and the value
/// is plain bytes without interior mutability. Implemented for every type with the `zerocopy`
/// traits below.
pub trait RingMessage: FromBytes + IntoBytes + Immutable + KnownLayout {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> RingMessage for T {}

/// The slot size of a ring of `Req` requests and `Rsp` responses:
/// `max(size_of::<Req>(), size_of::<Rsp>(), 1)` rounded up to a multiple of 8.
pub const fn slot_size<Req, Rsp>() -> usize {
    let mut m = size_of::<Req>();
    if size_of::<Rsp>() > m {
        m = size_of::<Rsp>();
    }
    if m == 0 {
        m = 1;
    }
    // `size_of` is at most `isize::MAX`, so this cannot overflow.
    (m + (AREA_ALIGN - 1)) & !(AREA_ALIGN - 1)
}

/// The number of slots `N` of a ring of `Req` requests and `Rsp` responses in an area of `len`
/// bytes: the largest power of two with `64 + N * slot_size::<Req, Rsp>() <= len`, at most
/// [`MAX_SLOTS`], or 0 if not even one slot fits.
pub const fn ring_slots<Req, Rsp>(len: usize) -> u32 {
    slots_for(len, slot_size::<Req, Rsp>())
}

const fn slots_for(len: usize, slot: usize) -> u32 {
    if len < HEADER_SIZE {
        return 0;
    }
    let fit = (len - HEADER_SIZE) / slot;
    if fit == 0 {
        return 0;
    }
    // The largest power of two <= fit.
    let pow = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    if pow > MAX_SLOTS as usize {
        MAX_SLOTS
    } else {
        pow as u32
    }
}

/// Whether a producer that has just published its producer index from `old` to `new` must
/// notify a consumer whose event index is `event`: iff `new - event < new - old` in wrapping
/// arithmetic, that is iff `event` is in `(old, new]`.
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// An error from a ring operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingError {
    /// No room: the front already has `N` requests outstanding, or the back has no consumed
    /// request left to answer.
    Full,
    /// The peer wrote an impossible producer index (see the [module documentation](self)); the
    /// peer is broken or hostile and should be disconnected. The ring's state is unchanged.
    Overflow,
    /// The area has no room for the header and one slot.
    TooSmall,
    /// The area does not start at an 8-byte aligned address.
    Misaligned,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingError::Full => "ring full",
            RingError::Overflow => "peer wrote an impossible ring index",
            RingError::TooSmall => "ring area too small",
            RingError::Misaligned => "ring area not 8-byte aligned",
        })
    }
}

impl core::error::Error for RingError {}

/// The shared area, as both ends see it.
///
/// Invariant (established by the unsafe constructors of the rings): `base` is 8-byte aligned
/// and valid for reads and writes of `HEADER_SIZE + size * slot_size` bytes for as long as the
/// `Area` exists, and nothing in this program accesses those bytes other than through atomic
/// operations; `size` is a power of two in `1..=MAX_SLOTS`; `slot_size` is a non-zero multiple
/// of 8 at least as large as every message type read or written through it.
struct Area {
    base: *mut u8,
    size: u32,
    slot_size: usize,
}

impl Area {
    /// # Safety
    ///
    /// `base` must be valid for reads and writes of `len` bytes while the `Area` exists, and
    /// those bytes must be accessed by this program only through atomic operations (a peer
    /// outside the Rust abstract machine, such as a guest, may write them at any time).
    unsafe fn new(base: *mut u8, len: usize, slot_size: usize) -> Result<Area, RingError> {
        if !base.cast::<u64>().is_aligned() {
            return Err(RingError::Misaligned);
        }
        let size = slots_for(len, slot_size);
        if size == 0 {
            return Err(RingError::TooSmall);
        }
        Ok(Area {
            base,
            size,
            slot_size,
        })
    }

    fn mask(&self) -> u32 {
        self.size - 1
    }

    /// The header field at byte `offset` (one of the field offset constants).
    fn index(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset <= RSP_EVENT && offset & 3 == 0);
        // SAFETY: `offset` is one of the header's u32 field offsets, so the pointer is inside the
        // area (which is at least HEADER_SIZE bytes) and 4-byte aligned (the base is 8-aligned).
        // The area stays valid for the lifetime of `self`, and it is only accessed atomically,
        // always as u32 at this offset (by the Area invariant).
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast::<u32>()) }
    }

    /// The first byte of the slot of free-running index `idx`.
    fn slot(&self, idx: u32) -> *mut u8 {
        let pos = (idx & self.mask()) as usize;
        // SAFETY: pos < size, so HEADER_SIZE + pos * slot_size + slot_size <= the area's length:
        // the offset is in bounds (and cannot overflow, as the whole area is one allocation).
        unsafe { self.base.add(HEADER_SIZE + pos * self.slot_size) }
    }

    /// Copies the message in slot `idx` out of shared memory, once.
    fn read<T: RingMessage>(&self, idx: u32) -> T {
        debug_assert!(size_of::<T>() <= self.slot_size);
        let src = self.slot(idx);
        let mut value = T::new_zeroed();
        let mut words = value.as_mut_bytes().chunks_exact_mut(8);
        let mut off = 0;
        for word in &mut words {
            // SAFETY: `off + 8 <= size_of::<T>() <= slot_size`, so the word is inside the slot;
            // the slot starts 8-aligned (8-aligned base, header and slot size are multiples of
            // 8) and `off` is a multiple of 8. The area is valid and accessed only atomically.
            let a = unsafe { AtomicU64::from_ptr(src.add(off).cast::<u64>()) };
            // Relaxed: the caller's Acquire load of the producer index orders this read.
            word.copy_from_slice(&a.load(Ordering::Relaxed).to_ne_bytes());
            off += 8;
        }
        for byte in words.into_remainder() {
            // SAFETY: `off < size_of::<T>() <= slot_size`: the byte is inside the slot, which
            // is valid and accessed only atomically.
            let a = unsafe { AtomicU8::from_ptr(src.add(off)) };
            *byte = a.load(Ordering::Relaxed);
            off += 1;
        }
        value
    }

    /// Copies `value` into slot `idx`.
    fn write<T: RingMessage>(&self, idx: u32, value: &T) {
        debug_assert!(size_of::<T>() <= self.slot_size);
        let dst = self.slot(idx);
        let mut words = value.as_bytes().chunks_exact(8);
        let mut off = 0;
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            // SAFETY: as in `read`: an 8-aligned word inside the slot, accessed only atomically.
            let a = unsafe { AtomicU64::from_ptr(dst.add(off).cast::<u64>()) };
            // Relaxed: the later Release store of the producer index publishes this write.
            a.store(u64::from_ne_bytes(w), Ordering::Relaxed);
            off += 8;
        }
        for &byte in words.remainder() {
            // SAFETY: as in `read`: a byte inside the slot, accessed only atomically.
            let a = unsafe { AtomicU8::from_ptr(dst.add(off)) };
            a.store(byte, Ordering::Relaxed);
            off += 1;
        }
    }

    /// Writes a fresh header with every index at `start`.
    fn init(&self, start: u32) {
        for off in (PAD..HEADER_SIZE).step_by(8) {
            // SAFETY: an 8-aligned word inside the header (PAD and HEADER_SIZE are multiples of
            // 8), accessed only atomically.
            let a = unsafe { AtomicU64::from_ptr(self.base.add(off).cast::<u64>()) };
            a.store(0, Ordering::Relaxed);
        }
        let next = start.wrapping_add(1);
        // Release: whoever learns of the ring through a later acquire sees a complete header.
        self.index(REQ_EVENT).store(next, Ordering::Release);
        self.index(RSP_EVENT).store(next, Ordering::Release);
        self.index(RSP_PROD).store(start, Ordering::Release);
        self.index(REQ_PROD).store(start, Ordering::Release);
    }

    /// Publishes a producer index (at `prod_off`) moving from `old` to `new`, then reads the
    /// consumer's event index (at `event_off`) and says whether to notify.
    fn publish(&self, prod_off: usize, event_off: usize, old: u32, new: u32) -> bool {
        // Release: the slot writes of the messages published happen before this store.
        self.index(prod_off).store(new, Ordering::Release);
        // Full fence (Xen's mb()): our store of the producer index and the consumer's store of
        // its event index must not both be missed by the two subsequent loads.
        fence(Ordering::SeqCst);
        let event = self.index(event_off).load(Ordering::Relaxed);
        need_notify(old, new, event)
    }

    /// Stores a consumer's event index and fences before the final re-check.
    fn arm(&self, event_off: usize, cons: u32) {
        // Relaxed store + SeqCst fence: pairs with the fence in `publish`.
        self.index(event_off)
            .store(cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
}

/// The front end of a ring: produces requests `Req`, consumes responses `Rsp`.
pub struct FrontRing<Req, Rsp> {
    area: Area,
    /// Requests produced (written to slots), published or not.
    req_prod_pvt: u32,
    /// The last `req_prod` we published.
    req_prod_pub: u32,
    /// Responses consumed.
    rsp_cons: u32,
    _types: PhantomData<fn() -> (Req, Rsp)>,
}

// SAFETY: a ring holds only a pointer to the shared area plus private indices; the area is
// valid from any thread (constructor contract) and every access to it is atomic.
unsafe impl<Req, Rsp> Send for FrontRing<Req, Rsp> {}

impl<Req, Rsp> fmt::Debug for FrontRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("base", &self.area.base)
            .field("size", &self.area.size)
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("req_prod_pub", &self.req_prod_pub)
            .field("rsp_cons", &self.rsp_cons)
            .finish()
    }
}

impl<Req: RingMessage, Rsp: RingMessage> FrontRing<Req, Rsp> {
    /// Sets up a ring in the area of `len` bytes at `ptr` and returns its front end: writes a
    /// fresh header (all zero, then `req_event = rsp_event = 1`). The slots are not touched.
    ///
    /// Fails with [`RingError::Misaligned`] if `ptr` is not 8-byte aligned and with
    /// [`RingError::TooSmall`] if the area has no room for one slot.
    ///
    /// # Safety
    ///
    /// Until the returned ring is dropped:
    /// - `ptr` must be valid for reads and writes of `len` bytes, from any thread;
    /// - this program must access those bytes only through this ring, a [`BackRing`] on the same
    ///   area, or other atomic operations: no Rust reference to them may be used. Writes by a
    ///   peer outside the program (a guest, another process) are allowed at any time.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, RingError> {
        // SAFETY: the caller upholds our contract, which is `new_at`'s.
        unsafe { Self::new_at(ptr, len, 0) }
    }

    /// Like [`new`](Self::new), but with every index starting at `start` instead of 0
    /// (`req_prod = rsp_prod = start`, `req_event = rsp_event = start + 1`). The back end must
    /// attach with the same `start` ([`BackRing::new_at`]). Mostly useful to test wrap-around.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new).
    pub unsafe fn new_at(ptr: *mut u8, len: usize, start: u32) -> Result<Self, RingError> {
        // SAFETY: the caller guarantees validity and atomic-only access (our contract).
        let area = unsafe { Area::new(ptr, len, slot_size::<Req, Rsp>())? };
        area.init(start);
        Ok(FrontRing {
            area,
            req_prod_pvt: start,
            req_prod_pub: start,
            rsp_cons: start,
            _types: PhantomData,
        })
    }

    /// The number of slots `N`.
    pub fn size(&self) -> u32 {
        self.area.size
    }

    /// Requests pushed (published or not) whose response has not been consumed yet.
    pub fn pending_requests(&self) -> u32 {
        // Never more than N: push_request refuses beyond that.
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// How many more requests can be pushed now.
    pub fn free_requests(&self) -> u32 {
        self.area.size.saturating_sub(self.pending_requests())
    }

    /// Copies `req` into the next free slot. It is not visible to the back until
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    ///
    /// Fails with [`RingError::Full`] if `N` requests are already pending.
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full);
        }
        self.area.write(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the requests pushed so far and returns whether the back must be notified
    /// (its `req_event` was passed).
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.req_prod_pub, self.req_prod_pvt);
        self.req_prod_pub = new;
        self.area.publish(REQ_PROD, REQ_EVENT, old, new)
    }

    /// The number of responses published by the back and not consumed yet (one read of
    /// `rsp_prod`). [`RingError::Overflow`] if `rsp_prod` is ahead of the requests published.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        // Acquire: the back's slot writes before its Release store of rsp_prod are visible to
        // the slot reads that follow.
        let prod = self.area.index(RSP_PROD).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.rsp_cons);
        if avail > self.req_prod_pub.wrapping_sub(self.rsp_cons) {
            Err(RingError::Overflow)
        } else {
            Ok(avail)
        }
    }

    /// Takes the next response, if one has been published: copies it out of its slot once and
    /// returns the copy. [`RingError::Overflow`] if `rsp_prod` is impossible.
    pub fn poll_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.area.read::<Rsp>(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Call when [`poll_response`](Self::poll_response) returned `None`, before waiting for a
    /// notification: asks the back to notify on its next response (`rsp_event = rsp_cons + 1`)
    /// and re-checks. `Ok(true)` means responses arrived meanwhile (poll again instead of
    /// waiting); `Ok(false)` means the front may wait, as it will be notified.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.area.arm(RSP_EVENT, self.rsp_cons);
        Ok(self.unconsumed_responses()? > 0)
    }
}

/// The back end of a ring: consumes requests `Req`, produces responses `Rsp`.
pub struct BackRing<Req, Rsp> {
    area: Area,
    /// Requests consumed.
    req_cons: u32,
    /// Responses produced (written to slots), published or not.
    rsp_prod_pvt: u32,
    /// The last `rsp_prod` we published.
    rsp_prod_pub: u32,
    _types: PhantomData<fn() -> (Req, Rsp)>,
}

// SAFETY: as for FrontRing: a pointer to an area valid from any thread, accessed atomically.
unsafe impl<Req, Rsp> Send for BackRing<Req, Rsp> {}

impl<Req, Rsp> fmt::Debug for BackRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("base", &self.area.base)
            .field("size", &self.area.size)
            .field("req_cons", &self.req_cons)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("rsp_prod_pub", &self.rsp_prod_pub)
            .finish()
    }
}

impl<Req: RingMessage, Rsp: RingMessage> BackRing<Req, Rsp> {
    /// Attaches to the ring in the area of `len` bytes at `ptr`, which the front has
    /// initialised, and returns its back end. Writes nothing; assumes the indices start at 0.
    ///
    /// Fails with [`RingError::Misaligned`] if `ptr` is not 8-byte aligned and with
    /// [`RingError::TooSmall`] if the area has no room for one slot.
    ///
    /// # Safety
    ///
    /// Until the returned ring is dropped:
    /// - `ptr` must be valid for reads and writes of `len` bytes, from any thread;
    /// - this program must access those bytes only through this ring, a [`FrontRing`] on the
    ///   same area, or other atomic operations: no Rust reference to them may be used. Writes by
    ///   a peer outside the program (a guest, another process) are allowed at any time.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self, RingError> {
        // SAFETY: the caller upholds our contract, which is `new_at`'s.
        unsafe { Self::new_at(ptr, len, 0) }
    }

    /// Like [`new`](Self::new), for a ring whose indices started at `start`
    /// ([`FrontRing::new_at`]). Mostly useful to test wrap-around.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new).
    pub unsafe fn new_at(ptr: *mut u8, len: usize, start: u32) -> Result<Self, RingError> {
        // SAFETY: the caller guarantees validity and atomic-only access (our contract).
        let area = unsafe { Area::new(ptr, len, slot_size::<Req, Rsp>())? };
        Ok(BackRing {
            area,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
            _types: PhantomData,
        })
    }

    /// The number of slots `N`.
    pub fn size(&self) -> u32 {
        self.area.size
    }

    /// Requests consumed whose response has not been pushed yet.
    pub fn unanswered_requests(&self) -> u32 {
        // Never more than N: unconsumed_requests bounds what poll_request consumes.
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// The number of requests published by the front and not consumed yet (one read of
    /// `req_prod`). [`RingError::Overflow`] if `req_prod` is more than `N` ahead of the oldest
    /// unanswered request (hence also if it is more than `N` ahead of `req_cons`).
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        // Acquire: the front's slot writes before its Release store of req_prod are visible to
        // the slot reads that follow.
        let prod = self.area.index(REQ_PROD).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.req_cons);
        // Slots not holding a consumed-but-unanswered request.
        let room = self.area.size.saturating_sub(self.unanswered_requests());
        if avail > room {
            Err(RingError::Overflow)
        } else {
            Ok(avail)
        }
    }

    /// Takes the next request, if one has been published: copies it out of its slot once and
    /// returns the copy. [`RingError::Overflow`] if `req_prod` is impossible.
    pub fn poll_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = self.area.read::<Req>(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Copies `rsp` into the slot of the oldest unanswered request. It is not visible to the
    /// front until [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    ///
    /// Fails with [`RingError::Full`] if every consumed request has been answered already.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if self.unanswered_requests() == 0 {
            return Err(RingError::Full);
        }
        self.area.write(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses pushed so far and returns whether the front must be notified
    /// (its `rsp_event` was passed).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.rsp_prod_pub, self.rsp_prod_pvt);
        self.rsp_prod_pub = new;
        self.area.publish(RSP_PROD, RSP_EVENT, old, new)
    }

    /// Call when [`poll_request`](Self::poll_request) returned `None`, before waiting for a
    /// notification: asks the front to notify on its next request (`req_event = req_cons + 1`)
    /// and re-checks. `Ok(true)` means requests arrived meanwhile (poll again instead of
    /// waiting); `Ok(false)` means the back may wait, as it will be notified.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.area.arm(REQ_EVENT, self.req_cons);
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    /// Request and response types of different sizes, neither a multiple of 8 for the request:
    /// exercises the word and byte paths of the slot copies.
    type Req = [u8; 13];
    type Rsp = [u32; 3];
    const SLOT: usize = 16;

    fn req_of(seq: u64) -> Req {
        let mut r = [0u8; 13];
        r[..8].copy_from_slice(&seq.to_le_bytes());
        r[8..].copy_from_slice(&[0xa5, 0x5a, seq as u8, !(seq as u8), 0x77]);
        r
    }

    fn answer(req: &Req) -> Rsp {
        let lo = u32::from_le_bytes([req[0], req[1], req[2], req[3]]);
        let hi = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
        [!lo, hi ^ 0x1234_5678, u32::from(req[12])]
    }

    /// A heap buffer standing in for the shared area; after creation it is accessed only
    /// through `ptr`, and the test's own accesses (playing the peer) are atomic too.
    struct Buf {
        _mem: Vec<u64>,
        ptr: *mut u8,
        len: usize,
    }

    impl Buf {
        fn new(len: usize) -> Buf {
            let mut mem = std::vec![0u64; len.div_ceil(8)];
            let ptr = mem.as_mut_ptr().cast::<u8>();
            Buf {
                _mem: mem,
                ptr,
                len,
            }
        }

        fn with_slots(slots: usize) -> Buf {
            Buf::new(HEADER_SIZE + slots * SLOT)
        }

        fn front(&self, start: u32) -> FrontRing<Req, Rsp> {
            // SAFETY: the buffer is 8-aligned, lives as long as the test uses the ring (the
            // rings are dropped before `self`), and is accessed only atomically.
            unsafe { FrontRing::new_at(self.ptr, self.len, start) }.unwrap()
        }

        fn back(&self, start: u32) -> BackRing<Req, Rsp> {
            // SAFETY: as in `front`.
            unsafe { BackRing::new_at(self.ptr, self.len, start) }.unwrap()
        }

        fn byte(&self, off: usize) -> &AtomicU8 {
            assert!(off < self.len);
            // SAFETY: in bounds; the buffer is only accessed atomically.
            unsafe { AtomicU8::from_ptr(self.ptr.add(off)) }
        }

        fn get(&self, off: usize) -> u32 {
            assert!(off & 3 == 0 && off + 4 <= self.len);
            // SAFETY: in bounds and aligned; the buffer is only accessed atomically.
            unsafe { AtomicU32::from_ptr(self.ptr.add(off).cast::<u32>()) }.load(Ordering::SeqCst)
        }

        fn set(&self, off: usize, v: u32) {
            assert!(off & 3 == 0 && off + 4 <= self.len);
            // SAFETY: as in `get`.
            unsafe { AtomicU32::from_ptr(self.ptr.add(off).cast::<u32>()) }
                .store(v, Ordering::SeqCst)
        }

        fn slot_off(&self, n: u32, idx: u32) -> usize {
            HEADER_SIZE + (idx & (n - 1)) as usize * SLOT
        }

        fn read_slot<T: RingMessage>(&self, n: u32, idx: u32) -> T {
            let off = self.slot_off(n, idx);
            let mut v = T::new_zeroed();
            for (i, b) in v.as_mut_bytes().iter_mut().enumerate() {
                *b = self.byte(off + i).load(Ordering::SeqCst);
            }
            v
        }

        fn write_slot(&self, n: u32, idx: u32, bytes: &[u8; SLOT]) {
            let off = self.slot_off(n, idx);
            for (i, b) in bytes.iter().enumerate() {
                self.byte(off + i).store(*b, Ordering::SeqCst);
            }
        }

        fn fill(&self, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate().take(self.len) {
                self.byte(i).store(*b, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn layout_helpers() {
        assert_eq!(slot_size::<Req, Rsp>(), SLOT);
        assert_eq!(slot_size::<(), ()>(), 8);
        assert_eq!(slot_size::<u8, u64>(), 8);
        assert_eq!(slot_size::<[u64; 9], u8>(), 72);
        assert_eq!(ring_slots::<Req, Rsp>(0), 0);
        assert_eq!(ring_slots::<Req, Rsp>(HEADER_SIZE + SLOT - 1), 0);
        assert_eq!(ring_slots::<Req, Rsp>(HEADER_SIZE + SLOT), 1);
        assert_eq!(ring_slots::<Req, Rsp>(HEADER_SIZE + 7 * SLOT + 15), 4);
        assert_eq!(ring_slots::<Req, Rsp>(4096), 128);
        assert_eq!(ring_slots::<u64, u32>(4096), 256);
        assert_eq!(ring_slots::<[u64; 9], u8>(4 * 4096), 128);
        assert_eq!(ring_slots::<u8, u8>(usize::MAX), MAX_SLOTS);
    }

    #[test]
    fn need_notify_matches_xen() {
        // Consumer waiting for index 5 (event = cons + 1 = 5).
        assert!(need_notify(4, 5, 5));
        assert!(need_notify(4, 9, 5));
        assert!(!need_notify(5, 9, 5));
        assert!(!need_notify(3, 4, 5));
        assert!(!need_notify(7, 7, 7));
        // Across the wrap.
        assert!(need_notify(u32::MAX - 1, 2, 0));
        assert!(need_notify(u32::MAX, 0, 0));
        assert!(!need_notify(0, 3, u32::MAX));
    }

    #[test]
    fn bad_areas_are_refused() {
        let buf = Buf::new(4096);
        // SAFETY: the pointers stay inside the buffer, which outlives the attempts.
        unsafe {
            assert_eq!(
                FrontRing::<Req, Rsp>::new(buf.ptr.add(4), 4000).unwrap_err(),
                RingError::Misaligned
            );
            assert_eq!(
                BackRing::<Req, Rsp>::new(buf.ptr, HEADER_SIZE + SLOT - 1).unwrap_err(),
                RingError::TooSmall
            );
            assert_eq!(
                FrontRing::<Req, Rsp>::new(buf.ptr, 3).unwrap_err(),
                RingError::TooSmall
            );
        }
        // Misaligned/TooSmall did not write anything.
        assert!((0..4096).all(|i| buf.byte(i).load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn front_initialises_header_and_back_writes_nothing() {
        let buf = Buf::with_slots(4);
        buf.fill(&[0xff; HEADER_SIZE + 4 * SLOT]);
        let _back = buf.back(0);
        assert!((0..buf.len).all(|i| buf.byte(i).load(Ordering::SeqCst) == 0xff));
        let front = buf.front(0);
        assert_eq!(front.size(), 4);
        assert_eq!(buf.get(REQ_PROD), 0);
        assert_eq!(buf.get(REQ_EVENT), 1);
        assert_eq!(buf.get(RSP_PROD), 0);
        assert_eq!(buf.get(RSP_EVENT), 1);
        assert!((PAD..HEADER_SIZE).all(|i| buf.byte(i).load(Ordering::SeqCst) == 0));
        // The slots are untouched.
        assert!((HEADER_SIZE..buf.len).all(|i| buf.byte(i).load(Ordering::SeqCst) == 0xff));
        let _front = buf.front(u32::MAX);
        assert_eq!(buf.get(REQ_PROD), u32::MAX);
        assert_eq!(buf.get(REQ_EVENT), 0);
    }

    #[test]
    fn full_and_empty() {
        for n in [1u32, 2, 4, 8, 256] {
            let buf = Buf::with_slots(n as usize);
            let mut front = buf.front(0);
            let mut back = buf.back(0);
            assert_eq!(front.size(), n);
            assert_eq!(back.poll_request(), Ok(None));
            assert_eq!(front.poll_response(), Ok(None));
            assert_eq!(back.push_response(&[0; 3]), Err(RingError::Full));
            for i in 0..n {
                assert_eq!(front.free_requests(), n - i);
                front.push_request(&req_of(i.into())).unwrap();
            }
            assert_eq!(front.push_request(&req_of(99)), Err(RingError::Full));
            assert_eq!(front.free_requests(), 0);
            assert_eq!(front.pending_requests(), n);
            // Not published yet.
            assert_eq!(back.unconsumed_requests(), Ok(0));
            assert!(front.push_requests_and_check_notify());
            assert_eq!(back.unconsumed_requests(), Ok(n));
            for i in 0..n {
                assert_eq!(back.poll_request(), Ok(Some(req_of(i.into()))));
            }
            assert_eq!(back.poll_request(), Ok(None));
            assert_eq!(back.unanswered_requests(), n);
            for i in 0..n {
                back.push_response(&answer(&req_of(i.into()))).unwrap();
            }
            assert_eq!(back.push_response(&[0; 3]), Err(RingError::Full));
            // Still full for the front until it consumes a response.
            assert_eq!(front.push_request(&req_of(99)), Err(RingError::Full));
            assert!(back.push_responses_and_check_notify());
            assert_eq!(front.push_request(&req_of(99)), Err(RingError::Full));
            assert_eq!(front.poll_response(), Ok(Some(answer(&req_of(0)))));
            assert_eq!(front.free_requests(), 1);
            for i in 1..n {
                assert_eq!(front.poll_response(), Ok(Some(answer(&req_of(i.into())))));
            }
            assert_eq!(front.poll_response(), Ok(None));
            assert_eq!(front.pending_requests(), 0);
            assert_eq!(front.free_requests(), n);
        }
    }

    #[test]
    fn wraps_around_u32_max() {
        for n in [1u32, 4, 8] {
            for start in [u32::MAX - n, u32::MAX - n / 2, u32::MAX, u32::MAX - 3 * n] {
                let buf = Buf::with_slots(n as usize);
                let mut front = buf.front(start);
                let mut back = buf.back(start);
                let mut seq = 0u64;
                let mut expect = 0u64;
                for round in 0..6 * n {
                    let batch = 1 + round % n;
                    for _ in 0..batch {
                        front.push_request(&req_of(seq)).unwrap();
                        seq += 1;
                    }
                    front.push_requests_and_check_notify();
                    while let Some(req) = back.poll_request().unwrap() {
                        back.push_response(&answer(&req)).unwrap();
                    }
                    back.push_responses_and_check_notify();
                    while let Some(rsp) = front.poll_response().unwrap() {
                        assert_eq!(rsp, answer(&req_of(expect)));
                        expect += 1;
                    }
                    assert_eq!(expect, seq);
                }
                // The indices did cross u32::MAX.
                assert!(buf.get(REQ_PROD) < start);
            }
        }
    }

    #[test]
    fn notifications_are_suppressed_until_rearmed() {
        let buf = Buf::with_slots(8);
        let mut front = buf.front(u32::MAX - 2);
        let mut back = buf.back(u32::MAX - 2);
        // Nothing published: no notification.
        assert!(!front.push_requests_and_check_notify());
        // The back starts out waiting.
        front.push_request(&req_of(0)).unwrap();
        assert!(front.push_requests_and_check_notify());
        // The back has not re-armed: further requests need no notification.
        front.push_request(&req_of(1)).unwrap();
        front.push_request(&req_of(2)).unwrap();
        assert!(!front.push_requests_and_check_notify());
        assert_eq!(back.final_check_for_requests(), Ok(true));
        while back.poll_request().unwrap().is_some() {}
        assert_eq!(back.final_check_for_requests(), Ok(false));
        // req_cons + 1 = (u32::MAX - 2 + 3) + 1, wrapped.
        assert_eq!(buf.get(REQ_EVENT), 1);
        // A batch of three after re-arming: exactly one notification.
        for i in 3..6 {
            front.push_request(&req_of(i)).unwrap();
        }
        assert!(front.push_requests_and_check_notify());
        // Same on the response side.
        for _ in 0..6 {
            back.poll_request().unwrap();
        }
        back.push_response(&[1; 3]).unwrap();
        assert!(back.push_responses_and_check_notify());
        back.push_response(&[2; 3]).unwrap();
        assert!(!back.push_responses_and_check_notify());
        assert!(front.poll_response().unwrap().is_some());
        assert_eq!(front.final_check_for_responses(), Ok(true));
        assert!(front.poll_response().unwrap().is_some());
        assert_eq!(front.final_check_for_responses(), Ok(false));
        back.push_response(&[3; 3]).unwrap();
        assert!(back.push_responses_and_check_notify());
    }

    #[test]
    fn bigger_messages_over_several_pages() {
        type Big = [u64; 9];
        let len = 4 * 4096;
        let mut mem = std::vec![0u64; len / 8];
        let ptr = mem.as_mut_ptr().cast::<u8>();
        // SAFETY: `mem` is 8-aligned, outlives the rings and is only accessed through them.
        let mut front = unsafe { FrontRing::<Big, u8>::new(ptr, len) }.unwrap();
        // SAFETY: as above.
        let mut back = unsafe { BackRing::<Big, u8>::new(ptr, len) }.unwrap();
        assert_eq!(front.size(), 128);
        for round in 0..3u64 {
            for i in 0..128u64 {
                front.push_request(&[round * 1000 + i; 9]).unwrap();
            }
            front.push_requests_and_check_notify();
            for i in 0..128u64 {
                let req = back.poll_request().unwrap().unwrap();
                assert_eq!(req, [round * 1000 + i; 9]);
                back.push_response(&(req[0] as u8)).unwrap();
            }
            back.push_responses_and_check_notify();
            for i in 0..128u64 {
                assert_eq!(front.poll_response(), Ok(Some((round * 1000 + i) as u8)));
            }
        }
    }

    /// Waits for a simulated event channel, failing (rather than hanging) on a lost wakeup.
    fn wait(flag: &AtomicBool) {
        let t = Instant::now();
        while !flag.swap(false, Ordering::AcqRel) {
            assert!(t.elapsed() < Duration::from_secs(30), "lost wakeup");
            std::thread::yield_now();
        }
    }

    #[test]
    fn two_threads_with_notifications() {
        const COUNT: u64 = 20_000;
        let buf = Buf::with_slots(8);
        let start = u32::MAX - 1000;
        let mut front = buf.front(start);
        let mut back = buf.back(start);
        let req_evt = AtomicBool::new(false);
        let rsp_evt = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (req_evt, rsp_evt) = (&req_evt, &rsp_evt);
            s.spawn(move || {
                let mut served = 0;
                while served < COUNT {
                    while let Some(req) = back.poll_request().unwrap() {
                        back.push_response(&answer(&req)).unwrap();
                        served += 1;
                    }
                    if back.push_responses_and_check_notify() {
                        rsp_evt.store(true, Ordering::Release);
                    }
                    if served < COUNT && !back.final_check_for_requests().unwrap() {
                        wait(req_evt);
                    }
                }
            });
            let (mut sent, mut got) = (0, 0);
            while got < COUNT {
                while sent < COUNT && front.free_requests() > 0 {
                    front.push_request(&req_of(sent)).unwrap();
                    sent += 1;
                }
                if front.push_requests_and_check_notify() {
                    req_evt.store(true, Ordering::Release);
                }
                while let Some(rsp) = front.poll_response().unwrap() {
                    assert_eq!(rsp, answer(&req_of(got)));
                    got += 1;
                }
                if front.pending_requests() > 0 && !front.final_check_for_responses().unwrap() {
                    wait(rsp_evt);
                }
            }
        });
    }

    // ---- Model-based round trips ----

    #[derive(Clone, Debug)]
    enum Op {
        FrontPush(u64),
        FrontPublish,
        FrontPoll,
        FrontFinal,
        BackPoll,
        BackPush,
        BackPublish,
        BackFinal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u64>().prop_map(Op::FrontPush),
            2 => Just(Op::FrontPublish),
            2 => Just(Op::FrontPoll),
            1 => Just(Op::FrontFinal),
            3 => Just(Op::BackPoll),
            3 => Just(Op::BackPush),
            2 => Just(Op::BackPublish),
            1 => Just(Op::BackFinal),
        ]
    }

    fn start_index() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), (u32::MAX - 40)..=u32::MAX, any::<u32>(),]
    }

    /// What an honest pair of ends should do.
    struct Model {
        n: u32,
        req_unpublished: VecDeque<Req>,
        req_published: VecDeque<Req>,
        /// Requests the back consumed, oldest first (it answers them in order).
        unanswered: VecDeque<Req>,
        rsp_unpublished: VecDeque<Rsp>,
        rsp_published: VecDeque<Rsp>,
        /// The back is waiting for a notification (its req_event is past req_prod).
        back_waiting: bool,
        /// The front is waiting for a notification.
        front_waiting: bool,
    }

    impl Model {
        fn outstanding(&self) -> usize {
            self.req_unpublished.len()
                + self.req_published.len()
                + self.unanswered.len()
                + self.rsp_unpublished.len()
                + self.rsp_published.len()
        }
    }

    fn run_model(slots: usize, start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
        let buf = Buf::with_slots(slots);
        let mut front = buf.front(start);
        let mut back = buf.back(start);
        let n = front.size();
        prop_assert_eq!(n, 1 << (usize::BITS - 1 - slots.leading_zeros()));
        let mut m = Model {
            n,
            req_unpublished: VecDeque::new(),
            req_published: VecDeque::new(),
            unanswered: VecDeque::new(),
            rsp_unpublished: VecDeque::new(),
            rsp_published: VecDeque::new(),
            back_waiting: true,
            front_waiting: true,
        };
        for op in ops {
            match *op {
                Op::FrontPush(seq) => {
                    let r = front.push_request(&req_of(seq));
                    if m.outstanding() == m.n as usize {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        m.req_unpublished.push_back(req_of(seq));
                    }
                }
                Op::FrontPublish => {
                    let notify = front.push_requests_and_check_notify();
                    let any = !m.req_unpublished.is_empty();
                    prop_assert_eq!(notify, any && m.back_waiting);
                    if any {
                        m.back_waiting = false;
                    }
                    m.req_published.append(&mut m.req_unpublished);
                }
                Op::FrontPoll => {
                    prop_assert_eq!(front.poll_response(), Ok(m.rsp_published.pop_front()));
                }
                Op::FrontFinal => {
                    let more = front.final_check_for_responses();
                    prop_assert_eq!(more, Ok(!m.rsp_published.is_empty()));
                    m.front_waiting = m.rsp_published.is_empty();
                }
                Op::BackPoll => {
                    let expect = m.req_published.pop_front();
                    prop_assert_eq!(back.poll_request(), Ok(expect));
                    if let Some(req) = expect {
                        m.unanswered.push_back(req);
                    }
                }
                Op::BackPush => match m.unanswered.pop_front() {
                    None => prop_assert_eq!(back.push_response(&[7; 3]), Err(RingError::Full)),
                    Some(req) => {
                        prop_assert_eq!(back.push_response(&answer(&req)), Ok(()));
                        m.rsp_unpublished.push_back(answer(&req));
                    }
                },
                Op::BackPublish => {
                    let notify = back.push_responses_and_check_notify();
                    let any = !m.rsp_unpublished.is_empty();
                    prop_assert_eq!(notify, any && m.front_waiting);
                    if any {
                        m.front_waiting = false;
                    }
                    m.rsp_published.append(&mut m.rsp_unpublished);
                }
                Op::BackFinal => {
                    let more = back.final_check_for_requests();
                    prop_assert_eq!(more, Ok(!m.req_published.is_empty()));
                    m.back_waiting = m.req_published.is_empty();
                }
            }
            let outstanding = m.outstanding() as u32;
            prop_assert_eq!(front.pending_requests(), outstanding);
            prop_assert_eq!(front.free_requests(), m.n - outstanding);
            prop_assert_eq!(back.unanswered_requests(), m.unanswered.len() as u32);
            prop_assert_eq!(back.unconsumed_requests(), Ok(m.req_published.len() as u32));
            prop_assert_eq!(
                front.unconsumed_responses(),
                Ok(m.rsp_published.len() as u32)
            );
        }
        Ok(())
    }

    // ---- A hostile peer ----

    /// A value the hostile peer writes into its producer index: relative to our consumer
    /// index (mostly plausible values, around the limits) or anything at all.
    #[derive(Clone, Debug)]
    enum Val {
        Rel(i32),
        Abs(u32),
    }

    impl Val {
        fn resolve(&self, cons: u32) -> u32 {
            match *self {
                Val::Rel(d) => cons.wrapping_add(d as u32),
                Val::Abs(v) => v,
            }
        }
    }

    #[derive(Clone, Debug)]
    enum HOp {
        Push(u64),
        Publish,
        Poll,
        Final,
        /// The peer writes its producer index.
        PeerProd(Val),
        /// The peer writes its event index.
        PeerEvent(u32),
        /// The peer scribbles over our producer (true) or event (false) index.
        OwnField(bool, u32),
        /// The peer scribbles over a slot.
        Slot(u8, [u8; SLOT]),
    }

    fn hop() -> impl Strategy<Value = HOp> {
        prop_oneof![
            3 => any::<u64>().prop_map(HOp::Push),
            2 => Just(HOp::Publish),
            3 => Just(HOp::Poll),
            1 => Just(HOp::Final),
            3 => prop_oneof![
                3 => (-3i32..12).prop_map(Val::Rel),
                1 => any::<u32>().prop_map(Val::Abs),
            ]
            .prop_map(HOp::PeerProd),
            1 => any::<u32>().prop_map(HOp::PeerEvent),
            1 => (any::<bool>(), any::<u32>()).prop_map(|(p, v)| HOp::OwnField(p, v)),
            1 => (any::<u8>(), any::<[u8; SLOT]>()).prop_map(|(i, b)| HOp::Slot(i, b)),
        ]
    }

    /// A real front end against a back end played by the test with raw writes.
    fn run_hostile_back(slots: usize, start: u32, ops: &[HOp]) -> Result<(), TestCaseError> {
        let buf = Buf::with_slots(slots);
        let mut front = buf.front(start);
        let n = front.size();
        let (mut pvt, mut published, mut cons) = (start, start, start);
        for op in ops {
            match op {
                HOp::Push(seq) => {
                    let r = front.push_request(&req_of(*seq));
                    if pvt.wrapping_sub(cons) == n {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        prop_assert_eq!(buf.read_slot::<Req>(n, pvt), req_of(*seq));
                        pvt = pvt.wrapping_add(1);
                    }
                }
                HOp::Publish => {
                    let event = buf.get(REQ_EVENT);
                    let notify = front.push_requests_and_check_notify();
                    prop_assert_eq!(notify, need_notify(published, pvt, event));
                    prop_assert_eq!(buf.get(REQ_PROD), pvt);
                    published = pvt;
                }
                HOp::Poll | HOp::Final => {
                    let prod = buf.get(RSP_PROD);
                    let event = buf.get(RSP_EVENT);
                    let avail = prod.wrapping_sub(cons);
                    let impossible = avail > published.wrapping_sub(cons);
                    if matches!(op, HOp::Poll) {
                        let r = front.poll_response();
                        if impossible {
                            prop_assert_eq!(r, Err(RingError::Overflow));
                        } else if avail == 0 {
                            prop_assert_eq!(r, Ok(None));
                        } else {
                            prop_assert_eq!(r, Ok(Some(buf.read_slot::<Rsp>(n, cons))));
                            cons = cons.wrapping_add(1);
                        }
                    } else {
                        let r = front.final_check_for_responses();
                        if impossible {
                            prop_assert_eq!(r, Err(RingError::Overflow));
                            prop_assert_eq!(buf.get(RSP_EVENT), event);
                        } else if avail > 0 {
                            prop_assert_eq!(r, Ok(true));
                            prop_assert_eq!(buf.get(RSP_EVENT), event);
                        } else {
                            prop_assert_eq!(r, Ok(false));
                            prop_assert_eq!(buf.get(RSP_EVENT), cons.wrapping_add(1));
                        }
                    }
                }
                HOp::PeerProd(v) => buf.set(RSP_PROD, v.resolve(cons)),
                HOp::PeerEvent(v) => buf.set(REQ_EVENT, *v),
                HOp::OwnField(prod, v) => buf.set(if *prod { REQ_PROD } else { RSP_EVENT }, *v),
                HOp::Slot(i, bytes) => buf.write_slot(n, u32::from(*i), bytes),
            }
            prop_assert_eq!(front.pending_requests(), pvt.wrapping_sub(cons));
            prop_assert!(front.pending_requests() <= n);
            prop_assert_eq!(front.free_requests(), n - pvt.wrapping_sub(cons));
        }
        Ok(())
    }

    /// A real back end against a front end played by the test with raw writes.
    fn run_hostile_front(slots: usize, start: u32, ops: &[HOp]) -> Result<(), TestCaseError> {
        let buf = Buf::with_slots(slots);
        // Initialise the header as a front would, then play the front by hand.
        let _ = buf.front(start);
        let mut back = buf.back(start);
        let n = back.size();
        let (mut cons, mut pvt, mut published) = (start, start, start);
        for op in ops {
            match op {
                HOp::Push(seq) => {
                    let rsp = answer(&req_of(*seq));
                    let r = back.push_response(&rsp);
                    if cons == pvt {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        prop_assert_eq!(buf.read_slot::<Rsp>(n, pvt), rsp);
                        pvt = pvt.wrapping_add(1);
                    }
                }
                HOp::Publish => {
                    let event = buf.get(RSP_EVENT);
                    let notify = back.push_responses_and_check_notify();
                    prop_assert_eq!(notify, need_notify(published, pvt, event));
                    prop_assert_eq!(buf.get(RSP_PROD), pvt);
                    published = pvt;
                }
                HOp::Poll | HOp::Final => {
                    let prod = buf.get(REQ_PROD);
                    let event = buf.get(REQ_EVENT);
                    let avail = prod.wrapping_sub(cons);
                    let impossible = avail > n - cons.wrapping_sub(pvt);
                    // The brief's minimal rule is always caught.
                    prop_assert!(impossible || avail <= n);
                    if matches!(op, HOp::Poll) {
                        let r = back.poll_request();
                        if impossible {
                            prop_assert_eq!(r, Err(RingError::Overflow));
                        } else if avail == 0 {
                            prop_assert_eq!(r, Ok(None));
                        } else {
                            prop_assert_eq!(r, Ok(Some(buf.read_slot::<Req>(n, cons))));
                            cons = cons.wrapping_add(1);
                        }
                    } else {
                        let r = back.final_check_for_requests();
                        if impossible {
                            prop_assert_eq!(r, Err(RingError::Overflow));
                            prop_assert_eq!(buf.get(REQ_EVENT), event);
                        } else if avail > 0 {
                            prop_assert_eq!(r, Ok(true));
                            prop_assert_eq!(buf.get(REQ_EVENT), event);
                        } else {
                            prop_assert_eq!(r, Ok(false));
                            prop_assert_eq!(buf.get(REQ_EVENT), cons.wrapping_add(1));
                        }
                    }
                }
                HOp::PeerProd(v) => buf.set(REQ_PROD, v.resolve(cons)),
                HOp::PeerEvent(v) => buf.set(RSP_EVENT, *v),
                HOp::OwnField(prod, v) => buf.set(if *prod { RSP_PROD } else { REQ_EVENT }, *v),
                HOp::Slot(i, bytes) => buf.write_slot(n, u32::from(*i), bytes),
            }
            prop_assert_eq!(back.unanswered_requests(), cons.wrapping_sub(pvt));
            prop_assert!(back.unanswered_requests() <= n);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn model_round_trips(
            slots in 1usize..20,
            start in start_index(),
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            run_model(slots, start, &ops)?;
        }

        #[test]
        fn hostile_back_is_detected(
            slots in 1usize..10,
            start in start_index(),
            ops in proptest::collection::vec(hop(), 0..200),
        ) {
            run_hostile_back(slots, start, &ops)?;
        }

        #[test]
        fn hostile_front_is_detected(
            slots in 1usize..10,
            start in start_index(),
            ops in proptest::collection::vec(hop(), 0..200),
        ) {
            run_hostile_front(slots, start, &ops)?;
        }

        /// Both ends on an area full of garbage that keeps changing: nothing panics and the
        /// private counts stay within the ring.
        #[test]
        fn garbage_never_panics(
            slots in 1usize..10,
            start in any::<u32>(),
            garbage in proptest::collection::vec(any::<u8>(), HEADER_SIZE + 9 * SLOT),
            ops in proptest::collection::vec((0u8..10, any::<u32>(), 0usize..4), 0..200),
        ) {
            let buf = Buf::with_slots(slots);
            let mut front = buf.front(start);
            let mut back = buf.back(start.wrapping_add(garbage[0].into()));
            buf.fill(&garbage);
            let n = front.size();
            for (what, value, field) in ops {
                match what {
                    0 => { let _ = front.push_request(&req_of(value.into())); }
                    1 => { front.push_requests_and_check_notify(); }
                    2 => { let _ = front.poll_response(); }
                    3 => { let _ = front.final_check_for_responses(); }
                    4 => { let _ = back.poll_request(); }
                    5 => { let _ = back.push_response(&[value; 3]); }
                    6 => { back.push_responses_and_check_notify(); }
                    7 => { let _ = back.final_check_for_requests(); }
                    _ => buf.set(field * 4, value),
                }
                prop_assert!(front.pending_requests() <= n);
                prop_assert!(back.unanswered_requests() <= n);
                let _ = front.unconsumed_responses();
                let _ = back.unconsumed_requests();
            }
        }
    }
}
