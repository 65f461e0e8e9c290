//! `cargo xtask`: builds, runs, tests and benchmarks the hypervisor and its guests.
//!
//! ```text
//! cargo xtask build                       build the guests and hv (release)
//! cargo xtask run GUEST [-- HV ARGS]      build, then `hv run GUEST [HV ARGS]`
//! cargo xtask run --config FILE [-- ARGS] build, then `hv run --config FILE [HV ARGS]`
//! cargo xtask run pingpong [-- HV ARGS]   the same with examples/pingpong.toml
//! cargo xtask demo                        build and run the demo guest (disk: target/demo-disk.img)
//! cargo xtask test                        build, run every test and the conformance suite
//! cargo xtask conformance                 build and run the ABI conformance suite
//! cargo xtask bench hypercall             hypercall vs bare exit, start-up times
//! cargo xtask bench interdomain           event round trip, ring throughput, exits per message
//! cargo xtask bench block [--quick]       PV disk vs emulated ATA vs host pread, PV console vs UART
//! cargo xtask image PATH SIZE             create a zeroed raw disk image
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod block;
mod net;
mod report;

/// The target guests are built for.
const GUEST_TARGET: &str = "x86_64-unknown-none";
/// The guest binaries of `demo-guest`.
const GUESTS: &[&str] = &[
    "hello",
    "demo",
    "conformance",
    "testguest",
    "bench",
    "pingpong",
    "blkbench",
    "blkconformance",
    "isolation",
    "netdemo",
    "netbench",
    "netconformance",
];

const USAGE: &str = "\
usage: cargo xtask COMMAND

commands:
  build                      build the guests (x86_64-unknown-none) and hv, release
  run GUEST [-- HV ARGS]     build, then `hv run GUEST [HV ARGS]`; GUEST is a guest name
                             (hello, demo, conformance, testguest, bench) or an ELF path;
                             `run pingpong` runs the two domains of examples/pingpong.toml
  run --config FILE [-- HV ARGS]
                             build, then `hv run --config FILE [HV ARGS]` (several domains)
  demo                       build and run the demo guest, with target/demo-disk.img (created
                             if missing) as its disk: it keeps a log of its runs there
  test                       build, `cargo test` (workspace default members), the SDK's
                             tests, and the conformance suite
  conformance                build and run the ABI conformance suite, then the block and net
                             protocol suites; needs `0 failed`
  bench hypercall            null hypercall vs bare port exit, start-up times
  bench interdomain          two domains: event round trip, ring throughput with and
                             without notification suppression, exits per message
  bench block [--quick]      PV disk vs emulated ATA disk vs the host's pread, PV console vs
                             UART: table, target/bench-block.csv and target/bench-block.svg
  bench net [--quick] [--link pv|ne2k|pv-tap]...
                             PV vif vs emulated NE2000 (guest to guest) and PV over TAP (guest
                             to host, as root): TCP MB/s, UDP packets/s, round trip, exits per
                             frame: table, target/bench-net.csv and target/bench-net.svg
  image PATH SIZE            create a zeroed raw disk image (SIZE: bytes, or K, M, G)

environment: HV_REQUIRE_KVM is passed on to the tests.";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[OsString]) -> Result<ExitCode> {
    let cmd = args.first().and_then(|a| a.to_str()).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    match cmd {
        "build" => {
            no_more_args(rest)?;
            build()?;
            Ok(ExitCode::SUCCESS)
        }
        "run" => {
            let (guest, hv_args) = parse_run(rest)?;
            build()?;
            let status = match guest {
                Run::Guest(guest) => run_hv(&guest_path(&guest)?, &hv_args)?,
                Run::Config(file) => run_hv_config(&file, &hv_args)?,
            };
            Ok(exit_code(status))
        }
        "demo" => {
            no_more_args(rest)?;
            build()?;
            let status = run_hv(&guest_path("demo")?, &block::demo_disk_args()?)?;
            Ok(exit_code(status))
        }
        "test" => {
            no_more_args(rest)?;
            test()
        }
        "conformance" => {
            no_more_args(rest)?;
            build()?;
            conformance()?;
            Ok(ExitCode::SUCCESS)
        }
        "bench" => match rest.first().and_then(|a| a.to_str()) {
            Some("hypercall") => {
                no_more_args(&rest[1..])?;
                build()?;
                bench_hypercall()?;
                Ok(ExitCode::SUCCESS)
            }
            Some("interdomain") => {
                no_more_args(&rest[1..])?;
                build()?;
                bench_interdomain()?;
                Ok(ExitCode::SUCCESS)
            }
            Some("block") => {
                build()?;
                block::bench_block(&rest[1..])?;
                Ok(ExitCode::SUCCESS)
            }
            Some("net") => {
                build()?;
                net::bench_net(&rest[1..])?;
                Ok(ExitCode::SUCCESS)
            }
            Some(other) => Err(format!(
                "unknown benchmark `{other}` (known: hypercall, interdomain, block, net)"
            )),
            None => Err(
                "`bench` needs a benchmark name (known: hypercall, interdomain, block, net)".into(),
            ),
        },
        // The host end of `bench net`'s TAP rows, started by it inside a network namespace.
        "net-sink" => {
            no_more_args(rest)?;
            net::net_sink()?;
            Ok(ExitCode::SUCCESS)
        }
        "image" => {
            block::image_command(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    }
}

fn no_more_args(rest: &[OsString]) -> Result<()> {
    match rest.first() {
        None => Ok(()),
        Some(a) => Err(format!(
            "unexpected argument `{}`\n\n{USAGE}",
            a.to_string_lossy()
        )),
    }
}

/// What `run` runs.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    /// One guest: a name under `demo-guest/src/bin` or an ELF path.
    Guest(String),
    /// The domains of a config file.
    Config(PathBuf),
}

/// Examples that are several domains: `run NAME` runs `examples/NAME.toml`.
const CONFIG_EXAMPLES: &[&str] = &["pingpong"];

/// `run GUEST [-- HV ARGS]` or `run --config FILE [-- HV ARGS]` (the `--` is optional:
/// everything after GUEST or FILE goes to hv). `run pingpong` is `run --config
/// examples/pingpong.toml`.
fn parse_run(rest: &[OsString]) -> Result<(Run, Vec<OsString>)> {
    let first = rest
        .first()
        .and_then(|a| a.to_str())
        .ok_or_else(|| format!("`run` needs a guest or --config FILE\n\n{USAGE}"))?;
    let (what, mut hv_args) = if first == "--config" {
        let file = rest
            .get(1)
            .ok_or_else(|| format!("`run --config` needs a file\n\n{USAGE}"))?;
        (Run::Config(PathBuf::from(file)), &rest[2..])
    } else if CONFIG_EXAMPLES.contains(&first) {
        let file = root().join("examples").join(format!("{first}.toml"));
        (Run::Config(file), &rest[1..])
    } else {
        (Run::Guest(first.to_string()), &rest[1..])
    };
    if hv_args.first().is_some_and(|a| a == "--") {
        hv_args = &hv_args[1..];
    }
    Ok((what, hv_args.to_vec()))
}

/// The workspace root (xtask lives in `ROOT/xtask`).
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the root) or `ROOT/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

fn guest_dir() -> PathBuf {
    target_dir().join(GUEST_TARGET).join("release")
}

fn hv_bin() -> PathBuf {
    target_dir().join("release").join("hv")
}

fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root());
    c
}

/// Runs a command to completion with inherited stdio; an error if it fails.
fn run_checked(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({})", describe_status(status)))
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// The process exit code for a child's status (128 + signal if it was killed).
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Installs the guest target with rustup if the toolchain does not have it.
fn ensure_guest_target() -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot
        .join("lib/rustlib")
        .join(GUEST_TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    eprintln!(
        "xtask: the {GUEST_TARGET} target is missing: installing it (rustup target add {GUEST_TARGET})"
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", GUEST_TARGET])
        .current_dir(root());
    run_checked(cmd, "rustup target add")
        .map_err(|e| format!("{e}; install the target by hand: rustup target add {GUEST_TARGET}"))
}

/// `cargo xtask build`: the guests for x86_64-unknown-none, then hv, both release.
fn build() -> Result<()> {
    ensure_guest_target()?;
    let mut guests = cargo();
    guests.args([
        "build",
        "--release",
        "-p",
        "demo-guest",
        "--target",
        GUEST_TARGET,
    ]);
    keep_guest_rustflags(&mut guests);
    run_checked(guests, "building the guests")?;
    for g in GUESTS {
        check_guest_elf(&guest_dir().join(g))?;
    }
    let mut hv = cargo();
    hv.args(["build", "--release", "-p", "hv-core"]);
    run_checked(hv, "building hv")
}

/// The flags guests need (see `.cargo/config.toml`): the SDK's linker script, no PIE.
const GUEST_RUSTFLAGS: [&str; 4] = ["-C", "link-arg=-Tguest.ld", "-C", "relocation-model=static"];

/// `RUSTFLAGS` (or `CARGO_ENCODED_RUSTFLAGS`) replaces the target's rustflags from
/// `.cargo/config.toml` rather than adding to them; if one is set, add the guest flags to it.
fn keep_guest_rustflags(cmd: &mut Command) {
    if let Some(encoded) = std::env::var_os("CARGO_ENCODED_RUSTFLAGS") {
        let mut v = encoded.into_string().unwrap_or_default();
        for f in GUEST_RUSTFLAGS {
            if !v.is_empty() {
                v.push('\x1f');
            }
            v.push_str(f);
        }
        cmd.env("CARGO_ENCODED_RUSTFLAGS", v);
    } else if let Some(flags) = std::env::var_os("RUSTFLAGS") {
        let mut v = flags.into_string().unwrap_or_default();
        for f in GUEST_RUSTFLAGS {
            v.push(' ');
            v.push_str(f);
        }
        cmd.env("RUSTFLAGS", v);
    }
}

/// Checks that a guest is what the hypervisor loads: a static x86_64 ELF64 executable
/// (`ET_EXEC`, not a PIE) with a `PT_NOTE` segment carrying the `HVPV` ABI note.
fn check_guest_elf(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let bad = |why: &str| {
        Err(format!(
            "{} is not a loadable guest: {why} (are the guest rustflags of .cargo/config.toml in effect?)",
            path.display()
        ))
    };
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return bad("not an ELF64 file");
    }
    if u16_at(16) != Some(2) {
        return bad("not ET_EXEC (a PIE or a shared object?)");
    }
    if u16_at(18) != Some(0x3e) {
        return bad("not x86_64");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return bad("truncated header");
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return bad("truncated program header");
        };
        let note = bytes
            .get(off as usize..(off + size) as usize)
            .unwrap_or(&[]);
        if note.len() >= 17 && &note[12..17] == b"HVPV\0" {
            return Ok(());
        }
    }
    bad("no PT_NOTE with the HVPV ABI note")
}

/// A guest name (`demo`) or a path to a guest ELF.
fn guest_path(guest: &str) -> Result<PathBuf> {
    let as_path = Path::new(guest);
    if guest.contains('/') || (as_path.is_file() && !GUESTS.contains(&guest)) {
        return if as_path.is_file() {
            Ok(as_path.to_path_buf())
        } else {
            Err(format!("no guest ELF at {guest}"))
        };
    }
    let p = guest_dir().join(guest);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "unknown guest `{guest}` (built guests: {}; or give a path to an ELF)",
            GUESTS.join(", ")
        ))
    }
}

fn hv_command(guest: &Path, hv_args: &[OsString]) -> Result<Command> {
    let hv = hv_bin();
    if !hv.is_file() {
        return Err(format!(
            "{} is missing (did the hv build succeed?)",
            hv.display()
        ));
    }
    let mut cmd = Command::new(hv);
    cmd.arg("run").arg(guest).args(hv_args);
    Ok(cmd)
}

/// `hv run --config FILE ARGS`.
fn hv_config_command(file: &Path, hv_args: &[OsString]) -> Result<Command> {
    let hv = hv_bin();
    if !hv.is_file() {
        return Err(format!(
            "{} is missing (did the hv build succeed?)",
            hv.display()
        ));
    }
    if !file.is_file() {
        return Err(format!("no config file at {}", file.display()));
    }
    let mut cmd = Command::new(hv);
    cmd.arg("run").arg("--config").arg(file).args(hv_args);
    Ok(cmd)
}

/// `hv run --config FILE ARGS` with inherited stdio.
fn run_hv_config(file: &Path, hv_args: &[OsString]) -> Result<ExitStatus> {
    hv_config_command(file, hv_args)?
        .status()
        .map_err(|e| format!("cannot start hv: {e}"))
}

/// `hv run GUEST ARGS` with inherited stdio.
fn run_hv(guest: &Path, hv_args: &[OsString]) -> Result<ExitStatus> {
    hv_command(guest, hv_args)?
        .status()
        .map_err(|e| format!("cannot start hv: {e}"))
}

/// `hv run GUEST ARGS`, echoing and collecting its standard output.
fn run_hv_captured(
    guest: &Path,
    hv_args: &[OsString],
    echo: bool,
) -> Result<(ExitStatus, Vec<String>)> {
    capture(hv_command(guest, hv_args)?, echo)
}

/// Runs `cmd` (an `hv` command), echoing and collecting its standard output.
fn capture(mut cmd: Command, echo: bool) -> Result<(ExitStatus, Vec<String>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start hv: {e}"))?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        let stdout = std::io::stdout();
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading hv's output: {e}"))?;
            if echo {
                let mut o = stdout.lock();
                let _ = writeln!(o, "{line}");
            }
            lines.push(line);
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for hv: {e}"))?;
    Ok((status, lines))
}

/// `cargo xtask test`: every step runs; the command fails if any did.
fn test() -> Result<ExitCode> {
    build()?;
    let guest_dir = guest_dir();
    let hv = hv_bin();
    let mut failures = Vec::new();

    let mut host_tests = cargo();
    host_tests
        .arg("test")
        .env("HV_GUEST_DIR", &guest_dir)
        .env("HV_BIN", &hv);
    if let Some(v) = std::env::var_os("HV_REQUIRE_KVM") {
        host_tests.env("HV_REQUIRE_KVM", v);
    }
    eprintln!("xtask: cargo test (workspace default members)");
    if let Err(e) = run_checked(host_tests, "cargo test") {
        failures.push(e);
    }

    // guest-sdk is not a default member (it is a no_std crate for guests, but it builds and
    // tests on the host too): its unit tests and documentation examples.
    let mut sdk_tests = cargo();
    sdk_tests.args(["test", "-p", "guest-sdk"]);
    eprintln!("xtask: cargo test -p guest-sdk (unit tests and doc tests)");
    if let Err(e) = run_checked(sdk_tests, "cargo test -p guest-sdk") {
        failures.push(e);
    }

    // The block frontend's unit tests need the guest-side feature, which no default member
    // enables.
    let mut frontend_tests = cargo();
    frontend_tests.args(["test", "-p", "pv-drivers", "--features", "frontend,backend"]);
    eprintln!("xtask: cargo test -p pv-drivers --features frontend,backend");
    if let Err(e) = run_checked(
        frontend_tests,
        "cargo test -p pv-drivers --features frontend,backend",
    ) {
        failures.push(e);
    }

    eprintln!("xtask: conformance suite");
    if let Err(e) = conformance() {
        failures.push(e);
    }

    if failures.is_empty() {
        eprintln!("xtask: all tests passed");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("xtask: FAILED: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Parses a closing line `N passed, M failed` (an optional `word:` may precede it).
fn parse_summary(line: &str) -> Option<(u64, u64)> {
    let line = line.trim();
    let line = match line.split_once(": ") {
        Some((word, rest)) if !word.contains(' ') => rest,
        _ => line,
    };
    let (passed, failed) = line.split_once(", ")?;
    let passed = passed.strip_suffix(" passed")?.parse().ok()?;
    let failed = failed.strip_suffix(" failed")?.parse().ok()?;
    Some((passed, failed))
}

/// Runs the three conformance suites: the ABI's (`examples/conformance.toml`, the suite and
/// its peer domain), the block protocol's and the net protocol's; each must print its
/// `N passed, 0 failed` line and end with exit code 0.
fn conformance() -> Result<()> {
    config_suite("conformance", "conformance", "conformance")?;
    block_conformance()?;
    // The `netconformance` guest, a hostile vif frontend, against the hv's backend, with its
    // peer domain on the same switch.
    config_suite("netconformance", "netconformance", "net conformance")
}

/// Runs `examples/<example>.toml` and checks the summary line of its domain `domain`.
fn config_suite(example: &str, domain: &str, label: &str) -> Result<()> {
    let file = example_copy(&format!("{example}.toml"))?;
    let (status, lines) = capture(hv_config_command(&file, &[])?, true)?;
    let _ = std::fs::remove_file(&file);
    let prefix = format!("[{domain}] ");
    let summary = lines
        .iter()
        .rev()
        .find_map(|l| parse_summary(l.strip_prefix(prefix.as_str())?));
    check_summary(label, domain, summary, status)
}

/// The verdict on a suite from its summary line and hv's exit status.
fn check_summary(
    label: &str,
    guest: &str,
    summary: Option<(u64, u64)>,
    status: ExitStatus,
) -> Result<()> {
    match summary {
        None => Err(format!(
            "the {guest} guest printed no `N passed, M failed` line ({})",
            describe_status(status)
        )),
        Some((_, failed)) if failed > 0 => Err(format!("{label}: {failed} case(s) failed")),
        Some(_) if !status.success() => Err(format!(
            "{label}: all cases passed but hv ended with {}",
            describe_status(status)
        )),
        Some((passed, _)) => {
            eprintln!("xtask: {label}: {passed} passed, 0 failed");
            Ok(())
        }
    }
}

/// A copy of `examples/<name>` (in the temporary directory) whose guests, named under
/// `../target/...`, point at this build's guest directory.
fn example_copy(name: &str) -> Result<PathBuf> {
    let config = root().join("examples").join(name);
    let text = std::fs::read_to_string(&config)
        .map_err(|e| format!("{}: {e}", config.display()))?
        .replace(
            "\"../target/x86_64-unknown-none/release/",
            &format!("\"{}/", guest_dir().display()),
        );
    let file = std::env::temp_dir().join(format!("xtask-{}-{name}", std::process::id()));
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}

/// The block protocol's cases: the `blkconformance` guest, a raw frontend, against the hv's
/// backend on a read-write and a read-only scratch image.
fn block_conformance() -> Result<()> {
    let dir = root().join("target/xtask");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (rw, ro) = (dir.join("blkconf-rw.img"), dir.join("blkconf-ro.img"));
    for (path, size) in [(&rw, 4u64 << 20), (&ro, 2 << 20)] {
        let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_len(size)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let args: Vec<OsString> = vec![
        "--disk".into(),
        rw.into_os_string(),
        "--disk".into(),
        format!("{},readonly", ro.display()).into(),
    ];
    let (status, lines) = run_hv_captured(&guest_path("blkconformance")?, &args, true)?;
    let summary = lines.iter().rev().find_map(|l| parse_summary(l));
    check_summary("block conformance", "blkconformance", summary, status)
}

/// `bench NAME k=v ...` and `bench k=v` lines, as name -> key -> value (`bench k=v` is
/// stored as k -> "value").
fn parse_bench(lines: &[String]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in lines {
        let mut words = line.split_whitespace();
        if words.next() != Some("bench") {
            continue;
        }
        let Some(first) = words.next() else { continue };
        if let Some((k, v)) = first.split_once('=') {
            if let Ok(v) = v.parse() {
                out.entry(k.to_string())
                    .or_default()
                    .insert("value".into(), v);
            }
            continue;
        }
        let entry = out.entry(first.to_string()).or_default();
        for kv in words {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(v) = v.parse() {
                    entry.insert(k.to_string(), v);
                }
            }
        }
    }
    out
}

fn fmt_ns(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `cargo xtask bench hypercall`.
fn bench_hypercall() -> Result<()> {
    eprintln!("xtask: hv run bench");
    let (status, lines) = run_hv_captured(&guest_path("bench")?, &[], false)?;
    if !status.success() {
        for l in &lines {
            eprintln!("{l}");
        }
        return Err(format!(
            "the bench guest failed ({})",
            describe_status(status)
        ));
    }
    let b = parse_bench(&lines);
    let get = |name: &str, key: &str| -> Result<u64> {
        b.get(name)
            .and_then(|m| m.get(key))
            .copied()
            .ok_or_else(|| format!("the bench guest printed no `bench {name} {key}=` value"))
    };
    let hc = get("hypercall_ns", "median")?;
    let px = get("portexit_ns", "median")?;
    let first = get("first_instruction_ns", "value")?;

    const RUNS: usize = 5;
    eprintln!("xtask: timing {RUNS} runs of the hello guest");
    let hello = guest_path("hello")?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut cmd = hv_command(&hello, &[])?;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let t0 = Instant::now();
        let status = cmd.status().map_err(|e| format!("cannot start hv: {e}"))?;
        times.push(t0.elapsed());
        if !status.success() {
            return Err(format!("hv run hello failed ({})", describe_status(status)));
        }
    }
    let run_time = median(&mut times);

    let ratio = if px == 0 {
        f64::INFINITY
    } else {
        hc as f64 / px as f64
    };
    let verdict = if ratio <= 1.10 { "ok" } else { "above goal" };
    let range = |name: &str| match (get(name, "p10"), get(name, "p90")) {
        (Ok(a), Ok(b)) => format!("{} .. {}", fmt_ns(a as f64), fmt_ns(b as f64)),
        _ => "-".into(),
    };
    let rows = [
        (
            "null hypercall (abi_query), median".to_string(),
            fmt_ns(hc as f64),
            range("hypercall_ns"),
        ),
        (
            "raw port exit (out 0x92), median".to_string(),
            fmt_ns(px as f64),
            range("portexit_ns"),
        ),
        (
            "ratio hypercall / port exit (goal <= 1.10)".to_string(),
            format!("{ratio:.3} {verdict}"),
            String::new(),
        ),
        (
            "hv start to first guest instruction".to_string(),
            fmt_ns(first as f64),
            String::new(),
        ),
        (
            format!("hv run time, hello (spawn to exit, median of {RUNS})"),
            fmt_ns(run_time.as_nanos() as f64),
            String::new(),
        ),
    ];
    let w0 = rows
        .iter()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0)
        .max("metric".len());
    let w1 = rows
        .iter()
        .map(|r| r.1.len())
        .max()
        .unwrap_or(0)
        .max("value".len());
    let w2 = rows
        .iter()
        .map(|r| r.2.len())
        .max()
        .unwrap_or(0)
        .max("p10 .. p90".len());
    println!("hypercall benchmark: `hv run bench` (20000 samples of each, interleaved), `hv run hello` x{RUNS}");
    println!(
        "| {:w0$} | {:>w1$} | {:>w2$} |",
        "metric", "value", "p10 .. p90"
    );
    println!(
        "|-{}-|-{}:|-{}:|",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(w2)
    );
    for (m, v, r) in &rows {
        println!("| {m:w0$} | {v:>w1$} | {r:>w2$} |");
    }
    Ok(())
}

/// One mode of `bench interdomain`: ping's options (pong follows them through the store).
struct InterdomainMode {
    label: &'static str,
    ping_args: &'static str,
    count: u64,
}

const INTERDOMAIN_MODES: [InterdomainMode; 3] = [
    InterdomainMode {
        label: "event round trip (notify=always batch=1)",
        ping_args: "notify=always batch=1",
        count: 5_000,
    },
    InterdomainMode {
        label: "ring, notification suppression (notify=suppress)",
        ping_args: "notify=suppress",
        count: 100_000,
    },
    InterdomainMode {
        label: "ring, notify every message (notify=always)",
        ping_args: "notify=always",
        count: 20_000,
    },
];

/// What one `bench interdomain` run measured.
#[derive(Debug, Default, PartialEq)]
struct InterdomainResult {
    /// Messages each way.
    count: u64,
    /// Ping's time for the exchange.
    ns: u64,
    /// Notifications sent by both domains.
    events: u64,
    /// Exits of both domains over their whole life (`hv --stats`).
    exits: u64,
    /// Round-trip latency (median, p10, p90), with one message in flight.
    rtt: Option<(u64, u64, u64)>,
}

/// A line of a multi-domain run without its `[domain] ` prefix.
fn strip_domain_prefix(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((name, rest)) if !name.contains(' ') => rest,
        _ => line,
    }
}

/// The sum of every domain's `exit REASON N` lines of `hv --stats`.
fn sum_exits(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("exit "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Reads ping's and pong's `bench` lines and hv's statistics.
fn parse_interdomain(stdout: &[String], stderr: &str) -> Result<InterdomainResult> {
    let lines: Vec<String> = stdout
        .iter()
        .map(|l| strip_domain_prefix(l).to_string())
        .collect();
    let b = parse_bench(&lines);
    let get = |name: &str, key: &str| -> Result<u64> {
        b.get(name)
            .and_then(|m| m.get(key))
            .copied()
            .ok_or_else(|| format!("pingpong printed no `bench {name} {key}=` value"))
    };
    let rtt = match b.get("rtt_ns") {
        Some(_) => Some((
            get("rtt_ns", "median")?,
            get("rtt_ns", "p10")?,
            get("rtt_ns", "p90")?,
        )),
        None => None,
    };
    let exits = sum_exits(stderr);
    if exits == 0 {
        return Err("hv --stats printed no `exit` lines".into());
    }
    Ok(InterdomainResult {
        count: get("pingpong_ping", "n")?,
        ns: get("pingpong_ping", "ns")?,
        events: get("pingpong_ping", "events")? + get("pingpong_pong", "events")?,
        exits,
        rtt,
    })
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs ping and pong with `ping_args` under `hv --stats`.
fn run_interdomain(m: &InterdomainMode) -> Result<InterdomainResult> {
    let kernel = guest_path("pingpong")?;
    let kernel = toml_string(&kernel.to_string_lossy());
    let dir = target_dir().join("xtask");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = dir.join("interdomain.toml");
    let text = format!(
        "[[domain]]\nname = \"ping\"\nkernel = {kernel}\ncmdline = \"role=ping bench=1 count={} {}\"\n\n\
         [[domain]]\nname = \"pong\"\nkernel = {kernel}\ncmdline = \"role=pong bench=1\"\n",
        m.count, m.ping_args
    );
    std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    eprintln!(
        "xtask: hv run --config {} --stats  (ping: count={} {})",
        file.display(),
        m.count,
        m.ping_args
    );
    let out = hv_config_command(&file, &["--stats".into()])?
        .output()
        .map_err(|e| format!("cannot start hv: {e}"))?;
    let stdout: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        for l in &stdout {
            eprintln!("{l}");
        }
        eprint!("{stderr}");
        return Err(format!(
            "pingpong ({}) failed ({})",
            m.ping_args,
            describe_status(out.status)
        ));
    }
    parse_interdomain(&stdout, &stderr)
}

/// `12345678` as `12 345 678`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `cargo xtask bench interdomain`.
fn bench_interdomain() -> Result<()> {
    let mut results = Vec::new();
    for m in &INTERDOMAIN_MODES {
        results.push(run_interdomain(m)?);
    }
    let rate = |r: &InterdomainResult| r.count as f64 * 1e9 / r.ns.max(1) as f64;
    let per_msg = |r: &InterdomainResult| r.exits as f64 / (2 * r.count.max(1)) as f64;
    let rows: Vec<Vec<String>> = INTERDOMAIN_MODES
        .iter()
        .zip(&results)
        .map(|(m, r)| {
            vec![
                m.label.to_string(),
                group_digits(r.count),
                group_digits(rate(r) as u64),
                format!("{:.3}", per_msg(r)),
                group_digits(r.events),
                match r.rtt {
                    Some((med, p10, p90)) => format!(
                        "{} ({} .. {})",
                        fmt_ns(med as f64),
                        fmt_ns(p10 as f64),
                        fmt_ns(p90 as f64)
                    ),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    println!(
        "interdomain benchmark: two domains (ping, pong) on one hv, one run per mode; \
         exits per message = both domains' exits (`hv --stats`) / (2 x messages)"
    );
    report::print_table(
        &[
            "mode",
            "messages each way",
            "msgs/s",
            "exits per message",
            "notifications",
            "round trip, median (p10 .. p90)",
        ],
        &rows,
        &[0],
    );
    let (sup, always) = (&results[1], &results[2]);
    println!(
        "notification suppression: {:.1}x the throughput of notify=always, {:.1}x fewer exits per message",
        rate(sup) / rate(always).max(f64::MIN_POSITIVE),
        per_msg(always) / per_msg(sup).max(f64::MIN_POSITIVE)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        assert_eq!(parse_summary("62 passed, 0 failed"), Some((62, 0)));
        assert_eq!(
            parse_summary("conformance: 3 passed, 1 failed"),
            Some((3, 1))
        );
        assert_eq!(parse_summary("netconf: 45 passed, 0 failed"), Some((45, 0)));
        assert_eq!(parse_summary("PASS x"), None);
        assert_eq!(parse_summary("a b: 1 passed, 0 failed"), None);
    }

    #[test]
    fn bench_lines() {
        let lines: Vec<String> = [
            "bench first_instruction_ns=512345",
            "bench hypercall_ns median=20100 p10=19000 p90=25000 n=20000",
            "noise",
            "bench portexit_ns median=19800 p10=18000 p90=24000 n=20000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let b = parse_bench(&lines);
        assert_eq!(b["first_instruction_ns"]["value"], 512345);
        assert_eq!(b["hypercall_ns"]["median"], 20100);
        assert_eq!(b["portexit_ns"]["p90"], 24000);
    }

    #[test]
    fn run_arguments() {
        let args: Vec<OsString> = ["demo", "--", "--mem", "64M"]
            .iter()
            .map(OsString::from)
            .collect();
        let (g, rest) = parse_run(&args).unwrap();
        assert_eq!(g, Run::Guest("demo".into()));
        assert_eq!(rest, ["--mem", "64M"]);
        assert!(parse_run(&[]).is_err());
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let (g, rest) = parse_run(&os(&["--config", "a.toml", "--", "--stats"])).unwrap();
        assert_eq!(g, Run::Config("a.toml".into()));
        assert_eq!(rest, ["--stats"]);
        assert!(parse_run(&os(&["--config"])).is_err());
        let (g, rest) = parse_run(&os(&["pingpong", "--stats"])).unwrap();
        assert_eq!(
            g,
            Run::Config(root().join("examples").join("pingpong.toml"))
        );
        assert_eq!(rest, ["--stats"]);
    }

    /// A minimal ELF64 image: header, one program header, and a note at offset 0x100.
    fn elf(e_type: u16, p_type: u32, name: &[u8; 5]) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..5].copy_from_slice(b"\x7fELF\x02");
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[64..68].copy_from_slice(&p_type.to_le_bytes());
        b[72..80].copy_from_slice(&0x100u64.to_le_bytes()); // p_offset
        b[96..104].copy_from_slice(&36u64.to_le_bytes()); // p_filesz
        b[0x100..0x104].copy_from_slice(&5u32.to_le_bytes());
        b[0x10c..0x111].copy_from_slice(name);
        b
    }

    #[test]
    fn guest_elf_checks() {
        let dir = std::env::temp_dir().join(format!("xtask-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |bytes: Vec<u8>| {
            let p = dir.join("guest");
            std::fs::write(&p, bytes).unwrap();
            check_guest_elf(&p)
        };
        assert!(check(elf(2, 4, b"HVPV\0")).is_ok());
        assert!(check(elf(3, 4, b"HVPV\0")).unwrap_err().contains("ET_EXEC"));
        assert!(check(elf(2, 1, b"HVPV\0")).unwrap_err().contains("PT_NOTE"));
        assert!(check(elf(2, 4, b"GNU\0\0"))
            .unwrap_err()
            .contains("PT_NOTE"));
        assert!(check(b"#!/bin/sh".to_vec()).unwrap_err().contains("ELF64"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interdomain_output() {
        let stdout: Vec<String> = [
            "[pong] pingpong: pong (domain 2) <- ping (domain 1): ring-ref 0, port 4, count=10",
            "[ping] bench pingpong_ping n=10 ns=5000 events=3",
            "[pong] bench pingpong_pong n=10 ns=4900 events=4",
            "[ping] bench rtt_ns median=100 p10=90 p90=200 n=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let stderr = "stats for domain pong: 7 exits\n  exit hypercall             5\n  exit kick 2\n  \
                      hypercall  4 sched_op     3\nstats for domain ping: 4 exits\n  exit hypercall 4\n\
                      hv: domain ping (id 1) powered off with code 0\n";
        let r = parse_interdomain(&stdout, stderr).unwrap();
        assert_eq!(
            r,
            InterdomainResult {
                count: 10,
                ns: 5000,
                events: 7,
                exits: 11,
                rtt: Some((100, 90, 200)),
            }
        );
        assert!(parse_interdomain(&stdout[..1], stderr).is_err());
        assert!(parse_interdomain(&stdout, "").is_err());
        assert_eq!(strip_domain_prefix("[a] b c"), "b c");
        assert_eq!(strip_domain_prefix("[a b] c"), "[a b] c");
        assert_eq!(strip_domain_prefix("plain"), "plain");
        assert_eq!(group_digits(1234567), "1 234 567");
        assert_eq!(group_digits(999), "999");
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_ns(950.0), "950 ns");
        assert_eq!(fmt_ns(19_870.0), "19.9 us");
        assert_eq!(fmt_ns(12_500_000.0), "12.50 ms");
    }
}
