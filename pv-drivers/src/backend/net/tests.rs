//! Tests of the network backend: a fake host over local pages and a fake frontend driving
//! real `FrontRing`s.

use std::string::ToString;
use std::sync::atomic::AtomicU32;
use std::vec;
use std::vec::Vec;

use hypercall_abi::io::net::*;
use hypercall_abi::ring::FrontRing;
use proptest::prelude::*;

use super::*;

use crate::backend::test_host::{FakeHost, Pages};

const PAGES: usize = 40;

struct Rig {
    tx: FrontRing<NetTxRequest, NetTxResponse>,
    rx: FrontRing<NetRxRequest, NetRxResponse>,
    be: NetBackend<FakeHost>,
    /// Page 0: TX ring, page 1: RX ring. Dropped after the rings (field order).
    ring_mem: Pages,
}

impl Rig {
    fn new(mtu: u16) -> Rig {
        let ring_mem = Pages::new(2);
        // SAFETY: one page each, page-aligned, freed after the rings (field order), accessed
        // only through the rings (and atomically by the hostile tests).
        let (tx, rx, btx, brx) = unsafe {
            (
                FrontRing::new(ring_mem.page(0), PAGE_SIZE).unwrap(),
                FrontRing::new(ring_mem.page(1), PAGE_SIZE).unwrap(),
                NetTxRing::new(ring_mem.page(0), PAGE_SIZE).unwrap(),
                NetRxRing::new(ring_mem.page(1), PAGE_SIZE).unwrap(),
            )
        };
        assert_eq!(tx.size(), TX_RING_SLOTS);
        assert_eq!(rx.size(), RX_RING_SLOTS);
        let be = NetBackend::new(btx, brx, mtu, FakeHost::new(PAGES));
        Rig {
            tx,
            rx,
            be,
            ring_mem,
        }
    }

    fn host(&self) -> &FakeHost {
        self.be.host()
    }

    /// Publishes `slots`, serves the TX ring; returns the frames and the responses.
    fn send(&mut self, slots: &[NetTxRequest]) -> (Vec<Vec<u8>>, Vec<NetTxResponse>) {
        for s in slots {
            self.tx.push_request(s).unwrap();
        }
        self.tx.push_requests_and_check_notify();
        let mut frames = Vec::new();
        self.be
            .process_tx(&mut |f: &[u8]| frames.push(f.to_vec()))
            .unwrap();
        assert_eq!(self.host().live.get(), 0, "pages not released");
        let mut rsps = Vec::new();
        while let Some(r) = self.tx.poll_response().unwrap() {
            rsps.push(r);
        }
        (frames, rsps)
    }

    /// Sends one packet; returns its slots' statuses (checking their ids) and its frame.
    fn packet(&mut self, slots: &[NetTxRequest]) -> (Vec<i16>, Option<Vec<u8>>) {
        let (mut frames, rsps) = self.send(slots);
        assert_eq!(rsps.len(), slots.len());
        assert!(frames.len() <= 1);
        for (s, r) in slots.iter().zip(&rsps) {
            assert_eq!(r.id, s.id);
        }
        (rsps.iter().map(|r| r.status).collect(), frames.pop())
    }

    fn post(&mut self, bufs: &[(u16, u32)]) {
        for &(id, gref) in bufs {
            let req = NetRxRequest { id, pad: 0, gref };
            self.rx.push_request(&req).unwrap();
        }
        self.rx.push_requests_and_check_notify();
    }

    fn rx_responses(&mut self) -> Vec<NetRxResponse> {
        assert_eq!(self.host().live.get(), 0, "pages not released");
        let mut out = Vec::new();
        while let Some(r) = self.rx.poll_response().unwrap() {
            out.push(r);
        }
        out
    }
}

fn slot(id: u16, gref: u32, offset: u16, size: u16, more: bool) -> NetTxRequest {
    NetTxRequest {
        id,
        flags: if more { TXF_MORE_DATA } else { 0 },
        gref,
        offset,
        size,
        pad: 0,
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn st(e: Errno) -> i16 {
    -(e as i16)
}

// ---------------------------------------------------------------------------------------------
// Transmit

#[test]
fn tx_single_slot() {
    let mut rig = Rig::new(DEFAULT_MTU);
    let f = data(60, 1);
    rig.host().mem.write(3, 100, &f);
    let (sts, frame) = rig.packet(&[slot(9, 3, 100, 60, false)]);
    assert_eq!(sts, vec![0]);
    assert_eq!(frame.unwrap(), f);
    assert_eq!(rig.host().notified.get(), 1);
    let s = rig.be.stats();
    assert_eq!((s.tx_packets, s.tx_bytes, s.tx_errors), (1, 60, 0));
}

#[test]
fn tx_fragments_are_gathered_in_order() {
    let mut rig = Rig::new(9000);
    let f = data(9000, 7);
    // First fragment: 4000 bytes at 96 (its size is what the others leave), then 3 bytes at
    // 4093 (unaligned, up to the page's end), then 4997 split over two pages.
    rig.host().mem.write(2, 96, &f[..4000]);
    rig.host().mem.write(5, 4093, &f[4000..4003]);
    rig.host().mem.write(6, 0, &f[4003..8099]);
    rig.host().mem.write(7, 1, &f[8099..]);
    let slots = [
        slot(1, 2, 96, 9000, true),
        slot(2, 5, 4093, 3, true),
        slot(3, 6, 0, 4096, true),
        slot(4, 7, 1, 901, false),
    ];
    let (sts, frame) = rig.packet(&slots);
    assert_eq!(sts, vec![0; 4]);
    assert_eq!(frame.unwrap(), f);
}

#[test]
fn tx_largest_packet() {
    let mut rig = Rig::new(u16::MAX);
    assert_eq!(rig.be.mtu(), MAX_MTU);
    assert_eq!(rig.be.max_frame(), MAX_PACKET_SIZE);
    let f = data(MAX_PACKET_SIZE, 3);
    // 17 slots: 2047 bytes at offset 2049, then 15 full pages, then the last 2048 bytes.
    let mut slots = vec![slot(0, 10, 2049, u16::MAX, true)];
    rig.host().mem.write(10, 2049, &f[..2047]);
    let mut pos = 2047;
    for i in 0..16 {
        let len = (f.len() - pos).min(PAGE_SIZE);
        rig.host().mem.write(11 + i, 0, &f[pos..pos + len]);
        slots.push(slot(i as u16 + 1, 11 + i as u32, 0, len as u16, true));
        pos += len;
    }
    slots.last_mut().unwrap().flags = 0;
    assert_eq!(slots.len(), 17);
    let (sts, frame) = rig.packet(&slots);
    assert_eq!(sts, vec![0; 17]);
    assert_eq!(frame.unwrap(), f);
}

#[test]
fn tx_refusals_answer_every_slot() {
    let mut rig = Rig::new(DEFAULT_MTU);
    let e = st(Errno::EINVAL);
    let mut unknown_flag = slot(0, 1, 0, 100, false);
    unknown_flag.flags = 2;
    let mut pad = slot(0, 1, 0, 100, false);
    pad.pad = 1;
    let cases: Vec<(Vec<NetTxRequest>, i16)> = vec![
        (vec![unknown_flag], e),
        (vec![pad], e),
        (vec![slot(0, 1, 0, 0, false)], e),
        (vec![slot(0, 1, 4000, 97, false)], e),
        // The first fragment would be empty, or negative.
        (vec![slot(0, 1, 0, 100, true), slot(1, 2, 0, 100, false)], e),
        (vec![slot(0, 1, 0, 100, true), slot(1, 2, 0, 200, false)], e),
        // An empty later fragment, one past its page's end, a bad flag on a later slot.
        (
            vec![
                slot(0, 1, 0, 100, true),
                slot(1, 2, 0, 0, true),
                slot(2, 3, 0, 50, false),
            ],
            e,
        ),
        (
            vec![slot(0, 1, 0, 100, true), slot(1, 2, 4090, 7, false)],
            e,
        ),
        (
            vec![
                slot(0, 1, 0, 100, true),
                NetTxRequest {
                    flags: 0x8000,
                    ..slot(1, 2, 0, 5, false)
                },
            ],
            e,
        ),
        // Oversized: one byte above mtu + ETH_HLEN; malformed beats oversized.
        (
            vec![slot(0, 1, 0, 1515, true), slot(1, 2, 0, 1, false)],
            st(Errno::E2BIG),
        ),
        (
            vec![slot(0, 1, 3000, 1515, true), slot(1, 2, 0, 1, false)],
            e,
        ),
        // Grants: unknown.
        (
            vec![slot(0, 1, 0, 100, true), slot(1, 9999, 0, 10, false)],
            st(Errno::EACCES),
        ),
    ];
    for (i, (slots, want)) in cases.iter().enumerate() {
        let (sts, frame) = rig.packet(slots);
        assert_eq!(sts, vec![*want; slots.len()], "case {i}");
        assert_eq!(frame, None, "case {i}");
    }
    assert_eq!(rig.be.stats().tx_errors, cases.len() as u64);
    // A read-only grant is enough for TX; the largest frame passes.
    rig.host().set_grant(50, 4, true);
    let (sts, frame) = rig.packet(&[slot(0, 1, 0, 1514, true), slot(1, 50, 0, 0, false)]);
    assert_eq!(sts, vec![st(Errno::EINVAL); 2]);
    assert_eq!(frame, None);
    let (sts, frame) = rig.packet(&[slot(0, 1, 0, 1514, true), slot(1, 50, 0, 14, false)]);
    assert_eq!(sts, vec![0; 2]);
    assert_eq!(frame.unwrap().len(), 1514);
}

#[test]
fn tx_endless_chain_is_cut_at_max_slots() {
    let mut rig = Rig::new(DEFAULT_MTU);
    let mut slots: Vec<_> = (0..MAX_TX_SLOTS as u16 + 2)
        .map(|i| slot(i, 1, 0, 1, true))
        .collect();
    slots.push(slot(100, 1, 0, 60, false));
    let (frames, rsps) = rig.send(&slots);
    // The first MAX_TX_SLOTS slots are one malformed packet; the next chain (2 slots with
    // MORE_DATA, then a 60-byte slot) says 1 byte in all, less than the others: malformed too.
    assert!(frames.is_empty());
    assert_eq!(rsps.len(), slots.len());
    assert!(rsps.iter().all(|r| r.status == st(Errno::EINVAL)));
    assert_eq!(rig.be.stats().tx_errors, 2);
    // And the ring still works.
    let (sts, frame) = rig.packet(&[slot(5, 1, 0, 60, false)]);
    assert_eq!((sts, frame.map(|f| f.len())), (vec![0], Some(60)));
}

#[test]
fn tx_incomplete_chain_waits_for_its_end() {
    let mut rig = Rig::new(DEFAULT_MTU);
    let f = data(200, 9);
    rig.host().mem.write(1, 0, &f[..150]);
    rig.host().mem.write(2, 0, &f[150..]);
    let (frames, rsps) = rig.send(&[slot(1, 1, 0, 200, true)]);
    assert!(frames.is_empty() && rsps.is_empty());
    assert_eq!(rig.be.pending_tx_slots(), 1);
    let (frames, rsps) = rig.send(&[slot(2, 2, 0, 50, false)]);
    assert_eq!(frames, vec![f]);
    assert_eq!(
        rsps,
        vec![
            NetTxResponse { id: 1, status: 0 },
            NetTxResponse { id: 2, status: 0 }
        ]
    );
    assert_eq!(rig.be.pending_tx_slots(), 0);
}

#[test]
fn tx_sink_can_be_a_trait_object() {
    struct Count(usize);
    impl FrameSink for Count {
        fn frame(&mut self, _: &[u8]) {
            self.0 += 1;
        }
    }
    let mut rig = Rig::new(DEFAULT_MTU);
    for i in 0..3 {
        rig.tx.push_request(&slot(i, 1, 0, 20, false)).unwrap();
    }
    rig.tx.push_requests_and_check_notify();
    let mut c = Count(0);
    let sink: &mut dyn FrameSink = &mut c;
    assert_eq!(rig.be.process_tx(sink), Ok(3));
    assert_eq!(c.0, 3);
}

#[test]
fn broken_rings_disconnect() {
    for tx in [true, false] {
        let mut rig = Rig::new(DEFAULT_MTU);
        let page = if tx { 0 } else { 1 };
        // SAFETY: req_prod, the first u32 of the ring page; accessed atomically.
        let req_prod = unsafe { AtomicU32::from_ptr(rig.ring_mem.page(page).cast()) };
        req_prod.store(1000, std::sync::atomic::Ordering::Release);
        let mut sink = |_: &[u8]| panic!("no frame expected");
        let first = if tx {
            rig.be.process_tx(&mut sink)
        } else {
            rig.be.deliver(&[1; 60]).map(|()| 0)
        };
        assert_eq!(first, Err(NetError::Disconnect));
        assert!(rig.be.is_disconnected());
        req_prod.store(0, std::sync::atomic::Ordering::Release);
        assert_eq!(rig.be.process_tx(&mut sink), Err(NetError::Disconnect));
        assert_eq!(rig.be.deliver(&[1; 60]), Err(NetError::Disconnect));
    }
    assert!(!NetError::Disconnect.to_string().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Receive

#[test]
fn rx_small_and_multi_buffer_frames() {
    let mut rig = Rig::new(9000);
    rig.post(&[(10, 1), (11, 2), (12, 3), (13, 4)]);
    let small = data(60, 4);
    assert_eq!(rig.be.deliver(&small), Ok(()));
    assert_eq!(
        rig.rx_responses(),
        vec![NetRxResponse {
            id: 10,
            offset: 0,
            flags: 0,
            status: 60
        }]
    );
    assert_eq!(rig.host().mem.read(1, 0, 60), small);
    assert_eq!(rig.host().notified.get(), 1);

    let big = data(9000, 5);
    assert_eq!(rig.be.deliver(&big), Ok(()));
    let rsps = rig.rx_responses();
    let want = [
        (11, RXF_MORE_DATA, 4096),
        (12, RXF_MORE_DATA, 4096),
        (13, 0, 808),
    ];
    assert_eq!(rsps.len(), 3);
    for (r, (id, flags, status)) in rsps.iter().zip(want) {
        assert_eq!((r.id, r.offset, r.flags, r.status), (id, 0, flags, status));
    }
    let mut got = rig.host().mem.read(2, 0, 4096);
    got.extend(rig.host().mem.read(3, 0, 4096));
    got.extend(rig.host().mem.read(4, 0, 808));
    assert_eq!(got, big);
    let s = rig.be.stats();
    assert_eq!((s.rx_packets, s.rx_bytes, s.rx_dropped), (2, 9060, 0));
}

#[test]
fn rx_without_enough_buffers_drops_and_keeps_them() {
    let mut rig = Rig::new(9000);
    assert_eq!(rig.be.deliver(&[1; 60]), Err(NetError::NoBuffers));
    rig.post(&[(1, 1), (2, 2)]);
    // 3 buffers needed: nothing is taken.
    assert_eq!(rig.be.deliver(&data(8193, 0)), Err(NetError::NoBuffers));
    assert!(rig.rx_responses().is_empty());
    assert_eq!(rig.be.deliver(&data(8192, 0)), Ok(()));
    assert_eq!(rig.rx_responses().len(), 2);
    // Empty and oversized frames.
    rig.post(&[(3, 3)]);
    assert_eq!(rig.be.deliver(&[]), Err(NetError::BadFrame));
    assert_eq!(rig.be.deliver(&data(9015, 0)), Err(NetError::BadFrame));
    assert!(rig.rx_responses().is_empty());
    assert_eq!(rig.be.stats().rx_dropped, 4);
    assert_eq!(rig.be.stats().rx_packets, 1);
}

#[test]
fn rx_bad_buffers_are_refused_and_their_frame_dropped() {
    let mut rig = Rig::new(9000);
    rig.host().revoke(2);
    rig.host().set_grant(3, 3, true); // read-only: unusable for RX
    rig.post(&[(1, 1), (2, 2), (3, 3)]);
    assert_eq!(
        rig.be.deliver(&data(9000, 1)),
        Err(NetError::BadBuffer(Errno::EACCES))
    );
    let sts: Vec<_> = rig
        .rx_responses()
        .iter()
        .map(|r| (r.id, r.flags, r.status))
        .collect();
    assert_eq!(
        sts,
        vec![
            (1, 0, st(Errno::EAGAIN)),
            (2, 0, st(Errno::EACCES)),
            (3, 0, st(Errno::EACCES))
        ]
    );
    assert_eq!(
        rig.host().mem.read(1, 0, 16),
        vec![0; 16],
        "no data written"
    );
    // A non-zero reserved field.
    rig.rx
        .push_request(&NetRxRequest {
            id: 4,
            pad: 1,
            gref: 4,
        })
        .unwrap();
    rig.rx.push_requests_and_check_notify();
    assert_eq!(
        rig.be.deliver(&[1; 60]),
        Err(NetError::BadBuffer(Errno::EINVAL))
    );
    assert_eq!(rig.rx_responses()[0].status, st(Errno::EINVAL));
    assert_eq!(rig.be.stats().rx_errors, 2);
}

#[test]
fn rx_ids_are_only_echoed() {
    let mut rig = Rig::new(DEFAULT_MTU);
    // The same id twice, and ids the frontend could never have meant: echoed as they are.
    rig.post(&[(7, 1), (7, 2), (u16::MAX, 3)]);
    for _ in 0..3 {
        assert_eq!(rig.be.deliver(&[1; 60]), Ok(()));
    }
    let ids: Vec<_> = rig.rx_responses().iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![7, 7, u16::MAX]);
}

#[test]
fn tx_and_rx_wrap_the_rings() {
    let mut rig = Rig::new(DEFAULT_MTU);
    for round in 0..600u32 {
        let f = data(64, round as u8);
        rig.host().mem.write(1, 8, &f);
        let (sts, frame) = rig.packet(&[slot(round as u16, 1, 8, 64, false)]);
        assert_eq!((sts, frame), (vec![0], Some(f.clone())));
        rig.post(&[(round as u16, 2)]);
        assert_eq!(rig.be.deliver(&f), Ok(()));
        assert_eq!(rig.rx_responses()[0].status, 64);
        assert_eq!(rig.host().mem.read(2, 0, 64), f);
    }
}

// ---------------------------------------------------------------------------------------------
// Random slots

fn any_slot() -> impl Strategy<Value = NetTxRequest> {
    (
        any::<u16>(),
        prop_oneof![4 => Just(0u16), 4 => Just(TXF_MORE_DATA), 1 => any::<u16>()],
        prop_oneof![8 => 0u32..PAGES as u32, 1 => any::<u32>()],
        prop_oneof![4 => 0u16..64, 2 => 0u16..4200, 1 => any::<u16>()],
        prop_oneof![4 => 1u16..2000, 2 => 0u16..9000, 1 => any::<u16>()],
        prop_oneof![8 => Just(0u32), 1 => any::<u32>()],
    )
        .prop_map(|(id, flags, gref, offset, size, pad)| NetTxRequest {
            id,
            flags,
            gref,
            offset,
            size,
            pad,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random (mostly malformed) TX slots: nothing panics, every complete packet's slots are
    /// answered in order with one status the protocol allows, frames have the first slot's
    /// size, and no page is left held.
    #[test]
    fn random_tx_slots_never_panic(
        batches in proptest::collection::vec(proptest::collection::vec(any_slot(), 1..60), 1..5),
        mtu in prop_oneof![Just(DEFAULT_MTU), Just(9000u16), Just(u16::MAX)],
    ) {
        let mut rig = Rig::new(mtu);
        let mut sent = Vec::new();
        for batch in batches {
            let n = batch.len().min(rig.tx.free_requests() as usize);
            let (frames, rsps) = rig.send(&batch[..n]);
            sent.extend_from_slice(&batch[..n]);
            // The answered slots are the oldest ones, whole packets.
            let answered: Vec<_> = sent.drain(..rsps.len()).collect();
            prop_assert_eq!(sent.len(), rig.be.pending_tx_slots());
            prop_assert!(sent.len() < MAX_TX_SLOTS);
            let mut frames = frames.into_iter();
            let mut i = 0;
            while i < answered.len() {
                let mut end = i;
                while answered[end].flags & TXF_MORE_DATA != 0 && end - i + 1 < MAX_TX_SLOTS {
                    end += 1;
                }
                let status = rsps[i].status;
                for k in i..=end {
                    prop_assert_eq!(rsps[k].id, answered[k].id);
                    prop_assert_eq!(rsps[k].status, status);
                }
                let allowed = [0, st(Errno::EINVAL), st(Errno::E2BIG), st(Errno::EACCES)];
                prop_assert!(allowed.contains(&status));
                if status == 0 {
                    let f = frames.next().unwrap();
                    prop_assert_eq!(f.len(), usize::from(answered[i].size));
                    prop_assert!(f.len() <= rig.be.max_frame());
                }
                i = end + 1;
            }
            prop_assert!(frames.next().is_none());
        }
    }

    /// Random RX buffers (some bad) and frames: nothing panics, a frame is either delivered
    /// whole into the oldest buffers or answered as the protocol says, and no page is held.
    #[test]
    fn random_rx_buffers_never_panic(
        ops in proptest::collection::vec(
            prop_oneof![
                (any::<u16>(), prop_oneof![8 => 0u16..1, 1 => any::<u16>()],
                 prop_oneof![8 => 0u32..PAGES as u32, 1 => any::<u32>()])
                    .prop_map(|(id, pad, gref)| Ok(NetRxRequest { id, pad, gref })),
                (0usize..10_000).prop_map(Err),
            ],
            1..80),
    ) {
        let mut rig = Rig::new(9000);
        let mut posted = std::collections::VecDeque::new();
        for op in ops {
            match op {
                Ok(req) => {
                    if rig.rx.free_requests() > 0 {
                        rig.rx.push_request(&req).unwrap();
                        rig.rx.push_requests_and_check_notify();
                        posted.push_back(req);
                    }
                }
                Err(len) => {
                    let f = data(len, len as u8);
                    let r = rig.be.deliver(&f);
                    let rsps = rig.rx_responses();
                    let need = len.div_ceil(PAGE_SIZE);
                    match r {
                        Ok(()) => {
                            prop_assert_eq!(rsps.len(), need);
                            let mut got = Vec::new();
                            for (k, rsp) in rsps.iter().enumerate() {
                                let req = posted.pop_front().unwrap();
                                prop_assert_eq!(rsp.id, req.id);
                                prop_assert_eq!(rsp.flags == RXF_MORE_DATA, k + 1 < need);
                                let page = rig.host().grants.borrow()[&req.gref].0;
                                got.extend(rig.host().mem.read(page, 0, rsp.status as usize));
                            }
                            prop_assert_eq!(got, f);
                        }
                        Err(NetError::BadFrame) => {
                            prop_assert!(len == 0 || len > rig.be.max_frame());
                            prop_assert!(rsps.is_empty());
                        }
                        Err(NetError::NoBuffers) => {
                            prop_assert!(posted.len() < need);
                            prop_assert!(rsps.is_empty());
                        }
                        Err(NetError::BadBuffer(e)) => {
                            prop_assert_eq!(rsps.len(), need);
                            prop_assert!(rsps.iter().all(|r| r.flags == 0 && r.status < 0));
                            prop_assert!(rsps.iter().any(|r| r.status == st(e)));
                            for rsp in &rsps {
                                prop_assert_eq!(rsp.id, posted.pop_front().unwrap().id);
                            }
                        }
                        Err(NetError::Disconnect) => prop_assert!(false, "disconnected"),
                    }
                }
            }
        }
    }
}
