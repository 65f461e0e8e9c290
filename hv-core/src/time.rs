//! System time (ns since the hv started, shared by all domains) and the pvclock parameters that
//! let a guest compute it from its TSC without an exit.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hypercall_abi::time::{mul_shift_for, PvclockTimeInfo, PVCLOCK_TSC_STABLE};

/// The hv's clock.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    start_tsc: u64,
    tsc_hz: u64,
    mul: u32,
    shift: i8,
    wall_sec: u64,
    wall_nsec: u32,
}

/// Reads the host's TSC.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Clock {
    /// Starts the clock now; `tsc_hz` is the TSC frequency (from KVM).
    pub fn new(tsc_hz: u64) -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start = Instant::now();
        let start_tsc = rdtsc();
        let (mul, shift) = mul_shift_for(tsc_hz.max(1));
        Clock {
            start,
            start_tsc,
            tsc_hz,
            mul,
            shift,
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

    /// The TSC frequency in Hz.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// The wall clock at system time 0: (seconds, nanoseconds) since the Unix epoch.
    pub fn wall_at_zero(&self) -> (u64, u32) {
        (self.wall_sec, self.wall_nsec)
    }

    /// The pvclock record for a vCPU whose TSC reads `tsc_offset` more than the host's.
    pub fn pvclock(&self, tsc_offset: i64) -> PvclockTimeInfo {
        PvclockTimeInfo {
            version: 2,
            tsc_timestamp: self.start_tsc.wrapping_add_signed(tsc_offset),
            system_time: 0,
            tsc_to_system_mul: self.mul,
            tsc_shift: self.shift,
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
        // Calibrate the TSC against the monotonic clock for the test.
        let (t0, c0) = (Instant::now(), rdtsc());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let hz = ((rdtsc() - c0) as u128 * 1_000_000_000 / t0.elapsed().as_nanos()) as u64;
        let clock = Clock::new(hz);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let p = clock.pvclock(0);
        let guest = p.system_time
            + scale_delta(rdtsc() - p.tsc_timestamp, p.tsc_to_system_mul, p.tsc_shift);
        let host = clock.now_ns();
        assert!(
            guest.abs_diff(host) < 2_000_000,
            "guest {guest} host {host}"
        );
    }
}
