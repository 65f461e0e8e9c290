//! The platform on real KVM: tiny hand-encoded CPL-3 guests run on the hv's own tables.
//!
//! Each test skips (printing a line) when /dev/kvm is absent, and fails instead when
//! `HV_REQUIRE_KVM=1`. Measurements print with `--nocapture`; nothing asserts on time except
//! generous "promptly" bounds.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hv_core::kvm::{Exit, Kvm, KvmError};
use hv_core::x86::{
    CrashFrame, CRASH_FRAME_SIZE, CRASH_PORT, HV_REGION_GPA, UPCALL_VECTOR, USER_CS, USER_DS,
};

mod common;
use common::*;

impl Guest {
    /// Runs to the crash port and parses the crash frame at RSP.
    fn run_to_crash(&mut self) -> CrashFrame {
        let exit = self.run();
        assert!(
            matches!(
                exit,
                Exit::IoOut {
                    port: CRASH_PORT,
                    ..
                }
            ),
            "expected a crash exit, got {exit:?} at rip {:#x}",
            self.vcpu.regs().rip
        );
        let regs = *self.vcpu.regs();
        let vector = self
            .layout
            .crash_stub_vector(regs.rip)
            .expect("rip in a stub");
        // The crash gates use IST2: the frame is the 7 words just under the crash stack top.
        assert_eq!(regs.rsp, CRASH_STACK_TOP - CRASH_FRAME_SIZE as u64);
        let frame = CrashFrame::parse(&self.read_ram(regs.rsp, CRASH_FRAME_SIZE)).unwrap();
        assert_eq!(frame.vector, u64::from(vector));
        assert_eq!(
            (frame.cs, frame.ss),
            (u64::from(USER_CS), u64::from(USER_DS))
        );
        frame
    }
}

/// Tiny x86-64 encoder for the handful of instructions the guests use.
mod asm {
    pub fn mov_eax(v: u32) -> Vec<u8> {
        [&[0xb8][..], &v.to_le_bytes()].concat()
    }
    pub fn mov_edi(v: u32) -> Vec<u8> {
        [&[0xbf][..], &v.to_le_bytes()].concat()
    }
    pub fn mov_rax_imm64(v: u64) -> Vec<u8> {
        [&[0x48, 0xb8][..], &v.to_le_bytes()].concat()
    }
    pub const OUT_HCALL: [u8; 2] = [0xe6, 0x90]; // out 0x90, al
    pub const MOV_RBX_RAX: [u8; 3] = [0x48, 0x89, 0xc3];
    pub const MOV_RSI_RAX: [u8; 3] = [0x48, 0x89, 0xc6];
    pub const MOV_RDI_RBX: [u8; 3] = [0x48, 0x89, 0xdf];
    pub const MOV_QWORD_RAX_1: [u8; 7] = [0x48, 0xc7, 0x00, 0x01, 0x00, 0x00, 0x00]; // mov qword [rax], 1
    pub const JMP_RAX: [u8; 2] = [0xff, 0xe0];
    pub const UD2: [u8; 2] = [0x0f, 0x0b];
    pub const ADD_QWORD_RSP_2: [u8; 5] = [0x48, 0x83, 0x04, 0x24, 0x02]; // add qword [rsp], 2
    pub const IRETQ: [u8; 2] = [0x48, 0xcf];
    pub const JMP_SELF: [u8; 2] = [0xeb, 0xfe];
    pub const RDTSC_TO_RAX: [u8; 9] = [
        0x0f, 0x31, // rdtsc
        0x48, 0xc1, 0xe2, 0x20, // shl rdx, 32
        0x48, 0x09, 0xd0, // or rax, rdx
    ];
}

fn program(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn out_exit(exit: Exit) -> u16 {
    match exit {
        Exit::IoOut { port, size: 1, .. } => port,
        other => panic!("expected a 1-byte out, got {other:?}"),
    }
}

#[test]
fn open_errors_are_typed() {
    let err = Kvm::open(Path::new("/nonexistent/kvm"))
        .err()
        .expect("no such device");
    assert!(matches!(err, KvmError::NotFound { .. }), "{err}");
    let err = Kvm::open(Path::new("/dev/null")).err().expect("not KVM");
    assert!(matches!(err, KvmError::Open { .. }), "{err}");
}

#[test]
fn cpl3_hypercalls_through_sync_regs() {
    let Some(kvm) = kvm_or_skip("cpl3_hypercalls_through_sync_regs") else {
        return;
    };
    let code = program(&[
        &asm::mov_eax(1),
        &asm::mov_edi(0x11),
        &asm::OUT_HCALL, // CODE + 10
        &asm::MOV_RBX_RAX,
        &asm::mov_eax(2),
        &asm::mov_edi(0x22),
        &asm::OUT_HCALL, // CODE + 25
        &asm::MOV_RSI_RAX,
        &asm::MOV_RDI_RBX,
        &asm::mov_eax(3),
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]);
    let mut g = Guest::new(&kvm, &code, &[]);
    assert_eq!(
        g.vcpu.regs().rdi,
        0x5157,
        "boot regs visible before the first run"
    );
    g.vcpu.enable_sync_sregs();

    assert_eq!(out_exit(g.run()), HCALL_PORT);
    let cs = g.vcpu.synced_sregs().expect("sregs synced").cs;
    assert_eq!(
        (cs.selector, cs.selector & 3, cs.dpl),
        (USER_CS, 3, 3),
        "CPL 3"
    );
    let r = *g.vcpu.regs();
    assert_eq!((r.rax, r.rdi), (1, 0x11));
    // RIP at an `out` exit: at the `out` on VMX/SVM (KVM steps over it on the next run), after
    // it on kvm_pvm (which emulated it). Either way the guest resumes after it exactly once.
    let skew = r.rip - (CODE + 10);
    assert!(skew == 0 || skew == 2, "rip {:#x} at the out exit", r.rip);
    println!(
        "RIP at an out exit points {}",
        ["at the out", "", "after the out"][skew as usize]
    );
    assert_eq!(r.rflags & 0x200, 0x200);
    g.vcpu.regs_mut().rax = 0x1111;

    assert_eq!(out_exit(g.run()), HCALL_PORT);
    let r = *g.vcpu.regs();
    assert_eq!((r.rax, r.rdi, r.rip), (2, 0x22, CODE + 25 + skew));
    g.vcpu.regs_mut().rax = 0x2222;

    assert_eq!(out_exit(g.run()), HCALL_PORT);
    let r = *g.vcpu.regs();
    assert_eq!(r.rax, 3, "third hypercall, each seen once and in order");
    assert_eq!(
        (r.rdi, r.rsi),
        (0x1111, 0x2222),
        "the guest saw both results"
    );
    let sregs = g.vcpu.sregs().unwrap();
    assert_eq!(sregs.cs.dpl, 3);
    assert_eq!(sregs.cs.selector & 3, 3);
}

#[test]
fn faults_land_on_crash_stubs() {
    let Some(kvm) = kvm_or_skip("faults_land_on_crash_stubs") else {
        return;
    };
    // 1. A write to the supervisor-only hv region: #PF, error P|W|U = 0x7.
    let code = program(&[
        &asm::mov_rax_imm64(HV_REGION_GPA + 0x10),
        &asm::MOV_QWORD_RAX_1, // CODE + 10
        &asm::JMP_SELF,
    ]);
    let mut g = Guest::new(&kvm, &code, &[]);
    let f = g.run_to_crash();
    assert_eq!((f.vector, f.error_code, f.rip), (14, 0x7, CODE + 10));
    assert_eq!(f.rsp, STACK_TOP);
    assert_eq!(g.vcpu.sregs().unwrap().cr2, HV_REGION_GPA + 0x10);

    // 2. ud2 with no handler: #UD, no error code (the stub pushed a 0).
    let code = program(&[&asm::mov_eax(7), &asm::UD2, &asm::JMP_SELF]);
    let mut g = Guest::new(&kvm, &code, &[]);
    let f = g.run_to_crash();
    assert_eq!((f.vector, f.error_code, f.rip), (6, 0, CODE + 5));
    assert_eq!(g.vcpu.regs().rax & 0xff, 7, "stub leaves registers alone");

    // 3. A write to a read-only code page: #PF 0x7; a jump into NX data: #PF 0x15.
    let code = program(&[&asm::mov_rax_imm64(CODE), &asm::MOV_QWORD_RAX_1]);
    let f = Guest::new(&kvm, &code, &[]).run_to_crash();
    assert_eq!((f.vector, f.error_code, f.rip), (14, 0x7, CODE + 10));
    let code = program(&[&asm::mov_rax_imm64(DATA), &asm::JMP_RAX]);
    let f = Guest::new(&kvm, &code, &[]).run_to_crash();
    assert_eq!((f.vector, f.error_code, f.rip), (14, 0x15, DATA));
    // 4. A read of the page tables (supervisor-only): #PF, error P|U = 0x5.
    let code = program(&[
        &asm::mov_rax_imm64(HV_REGION_GPA),
        &[0x48, 0x8b, 0x00], // mov rax, [rax]
    ]);
    let f = Guest::new(&kvm, &code, &[]).run_to_crash();
    assert_eq!((f.vector, f.error_code, f.rip), (14, 0x5, CODE + 10));
}

#[test]
fn exception_reaches_guest_handler_and_iretq_resumes() {
    let Some(kvm) = kvm_or_skip("exception_reaches_guest_handler_and_iretq_resumes") else {
        return;
    };
    let handler = CODE + 0x100;
    let main = program(&[
        &asm::mov_eax(0x10),
        &asm::UD2, // CODE + 5
        &asm::mov_eax(0x20),
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]);
    let mut code = main.clone();
    code.resize(0x100, 0xcc);
    code.extend(program(&[
        &asm::mov_eax(0x66),
        &asm::OUT_HCALL,
        &asm::ADD_QWORD_RSP_2, // skip the ud2
        &asm::IRETQ,
    ]));
    let mut g = Guest::new(&kvm, &code, &[(6, handler)]);

    assert_eq!(out_exit(g.run()), HCALL_PORT);
    let r = *g.vcpu.regs();
    assert_eq!(r.rax, 0x66, "handler ran");
    assert!(
        r.rip == handler + 5 || r.rip == handler + 7,
        "rip {:#x}",
        r.rip
    );
    // On IST1 with the 5-word frame (no error code for #UD): RIP, CS, RFLAGS, RSP, SS.
    assert_eq!(r.rsp, ALT_STACK_TOP - 40);
    let frame = g.read_ram(r.rsp, 40);
    let word = |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(0), CODE + 5);
    assert_eq!(word(1), u64::from(USER_CS));
    assert_eq!(word(3), STACK_TOP);
    assert_eq!(word(4), u64::from(USER_DS));
    assert_eq!(g.vcpu.sregs().unwrap().cs.dpl, 3, "handler at CPL 3");

    assert_eq!(out_exit(g.run()), HCALL_PORT);
    let r = *g.vcpu.regs();
    assert_eq!(r.rax, 0x20, "iretq resumed after the ud2");
    assert_eq!(r.rsp, STACK_TOP);
}

/// A guest that spins, with an upcall handler that reports 0x32 on the hypercall port.
fn spinning_guest_with_upcall(kvm: &Kvm) -> Guest {
    let handler = CODE + 0x100;
    let mut code = program(&[&asm::JMP_SELF]);
    code.resize(0x100, 0xcc);
    code.extend(program(&[
        &asm::mov_eax(0x32),
        &asm::OUT_HCALL,
        &asm::IRETQ,
    ]));
    Guest::new(kvm, &code, &[(UPCALL_VECTOR, handler)])
}

#[test]
fn kick_then_inject_reaches_upcall_handler() {
    let Some(kvm) = kvm_or_skip("kick_then_inject_reaches_upcall_handler") else {
        return;
    };
    let mut g = spinning_guest_with_upcall(&kvm);
    let kicker = g.vcpu.kicker();
    let (tx, rx) = mpsc::channel();
    let vcpu_thread = thread::spawn(move || {
        tx.send(()).unwrap();
        assert_eq!(g.vcpu.run().unwrap(), Exit::Interrupted);
        let interrupted = Instant::now();
        let mut window_exits = 0;
        if !g.vcpu.ready_for_injection() {
            g.vcpu.request_interrupt_window(true);
            loop {
                match g.vcpu.run().unwrap() {
                    Exit::IrqWindowOpen => break,
                    Exit::Interrupted => {}
                    other => panic!("waiting for the window: {other:?}"),
                }
            }
            window_exits += 1;
            g.vcpu.request_interrupt_window(false);
        }
        g.vcpu.inject(UPCALL_VECTOR).unwrap();
        assert!(!g.vcpu.ready_for_injection());
        let second = g.vcpu.inject(UPCALL_VECTOR + 1);
        assert!(
            matches!(second, Err(KvmError::InjectionPending)),
            "{second:?}"
        );
        assert_eq!(out_exit(g.run()), HCALL_PORT);
        let handled = Instant::now();
        assert_eq!(g.vcpu.regs().rax, 0x32, "upcall handler ran");
        assert_eq!(g.vcpu.regs().rsp, ALT_STACK_TOP - 40);
        assert!(g.vcpu.ready_for_injection(), "delivered: ready again");
        (interrupted, handled, window_exits)
    });
    rx.recv().unwrap();
    thread::sleep(Duration::from_millis(50)); // let the guest spin inside KVM_RUN
    let kicked = Instant::now();
    kicker.kick();
    let (interrupted, handled, window_exits) = vcpu_thread.join().unwrap();
    println!(
        "kick -> Interrupted: {:?}; kick -> upcall handler's out exit: {:?} (window exits: {window_exits})",
        interrupted - kicked,
        handled - kicked
    );
}

#[test]
fn kick_before_run_is_not_lost() {
    let Some(kvm) = kvm_or_skip("kick_before_run_is_not_lost") else {
        return;
    };
    let code = program(&[&asm::mov_eax(0x44), &asm::OUT_HCALL, &asm::JMP_SELF]);
    let mut g = Guest::new(&kvm, &code, &[]);
    let kicker = g.vcpu.kicker();
    kicker.kick();
    // A watchdog kicks again after 5 s, so a lost kick fails the test instead of hanging it.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog_kicker = kicker.clone();
    let watchdog = thread::spawn(move || {
        let fired = done_rx.recv_timeout(Duration::from_secs(5)).is_err();
        if fired {
            watchdog_kicker.kick();
        }
        fired
    });
    let start = Instant::now();
    let exit = g.vcpu.run().unwrap();
    let took = start.elapsed();
    done_tx.send(()).unwrap();
    assert!(
        !watchdog.join().unwrap(),
        "run() hung despite the earlier kick"
    );
    assert_eq!(exit, Exit::Interrupted);
    assert_eq!(g.vcpu.regs().rip, CODE, "the guest did not run");
    println!("kick before run: run() returned Interrupted after {took:?}");
    // The kick is consumed: the guest now runs to its hypercall.
    assert_eq!(out_exit(g.run()), HCALL_PORT);
    assert_eq!(g.vcpu.regs().rax, 0x44);
}

#[test]
fn kick_while_not_running_after_an_exit() {
    let Some(kvm) = kvm_or_skip("kick_while_not_running_after_an_exit") else {
        return;
    };
    let code = program(&[
        &asm::OUT_HCALL,
        &asm::mov_eax(0x45),
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]);
    let mut g = Guest::new(&kvm, &code, &[]);
    assert_eq!(out_exit(g.run()), HCALL_PORT);
    // Kick from another thread while the vCPU sits in userspace after an exit.
    let kicker = g.vcpu.kicker();
    thread::spawn(move || kicker.kick()).join().unwrap();
    assert_eq!(g.vcpu.run().unwrap(), Exit::Interrupted);
    // KVM completed the pending `out` before honouring immediate_exit: RIP moved past it.
    assert_eq!(g.vcpu.regs().rip, CODE + 2);
    assert_eq!(out_exit(g.run()), HCALL_PORT);
    assert_eq!(
        g.vcpu.regs().rax,
        0x45,
        "no instruction repeated or skipped"
    );
}

#[test]
fn kicks_racing_with_runs_are_never_lost() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let Some(kvm) = kvm_or_skip("kicks_racing_with_runs_are_never_lost") else {
        return;
    };
    // The guest alternates hypercalls and spinning, so kicks land both inside KVM_RUN and
    // between runs. Round r: the kicker publishes r, kicks, and waits until the vCPU thread has
    // seen r. A spinning guest only leaves KVM_RUN when kicked, so a lost kick stalls a round.
    // loop: out 0x90; mov ecx, 20000; l: dec ecx; jnz l; jmp loop
    let code = program(&[
        &asm::OUT_HCALL,
        &[0xb9, 0x20, 0x4e, 0, 0], // mov ecx, 20000
        &[0xff, 0xc9, 0x75, 0xfc], // l: dec ecx; jnz l
        &[0xeb, 0xf3],             // jmp loop
    ]);
    let mut g = Guest::new(&kvm, &code, &[]);
    let kicker = g.vcpu.kicker();
    let requested = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    const ROUNDS: u64 = 300;
    let vcpu_thread = {
        let (requested, seen) = (requested.clone(), seen.clone());
        thread::spawn(move || {
            let mut exits = 0u64;
            while seen.load(SeqCst) < ROUNDS {
                match g.vcpu.run().unwrap() {
                    Exit::Interrupted | Exit::IoOut { .. } => exits += 1,
                    other => panic!("{other:?}"),
                }
                seen.store(requested.load(SeqCst), SeqCst);
            }
            exits
        })
    };
    for round in 1..=ROUNDS {
        requested.store(round, SeqCst);
        kicker.kick();
        let start = Instant::now();
        while seen.load(SeqCst) < round {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: kick lost"
            );
            thread::yield_now();
        }
        if round % 3 == 0 {
            thread::sleep(Duration::from_micros(200)); // let the guest get back into KVM_RUN
        }
    }
    let exits = vcpu_thread.join().unwrap();
    println!("{ROUNDS} kick rounds, {exits} exits");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn measure_out_round_trip() {
    let Some(kvm) = kvm_or_skip("measure_out_round_trip") else {
        return;
    };
    // loop: out 0x90, al; jmp loop
    let code = program(&[&asm::OUT_HCALL, &[0xeb, 0xfc]]);
    let mut g = Guest::new(&kvm, &code, &[]);
    const N: usize = 10_000;
    for (label, write_rax) in [("regs read only", false), ("rax written (dirty)", true)] {
        let mut times = Vec::with_capacity(N);
        for i in 0..N {
            let t = Instant::now();
            let exit = g.run();
            times.push(t.elapsed());
            assert_eq!(out_exit(exit), HCALL_PORT);
            if write_rax {
                g.vcpu.regs_mut().rax = i as u64; // as a hypercall would
            }
        }
        println!(
            "out exit round trip, sync regs, {label}: median {:?} of {N}, min {:?}",
            median(times.clone()),
            times.iter().min().unwrap()
        );
    }
}

#[test]
fn io_in_reads_the_supplied_value() {
    let Some(kvm) = kvm_or_skip("io_in_reads_the_supplied_value") else {
        return;
    };
    let code = program(&[
        &asm::mov_eax(0xffff_ff00),
        &[0xe4, 0x90], // in al, 0x90
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]);
    let mut g = Guest::new(&kvm, &code, &[]);
    let exit = g.run();
    assert_eq!(
        exit,
        Exit::IoIn {
            port: 0x90,
            size: 1
        }
    );
    println!("RIP at an in exit: CODE + {}", g.vcpu.regs().rip - CODE);
    assert!(g.vcpu.set_mmio_read_data(0).is_err());
    g.vcpu.set_io_in_data(0x1234_56a5).unwrap();
    assert_eq!(out_exit(g.run()), HCALL_PORT);
    assert_eq!(
        g.vcpu.regs().rax,
        0xffff_ffa5,
        "in al replaced the low byte only"
    );
    assert!(g.vcpu.set_io_in_data(1).is_err(), "no pending in");
}

#[test]
fn measure_guest_tsc() {
    let Some(kvm) = kvm_or_skip("measure_guest_tsc") else {
        return;
    };
    // A host thread keeps storing its TSC into guest RAM at DATA; the guest brackets its read of
    // that word with two rdtsc. With guest TSC = host TSC + c and the word h at most a little
    // stale:  t1 - h - staleness <= c <= t2 - h.
    // loop: rdtsc -> r9; mov r10, [DATA]; rdtsc -> rax; out 0x90; jmp loop
    let mut code = program(&[
        &asm::RDTSC_TO_RAX,
        &[0x49, 0x89, 0xc1], // mov r9, rax
        &asm::mov_rax_imm64(DATA),
        &[0x4c, 0x8b, 0x10], // mov r10, [rax]
        &asm::RDTSC_TO_RAX,
        &asm::OUT_HCALL,
    ]);
    let back = -(code.len() as i8) - 2;
    code.extend([0xeb, back as u8]);
    let mut g = Guest::new(&kvm, &code, &[]);
    let host_tsc = || {
        // SAFETY: rdtsc has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let word = g.ram.as_ptr() as usize + DATA as usize;
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: `word` is an 8-byte-aligned address in guest RAM, which outlives this
                // thread (joined below); only this thread writes it; an atomic store.
                let w = unsafe { &*(word as *const std::sync::atomic::AtomicU64) };
                w.store(host_tsc(), std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut samples = Vec::new();
    let (mut msr_lo, mut msr_hi) = (i128::MIN, i128::MAX);
    let mut msr_err = None;
    for _ in 0..200 {
        assert_eq!(out_exit(g.run()), HCALL_PORT);
        let r = *g.vcpu.regs();
        let (t1, h, t2) = (i128::from(r.r9), i128::from(r.r10), i128::from(r.rax));
        if h != 0 {
            samples.push((t2 - h, t1 - h));
        }
        let before = host_tsc();
        match g.vcpu.guest_tsc() {
            Ok(msr) => {
                let after = host_tsc();
                msr_lo = msr_lo.max(i128::from(msr) - i128::from(after));
                msr_hi = msr_hi.min(i128::from(msr) - i128::from(before));
            }
            Err(e) => msr_err = Some(e),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    println!("KVM_GET_TSC_KHZ: {:?}", g.vcpu.tsc_khz());
    samples.sort();
    let (hi, lo) = samples[samples.len() / 2];
    println!(
        "guest rdtsc - host rdtsc (c): median sample [{lo} - staleness, {hi}]; c <= {} always",
        samples[0].0
    );
    match msr_err {
        None => println!("KVM_GET_MSRS(IA32_TSC) - host rdtsc in [{msr_lo}, {msr_hi}] cycles"),
        Some(e) => println!("KVM_GET_MSRS(IA32_TSC): {e}"),
    }
}
