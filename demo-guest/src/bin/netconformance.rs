//! The net protocol conformance suite: a hostile `vif` frontend against the hv's real net
//! backend. The main role connects `vif/0` by hand (the store handshake of
//! [`hypercall_abi::io::net`], its own ring pages), puts raw [`NetTxRequest`]s and
//! [`NetRxRequest`]s on the rings (malformed on purpose, bypassing every check a frontend
//! makes) and expects the exact status the protocol documents for each. A second domain, the
//! same binary with `role=peer`, sits on the same switch and echoes every test frame it
//! receives: that proves good frames flow, that refused frames never reach the wire, and that
//! the peer is unharmed by the end.
//!
//! Every case prints `netconf: <case> ... ok` or `netconf: <case> ... FAIL (why)` (`why` is
//! usually `expected X, got Y`); the run ends with `netconf: N passed, M failed` and powers off
//! with 0 only if M is 0. Run it with `hv run --config examples/netconformance.toml`.
//!
//! Command line (space-separated `key=value`):
//!
//! | key | values | meaning |
//! | --- | --- | --- |
//! | `role` | `main` (default), `peer` | which end this domain is |
//! | `peer` | a domain name | main: the peer's name in the store (default `netconf-peer`) |
//! | `timeout` | seconds | peer: how long to wait for the main role's `bye` (default 120) |
//!
//! The main role needs seven interfaces on the peer's switch: `vif/0` takes every case and ends
//! with a broken TX ring index; `vif/1` (connected by hand later) ends with a broken RX ring
//! index; `vif/3` to `vif/6` each get a handshake with one thing wrong in it, which the backend
//! must refuse (`Closed`); `vif/2` is opened with `pv_drivers`' frontend at the very end to show
//! that the peer and the switch still work, and tells the peer `bye`.
//!
//! Not covered here: `-EAGAIN` for the other buffers of a frame dropped for an unusable one
//! needs a frame above one buffer (4096 bytes), i.e. an MTU the hv does not offer (it serves
//! 1500); `pv_drivers`' backend unit tests cover it.
//!
//! Test frames are Ethernet frames of EtherType 0x88b5 (local experimental) whose payload is
//! `NCF1`, a kind byte (request, reply, bye, bye-ack) and a tag (`u32`, little-endian), then a
//! pattern. The peer answers a request with the same frame, addresses swapped and kind reply.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use guest_sdk::abi::evtchn::Port;
use guest_sdk::abi::io::net::{
    NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse, ETH_HLEN, KEY_EVENT_CHANNEL,
    KEY_FEATURE_SG, KEY_MAC, KEY_MTU, KEY_RX_RING_REF, KEY_TX_RING_REF, MAC_LEN, MAX_TX_SLOTS,
    TXF_MORE_DATA, TX_RING_SLOTS,
};
use guest_sdk::abi::ring::FrontRing;
use guest_sdk::abi::store::{Access, DeviceState, Perms};
use guest_sdk::abi::{DomId, Errno, Features, PAGE_SIZE};
use guest_sdk::grant::{self, GrantRef};
use guest_sdk::heap::Pages;
use guest_sdk::store::{self, OwnedValue, Value};
use guest_sdk::time::{self, NS_PER_MS, NS_PER_SEC};
use guest_sdk::{events, println, sched, StartInfo};
use pv_drivers::frontend::device::FrontendDir;
use pv_drivers::frontend::net::{self as vif, NetDevice};

guest_sdk::entry!(
    main,
    required_features = Features::INTERDOMAIN
        .union(Features::GRANT_TABLES)
        .union(Features::STORE)
);

type Mac = [u8; MAC_LEN];

const PAGE: usize = PAGE_SIZE as usize;
/// The test frames' EtherType (IEEE 802 local experimental 1).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const MAGIC: &[u8; 4] = b"NCF1";
const KIND_REQUEST: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BYE: u8 = 2;
const KIND_BYE_ACK: u8 = 3;
/// Ethernet header, magic, kind, tag.
const HDR: usize = ETH_HLEN + 4 + 1 + 4;
/// The tag of the frame in the hostile page: the peer reports any it receives.
const HOSTILE_TAG: u32 = 0xdead_0bad;
/// A source address no interface has (locally administered, unicast).
const FORGED_MAC: Mac = [0x02, 0x66, 0x6f, 0x72, 0x67, 0x65];
/// The node (in the peer's home) where the peer publishes its MAC once it is connected.
const READY_KEY: &str = "netconf-mac";
/// How long one step (a response, an echo, a state) may take.
const STEP_NS: u64 = 5 * NS_PER_SEC;
/// The grant table's size (grefs from here on do not exist).
const TABLE: u32 = grant::TABLE_ENTRIES;
/// A grant reference this domain never hands out (the SDK allocates from the bottom and the
/// suite uses far fewer).
const NEVER: GrantRef = TABLE - 1;
/// RX buffer id of the liveness check.
const ALIVE_ID: u16 = 0xa11e;

fn main(si: &StartInfo) {
    let mut role = "main";
    let mut peer_name = "netconf-peer";
    let mut timeout_s = 120;
    for word in si.cmdline().split_whitespace() {
        match word.split_once('=') {
            Some(("role", r)) => role = r,
            Some(("peer", p)) => peer_name = p,
            Some(("timeout", t)) => match t.parse() {
                Ok(t) => timeout_s = t,
                Err(_) => die(format_args!("bad timeout {t:?}")),
            },
            _ => die(format_args!("unknown option {word:?}")),
        }
    }
    match role {
        "main" => suite(si, peer_name),
        "peer" => peer(si, time::monotonic_ns() + timeout_s * NS_PER_SEC),
        _ => die(format_args!("role=main or role=peer")),
    }
}

fn die(msg: core::fmt::Arguments<'_>) -> ! {
    println!("netconf: FAILED: {msg}");
    sched::exit(1)
}

// ---------------------------------------------------------------------------------------------
// Test frames

/// A test frame of `len` bytes (at least [`HDR`]).
fn test_frame(dst: Mac, src: Mac, kind: u8, tag: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(HDR));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(MAGIC);
    f.push(kind);
    f.extend_from_slice(&tag.to_le_bytes());
    let seed = tag as u8;
    while f.len() < len {
        let i = f.len() as u8;
        f.push(i.wrapping_mul(31) ^ seed);
    }
    f
}

/// `(kind, tag)` of a test frame.
fn parse(frame: &[u8]) -> Option<(u8, u32)> {
    if frame.len() < HDR || frame[12..14] != ETHERTYPE || &frame[ETH_HLEN..ETH_HLEN + 4] != MAGIC {
        return None;
    }
    let t = &frame[ETH_HLEN + 5..HDR];
    Some((
        frame[ETH_HLEN + 4],
        u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
    ))
}

/// The answer to `frame`: addresses swapped, kind `kind`.
fn answer(frame: &[u8], kind: u8) -> Vec<u8> {
    let mut r = frame.to_vec();
    r[..6].copy_from_slice(&frame[6..12]);
    r[6..12].copy_from_slice(&frame[..6]);
    r[ETH_HLEN + 4] = kind;
    r
}

fn describe_frame(f: &[u8]) -> String {
    match parse(f) {
        Some((k, t)) => format!("a {}-byte frame of kind {k}, tag {t:#x}", f.len()),
        None => format!("a {}-byte frame that is no test frame", f.len()),
    }
}

fn describe(status: i16) -> String {
    if status >= 0 {
        return format!("{status}");
    }
    match Errno::from_raw(i64::from(status)) {
        Err(Some(e)) => String::from(e.name()),
        _ => format!("{status}"),
    }
}

fn st(e: Errno) -> i16 {
    e.to_raw() as i16
}

// ---------------------------------------------------------------------------------------------
// The peer

/// Echoes every test request, counts frames carrying the hostile tag (they should never reach
/// it), answers `bye` and powers off (0 if no hostile frame came).
fn peer(si: &StartInfo, deadline: u64) {
    let mut dev = match NetDevice::open(0) {
        Ok(d) => d,
        Err(e) => die(format_args!("peer: cannot open vif/0: {e}")),
    };
    let mac = dev.mac();
    let key = format!("/local/domain/{}/{READY_KEY}", si.domid);
    let mut perms = Perms::owned_by(si.domid);
    perms.others = Access::Read;
    if let Err(e) =
        store::write(&key, Value::Bytes(&mac)).and_then(|()| store::set_perms(&key, &perms))
    {
        die(format_args!("peer: publishing {key}: {e}"));
    }
    println!("netconf-peer: vif/0 up, echoing");
    let (mut echoed, mut hostile) = (0u64, 0u64);
    let mut buf = alloc::vec![0u8; dev.max_frame()];
    loop {
        let n = match dev.recv(&mut buf) {
            Ok(Some(n)) => n,
            Ok(None) => {
                if time::monotonic_ns() >= deadline {
                    die(format_args!(
                        "peer: no bye before the deadline ({echoed} echoed)"
                    ));
                }
                if let Err(e) = dev.wait(deadline) {
                    die(format_args!("peer: vif/0: {e}"));
                }
                continue;
            }
            Err(e) => die(format_args!("peer: vif/0: {e}")),
        };
        let frame = &buf[..n];
        let Some((kind, tag)) = parse(frame) else {
            continue;
        };
        if tag == HOSTILE_TAG {
            hostile += 1;
            println!(
                "netconf-peer: a refused frame reached the wire: {}",
                describe_frame(frame)
            );
        }
        let reply = match kind {
            KIND_REQUEST => answer(frame, KIND_REPLY),
            KIND_BYE => answer(frame, KIND_BYE_ACK),
            _ => continue,
        };
        send_retrying(&mut dev, &reply, deadline);
        if kind == KIND_BYE {
            break;
        }
        echoed += 1;
    }
    // Let the bye-ack go out before the device closes.
    let linger = time::monotonic_ns() + 200 * NS_PER_MS;
    while let Ok(true) = dev.wait(linger) {
        let _ = dev.recv(&mut buf);
    }
    let st = dev.stats();
    println!(
        "netconf-peer: done: {echoed} frames echoed, {hostile} refused frames seen; frames tx {} rx {}",
        st.tx_frames, st.rx_frames
    );
    let _ = dev.close();
    sched::exit(if hostile == 0 { 0 } else { 1 });
}

fn send_retrying(dev: &mut NetDevice, frame: &[u8], deadline: u64) {
    loop {
        match dev.send(frame) {
            Ok(()) => return,
            Err(vif::NetError::Busy) if time::monotonic_ns() < deadline => {
                let _ = dev.wait(time::monotonic_ns() + 10 * NS_PER_MS);
            }
            Err(e) => die(format_args!("send: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A vif connected by hand

/// How [`RawVif::open`] does the handshake.
#[derive(Clone, Copy)]
enum Handshake {
    /// As the protocol says.
    Good,
    /// `tx-ring-ref` and `rx-ring-ref` name the same page.
    SamePage,
    /// The TX ring page is granted read-only.
    ReadOnlyRing,
    /// `tx-ring-ref` was never granted.
    NeverGranted,
    /// `event-channel` is a port allocated for this other domain, not for the backend.
    ForeignPort(DomId),
}

/// One interface connected by hand: our ring pages, our port, and every response read so far.
struct RawVif {
    n: u32,
    front: FrontendDir,
    mac: Mac,
    port: Port,
    bell: Option<u16>,
    tx: FrontRing<NetTxRequest, NetTxResponse>,
    rx: FrontRing<NetRxRequest, NetRxResponse>,
    tx_ref: GrantRef,
    rx_ref: GrantRef,
    txq: VecDeque<NetTxResponse>,
    rxq: VecDeque<NetRxResponse>,
    /// RX requests posted and not answered yet.
    rx_posted: usize,
    /// The two ring pages (TX, RX); never freed (see [`RawVif::abandon`]).
    rings: Pages,
}

impl RawVif {
    /// The handshake of [`hypercall_abi::io::net`]: the backend's `InitWait` and keys; our ring
    /// pages, port, keys and `Initialised`; the backend's `Connected`; our `Connected`.
    fn connect(n: u32) -> Result<RawVif, String> {
        let (v, state) = Self::open(n, Handshake::Good)?;
        if state != DeviceState::Connected {
            return Err(format!(
                "vif/{n}: expected backend Connected, got {state:?}"
            ));
        }
        v.front
            .set_state(DeviceState::Connected)
            .map_err(|e| format!("vif/{n}: {e}"))?;
        Ok(v)
    }

    /// The handshake up to our `Initialised`, done as `how` says; returns once the backend is
    /// `Connected` or `Closed`, with that state.
    fn open(n: u32, how: Handshake) -> Result<(RawVif, DeviceState), String> {
        let deadline = time::monotonic_ns() + 2 * STEP_NS;
        let front = FrontendDir::find("vif", n).map_err(|e| format!("vif/{n}: {e}"))?;
        front
            .wait_backend(deadline, |s| s == DeviceState::InitWait)
            .map_err(|e| format!("vif/{n}: backend InitWait: {e}"))?;
        let mac = match front.backend_key(KEY_MAC) {
            Ok(Some(OwnedValue::Bytes(b))) if b.len() == MAC_LEN => {
                let mut m = [0u8; MAC_LEN];
                m.copy_from_slice(&b);
                m
            }
            other => return Err(format!("vif/{n}: backend mac: {other:?}")),
        };
        let mtu = front
            .backend_u64(KEY_MTU)
            .map_err(|e| format!("vif/{n}: backend mtu: {e}"))?;
        if mtu != 1500 {
            return Err(format!(
                "vif/{n}: the cases assume mtu 1500, the backend says {mtu}"
            ));
        }
        if !front.backend_bool(KEY_FEATURE_SG).unwrap_or(false) {
            return Err(format!("vif/{n}: the backend does not publish feature-sg"));
        }
        let backend = front.backend_id;
        let rings = Pages::zeroed(2).map_err(|e| format!("ring pages: {e}"))?;
        let give = |i: usize, ro: bool| {
            // SAFETY: the ring pages are accessed only through the rings (atomics) and by the
            // breaking cases with atomics; they are never freed (abandon, or kept in Ctx).
            unsafe { grant::grant_access(rings.gpa() + (i * PAGE) as u64, backend, ro) }
                .map_err(|e| format!("grant ring page: {e}"))
        };
        let (tx_ref, rx_ref) = match how {
            Handshake::SamePage => {
                let g = give(0, false)?;
                (g, g)
            }
            Handshake::ReadOnlyRing => (give(0, true)?, give(1, false)?),
            Handshake::NeverGranted => (NEVER, give(1, false)?),
            Handshake::Good | Handshake::ForeignPort(_) => (give(0, false)?, give(1, false)?),
        };
        // SAFETY: page 0 of `rings`, 4096 bytes, page-aligned, kept for ever; only this ring
        // (and the backend, concurrently) touches it.
        let tx = unsafe { FrontRing::new(rings.as_ptr(), PAGE) }.map_err(|e| format!("{e}"))?;
        // SAFETY: as above, page 1.
        let rx = unsafe { FrontRing::new(rings.as_ptr().wrapping_add(PAGE), PAGE) }
            .map_err(|e| format!("{e}"))?;
        let remote = match how {
            Handshake::ForeignPort(d) => d,
            _ => backend,
        };
        let port = events::alloc_unbound(remote).map_err(|e| format!("alloc_unbound: {e}"))?;
        events::mask(port).map_err(|e| format!("mask: {e}"))?;
        let w = |k: &str, v: u64| {
            front
                .write(k, Value::U64(v))
                .map_err(|e| format!("vif/{n}: {e}"))
        };
        w(KEY_TX_RING_REF, u64::from(tx_ref))?;
        w(KEY_RX_RING_REF, u64::from(rx_ref))?;
        w(KEY_EVENT_CHANNEL, u64::from(port))?;
        front
            .set_state(DeviceState::Initialised)
            .map_err(|e| format!("vif/{n}: {e}"))?;
        let state = front
            .wait_backend(deadline, |s| {
                matches!(s, DeviceState::Connected | DeviceState::Closed)
            })
            .map_err(|e| format!("vif/{n}: backend Connected or Closed: {e}"))?;
        let v = RawVif {
            n,
            front,
            mac,
            port,
            bell: events::doorbell(port).ok(),
            tx,
            rx,
            tx_ref,
            rx_ref,
            txq: VecDeque::new(),
            rxq: VecDeque::new(),
            rx_posted: 0,
            rings,
        };
        Ok((v, state))
    }

    /// Kicks the backend (a hostile frontend does not care whether it asked to be).
    fn notify(&self) -> Result<(), String> {
        match self.bell {
            Some(b) => {
                events::ring_doorbell(b);
                Ok(())
            }
            None => events::send(self.port).map_err(|e| format!("send: {e}")),
        }
    }

    /// Publishes `slots` on the TX ring together and notifies.
    fn transmit(&mut self, slots: &[NetTxRequest]) -> Result<(), String> {
        for s in slots {
            self.tx
                .push_request(s)
                .map_err(|e| format!("tx ring: {e}"))?;
        }
        self.tx.push_requests_and_check_notify();
        self.notify()
    }

    /// Posts `reqs` on the RX ring together.
    fn post(&mut self, reqs: &[NetRxRequest]) -> Result<(), String> {
        for r in reqs {
            self.rx
                .push_request(r)
                .map_err(|e| format!("rx ring: {e}"))?;
            self.rx_posted += 1;
        }
        if self.rx.push_requests_and_check_notify() {
            self.notify()?;
        }
        Ok(())
    }

    fn pump(&mut self) -> Result<(), String> {
        while let Some(r) = self
            .tx
            .poll_response()
            .map_err(|e| format!("tx ring: {e}"))?
        {
            self.txq.push_back(r);
        }
        while let Some(r) = self
            .rx
            .poll_response()
            .map_err(|e| format!("rx ring: {e}"))?
        {
            self.rx_posted = self.rx_posted.saturating_sub(1);
            self.rxq.push_back(r);
        }
        Ok(())
    }

    /// Collects responses until `done` holds (`Ok(true)`) or `deadline` passes (`Ok(false)`).
    fn wait(&mut self, deadline: u64, done: impl Fn(&RawVif) -> bool) -> Result<bool, String> {
        loop {
            events::clear_pending(self.port);
            self.pump()?;
            if done(self) {
                return Ok(true);
            }
            let ring = |e| format!("ring: {e}");
            let more_tx = self.tx.final_check_for_responses().map_err(ring)?;
            let more_rx = self.rx.final_check_for_responses().map_err(ring)?;
            if more_tx || more_rx {
                continue;
            }
            let now = time::monotonic_ns();
            if now >= deadline {
                return Ok(false);
            }
            match sched::poll(&[self.port], deadline.min(now + 100 * NS_PER_MS)) {
                Ok(()) => {}
                Err(e) if e.is(Errno::ETIMEDOUT) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
    }

    /// The next `n` TX responses.
    fn tx_responses(&mut self, n: usize) -> Result<Vec<NetTxResponse>, String> {
        let deadline = time::monotonic_ns() + STEP_NS;
        if !self.wait(deadline, |v| v.txq.len() >= n)? {
            return Err(format!(
                "expected {n} TX response(s), got {} within {} s",
                self.txq.len(),
                STEP_NS / NS_PER_SEC
            ));
        }
        Ok(self.txq.drain(..n).collect())
    }

    /// The next RX response.
    fn rx_response(&mut self) -> Result<NetRxResponse, String> {
        let deadline = time::monotonic_ns() + STEP_NS;
        if !self.wait(deadline, |v| !v.rxq.is_empty())? {
            return Err(format!(
                "expected an RX response, got none within {} s",
                STEP_NS / NS_PER_SEC
            ));
        }
        self.rxq
            .pop_front()
            .ok_or_else(|| String::from("no RX response"))
    }

    /// Writes `value` over a ring's `req_prod` (ring 0 TX, 1 RX): the ring is broken for good.
    fn set_req_prod(&self, ring: usize, f: impl Fn(u32) -> u32) {
        let p = self.rings.as_ptr().wrapping_add(ring * PAGE).cast::<u32>();
        // SAFETY: offset 0 of a ring page of ours (`req_prod`, 4-byte aligned), which the backend
        // also accesses only atomically.
        let a = unsafe { AtomicU32::from_ptr(p) };
        a.store(f(a.load(Ordering::Relaxed)), Ordering::Release);
    }

    /// Gives the device up without closing it: its pages stay allocated (and granted) for ever.
    fn abandon(self) {
        core::mem::forget(self);
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

/// What the cases share.
struct Ctx {
    domid: DomId,
    peer_dom: DomId,
    peer_mac: Mac,
    v0: RawVif,
    /// TX pages, each granted read-only to the backend: 0 holds a hostile test frame (tag
    /// [`HOSTILE_TAG`]), 1 the liveness frames, 2..=4 the cases' frames, 5 serves as an RX
    /// buffer that is read-only.
    tx_pages: Pages,
    txg: [GrantRef; 6],
    /// RX pages, each granted read-write to the backend.
    rx_pages: Pages,
    rxg: [GrantRef; 3],
    /// A page granted read-write to the peer, not to the backend.
    g_peer: GrantRef,
    _peer_page: Pages,
    next_tag: u32,
    next_id: u16,
}

impl Ctx {
    fn tag(&mut self) -> u32 {
        self.next_tag = self.next_tag.wrapping_add(1);
        self.next_tag
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(7);
        self.next_id
    }

    /// A request to the peer from vif/0, `len` bytes, with a fresh tag.
    fn request(&mut self, len: usize) -> Vec<u8> {
        let tag = self.tag();
        test_frame(self.peer_mac, self.v0.mac, KIND_REQUEST, tag, len)
    }

    /// The echo the peer sends for `frame`.
    fn echo_of(frame: &[u8]) -> Vec<u8> {
        answer(frame, KIND_REPLY)
    }

    /// Writes `bytes` at `offset` of TX page `page`.
    fn put(&self, page: usize, offset: usize, bytes: &[u8]) {
        assert!(page < self.tx_pages.count() && offset + bytes.len() <= PAGE);
        let base = self.tx_pages.as_ptr().wrapping_add(page * PAGE + offset);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: inside TX page `page` (checked above); the backend only reads these pages
            // and does not while no request naming them is unanswered.
            unsafe { core::ptr::write_volatile(base.add(i), *b) };
        }
    }

    /// Reads `len` bytes at `offset` of RX page `page`.
    fn get(&self, page: usize, offset: usize, len: usize) -> Vec<u8> {
        let len = len.min(PAGE.saturating_sub(offset));
        let base = self.rx_pages.as_ptr().wrapping_add(page * PAGE + offset);
        (0..len)
            // SAFETY: inside RX page `page`; the backend wrote it before its response.
            .map(|i| unsafe { core::ptr::read_volatile(base.add(i)) })
            .collect()
    }

    /// Publishes `slots`, and requires one response per slot, in ring order, with the slot's
    /// id and the status in `want` (one per slot).
    fn expect_tx(&mut self, slots: &[NetTxRequest], want: &[i16]) -> Result<(), String> {
        self.v0.transmit(slots)?;
        let got = self.v0.tx_responses(slots.len())?;
        for (i, ((s, w), g)) in slots.iter().zip(want).zip(&got).enumerate() {
            let at = if slots.len() > 1 {
                format!(" (slot {i})")
            } else {
                String::new()
            };
            if g.id != s.id {
                return Err(format!("expected id {:#x}, got {:#x}{at}", s.id, g.id));
            }
            if g.status != *w {
                return Err(format!(
                    "expected {}, got {}{at}",
                    describe(*w),
                    describe(g.status)
                ));
            }
        }
        Ok(())
    }

    /// Requires the next RX response to be buffer `id` (RX page `page`) holding `want`.
    fn expect_rx(&mut self, id: u16, page: usize, want: &[u8]) -> Result<(), String> {
        let r = self.v0.rx_response()?;
        if r.id != id {
            return Err(format!("expected RX id {id:#x}, got {:#x}", r.id));
        }
        if r.status < 0 {
            return Err(format!(
                "expected {} bytes in RX buffer {id:#x}, got {}",
                want.len(),
                describe(r.status)
            ));
        }
        if r.flags != 0 || r.offset != 0 {
            return Err(format!(
                "expected flags 0 offset 0, got flags {:#x} offset {}",
                r.flags, r.offset
            ));
        }
        let got = self.get(page, 0, r.status as usize);
        if got != want {
            return Err(format!(
                "expected the echo of {}, got {}",
                describe_frame(want),
                describe_frame(&got)
            ));
        }
        Ok(())
    }

    /// Requires the next RX response to be buffer `id` refused with `want`.
    fn expect_rx_refused(&mut self, id: u16, want: Errno) -> Result<(), String> {
        let r = self.v0.rx_response()?;
        if r.id != id {
            return Err(format!("expected RX id {id:#x}, got {:#x}", r.id));
        }
        if r.status != st(want) {
            return Err(format!(
                "expected {}, got {}",
                want.name(),
                describe(r.status)
            ));
        }
        if r.flags != 0 {
            return Err(format!("expected flags 0, got {:#x}", r.flags));
        }
        Ok(())
    }

    /// Nothing left over: no response the case did not account for.
    fn settled(&mut self) -> Result<(), String> {
        self.v0.pump()?;
        if let Some(r) = self.v0.txq.front() {
            return Err(format!(
                "expected no more TX responses, got id {:#x} status {}",
                r.id,
                describe(r.status)
            ));
        }
        if let Some(r) = self.v0.rxq.front() {
            return Err(format!(
                "expected no more RX responses, got id {:#x} status {}",
                r.id,
                describe(r.status)
            ));
        }
        Ok(())
    }

    /// Sends `frame` (TX page 1, one slot) and requires status 0 and the peer's echo in RX
    /// buffer [`ALIVE_ID`] (RX page 0), which the caller posted.
    fn round_trip_posted(&mut self, frame: &[u8]) -> Result<(), String> {
        self.put(1, 0, frame);
        let s = slot(self.id(), 0, self.txg[1], 0, frame.len());
        self.expect_tx(&[s], &[0])?;
        self.expect_rx(ALIVE_ID, 0, &Self::echo_of(frame))
    }

    /// A hostile TX case: posts the liveness buffer, publishes `slots` and requires `want`
    /// (one per slot), then requires that a good frame still gets through and that its echo
    /// is the first frame back (so no refused frame reached the peer).
    fn tx_case(&mut self, slots: &[NetTxRequest], want: &[i16]) -> Result<(), String> {
        self.v0.post(&[rx_req(ALIVE_ID, self.rxg[0])])?;
        self.expect_tx(slots, want)?;
        let f = self.request(64);
        self.round_trip_posted(&f)
            .map_err(|e| format!("after the case: {e}"))?;
        self.settled()
    }

    /// A hostile RX case: posts `bad` (whose id is its own) and a good buffer, has the peer
    /// send two frames and requires `bad` answered with `want` (its frame dropped) and the good
    /// buffer to hold the second frame.
    fn rx_case(&mut self, bad: NetRxRequest, want: Errno) -> Result<(), String> {
        let good = self.id();
        self.v0.post(&[bad, rx_req(good, self.rxg[1])])?;
        let first = self.request(100);
        self.put(2, 0, &first);
        let s = slot(self.id(), 0, self.txg[2], 0, first.len());
        self.expect_tx(&[s], &[0])?;
        self.expect_rx_refused(bad.id, want)?;
        let second = self.request(80);
        self.put(3, 0, &second);
        let s = slot(self.id(), 0, self.txg[3], 0, second.len());
        self.expect_tx(&[s], &[0])?;
        self.expect_rx(good, 1, &Self::echo_of(&second))?;
        self.settled()
    }

    /// After a failed case, tries to leave the next one clean rings: drops every response
    /// that comes within a moment, and fills the RX buffers still posted with echoes.
    fn recover(&mut self) {
        for _ in 0..8 {
            let _ = self
                .v0
                .wait(time::monotonic_ns() + 300 * NS_PER_MS, |_| false);
            self.v0.txq.clear();
            self.v0.rxq.clear();
            if self.v0.rx_posted == 0 {
                return;
            }
            let f = self.request(60);
            self.put(1, 0, &f);
            let s = slot(self.id(), 0, self.txg[1], 0, f.len());
            if self.v0.transmit(&[s]).is_err() {
                return;
            }
        }
    }

    /// One slot of the hostile page (TX page 0) at `offset`, `size` bytes, no flags.
    fn hostile(&mut self, offset: usize, size: usize) -> NetTxRequest {
        slot(self.id(), 0, self.txg[0], offset, size)
    }
}

fn slot(id: u16, flags: u16, gref: GrantRef, offset: usize, size: usize) -> NetTxRequest {
    NetTxRequest {
        id,
        flags,
        gref,
        offset: offset as u16,
        size: size as u16,
        pad: 0,
    }
}

fn more(mut s: NetTxRequest) -> NetTxRequest {
    s.flags |= TXF_MORE_DATA;
    s
}

fn rx_req(id: u16, gref: GrantRef) -> NetRxRequest {
    NetRxRequest { id, pad: 0, gref }
}

type CaseFn = fn(&mut Ctx) -> Result<(), String>;

use Errno::{E2BIG, EACCES, EINVAL};

static CASES: &[(&str, CaseFn)] = &[
    // Good frames: status 0 and the peer echoes them.
    ("a good frame in one slot is sent and echoed", |c| {
        let f = c.request(60);
        c.put(2, 0, &f);
        c.v0.post(&[rx_req(ALIVE_ID, c.rxg[0])])?;
        let s = slot(c.id(), 0, c.txg[2], 0, 60);
        c.expect_tx(&[s], &[0])?;
        c.expect_rx(ALIVE_ID, 0, &Ctx::echo_of(&f))?;
        c.settled()
    }),
    ("a good frame in three fragments at odd offsets", |c| {
        let f = c.request(1000);
        // 300 bytes ending exactly at the page's end, 500 at offset 1, 200 in the middle.
        c.put(2, PAGE - 300, &f[..300]);
        c.put(3, 1, &f[300..800]);
        c.put(4, 3000, &f[800..]);
        let slots = [
            more(slot(c.id(), 0, c.txg[2], PAGE - 300, 1000)),
            more(slot(c.id(), 0, c.txg[3], 1, 500)),
            slot(c.id(), 0, c.txg[4], 3000, 200),
        ];
        c.v0.post(&[rx_req(ALIVE_ID, c.rxg[0])])?;
        c.expect_tx(&slots, &[0; 3])?;
        c.expect_rx(ALIVE_ID, 0, &Ctx::echo_of(&f))?;
        c.settled()
    }),
    ("a frame of mtu + 14 = 1514 bytes (the largest)", |c| {
        let f = c.request(1514);
        c.put(2, 0, &f);
        c.v0.post(&[rx_req(ALIVE_ID, c.rxg[0])])?;
        let s = slot(c.id(), 0, c.txg[2], 0, 1514);
        c.expect_tx(&[s], &[0])?;
        c.expect_rx(ALIVE_ID, 0, &Ctx::echo_of(&f))?;
        c.settled()
    }),
    ("a fragment of the last byte of its page", |c| {
        let f = c.request(61);
        c.put(2, 0, &f[..60]);
        c.put(3, PAGE - 1, &f[60..]);
        let slots = [
            more(slot(c.id(), 0, c.txg[2], 0, 61)),
            slot(c.id(), 0, c.txg[3], PAGE - 1, 1),
        ];
        c.v0.post(&[rx_req(ALIVE_ID, c.rxg[0])])?;
        c.expect_tx(&slots, &[0; 2])?;
        c.expect_rx(ALIVE_ID, 0, &Ctx::echo_of(&f))?;
        c.settled()
    }),
    (
        "a 1-byte frame is taken (status 0); the switch drops the runt",
        |c| {
            let s = c.hostile(0, 1);
            c.tx_case(&[s], &[0])
        },
    ),
    // Port security: the switch pins each vif to the MAC the hv gave it.
    (
        "a broadcast from a made-up source MAC is taken (status 0); the switch drops it",
        |c| {
            let f = test_frame([0xff; 6], FORGED_MAC, KIND_REQUEST, HOSTILE_TAG, 64);
            c.put(2, 0, &f);
            let s = slot(c.id(), 0, c.txg[2], 0, f.len());
            c.tx_case(&[s], &[0])
        },
    ),
    (
        "a broadcast from the peer's own MAC is taken (status 0); the switch drops it",
        |c| {
            let f = test_frame([0xff; 6], c.peer_mac, KIND_REQUEST, HOSTILE_TAG, 64);
            c.put(2, 0, &f);
            let s = slot(c.id(), 0, c.txg[2], 0, f.len());
            c.tx_case(&[s], &[0])
        },
    ),
    // Too large: E2BIG.
    ("a frame of mtu + 15 = 1515 bytes: E2BIG", |c| {
        let s = c.hostile(0, 1515);
        c.tx_case(&[s], &[st(E2BIG)])
    }),
    ("a 65535-byte frame in 16 well-formed slots: E2BIG", |c| {
        let mut slots = Vec::new();
        slots.push(more(c.hostile(0, 65535)));
        for k in 0..15 {
            let s = c.hostile(0, PAGE);
            slots.push(if k < 14 { more(s) } else { s });
        }
        c.tx_case(&slots, &[st(E2BIG); 16])
    }),
    (
        "E2BIG comes before EACCES: 1515 bytes in a page never granted",
        |c| {
            let s = slot(c.id(), 0, NEVER, 0, 1515);
            c.tx_case(&[s], &[st(E2BIG)])
        },
    ),
    // Grants the backend cannot use: EACCES.
    ("a grant reference never granted: EACCES", |c| {
        let s = slot(c.id(), 0, NEVER, 0, 60);
        c.tx_case(&[s], &[st(EACCES)])
    }),
    ("a grant reference just past the grant table: EACCES", |c| {
        let s = slot(c.id(), 0, TABLE, 0, 60);
        c.tx_case(&[s], &[st(EACCES)])
    }),
    ("grant reference u32::MAX: EACCES", |c| {
        let s = slot(c.id(), 0, u32::MAX, 0, 60);
        c.tx_case(&[s], &[st(EACCES)])
    }),
    ("a page granted to another domain (the peer): EACCES", |c| {
        let s = slot(c.id(), 0, c.g_peer, 0, 60);
        c.tx_case(&[s], &[st(EACCES)])
    }),
    ("a grant ended before the request: EACCES", |c| {
        let gpa = c.tx_pages.gpa();
        let backend = c.v0.front.backend_id;
        // SAFETY: TX page 0, accessed only through raw pointers; the grant ends at once.
        let g = unsafe { grant::grant_access(gpa, backend, true) }.map_err(|e| format!("{e}"))?;
        grant::end_access(g).map_err(|e| format!("end_access: {e}"))?;
        let s = slot(c.id(), 0, g, 0, 60);
        c.tx_case(&[s], &[st(EACCES)])
    }),
    (
        "a refused grant in the second slot fails the whole packet: EACCES",
        |c| {
            let slots = [more(c.hostile(0, 100)), slot(c.id(), 0, NEVER, 0, 40)];
            c.tx_case(&slots, &[st(EACCES); 2])
        },
    ),
    // Malformed packets: EINVAL.
    ("a fragment crossing its page's end: EINVAL", |c| {
        let s = c.hostile(4000, 200);
        c.tx_case(&[s], &[st(EINVAL)])
    }),
    (
        "a fragment starting past its page (offset 4096): EINVAL",
        |c| {
            let s = c.hostile(PAGE, 1);
            c.tx_case(&[s], &[st(EINVAL)])
        },
    ),
    ("offset 65535: EINVAL", |c| {
        let s = c.hostile(65535, 60);
        c.tx_case(&[s], &[st(EINVAL)])
    }),
    ("an empty packet (size 0): EINVAL", |c| {
        let s = c.hostile(0, 0);
        c.tx_case(&[s], &[st(EINVAL)])
    }),
    ("an empty middle fragment: EINVAL", |c| {
        let slots = [
            more(c.hostile(0, 150)),
            more(c.hostile(100, 0)),
            c.hostile(200, 50),
        ];
        c.tx_case(&slots, &[st(EINVAL); 3])
    }),
    (
        "an empty first fragment (the others fill the size): EINVAL",
        |c| {
            let slots = [more(c.hostile(0, 100)), c.hostile(200, 100)];
            c.tx_case(&slots, &[st(EINVAL); 2])
        },
    ),
    (
        "fragments adding up to more than the first slot's size: EINVAL",
        |c| {
            let slots = [
                more(c.hostile(0, 100)),
                more(c.hostile(200, 60)),
                c.hostile(300, 50),
            ];
            c.tx_case(&slots, &[st(EINVAL); 3])
        },
    ),
    ("an unknown flag (0x2): EINVAL", |c| {
        let mut s = c.hostile(0, 60);
        s.flags = 0x2;
        c.tx_case(&[s], &[st(EINVAL)])
    }),
    ("an unknown flag (0x8000) on the last slot: EINVAL", |c| {
        let mut last = c.hostile(200, 40);
        last.flags = 0x8000;
        let slots = [more(c.hostile(0, 100)), last];
        c.tx_case(&slots, &[st(EINVAL); 2])
    }),
    ("a non-zero reserved field: EINVAL", |c| {
        let mut s = c.hostile(0, 60);
        s.pad = 1;
        c.tx_case(&[s], &[st(EINVAL)])
    }),
    (
        "a non-zero reserved field in the second slot: EINVAL",
        |c| {
            let mut last = c.hostile(200, 40);
            last.pad = 0x8000_0000;
            let slots = [more(c.hostile(0, 100)), last];
            c.tx_case(&slots, &[st(EINVAL); 2])
        },
    ),
    (
        "EINVAL comes before EACCES: a reserved field in a page never granted",
        |c| {
            let mut s = slot(c.id(), 0, NEVER, 0, 60);
            s.pad = 1;
            c.tx_case(&[s], &[st(EINVAL)])
        },
    ),
    (
        "EINVAL comes before E2BIG: 1515 bytes crossing the page's end",
        |c| {
            let s = c.hostile(3000, 1515);
            c.tx_case(&[s], &[st(EINVAL)])
        },
    ),
    (
        "MAX_TX_SLOTS slots all with MORE_DATA: EINVAL, the next slot starts a new packet",
        |c| {
            let mut slots: Vec<NetTxRequest> = (0..MAX_TX_SLOTS)
                .map(|k| more(c.hostile(k * 100, if k == 0 { 1800 } else { 100 })))
                .collect();
            let f = c.request(70);
            c.put(1, 0, &f);
            slots.push(slot(c.id(), 0, c.txg[1], 0, f.len()));
            let mut want = alloc::vec![st(EINVAL); MAX_TX_SLOTS];
            want.push(0);
            c.v0.post(&[rx_req(ALIVE_ID, c.rxg[0])])?;
            c.expect_tx(&slots, &want)?;
            c.expect_rx(ALIVE_ID, 0, &Ctx::echo_of(&f))?;
            c.settled()
        },
    ),
    // Ordering and stalls.
    (
        "packets of one batch: one response per slot, with its id, in ring order",
        |c| {
            let a = c.request(90);
            let b = c.request(91);
            c.put(2, 0, &a);
            c.put(3, 0, &b);
            let mut bad = c.hostile(0, 60);
            bad.pad = 1;
            let slots = [
                slot(0xffff, 0, c.txg[2], 0, a.len()),
                more(NetTxRequest { id: 0, ..bad }),
                NetTxRequest {
                    id: 0,
                    size: 10,
                    ..bad
                },
                slot(0x8001, 0, NEVER, 0, 60),
                slot(0x1234, 0, c.txg[3], 0, b.len()),
            ];
            c.v0.post(&[rx_req(0xbeef, c.rxg[0]), rx_req(1, c.rxg[1])])?;
            c.expect_tx(&slots, &[0, st(EINVAL), st(EINVAL), st(EACCES), 0])?;
            c.expect_rx(0xbeef, 0, &Ctx::echo_of(&a))?;
            c.expect_rx(1, 1, &Ctx::echo_of(&b))?;
            c.settled()
        },
    ),
    (
        "a full TX ring of malformed packets: one response each",
        |c| {
            let slots: Vec<NetTxRequest> = (0..TX_RING_SLOTS as usize)
                .map(|k| {
                    let mut s = slot(k as u16 * 3, 0x4, c.txg[0], 0, 60);
                    s.pad = k as u32;
                    s
                })
                .collect();
            c.tx_case(&slots, &[st(EINVAL); TX_RING_SLOTS as usize])
        },
    ),
    (
        "a packet whose tail is not published stalls only its own ring, then is answered",
        stalled_tail,
    ),
    (
        "a grant ended while its packet waits for its tail: EACCES (checked when gathered)",
        ended_while_waiting,
    ),
    // RX buffers the backend cannot use.
    (
        "an RX buffer never granted: EACCES, its frame dropped",
        |c| {
            let r = rx_req(c.id(), NEVER);
            c.rx_case(r, EACCES)
        },
    ),
    ("an RX buffer with grant reference u32::MAX: EACCES", |c| {
        let r = rx_req(c.id(), u32::MAX);
        c.rx_case(r, EACCES)
    }),
    ("an RX buffer granted read-only: EACCES", |c| {
        let r = rx_req(c.id(), c.txg[5]);
        c.rx_case(r, EACCES)
    }),
    (
        "an RX buffer granted to another domain (the peer): EACCES",
        |c| {
            let r = rx_req(c.id(), c.g_peer);
            c.rx_case(r, EACCES)
        },
    ),
    ("an RX buffer whose grant ended: EACCES", |c| {
        let gpa = c.rx_pages.gpa() + 2 * PAGE_SIZE;
        let backend = c.v0.front.backend_id;
        // SAFETY: RX page 2, accessed only through raw pointers; the grant ends at once.
        let g = unsafe { grant::grant_access(gpa, backend, false) }.map_err(|e| format!("{e}"))?;
        grant::end_access(g).map_err(|e| format!("end_access: {e}"))?;
        let r = rx_req(c.id(), g);
        c.rx_case(r, EACCES)
    }),
    (
        "an RX buffer whose grant ends after it was posted: EACCES",
        |c| {
            let gpa = c.rx_pages.gpa() + 2 * PAGE_SIZE;
            let backend = c.v0.front.backend_id;
            // SAFETY: RX page 2, accessed only through raw pointers; the backend uses it only
            // while a frame is being delivered, and the grant ends before any is.
            let g =
                unsafe { grant::grant_access(gpa, backend, false) }.map_err(|e| format!("{e}"))?;
            let bad = rx_req(c.id(), g);
            let good = c.id();
            c.v0.post(&[bad, rx_req(good, c.rxg[1])])?;
            grant::end_access(g).map_err(|e| format!("expected end_access 0, got {e}"))?;
            let first = c.request(100);
            c.put(2, 0, &first);
            let s = slot(c.id(), 0, c.txg[2], 0, first.len());
            c.expect_tx(&[s], &[0])?;
            c.expect_rx_refused(bad.id, EACCES)?;
            let second = c.request(80);
            c.put(3, 0, &second);
            let s = slot(c.id(), 0, c.txg[3], 0, second.len());
            c.expect_tx(&[s], &[0])?;
            c.expect_rx(good, 1, &Ctx::echo_of(&second))?;
            c.settled()
        },
    ),
    (
        "an RX request with a non-zero reserved field: EINVAL",
        |c| {
            let mut r = rx_req(c.id(), c.rxg[0]);
            r.pad = 1;
            c.rx_case(r, EINVAL)
        },
    ),
    (
        "RX buffers are answered with their ids, in ring order",
        |c| {
            let ids = [0x1234u16, 7, 0xffff];
            let reqs: Vec<NetRxRequest> = ids
                .iter()
                .zip(c.rxg)
                .map(|(&id, g)| rx_req(id, g))
                .collect();
            c.v0.post(&reqs)?;
            let frames: Vec<Vec<u8>> = (0..3).map(|k| c.request(100 + k)).collect();
            let mut slots = Vec::new();
            for (k, f) in frames.iter().enumerate() {
                c.put(2 + k, 0, f);
                slots.push(slot(c.id(), 0, c.txg[2 + k], 0, f.len()));
            }
            c.expect_tx(&slots, &[0; 3])?;
            for (k, f) in frames.iter().enumerate() {
                c.expect_rx(ids[k], k, &Ctx::echo_of(f))?;
            }
            c.settled()
        },
    ),
];

/// A trigger frame and the head of a two-slot packet are published together: the trigger is
/// answered and echoed (the RX side keeps working while the TX ring waits), the head gets no
/// response for a while; once its tail is published, both slots are answered and the whole
/// frame reaches the peer.
fn stalled_tail(c: &mut Ctx) -> Result<(), String> {
    let t = c.request(60);
    let x = c.request(200);
    c.put(2, 0, &t);
    c.put(3, 0, &x[..120]);
    c.put(4, 0, &x[120..]);
    let (tid, hid, lid) = (c.id(), c.id(), c.id());
    c.v0.post(&[rx_req(0x5101, c.rxg[0]), rx_req(0x5102, c.rxg[1])])?;
    c.v0.transmit(&[
        slot(tid, 0, c.txg[2], 0, t.len()),
        more(slot(hid, 0, c.txg[3], 0, x.len())),
    ])?;
    let got = c.v0.tx_responses(1)?;
    if got[0].id != tid || got[0].status != 0 {
        return Err(format!(
            "expected the trigger's id {tid:#x} and 0, got {:#x} and {}",
            got[0].id,
            describe(got[0].status)
        ));
    }
    c.expect_rx(0x5101, 0, &Ctx::echo_of(&t))?;
    let quiet = time::monotonic_ns() + 300 * NS_PER_MS;
    if c.v0.wait(quiet, |v| !v.txq.is_empty())? {
        let r = c.v0.txq[0];
        return Err(format!(
            "expected no response before the tail, got id {:#x} status {}",
            r.id,
            describe(r.status)
        ));
    }
    c.v0.transmit(&[slot(lid, 0, c.txg[4], 0, x.len() - 120)])?;
    let got = c.v0.tx_responses(2)?;
    for (r, id) in got.iter().zip([hid, lid]) {
        if r.id != id || r.status != 0 {
            return Err(format!(
                "expected id {id:#x} and 0, got {:#x} and {}",
                r.id,
                describe(r.status)
            ));
        }
    }
    c.expect_rx(0x5102, 1, &Ctx::echo_of(&x))?;
    c.settled()
}

/// The head of a packet names a page granted for the occasion; the grant ends (the backend
/// does not hold it: only the slot was read) before the tail is published: both slots get
/// `EACCES` and nothing reaches the peer.
fn ended_while_waiting(c: &mut Ctx) -> Result<(), String> {
    let backend = c.v0.front.backend_id;
    // SAFETY: TX page 0 (the hostile frame), accessed only through raw pointers; the grant
    // ends below, before the backend may use it.
    let g = unsafe { grant::grant_access(c.tx_pages.gpa(), backend, true) }
        .map_err(|e| format!("{e}"))?;
    c.v0.post(&[rx_req(ALIVE_ID, c.rxg[0])])?;
    let head = more(slot(c.id(), 0, g, 0, 160));
    c.v0.transmit(&[head])?;
    let quiet = time::monotonic_ns() + 100 * NS_PER_MS;
    if c.v0.wait(quiet, |v| !v.txq.is_empty())? {
        return Err(String::from(
            "expected no response before the tail, got one",
        ));
    }
    grant::end_access(g).map_err(|e| format!("expected end_access 0, got {e}"))?;
    let tail = c.hostile(200, 60);
    c.v0.transmit(&[tail])?;
    let got = c.v0.tx_responses(2)?;
    for (r, id) in got.iter().zip([head.id, tail.id]) {
        if r.id != id || r.status != st(EACCES) {
            return Err(format!(
                "expected id {id:#x} and EACCES, got {:#x} and {}",
                r.id,
                describe(r.status)
            ));
        }
    }
    let f = c.request(64);
    c.round_trip_posted(&f)
        .map_err(|e| format!("after the case: {e}"))?;
    c.settled()
}

fn suite(si: &StartInfo, peer_name: &str) {
    let mut c = match setup(si, peer_name) {
        Ok(c) => c,
        Err(e) => {
            println!("netconf: setup ... FAIL ({e})");
            println!("netconf: 0 passed, 1 failed");
            sched::exit(1);
        }
    };
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut report = |name: &str, r: Result<(), String>| match r {
        Ok(()) => {
            passed += 1;
            println!("netconf: {name} ... ok");
        }
        Err(why) => {
            failed += 1;
            println!("netconf: {name} ... FAIL ({why})");
        }
    };
    for (name, case) in CASES {
        let r = case(&mut c);
        if r.is_err() {
            c.recover();
        }
        report(name, r);
    }
    let (domid, peer_dom, peer_mac) = (c.domid, c.peer_dom, c.peer_mac);
    report(
        "an impossible TX req_prod: the backend closes vif/0 and releases its rings",
        broken_tx(c),
    );
    report(
        "an impossible RX req_prod: the backend closes vif/1 when a frame comes",
        broken_rx(peer_mac),
    );
    for (n, name, how) in [
        (3, "TX and RX rings on one page", Handshake::SamePage),
        (4, "a ring page granted read-only", Handshake::ReadOnlyRing),
        (5, "a ring reference never granted", Handshake::NeverGranted),
        (
            6,
            "an event channel allocated for another domain",
            Handshake::ForeignPort(peer_dom),
        ),
    ] {
        report(
            &format!("connecting vif/{n} with {name}: the backend refuses (Closed)"),
            refused_connect(n, how),
        );
    }
    report(
        "the peer is unharmed: a fresh vif/2 exchanges frames with it, and it says bye",
        fresh_interface(domid, peer_mac),
    );
    println!("netconf: {passed} passed, {failed} failed");
    sched::exit(if failed == 0 { 0 } else { 1 });
}

fn setup(si: &StartInfo, peer_name: &str) -> Result<Ctx, String> {
    let deadline = time::monotonic_ns() + 30 * NS_PER_SEC;
    let peer_dom = store::find_domain(peer_name, deadline)
        .map_err(|e| format!("finding domain {peer_name:?}: {e}"))?;
    let v0 = RawVif::connect(0)?;
    // The peer publishes its MAC once its interface is up.
    let key = format!("/local/domain/{peer_dom}/{READY_KEY}");
    let peer_mac = loop {
        match store::read(&key) {
            Ok(Some(OwnedValue::Bytes(b))) if b.len() == MAC_LEN => {
                let mut m = [0u8; MAC_LEN];
                m.copy_from_slice(&b);
                break m;
            }
            // Not there yet, or not readable yet (its perms are set after it is written).
            Err(e) if e.is(Errno::ENOENT) || e.is(Errno::EACCES) => {}
            other => return Err(format!("{key}: {other:?}")),
        }
        if time::monotonic_ns() >= deadline {
            return Err(format!("the peer did not come up ({key})"));
        }
        time::sleep(20 * NS_PER_MS);
    };
    let backend = v0.front.backend_id;
    let tx_pages = Pages::zeroed(6).map_err(|e| format!("pages: {e}"))?;
    let rx_pages = Pages::zeroed(3).map_err(|e| format!("pages: {e}"))?;
    let peer_page = Pages::zeroed(1).map_err(|e| format!("pages: {e}"))?;
    let give = |gpa: u64, to: DomId, ro: bool| {
        // SAFETY: these pages are accessed only through raw pointers (volatile) and are kept
        // for the whole run (the grants are never ended).
        unsafe { grant::grant_access(gpa, to, ro) }.map_err(|e| format!("grant: {e}"))
    };
    let mut txg = [0; 6];
    for (i, g) in txg.iter_mut().enumerate() {
        *g = give(tx_pages.gpa() + (i * PAGE) as u64, backend, true)?;
    }
    let mut rxg = [0; 3];
    for (i, g) in rxg.iter_mut().enumerate() {
        *g = give(rx_pages.gpa() + (i * PAGE) as u64, backend, false)?;
    }
    let g_peer = give(peer_page.gpa(), peer_dom, false)?;
    if txg.iter().chain(&rxg).any(|&g| g == NEVER) || g_peer == NEVER {
        return Err(String::from("the grant table is nearly full"));
    }
    let c = Ctx {
        domid: si.domid,
        peer_dom,
        peer_mac,
        v0,
        tx_pages,
        txg,
        rx_pages,
        rxg,
        g_peer,
        _peer_page: peer_page,
        next_tag: 0x100,
        next_id: 0,
    };
    // The hostile page: a whole page of one test frame to the peer, which the peer reports if
    // it ever receives any part of it.
    let f = test_frame(c.peer_mac, c.v0.mac, KIND_REQUEST, HOSTILE_TAG, PAGE);
    c.put(0, 0, &f);
    println!(
        "netconf: vif/0 connected by hand (mac {}); peer is domain {} (mac {}), tag frames 0x88b5",
        fmt_mac(&c.v0.mac),
        c.peer_dom,
        fmt_mac(&c.peer_mac)
    );
    Ok(c)
}

fn fmt_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Waits for `front`'s backend to reach `Closed`, then ends the ring grants: they must not be
/// held any more (Closed means released).
fn closed_and_released(v: &RawVif) -> Result<(), String> {
    let deadline = time::monotonic_ns() + STEP_NS;
    let state = v
        .front
        .wait_backend(deadline, |s| s == DeviceState::Closed)
        .map_err(|e| format!("expected backend state Closed, got {e}"))?;
    if state != DeviceState::Closed {
        return Err(format!("expected backend state Closed, got {state:?}"));
    }
    for (what, g) in [("TX", v.tx_ref), ("RX", v.rx_ref)] {
        grant::end_access(g).map_err(|e| {
            format!("expected the {what} ring page released (end_access 0), got {e}")
        })?;
    }
    Ok(())
}

/// Moves vif/0's TX `req_prod` 1000 slots ahead (the ring has 128) and notifies.
fn broken_tx(c: Ctx) -> Result<(), String> {
    let v = c.v0;
    v.set_req_prod(0, |p| p.wrapping_add(1000));
    v.notify()?;
    let r = closed_and_released(&v);
    let _ = v.front.set_state(DeviceState::Closed);
    v.abandon();
    // The other pages stay granted and allocated: the run ends soon.
    core::mem::forget(c.tx_pages);
    core::mem::forget(c.rx_pages);
    core::mem::forget(c._peer_page);
    r
}

/// Connects vif/1 by hand, moves its RX `req_prod` 1000 slots ahead (the ring has 256) and
/// sends the peer a request: the TX side still answers; the echo makes the backend look at the
/// RX ring and close the device.
fn broken_rx(peer_mac: Mac) -> Result<(), String> {
    let mut v = RawVif::connect(1)?;
    let page = Pages::zeroed(1).map_err(|e| format!("pages: {e}"))?;
    // SAFETY: the page is accessed only through raw pointers and never freed (forgotten below).
    let g = unsafe { grant::grant_access(page.gpa(), v.front.backend_id, true) }
        .map_err(|e| format!("grant: {e}"))?;
    let f = test_frame(peer_mac, v.mac, KIND_REQUEST, 0x7777, 64);
    for (i, b) in f.iter().enumerate() {
        // SAFETY: inside the page; the backend reads it only while the request is unanswered.
        unsafe { core::ptr::write_volatile(page.as_ptr().add(i), *b) };
    }
    core::mem::forget(page);
    v.set_req_prod(1, |p| p.wrapping_add(1000));
    let id = 0x0101;
    v.transmit(&[slot(id, 0, g, 0, f.len())])?;
    let got = v.tx_responses(1)?;
    if got[0].id != id || got[0].status != 0 {
        return Err(format!(
            "expected id {id:#x} status 0 on vif/{}, got {:#x} {}",
            v.n,
            got[0].id,
            describe(got[0].status)
        ));
    }
    let r = closed_and_released(&v);
    let _ = v.front.set_state(DeviceState::Closed);
    v.abandon();
    r
}

/// Does vif/`n`'s handshake as `how` says (one thing wrong in it): the backend must move to
/// `Closed` and hold none of the pages.
fn refused_connect(n: u32, how: Handshake) -> Result<(), String> {
    let (v, state) = RawVif::open(n, how)?;
    let r = if state == DeviceState::Closed {
        let mut ended = Ok(());
        for g in [v.tx_ref, v.rx_ref] {
            if g != NEVER && grant::end_access(g).is_err() && ended.is_ok() {
                ended = Err(format!(
                    "expected ring grant {g} released, got it still held"
                ));
            }
            if v.tx_ref == v.rx_ref {
                break;
            }
        }
        ended
    } else {
        Err(format!("expected backend state Closed, got {state:?}"))
    };
    let _ = v.front.set_state(DeviceState::Closed);
    v.abandon();
    r
}

/// Opens vif/2 with `pv_drivers`' frontend, exchanges a request and its echo with the peer,
/// then says bye and waits for the answer.
fn fresh_interface(domid: DomId, peer_mac: Mac) -> Result<(), String> {
    let cfg = vif::Config {
        tx_pages: MAX_TX_SLOTS as u32,
        rx_buffers: 32,
        ..vif::Config::default()
    };
    let mut dev = NetDevice::open_with(2, cfg).map_err(|e| format!("vif/2: {e}"))?;
    let me = dev.mac();
    let hello = test_frame(peer_mac, me, KIND_REQUEST, 0x2000 + u32::from(domid), 300);
    let bye = test_frame(peer_mac, me, KIND_BYE, 0xb1e, 60);
    let mut buf = alloc::vec![0u8; dev.max_frame()];
    for (frame, kind) in [(&hello, KIND_REPLY), (&bye, KIND_BYE_ACK)] {
        dev.send(frame).map_err(|e| format!("vif/2 send: {e}"))?;
        let want = answer(frame, kind);
        let deadline = time::monotonic_ns() + STEP_NS;
        loop {
            match dev.recv(&mut buf).map_err(|e| format!("vif/2: {e}"))? {
                Some(n) if buf[..n] == want[..] => break,
                Some(n) => {
                    return Err(format!(
                        "expected {}, got {}",
                        describe_frame(&want),
                        describe_frame(&buf[..n])
                    ))
                }
                None => {
                    if !dev.wait(deadline).map_err(|e| format!("vif/2: {e}"))? {
                        return Err(format!(
                            "expected {}, got nothing within {} s",
                            describe_frame(&want),
                            STEP_NS / NS_PER_SEC
                        ));
                    }
                }
            }
        }
    }
    dev.close().map_err(|e| format!("vif/2 close: {e}"))
}
