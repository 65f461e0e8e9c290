//! The NE2000 card driven the way a polling driver drives it, through its ports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::devices::PortBus;

const B: u16 = NE2K_BASE;
const CR: u16 = B;
const ISR: u16 = B + 0x07;
const DATA_PORT: u16 = B + 0x10;
const RESET_PORT: u16 = B + 0x1f;
const MAC: Mac = [0x02, 0x00, 0x00, 0xff, 0x07, 0x00];
const BCAST: Mac = [0xff; 6];
const OTHER: Mac = [0x02, 0, 0, 0, 9, 9];

const TX_PAGE: u8 = 0x40;
const PSTART: u8 = 0x46;
const PSTOP: u8 = 0x80;

/// The uplink's two directions, shared with the test.
#[derive(Clone, Default)]
struct Wire {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

impl Uplink for Wire {
    fn send(&mut self, frame: &[u8]) {
        self.sent.lock().unwrap().push(frame.to_vec());
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.inbox.lock().unwrap().pop_front()
    }
}

impl Wire {
    fn deliver(&self, frame: Vec<u8>) {
        self.inbox.lock().unwrap().push_back(frame);
    }
    fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

fn frame(dst: Mac, src: Mac, len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((f.len()..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// A polling NE2000 driver over the card's ports.
struct Drv {
    card: Ne2k,
    wire: Wire,
    /// The next page to read from the ring (BNRY + 1).
    next: u8,
}

impl Drv {
    fn new() -> Drv {
        let wire = Wire::default();
        Drv {
            card: Ne2k::new(MAC, Box::new(wire.clone())),
            wire,
            next: PSTART,
        }
    }

    fn outb(&mut self, port: u16, v: u8) {
        self.card.write(port, 1, &[v]);
    }

    fn inb(&mut self, port: u16) -> u8 {
        let mut b = [0];
        self.card.read(port, 1, &mut b);
        b[0]
    }

    fn reg(&mut self, page: u8, off: u16) -> u8 {
        self.outb(CR, (page << 6) | CR_STA | RD_ABORT);
        let v = self.inb(B + off);
        self.outb(CR, CR_STA | RD_ABORT);
        v
    }

    fn dma_setup(&mut self, addr: u16, count: u16, cmd: u8) {
        self.outb(B + 0x0a, count as u8);
        self.outb(B + 0x0b, (count >> 8) as u8);
        self.outb(B + 0x08, addr as u8);
        self.outb(B + 0x09, (addr >> 8) as u8);
        self.outb(CR, CR_STA | cmd);
    }

    /// A remote read of `count` bytes with `rep insw` (count rounded up to words).
    fn remote_read(&mut self, addr: u16, count: u16) -> Vec<u8> {
        self.dma_setup(addr, count, RD_READ);
        let mut v = vec![0u8; usize::from(count.div_ceil(2)) * 2];
        self.card.read(DATA_PORT, 2, &mut v);
        v.truncate(usize::from(count));
        v
    }

    fn remote_write(&mut self, addr: u16, data: &[u8]) {
        self.dma_setup(addr, data.len() as u16, RD_WRITE);
        let mut d = data.to_vec();
        d.resize(data.len().div_ceil(2) * 2, 0);
        self.card.write(DATA_PORT, 2, &d);
    }

    /// Reset, PROM MAC, ring, PAR, RCR = `rcr`, start (as Linux's ne driver does).
    fn init(&mut self, rcr: u8) -> Mac {
        let v = self.inb(RESET_PORT);
        self.outb(RESET_PORT, v);
        assert_ne!(self.inb(ISR) & ISR_RST, 0, "reset acknowledged");
        self.outb(ISR, 0xff);
        self.outb(CR, CR_STP | RD_ABORT);
        self.outb(B + 0x0e, 0x49); // DCR: word-wide, normal, FIFO 8
        self.outb(B + 0x0a, 0);
        self.outb(B + 0x0b, 0);
        self.outb(B + 0x0c, RCR_MON);
        self.outb(B + 0x0d, 0x02); // internal loopback while setting up
        let prom = self.remote_read(0, 32);
        let mac: Mac = std::array::from_fn(|i| prom[2 * i]);
        self.outb(B + 0x01, PSTART);
        self.outb(B + 0x02, PSTOP);
        self.outb(B + 0x03, PSTOP - 1);
        self.outb(B + 0x04, TX_PAGE);
        self.outb(ISR, 0xff);
        self.outb(B + 0x0f, 0);
        self.outb(CR, 0x40 | CR_STP | RD_ABORT);
        for (i, b) in mac.iter().enumerate() {
            self.outb(B + 1 + i as u16, *b);
        }
        for i in 0..8 {
            self.outb(B + 8 + i, 0);
        }
        self.outb(B + 0x07, PSTART);
        self.outb(CR, CR_STA | RD_ABORT);
        self.outb(B + 0x0d, 0);
        self.outb(B + 0x0c, rcr);
        self.next = PSTART;
        mac
    }

    fn send(&mut self, frame: &[u8]) -> u8 {
        self.remote_write(u16::from(TX_PAGE) << 8, frame);
        assert_ne!(self.inb(ISR) & ISR_RDC, 0, "remote write complete");
        self.outb(ISR, ISR_RDC);
        self.outb(B + 0x05, frame.len() as u8);
        self.outb(B + 0x06, (frame.len() >> 8) as u8);
        self.outb(CR, CR_STA | CR_TXP | RD_ABORT);
        self.inb(ISR)
    }

    /// The next frame in the ring: (status, frame), moving BNRY.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        let curr = self.reg(1, 0x07);
        if curr == self.next {
            return None;
        }
        let at = u16::from(self.next) << 8;
        let h = self.remote_read(at, 4);
        let count = u16::from_le_bytes([h[2], h[3]]);
        assert!((PSTART..PSTOP).contains(&h[1]), "next page {:#x}", h[1]);
        let data = self.remote_read(at + 4, count - 4);
        self.next = h[1];
        let bnry = if h[1] == PSTART { PSTOP - 1 } else { h[1] - 1 };
        self.outb(B + 0x03, bnry);
        Some((h[0], data))
    }
}

#[test]
fn resets_into_stop_and_shows_the_prom() {
    let mut d = Drv::new();
    assert_eq!(d.inb(CR), CR_STP | RD_ABORT, "power-on: stopped, no DMA");
    assert_eq!(d.inb(ISR), ISR_RST);
    // ISR.RST cannot be written away; the others are write-1-to-clear.
    d.outb(ISR, 0xff);
    assert_eq!(d.inb(ISR), ISR_RST);
    // The PROM, word-wide, doubled bytes: MAC then zeros then "WW".
    let prom = d.remote_read(0, 32);
    let mut want = Vec::new();
    for b in MAC.iter().chain(&[0; 8]).chain(&[0x57, 0x57]) {
        want.extend([*b, *b]);
    }
    assert_eq!(prom, want);
    assert_ne!(d.inb(ISR) & ISR_RDC, 0, "remote DMA complete");
    // Byte-wide reads see the same bytes.
    d.dma_setup(0, 4, RD_READ);
    let bytes: Vec<u8> = (0..4).map(|_| d.inb(DATA_PORT)).collect();
    assert_eq!(bytes, [MAC[0], MAC[0], MAC[1], MAC[1]]);
    // Started, then reset through the reset port.
    d.outb(CR, CR_STA | RD_ABORT);
    assert_eq!(d.inb(ISR) & ISR_RST, 0, "STA clears RST");
    assert_eq!(d.inb(CR) & (CR_STA | CR_STP), CR_STA);
    assert_eq!(d.inb(RESET_PORT), 0);
    assert_eq!(d.inb(CR), CR_STP | RD_ABORT);
    assert_ne!(d.inb(ISR) & ISR_RST, 0);
    assert_eq!(d.card.stats().bad_accesses, 0);
    assert_eq!(d.init(RCR_AB), MAC);
}

#[test]
fn pages_select_registers() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    // Page 1 holds PAR, CURR and MAR; page 2 reads back the page 0 setup.
    assert_eq!((1..=6).map(|i| d.reg(1, i)).collect::<Vec<_>>(), MAC);
    assert_eq!(d.reg(1, 0x07), PSTART);
    d.outb(CR, 0x40 | CR_STA | RD_ABORT);
    d.outb(B + 0x0a, 0x5a); // MAR2
    assert_eq!(d.inb(B + 0x0a), 0x5a);
    assert_eq!(d.inb(CR) >> 6, 1);
    d.outb(CR, CR_STA | RD_ABORT);
    assert_eq!(d.reg(2, 0x01), PSTART);
    assert_eq!(d.reg(2, 0x02), PSTOP);
    assert_eq!(d.reg(2, 0x04), TX_PAGE);
    assert_eq!(d.reg(2, 0x0c) & 0x3f, RCR_AB);
    assert_eq!(d.reg(2, 0x0e) & 0x7f, 0x49);
    assert_eq!(d.inb(B + 0x03), PSTOP - 1, "BNRY on page 0");
    // CRDA follows the remote DMA.
    d.dma_setup(0x4010, 6, RD_READ);
    let _ = d.inb(DATA_PORT);
    assert_eq!(
        (d.inb(B + 0x08), d.inb(B + 0x09)),
        (0x11, 0x40),
        "CRDA after one byte"
    );
    assert_eq!(d.card.stats().bad_accesses, 0);
    // Page 3 and writes to page 2 reach nothing.
    assert_eq!(d.reg(3, 0x05), 0xff);
    d.outb(CR, 0x80 | CR_STA | RD_ABORT);
    d.outb(B + 0x01, 0x10);
    d.outb(CR, CR_STA | RD_ABORT);
    assert_eq!(d.reg(2, 0x01), PSTART);
    assert_eq!(d.card.stats().bad_accesses, 2);
}

#[test]
fn transmits_the_frame_from_card_memory() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    let f = frame(OTHER, MAC, 1514, 3);
    let isr = d.send(&f);
    assert_eq!(isr & (ISR_PTX | ISR_TXE), ISR_PTX);
    assert_eq!(d.inb(B + 0x04), TSR_PTX);
    assert_eq!(d.inb(CR) & CR_TXP, 0, "TXP clears when done");
    assert_eq!(d.wire.sent(), vec![f]);
    d.outb(ISR, ISR_PTX);
    assert_eq!(d.inb(ISR) & ISR_PTX, 0, "write 1 to clear");
    // An odd length goes out exactly.
    let f = frame(BCAST, MAC, 61, 4);
    d.send(&f);
    assert_eq!(d.wire.sent(), vec![f]);
    // Too long, too short, or outside memory: TXE, nothing sent.
    for (page, len) in [(TX_PAGE, 1515u16), (TX_PAGE, 13), (0x7f, 0x200), (0x00, 60)] {
        d.outb(ISR, 0xff);
        d.outb(B + 0x04, page);
        d.outb(B + 0x05, len as u8);
        d.outb(B + 0x06, (len >> 8) as u8);
        d.outb(CR, CR_STA | CR_TXP | RD_ABORT);
        assert_eq!(d.inb(ISR) & (ISR_PTX | ISR_TXE), ISR_TXE, "{page:#x} {len}");
        assert_eq!(d.inb(B + 0x04), TSR_ABT);
    }
    assert!(d.wire.sent().is_empty());
    assert_eq!(d.card.stats().tx_errors, 4);
    assert_eq!(d.card.stats().tx_frames, 2);
    // Stopped: TXP does nothing.
    d.outb(B + 0x04, TX_PAGE);
    d.outb(B + 0x05, 60);
    d.outb(B + 0x06, 0);
    d.outb(CR, CR_STP | RD_ABORT);
    d.outb(CR, CR_STP | CR_TXP | RD_ABORT);
    assert!(d.wire.sent().is_empty());
}

#[test]
fn receives_own_and_broadcast_frames_into_the_ring() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    let own = frame(MAC, OTHER, 100, 1);
    let short = frame(BCAST, OTHER, 42, 2);
    let not_ours = frame(OTHER, MAC, 100, 3);
    let multicast = frame([0x01, 0x00, 0x5e, 0, 0, 1], OTHER, 80, 4);
    for f in [&own, &not_ours, &short, &multicast] {
        d.wire.deliver(f.clone());
    }
    assert_eq!(d.inb(ISR) & ISR_PRX, ISR_PRX, "taken on the next access");
    let (status, got) = d.recv().unwrap();
    assert_eq!((status, got), (RSR_PRX, own.clone()));
    // A short frame is padded to 60 bytes; a broadcast is flagged PHY.
    let (status, got) = d.recv().unwrap();
    assert_eq!(status, RSR_PRX | RSR_PHY);
    assert_eq!(got.len(), 60);
    assert_eq!(&got[..42], &short[..]);
    assert!(got[42..].iter().all(|&b| b == 0));
    assert!(d.recv().is_none());
    let s = d.card.stats();
    assert_eq!((s.rx_frames, s.rx_filtered, s.bad_accesses), (2, 2, 0));
    // Header layout: status, next page, count (4 + frame) at the first page.
    let h = d.remote_read(u16::from(PSTART) << 8, 4);
    assert_eq!(h, [RSR_PRX, PSTART + 1, 104, 0]);
    // Promiscuous takes everything.
    d.outb(B + 0x0c, RCR_PRO);
    d.wire.deliver(not_ours.clone());
    assert_eq!(d.recv().unwrap().1, not_ours);
    // Stopped: nothing is received.
    d.outb(CR, CR_STP | RD_ABORT);
    d.wire.deliver(own.clone());
    d.outb(CR, CR_STA | RD_ABORT);
    assert!(d.recv().is_none());
}

#[test]
fn the_ring_wraps_and_remote_dma_follows() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    // 58 pages in the ring; frames of 6 pages each go round it several times.
    for i in 0..40u8 {
        let f = frame(MAC, OTHER, 1500, i);
        d.wire.deliver(f.clone());
        let (_, got) = d.recv().expect("a frame");
        assert_eq!(got, f, "frame {i}");
    }
    assert_eq!(d.card.stats().rx_frames, 40);
    assert_eq!(d.card.stats().rx_dropped, 0);
}

#[test]
fn a_full_ring_drops_with_ovw_and_recovers() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    // 6 pages per frame, 57 usable pages: 9 frames fit.
    for i in 0..12u8 {
        d.wire.deliver(frame(MAC, OTHER, 1500, i));
    }
    let isr = d.inb(ISR);
    assert_eq!(isr & (ISR_PRX | ISR_OVW), ISR_PRX | ISR_OVW);
    assert_eq!(d.card.stats().rx_frames, 9);
    assert_eq!(d.card.stats().rx_dropped, 3);
    assert_eq!(d.inb(B + 0x0f), 3, "CNTR2 counts missed frames");
    assert_eq!(d.inb(B + 0x0f), 0, "cleared when read");
    assert_eq!(d.inb(B + 0x0c), RSR_MPA);
    for i in 0..9u8 {
        assert_eq!(d.recv().unwrap().1, frame(MAC, OTHER, 1500, i));
    }
    assert!(d.recv().is_none());
    d.outb(ISR, 0xff);
    d.wire.deliver(frame(MAC, OTHER, 200, 50));
    assert_eq!(d.recv().unwrap().1, frame(MAC, OTHER, 200, 50));
    assert_eq!(d.inb(ISR) & ISR_OVW, 0);
}

#[test]
fn the_ring_is_never_filled_up_to_bnry_under_either_convention() {
    // BNRY == CURR (the datasheet's "empty"): all but one page may be used.
    let mut d = Drv::new();
    d.init(RCR_AB);
    d.outb(B + 0x03, PSTART);
    // 58 pages; 1-page frames: 57 fit.
    for i in 0..60u8 {
        d.wire.deliver(frame(MAC, OTHER, 100, i));
    }
    d.inb(ISR);
    assert_eq!(d.card.stats().rx_frames, 57);
    assert_eq!(
        d.reg(1, 0x07),
        PSTART - 1 + 58,
        "CURR stops one short of BNRY"
    );
}

#[test]
fn multicast_goes_through_the_mar_hash() {
    // The DP8390 hash uses the Ethernet CRC before inversion, register not reflected: the
    // bit-reverse of the standard CRC-32's register (check value 0xCBF43926).
    assert_eq!(ether_crc(b"123456789"), (!0xcbf4_3926u32).reverse_bits());
    let mut d = Drv::new();
    d.init(RCR_AB | RCR_AM);
    let group: Mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    let index = ether_crc(&group) >> 26;
    // No MAR bit: refused.
    d.wire.deliver(frame(group, OTHER, 64, 1));
    assert!(d.recv().is_none());
    d.outb(CR, 0x40 | CR_STA | RD_ABORT);
    d.outb(B + 8 + (index >> 3) as u16, 1 << (index & 7));
    d.outb(CR, CR_STA | RD_ABORT);
    d.wire.deliver(frame(group, OTHER, 64, 2));
    let (status, _) = d.recv().expect("hashed in");
    assert_eq!(status, RSR_PRX | RSR_PHY);
    // Of 256 groups, exactly those whose hash hits that bit get in.
    let groups: Vec<Mac> = (0..=255u8).map(|i| [0x01, 0, 0x5e, 0, 1, i]).collect();
    let want = groups
        .iter()
        .filter(|g| ether_crc(&g[..]) >> 26 == index)
        .count();
    for g in &groups {
        d.wire.deliver(frame(*g, OTHER, 64, 3));
        d.inb(ISR);
        while d.recv().is_some() {}
    }
    assert_eq!(d.card.stats().rx_frames as usize, 1 + want);
    assert!(want < 64, "the hash filters");
    // All ones: every group; AM off: none.
    d.outb(CR, 0x40 | CR_STA | RD_ABORT);
    for i in 0..8 {
        d.outb(B + 8 + i, 0xff);
    }
    d.outb(CR, CR_STA | RD_ABORT);
    d.wire.deliver(frame([0x01, 2, 3, 4, 5, 6], OTHER, 64, 4));
    assert!(d.recv().is_some());
    d.outb(B + 0x0c, RCR_AB);
    d.wire.deliver(frame([0x01, 2, 3, 4, 5, 6], OTHER, 64, 5));
    assert!(d.recv().is_none());
}

#[test]
fn send_packet_reads_the_frame_at_bnry_and_moves_it() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    // The datasheet's convention: BNRY is the first unread page.
    d.outb(B + 0x03, PSTART);
    let f = frame(MAC, OTHER, 300, 9);
    d.wire.deliver(f.clone());
    d.inb(ISR);
    d.outb(CR, CR_STA | RD_SEND);
    let mut got = vec![0u8; 304];
    d.card.read(DATA_PORT, 2, &mut got);
    assert_eq!(&got[..4], &[RSR_PRX, PSTART + 2, 0x30, 0x01]);
    assert_eq!(&got[4..], &f[..]);
    assert_ne!(d.inb(ISR) & ISR_RDC, 0);
    assert_eq!(d.inb(B + 0x03), PSTART + 2, "BNRY moved to the next frame");
    assert_eq!(d.card.stats().bad_accesses, 0);
}

#[test]
fn loopback_mode_receives_what_it_sends() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    d.outb(B + 0x0d, 0x02);
    let f = frame(MAC, MAC, 70, 1);
    d.send(&f);
    assert!(d.wire.sent().is_empty(), "nothing on the wire");
    assert_eq!(d.recv().unwrap().1, f);
}

#[test]
fn bad_accesses_are_answered_and_counted() {
    let mut d = Drv::new();
    d.init(RCR_AB);
    let base = d.card.stats().bad_accesses;
    // The data port without a transfer.
    assert_eq!(d.inb(DATA_PORT), 0xff);
    d.outb(DATA_PORT, 1);
    // Remote DMA outside the card's memory, and writes to the PROM (counted per byte).
    assert_eq!(d.remote_read(0x2000, 2), [0xff, 0xff]);
    d.remote_write(0x0000, &[1, 2]);
    assert_eq!(d.remote_read(0, 2), [MAC[0], MAC[0]]);
    // A read past the end of a transfer; a write in the wrong direction.
    d.dma_setup(0x4000, 2, RD_READ);
    let mut w = [0u8; 4];
    d.card.read(DATA_PORT, 2, &mut w);
    assert_eq!(w[2..], [0xff, 0xff]);
    d.dma_setup(0x4000, 2, RD_READ);
    d.card.write(DATA_PORT, 2, &[9, 9]);
    // Registers past 0x0F through a wide access.
    let mut w = [0u8; 2];
    d.card.read(B + 0x0f, 2, &mut w);
    assert_eq!(w[1], 0xff);
    assert_eq!(d.card.stats().bad_accesses - base, 9);
    // A word access ending an odd-length transfer is not an error.
    d.dma_setup(0x4000, 3, RD_READ);
    let mut w = [0u8; 4];
    d.card.read(DATA_PORT, 2, &mut w);
    assert_eq!(w[3], 0xff);
    assert_eq!(d.card.stats().bad_accesses - base, 9);
    // A ring outside memory receives nothing (and breaks nothing).
    d.outb(CR, CR_STP | RD_ABORT);
    d.outb(B + 0x01, 0x10);
    d.outb(B + 0x02, 0xff);
    d.outb(CR, CR_STA | RD_ABORT);
    d.wire.deliver(frame(MAC, OTHER, 100, 0));
    d.inb(ISR);
    assert_eq!(d.card.stats().rx_frames, 0);
    d.outb(CR, CR_STA | RD_SEND);
    assert_ne!(d.inb(ISR) & ISR_RDC, 0);
}

#[test]
fn the_bus_routes_all_32_ports_and_string_io() {
    let wire = Wire::default();
    let mut bus = PortBus::new();
    bus.add(Box::new(Ne2k::new(MAC, Box::new(wire.clone()))))
        .unwrap();
    assert_eq!(bus.ports(), (0x300..0x320).collect::<Vec<u16>>());
    assert!(!bus.claims(0x320) && !bus.claims(0x2ff));
    let mut b = [0];
    bus.input(CR, 1, &mut b).unwrap();
    assert_eq!(b[0], CR_STP | RD_ABORT);
    // A PROM read through `rep insw` in one access, and through an alias of the data port.
    for (port, v) in [(0x0a, 32), (0x0b, 0), (0x08, 0), (0x09, 0), (0x00, 0x0a)] {
        bus.out(B + port, 1, &[v]).unwrap();
    }
    let mut prom = [0u8; 32];
    bus.input(B + 0x17, 2, &mut prom).unwrap();
    assert_eq!(prom[..12], [2, 2, 0, 0, 0, 0, 0xff, 0xff, 7, 7, 0, 0]);
}

#[test]
fn a_switch_uplink_joins_the_switch_until_dropped() {
    let reg = Registry::new();
    let peer = Arc::new(VifQueue::new(Arc::new(Signal::default())));
    let peer_port = reg.switches().attach("lan", Arc::clone(&peer), None);
    let up = SwitchUplink::attach(Arc::clone(&reg), "lan", MAC);
    assert_eq!(reg.switches().port_count("lan"), 2);
    let mut card = Ne2k::new(MAC, Box::new(up));
    let mut d = Drv {
        card: Ne2k::new(OTHER, Box::new(Wire::default())),
        wire: Wire::default(),
        next: PSTART,
    };
    std::mem::swap(&mut d.card, &mut card);
    drop(card);
    d.init(RCR_AB);
    let f = frame(BCAST, MAC, 60, 1);
    d.send(&f);
    assert_eq!(peer.pop(), Some(f));
    let g = frame(MAC, OTHER, 60, 2);
    reg.switches().forward("lan", peer_port, &g);
    assert_eq!(d.recv().unwrap().1, g);
    drop(d);
    assert_eq!(reg.switches().port_count("lan"), 1, "detached on drop");
}

#[test]
fn the_card_mac_differs_from_every_vif() {
    for dom in [1u16, 2, 300] {
        let m = mac_for(dom);
        assert_eq!(m[0] & 0b11, 0b10, "locally administered, unicast");
        for n in 0..crate::config::MAX_NETS as u32 {
            assert_ne!(m, crate::netback::mac_for(dom, n));
        }
        assert_ne!(m, mac_for(dom + 1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of accesses, with frames arriving, neither panics nor sends a frame the
    /// card's memory did not hold in full.
    #[test]
    fn random_accesses_never_panic(ops in prop::collection::vec(
        (0u16..0x20, prop::sample::select(vec![1u8, 2, 4]), 1usize..4, any::<bool>(), any::<u8>()),
        0..400,
    )) {
        let mut d = Drv::new();
        for (i, (off, size, count, write, v)) in ops.into_iter().enumerate() {
            if i % 16 == 0 {
                d.wire.deliver(frame(if v & 1 == 0 { MAC } else { BCAST }, OTHER, 14 + usize::from(v) * 5, v));
            }
            let mut buf = vec![v; usize::from(size) * count];
            if write {
                d.card.write(B + off, size, &buf);
            } else {
                d.card.read(B + off, size, &mut buf);
            }
        }
        for f in d.wire.sent() {
            prop_assert!((14..=1514).contains(&f.len()));
        }
    }
}
