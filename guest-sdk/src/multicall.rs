//! Multicall: several hypercalls in one exit to the hypervisor.
//!
//! Each [`MulticallEntry`] names a hypercall (`op`) and its arguments; the hypervisor runs the
//! entries in order, as if the calling vCPU made them one by one, and writes each one's result
//! (`rax`: `>= 0` or `-errno`) back into the entry. Decode a result with
//! [`Error::check`](crate::Error::check). The sleeping `sched_op` commands (`block`, `poll`)
//! and `multicall` itself are refused inside a batch (`EINVAL`); `sched_op(shutdown)` stops
//! the domain at once.
//!
//! ```no_run
//! use guest_sdk::abi::{evtchn, hypercall as nr};
//! use guest_sdk::multicall::{self, entry};
//!
//! # let (a, b) = (5, 6);
//! // Notify two ports in one exit.
//! let mut batch = [
//!     entry(nr::EVTCHN_OP, [evtchn::SEND, a, 0, 0, 0]),
//!     entry(nr::EVTCHN_OP, [evtchn::SEND, b, 0, 0, 0]),
//! ];
//! // SAFETY: evtchn_op(send) touches no guest memory.
//! unsafe { multicall::multicall(&mut batch) }.unwrap();
//! for e in &batch {
//!     guest_sdk::Error::check(e.result).unwrap();
//! }
//! ```

pub use hypercall_abi::multicall::{MulticallEntry, MAX_MULTICALL};

use hypercall_abi::hypercall as nr;

use crate::{Error, Result};

/// A batch entry for hypercall `op` with arguments `args` (`rdi, rsi, rdx, r10, r8`); its
/// `result` starts at 0.
///
/// ```
/// use guest_sdk::abi::hypercall as nr;
/// let e = guest_sdk::multicall::entry(nr::ABI_QUERY, [0; 5]);
/// assert_eq!((e.op, e.result), (nr::ABI_QUERY, 0));
/// ```
pub const fn entry(op: u64, args: [u64; 5]) -> MulticallEntry {
    MulticallEntry {
        op,
        args,
        result: 0,
    }
}

/// Runs the hypercalls of `calls` in order (`multicall(gpa, count)`), writing each one's result
/// into its entry. A batch longer than [`MAX_MULTICALL`] is sent as several multicalls, in
/// order. Returns `Ok` once every entry ran, whatever their own results (check each entry's
/// `result`); an error if a multicall failed as a whole (`EFAULT`), in which case the entries
/// of that batch and the following ones did not run.
///
/// # Safety
///
/// Each entry is a raw hypercall: the caller must uphold, for every entry, the contract of
/// [`crate::hypercall`] (whatever memory, control flow or SDK state the call affects with
/// these arguments must not break memory safety or the SDK's invariants).
///
/// ```no_run
/// use guest_sdk::abi::{abi_query, hypercall as nr};
/// use guest_sdk::multicall::{entry, multicall};
/// let mut batch = [entry(nr::ABI_QUERY, [abi_query::VERSION, 0, 0, 0, 0]); 4];
/// // SAFETY: abi_query touches no memory.
/// unsafe { multicall(&mut batch) }.unwrap();
/// assert!(batch.iter().all(|e| e.result > 0));
/// ```
pub unsafe fn multicall(calls: &mut [MulticallEntry]) -> Result<()> {
    for chunk in calls.chunks_mut(MAX_MULTICALL as usize) {
        // SAFETY: the array is ours and the hv writes only its `result` fields; the caller
        // vouches for the effect of each entry.
        Error::check(unsafe {
            crate::hypercall(
                nr::MULTICALL,
                chunk.as_mut_ptr() as u64,
                chunk.len() as u64,
                0,
                0,
                0,
            )
        })?;
    }
    Ok(())
}
