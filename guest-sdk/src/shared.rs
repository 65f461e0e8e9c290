//! Access to the pages the hypervisor shares with the guest. SharedInfo's fields are plain
//! integers in the ABI; the hypervisor updates them concurrently with atomic operations, so the
//! guest reads and writes them only through atomics made with `Atomic*::from_ptr`.

use core::ptr::{addr_of_mut, null_mut};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};

use hypercall_abi::shared_info::{SharedInfo, NR_EVENT_CHANNELS};
use hypercall_abi::start_info::StartInfo;
use hypercall_abi::time::PvclockTimeInfo;
use hypercall_abi::MAX_VCPUS;

static START_INFO: AtomicPtr<StartInfo> = AtomicPtr::new(null_mut());
static SHARED_INFO: AtomicPtr<SharedInfo> = AtomicPtr::new(null_mut());

/// Records the start-info page. Called once by the runtime before anything else.
///
/// # Safety
///
/// `si` must point to the hypervisor's StartInfo page, valid and unchanging for the rest of the
/// domain's life.
pub(crate) unsafe fn set_start_info(si: *const StartInfo) {
    START_INFO.store(si.cast_mut(), Ordering::Release);
}

/// The start-info page, once the runtime has recorded it.
pub(crate) fn start_info() -> Option<&'static StartInfo> {
    let p = START_INFO.load(Ordering::Acquire);
    // SAFETY: `set_start_info`'s contract: a non-null pointer is the valid, read-only StartInfo
    // page, which lives as long as the domain.
    unsafe { p.as_ref() }
}

/// Records the shared-info page.
///
/// # Safety
///
/// `p` must point to the domain's SharedInfo page (page-aligned, mapped read-write for the rest
/// of the domain's life), or be a test double with the same properties.
pub(crate) unsafe fn set_shared_info(p: *mut SharedInfo) {
    SHARED_INFO.store(p, Ordering::Release);
}

/// The shared-info page, once the runtime has recorded it.
pub(crate) fn shared() -> Option<Shared> {
    let p = SHARED_INFO.load(Ordering::Acquire);
    if p.is_null() {
        None
    } else {
        Some(Shared(p))
    }
}

/// A handle on a SharedInfo page that hands out atomics over its fields.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut SharedInfo);

impl Shared {
    fn vcpu(self, vcpu: u32) -> u32 {
        // Every caller passes a vCPU id the SDK itself chose; clamp so an out-of-range id can
        // never address memory outside the page.
        vcpu.min(MAX_VCPUS - 1)
    }

    /// `vcpu_info[vcpu].upcall_pending`.
    pub(crate) fn upcall_pending(self, vcpu: u32) -> &'static AtomicU8 {
        let v = self.vcpu(vcpu) as usize;
        // SAFETY: `self.0` is a live SharedInfo page (see `set_shared_info`), `v` is in bounds,
        // and a u8 field is always aligned for AtomicU8; the page is only accessed atomically.
        unsafe { AtomicU8::from_ptr(addr_of_mut!((*self.0).vcpu_info[v].upcall_pending)) }
    }

    /// `vcpu_info[vcpu].upcall_mask`.
    pub(crate) fn upcall_mask(self, vcpu: u32) -> &'static AtomicU8 {
        let v = self.vcpu(vcpu) as usize;
        // SAFETY: as in `upcall_pending`.
        unsafe { AtomicU8::from_ptr(addr_of_mut!((*self.0).vcpu_info[v].upcall_mask)) }
    }

    /// `vcpu_info[vcpu].pending_sel`.
    pub(crate) fn pending_sel(self, vcpu: u32) -> &'static AtomicU64 {
        let v = self.vcpu(vcpu) as usize;
        // SAFETY: as in `upcall_pending`; `pending_sel` is at offset 8 of a 64-byte record in a
        // page-aligned page, so it is 8-byte aligned.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.0).vcpu_info[v].pending_sel)) }
    }

    /// `vcpu_info[vcpu].time`.
    pub(crate) fn time(self, vcpu: u32) -> *mut PvclockTimeInfo {
        let v = self.vcpu(vcpu) as usize;
        // SAFETY: in-bounds field projection of a live page; no reference is created.
        unsafe { addr_of_mut!((*self.0).vcpu_info[v].time) }
    }

    /// Word `word` of `evtchn_pending` (`word < NR_EVENT_CHANNELS / 64`).
    pub(crate) fn pending_word(self, word: usize) -> &'static AtomicU64 {
        let w = word.min((NR_EVENT_CHANNELS / 64) as usize - 1);
        // SAFETY: as in `pending_sel`; the array is at offset 2048, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.0).evtchn_pending[w])) }
    }

    /// Word `word` of `evtchn_mask`.
    pub(crate) fn mask_word(self, word: usize) -> &'static AtomicU64 {
        let w = word.min((NR_EVENT_CHANNELS / 64) as usize - 1);
        // SAFETY: as in `pending_word`.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.0).evtchn_mask[w])) }
    }

    /// `wc_version`.
    pub(crate) fn wc_version(self) -> &'static AtomicU32 {
        // SAFETY: as in `upcall_pending`; the field is 4-byte aligned (offset 3072).
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.0).wc_version)) }
    }

    /// `wc_sec`.
    pub(crate) fn wc_sec(self) -> &'static AtomicU64 {
        // SAFETY: as in `upcall_pending`; the field is 8-byte aligned (offset 3080).
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.0).wc_sec)) }
    }

    /// `wc_nsec`.
    pub(crate) fn wc_nsec(self) -> &'static AtomicU32 {
        // SAFETY: as in `upcall_pending`; the field is 4-byte aligned (offset 3088).
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.0).wc_nsec)) }
    }
}

/// The id of the vCPU running the caller. The SDK runs on vCPU 0 only for now; with SMP this
/// becomes a per-vCPU value (kept in the GS base).
#[inline]
pub(crate) fn current_vcpu() -> u32 {
    0
}

/// A zeroed, page-aligned SharedInfo for host unit tests.
#[cfg(test)]
pub(crate) mod test_page {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    #[repr(C, align(4096))]
    pub(crate) struct Page(pub(crate) SharedInfo);

    /// Leaks a zeroed page (tests run for a short time; the page must be `'static`).
    pub(crate) fn new() -> Shared {
        let page: Box<Page> = Box::new(Page(zerocopy::FromZeros::new_zeroed()));
        Shared(&mut Box::leak(page).0)
    }
}
