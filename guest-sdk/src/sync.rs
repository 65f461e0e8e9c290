//! Masking upcalls, and a lock that is safe to share with upcall handlers.
//!
//! A guest cannot disable interrupts (`cli` is not allowed at CPL 3). It masks event upcalls
//! instead with the `upcall_mask` byte of its vCPU's shared info: while it is set the hypervisor
//! does not enter the upcall, and events stay pending. [`mask_upcalls`] sets it and returns a
//! guard that restores the previous value; if an event arrived meanwhile (`upcall_pending`), the
//! guard makes a `sched_op(yield)` hypercall when it unmasks, so the hypervisor delivers the event
//! at once.
//!
//! [`IrqMutex`] is a spinlock taken with upcalls masked. Any data shared between ordinary code
//! and an event handler must be behind one: a plain spinlock would deadlock when a handler
//! interrupts the lock's holder and tries to take it too.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;

use crate::shared::{self, current_vcpu};

/// Masks event upcalls on the calling vCPU until the returned guard is dropped.
///
/// Guards nest: each restores the mask it found. Before the runtime has set up the shared-info
/// page this does nothing.
///
/// ```no_run
/// let guard = guest_sdk::sync::mask_upcalls();
/// // ... no event handler runs here ...
/// drop(guard); // events that arrived meanwhile are delivered now
/// ```
pub fn mask_upcalls() -> UpcallMaskGuard {
    let vcpu = current_vcpu();
    let previous = match shared::shared() {
        Some(s) => s.upcall_mask(vcpu).swap(1, Ordering::SeqCst),
        None => 1,
    };
    UpcallMaskGuard { vcpu, previous }
}

/// Are upcalls masked on the calling vCPU (always true inside an event handler)?
///
/// ```no_run
/// assert!(!guest_sdk::sync::upcalls_masked());
/// ```
pub fn upcalls_masked() -> bool {
    match shared::shared() {
        Some(s) => s.upcall_mask(current_vcpu()).load(Ordering::SeqCst) != 0,
        None => true,
    }
}

/// Restores the upcall mask of the calling vCPU when dropped. Made by [`mask_upcalls`].
#[must_use = "upcalls are unmasked again as soon as the guard is dropped"]
pub struct UpcallMaskGuard {
    vcpu: u32,
    previous: u8,
}

impl Drop for UpcallMaskGuard {
    fn drop(&mut self) {
        let Some(s) = shared::shared() else { return };
        s.upcall_mask(self.vcpu)
            .store(self.previous, Ordering::SeqCst);
        if self.previous == 0 && s.upcall_pending(self.vcpu).load(Ordering::SeqCst) != 0 {
            // An event arrived while masked: enter the hypervisor with the mask clear so it
            // delivers the upcall now (sched_op(yield) returns after delivering it).
            crate::sched::yield_now();
        }
    }
}

/// A spinlock that masks event upcalls while it is held, so it can be shared between ordinary
/// code and event handlers without deadlock.
///
/// ```no_run
/// use guest_sdk::sync::IrqMutex;
///
/// static COUNTER: IrqMutex<u64> = IrqMutex::new(0);
///
/// fn handler(_port: guest_sdk::events::Port) {
///     *COUNTER.lock() += 1; // safe: the interrupted code cannot be holding the lock
/// }
///
/// let seen = *COUNTER.lock();
/// # let _ = (seen, handler);
/// ```
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

impl<T> IrqMutex<T> {
    /// A new unlocked mutex holding `value`.
    pub const fn new(value: T) -> Self {
        IrqMutex {
            inner: spin::Mutex::new(value),
        }
    }

    /// Masks upcalls, then spins until the lock is free and takes it.
    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let mask = mask_upcalls();
        let guard = self.inner.lock();
        IrqMutexGuard { guard, _mask: mask }
    }

    /// Takes the lock if it is free (with upcalls masked while it is held).
    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let mask = mask_upcalls();
        let guard = self.inner.try_lock()?;
        Some(IrqMutexGuard { guard, _mask: mask })
    }
}

/// The guard of an [`IrqMutex`]: releases the lock, then restores the upcall mask.
pub struct IrqMutexGuard<'a, T> {
    // Field order matters: the lock is released before the upcall mask is restored.
    guard: spin::MutexGuard<'a, T>,
    _mask: UpcallMaskGuard,
}

impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_works_before_init() {
        // Without a shared-info page the mask is a no-op and the lock is a plain spinlock.
        let m = IrqMutex::new(1);
        *m.lock() += 1;
        assert_eq!(*m.lock(), 2);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert!(m.try_lock().is_some());
    }
}
