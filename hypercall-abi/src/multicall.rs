//! Multicall: `multicall(gpa, count)` runs a batch of hypercalls in one exit.
//!
//! The array of [`MulticallEntry`] at `gpa` is read once, then the entries run in order, each
//! exactly as if made alone by the calling vCPU, and each entry's `result` is written back. The
//! call returns 0 once all entries ran (whatever their results). `E2BIG` if `count` is above
//! [`MAX_MULTICALL`]; `EFAULT` if the array is not in the caller's RAM (nothing runs). Inside a
//! batch, `multicall` itself and the sleeping `sched_op` commands (`block`, `poll`) fail with
//! `EINVAL`; `sched_op(shutdown)` stops the domain at once (later entries do not run).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Most entries one multicall accepts.
pub const MAX_MULTICALL: u64 = 32;

/// One hypercall of a batch.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MulticallEntry {
    /// Hypercall number (as `rax`).
    pub op: u64,
    /// Arguments (as `rdi, rsi, rdx, r10, r8`).
    pub args: [u64; 5],
    /// Written by the hypervisor: the call's result (as `rax`).
    pub result: i64,
}
const _: () = assert!(size_of::<MulticallEntry>() == 56);
const _: () = assert!(offset_of!(MulticallEntry, result) == 48);
