//! Pages a frontend grants to its backend once and reuses (ring pages, data pools).

use alloc::vec::Vec;

use guest_sdk::abi::{DomId, PAGE_SIZE};
use guest_sdk::grant::{self, GrantRef};
use guest_sdk::heap::Pages;

const PAGE: usize = PAGE_SIZE as usize;

/// Pages granted to the backend, with their references. Ends the grants when dropped; pages
/// whose grants cannot be ended (or that the backend may still use) are leaked, never freed.
pub(crate) struct Granted {
    pages: Option<Pages>,
    /// The grant reference of each page, in page order.
    pub(crate) grefs: Vec<GrantRef>,
    /// Set when the backend may still use the pages: dropping then leaks them.
    pub(crate) leak: bool,
}

impl Granted {
    /// No pages.
    pub(crate) const fn none() -> Granted {
        Granted {
            pages: None,
            grefs: Vec::new(),
            leak: false,
        }
    }

    /// Allocates `count` zeroed pages (at least one) and grants each to `backend`.
    pub(crate) fn new(count: usize, backend: DomId, readonly: bool) -> guest_sdk::Result<Granted> {
        let pages = Pages::zeroed(count)?;
        let mut g = Granted {
            pages: None,
            grefs: Vec::with_capacity(count),
            leak: false,
        };
        for i in 0..pages.count() {
            let gpa = pages.gpa() + (i * PAGE) as u64;
            // SAFETY: the page belongs to `pages`, which `g` keeps (and frees only after every
            // grant of it ended, or never); the frontends access it only through raw pointers
            // (copies to and from it while no request naming it is in flight, volatile writes,
            // the ring), never through references.
            match unsafe { grant::grant_access(gpa, backend, readonly) } {
                Ok(r) => g.grefs.push(r),
                Err(e) => {
                    g.pages = Some(pages);
                    return Err(e);
                }
            }
        }
        g.pages = Some(pages);
        Ok(g)
    }

    /// Address of page `i`, or null if there is no such page.
    pub(crate) fn ptr(&self, i: usize) -> *mut u8 {
        match &self.pages {
            Some(p) if i < p.count() => p.as_ptr().wrapping_add(i * PAGE),
            _ => core::ptr::null_mut(),
        }
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        let mut all_ended = true;
        for &r in &self.grefs {
            all_ended &= grant::end_access(r).is_ok();
        }
        if (self.leak || !all_ended) && self.pages.is_some() {
            // The backend may still touch them: never hand them back to the heap.
            core::mem::forget(self.pages.take());
        }
    }
}
