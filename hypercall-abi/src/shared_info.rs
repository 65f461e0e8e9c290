//! The shared-info page: one page per domain, written by the hypervisor with atomic operations
//! and read (and, for the mask fields, written) by the guest.
//!
//! # Event delivery (2-level, as Xen)
//!
//! To deliver port `p` to vCPU `v` the hypervisor:
//! 1. sets bit `p` in [`SharedInfo::evtchn_pending`] (if it was already set, stops: events
//!    coalesce);
//! 2. if bit `p` of [`SharedInfo::evtchn_mask`] is set, stops (the event stays pending);
//! 3. sets bit `p / 64` in `vcpu_info[v].pending_sel` and sets `vcpu_info[v].upcall_pending = 1`;
//! 4. if `vcpu_info[v].upcall_mask == 0` and the guest has registered a callback, sets
//!    `upcall_mask = 1` and enters the callback on vector 32 (waking the vCPU if it blocks).
//!
//! The guest's callback clears `upcall_pending`, swaps `pending_sel` with 0, handles every
//! pending and unmasked port (clearing its pending bit first), then clears `upcall_mask` and
//! checks `upcall_pending` again before returning, since an event may have arrived meanwhile.
//! Setting `upcall_mask` is how a guest "disables interrupts": the hypervisor never enters the
//! callback while it is non-zero, and delivers what is pending when the guest next enters the
//! hypervisor with it clear (for example with `sched_op(yield)`).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::time::PvclockTimeInfo;
use crate::MAX_VCPUS;

/// Number of event channel ports a domain has under the 2-level scheme (64 words of 64 bits).
pub const NR_EVENT_CHANNELS: u32 = 4096;

/// Per-vCPU part of [`SharedInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    /// Set to 1 by the hypervisor when an event is pending for this vCPU; cleared by the guest.
    pub upcall_pending: u8,
    /// While non-zero, the hypervisor does not enter the upcall. The hypervisor sets it to 1 as
    /// it enters the upcall; the guest clears it.
    pub upcall_mask: u8,
    /// Reserved, zero.
    pub pad0: [u8; 6],
    /// Bit `w` set: word `w` of `evtchn_pending` may have ports for this vCPU.
    pub pending_sel: u64,
    /// This vCPU's pvclock record.
    pub time: PvclockTimeInfo,
    /// Reserved, zero.
    pub reserved: [u8; 16],
}
const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, upcall_mask) == 1);
const _: () = assert!(offset_of!(VcpuInfo, pending_sel) == 8);
const _: () = assert!(offset_of!(VcpuInfo, time) == 16);

/// The shared-info page. Its guest-physical address is in
/// [`crate::start_info::StartInfo::shared_info_gpa`].
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SharedInfo {
    /// Per-vCPU event and time state, indexed by vCPU id.
    pub vcpu_info: [VcpuInfo; MAX_VCPUS as usize],
    /// Pending bit per event channel port (port `p` is bit `p % 64` of word `p / 64`).
    pub evtchn_pending: [u64; (NR_EVENT_CHANNELS / 64) as usize],
    /// Mask bit per event channel port. The guest may set bits here directly; to clear one it
    /// should use `evtchn_op(unmask)`, which also delivers an event that became pending while
    /// masked.
    pub evtchn_mask: [u64; (NR_EVENT_CHANNELS / 64) as usize],
    /// Seqlock of the wall clock: odd while the hypervisor updates it.
    pub wc_version: u32,
    /// Reserved, zero.
    pub pad0: u32,
    /// Wall-clock time (seconds since the Unix epoch) at system time 0.
    pub wc_sec: u64,
    /// Nanoseconds part of the wall clock at system time 0.
    pub wc_nsec: u32,
    /// Reserved, zero.
    pub pad1: u32,
    /// Reserved, zero.
    pub reserved: [u8; 1000],
}
const _: () = assert!(size_of::<SharedInfo>() == 4096);
const _: () = assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(offset_of!(SharedInfo, wc_sec) == 3080);
const _: () = assert!(offset_of!(SharedInfo, wc_nsec) == 3088);

impl SharedInfo {
    /// Byte offset of `vcpu_info[vcpu]` in the page.
    pub const fn vcpu_info_offset(vcpu: u32) -> usize {
        vcpu as usize * size_of::<VcpuInfo>()
    }
    /// Byte offset of the pending word that holds `port`.
    pub const fn pending_word_offset(port: u32) -> usize {
        offset_of!(SharedInfo, evtchn_pending) + (port / 64) as usize * 8
    }
    /// Byte offset of the mask word that holds `port`.
    pub const fn mask_word_offset(port: u32) -> usize {
        offset_of!(SharedInfo, evtchn_mask) + (port / 64) as usize * 8
    }
}
