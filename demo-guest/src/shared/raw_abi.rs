//! Raw ABI helpers shared by the conformance and isolation guests: thin wrappers over the raw
//! `hypercall` (so each case states its exact arguments), grant-copy builders, result checks.
//! They use their parent binary's `hc`, `Expect`, `Check` and `describe`, which differ a little
//! between the two suites.
// Each binary uses a different subset of it.
#![allow(dead_code)]

use super::*;

pub(super) fn evtchn_op(cmd: u64, a1: u64, a2: u64) -> i64 {
    hc(nr::EVTCHN_OP, cmd, a1, a2, 0, 0)
}

pub(super) fn sched_op(cmd: u64, a1: u64, a2: u64) -> i64 {
    hc(nr::SCHED_OP, cmd, a1, a2, 0, 0)
}

pub(super) fn vcpu_op(cmd: u64, vcpu: u64, gpa: u64) -> i64 {
    hc(nr::VCPU_OP, cmd, vcpu, gpa, 0, 0)
}

pub(super) fn console_write(gpa: u64, len: u64) -> i64 {
    hc(nr::CONSOLE_WRITE, gpa, len, 0, 0, 0)
}

pub(super) fn set_trap_table(table: &[TrapInfo]) -> i64 {
    hc(
        nr::SET_TRAP_TABLE,
        table.as_ptr() as u64,
        table.len() as u64,
        0,
        0,
        0,
    )
}

pub(super) fn expect_raw(expect: Expect, rax: i64) -> Check {
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

pub(super) const NS_PER_MS: u64 = 1_000_000;

pub(super) const NS_PER_SEC: u64 = 1_000_000_000;

pub(super) fn now() -> u64 {
    guest_sdk::time::monotonic_ns()
}

pub(super) fn arg<'a>(si: &'a StartInfo, key: &str) -> Option<&'a str> {
    si.cmdline()
        .split_whitespace()
        .find_map(|w| w.split_once('=').and_then(|(k, v)| (k == key).then_some(v)))
}

pub(super) fn clear_pending(port: Port) {
    pending_word(port).fetch_and(!(1 << (port % 64)), Ordering::SeqCst);
}

pub(super) fn grant_op(cmd: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    hc(nr::GRANT_OP, cmd, a1, a2, a3, a4)
}

pub(super) fn map(domid: u64, gref: u64, gpa: u64, flags: u64) -> i64 {
    grant_op(gt::MAP, domid, gref, gpa, flags)
}

pub(super) fn unmap(gpa: u64) -> i64 {
    grant_op(gt::UNMAP, gpa, 0, 0, 0)
}

pub(super) fn own(addr: u64) -> CopyPtr {
    CopyPtr {
        addr,
        gref: 0,
        domid: 0,
        pad: 0,
    }
}

pub(super) fn gptr(domid: u16, gref: u64, offset: u64) -> CopyPtr {
    CopyPtr {
        addr: offset,
        gref: gref as u32,
        domid,
        pad: 0,
    }
}

pub(super) fn gcopy(src: CopyPtr, dst: CopyPtr, len: u32, flags: u16) -> GrantCopy {
    GrantCopy {
        src,
        dst,
        len,
        flags,
        pad: 0,
        status: STATUS_UNSET,
    }
}

pub(super) fn run_copy(ops: &mut [GrantCopy]) -> i64 {
    grant_op(gt::COPY, ops.as_mut_ptr() as u64, ops.len() as u64, 0, 0)
}

/// Requires a non-error reply.
pub(super) fn want_ok(what: &str, r: Result<Reply, String>) -> Result<Reply, String> {
    match r? {
        Reply::Error(e) => Err(format!("{what}: expected success, got {e}")),
        other => Ok(other),
    }
}

/// Requires `Error(want)`.
pub(super) fn want_store_err(what: &str, r: Result<Reply, String>, want: StoreError) -> Check {
    match r? {
        Reply::Error(e) if e == want => Ok(String::new()),
        other => Err(format!(
            "{what}: expected {want}, got {}",
            describe_reply(&other)
        )),
    }
}

/// Perms owned by `owner`, no access for others, `acl` added.
pub(super) fn perms(owner: u16, acl: &[(u16, Access)]) -> Perms {
    let mut p = Perms::owned_by(owner);
    for &(d, a) in acl {
        let _ = p.grant(d, a);
    }
    p
}

pub(super) const EMPTY_ENTRY: GrantEntry = GrantEntry {
    flags: 0,
    domid: 0,
    reserved: 0,
    frame: 0,
};
