//! Network interfaces served by the hv, connected by in-hv learning switches or to host TAP
//! interfaces.
//!
//! For each `--net switch:NAME` or `--net tap:NAME` of a domain, a backend thread acts as the
//! toolstack (creates the `vif/<n>` device directories in the store and publishes the
//! backend's keys, see [`hypercall_abi::io::net`]), waits for the frontend to publish its two
//! rings and its event channel, then serves them with `pv_drivers`' [`NetBackend`] through
//! [`HvHost`]. Where its frames go is its [`Uplink`]:
//! - a switch: frames the frontend transmits go through the named [`Switch`] (one per name,
//!   kept in the [`Registry`]); frames the switch sends to this interface are queued on its
//!   [`VifQueue`];
//! - a TAP ([`crate::tap`]): frames the frontend transmits are written to the TAP; a reader
//!   thread reads the frames the host sends and queues them on the [`VifQueue`] (dropped, and
//!   counted, when it is full).
//!
//! Either way the queue's push wakes the vif's thread, which copies the frames into the
//! frontend's receive buffers. A vif is attached to its uplink (a port of its switch, or the
//! TAP's reader running) from the moment it is connected until it closes or its domain stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use hypercall_abi::io::net;
use hypercall_abi::store::{self as st, DeviceState, Value};
use hypercall_abi::{DomId, PAGE_SIZE};
use pv_drivers::backend::net::{NetBackend, NetError, NetRxRing, NetTxRing};
use pv_drivers::backend::switch::{Mac, PortId, Switch, Verdict};

use crate::backend_host::{
    read_state, read_u64, setup_device, store_write, DeviceSetup, Hold, HvHost,
};
use crate::domain::{Domain, Signal};
use crate::evtchn::Backend;
use crate::registry::Registry;
use crate::tap::{Tap, TapReader};

/// Frames a vif's queue holds at most; frames forwarded to a full queue are dropped.
pub const QUEUE_FRAMES: usize = 256;

/// What a network interface is connected to.
#[derive(Debug, Clone)]
pub enum Uplink {
    /// A port of the in-hv switch of this name.
    Switch(String),
    /// A host TAP interface (opened, and configured, before the domain starts).
    Tap(Arc<Tap>),
}

/// A network interface to serve.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// Interface number (`vif/<n>`).
    pub n: u32,
    /// What it is connected to.
    pub uplink: Uplink,
}

/// The MAC address the hv gives interface `n` of domain `domid`: locally administered and
/// unicast, `02:00:<domid high>:<n high>:<domid low>:<n low>`, so `02:00:00:00:<domid>:<n>`
/// for small numbers (unique for `n` below 65536).
pub fn mac_for(domid: DomId, n: u32) -> Mac {
    [
        0x02,
        0x00,
        (domid >> 8) as u8,
        (n >> 8) as u8,
        domid as u8,
        n as u8,
    ]
}

/// The frames waiting to be delivered to one vif, and the signal that wakes its thread.
pub struct VifQueue {
    frames: Mutex<VecDeque<Vec<u8>>>,
    signal: Arc<Signal>,
    dropped: AtomicU64,
}

impl VifQueue {
    /// An empty queue whose pushes raise `signal`.
    pub fn new(signal: Arc<Signal>) -> VifQueue {
        VifQueue {
            frames: Mutex::new(VecDeque::new()),
            signal,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a copy of `frame` and raises the signal; `false` (and the frame dropped) when
    /// [`QUEUE_FRAMES`] are already waiting.
    pub fn push(&self, frame: &[u8]) -> bool {
        {
            let mut q = self.lock();
            if q.len() >= QUEUE_FRAMES {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            q.push_back(frame.to_vec());
        }
        self.signal.raise();
        true
    }

    /// The oldest waiting frame.
    pub fn pop(&self) -> Option<Vec<u8>> {
        self.lock().pop_front()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One named switch and the queue behind each of its ports.
struct SwitchHub {
    switch: Switch,
    ports: BTreeMap<PortId, Arc<VifQueue>>,
    scratch: Vec<PortId>,
}

/// The named switches of one hv process. A switch exists while it has ports.
#[derive(Default)]
pub struct Switches {
    hubs: Mutex<BTreeMap<String, SwitchHub>>,
}

impl Switches {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, SwitchHub>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a port to switch `name` (creating the switch if needed) whose frames go to
    /// `queue`; with `mac`, the port owns that address and may send from no other (see
    /// [`Switch::add_pinned_port`]).
    pub fn attach(&self, name: &str, queue: Arc<VifQueue>, mac: Option<Mac>) -> PortId {
        let mut hubs = self.lock();
        let hub = hubs.entry(name.to_string()).or_insert_with(|| SwitchHub {
            switch: Switch::default(),
            ports: BTreeMap::new(),
            scratch: Vec::new(),
        });
        let port = match mac {
            Some(mac) => hub.switch.add_pinned_port(mac),
            None => hub.switch.add_port(),
        };
        hub.ports.insert(port, queue);
        port
    }

    /// Removes a port (and the switch with its last port); `false` if there was no such port.
    pub fn detach(&self, name: &str, port: PortId) -> bool {
        let mut hubs = self.lock();
        let Some(hub) = hubs.get_mut(name) else {
            return false;
        };
        let removed = hub.switch.remove_port(port);
        hub.ports.remove(&port);
        if hub.ports.is_empty() {
            hubs.remove(name);
        }
        removed
    }

    /// Ports of switch `name` (0 if it does not exist).
    pub fn port_count(&self, name: &str) -> usize {
        self.lock().get(name).map_or(0, |h| h.ports.len())
    }

    /// Sends `frame`, received on port `from` of switch `name`, where the switch decides:
    /// a copy is queued on each destination port (see [`VifQueue::push`]).
    pub fn forward(&self, name: &str, from: PortId, frame: &[u8]) -> Verdict {
        let mut hubs = self.lock();
        let Some(hub) = hubs.get_mut(name) else {
            return Verdict::Dropped(pv_drivers::backend::switch::DropReason::UnknownPort);
        };
        let SwitchHub {
            switch,
            ports,
            scratch,
        } = hub;
        let verdict = switch.forward(from, frame, scratch);
        for port in scratch.iter() {
            if let Some(q) = ports.get(port) {
                q.push(frame);
            }
        }
        verdict
    }
}

/// Starts the backend thread of one network interface of `dom`.
pub fn start(
    dom: Arc<Domain>,
    reg: Arc<Registry>,
    dev: NetDevice,
) -> std::io::Result<thread::JoinHandle<()>> {
    let DeviceSetup {
        signal,
        front,
        back,
    } = setup_device(&dom, &reg, Backend::Net(dev.n), "vif", dev.n, |_, back| {
        publish(&reg, dom.id, &dev, back)
    })?;
    thread::Builder::new()
        .name(format!("{}-vif{}", dom.name, dev.n))
        .spawn(move || serve(dom, reg, dev, signal, front, back))
}

/// Writes the backend's keys (MAC, MTU, features) and moves it to InitWait.
fn publish(reg: &Registry, front_id: DomId, dev: &NetDevice, back: &str) {
    let k = |dir: &str, key: &str| format!("{dir}/{key}");
    let mac = mac_for(front_id, dev.n);
    store_write(reg, &k(back, net::KEY_MAC), Value::Bytes(&mac));
    store_write(
        reg,
        &k(back, net::KEY_MTU),
        Value::U64(net::DEFAULT_MTU as u64),
    );
    store_write(reg, &k(back, net::KEY_FEATURE_SG), Value::Bool(true));
    store_write(
        reg,
        &k(back, st::key::STATE),
        Value::State(DeviceState::InitWait),
    );
}

/// A connected vif's attachment to its uplink.
enum Link {
    /// Its port on the switch.
    Switch { name: String, port: PortId },
    /// The TAP, and the thread reading it into the vif's queue.
    Tap { tap: Arc<Tap>, reader: TapReader },
}

impl Link {
    /// Attaches a vif whose frames are queued on `queue` to `uplink`; on a switch, its port
    /// owns `mac` (the address the hv gave the vif).
    fn attach(
        reg: &Registry,
        uplink: &Uplink,
        queue: &Arc<VifQueue>,
        mac: Mac,
        thread_name: String,
    ) -> Result<Link, String> {
        Ok(match uplink {
            Uplink::Switch(name) => Link::Switch {
                name: name.clone(),
                port: reg.switches().attach(name, Arc::clone(queue), Some(mac)),
            },
            Uplink::Tap(tap) => {
                let q = Arc::clone(queue);
                let reader = tap
                    .spawn_reader(thread_name, move |frame| {
                        q.push(frame);
                    })
                    .map_err(|e| format!("starting the reader of tap {}: {e}", tap.name()))?;
                Link::Tap {
                    tap: Arc::clone(tap),
                    reader,
                }
            }
        })
    }

    /// Detaches: no more frames are queued for the vif once this returns.
    fn detach(self, reg: &Registry) {
        match self {
            Link::Switch { name, port } => {
                reg.switches().detach(&name, port);
            }
            Link::Tap { reader, .. } => reader.stop(),
        }
    }
}

/// Adds vif `n`'s counters (and its TAP's) to the domain's `--stats` report.
fn report_counters(
    dom: &Domain,
    n: u32,
    backend: &NetBackend<HvHost>,
    link: &Link,
    queue: &Arc<VifQueue>,
) {
    let counters = backend.counters();
    let queue = Arc::clone(queue);
    let tap = match link {
        Link::Tap { tap, .. } => Some(Arc::clone(tap)),
        Link::Switch { .. } => None,
    };
    dom.stats.add_device(
        format!("vif/{n}"),
        Box::new(move || {
            let s = counters.snapshot();
            let mut line = format!(
                "tx {} frames {} bytes, {} refused; rx {} frames {} bytes, {} dropped \
                 (no buffer or too large), {} bad buffers, {} dropped before the ring",
                s.tx_packets,
                s.tx_bytes,
                s.tx_errors,
                s.rx_packets,
                s.rx_bytes,
                s.rx_dropped,
                s.rx_errors,
                queue.dropped()
            );
            if let Some(t) = &tap {
                line += &format!(
                    "; tap {}: {} frames out, {} failed, {} in",
                    t.name(),
                    t.tx_frames(),
                    t.tx_errors(),
                    t.rx_frames()
                );
            }
            line
        }),
    );
}

/// A connected vif: its backend, its attachment to its uplink, and the holds on its two ring
/// pages (dropped after the backend).
struct Connected {
    backend: NetBackend<HvHost>,
    link: Link,
    rings: [Hold; 2],
}

impl Connected {
    /// Serves the TX ring into the uplink, then delivers the frames queued for this vif
    /// (at most [`QUEUE_FRAMES`] per call; more wait for the next wake, which the queue
    /// raises). Errors only when the frontend broke a ring.
    fn pump(&mut self, reg: &Registry, queue: &VifQueue) -> Result<(), NetError> {
        match &self.link {
            Link::Switch { name, port } => {
                let switches = reg.switches();
                self.backend.process_tx(&mut |frame: &[u8]| {
                    switches.forward(name, *port, frame);
                })?;
            }
            Link::Tap { tap, .. } => {
                // A frame the host cannot take is dropped (and counted by the TAP).
                self.backend.process_tx(&mut |frame: &[u8]| {
                    tap.send(frame);
                })?;
            }
        }
        for _ in 0..QUEUE_FRAMES {
            let Some(frame) = queue.pop() else { break };
            // Other errors (no buffers posted, ...) drop the frame, as Ethernet would; the
            // backend counts them.
            if let Err(NetError::Disconnect) = self.backend.deliver(&frame) {
                return Err(NetError::Disconnect);
            }
        }
        Ok(())
    }
}

/// Holds a ring page named by the frontend's key `key` (in `front`).
fn hold_ring(
    dom: &Arc<Domain>,
    reg: &Arc<Registry>,
    front: &str,
    key: &str,
) -> Result<(Hold, u64), String> {
    let r = read_u64(reg, &format!("{front}/{key}")).ok_or(format!("no {key}"))?;
    let gref = u32::try_from(r).map_err(|_| format!("{key} {r}: out of range"))?;
    Hold::take(dom, reg, gref, true).map_err(|e| format!("{key} {r}: {e}"))
}

/// Maps the frontend's rings and connects its port, once it says `Initialised`.
fn connect(
    dom: &Arc<Domain>,
    reg: &Arc<Registry>,
    dev: &NetDevice,
    front: &str,
) -> Result<(NetBackend<HvHost>, [Hold; 2]), String> {
    let (tx_hold, tx_frame) = hold_ring(dom, reg, front, net::KEY_TX_RING_REF)?;
    let (rx_hold, rx_frame) = hold_ring(dom, reg, front, net::KEY_RX_RING_REF)?;
    if tx_frame == rx_frame {
        return Err("the TX and RX rings share a page".into());
    }
    let port =
        read_u64(reg, &format!("{front}/{}", net::KEY_EVENT_CHANNEL)).ok_or("no event-channel")?;
    let port = dom
        .bind_to_backend(port, Backend::Net(dev.n))
        .map_err(|e| format!("event-channel {port}: {e}"))?;
    // SAFETY: each ring page is a distinct page of the frontend's RAM (checked by hv_hold, and
    // above), alive as long as `dom`, which the serving thread holds, and held granted by its
    // hold; the guest writes it concurrently, which the ring is built for.
    let (tx, rx) = unsafe {
        (
            NetTxRing::new(
                dom.ram.host_base().add(tx_frame as usize),
                PAGE_SIZE as usize,
            ),
            NetRxRing::new(
                dom.ram.host_base().add(rx_frame as usize),
                PAGE_SIZE as usize,
            ),
        )
    };
    let tx = tx.map_err(|e| format!("tx ring: {e}"))?;
    let rx = rx.map_err(|e| format!("rx ring: {e}"))?;
    let host = HvHost::new(Arc::clone(dom), Arc::clone(reg), port);
    let backend = NetBackend::new(tx, rx, net::DEFAULT_MTU, host);
    Ok((backend, [tx_hold, rx_hold]))
}

fn serve(
    dom: Arc<Domain>,
    reg: Arc<Registry>,
    dev: NetDevice,
    signal: Arc<Signal>,
    front: String,
    back: String,
) {
    let back_state = format!("{back}/{}", st::key::STATE);
    let front_state = format!("{front}/{}", st::key::STATE);
    let queue = Arc::new(VifQueue::new(Arc::clone(&signal)));
    let n = dev.n;
    let mut conn: Option<Connected> = None;
    // Set when the device must end up Closed (the frontend closed it, broke a ring, or could
    // not be connected); the state is written after everything is released.
    let mut close = false;
    loop {
        signal.wait(None);
        if dom.is_stopping() {
            break;
        }
        let fstate = read_state(&reg, &front_state);
        if let Some(c) = conn.as_mut() {
            if matches!(fstate, Some(DeviceState::Closing | DeviceState::Closed)) {
                close = true;
                break;
            }
            if c.pump(&reg, &queue).is_err() {
                eprintln!(
                    "hv: vif{n} of domain {}: the frontend broke a ring; disconnected",
                    dom.name
                );
                close = true;
                break;
            }
            if !queue.is_empty() {
                signal.raise();
            }
            continue;
        }
        if !matches!(
            fstate,
            Some(DeviceState::Initialised | DeviceState::Connected)
        ) {
            continue;
        }
        match connect(&dom, &reg, &dev, &front) {
            Ok((backend, rings)) => {
                let thread_name = format!("{}-vif{n}-tap", dom.name);
                let link = match Link::attach(
                    &reg,
                    &dev.uplink,
                    &queue,
                    mac_for(dom.id, n),
                    thread_name,
                ) {
                    Ok(l) => l,
                    Err(why) => {
                        eprintln!("hv: vif{n} of domain {}: cannot connect: {why}", dom.name);
                        close = true;
                        break;
                    }
                };
                report_counters(&dom, n, &backend, &link, &queue);
                store_write(&reg, &back_state, Value::State(DeviceState::Connected));
                let c = conn.insert(Connected {
                    backend,
                    link,
                    rings,
                });
                if c.pump(&reg, &queue).is_err() {
                    close = true;
                    break;
                }
            }
            Err(why) => {
                eprintln!("hv: vif{n} of domain {}: cannot connect: {why}", dom.name);
                close = true;
                break;
            }
        }
    }
    // Leave the uplink first (no more frames queued), then release the backend's grants and
    // the ring pages: Closed means released.
    if let Some(Connected {
        backend,
        link,
        rings,
    }) = conn
    {
        link.detach(&reg);
        drop(backend);
        drop(rings);
    }
    if close {
        store_write(&reg, &back_state, Value::State(DeviceState::Closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::io::net::ETH_HLEN;

    const BCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, tag: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, tag]);
        f
    }

    struct FakeVif {
        signal: Arc<Signal>,
        queue: Arc<VifQueue>,
        port: PortId,
    }

    fn vif(sw: &Switches, name: &str) -> FakeVif {
        let signal = Arc::new(Signal::default());
        let queue = Arc::new(VifQueue::new(Arc::clone(&signal)));
        let port = sw.attach(name, Arc::clone(&queue), None);
        FakeVif {
            signal,
            queue,
            port,
        }
    }

    fn drain(v: &FakeVif) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| v.queue.pop()).collect()
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        assert_eq!(mac_for(1, 0), [0x02, 0, 0, 0, 1, 0]);
        assert_eq!(mac_for(3, 2), [0x02, 0, 0, 0, 3, 2]);
        assert_eq!(mac_for(0x1234, 0x56), [0x02, 0, 0x12, 0, 0x34, 0x56]);
        assert_ne!(mac_for(1, 256), mac_for(1, 0));
        for (d, n) in [(1, 0), (65535, 65535)] {
            let m = mac_for(d, n);
            assert_eq!(m[0] & 0b11, 0b10, "locally administered, unicast");
        }
    }

    #[test]
    fn a_frame_reaches_the_other_vif_and_answers_are_unicast() {
        let sw = Switches::default();
        let (a, b) = (vif(&sw, "lan"), vif(&sw, "lan"));
        let (ma, mb) = (mac_for(1, 0), mac_for(2, 0));
        // Unknown destination: flooded, i.e. to b only.
        let f = frame(mb, ma, 1);
        assert_eq!(sw.forward("lan", a.port, &f), Verdict::Flood);
        assert!(b.signal.wait(Some(std::time::Duration::ZERO)));
        assert_eq!(drain(&b), vec![f]);
        assert!(a.queue.is_empty());
        assert!(!a.signal.wait(Some(std::time::Duration::ZERO)));
        // b answers: a is learned, so unicast.
        let g = frame(ma, mb, 2);
        assert_eq!(sw.forward("lan", b.port, &g), Verdict::Unicast(a.port));
        assert_eq!(drain(&a), vec![g]);
        assert!(b.queue.is_empty());
    }

    #[test]
    fn broadcast_floods_but_never_to_the_source() {
        let sw = Switches::default();
        let vifs: Vec<FakeVif> = (0..3).map(|_| vif(&sw, "lan")).collect();
        let other = vif(&sw, "wan");
        let f = frame(BCAST, mac_for(1, 0), 7);
        assert_eq!(sw.forward("lan", vifs[0].port, &f), Verdict::Flood);
        assert!(vifs[0].queue.is_empty());
        assert_eq!(drain(&vifs[1]), vec![f.clone()]);
        assert_eq!(drain(&vifs[2]), vec![f]);
        // Another switch is another segment.
        assert!(other.queue.is_empty());
        // A runt goes nowhere.
        let runt = &frame(BCAST, mac_for(1, 0), 0)[..ETH_HLEN - 1];
        assert!(matches!(
            sw.forward("lan", vifs[1].port, runt),
            Verdict::Dropped(_)
        ));
        assert!(vifs.iter().all(|v| v.queue.is_empty()));
    }

    #[test]
    fn detached_ports_get_nothing_and_empty_switches_go() {
        let sw = Switches::default();
        let (a, b) = (vif(&sw, "lan"), vif(&sw, "lan"));
        assert_eq!(sw.port_count("lan"), 2);
        assert!(sw.detach("lan", b.port));
        assert!(!sw.detach("lan", b.port));
        sw.forward("lan", a.port, &frame(BCAST, mac_for(1, 0), 1));
        assert!(b.queue.is_empty());
        assert!(sw.detach("lan", a.port));
        assert_eq!(sw.port_count("lan"), 0);
        assert!(matches!(
            sw.forward("lan", a.port, &frame(BCAST, mac_for(1, 0), 1)),
            Verdict::Dropped(_)
        ));
    }

    #[test]
    fn a_full_queue_drops() {
        let sw = Switches::default();
        let (a, b) = (vif(&sw, "lan"), vif(&sw, "lan"));
        for i in 0..QUEUE_FRAMES + 5 {
            sw.forward("lan", a.port, &frame(BCAST, mac_for(1, 0), i as u8));
        }
        assert_eq!(b.queue.len(), QUEUE_FRAMES);
        assert_eq!(b.queue.dropped(), 5);
        assert_eq!(b.queue.pop().unwrap()[ETH_HLEN], 0, "oldest first");
    }
}
