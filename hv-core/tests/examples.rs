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

mod support;
use support::{config, failures, hv_config, hv_config_with, summary};

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
    let r = hv_config_with(&file, &["--stats"]);
    assert_eq!(r.code, 0, "both domains power off with 0");
    // `--stats` shows each domain's vif counters: frames both ways, nothing refused or lost.
    let vifs: Vec<(u64, u64)> = r
        .stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("device vif/0: tx "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert!(l.contains(", 0 refused;"), "{l}");
            assert!(l.contains(", 0 dropped (no buffer"), "{l}");
            (w[0].parse().unwrap(), w[7].parse().unwrap())
        })
        .collect();
    assert_eq!(vifs.len(), 2, "one vif line per domain");
    for (tx, rx) in &vifs {
        assert!(*tx >= 5 && *rx >= 5, "frames both ways: {vifs:?}");
    }
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
