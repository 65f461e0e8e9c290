//! `cargo xtask bench net`: TCP throughput, UDP packets per second and UDP round trips over
//! the paravirtual vif (guest to guest on an in-hv switch, and guest to host over a TAP
//! device) against the emulated NE2000 NIC (guest to guest on the same kind of switch).
//!
//! Every case runs the `netbench` guest (see `demo-guest/src/bin/netbench.rs` for its
//! protocol) under `hv --stats`: a `source` that drives and a `sink` that answers, either a
//! second guest or, for the TAP rows, `xtask net-sink` on the host inside a network namespace
//! made for the run (so the traffic stays on that TAP's own addresses). Exits per frame are
//! the guests' exits, minus those of a run that only boots, connects and quits (`test=none`),
//! divided by the frames the guests' interfaces sent and received.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{bar_chart, domain_exits, fmt_f, print_table, Bar};
use super::{describe_status, guest_path, hv_bin, parse_bench, strip_domain_prefix, target_dir};
use super::{toml_string, Result};

/// The netbench ports (the guest's `ECHO_PORT`, `TCP_PORT`, `UDP_PORT`, `QUIT_PORT`).
const ECHO_PORT: u16 = 5003;
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;
const QUIT_PORT: u16 = 5004;

/// The switch both guests' interfaces are on.
const SWITCH: &str = "bench";
/// The TAP device of the host rows, its host-side and guest addresses.
const TAP: &str = "hvbench0";
const TAP_HOST: &str = "10.78.0.1";
const TAP_GUEST: &str = "10.78.0.2";

/// How a case's two ends are connected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Two guests, paravirtual vifs on an in-hv switch.
    Pv,
    /// Two guests, emulated NE2000 NICs on an in-hv switch.
    Ne2k,
    /// A guest's vif on a TAP device, the host's sockets on the other side.
    PvTap,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Pv => "pv, guest-guest",
            Link::Ne2k => "ne2k, guest-guest",
            Link::PvTap => "pv, guest-host (tap)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Link::Pv => "pv",
            Link::Ne2k => "ne2k",
            Link::PvTap => "pv-tap",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Link::Pv => "#2b7bb9",
            Link::Ne2k => "#d9534f",
            Link::PvTap => "#5cb85c",
        }
    }

    /// The workload sizes: the emulated NIC costs an exit per 16-bit word of a frame, so it
    /// gets far smaller ones.
    fn sizes(self, quick: bool) -> Sizes {
        let div = if quick { 4 } else { 1 };
        match self {
            Link::Pv | Link::PvTap => Sizes {
                tcp_bytes: (32 << 20) / div,
                udp_packets: 40_000 / div,
                rtt_count: 2000 / div,
            },
            Link::Ne2k => Sizes {
                tcp_bytes: (256 << 10) / div,
                udp_packets: 600 / div,
                rtt_count: 200 / div,
            },
        }
    }
}

struct Sizes {
    tcp_bytes: u64,
    udp_packets: u64,
    rtt_count: u64,
}

/// The UDP payload size of the packets-per-second test.
const UDP_SIZE: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    None,
    Tcp,
    Udp,
    Rtt,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::None => "none",
            Test::Tcp => "tcp",
            Test::Udp => "udp",
            Test::Rtt => "rtt",
        }
    }
}

/// What one run printed: `bench` values per domain (`host` for the host sink) and exits per
/// domain.
struct RunOut {
    bench: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    exits: BTreeMap<String, u64>,
}

impl RunOut {
    fn get(&self, domain: &str, name: &str, key: &str) -> Result<u64> {
        self.bench
            .get(domain)
            .and_then(|b| b.get(name))
            .and_then(|m| m.get(key))
            .copied()
            .ok_or_else(|| format!("{domain} printed no `bench {name} {key}=` value"))
    }

    /// Frames (sent + received) by the guests' interfaces.
    fn guest_frames(&self) -> u64 {
        self.bench
            .iter()
            .filter(|(d, _)| *d != "host")
            .filter_map(|(_, b)| b.get("frames"))
            .map(|f| f.get("tx").unwrap_or(&0) + f.get("rx").unwrap_or(&0))
            .sum()
    }

    fn guest_exits(&self) -> u64 {
        self.exits.values().sum()
    }
}

/// A network namespace for the TAP rows, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Result<Netns> {
        let name = format!("hvbench-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run `ip`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns(name))
    }

    /// `ip netns exec NAME program`.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Why the TAP rows cannot run here, if they cannot.
fn tap_unavailable() -> Option<String> {
    // Root (uid 0) is what creating a network namespace and a TAP needs.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some("not root (creating a network namespace and a TAP needs it)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

fn domain_toml(name: &str, kernel: &str, cmdline: &str, net_key: &str, net: &str) -> String {
    format!(
        "[[domain]]\nname = \"{name}\"\nkernel = {kernel}\nmem = \"128M\"\ncmdline = {}\n{net_key} = {}\n\n",
        toml_string(cmdline),
        net
    )
}

/// Runs one case; `netns` is required for [`Link::PvTap`].
fn run_case(link: Link, test: Test, s: &Sizes, netns: Option<&Netns>) -> Result<RunOut> {
    let kernel = toml_string(&guest_path("netbench")?.to_string_lossy());
    let args = match test {
        Test::None => String::new(),
        Test::Tcp => format!("bytes={}", s.tcp_bytes),
        Test::Udp => format!("packets={} size={UDP_SIZE}", s.udp_packets),
        Test::Rtt => format!("count={}", s.rtt_count),
    };
    let t = test.name();
    let sw = toml_string(&format!("switch:{SWITCH}"));
    let text = match link {
        Link::Pv | Link::Ne2k => {
            let (key, nic) = match link {
                Link::Pv => ("nets", "pv"),
                _ => ("emulated_net", "ne2k"),
            };
            let net = if key == "nets" {
                format!("[{sw}]")
            } else {
                sw.clone()
            };
            domain_toml(
                "sink",
                &kernel,
                &format!("role=sink test={t} nic={nic} ip=10.0.0.1"),
                key,
                &net,
            ) + &domain_toml(
                "source",
                &kernel,
                &format!("role=source test={t} nic={nic} ip=10.0.0.2 peer=10.0.0.1 {args}"),
                key,
                &net,
            )
        }
        Link::PvTap => domain_toml(
            "source",
            &kernel,
            &format!("role=source test={t} nic=pv ip={TAP_GUEST} peer={TAP_HOST} {args}"),
            "nets",
            &format!(
                "[{}]",
                toml_string(&format!("tap:{TAP},host={TAP_HOST}/24"))
            ),
        ),
    };
    let dir = target_dir().join("xtask");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = dir.join("bench-net.toml");
    std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    eprintln!("xtask: bench net: {} {t} {args}", link.short());

    let mut sink: Option<Child> = None;
    let mut cmd = match (link, netns) {
        (Link::PvTap, Some(ns)) => {
            let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
            let mut c = ns.command(&exe);
            c.arg("net-sink").stdout(Stdio::piped());
            let mut child = c
                .spawn()
                .map_err(|e| format!("cannot start the host sink: {e}"))?;
            // It prints `ready` once its sockets are bound.
            let mut first = Vec::new();
            if let Some(out) = child.stdout.as_mut() {
                let mut b = [0u8; 1];
                while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    first.push(b[0]);
                }
            }
            let first = String::from_utf8_lossy(&first).into_owned();
            if first.trim() != "ready" {
                let _ = child.kill();
                return Err(format!("the host sink did not start: {first:?}"));
            }
            sink = Some(child);
            ns.command(&hv_bin())
        }
        (Link::PvTap, None) => return Err("the TAP rows need a network namespace".into()),
        _ => Command::new(hv_bin()),
    };
    cmd.arg("run").arg("--config").arg(&file).arg("--stats");
    let out = cmd.output().map_err(|e| format!("cannot start hv: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut bench = bench_by_domain(&stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(mut child) = sink {
        let mut text = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut text);
        }
        let _ = child.wait();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        bench.insert("host".into(), parse_bench(&lines));
    }
    if !out.status.success() {
        eprint!("{stdout}{stderr}");
        return Err(format!(
            "netbench ({} {t}) failed ({})",
            link.short(),
            describe_status(out.status)
        ));
    }
    let mut exits = domain_exits(&stderr);
    // A single-domain run names its domain after the config's entry too.
    exits.retain(|d, _| d != "host");
    if exits.is_empty() {
        return Err("hv --stats printed no `stats for domain` lines".into());
    }
    Ok(RunOut { bench, exits })
}

/// The `bench` lines of an hv run's output, by domain (a line without a `[domain] ` prefix
/// belongs to `source`, the only domain of a TAP run).
fn bench_by_domain(stdout: &str) -> BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>> {
    let mut per_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in stdout.lines() {
        let name = match l.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((name, _)) if !name.contains(' ') => name,
            _ => "source",
        };
        per_domain
            .entry(name.to_string())
            .or_default()
            .push(strip_domain_prefix(l).to_string());
    }
    per_domain
        .into_iter()
        .map(|(d, lines)| (d, parse_bench(&lines)))
        .collect()
}

/// One table row.
struct Row {
    link: Link,
    test: Test,
    /// MB/s (tcp), packets/s received (udp), round trip median in ns (rtt).
    value: f64,
    /// tcp: none; udp: packets sent per second; rtt: p10 and p90.
    detail: String,
    frames: u64,
    exits: u64,
}

impl Row {
    fn exits_per_frame(&self) -> f64 {
        self.exits as f64 / self.frames.max(1) as f64
    }

    fn shown_value(&self) -> String {
        match self.test {
            Test::Tcp => format!("{} MB/s", fmt_f(self.value)),
            Test::Udp => format!("{} pkt/s", fmt_f(self.value)),
            Test::Rtt => format!("{} us", fmt_f(self.value / 1e3)),
            Test::None => "-".into(),
        }
    }
}

/// The sink of a case: the `sink` guest, or the host.
fn sink_of(link: Link) -> &'static str {
    if link == Link::PvTap {
        "host"
    } else {
        "sink"
    }
}

fn measure(link: Link, test: Test, out: &RunOut, base: &RunOut) -> Result<Row> {
    let frames = out.guest_frames();
    let exits = out.guest_exits().saturating_sub(base.guest_exits());
    let sink = sink_of(link);
    let (value, detail) = match test {
        Test::Tcp => {
            let bytes = out.get(sink, "tcp_rx", "bytes")?;
            let ns = out.get(sink, "tcp_rx", "ns")?.max(1);
            (bytes as f64 * 1e3 / ns as f64, format!("{bytes} bytes"))
        }
        Test::Udp => {
            let got = out.get(sink, "udp_rx", "packets")?;
            let ns = out.get(sink, "udp_rx", "ns")?.max(1);
            let sent = out.get("source", "udp_tx", "packets")?;
            let sent_ns = out.get("source", "udp_tx", "ns")?.max(1);
            (
                got as f64 * 1e9 / ns as f64,
                format!(
                    "{got} of {sent} received; sent at {} pkt/s",
                    fmt_f(sent as f64 * 1e9 / sent_ns as f64)
                ),
            )
        }
        Test::Rtt => {
            let med = out.get("source", "rtt_ns", "median")?;
            let p10 = out.get("source", "rtt_ns", "p10")?;
            let p90 = out.get("source", "rtt_ns", "p90")?;
            let lost = out.get("source", "rtt_ns", "lost")?;
            (
                med as f64,
                format!(
                    "p10 {} us, p90 {} us, {lost} lost",
                    fmt_f(p10 as f64 / 1e3),
                    fmt_f(p90 as f64 / 1e3)
                ),
            )
        }
        Test::None => (0.0, String::new()),
    };
    Ok(Row {
        link,
        test,
        value,
        detail,
        frames,
        exits,
    })
}

/// `cargo xtask bench net [--quick] [--link pv|ne2k|pv-tap]...`.
pub fn bench_net(rest: &[OsString]) -> Result<()> {
    let mut quick = false;
    let mut only = Vec::new();
    let mut args = rest.iter();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--quick") => quick = true,
            Some("--link") => {
                let l = args.next().and_then(|l| l.to_str()).unwrap_or("");
                only.push(
                    [Link::Pv, Link::Ne2k, Link::PvTap]
                        .into_iter()
                        .find(|k| k.short() == l)
                        .ok_or_else(|| {
                            format!("bench net: --link {l:?}: use pv, ne2k or pv-tap")
                        })?,
                );
            }
            _ => {
                return Err(format!(
                    "bench net: unknown argument {a:?} (known: --quick, --link LINK)"
                ))
            }
        }
    }
    let wanted = |l: Link| only.is_empty() || only.contains(&l);
    let tap_skip = if wanted(Link::PvTap) {
        tap_unavailable()
    } else {
        Some("not asked for".into())
    };
    let netns = match &tap_skip {
        None => Some(Netns::create()?),
        Some(_) => None,
    };
    let mut links: Vec<Link> = [Link::Pv, Link::Ne2k]
        .into_iter()
        .filter(|&l| wanted(l))
        .collect();
    if netns.is_some() {
        links.push(Link::PvTap);
    }
    let mut rows = Vec::new();
    for &link in &links {
        let s = link.sizes(quick);
        let base = run_case(link, Test::None, &s, netns.as_ref())?;
        for test in [Test::Tcp, Test::Udp, Test::Rtt] {
            let out = run_case(link, test, &s, netns.as_ref())?;
            rows.push(measure(link, test, &out, &base)?);
        }
    }
    println!(
        "net benchmark: netbench guests under `hv --stats`, one run per row; tcp = one \
         connection's goodput, udp = {UDP_SIZE}-byte datagrams sent as fast as the source can, \
         rate = received/s; rtt = UDP echo; exits per frame = the guests' exits (minus a \
         boot-and-connect run) / frames their NICs sent and received"
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.link.name().to_string(),
                r.test.name().to_string(),
                r.shown_value(),
                r.frames.to_string(),
                fmt_f(r.exits_per_frame()),
                r.detail.clone(),
            ]
        })
        .collect();
    print_table(
        &["link", "test", "result", "frames", "exits/frame", "detail"],
        &table,
        &[0, 1, 5],
    );
    if let Some(why) = &tap_skip {
        println!("guest-host (tap) rows skipped: {why}");
    }
    let find = |l: Link, t: Test| rows.iter().find(|r| r.link == l && r.test == t);
    if let (Some(pv), Some(em)) = (find(Link::Pv, Test::Udp), find(Link::Ne2k, Test::Udp)) {
        println!(
            "PV vs emulated NIC, UDP: {:.0}x the packets per second, {:.0}x fewer exits per frame",
            pv.value / em.value.max(f64::MIN_POSITIVE),
            em.exits_per_frame() / pv.exits_per_frame().max(f64::MIN_POSITIVE)
        );
    }
    if let (Some(pv), Some(em)) = (find(Link::Pv, Test::Tcp), find(Link::Ne2k, Test::Tcp)) {
        println!(
            "PV vs emulated NIC, TCP: {:.0}x the throughput",
            pv.value / em.value.max(f64::MIN_POSITIVE)
        );
    }
    if let (Some(pv), Some(em)) = (find(Link::Pv, Test::Rtt), find(Link::Ne2k, Test::Rtt)) {
        println!(
            "PV vs emulated NIC, round trip: {:.1}x shorter",
            em.value / pv.value.max(f64::MIN_POSITIVE)
        );
    }
    let csv = to_csv(&rows);
    let dir = target_dir();
    let csv_path = dir.join("bench-net.csv");
    std::fs::write(&csv_path, csv).map_err(|e| format!("writing {}: {e}", csv_path.display()))?;
    let bars: Vec<Bar> = rows
        .iter()
        .filter(|r| r.test == Test::Udp)
        .map(|r| Bar {
            label: format!("{} udp", r.link.name()),
            value: r.value,
            colour: r.link.colour(),
        })
        .collect();
    let svg = bar_chart(
        "UDP packets per second received (64-byte datagrams): PV vif vs emulated NE2000",
        "packets/s",
        &bars,
    );
    let svg_path = dir.join("bench-net.svg");
    std::fs::write(&svg_path, svg).map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
    println!("wrote {} and {}", csv_path.display(), svg_path.display());
    Ok(())
}

fn to_csv(rows: &[Row]) -> String {
    let mut s = String::from("link,test,value,unit,frames,exits,exits_per_frame,detail\n");
    for r in rows {
        let unit = match r.test {
            Test::Tcp => "MB/s",
            Test::Udp => "packets/s",
            Test::Rtt => "ns",
            Test::None => "",
        };
        let _ = writeln!(
            s,
            "{},{},{:.1},{unit},{},{},{:.4},\"{}\"",
            r.link.short(),
            r.test.name(),
            r.value,
            r.frames,
            r.exits,
            r.exits_per_frame(),
            r.detail.replace('"', "'")
        );
    }
    s
}

/// `xtask net-sink`: the host end of the TAP rows (run inside the bench's network namespace):
/// UDP echo, a TCP data sink, a UDP datagram counter, until a datagram reaches the quit port
/// or two minutes pass. Prints `ready`, then `bench tcp_rx` / `bench udp_rx` lines.
pub fn net_sink() -> Result<()> {
    let bind_udp =
        |port: u16| UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("udp port {port}: {e}"));
    let echo = bind_udp(ECHO_PORT)?;
    let count = bind_udp(UDP_PORT)?;
    let quit = bind_udp(QUIT_PORT)?;
    let tcp = TcpListener::bind(("0.0.0.0", TCP_PORT))
        .map_err(|e| format!("tcp port {TCP_PORT}: {e}"))?;
    let done = Arc::new(AtomicBool::new(false));
    println!("ready");
    let _ = std::io::stdout().flush();

    let d = done.clone();
    std::thread::spawn(move || {
        let _ = echo.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 2048];
        while !d.load(Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let d = done.clone();
    let udp = std::thread::spawn(move || {
        let _ = count.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 2048];
        let (mut n, mut first, mut last) = (0u64, None, Instant::now());
        while !d.load(Ordering::Relaxed) {
            if let Ok((len, _)) = count.recv_from(&mut buf) {
                if len >= 8 {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = now;
                    n += 1;
                }
            }
        }
        first.map(|f| (n, last.duration_since(f)))
    });
    let tcp_thread = std::thread::spawn(move || {
        let (mut conn, _) = tcp.accept().ok()?;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut bytes, mut first, mut last) = (0u64, None, Instant::now());
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = now;
                    bytes += k as u64;
                }
            }
        }
        first.map(|f| (bytes, last.duration_since(f)))
    });
    let _ = quit.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = [0u8; 64];
    let _ = quit.recv_from(&mut buf);
    done.store(true, Ordering::Relaxed);
    if let Ok(Some((n, t))) = udp.join() {
        println!("bench udp_rx packets={n} ns={}", t.as_nanos());
    }
    // The TCP thread only finishes by itself if a connection came and closed (before the
    // quit datagram, or very soon after).
    let t0 = Instant::now();
    while !tcp_thread.is_finished() && t0.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if tcp_thread.is_finished() {
        if let Ok(Some((b, t))) = tcp_thread.join() {
            println!("bench tcp_rx bytes={b} ns={}", t.as_nanos());
        }
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stdout: &str, stderr: &str) -> RunOut {
        RunOut {
            bench: bench_by_domain(stdout),
            exits: domain_exits(stderr),
        }
    }

    #[test]
    fn udp_row_from_two_guests() {
        let out = run(
            "[sink] netbench: ip 10.0.0.1/24\n[source] bench udp_tx packets=1000 ns=2000000\n\
             [sink] bench udp_rx packets=500 ns=1000000\n[source] bench frames tx=1003 rx=2\n\
             [sink] bench frames tx=2 rx=503\n",
            "stats for domain sink: 300 exits\nstats for domain source: 200 exits\n",
        );
        let base = run(
            "",
            "stats for domain sink: 100 exits\nstats for domain source: 100 exits\n",
        );
        let r = measure(Link::Pv, Test::Udp, &out, &base).unwrap();
        assert_eq!(r.value, 500_000.0);
        assert_eq!(r.frames, 1510);
        assert_eq!(r.exits, 300);
        assert!(r
            .detail
            .starts_with("500 of 1000 received; sent at 500000 pkt/s"));
        // A missing value is an error, not a zero.
        assert!(measure(Link::Pv, Test::Tcp, &out, &base).is_err());
    }

    #[test]
    fn tap_rows_read_the_host_sink() {
        let mut out = run(
            "bench tcp_tx bytes=4096 ns=10\nbench frames tx=5 rx=3\n",
            "stats for domain source: 50 exits\n",
        );
        out.bench.insert(
            "host".into(),
            parse_bench(&["bench tcp_rx bytes=2000000 ns=1000000".to_string()]),
        );
        let base = run("", "stats for domain source: 10 exits\n");
        let r = measure(Link::PvTap, Test::Tcp, &out, &base).unwrap();
        assert_eq!(r.value, 2000.0);
        assert_eq!(r.frames, 8);
        assert_eq!(r.exits, 40);
        let csv = to_csv(&[r]);
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("pv-tap,tcp,2000.0,MB/s,8,40,5.0000"));
    }
}
