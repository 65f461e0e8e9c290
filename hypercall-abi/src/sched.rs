//! Scheduling: `sched_op(cmd, a1, a2)` with `cmd` in `rdi`.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `yield()`: let other work run; returns 0. Pending upcalls are delivered on return.
pub const YIELD: u64 = 0;
/// `block()`: sleep until an event is pending for the calling vCPU (`upcall_pending` set, even
/// if `upcall_mask` is set), then return 0. Returns at once if one already is. A timer set with
/// `set_timer` wakes it only if `VIRQ_TIMER` is bound on this vCPU.
pub const BLOCK: u64 = 1;
/// `poll(gpa)`: sleep until one of the ports listed by the [`SchedPoll`] at `gpa` is pending
/// (returns 0) or its deadline passes (returns `-ETIMEDOUT`). Does not clear pending bits and
/// does not need the ports unmasked. `EFAULT` if the record or the port array is not in the
/// caller's RAM; `EINVAL` for `nr_ports` of 0 or above [`MAX_POLL_PORTS`], a non-zero reserved
/// field, or a port that is not open.
pub const POLL: u64 = 2;
/// `shutdown(reason, code)`: stop the domain. Does not return. `EINVAL` for an unknown reason or,
/// for [`shutdown_reason::POWEROFF`], a code above [`MAX_EXIT_CODE`].
pub const SHUTDOWN: u64 = 3;

/// Most ports one [`POLL`] may name.
pub const MAX_POLL_PORTS: u32 = 128;
/// Highest exit code a guest may pass to a poweroff (`hv` exits with it; higher codes are the
/// hypervisor's own).
pub const MAX_EXIT_CODE: u64 = 63;

/// Reasons for [`SHUTDOWN`].
pub mod shutdown_reason {
    /// A clean stop; `code` (0..=63) becomes `hv`'s exit status.
    pub const POWEROFF: u64 = 0;
    /// The guest crashed (e.g. panicked); `code` is informational. `hv` reports a crash.
    pub const CRASH: u64 = 1;
}

/// The argument record of [`POLL`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SchedPoll {
    /// Guest-physical address of an array of `nr_ports` `u32` port numbers.
    pub ports_gpa: u64,
    /// Number of ports, 1..=[`MAX_POLL_PORTS`].
    pub nr_ports: u32,
    /// Reserved, must be zero.
    pub reserved: u32,
    /// Absolute system time (ns) at which to give up; 0 waits without a deadline.
    pub deadline_ns: u64,
}
const _: () = assert!(size_of::<SchedPoll>() == 24);
const _: () = assert!(offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(offset_of!(SchedPoll, deadline_ns) == 16);
