//! Hypercall dispatch: decodes a call from the guest's registers, validates every argument
//! against the ABI (copying guest memory once, then checking the copy), and either answers it
//! or tells the vCPU loop what to do (block, poll, stop). Nothing here touches KVM, so unit
//! tests drive it with hostile arguments directly.
//!
//! A failing call has no effect: all checks come before the first change.

use std::sync::Arc;

use hypercall_abi::evtchn::{self as ev, Port};
use hypercall_abi::grant as gt;
use hypercall_abi::multicall::{MulticallEntry, MAX_MULTICALL};
use hypercall_abi::sched::{self, shutdown_reason, SchedPoll, MAX_EXIT_CODE, MAX_POLL_PORTS};
use hypercall_abi::trap::{
    TrapInfo, MAX_TRAP_ENTRIES, TRAP_ALT_STACK, TRAP_FLAGS_ALL, UPCALL_VECTOR,
};
use hypercall_abi::vcpu::{self as vc, FaultInfo, VcpuContext};
use hypercall_abi::{
    abi_query, hypercall as hc, pack_version, Errno, Features, ABI_MAJOR, ABI_MINOR,
    CONSOLE_WRITE_MAX,
};
use zerocopy::FromZeros;

use crate::domain::{Domain, StopReason};
use crate::evtchn::Backend;
use crate::x86::{IST_ALT, NR_EXCEPTION_VECTORS};

/// The features this hv offers.
pub const OFFERED: Features = Features::V1_0;

/// A hypercall as read from the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// `rax`.
    pub nr: u64,
    /// `rdi, rsi, rdx, r10, r8`.
    pub args: [u64; 5],
}

/// What the vCPU loop must do after a hypercall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Put this in `rax` and resume.
    Return(i64),
    /// Sleep until an event is pending for the vCPU, then return 0.
    Block,
    /// Sleep until a port is pending (return 0) or the deadline passes (`-ETIMEDOUT`).
    Poll {
        /// Ports to watch.
        ports: Vec<Port>,
        /// Absolute system time, if any.
        deadline: Option<u64>,
    },
    /// Stop the domain.
    Stop(StopReason),
}

/// What the dispatcher needs from the vCPU that made the call.
pub trait VcpuCtl {
    /// The address of the vCPU's last page fault (CR2).
    fn fault_address(&mut self) -> Result<u64, Errno>;
}

type HcResult = Result<Action, Errno>;

fn ret(v: u64) -> HcResult {
    Ok(Action::Return(v as i64))
}

/// Serves one hypercall from `vcpu` of `dom`.
pub fn dispatch(dom: &Arc<Domain>, vcpu: u32, call: &Call, ctl: &mut dyn VcpuCtl) -> Action {
    dispatch_one(dom, vcpu, call, ctl, false)
}

fn dispatch_one(
    dom: &Arc<Domain>,
    vcpu: u32,
    call: &Call,
    ctl: &mut dyn VcpuCtl,
    in_batch: bool,
) -> Action {
    dom.stats.hypercall(call.nr);
    let [a0, a1, a2, a3, a4] = call.args;
    let r = match call.nr {
        hc::ABI_QUERY => abi_query(a0),
        hc::CONSOLE_WRITE => console_write(dom, a0, a1),
        hc::SET_TRAP_TABLE => set_trap_table(dom, a0, a1),
        hc::SET_CALLBACK => set_callback(dom, a0, a1),
        hc::SCHED_OP if in_batch && matches!(a0, sched::BLOCK | sched::POLL) => Err(Errno::EINVAL),
        hc::SCHED_OP => sched_op(dom, vcpu, a0, a1, a2),
        hc::SET_TIMER => {
            dom.set_timer(vcpu, (a0 != 0).then_some(a0));
            ret(0)
        }
        hc::EVTCHN_OP => evtchn_op(dom, a0, a1, a2, a3),
        hc::VCPU_OP => vcpu_op(dom, a0, a1, a2, ctl),
        hc::GRANT_OP => grant_op(dom, a0, a1, a2, a3, a4),
        hc::MULTICALL if in_batch => Err(Errno::EINVAL),
        hc::MULTICALL => multicall(dom, vcpu, a0, a1, ctl),
        _ => Err(Errno::ENOSYS),
    };
    r.unwrap_or_else(|e| Action::Return(e.to_raw()))
}

fn abi_query(op: u64) -> HcResult {
    match op {
        abi_query::VERSION => ret(pack_version(ABI_MAJOR, ABI_MINOR)),
        abi_query::FEATURES => ret(OFFERED.bits() & !(1 << 63)),
        _ => Err(Errno::EINVAL),
    }
}

fn console_write(dom: &Domain, gpa: u64, len: u64) -> HcResult {
    if len > CONSOLE_WRITE_MAX {
        return Err(Errno::EINVAL);
    }
    let mut buf = vec![0u8; len as usize];
    dom.ram.read(gpa, &mut buf)?;
    let mut console = dom.console();
    // What the guest already put in the ring comes first, so output stays in order.
    console.drain(&dom.ram);
    console.write_early(&buf);
    ret(len)
}

/// A handler address must be inside the guest's RAM.
fn check_handler(dom: &Domain, handler: u64) -> Result<(), Errno> {
    dom.ram.check(handler, 1)
}

fn set_trap_table(dom: &Domain, gpa: u64, count: u64) -> HcResult {
    if count > MAX_TRAP_ENTRIES {
        return Err(Errno::EINVAL);
    }
    let mut table = vec![TrapInfo::default(); count as usize];
    dom.ram
        .read(gpa, zerocopy::IntoBytes::as_mut_bytes(table.as_mut_slice()))?;
    for t in &table {
        if t.vector >= NR_EXCEPTION_VECTORS
            || t.flags & !TRAP_FLAGS_ALL != 0
            || t.reserved != [0; 6]
        {
            return Err(Errno::EINVAL);
        }
        if t.handler != 0 {
            check_handler(dom, t.handler)?;
        }
    }
    let mut gates = dom.tables();
    for t in &table {
        if t.handler == 0 {
            gates.set_crash_gate(t.vector);
        } else {
            let ist = if t.flags & TRAP_ALT_STACK != 0 {
                IST_ALT
            } else {
                0
            };
            gates.set_gate(t.vector, t.handler, ist);
        }
    }
    ret(0)
}

fn set_callback(dom: &Domain, handler: u64, flags: u64) -> HcResult {
    if flags & !(TRAP_FLAGS_ALL as u64) != 0 {
        return Err(Errno::EINVAL);
    }
    if handler != 0 {
        check_handler(dom, handler)?;
    }
    let mut gates = dom.tables();
    if handler == 0 {
        gates.clear_gate(UPCALL_VECTOR);
    } else {
        let ist = if flags & TRAP_ALT_STACK as u64 != 0 {
            IST_ALT
        } else {
            0
        };
        gates.set_gate(UPCALL_VECTOR, handler, ist);
    }
    dom.set_callback(handler);
    ret(0)
}

fn sched_op(dom: &Domain, vcpu: u32, cmd: u64, a1: u64, a2: u64) -> HcResult {
    match cmd {
        sched::YIELD => {
            std::thread::yield_now();
            ret(0)
        }
        sched::BLOCK => {
            if dom
                .upcall_pending(vcpu)
                .load(std::sync::atomic::Ordering::SeqCst)
                != 0
            {
                ret(0)
            } else {
                Ok(Action::Block)
            }
        }
        sched::POLL => {
            let p: SchedPoll = dom.ram.read_obj(a1)?;
            if p.nr_ports == 0 || p.nr_ports > MAX_POLL_PORTS || p.reserved != 0 {
                return Err(Errno::EINVAL);
            }
            let mut ports = vec![0u32; p.nr_ports as usize];
            dom.ram.read(
                p.ports_gpa,
                zerocopy::IntoBytes::as_mut_bytes(ports.as_mut_slice()),
            )?;
            {
                let table = dom.ports();
                for &port in &ports {
                    table.get(port as u64)?;
                }
            }
            if ports.iter().any(|&port| dom.is_pending(port)) {
                return ret(0);
            }
            let deadline = (p.deadline_ns != 0).then_some(p.deadline_ns);
            if deadline.is_some_and(|d| d <= dom.clock.now_ns()) {
                return Err(Errno::ETIMEDOUT);
            }
            Ok(Action::Poll { ports, deadline })
        }
        sched::SHUTDOWN => match a1 {
            shutdown_reason::POWEROFF if a2 <= MAX_EXIT_CODE => {
                Ok(Action::Stop(StopReason::Poweroff(a2 as u8)))
            }
            shutdown_reason::CRASH => Ok(Action::Stop(StopReason::Crash(format!(
                "the guest reported a crash (code {a2})"
            )))),
            _ => Err(Errno::EINVAL),
        },
        _ => Err(Errno::EINVAL),
    }
}

fn evtchn_op(dom: &Arc<Domain>, cmd: u64, a1: u64, a2: u64, _a3: u64) -> HcResult {
    match cmd {
        ev::BIND_VIRQ => {
            let port = dom.ports().bind_virq(a1, a2)?;
            dom.reset_port_bits(port);
            ret(port as u64)
        }
        ev::BIND_IPI => {
            let port = dom.ports().bind_ipi(a1)?;
            dom.reset_port_bits(port);
            ret(port as u64)
        }
        ev::SEND => {
            match dom.send(a1)? {
                None => {}
                Some(Backend::Console) => {
                    dom.console().drain(&dom.ram);
                }
                Some(Backend::Store) => crate::store_service::serve(dom),
                Some(b @ (Backend::Block(_) | Backend::Net(_))) => dom.raise_backend(b),
            }
            ret(0)
        }
        ev::CLOSE => {
            dom.close_port(a1)?;
            ret(0)
        }
        ev::ALLOC_UNBOUND => {
            let remote = u16::try_from(a1).map_err(|_| Errno::ESRCH)?;
            ret(dom.alloc_unbound(remote)? as u64)
        }
        ev::DOORBELL => ret(dom.doorbell(a1)? as u64),
        ev::BIND_INTERDOMAIN => {
            let remote = u16::try_from(a1).map_err(|_| Errno::ESRCH)?;
            ret(dom.bind_interdomain(remote, a2)? as u64)
        }
        ev::STATUS => {
            let mut s = dom.ports().status(a1)?;
            dom.ram.check(a2, size_of::<ev::EvtchnStatus>() as u64)?;
            s.pending = dom.is_pending(a1 as Port) as u8;
            s.masked = dom.is_masked(a1 as Port) as u8;
            dom.ram.write_obj(a2, &s)?;
            ret(0)
        }
        ev::MASK => {
            dom.ports().get(a1)?;
            dom.mask(a1 as Port);
            ret(0)
        }
        ev::UNMASK => {
            let b = dom.ports().get(a1)?;
            dom.unmask(a1 as Port, b.vcpu());
            ret(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

fn grant_op(dom: &Arc<Domain>, cmd: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> HcResult {
    let reg = dom.registry()?;
    let lookup = |id| reg.get(id).ok();
    let mut book = reg.grants();
    match cmd {
        gt::SET_TABLE => book.set_table(dom, a1, a2).and(ret(0)),
        gt::MAP => {
            let granter = u16::try_from(a1).map_err(|_| Errno::ESRCH)?;
            let granter = reg.get(granter)?;
            book.map(dom, &granter, a2, a3, a4).and(ret(0))
        }
        gt::UNMAP => book.unmap(dom, a1).and(ret(0)),
        gt::END_ACCESS => book.end_access(dom, a1).and(ret(0)),
        gt::REVOKE => ret(book.revoke(dom, a1, lookup)?),
        gt::COPY => book.copy(dom, a1, a2, lookup).and(ret(0)),
        _ => Err(Errno::EINVAL),
    }
}

fn multicall(
    dom: &Arc<Domain>,
    vcpu: u32,
    gpa: u64,
    count: u64,
    ctl: &mut dyn VcpuCtl,
) -> HcResult {
    if count > MAX_MULTICALL {
        return Err(Errno::E2BIG);
    }
    let mut calls = vec![MulticallEntry::default(); count as usize];
    dom.ram
        .read(gpa, zerocopy::IntoBytes::as_mut_bytes(calls.as_mut_slice()))?;
    for (i, c) in calls.iter_mut().enumerate() {
        let call = Call {
            nr: c.op,
            args: c.args,
        };
        match dispatch_one(dom, vcpu, &call, ctl, true) {
            Action::Return(v) => c.result = v,
            stop @ Action::Stop(_) => return Ok(stop),
            // Sleeping commands are refused in a batch, so nothing else comes back.
            Action::Block | Action::Poll { .. } => c.result = Errno::EINVAL.to_raw(),
        }
        let off =
            (i * size_of::<MulticallEntry>() + std::mem::offset_of!(MulticallEntry, result)) as u64;
        dom.ram.write_obj(gpa + off, &c.result)?;
    }
    ret(0)
}

fn vcpu_op(dom: &Domain, cmd: u64, vcpu: u64, gpa: u64, ctl: &mut dyn VcpuCtl) -> HcResult {
    let check_vcpu = |v: u64| {
        if v < dom.nr_vcpus as u64 {
            Ok(v as u32)
        } else {
            Err(Errno::ESRCH)
        }
    };
    match cmd {
        vc::UP => {
            let v = check_vcpu(vcpu)?;
            let ctx: VcpuContext = dom.ram.read_obj(gpa)?;
            if ctx.reserved != 0 {
                return Err(Errno::EINVAL);
            }
            dom.ram.check(ctx.rip, 1)?;
            // The first push lands in [rsp - 8, rsp): it must be inside RAM.
            dom.ram
                .check(ctx.rsp.checked_sub(8).ok_or(Errno::EFAULT)?, 8)?;
            dom.start_vcpu(v, ctx)?;
            ret(0)
        }
        vc::IS_UP => ret(dom.vcpu_is_up(check_vcpu(vcpu)?) as u64),
        vc::FAULT_INFO => {
            if vcpu != 0 {
                return Err(Errno::EINVAL);
            }
            dom.ram.check(gpa, size_of::<FaultInfo>() as u64)?;
            let mut info = FaultInfo::new_zeroed();
            info.fault_address = ctl.fault_address()?;
            dom.ram.write_obj(gpa, &info)?;
            ret(0)
        }
        _ => Err(Errno::EINVAL),
    }
}

#[cfg(test)]
#[path = "hypercall_tests.rs"]
mod tests;
