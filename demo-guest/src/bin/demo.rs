//! The demo guest: shows the ABI version and features, the domain's resources, pvclock against
//! the host's clock, timer events and an event channel, and, when it has a disk (`vbd 0`), a
//! persistent log of its runs on it; then powers off with code 0.
//!
//! Its output lines start with a tag (`demo:`, `time:`, `timer:`, `event:`, `disk:`) so tests
//! can grep them; it exits with code 1 if a check fails (a short sleep, an undelivered event, a
//! disk error).
#![no_std]
#![no_main]

extern crate alloc;

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_sdk::abi::{Features, ABI_MAJOR, ABI_MINOR};
use guest_sdk::events::{self, Port};
use guest_sdk::time::{self, DateTime, NS_PER_MS};
use guest_sdk::{heap, hv, println, StartInfo};
use pv_drivers::frontend::blk::{BlkError, BlockDevice, Config};
use pv_drivers::frontend::device::DeviceError;

guest_sdk::entry!(main);

/// The port the event handler saw (0: not yet).
static DELIVERED: AtomicU32 = AtomicU32::new(0);
/// System time of each periodic tick.
static TICKS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static NEXT_TICK: AtomicU32 = AtomicU32::new(0);
/// Period of the tick demonstration.
const TICK_NS: u64 = 10 * NS_PER_MS;

fn main(si: &StartInfo) {
    let t_start = time::monotonic_ns();
    let mut ok = true;

    println!("=== hv demo guest ===");
    match hv::abi_version() {
        Ok((major, minor)) => println!(
            "demo: ABI {}.{} (start info), ABI {major}.{minor} (abi_query), guest built for ABI {ABI_MAJOR}.{ABI_MINOR}",
            si.abi_major, si.abi_minor
        ),
        Err(e) => {
            println!("demo: ABI {}.{} (start info), abi_query failed: {e}", si.abi_major, si.abi_minor);
            ok = false;
        }
    }
    let features = Features::from_bits_retain(si.features);
    print_features(features);
    if let Ok(f) = hv::abi_features() {
        if f != features {
            println!(
                "demo: WARNING abi_query features {:#x} differ from start info",
                f.bits()
            );
            ok = false;
        }
    }
    println!(
        "demo: domain {}, {} vCPU(s), {} MiB RAM",
        si.domid,
        si.nr_vcpus,
        si.ram_bytes >> 20
    );
    if let Some((base, len)) = heap::region() {
        println!("demo: heap {} KiB at {base:#x}", len >> 10);
    }
    println!("demo: cmdline \"{}\"", si.cmdline());

    // pvclock against the host's clock: system time counts from the hv's start, the wall
    // clock is absolute (compare it with `date -u` on the host).
    let (secs, nanos) = time::wall_clock();
    println!(
        "time: system time {t_start} ns at start of main (boot at {} ns)",
        si.boot_system_time_ns
    );
    println!(
        "time: wall clock {} (unix {secs}.{nanos:09})",
        DateTime::from_unix(secs, nanos)
    );

    // Sleep 100 ms on the one-shot timer and let pvclock say how long it took.
    let ticks_before = time::timer_events();
    let t0 = time::monotonic_ns();
    time::sleep(100 * NS_PER_MS);
    let slept = time::monotonic_ns() - t0;
    let ticks = time::timer_events() - ticks_before;
    println!(
        "timer: slept {}.{} ms (pvclock), {ticks} tick{}",
        slept / NS_PER_MS,
        slept % NS_PER_MS / 100_000,
        if ticks == 1 { "" } else { "s" }
    );
    if slept < 100 * NS_PER_MS {
        println!("timer: ERROR slept less than the 100 ms asked for");
        ok = false;
    }

    // A few periodic ticks: the timer hook re-arms the one-shot timer.
    ok &= periodic_ticks();

    // An event channel to ourselves.
    ok &= ipi_to_self();

    // The persistent log on the disk, if there is one.
    ok &= disk_log();

    println!(
        "demo: done in {} ms, powering off",
        (time::monotonic_ns() - t_start) / NS_PER_MS
    );
    if !ok {
        guest_sdk::exit(1);
    }
}

fn print_features(features: Features) {
    println!(
        "demo: hv features {:#x}: {}",
        features.bits(),
        Names(features)
    );
}

/// Displays the names of a feature set, separated by spaces.
struct Names(Features);

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, (name, _)) in self.0.iter_names().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

fn on_tick() {
    let i = NEXT_TICK.fetch_add(1, Ordering::AcqRel) as usize;
    if let Some(slot) = TICKS.get(i) {
        let now = time::monotonic_ns();
        slot.store(now, Ordering::Release);
        if i + 1 < TICKS.len() {
            let _ = time::set_timer(now + TICK_NS);
        }
    }
}

fn periodic_ticks() -> bool {
    NEXT_TICK.store(0, Ordering::Release);
    time::set_timer_hook(Some(on_tick));
    let start = time::monotonic_ns();
    if let Err(e) = time::set_timer(start + TICK_NS) {
        println!("timer: ERROR set_timer failed: {e}");
        time::set_timer_hook(None);
        return false;
    }
    // Wait (blocking) until the last tick, with a generous bound.
    let limit = start + 2_000 * NS_PER_MS;
    while NEXT_TICK.load(Ordering::Acquire) < TICKS.len() as u32 && time::monotonic_ns() < limit {
        let guard = guest_sdk::sync::mask_upcalls();
        if NEXT_TICK.load(Ordering::Acquire) < TICKS.len() as u32 {
            let _ = guest_sdk::sched::block();
        }
        drop(guard);
    }
    time::set_timer_hook(None);
    let mut ok = true;
    let mut prev = start;
    for (i, t) in TICKS.iter().enumerate() {
        let t = t.load(Ordering::Acquire);
        if t == 0 {
            println!("timer: ERROR tick {} never came", i + 1);
            ok = false;
            break;
        }
        let d = t - prev;
        println!(
            "timer: tick {} after {}.{} ms (pvclock)",
            i + 1,
            d / NS_PER_MS,
            d % NS_PER_MS / 100_000
        );
        if d < TICK_NS {
            println!("timer: ERROR tick {} came early", i + 1);
            ok = false;
        }
        prev = t;
    }
    ok
}

fn on_ipi(port: Port) {
    DELIVERED.store(port, Ordering::Release);
}

fn ipi_to_self() -> bool {
    let port = match events::bind_ipi(0) {
        Ok(p) => p,
        Err(e) => {
            println!("event: ERROR bind_ipi failed: {e}");
            return false;
        }
    };
    let result = (|| {
        events::set_handler(port, on_ipi)?;
        events::send(port)?;
        // The handler normally has run when `send` returns; give the hv a few chances.
        for _ in 0..100 {
            if DELIVERED.load(Ordering::Acquire) != 0 {
                break;
            }
            guest_sdk::yield_now();
        }
        Ok::<_, guest_sdk::Error>(DELIVERED.load(Ordering::Acquire))
    })();
    let _ = events::close(port);
    match result {
        Ok(p) if p == port => {
            println!("event: port {port} delivered to handler");
            true
        }
        Ok(0) => {
            println!("event: ERROR port {port} NOT delivered to handler");
            false
        }
        Ok(p) => {
            println!("event: ERROR sent on port {port}, handler saw port {p}");
            false
        }
        Err(e) => {
            println!("event: ERROR port {port}: {e}");
            false
        }
    }
}

/// The log's block: the first 4 KiB of the disk.
const LOG_BYTES: usize = 4096;
/// Bytes 0..16 of the log block.
const LOG_MAGIC: &[u8; 16] = b"hv demo log v1\0\0";
/// Where the records start, and their size (`run: u64`, `secs: u64`, `nanos: u32`, padding).
const LOG_HEAD: usize = 64;
const LOG_RECORD: usize = 32;
/// Records kept (a ring: run N is in slot (N - 1) % LOG_SLOTS).
const LOG_SLOTS: u64 = ((LOG_BYTES - LOG_HEAD) / LOG_RECORD) as u64;
/// Previous runs listed.
const LOG_SHOWN: u64 = 5;

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Appends a record (the run's number and the wall-clock time) to the log on vbd 0, flushes,
/// and prints the previous runs. A domain without a disk skips it.
fn disk_log() -> bool {
    let cfg = Config {
        data_pages: 4,
        indirect_pages: 0,
        ..Config::default()
    };
    let mut dev = match BlockDevice::open_with(0, cfg) {
        Ok(d) => d,
        Err(BlkError::Device(DeviceError::NoDevice)) => {
            println!("disk: no vbd 0 (give hv `--disk IMAGE` for a persistent log)");
            return true;
        }
        Err(e) => {
            println!("disk: ERROR cannot open vbd 0: {e}");
            return false;
        }
    };
    if dev.read_only() || dev.size_bytes() < LOG_BYTES as u64 {
        println!(
            "disk: vbd 0 is {}, no log kept",
            if dev.read_only() {
                "read-only"
            } else {
                "smaller than 4 KiB"
            }
        );
        return true;
    }
    let mut block = [0u8; LOG_BYTES];
    if let Err(e) = dev.read(0, &mut block) {
        println!("disk: ERROR reading the log: {e}");
        return false;
    }
    let fresh = &block[..16] != LOG_MAGIC;
    if fresh {
        block.fill(0);
        block[..16].copy_from_slice(LOG_MAGIC);
    }
    let previous = le_u64(&block, 16);
    let run = previous + 1;
    let (secs, nanos) = time::wall_clock();
    let slot = LOG_HEAD + ((run - 1) % LOG_SLOTS) as usize * LOG_RECORD;
    block[16..24].copy_from_slice(&run.to_le_bytes());
    block[slot..slot + 8].copy_from_slice(&run.to_le_bytes());
    block[slot + 8..slot + 16].copy_from_slice(&secs.to_le_bytes());
    block[slot + 16..slot + 20].copy_from_slice(&nanos.to_le_bytes());
    if let Err(e) = dev.write(0, &block).and_then(|()| dev.flush()) {
        println!("disk: ERROR writing the log: {e}");
        return false;
    }
    let mut line = alloc::format!("disk: run {run}; previous runs:");
    if previous == 0 {
        line.push_str(if fresh { " none (new log)" } else { " none" });
    }
    let first = previous.saturating_sub(LOG_SHOWN.min(LOG_SLOTS - 1)) + 1;
    if first > 1 {
        line.push_str(&alloc::format!(" ({} earlier)", first - 1));
    }
    for r in first..=previous {
        let at = LOG_HEAD + ((r - 1) % LOG_SLOTS) as usize * LOG_RECORD;
        let (s, n) = (le_u64(&block, at + 8), le_u64(&block, at + 16) as u32);
        let sep = if r == first { " " } else { ", " };
        line.push_str(&alloc::format!(
            "{sep}#{} at {}",
            le_u64(&block, at),
            DateTime::from_unix(s, n)
        ));
    }
    println!("{line}");
    if let Err(e) = dev.close() {
        println!("disk: ERROR closing vbd 0: {e}");
        return false;
    }
    true
}
