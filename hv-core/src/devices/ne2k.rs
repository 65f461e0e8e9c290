//! An NE2000-compatible network card (a DP8390 with 16 KiB of on-card memory) driven by port
//! I/O, polled: the full-virtualization counterpart of the paravirtual vif (DESIGN §8).
//!
//! # Ports (base [`NE2K_BASE`] = `0x300`, 32 ports)
//!
//! - `base + 0x00..=0x0F`: the DP8390 registers, in the page selected by CR's PS bits;
//! - `base + 0x10..=0x17`: the remote DMA data port (the card decodes all eight alike, as a
//!   real NE2000 does): byte (`in al`), word (`in ax`, `rep insw`) and dword accesses move
//!   one, two or four bytes of the transfer whatever DCR's WTS bit says;
//! - `base + 0x18..=0x1F`: the reset port (a driver uses `0x1F`): reading it resets the card
//!   (and answers 0), writing it does nothing (drivers write back what they read).
//!
//! # Registers
//!
//! Page 0 (read): CR, CLDA0/1, BNRY, TSR, NCR (0), FIFO (0), ISR, CRDA0/1, RSR and the tally
//! counters CNTR0-2 (frame alignment and CRC errors stay 0; CNTR2 counts missed frames;
//! cleared when read). Page 0 (write): PSTART, PSTOP, BNRY, TPSR, TBCR0/1, ISR (write 1 to
//! clear; RST cannot be cleared that way), RSAR0/1, RBCR0/1, RCR, TCR, DCR, IMR.
//! Page 1: PAR0-5, CURR, MAR0-7 (read and write). Page 2 (read only, diagnostics): PSTART,
//! PSTOP, the remote next-packet pointer, TPSR, the local next-packet pointer (CURR), the
//! current local DMA address, RCR, TCR, DCR, IMR. Page 3 and the DP8390's reserved registers
//! are not there: reads answer all ones, writes are ignored (both counted as bad accesses).
//!
//! # Memory
//!
//! Remote DMA reaches the PROM at `0x0000..0x0020` (read only: the station address in bytes
//! 0-5, bytes 14 and 15 `0x57` — "WW", a 16-bit card — each byte doubled, as a 16-bit NE2000
//! presents its 8-bit PROM) and the buffer memory at `0x4000..0x8000`. Anything else reads all
//! ones and drops writes (counted). The remote DMA address wraps from PSTOP to PSTART (the
//! DP8390 does this so a driver can read a frame that wraps around the ring in one go).
//!
//! # Commands (CR)
//!
//! - STP/STA stop and start the card: while stopped, frames from the network are not
//!   received and ISR.RST is set; STA clears RST. Remote DMA works in both states.
//! - RD = remote read (`001`), remote write (`010`), send packet (`011`: reads the frame at
//!   BNRY, header included, with the byte count from its header, and moves BNRY to its next
//!   page when done), abort (`1xx`; `000` is taken as abort). ISR.RDC is set when the byte
//!   count reaches 0 (at once for a count of 0). Data port accesses outside a transfer of the
//!   matching direction read all ones or are dropped, and are counted; a word access that
//!   ends a transfer of odd length moves its last byte and pads the other (not counted).
//! - TXP (while started) transmits TBCR bytes at TPSR × 256 at once: the frame goes to the
//!   uplink (or, with TCR's loopback bits set, back into the card's own receiver), TSR = PTX
//!   and ISR.PTX are set, and CR.TXP reads 0 again. A frame outside buffer memory, shorter
//!   than an Ethernet header or longer than 1514 bytes is not sent: TSR.ABT and ISR.TXE.
//!
//! # Receiving
//!
//! Frames the uplink delivers are taken when the guest touches the card (any port access;
//! up to [`PULL_FRAMES`] per access), so they appear in the ring as if they had arrived
//! meanwhile. A frame is accepted when RCR.PRO is set, or it is broadcast and RCR.AB is set,
//! or it is multicast, RCR.AM is set and its bit in the 64-bit MAR hash is set (the DP8390's
//! hash: the top 6 bits of the Ethernet CRC of the destination address; all MAR bits set
//! accept every multicast), or its destination is PAR0-5. Frames shorter than 60 bytes are
//! padded with zeros to 60, as the wire would have; no CRC is stored (the header's byte count
//! is 4 + the frame length). With RCR.MON the frame is only counted (CNTR2).
//!
//! The frame goes to the ring at CURR behind a 4-byte header (receive status: PRX, plus PHY
//! for a multicast or broadcast destination; the next page; the byte count, little-endian),
//! wrapping from PSTOP to PSTART; CURR moves to the next page and ISR.PRX is set. A frame is
//! stored only if it leaves at least one page free before BNRY (so CURR never catches up
//! with BNRY, whichever of the two usual conventions the driver keeps for BNRY); otherwise
//! it is dropped and counted, with ISR.OVW, RSR.MPA and CNTR2 (as a real card loses frames
//! while its ring is full). A ring that is not valid (PSTART below `0x40`, PSTOP above
//! `0x80`, PSTART ≥ PSTOP, CURR or BNRY outside it) receives nothing.
//!
//! # Isolation
//!
//! Every index into the card's memory is checked, every counter saturates, and the device
//! neither blocks nor panics on anything the guest does: bad accesses are answered (reads
//! all ones) and counted in [`Ne2kStats::bad_accesses`]. IMR is kept but no interrupt is
//! ever delivered: guests poll ISR.

use std::sync::Arc;

use hypercall_abi::DomId;
use pv_drivers::backend::switch::{Mac, PortId};

use super::PortDevice;
use crate::domain::Signal;
use crate::netback::VifQueue;
use crate::registry::Registry;

/// The card's first port.
pub const NE2K_BASE: u16 = 0x300;
/// Ports the card decodes (`NE2K_BASE..NE2K_BASE + NE2K_PORTS`).
pub const NE2K_PORTS: u16 = 0x20;
/// The interface number the card's MAC address is derived from with
/// [`netback::mac_for`](crate::netback::mac_for): far above any vif's, so never the same.
pub const MAC_INTERFACE: u32 = 0xff00;
/// Frames taken from the uplink per port access at most.
pub const PULL_FRAMES: usize = 64;

/// Offset of the data port.
const DATA: u16 = 0x10;
/// Offset of the first reset port.
const RESET: u16 = 0x18;

/// Bytes of PROM (doubled).
const PROM_SIZE: usize = 32;
/// Buffer memory: `MEM_START..MEM_END`.
const MEM_START: usize = 0x4000;
const MEM_END: usize = 0x8000;
const MEM_FIRST_PAGE: u8 = (MEM_START >> 8) as u8;
const MEM_END_PAGE: u16 = (MEM_END >> 8) as u16;
const PAGE: usize = 256;

/// Ethernet header length.
const ETH_HLEN: usize = 14;
/// Shortest frame on the wire (without CRC).
const MIN_FRAME: usize = 60;
/// Longest frame the card sends or receives (without CRC).
pub const MAX_FRAME: usize = 1514;

// CR bits.
const CR_STP: u8 = 0x01;
const CR_STA: u8 = 0x02;
const CR_TXP: u8 = 0x04;
const CR_RD: u8 = 0x38;
const CR_PS: u8 = 0xc0;
const RD_READ: u8 = 0x08;
const RD_WRITE: u8 = 0x10;
const RD_SEND: u8 = 0x18;
const RD_ABORT: u8 = 0x20;

/// ISR: packet received.
pub const ISR_PRX: u8 = 0x01;
/// ISR: packet transmitted.
pub const ISR_PTX: u8 = 0x02;
/// ISR: receive error.
pub const ISR_RXE: u8 = 0x04;
/// ISR: transmit error.
pub const ISR_TXE: u8 = 0x08;
/// ISR: receive ring overwrite warning (a frame was lost for lack of room).
pub const ISR_OVW: u8 = 0x10;
/// ISR: a tally counter's top bit is set.
pub const ISR_CNT: u8 = 0x20;
/// ISR: remote DMA complete.
pub const ISR_RDC: u8 = 0x40;
/// ISR: the card is stopped (reset state).
pub const ISR_RST: u8 = 0x80;

/// RCR: accept broadcast.
pub const RCR_AB: u8 = 0x04;
/// RCR: accept multicast (through the MAR hash).
pub const RCR_AM: u8 = 0x08;
/// RCR: promiscuous.
pub const RCR_PRO: u8 = 0x10;
/// RCR: monitor (check, count, do not store).
pub const RCR_MON: u8 = 0x20;

/// TCR: loopback mode bits.
const TCR_LB: u8 = 0x06;

/// RSR / receive header status: received intact.
pub const RSR_PRX: u8 = 0x01;
/// RSR: missed (no room, or monitor mode).
pub const RSR_MPA: u8 = 0x10;
/// RSR / receive header status: multicast or broadcast destination.
pub const RSR_PHY: u8 = 0x20;

/// TSR: transmitted.
pub const TSR_PTX: u8 = 0x01;
/// TSR: aborted.
pub const TSR_ABT: u8 = 0x08;

/// The MAC address of the emulated card of domain `domid`.
pub fn mac_for(domid: DomId) -> Mac {
    crate::netback::mac_for(domid, MAC_INTERFACE)
}

/// Where the card's frames go and come from.
pub trait Uplink: Send {
    /// Sends a frame the card transmitted.
    fn send(&mut self, frame: &[u8]);
    /// The next frame for the card, if one is waiting.
    fn recv(&mut self) -> Option<Vec<u8>>;
}

/// A port of an in-hv switch (see [`Switches`](crate::netback::Switches)), attached while
/// this value lives: dropping it (when the domain's port bus goes, after its vCPUs stopped)
/// detaches the port.
pub struct SwitchUplink {
    registry: Arc<Registry>,
    switch: String,
    port: PortId,
    queue: Arc<VifQueue>,
}

impl SwitchUplink {
    /// Attaches a new port to switch `switch` (creating it if needed) that owns `mac`, the
    /// card's address: frames the guest sends from another source address are dropped.
    pub fn attach(registry: Arc<Registry>, switch: &str, mac: Mac) -> SwitchUplink {
        // Nobody waits on the signal: the card polls its queue on port accesses.
        let queue = Arc::new(VifQueue::new(Arc::new(Signal::default())));
        let port = registry
            .switches()
            .attach(switch, Arc::clone(&queue), Some(mac));
        SwitchUplink {
            registry,
            switch: switch.to_string(),
            port,
            queue,
        }
    }

    /// Frames dropped because the queue in front of the card was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

impl Uplink for SwitchUplink {
    fn send(&mut self, frame: &[u8]) {
        self.registry
            .switches()
            .forward(&self.switch, self.port, frame);
    }

    fn recv(&mut self) -> Option<Vec<u8>> {
        self.queue.pop()
    }
}

impl Drop for SwitchUplink {
    fn drop(&mut self) {
        self.registry.switches().detach(&self.switch, self.port);
    }
}

/// The card's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ne2kStats {
    /// Frames sent to the uplink (or looped back).
    pub tx_frames: u64,
    /// Transmit commands refused (bad TPSR/TBCR).
    pub tx_errors: u64,
    /// Frames stored in the receive ring.
    pub rx_frames: u64,
    /// Frames lost: no room in the ring, the card stopped, monitor mode, a bad ring, or a
    /// frame of a bad size.
    pub rx_dropped: u64,
    /// Frames not for this card (address filter).
    pub rx_filtered: u64,
    /// Guest accesses that reach nothing: missing registers, data port accesses outside a
    /// transfer, remote DMA outside the card's memory.
    pub bad_accesses: u64,
}

/// The remote DMA direction in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dma {
    Idle,
    Read,
    Write,
}

/// An NE2000-compatible card at [`NE2K_BASE`].
pub struct Ne2k {
    uplink: Box<dyn Uplink>,
    prom: [u8; PROM_SIZE],
    mem: Box<[u8]>,

    cr: u8,
    isr: u8,
    imr: u8,
    dcr: u8,
    rcr: u8,
    tcr: u8,
    tsr: u8,
    rsr: u8,
    pstart: u8,
    pstop: u8,
    bnry: u8,
    curr: u8,
    tpsr: u8,
    tbcr: u16,
    par: [u8; 6],
    mar: [u8; 8],
    cntr: [u8; 3],

    /// Current remote DMA address (RSAR as written, then advancing).
    rsar: u16,
    /// Remote DMA bytes left.
    rbcr: u16,
    dma: Dma,
    /// During a send-packet command: BNRY when it completes.
    send_next: Option<u8>,

    stats: Ne2kStats,
}

impl std::fmt::Debug for Ne2k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ne2k")
            .field("cr", &self.cr)
            .field("isr", &self.isr)
            .field("curr", &self.curr)
            .field("bnry", &self.bnry)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Ne2k {
    /// A card with station address `mac` (in its PROM) on `uplink`, just reset.
    pub fn new(mac: Mac, uplink: Box<dyn Uplink>) -> Ne2k {
        let mut prom = [0u8; PROM_SIZE];
        let mut bytes = [0u8; PROM_SIZE / 2];
        bytes[..6].copy_from_slice(&mac);
        bytes[14] = 0x57;
        bytes[15] = 0x57;
        for (i, b) in bytes.iter().enumerate() {
            prom[2 * i] = *b;
            prom[2 * i + 1] = *b;
        }
        let mut card = Ne2k {
            uplink,
            prom,
            mem: vec![0u8; MEM_END - MEM_START].into_boxed_slice(),
            cr: 0,
            isr: 0,
            imr: 0,
            dcr: 0,
            rcr: 0,
            tcr: 0,
            tsr: 0,
            rsr: 0,
            pstart: 0,
            pstop: 0,
            bnry: 0,
            curr: 0,
            tpsr: 0,
            tbcr: 0,
            par: [0; 6],
            mar: [0; 8],
            cntr: [0; 3],
            rsar: 0,
            rbcr: 0,
            dma: Dma::Idle,
            send_next: None,
            stats: Ne2kStats::default(),
        };
        card.reset();
        card
    }

    /// The card's counters.
    pub fn stats(&self) -> Ne2kStats {
        self.stats
    }

    /// Whether the card would interrupt (ISR & IMR); never delivered.
    pub fn interrupt_pending(&self) -> bool {
        self.isr & self.imr & 0x7f != 0
    }

    /// The hardware reset (power-on, the reset port): stopped, remote DMA aborted, ISR.RST,
    /// no interrupt enabled, internal loopback. Memory, PAR, MAR and the ring registers keep
    /// their contents.
    fn reset(&mut self) {
        self.cr = CR_STP | RD_ABORT;
        self.isr = ISR_RST;
        self.imr = 0;
        self.tcr = 0x02;
        self.dcr &= !0x01;
        self.rbcr = 0;
        self.dma = Dma::Idle;
        self.send_next = None;
    }

    fn bad(&mut self) {
        self.stats.bad_accesses = self.stats.bad_accesses.saturating_add(1);
    }

    fn started(&self) -> bool {
        self.cr & CR_STP == 0 && self.cr & CR_STA != 0
    }

    /// Takes what the uplink has for the card.
    fn pull(&mut self) {
        for _ in 0..PULL_FRAMES {
            let Some(frame) = self.uplink.recv() else {
                break;
            };
            self.receive(&frame);
        }
    }

    // ---- memory -------------------------------------------------------------------------

    fn mem_read(&mut self, addr: u16) -> u8 {
        let a = usize::from(addr);
        if a < PROM_SIZE {
            self.prom[a]
        } else if (MEM_START..MEM_END).contains(&a) {
            self.mem[a - MEM_START]
        } else {
            self.bad();
            0xff
        }
    }

    fn mem_write(&mut self, addr: u16, v: u8) {
        let a = usize::from(addr);
        if (MEM_START..MEM_END).contains(&a) {
            self.mem[a - MEM_START] = v;
        } else {
            self.bad();
        }
    }

    /// The ring's pages, if the ring registers describe a valid ring.
    fn ring(&self) -> Option<(u8, u8)> {
        let ok = self.pstart >= MEM_FIRST_PAGE
            && u16::from(self.pstop) <= MEM_END_PAGE
            && self.pstart < self.pstop;
        ok.then_some((self.pstart, self.pstop))
    }

    // ---- remote DMA ---------------------------------------------------------------------

    fn dma_advance(&mut self) {
        self.rsar = self.rsar.wrapping_add(1);
        if self.pstart < self.pstop && self.rsar == u16::from(self.pstop) << 8 {
            self.rsar = u16::from(self.pstart) << 8;
        }
        self.rbcr -= 1;
        if self.rbcr == 0 {
            self.dma_complete();
        }
    }

    fn dma_complete(&mut self) {
        self.isr |= ISR_RDC;
        if let Some(next) = self.send_next.take() {
            self.bnry = next;
        }
    }

    /// Moves one item of the data port to the guest.
    fn data_read(&mut self, item: &mut [u8]) {
        if self.dma != Dma::Read || self.rbcr == 0 {
            item.fill(0xff);
            return self.bad();
        }
        for b in item {
            *b = if self.rbcr > 0 {
                let v = self.mem_read(self.rsar);
                self.dma_advance();
                v
            } else {
                0xff
            };
        }
    }

    /// Takes one item from the guest on the data port.
    fn data_write(&mut self, item: &[u8]) {
        if self.dma != Dma::Write || self.rbcr == 0 {
            return self.bad();
        }
        for &b in item {
            if self.rbcr == 0 {
                break;
            }
            self.mem_write(self.rsar, b);
            self.dma_advance();
        }
    }

    // ---- commands -----------------------------------------------------------------------

    fn write_cr(&mut self, v: u8) {
        if v & CR_STP != 0 {
            self.cr = (self.cr & !CR_STA) | CR_STP;
            self.isr |= ISR_RST;
        } else if v & CR_STA != 0 {
            self.cr = (self.cr & !CR_STP) | CR_STA;
            self.isr &= !ISR_RST;
        }
        self.cr = (self.cr & (CR_STP | CR_STA)) | (v & (CR_RD | CR_PS));
        let rd = v & CR_RD;
        self.send_next = None;
        self.dma = match rd {
            RD_READ => Dma::Read,
            RD_WRITE => Dma::Write,
            RD_SEND => {
                self.start_send_packet();
                Dma::Read
            }
            _ => Dma::Idle,
        };
        if matches!(rd, RD_READ | RD_WRITE) && self.rbcr == 0 {
            self.dma_complete();
        }
        if v & CR_TXP != 0 {
            if self.started() {
                self.transmit();
            } else {
                self.bad();
            }
        }
    }

    /// Send packet: the remote DMA reads the frame at BNRY, header included.
    fn start_send_packet(&mut self) {
        let Some((pstart, pstop)) = self.ring().filter(|&(s, e)| (s..e).contains(&self.bnry))
        else {
            self.bad();
            self.rbcr = 0;
            return self.dma_complete();
        };
        let at = u16::from(self.bnry) << 8;
        let next = self.mem_read(at + 1);
        let count = u16::from_le_bytes([self.mem_read(at + 2), self.mem_read(at + 3)]);
        let ring_bytes = u16::from(pstop - pstart) << 8;
        self.rsar = at;
        self.rbcr = count.min(ring_bytes);
        self.send_next = Some(if (pstart..pstop).contains(&next) {
            next
        } else {
            pstart
        });
        if self.rbcr == 0 {
            self.dma_complete();
        }
    }

    fn transmit(&mut self) {
        let start = usize::from(self.tpsr) << 8;
        let len = usize::from(self.tbcr);
        let ok =
            start >= MEM_START && start + len <= MEM_END && (ETH_HLEN..=MAX_FRAME).contains(&len);
        if !ok {
            self.tsr = TSR_ABT;
            self.isr |= ISR_TXE;
            self.stats.tx_errors = self.stats.tx_errors.saturating_add(1);
            return self.bad();
        }
        let frame = self.mem[start - MEM_START..start - MEM_START + len].to_vec();
        if self.tcr & TCR_LB != 0 {
            self.receive(&frame);
        } else {
            self.uplink.send(&frame);
        }
        self.tsr = TSR_PTX;
        self.isr |= ISR_PTX;
        self.stats.tx_frames = self.stats.tx_frames.saturating_add(1);
    }

    // ---- receiving ----------------------------------------------------------------------

    /// Whether the address filter takes a frame for `dst`.
    fn accepts(&self, dst: &[u8]) -> bool {
        if self.rcr & RCR_PRO != 0 {
            return true;
        }
        if dst == [0xff; 6] {
            return self.rcr & RCR_AB != 0;
        }
        if dst[0] & 1 != 0 {
            let index = ether_crc(dst) >> 26;
            return self.rcr & RCR_AM != 0
                && self.mar[(index >> 3) as usize] & (1 << (index & 7)) != 0;
        }
        dst == self.par
    }

    fn missed(&mut self) {
        self.stats.rx_dropped = self.stats.rx_dropped.saturating_add(1);
        self.rsr = RSR_MPA;
        self.cntr[2] = self.cntr[2].saturating_add(1);
        if self.cntr[2] & 0x80 != 0 {
            self.isr |= ISR_CNT;
        }
    }

    /// A frame from the network (or looped back).
    fn receive(&mut self, frame: &[u8]) {
        if !self.started() || !(ETH_HLEN..=MAX_FRAME).contains(&frame.len()) {
            self.stats.rx_dropped = self.stats.rx_dropped.saturating_add(1);
            return;
        }
        let dst = &frame[..6];
        if !self.accepts(dst) {
            self.stats.rx_filtered = self.stats.rx_filtered.saturating_add(1);
            return;
        }
        let status = RSR_PRX | if dst[0] & 1 != 0 { RSR_PHY } else { 0 };
        if self.rcr & RCR_MON != 0 {
            return self.missed();
        }
        let Some((pstart, pstop)) = self
            .ring()
            .filter(|&(s, e)| (s..e).contains(&self.curr) && (s..e).contains(&self.bnry))
        else {
            self.stats.rx_dropped = self.stats.rx_dropped.saturating_add(1);
            return;
        };
        let ring = usize::from(pstop - pstart);
        let len = frame.len().max(MIN_FRAME);
        let total = len + 4;
        let pages = total.div_ceil(PAGE);
        // Free pages from CURR up to (not including) BNRY; BNRY == CURR: all of them.
        let free = (usize::from(self.bnry) + ring - usize::from(self.curr) - 1) % ring + 1;
        if pages >= free {
            self.isr |= ISR_OVW;
            return self.missed();
        }
        let mut next = usize::from(self.curr) + pages;
        if next >= usize::from(pstop) {
            next -= ring;
        }
        let next = next as u8;
        let count = (total as u16).to_le_bytes();
        let header = [status, next, count[0], count[1]];
        let (lo, hi) = (usize::from(pstart) << 8, usize::from(pstop) << 8);
        let mut at = usize::from(self.curr) << 8;
        let padding = std::iter::repeat_n(0u8, len - frame.len());
        for b in header
            .into_iter()
            .chain(frame.iter().copied())
            .chain(padding)
        {
            self.mem[at - MEM_START] = b;
            at += 1;
            if at == hi {
                at = lo;
            }
        }
        self.curr = next;
        self.rsr = status;
        self.isr |= ISR_PRX;
        self.stats.rx_frames = self.stats.rx_frames.saturating_add(1);
    }

    // ---- registers ----------------------------------------------------------------------

    fn read_reg(&mut self, off: u16) -> u8 {
        if off == 0 {
            return self.cr;
        }
        let v = match (self.cr >> 6, off) {
            (0, 0x01) => Some(0),
            (0, 0x02) => Some(self.curr),
            (0, 0x03) => Some(self.bnry),
            (0, 0x04) => Some(self.tsr),
            (0, 0x05) | (0, 0x06) => Some(0),
            (0, 0x07) => Some(self.isr),
            (0, 0x08) => Some(self.rsar as u8),
            (0, 0x09) => Some((self.rsar >> 8) as u8),
            (0, 0x0c) => Some(self.rsr),
            (0, 0x0d..=0x0f) => {
                let i = usize::from(off - 0x0d);
                let v = self.cntr[i];
                self.cntr[i] = 0;
                if self.cntr.iter().all(|&c| c & 0x80 == 0) {
                    self.isr &= !ISR_CNT;
                }
                Some(v)
            }
            (1, 0x01..=0x06) => Some(self.par[usize::from(off - 1)]),
            (1, 0x07) => Some(self.curr),
            (1, 0x08..=0x0f) => Some(self.mar[usize::from(off - 8)]),
            (2, 0x01) => Some(self.pstart),
            (2, 0x02) => Some(self.pstop),
            (2, 0x03) => Some(self.send_next.unwrap_or(0)),
            (2, 0x04) => Some(self.tpsr),
            (2, 0x05) => Some(self.curr),
            (2, 0x06) => Some(self.curr),
            (2, 0x07) => Some(0),
            (2, 0x0c) => Some(self.rcr | 0xc0),
            (2, 0x0d) => Some(self.tcr | 0xe0),
            (2, 0x0e) => Some(self.dcr | 0x80),
            (2, 0x0f) => Some(self.imr | 0x80),
            _ => None,
        };
        v.unwrap_or_else(|| {
            self.bad();
            0xff
        })
    }

    fn write_reg(&mut self, off: u16, v: u8) {
        if off == 0 {
            return self.write_cr(v);
        }
        match (self.cr >> 6, off) {
            (0, 0x01) => self.pstart = v,
            (0, 0x02) => self.pstop = v,
            (0, 0x03) => self.bnry = v,
            (0, 0x04) => self.tpsr = v,
            (0, 0x05) => self.tbcr = (self.tbcr & 0xff00) | u16::from(v),
            (0, 0x06) => self.tbcr = (self.tbcr & 0x00ff) | (u16::from(v) << 8),
            (0, 0x07) => self.isr &= !(v & !ISR_RST),
            (0, 0x08) => self.rsar = (self.rsar & 0xff00) | u16::from(v),
            (0, 0x09) => self.rsar = (self.rsar & 0x00ff) | (u16::from(v) << 8),
            (0, 0x0a) => self.rbcr = (self.rbcr & 0xff00) | u16::from(v),
            (0, 0x0b) => self.rbcr = (self.rbcr & 0x00ff) | (u16::from(v) << 8),
            (0, 0x0c) => self.rcr = v & 0x3f,
            (0, 0x0d) => self.tcr = v & 0x1f,
            (0, 0x0e) => self.dcr = v & 0x7f,
            (0, 0x0f) => self.imr = v & 0x7f,
            (1, 0x01..=0x06) => self.par[usize::from(off - 1)] = v,
            (1, 0x07) => self.curr = v,
            (1, 0x08..=0x0f) => self.mar[usize::from(off - 8)] = v,
            _ => self.bad(),
        }
    }
}

impl PortDevice for Ne2k {
    fn name(&self) -> &'static str {
        "ne2k"
    }

    fn ports(&self) -> Vec<u16> {
        (NE2K_BASE..NE2K_BASE + NE2K_PORTS).collect()
    }

    /// Registers are 8 bits wide: a wider item reaches consecutive registers, one byte each
    /// (bytes past register `0x0F` are dropped and counted). The data port takes items of any
    /// size; the reset ports ignore writes.
    fn write(&mut self, port: u16, size: u8, data: &[u8]) {
        self.pull();
        let off = port.wrapping_sub(NE2K_BASE);
        let size = usize::from(size.max(1));
        match off {
            DATA..RESET => data.chunks(size).for_each(|item| self.data_write(item)),
            RESET..NE2K_PORTS => {}
            _ => {
                for item in data.chunks(size) {
                    for (i, &b) in item.iter().enumerate() {
                        match u16::try_from(i).ok().map(|i| off + i).filter(|&r| r < DATA) {
                            Some(r) => self.write_reg(r, b),
                            None => self.bad(),
                        }
                    }
                }
            }
        }
    }

    fn read(&mut self, port: u16, size: u8, out: &mut [u8]) {
        self.pull();
        let off = port.wrapping_sub(NE2K_BASE);
        let size = usize::from(size.max(1));
        match off {
            DATA..RESET => out.chunks_mut(size).for_each(|item| self.data_read(item)),
            RESET..NE2K_PORTS => {
                self.reset();
                out.fill(0);
            }
            _ => {
                for item in out.chunks_mut(size) {
                    for (i, b) in item.iter_mut().enumerate() {
                        *b = match u16::try_from(i).ok().map(|i| off + i).filter(|&r| r < DATA) {
                            Some(r) => self.read_reg(r),
                            None => {
                                self.bad();
                                0xff
                            }
                        };
                    }
                }
            }
        }
    }
}

/// The Ethernet CRC-32 as the DP8390's multicast hash computes it: polynomial `0x04C11DB7`,
/// all-ones start, bits fed least significant first, not inverted at the end.
pub fn ether_crc(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        let mut b = byte;
        for _ in 0..8 {
            let carry = (crc >> 31) ^ u32::from(b & 1);
            crc <<= 1;
            b >>= 1;
            if carry != 0 {
                crc ^= 0x04c1_1db7;
            }
        }
    }
    crc
}

#[cfg(test)]
#[path = "ne2k_tests.rs"]
mod tests;
