//! An ATA disk driven by PIO: one master device on the primary channel, backed by a raw image
//! file. The guest driver polls the status register; no interrupt is delivered.
//!
//! Ports: command block `0x1F0..=0x1F7` (data, error/features, sector count, LBA low, mid and
//! high, device, status/command) and control block `0x3F6` (alternate status / device
//! control).
//!
//! Commands: IDENTIFY DEVICE (`0xEC`), READ SECTORS (`0x20`, `0x21`) and WRITE SECTORS
//! (`0x30`, `0x31`) with LBA28 (or CHS) addressing and a count of 0 meaning 256, READ SECTORS
//! EXT (`0x24`) and WRITE SECTORS EXT (`0x34`) with LBA48 (each of sector count and LBA low, mid
//! and high is written twice, high-order byte first: the "previous" content, read back with
//! device control HOB set), FLUSH CACHE (`0xE7`) and FLUSH CACHE EXT (`0xEA`) (`fdatasync` of
//! the image), EXECUTE DEVICE DIAGNOSTIC (`0x90`), and a few housekeeping commands that succeed
//! without effect (SET FEATURES, INITIALIZE DEVICE PARAMETERS, RECALIBRATE, READ VERIFY,
//! IDLE/STANDBY, CHECK POWER MODE). Any other command fails with ERR + ABRT.
//!
//! Every command completes synchronously while the guest's `out` to the command register is
//! handled, so BSY is never seen (except while device control SRST is held). A data command
//! leaves DRQ set until its last word moved; each 512-byte sector is read with one `pread`
//! before its first word goes out, and written with one `pwrite` after its last word came in.
//! The data port takes any access size (`in ax, dx` moves 2 bytes, `insd` 4) and string I/O of
//! any length: the transfer streams across sector boundaries. Reading the data port without DRQ
//! returns all ones; writing it is ignored.
//!
//! Errors: an LBA range past the end of the disk sets ERR + IDNF, an unknown command or a write
//! to a read-only disk ERR + ABRT, a failed `pread` ERR + UNC, a failed `pwrite` or flush
//! ERR + ABRT (with DF); the LBA registers then hold the sector that failed.
//!
//! Selecting device 1 (the slave, absent) makes status read 0 and commands be ignored, as a
//! master answers for an absent slave. Device control nIEN is kept and honoured for the
//! internal INTRQ state (set on completion and on each DRQ block, cleared by reading status
//! or writing a command), but no interrupt is ever delivered.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::PortDevice;

/// The primary channel's command block base (data register).
pub const ATA_PRIMARY_BASE: u16 = 0x1f0;
/// The primary channel's control block (alternate status / device control).
pub const ATA_PRIMARY_CTRL: u16 = 0x3f6;
/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;

const SECTOR: usize = SECTOR_SIZE as usize;
/// The largest LBA48 capacity.
const MAX_LBA48_SECTORS: u64 = 1 << 48;

// Status bits.
const BSY: u8 = 0x80;
const DRDY: u8 = 0x40;
const DF: u8 = 0x20;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
// Error bits.
const UNC: u8 = 0x40;
const IDNF: u8 = 0x10;
const ABRT: u8 = 0x04;
// Device control bits.
const NIEN: u8 = 0x02;
const SRST: u8 = 0x04;
const HOB: u8 = 0x80;
// Device register bits.
const DEV_LBA: u8 = 0x40;
const DEV_SLAVE: u8 = 0x10;

// The CHS geometry reported and used for CHS addressing.
const HEADS: u64 = 16;
const SECTORS_PER_TRACK: u64 = 63;
const MAX_CYLINDERS: u64 = 16383;

const MODEL: &str = "HV EMULATED ATA DISK";
const SERIAL: &str = "HV-ATA-0001";
const FIRMWARE: &str = "0.1";

/// Why a disk image cannot be used.
#[derive(Debug, Error)]
pub enum DiskError {
    /// The image does not exist.
    #[error("disk image {}: not found", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The image may not be opened (for writing, unless read-only).
    #[error("disk image {}: permission denied", path.display())]
    PermissionDenied {
        /// The path given.
        path: PathBuf,
    },
    /// The path is a directory.
    #[error("disk image {}: is a directory", path.display())]
    IsDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a directory (device, FIFO, socket).
    #[error("disk image {}: not a regular file", path.display())]
    NotRegularFile {
        /// The path given.
        path: PathBuf,
    },
    /// The image is empty, not a whole number of 512-byte sectors, or beyond LBA48.
    #[error(
        "disk image {}: size {size} is not a positive multiple of 512 bytes within 2^48 sectors",
        path.display()
    )]
    BadSize {
        /// The path given.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Any other failure opening or inspecting the image.
    #[error("disk image {}: {source}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The data phase in progress (DRQ set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    /// No data phase.
    None,
    /// IDENTIFY data in `buf`.
    Identify,
    /// Sectors to the guest: `buf` holds sector `lba`; `left` sectors remain, this one included;
    /// `ext`: an LBA48 command.
    Read { lba: u64, left: u32, ext: bool },
    /// Sectors from the guest: `buf` fills up for sector `lba`; `left` remain, this one
    /// included; `ext`: an LBA48 command.
    Write { lba: u64, left: u32, ext: bool },
}

/// A register written twice for LBA48: the current and the previous ("high-order") byte.
#[derive(Debug, Clone, Copy, Default)]
struct Reg2 {
    cur: u8,
    prev: u8,
}

impl Reg2 {
    fn write(&mut self, v: u8) {
        self.prev = self.cur;
        self.cur = v;
    }
    fn read(&self, hob: bool) -> u8 {
        if hob {
            self.prev
        } else {
            self.cur
        }
    }
}

/// One ATA disk (the master on the primary channel) over a raw image.
pub struct AtaDisk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    identify: [u8; SECTOR],

    features: Reg2,
    count: Reg2,
    lba_low: Reg2,
    lba_mid: Reg2,
    lba_high: Reg2,
    device: u8,
    status: u8,
    error: u8,
    control: u8,
    intrq: bool,

    transfer: Transfer,
    buf: [u8; SECTOR],
    pos: usize,
}

impl std::fmt::Debug for AtaDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtaDisk")
            .field("path", &self.path)
            .field("sectors", &self.sectors)
            .field("read_only", &self.read_only)
            .field("status", &self.status)
            .field("error", &self.error)
            .field("transfer", &self.transfer)
            .finish_non_exhaustive()
    }
}

impl AtaDisk {
    /// Opens the raw image at `path` (read-write unless `read_only`). Its size must be a
    /// positive multiple of 512 bytes.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let owned = || path.to_owned();
        let classify = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => DiskError::NotFound { path: owned() },
            io::ErrorKind::PermissionDenied => DiskError::PermissionDenied { path: owned() },
            _ if e.raw_os_error() == Some(libc::EISDIR) => DiskError::IsDirectory { path: owned() },
            _ => DiskError::Io {
                path: owned(),
                source: e,
            },
        };
        let meta = std::fs::metadata(path).map_err(classify)?;
        if meta.is_dir() {
            return Err(DiskError::IsDirectory { path: owned() });
        }
        if !meta.is_file() {
            return Err(DiskError::NotRegularFile { path: owned() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(classify)?;
        let size = file.metadata().map_err(classify)?.len();
        let sectors = size / SECTOR_SIZE;
        if size == 0 || !size.is_multiple_of(SECTOR_SIZE) || sectors > MAX_LBA48_SECTORS {
            return Err(DiskError::BadSize {
                path: owned(),
                size,
            });
        }
        let mut disk = Self {
            file,
            path: owned(),
            sectors,
            read_only,
            identify: identify_data(sectors),
            features: Reg2::default(),
            count: Reg2::default(),
            lba_low: Reg2::default(),
            lba_mid: Reg2::default(),
            lba_high: Reg2::default(),
            device: 0xa0,
            status: 0,
            error: 0,
            control: 0,
            intrq: false,
            transfer: Transfer::None,
            buf: [0; SECTOR],
            pos: 0,
        };
        disk.reset();
        Ok(disk)
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may not write.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the device asserts INTRQ (never delivered; nIEN masks it).
    pub fn interrupt_pending(&self) -> bool {
        self.intrq && self.control & NIEN == 0
    }

    /// Reset (power-on, SRST, EXECUTE DEVICE DIAGNOSTIC): the ATA signature in the command
    /// block, diagnostic code 1 (no error) in the error register.
    fn reset(&mut self) {
        self.transfer = Transfer::None;
        self.pos = 0;
        for r in [
            &mut self.count,
            &mut self.lba_low,
            &mut self.lba_mid,
            &mut self.lba_high,
        ] {
            *r = Reg2::default();
        }
        self.count.cur = 1;
        self.lba_low.cur = 1;
        self.device = 0xa0;
        self.error = 0x01;
        self.status = DRDY | DSC;
    }

    fn slave_selected(&self) -> bool {
        self.device & DEV_SLAVE != 0
    }

    fn raise_irq(&mut self) {
        self.intrq = true;
    }

    /// Ends the command successfully, with no data phase.
    fn complete(&mut self) {
        self.transfer = Transfer::None;
        self.status = DRDY | DSC;
        self.raise_irq();
    }

    /// Ends the command with ERR and `error`.
    fn fail(&mut self, error: u8) {
        self.transfer = Transfer::None;
        self.error = error;
        self.status = DRDY | DSC | ERR;
        self.raise_irq();
    }

    /// Puts `lba` in the LBA registers (where a failing sector is reported).
    fn set_lba_registers(&mut self, lba: u64, lba48: bool) {
        let b = lba.to_le_bytes();
        if lba48 {
            (self.lba_low.prev, self.lba_mid.prev, self.lba_high.prev) = (b[3], b[4], b[5]);
        } else {
            self.device = (self.device & 0xf0) | (b[3] & 0x0f);
        }
        (self.lba_low.cur, self.lba_mid.cur, self.lba_high.cur) = (b[0], b[1], b[2]);
    }

    /// The LBA28 address and count (0 = 256), or `None` for an invalid CHS address.
    fn lba28(&self) -> Option<(u64, u32)> {
        let count = match self.count.cur {
            0 => 256,
            n => u32::from(n),
        };
        let head = u64::from(self.device & 0x0f);
        if self.device & DEV_LBA != 0 {
            let lba = (head << 24)
                | (u64::from(self.lba_high.cur) << 16)
                | (u64::from(self.lba_mid.cur) << 8)
                | u64::from(self.lba_low.cur);
            return Some((lba, count));
        }
        // CHS: sector numbers start at 1.
        let sector = u64::from(self.lba_low.cur);
        let cylinder = (u64::from(self.lba_high.cur) << 8) | u64::from(self.lba_mid.cur);
        if sector == 0 || sector > SECTORS_PER_TRACK {
            return None;
        }
        Some((
            (cylinder * HEADS + head) * SECTORS_PER_TRACK + sector - 1,
            count,
        ))
    }

    /// The LBA48 address and count (0 = 65536).
    fn lba48(&self) -> (u64, u32) {
        let bytes = [
            self.lba_low.cur,
            self.lba_mid.cur,
            self.lba_high.cur,
            self.lba_low.prev,
            self.lba_mid.prev,
            self.lba_high.prev,
            0,
            0,
        ];
        let count = match u32::from(u16::from_le_bytes([self.count.cur, self.count.prev])) {
            0 => 65536,
            n => n,
        };
        (u64::from_le_bytes(bytes), count)
    }

    fn command(&mut self, cmd: u8) {
        if self.slave_selected() {
            return; // no device 1: the command is not for us
        }
        self.transfer = Transfer::None;
        self.pos = 0;
        self.error = 0;
        self.intrq = false;
        match cmd {
            0xec => {
                self.buf = self.identify;
                self.transfer = Transfer::Identify;
                self.status = DRDY | DSC | DRQ;
                self.raise_irq();
            }
            0x20 | 0x21 | 0x30 | 0x31 | 0x40 | 0x41 => match self.lba28() {
                Some((lba, count)) => self.start(cmd, lba, count, false),
                None => self.fail(IDNF),
            },
            0x24 | 0x34 | 0x42 => {
                let (lba, count) = self.lba48();
                self.start(cmd, lba, count, true);
            }
            0xe7 | 0xea => self.flush(),
            0x90 => {
                self.reset();
                self.raise_irq();
            }
            // SET FEATURES, INITIALIZE DEVICE PARAMETERS, RECALIBRATE, STANDBY/IDLE
            // IMMEDIATE, STANDBY, IDLE: nothing to do.
            0xef | 0x91 | 0x10..=0x1f | 0xe0..=0xe3 => self.complete(),
            // CHECK POWER MODE: active.
            0xe5 => {
                self.count.cur = 0xff;
                self.complete();
            }
            _ => self.fail(ABRT),
        }
    }

    /// Starts a sector command after checking the range.
    fn start(&mut self, cmd: u8, lba: u64, count: u32, lba48: bool) {
        let in_range = lba
            .checked_add(u64::from(count))
            .is_some_and(|end| end <= self.sectors);
        if !in_range {
            self.set_lba_registers(lba, lba48);
            return self.fail(IDNF);
        }
        match cmd {
            // READ VERIFY (SECTORS, EXT): nothing to transfer.
            0x40..=0x42 => self.complete(),
            0x30 | 0x31 | 0x34 => {
                if self.read_only {
                    return self.fail(ABRT);
                }
                self.transfer = Transfer::Write {
                    lba,
                    left: count,
                    ext: lba48,
                };
                self.status = DRDY | DSC | DRQ;
            }
            _ => {
                self.transfer = Transfer::Read {
                    lba,
                    left: count,
                    ext: lba48,
                };
                self.load_sector();
            }
        }
    }

    /// Reads the sector the read transfer is at into `buf` and offers it (DRQ).
    fn load_sector(&mut self) {
        let Transfer::Read { lba, ext, .. } = self.transfer else {
            return;
        };
        self.pos = 0;
        match self.file.read_exact_at(&mut self.buf, lba * SECTOR_SIZE) {
            Ok(()) => {
                self.status = DRDY | DSC | DRQ;
                self.raise_irq();
            }
            Err(_) => {
                self.set_lba_registers(lba, ext);
                self.fail(UNC);
            }
        }
    }

    fn flush(&mut self) {
        if self.read_only {
            return self.complete();
        }
        match self.file.sync_data() {
            Ok(()) => self.complete(),
            Err(_) => {
                self.fail(ABRT);
                self.status |= DF;
            }
        }
    }

    /// Moves `out.len()` bytes of the current data phase to the guest.
    fn data_in(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            if self.status & DRQ == 0 || matches!(self.transfer, Transfer::Write { .. }) {
                out[done..].fill(0xff);
                return;
            }
            let n = (SECTOR - self.pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
            if self.pos == SECTOR {
                self.sector_read();
            }
        }
    }

    /// The guest has taken the whole of `buf`.
    fn sector_read(&mut self) {
        self.pos = 0;
        match self.transfer {
            Transfer::Read { lba, left, ext } if left > 1 => {
                self.transfer = Transfer::Read {
                    lba: lba + 1,
                    left: left - 1,
                    ext,
                };
                self.load_sector();
            }
            _ => {
                self.transfer = Transfer::None;
                self.status = DRDY | DSC;
            }
        }
    }

    /// Takes `data` for the current write phase.
    fn data_out(&mut self, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            if self.status & DRQ == 0 {
                return; // ignored
            }
            let Transfer::Write { lba, left, ext } = self.transfer else {
                return;
            };
            let n = (SECTOR - self.pos).min(data.len() - done);
            self.buf[self.pos..self.pos + n].copy_from_slice(&data[done..done + n]);
            self.pos += n;
            done += n;
            if self.pos < SECTOR {
                continue;
            }
            self.pos = 0;
            if self
                .file
                .write_all_at(&self.buf, lba * SECTOR_SIZE)
                .is_err()
            {
                self.set_lba_registers(lba, ext);
                self.fail(ABRT);
                self.status |= DF;
                return;
            }
            if left > 1 {
                self.transfer = Transfer::Write {
                    lba: lba + 1,
                    left: left - 1,
                    ext,
                };
                self.raise_irq();
            } else {
                self.complete();
            }
        }
    }

    fn write_control(&mut self, value: u8) {
        let was_reset = self.control & SRST != 0;
        self.control = value;
        if value & SRST != 0 {
            self.transfer = Transfer::None;
            self.pos = 0;
            self.status = BSY;
        } else if was_reset {
            self.reset();
        }
    }

    fn hob(&self) -> bool {
        self.control & HOB != 0
    }

    fn status_value(&self) -> u8 {
        if self.slave_selected() {
            0
        } else {
            self.status
        }
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            0x1f1 => self.error,
            0x1f2 => self.count.read(self.hob()),
            0x1f3 => self.lba_low.read(self.hob()),
            0x1f4 => self.lba_mid.read(self.hob()),
            0x1f5 => self.lba_high.read(self.hob()),
            0x1f6 => self.device,
            0x1f7 => {
                self.intrq = false;
                self.status_value()
            }
            ATA_PRIMARY_CTRL => self.status_value(),
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        if port == ATA_PRIMARY_CTRL {
            return self.write_control(value);
        }
        if self.control & SRST != 0 {
            return; // the device is held in reset
        }
        // A write to any command block register clears HOB.
        self.control &= !HOB;
        match port {
            0x1f1 => self.features.write(value),
            0x1f2 => self.count.write(value),
            0x1f3 => self.lba_low.write(value),
            0x1f4 => self.lba_mid.write(value),
            0x1f5 => self.lba_high.write(value),
            0x1f6 => self.device = value | 0xa0,
            0x1f7 => self.command(value),
            _ => {}
        }
    }
}

impl PortDevice for AtaDisk {
    fn name(&self) -> &'static str {
        "ata"
    }

    fn ports(&self) -> Vec<u16> {
        (ATA_PRIMARY_BASE..=ATA_PRIMARY_BASE + 7)
            .chain([ATA_PRIMARY_CTRL])
            .collect()
    }

    /// The data port streams bytes whatever the item size; the other registers are 8 bits
    /// wide, and a wider item reaches consecutive registers, one byte each.
    fn write(&mut self, port: u16, size: u8, data: &[u8]) {
        if port == ATA_PRIMARY_BASE {
            if !self.slave_selected() && self.control & SRST == 0 {
                self.data_out(data);
            }
            return;
        }
        for item in data.chunks(usize::from(size.max(1))) {
            for (i, &b) in item.iter().enumerate() {
                if let Some(p) = register_port(port, i) {
                    self.write_byte(p, b);
                }
            }
        }
    }

    fn read(&mut self, port: u16, size: u8, out: &mut [u8]) {
        if port == ATA_PRIMARY_BASE {
            if self.slave_selected() || self.control & SRST != 0 {
                out.fill(0xff);
            } else {
                self.data_in(out);
            }
            return;
        }
        for item in out.chunks_mut(usize::from(size.max(1))) {
            for (i, b) in item.iter_mut().enumerate() {
                *b = match register_port(port, i) {
                    Some(p) => self.read_byte(p),
                    None => 0xff,
                };
            }
        }
    }
}

/// The 8-bit register that byte `i` of an access at `port` reaches, if it is one of ours (and
/// not the data port, which only an access starting at it uses).
fn register_port(port: u16, i: usize) -> Option<u16> {
    let p = u16::try_from(i).ok().and_then(|i| port.checked_add(i))?;
    ((ATA_PRIMARY_BASE + 1..=ATA_PRIMARY_BASE + 7).contains(&p) || p == ATA_PRIMARY_CTRL)
        .then_some(p)
}

/// Puts `s` in IDENTIFY words `first..first + len / 2`, space-padded, two characters per word
/// with the first in the high byte.
fn put_string(data: &mut [u8; SECTOR], first: usize, len: usize, s: &str) {
    let mut chars = s.bytes().chain(std::iter::repeat(b' '));
    for w in first..first + len / 2 {
        let (hi, lo) = (chars.next().unwrap_or(b' '), chars.next().unwrap_or(b' '));
        data[2 * w] = lo;
        data[2 * w + 1] = hi;
    }
}

/// The 256 IDENTIFY DEVICE words for a disk of `sectors` sectors.
fn identify_data(sectors: u64) -> [u8; SECTOR] {
    let mut d = [0u8; SECTOR];
    let mut put = |w: usize, v: u16| d[2 * w..2 * w + 2].copy_from_slice(&v.to_le_bytes());
    let cylinders = (sectors / (HEADS * SECTORS_PER_TRACK)).clamp(1, MAX_CYLINDERS);
    let chs_sectors = cylinders * HEADS * SECTORS_PER_TRACK;
    let lba28 = sectors.min(0x0fff_ffff) as u32;
    put(0, 0x0040); // ATA device, fixed
    put(1, cylinders as u16);
    put(3, HEADS as u16);
    put(6, SECTORS_PER_TRACK as u16);
    put(47, 0x8000); // READ/WRITE MULTIPLE: not supported
    put(49, 0x0200); // LBA supported (no DMA)
    put(50, 0x4000);
    put(53, 0x0003); // words 54-58 and 64-70 valid
    put(54, cylinders as u16);
    put(55, HEADS as u16);
    put(56, SECTORS_PER_TRACK as u16);
    put(57, chs_sectors as u16);
    put(58, (chs_sectors >> 16) as u16);
    put(60, lba28 as u16);
    put(61, (lba28 >> 16) as u16);
    put(64, 0x0003); // PIO modes 3 and 4
    for w in 65..=68 {
        put(w, 120); // cycle times (ns)
    }
    put(80, 0x00f0); // ATA/ATAPI-4 to -7
    put(82, 0x0020); // write cache
    put(83, 0x7400); // valid | FLUSH CACHE EXT | FLUSH CACHE | 48-bit address
    put(84, 0x4000);
    put(85, 0x0020); // write cache enabled
    put(86, 0x3400); // FLUSH CACHE EXT | FLUSH CACHE | 48-bit address enabled
    put(87, 0x4000);
    for (i, w) in (100..104).enumerate() {
        put(w, (sectors >> (16 * i)) as u16);
    }
    put(106, 0x4000); // 512-byte logical = physical sectors
    put_string(&mut d, 10, 20, SERIAL);
    put_string(&mut d, 23, 8, FIRMWARE);
    put_string(&mut d, 27, 40, MODEL);
    // Integrity word: signature 0xA5, then a checksum making all 512 bytes sum to 0.
    d[510] = 0xa5;
    let sum = d[..511].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    d[511] = sum.wrapping_neg();
    d
}
