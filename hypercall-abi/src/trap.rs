//! Exception handlers and the event upcall.
//!
//! The hypervisor builds the IDT. A guest registers handlers for exception vectors 0..=31 with
//! `set_trap_table(gpa, count)` (an array of [`TrapInfo`]) and the entry of event upcalls with
//! `set_callback(handler, flags)`. Handlers run at CPL 3 on the interrupted stack (or on the
//! vCPU's alternate stack with [`TRAP_ALT_STACK`]), entered exactly as hardware enters an
//! interrupt handler: the frame holds (from the stack pointer up) the error code for vectors
//! that have one, then RIP, CS, RFLAGS, RSP, SS. Return with `iretq`. Interrupts are not masked
//! on entry (the guest masks upcalls with `upcall_mask`, see [`crate::shared_info`]).
//!
//! An exception whose vector has no handler stops the domain, which the hypervisor reports as
//! crashed with the vector, error code, RIP and symbol. The faulting address of a page fault is
//! read with `vcpu_op(fault_info)` ([`crate::vcpu::FAULT_INFO`]).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The vector on which event upcalls arrive.
pub const UPCALL_VECTOR: u8 = 32;
/// Most entries one `set_trap_table` accepts (one per exception vector).
pub const MAX_TRAP_ENTRIES: u64 = 32;

/// Flag: run the handler on the vCPU's alternate stack (IST1) rather than the interrupted one.
/// Use it for double faults and for page faults that may be caused by stack overflow.
pub const TRAP_ALT_STACK: u8 = 1 << 0;
/// All flags ABI 1.0 defines; any other bit is `EINVAL`.
pub const TRAP_FLAGS_ALL: u8 = TRAP_ALT_STACK;

/// One entry of `set_trap_table`. `EINVAL` for a vector above 31, an unknown flag or a non-zero
/// reserved byte; `EFAULT` for a handler outside the guest's RAM. A handler of 0 removes the
/// vector's handler.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TrapInfo {
    /// Exception vector, 0..=31.
    pub vector: u8,
    /// [`TRAP_ALT_STACK`] or 0.
    pub flags: u8,
    /// Reserved, must be zero.
    pub reserved: [u8; 6],
    /// Address of the handler (guest-virtual = guest-physical), or 0 to remove it.
    pub handler: u64,
}
const _: () = assert!(size_of::<TrapInfo>() == 16);
const _: () = assert!(offset_of!(TrapInfo, handler) == 8);

/// Does the CPU push an error code for this exception vector?
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The conventional short name of an exception vector (`"#PF"`), for diagnostics.
pub const fn vector_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}
