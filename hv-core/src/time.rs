//! System time (ns since the hv started, shared by all domains) and the pvclock parameters that
//! let a guest compute it from its TSC without an exit.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hypercall_abi::time::{mul_shift_for, PvclockTimeInfo, PVCLOCK_TSC_STABLE};

/// The hv's clock.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    start_tsc: u64,
    wall_sec: u64,
    wall_nsec: u32,
}

/// Reads the host's TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Measures the host TSC frequency against the monotonic clock over `ms` milliseconds (a
/// fallback when KVM cannot say).
pub fn calibrate_tsc_hz(ms: u64) -> u64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let (c1, ns) = (rdtsc(), t0.elapsed().as_nanos().max(1));
    ((c1.wrapping_sub(c0)) as u128 * 1_000_000_000 / ns) as u64
}

impl Clock {
    /// Starts the clock now: system time 0.
    pub fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start = Instant::now();
        let start_tsc = rdtsc();
        Clock {
            start,
            start_tsc,
            wall_sec: wall.as_secs(),
            wall_nsec: wall.subsec_nanos(),
        }
    }

    /// System time now, in ns.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The host instant of a system time.
    pub fn instant_of(&self, ns: u64) -> Instant {
        self.start + std::time::Duration::from_nanos(ns)
    }

    /// The wall clock at system time 0: (seconds, nanoseconds) since the Unix epoch.
    pub fn wall_at_zero(&self) -> (u64, u32) {
        (self.wall_sec, self.wall_nsec)
    }

    /// The pvclock record for a vCPU whose TSC runs at `tsc_hz` and reads `tsc_offset` more
    /// than the host's.
    pub fn pvclock(&self, tsc_hz: u64, tsc_offset: i64) -> PvclockTimeInfo {
        let (mul, shift) = mul_shift_for(tsc_hz.max(1));
        PvclockTimeInfo {
            version: 2,
            tsc_timestamp: self.start_tsc.wrapping_add_signed(tsc_offset),
            system_time: 0,
            tsc_to_system_mul: mul,
            tsc_shift: shift,
            flags: PVCLOCK_TSC_STABLE,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::time::scale_delta;

    #[test]
    fn pvclock_tracks_the_host_clock() {
        let hz = calibrate_tsc_hz(50);
        let clock = Clock::new();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let p = clock.pvclock(hz, 0);
        let guest = p.system_time
            + scale_delta(rdtsc() - p.tsc_timestamp, p.tsc_to_system_mul, p.tsc_shift);
        let host = clock.now_ns();
        assert!(
            guest.abs_diff(host) < 2_000_000,
            "guest {guest} host {host}"
        );
    }
}
