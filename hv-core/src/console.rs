//! The console backend: drains a domain's console ring (and its early `console_write`s) to an
//! output sink, normally `hv`'s stdout. The backend keeps its own consumer index and trusts
//! nothing the guest writes: a producer index that runs more than the buffer ahead disconnects
//! the ring.

use std::io::Write;
use std::mem::offset_of;

use hypercall_abi::console::{ring_used, ConsoleRing, OUT_SIZE};

use crate::memory::GuestRam;

/// Where console output goes.
pub type Sink = Box<dyn Write + Send>;

/// The console backend of one domain.
pub struct Console {
    ring_gpa: u64,
    out_cons: u32,
    disconnected: bool,
    sink: Sink,
}

impl Console {
    /// A backend for the ring at `ring_gpa`, writing to `sink`.
    pub fn new(ring_gpa: u64, sink: Sink) -> Console {
        Console {
            ring_gpa,
            out_cons: 0,
            disconnected: false,
            sink,
        }
    }

    /// Writes bytes from an early `console_write`.
    pub fn write_early(&mut self, bytes: &[u8]) {
        let _ = self.sink.write_all(bytes);
        let _ = self.sink.flush();
    }

    /// Has the backend stopped serving the ring because of a bad index?
    pub fn disconnected(&self) -> bool {
        self.disconnected
    }

    /// Copies everything the guest produced in the ring to the sink. Returns the bytes moved.
    pub fn drain(&mut self, ram: &GuestRam) -> usize {
        if self.disconnected {
            return 0;
        }
        let prod_gpa = self.ring_gpa + offset_of!(ConsoleRing, out_prod) as u64;
        let Ok(prod) = ram.atomic_u32_load(prod_gpa) else {
            return 0;
        };
        let Some(used) = ring_used(self.out_cons, prod, OUT_SIZE) else {
            self.disconnected = true;
            eprintln!(
                "hv: console: guest producer index {prod} is {} bytes past consumer {}; console disconnected",
                prod.wrapping_sub(self.out_cons),
                self.out_cons
            );
            return 0;
        };
        let out_gpa = self.ring_gpa + offset_of!(ConsoleRing, output) as u64;
        let mut buf = [0u8; OUT_SIZE as usize];
        let start = self.out_cons % OUT_SIZE;
        let first = used.min(OUT_SIZE - start);
        let ok = ram
            .read(out_gpa + start as u64, &mut buf[..first as usize])
            .and_then(|_| ram.read(out_gpa, &mut buf[first as usize..used as usize]));
        if ok.is_err() {
            return 0;
        }
        let _ = self.sink.write_all(&buf[..used as usize]);
        let _ = self.sink.flush();
        self.out_cons = prod;
        let cons_gpa = self.ring_gpa + offset_of!(ConsoleRing, out_cons) as u64;
        let _ = ram.atomic_u32_store(cons_gpa, prod);
        used as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drains_with_wrap_and_disconnects_on_hostile_index() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let ring = 0x3000;
        let cap = Captured::default();
        let mut c = Console::new(ring, Box::new(cap.clone()));
        let out = ring + 1024;
        let prod = ring + offset_of!(ConsoleRing, out_prod) as u64;
        // Produce 2040 bytes, drain, then 20 more that wrap.
        ram.write(out, &[b'a'; 2040]).unwrap();
        ram.atomic_u32_store(prod, 2040).unwrap();
        assert_eq!(c.drain(&ram), 2040);
        ram.write(out + 2040, b"01234567").unwrap();
        ram.write(out, b"89abcdefghij").unwrap();
        ram.atomic_u32_store(prod, 2060).unwrap();
        assert_eq!(c.drain(&ram), 20);
        assert!(cap.0.lock().unwrap().ends_with(b"0123456789abcdefghij"));
        // A producer index far ahead disconnects.
        ram.atomic_u32_store(prod, 2060 + OUT_SIZE + 1).unwrap();
        assert_eq!(c.drain(&ram), 0);
        assert!(c.disconnected());
    }
}
