//! Block devices in xtask: `cargo xtask bench block`, `cargo xtask image PATH SIZE`, and the
//! disk `cargo xtask demo` gives the demo guest (`target/demo-disk.img`).
//!
//! `bench block` runs the `blkbench` guest once per workload and path under `hv --stats`:
//! the paravirtual disk (`--disk`, the `pv-drivers` frontend), the emulated ATA disk
//! (`--ata-disk`, PIO), and 64 KiB of console output over the PV console and the emulated
//! 16550 UART. It measures the host's own `pread` of the same image file in the same run, with
//! the file's page cache dropped before each read workload (`fdatasync` then
//! `posix_fadvise(DONTNEED)`, which needs no privilege), and with `O_DIRECT`. Exits per request
//! are the run's exits minus those of a run that only boots and connects (`workload=none`),
//! divided by the workload's requests; the hv's CPU time is `getrusage(RUSAGE_CHILDREN)` around
//! each run. It prints a table, writes `target/bench-block.csv` and draws
//! `target/bench-block.svg`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use super::report::{bar_chart, domain_exits, fmt_f, print_table, Bar};
use super::{guest_path, hv_command, target_dir, Result};

/// Size of `target/demo-disk.img`.
const DEMO_DISK_BYTES: u64 = 1 << 20;
/// Size of the benchmark's images.
const BENCH_IMAGE_BYTES: u64 = 64 << 20;
/// Random 4 KiB reads per random workload (PV and host).
const RANDOM_OPS: u64 = 20_000;
/// Repetitions of the host's reads and of the (short) PV runs; the median is kept.
const REPS: usize = 3;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// `O_DIRECT` on x86_64 Linux.
const O_DIRECT: i32 = 0o40000;
/// `POSIX_FADV_DONTNEED`.
const POSIX_FADV_DONTNEED: i32 = 4;
/// `RUSAGE_CHILDREN`.
const RUSAGE_CHILDREN: i32 = -1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

/// `struct rusage` on x86_64 Linux: two timevals, then 14 longs.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Rusage {
    ru_utime: Timeval,
    ru_stime: Timeval,
    rest: [i64; 14],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
}

/// User + system CPU time of the children reaped so far, in nanoseconds.
fn children_cpu_ns() -> u64 {
    let mut r = Rusage::default();
    // SAFETY: `r` is a valid, writable `struct rusage` (same layout as the C one on x86_64
    // Linux); getrusage writes only it.
    let rc = unsafe { getrusage(RUSAGE_CHILDREN, &mut r) };
    if rc != 0 {
        return 0;
    }
    let ns = |t: Timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(r.ru_utime) + ns(r.ru_stime)
}

/// Writes the file's dirty pages out and drops its pages from the page cache.
fn drop_cache(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_data()
        .map_err(|e| format!("fdatasync {}: {e}", path.display()))?;
    // SAFETY: a plain system call on a file descriptor we own; it touches no memory of ours.
    let rc = unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise {}: error {rc}", path.display()));
    }
    Ok(())
}

/// A size: a number of bytes with an optional `K`, `M` or `G` suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || format!("bad size `{s}` (examples: 4096, 512K, 64M, 1G)");
    let (digits, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], KIB),
        Some('M' | 'm') => (&s[..s.len() - 1], MIB),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|&n| n > 0).ok_or_else(bad)
}

/// Creates a zeroed (sparse) raw image of `size` bytes (a multiple of 512) at `path`; refuses
/// to overwrite an existing file.
pub fn create_image(path: &Path, size: u64) -> Result<()> {
    if !size.is_multiple_of(512) {
        return Err(format!(
            "image size {size} is not a multiple of the 512-byte sector"
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(size)
        .map_err(|e| format!("sizing {}: {e}", path.display()))
}

/// `cargo xtask image PATH SIZE`.
pub fn image_command(rest: &[OsString]) -> Result<()> {
    let usage = "usage: cargo xtask image PATH SIZE (SIZE: bytes, or with K, M or G)";
    let [path, size] = rest else {
        return Err(usage.into());
    };
    let size = parse_size(size.to_str().ok_or(usage)?)?;
    let path = PathBuf::from(path);
    create_image(&path, size)?;
    eprintln!("xtask: created {} ({size} bytes of zeros)", path.display());
    Ok(())
}

/// The hv arguments that give the demo its disk, `target/demo-disk.img` (1 MiB, created if
/// missing), on which it keeps a log of its runs.
pub fn demo_disk_args() -> Result<Vec<OsString>> {
    let img = target_dir().join("demo-disk.img");
    if !img.exists() {
        create_image(&img, DEMO_DISK_BYTES)?;
        eprintln!("xtask: created {} for the demo's log", img.display());
    }
    Ok(vec!["--disk".into(), img.into_os_string()])
}

/// xorshift64*, for image contents and random offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Writes `size` bytes of pseudo-random data to `path` (so no read hits a hole).
fn fill_image(path: &Path, size: u64) -> Result<()> {
    let mut f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for w in buf.chunks_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes());
        }
        f.write_all(&buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

/// One measured row.
#[derive(Clone, Debug, Default)]
struct Sample {
    path: String,
    workload: String,
    bytes: u64,
    ns: u64,
    requests: u64,
    /// Exits per request (guest rows).
    exits_per_request: Option<f64>,
    /// Total exits of the run, baseline subtracted.
    exits: Option<u64>,
    /// CPU time of the hv process for the whole run (guest rows).
    hv_cpu_ns: Option<u64>,
    note: String,
}

impl Sample {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 * 1e3 / self.ns.max(1) as f64
    }

    fn iops(&self) -> f64 {
        self.requests as f64 * 1e9 / self.ns.max(1) as f64
    }
}

/// What one hv run of blkbench reported.
struct GuestRun {
    /// `bytes`, `ns`, `requests` and the rest of its `blkbench WORKLOAD PATH k=v..` line.
    values: Vec<(String, u64)>,
    exits: u64,
    cpu_ns: u64,
}

impl GuestRun {
    fn get(&self, key: &str) -> Option<u64> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The total exits of the (one) domain of an `hv --stats` run.
fn parse_exits(stderr: &str) -> Option<u64> {
    domain_exits(stderr).into_values().next()
}

/// The `k=v` values of the line `blkbench WORKLOAD PATH k=v ...`.
fn parse_result(stdout: &str, workload: &str, path: &str) -> Option<Vec<(String, u64)>> {
    stdout.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next()? != "blkbench" || w.next()? != workload || w.next()? != path {
            return None;
        }
        Some(
            w.filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
        )
    })
}

/// Runs `blkbench` with `cmdline` and `hv_args` under `hv --stats`.
fn run_guest(cmdline: &str, hv_args: &[OsString], workload: &str, path: &str) -> Result<GuestRun> {
    let guest = guest_path("blkbench")?;
    let mut args: Vec<OsString> = vec!["--stats".into(), "--cmdline".into(), cmdline.into()];
    args.extend_from_slice(hv_args);
    let cpu0 = children_cpu_ns();
    let mut child = hv_command(&guest, &args)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start hv: {e}"))?;
    let mut err_pipe = child.stderr.take().ok_or("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .map_err(|e| format!("reading hv's output: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("waiting for hv: {e}"))?;
    let cpu_ns = children_cpu_ns().saturating_sub(cpu0);
    let stderr = err_reader.join().unwrap_or_default();
    let fail = |why: String| {
        let tail: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.starts_with("uart ...") && !l.starts_with("cons ..."))
            .collect();
        format!(
            "blkbench `{cmdline}`: {why}\n--- stdout (console lines left out)\n{}\n--- stderr\n{}",
            tail.join("\n"),
            stderr.trim_end()
        )
    };
    if !status.success() {
        return Err(fail(format!("hv ended with {status}")));
    }
    let exits = parse_exits(&stderr).ok_or_else(|| fail("no `stats for domain` block".into()))?;
    let values = if workload == "none" {
        Vec::new()
    } else {
        parse_result(&stdout, workload, path)
            .ok_or_else(|| fail(format!("no `blkbench {workload} {path}` line")))?
    };
    Ok(GuestRun {
        values,
        exits,
        cpu_ns,
    })
}

/// The host's `pread` of `path`: `(bytes, ns, requests)`. `req` bytes per call, sequential over
/// the whole file, or `ops` random 4 KiB-aligned reads if `random`. With `direct`, the file is
/// opened `O_DIRECT`; otherwise its page cache is dropped first.
fn host_pread(path: &Path, req: usize, random: bool, direct: bool) -> Result<(u64, u64, u64)> {
    if !direct {
        drop_cache(path)?;
    }
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(O_DIRECT);
    }
    let f = opts
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    // A buffer aligned to 4 KiB (O_DIRECT needs it).
    let mut raw = vec![0u8; req + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + req];
    let err = |e: std::io::Error| format!("pread {}: {e}", path.display());
    let t = Instant::now();
    let (mut bytes, mut requests) = (0u64, 0u64);
    if random {
        let pages = size / 4096;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..RANDOM_OPS {
            let off = rng.next() % pages * 4096;
            bytes += f.read_at(buf, off).map_err(err)? as u64;
            requests += 1;
        }
    } else {
        let mut off = 0;
        while off + req as u64 <= size {
            let n = f.read_at(buf, off).map_err(err)?;
            if n == 0 {
                break;
            }
            off += n as u64;
            bytes += n as u64;
            requests += 1;
        }
    }
    Ok((bytes, t.elapsed().as_nanos() as u64, requests))
}

/// One guest workload of the benchmark.
struct GuestWorkload {
    path: &'static str,
    workload: &'static str,
    /// Extra command-line words (`bytes=`, `ops=`).
    extra: String,
    /// Drop the image's page cache before the run (read workloads).
    cold: bool,
}

fn gw(path: &'static str, workload: &'static str, extra: &str, cold: bool) -> GuestWorkload {
    GuestWorkload {
        path,
        workload,
        extra: extra.to_string(),
        cold,
    }
}

/// `cargo xtask bench block [--quick]`.
pub fn bench_block(rest: &[OsString]) -> Result<()> {
    let quick = match rest {
        [] => false,
        [q] if q == "--quick" => true,
        _ => return Err("usage: cargo xtask bench block [--quick]".into()),
    };
    let target = target_dir();
    let pv_img = target.join("bench-block.img");
    let ata_img = target.join("bench-block-ata.img");
    eprintln!(
        "xtask: writing {} and {} ({} MiB of pseudo-random data each)",
        pv_img.display(),
        ata_img.display(),
        BENCH_IMAGE_BYTES >> 20
    );
    fill_image(&pv_img, BENCH_IMAGE_BYTES)?;
    fill_image(&ata_img, BENCH_IMAGE_BYTES)?;

    let mut samples: Vec<Sample> = Vec::new();

    // The host's own reads of the same file.
    for (workload, req, random) in [
        ("seqread-64k", 64 * KIB as usize, false),
        ("seqread-1m", MIB as usize, false),
        ("randread-4k-qd1", 4096, true),
    ] {
        for (path, direct) in [("host-pread", false), ("host-odirect", true)] {
            eprintln!("xtask: {path} {workload} (x{REPS})");
            let mut reps = Vec::new();
            for _ in 0..REPS {
                match host_pread(&pv_img, req, random, direct) {
                    Ok((bytes, ns, requests)) => reps.push(Sample {
                        path: path.into(),
                        workload: workload.into(),
                        bytes,
                        ns,
                        requests,
                        note: format!("median of {REPS}"),
                        ..Sample::default()
                    }),
                    Err(e) => {
                        eprintln!("xtask: {path} {workload}: skipped: {e}");
                        break;
                    }
                }
            }
            samples.extend(median(reps));
        }
    }

    // The guest workloads, with the bytes each path can do in reasonable time: the emulated
    // disk exits twice per 512-byte sector read and once per 16-bit word written (this KVM
    // exits once per item of `rep outsw`), the UART twice per byte.
    let pv = format!("bytes={BENCH_IMAGE_BYTES} ops={RANDOM_OPS}");
    let mut runs = vec![
        gw("pv", "seqread-64k", &pv, true),
        gw("pv", "seqread-1m", &pv, true),
        gw("pv", "seqwrite-64k", &pv, false),
        gw("pv", "seqwrite-1m", &pv, false),
        gw("pv", "randread-4k-qd1", &pv, true),
        gw("pv", "randread-4k-qd32", &pv, true),
        gw("ata", "seqread-64k", "bytes=4M", true),
        gw("ata", "seqread-1m", "bytes=4M", true),
        gw(
            "ata",
            "seqwrite-64k",
            if quick { "bytes=64K" } else { "bytes=256K" },
            false,
        ),
        gw(
            "ata",
            "randread-4k-qd1",
            if quick { "ops=200" } else { "ops=1000" },
            true,
        ),
        gw("console", "console-64k", "", false),
        gw("uart", "console-64k", "", false),
    ];
    if !quick {
        runs.insert(9, gw("ata", "seqwrite-1m", "bytes=1M", false));
    }
    let disk_args = |path: &str| -> Vec<OsString> {
        match path {
            "pv" => vec!["--disk".into(), pv_img.clone().into_os_string()],
            "ata" => vec!["--ata-disk".into(), ata_img.clone().into_os_string()],
            _ => Vec::new(),
        }
    };
    let mut baselines: Vec<(&str, GuestRun)> = Vec::new();
    for path in ["pv", "ata", "console", "uart"] {
        eprintln!("xtask: {path} baseline (boot and connect only)");
        let b = run_guest(
            &format!("path={path} workload=none"),
            &disk_args(path),
            "none",
            path,
        )?;
        baselines.push((path, b));
    }
    for r in &runs {
        let note = match (r.path, r.workload) {
            ("ata", "seqwrite-1m") => " (about a minute: ~257 exits per sector written)",
            ("ata", "seqwrite-64k") | ("uart", _) => " (slow: an exit per word / byte)",
            _ => "",
        };
        // The PV runs are short: repeat them like the host's reads and keep the median.
        let reps = if r.path == "pv" { REPS } else { 1 };
        eprintln!("xtask: {} {}{note} (x{reps})", r.path, r.workload);
        let mut runs = Vec::new();
        for _ in 0..reps {
            if r.cold {
                let img = if r.path == "ata" { &ata_img } else { &pv_img };
                drop_cache(img)?;
            }
            let cmdline = format!("path={} workload={} {}", r.path, r.workload, r.extra);
            let g = run_guest(&cmdline, &disk_args(r.path), r.workload, r.path)?;
            let base = baselines
                .iter()
                .find(|(p, _)| *p == r.path)
                .map_or(0, |(_, b)| b.exits);
            let requests = g.get("requests").unwrap_or(0);
            let exits = g.exits.saturating_sub(base);
            let mut note = String::new();
            if let (Some(ring), true) = (g.get("ring"), r.path == "pv") {
                if ring != requests {
                    let _ = write!(note, "{ring} ring requests; ");
                }
            }
            if reps > 1 {
                let _ = write!(note, "median of {reps}");
            }
            runs.push(Sample {
                path: r.path.into(),
                workload: r.workload.into(),
                bytes: g.get("bytes").unwrap_or(0),
                ns: g.get("ns").unwrap_or(0),
                requests,
                exits: Some(exits),
                exits_per_request: (requests > 0).then(|| exits as f64 / requests as f64),
                hv_cpu_ns: Some(g.cpu_ns),
                note: note.trim_end_matches("; ").to_string(),
            });
        }
        samples.extend(median(runs));
    }

    print_results(&samples, &baselines);
    let csv = target.join("bench-block.csv");
    std::fs::write(&csv, to_csv(&samples)).map_err(|e| format!("{}: {e}", csv.display()))?;
    let svg = target.join("bench-block.svg");
    std::fs::write(&svg, to_svg(&samples)).map_err(|e| format!("{}: {e}", svg.display()))?;
    println!("\nwrote {} and {}", csv.display(), svg.display());
    Ok(())
}

/// The sample with the median time.
fn median(mut v: Vec<Sample>) -> Option<Sample> {
    v.sort_by_key(|s| s.ns);
    let mid = v.len() / 2;
    v.into_iter().nth(mid)
}

fn find<'a>(samples: &'a [Sample], path: &str, workload: &str) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.path == path && s.workload == workload)
}

fn print_results(samples: &[Sample], baselines: &[(&str, GuestRun)]) {
    println!(
        "block benchmark: blkbench under `hv --stats`, {} MiB images; host rows read the same file \
         (host-pread: page cache dropped first with posix_fadvise(DONTNEED); host-odirect: O_DIRECT); \
         guest read workloads also start with the image's page cache dropped",
        BENCH_IMAGE_BYTES >> 20
    );
    let header = [
        "path",
        "workload",
        "MB/s",
        "IOPS",
        "exits/request",
        "hv CPU ms",
        "time ms",
        "note",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in samples {
        rows.push(vec![
            s.path.clone(),
            s.workload.clone(),
            fmt_f(s.mb_per_s()),
            fmt_f(s.iops()),
            s.exits_per_request.map_or("-".into(), fmt_f),
            s.hv_cpu_ns
                .map_or("-".into(), |c| format!("{:.1}", c as f64 / 1e6)),
            format!("{:.1}", s.ns as f64 / 1e6),
            s.note.clone(),
        ]);
    }
    print_table(&header, &rows, &[0, 1, header.len() - 1]);
    let base: Vec<String> = baselines
        .iter()
        .map(|(p, b)| format!("{p} {} exits, {:.1} ms CPU", b.exits, b.cpu_ns as f64 / 1e6))
        .collect();
    println!(
        "baselines (boot + connect, subtracted from exits): {}",
        base.join("; ")
    );

    println!("\ngoals:");
    for w in ["seqread-64k", "seqread-1m"] {
        if let (Some(pv), Some(host)) = (find(samples, "pv", w), find(samples, "host-pread", w)) {
            let ratio = pv.mb_per_s() / host.mb_per_s();
            println!(
                "  PV {w} vs host pread (cache dropped): {:.0} / {:.0} MB/s = {ratio:.2}x (goal >= 0.8x): {}",
                pv.mb_per_s(),
                host.mb_per_s(),
                if ratio >= 0.8 { "met" } else { "MISSED" }
            );
        }
    }
    if let Some(e) = find(samples, "pv", "randread-4k-qd32").and_then(|s| s.exits_per_request) {
        println!(
            "  PV exits per 4 KiB request at QD32: {e:.4} (goal <= 0.2): {}",
            if e <= 0.2 { "met" } else { "MISSED" }
        );
    }
    if let Some(e) = find(samples, "ata", "randread-4k-qd1").and_then(|s| s.exits_per_request) {
        println!(
            "  ATA exits per 4 KiB request (QD1, its only depth): {e:.1} (expected >= 8): {}",
            if e >= 8.0 { "met" } else { "MISSED" }
        );
    }
}

fn to_csv(samples: &[Sample]) -> String {
    let mut s = String::from(
        "path,workload,bytes,ns,requests,mb_per_s,iops,exits,exits_per_request,hv_cpu_ms\n",
    );
    for x in samples {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.3},{:.1},{},{},{}",
            x.path,
            x.workload,
            x.bytes,
            x.ns,
            x.requests,
            x.mb_per_s(),
            x.iops(),
            x.exits.map_or(String::new(), |e| e.to_string()),
            x.exits_per_request
                .map_or(String::new(), |e| format!("{e:.4}")),
            x.hv_cpu_ns
                .map_or(String::new(), |c| format!("{:.3}", c as f64 / 1e6)),
        );
    }
    s
}

fn colour(path: &str) -> &'static str {
    match path {
        "pv" => "#2b7bb9",
        "ata" => "#d9534f",
        "console" => "#5cb85c",
        "uart" => "#f0ad4e",
        "host-pread" => "#555555",
        _ => "#999999",
    }
}

/// A horizontal bar chart of MB/s per row, on a log scale (the paths differ by 10^6).
fn to_svg(samples: &[Sample]) -> String {
    let bars: Vec<Bar> = samples
        .iter()
        .filter(|s| s.ns > 0)
        .map(|s| Bar {
            label: format!("{} {}", s.path, s.workload),
            value: s.mb_per_s(),
            colour: colour(&s.path),
        })
        .collect();
    bar_chart(
        "Block and console throughput, MB/s: PV vs emulated vs host",
        "MB/s",
        &bars,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn result_and_stats_lines() {
        let out =
            "blkbench: pv: vbd 0\nblkbench seqread-64k pv bytes=100 ns=50 requests=2 ring=3\n";
        let v = parse_result(out, "seqread-64k", "pv").unwrap();
        assert_eq!(v[0], ("bytes".to_string(), 100));
        assert_eq!(v[3], ("ring".to_string(), 3));
        assert!(parse_result(out, "seqread-1m", "pv").is_none());
        let err = "hv: x\nstats for domain blkbench: 20726 exits\n  exit hypercall 20726\n";
        assert_eq!(parse_exits(err), Some(20726));
        assert_eq!(parse_exits("nothing"), None);
    }

    #[test]
    fn images_are_created_once() {
        let dir = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        let p = dir.join("sub/x.img");
        create_image(&p, 8192).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
        assert!(create_image(&p, 8192).unwrap_err().contains("creating"));
        assert!(create_image(&dir.join("y.img"), 1000).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_render() {
        let s = Sample {
            path: "pv".into(),
            workload: "seqread-64k".into(),
            bytes: 1 << 20,
            ns: 1_000_000,
            requests: 16,
            exits: Some(3),
            exits_per_request: Some(0.1875),
            hv_cpu_ns: Some(2_000_000),
            note: String::new(),
        };
        let csv = to_csv(std::slice::from_ref(&s));
        assert!(csv.contains("pv,seqread-64k,1048576,1000000,16,1048.576,16000.0,3,0.1875,2.000"));
        let svg = to_svg(&[s]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("pv seqread-64k"));
    }
}
