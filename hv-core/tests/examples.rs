//! Runs the example configs under `hv run --config`: the isolation test
//! (`examples/isolation.toml`: an attacker domain tries to reach a victim's memory through every
//! hypercall that takes an address or a grant), the conformance suite with its peer domain
//! (`examples/conformance.toml`), and two guests talking TCP/IP over an in-hv switch
//! (`examples/netdemo.toml`, and `examples/netdemo-ne2k.toml` with the client on the emulated
//! NE2000 card).
//!
//! Guests come from `HV_GUEST_DIR` (set by `cargo xtask test`), or
//! `target/x86_64-unknown-none/release`; each example's kernel paths are rewritten to that
//! directory in a copy of the config. Without KVM or the guests the tests skip (saying so),
//! unless `HV_REQUIRE_KVM=1`, which turns a skip into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::{kvm_ok, skip};

/// How long one run may take before it is killed and the test fails.
const TIMEOUT: Duration = Duration::from_secs(120);

fn guest_dir() -> PathBuf {
    std::env::var_os("HV_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-none/release")
        })
}

/// A copy of `examples/<example>` whose kernels point into the guest directory, or `None`
/// (after deciding whether that is a failure) if KVM or the guest `guest` is missing.
fn config(example: &str, guest: &str) -> Option<PathBuf> {
    let dir = guest_dir();
    if !dir.join(guest).is_file() {
        skip(&format!(
            "guest {guest} is not built in {} (run `cargo xtask build`)",
            dir.display()
        ));
        return None;
    }
    if !kvm_ok() {
        skip("/dev/kvm is not usable");
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let prefix = "\"../target/x86_64-unknown-none/release/";
    assert!(
        text.contains(prefix),
        "{example} names no guest under {prefix}"
    );
    let dir = dir.canonicalize().expect("guest directory");
    let text = text.replace(prefix, &format!("\"{}/", dir.display()));
    let out = std::env::temp_dir().join(format!("hv-test-{}-{}", std::process::id(), example));
    std::fs::write(&out, text).expect("write the config copy");
    Some(out)
}

struct Run {
    code: i32,
    stdout: String,
}

/// Runs `hv run --config FILE`, killing it after `TIMEOUT`.
fn hv_config(file: &Path) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_hv"))
        .arg("run")
        .arg("--config")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hv");
    let f = support::finish(child, TIMEOUT);
    let (stdout, stderr) = (f.stdout, f.stderr);
    let status = f.finished.then_some(f.code);
    eprintln!(
        "hv run --config {} -> {status:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        file.display()
    );
    let _ = std::fs::remove_file(file);
    let Some(code) = status else {
        panic!("hv did not finish within {} s (killed)", TIMEOUT.as_secs());
    };
    Run { code, stdout }
}

/// The domain's last `N passed, M failed` line, as (N, M).
fn summary(stdout: &str, domain: &str) -> Option<(u32, u32)> {
    let prefix = format!("[{domain}] ");
    stdout.lines().rev().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let (p, f) = rest.split_once(", ")?;
        let p = p.strip_suffix(" passed")?.parse().ok()?;
        let f = f.strip_suffix(" failed")?.parse().ok()?;
        Some((p, f))
    })
}

fn failures(stdout: &str, domain: &str) -> Vec<String> {
    let prefix = format!("[{domain}] FAIL ");
    stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}

#[test]
fn attacker_cannot_reach_the_victims_memory() {
    let Some(cfg) = config("isolation.toml", "isolation") else {
        return;
    };
    let r = hv_config(&cfg);
    let (passed, failed) = summary(&r.stdout, "attacker").expect("the attacker's closing line");
    assert_eq!(
        failed,
        0,
        "attempts not refused as documented:\n{}",
        failures(&r.stdout, "attacker").join("\n")
    );
    assert!(passed >= 100, "only {passed} attempts");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("[victim] victim: secret intact")),
        "the victim's verdict"
    );
    assert_eq!(r.code, 0);
}

#[test]
fn conformance_suite_passes_with_its_peer_domain() {
    let Some(cfg) = config("conformance.toml", "conformance") else {
        return;
    };
    let r = hv_config(&cfg);
    let (passed, failed) = summary(&r.stdout, "conformance").expect("the suite's closing line");
    assert_eq!(
        failed,
        0,
        "failed cases:\n{}",
        failures(&r.stdout, "conformance").join("\n")
    );
    assert!(passed >= 110, "only {passed} cases passed");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("[conformance-peer] peer: done")),
        "the peer was told `done`"
    );
    assert_eq!(r.code, 0);
}

#[test]
fn two_guests_ping_and_talk_tcp_over_the_switch() {
    let Some(file) = config("netdemo.toml", "netdemo") else {
        return;
    };
    let r = hv_config(&file);
    assert_eq!(r.code, 0, "both domains power off with 0");
    let client = |needle: &str| {
        r.stdout
            .lines()
            .any(|l| l.starts_with("[client] ") && l.contains(needle))
    };
    assert!(
        client("netdemo: ping 10.0.0.1: seq 1: reply in"),
        "ICMP echo answered"
    );
    assert!(
        client("netdemo: fetched") && client("HTTP/1.0 200 OK"),
        "HTTP over TCP"
    );
    assert!(client("netdemo: echo ok"), "TCP echo");
}

#[test]
fn a_pv_guest_and_an_emulated_nic_guest_talk_tcp_over_the_switch() {
    let Some(file) = config("netdemo-ne2k.toml", "netdemo") else {
        return;
    };
    let r = hv_config(&file);
    assert_eq!(r.code, 0, "both domains power off with 0");
    let line = |domain: &str, needle: &str| {
        r.stdout
            .lines()
            .any(|l| l.starts_with(&format!("[{domain}] ")) && l.contains(needle))
    };
    assert!(
        line("client", "netdemo: ne2k up: mac 02:00:00:ff:02:00"),
        "the client runs on the emulated card, with its own MAC"
    );
    assert!(line("server", "netdemo: vif/0 up"), "the server on a vif");
    assert!(
        line("client", "netdemo: ping 10.0.0.1: seq 3: reply in"),
        "ICMP echo answered"
    );
    assert!(
        line("client", "netdemo: fetched") && line("client", "HTTP/1.0 200 OK"),
        "HTTP over TCP"
    );
    assert!(line("client", "netdemo: echo ok"), "TCP echo");
    assert!(
        line("client", "errors tx 0 rx 0, overruns 0"),
        "no frame lost on the card"
    );
}
