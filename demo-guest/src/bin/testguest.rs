//! A guest for the hypervisor's integration tests; the command line (`hv run testguest
//! --cmdline MODE`) selects what it does:
//!
//! | mode | behaviour |
//! | --- | --- |
//! | `exit=N` | powers off with exit code N |
//! | `panic` | panics with the message `boom` |
//! | `pagefault` | writes to address 0x10 (unmapped page 0), with no handler |
//! | `ud2` | executes `ud2`, with no handler |
//! | `trap` | handles a `ud2` with its own #UD handler, prints `trap: handled #UD`, exits 0 |
//! | `spin` | arms the timer 50 ms ahead and busy-loops (no hypercall) until its handler runs, prints `spin: timer interrupted a busy loop`, exits 0 |
//! | `badmem` | `console_write` at GPA 0x40_0000_0000, prints `badmem: ERRNO`, exits 0 |
//! | `shutdown-bad` | poweroff with code 200, which must fail: prints `shutdown-bad: EINVAL`, exits 0 |
//!
//! An unknown or missing mode prints `testguest: unknown mode '...'` and exits with code 2.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use guest_sdk::abi::sched::shutdown_reason;
use guest_sdk::abi::trap::TrapInfo;
use guest_sdk::abi::{hypercall as nr, Errno};
use guest_sdk::time::{self, NS_PER_MS, NS_PER_SEC};
use guest_sdk::{println, Error, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) {
    let mode = si.cmdline().split_whitespace().next().unwrap_or("");
    match mode {
        "panic" => panic!("boom"),
        "pagefault" => pagefault(),
        "ud2" => ud2(),
        "trap" => trap(),
        "spin" => spin(),
        "badmem" => badmem(),
        "shutdown-bad" => shutdown_bad(),
        _ => match mode.strip_prefix("exit=").map(str::parse::<u32>) {
            Some(Ok(code)) => guest_sdk::exit(code),
            _ => {
                println!("testguest: unknown mode '{mode}'");
                guest_sdk::exit(2);
            }
        },
    }
}

fn pagefault() {
    // SAFETY: deliberately faults: page 0 is unmapped and no #PF handler is installed, so the
    // hypervisor stops the domain at this instruction; nothing after it runs.
    unsafe {
        core::arch::asm!("mov qword ptr [{addr}], 1", addr = in(reg) 0x10u64, options(nostack));
    }
    println!("pagefault: ERROR the write to 0x10 did not fault");
    guest_sdk::exit(1);
}

fn ud2() -> ! {
    // SAFETY: deliberately raises #UD with no handler: the hypervisor stops the domain.
    unsafe { core::arch::asm!("ud2", options(noreturn, nostack)) }
}

// #UD handler: the frame has no error code, so [rsp] is the faulting RIP; skip the 2-byte ud2.
core::arch::global_asm!(
    ".pushsection .text.testguest_ud_handler, \"ax\", @progbits",
    ".globl testguest_ud_handler",
    ".type testguest_ud_handler, @function",
    "testguest_ud_handler:",
    "    add qword ptr [rsp], 2",
    "    iretq",
    ".size testguest_ud_handler, . - testguest_ud_handler",
    ".popsection",
);

extern "C" {
    fn testguest_ud_handler();
}

fn trap() {
    let entry = TrapInfo {
        vector: 6,
        flags: 0,
        reserved: [0; 6],
        handler: testguest_ud_handler as *const () as u64,
    };
    // SAFETY: the handler follows the trap-frame protocol for #UD (no error code, iretq) and
    // changes no register.
    if let Err(e) = unsafe { guest_sdk::trap::set_trap_table(&[entry]) } {
        println!("trap: ERROR set_trap_table failed: {e}");
        guest_sdk::exit(1);
    }
    // SAFETY: the #UD handler installed above resumes after this 2-byte instruction.
    unsafe { core::arch::asm!("ud2", options(nostack)) };
    println!("trap: handled #UD");
}

static TIMER_FIRED: AtomicBool = AtomicBool::new(false);

fn on_timer() {
    TIMER_FIRED.store(true, Ordering::Release);
}

fn spin() {
    // The SDK's runtime has bound VIRQ_TIMER on vCPU 0; its handler calls this hook.
    if time::timer_port().is_none() {
        println!("spin: ERROR no timer port");
        guest_sdk::exit(1);
    }
    time::set_timer_hook(Some(on_timer));
    let start = time::monotonic_ns();
    if let Err(e) = time::set_timer(start + 50 * NS_PER_MS) {
        println!("spin: ERROR set_timer failed: {e}");
        guest_sdk::exit(1);
    }
    // Busy loop without any hypercall: only the hypervisor kicking the running vCPU can
    // deliver the timer. pvclock (rdtsc + shared memory) bounds it without exits.
    let limit = start + 5 * NS_PER_SEC;
    while !TIMER_FIRED.load(Ordering::Acquire) {
        if time::monotonic_ns() > limit {
            println!("spin: ERROR the timer did not interrupt the busy loop within 5 s");
            guest_sdk::exit(1);
        }
        core::hint::spin_loop();
    }
    println!(
        "spin: timer fired after {} ms",
        (time::monotonic_ns() - start) / NS_PER_MS
    );
    println!("spin: timer interrupted a busy loop");
}

fn badmem() {
    let msg = b"badmem";
    // A valid length, an address far outside RAM.
    // SAFETY: console_write only reads guest memory, and the hypervisor must refuse this range.
    let rax = unsafe {
        guest_sdk::hypercall(nr::CONSOLE_WRITE, 0x40_0000_0000, msg.len() as u64, 0, 0, 0)
    };
    match Error::check(rax) {
        Ok(v) => println!("badmem: ERROR console_write succeeded ({v})"),
        Err(e) => println!("badmem: {e}"),
    }
}

fn shutdown_bad() {
    let Err(e) = guest_sdk::sched::shutdown(shutdown_reason::POWEROFF, 200);
    if e == Error::Errno(Errno::EINVAL) {
        println!("shutdown-bad: EINVAL");
    } else {
        println!("shutdown-bad: ERROR expected EINVAL, got {e}");
        guest_sdk::exit(1);
    }
}
