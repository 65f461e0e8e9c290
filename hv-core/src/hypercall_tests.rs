//! The dispatcher driven with valid and hostile arguments, without KVM.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hypercall_abi::evtchn::{state, virq, EvtchnStatus};
use hypercall_abi::sched::SchedPoll;
use hypercall_abi::trap::TrapInfo;
use hypercall_abi::vcpu::{FaultInfo, VcpuContext};
use zerocopy::IntoBytes;

use super::*;
use crate::console::Console;
use crate::domain::{DomainParts, Tables};
use crate::evtchn::{PortTable, DEFAULT_MAX_PORTS};
use crate::grant::Window;
use crate::layout::CONSOLE_RING_GPA;
use crate::loader::SymbolTable;
use crate::memory::GuestRam;
use crate::registry::Registry;
use crate::time::Clock;
use hypercall_abi::grant as gt;

const MEM: u64 = 4 << 20;
const SCRATCH: u64 = 0x30_0000;

#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);
impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Default)]
struct GateLog(Arc<Mutex<Vec<(u8, u64, u8)>>>);
impl Tables for GateLog {
    fn set_gate(&mut self, vector: u8, handler: u64, ist: u8) {
        self.0.lock().unwrap().push((vector, handler, ist));
    }
    fn set_crash_gate(&mut self, vector: u8) {
        self.0.lock().unwrap().push((vector, 0, 2));
    }
    fn clear_gate(&mut self, vector: u8) {
        self.0.lock().unwrap().push((vector, 0, 0));
    }
    fn set_window_pte(&mut self, slot: u32, writable: Option<bool>) {
        self.0
            .lock()
            .unwrap()
            .push((255, slot as u64, writable.map_or(0, |w| 1 + w as u8)));
    }
    fn allow_io_port(&mut self, port: u16) {
        self.0.lock().unwrap().push((254, port as u64, 0));
    }
}

struct Cr2(u64);
impl VcpuCtl for Cr2 {
    fn fault_address(&mut self) -> Result<u64, Errno> {
        Ok(self.0)
    }
}

struct T {
    dom: Arc<Domain>,
    out: Out,
    gates: GateLog,
    _registry: Arc<Registry>,
}

fn domain(nr_vcpus: u32) -> T {
    let registry = Registry::new();
    domain_in(&registry, 1, nr_vcpus)
}

fn domain_in(registry: &Arc<Registry>, id: u16, nr_vcpus: u32) -> T {
    let out = Out::default();
    let gates = GateLog::default();
    let mut ports = PortTable::new(nr_vcpus, DEFAULT_MAX_PORTS);
    let console_port = ports.bind_backend(Backend::Console).unwrap();
    let store_port = ports.bind_backend(Backend::Store).unwrap();
    let dom = Arc::new(Domain::new(DomainParts {
        id,
        name: "t".into(),
        ram: GuestRam::new(MEM).unwrap(),
        nr_vcpus,
        symbols: SymbolTable::default(),
        clock: Arc::new(Clock::new()),
        ports,
        console_port,
        console: Console::new(CONSOLE_RING_GPA, Box::new(out.clone())),
        tables: Box::new(gates.clone()),
        window: Window::new().unwrap(),
        registry: Arc::downgrade(registry),
        make_doorbell: Box::new(|_| vmm_sys_util::eventfd::EventFd::new(0)),
    }));
    registry.insert(Arc::clone(&dom));
    registry.store().connect(&dom, store_port);
    T {
        dom,
        out,
        gates,
        _registry: Arc::clone(registry),
    }
}

impl T {
    fn call(&self, nr: u64, args: &[u64]) -> Action {
        let mut a = [0u64; 5];
        a[..args.len()].copy_from_slice(args);
        dispatch(&self.dom, 0, &Call { nr, args: a }, &mut Cr2(0xdead_b000))
    }
    fn rax(&self, nr: u64, args: &[u64]) -> i64 {
        match self.call(nr, args) {
            Action::Return(v) => v,
            other => panic!("expected a return, got {other:?}"),
        }
    }
    fn err(&self, nr: u64, args: &[u64]) -> Errno {
        let v = self.rax(nr, args);
        Errno::from_raw(v).unwrap_err().unwrap()
    }
}

const BAD_GPAS: [u64; 4] = [MEM, MEM - 1, 0x40_0000_0000, u64::MAX];

#[test]
fn unknown_hypercalls_are_enosys() {
    let t = domain(1);
    for nr in [hc::COUNT, 1000, u64::MAX, 1 << 63] {
        assert_eq!(t.err(nr, &[]), Errno::ENOSYS);
    }
}

#[test]
fn abi_query() {
    let t = domain(1);
    assert_eq!(t.rax(hc::ABI_QUERY, &[abi_query::VERSION]), 1 << 16);
    assert_eq!(
        t.rax(hc::ABI_QUERY, &[abi_query::FEATURES]) as u64,
        OFFERED.bits()
    );
    assert_eq!(t.err(hc::ABI_QUERY, &[2]), Errno::EINVAL);
    assert_eq!(t.err(hc::ABI_QUERY, &[u64::MAX]), Errno::EINVAL);
}

#[test]
fn console_write_checks_the_whole_range() {
    let t = domain(1);
    t.dom.ram.write(SCRATCH, b"hi there").unwrap();
    assert_eq!(t.rax(hc::CONSOLE_WRITE, &[SCRATCH, 8]), 8);
    assert_eq!(&*t.out.0.lock().unwrap(), b"hi there");
    for gpa in BAD_GPAS {
        assert_eq!(
            t.err(hc::CONSOLE_WRITE, &[gpa, 2]),
            Errno::EFAULT,
            "{gpa:#x}"
        );
    }
    assert_eq!(t.err(hc::CONSOLE_WRITE, &[MEM - 4, 8]), Errno::EFAULT);
    assert_eq!(
        t.err(hc::CONSOLE_WRITE, &[SCRATCH, CONSOLE_WRITE_MAX + 1]),
        Errno::EINVAL
    );
    assert_eq!(
        t.rax(hc::CONSOLE_WRITE, &[0x40_0000_0000, 0]),
        0,
        "an empty range is not examined"
    );
    assert_eq!(
        t.err(hc::CONSOLE_WRITE, &[SCRATCH, u64::MAX]),
        Errno::EINVAL
    );
    assert_eq!(
        t.out.0.lock().unwrap().len(),
        8,
        "failed calls wrote nothing"
    );
}

#[test]
fn trap_table_validates_every_entry_before_changing_anything() {
    let t = domain(1);
    let put = |entries: &[TrapInfo]| t.dom.ram.write(SCRATCH, entries.as_bytes()).unwrap();
    let good = TrapInfo {
        vector: 6,
        flags: 0,
        reserved: [0; 6],
        handler: 0x20_0000,
    };
    put(&[
        good,
        TrapInfo {
            vector: 14,
            flags: TRAP_ALT_STACK,
            ..good
        },
    ]);
    assert_eq!(t.rax(hc::SET_TRAP_TABLE, &[SCRATCH, 2]), 0);
    assert_eq!(
        *t.gates.0.lock().unwrap(),
        vec![(6, 0x20_0000, 0), (14, 0x20_0000, 1)]
    );
    t.gates.0.lock().unwrap().clear();

    let cases: [(TrapInfo, Errno); 5] = [
        (TrapInfo { vector: 32, ..good }, Errno::EINVAL),
        (
            TrapInfo {
                vector: 255,
                ..good
            },
            Errno::EINVAL,
        ),
        (TrapInfo { flags: 2, ..good }, Errno::EINVAL),
        (
            TrapInfo {
                reserved: [0, 0, 1, 0, 0, 0],
                ..good
            },
            Errno::EINVAL,
        ),
        (
            TrapInfo {
                handler: MEM,
                ..good
            },
            Errno::EFAULT,
        ),
    ];
    for (bad, e) in cases {
        put(&[good, bad]);
        assert_eq!(t.err(hc::SET_TRAP_TABLE, &[SCRATCH, 2]), e, "{bad:?}");
    }
    assert_eq!(t.err(hc::SET_TRAP_TABLE, &[SCRATCH, 33]), Errno::EINVAL);
    assert_eq!(t.err(hc::SET_TRAP_TABLE, &[MEM - 8, 1]), Errno::EFAULT);
    assert!(
        t.gates.0.lock().unwrap().is_empty(),
        "failed calls set no gate"
    );
    // Removing a handler routes the vector back to the crash stub.
    put(&[TrapInfo { handler: 0, ..good }]);
    assert_eq!(t.rax(hc::SET_TRAP_TABLE, &[SCRATCH, 1]), 0);
    assert_eq!(*t.gates.0.lock().unwrap(), vec![(6, 0, 2)]);
}

#[test]
fn set_callback() {
    let t = domain(1);
    assert_eq!(t.err(hc::SET_CALLBACK, &[0x20_0000, 2]), Errno::EINVAL);
    assert_eq!(t.err(hc::SET_CALLBACK, &[MEM, 0]), Errno::EFAULT);
    assert_eq!(t.dom.callback(), 0);
    assert_eq!(t.rax(hc::SET_CALLBACK, &[0x20_0000, 0]), 0);
    assert_eq!(t.dom.callback(), 0x20_0000);
    assert_eq!(*t.gates.0.lock().unwrap(), vec![(32, 0x20_0000, 0)]);
}

#[test]
fn sched_ops() {
    let t = domain(1);
    assert_eq!(t.rax(hc::SCHED_OP, &[sched::YIELD]), 0);
    assert_eq!(t.call(hc::SCHED_OP, &[sched::BLOCK]), Action::Block);
    assert_eq!(t.err(hc::SCHED_OP, &[99]), Errno::EINVAL);
    assert_eq!(
        t.call(
            hc::SCHED_OP,
            &[sched::SHUTDOWN, shutdown_reason::POWEROFF, 63]
        ),
        Action::Stop(StopReason::Poweroff(63))
    );
    assert_eq!(
        t.err(
            hc::SCHED_OP,
            &[sched::SHUTDOWN, shutdown_reason::POWEROFF, 64]
        ),
        Errno::EINVAL
    );
    assert_eq!(t.err(hc::SCHED_OP, &[sched::SHUTDOWN, 7, 0]), Errno::EINVAL);
    assert!(matches!(
        t.call(hc::SCHED_OP, &[sched::SHUTDOWN, shutdown_reason::CRASH, 1]),
        Action::Stop(StopReason::Crash(_))
    ));
}

#[test]
fn poll_validates_its_record_and_ports() {
    let t = domain(1);
    let port = t.rax(hc::EVTCHN_OP, &[ev::BIND_IPI, 0]) as u32;
    let ports_gpa = SCRATCH + 0x100;
    let put = |p: SchedPoll, ports: &[u32]| {
        t.dom.ram.write_obj(SCRATCH, &p).unwrap();
        t.dom.ram.write(ports_gpa, ports.as_bytes()).unwrap();
    };
    let good = SchedPoll {
        ports_gpa,
        nr_ports: 1,
        reserved: 0,
        deadline_ns: 0,
    };
    put(good, &[port]);
    assert_eq!(
        t.call(hc::SCHED_OP, &[sched::POLL, SCRATCH]),
        Action::Poll {
            ports: vec![port],
            deadline: None
        }
    );
    put(
        SchedPoll {
            nr_ports: 0,
            ..good
        },
        &[port],
    );
    assert_eq!(t.err(hc::SCHED_OP, &[sched::POLL, SCRATCH]), Errno::EINVAL);
    put(
        SchedPoll {
            nr_ports: MAX_POLL_PORTS + 1,
            ..good
        },
        &[port],
    );
    assert_eq!(t.err(hc::SCHED_OP, &[sched::POLL, SCRATCH]), Errno::EINVAL);
    put(
        SchedPoll {
            reserved: 1,
            ..good
        },
        &[port],
    );
    assert_eq!(t.err(hc::SCHED_OP, &[sched::POLL, SCRATCH]), Errno::EINVAL);
    put(good, &[port + 1]);
    assert_eq!(t.err(hc::SCHED_OP, &[sched::POLL, SCRATCH]), Errno::EINVAL);
    put(
        SchedPoll {
            ports_gpa: MEM - 2,
            nr_ports: 1,
            ..good
        },
        &[],
    );
    assert_eq!(t.err(hc::SCHED_OP, &[sched::POLL, SCRATCH]), Errno::EFAULT);
    for gpa in BAD_GPAS {
        assert_eq!(t.err(hc::SCHED_OP, &[sched::POLL, gpa]), Errno::EFAULT);
    }
    put(
        SchedPoll {
            deadline_ns: 1,
            ..good
        },
        &[port],
    );
    assert_eq!(
        t.err(hc::SCHED_OP, &[sched::POLL, SCRATCH]),
        Errno::ETIMEDOUT
    );
    // A pending port answers at once.
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::SEND, port as u64]), 0);
    put(good, &[port]);
    assert_eq!(t.rax(hc::SCHED_OP, &[sched::POLL, SCRATCH]), 0);
}

fn status(t: &T, port: u64) -> EvtchnStatus {
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::STATUS, port, SCRATCH]), 0);
    t.dom.ram.read_obj(SCRATCH).unwrap()
}

#[test]
fn event_channels() {
    let t = domain(2);
    let console = t.dom.console_port as u64;
    assert_eq!(status(&t, console).state, state::HV_BACKEND);
    assert_eq!(t.err(hc::EVTCHN_OP, &[ev::CLOSE, console]), Errno::EPERM);
    assert_eq!(t.err(hc::EVTCHN_OP, &[99]), Errno::EINVAL);
    assert_eq!(
        t.err(hc::EVTCHN_OP, &[ev::BIND_VIRQ, virq::COUNT as u64, 0]),
        Errno::EINVAL
    );
    assert_eq!(t.err(hc::EVTCHN_OP, &[ev::BIND_VIRQ, 0, 2]), Errno::ESRCH);
    let timer = t.rax(hc::EVTCHN_OP, &[ev::BIND_VIRQ, virq::TIMER as u64, 0]) as u64;
    assert_eq!(
        t.err(hc::EVTCHN_OP, &[ev::BIND_VIRQ, virq::TIMER as u64, 0]),
        Errno::EEXIST
    );
    assert_eq!(t.err(hc::EVTCHN_OP, &[ev::SEND, timer]), Errno::EINVAL);
    for port in [0, 4096, 4095, u64::MAX] {
        assert_eq!(t.err(hc::EVTCHN_OP, &[ev::SEND, port]), Errno::EINVAL);
        assert_eq!(t.err(hc::EVTCHN_OP, &[ev::CLOSE, port]), Errno::EINVAL);
        assert_eq!(t.err(hc::EVTCHN_OP, &[ev::MASK, port]), Errno::EINVAL);
        assert_eq!(t.err(hc::EVTCHN_OP, &[ev::UNMASK, port]), Errno::EINVAL);
    }
    assert_eq!(
        t.err(hc::EVTCHN_OP, &[ev::STATUS, 0, SCRATCH]),
        Errno::EINVAL
    );
    assert_eq!(status(&t, 4095).state, state::FREE);
    for gpa in BAD_GPAS {
        assert_eq!(
            t.err(hc::EVTCHN_OP, &[ev::STATUS, console, gpa]),
            Errno::EFAULT
        );
    }

    // IPI to vCPU 1: pending, selector, upcall pending; coalescing; masking.
    let ipi = t.rax(hc::EVTCHN_OP, &[ev::BIND_IPI, 1]) as u64;
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::SEND, ipi]), 0);
    let s = status(&t, ipi);
    assert_eq!(
        (s.state, s.vcpu, s.pending, s.masked),
        (state::IPI, 1, 1, 0)
    );
    assert_eq!(
        t.dom
            .upcall_pending(1)
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        t.dom
            .upcall_pending(0)
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let masked = t.rax(hc::EVTCHN_OP, &[ev::BIND_IPI, 0]) as u64;
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::MASK, masked]), 0);
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::SEND, masked]), 0);
    assert_eq!(status(&t, masked).pending, 1);
    assert_eq!(
        t.dom
            .upcall_pending(0)
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "masked: no upcall"
    );
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::UNMASK, masked]), 0);
    assert_eq!(
        t.dom
            .upcall_pending(0)
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "unmask raises it"
    );

    // Close clears the port; a send on it then fails.
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::CLOSE, masked]), 0);
    assert_eq!(
        status(&t, masked),
        EvtchnStatus {
            port: masked as u32,
            ..Default::default()
        }
    );
    assert_eq!(t.err(hc::EVTCHN_OP, &[ev::SEND, masked]), Errno::EINVAL);

    // Exhaustion.
    let mut opened = vec![];
    loop {
        match t.rax(hc::EVTCHN_OP, &[ev::BIND_IPI, 0]) {
            p if p > 0 => opened.push(p as u64),
            e => {
                assert_eq!(Errno::from_raw(e), Err(Some(Errno::ENOSPC)));
                break;
            }
        }
    }
    assert_eq!(opened.len() as u32, DEFAULT_MAX_PORTS - 4);
    for p in opened {
        assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::CLOSE, p]), 0);
    }
}

#[test]
fn console_send_drains_the_ring() {
    let t = domain(1);
    let ring = CONSOLE_RING_GPA;
    t.dom.ram.write(ring + 1024, b"ring!").unwrap();
    t.dom.ram.atomic_u32_store(ring + 3084, 5).unwrap();
    assert_eq!(
        t.rax(hc::EVTCHN_OP, &[ev::SEND, t.dom.console_port as u64]),
        0
    );
    assert_eq!(&*t.out.0.lock().unwrap(), b"ring!");
    assert_eq!(
        t.dom.ram.atomic_u32_load(ring + 3080).unwrap(),
        5,
        "out_cons published"
    );
}

#[test]
fn vcpu_ops() {
    let t = domain(2);
    let ctx = VcpuContext {
        rip: 0x20_0000,
        rsp: 0x30_0000,
        rdi: 7,
        reserved: 0,
    };
    t.dom.ram.write_obj(SCRATCH, &ctx).unwrap();
    assert_eq!(t.err(hc::VCPU_OP, &[vc::UP, 2, SCRATCH]), Errno::ESRCH);
    assert_eq!(
        t.err(hc::VCPU_OP, &[vc::UP, u64::MAX, SCRATCH]),
        Errno::ESRCH
    );
    assert_eq!(t.err(hc::VCPU_OP, &[vc::UP, 0, SCRATCH]), Errno::EBUSY);
    assert_eq!(t.err(hc::VCPU_OP, &[vc::UP, 1, MEM]), Errno::EFAULT);
    for bad in [
        VcpuContext { reserved: 1, ..ctx },
        VcpuContext { rip: MEM, ..ctx },
        VcpuContext {
            rsp: MEM + 4096,
            ..ctx
        },
        VcpuContext { rsp: 0, ..ctx },
        VcpuContext { rsp: 7, ..ctx },
    ] {
        t.dom.ram.write_obj(SCRATCH, &bad).unwrap();
        assert!(t.rax(hc::VCPU_OP, &[vc::UP, 1, SCRATCH]) < 0, "{bad:?}");
    }
    assert_eq!(t.rax(hc::VCPU_OP, &[vc::IS_UP, 1]), 0);
    t.dom.ram.write_obj(SCRATCH, &ctx).unwrap();
    assert_eq!(t.rax(hc::VCPU_OP, &[vc::UP, 1, SCRATCH]), 0);
    assert_eq!(t.rax(hc::VCPU_OP, &[vc::IS_UP, 1]), 1);
    assert_eq!(t.err(hc::VCPU_OP, &[vc::UP, 1, SCRATCH]), Errno::EBUSY);
    assert_eq!(t.err(hc::VCPU_OP, &[vc::IS_UP, 9]), Errno::ESRCH);
    assert_eq!(t.err(hc::VCPU_OP, &[9]), Errno::EINVAL);
    assert_eq!(
        t.err(hc::VCPU_OP, &[vc::FAULT_INFO, 1, SCRATCH]),
        Errno::EINVAL
    );
    assert_eq!(
        t.err(hc::VCPU_OP, &[vc::FAULT_INFO, 0, MEM - 8]),
        Errno::EFAULT
    );
    assert_eq!(t.rax(hc::VCPU_OP, &[vc::FAULT_INFO, 0, SCRATCH]), 0);
    assert_eq!(
        t.dom
            .ram
            .read_obj::<FaultInfo>(SCRATCH)
            .unwrap()
            .fault_address,
        0xdead_b000
    );
}

#[test]
fn timer_fires_virq_timer() {
    let t = domain(1);
    let port = t.rax(hc::EVTCHN_OP, &[ev::BIND_VIRQ, virq::TIMER as u64, 0]) as u32;
    let dom = Arc::clone(&t.dom);
    let timers = std::thread::spawn(move || dom.run_timers());
    let deadline = t.dom.clock.now_ns() + 5_000_000;
    assert_eq!(t.rax(hc::SET_TIMER, &[deadline]), 0);
    let fired = t.dom.wait(0, Some(deadline + 2_000_000_000), false, || {
        t.dom.is_pending(port)
    });
    assert!(fired, "VIRQ_TIMER became pending");
    assert!(t.dom.clock.now_ns() >= deadline);
    t.dom.stop(StopReason::Poweroff(0));
    timers.join().unwrap();
}

// ---- two domains: interdomain event channels, grants, multicall ----

use hypercall_abi::grant::{
    CopyPtr, GrantCopy, GrantEntry, COPY_DST_GREF, COPY_SRC_GREF, GTF_PERMIT_ACCESS, GTF_READONLY,
    MAP_READONLY,
};
use hypercall_abi::multicall::MulticallEntry;

use crate::x86::{GRANT_WINDOW_GPA, GRANT_WINDOW_SLOTS};

fn pair() -> (T, T) {
    let registry = Registry::new();
    (domain_in(&registry, 1, 1), domain_in(&registry, 2, 1))
}

#[test]
fn interdomain_channel_connects_sends_and_unbinds_on_close() {
    let (a, b) = pair();
    assert_eq!(a.err(hc::EVTCHN_OP, &[ev::ALLOC_UNBOUND, 9]), Errno::ESRCH);
    assert_eq!(
        a.err(hc::EVTCHN_OP, &[ev::ALLOC_UNBOUND, u64::MAX]),
        Errno::ESRCH
    );
    let pa = a.rax(hc::EVTCHN_OP, &[ev::ALLOC_UNBOUND, 2]) as u64;
    let s = status(&a, pa);
    assert_eq!((s.state, s.remote_domid), (state::UNBOUND, 2));
    // Sending on an unbound port raises nothing.
    assert_eq!(a.rax(hc::EVTCHN_OP, &[ev::SEND, pa]), 0);
    // Only the named domain may bind it; only unbound ports can be bound.
    let other = b.rax(hc::EVTCHN_OP, &[ev::ALLOC_UNBOUND, 1]) as u64;
    assert_eq!(
        b.err(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 1, 1]),
        Errno::EINVAL
    );
    assert_eq!(
        b.err(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 1, 4000]),
        Errno::EINVAL
    );
    assert_eq!(
        b.err(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 7, pa]),
        Errno::ESRCH
    );
    let pb = b.rax(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 1, pa]) as u64;
    assert_eq!(
        b.err(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 1, pa]),
        Errno::EINVAL,
        "already bound"
    );
    let s = status(&a, pa);
    assert_eq!(
        (s.state, s.remote_domid, s.remote_port),
        (state::INTERDOMAIN, 2, pb as u32)
    );
    // A third domain cannot bind a port meant for someone else.
    let c = domain_in(&a._registry, 3, 1);
    assert_eq!(
        c.err(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 2, other]),
        Errno::EACCES
    );

    assert_eq!(a.rax(hc::EVTCHN_OP, &[ev::SEND, pa]), 0);
    assert!(b.dom.is_pending(pb as u32));
    assert!(!a.dom.is_pending(pa as u32));
    assert_eq!(b.rax(hc::EVTCHN_OP, &[ev::SEND, pb]), 0);
    assert!(a.dom.is_pending(pa as u32));

    assert_eq!(a.rax(hc::EVTCHN_OP, &[ev::CLOSE, pa]), 0);
    let s = status(&b, pb);
    assert_eq!(
        (s.state, s.remote_domid),
        (state::UNBOUND, 1),
        "peer returns to unbound"
    );
    assert_eq!(a.err(hc::EVTCHN_OP, &[ev::SEND, pa]), Errno::EINVAL);
}

const TABLE: u64 = 0x30_0000;
const FRAME: u64 = 0x31_0000;

fn grant(t: &T, gref: u64, entry: GrantEntry) {
    t.dom.ram.write_obj(TABLE + gref * 16, &entry).unwrap();
}

#[test]
fn grant_map_shares_the_frame_and_refuses_misuse() {
    let (a, b) = pair();
    let win = GRANT_WINDOW_GPA;
    // Without a table every reference is invalid.
    assert_eq!(b.err(hc::GRANT_OP, &[gt::MAP, 1, 0, win, 0]), Errno::EINVAL);
    assert_eq!(
        a.err(hc::GRANT_OP, &[gt::SET_TABLE, TABLE + 8, 4]),
        Errno::EINVAL
    );
    assert_eq!(
        a.err(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 0]),
        Errno::EINVAL
    );
    assert_eq!(
        a.err(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 2000]),
        Errno::EINVAL
    );
    assert_eq!(
        a.err(hc::GRANT_OP, &[gt::SET_TABLE, MEM - 4096, 512]),
        Errno::EFAULT
    );
    assert_eq!(a.rax(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 16]), 0);
    grant(
        &a,
        0,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: 2,
            reserved: 0,
            frame: FRAME,
        },
    );
    grant(
        &a,
        1,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: 2,
            reserved: 0,
            frame: FRAME + 4096,
        },
    );
    grant(
        &a,
        2,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: 3,
            reserved: 0,
            frame: FRAME,
        },
    );
    grant(
        &a,
        3,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: 2,
            reserved: 0,
            frame: FRAME + 1,
        },
    );
    grant(
        &a,
        4,
        GrantEntry {
            flags: 0x80 | GTF_PERMIT_ACCESS,
            domid: 2,
            reserved: 0,
            frame: FRAME,
        },
    );
    a.dom.ram.write(FRAME, b"granted page").unwrap();

    let cases: [(&[u64], Errno); 12] = [
        (&[gt::MAP, 9, 0, win, 0], Errno::ESRCH),
        (&[gt::MAP, 2, 0, win, 0], Errno::EINVAL), // grant to self (b maps its own)
        (&[gt::MAP, 1, 16, win, 0], Errno::EINVAL), // ref beyond the table
        (&[gt::MAP, 1, 5, win, 0], Errno::ENOENT), // entry not in force
        (&[gt::MAP, 1, 2, win, 0], Errno::EACCES), // granted to another domain
        (&[gt::MAP, 1, 1, win, 0], Errno::EACCES), // read-only grant mapped writable
        (&[gt::MAP, 1, 3, win, 0], Errno::EINVAL), // unaligned frame
        (&[gt::MAP, 1, 4, win, 0], Errno::EINVAL), // unknown entry flag
        (&[gt::MAP, 1, 0, win + 8, 0], Errno::EINVAL), // not page-aligned
        (&[gt::MAP, 1, 0, win - 4096, 0], Errno::EINVAL), // outside the window
        (
            &[gt::MAP, 1, 0, win + GRANT_WINDOW_SLOTS as u64 * 4096, 0],
            Errno::EINVAL,
        ),
        (&[gt::MAP, 1, 0, win, 4], Errno::EINVAL), // unknown map flag
    ];
    for (args, e) in cases {
        assert_eq!(b.err(hc::GRANT_OP, args), e, "{args:?}");
    }
    // A good map: b's window page is a's frame (the same memory, both ways).
    assert_eq!(b.rax(hc::GRANT_OP, &[gt::MAP, 1, 0, win, 0]), 0);
    let page = b.dom.window().host_base();
    // SAFETY: reading the first bytes of the mapped window page, which the test just mapped.
    let seen = unsafe { std::slice::from_raw_parts(page, 12) };
    assert_eq!(seen, b"granted page");
    // SAFETY: writing into the mapped window page; it is a's frame, read-write.
    unsafe { page.write(b'G') };
    let mut back = [0u8; 1];
    a.dom.ram.read(FRAME, &mut back).unwrap();
    assert_eq!(&back, b"G");
    assert!(
        b.gates.0.lock().unwrap().contains(&(255, 0, 2)),
        "PTE set writable"
    );
    assert_eq!(
        b.err(hc::GRANT_OP, &[gt::MAP, 1, 0, win, 0]),
        Errno::EBUSY,
        "slot in use"
    );
    // Read-only map of the read-only grant: the PTE is read-only.
    assert_eq!(
        b.rax(hc::GRANT_OP, &[gt::MAP, 1, 1, win + 4096, MAP_READONLY]),
        0
    );
    assert!(
        b.gates.0.lock().unwrap().contains(&(255, 1, 1)),
        "PTE set read-only"
    );

    // The granter cannot end access while mapped; revoke forces it.
    assert_eq!(a.err(hc::GRANT_OP, &[gt::END_ACCESS, 0]), Errno::EBUSY);
    assert_eq!(a.err(hc::GRANT_OP, &[gt::END_ACCESS, 99]), Errno::EINVAL);
    assert_eq!(
        a.err(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 16]),
        Errno::EBUSY
    );
    assert_eq!(b.rax(hc::GRANT_OP, &[gt::UNMAP, win]), 0);
    assert_eq!(
        b.err(hc::GRANT_OP, &[gt::UNMAP, win]),
        Errno::EINVAL,
        "double unmap"
    );
    assert_eq!(b.err(hc::GRANT_OP, &[gt::UNMAP, 0x1000]), Errno::EINVAL);
    assert_eq!(a.rax(hc::GRANT_OP, &[gt::END_ACCESS, 0]), 0);
    assert_eq!(
        b.err(hc::GRANT_OP, &[gt::MAP, 1, 0, win, 0]),
        Errno::ENOENT,
        "access ended"
    );

    assert_eq!(
        a.rax(hc::GRANT_OP, &[gt::REVOKE, 1]),
        1,
        "one mapping revoked"
    );
    assert!(
        b.gates.0.lock().unwrap().ends_with(&[(255, 1, 0)]),
        "PTE cleared"
    );
    // SAFETY: the revoked slot is backed by a fresh zero page again.
    assert_eq!(
        unsafe { *page.add(4096) },
        0,
        "the window no longer shows a's frame"
    );
    assert_eq!(
        b.rax(hc::GRANT_OP, &[gt::UNMAP, win + 4096]),
        0,
        "revoked slot unmaps"
    );
    assert_eq!(b.err(hc::GRANT_OP, &[99]), Errno::EINVAL);
}

#[test]
fn grant_copy_reports_a_status_per_element() {
    let (a, b) = pair();
    assert_eq!(a.rax(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 4]), 0);
    grant(
        &a,
        0,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: 2,
            reserved: 0,
            frame: FRAME,
        },
    );
    grant(
        &a,
        1,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: 2,
            reserved: 0,
            frame: FRAME + 4096,
        },
    );
    a.dom.ram.write(FRAME + 4096, b"read me").unwrap();
    b.dom.ram.write(SCRATCH + 0x800, b"hello a").unwrap();
    let own = |addr| CopyPtr {
        addr,
        ..Default::default()
    };
    let gref = |gref, addr| CopyPtr {
        addr,
        gref,
        domid: 1,
        pad: 0,
    };
    let ops = [
        // b -> a's writable grant, offset 16.
        GrantCopy {
            src: own(SCRATCH + 0x800),
            dst: gref(0, 16),
            len: 7,
            flags: COPY_DST_GREF,
            ..Default::default()
        },
        // a's read-only grant -> b.
        GrantCopy {
            src: gref(1, 0),
            dst: own(SCRATCH + 0x900),
            len: 7,
            flags: COPY_SRC_GREF,
            ..Default::default()
        },
        // write through a read-only grant.
        GrantCopy {
            src: own(SCRATCH),
            dst: gref(1, 0),
            len: 4,
            flags: COPY_DST_GREF,
            ..Default::default()
        },
        // crosses the granted page.
        GrantCopy {
            src: gref(0, 4090),
            dst: own(SCRATCH),
            len: 16,
            flags: COPY_SRC_GREF,
            ..Default::default()
        },
        // own range outside RAM.
        GrantCopy {
            src: own(MEM - 2),
            dst: gref(0, 0),
            len: 4,
            flags: COPY_DST_GREF,
            ..Default::default()
        },
        // unknown flag, zero length.
        GrantCopy {
            src: own(SCRATCH),
            dst: own(SCRATCH),
            len: 4,
            flags: 8,
            ..Default::default()
        },
        GrantCopy {
            src: own(SCRATCH),
            dst: own(SCRATCH),
            len: 0,
            ..Default::default()
        },
        // a bad reference.
        GrantCopy {
            src: gref(3, 0),
            dst: own(SCRATCH),
            len: 4,
            flags: COPY_SRC_GREF,
            ..Default::default()
        },
    ];
    let arr = SCRATCH + 0x1000;
    b.dom.ram.write(arr, ops.as_bytes()).unwrap();
    assert_eq!(b.rax(hc::GRANT_OP, &[gt::COPY, arr, ops.len() as u64]), 0);
    let mut done = ops;
    b.dom.ram.read(arr, done.as_mut_bytes()).unwrap();
    let st: Vec<i64> = done.iter().map(|o| o.status).collect();
    use Errno::*;
    assert_eq!(
        st,
        vec![
            0,
            0,
            EACCES.to_raw(),
            EINVAL.to_raw(),
            EFAULT.to_raw(),
            EINVAL.to_raw(),
            EINVAL.to_raw(),
            ENOENT.to_raw()
        ]
    );
    let mut got = [0u8; 7];
    a.dom.ram.read(FRAME + 16, &mut got).unwrap();
    assert_eq!(&got, b"hello a");
    b.dom.ram.read(SCRATCH + 0x900, &mut got).unwrap();
    assert_eq!(&got, b"read me");
    assert_eq!(b.err(hc::GRANT_OP, &[gt::COPY, arr, 17]), Errno::E2BIG);
    assert_eq!(b.err(hc::GRANT_OP, &[gt::COPY, MEM - 8, 1]), Errno::EFAULT);
}

#[test]
fn multicall_runs_a_batch_with_a_result_each() {
    let t = domain(1);
    let e = |op, args: [u64; 5]| MulticallEntry {
        op,
        args,
        result: 0,
    };
    let batch = [
        e(hc::ABI_QUERY, [abi_query::VERSION, 0, 0, 0, 0]),
        e(hc::EVTCHN_OP, [ev::BIND_IPI, 0, 0, 0, 0]),
        e(999, [0; 5]),
        e(hc::MULTICALL, [SCRATCH, 1, 0, 0, 0]),
        e(hc::SCHED_OP, [sched::BLOCK, 0, 0, 0, 0]),
        e(hc::CONSOLE_WRITE, [MEM, 1, 0, 0, 0]),
    ];
    t.dom.ram.write(SCRATCH, batch.as_bytes()).unwrap();
    assert_eq!(t.rax(hc::MULTICALL, &[SCRATCH, batch.len() as u64]), 0);
    let mut out = batch;
    t.dom.ram.read(SCRATCH, out.as_mut_bytes()).unwrap();
    let r: Vec<i64> = out.iter().map(|e| e.result).collect();
    use Errno::*;
    assert_eq!(r[0], 1 << 16);
    assert!(r[1] > 0, "a port");
    assert_eq!(
        &r[2..],
        &[
            ENOSYS.to_raw(),
            EINVAL.to_raw(),
            EINVAL.to_raw(),
            EFAULT.to_raw()
        ]
    );
    assert_eq!(t.err(hc::MULTICALL, &[SCRATCH, 33]), Errno::E2BIG);
    assert_eq!(t.err(hc::MULTICALL, &[MEM - 8, 1]), Errno::EFAULT);
    // A shutdown inside a batch stops the domain there.
    let stop = [
        e(
            hc::SCHED_OP,
            [sched::SHUTDOWN, shutdown_reason::POWEROFF, 5, 0, 0],
        ),
        e(hc::ABI_QUERY, [0; 5]),
    ];
    t.dom.ram.write(SCRATCH, stop.as_bytes()).unwrap();
    assert_eq!(
        t.call(hc::MULTICALL, &[SCRATCH, 2]),
        Action::Stop(StopReason::Poweroff(5))
    );
}

// ---- the store, over the real ring and event channel ----

use hypercall_abi::ring::FrontRing;
use hypercall_abi::store::{Request as SReq, Response as SRsp, StoreSlot, Value, STORE_RING_BYTES};

use crate::layout::STORE_RING_GPA;

struct Client<'a> {
    t: &'a T,
    ring: FrontRing<StoreSlot, StoreSlot>,
    next: u32,
}

impl<'a> Client<'a> {
    fn new(t: &'a T) -> Client<'a> {
        // SAFETY: the store page is inside the test domain's RAM, which outlives the client.
        let ring = unsafe {
            FrontRing::new(
                t.dom.ram.host_base().add(STORE_RING_GPA as usize),
                STORE_RING_BYTES,
            )
        }
        .unwrap();
        Client { t, ring, next: 1 }
    }

    fn send(&mut self, slot: StoreSlot) {
        self.ring.push_request(&slot).unwrap();
        self.ring.push_requests_and_check_notify();
        let port = self.t.rax(hc::EVTCHN_OP, &[ev::SEND, 2]);
        assert_eq!(port, 0);
    }

    fn call(&mut self, req: &SReq<'_>) -> StoreSlot {
        let id = self.next;
        self.next += 1;
        self.send(StoreSlot::request(id, req).unwrap());
        let rsp = self.ring.poll_response().unwrap().expect("a response");
        assert_eq!(rsp.req_id, id);
        rsp
    }
}

#[test]
fn store_serves_requests_and_watch_events_over_the_ring() {
    let (a, b) = pair();
    let mut ca = Client::new(&a);
    let mut cb = Client::new(&b);
    // Each domain finds the other by name.
    let r = cb.call(&SReq::Read {
        path: "/local/domain/1/name",
    });
    assert_eq!(r.decode_response().unwrap(), SRsp::Value(Value::Str("t")));
    // a writes in its home; b may not read it, nor write there.
    let r = ca.call(&SReq::Write {
        path: "/local/domain/1/x",
        value: Value::U64(7),
    });
    assert_eq!(r.decode_response().unwrap(), SRsp::Ok);
    let r = cb.call(&SReq::Read {
        path: "/local/domain/1/x",
    });
    assert!(matches!(r.decode_response().unwrap(), SRsp::Error(e) if e.errno() == Errno::EACCES));
    let r = cb.call(&SReq::Write {
        path: "/local/domain/1/y",
        value: Value::U64(1),
    });
    assert!(matches!(r.decode_response().unwrap(), SRsp::Error(e) if e.errno() == Errno::EACCES));
    // b watches a's node (with a credit posted); a changes it; b's ring gets the event and
    // b's store port is raised.
    let r = cb.call(&SReq::Watch {
        path: "/local/domain/1/x",
        token: 5,
    });
    assert_eq!(r.decode_response().unwrap(), SRsp::Ok);
    cb.send(StoreSlot::event_credit());
    cb.send(StoreSlot::event_credit());
    assert!(b.dom.is_pending(2), "b's store port raised");
    // The immediate event is not readable by b (no permission), so none arrived; a grants read.
    let perms = hypercall_abi::store::Perms {
        owner: 1,
        others: hypercall_abi::store::Access::None,
        acl: heapless::Vec::from_slice(&[(2, hypercall_abi::store::Access::Read)]).unwrap(),
    };
    let r = ca.call(&SReq::SetPerms {
        path: "/local/domain/1/x",
        perms,
    });
    assert_eq!(r.decode_response().unwrap(), SRsp::Ok);
    let mut events = 0;
    while let Some(ev) = cb.ring.poll_response().unwrap() {
        assert!(ev.is_watch_event());
        assert_eq!(
            ev.decode_response().unwrap(),
            SRsp::WatchEvent {
                path: "/local/domain/1/x",
                token: 5
            }
        );
        events += 1;
    }
    assert!(events >= 1, "a watch event reached b's ring");
    let r = cb.call(&SReq::Read {
        path: "/local/domain/1/x",
    });
    assert_eq!(r.decode_response().unwrap(), SRsp::Value(Value::U64(7)));
    // A hostile producer index disconnects the ring and nothing else.
    b.dom
        .ram
        .atomic_u32_store(STORE_RING_GPA, 1_000_000)
        .unwrap();
    assert_eq!(b.rax(hc::EVTCHN_OP, &[ev::SEND, 2]), 0);
    let r = ca.call(&SReq::Read {
        path: "/local/domain/1/x",
    });
    assert_eq!(
        r.decode_response().unwrap(),
        SRsp::Value(Value::U64(7)),
        "a unaffected"
    );
}

#[test]
fn two_domains_sending_to_each_other_at_once_do_not_deadlock() {
    let (a, b) = pair();
    let pa = a.rax(hc::EVTCHN_OP, &[ev::ALLOC_UNBOUND, 2]) as u64;
    let pb = b.rax(hc::EVTCHN_OP, &[ev::BIND_INTERDOMAIN, 1, pa]) as u64;
    let (da, db) = (Arc::clone(&a.dom), Arc::clone(&b.dom));
    let send = |d: Arc<Domain>, port: u64| {
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                let call = Call {
                    nr: hc::EVTCHN_OP,
                    args: [ev::SEND, port, 0, 0, 0],
                };
                assert_eq!(dispatch(&d, 0, &call, &mut Cr2(0)), Action::Return(0));
            }
        })
    };
    let (ta, tb) = (send(da, pa), send(db, pb));
    ta.join().unwrap();
    tb.join().unwrap();
}

#[test]
fn a_grant_the_hv_backend_holds_cannot_be_ended() {
    let t = domain(1);
    assert_eq!(t.rax(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 4]), 0);
    let hv = hypercall_abi::DOMID_HV;
    grant(
        &t,
        0,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: hv,
            reserved: 0,
            frame: FRAME,
        },
    );
    grant(
        &t,
        1,
        GrantEntry {
            flags: GTF_PERMIT_ACCESS,
            domid: 2,
            reserved: 0,
            frame: FRAME,
        },
    );
    let reg = t.dom.registry().unwrap();
    // Only grants made to the hv, and only with the access they allow.
    assert_eq!(reg.grants().hv_hold(&t.dom, 0, true), Err(Errno::EACCES));
    assert_eq!(reg.grants().hv_hold(&t.dom, 1, false), Err(Errno::EACCES));
    assert_eq!(reg.grants().hv_hold(&t.dom, 0, false), Ok(FRAME));
    assert_eq!(
        t.err(hc::GRANT_OP, &[gt::END_ACCESS, 0]),
        Errno::EBUSY,
        "held by the hv"
    );
    assert_eq!(
        t.err(hc::GRANT_OP, &[gt::SET_TABLE, TABLE, 4]),
        Errno::EBUSY
    );
    reg.grants().hv_release(t.dom.id, 0);
    assert_eq!(t.rax(hc::GRANT_OP, &[gt::END_ACCESS, 0]), 0);
}

#[test]
fn doorbells_ring_device_backends_without_a_hypercall() {
    use crate::domain::Signal;
    let t = domain(1);
    let ipi = t.rax(hc::EVTCHN_OP, &[ev::BIND_IPI, 0]) as u64;
    let dev = t.rax(
        hc::EVTCHN_OP,
        &[ev::ALLOC_UNBOUND, hypercall_abi::DOMID_HV as u64],
    ) as u64;
    // Not yet connected to a backend: no doorbell.
    assert_eq!(
        t.err(hc::EVTCHN_OP, &[ev::DOORBELL, dev]),
        Errno::EOPNOTSUPP
    );
    t.dom.bind_to_backend(dev, Backend::Block(0)).unwrap();
    let signal = Arc::new(Signal::default());
    t.dom
        .add_backend_signal(Backend::Block(0), Arc::clone(&signal));
    for port in [ipi, t.dom.console_port as u64, 2] {
        assert_eq!(
            t.err(hc::EVTCHN_OP, &[ev::DOORBELL, port]),
            Errno::EOPNOTSUPP,
            "port {port}"
        );
    }
    assert_eq!(t.err(hc::EVTCHN_OP, &[ev::DOORBELL, 4000]), Errno::EINVAL);
    let io = t.rax(hc::EVTCHN_OP, &[ev::DOORBELL, dev]) as u64;
    assert_eq!(io, ev::DOORBELL_PORT_BASE as u64);
    assert_eq!(
        t.rax(hc::EVTCHN_OP, &[ev::DOORBELL, dev]) as u64,
        io,
        "the same doorbell again"
    );
    assert!(
        t.gates.0.lock().unwrap().contains(&(254, io, 0)),
        "the port is allowed in the TSS"
    );
    // The guest's device port stays the guest's to close; a port reopened under the same
    // number gets a fresh doorbell.
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::CLOSE, dev]), 0);
    let again = t.rax(
        hc::EVTCHN_OP,
        &[ev::ALLOC_UNBOUND, hypercall_abi::DOMID_HV as u64],
    ) as u64;
    assert_eq!(again, dev, "the lowest free port is reused");
    t.dom.bind_to_backend(again, Backend::Block(0)).unwrap();
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::DOORBELL, again]) as u64, io + 1);
    drop(signal);
}

#[test]
fn net_ports_raise_their_backend_and_get_doorbells() {
    use crate::domain::Signal;
    use std::time::Duration;
    let t = domain(1);
    let alloc = || {
        t.rax(
            hc::EVTCHN_OP,
            &[ev::ALLOC_UNBOUND, hypercall_abi::DOMID_HV as u64],
        ) as u64
    };
    let (vif0, vif1) = (alloc(), alloc());
    t.dom.bind_to_backend(vif0, Backend::Net(0)).unwrap();
    t.dom.bind_to_backend(vif1, Backend::Net(1)).unwrap();
    let (s0, s1) = (Arc::new(Signal::default()), Arc::new(Signal::default()));
    t.dom.add_backend_signal(Backend::Net(0), Arc::clone(&s0));
    t.dom.add_backend_signal(Backend::Net(1), Arc::clone(&s1));
    assert_eq!(t.rax(hc::EVTCHN_OP, &[ev::SEND, vif1]), 0);
    assert!(s1.wait(Some(Duration::ZERO)), "send raises vif1's backend");
    assert!(!s0.wait(Some(Duration::ZERO)), "and only it");
    let io = t.rax(hc::EVTCHN_OP, &[ev::DOORBELL, vif0]) as u64;
    assert_eq!(io, ev::DOORBELL_PORT_BASE as u64);
}
