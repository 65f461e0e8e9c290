//! Exception handlers (low level): the trap table and the fault address.
//!
//! The SDK installs no exception handler: an exception without one stops the domain, and the
//! hypervisor reports the vector, error code, RIP and symbol. A guest that wants to handle an
//! exception registers an assembly entry point for its vector. The handler runs at CPL 3 on
//! the interrupted stack (or the vCPU's alternate stack with
//! [`TRAP_ALT_STACK`](hypercall_abi::trap::TRAP_ALT_STACK)) with a hardware frame: the error
//! code first for vectors that have one ([`has_error_code`](hypercall_abi::trap::has_error_code)),
//! then RIP, CS, RFLAGS, RSP, SS. It must preserve every register and return with `iretq`
//! (after popping the error code, if any).

use hypercall_abi::hypercall as nr;
pub use hypercall_abi::trap::TrapInfo;
use hypercall_abi::vcpu::{FaultInfo, FAULT_INFO};

use crate::{Error, Result};

/// Installs exception handlers: `set_trap_table(table, table.len())`. An entry whose handler
/// is 0 removes that vector's handler.
///
/// # Safety
///
/// Every non-zero `handler` must be the address of code that handles its exception as
/// described in the [module documentation](self): entered with a hardware exception frame,
/// preserving all registers, returning with `iretq`.
///
/// # Example
///
/// ```no_run
/// use guest_sdk::trap::{self, TrapInfo};
///
/// // A #UD handler that skips the 2-byte `ud2`.
/// core::arch::global_asm!(
///     ".globl skip_ud2",
///     "skip_ud2:",
///     "    add qword ptr [rsp], 2",
///     "    iretq",
/// );
/// extern "C" {
///     fn skip_ud2();
/// }
///
/// fn main() {
///     let entry = TrapInfo {
///         vector: 6,
///         handler: skip_ud2 as *const () as u64,
///         ..Default::default()
///     };
///     // SAFETY: skip_ud2 follows the trap-frame protocol for #UD (no error code).
///     unsafe { trap::set_trap_table(&[entry]) }.unwrap();
/// }
/// ```
pub unsafe fn set_trap_table(table: &[TrapInfo]) -> Result<()> {
    // SAFETY: the hypervisor reads `table` (a valid slice in guest RAM); the caller vouches for
    // the handlers it installs.
    let rax = unsafe {
        crate::hypercall(
            nr::SET_TRAP_TABLE,
            table.as_ptr() as u64,
            table.len() as u64,
            0,
            0,
            0,
        )
    };
    Error::check(rax).map(drop)
}

/// The calling vCPU's fault information (`vcpu_op(fault_info)`): the address of its last page
/// fault.
///
/// ```no_run
/// let info = guest_sdk::trap::fault_info().unwrap();
/// # let _ = info;
/// ```
pub fn fault_info() -> Result<FaultInfo> {
    let mut info = FaultInfo::default();
    // SAFETY: the hypervisor writes one FaultInfo at the address of `info`, a valid local.
    let rax = unsafe {
        crate::hypercall(
            nr::VCPU_OP,
            FAULT_INFO,
            0,
            &mut info as *mut FaultInfo as u64,
            0,
            0,
        )
    };
    Error::check(rax)?;
    Ok(info)
}

/// The address of the calling vCPU's last page fault (what CR2 would hold); call it from a
/// page-fault handler.
///
/// ```no_run
/// let cr2 = guest_sdk::trap::fault_address().unwrap();
/// # let _ = cr2;
/// ```
pub fn fault_address() -> Result<u64> {
    fault_info().map(|i| i.fault_address)
}
