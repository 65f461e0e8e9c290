//! Two domains talk TCP/IP over paravirtual network interfaces (`vif/0`, both on the hv's
//! switch `lan`), with smoltcp on `pv_drivers::frontend::net::NetDevice`. Run both with
//! `hv run --config examples/netdemo.toml`. The server alone also serves the host over a TAP:
//! `hv run netdemo --net tap:hv0,host=10.77.0.1/24 --cmdline "role=server ip=10.77.0.2/24
//! requests=1"`, then `curl http://10.77.0.2/`.
//!
//! Command line (space-separated `key=value`):
//!
//! | key | values | meaning |
//! | --- | --- | --- |
//! | `role` | `server`, `client` | required: which end this domain is |
//! | `ip` | `A.B.C.D/P` | this domain's address (default 10.0.0.1/24 for the server, 10.0.0.2/24 for the client) |
//! | `requests` | a count, or `forever` | server: power off after this many HTTP requests (no echo session needed), or never |
//! | `timeout` | seconds | how long the whole exchange may take (default 60; none with `requests=`) |
//! | `nic` | `pv`, `ne2k` | the paravirtual `vif/0` (default), or the hv's emulated NE2000 card (`hv --emulated-net`, driven by port I/O; see `examples/netdemo-ne2k.toml`) |
//!
//! - `server` runs a TCP echo service on port 7 and a tiny HTTP server on port 80 that answers
//!   `GET /` with a short page; it answers ping (smoltcp does). Without `requests=` it powers
//!   off with 0 once it has served one HTTP request and one echo session (the client's visit),
//!   or with 1 at the deadline.
//! - `client` pings the server (10.0.0.1; ICMP echo), fetches `http://10.0.0.1/`, prints
//!   `netdemo: fetched N bytes: <first line>`, sends a few messages to the echo service and
//!   checks the answers, prints `netdemo: echo ok` and powers off with 0 (1 on any failure).
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
use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address};

#[path = "../shared/ne2k.rs"]
mod ne2k;
#[path = "../shared/nic.rs"]
mod nic;
use ne2k::Ne2k;
use nic::Nic;

guest_sdk::entry!(
    main,
    required_features = Features::INTERDOMAIN
        .union(Features::GRANT_TABLES)
        .union(Features::STORE)
);

const SERVER_IP: IpAddress = IpAddress::v4(10, 0, 0, 1);
const CLIENT_IP: IpAddress = IpAddress::v4(10, 0, 0, 2);
/// The prefix length of the default addresses.
const PREFIX: u8 = 24;
const ECHO_PORT: u16 = 7;
const HTTP_PORT: u16 = 80;
/// Pings the client sends (each retried until answered).
const PINGS: u16 = 3;
/// Messages sent to the echo service.
const ECHO_MESSAGES: [&[u8]; 3] = [
    b"hello, echo",
    b"a second message, a little longer than the first one",
    b"3",
];
const PAGE: &str = "<html><body><h1>Hello from netdemo</h1>\
<p>Served by a paravirtualized guest over smoltcp and a vif.</p></body></html>\n";

/// The interface, its device and its sockets.
struct Net<D: Nic> {
    dev: D,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl<D: Nic> Net<D> {
    fn open(mut dev: D, cidr: IpCidr) -> Net<D> {
        let m = dev.mac();
        println!(
            "netdemo: {} up: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {}, ip {cidr}",
            D::NAME,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            dev.mtu()
        );
        let mut iface = dev.interface();
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(cidr);
        });
        Net {
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    fn tcp_socket(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 8192]),
            tcp::SocketBuffer::new(vec![0; 8192]),
        );
        self.sockets.add(s)
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Runs the stack once; unless that changed a socket (then the caller has work to do at
    /// once), waits for the network (at most until `deadline` and what smoltcp's timers
    /// need, and at most 100 ms).
    fn step(&mut self, deadline: u64) {
        let r = self
            .iface
            .poll(vif::now(), &mut self.dev, &mut self.sockets);
        if r == PollResult::SocketStateChanged {
            return;
        }
        let now = time::monotonic_ns();
        let delay = self
            .iface
            .poll_delay(vif::now(), &self.sockets)
            .map(|d| d.total_micros() * 1000)
            .unwrap_or(u64::MAX);
        let until = deadline.min(now.saturating_add(delay.min(100 * NS_PER_MS)));
        if let Err(e) = self.dev.wait_until(until) {
            fail(format_args!("{e}"));
        }
    }

    /// Steps until `done` says so or `deadline` passes (then fails with `what`).
    fn until<T>(
        &mut self,
        deadline: u64,
        what: &str,
        mut done: impl FnMut(&mut Net<D>) -> Option<T>,
    ) -> T {
        loop {
            if let Some(t) = done(self) {
                return t;
            }
            if time::monotonic_ns() >= deadline {
                fail(format_args!("timed out: {what}"));
            }
            self.step(deadline);
        }
    }

    /// Keeps the stack running for `ns` (to let final ACKs and FINs go out).
    fn linger(&mut self, ns: u64) {
        let end = time::monotonic_ns() + ns;
        while time::monotonic_ns() < end {
            self.step(end);
        }
    }
}

fn fail(msg: core::fmt::Arguments<'_>) -> ! {
    println!("netdemo: FAILED: {msg}");
    sched::exit(1)
}

/// When the server is done.
#[derive(Clone, Copy)]
enum Goal {
    /// One HTTP request and one echo session served (the client's visit).
    Visit,
    /// This many HTTP requests served.
    Requests(u32),
    /// Never.
    Forever,
}

/// Parses `A.B.C.D/P` (P from 1 to 32).
fn parse_cidr(text: &str) -> Option<IpCidr> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Address = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some(IpCidr::new(IpAddress::Ipv4(addr), prefix))
}

fn main(si: &StartInfo) {
    let mut role = None;
    let mut nic = "pv";
    let mut timeout_s = None;
    let mut ip = None;
    let mut goal = Goal::Visit;
    for word in si.cmdline().split_whitespace() {
        match word.split_once('=') {
            Some(("role", r)) => role = Some(r),
            Some(("nic", n)) => nic = n,
            Some(("timeout", t)) => match t.parse::<u64>() {
                Ok(t) => timeout_s = Some(t),
                Err(_) => fail(format_args!("bad timeout {t:?}")),
            },
            Some(("ip", a)) => match parse_cidr(a) {
                Some(c) => ip = Some(c),
                None => fail(format_args!("bad ip {a:?} (use A.B.C.D/P)")),
            },
            Some(("requests", "forever")) => goal = Goal::Forever,
            Some(("requests", n)) => match n.parse() {
                Ok(n) if n > 0 => goal = Goal::Requests(n),
                _ => fail(format_args!("bad requests {n:?} (a count, or forever)")),
            },
            _ => fail(format_args!("unknown option {word:?}")),
        }
    }
    // A server waiting for outside clients has no deadline unless asked.
    let timeout_s = match (timeout_s, goal) {
        (Some(t), _) => Some(t),
        (None, Goal::Visit) => Some(60),
        (None, _) => None,
    };
    let deadline = timeout_s.map_or(u64::MAX, |t| {
        time::monotonic_ns().saturating_add(t.saturating_mul(NS_PER_SEC))
    });
    let role = match role {
        Some("server") => Role::Server(ip.unwrap_or(IpCidr::new(SERVER_IP, PREFIX)), goal),
        Some("client") => Role::Client(ip.unwrap_or(IpCidr::new(CLIENT_IP, PREFIX))),
        _ => fail(format_args!("role=server or role=client is required")),
    };
    match nic {
        "pv" => run::<NetDevice>(role, deadline),
        "ne2k" => run::<Ne2k>(role, deadline),
        _ => fail(format_args!("nic=pv or nic=ne2k")),
    }
}

#[derive(Clone, Copy)]
enum Role {
    Server(IpCidr, Goal),
    Client(IpCidr),
}

fn run<D: Nic>(role: Role, deadline: u64) {
    let dev = D::open().unwrap_or_else(|e| fail(format_args!("{e}")));
    match role {
        Role::Server(cidr, goal) => server(Net::open(dev, cidr), cidr, goal, deadline),
        Role::Client(cidr) => client(Net::open(dev, cidr), deadline),
    }
}

/// Echo on port 7, HTTP on port 80, until `goal` is reached.
fn server<D: Nic>(mut net: Net<D>, cidr: IpCidr, goal: Goal, deadline: u64) {
    let echo = net.tcp_socket();
    let http = net.tcp_socket();
    println!(
        "netdemo: server listening on {}: tcp/{ECHO_PORT} (echo) and tcp/{HTTP_PORT} (http)",
        cidr.address()
    );
    let (mut echo_conns, mut echo_bytes, mut echo_was_open) = (0u32, 0usize, false);
    let (mut http_served, mut request) = (0u32, Vec::new());
    let mut buf = [0u8; 2048];
    let done = |http: u32, echo: u32| match goal {
        Goal::Visit => http > 0 && echo > 0,
        Goal::Requests(n) => http >= n,
        Goal::Forever => false,
    };
    while !done(http_served, echo_conns) {
        if time::monotonic_ns() >= deadline {
            fail(format_args!(
                "deadline: served {http_served} http request(s) and {echo_conns} echo session(s)"
            ));
        }
        // Echo: send back whatever comes; close when the client does.
        let s = net.tcp(echo);
        if !s.is_open() {
            if echo_was_open {
                echo_was_open = false;
                echo_conns += 1;
                println!("netdemo: echo session done: {echo_bytes} bytes echoed");
                echo_bytes = 0;
            }
            if let Err(e) = s.listen(ECHO_PORT) {
                fail(format_args!("listen tcp/{ECHO_PORT}: {e}"));
            }
        }
        if s.is_active() && !echo_was_open {
            echo_was_open = true;
            if let Some(peer) = s.remote_endpoint() {
                println!("netdemo: echo connection from {peer}");
            }
        }
        while s.can_recv() && s.can_send() {
            let room = s.send_capacity() - s.send_queue();
            let n = s.recv_slice(&mut buf[..room.min(2048)]).unwrap_or(0);
            if n == 0 {
                break;
            }
            let _ = s.send_slice(&buf[..n]);
            echo_bytes += n;
        }
        if s.state() == tcp::State::CloseWait {
            s.close();
        }
        // HTTP: read the request head, answer, close.
        let s = net.tcp(http);
        if !s.is_open() {
            request.clear();
            if let Err(e) = s.listen(HTTP_PORT) {
                fail(format_args!("listen tcp/{HTTP_PORT}: {e}"));
            }
        }
        while s.can_recv() {
            let n = s.recv_slice(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        if let Some(end) = find(&request, b"\r\n\r\n") {
            let line = first_line(&request[..end]);
            let (status, body) = if line.starts_with("GET / ") {
                ("200 OK", PAGE)
            } else {
                ("404 Not Found", "not found\n")
            };
            println!("netdemo: http request {line:?}: {status}");
            let head = alloc::format!(
                "HTTP/1.0 {status}\r\nServer: netdemo\r\nContent-Type: text/html\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // Both fit in the empty send buffer.
            let _ = s.send_slice(head.as_bytes());
            let _ = s.send_slice(body.as_bytes());
            s.close();
            request.clear();
            http_served += 1;
        }
        net.step(deadline);
    }
    net.linger(500 * NS_PER_MS);
    println!(
        "netdemo: server done: {http_served} http request(s), {echo_conns} echo session(s); {}",
        net.dev.report()
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn first_line(b: &[u8]) -> &str {
    let end = find(b, b"\r\n").unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).unwrap_or("<not utf-8>")
}

/// Ping, fetch the page, talk to the echo service.
fn client<D: Nic>(mut net: Net<D>, deadline: u64) {
    ping(&mut net, deadline);
    let page = fetch(&mut net, deadline);
    let line = first_line(&page);
    println!("netdemo: fetched {} bytes: {line}", page.len());
    if !line.contains("200") || find(&page, b"Hello from netdemo").is_none() {
        fail(format_args!("unexpected page"));
    }
    echo(&mut net, deadline);
    println!("netdemo: echo ok");
    net.linger(300 * NS_PER_MS);
    println!("netdemo: client done; {}", net.dev.report());
}

/// Pings the server until each of [`PINGS`] sequence numbers has been answered.
fn ping<D: Nic>(net: &mut Net<D>, deadline: u64) {
    let ident = 0x6e64;
    let mut s = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    );
    if let Err(e) = s.bind(icmp::Endpoint::Ident(ident)) {
        fail(format_args!("icmp bind: {e}"));
    }
    let h = net.sockets.add(s);
    let caps = smoltcp::phy::Device::capabilities(&net.dev).checksum;
    let payload = b"netdemo ping";
    for seq in 1..=PINGS {
        let mut sent_at = 0u64;
        let rtt = net.until(deadline, "ping", |net| {
            let s = net.sockets.get_mut::<icmp::Socket>(h);
            while let Ok((data, from)) = s.recv() {
                let Ok(pkt) = Icmpv4Packet::new_checked(data) else {
                    continue;
                };
                if let Ok(Icmpv4Repr::EchoReply {
                    ident: i,
                    seq_no,
                    data,
                }) = Icmpv4Repr::parse(&pkt, &caps)
                {
                    if i == ident && seq_no == seq && data == payload && from == SERVER_IP {
                        return Some(time::monotonic_ns() - sent_at);
                    }
                }
            }
            // (Re)send every half second: the first ones may go while ARP resolves or the
            // server is still starting.
            let now = time::monotonic_ns();
            if now - sent_at >= 500 * NS_PER_MS && s.can_send() {
                let repr = Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data: payload,
                };
                if let Ok(buf) = s.send(repr.buffer_len(), SERVER_IP) {
                    repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                    sent_at = now;
                }
            }
            None
        });
        println!(
            "netdemo: ping {SERVER_IP}: seq {seq}: reply in {}.{:03} ms",
            rtt / NS_PER_MS,
            rtt % NS_PER_MS / 1000
        );
    }
    net.sockets.remove(h);
}

/// Connects a new TCP socket to `port` of the server, retrying while the server is not
/// listening yet.
fn connect<D: Nic>(net: &mut Net<D>, port: u16, local: &mut u16, deadline: u64) -> SocketHandle {
    let h = net.tcp_socket();
    let mut started = false;
    net.until(deadline, "tcp connect", |net| {
        let s = net.sockets.get_mut::<tcp::Socket>(h);
        match s.state() {
            tcp::State::Established => return Some(()),
            tcp::State::Closed if started => {
                println!("netdemo: tcp/{port}: refused, retrying");
                started = false;
            }
            _ => {}
        }
        if !started {
            *local += 1;
            let cx = net.iface.context();
            let s = net.sockets.get_mut::<tcp::Socket>(h);
            if let Err(e) = s.connect(cx, (SERVER_IP, port), *local) {
                fail(format_args!("connect tcp/{port}: {e}"));
            }
            started = true;
        }
        None
    });
    println!("netdemo: connected to {SERVER_IP}:{port}");
    h
}

/// `GET /` from the server; returns the whole response.
fn fetch<D: Nic>(net: &mut Net<D>, deadline: u64) -> Vec<u8> {
    let mut local = 49_152;
    let h = connect(net, HTTP_PORT, &mut local, deadline);
    let req = b"GET / HTTP/1.0\r\nHost: 10.0.0.1\r\nUser-Agent: netdemo\r\n\r\n";
    if net.tcp(h).send_slice(req) != Ok(req.len()) {
        fail(format_args!("http: cannot queue the request"));
    }
    let mut page = Vec::new();
    let mut buf = [0u8; 2048];
    net.until(deadline, "http response", |net| {
        let s = net.tcp(h);
        while s.can_recv() {
            match s.recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => page.extend_from_slice(&buf[..n]),
            }
        }
        // The server closes after the response.
        if !s.may_recv() && s.state() != tcp::State::SynSent {
            s.close();
            return Some(());
        }
        None
    });
    net.sockets.remove(h);
    page
}

/// Sends [`ECHO_MESSAGES`] one at a time to the echo service and checks each answer.
fn echo<D: Nic>(net: &mut Net<D>, deadline: u64) {
    let mut local = 50_152;
    let h = connect(net, ECHO_PORT, &mut local, deadline);
    let mut buf = [0u8; 256];
    for msg in ECHO_MESSAGES {
        if net.tcp(h).send_slice(msg) != Ok(msg.len()) {
            fail(format_args!("echo: cannot queue a message"));
        }
        let mut got = Vec::new();
        net.until(deadline, "echo reply", |net| {
            let s = net.tcp(h);
            while s.can_recv() {
                match s.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            if !s.may_recv() {
                fail(format_args!("echo: the server closed the connection"));
            }
            (got.len() >= msg.len()).then_some(())
        });
        if got != msg {
            fail(format_args!("echo: sent {msg:?}, got back {got:?}"));
        }
        println!("netdemo: echo: {} bytes back", got.len());
    }
    net.tcp(h).close();
    // Wait for the server's FIN (it closes when we do).
    net.until(deadline, "echo close", |net| {
        let s = net.tcp(h);
        matches!(
            s.state(),
            tcp::State::TimeWait | tcp::State::Closed | tcp::State::Closing
        )
        .then_some(())
    });
}
