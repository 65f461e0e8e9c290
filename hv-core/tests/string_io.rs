//! String port I/O (`rep insw`/`rep outsw`) on real KVM, and the emulated devices behind it.
//!
//! Skips (printing a line) when /dev/kvm is absent, fails instead when `HV_REQUIRE_KVM=1`.
//! Exit counts print with `--nocapture`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hv_core::devices::{AtaDisk, PortBus, Uart16550};
use hv_core::kvm::Exit;
use hv_core::x86::{CrashFrame, CRASH_FRAME_SIZE};

mod common;
use common::*;

/// Tiny x86-64 encoder.
mod asm {
    pub fn mov_ecx(v: u32) -> Vec<u8> {
        [&[0xb9][..], &v.to_le_bytes()].concat()
    }
    pub fn mov_edi(v: u32) -> Vec<u8> {
        [&[0xbf][..], &v.to_le_bytes()].concat()
    }
    pub fn mov_esi(v: u32) -> Vec<u8> {
        [&[0xbe][..], &v.to_le_bytes()].concat()
    }
    pub fn mov_dx(v: u16) -> Vec<u8> {
        [&[0x66, 0xba][..], &v.to_le_bytes()].concat()
    }
    /// `mov dx, port; mov al, v; out dx, al`.
    pub fn outb(port: u16, v: u8) -> Vec<u8> {
        [&mov_dx(port)[..], &[0xb0, v, 0xee]].concat()
    }
    pub const IN_AL_DX: [u8; 1] = [0xec];
    pub const REP_INSW: [u8; 3] = [0xf3, 0x66, 0x6d];
    pub const REP_OUTSW: [u8; 3] = [0xf3, 0x66, 0x6f];
    pub const REP_OUTSB: [u8; 2] = [0xf3, 0x6e];
    pub const OUT_HCALL: [u8; 2] = [0xe6, 0x90]; // out 0x90, al
    pub const JMP_SELF: [u8; 2] = [0xeb, 0xfe];
}

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

#[test]
fn rep_insw_and_rep_outsw_exchange_every_item() {
    let Some(kvm) = kvm_or_skip("rep_insw_and_rep_outsw_exchange_every_item") else {
        return;
    };
    const WORDS: u32 = 3000; // 6000 bytes, crossing pages
    let dst = DATA as u32 + 0x100;
    let code = [
        &asm::mov_edi(dst)[..],
        &asm::mov_ecx(WORDS),
        &asm::mov_dx(0x90),
        &asm::REP_INSW,
        &asm::OUT_HCALL,
        &asm::mov_esi(dst),
        &asm::mov_ecx(WORDS),
        &asm::REP_OUTSW,
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]
    .concat();
    let mut g = Guest::with_ports(&kvm, &code, vec![HCALL_PORT]);
    let (mut sent, mut in_exits) = (0u32, 0);
    loop {
        match g.run() {
            Exit::IoIn {
                port: 0x90,
                size: 2,
            } => {
                let n = g.vcpu.io_count();
                assert!(n >= 1);
                if n > 1 {
                    assert!(g.vcpu.set_io_in_data(0).is_err(), "single-item only");
                }
                assert!(g.vcpu.set_io_in_items(&[0; 3]).is_err(), "wrong length");
                let bytes: Vec<u8> = (0..n)
                    .flat_map(|i| ((sent + i) as u16).to_le_bytes())
                    .collect();
                g.vcpu.set_io_in_items(&bytes).unwrap();
                sent += n;
                in_exits += 1;
            }
            Exit::IoOut {
                port: HCALL_PORT,
                count: 1,
                ..
            } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, WORDS);
    let ram = g.read_ram(u64::from(dst), WORDS as usize * 2);
    for i in 0..WORDS as usize {
        assert_eq!(
            u16::from_le_bytes([ram[2 * i], ram[2 * i + 1]]),
            i as u16,
            "word {i}"
        );
    }
    let (mut got, mut out_exits) = (Vec::new(), 0);
    loop {
        match g.run() {
            Exit::IoOut {
                port: 0x90,
                size: 2,
                count,
                data,
            } => {
                let d = g.vcpu.io_out_data().unwrap();
                assert_eq!(d.len(), count as usize * 2);
                assert_eq!(u32::from(u16::from_le_bytes([d[0], d[1]])), data);
                got.extend_from_slice(d);
                out_exits += 1;
            }
            Exit::IoOut {
                port: HCALL_PORT,
                size: 1,
                count: 1,
                ..
            } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ram);
    assert!(g.vcpu.io_out_data().is_ok(), "the final out is pending");
    println!("rep insw of {WORDS} words: {in_exits} exits; rep outsw: {out_exits} exits");
}

#[test]
fn emulated_devices_serve_a_guest() {
    let Some(kvm) = kvm_or_skip("emulated_devices_serve_a_guest") else {
        return;
    };
    let image = std::env::temp_dir().join(format!("hv-string-io-{}.img", std::process::id()));
    std::fs::write(&image, vec![0u8; 64 * 512]).unwrap();
    let sink = Sink::default();
    let mut bus = PortBus::new();
    bus.add(Box::new(Uart16550::new(Box::new(sink.clone()))))
        .unwrap();
    bus.add(Box::new(AtaDisk::open(&image, false).unwrap()))
        .unwrap();

    let (src, dst, text) = (DATA as u32, DATA as u32 + 0x1000, DATA as u32 + 0x3000);
    let lba28 = |cmd: u8, lba: u8, count: u8| {
        [
            asm::outb(0x1f6, 0xe0),
            asm::outb(0x1f2, count),
            asm::outb(0x1f3, lba),
            asm::outb(0x1f4, 0),
            asm::outb(0x1f5, 0),
            asm::outb(0x1f7, cmd),
        ]
        .concat()
    };
    let code = [
        // UART: "hi" one `out` per byte, then "!\n" with `rep outsb` (DX is still 0x3f8).
        &asm::outb(0x3f8, b'h')[..],
        &asm::outb(0x3f8, b'i'),
        &asm::mov_esi(text),
        &asm::mov_ecx(2),
        &[0xfc], // cld
        &asm::REP_OUTSB,
        // Write 4 sectors at LBA 5 with `rep outsw`, read them back with `rep insw`.
        &lba28(0x30, 5, 4),
        &asm::mov_esi(src),
        &asm::mov_ecx(4 * 256),
        &asm::mov_dx(0x1f0),
        &asm::REP_OUTSW,
        &lba28(0x20, 5, 4),
        &asm::mov_edi(dst),
        &asm::mov_ecx(4 * 256),
        &asm::mov_dx(0x1f0),
        &asm::REP_INSW,
        &asm::outb(0x1f7, 0xe7), // flush
        &asm::mov_dx(0x1f7),
        &asm::IN_AL_DX, // status
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]
    .concat();
    let mut io_ports = bus.ports();
    io_ports.push(HCALL_PORT);
    let mut g = Guest::with_ports(&kvm, &code, io_ports);
    let data: Vec<u8> = (0..4 * 512).map(|i| (i * 7 % 251) as u8).collect();
    g.write_ram(u64::from(src), &data);
    g.write_ram(u64::from(text), b"!\n");
    let mut exits = 0;
    let status = loop {
        let exit = g.run();
        if bus.serve(&mut g.vcpu, &exit).unwrap() {
            exits += 1;
            continue;
        }
        match exit {
            Exit::IoOut {
                port: HCALL_PORT,
                data,
                ..
            } => break data as u8,
            other => {
                let rsp = g.vcpu.regs().rsp;
                let frame = CrashFrame::parse(&g.read_ram(rsp, CRASH_FRAME_SIZE));
                panic!("{other:?}: {frame:?}")
            }
        }
    };
    assert_eq!(status, 0x50, "DRDY | DSC after the flush");
    assert_eq!(&*sink.0.lock().unwrap(), b"hi!\n");
    assert_eq!(g.read_ram(u64::from(dst), data.len()), data);
    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[5 * 512..9 * 512], &data[..]);
    std::fs::remove_file(&image).unwrap();
    println!("uart 4 bytes + ata 4-sector write, read and flush: {exits} device exits");
}

#[test]
fn doorbell_writes_signal_the_eventfd_without_an_exit() {
    let Some(kvm) = kvm_or_skip("doorbell_writes_signal_the_eventfd_without_an_exit") else {
        return;
    };
    const BELL: u16 = 0x1000;
    // Ring the doorbell three times, then make a hypercall so the run loop sees an exit.
    let code = [
        &asm::outb(BELL, 1)[..],
        &asm::outb(BELL, 2),
        &asm::outb(BELL, 3),
        &asm::OUT_HCALL,
        &asm::JMP_SELF,
    ]
    .concat();
    let mut g = Guest::with_ports(&kvm, &code, vec![HCALL_PORT, BELL]);
    let bell = g.vm.doorbell(BELL).unwrap();
    let exit = g.run();
    assert!(
        matches!(exit, Exit::IoOut { port: 0x90, .. }),
        "the doorbell writes never reach the run loop: {exit:?}"
    );
    assert_eq!(bell.read().unwrap(), 3, "one count per write");
}
