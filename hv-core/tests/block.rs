//! The paravirtual block device end to end: `hv --disk` serving guests that use the
//! `pv-drivers` block frontend (`blkbench`'s test modes, the `blkconformance` suite, the
//! `demo`'s persistent log). Guests come from `HV_GUEST_DIR` (set by `cargo xtask test`), or
//! `target/x86_64-unknown-none/release`. Without KVM or guests the tests skip, unless
//! `HV_REQUIRE_KVM=1`, which turns a skip into a failure.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;
use support::{kvm_ok, skip};

/// How long one run may take before the test kills `hv` and fails (a hang is a failure).
const TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// The path of guest `name`, if the guests are built and KVM is usable (else the test skips).
fn guest(name: &str) -> Option<PathBuf> {
    let Some(dir) = support::guest_dir_with("blkbench") else {
        skip("the block guests are not built (run `cargo xtask test`)");
        return None;
    };
    kvm_ok().then(|| dir.join(name))
}

/// A scratch directory for one test's images, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("hv-block-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    /// A zeroed image of `size` bytes.
    fn image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.0.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn spawn(guest: &Path, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hv"))
        .arg("run")
        .arg(guest)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hv")
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `hv run GUEST ARGS` to its end (killing it after [`TIMEOUT`]).
fn run(guest: &Path, args: &[String]) -> Run {
    let f = support::finish(spawn(guest, args), TIMEOUT);
    let r = Run {
        code: f.code,
        stdout: f.stdout,
        stderr: f.stderr,
    };
    eprintln!(
        "hv run {} {args:?} -> {}\n--- stdout\n{}--- stderr\n{}",
        guest.display(),
        r.code,
        r.stdout,
        r.stderr
    );
    assert!(f.finished, "hv did not finish within {TIMEOUT:?}");
    r
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn disk(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_string()
}

/// `blkbench`'s pattern (see its `tests::pattern_byte`): the byte at disk offset `o`.
fn pattern_byte(seed: u64, o: u64) -> u8 {
    let mut z = (o / 8)
        .wrapping_add(seed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    z.to_le_bytes()[(o % 8) as usize]
}

/// `blkbench`'s durability record number `n` (see its `tests::record`).
fn record(n: u64) -> Vec<u8> {
    let mut out = vec![0u8; 512];
    out[..8].copy_from_slice(b"HVREC001");
    out[8..16].copy_from_slice(&n.to_le_bytes());
    for (i, b) in out[16..].iter_mut().enumerate() {
        *b = (n as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    out
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let Some(g) = guest("blkbench") else { return };
    let s = Scratch::new("durability");
    let img = s.image("d.img", 8 * MIB);
    let mut child = spawn(
        &g,
        &args(&["--disk", &disk(&img), "--cmdline", "test=durability"]),
    );
    let err = drain(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Kill hv (SIGKILL: no chance to flush anything more) after some acknowledgements.
    let start = Instant::now();
    let mut acked: Option<u64> = None;
    let mut acks = 0;
    let mut lines = Vec::new();
    while acks < 20 && start.elapsed() < TIMEOUT {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(n) = line.strip_prefix("acked ") {
                    acked = Some(n.trim().parse().expect("acked N"));
                    acks += 1;
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().expect("SIGKILL hv");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    // Acknowledgements printed before the kill are promises too.
    for line in rx.try_iter() {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = Some(n.trim().parse().expect("acked N"));
        }
        lines.push(line);
    }
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        lines.join("\n"),
        err.join().unwrap()
    );
    assert!(status.code().is_none(), "hv was killed, not exited");
    let last = acked.expect("the guest acknowledged no record");
    assert!(
        acks >= 20,
        "only {acks} acknowledgements before the timeout"
    );
    let bytes = std::fs::read(&img).unwrap();
    for n in 0..=last {
        let at = n as usize * 512;
        assert_eq!(
            &bytes[at..at + 512],
            &record(n)[..],
            "record {n} (of {last} acknowledged) is not on the disk"
        );
    }
    eprintln!("records 0..={last} all on the disk after SIGKILL");
}

#[test]
fn pattern_round_trips_in_one_run_and_the_next() {
    let Some(g) = guest("blkbench") else { return };
    let s = Scratch::new("roundtrip");
    let img = s.image("r.img", 8 * MIB);
    let d = disk(&img);
    let r = run(
        &g,
        &args(&[
            "--disk",
            &d,
            "--cmdline",
            "test=write-pattern seed=42 bytes=5M",
        ]),
    );
    assert!(r.stdout.contains("roundtrip: same-run ok"), "same run");
    assert_eq!(r.code, 0);
    // The image holds the pattern, as the host sees it.
    let bytes = std::fs::read(&img).unwrap();
    for (o, &b) in bytes[..5 * MIB as usize].iter().enumerate() {
        assert_eq!(b, pattern_byte(42, o as u64), "byte {o} of the image");
    }
    assert!(
        bytes[5 * MIB as usize..].iter().all(|&b| b == 0),
        "past the pattern"
    );
    let r = run(
        &g,
        &args(&[
            "--disk",
            &d,
            "--cmdline",
            "test=check-pattern seed=42 bytes=5M",
        ]),
    );
    assert!(r.stdout.contains("roundtrip: second-run ok"), "second run");
    assert_eq!(r.code, 0);
    // And a different pattern is told apart.
    let r = run(
        &g,
        &args(&[
            "--disk",
            &d,
            "--cmdline",
            "test=check-pattern seed=43 bytes=5M",
        ]),
    );
    assert!(r.stdout.contains("roundtrip: FAILED"));
    assert_eq!(r.code, 1);
}

#[test]
fn read_only_disk_refuses_writes() {
    let Some(g) = guest("blkbench") else { return };
    let s = Scratch::new("readonly");
    let img = s.image("ro.img", MIB);
    std::fs::write(&img, vec![0x5a; MIB as usize]).unwrap();
    let r = run(
        &g,
        &args(&[
            "--disk",
            &format!("{},readonly", disk(&img)),
            "--cmdline",
            "test=readonly",
        ]),
    );
    assert!(r.stdout.contains("readonly: write -> Err(ReadOnly)"));
    assert!(r
        .stdout
        .contains("readonly: backend write -> Err(ReadOnly)"));
    assert!(r.stdout.contains("readonly: ok"));
    assert_eq!(r.code, 0);
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0x5a));
}

#[test]
fn discarded_range_reads_back_as_zeros() {
    let Some(g) = guest("blkbench") else { return };
    let s = Scratch::new("discard");
    let img = s.image("x.img", MIB);
    let r = run(
        &g,
        &args(&["--disk", &disk(&img), "--cmdline", "test=discard"]),
    );
    assert!(r.stdout.contains("discard: ok"));
    assert_eq!(r.code, 0);
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[64 << 10..192 << 10].iter().all(|&b| b == 0));
    assert!(bytes[..64 << 10].iter().any(|&b| b != 0));
}

#[test]
fn block_conformance_suite_passes() {
    let Some(g) = guest("blkconformance") else {
        return;
    };
    let s = Scratch::new("conformance");
    let rw = s.image("rw.img", 4 * MIB);
    let ro = s.image("ro.img", 2 * MIB);
    let r = run(
        &g,
        &args(&[
            "--disk",
            &disk(&rw),
            "--disk",
            &format!("{},readonly", disk(&ro)),
        ]),
    );
    let last = r
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("");
    assert!(last.ends_with(", 0 failed"), "closing line: {last:?}");
    assert!(!last.starts_with("0 passed"));
    assert!(!r.stdout.contains("FAIL "));
    assert_eq!(r.code, 0);
    // The broken ring was reported and the domain kept running to its poweroff.
    assert!(r.stderr.contains("broke its ring"));
}

#[test]
fn demo_log_persists_across_runs() {
    let Some(g) = guest("demo") else { return };
    let s = Scratch::new("demo");
    let img = s.image("demo.img", MIB);
    let d = disk(&img);
    let first = run(&g, &args(&["--disk", &d]));
    assert_eq!(first.code, 0);
    assert!(first.stdout.contains("disk: run 1; previous runs: none"));
    let second = run(&g, &args(&["--disk", &d]));
    assert_eq!(second.code, 0);
    let line = second
        .stdout
        .lines()
        .find(|l| l.starts_with("disk: run 2;"))
        .expect("a `disk: run 2` line");
    assert!(line.contains("#1 at "), "{line}");
    // The usual demo lines are still there.
    assert!(second.stdout.contains("event:"));
    assert!(second.stdout.contains("demo: done"));
}
