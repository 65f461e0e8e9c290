//! Host TAP devices: the only module in the project that touches `/dev/net/tun`.
//!
//! [`Tap::open`] attaches to the TAP interface of a name (`TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI`): the kernel creates it if it does not exist (non-persistent: it goes
//! away when `hv` closes it, which needs `CAP_NET_ADMIN`), or attaches to an existing persistent
//! one (`ip tuntap add NAME mode tap [user U]`), which is then used as it is. Each `read` of the
//! file descriptor returns one whole Ethernet frame the host sent out of the interface, each
//! `write` injects one frame as if received on it. [`Tap::configure`] gives the host side an
//! IPv4 address and brings the link up (`SIOCSIFADDR`, `SIOCSIFNETMASK`, `SIOCSIFFLAGS` on an
//! `AF_INET` socket, again `CAP_NET_ADMIN`). [`Tap::spawn_reader`] runs a thread that hands
//! every frame read to a callback until its [`TapReader`] is stopped (an eventfd wakes the
//! thread's `poll`).
//!
//! Why libc ioctls and not a crate: the `tun`/`tokio-tun` crates bring async runtimes and
//! address-configuration layers the hv does not want; what it needs is four ioctls and a
//! `poll`, each used once here, with its safety argument next to it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

/// The clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name (`IFNAMSIZ - 1`).
pub const MAX_NAME: usize = libc::IFNAMSIZ - 1;
/// Bytes the reader reads at a time: more than any frame of an interface without offloads.
pub const READ_BUF: usize = 65536;

/// The host side's address on a TAP interface: `A.B.C.D/P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAddr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 1 to 32.
    pub prefix: u8,
}

impl HostAddr {
    /// The netmask of [`HostAddr::prefix`].
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a TAP device cannot be used. Each message is one line naming the interface.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name does not fit in `IFNAMSIZ` or has a NUL byte.
    #[error("tap {name:?}: invalid interface name (1 to {MAX_NAME} bytes)")]
    BadName {
        /// The name given.
        name: String,
    },
    /// `/dev/net/tun` does not exist.
    #[error("tap {name}: {TUN_PATH} does not exist (is the tun module loaded? `modprobe tun`)")]
    NoTunDevice {
        /// The interface.
        name: String,
    },
    /// Creating (or attaching to) the interface needs a privilege `hv` lacks.
    #[error("tap {name}: permission denied: creating a TAP needs CAP_NET_ADMIN (run as root or create it first with `ip tuntap add {name} mode tap user $USER`)")]
    Permission {
        /// The interface.
        name: String,
    },
    /// Setting the host address or bringing the link up needs a privilege `hv` lacks.
    #[error("tap {name}: permission denied: setting its address {host} needs CAP_NET_ADMIN (run as root, or configure it yourself and drop `host=`)")]
    ConfigurePermission {
        /// The interface.
        name: String,
        /// The address asked for.
        host: HostAddr,
    },
    /// Another process (or another interface of this `hv`) is attached to it.
    #[error("tap {name}: busy: another process or interface is already attached to it")]
    Busy {
        /// The interface.
        name: String,
    },
    /// A network interface of that name exists but is not a TAP device.
    #[error("tap {name}: an interface named {name} exists and is not a TAP device")]
    NotTap {
        /// The interface.
        name: String,
    },
    /// Another failure of the host.
    #[error("tap {name}: {what}: {source}")]
    Io {
        /// The interface.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// An attached TAP interface: read and write whole Ethernet frames.
pub struct Tap {
    file: File,
    name: String,
    tx_frames: AtomicU64,
    tx_errors: AtomicU64,
    rx_frames: AtomicU64,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap").field("name", &self.name).finish()
    }
}

/// An `ifreq` naming `name` (checked: it fits with its NUL), the rest zero.
fn ifreq(name: &str) -> Option<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_NAME || name.bytes().any(|b| b == 0) {
        return None;
    }
    // SAFETY: `ifreq` is plain data (a name array and a union of plain data); all zeroes is a
    // valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Some(req)
}

/// An IPv4 `sockaddr` (as `sockaddr_in`) for `ifreq`'s address fields.
fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes of plain data (the kernel's
    // definitions); `sockaddr_in` is the AF_INET reading of a `sockaddr`.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

impl Tap {
    /// Attaches to the TAP interface `name`, creating it (non-persistent) if it does not
    /// exist. The descriptor is non-blocking.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let mut req = ifreq(name).ok_or_else(|| TapError::BadName { name: name.into() })?;
        let n = || name.to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice { name: n() },
                io::ErrorKind::PermissionDenied => TapError::Permission { name: n() },
                _ => TapError::Io {
                    name: n(),
                    what: "opening /dev/net/tun",
                    source: e,
                },
            })?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and writes back the name into) the `ifreq` we own, which
        // lives across the call; `file` is an open /dev/net/tun descriptor.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission { name: n() },
                Some(libc::EBUSY) => TapError::Busy { name: n() },
                Some(libc::EINVAL) => TapError::NotTap { name: n() },
                _ => TapError::Io {
                    name: n(),
                    what: "TUNSETIFF",
                    source: e,
                },
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
            tx_frames: AtomicU64::new(0),
            tx_errors: AtomicU64::new(0),
            rx_frames: AtomicU64::new(0),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the host side of the interface the address `host` (and its prefix) and brings
    /// the link up.
    pub fn configure(&self, host: HostAddr) -> Result<(), TapError> {
        let name = &self.name;
        let err = |what: &'static str, e: io::Error| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::ConfigurePermission {
                name: name.clone(),
                host,
            },
            _ => TapError::Io {
                name: name.clone(),
                what,
                source: e,
            },
        };
        // SAFETY: socket() has no memory arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(err("opening an AF_INET socket", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let ioctl = |req: libc::c_ulong, ifr: &mut libc::ifreq| -> io::Result<()> {
            // SAFETY: the SIOC[GS]IF* requests used here read and write only the `ifreq` we
            // pass, which lives across the call; `sock` is an open AF_INET socket.
            if unsafe { libc::ioctl(sock.as_raw_fd(), req as _, ifr as *mut libc::ifreq) } < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let base = ifreq(name).ok_or_else(|| TapError::BadName { name: name.clone() })?;
        let mut req = base;
        req.ifr_ifru.ifru_addr = sockaddr(host.addr);
        ioctl(libc::SIOCSIFADDR, &mut req).map_err(|e| err("setting the address", e))?;
        let mut req = base;
        req.ifr_ifru.ifru_netmask = sockaddr(host.netmask());
        ioctl(libc::SIOCSIFNETMASK, &mut req).map_err(|e| err("setting the netmask", e))?;
        let mut req = base;
        ioctl(libc::SIOCGIFFLAGS, &mut req).map_err(|e| err("reading the link flags", e))?;
        // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        ioctl(libc::SIOCSIFFLAGS, &mut req).map_err(|e| err("bringing the link up", e))?;
        Ok(())
    }

    /// Sends one frame out to the host (as if the interface received it). Failures (the link
    /// is down, the host is out of memory, the interface was deleted) drop the frame, as
    /// Ethernet would, and are counted.
    pub fn send(&self, frame: &[u8]) -> bool {
        match (&self.file).write(frame) {
            Ok(n) if n == frame.len() => {
                self.tx_frames.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => {
                self.tx_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Frames sent to the host.
    pub fn tx_frames(&self) -> u64 {
        self.tx_frames.load(Ordering::Relaxed)
    }

    /// Frames that could not be sent to the host.
    pub fn tx_errors(&self) -> u64 {
        self.tx_errors.load(Ordering::Relaxed)
    }

    /// Frames read from the host.
    pub fn rx_frames(&self) -> u64 {
        self.rx_frames.load(Ordering::Relaxed)
    }

    /// Starts a thread (named `thread_name`) that reads frames from the interface and gives
    /// each to `on_frame`, until the returned [`TapReader`] is stopped or dropped, or the
    /// interface goes away.
    pub fn spawn_reader(
        self: &Arc<Self>,
        thread_name: String,
        mut on_frame: impl FnMut(&[u8]) + Send + 'static,
    ) -> io::Result<TapReader> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let stop_r = stop.try_clone()?;
        let tap = Arc::clone(self);
        let thread = thread::Builder::new().name(thread_name).spawn(move || {
            let mut buf = vec![0u8; READ_BUF];
            while let Some(n) = tap.next_frame(&mut buf, stop_r.as_raw_fd()) {
                tap.rx_frames.fetch_add(1, Ordering::Relaxed);
                on_frame(&buf[..n]);
            }
        })?;
        Ok(TapReader {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for the next frame (or `stop` becoming readable, checked first); `None` when
    /// stopped or the interface failed.
    fn next_frame(&self, buf: &mut [u8], stop: RawFd) -> Option<usize> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is an array of two valid pollfd records we own, for two open
            // descriptors; no timeout.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("hv: tap {}: poll failed: {e}", self.name);
                return None;
            }
            if fds[0].revents != 0 {
                return None;
            }
            // Readable, or an error the read reports.
            match (&self.file).read(buf) {
                Ok(0) => {}
                Ok(n) => return Some(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    eprintln!(
                        "hv: tap {}: read failed: {e}; no more frames from it",
                        self.name
                    );
                    return None;
                }
            }
        }
    }
}

/// The thread [`Tap::spawn_reader`] started; stopping (or dropping) it stops and joins the
/// thread.
pub struct TapReader {
    stop: EventFd,
    thread: Option<thread::JoinHandle<()>>,
}

impl TapReader {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            // Cannot fail short of the counter overflowing, which one write cannot do.
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for TapReader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        let h = |p| HostAddr {
            addr: Ipv4Addr::new(10, 77, 0, 1),
            prefix: p,
        };
        assert_eq!(h(24).netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(h(32).netmask(), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(h(1).netmask(), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(h(20).netmask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(h(24).to_string(), "10.77.0.1/24");
    }

    #[test]
    fn names_must_fit_ifreq() {
        assert!(ifreq("hv0").is_some());
        assert!(ifreq(&"x".repeat(MAX_NAME)).is_some());
        assert!(ifreq(&"x".repeat(MAX_NAME + 1)).is_none());
        assert!(ifreq("").is_none());
        assert!(ifreq("a\0b").is_none());
        let r = ifreq("hv0").unwrap();
        assert_eq!(r.ifr_name[..4], [b'h' as _, b'v' as _, b'0' as _, 0]);
        assert!(matches!(
            Tap::open(&"x".repeat(MAX_NAME + 1)),
            Err(TapError::BadName { .. })
        ));
    }

    #[test]
    fn sockaddrs_are_af_inet_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // Port (2 bytes, 0), then the address bytes as written.
        assert_eq!(sa.sa_data[..6], [0, 0, 10, 77, 0, 1]);
    }
}
