//! The test host shared by the backends' tests: local pages standing for granted frames.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use hypercall_abi::Errno;

use super::{GrantHost, GrantedPage, PAGE_SIZE};

/// `n` zeroed, page-aligned pages.
pub(crate) struct Pages {
    ptr: *mut u8,
    n: usize,
}

impl Pages {
    pub(crate) fn new(n: usize) -> Pages {
        let layout = Layout::from_size_align(n * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Pages { ptr, n }
    }

    pub(crate) fn page(&self, i: usize) -> *mut u8 {
        assert!(i < self.n);
        self.ptr.wrapping_add(i * PAGE_SIZE)
    }

    pub(crate) fn write(&self, i: usize, off: usize, data: &[u8]) {
        assert!(off + data.len() <= PAGE_SIZE);
        // SAFETY: inside page i; the backend is not running (single-threaded tests).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.page(i).add(off), data.len()) }
    }

    pub(crate) fn read(&self, i: usize, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= PAGE_SIZE);
        let mut v = vec![0u8; len];
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.page(i).add(off), v.as_mut_ptr(), len) }
        v
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.n * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, layout) }
    }
}

/// Counts the pages the backend holds.
pub(crate) struct Live(pub(crate) Rc<Cell<usize>>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A host over local pages: grant `g` is page `g` (read-write) unless changed.
pub(crate) struct FakeHost {
    pub(crate) mem: Pages,
    /// gref -> (page, read-only).
    pub(crate) grants: RefCell<HashMap<u32, (usize, bool)>>,
    pub(crate) notified: Cell<usize>,
    pub(crate) live: Rc<Cell<usize>>,
    pub(crate) lookups: Cell<usize>,
}

impl FakeHost {
    pub(crate) fn new(pages: usize) -> FakeHost {
        FakeHost {
            mem: Pages::new(pages),
            grants: RefCell::new((0..pages).map(|i| (i as u32, (i, false))).collect()),
            notified: Cell::new(0),
            live: Rc::new(Cell::new(0)),
            lookups: Cell::new(0),
        }
    }

    pub(crate) fn set_grant(&self, gref: u32, page: usize, read_only: bool) {
        self.grants.borrow_mut().insert(gref, (page, read_only));
    }

    pub(crate) fn revoke(&self, gref: u32) {
        self.grants.borrow_mut().remove(&gref);
    }
}

impl GrantHost for FakeHost {
    type Guard = Live;

    fn page(&self, gref: u32, write: bool) -> Result<GrantedPage<Live>, Errno> {
        self.lookups.set(self.lookups.get() + 1);
        let (page, ro) = *self.grants.borrow().get(&gref).ok_or(Errno::ENOENT)?;
        if write && ro {
            return Err(Errno::EACCES);
        }
        self.live.set(self.live.get() + 1);
        let ptr = NonNull::new(self.mem.page(page)).unwrap();
        // SAFETY: a page of `mem`, which outlives the backend (the backend owns the host); the
        // tests touch it only between calls of `process`.
        Ok(unsafe { GrantedPage::new(ptr, Live(Rc::clone(&self.live))) })
    }

    fn notify(&self) {
        self.notified.set(self.notified.get() + 1);
    }
}
