//! The x86 CPU tables the hypervisor owns for each guest, written into a byte buffer.
//!
//! Pure code: nothing here touches KVM. The guest runs at CPL 3 in 64-bit mode; the hv plays
//! ring 0 and owns the page tables, the IDT, and per vCPU the GDT and the TSS. They all live in
//! the *hv region*, a separate memory slot at [`HV_REGION_GPA`], mapped supervisor-only so the
//! guest can neither read nor write it, except the crash-stub page (user, read-only, executable).
//!
//! Guest-physical layout (identity-mapped, VA = GPA):
//! - guest RAM at `0..ram_size`, mapped page by page as the caller's [`UserRange`]s say (U=1;
//!   R/W per range; NX unless executable); other RAM pages, and page 0 always, are not present;
//! - the hv region at [`HV_REGION_GPA`], laid out by [`HvRegionLayout`].
//!
//! [`HvTables`] writes the tables into a buffer that is (or will be copied to) the hv region.

use thiserror::Error;

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// Guest-physical (and virtual) address of the hv region (256 GiB; PML4 slot 0, PDPT slot 256).
pub const HV_REGION_GPA: u64 = 0x40_0000_0000;
/// Largest guest RAM size: RAM must end below the hv region.
pub const MAX_RAM_SIZE: u64 = GRANT_WINDOW_GPA;
/// Guest-physical (and virtual) base of the grant window, where a domain maps frames other
/// domains granted it. One page table covers it.
pub const GRANT_WINDOW_GPA: u64 = 0x30_0000_0000;
/// Number of 4 KiB slots in the grant window.
pub const GRANT_WINDOW_SLOTS: u32 = 512;

/// Kernel 64-bit code segment selector (DPL 0; unused by guests, present for Linux's layout).
pub const KERNEL_CS: u16 = 0x10;
/// Kernel data segment selector (DPL 0).
pub const KERNEL_DS: u16 = 0x18;
/// User data/stack segment selector: GDT entry 0x28, RPL 3.
pub const USER_DS: u16 = 0x2b;
/// User 64-bit code segment selector: GDT entry 0x30, RPL 3.
pub const USER_CS: u16 = 0x33;
/// TSS selector: the 16-byte descriptor at GDT offset 0x40.
pub const TSS_SELECTOR: u16 = 0x40;

/// GDT limit (10 eight-byte slots: 0x00..=0x48, the TSS descriptor taking 0x40 and 0x48).
pub const GDT_LIMIT: u16 = 0x4f;
/// IDT limit (256 sixteen-byte gates).
pub const IDT_LIMIT: u16 = 0xfff;
/// Size of the fixed part of a 64-bit TSS.
pub const TSS_HEADER_SIZE: u64 = 104;
/// Size of the I/O permission bitmap (one bit per port, 65536 ports).
pub const IO_BITMAP_SIZE: u64 = 8192;
/// TSS limit: header + I/O bitmap + the trailing 0xFF byte, minus one.
pub const TSS_LIMIT: u32 = (TSS_HEADER_SIZE + IO_BITMAP_SIZE + 1 - 1) as u32;

/// The vector the hv injects to deliver an upcall (event notification).
pub const UPCALL_VECTOR: u8 = 32;
/// The I/O port a crash stub writes to (see [`CrashFrame`]). Always allowed in every TSS.
pub const CRASH_PORT: u16 = 0x91;
/// IST slot of the guest's "alternate stack".
pub const IST_ALT: u8 = 1;
/// IST slot of the crash stack used by the crash gates.
pub const IST_CRASH: u8 = 2;
/// Number of exception vectors (0..=31) that get crash stubs.
pub const NR_EXCEPTION_VECTORS: u8 = 32;
/// Distance between two crash stubs in the crash-stub page.
pub const CRASH_STUB_STRIDE: u64 = 16;

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User-accessible (CPL 3).
    pub const US: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Page size (a large page at the PD or PDPT level).
    pub const PS: u64 = 1 << 7;
    /// No-execute (needs EFER.NXE).
    pub const NX: u64 = 1 << 63;
    /// The physical-address bits of an entry.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// Errors from laying out or writing the tables.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum X86Error {
    /// RAM size is zero, not page-aligned, or too large.
    #[error("RAM size {0:#x} is zero, not page-aligned, or above {MAX_RAM_SIZE:#x}")]
    BadRamSize(u64),
    /// vCPU count is zero or the hv region would not fit its one page directory (1 GiB).
    #[error("vCPU count {0} is zero or too large")]
    BadVcpuCount(u32),
    /// A user range is empty, unaligned, outside RAM, or includes page 0.
    #[error("user range {start:#x}..{end:#x} is empty, unaligned, outside RAM, or maps page 0")]
    BadRange {
        /// Start of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// Two user ranges overlap at this page.
    #[error("user ranges overlap at {0:#x}")]
    OverlappingRanges(u64),
    /// The buffer is smaller than the layout's size.
    #[error("buffer of {have:#x} bytes is smaller than the hv region ({need:#x})")]
    BufferTooSmall {
        /// Buffer length.
        have: usize,
        /// Layout size.
        need: u64,
    },
    /// vCPU index out of range for this layout.
    #[error("vCPU {0} out of range")]
    BadVcpu(u32),
    /// IST index above 7.
    #[error("IST index {0} out of range (0..=7)")]
    BadIst(u8),
    /// A crash gate was asked for a vector above 31.
    #[error("vector {0} has no crash stub (only 0..=31)")]
    NoCrashStub(u8),
    /// A handler address that is not canonical.
    #[error("handler address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// A crash frame shorter than [`CRASH_FRAME_SIZE`].
    #[error("crash frame of {0} bytes, need {CRASH_FRAME_SIZE}")]
    ShortCrashFrame(usize),
}

/// A page-aligned range of guest RAM mapped for the guest (U=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRange {
    /// First byte (page-aligned).
    pub start: u64,
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// Mapped writable.
    pub writable: bool,
    /// Mapped executable (otherwise NX).
    pub executable: bool,
}

impl UserRange {
    /// The leaf page-table entry for the page at `gpa` in this range.
    pub fn pte(&self, gpa: u64) -> u64 {
        let mut e = (gpa & pte::ADDR_MASK) | pte::P | pte::US;
        if self.writable {
            e |= pte::RW;
        }
        if !self.executable {
            e |= pte::NX;
        }
        e
    }
}

/// Per-vCPU table parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuTables {
    /// Top of the guest's alternate stack (TSS IST1), a guest RAM address.
    pub alt_stack_top: u64,
    /// Top of the crash stack (TSS IST2) used by the crash gates, a guest RAM address.
    pub crash_stack_top: u64,
    /// Ports the guest may `out`/`in` to. [`CRASH_PORT`] is always allowed in addition.
    pub io_ports: Vec<u16>,
}

const PAGES_PER_VCPU: u64 = 3;
/// Offset of the TSS inside a vCPU's block (the GDT is at offset 0).
const TSS_IN_BLOCK: u64 = 0x100;
const PT_SPAN: u64 = 512 * PAGE_SIZE; // 2 MiB covered by one page table
const PD_SPAN: u64 = 512 * PT_SPAN; // 1 GiB covered by one page directory
const HV_PDPT_INDEX: u64 = (HV_REGION_GPA / PD_SPAN) % 512;

/// Where everything lives in the hv region, as page-aligned byte offsets from its start.
///
/// Order: PML4, PDPT, RAM page directories, RAM page tables, the hv page directory, the hv
/// page tables, the IDT, one block of 3 pages per vCPU (GDT at +0, TSS at +0x100), and the
/// crash-stub page. All page-table pages for the whole of RAM are allocated up front, so a
/// later PV MMU update only rewrites a leaf entry ([`HvRegionLayout::ram_pte_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvRegionLayout {
    ram_size: u64,
    nr_vcpus: u32,
    ram_pds: u64,
    ram_pts: u64,
    hv_pts: u64,
}

impl HvRegionLayout {
    /// Computes the layout for `ram_size` bytes of RAM and `nr_vcpus` vCPUs.
    pub fn new(ram_size: u64, nr_vcpus: u32) -> Result<Self, X86Error> {
        if ram_size == 0 || !ram_size.is_multiple_of(PAGE_SIZE) || ram_size > MAX_RAM_SIZE {
            return Err(X86Error::BadRamSize(ram_size));
        }
        if nr_vcpus == 0 {
            return Err(X86Error::BadVcpuCount(nr_vcpus));
        }
        let ram_pds = ram_size.div_ceil(PD_SPAN);
        let ram_pts = ram_size.div_ceil(PT_SPAN);
        let fixed = 2 + ram_pds + ram_pts + 1 + 1 + u64::from(nr_vcpus) * PAGES_PER_VCPU + 1 + 2;
        // The hv page tables map the hv region, themselves included: find the fixed point.
        let mut hv_pts = 1;
        while (fixed + hv_pts).div_ceil(512) > hv_pts {
            hv_pts += 1;
        }
        let layout = Self {
            ram_size,
            nr_vcpus,
            ram_pds,
            ram_pts,
            hv_pts,
        };
        if hv_pts > 512 {
            return Err(X86Error::BadVcpuCount(nr_vcpus));
        }
        Ok(layout)
    }

    /// Guest RAM size.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }
    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }
    /// Total size of the hv region in bytes (a multiple of the page size).
    pub fn size(&self) -> u64 {
        self.window_pt() + PAGE_SIZE
    }
    /// Offset of the grant window's page directory.
    pub fn window_pd(&self) -> u64 {
        self.crash_stub() + PAGE_SIZE
    }
    /// Offset of the grant window's page table.
    pub fn window_pt(&self) -> u64 {
        self.window_pd() + PAGE_SIZE
    }
    /// Offset of the leaf entry that maps grant-window slot `slot`.
    pub fn window_pte_offset(&self, slot: u32) -> Option<u64> {
        (slot < GRANT_WINDOW_SLOTS).then(|| self.window_pt() + u64::from(slot) * 8)
    }
    /// Offset of the PML4.
    pub fn pml4(&self) -> u64 {
        0
    }
    /// Offset of the (single) PDPT.
    pub fn pdpt(&self) -> u64 {
        PAGE_SIZE
    }
    /// Offset of the first RAM page directory (one per GiB of RAM).
    pub fn ram_pd(&self) -> u64 {
        2 * PAGE_SIZE
    }
    /// Offset of the first RAM page table (one per 2 MiB of RAM).
    pub fn ram_pt(&self) -> u64 {
        self.ram_pd() + self.ram_pds * PAGE_SIZE
    }
    /// Offset of the hv region's page directory.
    pub fn hv_pd(&self) -> u64 {
        self.ram_pt() + self.ram_pts * PAGE_SIZE
    }
    /// Offset of the first hv page table.
    pub fn hv_pt(&self) -> u64 {
        self.hv_pd() + PAGE_SIZE
    }
    /// Offset of the IDT page.
    pub fn idt(&self) -> u64 {
        self.hv_pt() + self.hv_pts * PAGE_SIZE
    }
    /// Offset of vCPU `vcpu`'s GDT (start of its 3-page block).
    pub fn gdt(&self, vcpu: u32) -> Result<u64, X86Error> {
        if vcpu >= self.nr_vcpus {
            return Err(X86Error::BadVcpu(vcpu));
        }
        Ok(self.idt() + PAGE_SIZE + u64::from(vcpu) * PAGES_PER_VCPU * PAGE_SIZE)
    }
    /// Offset of vCPU `vcpu`'s TSS.
    pub fn tss(&self, vcpu: u32) -> Result<u64, X86Error> {
        Ok(self.gdt(vcpu)? + TSS_IN_BLOCK)
    }
    /// Offset of the crash-stub page.
    pub fn crash_stub(&self) -> u64 {
        self.idt() + PAGE_SIZE + u64::from(self.nr_vcpus) * PAGES_PER_VCPU * PAGE_SIZE
    }

    /// Guest address of a hv-region offset (the region is identity-mapped).
    pub fn gpa(&self, offset: u64) -> u64 {
        HV_REGION_GPA + offset
    }
    /// CR3 value: the PML4's guest-physical address.
    pub fn cr3(&self) -> u64 {
        self.gpa(self.pml4())
    }
    /// Guest address of the crash stub for `vector` (0..=31).
    pub fn crash_stub_entry(&self, vector: u8) -> Result<u64, X86Error> {
        if vector >= NR_EXCEPTION_VECTORS {
            return Err(X86Error::NoCrashStub(vector));
        }
        Ok(self.gpa(self.crash_stub()) + u64::from(vector) * CRASH_STUB_STRIDE)
    }
    /// If `rip` lies in the crash stub of some vector, that vector. Lets the hv tell a real
    /// crash from a guest that writes to [`CRASH_PORT`] itself.
    pub fn crash_stub_vector(&self, rip: u64) -> Option<u8> {
        let off = rip.checked_sub(self.gpa(self.crash_stub()))?;
        let vector = off / CRASH_STUB_STRIDE;
        (vector < u64::from(NR_EXCEPTION_VECTORS)).then_some(vector as u8)
    }
    /// Offset (in the hv region) of the leaf page-table entry that maps RAM page `gpa`.
    pub fn ram_pte_offset(&self, gpa: u64) -> Option<u64> {
        (gpa < self.ram_size).then(|| self.ram_pt() + (gpa / PAGE_SIZE) * 8)
    }
    /// The descriptor-table registers vCPU `vcpu` boots with.
    pub fn descriptor_tables(&self, vcpu: u32) -> Result<DescriptorTables, X86Error> {
        Ok(DescriptorTables {
            cr3: self.cr3(),
            gdt_base: self.gpa(self.gdt(vcpu)?),
            gdt_limit: GDT_LIMIT,
            idt_base: self.gpa(self.idt()),
            idt_limit: IDT_LIMIT,
            tss_base: self.gpa(self.tss(vcpu)?),
            tss_limit: TSS_LIMIT,
        })
    }
}

/// CR3 and descriptor-table bases/limits of one vCPU, all guest addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorTables {
    /// Page-table root.
    pub cr3: u64,
    /// GDT base.
    pub gdt_base: u64,
    /// GDT limit.
    pub gdt_limit: u16,
    /// IDT base.
    pub idt_base: u64,
    /// IDT limit.
    pub idt_limit: u16,
    /// TSS base.
    pub tss_base: u64,
    /// TSS limit.
    pub tss_limit: u32,
}

/// Encodes a 64-bit IDT trap gate (type 0xF, DPL 3, present, selector [`USER_CS`]).
pub fn trap_gate(handler: u64, ist: u8) -> [u8; 16] {
    const TYPE_ATTR: u64 = 0x80 | (3 << 5) | 0xf; // P, DPL 3, 64-bit trap gate
    let low = (handler & 0xffff)
        | (u64::from(USER_CS) << 16)
        | (u64::from(ist & 7) << 32)
        | (TYPE_ATTR << 40)
        | (((handler >> 16) & 0xffff) << 48);
    let high = handler >> 32;
    let mut g = [0; 16];
    g[..8].copy_from_slice(&low.to_le_bytes());
    g[8..].copy_from_slice(&high.to_le_bytes());
    g
}

/// Encodes a code/data segment descriptor with base 0 and limit 4 GiB (G=1).
/// `access` is the access byte (P, DPL, S, type); `flags` the high nibble (G, D/B, L, AVL).
pub fn segment_descriptor(access: u8, flags: u8) -> u64 {
    0xffff | (u64::from(access) << 40) | (0xf << 48) | (u64::from(flags & 0xf) << 52)
}

/// Encodes the 16-byte busy 64-bit TSS descriptor (type 0xB, DPL 0, present).
pub fn tss_descriptor(base: u64, limit: u32) -> [u8; 16] {
    let low = u64::from(limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x8b << 40)
        | (u64::from((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let high = base >> 32;
    let mut d = [0; 16];
    d[..8].copy_from_slice(&low.to_le_bytes());
    d[8..].copy_from_slice(&high.to_le_bytes());
    d
}

/// Whether the CPU pushes an error code for exception `vector`.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Machine code of the crash stub for `vector`, at most [`CRASH_STUB_STRIDE`] bytes:
///
/// ```text
/// 6A 00      push 0          ; only if the CPU pushed no error code
/// 6A vv      push vector
/// E6 91      out 0x91, al    ; CRASH_PORT
/// EB FE      jmp $           ; in case the hv resumes it
/// ```
pub fn crash_stub_code(vector: u8) -> Vec<u8> {
    let mut code = Vec::with_capacity(8);
    if !has_error_code(vector) {
        code.extend_from_slice(&[0x6a, 0x00]);
    }
    code.extend_from_slice(&[0x6a, vector, 0xe6, CRASH_PORT as u8, 0xeb, 0xfe]);
    code
}

/// Size in bytes of the frame a crash stub leaves at RSP.
pub const CRASH_FRAME_SIZE: usize = 7 * 8;

/// The stack frame at RSP when a crash stub does `out CRASH_PORT, al`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashFrame {
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// Faulting (or, for traps, next) instruction.
    pub rip: u64,
    /// CS at the fault.
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// RSP at the fault.
    pub rsp: u64,
    /// SS at the fault.
    pub ss: u64,
}

impl CrashFrame {
    /// Parses the 7 little-endian words at RSP: vector, error code, RIP, CS, RFLAGS, RSP, SS.
    pub fn parse(bytes: &[u8]) -> Result<Self, X86Error> {
        let mut w = [0u64; 7];
        if bytes.len() < CRASH_FRAME_SIZE {
            return Err(X86Error::ShortCrashFrame(bytes.len()));
        }
        for (i, chunk) in bytes[..CRASH_FRAME_SIZE].chunks_exact(8).enumerate() {
            let mut b = [0; 8];
            b.copy_from_slice(chunk);
            w[i] = u64::from_le_bytes(b);
        }
        let [vector, error_code, rip, cs, rflags, rsp, ss] = w;
        Ok(Self {
            vector,
            error_code,
            rip,
            cs,
            rflags,
            rsp,
            ss,
        })
    }
}

fn is_canonical(va: u64) -> bool {
    let top = (va as i64) >> 47;
    top == 0 || top == -1
}

/// Writes the hv-owned tables into `mem`, a buffer laid out as the hv region.
///
/// It takes `&mut [u8]`, so use it while no vCPU of the domain runs (or on a buffer that is then
/// copied in). To change a gate of a live IDT, write [`trap_gate`]'s 16 bytes (or zeroes) at
/// [`HvTables::gate_offset`] through the hv's guest-memory accessor instead.
pub struct HvTables<'a> {
    mem: &'a mut [u8],
    layout: HvRegionLayout,
}

impl<'a> HvTables<'a> {
    /// Wraps `mem`, which must be at least `layout.size()` bytes.
    pub fn new(mem: &'a mut [u8], layout: HvRegionLayout) -> Result<Self, X86Error> {
        if (mem.len() as u64) < layout.size() {
            return Err(X86Error::BufferTooSmall {
                have: mem.len(),
                need: layout.size(),
            });
        }
        Ok(Self { mem, layout })
    }

    /// The layout.
    pub fn layout(&self) -> &HvRegionLayout {
        &self.layout
    }

    /// Writes everything: zeroes the region, then the page tables, the crash stubs, an IDT with
    /// crash gates on vectors 0..=31 and nothing else, and each vCPU's GDT and TSS.
    /// `vcpus` gives each vCPU's parameters, in vCPU order (exactly `nr_vcpus` of them).
    pub fn build(&mut self, ram: &[UserRange], vcpus: &[VcpuTables]) -> Result<(), X86Error> {
        if vcpus.len() != self.layout.nr_vcpus as usize {
            return Err(X86Error::BadVcpuCount(vcpus.len() as u32));
        }
        let size = self.layout.size() as usize;
        self.mem[..size].fill(0);
        self.write_page_tables(ram)?;
        self.write_crash_stubs();
        for v in 0..NR_EXCEPTION_VECTORS {
            self.set_crash_gate(v)?;
        }
        for (i, t) in vcpus.iter().enumerate() {
            self.write_gdt(i as u32)?;
            self.write_tss(i as u32, t)?;
        }
        Ok(())
    }

    fn put(&mut self, off: u64, bytes: &[u8]) {
        let off = off as usize;
        self.mem[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn put_u64(&mut self, off: u64, v: u64) {
        self.put(off, &v.to_le_bytes());
    }

    fn get_u64(&self, off: u64) -> u64 {
        read_u64(self.mem, off)
    }

    fn write_page_tables(&mut self, ram: &[UserRange]) -> Result<(), X86Error> {
        const TABLE: u64 = pte::P | pte::RW | pte::US; // leaves decide the real rights
        let l = self.layout;
        self.put_u64(l.pml4(), l.gpa(l.pdpt()) | TABLE);
        for i in 0..l.ram_pds {
            let pd = l.ram_pd() + i * PAGE_SIZE;
            self.put_u64(l.pdpt() + i * 8, l.gpa(pd) | TABLE);
        }
        for i in 0..l.ram_pts {
            let pt = l.ram_pt() + i * PAGE_SIZE;
            self.put_u64(l.ram_pd() + i * 8, l.gpa(pt) | TABLE);
        }
        self.put_u64(l.pdpt() + HV_PDPT_INDEX * 8, l.gpa(l.hv_pd()) | TABLE);
        // The grant window: its leaves start not present; `set_window_pte` fills them.
        self.put_u64(
            l.pdpt() + ((GRANT_WINDOW_GPA / PD_SPAN) % 512) * 8,
            l.gpa(l.window_pd()) | TABLE,
        );
        self.put_u64(l.window_pd(), l.gpa(l.window_pt()) | TABLE);
        for i in 0..l.hv_pts {
            let pt = l.hv_pt() + i * PAGE_SIZE;
            self.put_u64(l.hv_pd() + i * 8, l.gpa(pt) | TABLE);
        }
        // The hv region: supervisor-only, no-execute; the crash-stub page user, RO, executable.
        for page in 0..l.size() / PAGE_SIZE {
            let off = page * PAGE_SIZE;
            let e = if off == l.crash_stub() {
                l.gpa(off) | pte::P | pte::US
            } else {
                l.gpa(off) | pte::P | pte::RW | pte::NX
            };
            self.put_u64(l.hv_pt() + page * 8, e);
        }
        for r in ram {
            if r.start >= r.end
                || !r.start.is_multiple_of(PAGE_SIZE)
                || !r.end.is_multiple_of(PAGE_SIZE)
                || r.start < PAGE_SIZE
                || r.end > l.ram_size
            {
                return Err(X86Error::BadRange {
                    start: r.start,
                    end: r.end,
                });
            }
            for gpa in (r.start..r.end).step_by(PAGE_SIZE as usize) {
                let off = l.ram_pt() + (gpa / PAGE_SIZE) * 8;
                if self.get_u64(off) & pte::P != 0 {
                    return Err(X86Error::OverlappingRanges(gpa));
                }
                self.put_u64(off, r.pte(gpa));
            }
        }
        Ok(())
    }

    fn write_crash_stubs(&mut self) {
        let base = self.layout.crash_stub();
        // Fill with int3 (0xCC): harmless filler between the stubs.
        self.mem[base as usize..(base + PAGE_SIZE) as usize].fill(0xcc);
        for v in 0..NR_EXCEPTION_VECTORS {
            let code = crash_stub_code(v);
            self.put(base + u64::from(v) * CRASH_STUB_STRIDE, &code);
        }
    }

    fn write_gdt(&mut self, vcpu: u32) -> Result<(), X86Error> {
        let gdt = self.layout.gdt(vcpu)?;
        let tss = self.layout.gpa(self.layout.tss(vcpu)?);
        self.mem[gdt as usize..(gdt + u64::from(GDT_LIMIT) + 1) as usize].fill(0);
        // Access bytes have the accessed bit set so the CPU never writes the GDT.
        self.put_u64(gdt + u64::from(KERNEL_CS), segment_descriptor(0x9b, 0xa));
        self.put_u64(gdt + u64::from(KERNEL_DS), segment_descriptor(0x93, 0xc));
        self.put_u64(gdt + u64::from(USER_DS & !7), segment_descriptor(0xf3, 0xc));
        self.put_u64(gdt + u64::from(USER_CS & !7), segment_descriptor(0xfb, 0xa));
        self.put(
            gdt + u64::from(TSS_SELECTOR),
            &tss_descriptor(tss, TSS_LIMIT),
        );
        Ok(())
    }

    fn write_tss(&mut self, vcpu: u32, t: &VcpuTables) -> Result<(), X86Error> {
        let tss = self.layout.tss(vcpu)?;
        let len = (TSS_HEADER_SIZE + IO_BITMAP_SIZE) as usize;
        self.mem[tss as usize..tss as usize + len].fill(0);
        self.put_u64(tss + 0x24, t.alt_stack_top); // IST1
        self.put_u64(tss + 0x2c, t.crash_stack_top); // IST2
        self.put(tss + 0x66, &(TSS_HEADER_SIZE as u16).to_le_bytes()); // I/O map base
        let bitmap = (tss + TSS_HEADER_SIZE) as usize;
        self.mem[bitmap..bitmap + IO_BITMAP_SIZE as usize + 1].fill(0xff); // all denied + 0xFF
        for &port in t.io_ports.iter().chain(&[CRASH_PORT]) {
            self.mem[bitmap + usize::from(port / 8)] &= !(1 << (port % 8));
        }
        Ok(())
    }

    /// Lets every vCPU's guest code use I/O port `port` (clears its bit in each TSS I/O bitmap).
    pub fn allow_io_port(&mut self, port: u16) -> Result<(), X86Error> {
        for v in 0..self.layout.nr_vcpus {
            let byte = self.layout.tss(v)? + TSS_HEADER_SIZE + u64::from(port / 8);
            self.mem[byte as usize] &= !(1 << (port % 8));
        }
        Ok(())
    }

    /// Maps grant-window slot `slot` for the guest (user, no-execute, writable or not), or
    /// unmaps it (`None`). The slot's backing memory is the hv's business.
    pub fn set_window_pte(&mut self, slot: u32, writable: Option<bool>) -> Result<(), X86Error> {
        let off = self
            .layout
            .window_pte_offset(slot)
            .ok_or(X86Error::BadRange {
                start: u64::from(slot),
                end: u64::from(GRANT_WINDOW_SLOTS),
            })?;
        let e = match writable {
            None => 0,
            Some(w) => {
                let gpa = GRANT_WINDOW_GPA + u64::from(slot) * PAGE_SIZE;
                gpa | pte::P | pte::US | pte::NX | if w { pte::RW } else { 0 }
            }
        };
        self.put_u64(off, e);
        Ok(())
    }

    /// Points `vector` at a guest handler: a DPL-3 trap gate to `handler_va` on stack `ist`
    /// (0 = the current stack, 1..=7 = TSS IST slot).
    pub fn set_gate(&mut self, vector: u8, handler_va: u64, ist: u8) -> Result<(), X86Error> {
        if ist > 7 {
            return Err(X86Error::BadIst(ist));
        }
        if !is_canonical(handler_va) {
            return Err(X86Error::NonCanonical(handler_va));
        }
        let off = self.gate_offset(vector);
        self.put(off, &trap_gate(handler_va, ist));
        Ok(())
    }

    /// Points exception `vector` (0..=31) back at its crash stub, on the crash stack (IST2).
    pub fn set_crash_gate(&mut self, vector: u8) -> Result<(), X86Error> {
        let entry = self.layout.crash_stub_entry(vector)?;
        self.set_gate(vector, entry, IST_CRASH)
    }

    /// Removes the gate of `vector` (not present): for vectors 32..=255 without a handler.
    pub fn clear_gate(&mut self, vector: u8) {
        let off = self.gate_offset(vector);
        self.put(off, &[0; 16]);
    }

    /// Offset (in the hv region) of the gate for `vector`.
    pub fn gate_offset(&self, vector: u8) -> u64 {
        self.layout.idt() + u64::from(vector) * 16
    }
}

fn read_u64(mem: &[u8], off: u64) -> u64 {
    let off = off as usize;
    let mut b = [0; 8];
    b.copy_from_slice(&mem[off..off + 8]);
    u64::from_le_bytes(b)
}

/// The result of walking the page tables for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address.
    pub gpa: u64,
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// Executable (NX clear at every level).
    pub executable: bool,
}

/// Walks the 4-level page tables in `region` (laid out per `layout`) for virtual address `va`,
/// as the CPU would. Only tables inside the hv region are followed; `None` if not present.
pub fn translate(region: &[u8], layout: &HvRegionLayout, va: u64) -> Option<Translation> {
    let mut table = layout.cr3();
    let (mut writable, mut user, mut executable) = (true, true, true);
    for level in (0..4).rev() {
        let index = (va >> (12 + 9 * level)) & 0x1ff;
        let off = (table & pte::ADDR_MASK).checked_sub(HV_REGION_GPA)? + index * 8;
        if off + 8 > region.len() as u64 {
            return None;
        }
        let e = read_u64(region, off);
        if e & pte::P == 0 {
            return None;
        }
        writable &= e & pte::RW != 0;
        user &= e & pte::US != 0;
        executable &= e & pte::NX == 0;
        if level > 0 && e & pte::PS != 0 {
            let span = 1u64 << (12 + 9 * level);
            let gpa = (e & pte::ADDR_MASK & !(span - 1)) | (va & (span - 1));
            return Some(Translation {
                gpa,
                writable,
                user,
                executable,
            });
        }
        table = e;
    }
    Some(Translation {
        gpa: (table & pte::ADDR_MASK) | (va & 0xfff),
        writable,
        user,
        executable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(ram_size: u64, nr_vcpus: u32, ram: &[UserRange]) -> (Vec<u8>, HvRegionLayout) {
        let layout = HvRegionLayout::new(ram_size, nr_vcpus).unwrap();
        let mut mem = vec![0; layout.size() as usize];
        let vcpus: Vec<_> = (0..nr_vcpus)
            .map(|i| VcpuTables {
                alt_stack_top: 0x10_0000 + u64::from(i) * 0x1000,
                crash_stack_top: 0x20_0000 + u64::from(i) * 0x1000,
                io_ports: vec![0x90, 0x3f8],
            })
            .collect();
        HvTables::new(&mut mem, layout)
            .unwrap()
            .build(ram, &vcpus)
            .unwrap();
        (mem, layout)
    }

    fn u64_at(mem: &[u8], off: u64) -> u64 {
        read_u64(mem, off)
    }

    const RAM: [UserRange; 2] = [
        UserRange {
            start: 0x1000,
            end: 0x3000,
            writable: false,
            executable: true,
        },
        UserRange {
            start: 0x20_0000,
            end: 0x40_0000,
            writable: true,
            executable: false,
        },
    ];

    #[test]
    fn layout_is_page_aligned_and_ordered() {
        let l = HvRegionLayout::new(3 << 30, 4).unwrap();
        assert_eq!(l.ram_pds, 3);
        assert_eq!(l.ram_pts, 1536);
        let offs = [
            l.pml4(),
            l.pdpt(),
            l.ram_pd(),
            l.ram_pt(),
            l.hv_pd(),
            l.hv_pt(),
            l.idt(),
        ];
        assert!(offs.windows(2).all(|w| w[0] < w[1]));
        assert!(offs.iter().all(|o| o.is_multiple_of(PAGE_SIZE)));
        assert_eq!(l.gdt(0).unwrap(), l.idt() + PAGE_SIZE);
        assert_eq!(l.crash_stub(), l.gdt(3).unwrap() + 3 * PAGE_SIZE);
        assert!(l.tss(3).unwrap() + TSS_HEADER_SIZE + IO_BITMAP_SIZE < l.crash_stub());
        assert!(l.hv_pts * 512 * PAGE_SIZE >= l.size());
        assert_eq!(l.gdt(4), Err(X86Error::BadVcpu(4)));
        assert!(HvRegionLayout::new(0, 1).is_err());
        assert!(HvRegionLayout::new(0x1001, 1).is_err());
        assert!(HvRegionLayout::new(MAX_RAM_SIZE + PAGE_SIZE, 1).is_err());
        assert!(HvRegionLayout::new(PAGE_SIZE, 0).is_err());
    }

    #[test]
    fn trap_gate_bytes() {
        let g = trap_gate(0x1234_5678_9abc_def0, 2);
        assert_eq!(
            g,
            [
                0xf0, 0xde, 0x33, 0x00, 0x02, 0xef, 0xbc, 0x9a, // offset lo, sel, ist, type
                0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, // offset hi, reserved
            ]
        );
    }

    #[test]
    fn descriptor_bytes() {
        assert_eq!(segment_descriptor(0x9b, 0xa), 0x00af_9b00_0000_ffff);
        assert_eq!(segment_descriptor(0x93, 0xc), 0x00cf_9300_0000_ffff);
        assert_eq!(segment_descriptor(0xf3, 0xc), 0x00cf_f300_0000_ffff);
        assert_eq!(segment_descriptor(0xfb, 0xa), 0x00af_fb00_0000_ffff);
        let d = tss_descriptor(0x40_1234_5678, TSS_LIMIT);
        assert_eq!(
            u64::from_le_bytes(d[..8].try_into().unwrap()),
            0x1200_8b34_5678_2068
        );
        assert_eq!(u64::from_le_bytes(d[8..].try_into().unwrap()), 0x40);
    }

    #[test]
    fn gdt_idt_tss_contents() {
        let (mem, l) = build(8 << 20, 2, &RAM);
        let gdt = l.gdt(1).unwrap();
        assert_eq!(u64_at(&mem, gdt), 0);
        assert_eq!(u64_at(&mem, gdt + 0x30), 0x00af_fb00_0000_ffff);
        assert_eq!(u64_at(&mem, gdt + 0x28), 0x00cf_f300_0000_ffff);
        let tss = l.tss(1).unwrap();
        let tss_desc = tss_descriptor(l.gpa(tss), TSS_LIMIT);
        assert_eq!(
            &mem[(gdt + 0x40) as usize..(gdt + 0x50) as usize],
            &tss_desc
        );
        assert_eq!(u64_at(&mem, tss + 0x24), 0x10_1000);
        assert_eq!(u64_at(&mem, tss + 0x2c), 0x20_1000);
        assert_eq!(
            &mem[(tss + 0x66) as usize..(tss + 0x68) as usize],
            &[104, 0]
        );
        let bitmap = &mem[(tss + 104) as usize..(tss + 104 + 8193) as usize];
        let allowed = |p: u16| bitmap[usize::from(p / 8)] & (1 << (p % 8)) == 0;
        assert!(allowed(0x90) && allowed(0x3f8) && allowed(CRASH_PORT));
        assert!(!allowed(0x92) && !allowed(0x3f9) && !allowed(0) && !allowed(0xffff));
        assert_eq!(bitmap[8192], 0xff);
        // IDT: crash gates on 0..=31, nothing above.
        let gate = |v: u64| &mem[(l.idt() + v * 16) as usize..(l.idt() + v * 16 + 16) as usize];
        assert_eq!(
            gate(14),
            trap_gate(l.crash_stub_entry(14).unwrap(), IST_CRASH)
        );
        assert_eq!(gate(32), [0; 16]);
        assert_eq!(gate(255), [0; 16]);
    }

    #[test]
    fn set_and_clear_gates() {
        let l = HvRegionLayout::new(1 << 20, 1).unwrap();
        let mut mem = vec![0; l.size() as usize];
        let mut t = HvTables::new(&mut mem, l).unwrap();
        t.set_gate(UPCALL_VECTOR, 0x1000, IST_ALT).unwrap();
        assert_eq!(t.set_gate(3, 0x1000, 8), Err(X86Error::BadIst(8)));
        assert_eq!(
            t.set_gate(3, 0x8000_0000_0000, 0),
            Err(X86Error::NonCanonical(0x8000_0000_0000))
        );
        assert_eq!(t.set_crash_gate(32), Err(X86Error::NoCrashStub(32)));
        let off = t.gate_offset(UPCALL_VECTOR) as usize;
        assert_eq!(&mem[off..off + 16], &trap_gate(0x1000, 1));
        let mut t = HvTables::new(&mut mem, l).unwrap();
        t.clear_gate(UPCALL_VECTOR);
        assert_eq!(&mem[off..off + 16], &[0; 16]);
    }

    #[test]
    fn crash_stubs() {
        assert_eq!(
            crash_stub_code(6),
            [0x6a, 0, 0x6a, 6, 0xe6, 0x91, 0xeb, 0xfe]
        );
        assert_eq!(crash_stub_code(14), [0x6a, 14, 0xe6, 0x91, 0xeb, 0xfe]);
        let (mem, l) = build(1 << 20, 1, &[]);
        let e13 = l.crash_stub_entry(13).unwrap();
        let off = (e13 - HV_REGION_GPA) as usize;
        assert_eq!(&mem[off..off + 6], &crash_stub_code(13)[..]);
        assert_eq!(l.crash_stub_vector(e13 + 4), Some(13));
        assert_eq!(l.crash_stub_vector(e13 - 0x1000), None);
        assert_eq!(l.crash_stub_vector(l.gpa(l.crash_stub()) + 32 * 16), None);
    }

    #[test]
    fn crash_frame_parse() {
        let words: [u64; 7] = [14, 7, 0x1234, 0x33, 0x10202, 0x7ff0, 0x2b];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let f = CrashFrame::parse(&bytes).unwrap();
        assert_eq!((f.vector, f.error_code, f.rip, f.ss), (14, 7, 0x1234, 0x2b));
        assert_eq!(
            CrashFrame::parse(&bytes[..55]),
            Err(X86Error::ShortCrashFrame(55))
        );
    }

    #[test]
    fn page_walk() {
        let (mem, l) = build(8 << 20, 1, &RAM);
        let tr = |va| translate(&mem, &l, va);
        assert_eq!(tr(0), None); // page 0 never mapped
        assert_eq!(tr(0x3000), None); // not in a range
        let code = tr(0x1234).unwrap();
        assert_eq!(code.gpa, 0x1234);
        assert!(code.user && !code.writable && code.executable);
        let data = tr(0x3f_fff8).unwrap();
        assert!(data.user && data.writable && !data.executable);
        assert_eq!(tr(0x40_0000), None); // end of the range
        assert_eq!(tr(0x7f_f000), None); // inside RAM, not mapped
        assert_eq!(tr(8 << 20), None); // beyond RAM
        let idt = tr(l.gpa(l.idt()) + 8).unwrap();
        assert_eq!(idt.gpa, l.gpa(l.idt()) + 8);
        assert!(!idt.user && !idt.executable);
        let pml4 = tr(l.cr3()).unwrap();
        assert!(!pml4.user);
        let stub = tr(l.crash_stub_entry(6).unwrap()).unwrap();
        assert!(stub.user && !stub.writable && stub.executable);
        assert_eq!(tr(l.gpa(l.size())), None); // past the hv region
        assert_eq!(l.ram_pte_offset(0x20_1000), Some(l.ram_pt() + 0x201 * 8));
        assert_eq!(
            u64_at(&mem, l.ram_pte_offset(0x1000).unwrap()),
            RAM[0].pte(0x1000)
        );
    }

    #[test]
    fn bad_ranges() {
        let l = HvRegionLayout::new(1 << 20, 1).unwrap();
        let mut mem = vec![0; l.size() as usize];
        let vcpus = [VcpuTables {
            alt_stack_top: 0,
            crash_stack_top: 0,
            io_ports: vec![],
        }];
        let mut t = HvTables::new(&mut mem, l).unwrap();
        let r = |start, end| UserRange {
            start,
            end,
            writable: true,
            executable: false,
        };
        for bad in [
            r(0, 0x1000),
            r(0x1000, 0x1000),
            r(0x1800, 0x2000),
            r(0xff000, 0x101000),
        ] {
            assert!(matches!(
                t.build(&[bad], &vcpus),
                Err(X86Error::BadRange { .. })
            ));
        }
        assert_eq!(
            t.build(&[r(0x1000, 0x3000), r(0x2000, 0x4000)], &vcpus),
            Err(X86Error::OverlappingRanges(0x2000))
        );
        assert_eq!(
            HvTables::new(&mut [0; 16], l).err(),
            Some(X86Error::BufferTooSmall {
                have: 16,
                need: l.size()
            })
        );
    }
}
