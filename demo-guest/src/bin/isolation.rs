//! The isolation test: two domains (`examples/isolation.toml`), a victim and an attacker.
//!
//! `role=victim` fills several pages with a secret pattern, grants ONE other page (public
//! contents) read-only to the attacker and a second page to a domain that is not the attacker,
//! and keeps everything else private. It publishes the grant references in the store under
//! `/local/domain/<victim>/iso` (readable by the attacker only), waits until the attacker says it
//! has finished (`/local/domain/<attacker>/iso-out/done`, which it watches), then checks that its
//! secret pages, the granted pages and its grant table are unchanged: it prints
//! `victim: secret intact (...)` and powers off with 0, or says what changed and exits with 1.
//!
//! `role=attacker` tries to reach the victim's memory through every hypercall that takes an
//! address or a grant: addresses at and beyond the end of its own RAM, inside the victim's RAM
//! range, in the hv's region, in the grant window and at huge or wrapping values (`EFAULT`);
//! grant references it was not given, the page granted to another domain, writes through the
//! read-only grant by copy (`EACCES`) and by a mapping (a page fault); guessed references and
//! ports; the victim's private store nodes. Each attempt prints one line, `PASS name` if it was
//! refused as documented (or, for the granted page, showed exactly the granted contents), and
//! the run closes with `N passed, M failed`; the attacker exits with 0 iff every attempt passed.
//!
//! Like the conformance suite, it uses only `hypercall-abi` and raw hypercalls (its store client
//! and page-fault probe are its own).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::abi::evtchn::{self, Port};
use guest_sdk::abi::grant::{
    self as gt, CopyPtr, GrantCopy, GrantEntry, COPY_DST_GREF, COPY_SRC_GREF, GTF_PERMIT_ACCESS,
    GTF_READONLY, MAP_READONLY,
};
use guest_sdk::abi::multicall::MulticallEntry;
use guest_sdk::abi::ring::FrontRing;
use guest_sdk::abi::sched::{self, SchedPoll};
use guest_sdk::abi::shared_info::SharedInfo;
use guest_sdk::abi::store::{
    Access, DeviceState, Perms, Request, Response, StoreError, StoreSlot, Value, SLOT_WATCH_EVENT,
    STORE_RING_BYTES,
};
use guest_sdk::abi::trap::TrapInfo;
use guest_sdk::abi::vcpu::{self, VcpuContext};
use guest_sdk::abi::{hypercall as nr, Errno, DOMID_HV, HYPERCALL_PORT, PAGE_SIZE};
use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

use Errno::*;
use Expect::{Err as E, Ok as V};

/// The expected outcome of a raw call.
#[derive(Clone, Copy)]
enum Expect {
    /// `-errno`.
    Err(Errno),
    /// Exactly this non-negative value.
    Ok(u64),
}

/// `Ok(note)` passes; `Err(why)` fails.
type Check = Result<String, String>;

fn hc(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    // SAFETY: every attempt passes addresses outside our RAM (which the hv must reject without
    // touching memory) or buffers the attempt owns and keeps alive across the call; the
    // handlers it tries to install are outside RAM (refused) or our own #PF probe handler.
    unsafe { guest_sdk::hypercall(nr, a1, a2, a3, a4, a5) }
}

fn poll_ports(ports: &[Port], deadline_ns: u64) -> i64 {
    let rec = SchedPoll {
        ports_gpa: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        reserved: 0,
        deadline_ns,
    };
    sched_op(sched::POLL, &rec as *const SchedPoll as u64, 0)
}

fn describe(rax: i64) -> String {
    match Errno::from_raw(rax) {
        Ok(v) => format!("{v}"),
        Err(Some(e)) => String::from(e.name()),
        Err(None) => format!("unknown errno {rax}"),
    }
}

fn require(what: &str, expect: Expect, rax: i64) -> Result<u64, String> {
    expect_raw(expect, rax).map_err(|e| format!("{what}: {e}"))?;
    Ok(rax as u64)
}

fn require_ok(what: &str, rax: i64) -> Result<u64, String> {
    if rax < 0 {
        return Err(format!("{what}: expected success, got {}", describe(rax)));
    }
    Ok(rax as u64)
}

const STORE_TIMEOUT_NS: u64 = 2 * NS_PER_SEC;

fn pending_word(port: Port) -> &'static AtomicU64 {
    let si = guest_sdk::start_info().expect("runtime started");
    let gpa = si.shared_info_gpa + SharedInfo::pending_word_offset(port) as u64;
    // SAFETY: the shared-info page is in our RAM (identity-mapped) for the domain's life; the
    // word is 8-byte aligned and the hv updates it only atomically.
    unsafe { &*(gpa as *const AtomicU64) }
}

/// The byte at offset `i` of a page filled with pattern `tag`.
fn pat(tag: u8, i: usize) -> u8 {
    ((i as u8).wrapping_mul(31)).wrapping_add((i >> 8) as u8) ^ tag
}

const STATUS_UNSET: i64 = 0x5a5a;

fn copy_status(op: GrantCopy, want: Expect) -> Check {
    let mut ops = [op];
    require("copy", V(0), run_copy(&mut ops))?;
    expect_raw(want, ops[0].status).map_err(|e| format!("status: {e}"))
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

// ---------------------------------------------------------------------------------------------
// The victim.
// ---------------------------------------------------------------------------------------------

/// Secret pages.
const SECRET_PAGES: usize = 8;
/// Pattern tags: secret page k uses `TAG_SECRET ^ k`.
const TAG_SECRET: u8 = 0x5e;
const TAG_PUBLIC: u8 = 0x9b;
const TAG_OTHER: u8 = 0x0c;
/// The domain the victim grants its second page to: a valid id that is not the attacker's.
const OTHER_DOMID: u16 = 0x7fef;
/// Grant references in the victim's table.
const V_EMPTY: u64 = 0;
const V_PUBLIC: u64 = 1;
const V_OTHER: u64 = 2;
const V_DISABLED: u64 = 3;
const V_BROKEN: u64 = 4;
const V_TABLE_SIZE: u64 = 16;

/// The victim's memory: page 0 is granted read-only to the attacker, page 1 to OTHER_DOMID,
/// pages 2.. are the secret.
#[repr(C, align(4096))]
struct VictimPages([[u8; PAGE_SIZE as usize]; 2 + SECRET_PAGES]);
static mut VICTIM_PAGES: VictimPages = VictimPages([[0; PAGE_SIZE as usize]; 2 + SECRET_PAGES]);

#[repr(C, align(4096))]
struct VictimTable([GrantEntry; V_TABLE_SIZE as usize]);
static mut VICTIM_TABLE: VictimTable = VictimTable([EMPTY_ENTRY; V_TABLE_SIZE as usize]);

fn victim_page(k: usize) -> *mut u8 {
    // SAFETY: only the address is taken; the pages are accessed with volatile operations.
    unsafe { (core::ptr::addr_of_mut!(VICTIM_PAGES) as *mut u8).add(k * PAGE_SIZE as usize) }
}

fn victim_table() -> *mut GrantEntry {
    core::ptr::addr_of_mut!(VICTIM_TABLE) as *mut GrantEntry
}

/// The tag of victim page `k`.
fn page_tag(k: usize) -> u8 {
    match k {
        0 => TAG_PUBLIC,
        1 => TAG_OTHER,
        _ => TAG_SECRET ^ (k as u8),
    }
}

/// The grant table the victim writes (and expects to find unchanged at the end).
fn victim_entries(attacker: u16) -> [GrantEntry; V_TABLE_SIZE as usize] {
    let page = |k: usize| victim_page(k) as u64;
    let mut t = [EMPTY_ENTRY; V_TABLE_SIZE as usize];
    t[V_PUBLIC as usize] = GrantEntry {
        flags: GTF_PERMIT_ACCESS | GTF_READONLY,
        domid: attacker,
        reserved: 0,
        frame: page(0),
    };
    t[V_OTHER as usize] = GrantEntry {
        flags: GTF_PERMIT_ACCESS,
        domid: OTHER_DOMID,
        reserved: 0,
        frame: page(1),
    };
    // Names the attacker and a secret page, but is not in force.
    t[V_DISABLED as usize] = GrantEntry {
        flags: 0,
        domid: attacker,
        reserved: 0,
        frame: page(2),
    };
    // In force for the attacker on a secret page, but with a reserved field set: invalid.
    t[V_BROKEN as usize] = GrantEntry {
        flags: GTF_PERMIT_ACCESS | GTF_READONLY,
        domid: attacker,
        reserved: 1,
        frame: page(3),
    };
    t
}

fn exit_with(code: u32, who: &str, why: &str) -> ! {
    println!("{who}: {why}");
    guest_sdk::exit(code)
}

/// What changed in the victim's memory, if anything.
fn victim_damage(attacker: u16) -> Option<String> {
    for k in 0..2 + SECRET_PAGES {
        for i in 0..PAGE_SIZE as usize {
            // SAFETY: inside page k of VICTIM_PAGES; volatile because a grantee may write it.
            let b = unsafe { core::ptr::read_volatile(victim_page(k).add(i)) };
            if b != pat(page_tag(k), i) {
                return Some(format!(
                    "page {k} byte {i} is {b:#04x}, expected {:#04x}",
                    pat(page_tag(k), i)
                ));
            }
        }
    }
    let want = victim_entries(attacker);
    for (i, w) in want.iter().enumerate() {
        // SAFETY: i < V_TABLE_SIZE, inside VICTIM_TABLE.
        let e = unsafe { core::ptr::read_volatile(victim_table().add(i)) };
        if e != *w {
            return Some(format!("grant entry {i} is {e:?}, expected {w:?}"));
        }
    }
    None
}

fn victim_role(si: &'static StartInfo) -> ! {
    let me = si.domid;
    let who = "victim";
    let mut s = Store::new(si).unwrap_or_else(|e| exit_with(2, who, &format!("store: {e}")));
    let name = arg(si, "peer").unwrap_or("attacker");
    let attacker = match s.find_domain(me, name, now() + 10 * NS_PER_SEC) {
        Ok(Some(d)) => d,
        Ok(None) => exit_with(2, who, &format!("no domain named {name:?} within 10 s")),
        Err(e) => exit_with(2, who, &e),
    };
    let mut setup = || -> Result<(), String> {
        for k in 0..2 + SECRET_PAGES {
            for i in 0..PAGE_SIZE as usize {
                // SAFETY: inside page k of VICTIM_PAGES, not shared yet.
                unsafe { core::ptr::write_volatile(victim_page(k).add(i), pat(page_tag(k), i)) };
            }
        }
        for (i, e) in victim_entries(attacker).into_iter().enumerate() {
            // SAFETY: inside VICTIM_TABLE, not registered yet.
            unsafe { core::ptr::write_volatile(victim_table().add(i), e) };
        }
        require(
            "set_table",
            V(0),
            grant_op(gt::SET_TABLE, victim_table() as u64, V_TABLE_SIZE, 0, 0),
        )?;
        // A port the attacker may not bind: unbound for the victim itself.
        let port_other = require_ok(
            "alloc_unbound(self)",
            evtchn_op(evtchn::ALLOC_UNBOUND, u64::from(me), 0),
        )?;
        let iso = format!("/local/domain/{me}/iso");
        want_ok("mkdir iso", s.call(&Request::Mkdir { path: &iso }))?;
        want_ok(
            "set iso perms",
            s.call(&Request::SetPerms {
                path: &iso,
                perms: perms(me, &[(attacker, Access::Read)]),
            }),
        )?;
        let keys: [(&str, u64); 9] = [
            ("gref-public", V_PUBLIC),
            ("gref-other", V_OTHER),
            ("gref-disabled", V_DISABLED),
            ("gref-broken", V_BROKEN),
            ("gref-empty", V_EMPTY),
            ("table-size", V_TABLE_SIZE),
            ("port-other", port_other),
            ("secret-gpa", victim_page(2) as u64),
            ("attacker", u64::from(attacker)),
        ];
        for (k, v) in keys {
            want_ok(k, s.write(&format!("{iso}/{k}"), Value::U64(v)))?;
        }
        want_ok(
            "secret",
            s.write(
                &format!("/local/domain/{me}/secret"),
                Value::Bytes(b"the victim's secret"),
            ),
        )?;
        want_ok("ready", s.write(&format!("{iso}/ready"), Value::Bool(true)))?;
        Ok(())
    };
    if let Err(e) = setup() {
        exit_with(2, who, &format!("setup: {e}"));
    }
    println!(
        "victim: {SECRET_PAGES} secret pages; ref {V_PUBLIC} granted read-only to domain \
         {attacker}, ref {V_OTHER} to domain {OTHER_DOMID:#x}"
    );

    // Wait for the attacker's verdict (a watch, with a periodic read as well).
    let done = format!("/local/domain/{attacker}/iso-out/done");
    if let Err(e) = want_ok(
        "watch",
        s.call(&Request::Watch {
            path: &done,
            token: 1,
        }),
    ) {
        exit_with(2, who, &e);
    }
    let give_up = now() + 600 * NS_PER_SEC;
    let verdict = loop {
        s.events.clear();
        while s.credits < 2 {
            if let Err(e) = s.post_credit() {
                exit_with(2, who, &format!("post credit: {e}"));
            }
        }
        match s.read(&done) {
            Ok(Reply::Value(Val::U64(failed))) => {
                break format!("the attacker reports {failed} failed attempt(s)")
            }
            Ok(Reply::Error(StoreError::NoEntry)) => {
                if let Ok(Reply::Error(StoreError::NoEntry)) =
                    s.read(&format!("/local/domain/{attacker}/name"))
                {
                    break String::from("the attacker is gone without a verdict");
                }
            }
            Ok(_) => {}
            Err(e) => exit_with(2, who, &format!("read {done}: {e}")),
        }
        if now() >= give_up {
            exit_with(2, who, "no verdict from the attacker within 600 s");
        }
        let _ = poll_ports(&[si.store_port], now() + 250 * NS_PER_MS);
        clear_pending(si.store_port);
    };
    let damage = victim_damage(attacker);
    let _ = s.write(&format!("/local/domain/{me}/iso/ack"), Value::Bool(true));
    match damage {
        None => exit_with(
            0,
            who,
            &format!(
                "secret intact ({} pages and the grant table unchanged; {verdict})",
                2 + SECRET_PAGES
            ),
        ),
        Some(d) => exit_with(1, who, &format!("SECRET CHANGED: {d} ({verdict})")),
    }
}

// ---------------------------------------------------------------------------------------------
// The attacker.
// ---------------------------------------------------------------------------------------------

/// What the victim published.
#[derive(Clone, Copy)]
struct Victim {
    domid: u16,
    gref_public: u64,
    gref_other: u64,
    gref_disabled: u64,
    gref_broken: u64,
    gref_empty: u64,
    table_size: u64,
    port_other: u64,
    secret_gpa: u64,
}

/// An attempt: its name and what it does.
struct Attempt {
    name: String,
    run: Box<dyn Fn() -> Check>,
}

fn attempt(name: String, run: impl Fn() -> Check + 'static) -> Attempt {
    Attempt {
        name,
        run: Box::new(run),
    }
}

/// Addresses the attacker may not name: (label, address).
fn bad_addresses(si: &StartInfo, window: u64) -> Vec<(&'static str, u64)> {
    let ram = si.ram_bytes;
    vec![
        ("ram_end", ram),
        ("ram_end_minus_1", ram - 1),
        // Inside the victim's (larger) RAM, beyond ours.
        ("victim_ram_range", ram + (16 << 20)),
        ("hv_region", 0x40_0000_0000),
        ("grant_window", window),
        ("huge", 1 << 63),
        ("wrapping", u64::MAX - 7),
    ]
}

fn page_aligned(a: u64) -> u64 {
    a & !(PAGE_SIZE - 1)
}

fn attacker_attempts(si: &'static StartInfo, v: Victim) -> Vec<Attempt> {
    let mut list: Vec<Attempt> = Vec::new();
    let w0 = si.grant_window_gpa;
    let wpages = u64::from(si.grant_window_pages);
    let vd = v.domid;
    let ram = si.ram_bytes;
    let down_vcpu = if si.nr_vcpus > 1 { Some(1u64) } else { None };

    // Every hypercall that takes an address, with addresses outside our RAM.
    for (label, a) in bad_addresses(si, w0) {
        let point = a != ram - 1; // a 1-byte check (handlers, rip) would accept ram - 1
        list.push(attempt(format!("console_write_{label}"), move || {
            expect_raw(E(EFAULT), console_write(a, 16))
        }));
        list.push(attempt(format!("evtchn_status_{label}"), move || {
            let port = guest_sdk::start_info().map_or(1, |s| s.console_port);
            expect_raw(E(EFAULT), evtchn_op(evtchn::STATUS, u64::from(port), a))
        }));
        list.push(attempt(format!("sched_poll_record_{label}"), move || {
            expect_raw(E(EFAULT), sched_op(sched::POLL, a, 0))
        }));
        list.push(attempt(format!("sched_poll_ports_{label}"), move || {
            let rec = SchedPoll {
                ports_gpa: a,
                nr_ports: 4,
                reserved: 0,
                deadline_ns: now() + 20 * NS_PER_MS,
            };
            expect_raw(
                E(EFAULT),
                sched_op(sched::POLL, &rec as *const SchedPoll as u64, 0),
            )
        }));
        list.push(attempt(format!("vcpu_fault_info_{label}"), move || {
            expect_raw(E(EFAULT), vcpu_op(vcpu::FAULT_INFO, 0, a))
        }));
        list.push(attempt(format!("vcpu_up_context_{label}"), move || {
            let v = down_vcpu.ok_or("needs a second vCPU (run examples/isolation.toml)")?;
            expect_raw(E(EFAULT), vcpu_op(vcpu::UP, v, a))
        }));
        if point {
            list.push(attempt(format!("vcpu_up_rip_{label}"), move || {
                let v = down_vcpu.ok_or("needs a second vCPU (run examples/isolation.toml)")?;
                let ctx = VcpuContext {
                    rip: a,
                    rsp: stack_top(),
                    rdi: 0,
                    reserved: 0,
                };
                expect_raw(E(EFAULT), vcpu_op(vcpu::UP, v, &ctx as *const _ as u64))
            }));
            list.push(attempt(format!("vcpu_up_rsp_{label}"), move || {
                let v = down_vcpu.ok_or("needs a second vCPU (run examples/isolation.toml)")?;
                let ctx = VcpuContext {
                    rip: isolation_stub_vcpu as *const () as u64,
                    rsp: a.wrapping_add(8),
                    rdi: 0,
                    reserved: 0,
                };
                expect_raw(E(EFAULT), vcpu_op(vcpu::UP, v, &ctx as *const _ as u64))
            }));
            list.push(attempt(
                format!("set_trap_table_handler_{label}"),
                move || {
                    let t = [TrapInfo {
                        vector: 3,
                        flags: 0,
                        reserved: [0; 6],
                        handler: a,
                    }];
                    expect_raw(E(EFAULT), set_trap_table(&t))
                },
            ));
            list.push(attempt(
                format!("set_callback_handler_{label}"),
                move || expect_raw(E(EFAULT), hc(nr::SET_CALLBACK, a, 0, 0, 0, 0)),
            ));
        }
        list.push(attempt(
            format!("set_trap_table_array_{label}"),
            move || expect_raw(E(EFAULT), hc(nr::SET_TRAP_TABLE, a, 2, 0, 0, 0)),
        ));
        list.push(attempt(format!("multicall_array_{label}"), move || {
            expect_raw(E(EFAULT), hc(nr::MULTICALL, a, 1, 0, 0, 0))
        }));
        list.push(attempt(
            format!("multicall_entry_console_write_{label}"),
            move || {
                let mut b = [MulticallEntry {
                    op: nr::CONSOLE_WRITE,
                    args: [a, 16, 0, 0, 0],
                    result: STATUS_UNSET,
                }];
                require(
                    "multicall",
                    V(0),
                    hc(nr::MULTICALL, b.as_mut_ptr() as u64, 1, 0, 0, 0),
                )?;
                expect_raw(E(EFAULT), b[0].result).map_err(|e| format!("result: {e}"))
            },
        ));
        let aligned = page_aligned(a);
        list.push(attempt(format!("grant_set_table_{label}"), move || {
            // 1024 entries (16 KiB): the range leaves our RAM even from its last page.
            expect_raw(E(EFAULT), grant_op(gt::SET_TABLE, aligned, 1024, 0, 0))
        }));
        list.push(attempt(format!("grant_copy_array_{label}"), move || {
            expect_raw(E(EFAULT), grant_op(gt::COPY, a, 1, 0, 0))
        }));
        list.push(attempt(format!("grant_copy_own_src_{label}"), move || {
            let b = [0u8; 16];
            copy_status(gcopy(own(a), own(b.as_ptr() as u64), 16, 0), E(EFAULT))
        }));
        list.push(attempt(
            format!("grant_copy_own_dst_from_public_grant_{label}"),
            move || {
                copy_status(
                    gcopy(gptr(vd, v.gref_public, 0), own(a), 16, COPY_SRC_GREF),
                    E(EFAULT),
                )
            },
        ));
    }

    // The grant table: references we were not given.
    list.push(attempt(
        String::from("grant_map_public_ref_writable"),
        move || expect_raw(E(EACCES), map(u64::from(vd), v.gref_public, w0, 0)),
    ));
    for (label, flags) in [("rw", 0), ("ro", MAP_READONLY)] {
        list.push(attempt(
            format!("grant_map_other_domains_ref_{label}"),
            move || expect_raw(E(EACCES), map(u64::from(vd), v.gref_other, w0, flags)),
        ));
        list.push(attempt(
            format!("grant_map_disabled_ref_{label}"),
            move || expect_raw(E(ENOENT), map(u64::from(vd), v.gref_disabled, w0, flags)),
        ));
        list.push(attempt(
            format!("grant_map_broken_ref_{label}"),
            move || expect_raw(E(EINVAL), map(u64::from(vd), v.gref_broken, w0, flags)),
        ));
    }
    // Guessing: every reference of the table but the public one, and some beyond it.
    for r in 0..v.table_size + 4 {
        if r == v.gref_public {
            continue;
        }
        let want = if r >= v.table_size || r == v.gref_broken {
            E(EINVAL)
        } else if r == v.gref_other {
            E(EACCES)
        } else {
            E(ENOENT)
        };
        list.push(attempt(format!("grant_map_guess_ref_{r}"), move || {
            expect_raw(want, map(u64::from(vd), r, w0, MAP_READONLY))
        }));
        list.push(attempt(format!("grant_copy_guess_ref_{r}"), move || {
            let b = [0u8; 16];
            copy_status(
                gcopy(gptr(vd, r, 0), own(b.as_ptr() as u64), 16, COPY_SRC_GREF),
                want,
            )
        }));
    }
    for (label, r) in [
        ("1024", 1024u64),
        ("u32_max", u64::from(u32::MAX)),
        ("above_u32_naming_public", (1 << 32) | v.gref_public),
        ("u64_max", u64::MAX),
    ] {
        list.push(attempt(format!("grant_map_ref_{label}"), move || {
            expect_raw(E(EINVAL), map(u64::from(vd), r, w0, MAP_READONLY))
        }));
    }
    for (label, d) in [
        ("domid_above_u16", (1u64 << 16) | u64::from(vd)),
        ("domid_hv", u64::from(DOMID_HV)),
        ("domid_0", 0),
    ] {
        list.push(attempt(format!("grant_map_{label}"), move || {
            expect_raw(E(ESRCH), map(d, v.gref_public, w0, MAP_READONLY))
        }));
    }
    list.push(attempt(String::from("grant_copy_domid_hv"), move || {
        let b = [0u8; 16];
        copy_status(
            gcopy(
                gptr(DOMID_HV, v.gref_public, 0),
                own(b.as_ptr() as u64),
                16,
                COPY_SRC_GREF,
            ),
            E(ESRCH),
        )
    }));
    list.push(attempt(
        String::from("grant_copy_write_public_ref"),
        move || {
            let b = [0xeeu8; 16];
            copy_status(
                gcopy(
                    own(b.as_ptr() as u64),
                    gptr(vd, v.gref_public, 0),
                    16,
                    COPY_DST_GREF,
                ),
                E(EACCES),
            )
        },
    ));
    list.push(attempt(
        String::from("grant_copy_write_other_domains_ref"),
        move || {
            let b = [0xeeu8; 16];
            copy_status(
                gcopy(
                    own(b.as_ptr() as u64),
                    gptr(vd, v.gref_other, 0),
                    16,
                    COPY_DST_GREF,
                ),
                E(EACCES),
            )
        },
    ));
    list.push(attempt(
        String::from("grant_copy_public_ref_past_page_end"),
        move || {
            let b = [0u8; 32];
            copy_status(
                gcopy(
                    gptr(vd, v.gref_public, 4080),
                    own(b.as_ptr() as u64),
                    32,
                    COPY_SRC_GREF,
                ),
                E(EINVAL),
            )
        },
    ));
    list.push(attempt(
        String::from("grant_copy_public_ref_offset_4096"),
        move || {
            let b = [0u8; 16];
            copy_status(
                gcopy(
                    gptr(vd, v.gref_public, PAGE_SIZE),
                    own(b.as_ptr() as u64),
                    16,
                    COPY_SRC_GREF,
                ),
                E(EINVAL),
            )
        },
    ));
    list.push(attempt(
        String::from("grant_copy_public_ref_offset_wraps"),
        move || {
            let b = [0u8; 16];
            copy_status(
                gcopy(
                    gptr(vd, v.gref_public, u64::MAX - 3),
                    own(b.as_ptr() as u64),
                    16,
                    COPY_SRC_GREF,
                ),
                E(EINVAL),
            )
        },
    ));
    list.push(attempt(
        String::from("grant_copy_public_ref_reads_only_public"),
        move || {
            let mut b = vec![0u8; PAGE_SIZE as usize];
            copy_status(
                gcopy(
                    gptr(vd, v.gref_public, 0),
                    own(b.as_mut_ptr() as u64),
                    PAGE_SIZE as u32,
                    COPY_SRC_GREF,
                ),
                V(0),
            )?;
            // SAFETY: `b` is a live buffer the hv wrote through its address.
            let got: Vec<u8> = (0..b.len())
                .map(|i| unsafe { core::ptr::read_volatile(b.as_ptr().add(i)) })
                .collect();
            match (0..got.len()).find(|&i| got[i] != pat(TAG_PUBLIC, i)) {
                None => Ok(String::new()),
                Some(i) => Err(format!(
                    "byte {i} is {:#04x}, not the public pattern",
                    got[i]
                )),
            }
        },
    ));
    list.push(attempt(
        String::from("grant_end_access_of_victims_ref"),
        move || {
            // Names our own (absent) table, never the victim's.
            expect_raw(E(EINVAL), grant_op(gt::END_ACCESS, v.gref_public, 0, 0, 0))
        },
    ));
    list.push(attempt(
        String::from("grant_revoke_of_victims_ref"),
        move || expect_raw(E(EINVAL), grant_op(gt::REVOKE, v.gref_public, 0, 0, 0)),
    ));

    // The one page we were granted, mapped read-only.
    let slot = 5;
    let wp = w0 + slot * PAGE_SIZE;
    list.push(attempt(
        String::from("grant_map_public_ref_readonly"),
        move || expect_raw(V(0), map(u64::from(vd), v.gref_public, wp, MAP_READONLY)),
    ));
    list.push(attempt(
        String::from("mapped_page_shows_only_the_public_page"),
        move || probe_page(wp, |i| pat(TAG_PUBLIC, i)).map(|()| String::new()),
    ));
    list.push(attempt(
        String::from("mapped_page_write_faults"),
        move || {
            want_fault(
                probe_write(wp + 100, 0xee),
                wp + 100,
                PF_PRESENT | PF_WRITE | PF_USER,
                0,
            )
        },
    ));
    list.push(attempt(
        String::from("page_after_mapped_page_faults"),
        move || {
            want_fault(
                probe_read(wp + PAGE_SIZE),
                wp + PAGE_SIZE,
                PF_USER,
                PF_PRESENT,
            )
        },
    ));
    list.push(attempt(
        String::from("page_before_mapped_page_faults"),
        move || want_fault(probe_read(wp - 1), wp - 1, PF_USER, PF_PRESENT),
    ));
    list.push(attempt(
        String::from("console_write_from_mapped_page"),
        move || expect_raw(E(EFAULT), console_write(wp, 16)),
    ));
    list.push(attempt(
        String::from("grant_copy_own_src_mapped_page"),
        move || {
            let b = [0u8; 16];
            copy_status(gcopy(own(wp), own(b.as_ptr() as u64), 16, 0), E(EFAULT))
        },
    ));
    list.push(attempt(
        String::from("grant_copy_own_dst_mapped_page"),
        move || {
            let b = [0xeeu8; 16];
            copy_status(gcopy(own(b.as_ptr() as u64), own(wp), 16, 0), E(EFAULT))
        },
    ));
    list.push(attempt(
        String::from("grant_map_same_slot_again"),
        move || {
            expect_raw(
                E(EBUSY),
                map(u64::from(vd), v.gref_public, wp, MAP_READONLY),
            )
        },
    ));
    list.push(attempt(String::from("grant_window_scan"), move || {
        // Every window page but the one we mapped must fault (or read zero).
        let mut faulted = 0;
        for k in 0..wpages {
            if k == slot {
                continue;
            }
            let a = w0 + k * PAGE_SIZE;
            for off in [0, PAGE_SIZE - 1] {
                match probe_read(a + off) {
                    Err(f) if f.addr == a + off && f.error & PF_PRESENT == 0 => faulted += 1,
                    Err(f) => {
                        return Err(format!(
                            "window page {k}: fault at {:#x} error {:#x}",
                            f.addr, f.error
                        ))
                    }
                    Ok(0) => {}
                    Ok(b) => return Err(format!("window page {k} reads {b:#04x}")),
                }
            }
        }
        Ok(format!(
            "({faulted} reads of {} unmapped pages faulted)",
            wpages - 1
        ))
    }));
    list.push(attempt(
        String::from("own_ram_at_victims_secret_gpa_is_ours"),
        move || {
            // The victim's secret lies at the same guest-physical address in its RAM as this
            // (unused) array lies in ours: we must see our own memory there.
            let a = v.secret_gpa;
            if a + PAGE_SIZE > ram {
                return Ok(String::from("(outside our RAM)"));
            }
            match (0..PAGE_SIZE).find(|&i| !matches!(probe_read(a + i), Ok(0))) {
                None => Ok(String::new()),
                Some(i) => Err(format!("byte {i} at {:#x} is not ours (zero)", a + i)),
            }
        },
    ));
    list.push(attempt(String::from("grant_unmap_public_ref"), move || {
        expect_raw(V(0), unmap(wp))
    }));
    list.push(attempt(
        String::from("unmapped_public_page_faults"),
        move || want_fault(probe_read(wp), wp, PF_USER, PF_PRESENT),
    ));

    // Event channels: guessing the victim's ports.
    for p in 1..=8u64 {
        let want = if p == v.port_other {
            E(EACCES)
        } else {
            E(EINVAL)
        };
        list.push(attempt(format!("evtchn_bind_victim_port_{p}"), move || {
            expect_raw(want, evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(vd), p))
        }));
    }
    if v.port_other > 8 {
        list.push(attempt(
            String::from("evtchn_bind_victim_port_unbound_for_itself"),
            move || {
                expect_raw(
                    E(EACCES),
                    evtchn_op(evtchn::BIND_INTERDOMAIN, u64::from(vd), v.port_other),
                )
            },
        ));
    }

    // The store: the victim's private nodes.
    let h = format!("/local/domain/{vd}");
    let reqs: Vec<(&'static str, String, u8)> = vec![
        ("store_read_victim_secret", format!("{h}/secret"), 0),
        ("store_get_perms_victim_secret", format!("{h}/secret"), 1),
        ("store_list_victim_home", h.clone(), 2),
        ("store_write_victim_home", format!("{h}/intruder"), 3),
        ("store_overwrite_victim_secret", format!("{h}/secret"), 3),
        ("store_write_victim_iso", format!("{h}/iso/gref-public"), 3),
        ("store_mkdir_in_victim_iso", format!("{h}/iso/dir"), 4),
        ("store_set_perms_victim_iso", format!("{h}/iso"), 5),
        ("store_remove_victim_secret", format!("{h}/secret"), 6),
        ("store_remove_victim_iso", format!("{h}/iso"), 6),
        ("store_remove_victim_home", h.clone(), 6),
    ];
    for (name, path, op) in reqs {
        let me = si.domid;
        list.push(attempt(String::from(name), move || {
            with_store(|s| {
                let req = match op {
                    0 => Request::Read { path: &path },
                    1 => Request::GetPerms { path: &path },
                    2 => Request::List {
                        path: &path,
                        offset: 0,
                    },
                    3 => Request::Write {
                        path: &path,
                        value: Value::U64(0xbad),
                    },
                    4 => Request::Mkdir { path: &path },
                    5 => Request::SetPerms {
                        path: &path,
                        perms: perms(vd, &[(me, Access::ReadWrite)]),
                    },
                    _ => Request::Remove { path: &path },
                };
                want_store_err("answer", s.call(&req), StoreError::Denied)
            })
        }));
    }
    list
}

// An entry point for the vcpu_op(up) attempts, which must never start it: spins with pause
// (it touches no stack, so even a vCPU wrongly started with a bad rsp stays harmless).
core::arch::global_asm!(
    ".pushsection .text.isolation_stub_vcpu, \"ax\", @progbits",
    ".globl isolation_stub_vcpu",
    "isolation_stub_vcpu:",
    "    pause",
    "    jmp isolation_stub_vcpu",
    ".popsection",
);

extern "C" {
    fn isolation_stub_vcpu();
}

/// The top of a small stack (for the vCPU contexts the hv must refuse).
fn stack_top() -> u64 {
    static mut STACK: [u64; 64] = [0; 64];
    core::ptr::addr_of!(STACK) as u64 + 64 * 8
}

/// The attacker's store client (its attempts are `Fn` closures).
static mut STORE: Option<Store> = None;

fn with_store<T>(f: impl FnOnce(&mut Store) -> Result<T, String>) -> Result<T, String> {
    // SAFETY: one vCPU, and no attempt nests a store call inside another.
    let s = unsafe { (*core::ptr::addr_of_mut!(STORE)).as_mut() };
    f(s.ok_or("no store client")?)
}

fn attacker_role(si: &'static StartInfo) -> ! {
    let me = si.domid;
    let who = "attacker";
    match Store::new(si) {
        // SAFETY: set once, before any attempt runs.
        Ok(s) => unsafe { *core::ptr::addr_of_mut!(STORE) = Some(s) },
        Err(e) => exit_with(2, who, &format!("store: {e}")),
    }
    if let Err(e) = install_pf_handler() {
        exit_with(2, who, &e);
    }
    let name = arg(si, "peer").unwrap_or("victim");
    let found = with_store(|s| {
        let vd = s
            .find_domain(me, name, now() + 10 * NS_PER_SEC)?
            .ok_or_else(|| format!("no domain named {name:?} within 10 s"))?;
        let iso = format!("/local/domain/{vd}/iso");
        let deadline = now() + 10 * NS_PER_SEC;
        while !matches!(
            s.read(&format!("{iso}/ready"))?,
            Reply::Value(Val::Bool(true))
        ) {
            if now() >= deadline {
                return Err(format!(
                    "domain {vd} did not publish {iso}/ready within 10 s"
                ));
            }
            guest_sdk::time::sleep(5 * NS_PER_MS);
        }
        let mut get = |k: &str| -> Result<u64, String> {
            s.read_u64(&format!("{iso}/{k}"))?
                .ok_or_else(|| format!("{iso}/{k} is missing"))
        };
        Ok(Victim {
            domid: vd,
            gref_public: get("gref-public")?,
            gref_other: get("gref-other")?,
            gref_disabled: get("gref-disabled")?,
            gref_broken: get("gref-broken")?,
            gref_empty: get("gref-empty")?,
            table_size: get("table-size")?,
            port_other: get("port-other")?,
            secret_gpa: get("secret-gpa")?,
        })
    });
    let v = found.unwrap_or_else(|e| exit_with(2, who, &e));
    let _ = v.gref_empty;
    let attempts = attacker_attempts(si, v);
    println!(
        "attacker: domain {me} against domain {} ({} attempts, RAM {:#x} bytes)",
        v.domid,
        attempts.len(),
        si.ram_bytes
    );
    let (mut passed, mut failed) = (0u32, 0u32);
    for a in &attempts {
        match (a.run)() {
            Ok(note) => {
                passed += 1;
                if note.is_empty() {
                    println!("PASS {}", a.name);
                } else {
                    println!("PASS {} {note}", a.name);
                }
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why}", a.name);
            }
        }
    }
    // Tell the victim, then wait for it to have checked its memory.
    let told = with_store(|s| {
        let out = format!("/local/domain/{me}/iso-out");
        want_ok("mkdir iso-out", s.call(&Request::Mkdir { path: &out }))?;
        want_ok(
            "set iso-out perms",
            s.call(&Request::SetPerms {
                path: &out,
                perms: perms(me, &[(v.domid, Access::Read)]),
            }),
        )?;
        want_ok(
            "done",
            s.write(&format!("{out}/done"), Value::U64(u64::from(failed))),
        )?;
        // The victim acknowledges, then powers off (and its home goes): either will do.
        let ack = format!("/local/domain/{}/iso/ack", v.domid);
        let name = format!("/local/domain/{}/name", v.domid);
        let deadline = now() + 10 * NS_PER_SEC;
        loop {
            match s.read(&ack)? {
                Reply::Value(Val::Bool(true)) => return Ok(()),
                Reply::Error(StoreError::NoEntry) => {
                    if let Reply::Error(StoreError::NoEntry) = s.read(&name)? {
                        return Ok(());
                    }
                }
                _ => {}
            }
            if now() >= deadline {
                return Err(String::from("the victim did not acknowledge within 10 s"));
            }
            guest_sdk::time::sleep(5 * NS_PER_MS);
        }
    });
    if let Err(e) = &told {
        println!("attacker: {e}");
    }
    println!("{passed} passed, {failed} failed");
    guest_sdk::exit(if failed == 0 && told.is_ok() { 0 } else { 1 });
}

fn main(si: &'static StartInfo) {
    match arg(si, "role") {
        Some("victim") => victim_role(si),
        Some("attacker") => attacker_role(si),
        other => {
            println!("isolation: give role=victim or role=attacker (got {other:?})");
            guest_sdk::exit(2);
        }
    }
}
