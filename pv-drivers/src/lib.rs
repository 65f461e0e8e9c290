//! Split paravirtual drivers. Frontends run in guests (`no_std`, feature `frontend`); backends
//! run on the host (feature `backend`, which needs `std`), written against small traits so they
//! can later move to a driver domain.
//!
//! The console's frontend is in `guest-sdk` and its backend in `hv-core` for now. The block
//! backend is `backend::BlkBackend` (feature `backend`); the block frontend is
//! `frontend::blk::BlockDevice` (feature `frontend`).
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "backend")]
extern crate std;

#[cfg(feature = "frontend")]
extern crate alloc;

#[cfg(feature = "backend")]
pub mod backend;
#[cfg(feature = "frontend")]
pub mod frontend;
