//! Two domains talk TCP/IP over paravirtual network interfaces (`vif/0`, both on the hv's
//! switch `lan`), with smoltcp on `pv_drivers::frontend::net::NetDevice`. Run both with
//! `hv run --config examples/netdemo.toml`.
//!
//! Command line (space-separated `key=value`):
//!
//! | key | values | meaning |
//! | --- | --- | --- |
//! | `role` | `server`, `client`, `blast`, `sink` | required: which end this domain is |
//! | `timeout` | seconds | how long the whole exchange may take (default 60) |
//! | `nic` | `pv`, `ne2k` | the paravirtual `vif/0` (default), or the hv's emulated NE2000 card (`hv --emulated-net`, driven by port I/O; see `examples/netdemo-ne2k.toml`) |
//!
//! - `server` (10.0.0.1/24) runs a TCP echo service on port 7 and a tiny HTTP server on
//!   port 80 that answers `GET /` with a short page; it powers off with 0 once it has served
//!   one HTTP request and one echo session, or with 1 at the deadline.
//! - `client` (10.0.0.2/24) pings the server (ICMP echo), fetches `http://10.0.0.1/`, prints
//!   `netdemo: fetched N bytes: <first line>`, sends a few messages to the echo service and
//!   checks the answers, prints `netdemo: echo ok` and powers off with 0 (1 on any failure).
//! - `blast` and `sink` measure raw frames (no TCP/IP): `blast` waits half a second, sends
//!   `count=N` (default 10000) broadcast frames of `size=BYTES` (default 60) with ethertype
//!   `0x88B5`, then end markers, and prints its rate; `sink` counts such frames until the
//!   marker, `count` of them, or the deadline, and prints how many it got and at what rate.
//!   With `hv --stats`, comparing runs of two counts gives exits per frame.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use guest_sdk::abi::Features;
use guest_sdk::time::{self, NS_PER_MS, NS_PER_SEC};
use guest_sdk::{println, sched, StartInfo};
use pv_drivers::frontend::net::smoltcp;
use pv_drivers::frontend::net::{self as vif, NetDevice};
use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr};

#[path = "../shared/ne2k.rs"]
mod ne2k;
use ne2k::Ne2k;

guest_sdk::entry!(
    main,
    required_features = Features::INTERDOMAIN
        .union(Features::GRANT_TABLES)
        .union(Features::STORE)
);

const SERVER_IP: IpAddress = IpAddress::v4(10, 0, 0, 1);
const CLIENT_IP: IpAddress = IpAddress::v4(10, 0, 0, 2);
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

/// What the demo needs from a network device besides smoltcp's `Device`.
trait Nic: smoltcp::phy::Device {
    /// Its name in messages.
    const NAME: &'static str;
    fn mac(&self) -> [u8; 6];
    fn mtu(&self) -> usize;
    fn interface(&mut self) -> Interface;
    /// Waits for the network until `until` (fails the demo on a broken device).
    fn wait_until(&mut self, until: u64);
    /// The closing line's counters.
    fn report(&self) -> String;
    /// Sends a raw frame; `false` if there is no room now.
    fn send_frame(&mut self, frame: &[u8]) -> bool;
    /// The next raw frame, copied into `buf`.
    fn recv_frame(&mut self, buf: &mut [u8]) -> Option<usize>;
}

impl Nic for NetDevice {
    const NAME: &'static str = "vif/0";
    fn mac(&self) -> [u8; 6] {
        NetDevice::mac(self)
    }
    fn mtu(&self) -> usize {
        NetDevice::mtu(self) as usize
    }
    fn interface(&mut self) -> Interface {
        NetDevice::interface(self)
    }
    fn wait_until(&mut self, until: u64) {
        if let Err(e) = self.wait(until) {
            fail(format_args!("vif/0: {e}"));
        }
    }
    fn report(&self) -> String {
        let st = self.stats();
        alloc::format!(
            "frames tx {} rx {}; notifications {}, blocks {}",
            st.tx_frames,
            st.rx_frames,
            st.notifications,
            st.blocks
        )
    }
    fn send_frame(&mut self, frame: &[u8]) -> bool {
        self.send(frame).is_ok()
    }
    fn recv_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.recv(buf) {
            Ok(n) => n,
            Err(e) => fail(format_args!("vif/0: {e}")),
        }
    }
}

impl Nic for Ne2k {
    const NAME: &'static str = "ne2k";
    fn mac(&self) -> [u8; 6] {
        Ne2k::mac(self)
    }
    fn mtu(&self) -> usize {
        ne2k::MAX_FRAME
    }
    fn interface(&mut self) -> Interface {
        Ne2k::interface(self)
    }
    fn wait_until(&mut self, until: u64) {
        self.wait(until);
    }
    fn report(&self) -> String {
        let st = self.stats();
        alloc::format!(
            "frames tx {} rx {}; port I/O instructions: tx {} rx {} idle {}; errors tx {} rx {}, overruns {}",
            st.tx_frames,
            st.rx_frames,
            st.tx_ios,
            st.rx_ios,
            st.idle_ios,
            st.tx_errors,
            st.rx_errors,
            st.overruns
        )
    }
    fn send_frame(&mut self, frame: &[u8]) -> bool {
        self.send(frame).is_ok()
    }
    fn recv_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.recv(buf)
    }
}

/// The interface, its device and its sockets.
struct Net<D: Nic> {
    dev: D,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl<D: Nic> Net<D> {
    fn open(mut dev: D, ip: IpAddress) -> Net<D> {
        let m = dev.mac();
        println!(
            "netdemo: {} up: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {}, ip {ip}/24",
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
            let _ = addrs.push(IpCidr::new(ip, 24));
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
        self.dev.wait_until(until);
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

fn main(si: &StartInfo) {
    let mut role = None;
    let mut nic = "pv";
    let mut timeout_s = 60;
    let (mut count, mut size) = (10_000u64, 60usize);
    for word in si.cmdline().split_whitespace() {
        match word.split_once('=') {
            Some(("role", r)) => role = Some(r),
            Some(("nic", n)) => nic = n,
            Some(("timeout", t)) => match t.parse() {
                Ok(t) => timeout_s = t,
                Err(_) => fail(format_args!("bad timeout {t:?}")),
            },
            Some(("count", n)) => match n.parse() {
                Ok(n) => count = n,
                Err(_) => fail(format_args!("bad count {n:?}")),
            },
            Some(("size", n)) => match n.parse::<usize>() {
                Ok(n) => size = n.clamp(60, ne2k::MAX_FRAME),
                Err(_) => fail(format_args!("bad size {n:?}")),
            },
            _ => fail(format_args!("unknown option {word:?}")),
        }
    }
    let deadline = time::monotonic_ns() + timeout_s * NS_PER_SEC;
    let role = match role {
        Some("server") => Role::Server,
        Some("client") => Role::Client,
        Some("blast") => Role::Blast { count, size },
        Some("sink") => Role::Sink { count },
        _ => fail(format_args!(
            "role=server, role=client, role=blast or role=sink is required"
        )),
    };
    match nic {
        "pv" => match NetDevice::open(0) {
            Ok(d) => run(d, role, deadline),
            Err(e) => fail(format_args!("cannot open vif/0: {e}")),
        },
        "ne2k" => match Ne2k::open() {
            Ok(d) => run(d, role, deadline),
            Err(e) => fail(format_args!("cannot open the ne2k card: {e}")),
        },
        _ => fail(format_args!("nic=pv or nic=ne2k")),
    }
}

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
    Blast { count: u64, size: usize },
    Sink { count: u64 },
}

fn run<D: Nic>(dev: D, role: Role, deadline: u64) {
    match role {
        Role::Server => server(Net::open(dev, SERVER_IP), deadline),
        Role::Client => client(Net::open(dev, CLIENT_IP), deadline),
        Role::Blast { count, size } => blast(dev, count, size, deadline),
        Role::Sink { count } => sink(dev, count, deadline),
    }
}

/// The ethertype of `blast`'s frames (IEEE local experimental).
const BLAST_TYPE: [u8; 2] = [0x88, 0xb5];
/// The sequence number of the end marker.
const BLAST_END: u64 = u64::MAX;

fn rate(frames: u64, ns: u64) -> u64 {
    frames.saturating_mul(NS_PER_SEC) / ns.max(1)
}

/// Sends `count` raw broadcast frames of `size` bytes as fast as the device takes them.
fn blast<D: Nic>(mut dev: D, count: u64, size: usize, deadline: u64) {
    time::sleep(500 * NS_PER_MS);
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&dev.mac());
    f[12..14].copy_from_slice(&BLAST_TYPE);
    let start = time::monotonic_ns();
    let mut sent = 0;
    while sent < count {
        f[14..22].copy_from_slice(&sent.to_le_bytes());
        if dev.send_frame(&f) {
            sent += 1;
        } else if time::monotonic_ns() >= deadline {
            fail(format_args!("blast: deadline after {sent} frames"));
        } else {
            dev.wait_until(time::monotonic_ns() + NS_PER_MS);
        }
    }
    let ns = time::monotonic_ns() - start;
    f[14..22].copy_from_slice(&BLAST_END.to_le_bytes());
    for _ in 0..3 {
        time::sleep(20 * NS_PER_MS);
        let _ = dev.send_frame(&f);
    }
    println!(
        "netdemo: blast: sent {sent} frames of {size} bytes in {} us: {} frames/s; {}",
        ns / 1000,
        rate(sent, ns),
        dev.report()
    );
}

/// Counts `blast`'s frames until its end marker, `count` of them, or the deadline.
fn sink<D: Nic>(mut dev: D, count: u64, deadline: u64) {
    let mut buf = [0u8; ne2k::MAX_FRAME + 2];
    let (mut got, mut bytes, mut first, mut last) = (0u64, 0u64, 0u64, 0u64);
    println!("netdemo: sink: waiting for {count} frames");
    while got < count {
        let Some(n) = dev.recv_frame(&mut buf) else {
            let now = time::monotonic_ns();
            if now >= deadline {
                break;
            }
            dev.wait_until(deadline.min(now + 100 * NS_PER_MS));
            continue;
        };
        if n < 22 || buf[12..14] != BLAST_TYPE {
            continue;
        }
        if buf[14..22] == BLAST_END.to_le_bytes() {
            break;
        }
        last = time::monotonic_ns();
        if got == 0 {
            first = last;
        }
        got += 1;
        bytes += n as u64;
    }
    println!(
        "netdemo: sink: got {got} of {count} frames ({bytes} bytes) in {} us: {} frames/s; {}",
        (last - first) / 1000,
        rate(got.saturating_sub(1), last - first),
        dev.report()
    );
}

/// Echo on port 7, HTTP on port 80, until one of each has been served.
fn server<D: Nic>(mut net: Net<D>, deadline: u64) {
    let echo = net.tcp_socket();
    let http = net.tcp_socket();
    println!("netdemo: server listening on tcp/{ECHO_PORT} (echo) and tcp/{HTTP_PORT} (http)");
    let (mut echo_conns, mut echo_bytes, mut echo_was_open) = (0u32, 0usize, false);
    let (mut http_served, mut request) = (0u32, Vec::new());
    let mut buf = [0u8; 2048];
    while echo_conns == 0 || http_served == 0 {
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
