//! The start-info page: what a guest knows about itself when it starts.
//!
//! The hypervisor enters a guest in 64-bit mode at CPL 3 with `rip` = the ELF entry point,
//! `rsp` = the top of the boot stack and `rdi` = the guest-physical address of this page. Guest
//! RAM is identity-mapped (virtual = guest-physical) with user-accessible pages; the page at
//! address 0 is not mapped. The page is mapped read-only.

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// [`StartInfo::magic`]: `"HVSTART1"` as a little-endian `u64`.
pub const START_INFO_MAGIC: u64 = u64::from_le_bytes(*b"HVSTART1");
/// Capacity of [`StartInfo::mem_regions`].
pub const MAX_MEM_REGIONS: usize = 16;
/// Capacity of [`StartInfo::cmdline`] in bytes.
pub const CMDLINE_MAX: usize = 1024;

/// What a range of guest-physical memory holds ([`MemRegion::kind`]).
pub mod mem_kind {
    /// Free RAM the guest may use as it likes (heap, stacks, ...).
    pub const RAM: u32 = 1;
    /// The loaded guest image (its ELF segments).
    pub const IMAGE: u32 = 2;
    /// Pages the hypervisor shares with the guest: start info, shared info, console ring, store
    /// ring.
    pub const HV_SHARED: u32 = 3;
    /// The boot stack (the guest may keep using it).
    pub const BOOT_STACK: u32 = 4;
    /// Per-vCPU exception stacks: the alternate stack used by handlers registered with
    /// `TRAP_ALT_STACK`, and the hypervisor's crash-report stack. Do not use for anything else.
    pub const TRAP_STACKS: u32 = 5;
    /// The grant window (not RAM: pages appear there when `grant_op(map)` maps them).
    pub const GRANT_WINDOW: u32 = 6;
}

/// One range of the guest-physical memory map.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MemRegion {
    /// First byte (page-aligned).
    pub base: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
    /// One of [`mem_kind`].
    pub kind: u32,
    /// Reserved, zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<MemRegion>() == 24);

/// The start-info page.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u64,
    /// The hypervisor's ABI major.
    pub abi_major: u16,
    /// The hypervisor's ABI minor.
    pub abi_minor: u16,
    /// This domain's id.
    pub domid: u16,
    /// Reserved, zero.
    pub pad0: u16,
    /// [`crate::Features`] the hypervisor offers.
    pub features: u64,
    /// Number of vCPUs (vCPU 0 runs at start; others start with `vcpu_op(up)`).
    pub nr_vcpus: u32,
    /// Number of valid entries in `mem_regions`.
    pub nr_mem_regions: u32,
    /// Total guest RAM in bytes (guest-physical 0 .. `ram_bytes`).
    pub ram_bytes: u64,
    /// Guest-physical address of the [`crate::shared_info::SharedInfo`] page.
    pub shared_info_gpa: u64,
    /// Guest-physical address of the [`crate::console::ConsoleRing`] page.
    pub console_ring_gpa: u64,
    /// Event channel port of the console ring, already bound to the hypervisor's console.
    pub console_port: u32,
    /// Event channel port of the store ring, already bound to the hypervisor's store.
    pub store_port: u32,
    /// Guest-physical address of the store ring page (see [`crate::store`]).
    pub store_ring_gpa: u64,
    /// Guest-physical (= virtual) address of the grant window, where `grant_op(map)` maps
    /// frames granted by other domains.
    pub grant_window_gpa: u64,
    /// Number of 4 KiB pages in the grant window.
    pub grant_window_pages: u32,
    /// Length of the command line in `cmdline` (no NUL terminator).
    pub cmdline_len: u32,
    /// System time (ns, see [`crate::time`]) when the domain was created.
    pub boot_system_time_ns: u64,
    /// Reserved, zero.
    pub reserved: [u64; 4],
    /// The memory map: sorted, non-overlapping, covering all mapped guest RAM.
    pub mem_regions: [MemRegion; MAX_MEM_REGIONS],
    /// The command line (UTF-8, `cmdline_len` bytes).
    pub cmdline: [u8; CMDLINE_MAX],
}
const _: () = assert!(offset_of!(StartInfo, features) == 16);
const _: () = assert!(offset_of!(StartInfo, nr_vcpus) == 24);
const _: () = assert!(offset_of!(StartInfo, ram_bytes) == 32);
const _: () = assert!(offset_of!(StartInfo, shared_info_gpa) == 40);
const _: () = assert!(offset_of!(StartInfo, console_ring_gpa) == 48);
const _: () = assert!(offset_of!(StartInfo, console_port) == 56);
const _: () = assert!(offset_of!(StartInfo, store_port) == 60);
const _: () = assert!(offset_of!(StartInfo, store_ring_gpa) == 64);
const _: () = assert!(offset_of!(StartInfo, grant_window_gpa) == 72);
const _: () = assert!(offset_of!(StartInfo, grant_window_pages) == 80);
const _: () = assert!(offset_of!(StartInfo, cmdline_len) == 84);
const _: () = assert!(offset_of!(StartInfo, boot_system_time_ns) == 88);
const _: () = assert!(offset_of!(StartInfo, mem_regions) == 128);
const _: () = assert!(offset_of!(StartInfo, cmdline) == 128 + 24 * MAX_MEM_REGIONS);
const _: () = assert!(size_of::<StartInfo>() == 128 + 24 * MAX_MEM_REGIONS + CMDLINE_MAX);
const _: () = assert!(size_of::<StartInfo>() <= 4096);

impl StartInfo {
    /// The valid part of the memory map.
    pub fn regions(&self) -> &[MemRegion] {
        let n = (self.nr_mem_regions as usize).min(MAX_MEM_REGIONS);
        &self.mem_regions[..n]
    }

    /// The command line, or `""` if it is not valid UTF-8.
    pub fn cmdline(&self) -> &str {
        let n = (self.cmdline_len as usize).min(CMDLINE_MAX);
        core::str::from_utf8(&self.cmdline[..n]).unwrap_or("")
    }
}
