//! The heap: a global allocator over the largest free RAM region of the memory map.
//!
//! In a guest (`target_os = "none"`) the SDK provides the `#[global_allocator]`, so
//! `extern crate alloc;` gives `Box`, `Vec`, `String`, ... The runtime hands it the largest
//! [`mem_kind::RAM`] region of StartInfo's memory
//! map before `main` runs. Allocation is safe from event handlers (the allocator's lock masks
//! upcalls). On the host the crate uses std's allocator and this module only reports.

use core::sync::atomic::{AtomicU64, Ordering};

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
