//! The console ring: one page shared between a guest (the frontend) and the hypervisor's console
//! backend, in Xen's `xencons_interface` layout.
//!
//! Indices are free-running `u32` counters; the byte at index `i` is at `i % len` of its buffer.
//! The guest produces into `out` (advancing `out_prod` after writing the bytes) and consumes from
//! `in` (advancing `in_cons`); the backend does the opposite. After producing, each side sends an
//! event on [`crate::start_info::StartInfo::console_port`]. A side never trusts the other's
//! index: a producer index more than the buffer size ahead of the consumer index is an error,
//! and the backend then stops serving the ring.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the guest-to-host (output) buffer.
pub const OUT_SIZE: u32 = 2048;
/// Size of the host-to-guest (input) buffer.
pub const IN_SIZE: u32 = 1024;

/// The console ring page (the first 3088 bytes of it).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ConsoleRing {
    /// Bytes from the host to the guest.
    pub input: [u8; IN_SIZE as usize],
    /// Bytes from the guest to the host.
    pub output: [u8; OUT_SIZE as usize],
    /// Guest's consumer index into `input`.
    pub in_cons: u32,
    /// Backend's producer index into `input`.
    pub in_prod: u32,
    /// Backend's consumer index into `output`.
    pub out_cons: u32,
    /// Guest's producer index into `output`.
    pub out_prod: u32,
}
const _: () = assert!(size_of::<ConsoleRing>() == 3088);
const _: () = assert!(offset_of!(ConsoleRing, output) == 1024);
const _: () = assert!(offset_of!(ConsoleRing, in_cons) == 3072);
const _: () = assert!(offset_of!(ConsoleRing, in_prod) == 3076);
const _: () = assert!(offset_of!(ConsoleRing, out_cons) == 3080);
const _: () = assert!(offset_of!(ConsoleRing, out_prod) == 3084);

/// Number of unread bytes between a consumer and a producer index, or `None` if the producer is
/// impossibly far ahead (more than `size`) — a broken or hostile peer.
pub const fn ring_used(cons: u32, prod: u32, size: u32) -> Option<u32> {
    let used = prod.wrapping_sub(cons);
    if used > size {
        None
    } else {
        Some(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_handles_wrap_and_hostile_indices() {
        assert_eq!(ring_used(0, 0, OUT_SIZE), Some(0));
        assert_eq!(ring_used(u32::MAX - 1, 3, OUT_SIZE), Some(5));
        assert_eq!(ring_used(10, 10 + OUT_SIZE, OUT_SIZE), Some(OUT_SIZE));
        assert_eq!(ring_used(10, 11 + OUT_SIZE, OUT_SIZE), None);
        assert_eq!(ring_used(10, 9, OUT_SIZE), None);
    }
}
