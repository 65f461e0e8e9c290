//! The host TAP backend (`--net tap:NAME[,host=A.B.C.D/P]`, `hv_core::tap`).
//!
//! The end-to-end tests run the netdemo server on a TAP inside a network namespace of their own
//! (`hvtap-<pid>-<tag>`, deleted afterwards whatever happens), so the only traffic is between
//! the TAP's two addresses in that namespace: the host side pings the guest and fetches its
//! page with curl, and the guest powers off with 0 after that one request. One lets hv create
//! and configure the TAP (and checks it is gone afterwards), the other uses a persistent TAP
//! made beforehand with `ip tuntap add` (and checks it is left as it was). It needs root (to create
//! the namespace and the TAP), `ip` (iproute2), `curl`, KVM and the built guests; without them
//! it skips, saying what is missing, unless `HV_REQUIRE_KVM=1`, which turns the skip into a
//! failure. `ping` (iputils-ping) is used when present.
//!
//! The other tests check that refusals are one line with their exit code: a bad name (no
//! privilege or guest needed), an interface that is not a TAP, and creating a TAP without
//! `CAP_NET_ADMIN` (as root, under `setpriv` without it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::{guest_dir_with, kvm_ok, skip};

/// Exit code of an invalid argument (`hv_core::error::exit_code::BAD_ARGUMENT`).
const BAD_ARGUMENT: i32 = 81;
/// Exit code of a TAP that cannot be opened or configured (`exit_code::TAP`).
const TAP: i32 = 84;
/// How long the guest may take to boot and listen.
const BOOT: Duration = Duration::from_secs(30);
/// How long `hv` may take to power off after the request.
const FINISH: Duration = Duration::from_secs(30);

fn hv() -> &'static str {
    env!("CARGO_BIN_EXE_hv")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program args` runs and succeeds (a probe for a tool being installed).
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The netdemo guest, or `None` (after deciding whether that is a failure) if it is not built.
fn netdemo() -> Option<PathBuf> {
    match guest_dir_with("netdemo") {
        Some(dir) => Some(dir.join("netdemo")),
        None => {
            skip("guest netdemo is not built (run `cargo xtask build`)");
            None
        }
    }
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Result<Netns, String> {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns { name })
    }

    /// `ip netns exec NAME program args...`
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A running `hv` whose stdout lines arrive on a channel (and are echoed to stderr for the
/// test log); killed on drop if still running.
struct Hv {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Hv {
    fn spawn(mut cmd: Command) -> Hv {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hv");
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("hv| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("hv! {line}");
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        Hv {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits (at most `timeout`) for a stdout line containing `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.stdout.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits (at most `timeout`) for `hv` to end; its exit code (`None` if it had to be
    /// killed), all of its stdout and its stderr.
    fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<String>, String) {
        let end = Instant::now() + timeout;
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("wait for hv") {
                break s.code();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (code, std::mem::take(&mut self.stdout), stderr)
    }
}

impl Drop for Hv {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The netdemo guest and a fresh network namespace named `hvtap-<pid>-<tag>`, or `None`
/// (after deciding whether that is a failure) if root, `ip`, `curl`, KVM or the guest is
/// missing.
fn setup(tag: &str) -> Option<(PathBuf, Netns)> {
    if !is_root() {
        skip("not root: the TAP test creates a network namespace and a TAP");
        return None;
    }
    if !runs("ip", &["-V"]) {
        skip("`ip` (iproute2) is missing");
        return None;
    }
    if !runs("curl", &["--version"]) {
        skip("`curl` is missing");
        return None;
    }
    let guest = netdemo()?;
    if !kvm_ok() {
        return None;
    }
    match Netns::create(format!("hvtap-{}-{tag}", std::process::id())) {
        Ok(ns) => Some((guest, ns)),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// Runs the netdemo server at 10.77.0.2/24 on `--net NET` (the TAP `tap`, whose host side
/// must end up at 10.77.0.1/24) in `ns`; pings it (if `ping` is installed), fetches its page
/// and checks that it powers off with 0.
fn serve_and_fetch(ns: &Netns, guest: &std::path::Path, net: &str, tap: &str) {
    let mut cmd = ns.command(hv());
    cmd.arg("run").arg(guest).args(["--net", net]).args([
        "--cmdline",
        "role=server ip=10.77.0.2/24 requests=1 timeout=60",
    ]);
    let mut hv = Hv::spawn(cmd);
    assert!(
        hv.wait_for("netdemo: server listening on 10.77.0.2", BOOT),
        "the guest did not come up within {} s",
        BOOT.as_secs()
    );
    let addr = ns.run("ip", &["-o", "-4", "addr", "show", "dev", tap]);
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains("inet 10.77.0.1/24"), "host address: {addr}");

    if runs("ping", &["-V"]) {
        let ping = ns.run("ping", &["-c", "1", "-W", "5", "10.77.0.2"]);
        let text = String::from_utf8_lossy(&ping.stdout);
        eprintln!("{text}");
        assert!(ping.status.success(), "ping 10.77.0.2 failed: {text}");
        assert!(text.contains("1 received"), "{text}");
    } else {
        eprintln!("note: `ping` is missing; not pinging the guest");
    }

    let t = Instant::now();
    let curl = ns.run(
        "curl",
        &[
            "-sS",
            "-i",
            "--max-time",
            "5",
            "--retry",
            "5",
            "--retry-connrefused",
            "--retry-delay",
            "1",
            "http://10.77.0.2/",
        ],
    );
    let page = String::from_utf8_lossy(&curl.stdout);
    eprintln!(
        "curl took {:.1} ms:\n{page}{}",
        t.elapsed().as_secs_f64() * 1e3,
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(curl.status.success(), "curl failed");
    assert!(page.starts_with("HTTP/1.0 200 OK"), "status line: {page}");
    assert!(page.contains("<h1>Hello from netdemo</h1>"), "body: {page}");

    let (code, stdout, stderr) = hv.finish(FINISH);
    assert!(
        stdout
            .iter()
            .any(|l| l.contains("netdemo: http request \"GET / HTTP/1.1\": 200 OK")),
        "the guest logged the request"
    );
    assert_eq!(code, Some(0), "hv's exit code (stderr: {stderr})");
}

#[test]
fn the_host_pings_and_fetches_the_page_of_a_guest_on_a_tap() {
    let Some((guest, ns)) = setup("new") else {
        return;
    };
    // hv creates hvt0 and configures its host side.
    serve_and_fetch(&ns, &guest, "tap:hvt0,host=10.77.0.1/24", "hvt0");
    // The TAP was hv's own (non-persistent): it went away with hv.
    let link = ns.run("ip", &["link", "show", "hvt0"]);
    assert!(!link.status.success(), "hvt0 outlived hv");
}

#[test]
fn an_existing_persistent_tap_is_used_as_it_is() {
    let Some((guest, ns)) = setup("persist") else {
        return;
    };
    for args in [
        &["tuntap", "add", "hvt1", "mode", "tap"][..],
        &["addr", "add", "10.77.0.1/24", "dev", "hvt1"],
        &["link", "set", "hvt1", "up"],
    ] {
        let out = ns.run("ip", args);
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serve_and_fetch(&ns, &guest, "tap:hvt1", "hvt1");
    // Still there, still configured, after hv.
    let addr = ns.run("ip", &["-o", "-4", "addr", "show", "dev", "hvt1"]);
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("inet 10.77.0.1/24"),
        "the persistent tap is gone or changed"
    );
}

/// Runs `hv run GUEST --net NET` (optionally under `wrapper`) and returns its exit code and
/// stderr.
fn refused(wrapper: &[&str], guest: &std::path::Path, net: &str) -> (Option<i32>, String) {
    let mut cmd = match wrapper.split_first() {
        Some((w, args)) => {
            let mut c = Command::new(w);
            c.args(args).arg(hv());
            c
        }
        None => Command::new(hv()),
    };
    let out = cmd
        .arg("run")
        .arg(guest)
        .args(["--net", net])
        .stdin(Stdio::null())
        .output()
        .expect("run hv");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("hv --net {net} -> {:?}\n{stderr}", out.status.code());
    (out.status.code(), stderr)
}

#[test]
fn a_bad_tap_name_is_one_line_and_exit_81() {
    // Arguments are checked before the guest is read: no guest, KVM or privilege needed.
    let guest = std::path::Path::new("/nonexistent/guest.elf");
    for net in [
        "tap:sixteen_chars_ab",
        "tap:a/b",
        "tap:",
        "tap:hv0,host=10.77.0.1",
    ] {
        let (code, stderr) = refused(&[], guest, net);
        assert_eq!(code, Some(BAD_ARGUMENT), "{net}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("hv: error: invalid argument: --net {net:?}: ")),
            "{stderr}"
        );
    }
    let (_, stderr) = refused(&[], guest, "tap:sixteen_chars_ab");
    assert!(
        stderr.contains("the tap name must be 1 to 15 of [A-Za-z0-9_.-]"),
        "{stderr}"
    );
}

#[test]
fn an_interface_that_is_not_a_tap_is_refused_with_exit_84() {
    let Some(guest) = netdemo() else { return };
    // `lo` exists in every namespace and is not a TAP; attaching fails without touching it.
    let (code, stderr) = refused(&[], &guest, "tap:lo");
    assert_eq!(code, Some(TAP));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let not_tap = "hv: error: tap lo: an interface named lo exists and is not a TAP device";
    // Without root, opening /dev/net/tun (usually mode 0600) may be what fails.
    let denied = "hv: error: tap lo: permission denied: creating a TAP needs CAP_NET_ADMIN";
    assert!(
        stderr.trim_end() == not_tap || (!is_root() && stderr.starts_with(denied)),
        "{stderr}"
    );
}

#[test]
fn creating_a_tap_without_cap_net_admin_is_refused_with_exit_84() {
    let Some(guest) = netdemo() else { return };
    // As root, drop CAP_NET_ADMIN from hv's bounding set (so from its capabilities).
    let wrapper: &[&str] = if is_root() {
        if !runs("setpriv", &["--version"]) {
            skip("`setpriv` (util-linux) is missing: cannot run hv without CAP_NET_ADMIN");
            return;
        }
        &[
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-all",
        ]
    } else {
        &[]
    };
    let name = format!("hvp{}", std::process::id() % 100_000_000);
    let (code, stderr) = refused(wrapper, &guest, &format!("tap:{name},host=10.77.0.1/24"));
    assert_eq!(code, Some(TAP));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "hv: error: tap {name}: permission denied: creating a TAP needs CAP_NET_ADMIN \
             (run as root or create it first with `ip tuntap add {name} mode tap user $USER`)"
        )
    );
}
