//! Time and timers: system time from pvclock, the wall clock, the one-shot timer, sleeping.
//!
//! System time counts nanoseconds since the hypervisor started. [`monotonic_ns`] computes it
//! from the vCPU's pvclock record and `rdtsc`, without an exit. The wall clock is the
//! hypervisor's wall-clock time at system time 0, plus system time.
//!
//! The runtime binds `VIRQ_TIMER` on vCPU 0 to a port of its own ([`timer_port`]); each timer
//! event increments [`timer_events`] and calls the hook set with [`set_timer_hook`]. A vCPU has
//! one one-shot timer: [`sleep`] and [`sleep_until`] arm it themselves, replacing any deadline
//! set with [`set_timer`].
//!
//! ```no_run
//! use guest_sdk::time;
//!
//! let t0 = time::monotonic_ns();
//! time::sleep(10 * time::NS_PER_MS);
//! assert!(time::monotonic_ns() - t0 >= 10 * time::NS_PER_MS);
//! let (secs, _nanos) = time::wall_clock();
//! guest_sdk::println!("now: {}", time::DateTime::from_unix(secs, 0));
//! ```

use core::fmt;
use core::ptr::addr_of_mut;
use core::sync::atomic::{fence, AtomicI8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use hypercall_abi::evtchn::{virq, Port};
use hypercall_abi::hypercall as nr;
use hypercall_abi::time::{scale_delta, PvclockTimeInfo};

use crate::shared::{self, current_vcpu, Shared};
use crate::{Error, Result};

/// Nanoseconds per microsecond.
pub const NS_PER_US: u64 = 1_000;
/// Nanoseconds per millisecond.
pub const NS_PER_MS: u64 = 1_000_000;
/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Retries of a seqlock read before giving up on a record that stays mid-update.
const SEQLOCK_RETRIES: u32 = 1 << 20;

/// The highest time returned so far, so that [`monotonic_ns`] never goes backwards.
static LAST_NS: AtomicU64 = AtomicU64::new(0);

/// A consistent copy of a pvclock record (the fields needed to compute time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pvclock {
    tsc_timestamp: u64,
    system_time: u64,
    mul: u32,
    shift: i8,
}

impl Pvclock {
    fn at(&self, tsc: u64) -> u64 {
        self.system_time.wrapping_add(scale_delta(
            tsc.saturating_sub(self.tsc_timestamp),
            self.mul,
            self.shift,
        ))
    }
}

/// Reads `rec` under its seqlock (`version` odd = being updated, changed = torn read), taking
/// the TSC with `rdtsc` inside the read so record and TSC match.
///
/// # Safety
///
/// `rec` must point to a live pvclock record.
unsafe fn read_pvclock(rec: *mut PvclockTimeInfo, rdtsc: &dyn Fn() -> u64) -> (Pvclock, u64) {
    // SAFETY: the caller guarantees a live record; every field is naturally aligned in the
    // 32-byte record (offsets 0, 8, 16, 24, 28) and accessed only atomically.
    let (version, ts, st, mul, shift) = unsafe {
        (
            AtomicU32::from_ptr(addr_of_mut!((*rec).version)),
            AtomicU64::from_ptr(addr_of_mut!((*rec).tsc_timestamp)),
            AtomicU64::from_ptr(addr_of_mut!((*rec).system_time)),
            AtomicU32::from_ptr(addr_of_mut!((*rec).tsc_to_system_mul)),
            AtomicI8::from_ptr(addr_of_mut!((*rec).tsc_shift)),
        )
    };
    let mut last = (Pvclock::default(), 0);
    for _ in 0..SEQLOCK_RETRIES {
        let v1 = version.load(Ordering::Acquire);
        if v1 & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        let clock = Pvclock {
            tsc_timestamp: ts.load(Ordering::Relaxed),
            system_time: st.load(Ordering::Relaxed),
            mul: mul.load(Ordering::Relaxed),
            shift: shift.load(Ordering::Relaxed),
        };
        let tsc = rdtsc();
        fence(Ordering::Acquire);
        last = (clock, tsc);
        if version.load(Ordering::Relaxed) == v1 {
            break;
        }
    }
    last
}

fn pvclock_now(s: Shared) -> u64 {
    // SAFETY: `s` is the live shared-info page; the record is inside it.
    let (clock, tsc) = unsafe { read_pvclock(s.time(current_vcpu()), &crate::arch::rdtsc) };
    clock.at(tsc)
}

/// System time in nanoseconds (since the hypervisor started), from pvclock; never decreases.
/// Returns 0 before the runtime is set up.
///
/// ```no_run
/// let t = guest_sdk::time::monotonic_ns();
/// # let _ = t;
/// ```
pub fn monotonic_ns() -> u64 {
    let Some(s) = shared::shared() else { return 0 };
    let now = pvclock_now(s);
    let prev = LAST_NS.fetch_max(now, Ordering::Relaxed);
    now.max(prev)
}

/// Converts a TSC delta (two [`arch::rdtsc`](crate::arch::rdtsc) readings) to nanoseconds with
/// the calling vCPU's pvclock scale. Returns 0 before the runtime is set up.
///
/// ```no_run
/// use guest_sdk::{arch, time};
/// let t0 = arch::rdtsc();
/// arch::ping_exit();
/// let ns = time::tsc_delta_to_ns(arch::rdtsc() - t0);
/// # let _ = ns;
/// ```
pub fn tsc_delta_to_ns(delta: u64) -> u64 {
    let Some(s) = shared::shared() else { return 0 };
    // SAFETY: `s` is the live shared-info page.
    let (clock, _) = unsafe { read_pvclock(s.time(current_vcpu()), &|| 0) };
    scale_delta(delta, clock.mul, clock.shift)
}

/// Wall-clock time: `(seconds, nanoseconds)` since the Unix epoch (UTC). Returns `(0, 0)`
/// before the runtime is set up.
///
/// ```no_run
/// let (secs, nanos) = guest_sdk::time::wall_clock();
/// guest_sdk::println!("{secs}.{nanos:09}");
/// ```
pub fn wall_clock() -> (u64, u32) {
    let Some(s) = shared::shared() else {
        return (0, 0);
    };
    let (mut sec, mut nsec) = (0, 0);
    for _ in 0..SEQLOCK_RETRIES {
        let v1 = s.wc_version().load(Ordering::Acquire);
        if v1 & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        sec = s.wc_sec().load(Ordering::Relaxed);
        nsec = s.wc_nsec().load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if s.wc_version().load(Ordering::Relaxed) == v1 {
            break;
        }
    }
    add_ns((sec, nsec), monotonic_ns())
}

fn add_ns((sec, nsec): (u64, u32), ns: u64) -> (u64, u32) {
    let total = u64::from(nsec) + ns % NS_PER_SEC;
    (
        sec + ns / NS_PER_SEC + total / NS_PER_SEC,
        (total % NS_PER_SEC) as u32,
    )
}

/// Arms the calling vCPU's one-shot timer for absolute system time `deadline_ns`
/// (`VIRQ_TIMER` fires then, at once if it has passed); 0 cancels it. Replaces any earlier
/// deadline, including one set by [`sleep`].
///
/// ```no_run
/// use guest_sdk::time;
/// time::set_timer(time::monotonic_ns() + 50 * time::NS_PER_MS).unwrap();
/// ```
pub fn set_timer(deadline_ns: u64) -> Result<()> {
    // SAFETY: set_timer touches no guest memory.
    Error::check(unsafe { crate::hypercall(nr::SET_TIMER, deadline_ns, 0, 0, 0, 0) }).map(drop)
}

/// Cancels the calling vCPU's timer (`set_timer(0)`).
///
/// ```no_run
/// guest_sdk::time::cancel_timer().unwrap();
/// ```
pub fn cancel_timer() -> Result<()> {
    set_timer(0)
}

/// Sleeps for at least `ns` nanoseconds of system time.
///
/// ```no_run
/// guest_sdk::time::sleep(100 * guest_sdk::time::NS_PER_MS);
/// ```
pub fn sleep(ns: u64) {
    sleep_until(monotonic_ns().saturating_add(ns));
}

/// Sleeps until system time reaches `deadline_ns`: arms the timer and blocks
/// (`sched_op(block)`) until the deadline has passed, running event handlers for whatever
/// arrives meanwhile. Do not call it from an event handler (it would spin, as upcalls are
/// masked there).
///
/// ```no_run
/// use guest_sdk::time;
/// let start = time::monotonic_ns();
/// time::sleep_until(start + time::NS_PER_SEC);
/// ```
pub fn sleep_until(deadline_ns: u64) {
    loop {
        // Check and block with upcalls masked: otherwise the timer event could be consumed by
        // the upcall between the check and the block, and the block would never end. `block`
        // returns when an event is pending even while masked; dropping the guard delivers it.
        let guard = crate::sync::mask_upcalls();
        if monotonic_ns() >= deadline_ns {
            return;
        }
        if timer_port().is_some() && set_timer(deadline_ns).is_ok() {
            let _ = crate::sched::block();
            drop(guard);
        } else {
            drop(guard);
            crate::sched::yield_now();
        }
    }
}

static TIMER_PORT: AtomicU32 = AtomicU32::new(0);
static TIMER_EVENTS: AtomicU64 = AtomicU64::new(0);
static TIMER_HOOK: AtomicUsize = AtomicUsize::new(0);

/// The port the runtime bound to `VIRQ_TIMER` on vCPU 0, once set up.
///
/// ```no_run
/// let port = guest_sdk::time::timer_port().expect("runtime is set up");
/// # let _ = port;
/// ```
pub fn timer_port() -> Option<Port> {
    match TIMER_PORT.load(Ordering::Acquire) {
        0 => None,
        p => Some(p),
    }
}

/// How many timer events the SDK's timer handler has seen.
///
/// ```no_run
/// let before = guest_sdk::time::timer_events();
/// guest_sdk::time::sleep(1_000_000);
/// assert!(guest_sdk::time::timer_events() > before);
/// ```
pub fn timer_events() -> u64 {
    TIMER_EVENTS.load(Ordering::Acquire)
}

/// Sets (or with `None`, removes) a function the SDK's timer handler calls on every timer
/// event, from the upcall (so with upcalls masked: keep it short).
///
/// ```no_run
/// use core::sync::atomic::{AtomicBool, Ordering};
/// static FIRED: AtomicBool = AtomicBool::new(false);
/// fn on_timer() {
///     FIRED.store(true, Ordering::Release);
/// }
/// guest_sdk::time::set_timer_hook(Some(on_timer));
/// ```
pub fn set_timer_hook(hook: Option<fn()>) {
    TIMER_HOOK.store(hook.map_or(0, |f| f as usize), Ordering::Release);
}

fn on_timer(_port: Port) {
    TIMER_EVENTS.fetch_add(1, Ordering::AcqRel);
    let h = TIMER_HOOK.load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: `TIMER_HOOK` only holds 0 or an `fn()` stored by `set_timer_hook`; function
        // pointers and `usize` have the same size on x86_64.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
        f();
    }
}

/// Binds `VIRQ_TIMER` on vCPU 0 to the SDK's timer handler.
pub(crate) fn init() -> Result<()> {
    let port = crate::events::bind_virq(virq::TIMER, 0)?;
    crate::events::set_handler(port, on_timer)?;
    TIMER_PORT.store(port, Ordering::Release);
    Ok(())
}

/// A UTC calendar date and time, for printing wall-clock time.
///
/// ```
/// use guest_sdk::time::DateTime;
/// let t = DateTime::from_unix(951_782_400, 5_000);
/// assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
/// assert_eq!(format!("{t}"), "2000-02-29 00:00:00.000005 UTC");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Year (e.g. 2025).
    pub year: u64,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month, 1..=31.
    pub day: u8,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
    /// Nanoseconds, 0..1_000_000_000.
    pub nanos: u32,
}

impl DateTime {
    /// The UTC date and time `secs` seconds and `nanos` nanoseconds after the Unix epoch.
    pub fn from_unix(secs: u64, nanos: u32) -> DateTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil date from a day count, with years starting on 1 March so that the leap day is
        // the last day of the year: 719_468 days from 0000-03-01 to 1970-01-01, 146_097 days
        // in a 400-year era.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097; // day of era, 0..146_096
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // year of era
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from 1 March
        let mp = (5 * doy + 2) / 153; // month from March, 0..11
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            nanos: nanos % NS_PER_SEC as u32,
        }
    }
}

impl fmt::Display for DateTime {
    /// `YYYY-MM-DD HH:MM:SS.uuuuuu UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06} UTC",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.nanos / 1_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let d = |s| {
            let t = DateTime::from_unix(s, 0);
            (t.year, t.month, t.day, t.hour, t.minute, t.second)
        };
        assert_eq!(d(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(d(86_399), (1970, 1, 1, 23, 59, 59));
        assert_eq!(d(951_868_799), (2000, 2, 29, 23, 59, 59));
        assert_eq!(d(951_868_800), (2000, 3, 1, 0, 0, 0));
        assert_eq!(d(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(d(4_107_542_400), (2100, 3, 1, 0, 0, 0));
        assert_eq!(d(4_107_456_000), (2100, 2, 28, 0, 0, 0));
    }

    #[test]
    fn wall_clock_addition_carries() {
        assert_eq!(add_ns((10, 999_999_999), 1), (11, 0));
        assert_eq!(add_ns((10, 500_000_000), 2_700_000_000), (13, 200_000_000));
    }

    #[test]
    fn pvclock_seqlock_and_scaling() {
        let s = crate::shared::test_page::new();
        let rec = s.time(0);
        let (mul, shift) = hypercall_abi::time::mul_shift_for(2_000_000_000);
        // SAFETY: test-owned page, not shared with another thread.
        unsafe {
            (*rec).version = 2;
            (*rec).tsc_timestamp = 1_000;
            (*rec).system_time = 5_000_000;
            (*rec).tsc_to_system_mul = mul;
            (*rec).tsc_shift = shift;
        }
        // 2 GHz: 2_000_000 ticks after the timestamp are 1 ms.
        // SAFETY: test-owned record.
        let (clock, tsc) = unsafe { read_pvclock(rec, &|| 2_001_000) };
        assert!(clock.at(tsc).abs_diff(6_000_000) <= 1);
        // A TSC behind the timestamp does not go below system_time.
        assert_eq!(clock.at(10), 5_000_000);

        // A torn read (version changes during it) is retried.
        let calls = core::cell::Cell::new(0);
        let tsc_fn = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                // SAFETY: test-owned record.
                unsafe {
                    (*rec).version = 4;
                    (*rec).system_time = 7_000_000;
                }
            }
            1_000
        };
        // SAFETY: test-owned record.
        let (clock, tsc) = unsafe { read_pvclock(rec, &tsc_fn) };
        assert_eq!(calls.get(), 2);
        assert_eq!(clock.at(tsc), 7_000_000);
    }
}
