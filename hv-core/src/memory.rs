//! A domain's RAM, and the only way the hv reads or writes it: every access is checked to lie
//! entirely inside the domain's RAM (`EFAULT` otherwise), so no guest-supplied address can make
//! the hv touch anything else.
//!
//! RAM is a shared mapping of a memfd, so that a frame one domain grants can also be mapped,
//! page by page, into another domain's grant window (see [`crate::grant`]).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

use hypercall_abi::Errno;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Guest RAM: one anonymous mapping at guest-physical 0.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    host: *mut u8,
    file: Arc<File>,
}

// SAFETY: the mapping is owned by `mem` and lives as long as `self`; `host` only caches its base
// address. Concurrent access from vCPU threads is what guest memory is for: every access goes
// through volatile copies or atomics, never through Rust references to guest-controlled bytes.
unsafe impl Send for GuestRam {}
// SAFETY: as above.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `size` bytes of zeroed RAM.
    pub fn new(size: u64) -> std::io::Result<GuestRam> {
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"hv-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = Arc::new(unsafe { File::from_raw_fd(fd) });
        file.set_len(size)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            len,
            Some(FileOffset::from_arc(Arc::clone(&file), 0)),
        )])
        .map_err(std::io::Error::other)?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(std::io::Error::other)?;
        Ok(GuestRam {
            mem,
            size,
            host,
            file,
        })
    }

    /// The memfd behind RAM (guest-physical address = file offset), for grant mappings.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// RAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical 0 (for the KVM memory slot).
    pub fn host_base(&self) -> *mut u8 {
        self.host
    }

    /// `Ok` if `[gpa, gpa + len)` lies inside RAM, `EFAULT` otherwise (including on overflow).
    /// An empty range is always `Ok`: its address is not examined (the ABI's rule).
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Errno::EFAULT),
        }
    }

    /// Copies guest bytes at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.check(gpa, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| Errno::EFAULT)
    }

    /// Copies `buf` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), Errno> {
        self.check(gpa, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.mem
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| Errno::EFAULT)
    }

    /// Reads a copy of a `T` at `gpa` (copy first, then validate: no double fetch).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T, Errno> {
        let mut v = T::new_zeroed();
        self.read(gpa, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes `v` at `gpa`.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gpa: u64, v: &T) -> Result<(), Errno> {
        self.write(gpa, v.as_bytes())
    }

    /// The `u64` at `gpa` (8-byte aligned, inside RAM) as an atomic shared with the guest.
    pub fn atomic_u64(&self, gpa: u64) -> Result<&AtomicU64, Errno> {
        self.check(gpa, 8)?;
        if !gpa.is_multiple_of(8) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: the 8 bytes are inside the mapping (checked above), which lives as long as
        // `self`, and are 8-byte aligned; the guest and the hv only access them atomically.
        Ok(unsafe { AtomicU64::from_ptr(self.host.add(gpa as usize).cast()) })
    }

    /// Loads the `u32` at `gpa` (4-byte aligned, inside RAM) with acquire ordering.
    pub fn atomic_u32_load(&self, gpa: u64) -> Result<u32, Errno> {
        Ok(self
            .atomic_u32(gpa)?
            .load(std::sync::atomic::Ordering::Acquire))
    }

    /// Stores the `u32` at `gpa` (4-byte aligned, inside RAM) with release ordering.
    pub fn atomic_u32_store(&self, gpa: u64, v: u32) -> Result<(), Errno> {
        self.atomic_u32(gpa)?
            .store(v, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn atomic_u32(&self, gpa: u64) -> Result<&std::sync::atomic::AtomicU32, Errno> {
        self.check(gpa, 4)?;
        if !gpa.is_multiple_of(4) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: the 4 bytes are inside the mapping (checked above), which lives as long as
        // `self`, and are 4-byte aligned.
        Ok(unsafe { std::sync::atomic::AtomicU32::from_ptr(self.host.add(gpa as usize).cast()) })
    }

    /// The byte at `gpa` (inside RAM) as an atomic shared with the guest.
    pub fn atomic_u8(&self, gpa: u64) -> Result<&AtomicU8, Errno> {
        self.check(gpa, 1)?;
        // SAFETY: the byte is inside the mapping (checked above), which lives as long as `self`.
        Ok(unsafe { AtomicU8::from_ptr(self.host.add(gpa as usize)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_access_outside_ram_is_efault() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(ram.read((1 << 20) - 8, &mut b), Err(Errno::EFAULT));
        assert_eq!(ram.read(u64::MAX - 4, &mut b), Err(Errno::EFAULT));
        assert_eq!(ram.write(1 << 20, &b), Err(Errno::EFAULT));
        assert_eq!(ram.check(0, (1 << 20) + 1), Err(Errno::EFAULT));
        assert!(ram.atomic_u64(1 << 20).is_err());
        assert!(ram.atomic_u64(4).is_err());
        ram.write(100, b"hello").unwrap();
        let mut r = [0u8; 5];
        ram.read(100, &mut r).unwrap();
        assert_eq!(&r, b"hello");
        assert_eq!(ram.read_obj::<u32>((1 << 20) - 4).unwrap(), 0);
        // Empty ranges are never EFAULT, wherever they point.
        assert_eq!(ram.check(u64::MAX, 0), Ok(()));
        assert_eq!(ram.read(0x40_0000_0000, &mut []), Ok(()));
    }
}
