//! Two domains under one `hv`: the `pingpong` guest as `ping` and `pong`, which find each other
//! through the store, share a ring page by grant and an interdomain event channel, exchange
//! messages and tear everything down. Guests come from `HV_GUEST_DIR` (set by
//! `cargo xtask test`), or `target/x86_64-unknown-none/release`. Without KVM or guests the
//! tests skip, unless `HV_REQUIRE_KVM=1`, which turns a skip into a failure.

use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::{kvm_ok, skip};

/// How long one run may take before the test kills `hv` and fails (a hang is a failure).
const TIMEOUT: Duration = Duration::from_secs(120);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `hv run --config` on two pingpong domains, ping with `ping_args`; `None` if skipped.
fn pingpong(test: &str, ping_args: &str) -> Option<Run> {
    let Some(dir) = support::guest_dir_with("pingpong") else {
        skip("the pingpong guest is not built (run `cargo xtask test`)");
        return None;
    };
    if !kvm_ok() {
        return None;
    }
    let kernel = dir.join("pingpong");
    let kernel = kernel.to_str().expect("a UTF-8 guest path");
    let config = format!(
        "[[domain]]\nname = \"ping\"\nkernel = {kernel:?}\ncmdline = \"role=ping {ping_args}\"\n\n\
         [[domain]]\nname = \"pong\"\nkernel = {kernel:?}\ncmdline = \"role=pong\"\n"
    );
    let tmp = std::env::temp_dir().join(format!("hv-interdomain-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("pingpong.toml");
    std::fs::write(&file, config).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_hv"))
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hv");
    let f = support::finish(child, TIMEOUT);
    let r = Run {
        code: f.code,
        stdout: f.stdout,
        stderr: f.stderr,
    };
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!(
        "hv run --config (ping: {ping_args}) -> {}\n--- stdout\n{}--- stderr\n{}",
        r.code, r.stdout, r.stderr
    );
    assert!(
        f.finished,
        "hv did not finish within {TIMEOUT:?} (ping: {ping_args})"
    );
    Some(r)
}

/// Both domains exchanged `count` messages, printed their summaries and powered off with 0.
fn assert_clean(r: &Run, count: u64) {
    assert_eq!(r.code, 0, "hv's exit code");
    for (name, id) in [("ping", 1), ("pong", 2)] {
        assert!(
            r.stderr
                .contains(&format!("domain {name} (id {id}) powered off with code 0")),
            "{name} powered off with code 0"
        );
        assert!(
            r.stdout
                .contains(&format!("[{name}] pingpong: {count} messages each way in ")),
            "{name}'s throughput line"
        );
        assert!(
            r.stdout
                .contains(&format!("[{name}] pingpong: events sent ")),
            "{name}'s events line"
        );
    }
    assert!(!r.stdout.contains("FAILED"), "a side reported a failure");
}

/// The number of notifications `name` reported.
fn events_sent(r: &Run, name: &str) -> u64 {
    let prefix = format!("[{name}] pingpong: events sent ");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no events line for {name}"))
}

#[test]
fn pingpong_with_notification_suppression() {
    let Some(r) = pingpong("suppress", "count=2000 notify=suppress") else {
        return;
    };
    assert_clean(&r, 2000);
    // Batching: far fewer notifications than messages.
    assert!(
        events_sent(&r, "ping") < 2000,
        "ping notified every message"
    );
}

#[test]
fn pingpong_notifying_every_message() {
    let Some(r) = pingpong("always", "count=2000 notify=always") else {
        return;
    };
    assert_clean(&r, 2000);
    assert_eq!(events_sent(&r, "ping"), 2000);
    assert_eq!(events_sent(&r, "pong"), 2000);
}

#[test]
fn pingpong_one_round_trip_at_a_time() {
    let Some(r) = pingpong("rtt", "count=300 notify=always batch=1") else {
        return;
    };
    assert_clean(&r, 300);
    assert!(
        r.stdout.contains("[ping] pingpong: round trip median "),
        "round-trip line"
    );
}
