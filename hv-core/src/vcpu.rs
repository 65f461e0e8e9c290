//! The vCPU run loop: one host thread per vCPU enters the guest, serves its exits (hypercalls,
//! the crash port, kicks) and injects event upcalls on vector 32 when the guest can take them.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use hypercall_abi::trap::{has_error_code, vector_name, UPCALL_VECTOR};
use hypercall_abi::{Errno, CRASH_PORT, HYPERCALL_PORT, PING_PORT};

use crate::devices::{DeviceError, PortBus};
use crate::domain::{Domain, Kick, StopReason};
use crate::hypercall::{dispatch, Action, Call, VcpuCtl};
use crate::kvm::{BootState, Exit, Kicker, KvmError, Vcpu};
use crate::stats::ExitReason;
use crate::x86::{CrashFrame, HvRegionLayout, CRASH_FRAME_SIZE};

struct KvmKick(Kicker);

impl Kick for KvmKick {
    fn kick(&self) {
        self.0.kick();
    }
}

struct Ctl<'a>(&'a Vcpu);

impl VcpuCtl for Ctl<'_> {
    fn fault_address(&mut self) -> Result<u64, Errno> {
        self.0.sregs().map(|s| s.cr2).map_err(|_| Errno::EAGAIN)
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuThread {
    /// The domain.
    pub dom: Arc<Domain>,
    /// vCPU id.
    pub id: u32,
    /// The KVM vCPU.
    pub vcpu: Vcpu,
    /// Its boot state (for a secondary vCPU, rip/rsp/rdi come from `vcpu_op(up)`).
    pub boot: BootState,
    /// The hv region layout, to recognise crash stubs.
    pub hv_layout: HvRegionLayout,
    /// The domain's emulated devices.
    pub bus: Arc<Mutex<PortBus>>,
}

impl VcpuThread {
    /// Runs the vCPU until the domain stops. Any failure stops the domain with a reason.
    pub fn run(mut self) {
        let dom = Arc::clone(&self.dom);
        dom.attach_vcpu_thread(self.id, Box::new(KvmKick(self.vcpu.kicker())));
        if self.id != 0 {
            match dom.wait_for_start(self.id) {
                Some(ctx) => {
                    self.boot.rip = ctx.rip;
                    self.boot.rsp = ctx.rsp;
                    self.boot.rdi = ctx.rdi;
                }
                None => return,
            }
        }
        if let Err(e) = self.vcpu.set_boot_state(&self.boot) {
            dom.stop(StopReason::HvError(format!("vCPU {}: {e}", self.id)));
            return;
        }
        if let Err(reason) = self.run_loop() {
            dom.stop(reason);
        }
    }

    fn run_loop(&mut self) -> Result<(), StopReason> {
        let (dom, id) = (Arc::clone(&self.dom), self.id);
        loop {
            if dom.is_stopping() {
                return Ok(());
            }
            self.maybe_inject()?;
            let exit = self
                .vcpu
                .run()
                .map_err(|e| StopReason::HvError(format!("vCPU {id}: {e}")))?;
            match exit {
                Exit::IoOut {
                    port: HYPERCALL_PORT,
                    size: 1,
                    count: 1,
                    ..
                } => {
                    dom.stats.exit(ExitReason::Hypercall);
                    self.hypercall()?;
                }
                Exit::IoOut {
                    port: PING_PORT, ..
                } => dom.stats.exit(ExitReason::PortIo),
                Exit::IoOut {
                    port: CRASH_PORT, ..
                } => {
                    dom.stats.exit(ExitReason::Crash);
                    return Err(StopReason::Crash(self.crash_report()));
                }
                Exit::IoOut { port, .. } | Exit::IoIn { port, .. }
                    if self
                        .bus
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .claims(port) =>
                {
                    dom.stats.exit(ExitReason::PortIo);
                    let mut bus = self.bus.lock().unwrap_or_else(|e| e.into_inner());
                    // Errors other than KVM's are the guest's and have been answered already.
                    if let Err(DeviceError::Kvm(e)) = bus.serve(&mut self.vcpu, &exit) {
                        return Err(StopReason::HvError(format!("vCPU {id}: {e}")));
                    }
                }
                Exit::IoOut { port, .. } | Exit::IoIn { port, .. } => {
                    dom.stats.exit(ExitReason::PortIo);
                    return Err(self.crash(format!("unexpected I/O to port {port:#x}")));
                }
                Exit::Interrupted => dom.stats.exit(ExitReason::Kick),
                Exit::IrqWindowOpen => dom.stats.exit(ExitReason::IrqWindow),
                Exit::Shutdown => {
                    dom.stats.exit(ExitReason::Shutdown);
                    return Err(self.crash(
                        "triple fault (an exception while delivering an exception)".into(),
                    ));
                }
                Exit::Hlt => {
                    dom.stats.exit(ExitReason::Halt);
                    return Err(self.crash("hlt".into()));
                }
                Exit::MmioRead { addr, .. } | Exit::MmioWrite { addr, .. } => {
                    dom.stats.exit(ExitReason::Mmio);
                    return Err(self.crash(format!(
                        "access to unbacked guest-physical address {addr:#x}"
                    )));
                }
                Exit::FailEntry { reason } => {
                    dom.stats.exit(ExitReason::Other);
                    return Err(self.crash(format!(
                        "KVM could not enter the guest (reason {reason:#x})"
                    )));
                }
                Exit::InternalError { suberror } => {
                    dom.stats.exit(ExitReason::Other);
                    return Err(self.crash(format!("KVM internal error {suberror}")));
                }
                Exit::Other(code) => {
                    dom.stats.exit(ExitReason::Other);
                    return Err(self.crash(format!("unexpected KVM exit {code}")));
                }
            }
        }
    }

    /// Enters the upcall if an event is pending, upcalls are not masked and the guest can take
    /// an interrupt now; otherwise asks KVM to exit when it can.
    fn maybe_inject(&mut self) -> Result<(), StopReason> {
        let (dom, id) = (&self.dom, self.id);
        let wanted = dom.callback() != 0
            && dom.upcall_pending(id).load(SeqCst) != 0
            && dom.upcall_mask(id).load(SeqCst) == 0;
        if !wanted {
            self.vcpu.request_interrupt_window(false);
            return Ok(());
        }
        if self.vcpu.ready_for_injection() {
            match self.vcpu.inject(UPCALL_VECTOR) {
                Ok(()) => {
                    dom.upcall_mask(id).store(1, SeqCst);
                    dom.stats.injection();
                    self.vcpu.request_interrupt_window(false);
                    return Ok(());
                }
                // One injection is still on its way in; ask for the window and try again.
                Err(KvmError::InjectionPending) => {}
                Err(e) => return Err(StopReason::HvError(format!("vCPU {id}: {e}"))),
            }
        }
        self.vcpu.request_interrupt_window(true);
        Ok(())
    }

    fn hypercall(&mut self) -> Result<(), StopReason> {
        let r = self.vcpu.regs();
        let call = Call {
            nr: r.rax,
            args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8],
        };
        let (dom, id) = (Arc::clone(&self.dom), self.id);
        let rax = match dispatch(&dom, id, &call, &mut Ctl(&self.vcpu)) {
            Action::Return(v) => v,
            Action::Block => {
                dom.wait(id, None, false, || dom.upcall_pending(id).load(SeqCst) != 0);
                0
            }
            Action::Poll { ports, deadline } => {
                let hit = dom.wait(id, deadline, true, || {
                    ports.iter().any(|&p| dom.is_pending(p))
                });
                if hit || dom.is_stopping() {
                    0
                } else {
                    Errno::ETIMEDOUT.to_raw()
                }
            }
            Action::Stop(reason) => return Err(reason),
        };
        self.vcpu.regs_mut().rax = rax as u64;
        Ok(())
    }

    fn crash(&self, what: String) -> StopReason {
        let rip = self.vcpu.regs().rip;
        StopReason::Crash(format!(
            "vCPU {}: {what} at rip {rip:#x}{}",
            self.id,
            self.symbol(rip)
        ))
    }

    fn symbol(&self, addr: u64) -> String {
        self.dom
            .symbols
            .describe(addr)
            .map(|s| format!(" <{s}>"))
            .unwrap_or_default()
    }

    /// Describes the exception a crash stub reported, from the frame it left on the crash stack.
    fn crash_report(&self) -> String {
        let regs = self.vcpu.regs();
        if self.hv_layout.crash_stub_vector(regs.rip).is_none() {
            return format!(
                "vCPU {}: the guest wrote to the crash port at rip {:#x}{}",
                self.id,
                regs.rip,
                self.symbol(regs.rip)
            );
        }
        let mut bytes = [0u8; CRASH_FRAME_SIZE];
        let frame = self
            .dom
            .ram
            .read(regs.rsp, &mut bytes)
            .ok()
            .and_then(|_| CrashFrame::parse(&bytes).ok());
        let Some(f) = frame else {
            return format!(
                "vCPU {}: unhandled exception (its frame is unreadable)",
                self.id
            );
        };
        let v = f.vector as u8;
        let mut s = format!(
            "vCPU {}: unhandled {} (vector {v})",
            self.id,
            vector_name(v)
        );
        if has_error_code(v) {
            s += &format!(", error code {:#x}", f.error_code);
        }
        s += &format!(" at rip {:#x}{}", f.rip, self.symbol(f.rip));
        if v == 14 {
            if let Ok(sr) = self.vcpu.sregs() {
                s += &format!(", fault address {:#x}", sr.cr2);
            }
        }
        s += &format!(", rsp {:#x}", f.rsp);
        s
    }
}
