//! Split paravirtual drivers. Frontends run in guests (`no_std`, feature `frontend`); backends
//! run on the host (feature `backend`), written against small traits so they can later move to
//! a driver domain.
//!
//! ABI v1.0 has one device, the console, whose frontend is in `guest-sdk` and whose backend is in
//! `hv-core` for now; block and net arrive here with their protocols.
#![no_std]
#![deny(missing_docs)]
