//! The network frontend: a guest's side of [`hypercall_abi::io::net`] (`vif`), plus a
//! [`smoltcp`] [`phy::Device`](smoltcp::phy::Device) over it.
//!
//! [`NetDevice::open`] connects to interface `vif/<n>` through the store's device states: it
//! waits for the backend's `InitWait`, reads its `mac` and `mtu`, grants one page per ring and
//! a pool of buffer pages to the backend's domain (`backend-id`), allocates an unbound event
//! channel port for it (one port serves both rings), publishes `tx-ring-ref`, `rx-ring-ref` and
//! `event-channel`, moves to `Initialised`, waits for the backend's `Connected`, posts every RX
//! buffer and moves to `Connected`.
//!
//! ```no_run
//! use pv_drivers::frontend::net::NetDevice;
//!
//! let mut nic = NetDevice::open(0).unwrap();
//! let mut frame = [0u8; 1514];
//! frame[..6].copy_from_slice(&[0xff; 6]); // broadcast
//! frame[6..12].copy_from_slice(&nic.mac());
//! nic.send(&frame[..60]).unwrap();
//! let deadline = guest_sdk::time::monotonic_ns() + guest_sdk::time::NS_PER_SEC;
//! while nic.wait(deadline).unwrap() {
//!     if let Some(n) = nic.recv(&mut frame).unwrap() {
//!         guest_sdk::println!("got {n} bytes");
//!     }
//! }
//! ```
//!
//! # Design
//!
//! - **Persistent grants.** TX pages (granted read-only) and RX pages (granted read-write)
//!   are granted once, when the device opens. A frame to send is copied into free TX pages,
//!   one slot per page ([`TXF_MORE_DATA`] chains a frame over several); a received frame is
//!   copied out of its RX pages, which are posted again at once.
//! - **Notification suppression.** The rings' event indices decide whether the backend must
//!   be notified (an `out` to the port's doorbell when the backend offers one, else an event
//!   channel `send`). TX completions are not asked for: they are reaped lazily when sending,
//!   and a notification is requested only when TX pages run out. [`NetDevice::wait`] asks for
//!   RX notifications just before it blocks in `sched_op(poll)` on the masked port.
//! - **A hostile backend** can only make frames fail: responses are copied out of the ring
//!   once and checked (ids, sizes, offsets), and a broken ring makes the device unusable
//!   ([`NetError::Protocol`]).
//!
//! # smoltcp
//!
//! [`NetDevice`] implements [`smoltcp::phy::Device`] (Ethernet medium); [`NetDevice::interface`]
//! builds an [`Interface`](smoltcp::iface::Interface) with the backend's MAC and [`now`] gives
//! smoltcp's clock from [`time::monotonic_ns`].

use alloc::vec::Vec;
use core::fmt;

use guest_sdk::abi::evtchn::Port;
use guest_sdk::abi::io::net::{
    NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse, ETH_HLEN, KEY_EVENT_CHANNEL, KEY_MAC,
    KEY_MTU, KEY_RX_RING_REF, KEY_TX_RING_REF, MAC_LEN, MAX_MTU, MAX_PACKET_SIZE, MAX_TX_SLOTS,
    RXF_MORE_DATA, RX_BUFFER_SIZE, TXF_MORE_DATA,
};
use guest_sdk::abi::ring::{FrontRing, RingError};
use guest_sdk::abi::store::DeviceState;
use guest_sdk::abi::{DomId, Errno, PAGE_SIZE};
use guest_sdk::grant::GrantRef;
use guest_sdk::store::{OwnedValue, Value};
use guest_sdk::{events, sched, time};

use super::device::{DeviceError, FrontendDir};
use super::granted::Granted;

/// The smoltcp crate this frontend implements `phy::Device` for (so guests use the same
/// version without depending on it themselves).
pub use smoltcp;

/// The device class in the store.
pub const CLASS: &str = "vif";

const PAGE: usize = PAGE_SIZE as usize;

/// Why a network operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// Connecting through the store failed (no such device, a missing key, the backend never
    /// answered, ...).
    Device(DeviceError),
    /// A grant, event channel or heap call of the SDK failed.
    Sdk(guest_sdk::Error),
    /// The backend's `mac` is missing or not [`MAC_LEN`] bytes, or its `mtu` is out of range.
    BadConfig,
    /// A frame shorter than an Ethernet header or longer than `mtu + ETH_HLEN`.
    BadFrame(usize),
    /// No free TX pages or ring slots now: reap completions ([`NetDevice::wait`]) first.
    Busy,
    /// The backend broke the protocol; the device is unusable.
    Protocol(ProtocolError),
    /// The backend closed the device.
    Disconnected,
}

/// How the backend broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The ring's indices are impossible.
    Ring(RingError),
    /// A TX response carried an id no slot in flight has.
    UnknownTxId(u16),
    /// An RX response carried an id no posted buffer has.
    UnknownRxId(u16),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Device(e) => write!(f, "vif: {e}"),
            NetError::Sdk(e) => write!(f, "vif: {e}"),
            NetError::BadConfig => f.write_str("vif: the backend's mac or mtu is invalid"),
            NetError::BadFrame(n) => write!(f, "vif: a {n}-byte frame cannot be sent"),
            NetError::Busy => f.write_str("vif: no free TX slot or page"),
            NetError::Protocol(ProtocolError::Ring(e)) => write!(f, "vif: broken ring: {e}"),
            NetError::Protocol(ProtocolError::UnknownTxId(id)) => {
                write!(f, "vif: TX response for unknown slot {id}")
            }
            NetError::Protocol(ProtocolError::UnknownRxId(id)) => {
                write!(f, "vif: RX response for unknown buffer {id}")
            }
            NetError::Disconnected => f.write_str("vif: the backend closed the device"),
        }
    }
}

impl core::error::Error for NetError {}

impl From<DeviceError> for NetError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::BackendClosed => NetError::Disconnected,
            e => NetError::Device(e),
        }
    }
}

impl From<guest_sdk::Error> for NetError {
    fn from(e: guest_sdk::Error) -> Self {
        NetError::Sdk(e)
    }
}

/// Tunables of [`NetDevice::open_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// TX pages granted once and reused (at most the TX ring's slots, at least
    /// [`MAX_TX_SLOTS`]).
    pub tx_pages: u32,
    /// RX buffers posted (at most the RX ring's slots, at least 17: a maximal frame).
    pub rx_buffers: u32,
    /// How long opening and closing wait for the backend (ns).
    pub connect_timeout_ns: u64,
}

impl Default for Config {
    /// Every slot of both rings (128 TX pages, 256 RX buffers), 10 s to connect.
    fn default() -> Self {
        Config {
            tx_pages: 128,
            rx_buffers: 256,
            connect_timeout_ns: 10 * time::NS_PER_SEC,
        }
    }
}

/// Counters of a [`NetDevice`] since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent (handed to the backend).
    pub tx_frames: u64,
    /// Frames the backend refused (a non-zero status).
    pub tx_errors: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// RX buffers or frames dropped (error statuses, malformed or oversized frames).
    pub rx_errors: u64,
    /// Notifications sent to the backend.
    pub notifications: u64,
    /// Times [`NetDevice::wait`] blocked in `sched_op(poll)`.
    pub blocks: u64,
}

/// Builds the TX slots of a `len`-byte packet in `pages` (one `(id, gref)` per slot, at least
/// `len.div_ceil(4096)` of them): fragment `k` is bytes `k * 4096..` of the packet, at offset
/// 0 of page `k`; every slot but the last has [`TXF_MORE_DATA`]; the first slot's `size` is
/// the whole packet's. `len` must be in `1..=MAX_PACKET_SIZE`.
fn tx_chain(len: usize, pages: &[(u16, GrantRef)], out: &mut Vec<NetTxRequest>) {
    let nslots = len.div_ceil(PAGE);
    for (k, &(id, gref)) in pages.iter().take(nslots).enumerate() {
        let frag = (len - k * PAGE).min(PAGE);
        let last = k + 1 == nslots;
        out.push(NetTxRequest {
            id,
            flags: if last { 0 } else { TXF_MORE_DATA },
            gref,
            offset: 0,
            size: if k == 0 { len as u16 } else { frag as u16 },
            pad: 0,
        });
    }
}

/// Reassembles frames from RX responses (chains of [`RXF_MORE_DATA`]).
#[derive(Debug)]
struct RxAssembler {
    frame: Vec<u8>,
    max: usize,
    /// `frame` holds a complete frame (handed out; reset on the next response).
    complete: bool,
    /// Skipping the rest of a broken or oversized frame.
    dropping: bool,
}

/// What one RX response did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fed {
    /// The frame goes on in the next response.
    More,
    /// A frame of this many bytes is complete (in `RxAssembler::frame`).
    Frame(usize),
    /// The buffer (and the frame it belonged to) was dropped.
    Dropped,
}

impl RxAssembler {
    fn new(max: usize) -> RxAssembler {
        RxAssembler {
            frame: Vec::with_capacity(max),
            max,
            complete: false,
            dropping: false,
        }
    }

    /// Takes one response; `copy(offset, dst)` copies `dst.len()` bytes at `offset` of the
    /// response's page into `dst` (only called with a range inside the page).
    fn feed(&mut self, rsp: &NetRxResponse, copy: impl FnOnce(usize, &mut [u8])) -> Fed {
        if self.complete {
            self.frame.clear();
            self.complete = false;
        }
        let more = rsp.flags & RXF_MORE_DATA != 0;
        if rsp.status <= 0 {
            // No data (flags are 0): whatever frame was in progress is lost.
            self.frame.clear();
            self.dropping = false;
            return Fed::Dropped;
        }
        let off = usize::from(rsp.offset);
        let n = rsp.status as usize;
        let bad = off + n > RX_BUFFER_SIZE || self.frame.len() + n > self.max;
        if self.dropping || bad {
            let was = self.dropping;
            self.frame.clear();
            self.dropping = more;
            // A frame being skipped counts once, when it starts going wrong.
            return if was && !bad { Fed::More } else { Fed::Dropped };
        }
        let at = self.frame.len();
        self.frame.resize(at + n, 0);
        copy(off, &mut self.frame[at..]);
        if more {
            Fed::More
        } else {
            self.complete = true;
            Fed::Frame(at + n)
        }
    }
}

/// Where notifications to the backend go.
#[derive(Clone, Copy, Debug)]
struct Notifier {
    port: Port,
    doorbell: Option<u16>,
}

impl Notifier {
    fn notify(&self, stats: &mut NetStats) -> Result<(), NetError> {
        stats.notifications += 1;
        match self.doorbell {
            Some(bell) => events::ring_doorbell(bell),
            None => events::send(self.port)?,
        }
        Ok(())
    }
}

/// The transmit side.
struct TxPath {
    ring: FrontRing<NetTxRequest, NetTxResponse>,
    pages: Granted,
    free: Vec<u16>,
    in_flight: Vec<bool>,
    chain: Vec<NetTxRequest>,
    max_frame: usize,
}

impl TxPath {
    /// Reaps every TX response there.
    fn reap(&mut self, stats: &mut NetStats) -> Result<(), NetError> {
        loop {
            let rsp = match self.ring.poll_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => return Err(NetError::Protocol(ProtocolError::Ring(e))),
            };
            let id = rsp.id;
            match self.in_flight.get_mut(usize::from(id)) {
                Some(f) if *f => *f = false,
                _ => return Err(NetError::Protocol(ProtocolError::UnknownTxId(id))),
            }
            self.free.push(id);
            if rsp.status != 0 {
                // Every slot of a refused packet carries the status: counted per slot.
                stats.tx_errors += 1;
            }
        }
    }

    /// Whether a frame of `len` bytes fits now.
    fn room_for(&self, len: usize) -> bool {
        let n = len.div_ceil(PAGE);
        self.free.len() >= n && self.ring.free_requests() as usize >= n
    }

    /// Copies `frame` into free pages and publishes it as one packet.
    fn send(
        &mut self,
        frame: &[u8],
        notifier: Notifier,
        stats: &mut NetStats,
    ) -> Result<(), NetError> {
        let len = frame.len();
        if !(ETH_HLEN..=self.max_frame).contains(&len) {
            return Err(NetError::BadFrame(len));
        }
        self.reap(stats)?;
        if !self.room_for(len) {
            return Err(NetError::Busy);
        }
        let nslots = len.div_ceil(PAGE);
        let mut slots: [(u16, GrantRef); MAX_TX_SLOTS] = [(0, 0); MAX_TX_SLOTS];
        for (k, chunk) in frame.chunks(PAGE).enumerate() {
            // room_for checked there are enough free pages.
            let id = self.free.pop().unwrap_or(0);
            self.in_flight[usize::from(id)] = true;
            let dst = self.pages.ptr(usize::from(id));
            // SAFETY: `dst` is TX page `id` (4096 bytes, ours), `chunk.len() <= 4096`; the page
            // was free, so no slot in flight names it and the backend does not read it now;
            // no reference to it exists.
            unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, chunk.len()) };
            slots[k] = (id, self.pages.grefs[usize::from(id)]);
        }
        self.chain.clear();
        tx_chain(len, &slots[..nslots], &mut self.chain);
        for req in &self.chain {
            self.ring
                .push_request(req)
                .map_err(|e| NetError::Protocol(ProtocolError::Ring(e)))?;
        }
        stats.tx_frames += 1;
        if self.ring.push_requests_and_check_notify() {
            notifier.notify(stats)?;
        }
        Ok(())
    }
}

/// The receive side.
struct RxPath {
    ring: FrontRing<NetRxRequest, NetRxResponse>,
    pages: Granted,
    posted: Vec<bool>,
    asm: RxAssembler,
    /// Buffers posted again and not published yet.
    unpublished: u32,
}

impl RxPath {
    fn post(&mut self, id: u16) -> Result<(), NetError> {
        let req = NetRxRequest {
            id,
            pad: 0,
            gref: self.pages.grefs[usize::from(id)],
        };
        self.ring
            .push_request(&req)
            .map_err(|e| NetError::Protocol(ProtocolError::Ring(e)))?;
        self.posted[usize::from(id)] = true;
        self.unpublished += 1;
        Ok(())
    }

    fn publish(&mut self, notifier: Notifier, stats: &mut NetStats) -> Result<(), NetError> {
        if self.unpublished == 0 {
            return Ok(());
        }
        self.unpublished = 0;
        if self.ring.push_requests_and_check_notify() {
            notifier.notify(stats)?;
        }
        Ok(())
    }

    /// Consumes RX responses until a frame is complete (`Some(len)`, in `asm.frame`) or none
    /// is left; reposts every buffer consumed.
    fn next_frame(
        &mut self,
        notifier: Notifier,
        stats: &mut NetStats,
    ) -> Result<Option<usize>, NetError> {
        let mut got = None;
        while got.is_none() {
            let rsp = match self.ring.poll_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(NetError::Protocol(ProtocolError::Ring(e))),
            };
            let id = rsp.id;
            match self.posted.get_mut(usize::from(id)) {
                Some(p) if *p => *p = false,
                _ => return Err(NetError::Protocol(ProtocolError::UnknownRxId(id))),
            }
            let src = self.pages.ptr(usize::from(id));
            match self.asm.feed(&rsp, |off, dst| {
                // SAFETY: `src` is RX page `id` (4096 bytes, ours) and `off + dst.len() <=
                // 4096` (checked by `feed`); the backend answered this buffer, so an honest one
                // no longer writes it (a hostile one could only change the bytes copied); no
                // reference to the page exists.
                unsafe { core::ptr::copy_nonoverlapping(src.add(off), dst.as_mut_ptr(), dst.len()) }
            }) {
                Fed::More => {}
                Fed::Frame(n) => {
                    stats.rx_frames += 1;
                    got = Some(n);
                }
                Fed::Dropped => stats.rx_errors += 1,
            }
            // Copied out: the buffer can go back to the backend.
            self.post(id)?;
        }
        self.publish(notifier, stats)?;
        Ok(got)
    }
}

/// A network interface (`vif/<n>`) of this domain, connected to its backend. See the [module
/// documentation](self).
pub struct NetDevice {
    n: u32,
    front: FrontendDir,
    mac: [u8; MAC_LEN],
    mtu: u16,
    cfg: Config,
    notifier: Notifier,
    published: bool,
    closed: bool,
    broken: Option<NetError>,
    stats: NetStats,
    tx: TxPath,
    rx: RxPath,
    // Dropped after the rings that point into them.
    tx_ring_page: Granted,
    rx_ring_page: Granted,
}

impl fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetDevice")
            .field("n", &self.n)
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// Opens interface `vif/<n>` with the default [`Config`].
    pub fn open(n: u32) -> Result<NetDevice, NetError> {
        Self::open_with(n, Config::default())
    }

    /// Opens interface `vif/<n>` with `cfg` (see the [module documentation](self)).
    /// [`NetError::Device`] with [`DeviceError::NoDevice`] if the domain has no such interface.
    pub fn open_with(n: u32, cfg: Config) -> Result<NetDevice, NetError> {
        let front = FrontendDir::find(CLASS, n)?;
        let deadline = time::monotonic_ns().saturating_add(cfg.connect_timeout_ns);
        front.wait_backend(deadline, |s| s == DeviceState::InitWait)?;
        let mac = match front.backend_key(KEY_MAC)? {
            Some(OwnedValue::Bytes(b)) if b.len() == MAC_LEN => {
                let mut m = [0u8; MAC_LEN];
                m.copy_from_slice(&b);
                m
            }
            _ => return Err(NetError::BadConfig),
        };
        let mtu = match front.backend_u64(KEY_MTU) {
            Ok(v) if (68..=u64::from(MAX_MTU)).contains(&v) => v as u16,
            _ => return Err(NetError::BadConfig),
        };
        let backend = front.backend_id;
        let tx_ring_page = Granted::new(1, backend, false)?;
        let rx_ring_page = Granted::new(1, backend, false)?;
        // SAFETY: the ring pages are ours (kept in the device, freed only after their grants
        // ended and the backend closed, or never), 4096 bytes, page-aligned; this program
        // accesses each only through its ring; the backend writes them concurrently, as
        // rings expect.
        let tx_ring = unsafe { FrontRing::new(tx_ring_page.ptr(0), PAGE) }
            .map_err(|e| NetError::Protocol(ProtocolError::Ring(e)))?;
        // SAFETY: as above, for the RX ring page.
        let rx_ring = unsafe { FrontRing::new(rx_ring_page.ptr(0), PAGE) }
            .map_err(|e| NetError::Protocol(ProtocolError::Ring(e)))?;
        let ntx = (cfg.tx_pages as usize).clamp(MAX_TX_SLOTS, tx_ring.size() as usize);
        let min_rx = MAX_PACKET_SIZE.div_ceil(RX_BUFFER_SIZE);
        let nrx = (cfg.rx_buffers as usize).clamp(min_rx, rx_ring.size() as usize);
        let tx_pages = Granted::new(ntx, backend, true)?;
        let rx_pages = Granted::new(nrx, backend, false)?;
        let max_frame = usize::from(mtu) + ETH_HLEN;
        let port = events::alloc_unbound(backend)?;
        let mut dev = NetDevice {
            n,
            front,
            mac,
            mtu,
            cfg,
            notifier: Notifier {
                port,
                doorbell: None,
            },
            published: false,
            closed: false,
            broken: None,
            stats: NetStats::default(),
            tx: TxPath {
                ring: tx_ring,
                pages: tx_pages,
                free: (0..ntx as u16).rev().collect(),
                in_flight: alloc::vec![false; ntx],
                chain: Vec::with_capacity(MAX_TX_SLOTS),
                max_frame,
            },
            rx: RxPath {
                ring: rx_ring,
                pages: rx_pages,
                posted: alloc::vec![false; nrx],
                asm: RxAssembler::new(max_frame),
                unpublished: 0,
            },
            tx_ring_page,
            rx_ring_page,
        };
        // Waited on with sched_op(poll): no upcall may clear its pending bit.
        events::mask(port)?;
        dev.connect(deadline)?;
        Ok(dev)
    }

    /// The store handshake, from our `Initialised` to our `Connected`.
    fn connect(&mut self, deadline: u64) -> Result<(), NetError> {
        let port = self.notifier.port;
        let tx_ref = self.tx_ring_page.grefs.first().copied().unwrap_or(0);
        let rx_ref = self.rx_ring_page.grefs.first().copied().unwrap_or(0);
        self.front
            .write(KEY_TX_RING_REF, Value::U64(u64::from(tx_ref)))?;
        self.front
            .write(KEY_RX_RING_REF, Value::U64(u64::from(rx_ref)))?;
        self.front
            .write(KEY_EVENT_CHANNEL, Value::U64(u64::from(port)))?;
        self.published = true;
        self.front.set_state(DeviceState::Initialised)?;
        self.front
            .wait_backend(deadline, |s| s == DeviceState::Connected)?;
        self.notifier.doorbell = events::doorbell(port).ok();
        for id in 0..self.rx.posted.len() {
            self.rx.post(id as u16)?;
        }
        self.rx.publish(self.notifier, &mut self.stats)?;
        self.front.set_state(DeviceState::Connected)?;
        Ok(())
    }

    /// The interface number (`vif/<n>`).
    pub fn number(&self) -> u32 {
        self.n
    }

    /// The MAC address the backend assigned to us.
    pub fn mac(&self) -> [u8; MAC_LEN] {
        self.mac
    }

    /// The largest payload; frames are at most `mtu + 14` bytes.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The largest frame (`mtu + 14`).
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + ETH_HLEN
    }

    /// The backend's domain.
    pub fn backend_id(&self) -> DomId {
        self.front.backend_id
    }

    /// The event channel port shared with the backend.
    pub fn port(&self) -> Port {
        self.notifier.port
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn usable(&self) -> Result<(), NetError> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None if self.closed => Err(NetError::Disconnected),
            None => Ok(()),
        }
    }

    fn check<T>(&mut self, r: Result<T, NetError>) -> Result<T, NetError> {
        if let Err(e @ NetError::Protocol(_)) = &r {
            self.broken = Some(e.clone());
        }
        r
    }

    /// Sends one Ethernet frame (destination, source, EtherType, payload; at most
    /// [`max_frame`](Self::max_frame) bytes). It is copied at once. [`NetError::Busy`] if
    /// every TX page is in flight (the backend has not answered yet).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.usable()?;
        let r = self.tx.send(frame, self.notifier, &mut self.stats);
        self.check(r)
    }

    /// Receives one frame into `buf` without waiting: `Some(len)`, or `None` if none has
    /// arrived. A frame longer than `buf` is truncated (`len` is the part copied).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.usable()?;
        let r = self.rx.next_frame(self.notifier, &mut self.stats);
        let got = self.check(r)?;
        Ok(got.map(|n| {
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&self.rx.asm.frame[..n]);
            n
        }))
    }

    /// Waits until a frame may have arrived or TX pages were freed (`Ok(true)`: call
    /// [`recv`](Self::recv)), or until `deadline_ns` (system time; `Ok(false)`). Arms the
    /// rings' event indices, then blocks in `sched_op(poll)` on the port.
    /// [`NetError::Disconnected`] if the backend closed meanwhile.
    pub fn wait(&mut self, deadline_ns: u64) -> Result<bool, NetError> {
        self.usable()?;
        let r = self.wait_inner(deadline_ns);
        self.check(r)
    }

    fn wait_inner(&mut self, deadline_ns: u64) -> Result<bool, NetError> {
        let port = self.notifier.port;
        let ring = |e| NetError::Protocol(ProtocolError::Ring(e));
        loop {
            // Clear first: an event sent after this leaves the bit set and poll returns.
            events::clear_pending(port);
            if self.rx.ring.final_check_for_responses().map_err(ring)? {
                return Ok(true);
            }
            // TX completions matter only when a maximal frame no longer fits.
            if !self.tx.room_for(self.tx.max_frame) {
                self.tx.reap(&mut self.stats)?;
                if self.tx.room_for(self.tx.max_frame) {
                    return Ok(true);
                }
                if self.tx.ring.final_check_for_responses().map_err(ring)? {
                    return Ok(true);
                }
            }
            let now = time::monotonic_ns();
            if now >= deadline_ns {
                return Ok(false);
            }
            // Wake at least every second to notice a backend that closed.
            let until = deadline_ns.min(now.saturating_add(time::NS_PER_SEC));
            self.stats.blocks += 1;
            match sched::poll(&[port], until) {
                Ok(()) => return Ok(true),
                Err(e) if e.is(Errno::ETIMEDOUT) => {
                    if matches!(
                        self.front.backend_state(),
                        Ok(DeviceState::Closing | DeviceState::Closed)
                    ) {
                        return Err(NetError::Disconnected);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Builds a smoltcp interface on this device with the backend's MAC address and no IP
    /// address yet (add them with `update_ip_addrs`).
    pub fn interface(&mut self) -> smoltcp::iface::Interface {
        let hw = smoltcp::wire::EthernetAddress(self.mac);
        let mut cfg = smoltcp::iface::Config::new(hw.into());
        cfg.random_seed = time::monotonic_ns()
            ^ u64::from_le_bytes([
                self.mac[0],
                self.mac[1],
                self.mac[2],
                self.mac[3],
                self.mac[4],
                self.mac[5],
                0x5a,
                0xa5,
            ]);
        smoltcp::iface::Interface::new(cfg, self, now())
    }

    /// Closes the device: moves to `Closing`, waits (bounded) for the backend's `Closed`,
    /// ends the grants, closes the port and moves to `Closed`. Dropping the device does the
    /// same, ignoring errors.
    pub fn close(mut self) -> Result<(), NetError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), NetError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let mut result = Ok(());
        if self.published {
            let deadline = time::monotonic_ns().saturating_add(self.cfg.connect_timeout_ns);
            let closed = self.front.set_state(DeviceState::Closing).is_ok()
                && self
                    .front
                    .wait_backend(deadline, |s| s == DeviceState::Closed)
                    .is_ok()
                || matches!(self.front.backend_state(), Ok(DeviceState::Closed));
            if !closed {
                // The backend may still use the rings and the pages: keep them for ever.
                self.tx_ring_page.leak = true;
                self.rx_ring_page.leak = true;
                self.tx.pages.leak = true;
                self.rx.pages.leak = true;
                result = Err(NetError::Disconnected);
            }
        }
        let _ = events::close(self.notifier.port);
        let _ = self.front.set_state(DeviceState::Closed);
        result
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// smoltcp's clock: [`time::monotonic_ns`] in microseconds.
pub fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((time::monotonic_ns() / time::NS_PER_US) as i64)
}

/// A received frame handed to smoltcp.
#[derive(Debug)]
pub struct NetRxToken<'a> {
    frame: &'a [u8],
}

impl smoltcp::phy::RxToken for NetRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Room for one frame to send, handed to smoltcp.
pub struct NetTxToken<'a> {
    tx: &'a mut TxPath,
    notifier: Notifier,
    stats: &'a mut NetStats,
    broken: &'a mut Option<NetError>,
}

impl fmt::Debug for NetTxToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetTxToken").finish_non_exhaustive()
    }
}

impl smoltcp::phy::TxToken for NetTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = alloc::vec![0u8; len];
        let r = f(&mut buf);
        match self.tx.send(&buf, self.notifier, self.stats) {
            Ok(()) => {}
            Err(e @ NetError::Protocol(_)) => *self.broken = Some(e),
            // Lost, as on a congested link; smoltcp retransmits what matters.
            Err(_) => self.stats.tx_errors += 1,
        }
        r
    }
}

impl smoltcp::phy::Device for NetDevice {
    type RxToken<'a> = NetRxToken<'a>;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.usable().is_err() {
            return None;
        }
        let r = self.rx.next_frame(self.notifier, &mut self.stats);
        let n = self.check(r).ok()??;
        // A reply may need no room: smoltcp drops it if the token cannot send.
        Some((
            NetRxToken {
                frame: &self.rx.asm.frame[..n],
            },
            NetTxToken {
                tx: &mut self.tx,
                notifier: self.notifier,
                stats: &mut self.stats,
                broken: &mut self.broken,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.usable().is_err() {
            return None;
        }
        let r = self.tx.reap(&mut self.stats);
        self.check(r).ok()?;
        if !self.tx.room_for(self.tx.max_frame) {
            return None;
        }
        Some(NetTxToken {
            tx: &mut self.tx,
            notifier: self.notifier,
            stats: &mut self.stats,
            broken: &mut self.broken,
        })
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.medium = smoltcp::phy::Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame();
        caps.max_burst_size = Some(MAX_TX_SLOTS);
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(len: usize) -> Vec<NetTxRequest> {
        let pages: Vec<(u16, GrantRef)> = (0..MAX_TX_SLOTS as u16)
            .map(|i| (i, 100 + u32::from(i)))
            .collect();
        let mut out = Vec::new();
        tx_chain(len, &pages, &mut out);
        out
    }

    #[test]
    fn one_slot_for_a_small_frame() {
        let c = chain(1514);
        assert_eq!(
            c,
            [NetTxRequest {
                id: 0,
                flags: 0,
                gref: 100,
                offset: 0,
                size: 1514,
                pad: 0
            }]
        );
    }

    #[test]
    fn chains_cover_large_packets() {
        for len in [4096, 4097, 5000, 8192, 9000, MAX_PACKET_SIZE] {
            let c = chain(len);
            assert_eq!(c.len(), len.div_ceil(4096), "{len}");
            assert!(c.len() <= MAX_TX_SLOTS);
            assert_eq!(usize::from(c[0].size), len);
            let rest: usize = c[1..].iter().map(|r| usize::from(r.size)).sum();
            let first_frag = len - rest;
            assert!((1..=4096).contains(&first_frag), "{len}");
            for (k, r) in c.iter().enumerate() {
                let last = k + 1 == c.len();
                assert_eq!(r.flags, if last { 0 } else { TXF_MORE_DATA });
                assert_eq!(
                    (r.id, r.gref, r.offset, r.pad),
                    (k as u16, 100 + k as u32, 0, 0)
                );
                if k > 0 {
                    assert!(r.size >= 1 && usize::from(r.size) <= 4096);
                }
            }
        }
        assert_eq!(chain(5000)[1].size, 904);
    }

    fn rsp(id: u16, offset: u16, flags: u16, status: i16) -> NetRxResponse {
        NetRxResponse {
            id,
            offset,
            flags,
            status,
        }
    }

    /// Feeds `r` with a page whose byte `i` is `(i + tag) as u8`.
    fn feed(a: &mut RxAssembler, r: NetRxResponse, tag: u8) -> Fed {
        let page: Vec<u8> = (0..4096).map(|i| (i as u8).wrapping_add(tag)).collect();
        a.feed(&r, |off, dst| {
            dst.copy_from_slice(&page[off..off + dst.len()])
        })
    }

    #[test]
    fn single_and_chained_frames() {
        let mut a = RxAssembler::new(9014);
        assert_eq!(feed(&mut a, rsp(0, 10, 0, 60), 0), Fed::Frame(60));
        assert_eq!(a.frame[0], 10);
        assert_eq!(feed(&mut a, rsp(1, 0, RXF_MORE_DATA, 4096), 1), Fed::More);
        assert_eq!(feed(&mut a, rsp(2, 0, RXF_MORE_DATA, 4096), 2), Fed::More);
        assert_eq!(feed(&mut a, rsp(3, 0, 0, 822), 3), Fed::Frame(9014));
        assert_eq!((a.frame[0], a.frame[4096], a.frame[8192]), (1, 2, 3));
        // The next frame starts afresh.
        assert_eq!(feed(&mut a, rsp(4, 0, 0, 14), 7), Fed::Frame(14));
        assert_eq!(a.frame.len(), 14);
    }

    #[test]
    fn errors_drop_the_frame_in_progress() {
        let mut a = RxAssembler::new(9014);
        assert_eq!(feed(&mut a, rsp(0, 0, RXF_MORE_DATA, 4096), 0), Fed::More);
        assert_eq!(feed(&mut a, rsp(1, 0, 0, -11), 0), Fed::Dropped);
        assert_eq!(feed(&mut a, rsp(2, 0, 0, 100), 0), Fed::Frame(100));
        // Zero bytes is not a valid status either.
        assert_eq!(feed(&mut a, rsp(3, 0, 0, 0), 0), Fed::Dropped);
    }

    #[test]
    fn malformed_and_oversized_chains_are_skipped() {
        let mut a = RxAssembler::new(1514);
        // Crosses the page's end: dropped, and the rest of its chain skipped.
        assert_eq!(
            feed(&mut a, rsp(0, 4000, RXF_MORE_DATA, 200), 0),
            Fed::Dropped
        );
        assert_eq!(feed(&mut a, rsp(1, 0, RXF_MORE_DATA, 10), 0), Fed::More);
        assert_eq!(feed(&mut a, rsp(2, 0, 0, 10), 0), Fed::More);
        assert_eq!(feed(&mut a, rsp(3, 0, 0, 64), 0), Fed::Frame(64));
        // Larger than the MTU allows.
        assert_eq!(feed(&mut a, rsp(4, 0, RXF_MORE_DATA, 1500), 0), Fed::More);
        assert_eq!(feed(&mut a, rsp(5, 0, 0, 100), 0), Fed::Dropped);
        assert_eq!(feed(&mut a, rsp(6, 0, 0, 64), 0), Fed::Frame(64));
        assert_eq!(feed(&mut a, rsp(7, 4095, 0, 1), 9), Fed::Frame(1));
        assert_eq!(a.frame, [(4095 + 9) as u8]);
    }

    #[test]
    fn errors_display_one_line() {
        extern crate std;
        use std::string::ToString;
        for e in [
            NetError::Busy,
            NetError::BadFrame(3),
            NetError::Protocol(ProtocolError::UnknownRxId(7)),
            NetError::Device(DeviceError::NoDevice),
        ] {
            let s = e.to_string();
            assert!(s.starts_with("vif: ") && !s.contains('\n'), "{s}");
        }
        assert_eq!(
            NetError::from(DeviceError::BackendClosed),
            NetError::Disconnected
        );
    }
}
