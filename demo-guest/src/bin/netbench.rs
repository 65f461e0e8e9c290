//! The network benchmark guest (`cargo xtask bench net`): TCP throughput, UDP packets per
//! second and UDP round trips between two guests, or between a guest and the host, over one
//! network interface and smoltcp.
//!
//! Command line (space-separated `key=value`):
//!
//! | key | values | meaning |
//! | --- | --- | --- |
//! | `role` | `sink`, `source` | required: the sink answers, the source drives and times |
//! | `test` | `tcp`, `udp`, `rtt`, `none` | required: what to measure (`none`: connect only) |
//! | `nic` | `pv`, `ne2k` | the paravirtual `vif/0` (default), or the hv's emulated NE2000 card (`hv --emulated-net`) |
//! | `ip` | `A.B.C.D` | this guest's address (a /24) |
//! | `peer` | `A.B.C.D` | source only: the sink's address |
//! | `bytes` | count | `tcp`: bytes to send (default 16 MiB) |
//! | `packets` | count | `udp`: datagrams to send (default 20000) |
//! | `size` | bytes | `udp`: payload per datagram (default 64) |
//! | `count` | count | `rtt`: round trips (default 1000) |
//! | `timeout` | seconds | the whole run (default 120) |
//!
//! # Protocol (the host side in `xtask` speaks it too)
//!
//! - UDP port [`ECHO_PORT`]: every datagram is sent back as is. The source first sends
//!   `sync` datagrams there until one comes back (the sink is up, ARP is resolved), and
//!   `rtt` times `count` more round trips.
//! - TCP port [`TCP_PORT`]: the source connects and sends `bytes` bytes, then closes; the sink
//!   reads everything and closes when the source has.
//! - UDP port [`UDP_PORT`]: the source sends `packets` datagrams of `size` bytes; the first
//!   8 bytes are the datagram's sequence number.
//! - UDP port [`QUIT_PORT`]: a datagram there ends the sink (the source repeats it).
//!
//! Results are `bench NAME key=value...` lines: the source prints `bench tcp_tx`,
//! `bench udp_tx` or `bench rtt_ns`, the sink `bench tcp_rx` and `bench udp_rx`; both end
//! with `bench frames tx=N rx=M` (the frames their interface moved).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use guest_sdk::abi::Features;
use guest_sdk::time::{self, NS_PER_MS, NS_PER_SEC};
use guest_sdk::{println, sched, StartInfo};
use pv_drivers::frontend::net::smoltcp;
use pv_drivers::frontend::net::{self as vif, NetDevice};

#[path = "../shared/ne2k.rs"]
mod ne2k;
#[path = "../shared/nic.rs"]
mod nic;
use ne2k::Ne2k;
use nic::Nic;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpCidr, IpEndpoint, Ipv4Address};

guest_sdk::entry!(
    main,
    required_features = Features::INTERDOMAIN
        .union(Features::GRANT_TABLES)
        .union(Features::STORE)
);

/// UDP echo (sync and round trips).
pub const ECHO_PORT: u16 = 5003;
/// TCP bulk data.
pub const TCP_PORT: u16 = 5001;
/// UDP datagrams counted by the sink.
pub const UDP_PORT: u16 = 5002;
/// UDP: the end of the run.
pub const QUIT_PORT: u16 = 5004;

/// TCP socket buffers, each way.
const TCP_BUFFER: usize = 256 * 1024;

fn fail(msg: core::fmt::Arguments<'_>) -> ! {
    println!("netbench: FAILED: {msg}");
    sched::exit(1)
}

/// One interface and the smoltcp state on it.
struct Net<D: Nic> {
    dev: D,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl<D: Nic> Net<D> {
    fn open(ip: Ipv4Address) -> Self {
        let mut dev = D::open().unwrap_or_else(|e| fail(format_args!("{e}")));
        let mut iface = dev.interface();
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), 24));
        });
        println!("netbench: {} up, mtu {}, ip {ip}/24", D::NAME, dev.mtu());
        Net {
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    /// Runs the stack; if it did nothing, waits for the network (at most until what
    /// smoltcp's timers need, `until`, and 50 ms). Fails the run past `deadline`.
    fn step(&mut self, until: u64, deadline: u64) {
        if self.poll() {
            return;
        }
        let now = time::monotonic_ns();
        if now >= deadline {
            fail(format_args!("timed out"));
        }
        let delay = self
            .iface
            .poll_delay(vif::now(), &self.sockets)
            .map_or(u64::MAX, |d| d.total_micros() * 1000);
        let until = until
            .min(deadline)
            .min(now.saturating_add(delay.min(50 * NS_PER_MS)));
        if let Err(e) = self.dev.wait_until(until) {
            fail(format_args!("{e}"));
        }
    }

    /// Runs the stack once; whether anything moved.
    fn poll(&mut self) -> bool {
        self.iface
            .poll(vif::now(), &mut self.dev, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged
    }

    fn udp(&mut self, port: u16, packets: usize) -> SocketHandle {
        let buf = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; packets],
                vec![0; packets * 1536],
            )
        };
        let mut s = udp::Socket::new(buf(), buf());
        if let Err(e) = s.bind(port) {
            fail(format_args!("udp bind {port}: {e}"));
        }
        self.sockets.add(s)
    }

    fn udp_mut(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn tcp_socket(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        self.sockets.add(s)
    }

    /// Keeps the stack running for `ns`.
    fn linger(&mut self, ns: u64) {
        let end = time::monotonic_ns() + ns;
        while time::monotonic_ns() < end {
            if !self.poll() {
                if let Err(e) = self
                    .dev
                    .wait_until(end.min(time::monotonic_ns() + 10 * NS_PER_MS))
                {
                    fail(format_args!("{e}"));
                }
            }
        }
    }

    fn report_frames(&self) {
        let (tx, rx) = self.dev.frames();
        println!("bench frames tx={tx} rx={rx}");
    }
}

/// The options of one run.
struct Opts {
    test: Test,
    ip: Ipv4Address,
    peer: Option<Ipv4Address>,
    bytes: u64,
    packets: u64,
    size: usize,
    count: u64,
    /// When the run fails (system time, ns).
    deadline: u64,
}

/// Which card `nic=` names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Card {
    Pv,
    Ne2k,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    Tcp,
    Udp,
    Rtt,
    None,
}

fn parse_ip(v: &str) -> Ipv4Address {
    let mut o = [0u8; 4];
    let mut parts = v.split('.');
    for b in &mut o {
        *b = parts
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| fail(format_args!("bad address {v:?}")));
    }
    if parts.next().is_some() {
        fail(format_args!("bad address {v:?}"));
    }
    Ipv4Address::new(o[0], o[1], o[2], o[3])
}

fn parse_num(k: &str, v: &str) -> u64 {
    v.parse()
        .unwrap_or_else(|_| fail(format_args!("bad {k}={v:?}")))
}

fn main(si: &StartInfo) {
    let mut role = None;
    let mut test = None;
    let mut nic = Card::Pv;
    let mut timeout_s = 120;
    let mut o = Opts {
        test: Test::None,
        ip: Ipv4Address::new(10, 0, 0, 1),
        peer: None,
        bytes: 16 << 20,
        packets: 20_000,
        size: 64,
        count: 1000,
        deadline: 0,
    };
    for word in si.cmdline().split_whitespace() {
        match word.split_once('=') {
            Some(("role", r)) => role = Some(r),
            Some(("test", t)) => {
                test = Some(match t {
                    "tcp" => Test::Tcp,
                    "udp" => Test::Udp,
                    "rtt" => Test::Rtt,
                    "none" => Test::None,
                    _ => fail(format_args!("unknown test {t:?}")),
                })
            }
            Some(("nic", "pv")) => nic = Card::Pv,
            Some(("nic", "ne2k")) => nic = Card::Ne2k,
            Some(("nic", v)) => fail(format_args!("unknown nic {v:?} (known: pv, ne2k)")),
            Some(("ip", v)) => o.ip = parse_ip(v),
            Some(("peer", v)) => o.peer = Some(parse_ip(v)),
            Some(("bytes", v)) => o.bytes = parse_num("bytes", v),
            Some(("packets", v)) => o.packets = parse_num("packets", v),
            Some(("size", v)) => o.size = parse_num("size", v) as usize,
            Some(("count", v)) => o.count = parse_num("count", v),
            Some(("timeout", v)) => timeout_s = parse_num("timeout", v),
            _ => fail(format_args!("unknown option {word:?}")),
        }
    }
    o.test = test.unwrap_or_else(|| fail(format_args!("test= is required")));
    if !(8..=1472).contains(&o.size) {
        fail(format_args!("size must be 8 to 1472"));
    }
    o.deadline = time::monotonic_ns().saturating_add(timeout_s.saturating_mul(NS_PER_SEC));
    match (role, nic) {
        (Some("sink"), Card::Pv) => sink::<NetDevice>(&o),
        (Some("source"), Card::Pv) => source::<NetDevice>(&o),
        (Some("sink"), Card::Ne2k) => sink::<Ne2k>(&o),
        (Some("source"), Card::Ne2k) => source::<Ne2k>(&o),
        _ => fail(format_args!("role=sink or role=source is required")),
    }
}

/// Answers echoes, takes TCP data and counts datagrams until told to quit.
fn sink<D: Nic>(o: &Opts) {
    let mut net = Net::<D>::open(o.ip);
    let echo = net.udp(ECHO_PORT, 64);
    let count = net.udp(UDP_PORT, 512);
    let quit = net.udp(QUIT_PORT, 4);
    let tcp = net.tcp_socket();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut tcp_bytes, mut tcp_first, mut tcp_last, mut tcp_done) = (0u64, 0u64, 0u64, false);
    let (mut udp_n, mut udp_first, mut udp_last) = (0u64, 0u64, 0u64);
    loop {
        // Echo.
        let s = net.udp_mut(echo);
        while s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut buf) else {
                break;
            };
            let _ = s.send_slice(&buf[..n], meta.endpoint);
        }
        // Count.
        let s = net.udp_mut(count);
        while let Ok((n, _)) = s.recv_slice(&mut buf) {
            if n >= 8 {
                let now = time::monotonic_ns();
                if udp_n == 0 {
                    udp_first = now;
                }
                udp_last = now;
                udp_n += 1;
            }
        }
        // TCP.
        let s = net.tcp(tcp);
        if !s.is_open() && !tcp_done {
            if let Err(e) = s.listen(TCP_PORT) {
                fail(format_args!("listen tcp/{TCP_PORT}: {e}"));
            }
        }
        while s.can_recv() {
            match s.recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = time::monotonic_ns();
                    if tcp_bytes == 0 {
                        tcp_first = now;
                    }
                    tcp_last = now;
                    tcp_bytes += n as u64;
                }
            }
        }
        if s.state() == tcp::State::CloseWait {
            s.close();
            tcp_done = true;
        }
        // Quit.
        if net.udp_mut(quit).recv_slice(&mut buf).is_ok() {
            break;
        }
        net.step(o.deadline, o.deadline);
    }
    if tcp_bytes > 0 {
        println!(
            "bench tcp_rx bytes={tcp_bytes} ns={}",
            tcp_last.saturating_sub(tcp_first)
        );
    }
    if udp_n > 0 {
        println!(
            "bench udp_rx packets={udp_n} ns={}",
            udp_last.saturating_sub(udp_first)
        );
    }
    net.linger(100 * NS_PER_MS);
    net.report_frames();
}

/// Sends one echo datagram and waits (at most `wait_ns`) for it to come back; the round
/// trip, or `None`.
fn round_trip<D: Nic>(
    net: &mut Net<D>,
    h: SocketHandle,
    to: IpEndpoint,
    seq: u64,
    wait_ns: u64,
    deadline: u64,
) -> Option<u64> {
    let start = time::monotonic_ns();
    if net.udp_mut(h).send_slice(&seq.to_le_bytes(), to).is_err() {
        fail(format_args!("echo: cannot queue a datagram"));
    }
    let mut buf = [0u8; 64];
    loop {
        while let Ok((n, _)) = net.udp_mut(h).recv_slice(&mut buf) {
            if n == 8 && buf[..8] == seq.to_le_bytes() {
                return Some(time::monotonic_ns() - start);
            }
        }
        let now = time::monotonic_ns();
        if now - start >= wait_ns {
            return None;
        }
        net.step(start + wait_ns, deadline);
    }
}

/// Drives one test against the sink at `peer`.
fn source<D: Nic>(o: &Opts) {
    let peer = o
        .peer
        .unwrap_or_else(|| fail(format_args!("peer= is required")));
    let mut net = Net::<D>::open(o.ip);
    let echo = net.udp(ECHO_PORT, 8);
    let to = IpEndpoint::new(IpAddress::Ipv4(peer), ECHO_PORT);
    // Sync: the sink is up and both ends know each other's MAC.
    let mut seq = 1u64 << 63;
    loop {
        if time::monotonic_ns() >= o.deadline {
            fail(format_args!("the sink at {peer} never answered"));
        }
        if round_trip(&mut net, echo, to, seq, 200 * NS_PER_MS, o.deadline).is_some() {
            break;
        }
        seq += 1;
    }
    println!("netbench: sink {peer} answers");
    match o.test {
        Test::Tcp => tcp_send(&mut net, peer, o),
        Test::Udp => udp_send(&mut net, peer, o),
        Test::Rtt => rtt(&mut net, echo, to, o),
        Test::None => {}
    }
    // Quit the sink; it may lose a datagram, so send a few.
    let quit = net.udp(QUIT_PORT, 4);
    for _ in 0..3 {
        let _ = net
            .udp_mut(quit)
            .send_slice(b"quit", IpEndpoint::new(IpAddress::Ipv4(peer), QUIT_PORT));
        net.linger(20 * NS_PER_MS);
    }
    net.report_frames();
}

fn tcp_send<D: Nic>(net: &mut Net<D>, peer: Ipv4Address, o: &Opts) {
    let h = net.tcp_socket();
    let cx = net.iface.context();
    let s = net.sockets.get_mut::<tcp::Socket>(h);
    if let Err(e) = s.connect(cx, (IpAddress::Ipv4(peer), TCP_PORT), 49_500) {
        fail(format_args!("connect: {e}"));
    }
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut sent, mut start) = (0u64, 0u64);
    loop {
        let s = net.tcp(h);
        match s.state() {
            tcp::State::Closed if start != 0 || sent > 0 => {
                fail(format_args!("tcp: connection lost after {sent} bytes"))
            }
            tcp::State::Closed => fail(format_args!("tcp: connection refused")),
            _ => {}
        }
        if s.may_send() {
            if start == 0 {
                start = time::monotonic_ns();
            }
            while sent < o.bytes && s.can_send() {
                let left = (o.bytes - sent).min(chunk.len() as u64) as usize;
                match s.send_slice(&chunk[..left]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent += n as u64,
                }
            }
            if sent == o.bytes {
                s.close();
                break;
            }
        }
        net.step(o.deadline, o.deadline);
    }
    // Done when everything is acknowledged (the sink closes after reading it all).
    loop {
        let s = net.tcp(h);
        if matches!(
            s.state(),
            tcp::State::TimeWait | tcp::State::Closed | tcp::State::Closing
        ) || (s.send_queue() == 0 && s.state() == tcp::State::FinWait2)
        {
            break;
        }
        net.step(o.deadline, o.deadline);
    }
    let ns = time::monotonic_ns() - start;
    println!("bench tcp_tx bytes={sent} ns={ns}");
}

fn udp_send<D: Nic>(net: &mut Net<D>, peer: Ipv4Address, o: &Opts) {
    let h = net.udp(49_600, 256);
    let to = IpEndpoint::new(IpAddress::Ipv4(peer), UDP_PORT);
    let mut payload = vec![0u8; o.size];
    let start = time::monotonic_ns();
    let mut sent = 0u64;
    while sent < o.packets {
        let s = net.udp_mut(h);
        while sent < o.packets && s.can_send() {
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            if s.send_slice(&payload, to).is_err() {
                break;
            }
            sent += 1;
        }
        net.step(o.deadline, o.deadline);
    }
    // Flush what the socket still holds.
    while net.udp_mut(h).send_queue() > 0 {
        net.step(o.deadline, o.deadline);
    }
    let ns = time::monotonic_ns() - start;
    println!("bench udp_tx packets={sent} ns={ns}");
}

fn rtt<D: Nic>(net: &mut Net<D>, h: SocketHandle, to: IpEndpoint, o: &Opts) {
    let mut samples = Vec::with_capacity(o.count as usize);
    let mut lost = 0u64;
    for seq in 0..o.count {
        match round_trip(net, h, to, seq, 500 * NS_PER_MS, o.deadline) {
            Some(ns) => samples.push(ns),
            None => lost += 1,
        }
    }
    if samples.is_empty() {
        fail(format_args!("rtt: no answer"));
    }
    samples.sort_unstable();
    let at = |q: usize| samples[(samples.len() - 1) * q / 100];
    println!(
        "bench rtt_ns median={} p10={} p90={} n={} lost={lost}",
        at(50),
        at(10),
        at(90),
        samples.len()
    );
}
