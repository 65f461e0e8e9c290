//! The net protocol conformance suite (`examples/netconformance.toml`): a hostile vif frontend
//! (`demo-guest/src/bin/netconformance.rs`) puts malformed requests on the rings of the hv's
//! net backend and expects the documented status for each, while a peer domain on the same
//! switch echoes its frames and must see none of the refused ones. Guests come from
//! `HV_GUEST_DIR` (set by `cargo xtask test`) or `target/x86_64-unknown-none/release`; without
//! KVM or the guests the test skips, unless `HV_REQUIRE_KVM=1`.

mod support;
use support::{config, hv_config, summary};

/// The cases the suite runs: if one is added or lost, this must change with it.
const CASES: u32 = 49;

#[test]
fn hostile_vif_frontend_is_refused_without_harm() {
    let Some(cfg) = config("netconformance.toml", "netconformance") else {
        return;
    };
    let r = hv_config(&cfg);
    let failed: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("[netconformance] netconf: ") && l.contains(" ... FAIL"))
        .collect();
    let (passed, nfailed) = summary(&r.stdout, "netconformance").expect("the suite's closing line");
    assert_eq!(nfailed, 0, "failed cases:\n{}", failed.join("\n"));
    assert!(failed.is_empty());
    assert_eq!(passed, CASES, "cases passed");
    let ok_lines = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("[netconformance] netconf: ") && l.ends_with(" ... ok"))
        .count();
    assert_eq!(ok_lines as u32, CASES, "one `... ok` line per case");
    // The peer echoed the good frames, saw none of the refused ones, and was told bye.
    let peer_done = r
        .stdout
        .lines()
        .find(|l| l.starts_with("[netconf-peer] netconf-peer: done: "))
        .expect("the peer's closing line");
    assert!(peer_done.contains(" 0 refused frames seen"), "{peer_done}");
    // Both broken rings and the four refused handshakes were reported by the hv, which kept
    // running: both domains powered off with 0.
    assert_eq!(
        r.stderr
            .matches("the frontend broke a ring; disconnected")
            .count(),
        2,
        "two rings broken on purpose"
    );
    assert_eq!(r.stderr.matches(": cannot connect: ").count(), 4);
    assert!(r
        .stderr
        .contains("domain netconf-peer (id 2) powered off with code 0"));
    assert_eq!(r.code, 0);
}
