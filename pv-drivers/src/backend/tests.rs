//! Tests of the block backend: a fake host over local pages, a fake frontend driving a real
//! `FrontRing`, and real image files under the temporary directory.

use std::path::PathBuf;
use std::string::ToString;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::vec;
use std::vec::Vec;
use std::{format, fs};

use hypercall_abi::io::blk::*;
use hypercall_abi::ring::FrontRing;
use hypercall_abi::Errno;
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Memory, host, image files

use super::test_host::{FakeHost, Pages};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A file under the temporary directory, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pv-drivers-test-{}-{n}-{tag}", std::process::id());
        TempPath(std::env::temp_dir().join(name))
    }

    /// An image of `len` bytes, each byte a function of its offset.
    fn image(tag: &str, len: usize) -> TempPath {
        let t = TempPath::new(tag);
        fs::write(&t.0, pattern(0, len)).unwrap();
        t
    }

    fn contents(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_dir(&self.0);
    }
}

/// Bytes `off..off + len` of the initial image contents.
fn pattern(off: usize, len: usize) -> Vec<u8> {
    (off..off + len)
        .map(|i| (i ^ (i >> 9) ^ (i >> 17)) as u8 | 1)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fake frontend

const DATA_PAGES: usize = 600;
/// The page (and grant) used for indirect segment arrays.
const IND: usize = DATA_PAGES - 1;

struct Rig {
    front: FrontRing<BlkRequest, BlkResponse>,
    be: BlkBackend<FakeHost>,
    img: TempPath,
    /// The ring page; dropped after both rings.
    ring_mem: Pages,
}

const ALL: BlkFeatures = BlkFeatures {
    read_only: false,
    flush: true,
    discard: true,
};

impl Rig {
    fn new(len: usize, disk_ro: bool, features: BlkFeatures) -> Rig {
        Rig::with_pages(len, disk_ro, features, DATA_PAGES)
    }

    fn with_pages(len: usize, disk_ro: bool, features: BlkFeatures, pages: usize) -> Rig {
        let img = TempPath::image("img", len);
        let disk = Disk::open(&img.0, disk_ro).unwrap();
        let ring_mem = Pages::new(1);
        // SAFETY: one page, page-aligned, freed after both rings (field order), accessed only
        // through the rings (and atomically by `hostile` tests).
        let front = unsafe { FrontRing::new(ring_mem.page(0), PAGE_SIZE) }.unwrap();
        // SAFETY: as above.
        let ring = unsafe { BlkRing::new(ring_mem.page(0), PAGE_SIZE) }.unwrap();
        let be = BlkBackend::new(ring, disk, features, FakeHost::new(pages));
        Rig {
            front,
            be,
            img,
            ring_mem,
        }
    }

    fn host(&self) -> &FakeHost {
        self.be.host()
    }

    /// Sends `reqs` as one batch, serves them, returns the responses.
    fn submit(&mut self, reqs: &[BlkRequest]) -> Vec<BlkResponse> {
        for r in reqs {
            self.front.push_request(r).unwrap();
        }
        self.front.push_requests_and_check_notify();
        let served = self.be.process().unwrap();
        assert_eq!(served, reqs.len());
        assert_eq!(self.host().live.get(), 0, "pages not released");
        let mut out = Vec::new();
        while let Some(r) = self.front.poll_response().unwrap() {
            out.push(r);
        }
        assert!(!self.front.final_check_for_responses().unwrap());
        assert_eq!(out.len(), reqs.len());
        for (q, r) in reqs.iter().zip(&out) {
            assert_eq!((r.id, r.op, r.pad), (q.id, q.op, [0; 3]));
        }
        out
    }

    /// Sends one request; returns its status.
    fn one(&mut self, req: BlkRequest) -> i32 {
        self.submit(&[req])[0].status
    }

    /// Writes segments (list of (page, first, last)) into an indirect page.
    fn set_indirect(&self, segs: &[BlkSegment]) {
        for (i, s) in segs.iter().enumerate() {
            self.host()
                .mem
                .write(IND, i * 8, s.as_bytes_le().as_slice());
        }
    }
}

trait SegBytes {
    fn as_bytes_le(&self) -> [u8; 8];
}

impl SegBytes for BlkSegment {
    fn as_bytes_le(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.gref.to_le_bytes());
        b[4] = self.first_sect;
        b[5] = self.last_sect;
        b[6..].copy_from_slice(&self.pad.to_le_bytes());
        b
    }
}

fn seg(gref: u32, first: u8, last: u8) -> BlkSegment {
    BlkSegment {
        gref,
        first_sect: first,
        last_sect: last,
        pad: 0,
    }
}

fn rw(id: u64, op: u8, sector: u64, segs: &[BlkSegment]) -> BlkRequest {
    let mut r = BlkRequest {
        id,
        sector,
        op,
        nr_segments: segs.len() as u16,
        ..Default::default()
    };
    r.segs[..segs.len()].copy_from_slice(segs);
    r
}

fn indirect(id: u64, op: u8, sector: u64, nr: u16) -> BlkRequest {
    let mut r = rw(id, op, sector, &[seg(IND as u32, 0, 0)]);
    r.flags = REQ_INDIRECT;
    r.nr_segments = nr;
    r
}

fn simple(id: u64, op: u8, sector: u64, nr_sectors: u32) -> BlkRequest {
    BlkRequest {
        id,
        sector,
        op,
        nr_sectors,
        ..Default::default()
    }
}

fn st(e: Errno) -> i32 {
    -(e as i32)
}

const SEC: usize = SECTOR_SIZE as usize;
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Data paths

#[test]
fn direct_round_trip_with_several_segments() {
    let mut rig = Rig::new(MIB, false, ALL);
    let mem = &rig.host().mem;
    let data: Vec<u8> = (0..(8 + 4 + 1) * SEC).map(|i| (i * 7 + 3) as u8).collect();
    mem.write(1, 0, &data[..8 * SEC]);
    mem.write(2, 2 * SEC, &data[8 * SEC..12 * SEC]);
    mem.write(3, 7 * SEC, &data[12 * SEC..]);
    let w = rw(7, OP_WRITE, 10, &[seg(1, 0, 7), seg(2, 2, 5), seg(3, 7, 7)]);
    assert_eq!(rig.one(w), 0);

    let file = rig.img.contents();
    assert_eq!(file.len(), MIB);
    assert_eq!(&file[10 * SEC..23 * SEC], &data[..]);
    assert_eq!(&file[..10 * SEC], &pattern(0, 10 * SEC)[..]);
    assert_eq!(&file[23 * SEC..24 * SEC], &pattern(23 * SEC, SEC)[..]);

    // Read back into other pages, at other offsets within them.
    let r = rw(8, OP_READ, 10, &[seg(4, 3, 7), seg(5, 0, 7)]);
    assert_eq!(rig.one(r), 0);
    let mem = &rig.host().mem;
    assert_eq!(
        mem.read(4, 0, 3 * SEC),
        vec![0; 3 * SEC],
        "outside the segment"
    );
    let mut got = mem.read(4, 3 * SEC, 5 * SEC);
    got.extend(mem.read(5, 0, 8 * SEC));
    assert_eq!(&got[..], &data[..]);

    let s = rig.be.stats();
    assert_eq!(
        (s.requests, s.errors, s.reads, s.writes),
        (2, 0, 1, 1),
        "{s:?}"
    );
    assert_eq!((s.bytes_written, s.bytes_read), (13 * 512, 13 * 512));
}

#[test]
fn indirect_round_trip_of_one_mib() {
    let mut rig = Rig::new(4 * MIB, false, ALL);
    let data: Vec<u8> = (0..MIB)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let segs: Vec<BlkSegment> = (0..256).map(|i| seg(i + 1, 0, 7)).collect();
    for i in 0..256 {
        rig.host()
            .mem
            .write(i + 1, 0, &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
    }
    rig.set_indirect(&segs);
    assert_eq!(rig.one(indirect(1, OP_WRITE, 2048, 256)), 0);
    let file = rig.img.contents();
    assert_eq!(&file[2048 * SEC..2048 * SEC + MIB], &data[..]);
    assert_eq!(&file[..2048 * SEC], &pattern(0, 2048 * SEC)[..]);

    // Read it back into 256 other pages.
    let segs: Vec<BlkSegment> = (0..256).map(|i| seg(300 + i, 0, 7)).collect();
    rig.set_indirect(&segs);
    assert_eq!(rig.one(indirect(2, OP_READ, 2048, 256)), 0);
    for i in 0..256 {
        let got = rig.host().mem.read(300 + i, 0, PAGE_SIZE);
        assert!(got == data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], "page {i}");
    }
    let s = rig.be.stats();
    assert_eq!((s.bytes_written, s.bytes_read), (MIB as u64, MIB as u64));

    // Partial segments through an indirect page, and the last sector of the disk.
    let last = (4 * MIB / SEC) as u64 - 3;
    rig.set_indirect(&[seg(10, 6, 7), seg(11, 0, 0)]);
    assert_eq!(rig.one(indirect(3, OP_READ, last, 2)), 0);
    let file = rig.img.contents();
    assert_eq!(
        rig.host().mem.read(10, 6 * SEC, 2 * SEC),
        &file[last as usize * SEC..][..2 * SEC]
    );
    assert_eq!(rig.host().mem.read(11, 0, SEC), &file[4 * MIB - SEC..]);
}

#[test]
fn many_requests_in_flight() {
    let mut rig = Rig::new(MIB, false, ALL);
    let n = rig.front.size() as usize;
    assert_eq!(n, RING_SLOTS as usize);
    let reqs: Vec<BlkRequest> = (0..n)
        .map(|i| {
            rw(
                100 + i as u64,
                OP_READ,
                i as u64 * 8,
                &[seg(i as u32, 0, 7)],
            )
        })
        .collect();
    let rsps = rig.submit(&reqs);
    assert!(rsps.iter().all(|r| r.status == 0));
    for i in 0..n {
        assert_eq!(
            rig.host().mem.read(i, 0, PAGE_SIZE),
            pattern(i * PAGE_SIZE, PAGE_SIZE)
        );
    }
    // The frontend was waiting: notified (once: it did not re-arm in between).
    assert_eq!(rig.host().notified.get(), 1);
    // Again after it re-armed (submit calls final_check_for_responses).
    rig.submit(&reqs[..3]);
    assert_eq!(rig.host().notified.get(), 2);
}

#[test]
fn process_with_nothing_to_do() {
    let mut rig = Rig::new(MIB, false, ALL);
    assert_eq!(rig.be.process(), Ok(0));
    assert_eq!(rig.host().notified.get(), 0);
}

#[test]
fn flush() {
    let mut rig = Rig::new(MIB, false, ALL);
    rig.host().mem.write(0, 0, &[0xab; PAGE_SIZE]);
    let rsps = rig.submit(&[
        rw(1, OP_WRITE, 0, &[seg(0, 0, 7)]),
        simple(2, OP_FLUSH, 0, 0),
    ]);
    assert_eq!((rsps[0].status, rsps[1].status), (0, 0));
    assert_eq!(rig.be.stats().flushes, 1);
    assert_eq!(&rig.img.contents()[..PAGE_SIZE], &[0xab; PAGE_SIZE][..]);

    let mut rig = Rig::new(
        MIB,
        false,
        BlkFeatures {
            flush: false,
            ..ALL
        },
    );
    assert!(!rig.be.features().flush);
    assert_eq!(rig.one(simple(1, OP_FLUSH, 0, 0)), st(Errno::EOPNOTSUPP));
}

#[test]
fn discard_reads_zero_and_keeps_size() {
    let mut rig = Rig::new(MIB, false, ALL);
    assert!(
        rig.be.disk().supports_discard(),
        "the test's file system punches holes"
    );
    assert!(rig.be.features().discard);
    assert_eq!(rig.one(simple(1, OP_DISCARD, 16, 24)), 0);
    let file = rig.img.contents();
    assert_eq!(file.len(), MIB);
    assert!(file[16 * SEC..40 * SEC].iter().all(|&b| b == 0));
    assert_eq!(&file[..16 * SEC], &pattern(0, 16 * SEC)[..]);
    assert_eq!(&file[40 * SEC..], &pattern(40 * SEC, MIB - 40 * SEC)[..]);
    // Through the protocol too, and a discard ending at the disk's end.
    rig.host().mem.write(0, 0, &[0xff; PAGE_SIZE]);
    assert_eq!(rig.one(rw(2, OP_READ, 16, &[seg(0, 0, 7)])), 0);
    assert_eq!(rig.host().mem.read(0, 0, PAGE_SIZE), vec![0; PAGE_SIZE]);
    let sectors = (MIB / SEC) as u32;
    assert_eq!(rig.one(simple(3, OP_DISCARD, 2000, sectors - 2000)), 0);
    assert_eq!(rig.one(simple(4, OP_DISCARD, u64::from(sectors), 0)), 0);
    assert_eq!(fs::metadata(&rig.img.0).unwrap().len(), MIB as u64);
    assert_eq!(rig.be.stats().discards, 3);

    // Not offered: EOPNOTSUPP, and nothing changes.
    let mut rig = Rig::new(
        MIB,
        false,
        BlkFeatures {
            discard: false,
            ..ALL
        },
    );
    assert_eq!(rig.one(simple(1, OP_DISCARD, 0, 8)), st(Errno::EOPNOTSUPP));
    assert_eq!(rig.img.contents(), pattern(0, MIB));
}

#[test]
fn read_only_disk_refuses_writes_and_discards() {
    for (disk_ro, features) in [
        (true, ALL),
        (
            false,
            BlkFeatures {
                read_only: true,
                ..ALL
            },
        ),
    ] {
        let mut rig = Rig::new(MIB, disk_ro, features);
        let f = rig.be.features();
        assert!(f.read_only && !f.discard && f.flush, "{f:?}");
        rig.set_indirect(&[seg(1, 0, 7)]);
        let rsps = rig.submit(&[
            rw(1, OP_WRITE, 0, &[seg(0, 0, 7)]),
            indirect(2, OP_WRITE, 0, 1),
            simple(3, OP_DISCARD, 0, 8),
            rw(4, OP_READ, 0, &[seg(0, 0, 7)]),
            simple(5, OP_FLUSH, 0, 0),
        ]);
        let got: Vec<i32> = rsps.iter().map(|r| r.status).collect();
        let erofs = st(Errno::EROFS);
        assert_eq!(got, [erofs, erofs, erofs, 0, 0]);
        assert_eq!(rig.img.contents(), pattern(0, MIB));
        assert_eq!(rig.host().mem.read(0, 0, PAGE_SIZE), pattern(0, PAGE_SIZE));
        // Refused before any grant was looked at (only the read's page).
        assert_eq!(rig.host().lookups.get(), 1);
        let s = rig.be.stats();
        assert_eq!((s.requests, s.errors), (5, 3));
    }
    // The disk itself refuses too.
    let img = TempPath::image("ro", 4096);
    let disk = Disk::open(&img.0, true).unwrap();
    assert!(disk.read_only() && !disk.supports_discard());
    let buf = [0u8; 512];
    // SAFETY: a local buffer, only read.
    let e = unsafe { disk.write_at(buf.as_ptr(), 512, 0) }.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem);
    assert!(disk.discard(0, 512).is_err());
}

// ---------------------------------------------------------------------------------------------
// Malformed requests

#[test]
fn malformed_requests_get_their_exact_status() {
    let mut rig = Rig::new(MIB, false, ALL);
    let sectors = (MIB / SEC) as u64;
    let einval = st(Errno::EINVAL);
    let good = rw(0, OP_READ, 0, &[seg(0, 0, 7)]);
    let with = |f: &dyn Fn(&mut BlkRequest)| {
        let mut r = good;
        f(&mut r);
        r
    };
    let eleven: Vec<BlkSegment> = (0..11).map(|i| seg(i, 0, 0)).collect();
    let cases: Vec<(&str, BlkRequest, i32)> = vec![
        ("good", good, 0),
        ("unknown op", with(&|r| r.op = 4), einval),
        ("op 255", with(&|r| r.op = 255), einval),
        ("unknown flag", with(&|r| r.flags = 2), einval),
        ("indirect + unknown flag", with(&|r| r.flags = 3), einval),
        ("nr_sectors on read", with(&|r| r.nr_sectors = 1), einval),
        ("segment pad", with(&|r| r.segs[0].pad = 1), einval),
        ("0 segments", with(&|r| r.nr_segments = 0), einval),
        ("11 direct segments", rw(0, OP_READ, 0, &eleven), 0),
        ("12 direct segments", with(&|r| r.nr_segments = 12), einval),
        (
            "nr_segments u16::MAX",
            with(&|r| r.nr_segments = u16::MAX),
            einval,
        ),
        ("last < first", rw(0, OP_READ, 0, &[seg(0, 5, 4)]), einval),
        ("last > 7", rw(0, OP_READ, 0, &[seg(0, 0, 8)]), einval),
        ("first > 7", rw(0, OP_READ, 0, &[seg(0, 8, 8)]), einval),
        (
            "last sector",
            rw(0, OP_READ, sectors - 1, &[seg(0, 7, 7)]),
            0,
        ),
        (
            "beyond the end",
            rw(0, OP_READ, sectors - 1, &[seg(0, 6, 7)]),
            einval,
        ),
        (
            "starts at the end",
            rw(0, OP_READ, sectors, &[seg(0, 0, 0)]),
            einval,
        ),
        (
            "write beyond",
            rw(0, OP_WRITE, sectors - 7, &[seg(0, 0, 7)]),
            einval,
        ),
        (
            "sector overflow",
            rw(0, OP_READ, u64::MAX - 3, &[seg(0, 0, 7)]),
            einval,
        ),
        (
            "sector u64::MAX",
            rw(0, OP_WRITE, u64::MAX, &[seg(0, 0, 0)]),
            einval,
        ),
        (
            "byte offset overflow",
            rw(0, OP_READ, u64::MAX / 512 + 1, &[seg(0, 0, 0)]),
            einval,
        ),
        (
            "flush with flags",
            simple(0, OP_FLUSH, 0, 0).flagged(REQ_INDIRECT),
            einval,
        ),
        ("flush with segments", with(&|r| r.op = OP_FLUSH), einval),
        ("flush with nr_sectors", simple(0, OP_FLUSH, 0, 1), einval),
        (
            "discard with segments",
            with(&|r| {
                r.op = OP_DISCARD;
                r.nr_sectors = 8
            }),
            einval,
        ),
        (
            "discard with flags",
            simple(0, OP_DISCARD, 0, 8).flagged(REQ_INDIRECT),
            einval,
        ),
        (
            "discard beyond",
            simple(0, OP_DISCARD, sectors - 7, 8),
            einval,
        ),
        (
            "discard overflow",
            simple(0, OP_DISCARD, u64::MAX, 1),
            einval,
        ),
        ("indirect 0 segments", indirect(0, OP_READ, 0, 0), einval),
        (
            "indirect 257 segments",
            indirect(0, OP_READ, 0, 257),
            einval,
        ),
        (
            "indirect ref first_sect",
            indirect(0, OP_READ, 0, 1).seg0(|s| s.first_sect = 1),
            einval,
        ),
        (
            "indirect ref last_sect",
            indirect(0, OP_READ, 0, 1).seg0(|s| s.last_sect = 7),
            einval,
        ),
        (
            "indirect ref pad",
            indirect(0, OP_READ, 0, 1).seg0(|s| s.pad = 9),
            einval,
        ),
    ];
    // The indirect page holds one good segment unless a case says otherwise.
    rig.set_indirect(&[seg(0, 0, 7)]);
    for (name, req, want) in &cases {
        let r = BlkRequest { id: 0x5eed, ..*req };
        assert_eq!(rig.one(r), *want, "{name}");
    }
    assert_eq!(rig.img.contents(), pattern(0, MIB), "nothing was written");

    // Bad segments inside an indirect page.
    let ind_cases: Vec<(&str, Vec<BlkSegment>, u16, u64)> = vec![
        ("last < first", vec![seg(0, 0, 7), seg(1, 3, 2)], 2, 0),
        ("last > 7", vec![seg(0, 0, 9)], 1, 0),
        (
            "pad",
            vec![BlkSegment {
                pad: 1,
                ..seg(0, 0, 7)
            }],
            1,
            0,
        ),
        (
            "beyond the end",
            vec![seg(0, 0, 7), seg(1, 0, 7)],
            2,
            sectors - 15,
        ),
        ("overflow", vec![seg(0, 0, 7)], 1, u64::MAX - 2),
    ];
    for (name, segs, nr, sector) in ind_cases {
        rig.set_indirect(&segs);
        assert_eq!(
            rig.one(indirect(1, OP_WRITE, sector, nr)),
            einval,
            "indirect: {name}"
        );
    }
    assert_eq!(rig.img.contents(), pattern(0, MIB), "nothing was written");
    let ok = cases.iter().filter(|c| c.2 == 0).count() as u64;
    let s = rig.be.stats();
    assert_eq!(
        (s.requests, s.errors),
        (cases.len() as u64 + 5, cases.len() as u64 + 5 - ok)
    );
}

trait Tweak {
    fn flagged(self, f: u8) -> Self;
    fn seg0(self, f: impl Fn(&mut BlkSegment)) -> Self;
}

impl Tweak for BlkRequest {
    fn flagged(mut self, f: u8) -> Self {
        self.flags = f;
        self
    }

    fn seg0(mut self, f: impl Fn(&mut BlkSegment)) -> Self {
        f(&mut self.segs[0]);
        self
    }
}

#[test]
fn bad_grants_get_eacces_and_move_no_data() {
    let mut rig = Rig::new(MIB, false, ALL);
    let eacces = st(Errno::EACCES);
    rig.host().set_grant(1000, 5, true); // read-only grant of page 5
    rig.host().revoke(7);
    rig.host().mem.write(5, 0, &[0x55; PAGE_SIZE]);
    rig.host().mem.write(6, 0, &[0x66; PAGE_SIZE]);

    // A missing grant, as the second segment of a write: nothing is written.
    assert_eq!(
        rig.one(rw(1, OP_WRITE, 0, &[seg(6, 0, 7), seg(7, 0, 7)])),
        eacces
    );
    // A read into a read-only grant: nothing is read into the other page.
    assert_eq!(
        rig.one(rw(2, OP_READ, 0, &[seg(6, 0, 7), seg(1000, 0, 7)])),
        eacces
    );
    assert_eq!(rig.host().mem.read(6, 0, PAGE_SIZE), vec![0x66; PAGE_SIZE]);
    assert_eq!(rig.img.contents(), pattern(0, MIB));
    // A write from a read-only grant is fine.
    assert_eq!(rig.one(rw(3, OP_WRITE, 8, &[seg(1000, 0, 7)])), 0);
    assert_eq!(
        &rig.img.contents()[8 * SEC..16 * SEC],
        &[0x55; PAGE_SIZE][..]
    );
    // An unknown grant far out.
    assert_eq!(rig.one(rw(4, OP_READ, 0, &[seg(u32::MAX, 0, 0)])), eacces);

    // Indirect: the indirect page's grant missing; then a missing data grant inside it.
    rig.host().set_grant(IND as u32, IND, true); // read-only is enough for the indirect page
    rig.set_indirect(&[seg(6, 0, 7)]);
    assert_eq!(rig.one(indirect(5, OP_READ, 0, 1)), 0);
    let mut r = indirect(6, OP_READ, 0, 1);
    r.segs[0].gref = 7;
    assert_eq!(rig.one(r), eacces);
    rig.set_indirect(&[seg(6, 0, 7), seg(7, 0, 7)]);
    assert_eq!(rig.one(indirect(7, OP_WRITE, 0, 2)), eacces);
    assert_eq!(rig.host().live.get(), 0);
    let s = rig.be.stats();
    assert_eq!((s.requests, s.errors), (7, 5));
}

// ---------------------------------------------------------------------------------------------
// A hostile ring

#[test]
fn hostile_ring_disconnects() {
    let mut rig = Rig::new(MIB, false, ALL);
    assert_eq!(rig.one(rw(1, OP_READ, 0, &[seg(0, 0, 7)])), 0);
    // The frontend's producer index jumps far ahead.
    // SAFETY: req_prod, the first u32 of the ring page; accessed atomically.
    let req_prod = unsafe { AtomicU32::from_ptr(rig.ring_mem.page(0).cast()) };
    req_prod.store(1000, std::sync::atomic::Ordering::Release);
    assert_eq!(rig.be.process(), Err(BackendError::Disconnect));
    assert!(rig.be.is_disconnected());
    // Stays disconnected, even if the index is put back.
    req_prod.store(1, std::sync::atomic::Ordering::Release);
    assert_eq!(rig.be.process(), Err(BackendError::Disconnect));
    assert!(!BackendError::Disconnect.to_string().is_empty());

    // One past N while nothing is answered yet also breaks it, after serving nothing.
    let mut rig = Rig::new(MIB, false, ALL);
    // SAFETY: as above.
    let req_prod = unsafe { AtomicU32::from_ptr(rig.ring_mem.page(0).cast()) };
    req_prod.store(RING_SLOTS + 1, std::sync::atomic::Ordering::Release);
    assert_eq!(rig.be.process(), Err(BackendError::Disconnect));
    assert_eq!(rig.be.stats().requests, 0);
}

// ---------------------------------------------------------------------------------------------
// Images refused at open

#[test]
fn images_refused_at_open() {
    let line = |e: DiskError| {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        s
    };
    let dir = TempPath::new("dir");
    fs::create_dir(&dir.0).unwrap();
    for ro in [true, false] {
        let e = Disk::open(&dir.0, ro).unwrap_err();
        assert!(matches!(e, DiskError::IsDirectory { .. }), "{e:?}");
        let s = line(e);
        assert!(
            s.contains("directory") && s.contains(&*dir.0.to_string_lossy()),
            "{s}"
        );
    }

    let missing = TempPath::new("missing");
    let e = Disk::open(&missing.0, false).unwrap_err();
    assert!(matches!(e, DiskError::NotFound { .. }), "{e:?}");
    assert!(line(e).contains("no such file"));

    let odd = TempPath::image("odd", 1000);
    let e = Disk::open(&odd.0, false).unwrap_err();
    assert!(matches!(e, DiskError::BadSize { size: 1000, .. }), "{e:?}");
    let s = line(e);
    assert!(s.contains("1000") && s.contains("512"), "{s}");

    let e = Disk::open("/dev/null", true).unwrap_err();
    assert!(matches!(e, DiskError::NotRegularFile { .. }), "{e:?}");
    line(e);

    // Fine: an empty image, and a normal one.
    let empty = TempPath::image("empty", 0);
    assert_eq!(Disk::open(&empty.0, false).unwrap().sectors(), 0);
    let ok = TempPath::image("ok", 3 * 512);
    let d = Disk::open(&ok.0, false).unwrap();
    assert_eq!((d.sectors(), d.size(), d.read_only()), (3, 1536, false));
    assert_eq!(d.path(), ok.0.as_path());
}

#[test]
fn disk_range_checks_and_vectored_io() {
    let img = TempPath::image("vec", 8 * 512);
    let disk = Disk::open(&img.0, false).unwrap();
    let mut a = [0u8; 100];
    let mut b = [0u8; 0];
    let mut c = [0u8; 3900];
    let bufs = [
        RawBuf {
            ptr: a.as_mut_ptr(),
            len: a.len(),
        },
        RawBuf {
            ptr: b.as_mut_ptr(),
            len: 0,
        },
        RawBuf {
            ptr: c.as_mut_ptr(),
            len: c.len(),
        },
    ];
    // SAFETY: local buffers, not otherwise referenced during the call.
    unsafe { disk.read_vectored_at(&bufs, 96) }.unwrap();
    assert_eq!(&a[..], &pattern(96, 100)[..]);
    assert_eq!(&c[..], &pattern(196, 3900)[..]);
    let mut big = vec![0u8; 513];
    // SAFETY: as above.
    let e = unsafe { disk.read_at(big.as_mut_ptr(), 513, 7 * 512) }.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // SAFETY: as above.
    let e = unsafe { disk.read_at(big.as_mut_ptr(), 1, u64::MAX) }.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // SAFETY: as above (only read).
    unsafe { disk.write_at(big.as_ptr(), 512, 7 * 512) }.unwrap();
    disk.flush().unwrap();
    assert_eq!(&img.contents()[7 * 512..], &[0u8; 512][..]);
    assert!(disk.discard(4096, 1).is_err());
}

#[test]
fn backend_is_send_with_a_send_host() {
    struct SendHost;
    impl GrantHost for SendHost {
        type Guard = ();
        fn page(&self, _: u32, _: bool) -> Result<GrantedPage, Errno> {
            Err(Errno::ENOENT)
        }
        fn notify(&self) {}
    }
    fn send<T: Send>() {}
    send::<BlkBackend<SendHost>>();
    send::<GrantedPage<()>>();
    send::<Disk>();
}

// ---------------------------------------------------------------------------------------------
// Random requests

const P_PAGES: usize = 12;
const P_SECTORS: u64 = 64;

fn any_seg() -> impl Strategy<Value = BlkSegment> {
    prop_oneof![
        3 => (0u32..P_PAGES as u32 + 2, 0u8..8, 0u8..8).prop_map(|(g, a, b)| seg(g, a.min(b), a.max(b))),
        1 => any::<[u8; 8]>().prop_map(|b| BlkSegment {
            gref: u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % (P_PAGES as u32 + 4),
            first_sect: b[4] % 10,
            last_sect: b[5] % 10,
            pad: u16::from(b[6] & b[7] & 1),
        }),
    ]
}

fn any_request() -> impl Strategy<Value = BlkRequest> {
    let sector = prop_oneof![
        4 => 0..P_SECTORS + 4,
        1 => any::<u64>(),
        1 => u64::MAX - 20..=u64::MAX,
    ];
    (
        any::<u64>(),
        sector,
        prop_oneof![8 => 0u8..4, 1 => any::<u8>()],
        prop_oneof![4 => Just(0u8), 2 => Just(REQ_INDIRECT), 1 => any::<u8>()],
        prop_oneof![4 => 0u16..13, 1 => 0u16..300, 1 => any::<u16>()],
        prop_oneof![4 => Just(0u32), 2 => 0u32..70, 1 => any::<u32>()],
        proptest::collection::vec(any_seg(), MAX_DIRECT_SEGMENTS),
    )
        .prop_map(|(id, sector, op, flags, nr_segments, nr_sectors, segs)| {
            let mut r = BlkRequest {
                id,
                sector,
                op,
                flags,
                nr_segments,
                nr_sectors,
                ..Default::default()
            };
            r.segs.copy_from_slice(&segs);
            if flags == REQ_INDIRECT && segs[0].gref % 2 == 0 {
                // Usually point at the indirect page.
                r.segs[0] = seg(P_PAGES as u32 - 1, 0, 0);
            }
            r
        })
}

/// Plain reads and writes of whole or partial pages, against a model of the disk.
#[derive(Clone, Debug)]
enum ModelOp {
    Rw {
        write: bool,
        sector: u64,
        segs: Vec<(u8, u8)>,
        fill: u8,
    },
    Discard {
        sector: u64,
        count: u32,
    },
    Flush,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let segs = proptest::collection::vec(
        (0u8..8, 0u8..8).prop_map(|(a, b)| (a.min(b), a.max(b))),
        1..8,
    );
    prop_oneof![
        6 => (any::<bool>(), 0..P_SECTORS, segs, any::<u8>())
            .prop_map(|(write, sector, segs, fill)| ModelOp::Rw { write, sector, segs, fill }),
        1 => (0..P_SECTORS, 0u32..20).prop_map(|(sector, count)| ModelOp::Discard { sector, count }),
        1 => Just(ModelOp::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random (mostly malformed) requests and indirect pages: nothing panics, every request is
    /// answered in order with a status the protocol allows, and no page is left held.
    #[test]
    fn random_requests_are_always_answered(
        batches in proptest::collection::vec(
            (proptest::collection::vec(any_request(), 1..=RING_SLOTS as usize),
             proptest::collection::vec(any::<u64>(), 0..40)),
            1..4),
        ro in any::<bool>(),
    ) {
        let features = BlkFeatures { read_only: ro, ..ALL };
        let mut rig = Rig::with_pages(P_SECTORS as usize * SEC, false, features, P_PAGES);
        let allowed: Vec<i32> = [Errno::EINVAL, Errno::EACCES, Errno::EROFS, Errno::EOPNOTSUPP]
            .iter().map(|e| st(*e)).chain([0]).collect();
        let mut total = 0;
        for (reqs, ind) in &batches {
            for (i, w) in ind.iter().enumerate() {
                // Mostly small grant numbers and sector values in the indirect page.
                let b = w.to_le_bytes();
                let s = BlkSegment {
                    gref: u32::from(b[0]) % (P_PAGES as u32 + 2),
                    first_sect: b[4] % 9,
                    last_sect: b[5] % 9,
                    pad: u16::from(b[6] & b[7] & 1),
                };
                rig.host().mem.write(P_PAGES - 1, i * 8, &s.as_bytes_le());
            }
            let rsps = rig.submit(reqs);
            for r in &rsps {
                prop_assert!(allowed.contains(&r.status), "status {}", r.status);
                if ro && r.op == OP_WRITE {
                    prop_assert!(r.status != 0);
                }
            }
            total += reqs.len() as u64;
        }
        let s = rig.be.stats();
        prop_assert_eq!(s.requests, total);
        if ro {
            prop_assert_eq!(rig.img.contents(), pattern(0, P_SECTORS as usize * SEC));
        }
    }

    /// Valid reads, writes and discards agree with a model of the disk.
    #[test]
    fn data_matches_a_model(ops in proptest::collection::vec(model_op(), 1..40)) {
        let len = P_SECTORS as usize * SEC;
        let mut rig = Rig::with_pages(len, false, ALL, P_PAGES);
        let mut model = pattern(0, len);
        for (id, op) in ops.iter().enumerate() {
            let id = id as u64;
            match op {
                ModelOp::Rw { write, sector, segs, fill } => {
                    let write = *write;
                    let n: u64 = segs.iter().map(|&(a, b)| u64::from(b - a) + 1).sum();
                    let ss: Vec<BlkSegment> =
                        segs.iter().enumerate().map(|(i, &(a, b))| seg(i as u32, a, b)).collect();
                    let mut pos = *sector as usize * SEC;
                    if write {
                        for (i, &(a, b)) in segs.iter().enumerate() {
                            let bytes: Vec<u8> = (0..(usize::from(b - a) + 1) * SEC)
                                .map(|k| fill.wrapping_add((k / SEC) as u8).wrapping_add(i as u8))
                                .collect();
                            rig.host().mem.write(i, usize::from(a) * SEC, &bytes);
                        }
                    }
                    let op_code = if write { OP_WRITE } else { OP_READ };
                    let status = rig.one(rw(id, op_code, *sector, &ss));
                    if sector + n > P_SECTORS {
                        prop_assert_eq!(status, st(Errno::EINVAL));
                        continue;
                    }
                    prop_assert_eq!(status, 0);
                    for (i, &(a, b)) in segs.iter().enumerate() {
                        let l = (usize::from(b - a) + 1) * SEC;
                        let page = rig.host().mem.read(i, usize::from(a) * SEC, l);
                        if write {
                            model[pos..pos + l].copy_from_slice(&page);
                        } else {
                            prop_assert_eq!(&page[..], &model[pos..pos + l]);
                        }
                        pos += l;
                    }
                }
                ModelOp::Discard { sector, count } => {
                    let status = rig.one(simple(id, OP_DISCARD, *sector, *count));
                    if sector + u64::from(*count) > P_SECTORS {
                        prop_assert_eq!(status, st(Errno::EINVAL));
                    } else {
                        prop_assert_eq!(status, 0);
                        let a = *sector as usize * SEC;
                        model[a..a + *count as usize * SEC].fill(0);
                    }
                }
                ModelOp::Flush => prop_assert_eq!(rig.one(simple(id, OP_FLUSH, 0, 0)), 0),
            }
        }
        prop_assert_eq!(rig.img.contents(), model);
    }
}
