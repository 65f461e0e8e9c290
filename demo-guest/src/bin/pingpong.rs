//! Two domains exchange messages over a shared ring: `ping`, the frontend, sends requests, and
//! `pong`, the backend, answers each one. Run both with `cargo xtask run pingpong`
//! (`examples/pingpong.toml`); `cargo xtask bench interdomain` measures them.
//!
//! Command line (space-separated `key=value`):
//!
//! | key | values | meaning |
//! | --- | --- | --- |
//! | `role` | `ping`, `pong` | required: which end this domain is |
//! | `peer` | a domain name | the other domain's name (default `pong` for ping, `ping` for pong) |
//! | `count` | N | messages each way (default 100000) |
//! | `notify` | `suppress`, `always` | `suppress` (default): batch, and notify only when the ring's event index asks; `always`: publish and notify every message |
//! | `batch` | N | most requests in flight (default: the ring's size); `batch=1` waits for each reply and reports the round-trip latency |
//! | `bench` | `0`, `1` | `1`: also print machine-readable `bench ...` lines (for `cargo xtask bench interdomain`) |
//!
//! `count`, `notify` and `batch` are ping's: it publishes them in the store, and pong follows
//! them (pong's own values are ignored).
//!
//! Set-up goes through the store, the way split devices do (see `hypercall_abi::store`, §8):
//! 1. each side finds the other by name (`store::find_domain`);
//! 2. ping allocates a ring page, initialises a `FrontRing<Msg, Msg>` in it, grants it
//!    read-write to pong, allocates an unbound event channel for pong, and publishes
//!    `ring-ref`, `event-channel` and its parameters in `/local/domain/<ping>/device/pingpong/0`
//!    (readable by pong), then moves its `state` to `Initialised`;
//! 3. pong publishes `/local/domain/<pong>/backend/pingpong/<ping>/0` (readable by ping),
//!    watches ping's `state`, then maps the ring, binds the event channel and moves its own
//!    `state` to `Connected`; ping, watching that, moves to `Connected` and starts.
//!
//! Each message carries a sequence number, a payload derived from it and a checksum; each side
//! checks order, payload and checksum, and exits with code 1 on a mismatch. Waiting is
//! `sched_op(poll)` on the (masked) event channel, never a spin. At the end both print
//!
//! ```text
//! pingpong: N messages each way in X ms: M msgs/s
//! pingpong: events sent S
//! ```
//!
//! (ping adds the round-trip latency with `batch=1`), plus `bench ...` lines with `bench=1`; then
//! ping moves to `Closing`, pong unmaps the ring, closes its port and moves to `Closed`, ping
//! ends its grant, closes its port and moves to `Closed`, and both power off with code 0.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_sdk::abi::evtchn::state as port_state;
use guest_sdk::abi::ring::{BackRing, FrontRing, RingError};
use guest_sdk::abi::store::{backend_dir, frontend_dir, key};
use guest_sdk::abi::{DomId, Errno, Features, PAGE_SIZE};
use guest_sdk::events::{self, Port};
use guest_sdk::grant::{self, GrantRef, Mapping};
use guest_sdk::heap::Pages;
use guest_sdk::store::{self, Access, DeviceState, OwnedValue, Perms, Value};
use guest_sdk::time::{self, NS_PER_MS, NS_PER_SEC};
use guest_sdk::{println, sched, Error, StartInfo};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

guest_sdk::entry!(
    main,
    required_features = Features::INTERDOMAIN
        .union(Features::GRANT_TABLES)
        .union(Features::STORE)
);

/// The device class in the store.
const CLASS: &str = "pingpong";
/// Default messages each way.
const DEFAULT_COUNT: u64 = 100_000;
/// How long set-up and tear-down steps may wait for the peer.
const SETUP_TIMEOUT_NS: u64 = 20 * NS_PER_SEC;
/// How long the exchange may go without progress before giving up.
const IDLE_TIMEOUT_NS: u64 = 30 * NS_PER_SEC;
/// How often a waiting side checks that its peer is still connected.
const LIVENESS_NS: u64 = NS_PER_SEC;
/// The watch token of the peer's `state`.
const STATE_TOKEN: u32 = 1;
/// Extra keys ping publishes for pong.
const KEY_COUNT: &str = "count";
const KEY_NOTIFY: &str = "notify-always";
const KEY_BATCH: &str = "batch";

/// One message, request or response: 32 bytes, so a page holds 64 of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Msg {
    /// Sequence number, 0, 1, 2, ... in each direction.
    seq: u64,
    /// Data derived from `seq` (and, in a response, from the request's data).
    payload: [u64; 2],
    /// Checksum of `seq` and `payload`.
    sum: u64,
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of a word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn checksum(seq: u64, payload: &[u64; 2]) -> u64 {
    mix(seq ^ mix(payload[0] ^ mix(payload[1].wrapping_add(0x9e37_79b9_7f4a_7c15))))
}

fn sealed(seq: u64, payload: [u64; 2]) -> Msg {
    Msg {
        seq,
        payload,
        sum: checksum(seq, &payload),
    }
}

/// Request `seq`.
fn request(seq: u64) -> Msg {
    sealed(seq, [mix(seq), mix(!seq)])
}

/// The answer to `req`: its payload transformed, so the backend really reads it.
fn response(req: &Msg) -> Msg {
    sealed(req.seq, [!req.payload[1], req.payload[0].rotate_left(17)])
}

/// Checks that `m` is the `want`-th message of its direction and is intact.
fn check(m: &Msg, want: &Msg, what: &str) -> Result<(), Fail> {
    if m.sum != checksum(m.seq, &m.payload) {
        return Err(Fail::Data(format!(
            "{what} {}: bad checksum (got {m:?})",
            want.seq
        )));
    }
    if m.seq != want.seq {
        return Err(Fail::Data(format!(
            "{what} out of order: expected seq {}, got {}",
            want.seq, m.seq
        )));
    }
    if m != want {
        return Err(Fail::Data(format!(
            "{what} {}: wrong payload {:x?}, expected {:x?}",
            want.seq, m.payload, want.payload
        )));
    }
    Ok(())
}

/// Why the exchange failed.
#[derive(Debug)]
enum Fail {
    /// A call failed.
    Call(&'static str, Error),
    /// The ring broke.
    Ring(&'static str, RingError),
    /// A message was wrong.
    Data(String),
    /// The peer did not do its part in time, or went away.
    Peer(String),
}

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Fail::Call(what, e) => write!(f, "{what}: {e}"),
            Fail::Ring(what, e) => write!(f, "{what}: {e}"),
            Fail::Data(s) | Fail::Peer(s) => f.write_str(s),
        }
    }
}

/// Adds context to a failed SDK call.
trait Context<T> {
    fn ctx(self, what: &'static str) -> Result<T, Fail>;
}

impl<T> Context<T> for Result<T, Error> {
    fn ctx(self, what: &'static str) -> Result<T, Fail> {
        self.map_err(|e| Fail::Call(what, e))
    }
}

impl<T> Context<T> for Result<T, RingError> {
    fn ctx(self, what: &'static str) -> Result<T, Fail> {
        self.map_err(|e| Fail::Ring(what, e))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Ping,
    Pong,
}

/// What the exchange does.
#[derive(Clone, Copy, Debug)]
struct Params {
    count: u64,
    always: bool,
    /// Most requests in flight (0: the ring's size).
    batch: u64,
}

struct Options<'a> {
    role: Role,
    peer: &'a str,
    params: Params,
    /// Print `bench ...` lines.
    bench: bool,
}

fn parse(cmdline: &str) -> Result<Options<'_>, String> {
    let mut role = None;
    let mut peer = None;
    let mut bench = false;
    let mut params = Params {
        count: DEFAULT_COUNT,
        always: false,
        batch: 0,
    };
    for word in cmdline.split_whitespace() {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        let number = || {
            v.parse::<u64>()
                .map_err(|_| format!("`{k}` wants a number, not `{v}`"))
        };
        match k {
            "role" => {
                role = Some(match v {
                    "ping" => Role::Ping,
                    "pong" => Role::Pong,
                    _ => return Err(format!("role must be ping or pong, not `{v}`")),
                })
            }
            "peer" => peer = Some(v),
            "count" => params.count = number()?,
            "batch" => params.batch = number()?,
            "bench" => bench = number()? != 0,
            "notify" => {
                params.always = match v {
                    "always" => true,
                    "suppress" => false,
                    _ => return Err(format!("notify must be always or suppress, not `{v}`")),
                }
            }
            _ => return Err(format!("unknown option `{k}`")),
        }
    }
    let role = role.ok_or("role=ping or role=pong is required")?;
    let peer = peer.unwrap_or(match role {
        Role::Ping => "pong",
        Role::Pong => "ping",
    });
    Ok(Options {
        role,
        peer,
        params,
        bench,
    })
}

fn main(si: &StartInfo) {
    let opts = match parse(si.cmdline()) {
        Ok(o) => o,
        Err(e) => {
            println!("pingpong: bad command line: {e}");
            guest_sdk::exit(2);
        }
    };
    let r = match opts.role {
        Role::Ping => ping(si.domid, opts.peer, opts.params, opts.bench),
        Role::Pong => pong(si.domid, opts.peer, opts.bench),
    };
    if let Err(e) = r {
        println!("pingpong: FAILED: {e}");
        guest_sdk::exit(1);
    }
}

fn deadline(ns: u64) -> u64 {
    time::monotonic_ns().saturating_add(ns)
}

fn store_path(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

/// Reads a `U64` key the peer published.
fn read_u64(path: &str) -> Result<u64, Fail> {
    match store::read(path).ctx("store read")? {
        Some(OwnedValue::U64(n)) => Ok(n),
        other => Err(Fail::Peer(format!(
            "{path}: expected a U64, found {other:?}"
        ))),
    }
}

/// Waits (watching `path`, which the caller watches with [`STATE_TOKEN`]) until the state at
/// `path` satisfies `done`; fails if it satisfies `broken` or the deadline passes. A missing
/// (or not yet readable) key counts as [`DeviceState::Unknown`]: not there yet during set-up,
/// or gone with its domain at the end.
fn wait_state(
    path: &str,
    done: impl Fn(DeviceState) -> bool,
    broken: impl Fn(DeviceState) -> bool,
) -> Result<DeviceState, Fail> {
    let until = deadline(SETUP_TIMEOUT_NS);
    loop {
        let state = match store::read(path) {
            Ok(Some(OwnedValue::State(s))) => s,
            Ok(other) => return Err(Fail::Peer(format!("{path} holds {other:?}"))),
            Err(Error::Errno(Errno::ENOENT | Errno::EACCES)) => DeviceState::Unknown,
            Err(e) => return Err(Fail::Call("store read", e)),
        };
        if done(state) {
            return Ok(state);
        }
        if broken(state) {
            return Err(Fail::Peer(format!("{path} is {state:?}")));
        }
        if store::wait_event(until).ctx("store wait")?.is_none() {
            return Err(Fail::Peer(format!("timed out waiting for {path}")));
        }
    }
}

fn set_state(dir: &str, s: DeviceState) -> Result<(), Fail> {
    store::write(&store_path(dir, key::STATE), Value::State(s)).ctx("store write state")
}

/// Creates `dir` (owned by `me`) readable by `peer`, before anything is written in it.
fn make_dir(dir: &str, me: DomId, peer: DomId) -> Result<(), Fail> {
    match store::mkdir(dir) {
        Ok(()) | Err(Error::Errno(Errno::EEXIST)) => {}
        Err(e) => return Err(Fail::Call("store mkdir", e)),
    }
    let mut perms = Perms::owned_by(me);
    perms
        .grant(peer, Access::Read)
        .map_err(|e| Fail::Call("perms", e.into()))?;
    store::set_perms(dir, &perms).ctx("store set_perms")
}

fn find_peer(name: &str, me: DomId) -> Result<DomId, Fail> {
    let peer = store::find_domain(name, deadline(SETUP_TIMEOUT_NS)).ctx("find_domain")?;
    if peer == me {
        return Err(Fail::Peer(format!("the peer `{name}` is this domain")));
    }
    Ok(peer)
}

/// Waits for an event on the masked `port`: `sched_op(poll)` with a deadline, checking that the
/// peer is still connected and that the exchange made progress recently.
fn wait_port(port: Port, last_progress: u64) -> Result<(), Fail> {
    match sched::poll(&[port], deadline(LIVENESS_NS)) {
        Ok(()) => Ok(()),
        Err(Error::Errno(Errno::ETIMEDOUT)) => {
            let st = events::status(port).ctx("evtchn status")?;
            if st.state != port_state::INTERDOMAIN {
                return Err(Fail::Peer("the peer closed its event channel".into()));
            }
            if time::monotonic_ns().saturating_sub(last_progress) > IDLE_TIMEOUT_NS {
                return Err(Fail::Peer(format!(
                    "no progress for {} s",
                    IDLE_TIMEOUT_NS / NS_PER_SEC
                )));
            }
            Ok(())
        }
        Err(e) => Err(Fail::Call("sched_op(poll)", e)),
    }
}

fn notify(port: Port, sent: &mut u64) -> Result<(), Fail> {
    *sent += 1;
    events::send(port).ctx("evtchn send")
}

/// `(median, p10, p90)` of `v`, sorted in place.
fn percentiles(v: &mut [u64]) -> (u64, u64, u64) {
    v.sort_unstable();
    let at = |p: usize| v.get((v.len() * p / 100).min(v.len().saturating_sub(1)));
    let get = |p| at(p).copied().unwrap_or(0);
    (get(50), get(10), get(90))
}

fn report(role: &str, count: u64, ns: u64, events_sent: u64, bench: bool) {
    let ns = ns.max(1);
    let rate = u128::from(count) * u128::from(NS_PER_SEC) / u128::from(ns);
    println!(
        "pingpong: {count} messages each way in {}.{:03} ms: {rate} msgs/s",
        ns / NS_PER_MS,
        ns % NS_PER_MS / 1000
    );
    println!("pingpong: events sent {events_sent}");
    if bench {
        println!("bench pingpong_{role} n={count} ns={ns} events={events_sent}");
    }
}

/// The frontend.
fn ping(me: DomId, peer_name: &str, params: Params, bench: bool) -> Result<(), Fail> {
    let peer = find_peer(peer_name, me)?;
    let dir = frontend_dir(me, CLASS, 0).ctx_store()?;
    let back_dir = backend_dir(peer, me, CLASS, 0).ctx_store()?;
    make_dir(&dir, me, peer)?;
    set_state(&dir, DeviceState::Initialising)?;

    let page = Pages::zeroed(1).ctx("allocating the ring page")?;
    // SAFETY: `page` is one page, 8-byte aligned, owned by this function until after the grant
    // ends, and accessed only through this ring (atomically) and by pong.
    let mut ring = unsafe { FrontRing::<Msg, Msg>::new(page.as_ptr(), PAGE_SIZE as usize) }
        .ctx("ring set-up")?;
    // SAFETY: the page holds only the ring, accessed atomically; it is not freed before the
    // grant ends (`end_access` or `revoke` below, before `page` is dropped).
    let gref = unsafe { grant::grant_access(page.gpa(), peer, false) }.ctx("grant_access")?;
    let port = events::alloc_unbound(peer).ctx("alloc_unbound")?;
    events::mask(port).ctx("evtchn mask")?;

    let w = |k: &str, v: Value<'_>| store::write(&store_path(&dir, k), v).ctx("store write");
    w(key::BACKEND, Value::Str(&back_dir))?;
    w(key::BACKEND_ID, Value::U64(u64::from(peer)))?;
    w(key::RING_REF, Value::U64(u64::from(gref)))?;
    w(key::EVENT_CHANNEL, Value::U64(u64::from(port)))?;
    w(KEY_COUNT, Value::U64(params.count))?;
    w(KEY_NOTIFY, Value::Bool(params.always))?;
    w(KEY_BATCH, Value::U64(params.batch))?;
    set_state(&dir, DeviceState::Initialised)?;

    let peer_state = store_path(&back_dir, key::STATE);
    store::watch(&peer_state, STATE_TOKEN).ctx("store watch")?;
    wait_state(
        &peer_state,
        |s| s == DeviceState::Connected,
        |s| matches!(s, DeviceState::Closing | DeviceState::Closed),
    )?;
    set_state(&dir, DeviceState::Connected)?;
    let mode = if params.always { "always" } else { "suppress" };
    let inflight = match params.batch {
        0 => u64::from(ring.size()),
        b => b.min(u64::from(ring.size())),
    };
    println!(
        "pingpong: ping (domain {me}) -> pong (domain {peer}): ring-ref {gref}, port {port}, {} slots, {} in flight, notify={mode}, count={}",
        ring.size(),
        inflight,
        params.count
    );

    let (ns, sent, mut rtts) = run_front(&mut ring, port, params.count, params.always, inflight)?;
    report("ping", params.count, ns, sent, bench);
    if !rtts.is_empty() {
        let n = rtts.len();
        let (med, p10, p90) = percentiles(&mut rtts);
        println!(
            "pingpong: round trip median {}.{:01} us (p10 {} us, p90 {} us) over {n}",
            med / 1000,
            med % 1000 / 100,
            p10 / 1000,
            p90 / 1000
        );
        if bench {
            println!("bench rtt_ns median={med} p10={p10} p90={p90} n={n}");
        }
    }

    // Tear down: ask pong to close, wait until it has unmapped, then withdraw everything.
    set_state(&dir, DeviceState::Closing)?;
    // Closed, or gone: pong may power off (and its home be removed) before we look.
    let closed = wait_state(
        &peer_state,
        |s| matches!(s, DeviceState::Closed | DeviceState::Unknown),
        |_| false,
    );
    let ended = match grant::end_access(gref) {
        Ok(()) => Ok(()),
        // Pong did not unmap (it failed or timed out): take the page back by force.
        Err(Error::Errno(Errno::EBUSY)) => grant::revoke(gref).map(drop),
        Err(e) => Err(e),
    };
    ended.ctx("end_access")?;
    // Pong has no access any more: the page can go (the ring is not used after this).
    drop(page);
    events::close(port).ctx("evtchn close")?;
    store::unwatch(&peer_state, STATE_TOKEN).ctx("store unwatch")?;
    set_state(&dir, DeviceState::Closed)?;
    closed.map(drop)
}

/// Ping's exchange: returns (elapsed ns, notifications sent, round-trip samples if one at a
/// time).
fn run_front(
    ring: &mut FrontRing<Msg, Msg>,
    port: Port,
    count: u64,
    always: bool,
    inflight: u64,
) -> Result<(u64, u64, Vec<u64>), Fail> {
    let one_at_a_time = inflight == 1;
    let mut rtts = Vec::new();
    if one_at_a_time {
        rtts.reserve_exact(usize::try_from(count).unwrap_or(0));
    }
    let (mut sent, mut received, mut notifies) = (0u64, 0u64, 0u64);
    let mut t_sent = 0;
    let start = time::monotonic_ns();
    let mut progress = start;
    while received < count {
        events::clear_pending(port);
        let mut pushed = 0;
        while sent < count && sent - received < inflight {
            ring.push_request(&request(sent)).ctx("push request")?;
            sent += 1;
            pushed += 1;
            if one_at_a_time {
                t_sent = time::monotonic_ns();
            }
            if always {
                ring.push_requests_and_check_notify();
                notify(port, &mut notifies)?;
            }
        }
        if pushed > 0 && !always && ring.push_requests_and_check_notify() {
            notify(port, &mut notifies)?;
        }
        let mut got = 0;
        while let Some(rsp) = ring.poll_response().ctx("poll response")? {
            check(&rsp, &response(&request(received)), "response")?;
            if one_at_a_time {
                rtts.push(time::monotonic_ns() - t_sent);
            }
            received += 1;
            got += 1;
        }
        if got > 0 {
            progress = time::monotonic_ns();
        } else if pushed == 0 && !ring.final_check_for_responses().ctx("final check")? {
            wait_port(port, progress)?;
        }
    }
    Ok((time::monotonic_ns() - start, notifies, rtts))
}

/// The backend.
fn pong(me: DomId, peer_name: &str, bench: bool) -> Result<(), Fail> {
    let peer = find_peer(peer_name, me)?;
    let front_dir = frontend_dir(peer, CLASS, 0).ctx_store()?;
    let dir = backend_dir(me, peer, CLASS, 0).ctx_store()?;
    make_dir(&dir, me, peer)?;
    let w = |k: &str, v: Value<'_>| store::write(&store_path(&dir, k), v).ctx("store write");
    w(key::FRONTEND, Value::Str(&front_dir))?;
    w(key::FRONTEND_ID, Value::U64(u64::from(peer)))?;
    set_state(&dir, DeviceState::InitWait)?;

    let peer_state = store_path(&front_dir, key::STATE);
    store::watch(&peer_state, STATE_TOKEN).ctx("store watch")?;
    wait_state(
        &peer_state,
        |s| matches!(s, DeviceState::Initialised | DeviceState::Connected),
        |s| matches!(s, DeviceState::Closing | DeviceState::Closed),
    )?;
    let r = |k: &str| read_u64(&store_path(&front_dir, k));
    let gref = GrantRef::try_from(r(key::RING_REF)?)
        .map_err(|_| Fail::Peer("ring-ref out of range".into()))?;
    let their_port = Port::try_from(r(key::EVENT_CHANNEL)?)
        .map_err(|_| Fail::Peer("event-channel out of range".into()))?;
    let count = r(KEY_COUNT)?;
    let always = match store::read(&store_path(&front_dir, KEY_NOTIFY)).ctx("store read")? {
        Some(OwnedValue::Bool(b)) => b,
        other => return Err(Fail::Peer(format!("{KEY_NOTIFY}: {other:?}"))),
    };

    let map: Mapping = grant::map(peer, gref, false).ctx("grant map")?;
    // SAFETY: the mapping is one page (8-byte aligned) shared with ping, accessed only through
    // this ring (atomically), which is not used after the page is unmapped below.
    let mut ring = unsafe { BackRing::<Msg, Msg>::new(map.as_ptr(), PAGE_SIZE as usize) }
        .ctx("ring attach")?;
    let port = events::bind_interdomain(peer, their_port).ctx("bind_interdomain")?;
    events::mask(port).ctx("evtchn mask")?;
    set_state(&dir, DeviceState::Connected)?;
    println!(
        "pingpong: pong (domain {me}) <- ping (domain {peer}): ring-ref {gref}, port {port}, count={count}"
    );

    let (ns, sent) = run_back(&mut ring, port, count, always)?;
    report("pong", count, ns, sent, bench);

    // Tear down when ping asks (or is gone): unmap, close, say so.
    wait_state(
        &peer_state,
        |s| {
            matches!(
                s,
                DeviceState::Closing | DeviceState::Closed | DeviceState::Unknown
            )
        },
        |_| false,
    )?;
    // The ring is not used after this: the page leaves our window.
    map.unmap().ctx("grant unmap")?;
    events::close(port).ctx("evtchn close")?;
    set_state(&dir, DeviceState::Closed)?;
    store::unwatch(&peer_state, STATE_TOKEN).ctx("store unwatch")
}

/// Pong's exchange: returns (ns from the first request to the last response, notifications).
fn run_back(
    ring: &mut BackRing<Msg, Msg>,
    port: Port,
    count: u64,
    always: bool,
) -> Result<(u64, u64), Fail> {
    let (mut received, mut notifies) = (0u64, 0u64);
    let mut start = None;
    let mut progress = time::monotonic_ns();
    while received < count {
        events::clear_pending(port);
        let mut got = 0;
        while received < count {
            let Some(req) = ring.poll_request().ctx("poll request")? else {
                break;
            };
            start.get_or_insert_with(time::monotonic_ns);
            check(&req, &request(received), "request")?;
            ring.push_response(&response(&req)).ctx("push response")?;
            received += 1;
            got += 1;
            if always {
                ring.push_responses_and_check_notify();
                notify(port, &mut notifies)?;
            }
        }
        if got > 0 {
            progress = time::monotonic_ns();
            if !always && ring.push_responses_and_check_notify() {
                notify(port, &mut notifies)?;
            }
        } else if !ring.final_check_for_requests().ctx("final check")? {
            wait_port(port, progress)?;
        }
    }
    let ns = time::monotonic_ns() - start.unwrap_or_else(time::monotonic_ns);
    Ok((ns, notifies))
}

/// Store path builders fail only for a bad class name, which is a constant here.
trait StoreCtx<T> {
    fn ctx_store(self) -> Result<T, Fail>;
}

impl<T> StoreCtx<T> for Result<T, guest_sdk::abi::store::StoreError> {
    fn ctx_store(self) -> Result<T, Fail> {
        self.map_err(|e| Fail::Call("store path", e.into()))
    }
}
