//! Event channels: `evtchn_op(cmd, a1, a2, a3)` with `cmd` in `rdi` and the arguments in
//! `rsi`, `rdx`, `r10`.
//!
//! A port is a number in `1 .. NR_EVENT_CHANNELS`; port 0 is never valid. Each open port is
//! bound to one vCPU, which its events are delivered to (see [`crate::shared_info`]).
//!
//! Delivery semantics:
//! - events coalesce: sending to a port whose pending bit is already set changes nothing;
//! - a masked port still becomes pending, but raises no upcall; `unmask` of a pending port
//!   raises it then;
//! - closing a port clears its pending bit; a later `send` on it fails with `EINVAL`.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// An event channel port number.
pub type Port = u32;

/// `bind_virq(virq, vcpu) -> port`: bind a virtual interrupt on a vCPU to a new port.
/// `EINVAL` for an unknown VIRQ, `ESRCH` for a vCPU that does not exist, `EEXIST` if that VIRQ
/// is already bound on that vCPU, `ENOSPC` if no port is free.
pub const BIND_VIRQ: u64 = 0;
/// `bind_ipi(vcpu) -> port`: a port whose events go to `vcpu` of the caller's domain.
/// `ESRCH` for a vCPU that does not exist, `ENOSPC` if no port is free.
pub const BIND_IPI: u64 = 1;
/// `send(port)`: raise an event on the port's peer: the vCPU of an IPI port, the other end of an
/// interdomain port, or the hypervisor's backend (console, store, devices). On an unbound port
/// it succeeds and raises nothing. `EINVAL` for a port that is not open or is a VIRQ port.
pub const SEND: u64 = 2;
/// `close(port)`: free the port (clearing its pending and mask bits). `EINVAL` for a port that
/// is not open, `EPERM` for the console and store ports (they belong to the hypervisor). A port
/// the guest allocated for a backend in the hypervisor may be closed.
pub const CLOSE: u64 = 3;
/// `status(port, gpa)`: write an [`EvtchnStatus`] at `gpa`. `EINVAL` for port 0 or out of range,
/// `EFAULT` if `gpa` is not in the caller's RAM. A free port reports [`state::FREE`].
pub const STATUS: u64 = 4;
/// `mask(port)`: set the port's mask bit. `EINVAL` for a port that is not open.
pub const MASK: u64 = 5;
/// `unmask(port)`: clear the port's mask bit, and deliver it if it is pending.
/// `EINVAL` for a port that is not open.
pub const UNMASK: u64 = 6;

/// `alloc_unbound(remote_domid) -> port`: a new port that domain `remote_domid` (which may be
/// the caller) can connect to with [`BIND_INTERDOMAIN`]. Its events go to vCPU 0. `ESRCH` if
/// the domain does not exist, `ENOSPC` if no port is free.
pub const ALLOC_UNBOUND: u64 = 7;
/// `bind_interdomain(remote_domid, remote_port) -> port`: connect a new local port to the
/// unbound port `remote_port` of `remote_domid`, which must have been allocated for the caller.
/// Afterwards `send` on either end raises an event on the other. `ESRCH` if the domain does not
/// exist; `EINVAL` if the remote port is not an unbound port; `EACCES` if it is unbound for
/// another domain; `ENOSPC` if no local port is free.
pub const BIND_INTERDOMAIN: u64 = 8;

/// `doorbell(port) -> io_port`: for a port connected to a device backend in the hypervisor (a
/// port the guest allocated unbound for [`crate::DOMID_HV`] and the backend connected), an I/O
/// port `io_port` such that a one-byte `out` to it (`out dx, al`, any value) has the effect of
/// `send(port)` — without a hypercall, and where the platform allows (KVM's ioeventfd) without
/// the vCPU leaving the kernel. Repeated calls return the same I/O port; it stays valid until the
/// port is closed. `EINVAL` for a port that is not open; `EOPNOTSUPP` for a port that is not
/// connected to a device backend (the console and store ports, IPI, VIRQ, interdomain ports);
/// `ENOSPC` if the domain has [`MAX_DOORBELLS`] doorbells already.
pub const DOORBELL: u64 = 9;

/// The first I/O port doorbells use; they are numbered upwards from here.
pub const DOORBELL_PORT_BASE: u16 = 0x1000;
/// Most doorbells one domain may have.
pub const MAX_DOORBELLS: u16 = 256;

/// Virtual interrupts (the `virq` of [`BIND_VIRQ`]).
pub mod virq {
    /// The vCPU's one-shot timer (`set_timer`) fired. Per vCPU.
    pub const TIMER: u32 = 0;
    /// Debug: raised by the hypervisor when its operator asks for a dump (`SIGUSR1` to `hv`).
    pub const DEBUG: u32 = 1;
    /// Number of VIRQs defined.
    pub const COUNT: u32 = 2;
}

/// Port states reported by [`STATUS`] ([`EvtchnStatus::state`]).
pub mod state {
    /// Not in use.
    pub const FREE: u32 = 0;
    /// Bound to a VIRQ.
    pub const VIRQ: u32 = 1;
    /// An IPI port.
    pub const IPI: u32 = 2;
    /// Connected to a backend the hypervisor hosts (the console, the store).
    pub const HV_BACKEND: u32 = 3;
    /// Allocated for `remote_domid` to connect to.
    pub const UNBOUND: u32 = 4;
    /// Connected to `remote_port` of `remote_domid`.
    pub const INTERDOMAIN: u32 = 5;
}

/// The status of a port, written by [`STATUS`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnStatus {
    /// The port asked about.
    pub port: u32,
    /// One of [`state`].
    pub state: u32,
    /// The vCPU the port's events go to.
    pub vcpu: u32,
    /// The VIRQ, for [`state::VIRQ`]; otherwise 0.
    pub virq: u32,
    /// The peer domain: [`crate::DOMID_HV`] for [`state::HV_BACKEND`], the remote domain for
    /// [`state::UNBOUND`] and [`state::INTERDOMAIN`]; otherwise 0.
    pub remote_domid: u32,
    /// The remote port for [`state::INTERDOMAIN`]; otherwise 0.
    pub remote_port: u32,
    /// 1 if the port's pending bit is set.
    pub pending: u8,
    /// 1 if the port's mask bit is set.
    pub masked: u8,
    /// Reserved, zero.
    pub pad: [u8; 6],
}
const _: () = assert!(size_of::<EvtchnStatus>() == 32);
const _: () = assert!(offset_of!(EvtchnStatus, remote_domid) == 16);
const _: () = assert!(offset_of!(EvtchnStatus, remote_port) == 20);
const _: () = assert!(offset_of!(EvtchnStatus, pending) == 24);
