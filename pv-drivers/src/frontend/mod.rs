//! Guest-side frontends (`no_std`, feature `frontend`, on `guest-sdk`).
//!
//! A frontend finds its device in the store ([`hypercall_abi::store`] §8 "Device layout"),
//! negotiates with the backend through the device states, shares a ring page and data pages by
//! grant, and talks to the backend over the ring and an event channel.
//!
//! - [`device`]: the store side every frontend shares: finding device `<class>/<n>`, reading
//!   the backend's keys, publishing ours, waiting for the backend's state.
//! - [`blk`]: the block frontend ([`blk::BlockDevice`]), for [`hypercall_abi::io::blk`].
//! - [`net`]: the network frontend ([`net::NetDevice`], also a smoltcp `phy::Device`), for
//!   [`hypercall_abi::io::net`].
//!
//! Call them from ordinary guest code (`main` and what it calls), never from an event handler:
//! they wait for the store and for the backend.

pub mod blk;
pub mod device;
mod granted;
pub mod net;
