//! The ABI conformance suite (XTF's pattern): each case makes one hypercall with one hostile
//! input and expects the exact error the ABI documents (or, for valid-use cases, the documented
//! effect). Every case prints one line, `PASS name` or `FAIL name: expected X, got Y`; the run
//! ends with `N passed, M failed` and exits with code 0 if M is 0, else 1.
//!
//! The suite runs as two domains (`examples/conformance.toml`): `role=main` runs the cases,
//! `role=peer` (the same binary) is the other domain of the interdomain, grant and store cases.
//! They find each other through the store: each lists `/local/domain` and reads every domain's
//! `name` (`peer=NAME` on the command line overrides the name looked for; the defaults are
//! `conformance-peer` and `conformance`). The peer publishes what the main domain needs (grant
//! references, ports) under `/local/domain/<peer>/conf`, readable by the main domain only, then
//! serves commands the main domain writes to `/local/domain/<main>/conf-ctl/cmd` (it watches
//! that node) until told `done`, and powers off with 0. Run alone, the main domain still runs
//! every single-domain case and counts each case that needs the peer (or a second vCPU) as
//! failed, saying why: nothing is skipped silently.
//!
//! The cases use only `hypercall-abi` and the SDK's raw `hypercall`: the store client, the grant
//! helpers and the page-fault probe are written here against the ABI, so the suite can test any
//! implementation of it. The SDK's runtime provides the console, the upcall (for the delivery
//! cases), the clock and the heap.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_sdk::abi::evtchn::{self, state, virq, EvtchnStatus, Port};
use guest_sdk::abi::grant::{
    self as gt, CopyPtr, GrantCopy, GrantEntry, COPY_DST_GREF, COPY_SRC_GREF, GTF_PERMIT_ACCESS,
    GTF_READONLY, MAP_READONLY, MAX_COPY_OPS, MAX_GRANT_ENTRIES,
};
use guest_sdk::abi::multicall::{MulticallEntry, MAX_MULTICALL};
use guest_sdk::abi::ring::FrontRing;
use guest_sdk::abi::sched::{self, shutdown_reason, SchedPoll, MAX_EXIT_CODE, MAX_POLL_PORTS};
use guest_sdk::abi::shared_info::{SharedInfo, NR_EVENT_CHANNELS};
use guest_sdk::abi::store::{
    Access, DeviceState, Perms, Request, Response, StoreError, StoreSlot, Value, LIST_MAX,
    PATH_MAX, SLOT_WATCH_EVENT, STORE_PAYLOAD_MAX, STORE_RING_BYTES, VALUE_MAX,
};
use guest_sdk::abi::trap::{TrapInfo, MAX_TRAP_ENTRIES};
use guest_sdk::abi::vcpu::{self, FaultInfo, VcpuContext};
use guest_sdk::abi::{abi_query, hypercall as nr, pack_version, Errno, ABI_MAJOR, ABI_MINOR};
use guest_sdk::abi::{CONSOLE_WRITE_MAX, DOMID_HV, HYPERCALL_PORT, PAGE_SIZE};
use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

/// What the cases need to know about the domain, and the state the multi-step cases share.
struct Ctx {
    /// Guest RAM is `0 .. ram`; `ram` is the first address outside it.
    ram: u64,
    features: u64,
    console_port: Port,
    timer_port: Port,
    si: &'static StartInfo,
    /// The store client (`None` if the store ring could not be set up: store cases fail).
    store: RefCell<Option<Store>>,
    /// Why there is no store client.
    store_err: String,
    /// The peer domain, once it has published its half of the setup.
    peer: Option<Peer>,
    /// Why there is no peer.
    peer_err: String,
    /// Sequence number of the last command sent to the peer.
    seq: Cell<u64>,
    /// The local end of the interdomain channel to the peer, once bound.
    ipc: Cell<Option<Port>>,
    /// A window page whose mapping the peer revoked (for the unmap-after-revoke case).
    revoked_slot: Cell<Option<u64>>,
}

/// What the peer published for the main domain (`/local/domain/<peer>/conf/*`).
#[derive(Clone, Copy, Debug)]
struct Peer {
    domid: u16,
    /// Grant table size; every reference at or above it is invalid.
    table_size: u64,
    /// Read-write grant to us of page A.
    gref_rw: u64,
    /// Read-only grant to us of page B.
    gref_ro: u64,
    /// Grant of page C to a domain that is not us.
    gref_other: u64,
    /// Read-write grant to us of page D, for the end-access-while-mapped and revoke cases.
    gref_revoke: u64,
    /// Read-write grant to us of page E, which the peer ends on request.
    gref_end: u64,
    /// An entry without `GTF_PERMIT_ACCESS`.
    gref_empty: u64,
    /// Entries for us that are broken: non-zero reserved field, unknown flag, unaligned frame,
    /// frame outside the peer's RAM.
    gref_reserved: u64,
    gref_badflag: u64,
    gref_unaligned: u64,
    gref_outside: u64,
    /// A grant to `DOMID_HV` (no domain may use it).
    gref_to_hv: u64,
    /// An unbound port allocated for us.
    port: u64,
    /// An unbound port allocated for another domain (the peer itself).
    port_other: u64,
    /// An open port that is not unbound (the peer's console port).
    port_busy: u64,
}

/// The expected outcome of a raw case.
#[derive(Clone, Copy)]
enum Expect {
    /// `-errno`.
    Err(Errno),
    /// Exactly this non-negative value.
    Ok(u64),
}

/// A case: a raw hypercall and its expected result, or a check with several steps, or a check
/// that needs the peer domain.
enum Kind {
    Raw(Expect, fn(&Ctx) -> i64),
    Check(fn(&Ctx) -> Check),
    Peer(fn(&Ctx, &Peer) -> Check),
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

const fn peer(name: &'static str, f: fn(&Ctx, &Peer) -> Check) -> Case {
    Case {
        name,
        kind: Kind::Peer(f),
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

static BASE_CASES: &[Case] = &[
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

// ---------------------------------------------------------------------------------------------
// Infrastructure for the interdomain, grant, multicall and store cases: written against the ABI
// only (raw hypercalls, the shared-info page, the store ring), not against SDK wrappers.
// ---------------------------------------------------------------------------------------------

/// How long a store request may take before the client gives up.
const STORE_TIMEOUT_NS: u64 = 2 * NS_PER_SEC;
/// How long the main domain looks for the peer's name in `/local/domain`.
const FIND_PEER_NS: u64 = 2 * NS_PER_SEC;
/// How long it then waits for the peer's `conf/ready`.
const PEER_READY_NS: u64 = 10 * NS_PER_SEC;
/// How long a command to the peer may take.
const PEER_CMD_NS: u64 = 5 * NS_PER_SEC;
/// How long the peer serves without hearing `done` before it gives up.
const PEER_LIFETIME_NS: u64 = 600 * NS_PER_SEC;
/// A domain id that names no domain of the suite's configuration.
const NO_SUCH_DOMID: u64 = 999;
/// The domain the peer grants page C to: a valid id that is neither of the suite's domains.
const OTHER_DOMID: u16 = 0x7fef;

/// The pending word of `port` in the shared-info page.
fn pending_word(port: Port) -> &'static AtomicU64 {
    let si = guest_sdk::start_info().expect("runtime started");
    let gpa = si.shared_info_gpa + SharedInfo::pending_word_offset(port) as u64;
    // SAFETY: the shared-info page is in our RAM (identity-mapped) for the domain's life; the
    // word is 8-byte aligned and the hv updates it only atomically.
    unsafe { &*(gpa as *const AtomicU64) }
}

fn is_pending(port: Port) -> bool {
    pending_word(port).load(Ordering::SeqCst) & (1 << (port % 64)) != 0
}

/// The address of page `slot` of our grant window.
fn win(c: &Ctx, slot: u64) -> u64 {
    c.si.grant_window_gpa + slot * PAGE_SIZE
}

/// The byte the peer puts at offset `i` of its page tagged `tag`.
fn pat(tag: u8, i: usize) -> u8 {
    ((i as u8).wrapping_mul(31)).wrapping_add((i >> 8) as u8) ^ tag
}
const TAG_A: u8 = 0xa1;
const TAG_B: u8 = 0xb2;
const TAG_C: u8 = 0xc3;
const TAG_D: u8 = 0xd4;
const TAG_E: u8 = 0xe5;
/// What the main domain writes into page A through its read-write mapping.
const MAGIC: &[u8; 16] = b"main-wrote-this!";
/// Where in page A it writes it.
const MAGIC_OFF: u64 = 256;

/// A `GrantCopy` status the hv never writes: an element left with it was not processed.
const STATUS_UNSET: i64 = 0x5a5a;

/// Runs one copy operation (the call must return 0) and checks its status.
fn copy_status(op: GrantCopy, want: Expect) -> Check {
    let mut ops = [op];
    require("copy", V(0), run_copy(&mut ops))?;
    expect_raw(want, ops[0].status).map_err(|e| format!("status: {e}"))
}

/// A `MulticallEntry` result the hv never writes.
const RESULT_UNSET: i64 = 0x5a5a;

fn mc(op: u64, args: [u64; 5]) -> MulticallEntry {
    MulticallEntry {
        op,
        args,
        result: RESULT_UNSET,
    }
}

fn run_multicall(batch: &mut [MulticallEntry]) -> i64 {
    hc(
        nr::MULTICALL,
        batch.as_mut_ptr() as u64,
        batch.len() as u64,
        0,
        0,
        0,
    )
}

// ---- the page-fault probe ----

#[path = "../shared/raw_abi.rs"]
mod raw_abi;
use raw_abi::*;

#[path = "../shared/pf_probe.rs"]
mod pf_probe;
use pf_probe::*;

// ---- the store client ----

#[path = "../shared/raw_store.rs"]
mod raw_store;
use raw_store::*;

/// Runs `f` with the store client, or fails the case if there is none.
fn with_store<T>(c: &Ctx, f: impl FnOnce(&mut Store) -> Result<T, String>) -> Result<T, String> {
    let mut guard = c.store.borrow_mut();
    let s = guard
        .as_mut()
        .ok_or_else(|| format!("no store client: {}", c.store_err))?;
    f(s)
}

fn home(c: &Ctx) -> String {
    format!("/local/domain/{}", c.si.domid)
}

// ---- the peer's commands ----

const CMD_CHECK_A: u32 = 1;
const CMD_END_ACCESS: u32 = 2;
const CMD_REVOKE: u32 = 3;
const CMD_SET_TABLE: u32 = 4;
const CMD_CLOSE_PORT: u32 = 5;
const CMD_EVENTS: u32 = 6;
const CMD_CHECK_B: u32 = 7;
const CMD_DONE: u32 = 8;

/// Asks the peer to do `op(arg)` and returns its result: writes `(seq, op, arg)` to
/// `conf-ctl/cmd` in our home (the peer watches it) and waits for `(seq, result)` in the
/// peer's `conf/reply`.
fn peer_cmd(c: &Ctx, p: &Peer, op: u32, arg: u64) -> Result<i64, String> {
    let seq = c.seq.get() + 1;
    c.seq.set(seq);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..12].copy_from_slice(&op.to_le_bytes());
    b[12..].copy_from_slice(&(arg as u32).to_le_bytes());
    let cmd = format!("{}/conf-ctl/cmd", home(c));
    let reply = format!("/local/domain/{}/conf/reply", p.domid);
    with_store(c, |s| {
        want_ok("write conf-ctl/cmd", s.write(&cmd, Value::Bytes(&b)))?;
        let deadline = now() + PEER_CMD_NS;
        loop {
            match s.read(&reply)? {
                Reply::Value(Val::Bytes(r)) if r.len() == 16 && r[..8] == seq.to_le_bytes() => {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&r[8..]);
                    return Ok(i64::from_le_bytes(v));
                }
                Reply::Error(StoreError::NoEntry) => {
                    // The peer's home goes when it powers off, which it does right after
                    // answering `done`.
                    let name = format!("/local/domain/{}/name", p.domid);
                    if let Reply::Error(StoreError::NoEntry) = s.read(&name)? {
                        return match op {
                            CMD_DONE => Ok(0),
                            _ => Err(format!("the peer is gone (command {op})")),
                        };
                    }
                }
                _ => {}
            }
            if now() >= deadline {
                return Err(format!("the peer did not answer command {op} within 5 s"));
            }
            guest_sdk::time::sleep(NS_PER_MS);
        }
    })
}

// ---- the peer role ----

#[repr(C, align(4096))]
struct PeerPages([[u8; PAGE_SIZE as usize]; 5]);
static mut PEER_PAGES: PeerPages = PeerPages([[0; PAGE_SIZE as usize]; 5]);

#[repr(C, align(4096))]
struct PeerTable([GrantEntry; 16]);
static mut PEER_TABLE: PeerTable = PeerTable([EMPTY_ENTRY; 16]);

/// The peer's grant references (indices into PEER_TABLE) and page indices.
const P_EMPTY: usize = 0;
const P_RW: usize = 1;
const P_RO: usize = 2;
const P_OTHER: usize = 3;
const P_REVOKE: usize = 4;
const P_END: usize = 5;
const P_RESERVED: usize = 6;
const P_BADFLAG: usize = 7;
const P_UNALIGNED: usize = 8;
const P_OUTSIDE: usize = 9;
const P_TO_HV: usize = 10;
const P_TABLE_SIZE: usize = 11;
const PAGE_A: usize = 0;
const PAGE_B: usize = 1;
const PAGE_C: usize = 2;
const PAGE_D: usize = 3;
const PAGE_E: usize = 4;
const PAGE_TAGS: [u8; 5] = [TAG_A, TAG_B, TAG_C, TAG_D, TAG_E];

fn peer_page(k: usize) -> *mut u8 {
    // SAFETY: only the address is taken; the pages are accessed with volatile operations.
    unsafe { (core::ptr::addr_of_mut!(PEER_PAGES) as *mut u8).add(k * PAGE_SIZE as usize) }
}

fn peer_table() -> *mut GrantEntry {
    core::ptr::addr_of_mut!(PEER_TABLE) as *mut GrantEntry
}

fn peer_page_matches(k: usize, off: usize, want: &[u8]) -> bool {
    // SAFETY: reads inside page k of PEER_PAGES (off + len <= 4096, checked by the callers);
    // volatile because the main domain writes the page through its mapping.
    want.iter()
        .enumerate()
        .all(|(i, &b)| unsafe { core::ptr::read_volatile(peer_page(k).add(off + i)) } == b)
}

fn peer_exit(code: u32, why: &str) -> ! {
    println!("peer: {why}");
    guest_sdk::exit(code)
}

fn peer_role(si: &'static StartInfo) -> ! {
    let me = si.domid;
    let mut s = Store::new(si).unwrap_or_else(|e| peer_exit(3, &format!("store: {e}")));
    let main_name = arg(si, "peer").unwrap_or("conformance");
    let main = match s.find_domain(me, main_name, now() + 10 * NS_PER_SEC) {
        Ok(Some(d)) => d,
        Ok(None) => peer_exit(3, &format!("no domain named {main_name:?} within 10 s")),
        Err(e) => peer_exit(3, &format!("looking for {main_name:?}: {e}")),
    };
    let mut setup = || -> Result<(u64, u64), String> {
        for (k, &tag) in PAGE_TAGS.iter().enumerate() {
            for i in 0..PAGE_SIZE as usize {
                // SAFETY: inside page k of PEER_PAGES, which nothing else uses yet.
                unsafe { core::ptr::write_volatile(peer_page(k).add(i), pat(tag, i)) };
            }
        }
        let page = |k: usize| peer_page(k) as u64;
        let entry = |flags: u16, domid: u16, reserved: u32, frame: u64| GrantEntry {
            flags,
            domid,
            reserved,
            frame,
        };
        let ro = GTF_PERMIT_ACCESS | GTF_READONLY;
        let rw = GTF_PERMIT_ACCESS;
        let entries: [(usize, GrantEntry); P_TABLE_SIZE] = [
            (P_EMPTY, EMPTY_ENTRY),
            (P_RW, entry(rw, main, 0, page(PAGE_A))),
            (P_RO, entry(ro, main, 0, page(PAGE_B))),
            (P_OTHER, entry(rw, OTHER_DOMID, 0, page(PAGE_C))),
            (P_REVOKE, entry(rw, main, 0, page(PAGE_D))),
            (P_END, entry(rw, main, 0, page(PAGE_E))),
            (P_RESERVED, entry(rw, main, 1, page(PAGE_A))),
            (P_BADFLAG, entry(rw | 0x80, main, 0, page(PAGE_A))),
            (P_UNALIGNED, entry(rw, main, 0, page(PAGE_A) + 1)),
            (P_OUTSIDE, entry(rw, main, 0, si.ram_bytes)),
            (P_TO_HV, entry(rw, DOMID_HV, 0, page(PAGE_C))),
        ];
        for (i, e) in entries {
            // SAFETY: i < 16, inside PEER_TABLE; the hv reads it only once it is registered.
            unsafe { core::ptr::write_volatile(peer_table().add(i), e) };
        }
        require(
            "set_table",
            V(0),
            grant_op(
                gt::SET_TABLE,
                peer_table() as u64,
                P_TABLE_SIZE as u64,
                0,
                0,
            ),
        )?;
        let port = require_ok(
            "alloc_unbound(main)",
            evtchn_op(evtchn::ALLOC_UNBOUND, u64::from(main), 0),
        )?;
        require("mask", V(0), evtchn_op(evtchn::MASK, port, 0))?;
        let port_other = require_ok(
            "alloc_unbound(self)",
            evtchn_op(evtchn::ALLOC_UNBOUND, u64::from(me), 0),
        )?;
        let conf = format!("/local/domain/{me}/conf");
        want_ok("mkdir conf", s.call(&Request::Mkdir { path: &conf }))?;
        want_ok(
            "set conf perms",
            s.call(&Request::SetPerms {
                path: &conf,
                perms: perms(me, &[(main, Access::Read)]),
            }),
        )?;
        let keys: [(&str, u64); 16] = [
            ("table-size", P_TABLE_SIZE as u64),
            ("gref-empty", P_EMPTY as u64),
            ("gref-rw", P_RW as u64),
            ("gref-ro", P_RO as u64),
            ("gref-other", P_OTHER as u64),
            ("gref-revoke", P_REVOKE as u64),
            ("gref-end", P_END as u64),
            ("gref-reserved", P_RESERVED as u64),
            ("gref-badflag", P_BADFLAG as u64),
            ("gref-unaligned", P_UNALIGNED as u64),
            ("gref-outside", P_OUTSIDE as u64),
            ("gref-to-hv", P_TO_HV as u64),
            ("port", port),
            ("port-other", port_other),
            ("port-busy", u64::from(si.console_port)),
            ("main", u64::from(main)),
        ];
        for (k, v) in keys {
            want_ok(k, s.write(&format!("{conf}/{k}"), Value::U64(v)))?;
        }
        // A node only the peer may read (its home's default perms).
        want_ok(
            "private",
            s.write(&format!("/local/domain/{me}/private"), Value::U64(0x5ec2e7)),
        )?;
        want_ok(
            "ready",
            s.write(&format!("{conf}/ready"), Value::Bool(true)),
        )?;
        Ok((port, port_other))
    };
    let (port, _port_other) = setup().unwrap_or_else(|e| peer_exit(3, &format!("setup: {e}")));
    let port = port as Port;
    println!("peer: domain {me} ready for domain {main} ({main_name})");

    let cmd_path = format!("/local/domain/{main}/conf-ctl/cmd");
    let reply_path = format!("/local/domain/{me}/conf/reply");
    if let Err(e) = want_ok(
        "watch cmd",
        s.call(&Request::Watch {
            path: &cmd_path,
            token: 7,
        }),
    ) {
        peer_exit(3, &e);
    }
    let store_port = si.store_port;
    let give_up = now() + PEER_LIFETIME_NS;
    let (mut last, mut events, mut port_open) = (0u64, 0u64, true);
    loop {
        // Keep two credits posted for the watch; the events only say "read cmd again".
        s.events.clear();
        while s.credits < 2 {
            if let Err(e) = s.post_credit() {
                peer_exit(3, &format!("post credit: {e}"));
            }
        }
        let both = [port, store_port];
        let ports: &[Port] = if port_open { &both } else { &both[1..] };
        let _ = poll_ports(ports, (now() + 250 * NS_PER_MS).min(give_up));
        if port_open && is_pending(port) {
            clear_pending(port);
            events += 1;
            let r = evtchn_op(evtchn::SEND, u64::from(port), 0);
            if r != 0 {
                println!("peer: echo on port {port}: {}", describe(r));
            }
        }
        clear_pending(store_port);
        let cmd = match s.read(&cmd_path) {
            Ok(r) => r,
            Err(e) => peer_exit(3, &format!("read cmd: {e}")),
        };
        match cmd {
            Reply::Value(Val::Bytes(b)) if b.len() == 16 => {
                let mut w = [0u8; 8];
                w.copy_from_slice(&b[..8]);
                let seq = u64::from_le_bytes(w);
                let op = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                let a = u64::from(u32::from_le_bytes([b[12], b[13], b[14], b[15]]));
                if seq > last {
                    last = seq;
                    let result: i64 = match op {
                        CMD_CHECK_A => {
                            (a as usize + MAGIC.len() <= PAGE_SIZE as usize
                                && peer_page_matches(PAGE_A, a as usize, MAGIC))
                                as i64
                        }
                        CMD_END_ACCESS => grant_op(gt::END_ACCESS, a, 0, 0, 0),
                        CMD_REVOKE => grant_op(gt::REVOKE, a, 0, 0, 0),
                        CMD_SET_TABLE => grant_op(
                            gt::SET_TABLE,
                            peer_table() as u64,
                            P_TABLE_SIZE as u64,
                            0,
                            0,
                        ),
                        CMD_CLOSE_PORT => {
                            let r = evtchn_op(evtchn::CLOSE, u64::from(port), 0);
                            port_open &= r != 0;
                            r
                        }
                        CMD_EVENTS => events as i64,
                        CMD_CHECK_B => {
                            let want: Vec<u8> =
                                (0..PAGE_SIZE as usize).map(|i| pat(TAG_B, i)).collect();
                            peer_page_matches(PAGE_B, 0, &want) as i64
                        }
                        CMD_DONE => 0,
                        _ => EINVAL.to_raw(),
                    };
                    let mut r = [0u8; 16];
                    r[..8].copy_from_slice(&seq.to_le_bytes());
                    r[8..].copy_from_slice(&result.to_le_bytes());
                    if let Err(e) = want_ok("reply", s.write(&reply_path, Value::Bytes(&r))) {
                        peer_exit(3, &e);
                    }
                    if op == CMD_DONE {
                        peer_exit(0, &format!("done ({events} event(s) echoed)"));
                    }
                }
            }
            Reply::Error(StoreError::NoEntry) => {
                // No command yet, or the main domain is gone.
                match s.read(&format!("/local/domain/{main}/name")) {
                    Ok(Reply::Error(StoreError::NoEntry)) => {
                        peer_exit(4, &format!("domain {main} is gone without saying done"))
                    }
                    Ok(_) => {}
                    Err(e) => peer_exit(3, &format!("read name: {e}")),
                }
            }
            _ => {}
        }
        if now() >= give_up {
            peer_exit(4, &format!("no `done` from domain {main} within 600 s"));
        }
    }
}

// ---- the main role's setup ----

/// Finds the peer and reads what it published; also opens `conf-ctl` in our home to it.
fn find_peer(si: &StartInfo, s: &mut Store) -> Result<Peer, String> {
    let me = si.domid;
    let name = arg(si, "peer").unwrap_or("conformance-peer");
    let domid = s
        .find_domain(me, name, now() + FIND_PEER_NS)?
        .ok_or_else(|| {
            format!(
                "no domain named {name:?} in /local/domain within 2 s \
             (run the suite with examples/conformance.toml)"
            )
        })?;
    let conf = format!("/local/domain/{domid}/conf");
    let deadline = now() + PEER_READY_NS;
    loop {
        if let Reply::Value(Val::Bool(true)) = s.read(&format!("{conf}/ready"))? {
            break;
        }
        if now() >= deadline {
            return Err(format!(
                "domain {domid} ({name}) did not publish {conf}/ready within 10 s"
            ));
        }
        guest_sdk::time::sleep(5 * NS_PER_MS);
    }
    let mut get = |k: &str| -> Result<u64, String> {
        s.read_u64(&format!("{conf}/{k}"))?
            .ok_or_else(|| format!("{conf}/{k} is missing"))
    };
    let peer = Peer {
        domid,
        table_size: get("table-size")?,
        gref_rw: get("gref-rw")?,
        gref_ro: get("gref-ro")?,
        gref_other: get("gref-other")?,
        gref_revoke: get("gref-revoke")?,
        gref_end: get("gref-end")?,
        gref_empty: get("gref-empty")?,
        gref_reserved: get("gref-reserved")?,
        gref_badflag: get("gref-badflag")?,
        gref_unaligned: get("gref-unaligned")?,
        gref_outside: get("gref-outside")?,
        gref_to_hv: get("gref-to-hv")?,
        port: get("port")?,
        port_other: get("port-other")?,
        port_busy: get("port-busy")?,
    };
    if get("main")? != u64::from(me) {
        return Err(format!("domain {domid} serves another domain"));
    }
    let ctl = format!("/local/domain/{me}/conf-ctl");
    want_ok("mkdir conf-ctl", s.call(&Request::Mkdir { path: &ctl }))?;
    want_ok(
        "set conf-ctl perms",
        s.call(&Request::SetPerms {
            path: &ctl,
            perms: perms(me, &[(domid, Access::Read)]),
        }),
    )?;
    Ok(peer)
}

// ---------------------------------------------------------------------------------------------
// Interdomain event channels.
// ---------------------------------------------------------------------------------------------

fn status_is(st: &EvtchnStatus, state: u32, remote_domid: u32, remote_port: Option<u32>) -> bool {
    st.state == state
        && st.remote_domid == remote_domid
        && remote_port.is_none_or(|p| st.remote_port == p)
}

/// Waits (with the port masked, so the SDK's upcall cannot consume it) until `port` is pending.
fn wait_pending(port: Port, timeout_ns: u64) -> Result<(), String> {
    let r = poll_ports(&[port], now() + timeout_ns);
    if r == 0 && is_pending(port) {
        clear_pending(port);
        Ok(())
    } else {
        Err(format!(
            "port {port} not pending within {} ms (poll: {})",
            timeout_ns / NS_PER_MS,
            describe(r)
        ))
    }
}

static INTERDOMAIN_CASES: &[Case] = &[
    raw("evtchn_alloc_unbound_no_such_domain", E(ESRCH), |_| {
        evtchn_op(evtchn::ALLOC_UNBOUND, NO_SUCH_DOMID, 0)
    }),
    raw("evtchn_alloc_unbound_domid_above_u16", E(ESRCH), |c| {
        // Truncated to 16 bits this would name the caller, which may be named.
        evtchn_op(evtchn::ALLOC_UNBOUND, (1 << 16) | u64::from(c.si.domid), 0)
    }),
    check("evtchn_alloc_unbound_self_status", |c| {
        let me = c.si.domid;
        let p = require_ok(
            "alloc_unbound(self)",
            evtchn_op(evtchn::ALLOC_UNBOUND, u64::from(me), 0),
        )? as Port;
        let st = status(p);
        close(p)?;
        let st = st?;
        if !status_is(&st, state::UNBOUND, u32::from(me), Some(0)) || st.vcpu != 0 {
            return Err(format!(
                "expected UNBOUND for domain {me} on vCPU 0, got {st:?}"
            ));
        }
        Ok(String::new())
    }),
    raw("evtchn_bind_interdomain_no_such_domain", E(ESRCH), |_| {
        evtchn_op(evtchn::BIND_INTERDOMAIN, NO_SUCH_DOMID, 1)
    }),
    raw("evtchn_bind_interdomain_own_console_port", E(EINVAL), |c| {
        evtchn_op(
            evtchn::BIND_INTERDOMAIN,
            u64::from(c.si.domid),
            u64::from(c.console_port),
        )
    }),
    raw("evtchn_bind_interdomain_port_0", E(EINVAL), |c| {
        evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(c.si.domid), 0)
    }),
    check("evtchn_send_unbound_port_raises_nothing", |c| {
        let p = require_ok(
            "alloc_unbound(self)",
            evtchn_op(evtchn::ALLOC_UNBOUND, u64::from(c.si.domid), 0),
        )? as Port;
        let sent = evtchn_op(evtchn::SEND, u64::from(p), 0);
        let st = status(p);
        close(p)?;
        require("send", V(0), sent)?;
        let st = st?;
        if st.pending != 0 {
            return Err(format!("the unbound port became pending: {st:?}"));
        }
        Ok(String::new())
    }),
    check("evtchn_interdomain_loopback", |c| {
        let me = c.si.domid;
        let p = require_ok(
            "alloc_unbound(self)",
            evtchn_op(evtchn::ALLOC_UNBOUND, u64::from(me), 0),
        )? as Port;
        let r = (|| -> Check {
            let q = require_ok(
                "bind_interdomain(self)",
                evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(me), u64::from(p)),
            )? as Port;
            let r = (|| -> Check {
                require("mask", V(0), evtchn_op(evtchn::MASK, u64::from(p), 0))?;
                let (sp, sq) = (status(p)?, status(q)?);
                if !status_is(&sp, state::INTERDOMAIN, u32::from(me), Some(q))
                    || !status_is(&sq, state::INTERDOMAIN, u32::from(me), Some(p))
                {
                    return Err(format!("expected a connected pair, got {sp:?} and {sq:?}"));
                }
                require("send(q)", V(0), evtchn_op(evtchn::SEND, u64::from(q), 0))?;
                let sp = status(p)?;
                let sq = status(q)?;
                clear_pending(p);
                if sp.pending != 1 || sq.pending != 0 {
                    return Err(format!(
                        "send on {q} must raise {p} only: pending {}/{}",
                        sp.pending, sq.pending
                    ));
                }
                close(p)?;
                let sq = status(q)?;
                if !status_is(&sq, state::UNBOUND, u32::from(me), Some(0)) {
                    return Err(format!(
                        "after closing {p}, {q} must be UNBOUND, got {sq:?}"
                    ));
                }
                Ok(String::new())
            })();
            let _ = evtchn_op(evtchn::CLOSE, u64::from(q), 0);
            r
        })();
        let _ = evtchn_op(evtchn::CLOSE, u64::from(p), 0);
        r
    }),
    peer("evtchn_bind_peer_port_not_unbound", |_, p| {
        expect_raw(
            E(EINVAL),
            evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(p.domid), p.port_busy),
        )
        .map(|_| format!("(the peer's console port {})", p.port_busy))
    }),
    peer("evtchn_bind_peer_port_4096", |_, p| {
        expect_raw(
            E(EINVAL),
            evtchn_op(
                evtchn::BIND_INTERDOMAIN,
                u64::from(p.domid),
                u64::from(NR_EVENT_CHANNELS),
            ),
        )
    }),
    peer("evtchn_bind_peer_port_unbound_for_another", |_, p| {
        expect_raw(
            E(EACCES),
            evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(p.domid), p.port_other),
        )
    }),
    peer("evtchn_bind_interdomain_peer", |c, p| {
        let local = require_ok(
            "bind_interdomain",
            evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(p.domid), p.port),
        )? as Port;
        c.ipc.set(Some(local));
        require("mask", V(0), evtchn_op(evtchn::MASK, u64::from(local), 0))?;
        let st = status(local)?;
        if !status_is(
            &st,
            state::INTERDOMAIN,
            u32::from(p.domid),
            Some(p.port as u32),
        ) || st.vcpu != 0
        {
            return Err(format!(
                "expected INTERDOMAIN to domain {} port {}, got {st:?}",
                p.domid, p.port
            ));
        }
        Ok(format!("(local port {local})"))
    }),
    peer("evtchn_bind_interdomain_twice", |_, p| {
        expect_raw(
            E(EINVAL),
            evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(p.domid), p.port),
        )
    }),
    peer("evtchn_interdomain_send_and_echo", |c, _| {
        let local = c
            .ipc
            .get()
            .ok_or("no interdomain port (the bind case failed)")?;
        clear_pending(local);
        require("send", V(0), evtchn_op(evtchn::SEND, u64::from(local), 0))?;
        wait_pending(local, 3 * NS_PER_SEC)?;
        Ok(String::new())
    }),
    peer("evtchn_interdomain_peer_saw_event", |c, p| {
        let n = peer_cmd(c, p, CMD_EVENTS, 0)?;
        if n < 1 {
            return Err(format!("the peer counted {n} events"));
        }
        Ok(format!("({n})"))
    }),
    peer("evtchn_peer_close_makes_port_unbound", |c, p| {
        let local = c
            .ipc
            .get()
            .ok_or("no interdomain port (the bind case failed)")?;
        let r = peer_cmd(c, p, CMD_CLOSE_PORT, 0)?;
        expect_raw(V(0), r).map_err(|e| format!("peer's close: {e}"))?;
        let st = status(local)?;
        if !status_is(&st, state::UNBOUND, u32::from(p.domid), Some(0)) {
            return Err(format!(
                "expected UNBOUND for domain {} (remote port 0), got {st:?}",
                p.domid
            ));
        }
        Ok(String::new())
    }),
    peer("evtchn_send_after_peer_closed", |c, _| {
        let local = c
            .ipc
            .get()
            .ok_or("no interdomain port (the bind case failed)")?;
        expect_raw(V(0), evtchn_op(evtchn::SEND, u64::from(local), 0))
    }),
    peer("evtchn_close_after_peer_closed", |c, _| {
        let local = c
            .ipc
            .take()
            .ok_or("no interdomain port (the bind case failed)")?;
        require("close", V(0), evtchn_op(evtchn::CLOSE, u64::from(local), 0))?;
        let st = status(local)?;
        if st.state != state::FREE {
            return Err(format!("expected FREE, got {st:?}"));
        }
        Ok(String::new())
    }),
];

// ---------------------------------------------------------------------------------------------
// Grant tables.
// ---------------------------------------------------------------------------------------------

#[repr(C, align(4096))]
struct OwnTable([GrantEntry; 4]);
static mut OWN_TABLE: OwnTable = OwnTable([EMPTY_ENTRY; 4]);

fn own_table() -> u64 {
    core::ptr::addr_of_mut!(OWN_TABLE) as u64
}

/// A page-aligned page of our RAM (for "a RAM address" arguments).
fn ram_page() -> u64 {
    // The PEER_PAGES are in RAM in every role; the main domain never uses them otherwise.
    peer_page(PAGE_E) as u64
}

/// Maps, runs `f`, unmaps (even if `f` failed); the unmap must succeed.
fn with_map(domid: u16, gref: u64, gpa: u64, flags: u64, f: impl FnOnce() -> Check) -> Check {
    require(
        &format!("map(ref {gref} at {gpa:#x})"),
        V(0),
        map(u64::from(domid), gref, gpa, flags),
    )?;
    let r = f();
    let u = unmap(gpa);
    let note = r?;
    require("unmap", V(0), u)?;
    Ok(note)
}

static GRANT_CASES: &[Case] = &[
    raw("grant_unknown_cmd", E(EINVAL), |_| grant_op(99, 0, 0, 0, 0)),
    raw("grant_end_access_without_table", E(EINVAL), |_| {
        grant_op(gt::END_ACCESS, 0, 0, 0, 0)
    }),
    raw("grant_revoke_without_table", E(EINVAL), |_| {
        grant_op(gt::REVOKE, 0, 0, 0, 0)
    }),
    raw("grant_set_table_unaligned", E(EINVAL), |_| {
        grant_op(gt::SET_TABLE, own_table() + 8, 4, 0, 0)
    }),
    raw("grant_set_table_zero_entries", E(EINVAL), |_| {
        grant_op(gt::SET_TABLE, own_table(), 0, 0, 0)
    }),
    raw("grant_set_table_1025_entries", E(EINVAL), |_| {
        grant_op(gt::SET_TABLE, own_table(), MAX_GRANT_ENTRIES + 1, 0, 0)
    }),
    raw("grant_set_table_gpa_at_ram_end", E(EFAULT), |c| {
        grant_op(gt::SET_TABLE, c.ram, 1, 0, 0)
    }),
    raw("grant_set_table_runs_past_ram_end", E(EFAULT), |c| {
        grant_op(gt::SET_TABLE, c.ram - PAGE_SIZE, 512, 0, 0)
    }),
    raw("grant_set_table_gpa_in_hv_region", E(EFAULT), |_| {
        grant_op(gt::SET_TABLE, 0x40_0000_0000, 1, 0, 0)
    }),
    raw("grant_set_table_wraps_address_space", E(EFAULT), |_| {
        grant_op(gt::SET_TABLE, u64::MAX - PAGE_SIZE + 1, 1024, 0, 0)
    }),
    raw("grant_set_table_valid", V(0), |_| {
        grant_op(gt::SET_TABLE, own_table(), 4, 0, 0)
    }),
    raw("grant_end_access_ref_beyond_table", E(EINVAL), |_| {
        grant_op(gt::END_ACCESS, 4, 0, 0, 0)
    }),
    raw("grant_revoke_ref_beyond_table", E(EINVAL), |_| {
        grant_op(gt::REVOKE, u64::MAX, 0, 0, 0)
    }),
    raw("grant_revoke_unmapped_returns_0", V(0), |_| {
        grant_op(gt::REVOKE, 0, 0, 0, 0)
    }),
    raw("grant_map_no_such_domain", E(ESRCH), |c| {
        map(NO_SUCH_DOMID, 0, win(c, 0), 0)
    }),
    raw("grant_map_domid_above_u16", E(ESRCH), |c| {
        map((1 << 16) | u64::from(c.si.domid), 0, win(c, 0), 0)
    }),
    raw("grant_map_domid_hv", E(ESRCH), |c| {
        map(u64::from(DOMID_HV), 0, win(c, 0), 0)
    }),
    raw("grant_map_self", E(EINVAL), |c| {
        map(u64::from(c.si.domid), 0, win(c, 0), 0)
    }),
    raw("grant_unmap_never_mapped", E(EINVAL), |c| unmap(win(c, 0))),
    raw("grant_unmap_ram_address", E(EINVAL), |_| unmap(ram_page())),
    raw("grant_unmap_past_window_end", E(EINVAL), |c| {
        unmap(win(c, u64::from(c.si.grant_window_pages)))
    }),
    raw("grant_copy_count_17", E(E2BIG), |_| {
        let mut ops = vec![GrantCopy::default(); MAX_COPY_OPS as usize + 1];
        run_copy(&mut ops)
    }),
    raw("grant_copy_array_outside_ram", E(EFAULT), |c| {
        grant_op(gt::COPY, c.ram, 1, 0, 0)
    }),
    raw("grant_copy_array_straddles_ram_end", E(EFAULT), |c| {
        grant_op(gt::COPY, c.ram - 8, 1, 0, 0)
    }),
    raw("grant_copy_empty_batch_address_not_examined", V(0), |_| {
        // ABI §3.4: an empty range is never EFAULT and its address is not examined.
        grant_op(gt::COPY, 0x40_0000_0000, 0, 0, 0)
    }),
    check("grant_copy_own_to_own", |_| {
        let src = *b"copied by the hv";
        let mut dst = [0u8; 16];
        copy_status(
            gcopy(
                own(src.as_ptr() as u64),
                own(dst.as_mut_ptr() as u64),
                16,
                0,
            ),
            V(0),
        )?;
        // SAFETY: `dst` is a live local the hv wrote through its address.
        let got = unsafe { core::ptr::read_volatile(&dst) };
        if got != src {
            return Err(format!("destination holds {got:?}"));
        }
        Ok(String::new())
    }),
    check("grant_copy_len_0", |_| {
        let b = [0u8; 8];
        copy_status(
            gcopy(own(b.as_ptr() as u64), own(b.as_ptr() as u64), 0, 0),
            E(EINVAL),
        )
    }),
    check("grant_copy_len_4097", |_| {
        let b = vec![0u8; 2 * PAGE_SIZE as usize];
        let a = b.as_ptr() as u64;
        copy_status(gcopy(own(a), own(a), PAGE_SIZE as u32 + 1, 0), E(EINVAL))
    }),
    check("grant_copy_unknown_flag", |_| {
        let b = [0u8; 8];
        let a = b.as_ptr() as u64;
        copy_status(gcopy(own(a), own(a), 4, 1 << 2), E(EINVAL))
    }),
    check("grant_copy_reserved_pad_nonzero", |_| {
        let b = [0u8; 8];
        let a = b.as_ptr() as u64;
        copy_status(
            GrantCopy {
                pad: 1,
                ..gcopy(own(a), own(a), 4, 0)
            },
            E(EINVAL),
        )
    }),
    check("grant_copy_ptr_reserved_pad_nonzero", |_| {
        let b = [0u8; 8];
        let a = b.as_ptr() as u64;
        copy_status(gcopy(CopyPtr { pad: 1, ..own(a) }, own(a), 4, 0), E(EINVAL))
    }),
    check("grant_copy_ptr_gref_without_flag", |_| {
        let b = [0u8; 8];
        let a = b.as_ptr() as u64;
        copy_status(
            gcopy(own(a), CopyPtr { gref: 1, ..own(a) }, 4, 0),
            E(EINVAL),
        )
    }),
    check("grant_copy_ptr_domid_without_flag", |_| {
        let b = [0u8; 8];
        let a = b.as_ptr() as u64;
        copy_status(
            gcopy(CopyPtr { domid: 1, ..own(a) }, own(a), 4, 0),
            E(EINVAL),
        )
    }),
    check("grant_copy_own_src_outside_ram", |c| {
        let b = [0u8; 8];
        copy_status(gcopy(own(c.ram), own(b.as_ptr() as u64), 4, 0), E(EFAULT))
    }),
    check("grant_copy_own_dst_runs_past_ram_end", |c| {
        let b = [0u8; 8];
        copy_status(
            gcopy(own(b.as_ptr() as u64), own(c.ram - 2), 4, 0),
            E(EFAULT),
        )
    }),
    check("grant_copy_gref_no_such_domain", |_| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(NO_SUCH_DOMID as u16, 0, 0),
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(ESRCH),
        )
    }),
    check("grant_copy_gref_self", |c| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(c.si.domid, 0, 0),
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(EINVAL),
        )
    }),
    // With the peer's grants.
    peer("grant_map_ref_beyond_table", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.table_size, win(c, 0), 0),
        )
    }),
    peer("grant_map_ref_huge", |c, p| {
        expect_raw(E(EINVAL), map(u64::from(p.domid), u64::MAX, win(c, 0), 0))
    }),
    peer("grant_map_ref_not_permitted", |c, p| {
        expect_raw(
            E(ENOENT),
            map(u64::from(p.domid), p.gref_empty, win(c, 0), 0),
        )
    }),
    peer("grant_map_ref_for_another_domain", |c, p| {
        expect_raw(
            E(EACCES),
            map(u64::from(p.domid), p.gref_other, win(c, 0), 0),
        )
    }),
    peer("grant_map_ref_granted_to_hv", |c, p| {
        expect_raw(
            E(EACCES),
            map(u64::from(p.domid), p.gref_to_hv, win(c, 0), MAP_READONLY),
        )
    }),
    peer("grant_map_readonly_grant_writable", |c, p| {
        expect_raw(E(EACCES), map(u64::from(p.domid), p.gref_ro, win(c, 0), 0))
    }),
    peer("grant_map_below_window", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_rw, win(c, 0) - PAGE_SIZE, 0),
        )
    }),
    peer("grant_map_past_window_end", |c, p| {
        let end = win(c, u64::from(c.si.grant_window_pages));
        expect_raw(E(EINVAL), map(u64::from(p.domid), p.gref_rw, end, 0))
    }),
    peer("grant_map_unaligned_in_window", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_rw, win(c, 0) + 8, 0),
        )
    }),
    peer("grant_map_at_ram_address", |_, p| {
        expect_raw(E(EINVAL), map(u64::from(p.domid), p.gref_rw, ram_page(), 0))
    }),
    peer("grant_map_unknown_flag", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_rw, win(c, 0), 1 << 1),
        )
    }),
    peer("grant_entry_reserved_nonzero", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_reserved, win(c, 0), 0),
        )
    }),
    peer("grant_entry_unknown_flag", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_badflag, win(c, 0), 0),
        )
    }),
    peer("grant_entry_frame_unaligned", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_unaligned, win(c, 0), 0),
        )
    }),
    peer("grant_entry_frame_outside_granter_ram", |c, p| {
        expect_raw(
            E(EINVAL),
            map(u64::from(p.domid), p.gref_outside, win(c, 0), 0),
        )
    }),
    peer("grant_map_rw_reads_peer_page", |c, p| {
        install_pf_handler()?;
        let w = win(c, 0);
        with_map(p.domid, p.gref_rw, w, 0, || {
            probe_page(w, |i| pat(TAG_A, i)).map(|()| String::new())
        })
    }),
    peer("grant_map_same_slot_twice", |c, p| {
        let w = win(c, 0);
        with_map(p.domid, p.gref_rw, w, 0, || {
            expect_raw(
                E(EBUSY),
                map(u64::from(p.domid), p.gref_ro, w, MAP_READONLY),
            )
        })
    }),
    peer("grant_map_one_grant_in_two_slots", |c, p| {
        install_pf_handler()?;
        let (w0, w1) = (win(c, 0), win(c, 1));
        with_map(p.domid, p.gref_rw, w0, 0, || {
            with_map(p.domid, p.gref_rw, w1, MAP_READONLY, || {
                probe_write(w0 + 7, 0x77).map_err(|f| format!("write faulted: {f:?}"))?;
                let seen = probe_read(w1 + 7).map_err(|f| format!("read faulted: {f:?}"))?;
                probe_write(w0 + 7, pat(TAG_A, 7)).map_err(|f| format!("{f:?}"))?;
                if seen != 0x77 {
                    return Err(format!("the second mapping shows {seen:#x}, not 0x77"));
                }
                Ok(String::new())
            })
        })
    }),
    peer("grant_unmap_twice", |c, p| {
        let w = win(c, 0);
        require("map", V(0), map(u64::from(p.domid), p.gref_rw, w, 0))?;
        require("first unmap", V(0), unmap(w))?;
        expect_raw(E(EINVAL), unmap(w)).map_err(|e| format!("second unmap: {e}"))
    }),
    peer("grant_unmapped_page_faults", |c, p| {
        install_pf_handler()?;
        let w = win(c, 0);
        require("map", V(0), map(u64::from(p.domid), p.gref_rw, w, 0))?;
        probe_read(w).map_err(|f| format!("read while mapped faulted: {f:?}"))?;
        require("unmap", V(0), unmap(w))?;
        want_fault(probe_read(w + 16), w + 16, PF_USER, PF_PRESENT | PF_WRITE)
    }),
    peer("grant_rw_write_seen_by_peer", |c, p| {
        install_pf_handler()?;
        let w = win(c, 0);
        with_map(p.domid, p.gref_rw, w, 0, || {
            for (i, &b) in MAGIC.iter().enumerate() {
                probe_write(w + MAGIC_OFF + i as u64, b)
                    .map_err(|f| format!("write faulted: {f:?}"))?;
            }
            match peer_cmd(c, p, CMD_CHECK_A, MAGIC_OFF)? {
                1 => Ok(String::new()),
                r => Err(format!("the peer does not see what we wrote (answer {r})")),
            }
        })
    }),
    peer("grant_map_readonly_reads_peer_page", |c, p| {
        install_pf_handler()?;
        let w = win(c, 1);
        with_map(p.domid, p.gref_ro, w, MAP_READONLY, || {
            probe_page(w, |i| pat(TAG_B, i)).map(|()| String::new())
        })
    }),
    peer("grant_readonly_mapping_write_faults", |c, p| {
        install_pf_handler()?;
        let w = win(c, 1);
        let note = with_map(p.domid, p.gref_ro, w, MAP_READONLY, || {
            want_fault(
                probe_write(w + 8, 0xee),
                w + 8,
                PF_PRESENT | PF_WRITE | PF_USER,
                0,
            )
        })?;
        match peer_cmd(c, p, CMD_CHECK_B, 0)? {
            1 => Ok(note),
            r => Err(format!("the peer's read-only page changed (answer {r})")),
        }
    }),
    peer("grant_rw_grant_mapped_readonly_write_faults", |c, p| {
        install_pf_handler()?;
        let w = win(c, 2);
        with_map(p.domid, p.gref_rw, w, MAP_READONLY, || {
            want_fault(
                probe_write(w + 9, 0xee),
                w + 9,
                PF_PRESENT | PF_WRITE | PF_USER,
                0,
            )
        })
    }),
    peer("grant_peer_end_access_while_mapped", |c, p| {
        with_map(p.domid, p.gref_revoke, win(c, 3), 0, || {
            let r = peer_cmd(c, p, CMD_END_ACCESS, p.gref_revoke)?;
            expect_raw(E(EBUSY), r).map_err(|e| format!("peer's end_access: {e}"))
        })
    }),
    peer("grant_peer_set_table_while_mapped", |c, p| {
        with_map(p.domid, p.gref_revoke, win(c, 3), 0, || {
            let r = peer_cmd(c, p, CMD_SET_TABLE, 0)?;
            expect_raw(E(EBUSY), r).map_err(|e| format!("peer's set_table: {e}"))
        })
    }),
    peer("grant_peer_end_access_then_map_enoent", |c, p| {
        let w = win(c, 4);
        require("map", V(0), map(u64::from(p.domid), p.gref_end, w, 0))?;
        require("unmap", V(0), unmap(w))?;
        let r = peer_cmd(c, p, CMD_END_ACCESS, p.gref_end)?;
        expect_raw(V(0), r).map_err(|e| format!("peer's end_access: {e}"))?;
        expect_raw(E(ENOENT), map(u64::from(p.domid), p.gref_end, w, 0))
            .map_err(|e| format!("map after end_access: {e}"))
    }),
    peer("grant_peer_revoke_unmaps", |c, p| {
        install_pf_handler()?;
        let w = win(c, 3);
        require("map", V(0), map(u64::from(p.domid), p.gref_revoke, w, 0))?;
        let first = probe_read(w).map_err(|f| format!("read while mapped faulted: {f:?}"))?;
        if first != pat(TAG_D, 0) {
            let _ = unmap(w);
            return Err(format!("page D starts with {first:#x}"));
        }
        let r = peer_cmd(c, p, CMD_REVOKE, p.gref_revoke)?;
        c.revoked_slot.set(Some(w));
        expect_raw(V(1), r).map_err(|e| format!("peer's revoke (mappings removed): {e}"))?;
        want_fault(probe_read(w + 32), w + 32, PF_USER, PF_PRESENT)
    }),
    peer("grant_map_at_revoked_slot", |c, p| {
        let w = c
            .revoked_slot
            .get()
            .ok_or("no revoked mapping (the revoke case failed early)")?;
        expect_raw(E(EBUSY), map(u64::from(p.domid), p.gref_rw, w, 0))
    }),
    peer("grant_peer_set_table_with_revoked_mapping", |c, p| {
        c.revoked_slot
            .get()
            .ok_or("no revoked mapping (the revoke case failed early)")?;
        let r = peer_cmd(c, p, CMD_SET_TABLE, 0)?;
        expect_raw(V(0), r).map_err(|e| format!("peer's set_table: {e}"))
    }),
    peer("grant_peer_end_access_with_revoked_mapping", |c, p| {
        c.revoked_slot
            .get()
            .ok_or("no revoked mapping (the revoke case failed early)")?;
        let r = peer_cmd(c, p, CMD_END_ACCESS, p.gref_revoke)?;
        expect_raw(V(0), r).map_err(|e| format!("peer's end_access: {e}"))
    }),
    peer("grant_unmap_revoked_slot", |c, _| {
        let w = c
            .revoked_slot
            .take()
            .ok_or("no revoked mapping (the revoke case failed early)")?;
        expect_raw(V(0), unmap(w))
    }),
    peer("grant_map_after_revoke_enoent", |c, p| {
        expect_raw(
            E(ENOENT),
            map(u64::from(p.domid), p.gref_revoke, win(c, 3), 0),
        )
    }),
    peer("grant_copy_from_readonly_grant", |_, p| {
        let mut b = [0u8; 64];
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_ro, 100),
                own(b.as_mut_ptr() as u64),
                64,
                COPY_SRC_GREF,
            ),
            V(0),
        )?;
        // SAFETY: `b` is a live local the hv wrote through its address.
        let got = unsafe { core::ptr::read_volatile(&b) };
        if let Some(i) = (0..64).find(|&i| got[i] != pat(TAG_B, 100 + i)) {
            return Err(format!(
                "byte {i} is {:#x}, expected {:#x}",
                got[i],
                pat(TAG_B, 100 + i)
            ));
        }
        Ok(String::new())
    }),
    peer("grant_copy_to_rw_grant_and_back", |_, p| {
        let out = *b"copied into page A by grant copy";
        let mut back = [0u8; 32];
        copy_status(
            gcopy(
                own(out.as_ptr() as u64),
                gptr(p.domid, p.gref_rw, 1024),
                32,
                COPY_DST_GREF,
            ),
            V(0),
        )?;
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_rw, 1024),
                own(back.as_mut_ptr() as u64),
                32,
                COPY_SRC_GREF,
            ),
            V(0),
        )?;
        // SAFETY: as above.
        let got = unsafe { core::ptr::read_volatile(&back) };
        if got != out {
            return Err(format!("read back {got:?}"));
        }
        Ok(String::new())
    }),
    peer("grant_copy_ref_beyond_table", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(p.domid, p.table_size, 0),
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(EINVAL),
        )
    }),
    peer("grant_copy_ref_not_permitted", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_empty, 0),
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(ENOENT),
        )
    }),
    peer("grant_copy_ref_for_another_domain", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_other, 0),
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(EACCES),
        )
    }),
    peer("grant_copy_write_to_readonly_grant", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                own(b.as_ptr() as u64),
                gptr(p.domid, p.gref_ro, 0),
                4,
                COPY_DST_GREF,
            ),
            E(EACCES),
        )
    }),
    peer("grant_copy_crosses_granted_page", |_, p| {
        let b = [0u8; 16];
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_rw, 4090),
                own(b.as_ptr() as u64),
                16,
                COPY_SRC_GREF,
            ),
            E(EINVAL),
        )
    }),
    peer("grant_copy_offset_4096", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_rw, PAGE_SIZE),
                own(b.as_ptr() as u64),
                1,
                COPY_SRC_GREF,
            ),
            E(EINVAL),
        )
    }),
    peer("grant_copy_offset_wraps", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                gptr(p.domid, p.gref_rw, u64::MAX - 1),
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(EINVAL),
        )
    }),
    peer("grant_copy_gref_ptr_reserved_pad_nonzero", |_, p| {
        let b = [0u8; 8];
        copy_status(
            gcopy(
                CopyPtr {
                    pad: 1,
                    ..gptr(p.domid, p.gref_rw, 0)
                },
                own(b.as_ptr() as u64),
                4,
                COPY_SRC_GREF,
            ),
            E(EINVAL),
        )
    }),
    peer("grant_copy_batch_status_per_element", |_, p| {
        let mut buf = [0u8; 64];
        let a = buf.as_mut_ptr() as u64;
        let mut ops = [
            gcopy(gptr(p.domid, p.gref_ro, 0), own(a), 8, COPY_SRC_GREF),
            gcopy(gptr(p.domid, p.table_size, 0), own(a + 8), 8, COPY_SRC_GREF),
            gcopy(own(a), gptr(p.domid, p.gref_ro, 0), 8, COPY_DST_GREF),
            gcopy(
                gptr(p.domid, p.gref_rw, 4095),
                own(a + 16),
                2,
                COPY_SRC_GREF,
            ),
            gcopy(own(a), own(a + 32), 8, 0),
        ];
        require("copy", V(0), run_copy(&mut ops))?;
        let want = [0, EINVAL.to_raw(), EACCES.to_raw(), EINVAL.to_raw(), 0];
        let got: Vec<i64> = ops.iter().map(|o| o.status).collect();
        if got != want {
            return Err(format!("statuses {got:?}, expected {want:?}"));
        }
        // SAFETY: as above.
        let b = unsafe { core::ptr::read_volatile(&buf) };
        if (0..8).any(|i| b[i] != pat(TAG_B, i) || b[32 + i] != pat(TAG_B, i)) {
            return Err(String::from(
                "the good elements did not copy page B's bytes",
            ));
        }
        Ok(String::new())
    }),
    peer("grant_copy_16_ops", |_, p| {
        let mut buf = [0u8; 16 * 8];
        let a = buf.as_mut_ptr() as u64;
        let mut ops: Vec<GrantCopy> = (0..MAX_COPY_OPS)
            .map(|i| {
                gcopy(
                    gptr(p.domid, p.gref_ro, i * 8),
                    own(a + i * 8),
                    8,
                    COPY_SRC_GREF,
                )
            })
            .collect();
        require("copy", V(0), run_copy(&mut ops))?;
        if let Some((i, o)) = ops.iter().enumerate().find(|(_, o)| o.status != 0) {
            return Err(format!("element {i}: status {}", describe(o.status)));
        }
        // SAFETY: as above.
        let b = unsafe { core::ptr::read_volatile(&buf) };
        if let Some(i) = (0..b.len()).find(|&i| b[i] != pat(TAG_B, i)) {
            return Err(format!("byte {i} differs from page B"));
        }
        Ok(String::new())
    }),
];

// ---------------------------------------------------------------------------------------------
// Multicall.
// ---------------------------------------------------------------------------------------------

static MULTICALL_CASES: &[Case] = &[
    raw("multicall_count_33", E(E2BIG), |_| {
        let mut batch = vec![mc(nr::ABI_QUERY, [0; 5]); MAX_MULTICALL as usize + 1];
        run_multicall(&mut batch)
    }),
    raw("multicall_array_outside_ram", E(EFAULT), |c| {
        hc(nr::MULTICALL, c.ram, 1, 0, 0, 0)
    }),
    raw("multicall_array_straddles_ram_end", E(EFAULT), |c| {
        hc(nr::MULTICALL, c.ram - 8, 1, 0, 0, 0)
    }),
    raw("multicall_array_in_hv_region", E(EFAULT), |_| {
        hc(nr::MULTICALL, 0x40_0000_0000, 1, 0, 0, 0)
    }),
    raw("multicall_empty_batch_address_not_examined", V(0), |_| {
        // ABI §3.4: an empty range is never EFAULT and its address is not examined.
        hc(nr::MULTICALL, 0x40_0000_0000, 0, 0, 0, 0)
    }),
    check("multicall_nested", |_| {
        let mut inner = [mc(nr::ABI_QUERY, [abi_query::VERSION, 0, 0, 0, 0])];
        let mut batch = [mc(nr::MULTICALL, [inner.as_mut_ptr() as u64, 1, 0, 0, 0])];
        require("multicall", V(0), run_multicall(&mut batch))?;
        expect_raw(E(EINVAL), batch[0].result).map_err(|e| format!("result: {e}"))?;
        if inner[0].result != RESULT_UNSET {
            return Err(String::from("the nested batch ran"));
        }
        Ok(String::new())
    }),
    check("multicall_block_inside", |_| {
        let mut batch = [mc(nr::SCHED_OP, [sched::BLOCK, 0, 0, 0, 0])];
        require("multicall", V(0), run_multicall(&mut batch))?;
        expect_raw(E(EINVAL), batch[0].result).map_err(|e| format!("result: {e}"))
    }),
    check("multicall_poll_inside", |c| {
        let ports = [c.console_port];
        let rec = SchedPoll {
            ports_gpa: ports.as_ptr() as u64,
            nr_ports: 1,
            reserved: 0,
            deadline_ns: soon(),
        };
        let mut batch = [mc(
            nr::SCHED_OP,
            [sched::POLL, &rec as *const SchedPoll as u64, 0, 0, 0],
        )];
        require("multicall", V(0), run_multicall(&mut batch))?;
        expect_raw(E(EINVAL), batch[0].result).map_err(|e| format!("result: {e}"))
    }),
    check("multicall_results_per_entry", |c| {
        let mut batch = [
            mc(nr::ABI_QUERY, [abi_query::VERSION, 0, 0, 0, 0]),
            mc(999, [0; 5]),
            mc(nr::CONSOLE_WRITE, [c.ram, 1, 0, 0, 0]),
            mc(nr::EVTCHN_OP, [99, 0, 0, 0, 0]),
            mc(nr::ABI_QUERY, [abi_query::FEATURES, 0, 0, 0, 0]),
            mc(nr::VCPU_OP, [vcpu::IS_UP, 0, 0, 0, 0]),
        ];
        require("multicall", V(0), run_multicall(&mut batch))?;
        let want = [
            pack_version(ABI_MAJOR, ABI_MINOR) as i64,
            ENOSYS.to_raw(),
            EFAULT.to_raw(),
            EINVAL.to_raw(),
            c.features as i64,
            1,
        ];
        let got: Vec<i64> = batch.iter().map(|e| e.result).collect();
        if got != want {
            return Err(format!("results {got:?}, expected {want:?}"));
        }
        Ok(String::new())
    }),
    check("multicall_entry_effect_persists", |_| {
        let mut batch = [mc(nr::EVTCHN_OP, [evtchn::BIND_IPI, 0, 0, 0, 0])];
        require("multicall", V(0), run_multicall(&mut batch))?;
        let port = require_ok("bind_ipi in the batch", batch[0].result)? as Port;
        let st = status(port);
        close(port)?;
        let st = st?;
        if st.state != state::IPI {
            return Err(format!("expected an IPI port, got {st:?}"));
        }
        Ok(String::new())
    }),
    check("multicall_32_entries", |_| {
        let mut batch = vec![mc(nr::ABI_QUERY, [abi_query::VERSION, 0, 0, 0, 0]); 32];
        require("multicall", V(0), run_multicall(&mut batch))?;
        let v = pack_version(ABI_MAJOR, ABI_MINOR) as i64;
        if let Some(i) = batch.iter().position(|e| e.result != v) {
            return Err(format!("entry {i}: {}", describe(batch[i].result)));
        }
        Ok(String::new())
    }),
    raw(
        "console_write_empty_range_address_not_examined",
        V(0),
        |_| {
            // ABI §3.4: an empty range is never EFAULT and its address is not examined.
            console_write(0x40_0000_0000, 0)
        },
    ),
];

// ---------------------------------------------------------------------------------------------
// vCPU contexts (need a second vCPU that is down: examples/conformance.toml gives two).
// ---------------------------------------------------------------------------------------------

/// A vCPU that is down, or why there is none.
fn down_vcpu(c: &Ctx) -> Result<u64, String> {
    if c.si.nr_vcpus < 2 {
        return Err(format!(
            "needs a second vCPU that is down; this domain has {} (run examples/conformance.toml)",
            c.si.nr_vcpus
        ));
    }
    require("is_up(1)", V(0), vcpu_op(vcpu::IS_UP, 1, 0))?;
    Ok(1)
}

fn up_with(c: &Ctx, ctx: VcpuContext, want: Expect) -> Check {
    let v = down_vcpu(c)?;
    expect_raw(
        want,
        vcpu_op(vcpu::UP, v, &ctx as *const VcpuContext as u64),
    )
}

static VCPU_CASES: &[Case] = &[
    check("vcpu_up_context_reserved_nonzero", |c| {
        up_with(
            c,
            VcpuContext {
                reserved: 1,
                ..vcpu_ctx()
            },
            E(EINVAL),
        )
    }),
    check("vcpu_up_rip_outside_ram", |c| {
        up_with(
            c,
            VcpuContext {
                rip: c.ram,
                ..vcpu_ctx()
            },
            E(EFAULT),
        )
    }),
    check("vcpu_up_rsp_outside_ram", |c| {
        up_with(
            c,
            VcpuContext {
                rsp: c.ram + 16,
                ..vcpu_ctx()
            },
            E(EFAULT),
        )
    }),
    check("vcpu_up_context_outside_ram", |c| {
        let v = down_vcpu(c)?;
        expect_raw(E(EFAULT), vcpu_op(vcpu::UP, v, c.ram - 16))
    }),
    // Last: a vCPU wrongly started by it only spins in the stub (which uses no stack).
    check("vcpu_up_rsp_0", |c| {
        // [rsp - 8, rsp) = [-8, 0) wraps below address 0: not inside RAM.
        up_with(
            c,
            VcpuContext {
                rsp: 0,
                ..vcpu_ctx()
            },
            E(EFAULT),
        )
    }),
];

// ---------------------------------------------------------------------------------------------
// The store.
// ---------------------------------------------------------------------------------------------

fn st_err(c: &Ctx, req: &Request<'_>, want: StoreError) -> Check {
    with_store(c, |s| want_store_err("answer", s.call(req), want))
}

/// A raw slot with `data[..len]` = `payload`.
fn raw_slot(req_id: u32, flags: u16, len: u16, payload: &[u8]) -> StoreSlot {
    let mut s = StoreSlot::ZERO;
    s.req_id = req_id;
    s.flags = flags;
    s.len = len;
    s.data[..payload.len()].copy_from_slice(payload);
    s
}

/// Sends a raw slot; the answer must carry `req_id`, flags 0 and `Error(want)`.
fn slot_err(c: &Ctx, slot: StoreSlot, want: StoreError) -> Check {
    with_store(c, |s| {
        let a = s.call_slot(&slot)?;
        if a.req_id != slot.req_id || a.flags != 0 {
            return Err(format!(
                "answer has req_id {} flags {:#x}, expected {} and 0",
                a.req_id, a.flags, slot.req_id
            ));
        }
        want_store_err("answer", decode_answer(&a), want)
    })
}

/// The encoding of `Read { path }` (a request the store would accept).
fn read_bytes(path: &str) -> Vec<u8> {
    let mut b = vec![0u8; STORE_PAYLOAD_MAX];
    let n = guest_sdk::abi::store::encode_request(&Request::Read { path }, &mut b).unwrap_or(0);
    b.truncate(n);
    b
}

static STORE_CASES: &[Case] = &[
    check("store_read_own_name", |c| {
        let path = format!("{}/name", home(c));
        match with_store(c, |s| s.read(&path))? {
            Reply::Value(Val::Str(n)) if !n.is_empty() => Ok(format!("({n})")),
            other => Err(format!("expected a Str, got {}", describe_reply(&other))),
        }
    }),
    check("store_list_local_domain_has_self", |c| {
        let names = with_store(c, |s| s.list_all("/local/domain"))?;
        let me = format!("{}", c.si.domid);
        if !names.contains(&me) || !names.iter().any(|n| *n == format!("{DOMID_HV}")) {
            return Err(format!("{names:?} lacks {me} or {DOMID_HV}"));
        }
        Ok(String::new())
    }),
    check("store_home_perms", |c| {
        let h = home(c);
        match with_store(c, |s| s.call(&Request::GetPerms { path: &h }))? {
            Reply::Perms(p) if p.owner == c.si.domid && p.others == Access::None => {
                Ok(String::new())
            }
            other => Err(format!(
                "expected owner {} others None, got {}",
                c.si.domid,
                describe_reply(&other)
            )),
        }
    }),
    check("store_write_read_back", |c| {
        let h = home(c);
        with_store(c, |s| {
            let base = format!("{h}/rw");
            let values = [
                Value::Bool(true),
                Value::U64(u64::MAX),
                Value::I64(-5),
                Value::Str("hello"),
                Value::Bytes(&[0, 1, 255]),
                Value::State(DeviceState::InitWait),
            ];
            for (i, v) in values.iter().enumerate() {
                let p = format!("{base}/v{i}");
                want_ok("write", s.write(&p, *v))?;
                match s.read(&p)? {
                    Reply::Value(got) if got == Val::of(v) => {}
                    other => {
                        return Err(format!("{p}: wrote {v:?}, read {}", describe_reply(&other)))
                    }
                }
            }
            want_ok("remove", s.call(&Request::Remove { path: &base }))?;
            Ok(String::new())
        })
    }),
    check("store_read_missing_node", |c| {
        let p = format!("{}/no-such-node", home(c));
        st_err(c, &Request::Read { path: &p }, StoreError::NoEntry)
    }),
    check("store_read_hv_home_denied", |c| {
        st_err(
            c,
            &Request::Read {
                path: "/local/domain/32752",
            },
            StoreError::Denied,
        )
    }),
    check("store_write_outside_home_denied", |c| {
        st_err(
            c,
            &Request::Write {
                path: "/local/intruder",
                value: Value::U64(1),
            },
            StoreError::Denied,
        )
    }),
    check("store_write_hv_home_denied", |c| {
        st_err(
            c,
            &Request::Write {
                path: "/local/domain/32752/intruder",
                value: Value::U64(1),
            },
            StoreError::Denied,
        )
    }),
    check("store_remove_root_denied", |c| {
        st_err(c, &Request::Remove { path: "/" }, StoreError::Denied)
    }),
    check("store_remove_local_denied", |c| {
        st_err(c, &Request::Remove { path: "/local" }, StoreError::Denied)
    }),
    check("store_remove_local_domain_denied", |c| {
        st_err(
            c,
            &Request::Remove {
                path: "/local/domain",
            },
            StoreError::Denied,
        )
    }),
    check("store_remove_own_home_denied", |c| {
        let h = home(c);
        st_err(c, &Request::Remove { path: &h }, StoreError::Denied)
    }),
    check("store_path_empty", |c| {
        st_err(c, &Request::Read { path: "" }, StoreError::Invalid)
    }),
    check("store_path_relative", |c| {
        st_err(
            c,
            &Request::Read {
                path: "local/domain",
            },
            StoreError::Invalid,
        )
    }),
    check("store_path_double_slash", |c| {
        st_err(
            c,
            &Request::Read {
                path: "/local//domain",
            },
            StoreError::Invalid,
        )
    }),
    check("store_path_trailing_slash", |c| {
        st_err(c, &Request::Read { path: "/local/" }, StoreError::Invalid)
    }),
    check("store_path_dotdot", |c| {
        st_err(
            c,
            &Request::Read {
                path: "/local/domain/..",
            },
            StoreError::Invalid,
        )
    }),
    check("store_path_bad_character", |c| {
        st_err(
            c,
            &Request::Read { path: "/local/a b" },
            StoreError::Invalid,
        )
    }),
    check("store_path_129_bytes", |c| {
        let mut p = String::from("/");
        p.extend(core::iter::repeat_n('a', PATH_MAX));
        st_err(c, &Request::Read { path: &p }, StoreError::TooBig)
    }),
    check("store_value_str_113_bytes", |c| {
        let p = format!("{}/big", home(c));
        let v: String = core::iter::repeat_n('v', VALUE_MAX + 1).collect();
        st_err(
            c,
            &Request::Write {
                path: &p,
                value: Value::Str(&v),
            },
            StoreError::TooBig,
        )
    }),
    check("store_value_bytes_113_bytes", |c| {
        let p = format!("{}/big", home(c));
        let v = [7u8; VALUE_MAX + 1];
        st_err(
            c,
            &Request::Write {
                path: &p,
                value: Value::Bytes(&v),
            },
            StoreError::TooBig,
        )
    }),
    check("store_mkdir_existing", |c| {
        let h = home(c);
        st_err(c, &Request::Mkdir { path: &h }, StoreError::Exists)
    }),
    check("store_set_perms_change_owner_denied", |c| {
        let p = format!("{}/owned", home(c));
        with_store(c, |s| {
            want_ok("write", s.write(&p, Value::U64(1)))?;
            let r = s.call(&Request::SetPerms {
                path: &p,
                perms: perms(c.si.domid + 1, &[]),
            });
            let _ = s.call(&Request::Remove { path: &p });
            want_store_err("set perms", r, StoreError::Denied)
        })
    }),
    check("store_set_perms_duplicate_acl", |c| {
        let h = home(c);
        let mut p = perms(c.si.domid, &[(5, Access::Read)]);
        let _ = p.acl.push((5, Access::Write));
        st_err(
            c,
            &Request::SetPerms { path: &h, perms: p },
            StoreError::Invalid,
        )
    }),
    check("store_set_perms_reserved_owner", |c| {
        let h = home(c);
        st_err(
            c,
            &Request::SetPerms {
                path: &h,
                perms: perms(DOMID_HV + 1, &[]),
            },
            StoreError::Invalid,
        )
    }),
    check("store_device_state_illegal_transition", |c| {
        let p = format!("{}/dev/state", home(c));
        with_store(c, |s| {
            want_ok(
                "write Connected",
                s.write(&p, Value::State(DeviceState::Connected)),
            )?;
            let r = s.write(&p, Value::State(DeviceState::Initialising));
            let _ = s.call(&Request::Remove { path: &p });
            want_store_err("Connected -> Initialising", r, StoreError::Invalid)
        })
    }),
    check("store_device_state_overwritten_by_non_state", |c| {
        let p = format!("{}/dev/state", home(c));
        with_store(c, |s| {
            want_ok(
                "write Connected",
                s.write(&p, Value::State(DeviceState::Connected)),
            )?;
            let r = s.write(&p, Value::U64(4));
            let _ = s.call(&Request::Remove { path: &p });
            want_store_err("State -> U64", r, StoreError::Invalid)
        })
    }),
    check("store_device_state_legal_transition", |c| {
        let p = format!("{}/dev/state", home(c));
        with_store(c, |s| {
            want_ok(
                "write Connected",
                s.write(&p, Value::State(DeviceState::Connected)),
            )?;
            let r = s.write(&p, Value::State(DeviceState::Closing));
            let back = s.read(&p);
            let _ = s.call(&Request::Remove { path: &p });
            want_ok("Connected -> Closing", r)?;
            match back? {
                Reply::Value(Val::State(DeviceState::Closing)) => Ok(String::new()),
                other => Err(format!("read back {}", describe_reply(&other))),
            }
        })
    }),
    check("store_list_pagination", |c| {
        let dir = format!("{}/list", home(c));
        with_store(c, |s| {
            let mut want: Vec<String> = (0..20)
                .map(|i| format!("child-with-a-long-name-{i:02}"))
                .collect();
            for n in &want {
                want_ok("write", s.write(&format!("{dir}/{n}"), Value::Bool(true)))?;
            }
            want.sort();
            let r = (|| -> Check {
                let (first, next) = match s.call(&Request::List {
                    path: &dir,
                    offset: 0,
                })? {
                    Reply::List(n, next) => (n, next),
                    other => return Err(format!("list: {}", describe_reply(&other))),
                };
                let Some(next) = next else {
                    return Err(format!(
                        "20 children fit one page ({} names, next None)",
                        first.len()
                    ));
                };
                if first.is_empty() || first.len() > LIST_MAX || next as usize != first.len() {
                    return Err(format!("first page: {} names, next {next}", first.len()));
                }
                let all = s.list_all(&dir)?;
                if all != want {
                    return Err(format!("pages gave {all:?}"));
                }
                Ok(format!("({} names on the first page)", first.len()))
            })();
            want_ok("remove", s.call(&Request::Remove { path: &dir }))?;
            r
        })
    }),
    check("store_list_offset_past_end", |c| {
        let h = home(c);
        match with_store(c, |s| {
            s.call(&Request::List {
                path: &h,
                offset: 1000,
            })
        })? {
            Reply::List(n, None) if n.is_empty() => Ok(String::new()),
            other => Err(format!(
                "expected an empty last page, got {}",
                describe_reply(&other)
            )),
        }
    }),
    check("store_node_quota", |c| {
        let dir = format!("{}/quota", home(c));
        with_store(c, |s| {
            let mut made = 0;
            let mut end = None;
            for i in 0..400 {
                match s.write(&format!("{dir}/n{i}"), Value::U64(i))? {
                    Reply::Ok => made += 1,
                    other => {
                        end = Some(other);
                        break;
                    }
                }
            }
            let removed = s.call(&Request::Remove { path: &dir });
            let again = s.write(&format!("{dir}/after"), Value::U64(0));
            let _ = s.call(&Request::Remove { path: &dir });
            match end {
                Some(Reply::Error(StoreError::NoSpace)) => {}
                Some(other) => {
                    return Err(format!("after {made} nodes: {}", describe_reply(&other)))
                }
                None => return Err(format!("{made} nodes written without NoSpace")),
            }
            want_ok("remove", removed)?;
            want_ok("write after the removal", again)?;
            Ok(format!("(NoSpace after {made} nodes)"))
        })
    }),
    check("store_watch_fires_on_change", |c| {
        let dir = format!("{}/watched", home(c));
        let node = format!("{dir}/x");
        with_store(c, |s| {
            while s.credits < 2 {
                s.post_credit()?;
            }
            want_ok(
                "watch",
                s.call(&Request::Watch {
                    path: &dir,
                    token: 4242,
                }),
            )?;
            let r = (|| -> Check {
                if !s.wait_event(&dir, 4242, now() + STORE_TIMEOUT_NS)? {
                    return Err(String::from("no immediate watch event"));
                }
                s.post_credit()?;
                want_ok("write", s.write(&node, Value::U64(1)))?;
                if !s.wait_event(&node, 4242, now() + STORE_TIMEOUT_NS)? {
                    return Err(format!("no watch event for the write of {node}"));
                }
                s.post_credit()?;
                Ok(String::new())
            })();
            let u = s.call(&Request::Unwatch {
                path: &dir,
                token: 4242,
            });
            let _ = s.call(&Request::Remove { path: &dir });
            let note = r?;
            want_ok("unwatch", u)?;
            Ok(note)
        })
    }),
    check("store_watch_duplicate", |c| {
        let h = home(c);
        with_store(c, |s| {
            want_ok("watch", s.call(&Request::Watch { path: &h, token: 9 }))?;
            let r = s.call(&Request::Watch { path: &h, token: 9 });
            let _ = s.call(&Request::Unwatch { path: &h, token: 9 });
            want_store_err("second watch", r, StoreError::Exists)
        })
    }),
    check("store_unwatch_missing", |c| {
        let h = home(c);
        st_err(
            c,
            &Request::Unwatch {
                path: &h,
                token: 31337,
            },
            StoreError::NoEntry,
        )
    }),
    check("store_watch_quota", |c| {
        let h = home(c);
        with_store(c, |s| {
            let mut n = 0u32;
            let mut end = None;
            for t in 0..64 {
                match s.call(&Request::Watch {
                    path: &h,
                    token: 5000 + t,
                })? {
                    Reply::Ok => n += 1,
                    other => {
                        end = Some(other);
                        break;
                    }
                }
            }
            for t in 0..n {
                want_ok(
                    "unwatch",
                    s.call(&Request::Unwatch {
                        path: &h,
                        token: 5000 + t,
                    }),
                )?;
            }
            match end {
                Some(Reply::Error(StoreError::Busy)) => Ok(format!("(Busy after {n} watches)")),
                Some(other) => Err(format!("after {n} watches: {}", describe_reply(&other))),
                None => Err(format!("{n} watches without Busy")),
            }
        })
    }),
    check("store_slot_garbage", |c| {
        slot_err(
            c,
            raw_slot(0x0bad_0001, 0, 16, &[0xff; 16]),
            StoreError::Invalid,
        )
    }),
    check("store_slot_unknown_request_variant", |c| {
        slot_err(
            c,
            raw_slot(0x0bad_0002, 0, 3, &[9, 1, b'/']),
            StoreError::Invalid,
        )
    }),
    check("store_slot_trailing_byte", |c| {
        let mut b = read_bytes("/local");
        b.push(0);
        slot_err(
            c,
            raw_slot(0x0bad_0003, 0, b.len() as u16, &b),
            StoreError::Invalid,
        )
    }),
    check("store_slot_len_249", |c| {
        slot_err(
            c,
            raw_slot(0x0bad_0004, 0, STORE_PAYLOAD_MAX as u16 + 1, &[]),
            StoreError::TooBig,
        )
    }),
    check("store_slot_reserved_flag", |c| {
        let b = read_bytes("/local");
        slot_err(
            c,
            raw_slot(0x0bad_0005, 0x8000, b.len() as u16, &b),
            StoreError::Invalid,
        )
    }),
    check("store_slot_req_id_0", |c| {
        let b = read_bytes("/local");
        slot_err(c, raw_slot(0, 0, b.len() as u16, &b), StoreError::Invalid)
    }),
    check("store_slot_credit_with_payload", |c| {
        slot_err(
            c,
            raw_slot(0, SLOT_WATCH_EVENT, 1, &[0]),
            StoreError::Invalid,
        )
    }),
    // With the peer.
    peer("store_read_peer_private_denied", |c, p| {
        let path = format!("/local/domain/{}/private", p.domid);
        st_err(c, &Request::Read { path: &path }, StoreError::Denied)
    }),
    peer("store_write_peer_home_denied", |c, p| {
        let path = format!("/local/domain/{}/intruder", p.domid);
        st_err(
            c,
            &Request::Write {
                path: &path,
                value: Value::U64(1),
            },
            StoreError::Denied,
        )
    }),
    peer("store_list_peer_home_denied", |c, p| {
        let path = format!("/local/domain/{}", p.domid);
        st_err(
            c,
            &Request::List {
                path: &path,
                offset: 0,
            },
            StoreError::Denied,
        )
    }),
    peer("store_read_peer_acl_node", |c, p| {
        let path = format!("/local/domain/{}/conf/port", p.domid);
        match with_store(c, |s| s.read(&path))? {
            Reply::Value(Val::U64(v)) if v == p.port => Ok(String::new()),
            other => Err(format!(
                "expected U64({}), got {}",
                p.port,
                describe_reply(&other)
            )),
        }
    }),
    peer("store_write_peer_read_only_node_denied", |c, p| {
        let path = format!("/local/domain/{}/conf/port", p.domid);
        st_err(
            c,
            &Request::Write {
                path: &path,
                value: Value::U64(1),
            },
            StoreError::Denied,
        )
    }),
    peer("store_remove_peer_node_denied", |c, p| {
        let path = format!("/local/domain/{}/conf/port", p.domid);
        st_err(c, &Request::Remove { path: &path }, StoreError::Denied)
    }),
    peer("store_set_perms_peer_node_denied", |c, p| {
        let path = format!("/local/domain/{}/conf", p.domid);
        st_err(
            c,
            &Request::SetPerms {
                path: &path,
                perms: perms(p.domid, &[(c.si.domid, Access::ReadWrite)]),
            },
            StoreError::Denied,
        )
    }),
    peer("store_remove_peer_home_denied", |c, p| {
        let path = format!("/local/domain/{}", p.domid);
        st_err(c, &Request::Remove { path: &path }, StoreError::Denied)
    }),
];

/// Every group of cases, in the order they run.
static SUITE: &[&[Case]] = &[
    BASE_CASES,
    INTERDOMAIN_CASES,
    GRANT_CASES,
    MULTICALL_CASES,
    VCPU_CASES,
    STORE_CASES,
];

/// Tells the peer `done` (it powers off).
fn release_peer(ctx: &Ctx) {
    if let Some(p) = &ctx.peer {
        if let Err(e) = peer_cmd(ctx, p, CMD_DONE, 0) {
            println!("conformance: telling the peer `done` failed: {e}");
        }
    }
}

fn main(si: &'static StartInfo) {
    if arg(si, "role") == Some("peer") {
        peer_role(si);
    }
    let Some(timer_port) = guest_sdk::time::timer_port() else {
        println!("conformance: the SDK runtime bound no timer port");
        guest_sdk::exit(1);
    };
    let (store, store_err) = match Store::new(si) {
        Ok(s) => (Some(s), String::new()),
        Err(e) => (None, e),
    };
    let mut ctx = Ctx {
        ram: si.ram_bytes,
        features: si.features,
        console_port: si.console_port,
        timer_port,
        si,
        store: RefCell::new(store),
        store_err,
        peer: None,
        peer_err: String::new(),
        seq: Cell::new(0),
        ipc: Cell::new(None),
        revoked_slot: Cell::new(None),
    };
    let found = with_store(&ctx, |s| find_peer(si, s));
    match found {
        Ok(p) => ctx.peer = Some(p),
        Err(e) => ctx.peer_err = e,
    }
    let total: usize = SUITE.iter().map(|g| g.len()).sum();
    println!(
        "conformance: ABI {}.{} suite, {} cases, RAM {:#x} bytes, domain {}, {} vCPU(s)",
        ABI_MAJOR, ABI_MINOR, total, ctx.ram, si.domid, si.nr_vcpus
    );
    match &ctx.peer {
        Some(p) => println!("conformance: peer domain {}", p.domid),
        None => println!(
            "conformance: no peer domain, the cases that need one will fail: {}",
            ctx.peer_err
        ),
    }
    let (mut passed, mut failed) = (0u32, 0u32);
    for case in SUITE.iter().flat_map(|g| g.iter()) {
        let outcome = match &case.kind {
            Kind::Raw(expect, call) => expect_raw(*expect, call(&ctx)),
            Kind::Check(f) => f(&ctx),
            Kind::Peer(f) => match &ctx.peer {
                Some(p) => f(&ctx, p),
                None => Err(String::from(
                    "needs the peer domain, which was not found (see the top)",
                )),
            },
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
    release_peer(&ctx);
    println!("{passed} passed, {failed} failed");
    guest_sdk::exit(if failed == 0 { 0 } else { 1 });
}
