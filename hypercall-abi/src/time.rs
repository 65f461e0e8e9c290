//! Time: the pvclock record and its arithmetic.
//!
//! System time is nanoseconds since the hypervisor started, shared by all domains (as Xen's
//! system time is since the hypervisor booted). A guest computes it without an exit from its
//! vCPU's [`PvclockTimeInfo`] and `rdtsc`:
//!
//! ```text
//! loop {
//!     v = version;            // odd: an update is in progress, read again
//!     t = system_time + scale(rdtsc() - tsc_timestamp, tsc_to_system_mul, tsc_shift);
//!     if version == v && v is even { return t }
//! }
//! ```
//!
//! Wall-clock time is `wall clock at system time 0` (in [`crate::shared_info::SharedInfo`]) plus
//! system time.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The per-vCPU time record, in KVM/Xen pvclock format.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct PvclockTimeInfo {
    /// Seqlock: odd while the hypervisor updates the record.
    pub version: u32,
    /// Reserved, zero.
    pub pad0: u32,
    /// The TSC value at which `system_time` was sampled.
    pub tsc_timestamp: u64,
    /// System time, in ns, at `tsc_timestamp`.
    pub system_time: u64,
    /// Multiplier of the TSC-to-ns conversion (a 32.32 fixed-point fraction).
    pub tsc_to_system_mul: u32,
    /// Shift applied to the TSC delta before multiplying (negative: shift right).
    pub tsc_shift: i8,
    /// [`PVCLOCK_TSC_STABLE`] when the TSC is invariant and synchronised across vCPUs.
    pub flags: u8,
    /// Reserved, zero.
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<PvclockTimeInfo>() == 32);
const _: () = assert!(offset_of!(PvclockTimeInfo, tsc_timestamp) == 8);
const _: () = assert!(offset_of!(PvclockTimeInfo, system_time) == 16);
const _: () = assert!(offset_of!(PvclockTimeInfo, tsc_to_system_mul) == 24);
const _: () = assert!(offset_of!(PvclockTimeInfo, tsc_shift) == 28);

/// [`PvclockTimeInfo::flags`]: the TSC is invariant and the same on every vCPU.
pub const PVCLOCK_TSC_STABLE: u8 = 1;

/// Converts a TSC delta to nanoseconds with the record's multiplier and shift.
pub const fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift < 0 {
        delta >> (-(shift as i32)) as u32
    } else {
        delta << shift as u32
    };
    ((d as u128 * mul as u128) >> 32) as u64
}

/// The multiplier and shift that convert ticks of a `tsc_hz` counter to nanoseconds with
/// [`scale_delta`] (the hypervisor computes them; `tsc_hz` must be non-zero).
pub const fn mul_shift_for(tsc_hz: u64) -> (u32, i8) {
    // We want ns = (delta << shift) * mul >> 32 with mul < 2^32, i.e.
    // mul = 1e9 * 2^32 / (tsc_hz << shift), maximised for precision.
    let mut shift: i8 = 0;
    let mut hz = tsc_hz as u128;
    let target = 1_000_000_000u128 << 32;
    // Make hz large enough that mul fits in 32 bits...
    while target / hz >= (1u128 << 32) {
        hz <<= 1;
        shift += 1;
    }
    // ...and small enough to keep the most precision.
    while target / hz < (1u128 << 31) && shift > -31 {
        hz >>= 1;
        shift -= 1;
    }
    ((target / hz) as u32, shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_accurate() {
        for hz in [
            1_000_000u64,
            2_100_000_000,
            2_999_999_000,
            3_700_000_000,
            10_000_000_000,
        ] {
            let (mul, shift) = mul_shift_for(hz);
            let one_second = scale_delta(hz, mul, shift);
            assert!(
                one_second.abs_diff(1_000_000_000) < 10,
                "{hz} Hz: {one_second} ns"
            );
            let hour = scale_delta(hz * 3600, mul, shift);
            assert!(
                hour.abs_diff(3_600_000_000_000) < 1_000_000,
                "{hz} Hz: {hour}"
            );
        }
    }
}
