//! The devices driven through a [`PortBus`] the way a polling guest driver drives them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A sink the test can read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A file or directory under the temp dir, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn path(tag: &str) -> Temp {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Temp(std::env::temp_dir().join(format!("hv-devices-{}-{n}-{tag}", std::process::id())))
    }

    /// A sparse image of `sectors` sectors whose sector `i` starts with `i` as a u64.
    fn image(tag: &str, sectors: u64) -> Temp {
        let t = Temp::path(tag);
        let f = fs::File::create(&t.0).unwrap();
        f.set_len(sectors * 512).unwrap();
        use std::os::unix::fs::FileExt;
        for i in 0..sectors.min(64) {
            f.write_all_at(&i.to_le_bytes(), i * 512).unwrap();
        }
        t
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0).or_else(|_| fs::remove_dir(&self.0));
    }
}

const STATUS: u16 = 0x1f7;
const DATA: u16 = 0x1f0;

/// A polling ATA PIO driver over the bus.
struct Driver {
    bus: PortBus,
}

impl Driver {
    fn new(path: &Path, read_only: bool) -> Driver {
        let mut bus = PortBus::new();
        bus.add(Box::new(AtaDisk::open(path, read_only).unwrap()))
            .unwrap();
        Driver { bus }
    }

    fn outb(&mut self, port: u16, v: u8) {
        self.bus.out(port, 1, &[v]).unwrap();
    }

    fn inb(&mut self, port: u16) -> u8 {
        let mut b = [0];
        self.bus.input(port, 1, &mut b).unwrap();
        b[0]
    }

    /// Polls status until BSY clears, as a driver does; returns it.
    fn wait(&mut self) -> u8 {
        for _ in 0..1000 {
            let s = self.inb(STATUS);
            if s & 0x80 == 0 {
                return s;
            }
        }
        panic!("BSY stuck");
    }

    fn lba28(&mut self, cmd: u8, lba: u32, count: u8) -> u8 {
        self.outb(0x1f6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
        self.outb(0x1f2, count);
        self.outb(0x1f3, lba as u8);
        self.outb(0x1f4, (lba >> 8) as u8);
        self.outb(0x1f5, (lba >> 16) as u8);
        self.outb(STATUS, cmd);
        self.wait()
    }

    fn lba48(&mut self, cmd: u8, lba: u64, count: u16) -> u8 {
        let l = lba.to_le_bytes();
        let c = count.to_le_bytes();
        self.outb(0x1f6, 0x40);
        // High-order bytes first, into the same registers.
        self.outb(0x1f2, c[1]);
        self.outb(0x1f3, l[3]);
        self.outb(0x1f4, l[4]);
        self.outb(0x1f5, l[5]);
        self.outb(0x1f2, c[0]);
        self.outb(0x1f3, l[0]);
        self.outb(0x1f4, l[1]);
        self.outb(0x1f5, l[2]);
        self.outb(STATUS, cmd);
        self.wait()
    }

    /// Reads `words` words one `in ax, dx` at a time.
    fn read_words(&mut self, words: usize) -> Vec<u8> {
        let mut v = vec![0; words * 2];
        for w in v.chunks_mut(2) {
            self.bus.input(DATA, 2, w).unwrap();
        }
        v
    }

    /// Reads `words` words with `rep insw` batches of up to `batch` words.
    fn insw(&mut self, words: usize, batch: usize) -> Vec<u8> {
        let mut v = vec![0; words * 2];
        for chunk in v.chunks_mut(batch * 2) {
            self.bus.input(DATA, 2, chunk).unwrap();
        }
        v
    }

    fn write_words(&mut self, data: &[u8]) {
        for w in data.chunks(2) {
            self.bus.out(DATA, 2, w).unwrap();
        }
    }

    fn outsw(&mut self, data: &[u8], batch: usize) {
        for chunk in data.chunks(batch * 2) {
            self.bus.out(DATA, 2, chunk).unwrap();
        }
    }

    /// A PIO read of `count` sectors: per sector, wait for DRQ, then 256 words.
    fn read_sectors(&mut self, status: u8, count: usize, string: bool) -> Vec<u8> {
        assert_eq!(status & 0x09, 0x08, "DRQ without ERR, status {status:#x}");
        let mut out = Vec::new();
        for _ in 0..count {
            let s = self.wait();
            assert_eq!(s & 0x89, 0x08, "status {s:#x}");
            out.extend(if string {
                self.insw(256, 256)
            } else {
                self.read_words(256)
            });
        }
        assert_eq!(self.wait() & 0x09, 0, "DRQ clear at the end");
        out
    }

    fn write_sectors(&mut self, status: u8, data: &[u8], string: bool) {
        assert_eq!(status & 0x09, 0x08, "DRQ without ERR, status {status:#x}");
        for sector in data.chunks(512) {
            let s = self.wait();
            assert_eq!(s & 0x89, 0x08, "status {s:#x}");
            if string {
                self.outsw(sector, 256);
            } else {
                self.write_words(sector);
            }
        }
        let s = self.wait();
        assert_eq!(s & 0x29, 0, "no DRQ, DF or ERR at the end: {s:#x}");
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn word(d: &[u8], w: usize) -> u16 {
    u16::from_le_bytes([d[2 * w], d[2 * w + 1]])
}

fn ata_string(d: &[u8], first: usize, len: usize) -> String {
    (first..first + len / 2)
        .flat_map(|w| word(d, w).to_be_bytes())
        .map(char::from)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// UART.

fn uart_bus() -> (PortBus, Sink, UartInput) {
    let sink = Sink::default();
    let uart = Uart16550::new(Box::new(sink.clone()));
    let input = uart.input();
    let mut bus = PortBus::new();
    bus.add(Box::new(uart)).unwrap();
    (bus, sink, input)
}

fn inb(bus: &mut PortBus, port: u16) -> u8 {
    let mut b = [0];
    bus.input(port, 1, &mut b).unwrap();
    b[0]
}

#[test]
fn uart_ports() {
    let (bus, _, _) = uart_bus();
    assert_eq!(bus.ports(), (0x3f8..=0x3ff).collect::<Vec<_>>());
    assert!(bus.claims(0x3fd) && !bus.claims(0x3f7));
}

#[test]
fn uart_output_reaches_the_sink() {
    let (mut bus, sink, _) = uart_bus();
    for &b in b"hello, " {
        // A polling driver: wait for THRE, then write THR.
        assert_ne!(inb(&mut bus, 0x3fd) & 0x20, 0);
        bus.out(0x3f8, 1, &[b]).unwrap();
    }
    // `rep outsb`: several items to the same port.
    bus.out(0x3f8, 1, b"world\n").unwrap();
    assert_eq!(sink.text(), "hello, world\n");
}

#[test]
fn uart_registers() {
    let (mut bus, sink, _) = uart_bus();
    assert_eq!(inb(&mut bus, 0x3fd), 0x60, "LSR: THRE | TEMT, no data");
    assert_eq!(inb(&mut bus, 0x3fa), 0x01, "IIR: no interrupt pending");
    assert_eq!(inb(&mut bus, 0x3f8), 0, "empty receiver reads 0");

    // Divisor latch: 38400 baud (divisor 3), 8N1.
    bus.out(0x3fb, 1, &[0x83]).unwrap();
    bus.out(0x3f8, 1, &[0x03]).unwrap();
    bus.out(0x3f9, 1, &[0x00]).unwrap();
    assert_eq!((inb(&mut bus, 0x3f8), inb(&mut bus, 0x3f9)), (0x03, 0x00));
    assert_eq!(inb(&mut bus, 0x3fb), 0x83);
    bus.out(0x3fb, 1, &[0x03]).unwrap();
    assert_eq!(sink.text(), "", "DLL writes are not output");
    assert_eq!(inb(&mut bus, 0x3f9), 0, "IER untouched by DLM");

    // Scratch, IER (4 bits), MCR (5 bits).
    bus.out(0x3ff, 1, &[0x5a]).unwrap();
    assert_eq!(inb(&mut bus, 0x3ff), 0x5a);
    bus.out(0x3f9, 1, &[0xff]).unwrap();
    assert_eq!(inb(&mut bus, 0x3f9), 0x0f);
    bus.out(0x3f9, 1, &[0]).unwrap();
    bus.out(0x3fc, 1, &[0xff]).unwrap();
    assert_eq!(inb(&mut bus, 0x3fc), 0x1f);
    bus.out(0x3fc, 1, &[0x0b]).unwrap();
    assert_eq!(inb(&mut bus, 0x3fe), 0xb0, "MSR: DCD | DSR | CTS");

    // FIFOs on: IIR bits 7:6.
    bus.out(0x3fa, 1, &[0xc7]).unwrap();
    assert_eq!(inb(&mut bus, 0x3fa), 0xc1);

    // A 16-bit out at the base reaches THR and IER.
    bus.out(0x3f8, 2, &[b'x', 0x00]).unwrap();
    assert_eq!(sink.text(), "x");
}

#[test]
fn uart_iir_follows_ier() {
    let (mut bus, _, input) = uart_bus();
    bus.out(0x3f9, 1, &[0x02]).unwrap(); // THRE interrupt
    assert_eq!(inb(&mut bus, 0x3fa), 0x02, "THR empty");
    assert_eq!(inb(&mut bus, 0x3fa), 0x01, "cleared by reading IIR");
    bus.out(0x3f8, 1, b"a").unwrap();
    assert_eq!(inb(&mut bus, 0x3fa), 0x02, "raised again by a THR write");
    bus.out(0x3f9, 1, &[0x03]).unwrap();
    input.push(b"k");
    assert_eq!(inb(&mut bus, 0x3fa), 0x04, "received data outranks THRE");
    assert_eq!(inb(&mut bus, 0x3f8), b'k');
    bus.out(0x3f9, 1, &[0]).unwrap();
    assert_eq!(inb(&mut bus, 0x3fa), 0x01);
}

#[test]
fn uart_input_and_loopback() {
    let (mut bus, sink, input) = uart_bus();
    assert_eq!(input.push(b"ok"), 2);
    assert_eq!(inb(&mut bus, 0x3fd), 0x61, "DR set");
    assert_eq!(inb(&mut bus, 0x3f8), b'o');
    assert_eq!(inb(&mut bus, 0x3f8), b'k');
    assert_eq!(inb(&mut bus, 0x3fd) & 1, 0);
    assert_eq!(input.push(&[0; 5000]), 4096, "bounded queue");
    bus.out(0x3fa, 1, &[0x03]).unwrap(); // FIFO enable + clear RX
    assert_eq!(inb(&mut bus, 0x3fd) & 1, 0);

    // Linux's 8250 probe: loopback with OUT2 | RTS shows DCD | CTS.
    bus.out(0x3fc, 1, &[0x1a]).unwrap();
    assert_eq!(inb(&mut bus, 0x3fe) & 0xf0, 0x90);
    bus.out(0x3f8, 1, b"L").unwrap();
    assert_eq!(inb(&mut bus, 0x3fd) & 1, 1);
    assert_eq!(inb(&mut bus, 0x3f8), b'L');
    assert_eq!(sink.text(), "", "loopback output stays inside");
}

// ---------------------------------------------------------------------------------------------
// ATA.

#[test]
fn ata_open_errors_are_typed() {
    let missing = Temp::path("missing");
    assert!(matches!(
        AtaDisk::open(&missing.0, false),
        Err(DiskError::NotFound { .. })
    ));
    let dir = Temp::path("dir");
    fs::create_dir(&dir.0).unwrap();
    assert!(matches!(
        AtaDisk::open(&dir.0, true),
        Err(DiskError::IsDirectory { .. })
    ));
    let odd = Temp::path("odd");
    fs::write(&odd.0, [0u8; 513]).unwrap();
    let e = AtaDisk::open(&odd.0, false).unwrap_err();
    assert!(matches!(e, DiskError::BadSize { size: 513, .. }), "{e}");
    assert!(e.to_string().contains("513"), "{e}");
    let empty = Temp::path("empty");
    fs::write(&empty.0, []).unwrap();
    assert!(matches!(
        AtaDisk::open(&empty.0, false),
        Err(DiskError::BadSize { size: 0, .. })
    ));
    assert!(matches!(
        AtaDisk::open(Path::new("/dev/null"), true),
        Err(DiskError::NotRegularFile { .. })
    ));
    let img = Temp::image("ok", 8);
    let disk = AtaDisk::open(&img.0, true).unwrap();
    assert_eq!((disk.sectors(), disk.read_only()), (8, true));
}

#[test]
fn ata_signature_and_identify() {
    let sectors = 1000;
    let img = Temp::image("identify", sectors);
    let mut d = Driver::new(&img.0, false);
    assert_eq!(
        d.bus.ports(),
        vec![0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6]
    );
    assert_eq!(d.inb(STATUS), 0x50, "DRDY | DSC");
    let sig: Vec<u8> = (0x1f2..=0x1f5).map(|p| d.inb(p)).collect();
    assert_eq!(sig, [1, 1, 0, 0], "ATA signature");

    d.outb(0x1f6, 0xa0);
    d.outb(STATUS, 0xec);
    let s = d.wait();
    assert_eq!(s, 0x58, "DRDY | DSC | DRQ");
    let id = d.read_words(256);
    assert_eq!(d.inb(STATUS), 0x50, "DRQ clear after 256 words");
    assert_eq!(word(&id, 0) & 0x8000, 0, "ATA device");
    assert_ne!(word(&id, 49) & 0x0200, 0, "LBA");
    assert_eq!(word(&id, 83) & 0xc000, 0x4000, "word 83 valid");
    assert_eq!(
        word(&id, 83) & 0x3400,
        0x3400,
        "LBA48, FLUSH CACHE, FLUSH CACHE EXT"
    );
    assert_eq!(word(&id, 86) & 0x3400, 0x3400);
    let lba28 = u32::from(word(&id, 60)) | u32::from(word(&id, 61)) << 16;
    assert_eq!(u64::from(lba28), sectors);
    let lba48: u64 = (0..4)
        .map(|i| u64::from(word(&id, 100 + i)) << (16 * i))
        .sum();
    assert_eq!(lba48, sectors);
    assert_eq!(ata_string(&id, 27, 40), "HV EMULATED ATA DISK");
    assert_eq!(ata_string(&id, 10, 20), "HV-ATA-0001");
    assert_eq!(id[510], 0xa5);
    assert_eq!(
        id.iter().fold(0u8, |a, &b| a.wrapping_add(b)),
        0,
        "checksum"
    );

    // The same through `rep insw`, and with the data port read past the end.
    d.outb(STATUS, 0xec);
    assert_eq!(d.insw(256, 256), id);
    assert_eq!(d.read_words(1), [0xff, 0xff], "no DRQ: all ones");
}

#[test]
fn ata_lba28_write_then_read_back() {
    let img = Temp::image("lba28", 64);
    let mut d = Driver::new(&img.0, false);
    let data = pattern(7, 3 * 512);
    let s = d.lba28(0x30, 10, 3);
    d.write_sectors(s, &data, false);
    let s = d.lba28(0x20, 10, 3);
    assert_eq!(d.read_sectors(s, 3, false), data);
    // And it is in the image, at 10 * 512.
    let file = fs::read(&img.0).unwrap();
    assert_eq!(&file[10 * 512..13 * 512], &data[..]);
    // Neighbours untouched.
    assert_eq!(&file[9 * 512..9 * 512 + 8], &9u64.to_le_bytes());
    assert_eq!(&file[13 * 512..13 * 512 + 8], &13u64.to_le_bytes());

    // The retry variants (0x21, 0x31) and count 0 = 256 sectors.
    let img = Temp::image("lba28-256", 300);
    let mut d = Driver::new(&img.0, false);
    let data = pattern(3, 256 * 512);
    let s = d.lba28(0x31, 1, 0);
    d.write_sectors(s, &data, true);
    let s = d.lba28(0x21, 1, 0);
    assert_eq!(d.read_sectors(s, 256, true), data);
}

#[test]
fn ata_lba48_write_then_read_back() {
    let img = Temp::image("lba48", 4096);
    let mut d = Driver::new(&img.0, false);
    let data = pattern(11, 5 * 512);
    let s = d.lba48(0x34, 2000, 5);
    d.write_sectors(s, &data, false);
    let s = d.lba48(0x24, 2000, 5);
    assert_eq!(d.read_sectors(s, 5, true), data);

    // HOB reads back the high-order bytes written first.
    d.lba48(0xea, 0x0000_0302_0100, 0x0405);
    d.outb(0x3f6, 0x80);
    let prev: Vec<u8> = (0x1f2..=0x1f5).map(|p| d.inb(p)).collect();
    d.outb(0x3f6, 0x00);
    let cur: Vec<u8> = (0x1f2..=0x1f5).map(|p| d.inb(p)).collect();
    assert_eq!((prev, cur), (vec![4, 3, 0, 0], vec![5, 0, 1, 2]));

    // Past LBA28: an LBA that needs the high-order bytes (a sparse 128 GiB image).
    let big_lba = (1u64 << 28) + 3;
    let big = Temp::path("lba48-big");
    let f = fs::File::create(&big.0).unwrap();
    if f.set_len((big_lba + 16) * 512).is_err() {
        println!("ata_lba48: no sparse 128 GiB file here; skipping the high LBA");
        return;
    }
    drop(f);
    let mut d = Driver::new(&big.0, false);
    let data = pattern(99, 2 * 512);
    let s = d.lba48(0x34, big_lba, 2);
    d.write_sectors(s, &data, true);
    let s = d.lba48(0x24, big_lba, 2);
    assert_eq!(d.read_sectors(s, 2, false), data);
    // LBA28 addressing of the same sector number wraps into the low 28 bits: not the same.
    let s = d.lba28(0x20, 3, 1);
    assert_ne!(d.read_sectors(s, 1, false), data[..512]);
}

#[test]
fn ata_string_io_streams_across_sectors() {
    let img = Temp::image("string", 64);
    let mut d = Driver::new(&img.0, false);
    let data = pattern(5, 8 * 512);
    // Odd batch sizes: items straddle sector boundaries within one exit.
    let s = d.lba28(0x30, 20, 8);
    assert_eq!(s & 0x09, 0x08);
    d.outsw(&data, 300);
    assert_eq!(d.wait() & 0x09, 0);
    let s = d.lba28(0x20, 20, 8);
    assert_eq!(s & 0x09, 0x08);
    // As KVM batches `rep insw`: 512 words (two sectors) per exit.
    assert_eq!(d.insw(8 * 256, 512), data);
    assert_eq!(d.wait() & 0x09, 0);
    // 32-bit PIO (`insd`) and byte access on the data port move as many bytes.
    let s = d.lba28(0x20, 20, 1);
    assert_eq!(s & 0x09, 0x08);
    let mut v = vec![0u8; 512];
    d.bus.input(DATA, 4, &mut v[..256]).unwrap();
    d.bus.input(DATA, 1, &mut v[256..257]).unwrap();
    d.bus.input(DATA, 1, &mut v[257..]).unwrap();
    assert_eq!(v, data[..512]);
}

#[test]
fn ata_flush() {
    let img = Temp::image("flush", 8);
    let mut d = Driver::new(&img.0, false);
    assert_eq!(d.lba28(0xe7, 0, 0), 0x50);
    assert_eq!(d.lba48(0xea, 0, 0), 0x50);
    let mut ro = Driver::new(&img.0, true);
    assert_eq!(ro.lba28(0xe7, 0, 0), 0x50, "nothing to flush, no error");
}

#[test]
fn ata_errors() {
    let img = Temp::image("errors", 16);
    let mut d = Driver::new(&img.0, false);
    // Out of range, entirely or by the count.
    for (cmd, lba, count) in [(0x20, 16, 1), (0x20, 15, 2), (0x30, 100, 1), (0x40, 16, 1)] {
        let s = d.lba28(cmd, lba, count);
        assert_eq!(s, 0x51, "ERR, no DRQ for {cmd:#x} {lba}+{count}");
        assert_eq!(d.inb(0x1f1), 0x10, "IDNF");
    }
    let s = d.lba48(0x24, 1 << 40, 1);
    assert_eq!((s, d.inb(0x1f1)), (0x51, 0x10));
    let s = d.lba48(0x24, 8, 0); // 0 = 65536 sectors
    assert_eq!((s, d.inb(0x1f1)), (0x51, 0x10));
    // Unknown commands (NOP included) abort.
    for cmd in [0x00, 0xff, 0xc8, 0xa1, 0x25] {
        let s = d.lba28(cmd, 0, 1);
        assert_eq!((s, d.inb(0x1f1)), (0x51, 0x04), "command {cmd:#x}");
    }
    // The next good command clears ERR.
    let s = d.lba28(0x20, 15, 1);
    assert_eq!(d.read_sectors(s, 1, false)[..8], 15u64.to_le_bytes());
    assert_eq!(d.inb(0x1f1), 0);
    // Verify reads nothing.
    assert_eq!(d.lba28(0x40, 0, 16), 0x50);
}

#[test]
fn ata_read_only_refuses_writes() {
    let img = Temp::image("ro", 16);
    let before = fs::read(&img.0).unwrap();
    let mut d = Driver::new(&img.0, true);
    for s in [d.lba28(0x30, 1, 1), d.lba48(0x34, 1, 1)] {
        assert_eq!(s, 0x51, "ERR, no DRQ");
        assert_eq!(d.inb(0x1f1), 0x04, "ABRT");
    }
    d.write_words(&pattern(1, 512)); // ignored: no DRQ
    let s = d.lba28(0x20, 1, 1);
    assert_eq!(d.read_sectors(s, 1, true)[..8], 1u64.to_le_bytes());
    assert_eq!(fs::read(&img.0).unwrap(), before);
}

#[test]
fn ata_reset_slave_and_chs() {
    let img = Temp::image("reset", 2048);
    let mut d = Driver::new(&img.0, false);
    // Abandon a read half way with SRST.
    let s = d.lba28(0x20, 0, 4);
    assert_eq!(s & 0x08, 0x08);
    d.read_words(10);
    d.outb(0x3f6, 0x04 | 0x02);
    assert_eq!(d.inb(0x3f6), 0x80, "BSY while SRST is held");
    d.outb(0x3f6, 0x02);
    assert_eq!(d.wait(), 0x50);
    assert_eq!(d.inb(0x1f1), 0x01, "diagnostic passed");
    assert_eq!(d.read_words(1), [0xff, 0xff]);
    // The slave is absent.
    d.outb(0x1f6, 0xb0);
    assert_eq!(d.inb(STATUS), 0);
    assert_eq!(d.inb(0x3f6), 0);
    d.outb(STATUS, 0xec);
    d.outb(0x1f6, 0xa0);
    assert_eq!(d.inb(STATUS), 0x50, "the command went nowhere");
    // CHS: cylinder 1, head 2, sector 3 = (1 * 16 + 2) * 63 + 2.
    d.outb(0x1f6, 0xa2);
    d.outb(0x1f2, 1);
    d.outb(0x1f3, 3);
    d.outb(0x1f4, 1);
    d.outb(0x1f5, 0);
    d.outb(STATUS, 0x20);
    let s = d.wait();
    let lba = (16 + 2) * 63 + 2;
    let sector = d.read_sectors(s, 1, false);
    let file = fs::read(&img.0).unwrap();
    assert_eq!(sector, file[lba * 512..(lba + 1) * 512]);
    // Sector 0 does not exist in CHS.
    d.outb(0x1f3, 0);
    d.outb(STATUS, 0x20);
    assert_eq!((d.wait(), d.inb(0x1f1)), (0x51, 0x10));
}

#[test]
fn ata_interrupt_state_honours_nien() {
    let img = Temp::image("nien", 8);
    let mut disk = AtaDisk::open(&img.0, false).unwrap();
    let pending = |disk: &AtaDisk| disk.interrupt_pending();
    disk.write(0x1f7, 1, &[0xe7]);
    assert!(pending(&disk));
    let mut b = [0];
    disk.read(0x3f6, 1, &mut b);
    assert!(pending(&disk), "alternate status leaves INTRQ");
    disk.read(0x1f7, 1, &mut b);
    assert!(!pending(&disk), "status read clears it");
    disk.write(0x3f6, 1, &[0x02]);
    disk.write(0x1f7, 1, &[0xe7]);
    assert!(!pending(&disk), "masked by nIEN");
}

// ---------------------------------------------------------------------------------------------
// The bus.

#[test]
fn bus_routing_and_errors() {
    let img = Temp::image("bus", 8);
    let (mut bus, sink, _) = uart_bus();
    bus.add(Box::new(AtaDisk::open(&img.0, false).unwrap()))
        .unwrap();
    let e = bus
        .add(Box::new(Uart16550::new(Box::new(Sink::default()))))
        .unwrap_err();
    assert!(
        matches!(e, DeviceError::PortConflict { port: 0x3f8, .. }),
        "{e}"
    );
    assert_eq!(bus.ports().len(), 17);
    let mut b = [0u8; 4];
    assert!(matches!(
        bus.input(0x80, 4, &mut b),
        Err(DeviceError::NoDevice { port: 0x80 })
    ));
    assert_eq!(b, [0xff; 4]);
    assert!(matches!(
        bus.out(0x3f8, 3, b"abc"),
        Err(DeviceError::BadAccess { .. })
    ));
    assert!(matches!(
        bus.input(0x3f8, 2, &mut b[..3]),
        Err(DeviceError::BadAccess { .. })
    ));
    assert_eq!(sink.text(), "");
    assert!(format!("{bus:?}").contains("ata"));
}

#[derive(Debug, Clone)]
enum Op {
    Out(u16, u8, Vec<u8>),
    In(u16, u8, usize),
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => 0x1f0u16..=0x1f7,
        1 => Just(0x3f6u16),
        2 => 0x3f8u16..=0x3ff,
        1 => any::<u16>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // The first byte is often a command, to reach the data phases; the rest is arbitrary (long
    // enough to cross sectors, as string I/O does).
    let first = prop_oneof![
        any::<u8>(),
        prop::sample::select(vec![0x20u8, 0x24, 0x30, 0x34, 0xec, 0xe7, 0xea, 0x90, 0x04]),
    ];
    let rest = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..4),
        1 => prop::collection::vec(any::<u8>(), 0..1100),
    ];
    let io_len = prop_oneof![4 => 0usize..5, 1 => 0usize..1100];
    let size = || prop_oneof![4 => prop::sample::select(vec![1u8, 2, 4]), 1 => 0u8..=5];
    prop_oneof![
        (port(), size(), first, rest).prop_map(|(p, s, f, mut d)| {
            d.insert(0, f);
            Op::Out(p, s, d)
        }),
        (port(), size(), io_len).prop_map(|(p, s, n)| Op::In(p, s, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever a guest does through the ports, nothing panics and reads are always answered.
    #[test]
    fn hostile_port_io_never_panics(ops in prop::collection::vec(op(), 1..300), ro in any::<bool>()) {
        let img = Temp::image("hostile", 8);
        let (mut bus, _, input) = uart_bus();
        bus.add(Box::new(AtaDisk::open(&img.0, ro).unwrap())).unwrap();
        input.push(b"some input");
        for op in ops {
            match op {
                Op::Out(p, s, mut d) => {
                    // Mostly whole items, as KVM delivers them.
                    if s != 0 && d.len() > 4 {
                        d.truncate(d.len() / usize::from(s) * usize::from(s));
                    }
                    let _ = bus.out(p, s, &d);
                }
                Op::In(p, s, n) => {
                    let n = if s != 0 && n > 4 { n / usize::from(s) * usize::from(s) } else { n };
                    let mut buf = vec![0x5a; n];
                    let _ = bus.input(p, s, &mut buf);
                }
            }
        }
        // The disk keeps its size whatever was written.
        prop_assert_eq!(fs::metadata(&img.0).unwrap().len(), 8 * 512);
    }
}
