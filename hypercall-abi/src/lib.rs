//! The hypercall ABI, version 1: everything that crosses the boundary between a paravirtualized
//! guest and the hypervisor, defined once and shared by both sides.
//!
//! This crate is `no_std` and has no dependency on KVM or on a guest runtime. Every type that
//! crosses the boundary is `#[repr(C)]`, has fixed-width fields with explicit padding, derives the
//! `zerocopy` traits, and carries compile-time assertions on its size and field offsets. The
//! prose specification is `docs/abi.md`; the two must agree.
//!
//! # Calling convention
//!
//! A guest runs at CPL 3 and enters the hypervisor with `out HYPERCALL_PORT, al`
//! (see [`HYPERCALL_PORT`]). The hypercall number is in `rax`, arguments in `rdi`, `rsi`, `rdx`,
//! `r10`, `r8` (Xen's order), and the result comes back in `rax`: `>= 0` is success, a negative
//! value is `-errno` (see [`Errno`]). No other register is changed. Bulk arguments live in guest
//! memory and are named by guest-physical address; guest RAM is identity-mapped, so a guest
//! pointer into its RAM is also its guest-physical address.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod console;
pub mod errno;
pub mod evtchn;
pub mod grant;
pub mod io;
pub mod multicall;
pub mod note;
pub mod ring;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod store;
pub mod time;
pub mod trap;
pub mod vcpu;

pub use errno::Errno;

/// The ABI major version. A guest whose ELF note names a different major is refused.
pub const ABI_MAJOR: u16 = 1;
/// The ABI minor version. Additions bump the minor and add a [`Features`] bit.
pub const ABI_MINOR: u16 = 0;

/// The I/O port a guest writes (`out HYPERCALL_PORT, al`) to make a hypercall.
pub const HYPERCALL_PORT: u16 = 0x90;
/// The I/O port the hypervisor's exception stubs write to report an exception the guest has no
/// handler for. A guest that writes it directly is treated as having crashed.
pub const CRASH_PORT: u16 = 0x91;
/// An I/O port the hypervisor answers by doing nothing: a guest may use it to measure the bare
/// cost of an exit to the hypervisor (`cargo xtask bench hypercall` compares it with a hypercall).
pub const PING_PORT: u16 = 0x92;

/// Size of a guest page in bytes.
pub const PAGE_SIZE: u64 = 4096;

/// The most vCPUs a domain can have under ABI v1 (the size of [`shared_info::SharedInfo::vcpu_info`]).
pub const MAX_VCPUS: u32 = 32;

/// A domain identifier.
pub type DomId = u16;
/// The domain id that names the hypervisor itself as the peer of an event channel (the backends
/// the hypervisor hosts, such as the console).
pub const DOMID_HV: DomId = 0x7ff0;

bitflags::bitflags! {
    /// ABI features: offered by the hypervisor ([`hypercall::ABI_QUERY`] with
    /// [`abi_query::FEATURES`], and [`start_info::StartInfo::features`]) and required by a guest
    /// (its ELF note, [`note::AbiNoteDesc::required_features`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// [`hypercall::CONSOLE_WRITE`], the synchronous early console.
        const EARLY_CONSOLE = 1 << 0;
        /// The console ring ([`console::ConsoleRing`]) and its event channel.
        const CONSOLE_RING = 1 << 1;
        /// Event channels within a domain ([`hypercall::EVTCHN_OP`]: VIRQ, IPI, send, mask, ...).
        const EVENT_CHANNELS = 1 << 2;
        /// The one-shot per-vCPU timer ([`hypercall::SET_TIMER`]) delivered as `VIRQ_TIMER`.
        const TIMER = 1 << 3;
        /// pvclock time info and the wall clock in [`shared_info::SharedInfo`].
        const PVCLOCK = 1 << 4;
        /// Exception handlers and the event upcall ([`hypercall::SET_TRAP_TABLE`],
        /// [`hypercall::SET_CALLBACK`], [`vcpu::FAULT_INFO`]).
        const TRAPS = 1 << 5;
        /// Secondary vCPUs started by [`hypercall::VCPU_OP`] with [`vcpu::UP`].
        const SMP = 1 << 6;
        /// Event channels between domains ([`evtchn::ALLOC_UNBOUND`],
        /// [`evtchn::BIND_INTERDOMAIN`]).
        const INTERDOMAIN = 1 << 7;
        /// Grant tables ([`hypercall::GRANT_OP`]) and the grant window.
        const GRANT_TABLES = 1 << 8;
        /// Batches of hypercalls ([`hypercall::MULTICALL`]).
        const MULTICALL = 1 << 9;
        /// The store ([`store`]), reached over its ring and event channel.
        const STORE = 1 << 10;
        /// Doorbells: notify a device backend with an `out` instead of a hypercall
        /// ([`evtchn::DOORBELL`]).
        const DOORBELLS = 1 << 11;
    }
}

impl Features {
    /// Everything ABI 1.0 defines.
    pub const V1_0: Features = Features::all();
}

/// Hypercall numbers (the value in `rax`).
pub mod hypercall {
    /// `abi_query(op)`: the ABI version or the feature bitmap. See [`crate::abi_query`].
    pub const ABI_QUERY: u64 = 0;
    /// `console_write(gpa, len)`: write `len` bytes at `gpa` to the console, synchronously.
    pub const CONSOLE_WRITE: u64 = 1;
    /// `set_trap_table(gpa, count)`: install exception handlers from an array of
    /// [`crate::trap::TrapInfo`].
    pub const SET_TRAP_TABLE: u64 = 2;
    /// `set_callback(handler, flags)`: the entry point of event upcalls.
    pub const SET_CALLBACK: u64 = 3;
    /// `sched_op(cmd, ...)`: yield, block, poll, shutdown. See [`crate::sched`].
    pub const SCHED_OP: u64 = 4;
    /// `set_timer(deadline_ns)`: arm (or with 0, cancel) the calling vCPU's one-shot timer.
    pub const SET_TIMER: u64 = 5;
    /// `evtchn_op(cmd, ...)`: event channel operations. See [`crate::evtchn`].
    pub const EVTCHN_OP: u64 = 6;
    /// `vcpu_op(cmd, vcpu, gpa)`: bring up a vCPU, query it, read fault info. See [`crate::vcpu`].
    pub const VCPU_OP: u64 = 7;
    /// `grant_op(cmd, ...)`: grant tables. See [`crate::grant`].
    pub const GRANT_OP: u64 = 8;
    /// `multicall(gpa, count)`: a batch of hypercalls. See [`crate::multicall`].
    pub const MULTICALL: u64 = 9;
    /// One past the highest hypercall number of ABI 1.0.
    pub const COUNT: u64 = 10;

    /// The name of a hypercall number, for diagnostics and statistics.
    pub const fn name(nr: u64) -> &'static str {
        match nr {
            ABI_QUERY => "abi_query",
            CONSOLE_WRITE => "console_write",
            SET_TRAP_TABLE => "set_trap_table",
            SET_CALLBACK => "set_callback",
            SCHED_OP => "sched_op",
            SET_TIMER => "set_timer",
            EVTCHN_OP => "evtchn_op",
            VCPU_OP => "vcpu_op",
            GRANT_OP => "grant_op",
            MULTICALL => "multicall",
            _ => "unknown",
        }
    }
}

/// Operations of [`hypercall::ABI_QUERY`] (in `rdi`).
pub mod abi_query {
    /// Returns `(ABI_MAJOR << 16) | ABI_MINOR` of the hypervisor.
    pub const VERSION: u64 = 0;
    /// Returns the hypervisor's [`crate::Features`] bitmap (bit 63 is never set).
    pub const FEATURES: u64 = 1;
}

/// The most bytes one [`hypercall::CONSOLE_WRITE`] accepts.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Packs an ABI version the way [`abi_query::VERSION`] returns it.
pub const fn pack_version(major: u16, minor: u16) -> u64 {
    ((major as u64) << 16) | minor as u64
}
