//! The SDK's error type: what a failed hypercall reported.

use core::fmt;

use hypercall_abi::ring::RingError;
use hypercall_abi::store::StoreError;
use hypercall_abi::Errno;

/// Why an SDK call failed.
///
/// Every typed hypercall wrapper returns `Result<_, Error>`. The hypervisor reports failures
/// as `-errno` in `rax`; an errno that ABI v1 defines becomes [`Error::Errno`], any other
/// negative value [`Error::UnknownErrno`] (a newer or misbehaving hypervisor). A store error
/// ([`StoreError`]) becomes the [`Error::Errno`] it maps to. The two other variants report a
/// peer that broke a shared-memory protocol rather than a refused call.
///
/// ```
/// use guest_sdk::{abi::Errno, Error};
///
/// assert_eq!(Error::check(5), Ok(5));
/// assert_eq!(Error::check(-22), Err(Error::Errno(Errno::EINVAL)));
/// assert_eq!(Error::check(-9999), Err(Error::UnknownErrno(-9999)));
/// assert_eq!(Error::Errno(Errno::EFAULT).errno(), Some(Errno::EFAULT));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The hypervisor returned `-errno` for an errno the ABI defines.
    Errno(Errno),
    /// The hypervisor returned a negative value that is not a known `-errno` (the raw `rax`).
    UnknownErrno(i64),
    /// A shared ring failed: its peer wrote an impossible index ([`RingError::Overflow`]: the
    /// peer is broken or hostile and should be disconnected), or the ring has no room.
    Ring(RingError),
    /// The store answered with a slot that is not a valid answer to the request: malformed,
    /// or a response of the wrong kind (a `List` to a `Read`, say).
    BadResponse,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// Decodes a hypercall's raw return value: `Ok(value)` for `>= 0`, an error otherwise.
    pub fn check(rax: i64) -> Result<u64> {
        Errno::from_raw(rax).map_err(|e| match e {
            Some(errno) => Error::Errno(errno),
            None => Error::UnknownErrno(rax),
        })
    }

    /// The errno, if the ABI defines it.
    pub fn errno(self) -> Option<Errno> {
        match self {
            Error::Errno(e) => Some(e),
            Error::UnknownErrno(_) | Error::Ring(_) | Error::BadResponse => None,
        }
    }

    /// Is this `errno`?
    pub fn is(self, errno: Errno) -> bool {
        self == Error::Errno(errno)
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Errno(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Errno(e.errno())
    }
}

impl From<RingError> for Error {
    fn from(e: RingError) -> Self {
        Error::Ring(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Errno(e) => f.write_str(e.name()),
            Error::UnknownErrno(rax) => write!(f, "unknown errno ({rax})"),
            Error::Ring(e) => write!(f, "ring: {e}"),
            Error::BadResponse => f.write_str("malformed store response"),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_errno() {
        for e in Errno::ALL {
            assert_eq!(Error::check(e.to_raw()), Err(Error::Errno(e)));
        }
        assert_eq!(Error::check(0), Ok(0));
        assert_eq!(Error::check(i64::MAX), Ok(i64::MAX as u64));
        assert_eq!(Error::check(i64::MIN), Err(Error::UnknownErrno(i64::MIN)));
    }

    #[test]
    fn displays_names() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(Error::Errno(Errno::ENOSYS).to_string(), "ENOSYS");
        assert_eq!(Error::UnknownErrno(-5).to_string(), "unknown errno (-5)");
        assert_eq!(
            Error::from(RingError::Overflow).to_string(),
            "ring: peer wrote an impossible ring index"
        );
        assert_eq!(Error::from(StoreError::Denied), Error::Errno(Errno::EACCES));
    }
}
