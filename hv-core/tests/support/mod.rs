//! What the tests that boot guests under `hv` share: where the guests are, and the rule that a
//! test without KVM or guests skips (printing why) unless `HV_REQUIRE_KVM=1`, which turns the
//! skip into a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Is KVM required (`HV_REQUIRE_KVM=1`)?
pub fn required() -> bool {
    std::env::var("HV_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Skips the calling test (returns true), or fails it when KVM is required.
pub fn skip(why: &str) -> bool {
    assert!(!required(), "HV_REQUIRE_KVM=1 but {why}");
    eprintln!("SKIPPED: {why}");
    true
}

/// The guest directory (`HV_GUEST_DIR`, or `target/x86_64-unknown-none/release`), if the guest
/// `marker` is built there.
pub fn guest_dir_with(marker: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("HV_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-none/release")
        });
    dir.join(marker).exists().then_some(dir)
}

/// Can this process use /dev/kvm? If not, skips (or fails, when required).
pub fn kvm_ok() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        true
    } else {
        !skip("/dev/kvm is not usable")
    }
}

/// What a finished (or killed) `hv` printed.
pub struct Finished {
    /// Exit code (-1 if killed or ended by a signal).
    pub code: i32,
    /// Whether it finished before the timeout (else it was killed).
    pub finished: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Collects `child`'s piped stdout and stderr and waits for it, killing it after `timeout`.
pub fn finish(mut child: std::process::Child, timeout: std::time::Duration) -> Finished {
    use std::io::Read;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for hv") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Finished {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        finished: status.is_some(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}
