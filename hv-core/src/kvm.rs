//! The KVM platform: the only module in the project that issues KVM ioctls.
//!
//! A small typed wrapper on `kvm-ioctls`: [`Kvm`] (the device), [`Vm`] (one domain: memory
//! slots and vCPUs, no in-kernel irqchip), [`Vcpu`] (boot state, run loop, registers through
//! KVM sync regs, interrupt injection) and [`Kicker`] (makes a vCPU leave `KVM_RUN`).
//!
//! Register access: the general registers are exchanged through the `kvm_run` page on every
//! exit (`KVM_CAP_SYNC_REGS`): [`Vcpu::regs`] reads them, [`Vcpu::regs_mut`] marks them dirty so
//! KVM loads them on the next run. There is no `GET_REGS`/`SET_REGS` per exit.
//!
//! Port I/O exits: where RIP points at an [`Exit::IoOut`] depends on the platform. On kvm_pvm
//! (measured) the `out` was emulated and RIP already points after it; on VMX/SVM KVM's fast
//! path leaves RIP at the `out` and steps over it when the vCPU next runs, unless RIP was changed
//! meanwhile. Either way, resuming without writing RIP continues after the `out` exactly once,
//! whatever else was written through [`Vcpu::regs_mut`] (e.g. the result in RAX). So never
//! derive anything from RIP at an `out` exit, and write RIP only to send the guest elsewhere.
//! At an [`Exit::IoIn`], RIP points at the `in`, which completes with the supplied value.
//!
//! String port I/O (`rep outs`/`rep ins`, or a single `outs`/`ins`) goes through KVM's
//! instruction emulator and exits once per batch of `count` items of `size` bytes each, then
//! the instruction continues for the rest. Measured (kvm_pvm; the emulator path is the same on
//! VMX/SVM): `rep ins` reads ahead up to 1024 bytes per exit (512 words), cut at the
//! destination's page end and at RCX; `rep outs` exits once per item (`count` 1). The count is
//! in [`Exit::IoOut`] and [`Vcpu::io_count`]; [`Vcpu::io_out_data`] returns all the bytes
//! written and [`Vcpu::set_io_in_items`] supplies all the bytes read. A plain `out`/`in` is
//! the case `count == 1`.
//!
//! Kicking: see [`Kicker`] and the contract in the comment above `KickState`.

use std::ffi::CString;
use std::io;
use std::os::raw::{c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kvm_bindings::{
    kvm_msr_entry, kvm_segment, kvm_userspace_memory_region, CpuId, Msrs, KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT,
    KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_MAX_CPUID_ENTRIES,
    KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
};
use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VcpuFd, VmFd};
use thiserror::Error;
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;

use crate::x86::{DescriptorTables, TSS_SELECTOR, USER_CS, USER_DS};

/// General registers as KVM exchanges them (`struct kvm_regs`).
pub type Regs = kvm_bindings::kvm_regs;
/// Special registers (`struct kvm_sregs`): segments, control registers, EFER, CR2.
pub type Sregs = kvm_bindings::kvm_sregs;

/// Default device path.
pub const KVM_PATH: &str = "/dev/kvm";
/// IA32_TIME_STAMP_COUNTER.
const MSR_IA32_TSC: u32 = 0x10;

/// Errors from the KVM platform.
#[derive(Debug, Error)]
pub enum KvmError {
    /// The KVM device does not exist.
    #[error("{}: not found (is KVM available?)", path.display())]
    NotFound {
        /// The device path.
        path: PathBuf,
    },
    /// The KVM device exists but may not be opened.
    #[error("{}: permission denied", path.display())]
    PermissionDenied {
        /// The device path.
        path: PathBuf,
    },
    /// Any other failure opening the device.
    #[error("{}: {source}", path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// KVM lacks a capability the hv needs.
    #[error("KVM lacks {0}")]
    MissingCapability(&'static str),
    /// An ioctl failed.
    #[error("{op}: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The errno.
        source: errno::Error,
    },
    /// `inject` while an earlier injected interrupt is still pending.
    #[error("an interrupt is already pending injection")]
    InjectionPending,
    /// `set_io_in_data`/`set_mmio_read_data` without a matching pending exit.
    #[error("no pending {0} exit to complete")]
    NoPendingRead(&'static str),
    /// `io_out_data` without a pending `out` exit.
    #[error("no pending out exit")]
    NoPendingWrite,
    /// `set_io_in_items` with a buffer whose length is not the pending `in`'s `count * size`.
    #[error("the pending in reads {expected} bytes, {got} supplied")]
    IoLength {
        /// `count * size` of the pending `in`.
        expected: usize,
        /// The length supplied.
        got: usize,
    },
    /// The kick signal handler could not be installed.
    #[error("installing the kick signal handler: {0}")]
    Signal(io::Error),
}

fn ioctl_err(op: &'static str) -> impl FnOnce(errno::Error) -> KvmError {
    move |source| KvmError::Ioctl { op, source }
}

/// Raw ioctls that `kvm-ioctls` does not wrap (or wraps in ways the run loop cannot use).
mod raw {
    use kvm_bindings::{kvm_interrupt, KVMIO};
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
}

/// The KVM device.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens the KVM device at `path` (normally [`KVM_PATH`]).
    pub fn open(path: &Path) -> Result<Self, KvmError> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| KvmError::Open {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&c_path).map_err(|e| {
            let path = path.to_owned();
            match e.errno() {
                libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NotFound { path },
                libc::EACCES | libc::EPERM => KvmError::PermissionDenied { path },
                _ => KvmError::Open {
                    path,
                    source: e.into(),
                },
            }
        })?;
        // The stable API version is 12 since Linux 2.6.22; anything else is not KVM.
        if kvm.get_api_version() != 12 {
            return Err(KvmError::Open {
                path: path.to_owned(),
                source: io::Error::other("not a KVM device (KVM_GET_API_VERSION != 12)"),
            });
        }
        Ok(Self { kvm })
    }

    /// Maximum number of vCPUs per VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

/// One VM: memory slots and vCPUs. No in-kernel irqchip; the hv injects interrupts itself.
pub struct Vm {
    fd: VmFd,
    cpuid: CpuId,
    run_size: usize,
}

impl Vm {
    /// A doorbell: an eventfd that KVM signals, without leaving the kernel, whenever a guest
    /// writes (`out`, any size and value) to I/O port `port`. The write never reaches the run
    /// loop. The port must also be allowed in the guest's TSS I/O bitmap.
    pub fn doorbell(&self, port: u16) -> Result<EventFd, KvmError> {
        let fd = EventFd::new(libc::EFD_CLOEXEC).map_err(|e| KvmError::Ioctl {
            op: "eventfd",
            source: errno::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        self.fd
            .register_ioevent(&fd, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(ioctl_err("KVM_IOEVENTFD"))?;
        Ok(fd)
    }

    /// Creates a VM, checking the capabilities the hv relies on.
    pub fn new(kvm: &Kvm) -> Result<Self, KvmError> {
        for (cap, name) in [
            (Cap::SyncRegs, "KVM_CAP_SYNC_REGS"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        ] {
            if !kvm.kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        install_kick_handler()?;
        let cpuid = kvm
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("KVM_GET_SUPPORTED_CPUID"))?;
        let fd = kvm.kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        let run_size = fd.run_size();
        Ok(Self {
            fd,
            cpuid,
            run_size,
        })
    }

    /// Maps `size` bytes of host memory at `host_addr` into the guest at `gpa`, as memory slot
    /// `slot` (replacing that slot's mapping if it had one). `gpa`, `host_addr` and `size`
    /// must be page-aligned (KVM checks and fails with EINVAL otherwise).
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must be a readable and writable mapping of this process
    /// that stays mapped for as long as the VM may use the slot (until the VM is dropped or the
    /// slot is remapped). The guest reads and writes that memory at any time while a vCPU runs,
    /// so the host must access it as shared memory (volatile/atomic), not through `&mut`.
    pub unsafe fn map_memory(
        &self,
        slot: u32,
        gpa: u64,
        host_addr: *mut u8,
        size: u64,
    ) -> Result<(), KvmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the caller guarantees the mapping is valid for the slot's lifetime.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Creates vCPU `id`, with the general registers synced through `kvm_run`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, KvmError> {
        let mut fd = self
            .fd
            .create_vcpu(id)
            .map_err(ioctl_err("KVM_CREATE_VCPU"))?;
        let run: *mut kvm_bindings::kvm_run = fd.get_kvm_run();
        // SAFETY: `run` points at this vCPU's kvm_run mapping, owned by `fd`.
        unsafe { (*run).kvm_valid_regs = u64::from(KVM_SYNC_X86_REGS) };
        Ok(Vcpu {
            fd,
            run,
            run_size: self.run_size,
            cpuid: self.cpuid.clone(),
            kick: Arc::new(KickState::default()),
            injection_pending: false,
        })
    }
}

/// The state a vCPU starts in: 64-bit mode, CPL 3, the hv's tables loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// Entry point.
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// First argument (the StartInfo address).
    pub rdi: u64,
    /// Page-table root and descriptor tables.
    pub tables: DescriptorTables,
}

impl BootState {
    /// Starts at `rip` with `rsp` and `rdi`, on `tables`.
    pub fn new(rip: u64, rsp: u64, rdi: u64, tables: DescriptorTables) -> BootState {
        BootState {
            rip,
            rsp,
            rdi,
            tables,
        }
    }
}

/// Why `KVM_RUN` returned. Owned: nothing borrows the vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `out`: `size` (1, 2 or 4) bytes of `data` to `port`, or for string I/O (`rep outs`)
    /// `count` such items, all of which [`Vcpu::io_out_data`] returns. Resume without touching
    /// RIP (see the module docs).
    IoOut {
        /// Port.
        port: u16,
        /// Access size in bytes (per item).
        size: u8,
        /// The value written (zero-extended); for string I/O, the first item.
        data: u32,
        /// Number of items: 1 for `out`, up to a page's worth for `rep outs`.
        count: u32,
    },
    /// `in` from `port`: supply the value with [`Vcpu::set_io_in_data`] before running again;
    /// for string I/O ([`Vcpu::io_count`] > 1, `rep ins`) supply all items with
    /// [`Vcpu::set_io_in_items`].
    IoIn {
        /// Port.
        port: u16,
        /// Access size in bytes.
        size: u8,
    },
    /// A read of unmapped guest-physical memory: supply it with [`Vcpu::set_mmio_read_data`].
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Access size in bytes (1..=8).
        len: u8,
    },
    /// A write to unmapped guest-physical memory.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// Access size in bytes (1..=8).
        len: u8,
        /// The value written (zero-extended, little-endian).
        data: u64,
    },
    /// Interrupted by a [`Kicker`] or another signal (EINTR / immediate exit).
    Interrupted,
    /// The interrupt window requested with [`Vcpu::request_interrupt_window`] is open.
    IrqWindowOpen,
    /// `hlt` (not reachable at CPL 3, where it is #GP).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// VM entry failed.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// KVM internal error (e.g. emulation failure).
    InternalError {
        /// KVM_INTERNAL_ERROR_* suberror.
        suberror: u32,
    },
    /// Any other exit reason (KVM_EXIT_*), including malformed port I/O exits.
    Other(u32),
}

/// A vCPU. Created on any thread, it may be moved to the thread that runs it (it is `Send`).
pub struct Vcpu {
    fd: VcpuFd,
    /// The vCPU's `kvm_run` mapping, owned by `fd` and valid as long as it.
    run: *mut kvm_bindings::kvm_run,
    run_size: usize,
    cpuid: CpuId,
    kick: Arc<KickState>,
    /// An injected interrupt may not have been delivered yet (see `inject`).
    injection_pending: bool,
}

// SAFETY: `run` points into the kvm_run mapping owned by `fd`, which moves with the Vcpu; the
// Vcpu has no thread affinity until `run()`, which registers the calling thread for its duration.
unsafe impl Send for Vcpu {}

fn segment(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl Vcpu {
    /// Sets CPUID (KVM's supported set), FPU, special and general registers so that the vCPU
    /// starts at `state.rip` in 64-bit mode at CPL 3 (CS [`USER_CS`], SS/DS/ES/FS/GS
    /// [`USER_DS`]), with paging, NX, the given GDT/IDT and a busy 64-bit TSS, RFLAGS 0x202.
    pub fn set_boot_state(&mut self, state: &BootState) -> Result<(), KvmError> {
        self.fd
            .set_cpuid2(&self.cpuid)
            .map_err(ioctl_err("KVM_SET_CPUID2"))?;
        let fpu = kvm_bindings::kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(ioctl_err("KVM_SET_FPU"))?;

        let mut sregs = self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        sregs.cs = segment(USER_CS, 0xb, 3, true);
        let data = segment(USER_DS, 0x3, 3, false);
        (sregs.ss, sregs.ds, sregs.es, sregs.fs, sregs.gs) = (data, data, data, data, data);
        sregs.tr = kvm_segment {
            base: state.tables.tss_base,
            limit: state.tables.tss_limit,
            selector: TSS_SELECTOR,
            type_: 0xb,
            present: 1,
            ..Default::default()
        };
        sregs.ldt = kvm_segment {
            type_: 0x2,
            unusable: 1,
            ..Default::default()
        };
        sregs.gdt.base = state.tables.gdt_base;
        sregs.gdt.limit = state.tables.gdt_limit;
        sregs.idt.base = state.tables.idt_base;
        sregs.idt.limit = state.tables.idt_limit;
        // CR0: PE | MP | ET | NE | WP | PG.
        sregs.cr0 = 0x1 | 0x2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
        // CR4: PAE | PGE | OSFXSR | OSXMMEXCPT | FSGSBASE.
        sregs.cr4 = 0x20 | 0x80 | 0x200 | 0x400 | 0x1_0000;
        sregs.cr3 = state.tables.cr3;
        // EFER: LME | LMA | NXE.
        sregs.efer = 0x100 | 0x400 | 0x800;
        self.fd
            .set_sregs(&sregs)
            .map_err(ioctl_err("KVM_SET_SREGS"))?;

        let regs = Regs {
            rip: state.rip,
            rsp: state.rsp,
            rdi: state.rdi,
            rflags: 0x202,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(ioctl_err("KVM_SET_REGS"))?;
        // Mirror them in the sync area so `regs()` is right before the first run.
        // SAFETY: `run` is this vCPU's live kvm_run mapping; no other reference to it exists.
        unsafe { (*self.run).s.regs.regs = regs };
        Ok(())
    }

    /// Runs the vCPU until the next exit that needs the hv.
    ///
    /// Returns [`Exit::Interrupted`] when a [`Kicker`] kicked this vCPU (before or during the
    /// call) or another signal arrived; spurious `Interrupted` returns are possible, so the
    /// caller re-checks its own state (pending events, stop requests) after each one.
    pub fn run(&mut self) -> Result<Exit, KvmError> {
        let _registration = RunRegistration::new(&self.kick, self.immediate_exit_ptr());
        if self.kick.pending.swap(false, Ordering::SeqCst) {
            // A late kick signal may have set it after the previous exit; it is served now.
            self.clear_immediate_exit();
            return Ok(Exit::Interrupted);
        }
        // SAFETY: KVM_RUN on our vCPU fd, which takes no argument; kvm_run stays mapped.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(&self.fd, raw::KVM_RUN()) };
        if ret < 0 {
            let err = errno::Error::last();
            if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN {
                self.clear_immediate_exit();
                // A swap, not a store: reading a concurrent kicker's `true` orders its state
                // before our return, so the caller sees it.
                self.kick.pending.swap(false, Ordering::SeqCst);
                return Ok(Exit::Interrupted);
            }
            return Err(KvmError::Ioctl {
                op: "KVM_RUN",
                source: err,
            });
        }
        // The guest ran. KVM reports ready only once a queued interrupt has been delivered.
        // SAFETY: plain read from our live kvm_run mapping; KVM_RUN has returned.
        if unsafe { (*self.run).ready_for_interrupt_injection } != 0 {
            self.injection_pending = false;
        }
        Ok(self.decode_exit())
    }

    fn decode_exit(&self) -> Exit {
        // SAFETY: `run` is this vCPU's live kvm_run mapping, and KVM_RUN has returned, so the
        // kernel is not writing it; the union member read is the one `exit_reason` selects.
        unsafe {
            let run = &*self.run;
            match run.exit_reason {
                KVM_EXIT_IO => {
                    let io = run.__bindgen_anon_1.io;
                    let Some((off, _)) = self.pending_io(u32::from(io.direction)) else {
                        return Exit::Other(KVM_EXIT_IO);
                    };
                    if u32::from(io.direction) == KVM_EXIT_IO_IN {
                        return Exit::IoIn {
                            port: io.port,
                            size: io.size,
                        };
                    }
                    let mut data = [0u8; 4];
                    let src = (self.run as *const u8).add(off);
                    ptr::copy_nonoverlapping(src, data.as_mut_ptr(), usize::from(io.size));
                    Exit::IoOut {
                        port: io.port,
                        size: io.size,
                        data: u32::from_le_bytes(data),
                        count: io.count,
                    }
                }
                KVM_EXIT_MMIO => {
                    let m = run.__bindgen_anon_1.mmio;
                    let len = m.len.min(8) as u8;
                    if m.is_write == 0 {
                        return Exit::MmioRead {
                            addr: m.phys_addr,
                            len,
                        };
                    }
                    let mut data = [0u8; 8];
                    data[..usize::from(len)].copy_from_slice(&m.data[..usize::from(len)]);
                    Exit::MmioWrite {
                        addr: m.phys_addr,
                        len,
                        data: u64::from_le_bytes(data),
                    }
                }
                KVM_EXIT_IRQ_WINDOW_OPEN => Exit::IrqWindowOpen,
                KVM_EXIT_HLT => Exit::Hlt,
                KVM_EXIT_SHUTDOWN => Exit::Shutdown,
                KVM_EXIT_FAIL_ENTRY => Exit::FailEntry {
                    reason: run
                        .__bindgen_anon_1
                        .fail_entry
                        .hardware_entry_failure_reason,
                },
                KVM_EXIT_INTERNAL_ERROR => Exit::InternalError {
                    suberror: run.__bindgen_anon_1.internal.suberror,
                },
                other => Exit::Other(other),
            }
        }
    }

    /// The pending port I/O exit in `direction`, if the last exit was one and is well formed
    /// (size 1, 2 or 4, count >= 1, data inside the kvm_run mapping): the data's offset in
    /// kvm_run and its length (`count * size`).
    fn pending_io(&self, direction: u32) -> Option<(usize, usize)> {
        // SAFETY: `run` is this vCPU's live kvm_run mapping and KVM_RUN is not in progress
        // (it needs `&mut self`); the `io` member is read only when `exit_reason` selects it.
        let io = unsafe {
            let run = &*self.run;
            if run.exit_reason != KVM_EXIT_IO {
                return None;
            }
            run.__bindgen_anon_1.io
        };
        let off = usize::try_from(io.data_offset).ok()?;
        let len = usize::from(io.size).checked_mul(usize::try_from(io.count).ok()?)?;
        let fits = off.checked_add(len).is_some_and(|end| end <= self.run_size);
        (u32::from(io.direction) == direction && matches!(io.size, 1 | 2 | 4) && len > 0 && fits)
            .then_some((off, len))
    }

    /// The item count of the pending port I/O exit ([`Exit::IoOut`] or [`Exit::IoIn`]): 1 for
    /// `out`/`in`, more for string I/O; 0 when the last exit was not port I/O.
    pub fn io_count(&self) -> u32 {
        // SAFETY: as in `pending_io`.
        unsafe {
            let run = &*self.run;
            if run.exit_reason != KVM_EXIT_IO {
                return 0;
            }
            run.__bindgen_anon_1.io.count
        }
    }

    /// All the bytes the pending [`Exit::IoOut`] writes: `count` items of `size` bytes each,
    /// little-endian, in order.
    pub fn io_out_data(&self) -> Result<&[u8], KvmError> {
        let (off, len) = self
            .pending_io(KVM_EXIT_IO_OUT)
            .ok_or(KvmError::NoPendingWrite)?;
        // SAFETY: `off..off + len` lies inside this vCPU's live kvm_run mapping (checked by
        // `pending_io`); the kernel writes it only during KVM_RUN, which needs `&mut self`, so
        // it does not change while the returned borrow of `self` lives.
        Ok(unsafe { std::slice::from_raw_parts((self.run as *const u8).add(off), len) })
    }

    /// Supplies the value an `in` reads, after [`Exit::IoIn`]; takes effect on the next run.
    /// Only for a single-item `in` ([`Vcpu::io_count`] == 1); string I/O uses
    /// [`Vcpu::set_io_in_items`].
    pub fn set_io_in_data(&mut self, value: u32) -> Result<(), KvmError> {
        let size = match self.pending_io(KVM_EXIT_IO_IN) {
            Some((_, len)) if self.io_count() == 1 => len,
            _ => return Err(KvmError::NoPendingRead("in")),
        };
        self.set_io_in_items(&value.to_le_bytes()[..size])
    }

    /// Supplies every item a pending [`Exit::IoIn`] reads (`count * size` bytes, items in order,
    /// little-endian), for string I/O (`rep ins`) as for a single `in`; takes effect on the
    /// next run.
    pub fn set_io_in_items(&mut self, data: &[u8]) -> Result<(), KvmError> {
        let (off, len) = self
            .pending_io(KVM_EXIT_IO_IN)
            .ok_or(KvmError::NoPendingRead("in"))?;
        if data.len() != len {
            return Err(KvmError::IoLength {
                expected: len,
                got: data.len(),
            });
        }
        // SAFETY: `off..off + len` lies inside this vCPU's live kvm_run mapping (checked by
        // `pending_io`), the vCPU is not running (`&mut self`), and `data` is a distinct host
        // buffer of exactly `len` bytes.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), (self.run as *mut u8).add(off), len) };
        Ok(())
    }

    /// Supplies the value an MMIO read returns, after [`Exit::MmioRead`].
    pub fn set_mmio_read_data(&mut self, value: u64) -> Result<(), KvmError> {
        // SAFETY: `run` is this vCPU's live kvm_run mapping and the vCPU is not running.
        unsafe {
            let run = &mut *self.run;
            if run.exit_reason != KVM_EXIT_MMIO || run.__bindgen_anon_1.mmio.is_write != 0 {
                return Err(KvmError::NoPendingRead("MMIO read"));
            }
            let m = &mut run.__bindgen_anon_1.mmio;
            let len = (m.len as usize).min(8);
            m.data[..len].copy_from_slice(&value.to_le_bytes()[..len]);
        }
        Ok(())
    }

    /// The general registers as of the last exit (or as set by [`Vcpu::set_boot_state`]).
    pub fn regs(&self) -> &Regs {
        // SAFETY: `run` is this vCPU's live kvm_run mapping; `s.regs` is the member KVM fills
        // when KVM_SYNC_X86_REGS is valid, which `create_vcpu` set. The kernel only writes it
        // during KVM_RUN, which needs `&mut self`.
        unsafe { &(*self.run).s.regs.regs }
    }

    /// The general registers, for writing: they are marked dirty, so KVM loads them on the
    /// next run.
    pub fn regs_mut(&mut self) -> &mut Regs {
        // SAFETY: as in `regs`, and `&mut self` makes this the only reference.
        unsafe {
            (*self.run).kvm_dirty_regs |= u64::from(KVM_SYNC_X86_REGS);
            &mut (*self.run).s.regs.regs
        }
    }

    /// Also sync the special registers through `kvm_run` on every exit (read-only here: they
    /// are never marked dirty), so [`Vcpu::synced_sregs`] can read CS or CR2 without an ioctl.
    pub fn enable_sync_sregs(&mut self) {
        // SAFETY: plain write to this vCPU's live kvm_run mapping while it is not running.
        unsafe { (*self.run).kvm_valid_regs |= u64::from(KVM_SYNC_X86_SREGS) };
    }

    /// The special registers as of the last exit, if [`Vcpu::enable_sync_sregs`] was called
    /// before that exit's run.
    pub fn synced_sregs(&self) -> Option<&Sregs> {
        // SAFETY: as in `regs`; `s.regs.sregs` is filled by KVM when KVM_SYNC_X86_SREGS is valid.
        unsafe {
            let run = &*self.run;
            (run.kvm_valid_regs & u64::from(KVM_SYNC_X86_SREGS) != 0).then_some(&run.s.regs.sregs)
        }
    }

    /// The special registers (an ioctl: the slow path, e.g. to read CR2 after a #PF).
    pub fn sregs(&self) -> Result<Sregs, KvmError> {
        self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))
    }

    /// Whether [`Vcpu::inject`] may be called and would be delivered on the next entry: nothing
    /// injected is still undelivered, and at the last exit KVM was ready for an interrupt and
    /// the guest's RFLAGS.IF was set. False before the first exit: then request the window.
    pub fn ready_for_injection(&self) -> bool {
        // SAFETY: plain reads from this vCPU's live kvm_run mapping while it is not running.
        let (ready, if_flag) = unsafe {
            (
                (*self.run).ready_for_interrupt_injection,
                (*self.run).if_flag,
            )
        };
        !self.injection_pending && ready != 0 && if_flag != 0
    }

    /// Queues external interrupt `vector` (KVM_INTERRUPT); it is delivered on the next entry
    /// when the guest can take it. Fails with [`KvmError::InjectionPending`] while an earlier
    /// one may still be undelivered (until an exit reports KVM ready again): measured on
    /// kvm_pvm, a second KVM_INTERRUPT silently *replaces* an undelivered first one.
    pub fn inject(&mut self, vector: u8) -> Result<(), KvmError> {
        if self.injection_pending {
            return Err(KvmError::InjectionPending);
        }
        let irq = kvm_bindings::kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT on our vCPU fd reads one `kvm_interrupt`, which lives across
        // the call; the return value is checked.
        let ret =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, raw::KVM_INTERRUPT(), &irq) };
        if ret < 0 {
            let err = errno::Error::last();
            return Err(match err.errno() {
                libc::EEXIST | libc::ENXIO => KvmError::InjectionPending,
                _ => KvmError::Ioctl {
                    op: "KVM_INTERRUPT",
                    source: err,
                },
            });
        }
        self.injection_pending = true;
        Ok(())
    }

    /// Asks KVM to exit with [`Exit::IrqWindowOpen`] as soon as the guest can take an
    /// interrupt (or stops asking).
    pub fn request_interrupt_window(&mut self, on: bool) {
        // SAFETY: plain write to this vCPU's live kvm_run mapping while it is not running.
        unsafe { (*self.run).request_interrupt_window = u8::from(on) };
    }

    /// A handle that other threads use to make this vCPU leave `KVM_RUN`.
    pub fn kicker(&self) -> Kicker {
        Kicker {
            state: Arc::clone(&self.kick),
        }
    }

    /// The guest TSC frequency in kHz (KVM_GET_TSC_KHZ).
    pub fn tsc_khz(&self) -> Result<u32, KvmError> {
        self.fd.get_tsc_khz().map_err(ioctl_err("KVM_GET_TSC_KHZ"))
    }

    /// The guest's current TSC (KVM_GET_MSRS of IA32_TSC).
    pub fn guest_tsc(&self) -> Result<u64, KvmError> {
        let entry = kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        };
        let mut msrs = Msrs::from_entries(&[entry]).map_err(|_| KvmError::Ioctl {
            op: "KVM_GET_MSRS",
            source: errno::Error::new(libc::ENOMEM),
        })?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(ioctl_err("KVM_GET_MSRS"))?;
        match msrs.as_slice().first() {
            Some(e) if n == 1 => Ok(e.data),
            _ => Err(KvmError::Ioctl {
                op: "KVM_GET_MSRS",
                source: errno::Error::new(libc::EINVAL),
            }),
        }
    }

    fn clear_immediate_exit(&self) {
        // SAFETY: the pointer is into our live kvm_run; volatile because the kick signal handler
        // writes the same byte.
        unsafe { self.immediate_exit_ptr().write_volatile(0) };
    }

    fn immediate_exit_ptr(&self) -> *mut u8 {
        // SAFETY: computing a field address inside our live kvm_run mapping, no reference made.
        unsafe { ptr::addr_of_mut!((*self.run).immediate_exit) }
    }
}

// ---------------------------------------------------------------------------------------------
// Kicking.
//
// Contract:
// - Any thread may call `Kicker::kick()` at any time. The vCPU's current `run()` call, or else
//   its next one, returns `Exit::Interrupted` promptly. A kicker sets its own state (e.g. a
//   pending-event flag) *before* kicking; the vCPU thread checks that state after each
//   `Interrupted` (or any exit), so no wake-up is lost.
// - Only `Vcpu::run()` registers a thread as the kick target, and only for its duration: it
//   stores `pthread_self()` in `KickState::thread` and the address of its kvm_run's
//   `immediate_exit` byte in a thread-local. `kick()` sets `pending`, then, under the mutex,
//   signals the registered thread if any. The signal handler sets `immediate_exit = 1` through
//   the thread-local, so a signal landing between run()'s `pending` check and its entry into
//   KVM_RUN still makes KVM_RUN return EINTR at once; a signal landing inside KVM_RUN makes it
//   return EINTR anyway. A kick while no run() is in progress finds no thread and leaves
//   `pending` set, which the next run() sees before entering KVM.
// - Because a thread is signalled only while it is inside run() (the mutex guarantees it), the
//   signal never targets an exited thread, and the handler never writes to a freed kvm_run.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct KickState {
    pending: AtomicBool,
    thread: Mutex<Option<libc::pthread_t>>,
}

impl KickState {
    fn thread(&self) -> MutexGuard<'_, Option<libc::pthread_t>> {
        // Nothing panics while holding the lock, but do not turn poison into a panic anyway.
        self.thread.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// The `immediate_exit` byte of the kvm_run this thread is running, or null.
    static RUNNING_IMMEDIATE_EXIT: AtomicPtr<u8> = const { AtomicPtr::new(ptr::null_mut()) };
}

/// Registers the current thread as the kick target for the duration of one `run()`.
struct RunRegistration<'a> {
    state: &'a KickState,
}

impl<'a> RunRegistration<'a> {
    fn new(state: &'a KickState, immediate_exit: *mut u8) -> Self {
        RUNNING_IMMEDIATE_EXIT.with(|p| p.store(immediate_exit, Ordering::SeqCst));
        // SAFETY: pthread_self has no preconditions.
        *state.thread() = Some(unsafe { libc::pthread_self() });
        Self { state }
    }
}

impl Drop for RunRegistration<'_> {
    fn drop(&mut self) {
        *self.state.thread() = None;
        RUNNING_IMMEDIATE_EXIT.with(|p| p.store(ptr::null_mut(), Ordering::SeqCst));
    }
}

/// Makes a vCPU leave `KVM_RUN`. Cheap to clone; usable from any thread ([`Vcpu::kicker`]).
///
/// Contract: the kicking thread first publishes whatever the vCPU must notice (a pending
/// event, a stop request), then calls [`Kicker::kick`]; the vCPU thread re-checks that state
/// after every exit of [`Vcpu::run`], in particular [`Exit::Interrupted`]. Then no wake-up is
/// lost, whether the kick lands inside `KVM_RUN`, between two runs, or before the first one.
/// The signal used is [`kick_signal`]; it must not be blocked in vCPU threads.
#[derive(Clone)]
pub struct Kicker {
    state: Arc<KickState>,
}

impl Kicker {
    /// Makes the vCPU's current `run()` call, or its next one if none is in progress, return
    /// [`Exit::Interrupted`] promptly. Set whatever state the vCPU should notice before calling.
    pub fn kick(&self) {
        self.state.pending.store(true, Ordering::SeqCst);
        let thread = self.state.thread();
        if let (Some(t), Some(sig)) = (*thread, KICK_SIGNAL.get().copied()) {
            // SAFETY: `t` is inside run() (it cannot leave without taking the lock we hold), so
            // it is a live thread; the signal has a handler installed. A failure can only mean
            // the thread is gone, in which case there is nothing to kick.
            unsafe { libc::pthread_kill(t, sig) };
        }
    }
}

/// The signal used to kick vCPU threads (a real-time signal; installed by [`Vm::new`]).
static KICK_SIGNAL: OnceLock<c_int> = OnceLock::new();

/// The signal number the kicker uses, once a [`Vm`] has been created.
pub fn kick_signal() -> Option<c_int> {
    KICK_SIGNAL.get().copied()
}

extern "C" fn on_kick_signal(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    // Async-signal-safe: a const-initialised thread-local without destructor and an atomic load.
    let p = RUNNING_IMMEDIATE_EXIT.with(|p| p.load(Ordering::SeqCst));
    if !p.is_null() {
        // SAFETY: non-null only while this thread is inside run(), whose Vcpu (and so its
        // kvm_run mapping) is alive; a volatile byte store.
        unsafe { p.write_volatile(1) };
    }
}

fn install_kick_handler() -> Result<(), KvmError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let sig = vmm_sys_util::signal::SIGRTMIN();
        // SAFETY: a zeroed sigaction is a valid starting point (POD).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_kick_signal as *const () as usize;
        // SA_RESTART: a late signal must not make an unrelated syscall fail with EINTR.
        // KVM_RUN returns EINTR regardless (it is never restarted).
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `act.sa_mask` is a valid sigset_t to initialise; sigaction reads `act`, and
        // the handler only does async-signal-safe work.
        let ret = unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, ptr::null_mut())
        };
        if ret != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let _ = KICK_SIGNAL.set(sig);
        Ok(())
    });
    result.map_err(|e| KvmError::Signal(io::Error::from_raw_os_error(e)))
}
