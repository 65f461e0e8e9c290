//! The heap: a global allocator over the largest free RAM region of the memory map.
//!
//! In a guest (`target_os = "none"`) the SDK provides the `#[global_allocator]`, so
//! `extern crate alloc;` gives `Box`, `Vec`, `String`, ... The runtime hands it the largest
//! [`mem_kind::RAM`] region of StartInfo's memory
//! map before `main` runs. Allocation is safe from event handlers (the allocator's lock masks
//! upcalls). On the host the crate uses std's allocator and this module only reports.
//!
//! [`Pages`] allocates page-aligned, zeroed pages from the heap: ring pages and data pages to
//! share with other domains through [`grant`](crate::grant).

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use hypercall_abi::Errno;

use crate::{Error, Result};

use hypercall_abi::start_info::{mem_kind, MemRegion};
use hypercall_abi::PAGE_SIZE;

static HEAP_BASE: AtomicU64 = AtomicU64::new(0);
static HEAP_LEN: AtomicU64 = AtomicU64::new(0);

/// The region the heap manages, `(base, len)` in bytes, once the runtime has set it up.
///
/// ```no_run
/// if let Some((base, len)) = guest_sdk::heap::region() {
///     guest_sdk::println!("heap: {} MiB at {base:#x}", len >> 20);
/// }
/// ```
pub fn region() -> Option<(u64, u64)> {
    match HEAP_LEN.load(Ordering::Acquire) {
        0 => None,
        len => Some((HEAP_BASE.load(Ordering::Acquire), len)),
    }
}

/// The largest RAM region of a memory map, as `(base, len)`, never including page 0 (which is
/// unmapped) and clipped to the address space.
pub(crate) fn largest_ram_region(regions: &[MemRegion]) -> Option<(u64, u64)> {
    regions
        .iter()
        .filter(|r| r.kind == mem_kind::RAM)
        .filter_map(|r| {
            let start = r.base.max(PAGE_SIZE);
            let end = r.base.saturating_add(r.len);
            (end > start).then(|| (start, end - start))
        })
        .max_by_key(|&(_, len)| len)
}

/// Page-aligned, zeroed pages allocated from the heap, freed on drop: ring pages and data
/// pages to share with other domains.
///
/// A guest's RAM is identity-mapped, so the pages' address is also their guest-physical
/// address ([`gpa`](Self::gpa)), which is what [`grant::grant_access`](crate::grant::grant_access)
/// and the rings take. `Pages` hands out only raw pointers: memory shared with another domain
/// can change under the program at any time, so it must be accessed with atomics or volatile
/// operations (as [`hypercall_abi::ring`] does), never through Rust references.
///
/// Do not drop `Pages` while another domain may still access them: end the grants first
/// ([`grant::end_access`](crate::grant::end_access) or [`grant::revoke`](crate::grant::revoke)).
///
/// ```no_run
/// use guest_sdk::heap::Pages;
/// let ring = Pages::zeroed(1).unwrap();
/// assert_eq!(ring.gpa() % 4096, 0);
/// assert_eq!(ring.len(), 4096);
/// ```
#[derive(Debug)]
pub struct Pages {
    ptr: NonNull<u8>,
    count: usize,
}

// SAFETY: `Pages` owns its allocation and hands out only raw pointers; moving the owner to
// another vCPU changes nothing about who may access the memory.
unsafe impl Send for Pages {}

impl Pages {
    /// Allocates `count` (at least 1) zeroed, page-aligned pages. `EINVAL` for 0 pages or a
    /// size that overflows, `ENOMEM` if the heap has no room.
    pub fn zeroed(count: usize) -> Result<Pages> {
        let layout = Self::layout(count)?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or(Error::Errno(Errno::ENOMEM))?;
        Ok(Pages { ptr, count })
    }

    fn layout(count: usize) -> Result<Layout> {
        let einval = Error::Errno(Errno::EINVAL);
        if count == 0 {
            return Err(einval);
        }
        let size = count.checked_mul(PAGE_SIZE as usize).ok_or(einval)?;
        Layout::from_size_align(size, PAGE_SIZE as usize).map_err(|_| einval)
    }

    /// The first byte (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The guest-physical address of the first page (= its address: RAM is identity-mapped).
    pub fn gpa(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The guest-physical address of page `i`, if `i < count()`.
    pub fn page_gpa(&self, i: usize) -> Option<u64> {
        (i < self.count).then(|| self.gpa() + i as u64 * PAGE_SIZE)
    }

    /// The number of pages.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.count * PAGE_SIZE as usize
    }

    /// Always false: `Pages` holds at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // `zeroed` built this layout from `count` successfully, so it cannot fail now.
        if let Ok(layout) = Self::layout(self.count) {
            // SAFETY: `ptr` was allocated by `alloc_zeroed` with this very layout and is freed
            // once, here.
            unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

#[cfg(target_os = "none")]
mod allocator {
    use core::alloc::{GlobalAlloc, Layout};
    use core::ptr::{null_mut, NonNull};

    use linked_list_allocator::Heap;

    use crate::sync::IrqMutex;

    /// `linked_list_allocator`'s heap behind the SDK's upcall-masking lock.
    pub(crate) struct GuestAllocator {
        heap: IrqMutex<Heap>,
    }

    // SAFETY: all state is behind the lock; `Heap` hands out each block once, correctly
    // aligned and sized for its layout, and `deallocate` gets back only blocks it handed out
    // (GlobalAlloc's contract on the caller).
    unsafe impl GlobalAlloc for GuestAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.heap
                .lock()
                .allocate_first_fit(layout)
                .map_or(null_mut(), |p| p.as_ptr())
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if let Some(p) = NonNull::new(ptr) {
                // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with this `layout`.
                unsafe { self.heap.lock().deallocate(p, layout) }
            }
        }
    }

    #[global_allocator]
    static ALLOCATOR: GuestAllocator = GuestAllocator {
        heap: IrqMutex::new(Heap::empty()),
    };

    /// Gives the heap its memory.
    ///
    /// # Safety
    ///
    /// `base .. base + len` must be free guest RAM, mapped read-write, used by nothing else for
    /// the rest of the domain's life; call once.
    pub(crate) unsafe fn init(base: u64, len: u64) {
        // SAFETY: the caller's contract.
        unsafe { ALLOCATOR.heap.lock().init(base as *mut u8, len as usize) }
    }
}

/// Hands the largest RAM region of `regions` to the global allocator. Returns it.
///
/// # Safety
///
/// `regions` must be the domain's memory map (its RAM regions free and mapped); call once.
pub(crate) unsafe fn init(regions: &[MemRegion]) -> Option<(u64, u64)> {
    let (base, len) = largest_ram_region(regions)?;
    #[cfg(target_os = "none")]
    {
        // SAFETY: a RAM region of the memory map is free, mapped guest RAM (the caller's
        // contract).
        unsafe { allocator::init(base, len) };
    }
    HEAP_BASE.store(base, Ordering::Release);
    HEAP_LEN.store(len, Ordering::Release);
    Some((base, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u64, len: u64, kind: u32) -> MemRegion {
        MemRegion {
            base,
            len,
            kind,
            pad: 0,
        }
    }

    #[test]
    fn pages_are_aligned_zeroed_and_sized() {
        let p = Pages::zeroed(3).unwrap();
        assert_eq!(p.gpa() % PAGE_SIZE, 0);
        assert_eq!((p.count(), p.len()), (3, 3 * 4096));
        assert_eq!(p.page_gpa(2), Some(p.gpa() + 2 * 4096));
        assert_eq!(p.page_gpa(3), None);
        // SAFETY: the pages are ours and not shared.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), p.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(Pages::zeroed(0).unwrap_err(), Error::Errno(Errno::EINVAL));
        assert_eq!(
            Pages::zeroed(usize::MAX).unwrap_err(),
            Error::Errno(Errno::EINVAL)
        );
    }

    #[test]
    fn picks_the_largest_ram_region() {
        let map = [
            r(0x1000, 0x3000, mem_kind::HV_SHARED),
            r(0x4000, 0xc000, mem_kind::RAM),
            r(0x100000, 0x100000, mem_kind::BOOT_STACK),
            r(0x200000, 0x10000, mem_kind::IMAGE),
            r(0x210000, 0x7df0000, mem_kind::RAM),
        ];
        assert_eq!(largest_ram_region(&map), Some((0x210000, 0x7df0000)));
        assert_eq!(largest_ram_region(&map[..3]), Some((0x4000, 0xc000)));
        assert_eq!(largest_ram_region(&map[..1]), None);
        // Page 0 is never handed out; a region that wraps is clipped.
        assert_eq!(
            largest_ram_region(&[r(0, 0x2000, mem_kind::RAM)]),
            Some((0x1000, 0x1000))
        );
        assert_eq!(
            largest_ram_region(&[r(u64::MAX - 0xfff, 0x2000, mem_kind::RAM)]),
            Some((u64::MAX - 0xfff, 0xfff))
        );
    }
}
