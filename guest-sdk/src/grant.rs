//! Grant tables: share pages with other domains, and use the pages they share with us.
//!
//! **Granting.** The SDK owns this domain's grant table: on first use it allocates a page from
//! the heap for [`TABLE_ENTRIES`] entries and registers it (`grant_op(set_table)`). A grant
//! gives one named domain access to one page of our RAM, read-only or read-write:
//! [`grant_access`] fills a free entry and returns its reference, which the other domain learns
//! from us (through the [`store`](crate::store), typically). [`end_access`] withdraws it (the
//! hypervisor refuses with `EBUSY` while the grantee has it mapped); [`revoke`] withdraws it
//! even then, unmapping it from the grantee.
//!
//! **Using a grant.** [`map`] maps a page another domain granted us into a free page of our
//! grant window (StartInfo's `grant_window_gpa` and `grant_window_pages`) and returns a
//! [`Mapping`], which unmaps it when dropped. [`copy`] has the hypervisor copy between granted
//! pages and our memory instead, in batches; [`copy_from_grant`] and [`copy_to_grant`] are its
//! safe one-buffer forms.
//!
//! Shared pages can change under the program at any time (the other domain writes them
//! concurrently), so they are accessed through raw pointers with atomic or volatile operations
//! ([`hypercall_abi::ring`] does this for rings), never through Rust references.
//!
//! ```no_run
//! use guest_sdk::{grant, heap::Pages};
//!
//! let page = Pages::zeroed(1).unwrap();
//! // SAFETY: the page is only accessed through raw pointers while granted, and is not freed
//! // before the grant ends.
//! let gref = unsafe { grant::grant_access(page.gpa(), 2, false) }.unwrap();
//! // ... domain 2 maps it (grant::map(1, gref, false)) and uses it ...
//! grant::end_access(gref).unwrap();
//! ```
//!
//! All functions may be called from event handlers (the SDK's state is behind an
//! [`IrqMutex`]).

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use hypercall_abi::grant::{
    self as ops, COPY_DST_GREF, COPY_SRC_GREF, GTF_PERMIT_ACCESS, GTF_READONLY, MAP_READONLY,
    MAX_COPY_OPS,
};
pub use hypercall_abi::grant::{CopyPtr, GrantCopy, GrantEntry, GrantRef};
use hypercall_abi::{hypercall as nr, DomId, Errno, PAGE_SIZE};

use crate::heap::Pages;
use crate::sync::IrqMutex;
use crate::{Error, Result};

/// Entries in the SDK's grant table: the most the ABI allows, [`TABLE_PAGES`] pages of
/// [`GrantEntry`]s (enough to grant a 1 MiB block request and its ring at once).
pub const TABLE_ENTRIES: u32 = ops::MAX_GRANT_ENTRIES as u32;
/// Pages the SDK's grant table takes.
pub const TABLE_PAGES: usize =
    (TABLE_ENTRIES as u64 * core::mem::size_of::<GrantEntry>() as u64).div_ceil(PAGE_SIZE) as usize;
/// The most grant-window pages the SDK manages (the window's first ones, if it is larger).
pub const MAX_WINDOW_PAGES: u32 = 1024;

const TABLE_WORDS: usize = TABLE_ENTRIES.div_ceil(64) as usize;
const WINDOW_WORDS: usize = MAX_WINDOW_PAGES.div_ceil(64) as usize;

/// `grant_op(cmd, a1, a2, a3, a4)`.
///
/// # Safety
///
/// As for [`crate::hypercall`]: the caller vouches for what the command does with its
/// arguments (which memory `copy` writes, in particular).
unsafe fn grant_op(cmd: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> Result<u64> {
    // SAFETY: the caller's contract.
    Error::check(unsafe { crate::hypercall(nr::GRANT_OP, cmd, a1, a2, a3, a4) })
}

/// Takes the lowest clear bit below `limit` of a bitmap, sets it and returns its index.
fn take_bit(bits: &mut [u64], limit: u32) -> Option<u32> {
    for (w, word) in bits.iter_mut().enumerate() {
        let free = !*word;
        if free == 0 {
            continue;
        }
        let i = w as u32 * 64 + free.trailing_zeros();
        if i >= limit {
            return None;
        }
        *word |= 1 << (i % 64);
        return Some(i);
    }
    None
}

/// Clears bit `i`; returns whether it was set.
fn put_bit(bits: &mut [u64], i: u32) -> bool {
    let Some(word) = bits.get_mut(i as usize / 64) else {
        return false;
    };
    let mask = 1u64 << (i % 64);
    let was = *word & mask != 0;
    *word &= !mask;
    was
}

fn is_set(bits: &[u64], i: u32) -> bool {
    bits.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Writes a grant entry the way the ABI asks: `domid`, `reserved` and `frame` first, then the
/// flags with release ordering, so the hypervisor never sees the flags with stale fields.
///
/// # Safety
///
/// `entry` must point to a live, 8-byte aligned [`GrantEntry`] that is only accessed atomically.
unsafe fn write_entry(entry: *mut GrantEntry, domid: DomId, frame: u64, flags: u16) {
    // SAFETY: the caller's contract; each field is naturally aligned in the 16-byte entry
    // (offsets 0, 2, 4, 8) and accessed only atomically.
    let (f, d, r, fr) = unsafe {
        (
            AtomicU16::from_ptr(core::ptr::addr_of_mut!((*entry).flags)),
            AtomicU16::from_ptr(core::ptr::addr_of_mut!((*entry).domid)),
            AtomicU32::from_ptr(core::ptr::addr_of_mut!((*entry).reserved)),
            AtomicU64::from_ptr(core::ptr::addr_of_mut!((*entry).frame)),
        )
    };
    d.store(domid, Ordering::Relaxed);
    r.store(0, Ordering::Relaxed);
    fr.store(frame, Ordering::Relaxed);
    f.store(flags, Ordering::Release);
}

/// The SDK's grant table: its page (once registered) and which references are in use.
struct Table {
    page: Option<Pages>,
    used: [u64; TABLE_WORDS],
}

static TABLE: IrqMutex<Table> = IrqMutex::new(Table {
    page: None,
    used: [0; TABLE_WORDS],
});

impl Table {
    /// The entries, allocating and registering the table on first use.
    fn entries(&mut self) -> Result<*mut GrantEntry> {
        if self.page.is_none() {
            let page = Pages::zeroed(TABLE_PAGES)?;
            // SAFETY: set_table only records the (page-aligned, zeroed, heap-owned) page as our
            // table; the page is kept in `self.page` for the rest of the domain's life, and its
            // entries are only accessed atomically (`write_entry`).
            unsafe { grant_op(ops::SET_TABLE, page.gpa(), u64::from(TABLE_ENTRIES), 0, 0)? };
            self.page = Some(page);
        }
        Ok(self
            .page
            .as_ref()
            .map_or(core::ptr::null_mut(), |p| p.as_ptr().cast()))
    }

    fn check_owned(&self, gref: GrantRef) -> Result<()> {
        if self.page.is_some() && is_set(&self.used, gref) {
            Ok(())
        } else {
            Err(Error::Errno(Errno::EINVAL))
        }
    }
}

/// Grants domain `domid` access to the page at guest-physical address `frame_gpa` (page-aligned,
/// in our RAM), read-only if `readonly`; returns the grant reference to give that domain.
///
/// Allocates and registers the SDK's grant table on first use. `EINVAL` if `frame_gpa` is not
/// page-aligned; `ENOSPC` if all [`TABLE_ENTRIES`] references are in use; `ENOMEM` if the
/// table cannot be allocated. (The hypervisor checks the frame when the grant is used.)
///
/// # Safety
///
/// Until the grant ends ([`end_access`] succeeds or [`revoke`] returns), domain `domid` may
/// read the page and, unless `readonly`, write it, concurrently with this program. The caller
/// must make sure that this cannot break memory safety: the page must not hold Rust objects
/// accessed through references (use a [`Pages`] buffer accessed through raw pointers with
/// atomic or volatile operations), and must not be freed or reused before the grant ends.
///
/// ```no_run
/// use guest_sdk::{grant, heap::Pages};
/// let page = Pages::zeroed(1).unwrap();
/// // SAFETY: `page` is accessed only atomically and outlives the grant.
/// let gref = unsafe { grant::grant_access(page.gpa(), 2, true) }.unwrap();
/// # let _ = gref;
/// ```
pub unsafe fn grant_access(frame_gpa: u64, domid: DomId, readonly: bool) -> Result<GrantRef> {
    if !frame_gpa.is_multiple_of(PAGE_SIZE) {
        return Err(Error::Errno(Errno::EINVAL));
    }
    let mut t = TABLE.lock();
    let entries = t.entries()?;
    let gref = take_bit(&mut t.used, TABLE_ENTRIES).ok_or(Error::Errno(Errno::ENOSPC))?;
    let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
    // SAFETY: `gref < TABLE_ENTRIES`, so the entry is inside the registered table page, which
    // is 16-byte aligned and only accessed atomically.
    unsafe { write_entry(entries.add(gref as usize), domid, frame_gpa, flags) };
    Ok(gref)
}

/// Ends grant `gref` (`grant_op(end_access)`): the hypervisor clears the entry, and the
/// reference is free for reuse. `EBUSY` while the grantee has the page mapped (the grant stays
/// in force: ask the grantee to unmap, or [`revoke`]); `EINVAL` for a reference this SDK did
/// not hand out.
///
/// ```no_run
/// # let gref = 0;
/// guest_sdk::grant::end_access(gref).unwrap();
/// ```
pub fn end_access(gref: GrantRef) -> Result<()> {
    let mut t = TABLE.lock();
    t.check_owned(gref)?;
    // SAFETY: end_access only clears the flags of an entry of our registered table.
    unsafe { grant_op(ops::END_ACCESS, u64::from(gref), 0, 0, 0)? };
    put_bit(&mut t.used, gref);
    Ok(())
}

/// Revokes grant `gref` even if it is mapped (`grant_op(revoke)`): every mapping of it is
/// removed from the grantees' windows (their accesses then fault), the entry is cleared and the
/// reference is free for reuse. Returns the number of mappings removed. `EINVAL` for a
/// reference this SDK did not hand out.
///
/// ```no_run
/// # let gref = 0;
/// let removed = guest_sdk::grant::revoke(gref).unwrap();
/// guest_sdk::println!("{removed} mapping(s) removed");
/// ```
pub fn revoke(gref: GrantRef) -> Result<u64> {
    let mut t = TABLE.lock();
    t.check_owned(gref)?;
    // SAFETY: revoke only clears the flags of an entry of our registered table and changes
    // other domains' windows.
    let n = unsafe { grant_op(ops::REVOKE, u64::from(gref), 0, 0, 0)? };
    put_bit(&mut t.used, gref);
    Ok(n)
}

/// Grant references currently handed out by [`grant_access`] and not yet ended.
///
/// ```no_run
/// assert_eq!(guest_sdk::grant::active_grants(), 0);
/// ```
pub fn active_grants() -> u32 {
    TABLE.lock().used.iter().map(|w| w.count_ones()).sum()
}

/// Which grant-window pages are in use.
static WINDOW: IrqMutex<[u64; WINDOW_WORDS]> = IrqMutex::new([0; WINDOW_WORDS]);

/// A page another domain granted us, mapped in our grant window by [`map`]. Unmapped when
/// dropped (errors ignored), or explicitly with [`unmap`](Mapping::unmap).
///
/// The page is shared with the granter, which can write it at any time and can revoke the
/// grant (the page then faults on access): use it through raw pointers with atomic or volatile
/// operations, never through Rust references.
#[derive(Debug)]
pub struct Mapping {
    gpa: u64,
    slot: u32,
    domid: DomId,
    gref: GrantRef,
    readonly: bool,
}

impl Mapping {
    /// The address of the mapped page (guest-virtual = guest-physical, in the grant window).
    pub fn addr(&self) -> u64 {
        self.gpa
    }

    /// The mapped page, as a raw pointer (4096 bytes; writable unless mapped read-only).
    pub fn as_ptr(&self) -> *mut u8 {
        self.gpa as *mut u8
    }

    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The grant reference.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }

    /// Whether the page is mapped read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Unmaps the page (`grant_op(unmap)`) and frees its window page.
    ///
    /// ```no_run
    /// let m = guest_sdk::grant::map(1, 0, true).unwrap();
    /// m.unmap().unwrap();
    /// ```
    pub fn unmap(self) -> Result<()> {
        let r = self.release();
        core::mem::forget(self);
        r
    }

    fn release(&self) -> Result<()> {
        // SAFETY: unmap only changes our grant window, which no Rust object lives in; the
        // Mapping, which handed out the only pointers to this page, is going away.
        let r = unsafe { grant_op(ops::UNMAP, self.gpa, 0, 0, 0) };
        // Whatever the answer, nothing of ours is mapped at that page any more.
        put_bit(&mut *WINDOW.lock(), self.slot);
        r.map(drop)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Maps page `gref` granted by domain `domid` (`grant_op(map)`) at a free page of our grant
/// window, read-only if `readonly`. `ENOSPC` if the window is full; `ENOSYS` before the
/// runtime is set up; and the hypervisor's errors: `ESRCH` (no such domain), `EINVAL` (bad
/// reference or entry), `ENOENT` (not granted), `EACCES` (granted to another domain, or a
/// read-write map of a read-only grant).
///
/// ```no_run
/// let m = guest_sdk::grant::map(1, 0, false).unwrap();
/// // SAFETY: the page is mapped while `m` lives; a volatile read takes whatever the granter
/// // wrote.
/// let first = unsafe { core::ptr::read_volatile(m.as_ptr()) };
/// # let _ = first;
/// ```
pub fn map(domid: DomId, gref: GrantRef, readonly: bool) -> Result<Mapping> {
    let si = crate::start_info().ok_or(Error::Errno(Errno::ENOSYS))?;
    let pages = si.grant_window_pages.min(MAX_WINDOW_PAGES);
    let slot = take_bit(&mut *WINDOW.lock(), pages).ok_or(Error::Errno(Errno::ENOSPC))?;
    let gpa = si.grant_window_gpa + u64::from(slot) * PAGE_SIZE;
    let flags = if readonly { MAP_READONLY } else { 0 };
    // SAFETY: map only places another domain's page in our grant window, at a page no Rust
    // object lives in and no other Mapping uses (the slot was free).
    let r = unsafe { grant_op(ops::MAP, u64::from(domid), u64::from(gref), gpa, flags) };
    match r {
        Ok(_) => Ok(Mapping {
            gpa,
            slot,
            domid,
            gref,
            readonly,
        }),
        Err(e) => {
            put_bit(&mut *WINDOW.lock(), slot);
            Err(e)
        }
    }
}

/// Unmaps `m` (the same as [`Mapping::unmap`]).
///
/// ```no_run
/// let m = guest_sdk::grant::map(1, 0, true).unwrap();
/// guest_sdk::grant::unmap(m).unwrap();
/// ```
pub fn unmap(m: Mapping) -> Result<()> {
    m.unmap()
}

/// Has the hypervisor perform the copies in `ops` (`grant_op(copy)`, in batches of
/// [`MAX_COPY_OPS`]), writing each element's `status` (0 or `-errno`). Returns the error of the
/// call if one failed as a whole, else the first element's error, else `Ok`.
///
/// # Safety
///
/// For every element, each side without its `COPY_*_GREF` flag names our own memory by
/// guest-physical address: a source must be valid for reads of `len` bytes and a destination
/// valid for writes of `len` bytes with nothing else accessing it meanwhile (not a live Rust
/// reference's target, unless it is a `&mut [u8]` the caller owns). Prefer
/// [`copy_from_grant`] and [`copy_to_grant`], which build the element from a slice.
///
/// ```no_run
/// use guest_sdk::grant::{self, CopyPtr, GrantCopy};
/// use guest_sdk::abi::grant::COPY_SRC_GREF;
/// let mut buf = [0u8; 64];
/// let mut ops = [GrantCopy {
///     src: CopyPtr { addr: 0, gref: 3, domid: 1, pad: 0 },
///     dst: CopyPtr { addr: buf.as_mut_ptr() as u64, ..Default::default() },
///     len: 64,
///     flags: COPY_SRC_GREF,
///     ..Default::default()
/// }];
/// // SAFETY: the destination is `buf`, owned here and not otherwise accessed meanwhile.
/// unsafe { grant::copy(&mut ops) }.unwrap();
/// ```
pub unsafe fn copy(ops: &mut [GrantCopy]) -> Result<()> {
    for chunk in ops.chunks_mut(MAX_COPY_OPS as usize) {
        // SAFETY: the array is ours (the hv writes its status fields); the caller vouches for
        // the memory each element names.
        unsafe {
            grant_op(
                ops::COPY,
                chunk.as_mut_ptr() as u64,
                chunk.len() as u64,
                0,
                0,
            )?
        };
    }
    for op in ops.iter() {
        Error::check(op.status)?;
    }
    Ok(())
}

/// Copies `buf.len()` bytes (1..=4096) from offset `offset` of page `gref` granted by `domid`
/// into `buf`, through the hypervisor (no mapping needed). Errors as [`copy`]'s elements.
///
/// ```no_run
/// let mut header = [0u8; 64];
/// guest_sdk::grant::copy_from_grant(1, 3, 0, &mut header).unwrap();
/// ```
pub fn copy_from_grant(domid: DomId, gref: GrantRef, offset: u64, buf: &mut [u8]) -> Result<()> {
    let mut op = [GrantCopy {
        src: CopyPtr {
            addr: offset,
            gref,
            domid,
            pad: 0,
        },
        dst: CopyPtr {
            addr: buf.as_mut_ptr() as u64,
            ..CopyPtr::default()
        },
        len: u32::try_from(buf.len()).map_err(|_| Error::Errno(Errno::EINVAL))?,
        flags: COPY_SRC_GREF,
        ..GrantCopy::default()
    }];
    // SAFETY: the only own memory named is `buf`, exclusively borrowed for the call.
    unsafe { copy(&mut op) }
}

/// Copies `buf` (1..=4096 bytes) to offset `offset` of page `gref` granted (read-write) by
/// `domid`, through the hypervisor. Errors as [`copy`]'s elements.
///
/// ```no_run
/// guest_sdk::grant::copy_to_grant(1, 3, 128, b"hello").unwrap();
/// ```
pub fn copy_to_grant(domid: DomId, gref: GrantRef, offset: u64, buf: &[u8]) -> Result<()> {
    let mut op = [GrantCopy {
        src: CopyPtr {
            addr: buf.as_ptr() as u64,
            ..CopyPtr::default()
        },
        dst: CopyPtr {
            addr: offset,
            gref,
            domid,
            pad: 0,
        },
        len: u32::try_from(buf.len()).map_err(|_| Error::Errno(Errno::EINVAL))?,
        flags: COPY_DST_GREF,
        ..GrantCopy::default()
    }];
    // SAFETY: the only own memory named is `buf`, which the hv only reads.
    unsafe { copy(&mut op) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_takes_lowest_free_and_respects_limit() {
        let mut bits = [0u64; 2];
        assert_eq!(take_bit(&mut bits, 70), Some(0));
        assert_eq!(take_bit(&mut bits, 70), Some(1));
        assert!(put_bit(&mut bits, 0));
        assert!(!put_bit(&mut bits, 0));
        assert_eq!(take_bit(&mut bits, 70), Some(0));
        bits[0] = u64::MAX;
        assert_eq!(take_bit(&mut bits, 70), Some(64));
        for i in 65..70 {
            assert_eq!(take_bit(&mut bits, 70), Some(i));
        }
        assert_eq!(take_bit(&mut bits, 70), None);
        assert!(is_set(&bits, 69) && !is_set(&bits, 70) && !is_set(&bits, 9999));
        assert!(!put_bit(&mut bits, 9999));
    }

    #[test]
    fn entries_are_written_in_full() {
        let mut e = GrantEntry {
            flags: 0,
            domid: 0,
            reserved: 0xdead,
            frame: 0,
        };
        // SAFETY: a local, aligned entry.
        unsafe { write_entry(&mut e, 7, 0x5000, GTF_PERMIT_ACCESS | GTF_READONLY) };
        assert_eq!(
            e,
            GrantEntry {
                flags: GTF_PERMIT_ACCESS | GTF_READONLY,
                domid: 7,
                reserved: 0,
                frame: 0x5000,
            }
        );
    }

    #[test]
    fn table_takes_four_pages() {
        assert_eq!(TABLE_ENTRIES, 1024);
        assert_eq!(TABLE_PAGES, 4);
        assert_eq!(TABLE_WORDS, 16);
        assert!(u64::from(TABLE_ENTRIES) <= ops::MAX_GRANT_ENTRIES);
    }

    #[test]
    fn foreign_references_are_refused_without_a_hypercall() {
        assert_eq!(end_access(3), Err(Error::Errno(Errno::EINVAL)));
        assert_eq!(revoke(3), Err(Error::Errno(Errno::EINVAL)));
        assert_eq!(active_grants(), 0);
        // Before the runtime is set up there is no window.
        assert_eq!(map(1, 0, true).unwrap_err(), Error::Errno(Errno::ENOSYS));
    }
}
