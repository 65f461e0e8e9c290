//! A raw disk image file as a block backend's store.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hypercall_abi::io::blk::SECTOR_SIZE;

/// Why [`Disk::open`] refused an image. Its `Display` is one line naming the file.
#[derive(Debug)]
pub enum DiskError {
    /// The file does not exist.
    NotFound {
        /// The image's path.
        path: PathBuf,
    },
    /// The path names a directory.
    IsDirectory {
        /// The image's path.
        path: PathBuf,
    },
    /// The path names something other than a regular file (a device, a FIFO, a socket).
    NotRegularFile {
        /// The image's path.
        path: PathBuf,
    },
    /// The file's size is not a whole number of sectors.
    BadSize {
        /// The image's path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The file could not be opened or examined.
    Io {
        /// The image's path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::NotFound { path } => {
                write!(f, "disk image {}: no such file", path.display())
            }
            DiskError::IsDirectory { path } => write!(
                f,
                "disk image {}: is a directory, not an image file",
                path.display()
            ),
            DiskError::NotRegularFile { path } => write!(
                f,
                "disk image {}: not a regular file (raw image files only)",
                path.display()
            ),
            DiskError::BadSize { path, size } => write!(
                f,
                "disk image {}: size {size} bytes is not a multiple of the {SECTOR_SIZE}-byte sector",
                path.display()
            ),
            DiskError::Io { path, op, source } => {
                write!(f, "disk image {}: cannot {op}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DiskError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One buffer of a vectored transfer: `len` bytes at `ptr`, typically part of a granted page.
///
/// Only an address: creating one is safe; the transfer functions that use it are `unsafe`.
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    /// The first byte.
    pub ptr: *mut u8,
    /// Bytes.
    pub len: usize,
}

// SAFETY: a RawBuf is an address and a length; nothing is accessed through it except by the
// unsafe transfer functions, whose callers guarantee validity.
unsafe impl Send for RawBuf {}

/// Buffers handed to one `preadv`/`pwritev` (the whole of a 1 MiB request in one call).
const MAX_IOV: usize = 256;

/// A raw disk image: a regular file whose size is a whole number of 512-byte sectors.
///
/// Transfers go straight between the file and the caller's memory with `preadv`/`pwritev`
/// (no intermediate buffer), so a backend reads into and writes from granted pages directly.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    size: u64,
    discard: AtomicBool,
}

fn os_err(e: io::Error, path: &Path, op: &'static str) -> DiskError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => DiskError::NotFound { path: path.into() },
        Some(libc::EISDIR) => DiskError::IsDirectory { path: path.into() },
        _ => DiskError::Io {
            path: path.into(),
            op,
            source: e,
        },
    }
}

fn check_type(ft: std::fs::FileType, path: &Path) -> Result<(), DiskError> {
    if ft.is_dir() {
        Err(DiskError::IsDirectory { path: path.into() })
    } else if !ft.is_file() {
        Err(DiskError::NotRegularFile { path: path.into() })
    } else {
        Ok(())
    }
}

/// Retries `f` while it fails with `EINTR`; `-1` means failure with `errno` set.
fn retry<T: PartialOrd + Default>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let r = f();
        if r >= T::default() {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Disk {
    /// Opens the image at `path`, read-write unless `read_only`.
    ///
    /// Refuses a missing file, a directory, anything else that is not a regular file, and a
    /// size that is not a multiple of 512 bytes. For a writable image, finds out whether the
    /// file system can punch holes (see [`supports_discard`](Self::supports_discard)).
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Disk, DiskError> {
        let path = path.as_ref();
        // Look before opening: opening a FIFO would block.
        let meta = std::fs::metadata(path).map_err(|e| os_err(e, path, "examine it"))?;
        check_type(meta.file_type(), path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            // Never block on open (if the path was swapped for a FIFO meanwhile); O_NONBLOCK
            // has no effect on a regular file's reads and writes.
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| os_err(e, path, "open it"))?;
        // Check what was actually opened.
        let meta = file.metadata().map_err(|e| os_err(e, path, "examine it"))?;
        check_type(meta.file_type(), path)?;
        let size = meta.len();
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::BadSize {
                path: path.into(),
                size,
            });
        }
        let disk = Disk {
            file,
            path: path.into(),
            read_only,
            size,
            discard: AtomicBool::new(false),
        };
        if !read_only {
            // Punch a hole past the end of the file: it destroys nothing (and KEEP_SIZE keeps
            // the size), but fails with EOPNOTSUPP where holes cannot be punched.
            let probe = disk.fallocate_punch(size, 4096).is_ok();
            disk.discard.store(probe, Ordering::Relaxed);
        }
        Ok(disk)
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size in bytes (fixed when opened).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether [`discard`](Self::discard) works: the image is writable and its file system
    /// punches holes (tried when opened; a later failure with `EOPNOTSUPP` clears it).
    pub fn supports_discard(&self) -> bool {
        !self.read_only && self.discard.load(Ordering::Relaxed)
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range beyond the end of the disk",
            )),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::from(io::ErrorKind::ReadOnlyFilesystem))
        } else {
            Ok(())
        }
    }

    /// Reads `len` bytes at byte `offset` of the disk into `buf`, all of them or fails.
    ///
    /// # Safety
    ///
    /// `buf` must be valid for writes of `len` bytes, and nothing in this program may hold a
    /// Rust reference to that memory during the call.
    pub unsafe fn read_at(&self, buf: *mut u8, len: usize, offset: u64) -> io::Result<()> {
        // SAFETY: our caller's guarantee covers the one buffer.
        unsafe { self.read_vectored_at(&[RawBuf { ptr: buf, len }], offset) }
    }

    /// Writes `len` bytes from `buf` at byte `offset` of the disk, all of them or fails.
    ///
    /// # Safety
    ///
    /// `buf` must be valid for reads of `len` bytes, and nothing in this program may hold a
    /// mutable Rust reference to that memory during the call.
    pub unsafe fn write_at(&self, buf: *const u8, len: usize, offset: u64) -> io::Result<()> {
        let b = RawBuf {
            ptr: buf.cast_mut(),
            len,
        };
        // SAFETY: our caller's guarantee covers the one buffer; it is only read.
        unsafe { self.write_vectored_at(&[b], offset) }
    }

    /// Reads the disk from byte `offset` on into `bufs`, one after the other, filling all of
    /// them or failing (`preadv`, as few calls as possible). The range must lie inside the disk
    /// (`InvalidInput` otherwise).
    ///
    /// # Safety
    ///
    /// Every buffer must be valid for writes of its length, and nothing in this program may
    /// hold a Rust reference to that memory during the call.
    pub unsafe fn read_vectored_at(&self, bufs: &[RawBuf], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from our caller.
        unsafe { self.transfer(bufs, offset, false) }
    }

    /// Writes `bufs`, one after the other, to the disk from byte `offset` on, all of them or
    /// fails (`pwritev`). The range must lie inside the disk (`InvalidInput` otherwise);
    /// `ReadOnlyFilesystem` on a read-only disk.
    ///
    /// # Safety
    ///
    /// Every buffer must be valid for reads of its length, and nothing in this program may
    /// hold a mutable Rust reference to that memory during the call.
    pub unsafe fn write_vectored_at(&self, bufs: &[RawBuf], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        // SAFETY: forwarded from our caller.
        unsafe { self.transfer(bufs, offset, true) }
    }

    /// # Safety
    ///
    /// As for `read_vectored_at` (`write` false) or `write_vectored_at` (`write` true).
    unsafe fn transfer(&self, bufs: &[RawBuf], offset: u64, write: bool) -> io::Result<()> {
        let total = bufs
            .iter()
            .try_fold(0u64, |acc, b| acc.checked_add(b.len as u64));
        self.check_range(offset, total.unwrap_or(u64::MAX))?;
        let fd = self.file.as_raw_fd();
        let mut off = offset;
        // Progress: bufs[..idx] are done, and the first `skip` bytes of bufs[idx].
        let (mut idx, mut skip) = (0usize, 0usize);
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        loop {
            let mut n = 0;
            let mut first_skip = skip;
            for b in bufs[idx..].iter() {
                if n == MAX_IOV {
                    break;
                }
                if b.len > first_skip {
                    iov[n] = libc::iovec {
                        iov_base: b.ptr.wrapping_add(first_skip).cast(),
                        iov_len: b.len - first_skip,
                    };
                    n += 1;
                }
                first_skip = 0;
            }
            if n == 0 {
                return Ok(());
            }
            // `off` + the bytes left fit in the disk, whose size fits in off_t.
            let pos = off as libc::off_t;
            let done = retry(|| {
                // SAFETY: the iovecs describe parts of the caller's buffers, valid for this
                // access by our contract; `n` <= MAX_IOV <= IOV_MAX.
                unsafe {
                    if write {
                        libc::pwritev(fd, iov.as_ptr(), n as libc::c_int, pos)
                    } else {
                        libc::preadv(fd, iov.as_ptr(), n as libc::c_int, pos)
                    }
                }
            })?;
            if done == 0 {
                // The file shrank under us (a read at its end), or nothing could be written.
                return Err(io::Error::new(
                    if write {
                        io::ErrorKind::WriteZero
                    } else {
                        io::ErrorKind::UnexpectedEof
                    },
                    "short transfer: the image file changed size",
                ));
            }
            let mut done = done as usize;
            off += done as u64;
            while done > 0 {
                let rest = bufs[idx].len - skip;
                if done >= rest {
                    done -= rest;
                    idx += 1;
                    skip = 0;
                } else {
                    skip += done;
                    done = 0;
                }
            }
        }
    }

    /// Makes every completed write durable (`fdatasync`). A no-op on a read-only disk.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fdatasync on our own open descriptor.
        retry(|| unsafe { libc::fdatasync(fd) }).map(drop)
    }

    /// Discards `len` bytes at byte `offset`: they read as zeros afterwards and the file keeps
    /// its size (`fallocate(PUNCH_HOLE | KEEP_SIZE)`). `Unsupported` if
    /// [`supports_discard`](Self::supports_discard) is false; `InvalidInput` for a range outside
    /// the disk; `ReadOnlyFilesystem` on a read-only disk.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if !self.supports_discard() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        if len == 0 {
            return Ok(());
        }
        self.fallocate_punch(offset, len).inspect_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                self.discard.store(false, Ordering::Relaxed);
            }
        })
    }

    fn fallocate_punch(&self, offset: u64, len: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on our own open descriptor; no memory is passed.
        retry(|| unsafe { libc::fallocate(fd, mode, off, len) }).map(drop)
    }
}
