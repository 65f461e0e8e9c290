//! Host-side backends (`std`, feature `backend`).
//!
//! A backend serves one device of one frontend. It is written against a small host trait, not
//! against the hypervisor's internals, so the same code can run inside `hv` (which implements
//! the trait over its grant table and event channels) or later in a driver domain (which would
//! implement it with grant-map hypercalls), and in tests (over local buffers).
//!
//! - [`GrantHost`]: what a backend needs from its host: access to granted pages and a way to
//!   notify the frontend.
//! - [`Disk`]: a raw image file as the backing store.
//! - [`BlkBackend`]: the block protocol ([`hypercall_abi::io::blk`]) served from a [`Disk`].
//! - [`net::NetBackend`]: the net protocol ([`hypercall_abi::io::net`]), and [`switch::Switch`],
//!   a learning Ethernet switch to connect domains (not yet wired into the hv).

use core::fmt;
use core::ptr::NonNull;

use hypercall_abi::Errno;

mod blk;
mod disk;
pub mod net;
pub mod switch;
#[cfg(test)]
mod test_host;
#[cfg(test)]
mod tests;

pub use blk::{BackendError, BlkBackend, BlkCounters, BlkFeatures, BlkRing, BlkStats};
pub use disk::{Disk, DiskError, RawBuf};

/// Bytes in a granted page.
pub const PAGE_SIZE: usize = 4096;

/// What a backend (block, net) needs from its host: grant access and event notification. This
/// is the contract between the backends and whatever runs them (the hypervisor, a driver
/// domain, a test). The block backend is described below; the net backend asks
/// `page(gref, false)` for TX fragments and `page(gref, true)` for RX buffers.
///
/// # Contract
///
/// - [`page`](Self::page) resolves a grant reference that the frontend put in a request to the
///   granted page's memory, for the duration of one request. `write` is `true` when the backend
///   will **write into** the page (serving `OP_READ`: data flows from the disk to the frontend)
///   and `false` when it will only **read** it (serving `OP_WRITE`, and indirect segment
///   pages). The host checks everything the frontend controls: that the reference exists, is
///   in force, is granted to the backend's domain, and, for `write`, that it is not read-only.
///   It returns any error it likes for a grant it refuses; the backend answers the request with
///   `EACCES` whatever the error (the protocol's status for "a grant the backend cannot use"),
///   so the exact errno only matters for the host's own logs.
/// - The returned [`GrantedPage`] keeps the page usable until it is dropped: the host holds
///   whatever it needs (a mapping, a reference count on the granter's memory, a record that
///   makes `end_access` answer `EBUSY`) in the page's guard and releases it in the guard's
///   `Drop`. The backend drops every page of a request before it answers the request.
/// - [`notify`](Self::notify) raises the frontend's event channel. The backend calls it only
///   when the ring says the frontend asked to be notified.
/// - Neither method may panic or block for long on anything the frontend controls.
pub trait GrantHost {
    /// What the host keeps alive while the backend uses a page (`()` if nothing).
    type Guard;

    /// Resolves grant `gref` for one request; `write` says whether the backend will write into
    /// the page. See the [trait documentation](Self) for the contract.
    fn page(&self, gref: u32, write: bool) -> Result<GrantedPage<Self::Guard>, Errno>;

    /// Raises the frontend's event channel.
    fn notify(&self);
}

impl<H: GrantHost + ?Sized> GrantHost for &H {
    type Guard = H::Guard;

    fn page(&self, gref: u32, write: bool) -> Result<GrantedPage<Self::Guard>, Errno> {
        (**self).page(gref, write)
    }

    fn notify(&self) {
        (**self).notify()
    }
}

/// A granted page, as the host resolved it: a raw pointer to exactly [`PAGE_SIZE`] bytes of
/// memory that the frontend shares with the backend, plus the host's guard that keeps it valid.
///
/// The memory is the frontend's: it may read and write it at any time, concurrently with the
/// backend. So the backend never forms a Rust reference (`&`/`&mut`, slices) to it: it only
/// hands the pointer to I/O system calls (`pread`/`pwrite` into and out of the page, which the
/// kernel performs whatever the frontend does meanwhile) and copies small structures out of it
/// with atomic loads. Whatever the frontend writes there can at worst corrupt the frontend's own
/// data.
pub struct GrantedPage<G = ()> {
    ptr: NonNull<u8>,
    guard: G,
}

// SAFETY: the constructor's contract makes the memory valid from any thread, and the backend
// only accesses it through system calls and atomics. The guard is sent along with the pointer,
// hence the bound.
unsafe impl<G: Send> Send for GrantedPage<G> {}

impl<G> GrantedPage<G> {
    /// Wraps the page at `ptr`, kept valid by `guard`.
    ///
    /// # Safety
    ///
    /// Until the returned value is dropped (and `guard` with it):
    /// - `ptr` is aligned to [`PAGE_SIZE`] and valid for reads of [`PAGE_SIZE`] bytes from any
    ///   thread, and for writes too if the page was asked for with `write` = `true`;
    /// - the memory is not freed, unmapped or reused for something else; it may be written
    ///   concurrently by code outside this program (the frontend), or by this program only
    ///   through atomic operations or system calls;
    /// - nothing in this program holds a Rust reference to that memory.
    pub unsafe fn new(ptr: NonNull<u8>, guard: G) -> Self {
        debug_assert!(ptr.as_ptr().align_offset(PAGE_SIZE) == 0);
        GrantedPage { ptr, guard }
    }

    /// The first byte of the page. See the type's documentation for what may be done with it.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The host's guard.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

impl<G> fmt::Debug for GrantedPage<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantedPage")
            .field("ptr", &self.ptr)
            .finish_non_exhaustive()
    }
}
