//! vCPU operations. (The SDK's runtime itself runs on vCPU 0 only.)

use hypercall_abi::hypercall as nr;
pub use hypercall_abi::vcpu::VcpuContext;
use hypercall_abi::vcpu::{IS_UP, UP};

use crate::{Error, Result};

/// Is `vcpu` running? `ESRCH` if the domain has no such vCPU.
///
/// ```no_run
/// assert!(guest_sdk::vcpu::is_up(0).unwrap());
/// ```
pub fn is_up(vcpu: u32) -> Result<bool> {
    // SAFETY: is_up touches no guest memory.
    let rax = unsafe { crate::hypercall(nr::VCPU_OP, IS_UP, u64::from(vcpu), 0, 0, 0) };
    Error::check(rax).map(|v| v != 0)
}

/// Starts `vcpu` (which must be down) at `ctx.rip` with `ctx.rsp` and `ctx.rdi`, at CPL 3.
///
/// # Safety
///
/// The new vCPU runs concurrently with the caller: `ctx.rip` must be code written for that (it
/// gets no SDK runtime: no per-vCPU upcalls, and it must not use SDK functions that assume
/// vCPU 0), and `ctx.rsp` the top of a stack nothing else uses.
///
/// # Example
///
/// ```no_run
/// use guest_sdk::vcpu::{self, VcpuContext};
/// # extern "C" fn ap_entry() -> ! { loop {} }
/// # static mut STACK: [u8; 4096] = [0; 4096];
/// let ctx = VcpuContext {
///     rip: ap_entry as *const () as u64,
///     rsp: core::ptr::addr_of!(STACK) as u64 + 4096,
///     ..Default::default()
/// };
/// // SAFETY: ap_entry never returns and uses only its own stack.
/// unsafe { vcpu::up(1, &ctx) }.unwrap();
/// ```
pub unsafe fn up(vcpu: u32, ctx: &VcpuContext) -> Result<()> {
    // SAFETY: the hypervisor reads `ctx` (a valid reference); the caller vouches for the
    // context it starts.
    let rax = unsafe {
        crate::hypercall(
            nr::VCPU_OP,
            UP,
            u64::from(vcpu),
            ctx as *const VcpuContext as u64,
            0,
            0,
        )
    };
    Error::check(rax).map(drop)
}
