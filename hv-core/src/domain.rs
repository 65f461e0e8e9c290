//! A domain: a guest's RAM, vCPU slots, event channels, timers, console and counters, shared by
//! its vCPU threads and its timer thread.
//!
//! Event delivery lives here because it touches several of these at once: it follows the 2-level
//! scheme documented in `hypercall_abi::shared_info` (pending bit, mask, selector, upcall
//! pending, then wake or kick the target vCPU).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use hypercall_abi::evtchn::{virq, Port, DOORBELL_PORT_BASE, MAX_DOORBELLS};
use hypercall_abi::shared_info::{SharedInfo, VcpuInfo};
use hypercall_abi::vcpu::VcpuContext;
use hypercall_abi::{DomId, Errno};

use crate::console::Console;
use crate::evtchn::{Backend, Binding, PortTable};
use crate::grant::Window;
use crate::layout::SHARED_INFO_GPA;
use crate::loader::SymbolTable;
use crate::memory::GuestRam;
use crate::registry::Registry;
use crate::stats::{ExitReason, Stats};
use crate::time::Clock;

/// Why a domain stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off with this code.
    Poweroff(u8),
    /// The guest crashed; the text says how.
    Crash(String),
    /// The hv failed while running the domain.
    HvError(String),
}

/// Writes the hv-owned tables of a domain that change while it runs: IDT gates and grant-window
/// page-table entries (implemented over the hv region; a recorder in tests).
pub trait Tables: Send {
    /// Routes `vector` to a guest handler at CPL 3, on IST `ist` (0 = current stack).
    fn set_gate(&mut self, vector: u8, handler: u64, ist: u8);
    /// Routes an exception vector back to the hv's crash stub (no guest handler).
    fn set_crash_gate(&mut self, vector: u8);
    /// Makes a non-exception vector not present.
    fn clear_gate(&mut self, vector: u8);
    /// Maps (`Some(writable)`) or unmaps (`None`) a grant-window slot in the page tables.
    fn set_window_pte(&mut self, slot: u32, writable: Option<bool>);
    /// Lets the guest use an I/O port (a doorbell).
    fn allow_io_port(&mut self, port: u16);
}

/// Makes a running vCPU leave the guest promptly (implemented over KVM in [`crate::vcpu`]).
pub trait Kick: Send + Sync {
    /// Kicks the vCPU out of the guest, or makes its next entry return at once.
    fn kick(&self);
}

#[derive(Debug, Default)]
struct SlotState {
    up: bool,
    waiting: bool,
    start: Option<VcpuContext>,
}

/// The shared part of one vCPU.
#[derive(Default)]
pub struct VcpuSlot {
    state: Mutex<SlotState>,
    cond: Condvar,
    kicker: OnceLock<Box<dyn Kick>>,
}

thread_local! {
    /// The (domain, vCPU) the current thread runs, so a vCPU raising an event for itself does
    /// not kick itself.
    static ON_VCPU: Cell<Option<(DomId, u32)>> = const { Cell::new(None) };
}

/// Locks a mutex, recovering the data if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A flag a backend thread sleeps on: raised by the guest's notifications, store watches and
/// domain shutdown.
#[derive(Default)]
pub struct Signal {
    raised: Mutex<bool>,
    cond: Condvar,
}

impl Signal {
    /// Raises the flag and wakes the waiter.
    pub fn raise(&self) {
        *lock(&self.raised) = true;
        self.cond.notify_all();
    }

    /// Waits until the flag is raised (or `timeout` passes), then lowers it. Returns whether it
    /// was raised.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut r = lock(&self.raised);
        while !*r {
            r = match timeout {
                None => self.cond.wait(r).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let (g, res) = self
                        .cond
                        .wait_timeout(r, t)
                        .unwrap_or_else(|e| e.into_inner());
                    if res.timed_out() && !*g {
                        return false;
                    }
                    g
                }
            };
        }
        *r = false;
        true
    }
}

/// Locks two different domains' port tables in domain-id order (no deadlock); returns
/// (`a`'s, `b`'s).
fn lock_two<'a>(
    a: &'a Domain,
    b: &'a Domain,
) -> (MutexGuard<'a, PortTable>, MutexGuard<'a, PortTable>) {
    if a.id < b.id {
        let ga = lock(&a.ports);
        let gb = lock(&b.ports);
        (ga, gb)
    } else {
        let gb = lock(&b.ports);
        let ga = lock(&a.ports);
        (ga, gb)
    }
}

/// Returns `peer_port` to unbound-for-`us` if it is still connected to our `our_port`.
fn unbind_peer(t: &mut PortTable, peer_port: Port, us: DomId, our_port: Port) {
    if t.get(peer_port as u64)
        == Ok(Binding::Interdomain {
            remote: us,
            remote_port: our_port,
        })
    {
        t.rebind(peer_port, Binding::Unbound { remote: us });
    }
}

/// What a new domain is made of.
pub struct DomainParts {
    /// Domain id.
    pub id: DomId,
    /// Name for reports.
    pub name: String,
    /// Its RAM.
    pub ram: GuestRam,
    /// vCPU count.
    pub nr_vcpus: u32,
    /// Symbols of its image.
    pub symbols: SymbolTable,
    /// The hv clock.
    pub clock: Arc<Clock>,
    /// Its port table (with the console port already bound).
    pub ports: PortTable,
    /// The console port.
    pub console_port: Port,
    /// The console backend.
    pub console: Console,
    /// The writer of the hv-owned tables.
    pub tables: Box<dyn Tables>,
    /// The host side of the grant window.
    pub window: Window,
    /// The registry the domain is part of.
    pub registry: Weak<Registry>,
    /// Makes a doorbell on an I/O port (KVM's ioeventfd; an eventfd in tests).
    pub make_doorbell: DoorbellMaker,
}

/// Makes an eventfd that is signalled whenever the guest writes to an I/O port.
pub type DoorbellMaker = Box<dyn Fn(u16) -> std::io::Result<EventFd> + Send + Sync>;

/// A doorbell: the port it rings, its I/O port, and how to stop its thread (set `stop`, then
/// write `wake`).
struct Doorbell {
    port: Port,
    io_port: u16,
    wake: EventFd,
    stop: Arc<AtomicBool>,
}

impl Doorbell {
    fn stop(&self) {
        self.stop.store(true, SeqCst);
        let _ = self.wake.write(1);
    }
}

/// A running domain.
pub struct Domain {
    /// Domain id.
    pub id: DomId,
    /// Name for reports.
    pub name: String,
    /// Its RAM.
    pub ram: GuestRam,
    /// vCPU count.
    pub nr_vcpus: u32,
    /// Symbols of its image, for crash reports.
    pub symbols: SymbolTable,
    /// The hv clock.
    pub clock: Arc<Clock>,
    /// Counters.
    pub stats: Stats,
    /// The console port.
    pub console_port: Port,
    ports: Mutex<PortTable>,
    console: Mutex<Console>,
    tables: Mutex<Box<dyn Tables>>,
    window: Window,
    registry: Weak<Registry>,
    callback: AtomicU64,
    vcpus: Vec<VcpuSlot>,
    timers: Mutex<Vec<Option<u64>>>,
    timer_cond: Condvar,
    stop: Mutex<Option<StopReason>>,
    stopping: AtomicBool,
    polling: AtomicU32,
    backend_signals: Mutex<Vec<(Backend, Arc<Signal>)>>,
    make_doorbell: DoorbellMaker,
    /// Live doorbells, and how many were ever made (their I/O ports are never reused).
    doorbells: Mutex<(Vec<Doorbell>, u16)>,
}

impl Domain {
    /// Assembles a domain; vCPU 0 is up, the others down.
    pub fn new(p: DomainParts) -> Domain {
        let vcpus: Vec<VcpuSlot> = (0..p.nr_vcpus).map(|_| VcpuSlot::default()).collect();
        lock(&vcpus[0].state).up = true;
        Domain {
            id: p.id,
            name: p.name,
            ram: p.ram,
            nr_vcpus: p.nr_vcpus,
            symbols: p.symbols,
            clock: p.clock,
            stats: Stats::default(),
            console_port: p.console_port,
            ports: Mutex::new(p.ports),
            console: Mutex::new(p.console),
            tables: Mutex::new(p.tables),
            window: p.window,
            registry: p.registry,
            callback: AtomicU64::new(0),
            vcpus,
            timers: Mutex::new(vec![None; p.nr_vcpus as usize]),
            timer_cond: Condvar::new(),
            stop: Mutex::new(None),
            stopping: AtomicBool::new(false),
            polling: AtomicU32::new(0),
            backend_signals: Mutex::new(Vec::new()),
            make_doorbell: p.make_doorbell,
            doorbells: Mutex::new((Vec::new(), 0)),
        }
    }

    /// The port table.
    pub fn ports(&self) -> MutexGuard<'_, PortTable> {
        lock(&self.ports)
    }

    /// The console backend.
    pub fn console(&self) -> MutexGuard<'_, Console> {
        lock(&self.console)
    }

    /// The writer of the hv-owned tables.
    pub fn tables(&self) -> MutexGuard<'_, Box<dyn Tables>> {
        lock(&self.tables)
    }

    /// The host side of the grant window.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// The registry, or `ESRCH` if the hv is shutting down.
    pub fn registry(&self) -> Result<Arc<Registry>, Errno> {
        self.registry.upgrade().ok_or(Errno::ESRCH)
    }

    /// Another live domain (or this one), or `ESRCH`.
    pub fn peer(&self, id: DomId) -> Result<Arc<Domain>, Errno> {
        self.registry()?.get(id)
    }

    // ---- event channel operations that involve a peer ----

    /// `alloc_unbound(remote)`; `remote` may be the hv ([`hypercall_abi::DOMID_HV`]), for its
    /// backends.
    pub fn alloc_unbound(&self, remote: DomId) -> Result<Port, Errno> {
        if remote != hypercall_abi::DOMID_HV {
            self.peer(remote)?;
        }
        let port = self.ports().alloc_unbound(remote)?;
        self.reset_port_bits(port);
        Ok(port)
    }

    /// `bind_interdomain(remote, remote_port)`.
    pub fn bind_interdomain(&self, remote: DomId, remote_port: u64) -> Result<Port, Errno> {
        let peer = self.peer(remote)?;
        let check = |t: &PortTable| match t.get(remote_port)? {
            Binding::Unbound { remote: r } if r == self.id => Ok(remote_port as Port),
            Binding::Unbound { .. } => Err(Errno::EACCES),
            _ => Err(Errno::EINVAL),
        };
        let local = if peer.id == self.id {
            let mut t = self.ports();
            let rp = check(&t)?;
            let lp = t.bind_interdomain(self.id, rp)?;
            t.rebind(
                rp,
                Binding::Interdomain {
                    remote: self.id,
                    remote_port: lp,
                },
            );
            lp
        } else {
            let (mut mine, mut theirs) = lock_two(self, &peer);
            let rp = check(&theirs)?;
            let lp = mine.bind_interdomain(remote, rp)?;
            theirs.rebind(
                rp,
                Binding::Interdomain {
                    remote: self.id,
                    remote_port: lp,
                },
            );
            lp
        };
        self.reset_port_bits(local);
        Ok(local)
    }

    /// `send(port)`: delivers to the peer, or returns the hv backend that must serve the port.
    pub fn send(&self, port: u64) -> Result<Option<Backend>, Errno> {
        // Take the binding and drop our table's lock before touching the peer's: two domains
        // sending to each other at once would otherwise deadlock.
        let binding = self.ports().get(port)?;
        match binding {
            Binding::Virq { .. } => Err(Errno::EINVAL),
            Binding::Ipi { vcpu } => {
                self.deliver(port as Port, vcpu);
                Ok(None)
            }
            Binding::HvBackend(b) => Ok(Some(b)),
            Binding::Unbound { .. } => Ok(None),
            Binding::Interdomain {
                remote,
                remote_port,
            } => {
                if let Ok(peer) = self.peer(remote) {
                    let vcpu = peer.ports().get(remote_port as u64).map(|b| b.vcpu());
                    if let Ok(vcpu) = vcpu {
                        peer.deliver(remote_port, vcpu);
                    }
                }
                Ok(None)
            }
        }
    }

    /// `close(port)`: an interdomain peer returns to unbound (for this domain).
    pub fn close_port(&self, port: u64) -> Result<(), Errno> {
        let b = self.ports().get(port)?;
        match b {
            Binding::Interdomain {
                remote,
                remote_port,
            } if remote != self.id => match self.peer(remote) {
                Ok(peer) => {
                    let (mut mine, mut theirs) = lock_two(self, &peer);
                    mine.close(port)?;
                    unbind_peer(&mut theirs, remote_port, self.id, port as Port);
                }
                Err(_) => {
                    self.ports().close(port)?;
                }
            },
            Binding::Interdomain { remote_port, .. } => {
                let mut t = self.ports();
                t.close(port)?;
                unbind_peer(&mut t, remote_port, self.id, port as Port);
            }
            _ => {
                self.ports().close(port)?;
            }
        }
        // A doorbell of the closed port stops ringing; its I/O port is not reused.
        lock(&self.doorbells).0.retain(|b| {
            let keep = b.port as u64 != port;
            if !keep {
                b.stop();
            }
            keep
        });
        self.reset_port_bits(port as Port);
        Ok(())
    }

    /// Connects the guest's port `port`, allocated unbound for the hv ([`hypercall_abi::DOMID_HV`]),
    /// to one of the hv's backends. `EINVAL` unless it is such a port.
    pub fn bind_to_backend(&self, port: u64, backend: Backend) -> Result<Port, Errno> {
        let mut t = self.ports();
        match t.get(port)? {
            Binding::Unbound { remote } if remote == hypercall_abi::DOMID_HV => {
                t.rebind(port as Port, Binding::HvBackend(backend));
                Ok(port as Port)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// Registers the signal of a backend thread serving this domain.
    pub fn add_backend_signal(&self, backend: Backend, signal: Arc<Signal>) {
        lock(&self.backend_signals).push((backend, signal));
    }

    /// Wakes the backend thread serving `backend`, if there is one.
    pub fn raise_backend(&self, backend: Backend) {
        for (b, s) in lock(&self.backend_signals).iter() {
            if *b == backend {
                s.raise();
            }
        }
    }

    /// `doorbell(port)`: an I/O port whose writes notify the device backend `port` is connected
    /// to, without a hypercall (KVM signals an eventfd in the kernel; a thread raises the
    /// backend).
    pub fn doorbell(self: &Arc<Self>, port: u64) -> Result<u16, Errno> {
        let backend = match self.ports().get(port)? {
            Binding::HvBackend(b @ (Backend::Block(_) | Backend::Net(_))) => b,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let mut guard = lock(&self.doorbells);
        let (bells, made) = &mut *guard;
        if let Some(b) = bells.iter().find(|b| b.port as u64 == port) {
            return Ok(b.io_port);
        }
        if *made >= MAX_DOORBELLS {
            return Err(Errno::ENOSPC);
        }
        let io_port = DOORBELL_PORT_BASE + *made;
        *made += 1;
        let fd = (self.make_doorbell)(io_port).map_err(|_| Errno::ENOMEM)?;
        let wake = fd.try_clone().map_err(|_| Errno::ENOMEM)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let dom = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(format!("{}-bell{io_port:#x}", self.name))
            .spawn(move || loop {
                let Ok(rings) = fd.read() else { return };
                let Some(dom) = dom.upgrade() else { return };
                if dom.is_stopping() || stopped.load(SeqCst) {
                    return;
                }
                dom.stats.exits_n(ExitReason::Ioeventfd, rings);
                dom.raise_backend(backend);
            })
            .map_err(|_| Errno::ENOMEM)?;
        self.tables().allow_io_port(io_port);
        bells.push(Doorbell {
            port: port as Port,
            io_port,
            wake,
            stop,
        });
        Ok(io_port)
    }

    /// At teardown: every interdomain peer of this domain returns to unbound.
    pub fn disconnect_peers(&self) {
        let ports = self.ports().open_ports();
        for (port, b) in ports {
            if let Binding::Interdomain {
                remote,
                remote_port,
            } = b
            {
                if remote == self.id {
                    continue;
                }
                if let Ok(peer) = self.peer(remote) {
                    unbind_peer(&mut peer.ports(), remote_port, self.id, port);
                }
            }
        }
    }

    // ---- shared info ----

    fn si_u8(&self, off: usize) -> &AtomicU8 {
        self.ram
            .atomic_u8(SHARED_INFO_GPA + off as u64)
            .expect("the shared-info page is inside RAM (RAM is at least MIN_MEM)")
    }

    fn si_u64(&self, off: usize) -> &AtomicU64 {
        self.ram
            .atomic_u64(SHARED_INFO_GPA + off as u64)
            .expect("the shared-info page is inside RAM (RAM is at least MIN_MEM)")
    }

    /// `vcpu_info[v].upcall_pending`.
    pub fn upcall_pending(&self, v: u32) -> &AtomicU8 {
        self.si_u8(SharedInfo::vcpu_info_offset(v))
    }

    /// `vcpu_info[v].upcall_mask`.
    pub fn upcall_mask(&self, v: u32) -> &AtomicU8 {
        self.si_u8(SharedInfo::vcpu_info_offset(v) + std::mem::offset_of!(VcpuInfo, upcall_mask))
    }

    fn pending_sel(&self, v: u32) -> &AtomicU64 {
        self.si_u64(SharedInfo::vcpu_info_offset(v) + std::mem::offset_of!(VcpuInfo, pending_sel))
    }

    fn pending_word(&self, port: Port) -> &AtomicU64 {
        self.si_u64(SharedInfo::pending_word_offset(port))
    }

    fn mask_word(&self, port: Port) -> &AtomicU64 {
        self.si_u64(SharedInfo::mask_word_offset(port))
    }

    /// Is the port's pending bit set?
    pub fn is_pending(&self, port: Port) -> bool {
        self.pending_word(port).load(SeqCst) & (1 << (port % 64)) != 0
    }

    /// Is the port's mask bit set?
    pub fn is_masked(&self, port: Port) -> bool {
        self.mask_word(port).load(SeqCst) & (1 << (port % 64)) != 0
    }

    /// Clears the port's pending and mask bits (a port being opened or closed).
    pub fn reset_port_bits(&self, port: Port) {
        let bit = 1u64 << (port % 64);
        self.pending_word(port).fetch_and(!bit, SeqCst);
        self.mask_word(port).fetch_and(!bit, SeqCst);
    }

    /// Sets the port's mask bit.
    pub fn mask(&self, port: Port) {
        self.mask_word(port).fetch_or(1 << (port % 64), SeqCst);
    }

    /// Clears the port's mask bit and raises the upcall if it is pending.
    pub fn unmask(&self, port: Port, vcpu: u32) {
        let bit = 1u64 << (port % 64);
        self.mask_word(port).fetch_and(!bit, SeqCst);
        if self.pending_word(port).load(SeqCst) & bit != 0 {
            self.raise_upcall(vcpu, port / 64);
        }
    }

    /// Delivers an event on `port` to `vcpu` (the 2-level scheme).
    pub fn deliver(&self, port: Port, vcpu: u32) {
        let bit = 1u64 << (port % 64);
        if self.pending_word(port).fetch_or(bit, SeqCst) & bit != 0 {
            return; // already pending: events coalesce
        }
        if self.polling.load(SeqCst) > 0 {
            self.wake_pollers();
        }
        if self.mask_word(port).load(SeqCst) & bit != 0 {
            return;
        }
        self.raise_upcall(vcpu, port / 64);
    }

    fn raise_upcall(&self, vcpu: u32, word: u32) {
        self.pending_sel(vcpu).fetch_or(1 << word, SeqCst);
        self.upcall_pending(vcpu).store(1, SeqCst);
        self.wake(vcpu);
    }

    /// Wakes `vcpu` if it waits, or kicks it if it runs and can take an upcall now.
    fn wake(&self, vcpu: u32) {
        let Some(slot) = self.vcpus.get(vcpu as usize) else {
            return;
        };
        let st = lock(&slot.state);
        if st.waiting {
            slot.cond.notify_all();
        } else if st.up
            && self.callback() != 0
            && self.upcall_mask(vcpu).load(SeqCst) == 0
            && ON_VCPU.get() != Some((self.id, vcpu))
        {
            if let Some(k) = slot.kicker.get() {
                k.kick();
            }
        }
    }

    fn wake_pollers(&self) {
        for slot in &self.vcpus {
            let st = lock(&slot.state);
            if st.waiting {
                slot.cond.notify_all();
            }
        }
    }

    // ---- upcall callback ----

    /// The registered upcall entry point (0: none).
    pub fn callback(&self) -> u64 {
        self.callback.load(SeqCst)
    }

    /// Registers the upcall entry point.
    pub fn set_callback(&self, handler: u64) {
        self.callback.store(handler, SeqCst);
    }

    // ---- vCPU slots ----

    /// Marks the calling thread as running `vcpu` of this domain and installs its kicker.
    pub fn attach_vcpu_thread(&self, vcpu: u32, kicker: Box<dyn Kick>) {
        ON_VCPU.set(Some((self.id, vcpu)));
        let _ = self.vcpus[vcpu as usize].kicker.set(kicker);
    }

    /// Is the vCPU up?
    pub fn vcpu_is_up(&self, vcpu: u32) -> bool {
        self.vcpus
            .get(vcpu as usize)
            .is_some_and(|s| lock(&s.state).up)
    }

    /// Starts a down vCPU with `ctx`: `EBUSY` if it is up.
    pub fn start_vcpu(&self, vcpu: u32, ctx: VcpuContext) -> Result<(), Errno> {
        let slot = self.vcpus.get(vcpu as usize).ok_or(Errno::ESRCH)?;
        let mut st = lock(&slot.state);
        if st.up {
            return Err(Errno::EBUSY);
        }
        st.up = true;
        st.start = Some(ctx);
        slot.cond.notify_all();
        Ok(())
    }

    /// Blocks a secondary vCPU's thread until `vcpu_op(up)` starts it (`None`: the domain stopped).
    pub fn wait_for_start(&self, vcpu: u32) -> Option<VcpuContext> {
        let slot = &self.vcpus[vcpu as usize];
        let mut st = lock(&slot.state);
        loop {
            if self.is_stopping() {
                return None;
            }
            if let Some(ctx) = st.start.take() {
                return Some(ctx);
            }
            st = slot.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sleeps the calling vCPU until `ready()` holds, the domain stops, or `deadline` (system ns)
    /// passes. Returns whether `ready()` held.
    pub fn wait(
        &self,
        vcpu: u32,
        deadline: Option<u64>,
        poll: bool,
        ready: impl Fn() -> bool,
    ) -> bool {
        let slot = &self.vcpus[vcpu as usize];
        let mut st = lock(&slot.state);
        st.waiting = true;
        if poll {
            self.polling.fetch_add(1, SeqCst);
        }
        let ok = loop {
            if ready() {
                break true;
            }
            if self.is_stopping() {
                break false;
            }
            let now = self.clock.now_ns();
            st = match deadline {
                Some(d) if d <= now => break false,
                Some(d) => {
                    slot.cond
                        .wait_timeout(st, Duration::from_nanos(d - now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => slot.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        };
        st.waiting = false;
        if poll {
            self.polling.fetch_sub(1, SeqCst);
        }
        ok
    }

    // ---- timers ----

    /// Arms (`Some`) or cancels (`None`) a vCPU's one-shot timer.
    pub fn set_timer(&self, vcpu: u32, deadline: Option<u64>) {
        lock(&self.timers)[vcpu as usize] = deadline;
        self.timer_cond.notify_all();
    }

    /// The timer thread's body: fires VIRQ_TIMER on each vCPU whose deadline passed, until the
    /// domain stops.
    pub fn run_timers(&self) {
        let mut t = lock(&self.timers);
        loop {
            if self.is_stopping() {
                return;
            }
            let now = self.clock.now_ns();
            let fired: Vec<u32> = t
                .iter_mut()
                .enumerate()
                .filter_map(|(v, d)| match *d {
                    Some(dl) if dl <= now => {
                        *d = None;
                        Some(v as u32)
                    }
                    _ => None,
                })
                .collect();
            if !fired.is_empty() {
                drop(t);
                for v in fired {
                    self.fire_timer(v);
                }
                t = lock(&self.timers);
                continue;
            }
            t = match t.iter().flatten().min() {
                None => self.timer_cond.wait(t).unwrap_or_else(|e| e.into_inner()),
                Some(&d) => {
                    self.timer_cond
                        .wait_timeout(t, Duration::from_nanos(d - now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Delivers VIRQ_TIMER to `vcpu` if it is bound there.
    pub fn fire_timer(&self, vcpu: u32) {
        self.fire_virq(virq::TIMER, vcpu);
    }

    /// Delivers a VIRQ to `vcpu` if it is bound there.
    pub fn fire_virq(&self, v: u32, vcpu: u32) {
        let port = self.ports().virq_port(v, vcpu);
        if let Some(port) = port {
            self.deliver(port, vcpu);
        }
    }

    // ---- stopping ----

    /// Has the domain been told to stop?
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    /// Why the domain stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        lock(&self.stop).clone()
    }

    /// Stops the domain (the first reason wins) and wakes every thread of it.
    pub fn stop(&self, reason: StopReason) {
        {
            let mut s = lock(&self.stop);
            if s.is_none() {
                *s = Some(reason);
            }
        }
        self.stopping.store(true, SeqCst);
        {
            let _t = lock(&self.timers);
            self.timer_cond.notify_all();
        }
        for slot in &self.vcpus {
            let _st = lock(&slot.state);
            slot.cond.notify_all();
            if let Some(k) = slot.kicker.get() {
                k.kick();
            }
        }
        for (_, s) in lock(&self.backend_signals).iter() {
            s.raise();
        }
        for b in lock(&self.doorbells).0.iter() {
            b.stop();
        }
    }
}
