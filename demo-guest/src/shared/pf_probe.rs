//! The page-fault probe shared by the conformance and isolation guests: a #PF handler that
//! records the error code and (through `vcpu_op(fault_info)`) the fault address of one announced
//! instruction and skips it, so a case can check that an access faults, and how. Any other page
//! fault reaches `ud2`, which the hv reports as a crash: a real bug is never skipped silently.
//! It uses its parent binary's raw hypercall helpers and `Check` type.
// Each binary uses a different subset of it.
#![allow(dead_code)]

use super::*;

//
// A #PF handler that records the error code and, through vcpu_op(fault_info), the fault
// address, then skips the faulting instruction. It only handles faults of the one instruction
// a probe has announced in PF_EXPECT (a 2-byte `mov` whose address the probe stores there
// first); any other page fault reaches `ud2`, an unhandled #UD, which the hv reports as a crash
// (so a real bug is never skipped silently).

#[repr(C, align(16))]
pub(super) struct PfInfo {
    fault_address: AtomicU64,
    reserved: AtomicU64,
}
pub(super) static PF_INFO: PfInfo = PfInfo {
    fault_address: AtomicU64::new(0),
    reserved: AtomicU64::new(0),
};
pub(super) static PF_EXPECT: AtomicU64 = AtomicU64::new(0);
pub(super) static PF_COUNT: AtomicU64 = AtomicU64::new(0);
pub(super) static PF_ERROR: AtomicU64 = AtomicU64::new(0);
pub(super) static PF_HC: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".pushsection .text.guest_pf_entry, \"ax\", @progbits",
    ".globl guest_pf_entry",
    "guest_pf_entry:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    // [rsp + 40] = error code, [rsp + 48] = faulting RIP.
    "    mov rax, qword ptr [rsp + 48]",
    "    cmp rax, qword ptr [rip + {expect}]",
    "    jne 3f",
    "    mov rax, qword ptr [rsp + 40]",
    "    mov qword ptr [rip + {error}], rax",
    "    mov eax, {vcpu_op}",
    "    mov edi, {fault_info}",
    "    xor esi, esi",
    "    lea rdx, [rip + {info}]",
    "    out {port}, al",
    "    mov qword ptr [rip + {hc_result}], rax",
    "    lock inc qword ptr [rip + {count}]",
    // Skip the probe's 2-byte mov.
    "    add qword ptr [rsp + 48], 2",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    add rsp, 8",
    "    iretq",
    "3:",
    "    ud2",
    ".popsection",
    expect = sym PF_EXPECT,
    error = sym PF_ERROR,
    info = sym PF_INFO,
    hc_result = sym PF_HC,
    count = sym PF_COUNT,
    vcpu_op = const nr::VCPU_OP,
    fault_info = const vcpu::FAULT_INFO,
    port = const HYPERCALL_PORT,
);

extern "C" {
    fn guest_pf_entry();
}

/// A page fault a probe took.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fault {
    /// The error code the CPU pushed (bit 0 present, bit 1 write, bit 2 user).
    pub(super) error: u64,
    /// The fault address from `vcpu_op(fault_info)`.
    pub(super) addr: u64,
    /// What `vcpu_op(fault_info)` returned.
    pub(super) info_rc: i64,
}

pub(super) const PF_PRESENT: u64 = 1;
pub(super) const PF_WRITE: u64 = 2;
pub(super) const PF_USER: u64 = 4;

pub(super) fn install_pf_handler() -> Result<(), String> {
    let entry = TrapInfo {
        vector: 14,
        flags: 0,
        reserved: [0; 6],
        handler: guest_pf_entry as *const () as u64,
    };
    require_ok("set_trap_table(#PF)", set_trap_table(&[entry])).map(drop)
}

pub(super) fn took_fault(before: u64) -> Option<Fault> {
    (PF_COUNT.load(Ordering::SeqCst) != before).then(|| Fault {
        error: PF_ERROR.load(Ordering::SeqCst),
        addr: PF_INFO.fault_address.load(Ordering::SeqCst),
        info_rc: PF_HC.load(Ordering::SeqCst) as i64,
    })
}

/// Reads the byte at `addr`, or reports the page fault it took.
#[inline(never)]
pub(super) fn probe_read(addr: u64) -> Result<u8, Fault> {
    let before = PF_COUNT.load(Ordering::SeqCst);
    let v: u8;
    // SAFETY: reads one byte; if the address is not readable the #PF handler (installed by the
    // caller) skips the 2-byte `mov al, [rdi]` (8a 07), whose address it finds in PF_EXPECT.
    unsafe {
        core::arch::asm!(
            "lea rcx, [rip + 2f]",
            "mov qword ptr [rip + {expect}], rcx",
            "2:",
            "mov al, byte ptr [rdi]",
            "mov qword ptr [rip + {expect}], 0",
            expect = sym PF_EXPECT,
            in("rdi") addr,
            inout("al") 0u8 => v,
            out("rcx") _,
            options(nostack),
        );
    }
    match took_fault(before) {
        Some(f) => Err(f),
        None => Ok(v),
    }
}

/// Writes the byte at `addr`, or reports the page fault it took.
#[inline(never)]
pub(super) fn probe_write(addr: u64, v: u8) -> Result<(), Fault> {
    let before = PF_COUNT.load(Ordering::SeqCst);
    // SAFETY: writes one byte at an address the caller chose to test (a grant-window page);
    // a fault skips the 2-byte `mov [rdi], al` (88 07) as in probe_read.
    unsafe {
        core::arch::asm!(
            "lea rcx, [rip + 2f]",
            "mov qword ptr [rip + {expect}], rcx",
            "2:",
            "mov byte ptr [rdi], al",
            "mov qword ptr [rip + {expect}], 0",
            expect = sym PF_EXPECT,
            in("rdi") addr,
            in("al") v,
            out("rcx") _,
            options(nostack),
        );
    }
    match took_fault(before) {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Reads a whole page through probes and compares it with `want`.
pub(super) fn probe_page(addr: u64, want: impl Fn(usize) -> u8) -> Result<(), String> {
    for i in 0..PAGE_SIZE as usize {
        match probe_read(addr + i as u64) {
            Ok(b) if b == want(i) => {}
            Ok(b) => {
                return Err(format!(
                    "byte {i} of page {addr:#x}: expected {:#04x}, got {b:#04x}",
                    want(i)
                ))
            }
            Err(f) => {
                return Err(format!(
                    "read of {:#x} faulted (error {:#x}, address {:#x})",
                    addr + i as u64,
                    f.error,
                    f.addr
                ))
            }
        }
    }
    Ok(())
}

/// Requires that `r` is a fault at `addr` with the error bits `set` set and `clear` clear.
pub(super) fn want_fault<T: core::fmt::Debug>(
    r: Result<T, Fault>,
    addr: u64,
    set: u64,
    clear: u64,
) -> Check {
    let f = match r {
        Ok(v) => return Err(format!("access to {addr:#x} did not fault (got {v:?})")),
        Err(f) => f,
    };
    if f.info_rc != 0 {
        return Err(format!(
            "vcpu_op(fault_info) in the #PF handler: {}",
            describe(f.info_rc)
        ));
    }
    if f.addr != addr {
        return Err(format!(
            "fault address {:#x}, expected {addr:#x} (error {:#x})",
            f.addr, f.error
        ));
    }
    if f.error & set != set || f.error & clear != 0 {
        return Err(format!(
            "error code {:#x}: expected bits {set:#x} set and {clear:#x} clear",
            f.error
        ));
    }
    Ok(format!("(#PF error {:#x} at {addr:#x})", f.error))
}
