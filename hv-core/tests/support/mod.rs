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

/// How long a run of an example config may take before it is killed and the test fails.
pub const CONFIG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A copy of `examples/<example>` whose kernels point into the guest directory, or `None`
/// (after deciding whether that is a failure) if KVM or the guest `guest` is missing.
pub fn config(example: &str, guest: &str) -> Option<PathBuf> {
    let Some(dir) = guest_dir_with(guest) else {
        skip(&format!(
            "guest {guest} is not built (run `cargo xtask build`; HV_GUEST_DIR overrides where)"
        ));
        return None;
    };
    if !kvm_ok() {
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

/// What `hv run --config` did.
pub struct Run {
    /// Its exit code.
    pub code: i32,
    /// The domains' console lines (`[name] ...`).
    pub stdout: String,
    /// hv's own messages.
    pub stderr: String,
}

/// Runs `hv run --config FILE` (and removes FILE), killing it after [`CONFIG_TIMEOUT`] (a
/// hang fails the test).
pub fn hv_config(file: &Path) -> Run {
    hv_config_with(file, &[])
}

/// [`hv_config`] with more `hv run` arguments.
pub fn hv_config_with(file: &Path, args: &[&str]) -> Run {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hv"))
        .arg("run")
        .arg("--config")
        .arg(file)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hv");
    let f = finish(child, CONFIG_TIMEOUT);
    let status = f.finished.then_some(f.code);
    eprintln!(
        "hv run --config {} -> {status:?}\n--- stdout\n{}--- stderr\n{}",
        file.display(),
        f.stdout,
        f.stderr
    );
    let _ = std::fs::remove_file(file);
    let Some(code) = status else {
        panic!(
            "hv did not finish within {} s (killed)",
            CONFIG_TIMEOUT.as_secs()
        );
    };
    Run {
        code,
        stdout: f.stdout,
        stderr: f.stderr,
    }
}

/// Domain `domain`'s last `N passed, M failed` line (a `word: ` may precede it), as (N, M).
pub fn summary(stdout: &str, domain: &str) -> Option<(u32, u32)> {
    let prefix = format!("[{domain}] ");
    stdout.lines().rev().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let rest = match rest.split_once(": ") {
            Some((word, tail)) if !word.contains(' ') => tail,
            _ => rest,
        };
        let (p, f) = rest.split_once(", ")?;
        let p = p.strip_suffix(" passed")?.parse().ok()?;
        let f = f.strip_suffix(" failed")?.parse().ok()?;
        Some((p, f))
    })
}

/// Domain `domain`'s lines that start with `FAIL ` (the ABI suites' style).
pub fn failures(stdout: &str, domain: &str) -> Vec<String> {
    let prefix = format!("[{domain}] FAIL ");
    stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect()
}
