//! The demo guest: shows the ABI version and features, the domain's resources, pvclock against
//! the host's clock, timer events and an event channel, then powers off with code 0.
//!
//! Its output lines start with a tag (`demo:`, `time:`, `timer:`, `event:`) so tests can grep
//! them; it exits with code 1 if a check fails (a short sleep, an undelivered event).
#![no_std]
#![no_main]

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_sdk::abi::{Features, ABI_MAJOR, ABI_MINOR};
use guest_sdk::events::{self, Port};
use guest_sdk::time::{self, DateTime, NS_PER_MS};
use guest_sdk::{heap, hv, println, StartInfo};

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
