//! String port I/O (`rep insw`/`rep outsw`) through KVM: batching and data exchange.

use std::path::Path;

use hv_core::kvm::{BootState, Exit, Kvm, Vcpu, Vm, KVM_PATH};
use hv_core::x86::{
    CrashFrame, HvRegionLayout, HvTables, UserRange, VcpuTables, CRASH_FRAME_SIZE, CRASH_PORT,
    HV_REGION_GPA, IST_ALT, USER_CS, USER_DS,
};
use vm_memory::MmapRegion;

const HCALL_PORT: u16 = 0x90;
const RAM_SIZE: u64 = 2 << 20;
const CODE: u64 = 0x1000; // code pages 0x1000..0x3000, user RX
const DATA: u64 = 0x1_0000; // 0x10000..0x40000, user RW NX
const STACK_TOP: u64 = 0x2_0000;
const ALT_STACK_TOP: u64 = 0x3_0000;
const CRASH_STACK_TOP: u64 = 0x4_0000;

/// Opens KVM, or returns `None` (after printing why) when it is absent and not required.
fn kvm_or_skip(test: &str) -> Option<Kvm> {
    let required = std::env::var("HV_REQUIRE_KVM").is_ok_and(|v| v == "1");
    match Kvm::open(Path::new(KVM_PATH)) {
        Ok(kvm) => Some(kvm),
        Err(e) if !required => {
            println!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: HV_REQUIRE_KVM=1 but {e}"),
    }
}

/// A one-vCPU guest: RAM at 0, the hv region with tables built by `x86`, code at `CODE`.
struct Guest {
    vcpu: Vcpu,
    _vm: Vm,
    ram: MmapRegion,
    _hv: MmapRegion,
    layout: HvRegionLayout,
}

impl Guest {
    /// `gates`: (vector, handler address) pairs routed to guest handlers on the alt stack.
    fn new(kvm: &Kvm, code: &[u8], gates: &[(u8, u64)]) -> Guest {
        let layout = HvRegionLayout::new(RAM_SIZE, 1).unwrap();
        let ram = MmapRegion::new(RAM_SIZE as usize).unwrap();
        let hv = MmapRegion::new(layout.size() as usize).unwrap();
        {
            // SAFETY: `hv` is a fresh private mapping of `layout.size()` bytes that no vCPU
            // uses yet, and this is the only reference to it.
            let mem = unsafe { std::slice::from_raw_parts_mut(hv.as_ptr(), hv.size()) };
            let mut tables = HvTables::new(mem, layout).unwrap();
            let ranges = [
                UserRange {
                    start: CODE,
                    end: CODE + 0x2000,
                    writable: false,
                    executable: true,
                },
                UserRange {
                    start: DATA,
                    end: CRASH_STACK_TOP,
                    writable: true,
                    executable: false,
                },
            ];
            let vcpus = [VcpuTables {
                alt_stack_top: ALT_STACK_TOP,
                crash_stack_top: CRASH_STACK_TOP,
                io_ports: vec![HCALL_PORT],
            }];
            tables.build(&ranges, &vcpus).unwrap();
            for &(vector, handler) in gates {
                tables.set_gate(vector, handler, IST_ALT).unwrap();
            }
        }
        assert!(code.len() <= 0x2000);
        // SAFETY: `code` fits in RAM at CODE (checked above); no vCPU runs yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr(),
                ram.as_ptr().add(CODE as usize),
                code.len(),
            )
        };

        let vm = Vm::new(kvm).unwrap();
        // SAFETY: both mappings are owned by the returned Guest, which drops them after the
        // vCPU and the VM; the host touches guest memory only while the vCPU is stopped.
        unsafe {
            vm.map_memory(0, 0, ram.as_ptr(), RAM_SIZE).unwrap();
            vm.map_memory(1, HV_REGION_GPA, hv.as_ptr(), layout.size())
                .unwrap();
        }
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let t = layout.descriptor_tables(0).unwrap();
        vcpu.set_boot_state(&BootState {
            rip: CODE,
            rsp: STACK_TOP,
            rdi: 0x5157,
            cr3: t.cr3,
            gdt_base: t.gdt_base,
            gdt_limit: t.gdt_limit,
            idt_base: t.idt_base,
            idt_limit: t.idt_limit,
            tss_base: t.tss_base,
            tss_limit: t.tss_limit,
        })
        .unwrap();
        Guest {
            vcpu,
            _vm: vm,
            ram,
            _hv: hv,
            layout,
        }
    }

    fn read_ram(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa + len as u64 <= RAM_SIZE);
        // SAFETY: in bounds (checked); the vCPU is stopped (we hold `&self` and run needs
        // `&mut`), so nothing writes concurrently.
        (0..len)
            .map(|i| unsafe { self.ram.as_ptr().add(gpa as usize + i).read_volatile() })
            .collect()
    }

    /// Runs until an exit that is not `Interrupted`.
    fn run(&mut self) -> Exit {
        loop {
            match self.vcpu.run().unwrap() {
                Exit::Interrupted => continue,
                exit => return exit,
            }
        }
    }

    /// Runs to the crash port and parses the crash frame at RSP.
    fn run_to_crash(&mut self) -> CrashFrame {
        let exit = self.run();
        assert!(
            matches!(
                exit,
                Exit::IoOut {
                    port: CRASH_PORT,
                    ..
                }
            ),
            "expected a crash exit, got {exit:?} at rip {:#x}",
            self.vcpu.regs().rip
        );
        let regs = *self.vcpu.regs();
        let vector = self
            .layout
            .crash_stub_vector(regs.rip)
            .expect("rip in a stub");
        // The crash gates use IST2: the frame is the 7 words just under the crash stack top.
        assert_eq!(regs.rsp, CRASH_STACK_TOP - CRASH_FRAME_SIZE as u64);
        let frame = CrashFrame::parse(&self.read_ram(regs.rsp, CRASH_FRAME_SIZE)).unwrap();
        assert_eq!(frame.vector, u64::from(vector));
        assert_eq!(
            (frame.cs, frame.ss),
            (u64::from(USER_CS), u64::from(USER_DS))
        );
        frame
    }
}

fn mov_ecx(v: u32) -> Vec<u8> {
    [&[0xb9][..], &v.to_le_bytes()].concat()
}
fn mov_edi(v: u32) -> Vec<u8> {
    [&[0xbf][..], &v.to_le_bytes()].concat()
}
fn mov_esi(v: u32) -> Vec<u8> {
    [&[0xbe][..], &v.to_le_bytes()].concat()
}
const MOV_DX_90: [u8; 4] = [0x66, 0xba, 0x90, 0x00];
const REP_INSW: [u8; 3] = [0xf3, 0x66, 0x6d];
const REP_OUTSW: [u8; 3] = [0xf3, 0x66, 0x6f];
const OUT_HCALL: [u8; 2] = [0xe6, 0x90];
const JMP_SELF: [u8; 2] = [0xeb, 0xfe];

#[test]
fn rep_insw_outsw() {
    let Some(kvm) = kvm_or_skip("rep_insw_outsw") else {
        return;
    };
    const WORDS: u32 = 3000; // 6000 bytes, crossing a page
    let dst = DATA as u32 + 0x100;
    let code = [
        &mov_edi(dst)[..],
        &mov_ecx(WORDS),
        &MOV_DX_90,
        &REP_INSW,
        &OUT_HCALL,
        &mov_esi(dst),
        &mov_ecx(WORDS),
        &REP_OUTSW,
        &OUT_HCALL,
        &JMP_SELF,
    ]
    .concat();
    let mut g = Guest::new(&kvm, &code, &[]);
    let mut sent = 0u32;
    loop {
        match g.run() {
            Exit::IoIn {
                port: 0x90,
                size: 2,
            } => {
                let n = g.vcpu.io_count();
                println!(
                    "insw exit: count {n}, rip {:#x} rcx {} rdi {:#x}",
                    g.vcpu.regs().rip,
                    g.vcpu.regs().rcx,
                    g.vcpu.regs().rdi
                );
                let bytes: Vec<u8> = (0..n)
                    .flat_map(|i| ((sent + i) as u16).to_le_bytes())
                    .collect();
                assert!(g.vcpu.set_io_in_data(0).is_err() || n == 1);
                g.vcpu.set_io_in_items(&bytes).unwrap();
                sent += n;
            }
            Exit::IoOut {
                port: 0x90,
                size: 1,
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
    let mut got = Vec::new();
    loop {
        match g.run() {
            Exit::IoOut {
                port: 0x90,
                size: 2,
                count,
                data,
            } => {
                let d = g.vcpu.io_out_data().unwrap();
                println!("outsw exit: count {count}, rcx {}", g.vcpu.regs().rcx);
                assert_eq!(d.len(), count as usize * 2);
                assert_eq!(u32::from(u16::from_le_bytes([d[0], d[1]])), data);
                got.extend_from_slice(d);
            }
            Exit::IoOut {
                port: 0x90,
                size: 1,
                count: 1,
                ..
            } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ram);
}
