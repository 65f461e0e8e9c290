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
