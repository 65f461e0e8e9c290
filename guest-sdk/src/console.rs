//! The console: [`print!`](crate::print) and [`println!`](crate::println).
//!
//! After the runtime's initialisation, output goes through the PV console ring: the bytes are
//! copied into the ring's output buffer (wrapping around), `out_prod` is published with release
//! ordering, and an event is sent on the console port, on which the hypervisor drains the ring
//! before the hypercall returns. A message longer than the ring is sent in ring-sized pieces.
//!
//! Before that (and for the panic handler, which must not take locks) output goes through the
//! synchronous `console_write` hypercall: [`early_write`] and [`early_print`].

use core::fmt::{self, Write};
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, Ordering};

use hypercall_abi::console::{ring_used, ConsoleRing, OUT_SIZE};
use hypercall_abi::evtchn::Port;
use hypercall_abi::{hypercall as nr, CONSOLE_WRITE_MAX};

use crate::sync::IrqMutex;
use crate::{Error, Result};

/// Writes `bytes` to the console with the synchronous `console_write` hypercall, in pieces of
/// at most [`CONSOLE_WRITE_MAX`] bytes. Usable at any time, even before the runtime is set up.
///
/// ```no_run
/// guest_sdk::console::early_write(b"early hello\n").unwrap();
/// ```
pub fn early_write(bytes: &[u8]) -> Result<()> {
    for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
        // SAFETY: console_write only reads guest memory, and `chunk` is a valid slice in guest
        // RAM (identity-mapped: its address is its guest-physical address).
        let rax = unsafe {
            crate::hypercall(
                nr::CONSOLE_WRITE,
                chunk.as_ptr() as u64,
                chunk.len() as u64,
                0,
                0,
                0,
            )
        };
        Error::check(rax)?;
    }
    Ok(())
}

/// Formats `args` to the console through [`early_write`], with a small stack buffer and no
/// lock: the path for early boot and panics. Errors are ignored (there is nowhere to report
/// them).
///
/// ```no_run
/// guest_sdk::console::early_print(format_args!("{} + {} = {}\n", 1, 2, 1 + 2));
/// ```
pub fn early_print(args: fmt::Arguments<'_>) {
    let mut w = EarlyWriter {
        buf: [0; 256],
        len: 0,
    };
    let _ = w.write_fmt(args);
    w.flush();
}

/// A stack buffer flushed with `console_write` when full.
struct EarlyWriter {
    buf: [u8; 256],
    len: usize,
}

impl EarlyWriter {
    fn flush(&mut self) {
        let _ = early_write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for EarlyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// The ring console's state: where the ring is and which port notifies its backend.
struct RingConsole {
    ring: *mut ConsoleRing,
    port: Port,
}

// SAFETY: the ring pointer names the domain's console ring page, which every vCPU may use; the
// console is only reached through `CONSOLE`'s lock.
unsafe impl Send for RingConsole {}

/// The ring console, once set up. `None` means "use the early console".
static CONSOLE: IrqMutex<Option<RingConsole>> = IrqMutex::new(None);

/// Switches output to the ring at `ring`, notified on `port`.
///
/// # Safety
///
/// `ring` must be the domain's console ring page, mapped read-write for the rest of its life.
pub(crate) unsafe fn init_ring(ring: *mut ConsoleRing, port: Port) {
    *CONSOLE.lock() = Some(RingConsole { ring, port });
}

/// Why the ring could not take more bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RingError {
    /// The backend's consumer index is impossible (more than a ring ahead or behind).
    Broken,
    /// The ring stayed full although the backend was notified many times.
    Stalled,
}

/// How many notifications without progress make a ring count as stalled.
const MAX_STALLS: u32 = 64;

/// Copies `bytes` into the output buffer of `ring` starting at the producer index, wrapping
/// around; when the ring is full, publishes what it has and calls `notify` (the backend drains
/// the ring) and retries. Publishes the final producer index with release ordering but does not
/// notify for it: the caller sends once per message. Returns the number of bytes written on
/// error.
///
/// # Safety
///
/// `ring` must point to a live console ring page.
pub(crate) unsafe fn ring_write(
    ring: *mut ConsoleRing,
    bytes: &[u8],
    notify: &mut dyn FnMut(),
) -> core::result::Result<(), (usize, RingError)> {
    // SAFETY: the caller guarantees a live ring page; the index fields are
    // 4-byte aligned u32s accessed only atomically, and the buffer is written only at indices
    // reduced modulo its size.
    let (out, prod_a, cons_a) = unsafe {
        (
            addr_of_mut!((*ring).output).cast::<u8>(),
            AtomicU32::from_ptr(addr_of_mut!((*ring).out_prod)),
            AtomicU32::from_ptr(addr_of_mut!((*ring).out_cons)),
        )
    };
    let mut prod = prod_a.load(Ordering::Relaxed);
    let mut done = 0;
    let mut stalls = 0;
    while done < bytes.len() {
        let cons = cons_a.load(Ordering::Acquire);
        let Some(used) = ring_used(cons, prod, OUT_SIZE) else {
            prod_a.store(prod, Ordering::Release);
            return Err((done, RingError::Broken));
        };
        let free = (OUT_SIZE - used) as usize;
        if free == 0 {
            prod_a.store(prod, Ordering::Release);
            if stalls == MAX_STALLS {
                return Err((done, RingError::Stalled));
            }
            stalls += 1;
            notify();
            continue;
        }
        stalls = 0;
        let n = free.min(bytes.len() - done);
        for &b in &bytes[done..done + n] {
            let at = (prod % OUT_SIZE) as usize;
            // SAFETY: `at < OUT_SIZE`, inside the output buffer of a live page.
            unsafe { out.add(at).write_volatile(b) };
            prod = prod.wrapping_add(1);
        }
        done += n;
    }
    prod_a.store(prod, Ordering::Release);
    Ok(())
}

/// A `fmt::Write` into the ring that notifies the backend when the ring fills up, and falls
/// back to the early console if the ring breaks.
struct RingWriter<'a> {
    console: &'a mut Option<RingConsole>,
    wrote: bool,
}

fn send(port: Port) {
    // SAFETY: evtchn_op(send) on the console port only makes the backend drain the ring.
    let _ = unsafe {
        crate::hypercall(
            nr::EVTCHN_OP,
            hypercall_abi::evtchn::SEND,
            u64::from(port),
            0,
            0,
            0,
        )
    };
}

impl Write for RingWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let Some(con) = self.console.as_ref() else {
            let _ = early_write(s.as_bytes());
            return Ok(());
        };
        let port = con.port;
        // SAFETY: `init_ring`'s contract: `con.ring` is the live console ring.
        let r = unsafe { ring_write(con.ring, s.as_bytes(), &mut || send(port)) };
        self.wrote = true;
        if let Err((done, _)) = r {
            // The backend misbehaves: flush what is in the ring, then use the early console
            // from now on so output is not lost.
            send(port);
            *self.console = None;
            self.wrote = false;
            let _ = early_write(&s.as_bytes()[done..]);
        }
        Ok(())
    }
}

/// Formats `args` to the console. Used by [`print!`](crate::print) and
/// [`println!`](crate::println); call those instead.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut console = CONSOLE.lock();
    if console.is_none() {
        drop(console);
        early_print(args);
        return;
    }
    let mut w = RingWriter {
        console: &mut console,
        wrote: false,
    };
    let _ = w.write_fmt(args);
    if w.wrote {
        if let Some(con) = w.console.as_ref() {
            send(con.port);
        }
    }
}

/// Prints to the guest console (the PV console ring, or the early console before the runtime
/// is set up).
///
/// ```no_run
/// guest_sdk::print!("no newline, ");
/// guest_sdk::print!("{}\n", 42);
/// ```
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints to the guest console, with a newline.
///
/// ```no_run
/// guest_sdk::println!("Hello from a paravirtualized guest!");
/// guest_sdk::println!("x = {}", 1);
/// guest_sdk::println!();
/// ```
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    fn new_ring() -> Box<ConsoleRing> {
        Box::new(<ConsoleRing as zerocopy::FromZeros>::new_zeroed())
    }

    /// Drains the ring like the backend does, collecting the bytes.
    fn drain(ring: *mut ConsoleRing, sink: &mut Vec<u8>) {
        // SAFETY: test-owned ring; indices are accessed atomically as the writer does.
        let (out, prod, cons) = unsafe {
            (
                addr_of_mut!((*ring).output).cast::<u8>(),
                AtomicU32::from_ptr(addr_of_mut!((*ring).out_prod)),
                AtomicU32::from_ptr(addr_of_mut!((*ring).out_cons)),
            )
        };
        let end = prod.load(Ordering::Acquire);
        let mut c = cons.load(Ordering::Relaxed);
        while c != end {
            // SAFETY: index reduced modulo the buffer size.
            sink.push(unsafe { out.add((c % OUT_SIZE) as usize).read_volatile() });
            c = c.wrapping_add(1);
        }
        cons.store(c, Ordering::Release);
    }

    #[test]
    fn writes_wrap_and_notify_when_full() {
        let mut ring = new_ring();
        // Start near the u32 wrap to exercise index overflow too.
        ring.out_prod = u32::MAX - 10;
        ring.out_cons = u32::MAX - 10;
        let rp: *mut ConsoleRing = &mut *ring;
        let msg: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut sink = Vec::new();
        let mut notifies = 0;
        // SAFETY: test-owned ring.
        let r = unsafe {
            ring_write(rp, &msg, &mut || {
                notifies += 1;
                drain(rp, &mut sink);
            })
        };
        assert_eq!(r, Ok(()));
        drain(rp, &mut sink);
        assert_eq!(sink, msg);
        assert_eq!(notifies, 2); // 5000 bytes through a 2048-byte ring
    }

    #[test]
    fn detects_hostile_and_stalled_backends() {
        let mut ring = new_ring();
        ring.out_cons = 5000; // consumer ahead of producer: impossible
        let rp: *mut ConsoleRing = &mut *ring;
        // SAFETY: test-owned ring.
        let r = unsafe { ring_write(rp, b"x", &mut || {}) };
        assert_eq!(r, Err((0, RingError::Broken)));

        let mut ring = new_ring();
        let rp: *mut ConsoleRing = &mut *ring;
        let msg = [b'y'; 3000];
        // SAFETY: test-owned ring; the "backend" never consumes.
        let r = unsafe { ring_write(rp, &msg, &mut || {}) };
        assert_eq!(r, Err((OUT_SIZE as usize, RingError::Stalled)));
    }
}
