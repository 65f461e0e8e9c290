//! The ABI conformance suite (XTF's pattern): each case makes one hypercall with one hostile
//! input and expects the exact error the ABI documents (or, for valid-use cases, the documented
//! effect). Every case prints one line, `PASS name` or `FAIL name: expected X, got Y`; the run
//! ends with `N passed, M failed` and exits with code 0 if M is 0, else 1.
//!
//! The cases use only `hypercall-abi` and the SDK's raw `hypercall`; the SDK's runtime provides
//! the console, the upcall (for the delivery cases) and the heap.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use guest_sdk::abi::evtchn::{self, state, virq, EvtchnStatus, Port};
use guest_sdk::abi::sched::{self, shutdown_reason, SchedPoll, MAX_EXIT_CODE, MAX_POLL_PORTS};
use guest_sdk::abi::shared_info::NR_EVENT_CHANNELS;
use guest_sdk::abi::trap::{TrapInfo, MAX_TRAP_ENTRIES};
use guest_sdk::abi::vcpu::{self, FaultInfo, VcpuContext};
use guest_sdk::abi::{abi_query, hypercall as nr, pack_version, Errno, ABI_MAJOR, ABI_MINOR};
use guest_sdk::abi::{CONSOLE_WRITE_MAX, DOMID_HV};
use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

/// What the cases need to know about the domain.
struct Ctx {
    /// Guest RAM is `0 .. ram`; `ram` is the first address outside it.
    ram: u64,
    features: u64,
    console_port: Port,
    timer_port: Port,
}

/// The expected outcome of a raw case.
#[derive(Clone, Copy)]
enum Expect {
    /// `-errno`.
    Err(Errno),
    /// Exactly this non-negative value.
    Ok(u64),
}

/// A case: a raw hypercall and its expected result, or a check with several steps.
enum Kind {
    Raw(Expect, fn(&Ctx) -> i64),
    Check(fn(&Ctx) -> Check),
}

/// `Ok(note)` passes (the note, if not empty, is printed after the name); `Err(why)` fails.
type Check = Result<String, String>;

struct Case {
    name: &'static str,
    kind: Kind,
}

const fn raw(name: &'static str, expect: Expect, call: fn(&Ctx) -> i64) -> Case {
    Case {
        name,
        kind: Kind::Raw(expect, call),
    }
}

const fn check(name: &'static str, f: fn(&Ctx) -> Check) -> Case {
    Case {
        name,
        kind: Kind::Check(f),
    }
}

use Errno::*;
use Expect::{Err as E, Ok as V};

/// Makes a raw hypercall.
fn hc(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    // SAFETY: every case passes either addresses outside guest RAM (which the hypervisor must
    // reject without touching memory) or buffers the case owns and keeps alive across the
    // call; the control-flow hypercalls get only the SDK's own upcall entry or handlers that
    // are never triggered; the event-channel cases never close a port the SDK uses.
    unsafe { guest_sdk::hypercall(nr, a1, a2, a3, a4, a5) }
}

fn evtchn_op(cmd: u64, a1: u64, a2: u64) -> i64 {
    hc(nr::EVTCHN_OP, cmd, a1, a2, 0, 0)
}

fn sched_op(cmd: u64, a1: u64, a2: u64) -> i64 {
    hc(nr::SCHED_OP, cmd, a1, a2, 0, 0)
}

fn vcpu_op(cmd: u64, vcpu: u64, gpa: u64) -> i64 {
    hc(nr::VCPU_OP, cmd, vcpu, gpa, 0, 0)
}

fn console_write(gpa: u64, len: u64) -> i64 {
    hc(nr::CONSOLE_WRITE, gpa, len, 0, 0, 0)
}

fn set_trap_table(table: &[TrapInfo]) -> i64 {
    hc(
        nr::SET_TRAP_TABLE,
        table.as_ptr() as u64,
        table.len() as u64,
        0,
        0,
        0,
    )
}

fn poll(rec: &SchedPoll) -> i64 {
    sched_op(sched::POLL, rec as *const SchedPoll as u64, 0)
}

fn poll_ports(ports: &[Port], deadline_ns: u64) -> i64 {
    poll(&SchedPoll {
        ports_gpa: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        reserved: 0,
        deadline_ns,
    })
}

/// A deadline a little in the future, so that a poll the hypervisor wrongly accepts cannot hang.
fn soon() -> u64 {
    guest_sdk::time::monotonic_ns() + 20 * guest_sdk::time::NS_PER_MS
}

/// Names a raw result: `0`, `EINVAL`, `unknown errno -9999`.
fn describe(rax: i64) -> String {
    match Errno::from_raw(rax) {
        Ok(v) => format!("{v}"),
        Err(Some(e)) => String::from(e.name()),
        Err(None) => format!("unknown errno {rax}"),
    }
}

fn expect_raw(expect: Expect, rax: i64) -> Check {
    let ok = match expect {
        Expect::Err(e) => rax == e.to_raw(),
        Expect::Ok(v) => rax >= 0 && rax as u64 == v,
    };
    if ok {
        return Ok(String::new());
    }
    let want = match expect {
        Expect::Err(e) => String::from(e.name()),
        Expect::Ok(v) => format!("{v}"),
    };
    Err(format!("expected {want}, got {}", describe(rax)))
}

/// Runs a raw hypercall inside a check and requires `expect`.
fn require(what: &str, expect: Expect, rax: i64) -> Result<u64, String> {
    expect_raw(expect, rax).map_err(|e| format!("{what}: {e}"))?;
    Ok(rax as u64)
}

/// Requires success (any value) and returns it.
fn require_ok(what: &str, rax: i64) -> Result<u64, String> {
    if rax < 0 {
        return Err(format!("{what}: expected success, got {}", describe(rax)));
    }
    Ok(rax as u64)
}

fn status(port: Port) -> Result<EvtchnStatus, String> {
    let mut st = EvtchnStatus::default();
    let rax = evtchn_op(
        evtchn::STATUS,
        u64::from(port),
        &mut st as *mut EvtchnStatus as u64,
    );
    require_ok(&format!("status({port})"), rax)?;
    Ok(st)
}

/// A port the status call reports as free.
fn free_port() -> Result<Port, String> {
    for port in (1..NR_EVENT_CHANNELS).rev() {
        if status(port)?.state == state::FREE {
            return Ok(port);
        }
    }
    Err(String::from("no free port found"))
}

fn bind_ipi() -> Result<Port, String> {
    require_ok("bind_ipi(0)", evtchn_op(evtchn::BIND_IPI, 0, 0)).map(|p| p as Port)
}

fn close(port: Port) -> Result<(), String> {
    require_ok(
        &format!("close({port})"),
        evtchn_op(evtchn::CLOSE, u64::from(port), 0),
    )
    .map(drop)
}

// Exception handler stubs for the trap-table cases. They are registered only for #BP, which the
// suite never raises; if one ever runs, `ud2` turns it into an unhandled #UD the hv reports.
core::arch::global_asm!(
    ".pushsection .text.conformance_stub_handler, \"ax\", @progbits",
    ".globl conformance_stub_handler",
    "conformance_stub_handler:",
    "    ud2",
    ".popsection",
    // An entry point for the vcpu_op(up) cases, which must never start it: spins with pause.
    ".pushsection .text.conformance_stub_vcpu, \"ax\", @progbits",
    ".globl conformance_stub_vcpu",
    "conformance_stub_vcpu:",
    "    pause",
    "    jmp conformance_stub_vcpu",
    ".popsection",
);

extern "C" {
    fn conformance_stub_handler();
    fn conformance_stub_vcpu();
}

fn stub_handler() -> u64 {
    conformance_stub_handler as *const () as u64
}

/// A valid trap entry: #BP (never raised by the suite) to the stub handler.
fn bp_entry() -> TrapInfo {
    TrapInfo {
        vector: 3,
        flags: 0,
        reserved: [0; 6],
        handler: stub_handler(),
    }
}

/// A valid context for the vcpu_op(up) cases (which must fail before using it).
fn vcpu_ctx() -> VcpuContext {
    static mut STACK: [u64; 512] = [0; 512];
    VcpuContext {
        rip: conformance_stub_vcpu as *const () as u64,
        rsp: core::ptr::addr_of!(STACK) as u64 + 512 * 8,
        rdi: 0,
        reserved: 0,
    }
}

static HITS: AtomicU32 = AtomicU32::new(0);

fn count_hit(_port: Port) {
    HITS.fetch_add(1, Ordering::AcqRel);
}

/// Yields until `HITS` reaches `n` (the hypervisor delivers pending upcalls on the way out of
/// a hypercall), a bounded number of times; returns the final count.
fn wait_hits(n: u32) -> u32 {
    for _ in 0..100 {
        if HITS.load(Ordering::Acquire) >= n {
            break;
        }
        guest_sdk::yield_now();
    }
    HITS.load(Ordering::Acquire)
}

/// Binds an IPI port to vCPU 0 with the counting handler, runs `f`, closes the port.
fn with_counted_ipi(f: impl FnOnce(Port) -> Check) -> Check {
    let port = bind_ipi()?;
    HITS.store(0, Ordering::Release);
    let r = guest_sdk::events::set_handler(port, count_hit)
        .map_err(|e| format!("set_handler: {e}"))
        .and_then(|()| f(port));
    let c = close(port);
    let note = r?;
    c?;
    Ok(note)
}

static CASES: &[Case] = &[
    // Hypercall numbers.
    raw("hypercall_nr_count_enosys", E(ENOSYS), |_| {
        hc(nr::COUNT, 0, 0, 0, 0, 0)
    }),
    raw("hypercall_nr_1000_enosys", E(ENOSYS), |_| {
        hc(1000, 0, 0, 0, 0, 0)
    }),
    raw("hypercall_nr_max_enosys", E(ENOSYS), |_| {
        hc(u64::MAX, 0, 0, 0, 0, 0)
    }),
    // abi_query.
    raw("abi_query_unknown_op", E(EINVAL), |_| {
        hc(nr::ABI_QUERY, 2, 0, 0, 0, 0)
    }),
    raw("abi_query_unknown_op_max", E(EINVAL), |_| {
        hc(nr::ABI_QUERY, u64::MAX, 0, 0, 0, 0)
    }),
    raw(
        "abi_query_version",
        V(pack_version(ABI_MAJOR, ABI_MINOR)),
        |_| hc(nr::ABI_QUERY, abi_query::VERSION, 0, 0, 0, 0),
    ),
    check("abi_query_features_match_start_info", |c| {
        let f = require_ok(
            "abi_query(features)",
            hc(nr::ABI_QUERY, abi_query::FEATURES, 0, 0, 0, 0),
        )?;
        if f != c.features {
            return Err(format!(
                "expected features {:#x} (start info), got {f:#x}",
                c.features
            ));
        }
        Ok(String::new())
    }),
    // console_write.
    raw("console_write_gpa_at_ram_end", E(EFAULT), |c| {
        console_write(c.ram, 1)
    }),
    raw("console_write_gpa_256g", E(EFAULT), |_| {
        console_write(0x40_0000_0000, 1)
    }),
    raw("console_write_gpa_near_max", E(EFAULT), |_| {
        console_write(u64::MAX - 10, 1)
    }),
    raw("console_write_range_wraps_address_space", E(EFAULT), |_| {
        console_write(u64::MAX - 10, 20)
    }),
    raw("console_write_range_runs_past_ram", E(EFAULT), |c| {
        console_write(c.ram - 8, 16)
    }),
    raw("console_write_len_4097", E(EINVAL), |_| {
        let buf = vec![b' '; CONSOLE_WRITE_MAX as usize + 1];
        console_write(buf.as_ptr() as u64, buf.len() as u64)
    }),
    check("console_write_valid", |_| {
        let msg = b"console_write: ok\n";
        require_ok(
            "console_write",
            console_write(msg.as_ptr() as u64, msg.len() as u64),
        )?;
        Ok(String::new())
    }),
    // set_trap_table.
    raw("trap_table_vector_32", E(EINVAL), |_| {
        set_trap_table(&[TrapInfo {
            vector: 32,
            ..bp_entry()
        }])
    }),
    raw("trap_table_unknown_flag", E(EINVAL), |_| {
        set_trap_table(&[TrapInfo {
            flags: 1 << 1,
            ..bp_entry()
        }])
    }),
    raw("trap_table_reserved_byte_nonzero", E(EINVAL), |_| {
        set_trap_table(&[TrapInfo {
            reserved: [0, 0, 0, 0, 0, 1],
            ..bp_entry()
        }])
    }),
    raw("trap_table_count_33", E(EINVAL), |_| {
        // 33 valid entries that remove handlers (there are none): only the count is wrong.
        let table: Vec<TrapInfo> = (0..=MAX_TRAP_ENTRIES)
            .map(|i| TrapInfo {
                vector: (i % 32) as u8,
                ..TrapInfo::default()
            })
            .collect();
        set_trap_table(&table)
    }),
    raw("trap_table_handler_outside_ram", E(EFAULT), |c| {
        set_trap_table(&[TrapInfo {
            handler: c.ram,
            ..bp_entry()
        }])
    }),
    raw("trap_table_gpa_outside_ram", E(EFAULT), |c| {
        hc(nr::SET_TRAP_TABLE, c.ram, 1, 0, 0, 0)
    }),
    check("trap_table_install_and_remove", |_| {
        require("install #BP", V(0), set_trap_table(&[bp_entry()]))?;
        require(
            "remove #BP",
            V(0),
            set_trap_table(&[TrapInfo {
                handler: 0,
                ..bp_entry()
            }]),
        )?;
        Ok(String::new())
    }),
    // set_callback: the ABI names no callback flag; bit 0 is taken to be TRAP_ALT_STACK (as for
    // trap entries), so the first bit that is unknown either way is bit 1.
    raw("set_callback_flag_bit1", E(EINVAL), |_| {
        hc(
            nr::SET_CALLBACK,
            guest_sdk::events::upcall_entry(),
            1 << 1,
            0,
            0,
            0,
        )
    }),
    raw("set_callback_flag_bit63", E(EINVAL), |_| {
        hc(
            nr::SET_CALLBACK,
            guest_sdk::events::upcall_entry(),
            1 << 63,
            0,
            0,
            0,
        )
    }),
    // sched_op.
    raw("sched_unknown_cmd", E(EINVAL), |_| sched_op(4, 0, 0)),
    raw("sched_unknown_cmd_max", E(EINVAL), |_| {
        sched_op(u64::MAX, 0, 0)
    }),
    raw("sched_poll_zero_ports", E(EINVAL), |c| {
        poll_ports(&[c.timer_port][..0], soon())
    }),
    raw("sched_poll_129_ports", E(EINVAL), |c| {
        let ports = vec![c.console_port; MAX_POLL_PORTS as usize + 1];
        poll_ports(&ports, soon())
    }),
    raw("sched_poll_record_outside_ram", E(EFAULT), |c| {
        sched_op(sched::POLL, c.ram, 0)
    }),
    raw("sched_poll_ports_outside_ram", E(EFAULT), |c| {
        poll(&SchedPoll {
            ports_gpa: c.ram,
            nr_ports: 1,
            reserved: 0,
            deadline_ns: soon(),
        })
    }),
    raw("sched_poll_reserved_nonzero", E(EINVAL), |c| {
        let ports = [c.console_port];
        poll(&SchedPoll {
            ports_gpa: ports.as_ptr() as u64,
            nr_ports: 1,
            reserved: 1,
            deadline_ns: soon(),
        })
    }),
    check("sched_poll_closed_port", |_| {
        let port = bind_ipi()?;
        close(port)?;
        require("poll", E(EINVAL), poll_ports(&[port], soon()))?;
        Ok(String::new())
    }),
    check("sched_poll_deadline_passed", |_| {
        let port = bind_ipi()?;
        // Deadline 1 ns: long past (0 would mean "no deadline").
        let r = require("poll", E(ETIMEDOUT), poll_ports(&[port], 1));
        close(port)?;
        r.map(|_| String::new())
    }),
    raw("sched_shutdown_unknown_reason", E(EINVAL), |_| {
        sched_op(sched::SHUTDOWN, 2, 0)
    }),
    raw("sched_poweroff_code_64", E(EINVAL), |_| {
        sched_op(
            sched::SHUTDOWN,
            shutdown_reason::POWEROFF,
            MAX_EXIT_CODE + 1,
        )
    }),
    // evtchn_op.
    raw("evtchn_unknown_cmd", E(EINVAL), |_| evtchn_op(99, 0, 0)),
    raw("evtchn_bind_virq_unknown_virq", E(EINVAL), |_| {
        evtchn_op(evtchn::BIND_VIRQ, u64::from(virq::COUNT), 0)
    }),
    raw("evtchn_bind_virq_vcpu_99", E(ESRCH), |_| {
        evtchn_op(evtchn::BIND_VIRQ, u64::from(virq::DEBUG), 99)
    }),
    raw("evtchn_bind_ipi_vcpu_99", E(ESRCH), |_| {
        evtchn_op(evtchn::BIND_IPI, 99, 0)
    }),
    check("evtchn_bind_virq_timer_twice", |c| {
        // The SDK's runtime has bound VIRQ_TIMER on vCPU 0 already; bind it (again) twice.
        let first = evtchn_op(evtchn::BIND_VIRQ, u64::from(virq::TIMER), 0);
        let second = evtchn_op(evtchn::BIND_VIRQ, u64::from(virq::TIMER), 0);
        for r in [first, second] {
            if r > 0 && r as Port != c.timer_port {
                close(r as Port)?;
            }
        }
        require("second bind", E(EEXIST), second)?;
        Ok(String::new())
    }),
    raw("evtchn_send_port_0", E(EINVAL), |_| {
        evtchn_op(evtchn::SEND, 0, 0)
    }),
    raw("evtchn_send_port_4096", E(EINVAL), |_| {
        evtchn_op(evtchn::SEND, u64::from(NR_EVENT_CHANNELS), 0)
    }),
    check("evtchn_send_never_opened_port", |_| {
        let port = free_port()?;
        require(
            &format!("send({port})"),
            E(EINVAL),
            evtchn_op(evtchn::SEND, u64::from(port), 0),
        )?;
        Ok(String::new())
    }),
    raw("evtchn_send_virq_port", E(EINVAL), |c| {
        evtchn_op(evtchn::SEND, u64::from(c.timer_port), 0)
    }),
    check("evtchn_close_never_opened_port", |_| {
        let port = free_port()?;
        require(
            &format!("close({port})"),
            E(EINVAL),
            evtchn_op(evtchn::CLOSE, u64::from(port), 0),
        )?;
        Ok(String::new())
    }),
    raw("evtchn_close_console_port", E(EPERM), |c| {
        evtchn_op(evtchn::CLOSE, u64::from(c.console_port), 0)
    }),
    raw("evtchn_status_gpa_outside_ram", E(EFAULT), |c| {
        evtchn_op(evtchn::STATUS, u64::from(c.console_port), c.ram)
    }),
    raw("evtchn_status_port_0", E(EINVAL), |_| {
        let mut st = EvtchnStatus::default();
        evtchn_op(evtchn::STATUS, 0, &mut st as *mut EvtchnStatus as u64)
    }),
    raw("evtchn_status_port_4096", E(EINVAL), |_| {
        let mut st = EvtchnStatus::default();
        evtchn_op(
            evtchn::STATUS,
            u64::from(NR_EVENT_CHANNELS),
            &mut st as *mut EvtchnStatus as u64,
        )
    }),
    check("evtchn_status_free_port", |_| {
        let port = NR_EVENT_CHANNELS - 1;
        let st = status(port)?;
        if st.state != state::FREE {
            return Err(format!(
                "expected state FREE ({}) for port {port}, got {}",
                state::FREE,
                st.state
            ));
        }
        Ok(String::new())
    }),
    check("evtchn_status_console_port", |c| {
        let st = status(c.console_port)?;
        if st.port != c.console_port
            || st.state != state::HV_BACKEND
            || st.remote_domid != u32::from(DOMID_HV)
        {
            return Err(format!(
                "expected port {} state HV_BACKEND ({}) remote {DOMID_HV:#x}, got {st:?}",
                c.console_port,
                state::HV_BACKEND
            ));
        }
        Ok(String::new())
    }),
    check("evtchn_status_timer_port", |c| {
        let st = status(c.timer_port)?;
        if st.state != state::VIRQ || st.virq != virq::TIMER || st.vcpu != 0 {
            return Err(format!(
                "expected state VIRQ ({}) virq TIMER vcpu 0, got {st:?}",
                state::VIRQ
            ));
        }
        Ok(String::new())
    }),
    check("evtchn_send_after_close", |_| {
        let port = bind_ipi()?;
        close(port)?;
        require(
            "send",
            E(EINVAL),
            evtchn_op(evtchn::SEND, u64::from(port), 0),
        )?;
        Ok(String::new())
    }),
    check("evtchn_mask_closed_port", |_| {
        let port = bind_ipi()?;
        close(port)?;
        require(
            "mask",
            E(EINVAL),
            evtchn_op(evtchn::MASK, u64::from(port), 0),
        )?;
        Ok(String::new())
    }),
    check("evtchn_unmask_closed_port", |_| {
        let port = bind_ipi()?;
        close(port)?;
        require(
            "unmask",
            E(EINVAL),
            evtchn_op(evtchn::UNMASK, u64::from(port), 0),
        )?;
        Ok(String::new())
    }),
    check("evtchn_port_exhaustion", |_| {
        let mut ports = Vec::new();
        let mut end = None;
        for _ in 0..NR_EVENT_CHANNELS {
            let r = evtchn_op(evtchn::BIND_IPI, 0, 0);
            if r < 0 {
                end = Some(r);
                break;
            }
            ports.push(r as Port);
        }
        let mut close_errors = 0;
        for &p in &ports {
            if evtchn_op(evtchn::CLOSE, u64::from(p), 0) != 0 {
                close_errors += 1;
            }
        }
        let n = ports.len();
        match end {
            None => Err(format!("expected ENOSPC, got {n} ports without it")),
            Some(r) if r != ENOSPC.to_raw() => Err(format!(
                "expected ENOSPC after {n} ports, got {}",
                describe(r)
            )),
            Some(_) if close_errors > 0 => {
                Err(format!("{close_errors} of the {n} ports did not close"))
            }
            Some(_) => Ok(format!("({n} ports before ENOSPC)")),
        }
    }),
    // vcpu_op.
    raw("vcpu_unknown_cmd", E(EINVAL), |_| vcpu_op(3, 0, 0)),
    raw("vcpu_up_vcpu_99", E(ESRCH), |_| {
        let ctx = vcpu_ctx();
        vcpu_op(vcpu::UP, 99, &ctx as *const VcpuContext as u64)
    }),
    raw("vcpu_is_up_vcpu_0", V(1), |_| vcpu_op(vcpu::IS_UP, 0, 0)),
    raw("vcpu_is_up_vcpu_99", E(ESRCH), |_| {
        vcpu_op(vcpu::IS_UP, 99, 0)
    }),
    raw("vcpu_up_vcpu_0_busy", E(EBUSY), |_| {
        let ctx = vcpu_ctx();
        vcpu_op(vcpu::UP, 0, &ctx as *const VcpuContext as u64)
    }),
    raw("vcpu_fault_info_vcpu_1", E(EINVAL), |_| {
        let mut fi = FaultInfo::default();
        vcpu_op(vcpu::FAULT_INFO, 1, &mut fi as *mut FaultInfo as u64)
    }),
    raw("vcpu_fault_info_gpa_outside_ram", E(EFAULT), |c| {
        vcpu_op(vcpu::FAULT_INFO, 0, c.ram)
    }),
    raw("vcpu_fault_info_valid", V(0), |_| {
        let mut fi = FaultInfo::default();
        vcpu_op(vcpu::FAULT_INFO, 0, &mut fi as *mut FaultInfo as u64)
    }),
    // Timer.
    check("timer_in_past_delivers_virq_timer", |c| {
        // With upcalls masked the SDK's handler cannot consume the event before the poll.
        let guard = guest_sdk::sync::mask_upcalls();
        let r = require("set_timer(1)", V(0), hc(nr::SET_TIMER, 1, 0, 0, 0, 0)).and_then(|_| {
            require(
                "poll(timer port)",
                V(0),
                poll_ports(
                    &[c.timer_port],
                    guest_sdk::time::monotonic_ns() + guest_sdk::time::NS_PER_SEC,
                ),
            )
        });
        drop(guard); // the SDK's timer handler takes the event now
        r.map(|_| String::new())
    }),
    // Valid use of event channels: delivery semantics.
    check("evtchn_send_sets_pending", |_| {
        with_counted_ipi(|port| {
            let guard = guest_sdk::sync::mask_upcalls();
            let sent = evtchn_op(evtchn::SEND, u64::from(port), 0);
            let st = status(port);
            drop(guard); // delivers the event: the handler runs once
            require("send", V(0), sent)?;
            let st = st?;
            if st.pending != 1 {
                return Err(format!("expected pending=1 after send, got {st:?}"));
            }
            let hits = wait_hits(1);
            if hits != 1 {
                return Err(format!(
                    "expected 1 handler call after unmasking upcalls, got {hits}"
                ));
            }
            Ok(String::new())
        })
    }),
    check("evtchn_masked_send_pends_without_upcall", |_| {
        with_counted_ipi(|port| {
            require("mask", V(0), evtchn_op(evtchn::MASK, u64::from(port), 0))?;
            require("send", V(0), evtchn_op(evtchn::SEND, u64::from(port), 0))?;
            for _ in 0..3 {
                guest_sdk::yield_now();
            }
            let st = status(port)?;
            if st.pending != 1 || st.masked != 1 {
                return Err(format!("expected pending=1 masked=1, got {st:?}"));
            }
            let hits = HITS.load(Ordering::Acquire);
            if hits != 0 {
                return Err(format!("expected no handler call, got {hits}"));
            }
            Ok(String::new())
        })
    }),
    check("evtchn_unmask_delivers_pending", |_| {
        with_counted_ipi(|port| {
            require("mask", V(0), evtchn_op(evtchn::MASK, u64::from(port), 0))?;
            require("send", V(0), evtchn_op(evtchn::SEND, u64::from(port), 0))?;
            require(
                "unmask",
                V(0),
                evtchn_op(evtchn::UNMASK, u64::from(port), 0),
            )?;
            let hits = wait_hits(1);
            if hits != 1 {
                return Err(format!("expected 1 handler call after unmask, got {hits}"));
            }
            let st = status(port)?;
            if st.pending != 0 || st.masked != 0 {
                return Err(format!("expected pending=0 masked=0, got {st:?}"));
            }
            Ok(String::new())
        })
    }),
    check("evtchn_events_coalesce", |_| {
        with_counted_ipi(|port| {
            let guard = guest_sdk::sync::mask_upcalls();
            let a = evtchn_op(evtchn::SEND, u64::from(port), 0);
            let b = evtchn_op(evtchn::SEND, u64::from(port), 0);
            drop(guard);
            require("first send", V(0), a)?;
            require("second send", V(0), b)?;
            let hits = wait_hits(2);
            if hits != 1 {
                return Err(format!(
                    "expected 1 handler call for 2 coalesced sends, got {hits}"
                ));
            }
            Ok(String::new())
        })
    }),
];

fn main(si: &StartInfo) {
    let Some(timer_port) = guest_sdk::time::timer_port() else {
        println!("conformance: the SDK runtime bound no timer port");
        guest_sdk::exit(1);
    };
    let ctx = Ctx {
        ram: si.ram_bytes,
        features: si.features,
        console_port: si.console_port,
        timer_port,
    };
    println!(
        "conformance: ABI {}.{} suite, {} cases, RAM {:#x} bytes",
        ABI_MAJOR,
        ABI_MINOR,
        CASES.len(),
        ctx.ram
    );
    let (mut passed, mut failed) = (0u32, 0u32);
    for case in CASES {
        let outcome = match &case.kind {
            Kind::Raw(expect, call) => expect_raw(*expect, call(&ctx)),
            Kind::Check(f) => f(&ctx),
        };
        match outcome {
            Ok(note) if note.is_empty() => {
                passed += 1;
                println!("PASS {}", case.name);
            }
            Ok(note) => {
                passed += 1;
                println!("PASS {} {note}", case.name);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why}", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    guest_sdk::exit(if failed == 0 { 0 } else { 1 });
}
