//! Error codes. A failing hypercall returns `-errno` in `rax`; the values are Linux's (and Xen's).

/// An error a hypercall can return, as the positive errno.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such entry.
    ENOENT = 2,
    /// No such domain or vCPU.
    ESRCH = 3,
    /// I/O error (a device's backing store failed).
    EIO = 5,
    /// Argument list or batch too long.
    E2BIG = 7,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Bad address: a guest-physical address outside the caller's RAM.
    EFAULT = 14,
    /// Busy.
    EBUSY = 16,
    /// Already exists.
    EEXIST = 17,
    /// Invalid argument: an unknown command or flag, or a reserved field that is not zero.
    EINVAL = 22,
    /// No space left (for example, no free event channel port).
    ENOSPC = 28,
    /// A write to a read-only device.
    EROFS = 30,
    /// Unknown hypercall number.
    ENOSYS = 38,
    /// The operation is not supported (for example, discard on a disk without it).
    EOPNOTSUPP = 95,
    /// The deadline passed before the awaited event.
    ETIMEDOUT = 110,
}

impl Errno {
    /// All error codes, for tables and tests.
    pub const ALL: [Errno; 17] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::ESRCH,
        Errno::EIO,
        Errno::E2BIG,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::EROFS,
        Errno::ENOSYS,
        Errno::EOPNOTSUPP,
        Errno::ETIMEDOUT,
    ];

    /// The value in `rax` that reports this error: `-errno`.
    pub const fn to_raw(self) -> i64 {
        -(self as i32 as i64)
    }

    /// Decodes a hypercall's `rax`: `Ok(value)` for `>= 0`, the error for a known `-errno`, and
    /// `Err(None)` for a negative value this ABI does not define.
    pub fn from_raw(rax: i64) -> Result<u64, Option<Errno>> {
        if rax >= 0 {
            return Ok(rax as u64);
        }
        let code = rax.unsigned_abs();
        Err(Errno::ALL
            .iter()
            .copied()
            .find(|e| *e as i32 as u64 == code))
    }

    /// The symbolic name, e.g. `"EINVAL"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EIO => "EIO",
            Errno::EROFS => "EROFS",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::E2BIG => "E2BIG",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ENOSYS => "ENOSYS",
            Errno::ETIMEDOUT => "ETIMEDOUT",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_raw(e.to_raw()), Err(Some(e)));
        }
        assert_eq!(Errno::from_raw(5), Ok(5));
        assert_eq!(Errno::from_raw(-9999), Err(None));
    }
}
