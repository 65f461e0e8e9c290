//! Boots real guests under the `hv` binary and checks what they print and how `hv` exits, and
//! feeds `hv` bad input. Guests come from `HV_GUEST_DIR` (set by `cargo xtask test`), or
//! `target/x86_64-unknown-none/release`. Without KVM or guests the tests skip, unless
//! `HV_REQUIRE_KVM=1`, which turns a skip into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hv_core::error::exit_code;

mod support;
use support::{kvm_ok, skip};

/// The path of a guest, or `None` (after deciding whether that is a failure) if guests are missing.
fn guest(name: &str) -> Option<PathBuf> {
    match support::guest_dir_with("hello") {
        Some(d) => Some(d.join(name)),
        None => {
            skip("guest binaries are not built (run `cargo xtask test`)");
            None
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn hv(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hv"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run hv");
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!(
        "hv {args:?} -> {}\n--- stdout\n{}--- stderr\n{}",
        r.code, r.stdout, r.stderr
    );
    r
}

/// Boots `name` with extra hv arguments, if KVM and the guests are there.
fn boot(name: &str, extra: &[&str]) -> Option<Run> {
    let g = guest(name)?;
    if !kvm_ok() {
        return None;
    }
    let mut args = vec!["run", g.to_str().unwrap()];
    args.extend_from_slice(extra);
    Some(hv(&args, &[]))
}

fn testguest(cmdline: &str) -> Option<Run> {
    boot("testguest", &["--cmdline", cmdline])
}

#[test]
fn hello_boots_prints_and_powers_off() {
    let Some(r) = boot("hello", &[]) else { return };
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Hello from a paravirtualized guest!"));
    assert!(r.stderr.contains("powered off with code 0"));
}

#[test]
fn demo_shows_banner_timer_and_event() {
    let Some(r) = boot("demo", &["--cmdline", "from-test"]) else {
        return;
    };
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("ABI 1.0"), "banner");
    assert!(r.stdout.contains("from-test"), "command line");
    assert!(r.stdout.contains("timer:"), "timer line");
    assert!(r.stdout.contains("event:"), "event line");
}

#[test]
fn guest_exit_code_becomes_hv_exit_code() {
    let Some(r) = testguest("exit=7") else { return };
    assert_eq!(r.code, 7);
    let Some(r) = testguest("exit=63") else {
        return;
    };
    assert_eq!(r.code, 63);
}

#[test]
fn poweroff_code_above_63_is_refused() {
    let Some(r) = testguest("shutdown-bad") else {
        return;
    };
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("shutdown-bad: EINVAL"));
}

#[test]
fn panic_is_reported_as_a_crash() {
    let Some(r) = testguest("panic") else { return };
    assert_eq!(r.code, exit_code::GUEST_CRASHED as i32);
    assert!(r.stdout.contains("panicked at") && r.stdout.contains("boom"));
    assert!(r.stderr.contains("crashed"));
}

#[test]
fn page_fault_without_handler_is_reported_with_vector_rip_and_symbol() {
    let Some(r) = testguest("pagefault") else {
        return;
    };
    assert_eq!(r.code, exit_code::GUEST_CRASHED as i32);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("crashed"))
        .expect("crash line");
    assert!(line.contains("#PF") && line.contains("vector 14"), "{line}");
    assert!(
        line.contains("error code 0x6"),
        "write to a non-present page: {line}"
    );
    assert!(line.contains("fault address 0x10"), "{line}");
    assert!(
        line.contains("at rip 0x") && line.contains(" <"),
        "rip and symbol: {line}"
    );
}

#[test]
fn invalid_opcode_without_handler_is_reported() {
    let Some(r) = testguest("ud2") else { return };
    assert_eq!(r.code, exit_code::GUEST_CRASHED as i32);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("crashed"))
        .expect("crash line");
    assert!(line.contains("#UD") && line.contains("vector 6"), "{line}");
    assert!(line.contains(" <"), "symbol: {line}");
}

#[test]
fn registered_exception_handler_runs_and_returns() {
    let Some(r) = testguest("trap") else { return };
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("trap: handled #UD"));
}

#[test]
fn timer_interrupts_a_busy_guest() {
    let Some(r) = testguest("spin") else { return };
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("spin: timer interrupted a busy loop"));
}

#[test]
fn hypercall_with_address_outside_ram_fails_efault_for_real() {
    let Some(r) = testguest("badmem") else { return };
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("EFAULT"));
}

#[test]
fn stats_count_exits_and_hypercalls() {
    let Some(r) = boot("hello", &["--stats"]) else {
        return;
    };
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("exit hypercall"), "{}", r.stderr);
    assert!(r.stderr.contains("sched_op"), "shutdown is a sched_op");
}

// ---- bad input: one line on stderr, a distinct exit code, no panic ----

fn assert_refused(r: &Run, code: u8, needle: &str) {
    assert_eq!(r.code, code as i32, "exit code");
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "exactly one line: {:?}",
        r.stderr
    );
    assert!(
        r.stderr.contains(needle),
        "{:?} should mention {needle:?}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"));
}

fn patched_copy(name: &str, tag: &str, patch: impl FnOnce(&mut Vec<u8>)) -> Option<PathBuf> {
    let src = guest(name)?;
    let mut bytes = std::fs::read(&src).unwrap();
    patch(&mut bytes);
    let dst = std::env::temp_dir().join(format!("hv-test-{}-{tag}.elf", std::process::id()));
    std::fs::write(&dst, bytes).unwrap();
    Some(dst)
}

fn note_offset(bytes: &[u8]) -> usize {
    bytes
        .windows(5)
        .position(|w| w == b"HVPV\0")
        .expect("guest has the ABI note")
}

fn run_path(p: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", p.to_str().unwrap()];
    args.extend_from_slice(extra);
    hv(&args, &[])
}

#[test]
fn missing_guest_file() {
    let r = hv(&["run", "/nonexistent/guest.elf"], &[]);
    assert_refused(&r, exit_code::IMAGE_UNREADABLE, "/nonexistent/guest.elf");
}

#[test]
fn not_an_elf() {
    let p = std::env::temp_dir().join(format!("hv-test-{}-text", std::process::id()));
    std::fs::write(&p, "just text\n").unwrap();
    assert_refused(&run_path(&p, &[]), exit_code::NOT_ELF, "not an ELF");
}

#[test]
fn not_x86_64() {
    let Some(p) = patched_copy("hello", "aarch64", |b| {
        b[18..20].copy_from_slice(&183u16.to_le_bytes())
    }) else {
        return;
    };
    assert_refused(&run_path(&p, &[]), exit_code::WRONG_ARCH, "AArch64");
    let Some(p) = patched_copy("hello", "elf32", |b| b[4] = 1) else {
        return;
    };
    assert_refused(&run_path(&p, &[]), exit_code::WRONG_ARCH, "32-bit");
}

#[test]
fn abi_note_missing() {
    let Some(p) = patched_copy("hello", "nonote", |b| {
        let o = note_offset(b);
        b[o..o + 4].copy_from_slice(b"XXXX");
    }) else {
        return;
    };
    assert_refused(&run_path(&p, &[]), exit_code::NO_ABI_NOTE, "ABI note");
}

#[test]
fn abi_major_differs() {
    let Some(p) = patched_copy("hello", "abi2", |b| {
        let desc = note_offset(b) + 8;
        b[desc..desc + 2].copy_from_slice(&2u16.to_le_bytes());
    }) else {
        return;
    };
    assert_refused(&run_path(&p, &[]), exit_code::ABI_MISMATCH, "ABI 2.0");
    let r = run_path(&p, &[]);
    assert!(r.stderr.contains("ABI 1.0"), "names both versions");
}

#[test]
fn image_larger_than_memory() {
    // A guest whose last segment (its bss) is 100 MiB does not fit in 64 MiB of RAM.
    let Some(p) = patched_copy("hello", "big", |b| {
        let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(b[56..58].try_into().unwrap()) as usize;
        let last_load = (0..phnum)
            .map(|i| phoff + i * 56)
            .rfind(|&ph| u32::from_le_bytes(b[ph..ph + 4].try_into().unwrap()) == 1)
            .expect("a PT_LOAD");
        b[last_load + 40..last_load + 48].copy_from_slice(&(100u64 << 20).to_le_bytes());
    }) else {
        return;
    };
    assert_refused(
        &run_path(&p, &["--mem", "64M"]),
        exit_code::IMAGE_TOO_LARGE,
        "--mem",
    );
}

#[test]
fn bad_sizes() {
    for bad in ["12Q", "lots", "1K", "65G", "4097K"] {
        let r = hv(&["run", "/nonexistent", "--mem", bad], &[]);
        assert_refused(&r, exit_code::BAD_SIZE, "--mem");
    }
}

#[test]
fn bad_vcpu_counts() {
    for bad in ["0", "33", "-1", "many"] {
        let r = hv(&["run", "/nonexistent", "--vcpus", bad], &[]);
        assert_refused(&r, exit_code::BAD_VCPUS, "--vcpus");
    }
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(2000);
    let r = hv(&["run", "/nonexistent", "--cmdline", &long], &[]);
    assert_refused(&r, exit_code::BAD_ARGUMENT, "--cmdline");
}

#[test]
fn no_kvm_device() {
    let Some(g) = guest("hello") else { return };
    let r = hv(
        &["run", g.to_str().unwrap()],
        &[("HV_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_refused(&r, exit_code::KVM_MISSING, "/nonexistent/kvm");
}

// ---- several domains in one hv ----

fn write_config(tag: &str, body: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hv-test-{}-{tag}.toml", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_crashing_domain_stops_alone_and_the_others_run_on() {
    let (Some(tg), Some(demo)) = (guest("testguest"), guest("demo")) else {
        return;
    };
    if !kvm_ok() {
        return;
    }
    let cfg = write_config(
        "crash",
        &format!(
            "[[domain]]\nname = \"crasher\"\nkernel = {:?}\ncmdline = \"pagefault\"\n\n\
             [[domain]]\nname = \"survivor\"\nkernel = {:?}\nmem = \"32M\"\n",
            tg.to_str().unwrap(),
            demo.to_str().unwrap()
        ),
    );
    let r = hv(&["run", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(
        r.code,
        exit_code::GUEST_CRASHED as i32,
        "a crash outranks a clean poweroff"
    );
    assert!(r.stderr.contains("domain crasher (id 1) crashed") && r.stderr.contains("vector 14"));
    assert!(r
        .stderr
        .contains("domain survivor (id 2) powered off with code 0"));
    // The survivor ran to its end after the crash: its last lines are there, prefixed.
    assert!(r.stdout.contains("[survivor] event:"), "{}", r.stdout);
    assert!(r
        .stdout
        .lines()
        .all(|l| l.starts_with("[crasher] ") || l.starts_with("[survivor] ")));
}

#[test]
fn exit_code_of_several_domains_is_the_first_nonzero_poweroff() {
    let Some(tg) = guest("testguest") else { return };
    if !kvm_ok() {
        return;
    }
    let g = tg.to_str().unwrap();
    let cfg = write_config(
        "codes",
        &format!(
            "[[domain]]\nname = \"a\"\nkernel = {g:?}\ncmdline = \"exit=0\"\n\
             [[domain]]\nname = \"b\"\nkernel = {g:?}\ncmdline = \"exit=9\"\nmem = \"16M\"\n"
        ),
    );
    let r = hv(&["run", "--config", cfg.to_str().unwrap(), "--stats"], &[]);
    assert_eq!(r.code, 9);
    assert!(r.stderr.contains("stats for domain a") && r.stderr.contains("stats for domain b"));
}

#[test]
fn bad_config_files_are_refused_in_one_line() {
    let r = hv(&["run", "--config", "/nonexistent/x.toml"], &[]);
    assert_refused(&r, exit_code::BAD_CONFIG, "/nonexistent/x.toml");
    let cfg = write_config(
        "dup",
        "[[domain]]\nname = \"a\"\nkernel = \"k\"\n[[domain]]\nname = \"a\"\nkernel = \"k\"\n",
    );
    assert_refused(
        &hv(&["run", "--config", cfg.to_str().unwrap()], &[]),
        exit_code::BAD_CONFIG,
        "two domains",
    );
    let cfg = write_config(
        "missing",
        "[[domain]]\nname = \"a\"\nkernel = \"/nonexistent/k.elf\"\n",
    );
    assert_refused(
        &hv(&["run", "--config", cfg.to_str().unwrap()], &[]),
        exit_code::IMAGE_UNREADABLE,
        "k.elf",
    );
}
