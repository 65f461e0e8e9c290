//! vCPU operations: `vcpu_op(cmd, vcpu, gpa)` with `cmd` in `rdi`, the vCPU id in `rsi` and a
//! guest-physical address in `rdx`.

use core::mem::size_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `up(vcpu, gpa)`: start a vCPU that is down with the [`VcpuContext`] at `gpa`. `ESRCH` for a
/// vCPU id not below `nr_vcpus`, `EBUSY` if it is already up, `EFAULT` if `gpa` or the context's
/// `rip`/`rsp` is not in the caller's RAM, `EINVAL` for a non-zero reserved field.
pub const UP: u64 = 0;
/// `is_up(vcpu)`: 1 if the vCPU runs, 0 if it is down. `ESRCH` for a vCPU that does not exist.
pub const IS_UP: u64 = 1;
/// `fault_info(0, gpa)`: write the calling vCPU's [`FaultInfo`] at `gpa`. `EINVAL` unless
/// `vcpu` is 0 (reserved), `EFAULT` if `gpa` is not in the caller's RAM.
pub const FAULT_INFO: u64 = 2;

/// The initial state of a vCPU started with [`UP`]. It starts at CPL 3 like vCPU 0, with
/// `rflags` = 0x202 and every other general register zero.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuContext {
    /// Entry point.
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// Initial `rdi` (an argument for the entry point).
    pub rdi: u64,
    /// Reserved, must be zero.
    pub reserved: u64,
}
const _: () = assert!(size_of::<VcpuContext>() == 32);

/// Fault information of the calling vCPU, written by [`FAULT_INFO`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct FaultInfo {
    /// The address of the last page fault (the CPU's CR2).
    pub fault_address: u64,
    /// Reserved, zero.
    pub reserved: u64,
}
const _: () = assert!(size_of::<FaultInfo>() == 16);
