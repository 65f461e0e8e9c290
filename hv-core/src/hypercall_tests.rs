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
use crate::grant::Window;
use crate::registry::Registry;
use crate::evtchn::{PortTable, DEFAULT_MAX_PORTS};
use crate::layout::CONSOLE_RING_GPA;
use crate::loader::SymbolTable;
use crate::memory::GuestRam;
use crate::time::Clock;

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
        self.0.lock().unwrap().push((255, slot as u64, writable.map_or(0, |w| 1 + w as u8)));
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
    ports.bind_backend(Backend::Store).unwrap();
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
    }));
    registry.insert(Arc::clone(&dom));
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
