//! The hypercall benchmark guest (`cargo xtask bench hypercall`).
//!
//! Times, one by one with `rdtsc` (converted to ns with the pvclock scale), 20000 null
//! hypercalls (`abi_query(version)`) and 20000 bare exits (`out` to the PING port, which the
//! hypervisor answers doing nothing), interleaved in batches of 1000 so that a noisy machine
//! affects both alike. Prints machine-readable lines:
//!
//! ```text
//! bench first_instruction_ns=N
//! bench hypercall_ns median=N p10=N p90=N n=20000
//! bench portexit_ns median=N p10=N p90=N n=20000
//! bench tsc_overhead_ns median=N p10=N p90=N n=20000
//! ```
//!
//! `first_instruction_ns` is system time (ns since the hypervisor started) read at the very
//! start of `main`: the time from `hv`'s start to the guest's first instructions.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::hint::black_box;

use guest_sdk::abi::{abi_query, hypercall as nr};
use guest_sdk::arch::{ping_exit, rdtsc};
use guest_sdk::{println, time, StartInfo};

guest_sdk::entry!(main);

/// Samples of each kind.
const N: usize = 20_000;
/// Samples of one kind taken in a row before switching to the other.
const BATCH: usize = 1_000;

fn null_hypercall() -> i64 {
    // SAFETY: abi_query(version) only returns a value.
    unsafe { guest_sdk::hypercall(nr::ABI_QUERY, abi_query::VERSION, 0, 0, 0, 0) }
}

fn batch(samples: &mut Vec<u64>, op: fn()) {
    for _ in 0..BATCH {
        let t0 = rdtsc();
        op();
        let t1 = rdtsc();
        samples.push(t1.wrapping_sub(t0));
    }
}

fn hypercall_op() {
    black_box(null_hypercall());
}

fn nothing() {}

/// Sorts the TSC deltas, converts them to ns and prints `bench NAME median=… p10=… p90=… n=…`.
fn report(name: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    let pct = |p: usize| {
        let i = (samples.len() * p / 100).min(samples.len().saturating_sub(1));
        samples.get(i).map_or(0, |&d| time::tsc_delta_to_ns(d))
    };
    println!(
        "bench {name} median={} p10={} p90={} n={}",
        pct(50),
        pct(10),
        pct(90),
        samples.len()
    );
}

fn main(_si: &StartInfo) {
    let first = time::monotonic_ns();
    println!("bench first_instruction_ns={first}");

    let check = null_hypercall();
    if check < 0 {
        println!("bench: ERROR abi_query(version) failed: {check}");
        guest_sdk::exit(1);
    }

    // Warm up caches and the hypervisor's paths.
    let mut warm = Vec::with_capacity(2 * BATCH);
    batch(&mut warm, hypercall_op);
    batch(&mut warm, ping_exit);

    let mut hypercalls = Vec::with_capacity(N);
    let mut exits = Vec::with_capacity(N);
    let mut overhead = Vec::with_capacity(N);
    for round in 0..N / BATCH {
        // Alternate which kind goes first, so neither always follows the other.
        if round % 2 == 0 {
            batch(&mut hypercalls, hypercall_op);
            batch(&mut exits, ping_exit);
        } else {
            batch(&mut exits, ping_exit);
            batch(&mut hypercalls, hypercall_op);
        }
        batch(&mut overhead, nothing);
    }
    report("hypercall_ns", hypercalls);
    report("portexit_ns", exits);
    report("tsc_overhead_ns", overhead);
}
