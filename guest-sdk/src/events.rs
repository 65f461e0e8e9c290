//! Event channels, and the upcall that runs their handlers.
//!
//! A port is a number in `1..4096`. Bind one ([`bind_virq`], [`bind_ipi`]), or connect to
//! another domain ([`alloc_unbound`] on one side, [`bind_interdomain`] on the other), give it a
//! handler with [`set_handler`], and the handler runs from the event upcall whenever the port is
//! signalled. Ordinary code can instead wait for a masked port itself with
//! [`sched::poll`](crate::sched::poll) and [`clear_pending`]. Handlers run with upcalls
//! masked (like an interrupt handler with interrupts off): keep them short, share data with the
//! rest of the guest through atomics or an [`IrqMutex`](crate::sync::IrqMutex), and do not
//! sleep in them.
//!
//! ```no_run
//! use core::sync::atomic::{AtomicU32, Ordering};
//! use guest_sdk::events::{self, Port};
//!
//! static HITS: AtomicU32 = AtomicU32::new(0);
//!
//! fn on_event(_port: Port) {
//!     HITS.fetch_add(1, Ordering::Relaxed);
//! }
//!
//! let port = events::bind_ipi(0).unwrap();
//! events::set_handler(port, on_event).unwrap();
//! events::send(port).unwrap(); // the handler has run when this returns
//! assert_eq!(HITS.load(Ordering::Relaxed), 1);
//! events::close(port).unwrap();
//! ```
//!
//! # The upcall
//!
//! The runtime registers an assembly entry point with `set_callback`. The hypervisor enters it
//! on vector 32 with a hardware interrupt frame and `upcall_mask` set; it saves every
//! caller-saved register, aligns the stack and calls the dispatcher, which follows the 2-level
//! protocol of [`hypercall_abi::shared_info`]: clear `upcall_pending`, swap `pending_sel` with
//! 0, and for each selected word take `pending & !mask`, clearing each port's pending bit
//! before calling its handler; then clear `upcall_mask`, and go round again if `upcall_pending`
//! was set meanwhile. Ports that are pending without a handler are cleared and ignored.

use core::sync::atomic::{AtomicUsize, Ordering};

use hypercall_abi::evtchn::{self as ops};
pub use hypercall_abi::evtchn::{EvtchnStatus, Port};
use hypercall_abi::shared_info::NR_EVENT_CHANNELS;
use hypercall_abi::{hypercall as nr, DomId, Errno};

use crate::shared::{self, current_vcpu, Shared};
use crate::{Error, Result};

/// An event handler: called from the upcall with the port that was signalled.
pub type Handler = fn(Port);

/// `evtchn_op(cmd, a1, a2, a3)`.
fn evtchn_op(cmd: u64, a1: u64, a2: u64, a3: u64) -> Result<u64> {
    // SAFETY: the event channel commands the wrappers of this module issue touch no guest
    // memory except `status`, whose buffer the caller provides; none redirects control flow.
    Error::check(unsafe { crate::hypercall(nr::EVTCHN_OP, cmd, a1, a2, a3, 0) })
}

fn to_port(v: u64) -> Result<Port> {
    Port::try_from(v).map_err(|_| Error::UnknownErrno(v as i64))
}

/// Binds virtual interrupt `virq` ([`hypercall_abi::evtchn::virq`]) on `vcpu` to a new port.
///
/// The runtime already binds `VIRQ_TIMER` on vCPU 0 for [`crate::time`]; binding it again
/// fails with `EEXIST`.
///
/// ```no_run
/// use guest_sdk::abi::evtchn::virq;
/// let debug_port = guest_sdk::events::bind_virq(virq::DEBUG, 0).unwrap();
/// # let _ = debug_port;
/// ```
pub fn bind_virq(virq: u32, vcpu: u32) -> Result<Port> {
    to_port(evtchn_op(
        ops::BIND_VIRQ,
        u64::from(virq),
        u64::from(vcpu),
        0,
    )?)
}

/// Binds a new IPI port whose events go to `vcpu` of this domain.
///
/// ```no_run
/// let port = guest_sdk::events::bind_ipi(0).unwrap();
/// # let _ = port;
/// ```
pub fn bind_ipi(vcpu: u32) -> Result<Port> {
    to_port(evtchn_op(ops::BIND_IPI, u64::from(vcpu), 0, 0)?)
}

/// Allocates a new port that domain `remote` can connect to with [`bind_interdomain`]
/// (`evtchn_op(alloc_unbound)`). Its events go to vCPU 0. Tell the other domain the port number
/// (through the store, for example). `ESRCH` if `remote` does not exist, `ENOSPC` if no port is
/// free.
///
/// ```no_run
/// let port = guest_sdk::events::alloc_unbound(2).unwrap();
/// # let _ = port;
/// ```
pub fn alloc_unbound(remote: DomId) -> Result<Port> {
    to_port(evtchn_op(ops::ALLOC_UNBOUND, u64::from(remote), 0, 0)?)
}

/// The doorbell of a port connected to a device backend in the hypervisor
/// (`evtchn_op(doorbell)`): an I/O port that [`ring_doorbell`] writes to, with the effect of
/// [`send`] on `port` but without a hypercall. `EOPNOTSUPP` for a port that is not connected
/// to a device backend (fall back to [`send`]); `EINVAL` for a port that is not open.
///
/// ```no_run
/// # let port = 5;
/// let bell = guest_sdk::events::doorbell(port).unwrap();
/// guest_sdk::events::ring_doorbell(bell);
/// ```
pub fn doorbell(port: Port) -> Result<u16> {
    let io = evtchn_op(ops::DOORBELL, u64::from(port), 0, 0)?;
    u16::try_from(io).map_err(|_| Error::Errno(Errno::EINVAL))
}

/// Rings a doorbell returned by [`doorbell`]: one `out` to its I/O port.
#[inline]
pub fn ring_doorbell(io_port: u16) {
    // SAFETY: an 8-bit `out` to a port the hypervisor allowed for this purpose; it changes no
    // register or memory of ours.
    unsafe {
        core::arch::asm!(
            "out dx, al",
            in("dx") io_port,
            in("al") 0u8,
            options(nostack, nomem, preserves_flags),
        );
    }
}

/// Connects a new local port to port `remote_port` of domain `remote`, which that domain
/// allocated for us with [`alloc_unbound`] (`evtchn_op(bind_interdomain)`). Afterwards
/// [`send`] on either end raises an event on the other. `ESRCH` if the domain does not exist,
/// `EINVAL` if its port is not unbound, `EACCES` if it was allocated for another domain.
///
/// ```no_run
/// let port = guest_sdk::events::bind_interdomain(1, 7).unwrap();
/// guest_sdk::events::send(port).unwrap();
/// ```
pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port> {
    to_port(evtchn_op(
        ops::BIND_INTERDOMAIN,
        u64::from(remote),
        u64::from(remote_port),
        0,
    )?)
}

/// Clears `port`'s pending bit in the shared-info page and says whether it was set. (False
/// before the runtime is set up, or for an out-of-range port.)
///
/// With [`sched::poll`](crate::sched::poll), which does not clear pending bits, this is how
/// ordinary code waits for a masked port without a handler: clear the bit, check for work
/// (a ring, say), and poll only if there is none. An event sent after the clear leaves the bit
/// set, so the poll returns at once and no wakeup is lost.
///
/// ```no_run
/// use guest_sdk::{events, sched};
/// # let port = 5;
/// # fn work_available() -> bool { false }
/// events::mask(port).unwrap(); // no upcall: the bit stays for us
/// loop {
///     events::clear_pending(port);
///     if work_available() {
///         break;
///     }
///     sched::poll(&[port], 0).unwrap();
/// }
/// ```
pub fn clear_pending(port: Port) -> bool {
    if port >= NR_EVENT_CHANNELS {
        return false;
    }
    let bit = 1u64 << (port % 64);
    shared::shared().is_some_and(|s| {
        s.pending_word(port as usize / 64)
            .fetch_and(!bit, Ordering::SeqCst)
            & bit
            != 0
    })
}

/// Signals `port`'s peer: the vCPU of an IPI port, or the backend of the console port. If the
/// event is for the calling vCPU and upcalls are not masked, its handler has run when this
/// returns.
///
/// ```no_run
/// # let port = 5;
/// guest_sdk::events::send(port).unwrap();
/// ```
pub fn send(port: Port) -> Result<()> {
    evtchn_op(ops::SEND, u64::from(port), 0, 0).map(drop)
}

/// Closes `port` (its pending bit is cleared) and forgets its handler.
///
/// ```no_run
/// let port = guest_sdk::events::bind_ipi(0).unwrap();
/// guest_sdk::events::close(port).unwrap();
/// ```
pub fn close(port: Port) -> Result<()> {
    evtchn_op(ops::CLOSE, u64::from(port), 0, 0)?;
    if let Some(slot) = HANDLERS.get(port as usize) {
        slot.store(0, Ordering::Release);
    }
    Ok(())
}

/// Masks `port`: it still becomes pending, but raises no upcall.
///
/// ```no_run
/// # let port = 5;
/// guest_sdk::events::mask(port).unwrap();
/// ```
pub fn mask(port: Port) -> Result<()> {
    evtchn_op(ops::MASK, u64::from(port), 0, 0).map(drop)
}

/// Unmasks `port`; if it became pending while masked, the upcall is raised now.
///
/// ```no_run
/// # let port = 5;
/// guest_sdk::events::unmask(port).unwrap();
/// ```
pub fn unmask(port: Port) -> Result<()> {
    evtchn_op(ops::UNMASK, u64::from(port), 0, 0).map(drop)
}

/// The status of `port` (a free port reports [`hypercall_abi::evtchn::state::FREE`]).
///
/// ```no_run
/// use guest_sdk::abi::evtchn::state;
/// let st = guest_sdk::events::status(4000).unwrap();
/// assert_eq!(st.state, state::FREE);
/// ```
pub fn status(port: Port) -> Result<EvtchnStatus> {
    let mut st = EvtchnStatus::default();
    let gpa = &mut st as *mut EvtchnStatus as u64;
    evtchn_op(ops::STATUS, u64::from(port), gpa, 0)?;
    Ok(st)
}

/// Is `port`'s pending bit set in the shared-info page? (Always false before the runtime is
/// set up, or for an out-of-range port.)
///
/// ```no_run
/// # let port = 5;
/// if guest_sdk::events::is_pending(port) { /* ... */ }
/// ```
pub fn is_pending(port: Port) -> bool {
    if port >= NR_EVENT_CHANNELS {
        return false;
    }
    shared::shared().is_some_and(|s| {
        s.pending_word(port as usize / 64).load(Ordering::SeqCst) & (1 << (port % 64)) != 0
    })
}

/// The handlers, indexed by port: 0 for none, else a `Handler` cast to `usize`.
static HANDLERS: [AtomicUsize; NR_EVENT_CHANNELS as usize] =
    [const { AtomicUsize::new(0) }; NR_EVENT_CHANNELS as usize];

/// Sets the handler of `port`, replacing any previous one. `EINVAL` for port 0 or a port at
/// or above 4096. (The port need not be bound yet; [`close`] removes the handler.)
///
/// ```no_run
/// fn on_event(port: guest_sdk::events::Port) {
///     guest_sdk::println!("event on port {port}");
/// }
/// let port = guest_sdk::events::bind_ipi(0).unwrap();
/// guest_sdk::events::set_handler(port, on_event).unwrap();
/// ```
pub fn set_handler(port: Port, handler: Handler) -> Result<()> {
    let slot = handler_slot(port)?;
    slot.store(handler as usize, Ordering::Release);
    Ok(())
}

/// Removes the handler of `port`: its events are then cleared and ignored.
///
/// ```no_run
/// # let port = 5;
/// guest_sdk::events::clear_handler(port).unwrap();
/// ```
pub fn clear_handler(port: Port) -> Result<()> {
    handler_slot(port)?.store(0, Ordering::Release);
    Ok(())
}

fn handler_slot(port: Port) -> Result<&'static AtomicUsize> {
    if port == 0 {
        return Err(Error::Errno(Errno::EINVAL));
    }
    HANDLERS
        .get(port as usize)
        .ok_or(Error::Errno(Errno::EINVAL))
}

fn call_handler(port: Port) {
    let Some(slot) = HANDLERS.get(port as usize) else {
        return;
    };
    let h = slot.load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: `HANDLERS` only ever holds 0 or a `Handler` stored by `set_handler`, and
        // function pointers and `usize` have the same size on x86_64.
        let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
        f(port);
    }
}

/// One pass of the 2-level protocol: clears `upcall_pending`, takes the selector, and for
/// every pending, unmasked port clears its pending bit and calls `call(port)`.
pub(crate) fn dispatch_pending(s: Shared, vcpu: u32, call: &mut dyn FnMut(Port)) {
    s.upcall_pending(vcpu).store(0, Ordering::SeqCst);
    let mut sel = s.pending_sel(vcpu).swap(0, Ordering::SeqCst);
    while sel != 0 {
        let word = sel.trailing_zeros() as usize;
        sel &= sel - 1;
        let pending = s.pending_word(word);
        let mut bits = pending.load(Ordering::SeqCst) & !s.mask_word(word).load(Ordering::SeqCst);
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            let old = pending.fetch_and(!(1u64 << bit), Ordering::SeqCst);
            if old & (1u64 << bit) != 0 {
                call(word as u32 * 64 + bit);
            }
        }
    }
}

/// The upcall's Rust part, called by `guest_sdk_upcall_entry` with `upcall_mask` set.
fn upcall(s: Shared, vcpu: u32, call: &mut dyn FnMut(Port)) {
    loop {
        dispatch_pending(s, vcpu, call);
        s.upcall_mask(vcpu).store(0, Ordering::SeqCst);
        if s.upcall_pending(vcpu).load(Ordering::SeqCst) == 0 {
            break;
        }
        // An event arrived after the selector was taken: mask again and handle it.
        s.upcall_mask(vcpu).store(1, Ordering::SeqCst);
    }
}

extern "C" fn upcall_dispatch() {
    if let Some(s) = shared::shared() {
        upcall(s, current_vcpu(), &mut call_handler);
    }
}

// The upcall entry: the hypervisor enters it at CPL 3 on the interrupted stack with a hardware
// interrupt frame (RIP, CS, RFLAGS, RSP, SS; no error code). Saves every caller-saved register
// (the dispatcher, an `extern "C"` function, preserves the others), aligns the stack for the
// call, and returns with `iretq`. The guest target has no red zone, so the frame cannot clobber
// live data below the interrupted code's stack pointer.
core::arch::global_asm!(
    ".pushsection .text.guest_sdk_upcall_entry, \"ax\", @progbits",
    ".globl guest_sdk_upcall_entry",
    ".type guest_sdk_upcall_entry, @function",
    ".p2align 4",
    "guest_sdk_upcall_entry:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push rbp",
    "    mov rbp, rsp",
    "    and rsp, -16",
    "    cld",
    "    call {dispatch}",
    "    mov rsp, rbp",
    "    pop rbp",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    iretq",
    ".size guest_sdk_upcall_entry, . - guest_sdk_upcall_entry",
    ".popsection",
    dispatch = sym upcall_dispatch,
);

extern "C" {
    fn guest_sdk_upcall_entry();
}

/// The address of the SDK's upcall entry point, the handler the runtime registers with
/// `set_callback` (for tests that re-register it with hostile flags).
///
/// ```
/// assert_ne!(guest_sdk::events::upcall_entry(), 0);
/// ```
pub fn upcall_entry() -> u64 {
    guest_sdk_upcall_entry as *const () as u64
}

/// Registers the upcall entry with `set_callback(entry, 0)`.
pub(crate) fn register_callback() -> Result<()> {
    // SAFETY: the entry point follows the upcall protocol (saves registers, `iretq`), and the
    // dispatcher only touches the shared-info page the runtime recorded.
    Error::check(unsafe { crate::hypercall(nr::SET_CALLBACK, upcall_entry(), 0, 0, 0, 0) })
        .map(drop)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::shared::test_page;
    use std::vec::Vec;

    fn raise(s: Shared, vcpu: u32, port: u32) {
        // The hypervisor's side of delivery, steps 1-3.
        let w = port as usize / 64;
        s.pending_word(w)
            .fetch_or(1 << (port % 64), Ordering::SeqCst);
        if s.mask_word(w).load(Ordering::SeqCst) & (1 << (port % 64)) == 0 {
            s.pending_sel(vcpu).fetch_or(1 << w, Ordering::SeqCst);
            s.upcall_pending(vcpu).store(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn dispatches_pending_unmasked_ports_in_order() {
        let s = test_page::new();
        for p in [3, 64, 65, 4095, 200] {
            raise(s, 0, p);
        }
        s.mask_word(200 / 64)
            .fetch_or(1 << (200 % 64), Ordering::SeqCst);
        s.upcall_mask(0).store(1, Ordering::SeqCst);
        let mut seen = Vec::new();
        upcall(s, 0, &mut |p| seen.push(p));
        assert_eq!(seen, [3, 64, 65, 4095]);
        // Handled ports are no longer pending; the masked one still is.
        assert_eq!(s.pending_word(0).load(Ordering::SeqCst), 0);
        assert_eq!(s.pending_word(63).load(Ordering::SeqCst), 0);
        assert_ne!(s.pending_word(3).load(Ordering::SeqCst), 0);
        assert_eq!(s.upcall_mask(0).load(Ordering::SeqCst), 0);
        assert_eq!(s.upcall_pending(0).load(Ordering::SeqCst), 0);
        assert_eq!(s.pending_sel(0).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn events_raised_by_a_handler_are_handled_before_returning() {
        let s = test_page::new();
        raise(s, 0, 7);
        s.upcall_mask(0).store(1, Ordering::SeqCst);
        let mut seen = Vec::new();
        upcall(s, 0, &mut |p| {
            seen.push(p);
            if seen.len() == 1 {
                raise(s, 0, 9);
                raise(s, 0, 7);
            }
        });
        // The second round handles the word's bits in port order.
        assert_eq!(seen, [7, 7, 9]);
        assert_eq!(s.upcall_mask(0).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn handler_table_rejects_bad_ports() {
        fn h(_: Port) {}
        assert_eq!(set_handler(0, h), Err(Error::Errno(Errno::EINVAL)));
        assert_eq!(set_handler(4096, h), Err(Error::Errno(Errno::EINVAL)));
        assert_eq!(set_handler(4095, h), Ok(()));
        assert_eq!(clear_handler(4095), Ok(()));
    }
}
