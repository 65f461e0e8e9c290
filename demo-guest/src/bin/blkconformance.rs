//! The block protocol conformance suite (XTF's pattern): each case puts one hostile request on
//! the ring of a real `vbd` (bypassing the frontend's checks with
//! [`BlockDevice::submit_raw`]) and expects the exact status [`hypercall_abi::io::blk`]
//! documents; after each case a valid read must still succeed (the backend is alive and the
//! ring in order). Every case prints `PASS name` or `FAIL name: expected X, got Y`; the run
//! ends with `N passed, M failed` and exits with code 0 if M is 0, else 1.
//!
//! Needs two disks: `hv run blkconformance --disk small.img --disk other.img,readonly`
//! (vbd 0 writable, vbd 1 read-only; a few MiB each). The last case breaks vbd 0's ring on
//! purpose: the backend must disconnect it (`Closed`) while vbd 1 keeps working.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use guest_sdk::abi::io::blk::{
    BlkRequest, BlkSegment, MAX_DIRECT_SEGMENTS, MAX_SEGMENTS, OP_DISCARD, OP_FLUSH, OP_READ,
    OP_WRITE, REQ_INDIRECT,
};
use guest_sdk::abi::store::DeviceState;
use guest_sdk::abi::{DomId, Errno, PAGE_SIZE};
use guest_sdk::grant::{self, GrantRef};
use guest_sdk::heap::Pages;
use guest_sdk::{println, time, StartInfo};
use pv_drivers::frontend::blk::{BlockDevice, Config, ReqId};
use pv_drivers::frontend::device::FrontendDir;

guest_sdk::entry!(main);

/// What the cases use: both disks and a few pages of our own, granted in various ways.
struct Ctx {
    rw: BlockDevice,
    ro: BlockDevice,
    /// Disk size of vbd 0 in sectors.
    sectors: u64,
    /// A page granted read-write to the backend.
    g_rw: GrantRef,
    /// A page granted read-only to the backend.
    g_ro: GrantRef,
    /// A page granted to another domain (ourselves), not to the backend.
    g_other: GrantRef,
    /// An indirect page (granted read-only) whose entries name `g_rw`, sectors 0..=7.
    g_ind: GrantRef,
    /// An indirect page whose first entry is malformed (`last_sect` 9).
    g_ind_bad: GrantRef,
    /// Our own pages (kept for the whole run: the grants are never ended).
    _pages: Pages,
}

/// The expected status of a case: 0 or `-errno`.
#[derive(Clone, Copy)]
enum Expect {
    Ok,
    Err(Errno),
}

impl Expect {
    fn status(self) -> i32 {
        match self {
            Expect::Ok => 0,
            Expect::Err(e) => -(e as i32),
        }
    }
}

fn describe(status: i32) -> String {
    if status == 0 {
        return "0".into();
    }
    match Errno::from_raw(i64::from(status)) {
        Err(Some(e)) => format!("-{}", e.name()),
        _ => format!("{status}"),
    }
}

fn seg(gref: GrantRef, first: u8, last: u8) -> BlkSegment {
    BlkSegment {
        gref,
        first_sect: first,
        last_sect: last,
        pad: 0,
    }
}

/// A read of one full page into `gref`, at `sector`.
fn read1(gref: GrantRef, sector: u64) -> BlkRequest {
    let mut r = BlkRequest {
        op: OP_READ,
        sector,
        nr_segments: 1,
        ..BlkRequest::default()
    };
    r.segs[0] = seg(gref, 0, 7);
    r
}

/// Submits `req` on `dev` and returns its response's status, or a description of what went
/// wrong (the response's `op` must echo the request's).
fn transact(dev: &mut BlockDevice, req: &BlkRequest) -> Result<i32, String> {
    let id = dev.submit_raw(req).map_err(|e| format!("submit: {e}"))?;
    one_response(dev, id, req.op)
}

fn one_response(dev: &mut BlockDevice, id: ReqId, op: u8) -> Result<i32, String> {
    let mut got: Option<Result<i32, String>> = None;
    while got.is_none() {
        dev.wait().map_err(|e| format!("wait: {e}"))?;
        dev.complete(|c| {
            if c.id() == id {
                let r = c.response();
                got = Some(if r.op != op {
                    Err(format!("response op {} for request op {op}", r.op))
                } else if r.pad != [0; 3] {
                    Err("response pad not zero".into())
                } else {
                    Ok(r.status)
                });
            }
        })
        .map_err(|e| format!("complete: {e}"))?;
    }
    got.unwrap_or(Err("no response".into()))
}

/// The liveness check after each case: a valid 4 KiB read of vbd 0 through the frontend.
fn alive(c: &mut Ctx) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    c.rw.read(0, &mut buf)
        .map_err(|e| format!("the backend is not answering a valid read any more: {e}"))
}

type Build = fn(&Ctx) -> BlkRequest;

struct Case {
    name: &'static str,
    /// Which disk: false for vbd 0, true for the read-only vbd 1.
    read_only_disk: bool,
    expect: Expect,
    build: Build,
}

const fn case(name: &'static str, expect: Expect, build: Build) -> Case {
    Case {
        name,
        read_only_disk: false,
        expect,
        build,
    }
}

const fn ro_case(name: &'static str, expect: Expect, build: Build) -> Case {
    Case {
        name,
        read_only_disk: true,
        expect,
        build,
    }
}

use Errno::{EACCES, EINVAL, EROFS};
use Expect::{Err as E, Ok as OK};

static CASES: &[Case] = &[
    // Valid requests first: the baseline the hostile ones are compared to.
    case("valid read of one page", OK, |c| read1(c.g_rw, 0)),
    case("valid write from a read-only grant", OK, |c| BlkRequest {
        op: OP_WRITE,
        ..read1(c.g_ro, 8)
    }),
    case("valid indirect read", OK, |c| BlkRequest {
        flags: REQ_INDIRECT,
        nr_segments: 12,
        segs: [seg(c.g_ind, 0, 0); MAX_DIRECT_SEGMENTS],
        ..read1(0, 16)
    }),
    case("valid flush", OK, |_| BlkRequest {
        op: OP_FLUSH,
        ..BlkRequest::default()
    }),
    case("valid discard of 0 sectors", OK, |_| BlkRequest {
        op: OP_DISCARD,
        sector: 8,
        ..BlkRequest::default()
    }),
    case("valid read of the last sector", OK, |c| {
        let mut r = read1(c.g_rw, c.sectors - 1);
        r.segs[0] = seg(c.g_rw, 3, 3);
        r
    }),
    // Malformed slots: EINVAL.
    case("unknown op 4", E(EINVAL), |c| BlkRequest {
        op: 4,
        ..read1(c.g_rw, 0)
    }),
    case("unknown op 255", E(EINVAL), |c| BlkRequest {
        op: 255,
        ..read1(c.g_rw, 0)
    }),
    case("unknown flag 0x80 on a read", E(EINVAL), |c| BlkRequest {
        flags: 0x80,
        ..read1(c.g_rw, 0)
    }),
    case("indirect flag on a flush", E(EINVAL), |_| BlkRequest {
        op: OP_FLUSH,
        flags: REQ_INDIRECT,
        ..BlkRequest::default()
    }),
    case("flag on a discard", E(EINVAL), |_| BlkRequest {
        op: OP_DISCARD,
        flags: 2,
        nr_sectors: 8,
        ..BlkRequest::default()
    }),
    case("reserved segment pad not zero", E(EINVAL), |c| {
        let mut r = read1(c.g_rw, 0);
        r.segs[0].pad = 1;
        r
    }),
    case("reserved nr_sectors not zero on a read", E(EINVAL), |c| {
        BlkRequest {
            nr_sectors: 8,
            ..read1(c.g_rw, 0)
        }
    }),
    case("reserved nr_sectors not zero on a flush", E(EINVAL), |_| {
        BlkRequest {
            op: OP_FLUSH,
            nr_sectors: 1,
            ..BlkRequest::default()
        }
    }),
    case("read with 0 segments", E(EINVAL), |c| BlkRequest {
        nr_segments: 0,
        ..read1(c.g_rw, 0)
    }),
    case("write with 0 segments", E(EINVAL), |c| BlkRequest {
        op: OP_WRITE,
        nr_segments: 0,
        ..read1(c.g_rw, 0)
    }),
    case("12 direct segments (too many)", E(EINVAL), |c| BlkRequest {
        nr_segments: MAX_DIRECT_SEGMENTS as u16 + 1,
        segs: [seg(c.g_rw, 0, 7); MAX_DIRECT_SEGMENTS],
        ..read1(c.g_rw, 0)
    }),
    case("257 indirect segments (too many)", E(EINVAL), |c| {
        BlkRequest {
            flags: REQ_INDIRECT,
            nr_segments: MAX_SEGMENTS + 1,
            segs: [seg(c.g_ind, 0, 0); MAX_DIRECT_SEGMENTS],
            ..read1(0, 0)
        }
    }),
    case("indirect with 0 segments", E(EINVAL), |c| BlkRequest {
        flags: REQ_INDIRECT,
        nr_segments: 0,
        segs: [seg(c.g_ind, 0, 0); MAX_DIRECT_SEGMENTS],
        ..read1(0, 0)
    }),
    case("flush with a segment", E(EINVAL), |c| BlkRequest {
        op: OP_FLUSH,
        ..read1(c.g_rw, 0)
    }),
    case("discard with a segment", E(EINVAL), |c| BlkRequest {
        op: OP_DISCARD,
        ..read1(c.g_rw, 0)
    }),
    case("last_sect < first_sect", E(EINVAL), |c| {
        let mut r = read1(c.g_rw, 0);
        r.segs[0] = seg(c.g_rw, 5, 4);
        r
    }),
    case("last_sect 8 (past the page)", E(EINVAL), |c| {
        let mut r = read1(c.g_rw, 0);
        r.segs[0] = seg(c.g_rw, 0, 8);
        r
    }),
    case("first_sect 200", E(EINVAL), |c| {
        let mut r = read1(c.g_rw, 0);
        r.segs[0] = seg(c.g_rw, 200, 255);
        r
    }),
    case("read past the end of the disk", E(EINVAL), |c| {
        let mut r = read1(c.g_rw, c.sectors - 1);
        r.segs[0] = seg(c.g_rw, 0, 1);
        r
    }),
    case("read starting at the end of the disk", E(EINVAL), |c| {
        let mut r = read1(c.g_rw, c.sectors);
        r.segs[0] = seg(c.g_rw, 0, 0);
        r
    }),
    case(
        "sector overflow (u64::MAX - 2 + 8 sectors)",
        E(EINVAL),
        |c| read1(c.g_rw, u64::MAX - 2),
    ),
    case("second segment past the end", E(EINVAL), |c| BlkRequest {
        nr_segments: 2,
        segs: [seg(c.g_rw, 0, 7); MAX_DIRECT_SEGMENTS],
        ..read1(c.g_rw, c.sectors - 12)
    }),
    case("discard past the end", E(EINVAL), |c| BlkRequest {
        op: OP_DISCARD,
        sector: c.sectors - 4,
        nr_sectors: 8,
        ..BlkRequest::default()
    }),
    case("discard sector overflow", E(EINVAL), |_| BlkRequest {
        op: OP_DISCARD,
        sector: u64::MAX,
        nr_sectors: 2,
        ..BlkRequest::default()
    }),
    case("indirect reference with first_sect set", E(EINVAL), |c| {
        BlkRequest {
            flags: REQ_INDIRECT,
            nr_segments: 12,
            segs: [seg(c.g_ind, 1, 0); MAX_DIRECT_SEGMENTS],
            ..read1(0, 0)
        }
    }),
    case("indirect reference with pad set", E(EINVAL), |c| {
        let mut s = seg(c.g_ind, 0, 0);
        s.pad = 0x100;
        BlkRequest {
            flags: REQ_INDIRECT,
            nr_segments: 12,
            segs: [s; MAX_DIRECT_SEGMENTS],
            ..read1(0, 0)
        }
    }),
    case(
        "malformed segment inside an indirect page",
        E(EINVAL),
        |c| BlkRequest {
            flags: REQ_INDIRECT,
            nr_segments: 12,
            segs: [seg(c.g_ind_bad, 0, 0); MAX_DIRECT_SEGMENTS],
            ..read1(0, 0)
        },
    ),
    case(
        "indirect segments past the end of the disk",
        E(EINVAL),
        |c| BlkRequest {
            flags: REQ_INDIRECT,
            nr_segments: 12,
            segs: [seg(c.g_ind, 0, 0); MAX_DIRECT_SEGMENTS],
            ..read1(0, c.sectors - 8)
        },
    ),
    // Grants the backend cannot use: EACCES.
    case("data page granted to another domain", E(EACCES), |c| {
        read1(c.g_other, 0)
    }),
    case("data page never granted", E(EACCES), |_| {
        read1(grant::TABLE_ENTRIES - 1, 0)
    }),
    case("gref beyond the grant table", E(EACCES), |_| {
        read1(1_000_000, 0)
    }),
    case("gref u32::MAX", E(EACCES), |_| read1(u32::MAX, 0)),
    case("read into a read-only grant", E(EACCES), |c| {
        read1(c.g_ro, 0)
    }),
    case("second segment read-only", E(EACCES), |c| {
        let mut r = read1(c.g_rw, 0);
        r.nr_segments = 2;
        r.segs[1] = seg(c.g_ro, 0, 7);
        r
    }),
    case("indirect page granted to another domain", E(EACCES), |c| {
        BlkRequest {
            flags: REQ_INDIRECT,
            nr_segments: 12,
            segs: [seg(c.g_other, 0, 0); MAX_DIRECT_SEGMENTS],
            ..read1(0, 0)
        }
    }),
    case("indirect page never granted", E(EACCES), |_| BlkRequest {
        flags: REQ_INDIRECT,
        nr_segments: 12,
        segs: [seg(grant::TABLE_ENTRIES - 1, 0, 0); MAX_DIRECT_SEGMENTS],
        ..read1(0, 0)
    }),
    // The read-only disk: EROFS.
    ro_case("write to a read-only disk", E(EROFS), |c| BlkRequest {
        op: OP_WRITE,
        ..read1(c.g_rw, 0)
    }),
    ro_case("discard on a read-only disk", E(EROFS), |_| BlkRequest {
        op: OP_DISCARD,
        nr_sectors: 8,
        ..BlkRequest::default()
    }),
    ro_case("indirect write to a read-only disk", E(EROFS), |c| {
        BlkRequest {
            op: OP_WRITE,
            flags: REQ_INDIRECT,
            nr_segments: 12,
            segs: [seg(c.g_ind, 0, 0); MAX_DIRECT_SEGMENTS],
            ..read1(0, 0)
        }
    }),
    ro_case("read from a read-only disk", OK, |c| read1(c.g_rw, 0)),
    ro_case("flush of a read-only disk", OK, |_| BlkRequest {
        op: OP_FLUSH,
        ..BlkRequest::default()
    }),
];

fn main(si: &StartInfo) {
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut c = match setup(si) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL setup: {e}");
            println!("0 passed, 1 failed");
            guest_sdk::exit(1);
        }
    };
    for case in CASES {
        let req = (case.build)(&c);
        let dev = if case.read_only_disk {
            &mut c.ro
        } else {
            &mut c.rw
        };
        let want = case.expect.status();
        let outcome = transact(dev, &req).and_then(|got| {
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "expected {}, got {}",
                    describe(want),
                    describe(got)
                ))
            }
        });
        match outcome.and_then(|()| alive(&mut c)) {
            Ok(()) => {
                passed += 1;
                println!("PASS {}", case.name);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why}", case.name);
            }
        }
    }
    for (name, r) in [
        (
            "a full ring of malformed requests, one response each",
            full_ring(&mut c),
        ),
        (
            "a broken ring index disconnects the device, the other disk lives on",
            broken_ring(c),
        ),
    ] {
        match r {
            Ok(()) => {
                passed += 1;
                println!("PASS {name}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    guest_sdk::exit(if failed == 0 { 0 } else { 1 });
}

fn setup(si: &StartInfo) -> Result<Ctx, String> {
    let cfg = Config {
        data_pages: 32,
        indirect_pages: 4,
        ..Config::default()
    };
    let rw = BlockDevice::open_with(0, cfg).map_err(|e| format!("vbd 0: {e}"))?;
    let ro = BlockDevice::open_with(1, cfg).map_err(|e| format!("vbd 1: {e}"))?;
    if rw.read_only() || !ro.read_only() {
        return Err("needs vbd 0 writable and vbd 1 read-only".into());
    }
    let backend = rw.backend_id();
    if rw.sectors() < 64 {
        return Err("vbd 0 is too small (at least 32 KiB)".into());
    }
    let pages = Pages::zeroed(5).map_err(|e| format!("pages: {e}"))?;
    let gpa = |i: usize| pages.gpa() + i as u64 * PAGE_SIZE;
    let give = |i: usize, to: DomId, ro: bool| {
        // SAFETY: the pages are only ever accessed through raw pointers (the indirect
        // segments written below) and are kept for the whole run (their grants never end).
        unsafe { grant::grant_access(gpa(i), to, ro) }.map_err(|e| format!("grant: {e}"))
    };
    let g_rw = give(0, backend, false)?;
    let g_ro = give(1, backend, true)?;
    let g_other = give(2, si.domid, false)?;
    let g_ind = give(3, backend, true)?;
    let g_ind_bad = give(4, backend, true)?;
    for (page, bad) in [(3usize, false), (4, true)] {
        let base = pages.as_ptr().wrapping_add(page * PAGE_SIZE as usize);
        for k in 0..usize::from(MAX_SEGMENTS) {
            let last = if bad && k == 0 { 9u64 } else { 7 };
            let word = u64::from(g_rw) | last << 40;
            // SAFETY: inside page `page` of `pages` (k * 8 + 8 <= 2048), aligned; accessed
            // only through raw pointers; the backend only reads it (read-only grant).
            unsafe { core::ptr::write_volatile(base.add(k * 8).cast::<u64>(), word) };
        }
    }
    Ok(Ctx {
        sectors: rw.sectors(),
        rw,
        ro,
        g_rw,
        g_ro,
        g_other,
        g_ind,
        g_ind_bad,
        _pages: pages,
    })
}

/// As many malformed requests as the ring holds, published at once: each gets exactly one
/// response, `EINVAL`, with its own id.
fn full_ring(c: &mut Ctx) -> Result<(), String> {
    let n = c.rw.ring_size();
    let mut ids = alloc::vec::Vec::new();
    for i in 0..n {
        let req = BlkRequest {
            op: 9 + (i % 3) as u8,
            ..read1(c.g_rw, 0)
        };
        ids.push(
            c.rw.submit_raw(&req)
                .map_err(|e| format!("submit {i}: {e}"))?,
        );
    }
    let mut seen = alloc::vec![false; ids.len()];
    let mut bad: Option<String> = None;
    let until = time::monotonic_ns() + 10 * time::NS_PER_SEC;
    while seen.iter().any(|s| !s) && time::monotonic_ns() < until {
        c.rw.wait().map_err(|e| format!("wait: {e}"))?;
        c.rw.complete(|done| match ids.iter().position(|id| *id == done.id()) {
            Some(i) if !seen[i] && done.raw_status() == -(EINVAL as i32) => seen[i] = true,
            _ => {
                bad.get_or_insert(format!(
                    "unexpected response {:?} status {}",
                    done.id(),
                    describe(done.raw_status())
                ));
            }
        })
        .map_err(|e| format!("complete: {e}"))?;
    }
    if let Some(b) = bad {
        return Err(b);
    }
    if seen.iter().any(|s| !s) {
        return Err("some requests got no response".into());
    }
    alive(c)
}

/// Writes an impossible `req_prod` (far beyond the responses) and notifies: the backend must
/// move vbd 0 to `Closed` and stop serving it; vbd 1 keeps working.
fn broken_ring(mut c: Ctx) -> Result<(), String> {
    let ring = c.rw.raw_ring_page();
    // SAFETY: the ring page is vbd 0's, 4096 bytes; offset 0 is `req_prod`, aligned; the
    // device is unusable afterwards and only dropped (leaking its pages if the backend does
    // not close).
    unsafe {
        let prod = core::ptr::read_volatile(ring.cast::<u32>());
        core::ptr::write_volatile(ring.cast::<u32>(), prod.wrapping_add(1000));
    }
    let port = c.rw.port().ok_or("no port")?;
    guest_sdk::events::send(port).map_err(|e| format!("send: {e}"))?;
    let front = FrontendDir::find("vbd", 0).map_err(|e| format!("store: {e}"))?;
    let deadline = time::monotonic_ns() + 5 * time::NS_PER_SEC;
    let state = front
        .wait_backend(deadline, |s| s == DeviceState::Closed)
        .map_err(|e| format!("vbd 0's backend did not close: {e}"))?;
    let mut buf = [0u8; 4096];
    c.ro.read(0, &mut buf)
        .map_err(|e| format!("vbd 1 stopped working: {e}"))?;
    // Leave vbd 0 as it is (its pages stay allocated if its close fails).
    core::mem::forget(c.rw);
    if state == DeviceState::Closed {
        Ok(())
    } else {
        Err(format!("backend state {state:?}"))
    }
}
