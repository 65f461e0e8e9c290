//! Asking the hypervisor about itself (`abi_query`).

use hypercall_abi::{abi_query, hypercall as nr, Features};

use crate::{Error, Result};

fn query(op: u64) -> Result<u64> {
    // SAFETY: abi_query touches no guest memory.
    Error::check(unsafe { crate::hypercall(nr::ABI_QUERY, op, 0, 0, 0, 0) })
}

/// The hypervisor's ABI version as `(major, minor)` (`abi_query(version)`).
///
/// ```no_run
/// let (major, minor) = guest_sdk::hv::abi_version().unwrap();
/// guest_sdk::println!("ABI {major}.{minor}");
/// ```
#[inline]
pub fn abi_version() -> Result<(u16, u16)> {
    let v = query(abi_query::VERSION)?;
    Ok(((v >> 16) as u16, v as u16))
}

/// The features the hypervisor offers (`abi_query(features)`); bits this SDK does not know are
/// kept.
///
/// ```no_run
/// use guest_sdk::abi::Features;
/// assert!(guest_sdk::hv::abi_features().unwrap().contains(Features::TIMER));
/// ```
pub fn abi_features() -> Result<Features> {
    Ok(Features::from_bits_retain(query(abi_query::FEATURES)?))
}
