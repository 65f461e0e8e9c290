//! The harness shared by the real-KVM tests: a one-vCPU guest on the hv's own tables, with
//! hand-encoded code at `CODE`.
#![allow(dead_code)]

use std::path::Path;

use hv_core::kvm::{BootState, Exit, Kvm, Vcpu, Vm, KVM_PATH};
use hv_core::x86::{HvRegionLayout, HvTables, UserRange, VcpuTables, HV_REGION_GPA, IST_ALT};
use vm_memory::MmapRegion;

pub const HCALL_PORT: u16 = 0x90;
pub const RAM_SIZE: u64 = 2 << 20;
pub const CODE: u64 = 0x1000; // code pages 0x1000..0x3000, user RX
pub const DATA: u64 = 0x1_0000; // 0x10000..0x40000, user RW NX
pub const STACK_TOP: u64 = 0x2_0000;
pub const ALT_STACK_TOP: u64 = 0x3_0000;
pub const CRASH_STACK_TOP: u64 = 0x4_0000;

/// Opens KVM, or returns `None` (after printing why) when it is absent and not required.
pub fn kvm_or_skip(test: &str) -> Option<Kvm> {
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
pub struct Guest {
    pub vcpu: Vcpu,
    pub vm: Vm,
    pub ram: MmapRegion,
    _hv: MmapRegion,
    pub layout: HvRegionLayout,
}

impl Guest {
    /// `gates`: (vector, handler address) pairs routed to guest handlers on the alt stack.
    pub fn new(kvm: &Kvm, code: &[u8], gates: &[(u8, u64)]) -> Guest {
        Guest::build(kvm, code, gates, vec![HCALL_PORT])
    }

    /// A guest allowed to use `io_ports`.
    pub fn with_ports(kvm: &Kvm, code: &[u8], io_ports: Vec<u16>) -> Guest {
        Guest::build(kvm, code, &[], io_ports)
    }

    fn build(kvm: &Kvm, code: &[u8], gates: &[(u8, u64)], io_ports: Vec<u16>) -> Guest {
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
                io_ports,
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
        vcpu.set_boot_state(&BootState::new(CODE, STACK_TOP, 0x5157, t))
            .unwrap();
        Guest {
            vcpu,
            vm,
            ram,
            _hv: hv,
            layout,
        }
    }

    pub fn read_ram(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa + len as u64 <= RAM_SIZE);
        // SAFETY: in bounds (checked); the vCPU is stopped (we hold `&self` and run needs
        // `&mut`), so nothing writes concurrently.
        (0..len)
            .map(|i| unsafe { self.ram.as_ptr().add(gpa as usize + i).read_volatile() })
            .collect()
    }

    /// Runs until an exit that is not `Interrupted`.
    pub fn run(&mut self) -> Exit {
        loop {
            match self.vcpu.run().unwrap() {
                Exit::Interrupted => continue,
                exit => return exit,
            }
        }
    }

    /// Writes guest RAM while the vCPU is stopped.
    pub fn write_ram(&self, gpa: u64, data: &[u8]) {
        assert!(gpa + data.len() as u64 <= RAM_SIZE);
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: in bounds (checked); the vCPU is stopped.
            unsafe { self.ram.as_ptr().add(gpa as usize + i).write_volatile(b) };
        }
    }
}
