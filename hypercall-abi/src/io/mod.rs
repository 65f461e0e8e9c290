//! Device protocols that travel over shared rings ([`crate::ring`]) between a frontend (in a
//! guest) and a backend (in the hypervisor, or later a driver domain). Devices are found and
//! connected through the store ([`crate::store`], §8 "Device layout").

pub mod blk;
pub mod net;
