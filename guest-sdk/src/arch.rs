//! The few instructions a guest uses directly: the hypercall, the bare port exit and `rdtsc`.

use core::arch::asm;

use hypercall_abi::{HYPERCALL_PORT, PING_PORT};

/// Makes a raw hypercall: `out HYPERCALL_PORT, al` with `rax` = `nr` and the arguments in
/// `rdi`, `rsi`, `rdx`, `r10`, `r8`. Returns `rax` unchanged: `>= 0` on success, `-errno` on
/// failure (decode it with [`Error::check`](crate::Error::check)).
///
/// Prefer the typed wrappers of the other modules; this exists for code that must pass
/// arbitrary, even hostile, arguments (the ABI conformance suite).
///
/// # Safety
///
/// The hypervisor acts on the arguments: it may write guest memory at an address they name
/// (for example `evtchn_op(status, port, gpa)`), redirect control flow (`set_trap_table`,
/// `set_callback`), change the event state the SDK relies on (closing the SDK's timer port,
/// say), or stop the domain. The caller must make sure that whatever the hypercall does with
/// valid arguments cannot break memory safety or the SDK's invariants.
///
/// # Example
///
/// ```no_run
/// use guest_sdk::abi::{abi_query, hypercall, Errno};
///
/// // SAFETY: abi_query only returns a value; it touches no memory.
/// let rax = unsafe { guest_sdk::hypercall(hypercall::ABI_QUERY, 99, 0, 0, 0, 0) };
/// assert_eq!(rax, Errno::EINVAL.to_raw());
/// ```
#[inline(always)]
pub unsafe fn hypercall(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the `out` traps to the hypervisor, which changes no register but `rax` (the ABI's
    // calling convention) and may change memory (hence no `nomem`); the caller vouches for the
    // effect of the arguments. No stack is used by the instruction itself.
    unsafe {
        asm!(
            "out {port}, al",
            port = const HYPERCALL_PORT,
            inlateout("rax") nr as i64 => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            in("r8") a5,
            options(nostack),
        );
    }
    ret
}

/// Exits to the hypervisor through its PING port, which it answers by doing nothing: the bare
/// cost of an exit, to compare a hypercall with (`cargo xtask bench hypercall`).
///
/// ```no_run
/// guest_sdk::arch::ping_exit();
/// ```
#[inline(always)]
pub fn ping_exit() {
    // SAFETY: the hypervisor ignores writes to the PING port and changes no register or memory.
    unsafe {
        asm!(
            "out {port}, al",
            port = const PING_PORT,
            in("al") 0u8,
            options(nostack, nomem, preserves_flags),
        );
    }
}

/// Reads the time-stamp counter, ordered after earlier instructions (`lfence; rdtsc`).
/// Convert deltas to nanoseconds with [`time::tsc_delta_to_ns`](crate::time::tsc_delta_to_ns).
///
/// ```
/// let a = guest_sdk::arch::rdtsc();
/// let b = guest_sdk::arch::rdtsc();
/// assert!(b >= a);
/// ```
#[inline(always)]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `lfence` and `rdtsc` only read the counter into edx:eax; both run at CPL 3 (the
    // hypervisor leaves CR4.TSD clear) and touch no memory.
    unsafe {
        asm!(
            "lfence",
            "rdtsc",
            out("eax") lo,
            out("edx") hi,
            options(nostack, nomem, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}
