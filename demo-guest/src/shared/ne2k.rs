//! A polled driver for the hv's emulated NE2000 card (`hv --emulated-net switch:NAME`,
//! `hv_core::devices::ne2k`): every register access is a port I/O instruction, so a trap to the
//! hv (the full-virtualization path the paravirtual vif is compared against), plus a smoltcp
//! [`phy::Device`](smoltcp::phy::Device) over it.
//!
//! Only use it when the hv gives the domain the card: without it the ports are not allowed and
//! the first access faults.
//!
//! The card's 16 KiB: a transmit buffer of 6 pages at `0x4000`, the receive ring from `0x4600`
//! to `0x8000`. BNRY is kept one page behind the next frame to read (as Linux's 8390 driver
//! does). No interrupts: [`Ne2k::recv`] and [`Ne2k::wait`] poll ISR.
//!
//! Per frame (port I/O instructions, each one exit or more; `rep insw`/`rep outsw` move a
//! whole frame in one or two):
//! - sending: ISR read (the previous transmit is done), RBCR/RSAR and CR (5 `out`s),
//!   `rep outsw` of the frame, ISR read (remote DMA complete) and acknowledge, TBCR and
//!   CR.TXP (3 `out`s): 12 (13 for an odd length);
//! - receiving: the header and then the frame, each with 5 `out`s and a `rep insw`, then
//!   BNRY: 13, plus ISR read and acknowledge and a CURR read (3 instructions) per batch.
// Binaries use different parts of it (smoltcp or raw frames).
#![allow(dead_code)]

use core::arch::asm;
use core::fmt;

use guest_sdk::time;
use pv_drivers::frontend::net::smoltcp;

/// The card's first port.
pub const BASE: u16 = 0x300;

// Page 0 registers (offsets).
const CR: u16 = 0x00;
const PSTART: u16 = 0x01;
const PSTOP: u16 = 0x02;
const BNRY: u16 = 0x03;
const TPSR: u16 = 0x04;
const TBCR0: u16 = 0x05;
const TBCR1: u16 = 0x06;
const ISR: u16 = 0x07;
const RSAR0: u16 = 0x08;
const RSAR1: u16 = 0x09;
const RBCR0: u16 = 0x0a;
const RBCR1: u16 = 0x0b;
const RCR: u16 = 0x0c;
const TCR: u16 = 0x0d;
const DCR: u16 = 0x0e;
const IMR: u16 = 0x0f;
// Page 1.
const PAR0: u16 = 0x01;
const CURR: u16 = 0x07;
const MAR0: u16 = 0x08;
// The data and reset ports.
const DATA: u16 = 0x10;
const RESET: u16 = 0x1f;

// CR.
const CR_STP: u8 = 0x01;
const CR_STA: u8 = 0x02;
const CR_TXP: u8 = 0x04;
const CR_RREAD: u8 = 0x08;
const CR_RWRITE: u8 = 0x10;
const CR_NODMA: u8 = 0x20;
const CR_PAGE1: u8 = 0x40;

// ISR.
const ISR_PRX: u8 = 0x01;
const ISR_PTX: u8 = 0x02;
const ISR_RXE: u8 = 0x04;
const ISR_TXE: u8 = 0x08;
const ISR_OVW: u8 = 0x10;
const ISR_RDC: u8 = 0x40;
const ISR_RST: u8 = 0x80;

/// RCR: accept broadcast (and, always, frames to the station address).
const RCR_AB: u8 = 0x04;
const RCR_MON: u8 = 0x20;
/// DCR: word-wide transfers, normal operation, FIFO threshold 8 bytes.
const DCR_WORD: u8 = 0x49;

const TX_PAGE: u8 = 0x40;
const RX_START: u8 = 0x46;
const RX_STOP: u8 = 0x80;

/// Longest frame (without CRC).
pub const MAX_FRAME: usize = 1514;
const MIN_FRAME: usize = 60;
const ETH_HLEN: usize = 14;
/// Polls of ISR before giving up on the card (reset, remote DMA, transmit).
const SPINS: u32 = 100_000;

/// Why the card cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ne2kError {
    /// The reset was not acknowledged (ISR.RST).
    NoCard,
    /// The PROM does not look like a 16-bit NE2000's.
    BadProm,
    /// The card did not finish a remote DMA or a transmit.
    Timeout,
    /// The frame is empty or longer than [`MAX_FRAME`].
    BadFrame,
    /// The card refused to transmit (ISR.TXE).
    TxError,
}

impl fmt::Display for Ne2kError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ne2kError::NoCard => "no NE2000 card answers the reset",
            Ne2kError::BadProm => "the PROM is not a 16-bit NE2000's",
            Ne2kError::Timeout => "the card did not complete a command",
            Ne2kError::BadFrame => "bad frame length",
            Ne2kError::TxError => "transmit error",
        })
    }
}

/// What the driver has done, in frames and port I/O instructions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ne2kStats {
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames the card refused to send (or that could not be sent).
    pub tx_errors: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Corrupt ring headers (the ring was resynchronised).
    pub rx_errors: u64,
    /// Times the card reported lost frames (ISR.OVW).
    pub overruns: u64,
    /// Port I/O instructions spent sending frames.
    pub tx_ios: u64,
    /// Port I/O instructions spent receiving frames.
    pub rx_ios: u64,
    /// Port I/O instructions spent looking for frames and finding none.
    pub idle_ios: u64,
}

/// The card's registers, with the driver's receive state.
struct Hw {
    base: u16,
    /// The next page to read in the ring.
    next: u8,
    /// CURR as last read: frames lie from `next` up to it.
    curr: u8,
    /// A transmit was started and not yet seen done.
    tx_busy: bool,
    ios: u64,
    stats: Ne2kStats,
}

impl Hw {
    fn outb(&mut self, reg: u16, v: u8) {
        self.ios += 1;
        let port = self.base + reg;
        // SAFETY: the card's ports are allowed by the hv (the module's precondition); `out`
        // touches no memory.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
        }
    }

    fn inb(&mut self, reg: u16) -> u8 {
        self.ios += 1;
        let port = self.base + reg;
        let v: u8;
        // SAFETY: as for `outb`; `in` only writes `al`.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    /// `rep insw` into all of `dst` (an even length).
    fn insw(&mut self, dst: &mut [u8]) {
        self.ios += 1;
        let port = self.base + DATA;
        // SAFETY: as for `outb`; the direction flag is clear (Rust's ABI), so the instruction
        // writes exactly `dst`, which is valid for writes of `len / 2 * 2` bytes.
        unsafe {
            asm!("rep insw", in("dx") port, inout("rdi") dst.as_mut_ptr() => _,
                 inout("rcx") dst.len() / 2 => _, options(nostack, preserves_flags))
        }
    }

    /// `rep outsw` of all of `src` (an even length).
    fn outsw(&mut self, src: &[u8]) {
        self.ios += 1;
        let port = self.base + DATA;
        // SAFETY: as for `outb`; the direction flag is clear, so the instruction reads exactly
        // `src`.
        unsafe {
            asm!("rep outsw", in("dx") port, inout("rsi") src.as_ptr() => _,
                 inout("rcx") src.len() / 2 => _, options(nostack, preserves_flags, readonly))
        }
    }

    /// Polls ISR until one of `bits` is set; returns ISR.
    fn wait_isr(&mut self, bits: u8) -> Result<u8, Ne2kError> {
        for _ in 0..SPINS {
            let isr = self.inb(ISR);
            if isr & bits != 0 {
                return Ok(isr);
            }
        }
        Err(Ne2kError::Timeout)
    }

    /// Programs a remote DMA of `count` bytes at `addr` (`cmd`: read or write).
    fn remote(&mut self, addr: u16, count: u16, cmd: u8) {
        self.outb(RBCR0, count as u8);
        self.outb(RBCR1, (count >> 8) as u8);
        self.outb(RSAR0, addr as u8);
        self.outb(RSAR1, (addr >> 8) as u8);
        self.outb(CR, CR_STA | cmd);
    }

    /// Resets and sets the card up; returns the station address from its PROM.
    fn init(&mut self) -> Result<[u8; 6], Ne2kError> {
        let v = self.inb(RESET);
        self.outb(RESET, v);
        if self.wait_isr(ISR_RST).is_err() {
            return Err(Ne2kError::NoCard);
        }
        self.outb(ISR, 0xff);
        self.outb(CR, CR_STP | CR_NODMA);
        self.outb(DCR, DCR_WORD);
        self.outb(RBCR0, 0);
        self.outb(RBCR1, 0);
        self.outb(IMR, 0);
        self.outb(RCR, RCR_MON);
        self.outb(TCR, 0x02); // internal loopback while setting up
                              // The PROM: 16 bytes, each doubled on a 16-bit card.
        let mut prom = [0u8; 32];
        self.remote(0, 32, CR_RREAD);
        self.insw(&mut prom);
        let doubled = prom.chunks(2).all(|w| w[0] == w[1]);
        if !doubled || prom[28] != 0x57 || prom[30] != 0x57 {
            return Err(Ne2kError::BadProm);
        }
        let mac: [u8; 6] = core::array::from_fn(|i| prom[2 * i]);
        self.outb(CR, CR_STP | CR_NODMA);
        self.outb(PSTART, RX_START);
        self.outb(PSTOP, RX_STOP);
        self.outb(BNRY, RX_STOP - 1);
        self.outb(TPSR, TX_PAGE);
        self.outb(ISR, 0xff);
        self.outb(CR, CR_PAGE1 | CR_STP | CR_NODMA);
        for (i, b) in mac.iter().enumerate() {
            self.outb(PAR0 + i as u16, *b);
        }
        for i in 0..8 {
            self.outb(MAR0 + i, 0);
        }
        self.outb(CURR, RX_START);
        self.outb(CR, CR_STA | CR_NODMA);
        self.outb(ISR, 0xff);
        self.outb(TCR, 0);
        self.outb(RCR, RCR_AB);
        self.next = RX_START;
        self.curr = RX_START;
        self.tx_busy = false;
        Ok(mac)
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), Ne2kError> {
        if frame.len() < ETH_HLEN || frame.len() > MAX_FRAME {
            return Err(Ne2kError::BadFrame);
        }
        let ios = self.ios;
        let r = self.send_inner(frame);
        self.stats.tx_ios += self.ios - ios;
        match r {
            Ok(()) => self.stats.tx_frames += 1,
            Err(_) => self.stats.tx_errors += 1,
        }
        r
    }

    fn send_inner(&mut self, frame: &[u8]) -> Result<(), Ne2kError> {
        // Short frames are padded to the Ethernet minimum.
        let mut short = [0u8; MIN_FRAME];
        let frame = if frame.len() < MIN_FRAME {
            short[..frame.len()].copy_from_slice(frame);
            &short[..]
        } else {
            frame
        };
        let mut ack = 0;
        if self.tx_busy {
            // The transmit buffer is free once the previous frame is out.
            let isr = self.wait_isr(ISR_PTX | ISR_TXE)?;
            ack |= isr & (ISR_PTX | ISR_TXE);
            self.tx_busy = false;
        }
        let len = frame.len();
        let even = len & !1;
        self.remote(
            u16::from(TX_PAGE) << 8,
            len.div_ceil(2) as u16 * 2,
            CR_RWRITE,
        );
        self.outsw(&frame[..even]);
        if even < len {
            // The last byte, padded to a word.
            self.ios += 1;
            let (port, w) = (self.base + DATA, u16::from(frame[even]));
            // SAFETY: as for `outb`.
            unsafe {
                asm!("out dx, ax", in("dx") port, in("ax") w,
                     options(nomem, nostack, preserves_flags))
            }
        }
        let isr = self.wait_isr(ISR_RDC)?;
        self.outb(ISR, ack | ISR_RDC | (isr & (ISR_PTX | ISR_TXE)));
        self.outb(TBCR0, len as u8);
        self.outb(TBCR1, (len >> 8) as u8);
        self.outb(CR, CR_STA | CR_TXP | CR_NODMA);
        self.tx_busy = true;
        if ack & ISR_TXE != 0 {
            return Err(Ne2kError::TxError);
        }
        Ok(())
    }

    /// Whether frames wait in the ring: from the last CURR read, else from ISR (acknowledged
    /// before CURR is read again, so a frame stored later raises it anew).
    fn rx_ready(&mut self) -> bool {
        if self.curr != self.next {
            return true;
        }
        let isr = self.inb(ISR);
        let rx = isr & (ISR_PRX | ISR_RXE | ISR_OVW);
        if rx == 0 {
            return false;
        }
        self.outb(ISR, rx);
        if rx & ISR_OVW != 0 {
            self.stats.overruns += 1;
        }
        self.outb(CR, CR_PAGE1 | CR_STA | CR_NODMA);
        self.curr = self.inb(CURR);
        self.outb(CR, CR_STA | CR_NODMA);
        if !(RX_START..RX_STOP).contains(&self.curr) {
            self.stats.rx_errors += 1;
            self.curr = self.next;
        }
        self.curr != self.next
    }

    /// The next frame, copied into `buf` (at least [`MAX_FRAME`] bytes, even): its length.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let ios = self.ios;
        let n = self.recv_inner(buf);
        let spent = self.ios - ios;
        if n.is_some() {
            self.stats.rx_ios += spent;
            self.stats.rx_frames += 1;
        } else {
            self.stats.idle_ios += spent;
        }
        n
    }

    fn recv_inner(&mut self, buf: &mut [u8]) -> Option<usize> {
        while self.rx_ready() {
            let at = u16::from(self.next) << 8;
            let mut h = [0u8; 4];
            self.remote(at, 4, CR_RREAD);
            self.insw(&mut h);
            let (next, count) = (h[1], usize::from(u16::from_le_bytes([h[2], h[3]])));
            let len = count.wrapping_sub(4);
            // The frame must end on the page before `next`.
            let pages = count.div_ceil(256);
            let ring = usize::from(RX_STOP - RX_START);
            let expect = (usize::from(self.next - RX_START) + pages) % ring + usize::from(RX_START);
            if !(ETH_HLEN..=MAX_FRAME).contains(&len)
                || usize::from(next) != expect
                || len > buf.len()
            {
                // A corrupt ring: drop everything in it.
                self.stats.rx_errors += 1;
                self.set_next(self.curr);
                continue;
            }
            // The card wraps the remote DMA from PSTOP to PSTART.
            let words = len.div_ceil(2) * 2;
            self.remote(at + 4, words as u16, CR_RREAD);
            self.insw(&mut buf[..words]);
            self.set_next(next);
            return Some(len);
        }
        None
    }

    /// Frees the ring up to `next` (BNRY one page behind it).
    fn set_next(&mut self, next: u8) {
        self.next = next;
        let bnry = if next == RX_START {
            RX_STOP - 1
        } else {
            next - 1
        };
        self.outb(BNRY, bnry);
    }
}

/// The emulated NE2000 card, initialised and started.
pub struct Ne2k {
    hw: Hw,
    mac: [u8; 6],
    rx: [u8; MAX_FRAME + 2],
}

impl Ne2k {
    /// Resets the card at [`BASE`] and starts it: receiving broadcast frames and frames to
    /// its PROM's station address.
    pub fn open() -> Result<Ne2k, Ne2kError> {
        let mut hw = Hw {
            base: BASE,
            next: RX_START,
            curr: RX_START,
            tx_busy: false,
            ios: 0,
            stats: Ne2kStats::default(),
        };
        let mac = hw.init()?;
        Ok(Ne2k {
            hw,
            mac,
            rx: [0; MAX_FRAME + 2],
        })
    }

    /// The station address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The counters.
    pub fn stats(&self) -> Ne2kStats {
        self.hw.stats
    }

    /// Sends a frame (padded to 60 bytes if shorter).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Ne2kError> {
        self.hw.send(frame)
    }

    /// The next received frame, if any: copied into `buf`, its length returned.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = self.hw.recv(&mut self.rx)?;
        let n = n.min(buf.len());
        buf[..n].copy_from_slice(&self.rx[..n]);
        Some(n)
    }

    /// Waits until a frame is in the ring (`true`) or system time reaches `deadline_ns`
    /// (`false`), polling ISR: for a while between yields, then with short sleeps.
    pub fn wait(&mut self, deadline_ns: u64) -> bool {
        let start = time::monotonic_ns();
        loop {
            let ios = self.hw.ios;
            let ready = self.hw.rx_ready();
            self.hw.stats.idle_ios += self.hw.ios - ios;
            if ready {
                return true;
            }
            let now = time::monotonic_ns();
            if now >= deadline_ns {
                return false;
            }
            if now - start < 2 * time::NS_PER_MS {
                guest_sdk::sched::yield_now();
            } else {
                time::sleep((deadline_ns - now).min(200 * time::NS_PER_US));
            }
        }
    }

    /// Builds a smoltcp interface on the card with its station address and no IP address yet.
    pub fn interface(&mut self) -> smoltcp::iface::Interface {
        let hw = smoltcp::wire::EthernetAddress(self.mac);
        let mut cfg = smoltcp::iface::Config::new(hw.into());
        let m = self.mac;
        cfg.random_seed = time::monotonic_ns()
            ^ u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0x4e, 0x45]);
        smoltcp::iface::Interface::new(cfg, self, pv_drivers::frontend::net::now())
    }
}

/// A received frame handed to smoltcp.
pub struct Ne2kRxToken<'a> {
    frame: &'a [u8],
}

impl smoltcp::phy::RxToken for Ne2kRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Room for one frame to send, handed to smoltcp.
pub struct Ne2kTxToken<'a> {
    hw: &'a mut Hw,
}

impl smoltcp::phy::TxToken for Ne2kTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = [0u8; MAX_FRAME];
        let len = len.min(MAX_FRAME);
        let r = f(&mut buf[..len]);
        // A lost frame, as on a congested link; smoltcp retransmits what matters.
        let _ = self.hw.send(&buf[..len]);
        r
    }
}

impl smoltcp::phy::Device for Ne2k {
    type RxToken<'a> = Ne2kRxToken<'a>;
    type TxToken<'a> = Ne2kTxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let n = self.hw.recv(&mut self.rx)?;
        Some((
            Ne2kRxToken {
                frame: &self.rx[..n],
            },
            Ne2kTxToken { hw: &mut self.hw },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Ne2kTxToken { hw: &mut self.hw })
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.medium = smoltcp::phy::Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(1);
        caps
    }
}
