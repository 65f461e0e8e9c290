//! The block benchmark guest: the same disk workloads over the paravirtual block device (the
//! `pv-drivers` frontend) and over an emulated ATA disk driven by port I/O, and console output
//! over the PV console and over an emulated 16550 UART. `cargo xtask bench block` runs it.
//!
//! Command line (words `key=value`):
//!
//! - `path=pv|ata|uart|console` (default `pv`): what to measure. `ata` needs the hv's emulated
//!   ATA disk (primary channel, ports `0x1F0..=0x1F7` and `0x3F6`), `uart` its 16550 on
//!   `0x3F8`: without them the first port access faults.
//! - `workload=NAME|all|none` (default `all`): `seqread-64k`, `seqread-1m`, `seqwrite-64k`,
//!   `seqwrite-1m`, `randread-4k-qd1`, `randread-4k-qd32` (PV only), `console-64k` (paths
//!   `uart` and `console`). `none` connects and stops: the baseline for exit counts.
//! - `bytes=N` (default: the whole disk, at most 64 MiB): bytes per sequential workload.
//! - `ops=N` (default 20000): requests per random workload.
//! - `test=durability|write-pattern|check-pattern|readonly|discard`: a test mode instead of
//!   the benchmark (used by `hv-core/tests/block.rs`), with `seed=N` and `bytes=N`.
//!
//! Each workload prints one line for people (MB/s, IOPS, pvclock time) and one for programs:
//! `blkbench <workload> <path> bytes=… ns=… requests=…` (plus `ring=…`, ring requests, on the
//! PV path). The guest exits with 0, or 1 if a workload failed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use core::arch::asm;

use guest_sdk::time::{self, NS_PER_MS};
use guest_sdk::{print, println, StartInfo};
use pv_drivers::frontend::blk::{BlkError, BlockDevice};

guest_sdk::entry!(main);

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const SECTOR: usize = 512;

/// The command line's `key=value` words.
struct Args<'a>(&'a str);

impl<'a> Args<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.split_whitespace().find_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    fn num(&self, key: &str, default: u64) -> u64 {
        self.get(key).and_then(parse_num).unwrap_or(default)
    }
}

/// A number with an optional K/M/G suffix (powers of 1024).
fn parse_num(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// xorshift64*: a small, fast pseudo-random generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn main(si: &StartInfo) {
    let args = Args(si.cmdline());
    if let Some(t) = args.get("test") {
        let ok = tests::run(t, &args);
        guest_sdk::exit(if ok { 0 } else { 1 });
    }
    let path = args.get("path").unwrap_or("pv");
    let workload = args.get("workload").unwrap_or("all");
    let ok = match path {
        "pv" => pv::run(workload, &args),
        "ata" => ata::run(workload, &args),
        "uart" | "console" => console_bench(path, workload),
        other => {
            println!("blkbench: unknown path {other:?} (pv, ata, uart, console)");
            false
        }
    };
    println!("blkbench: done");
    guest_sdk::exit(if ok { 0 } else { 1 });
}

/// Prints a workload's result, for people and for `cargo xtask bench block`.
fn report(workload: &str, path: &str, bytes: u64, ns: u64, requests: u64, extra: &str) {
    let ns = ns.max(1);
    // Thousandths of MB/s (10^6 bytes) and whole IOPS.
    let mbs = (u128::from(bytes) * 1_000_000 / u128::from(ns)) as u64;
    let iops = (u128::from(requests) * 1_000_000_000 / u128::from(ns)) as u64;
    println!(
        "{path} {workload}: {} KiB in {}.{:03} ms (pvclock), {} requests: {}.{:03} MB/s, {iops} IOPS",
        bytes / 1024,
        ns / NS_PER_MS,
        ns % NS_PER_MS / 1000,
        requests,
        mbs / 1000,
        mbs % 1000
    );
    println!("blkbench {workload} {path} bytes={bytes} ns={ns} requests={requests}{extra}");
}

fn wanted(workload: &str, name: &str) -> bool {
    workload == "all" || workload == name
}

/// The paravirtual path.
mod pv {
    use super::*;

    /// Reads or writes `(offset, len)` chunks with up to `qd` requests in flight; returns the
    /// ring requests made. Reads copy their data into `buf`; writes take it from `buf`.
    pub fn stream(
        dev: &mut BlockDevice,
        write: bool,
        chunks: &mut dyn Iterator<Item = (u64, usize)>,
        qd: u32,
        buf: &mut [u8],
    ) -> Result<u64, BlkError> {
        let mut in_flight = 0u32;
        let mut ring = 0u64;
        let mut held: Option<(u64, usize)> = None;
        let mut failed: Option<BlkError> = None;
        loop {
            while in_flight < qd && failed.is_none() {
                let Some((off, len)) = held.take().or_else(|| chunks.next()) else {
                    break;
                };
                let r = if write {
                    dev.submit_write(off, &buf[..len])
                } else {
                    dev.submit_read(off, len)
                };
                match r {
                    Ok(_) => {
                        in_flight += 1;
                        ring += 1;
                    }
                    Err(BlkError::Busy) if in_flight > 0 => {
                        held = Some((off, len));
                        break;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if in_flight == 0 {
                break;
            }
            dev.wait()?;
            dev.complete(|c| {
                in_flight -= 1;
                match c.status() {
                    Ok(()) => {
                        if !write {
                            c.copy_to(buf);
                        }
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            })?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(ring),
        }
    }

    /// `total` bytes in `req`-byte requests, each cut into equal ring requests of at most
    /// `max` bytes (whole pages) when the device cannot take it in one.
    fn seq_chunks(total: u64, req: usize, max: usize) -> impl Iterator<Item = (u64, usize)> {
        let pieces = req.div_ceil(max);
        let piece = (req / pieces).div_ceil(4096) * 4096;
        (0..total / req as u64).flat_map(move |i| {
            let start = i * req as u64;
            (0..pieces).filter_map(move |p| {
                let at = p * piece;
                (at < req).then(|| (start + at as u64, piece.min(req - at)))
            })
        })
    }

    pub fn run(workload: &str, args: &Args<'_>) -> bool {
        let t0 = time::monotonic_ns();
        let mut dev = match BlockDevice::open(0) {
            Ok(d) => d,
            Err(e) => {
                println!("blkbench: pv: cannot open vbd 0: {e}");
                return false;
            }
        };
        println!(
            "blkbench: pv: vbd 0: {} MiB, ring {} slots, {} pool pages, largest request {} KiB, connected in {} us",
            dev.size_bytes() >> 20,
            dev.ring_size(),
            dev.pool_pages(),
            dev.max_request_bytes() / KIB,
            (time::monotonic_ns() - t0) / 1000
        );
        if workload == "none" {
            return true;
        }
        let disk = dev.size_bytes();
        let total = args.num("bytes", 64 * MIB as u64).min(disk);
        let ops = args.num("ops", 20_000);
        // Ring requests small enough that two fit in the pool at once, so the guest's copy
        // and notification overlap the backend's I/O.
        let max = dev
            .max_request_bytes()
            .min(dev.pool_pages() / 2 * 4096)
            .max(4096);
        let mut buf = vec![0x5au8; MIB];
        let mut ok = true;
        let seq = [
            ("seqread-64k", false, 64 * KIB),
            ("seqread-1m", false, MIB),
            ("seqwrite-64k", true, 64 * KIB),
            ("seqwrite-1m", true, MIB),
        ];
        for (name, write, req) in seq {
            if !wanted(workload, name) {
                continue;
            }
            let total = total / req as u64 * req as u64;
            let before = dev.stats();
            let t = time::monotonic_ns();
            let qd = dev.ring_size();
            let r = stream(
                &mut dev,
                write,
                &mut seq_chunks(total, req, max),
                qd,
                &mut buf,
            );
            let ns = time::monotonic_ns() - t;
            ok &= finish(name, total, ns, total / req as u64, r, &dev, before);
        }
        for (name, qd) in [("randread-4k-qd1", 1), ("randread-4k-qd32", 32)] {
            if !wanted(workload, name) {
                continue;
            }
            let pages = disk / 4096;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ qd);
            let mut chunks = (0..ops).map(|_| (rng.next() % pages * 4096, 4096));
            let before = dev.stats();
            let t = time::monotonic_ns();
            let r = stream(&mut dev, false, &mut chunks, qd as u32, &mut buf);
            let ns = time::monotonic_ns() - t;
            ok &= finish(name, ops * 4096, ns, ops, r, &dev, before);
        }
        if let Err(e) = dev.close() {
            println!("blkbench: pv: close: {e}");
            ok = false;
        }
        ok
    }

    fn finish(
        name: &str,
        bytes: u64,
        ns: u64,
        requests: u64,
        r: Result<u64, BlkError>,
        dev: &BlockDevice,
        before: pv_drivers::frontend::blk::FrontStats,
    ) -> bool {
        match r {
            Ok(ring) => {
                let s = dev.stats();
                let extra = alloc::format!(
                    " ring={ring} notify={} block={}",
                    s.notifications - before.notifications,
                    s.blocks - before.blocks
                );
                report(name, "pv", bytes, ns, requests, &extra);
                true
            }
            Err(e) => {
                println!("blkbench {name} pv FAILED: {e}");
                false
            }
        }
    }
}

/// An ATA disk on the primary channel, driven by PIO with polling (no interrupts).
mod ata {
    use super::*;

    const DATA: u16 = 0x1f0;
    const ERROR: u16 = 0x1f1;
    const COUNT: u16 = 0x1f2;
    const LBA0: u16 = 0x1f3;
    const LBA1: u16 = 0x1f4;
    const LBA2: u16 = 0x1f5;
    const DEVICE: u16 = 0x1f6;
    const CMD: u16 = 0x1f7;
    const CTRL: u16 = 0x3f6;

    const BSY: u8 = 0x80;
    const DF: u8 = 0x20;
    const DRQ: u8 = 0x08;
    const ERR: u8 = 0x01;

    const IDENTIFY: u8 = 0xec;
    const READ_EXT: u8 = 0x24;
    const WRITE_EXT: u8 = 0x34;
    const FLUSH_EXT: u8 = 0xea;

    /// Most sectors one LBA48 command moves.
    const MAX_SECTORS: usize = 65536;

    /// `out dx, al`.
    ///
    /// # Safety
    ///
    /// `port` must be one the hv lets this guest access (its emulated devices), or the guest
    /// takes #GP; the devices touch no guest memory.
    unsafe fn outb(port: u16, v: u8) {
        // SAFETY: the caller's contract; `out` changes no register or memory of ours.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
        }
    }

    /// `in al, dx`.
    ///
    /// # Safety
    ///
    /// As for [`outb`].
    unsafe fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: the caller's contract; `in` only writes `al`.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    /// `rep insw`: `words` 16-bit items from `port` into `dst`.
    ///
    /// # Safety
    ///
    /// As for [`outb`]; `dst` must be valid for writes of `words * 2` bytes.
    unsafe fn insw(port: u16, dst: *mut u8, words: usize) {
        // SAFETY: the caller's contract; the direction flag is clear (Rust's ABI), so the
        // instruction writes exactly `dst .. dst + 2 * words`.
        unsafe {
            asm!("rep insw", in("dx") port, inout("rdi") dst => _, inout("rcx") words => _,
                 options(nostack, preserves_flags))
        }
    }

    /// `rep outsw`: `words` 16-bit items from `src` to `port`.
    ///
    /// # Safety
    ///
    /// As for [`outb`]; `src` must be valid for reads of `words * 2` bytes.
    unsafe fn outsw(port: u16, src: *const u8, words: usize) {
        // SAFETY: the caller's contract; the direction flag is clear, so the instruction reads
        // exactly `src .. src + 2 * words`.
        unsafe {
            asm!("rep outsw", in("dx") port, inout("rsi") src => _, inout("rcx") words => _,
                 options(nostack, preserves_flags, readonly))
        }
    }

    /// Why an ATA command failed.
    pub enum AtaError {
        /// The device set ERR (or DF); the error register.
        Device(u8),
        /// BSY never cleared.
        Timeout,
        /// No device answered (status 0 or all ones).
        Absent,
        /// A range beyond the disk, or a buffer that is not whole sectors.
        Range,
    }

    impl core::fmt::Display for AtaError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                AtaError::Device(e) => write!(f, "device error (error register {e:#04x})"),
                AtaError::Timeout => f.write_str("BSY never cleared"),
                AtaError::Absent => f.write_str("no device"),
                AtaError::Range => f.write_str("range beyond the disk or not whole sectors"),
            }
        }
    }

    /// The master device on the primary channel.
    pub struct Ata {
        pub sectors: u64,
    }

    // Every port access below is to the primary channel's registers, which the caller of
    // `Ata::probe` asked for (the hv was started with its emulated ATA disk).
    impl Ata {
        fn status() -> u8 {
            // SAFETY: an ATA register (see the impl's comment).
            unsafe { inb(CMD) }
        }

        /// Waits for BSY to clear; returns the status.
        fn not_busy() -> Result<u8, AtaError> {
            for _ in 0..10_000_000u32 {
                let s = Self::status();
                if s & BSY == 0 {
                    return Ok(s);
                }
                core::hint::spin_loop();
            }
            Err(AtaError::Timeout)
        }

        /// Waits for DRQ (data ready) or an error.
        fn data_ready() -> Result<(), AtaError> {
            let s = Self::not_busy()?;
            if s & (ERR | DF) != 0 {
                // SAFETY: an ATA register.
                return Err(AtaError::Device(unsafe { inb(ERROR) }));
            }
            if s & DRQ == 0 {
                return Err(AtaError::Device(0));
            }
            Ok(())
        }

        fn done() -> Result<(), AtaError> {
            let s = Self::not_busy()?;
            if s & (ERR | DF) != 0 {
                // SAFETY: an ATA register.
                return Err(AtaError::Device(unsafe { inb(ERROR) }));
            }
            Ok(())
        }

        /// IDENTIFY DEVICE: finds the disk and its LBA48 size.
        pub fn probe() -> Result<Ata, AtaError> {
            // SAFETY: ATA registers.
            unsafe {
                outb(CTRL, 0x02); // nIEN: no interrupts, we poll
                outb(DEVICE, 0xa0);
            }
            let s = Self::status();
            if s == 0 || s == 0xff {
                return Err(AtaError::Absent);
            }
            // SAFETY: an ATA register.
            unsafe { outb(CMD, IDENTIFY) };
            Self::data_ready()?;
            let mut id = [0u16; 256];
            // SAFETY: an ATA register; `id` holds 256 words.
            unsafe { insw(DATA, id.as_mut_ptr().cast(), 256) };
            let lba48 = u64::from(id[100])
                | u64::from(id[101]) << 16
                | u64::from(id[102]) << 32
                | u64::from(id[103]) << 48;
            let lba28 = u64::from(id[60]) | u64::from(id[61]) << 16;
            Ok(Ata {
                sectors: if lba48 != 0 { lba48 } else { lba28 },
            })
        }

        /// Loads the LBA48 registers (high-order bytes first) and issues `cmd`.
        fn command(&self, cmd: u8, lba: u64, count: usize) {
            let c = if count == MAX_SECTORS {
                0
            } else {
                count as u16
            };
            let b = lba.to_le_bytes();
            // SAFETY: ATA registers.
            unsafe {
                outb(DEVICE, 0x40); // LBA, master
                outb(COUNT, (c >> 8) as u8);
                outb(LBA0, b[3]);
                outb(LBA1, b[4]);
                outb(LBA2, b[5]);
                outb(COUNT, c as u8);
                outb(LBA0, b[0]);
                outb(LBA1, b[1]);
                outb(LBA2, b[2]);
                outb(CMD, cmd);
            }
        }

        fn check(&self, lba: u64, len: usize) -> Result<usize, AtaError> {
            if len == 0 || !len.is_multiple_of(SECTOR) {
                return Err(AtaError::Range);
            }
            let count = len / SECTOR;
            if lba
                .checked_add(count as u64)
                .is_none_or(|e| e > self.sectors)
            {
                return Err(AtaError::Range);
            }
            Ok(count)
        }

        /// READ SECTORS EXT into `buf` (whole sectors), as many commands as needed.
        pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), AtaError> {
            self.check(lba, buf.len())?;
            for (i, part) in buf.chunks_mut(MAX_SECTORS * SECTOR).enumerate() {
                let count = part.len() / SECTOR;
                self.command(READ_EXT, lba + (i * MAX_SECTORS) as u64, count);
                for sector in part.chunks_mut(SECTOR) {
                    Self::data_ready()?;
                    // SAFETY: an ATA register; `sector` holds 512 bytes = 256 words.
                    unsafe { insw(DATA, sector.as_mut_ptr(), SECTOR / 2) };
                }
            }
            Self::done()
        }

        /// WRITE SECTORS EXT from `buf` (whole sectors).
        pub fn write(&self, lba: u64, buf: &[u8]) -> Result<(), AtaError> {
            self.check(lba, buf.len())?;
            for (i, part) in buf.chunks(MAX_SECTORS * SECTOR).enumerate() {
                let count = part.len() / SECTOR;
                self.command(WRITE_EXT, lba + (i * MAX_SECTORS) as u64, count);
                for sector in part.chunks(SECTOR) {
                    Self::data_ready()?;
                    // SAFETY: an ATA register; `sector` holds 512 bytes = 256 words.
                    unsafe { outsw(DATA, sector.as_ptr(), SECTOR / 2) };
                }
                Self::done()?;
            }
            Ok(())
        }

        /// FLUSH CACHE EXT.
        pub fn flush(&self) -> Result<(), AtaError> {
            // SAFETY: ATA registers.
            unsafe {
                outb(DEVICE, 0x40);
                outb(CMD, FLUSH_EXT);
            }
            Self::done()
        }
    }

    pub fn run(workload: &str, args: &Args<'_>) -> bool {
        let disk = match Ata::probe() {
            Ok(d) => d,
            Err(e) => {
                println!("blkbench: ata: no disk on the primary channel: {e}");
                return false;
            }
        };
        println!(
            "blkbench: ata: primary master, {} MiB (PIO, LBA48, polled)",
            (disk.sectors * SECTOR as u64) >> 20
        );
        if workload == "none" {
            return true;
        }
        let bytes = disk.sectors * SECTOR as u64;
        let total = args.num("bytes", 64 * MIB as u64).min(bytes);
        let ops = args.num("ops", 20_000);
        let mut buf = vec![0xa5u8; MIB];
        let mut ok = true;
        let seq = [
            ("seqread-64k", false, 64 * KIB),
            ("seqread-1m", false, MIB),
            ("seqwrite-64k", true, 64 * KIB),
            ("seqwrite-1m", true, MIB),
        ];
        for (name, write, req) in seq {
            if !wanted(workload, name) {
                continue;
            }
            let n = total / req as u64;
            let t = time::monotonic_ns();
            let mut r = Ok(());
            for i in 0..n {
                let lba = i * (req / SECTOR) as u64;
                r = if write {
                    disk.write(lba, &buf[..req])
                } else {
                    disk.read(lba, &mut buf[..req])
                };
                if r.is_err() {
                    break;
                }
            }
            if write && r.is_ok() {
                r = disk.flush();
            }
            let ns = time::monotonic_ns() - t;
            ok &= finish(name, n * req as u64, ns, n, r);
        }
        if wanted(workload, "randread-4k-qd1") {
            let pages = bytes / 4096;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ 1);
            let t = time::monotonic_ns();
            let mut r = Ok(());
            for _ in 0..ops {
                let lba = rng.next() % pages * 8;
                r = disk.read(lba, &mut buf[..4096]);
                if r.is_err() {
                    break;
                }
            }
            let ns = time::monotonic_ns() - t;
            ok &= finish("randread-4k-qd1", ops * 4096, ns, ops, r);
        }
        ok
    }

    fn finish(name: &str, bytes: u64, ns: u64, requests: u64, r: Result<(), AtaError>) -> bool {
        match r {
            Ok(()) => {
                report(name, "ata", bytes, ns, requests, "");
                true
            }
            Err(e) => {
                println!("blkbench {name} ata FAILED: {e}");
                false
            }
        }
    }
}

/// 64 KiB of console output over the PV console (`println!`) or the 16550 UART (polling LSR's
/// THRE bit, writing THR: one exit per byte, two with the poll).
fn console_bench(path: &str, workload: &str) -> bool {
    if !wanted(workload, "console-64k") {
        return true;
    }
    const TOTAL: usize = 64 * KIB;
    const LINE: usize = 64;
    let mut line = [b'.'; LINE];
    let tag = if path == "uart" { b"uart " } else { b"cons " };
    line[..5].copy_from_slice(tag);
    line[LINE - 1] = b'\n';
    // Let the PV console drain before timing (both paths end up on hv's stdout).
    time::sleep(20 * NS_PER_MS);
    let t = time::monotonic_ns();
    if path == "uart" {
        uart::init();
        for _ in 0..TOTAL / LINE {
            for &b in &line {
                uart::put(b);
            }
        }
    } else {
        // The same bytes through the PV console ring.
        let text = core::str::from_utf8(&line[..LINE - 1]).unwrap_or("");
        for _ in 0..TOTAL / LINE {
            println!("{text}");
        }
    }
    let ns = time::monotonic_ns() - t;
    time::sleep(20 * NS_PER_MS);
    print!("");
    report("console-64k", path, TOTAL as u64, ns, TOTAL as u64, "");
    true
}

/// The 16550 UART on COM1, polled.
mod uart {
    use super::asm;

    const COM1: u16 = 0x3f8;
    const THR: u16 = COM1;
    const IER: u16 = COM1 + 1;
    const FCR: u16 = COM1 + 2;
    const LCR: u16 = COM1 + 3;
    const LSR: u16 = COM1 + 5;
    const LSR_THRE: u8 = 0x20;

    fn outb(port: u16, v: u8) {
        // SAFETY: a COM1 register, which the hv lets this guest access when it emulates the
        // UART (asked for on the command line); the device touches no guest memory.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
        }
    }

    fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: as in `outb`.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    /// 8N1, no interrupts, FIFOs on.
    pub fn init() {
        outb(IER, 0);
        outb(LCR, 0x03);
        outb(FCR, 0x07);
    }

    /// Waits for THR to be empty, then writes `b`.
    pub fn put(b: u8) {
        while inb(LSR) & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
        outb(THR, b);
    }
}

/// Test modes for `hv-core/tests/block.rs`.
mod tests {
    use super::*;

    /// A record of the durability test: one sector, `REC_MAGIC`, its number, then bytes
    /// derived from the number.
    const REC_MAGIC: &[u8; 8] = b"HVREC001";
    /// Records written between two flushes.
    const BATCH: u64 = 16;

    pub fn record(n: u64, out: &mut [u8]) {
        out[..8].copy_from_slice(REC_MAGIC);
        out[8..16].copy_from_slice(&n.to_le_bytes());
        for (i, b) in out[16..SECTOR].iter_mut().enumerate() {
            *b = (n as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
    }

    /// The byte at disk offset `o` of the pattern with `seed`.
    fn pattern_byte(seed: u64, o: u64) -> u8 {
        let mut z = (o / 8)
            .wrapping_add(seed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z ^= z >> 31;
        z.to_le_bytes()[(o % 8) as usize]
    }

    fn fill(seed: u64, at: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern_byte(seed, at + i as u64);
        }
    }

    /// Request sizes cycled through by the pattern tests: partial pages, direct, indirect
    /// and split requests.
    const SIZES: [usize; 7] = [512, 3 * 512, 4096, 64 * KIB, 7 * 512, MIB + 4096, 44 * KIB];

    fn open() -> Option<BlockDevice> {
        match BlockDevice::open(0) {
            Ok(d) => Some(d),
            Err(e) => {
                println!("test: cannot open vbd 0: {e}");
                None
            }
        }
    }

    pub fn run(test: &str, args: &Args<'_>) -> bool {
        let seed = args.num("seed", 1);
        match test {
            "durability" => durability(),
            "write-pattern" => write_pattern(seed, args.num("bytes", 4 * MIB as u64)),
            "check-pattern" => check_pattern(seed, args.num("bytes", 4 * MIB as u64), "second-run"),
            "readonly" => readonly(),
            "discard" => discard(),
            other => {
                println!("test: unknown test {other:?}");
                false
            }
        }
    }

    /// Writes records 0, 1, 2, ... at sectors 0, 1, 2, ... in batches, flushing after each
    /// batch and printing `acked N` (N: the last record now durable) once the flush
    /// completed; stops at the end of the disk and waits to be killed.
    fn durability() -> bool {
        let Some(mut dev) = open() else { return false };
        let records = dev.sectors();
        let mut buf = vec![0u8; BATCH as usize * SECTOR];
        let mut next = 0u64;
        while next < records {
            let n = BATCH.min(records - next);
            for i in 0..n {
                record(
                    next + i,
                    &mut buf[i as usize * SECTOR..(i as usize + 1) * SECTOR],
                );
            }
            let r = dev
                .write(next * SECTOR as u64, &buf[..n as usize * SECTOR])
                .and_then(|()| dev.flush());
            if let Err(e) = r {
                println!("durability: FAILED at record {next}: {e}");
                return false;
            }
            next += n;
            println!("acked {}", next - 1);
        }
        println!("durability: disk full after {next} records");
        loop {
            time::sleep(time::NS_PER_SEC);
        }
    }

    /// Writes the pattern over `bytes` bytes in requests of mixed sizes, flushes, reads it
    /// back in other sizes and compares.
    fn write_pattern(seed: u64, bytes: u64) -> bool {
        let Some(mut dev) = open() else { return false };
        let bytes = bytes.min(dev.size_bytes());
        let mut buf = vec![0u8; 2 * MIB];
        let mut at = 0u64;
        let mut i = 0;
        while at < bytes {
            let len = (SIZES[i % SIZES.len()] as u64).min(bytes - at) as usize;
            fill(seed, at, &mut buf[..len]);
            if let Err(e) = dev.write(at, &buf[..len]) {
                println!("roundtrip: FAILED writing {len} bytes at {at}: {e}");
                return false;
            }
            at += len as u64;
            i += 1;
        }
        if let Err(e) = dev.flush() {
            println!("roundtrip: FAILED flush: {e}");
            return false;
        }
        println!("roundtrip: wrote {bytes} bytes in {i} writes");
        check_with(&mut dev, seed, bytes, "same-run")
    }

    fn check_pattern(seed: u64, bytes: u64, what: &str) -> bool {
        let Some(mut dev) = open() else { return false };
        check_with(&mut dev, seed, bytes, what)
    }

    fn check_with(dev: &mut BlockDevice, seed: u64, bytes: u64, what: &str) -> bool {
        let bytes = bytes.min(dev.size_bytes());
        let mut buf = vec![0u8; 2 * MIB];
        let mut want = vec![0u8; 2 * MIB];
        let mut at = 0u64;
        let mut i = 3;
        while at < bytes {
            let len = (SIZES[i % SIZES.len()] as u64).min(bytes - at) as usize;
            if let Err(e) = dev.read(at, &mut buf[..len]) {
                println!("roundtrip: FAILED reading {len} bytes at {at}: {e}");
                return false;
            }
            fill(seed, at, &mut want[..len]);
            if let Some(p) = (0..len).find(|&p| buf[p] != want[p]) {
                println!(
                    "roundtrip: FAILED {what}: byte {} is {:#x}, expected {:#x}",
                    at + p as u64,
                    buf[p],
                    want[p]
                );
                return false;
            }
            at += len as u64;
            i += 1;
        }
        println!("roundtrip: {what} ok ({bytes} bytes)");
        true
    }

    /// The disk is read-only: the frontend refuses writes and discards, and so does the
    /// backend when asked anyway (a raw request).
    fn readonly() -> bool {
        use guest_sdk::abi::io::blk::{BlkRequest, OP_WRITE};
        let Some(mut dev) = open() else { return false };
        let mut ok = dev.read_only();
        println!("readonly: read_only() = {}", dev.read_only());
        let mut sector = [0u8; SECTOR];
        if let Err(e) = dev.read(0, &mut sector) {
            println!("readonly: FAILED read: {e}");
            ok = false;
        }
        let local = dev.write(0, &sector);
        println!("readonly: write -> {local:?}");
        ok &= local == Err(BlkError::ReadOnly);
        let disc = dev.discard(0, 4096);
        println!("readonly: discard -> {disc:?}");
        ok &= disc == Err(BlkError::ReadOnly);
        // Past the frontend's own check: a write request the backend must refuse. It names no
        // valid grant, but the read-only check comes first.
        let mut req = BlkRequest {
            op: OP_WRITE,
            nr_segments: 1,
            ..BlkRequest::default()
        };
        req.segs[0].last_sect = 0;
        let backend = dev.submit_raw(&req).and_then(|id| {
            let mut st = None;
            while st.is_none() {
                dev.wait()?;
                dev.complete(|c| {
                    if c.id() == id {
                        st = Some(c.status());
                    }
                })?;
            }
            st.unwrap_or(Ok(()))
        });
        println!("readonly: backend write -> {backend:?}");
        ok &= backend == Err(BlkError::ReadOnly);
        println!("readonly: {}", if ok { "ok" } else { "FAILED" });
        ok
    }

    /// Writes a pattern, discards part of it, and reads zeros there and the pattern around.
    fn discard() -> bool {
        let Some(mut dev) = open() else { return false };
        if !dev.info().discard {
            println!("discard: FAILED: the backend offers no discard");
            return false;
        }
        let mut buf = vec![0u8; 256 * KIB];
        fill(7, 0, &mut buf);
        let r = dev
            .write(0, &buf)
            .and_then(|()| dev.discard(64 * KIB as u64, 128 * KIB as u64))
            .and_then(|()| dev.read(0, &mut buf));
        if let Err(e) = r {
            println!("discard: FAILED: {e}");
            return false;
        }
        let mut want = vec![0u8; 256 * KIB];
        fill(7, 0, &mut want);
        want[64 * KIB..192 * KIB].fill(0);
        match (0..buf.len()).find(|&p| buf[p] != want[p]) {
            None => {
                println!("discard: ok (128 KiB read back as zeros)");
                true
            }
            Some(p) => {
                println!(
                    "discard: FAILED: byte {p} is {:#x}, expected {:#x}",
                    buf[p], want[p]
                );
                false
            }
        }
    }
}
