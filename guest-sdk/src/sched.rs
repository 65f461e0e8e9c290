//! Scheduling: yield, block, poll, and stopping the domain.

use core::convert::Infallible;

use hypercall_abi::evtchn::Port;
use hypercall_abi::sched::{self as ops, shutdown_reason, SchedPoll};
use hypercall_abi::{hypercall as nr, Errno};

use crate::{Error, Result};

fn sched_op(cmd: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: the sched_op commands issued by this module read only the poll record and port
    // array the caller passes (valid, on its stack or in its memory) and redirect no control
    // flow; shutdown stops the domain, which is memory-safe.
    unsafe { crate::hypercall(nr::SCHED_OP, cmd, a1, a2, 0, 0) }
}

/// Lets other work run (`sched_op(yield)`). Events pending for this vCPU are delivered on
/// return if upcalls are not masked.
///
/// ```no_run
/// guest_sdk::yield_now();
/// ```
pub fn yield_now() {
    let _ = sched_op(ops::YIELD, 0, 0);
}

/// Sleeps until an event is pending for this vCPU (`sched_op(block)`); returns at once if one
/// already is. Pending upcalls are delivered on return if upcalls are not masked; to wait for a
/// condition an event handler sets without missing the wakeup, check it with upcalls masked
/// (as [`time::sleep_until`](crate::time::sleep_until) does).
///
/// ```no_run
/// guest_sdk::sched::block().unwrap();
/// ```
pub fn block() -> Result<()> {
    Error::check(sched_op(ops::BLOCK, 0, 0)).map(drop)
}

/// Waits until one of `ports` is pending (`Ok`) or system time reaches `deadline_ns`
/// (`Err(Error::Errno(ETIMEDOUT))`); a deadline of 0 means none. Does not clear pending bits.
///
/// The event upcall clears the pending bit of a port it handles, so poll ports that are
/// masked ([`events::mask`](crate::events::mask)) or poll with upcalls masked
/// ([`sync::mask_upcalls`](crate::sync::mask_upcalls)).
///
/// ```no_run
/// use guest_sdk::{events, sched, time};
/// let port = events::bind_ipi(0).unwrap();
/// events::mask(port).unwrap();
/// let r = sched::poll(&[port], time::monotonic_ns() + time::NS_PER_MS);
/// assert!(r.is_err()); // nobody sent anything: ETIMEDOUT
/// ```
pub fn poll(ports: &[Port], deadline_ns: u64) -> Result<()> {
    let nr_ports = u32::try_from(ports.len()).map_err(|_| Error::Errno(Errno::EINVAL))?;
    let rec = SchedPoll {
        ports_gpa: ports.as_ptr() as u64,
        nr_ports,
        reserved: 0,
        deadline_ns,
    };
    Error::check(sched_op(ops::POLL, &rec as *const SchedPoll as u64, 0)).map(drop)
}

/// Stops the domain: `sched_op(shutdown, reason, code)`. Returns only if the hypervisor
/// refused (`EINVAL` for an unknown reason, or a poweroff code above 63).
///
/// ```no_run
/// use guest_sdk::abi::sched::shutdown_reason;
/// let Err(e) = guest_sdk::sched::shutdown(shutdown_reason::POWEROFF, 200);
/// guest_sdk::println!("refused: {e}");
/// ```
pub fn shutdown(reason: u64, code: u64) -> Result<Infallible> {
    Err(match Error::check(sched_op(ops::SHUTDOWN, reason, code)) {
        Err(e) => e,
        // The hypervisor returned success from a call that must not return: report it as an
        // error rather than pretend the domain stopped.
        Ok(v) => Error::UnknownErrno(v as i64),
    })
}

/// Powers the domain off with exit code `code` (0..=63 becomes `hv`'s exit status). If the
/// hypervisor refuses the code, reports it on the console and crashes instead.
///
/// ```no_run
/// guest_sdk::exit(0);
/// ```
pub fn exit(code: u32) -> ! {
    let Err(e) = shutdown(shutdown_reason::POWEROFF, u64::from(code));
    crate::console::early_print(format_args!(
        "guest-sdk: poweroff with code {code} refused: {e}\n"
    ));
    crash(u64::from(code))
}

/// Stops the domain as crashed (`shutdown(crash, code)`); `hv` reports a crash.
///
/// ```no_run
/// guest_sdk::crash(1);
/// ```
pub fn crash(code: u64) -> ! {
    loop {
        let _ = shutdown(shutdown_reason::CRASH, code);
        // Unreachable with a working hypervisor; never return to the caller in any case.
        yield_now();
    }
}
