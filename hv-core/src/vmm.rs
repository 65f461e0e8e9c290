//! Building a domain from an image and running it: guest RAM and the hv region, the CPU tables,
//! the start-info and shared-info pages, the KVM VM and its vCPU threads, and the timer thread.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use hypercall_abi::shared_info::SharedInfo;
use hypercall_abi::start_info::{StartInfo, CMDLINE_MAX, MAX_MEM_REGIONS, START_INFO_MAGIC};
use hypercall_abi::time::PvclockTimeInfo;
use hypercall_abi::{DomId, ABI_MAJOR, ABI_MINOR, HYPERCALL_PORT, PING_PORT};
use zerocopy::FromZeros;

use crate::console::{Console, Sink};
use crate::devices::{PortBus, Uart16550};
use crate::domain::{Domain, DomainParts, StopReason, Tables};
use crate::error::HvError;
use crate::evtchn::{Backend, PortTable, DEFAULT_MAX_PORTS};
use crate::grant::Window;
use crate::hypercall::OFFERED;
use crate::kvm::{BootState, Kvm, Vcpu, Vm};
use crate::layout::{self, Layout};
use crate::loader::GuestImage;
use crate::memory::GuestRam;
use crate::registry::Registry;
use crate::time::{calibrate_tsc_hz, rdtsc, Clock};
use crate::vcpu::VcpuThread;
use crate::x86::{
    HvRegionLayout, HvTables, VcpuTables, GRANT_WINDOW_GPA, GRANT_WINDOW_SLOTS, HV_REGION_GPA,
};

/// What to run in one domain.
pub struct DomainConfig {
    /// Name for reports.
    pub name: String,
    /// The validated image.
    pub image: GuestImage,
    /// RAM in bytes.
    pub mem: u64,
    /// vCPU count.
    pub vcpus: u32,
    /// Command line passed in StartInfo.
    pub cmdline: String,
    /// Disks served to the domain by the hv's block backend.
    pub disks: Vec<crate::blkback::DiskDevice>,
    /// Network interfaces served to the domain by the hv's net backend.
    pub nets: Vec<crate::netback::NetDevice>,
    /// An emulated ATA disk (full virtualization, for comparison).
    pub ata_disk: Option<crate::devices::AtaDisk>,
    /// The switch of an emulated NE2000 card (full virtualization, for comparison).
    pub emulated_net: Option<String>,
}

/// The hv-owned tables of a domain (IDT, grant-window page table), written in its hv region.
struct RegionTables {
    region: GuestRam,
    layout: HvRegionLayout,
}

impl RegionTables {
    fn with_tables<R>(&mut self, f: impl FnOnce(&mut HvTables<'_>) -> R) -> Option<R> {
        // SAFETY: the region mapping is owned by `self.region` and is `layout.size()` bytes
        // long; only this struct (behind the domain's gates mutex) writes it from the host, and
        // the guest cannot write it (mapped supervisor-only), so this is the only writer.
        let mem = unsafe {
            std::slice::from_raw_parts_mut(self.region.host_base(), self.region.size() as usize)
        };
        HvTables::new(mem, self.layout).ok().map(|mut t| f(&mut t))
    }
}

impl Tables for RegionTables {
    fn set_gate(&mut self, vector: u8, handler: u64, ist: u8) {
        self.with_tables(|t| t.set_gate(vector, handler, ist));
    }
    fn set_crash_gate(&mut self, vector: u8) {
        self.with_tables(|t| t.set_crash_gate(vector));
    }
    fn clear_gate(&mut self, vector: u8) {
        self.with_tables(|t| t.clear_gate(vector));
    }
    fn set_window_pte(&mut self, slot: u32, writable: Option<bool>) {
        self.with_tables(|t| t.set_window_pte(slot, writable));
    }
    fn allow_io_port(&mut self, port: u16) {
        self.with_tables(|t| t.allow_io_port(port));
    }
}

fn internal(what: &str) -> impl Fn(String) -> HvError + '_ {
    move |e| HvError::Internal(format!("{what}: {e}"))
}

/// A domain that has been built and whose threads run.
pub struct RunningDomain {
    /// The domain.
    pub domain: Arc<Domain>,
    threads: Vec<thread::JoinHandle<()>>,
    timer: Option<thread::JoinHandle<()>>,
    _vm: Arc<Vm>,
}

impl RunningDomain {
    /// Waits until every vCPU and backend thread has ended, then returns why the domain
    /// stopped.
    pub fn wait(mut self) -> StopReason {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.domain
                    .stop(StopReason::HvError("a vCPU thread panicked".into()));
            }
        }
        // All vCPUs ended without a reason only if they were all told to stop.
        self.domain
            .stop(StopReason::HvError("all vCPUs stopped".into()));
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
        self.domain
            .stop_reason()
            .unwrap_or(StopReason::HvError("no stop reason".into()))
    }
}

/// Builds domain `id` from `cfg`, adds it to `registry` and starts its threads.
pub fn start_domain(
    kvm: &Kvm,
    clock: &Arc<Clock>,
    registry: &Arc<Registry>,
    id: DomId,
    cfg: DomainConfig,
    sink: impl Fn() -> Sink,
) -> Result<RunningDomain, HvError> {
    let layout = Layout::new(cfg.mem, cfg.vcpus, &cfg.image)?;
    if cfg.cmdline.len() > CMDLINE_MAX {
        return Err(HvError::BadArgument(format!(
            "the command line is {} bytes, at most {CMDLINE_MAX} are allowed",
            cfg.cmdline.len()
        )));
    }

    // Guest RAM with the image loaded.
    let ram =
        GuestRam::new(cfg.mem).map_err(|e| internal("allocating guest RAM")(e.to_string()))?;
    for seg in &cfg.image.segments {
        ram.write(seg.addr, &seg.data)
            .map_err(|_| internal("loading the image")("segment outside RAM".into()))?;
    }

    // Emulated devices: a 16550 UART always, an ATA disk and an NE2000 card when asked for.
    // The card's switch port lives as long as the bus (until every vCPU thread has ended).
    let mut bus = PortBus::new();
    let dev_err = |e: crate::devices::DeviceError| internal("emulated devices")(e.to_string());
    bus.add(Box::new(Uart16550::new(sink()))).map_err(dev_err)?;
    if let Some(ata) = cfg.ata_disk {
        bus.add(Box::new(ata)).map_err(dev_err)?;
    }
    if let Some(switch) = &cfg.emulated_net {
        let mac = crate::devices::ne2k::mac_for(id);
        let uplink = crate::devices::SwitchUplink::attach(Arc::clone(registry), switch, mac);
        let card = crate::devices::Ne2k::new(mac, Box::new(uplink));
        bus.add(Box::new(card)).map_err(dev_err)?;
    }
    let io_ports: Vec<u16> = [HYPERCALL_PORT, PING_PORT]
        .into_iter()
        .chain(bus.ports())
        .collect();
    let bus = Arc::new(Mutex::new(bus));

    // The hv region: page tables, IDT, GDTs, TSSs, crash stubs.
    let hv_layout = HvRegionLayout::new(cfg.mem, cfg.vcpus)
        .map_err(|e| internal("hv region")(e.to_string()))?;
    let region = GuestRam::new(hv_layout.size())
        .map_err(|e| internal("allocating the hv region")(e.to_string()))?;
    let vcpu_tables: Vec<VcpuTables> = (0..cfg.vcpus)
        .map(|v| VcpuTables {
            alt_stack_top: layout::alt_stack_top(v),
            crash_stack_top: layout::crash_stack_top(v),
            io_ports: io_ports.clone(),
        })
        .collect();
    let mut gates = RegionTables {
        region,
        layout: hv_layout,
    };
    gates
        .with_tables(|t| t.build(&layout.user_ranges, &vcpu_tables))
        .ok_or_else(|| internal("hv region")("too small".into()))?
        .map_err(|e| internal("building the CPU tables")(e.to_string()))?;

    // The VM and its memory.
    let window =
        Window::new().map_err(|e| internal("reserving the grant window")(e.to_string()))?;
    let vm = Arc::new(Vm::new(kvm).map_err(|e| internal("creating the VM")(e.to_string()))?);
    // SAFETY: both mappings are owned by the domain (RAM) and its gates (hv region), which the
    // returned RunningDomain keeps alive at least as long as the VM (`_vm` is dropped with it,
    // and vCPU threads have ended before `wait` returns).
    unsafe {
        vm.map_memory(0, 0, ram.host_base(), cfg.mem)
            .map_err(|e| internal("mapping guest RAM")(e.to_string()))?;
        vm.map_memory(1, HV_REGION_GPA, gates.region.host_base(), hv_layout.size())
            .map_err(|e| internal("mapping the hv region")(e.to_string()))?;
        vm.map_memory(2, GRANT_WINDOW_GPA, window.host_base(), window.size())
            .map_err(|e| internal("mapping the grant window")(e.to_string()))?;
    }
    let mut vcpus: Vec<Vcpu> = Vec::new();
    for v in 0..cfg.vcpus {
        vcpus.push(
            vm.create_vcpu(v as u64)
                .map_err(|e| internal("creating a vCPU")(e.to_string()))?,
        );
    }

    // Event channels: the console port is bound to the hv's console backend.
    let mut ports = PortTable::new(cfg.vcpus, DEFAULT_MAX_PORTS);
    let console_port = ports
        .bind_backend(Backend::Console)
        .map_err(|e| internal("binding the console")(e.to_string()))?;
    let store_port = ports
        .bind_backend(Backend::Store)
        .map_err(|e| internal("binding the store")(e.to_string()))?;

    // StartInfo.
    let mut si = StartInfo::new_zeroed();
    si.magic = START_INFO_MAGIC;
    si.abi_major = ABI_MAJOR;
    si.abi_minor = ABI_MINOR;
    si.domid = id;
    si.features = OFFERED.bits();
    si.nr_vcpus = cfg.vcpus;
    si.ram_bytes = cfg.mem;
    si.shared_info_gpa = layout::SHARED_INFO_GPA;
    si.console_ring_gpa = layout::CONSOLE_RING_GPA;
    si.console_port = console_port;
    si.store_port = store_port;
    si.store_ring_gpa = layout::STORE_RING_GPA;
    si.grant_window_gpa = GRANT_WINDOW_GPA;
    si.grant_window_pages = GRANT_WINDOW_SLOTS;
    si.boot_system_time_ns = clock.now_ns();
    si.nr_mem_regions = layout.regions.len().min(MAX_MEM_REGIONS) as u32;
    for (dst, src) in si.mem_regions.iter_mut().zip(&layout.regions) {
        *dst = *src;
    }
    si.cmdline_len = cfg.cmdline.len() as u32;
    si.cmdline[..cfg.cmdline.len()].copy_from_slice(cfg.cmdline.as_bytes());
    ram.write_obj(layout::START_INFO_GPA, &si)
        .map_err(|_| internal("writing StartInfo")("outside RAM".into()))?;

    // SharedInfo: all masks clear, pvclock per vCPU, wall clock.
    let tsc_hz = vcpus[0]
        .tsc_khz()
        .ok()
        .filter(|&k| k > 0)
        .map(|k| k as u64 * 1000)
        .unwrap_or_else(|| calibrate_tsc_hz(20));
    let mut shared = SharedInfo::new_zeroed();
    for (v, vcpu) in vcpus.iter().enumerate() {
        shared.vcpu_info[v].time = pvclock_for(clock, vcpu, tsc_hz);
    }
    let (sec, nsec) = clock.wall_at_zero();
    shared.wc_sec = sec;
    shared.wc_nsec = nsec;
    ram.write_obj(layout::SHARED_INFO_GPA, &shared)
        .map_err(|_| internal("writing SharedInfo")("outside RAM".into()))?;

    let domain = Arc::new(Domain::new(DomainParts {
        id,
        name: cfg.name,
        ram,
        nr_vcpus: cfg.vcpus,
        symbols: cfg.image.symbols.clone(),
        clock: Arc::clone(clock),
        ports,
        console_port,
        console: Console::new(layout::CONSOLE_RING_GPA, sink()),
        tables: Box::new(gates),
        window,
        registry: Arc::downgrade(registry),
        make_doorbell: {
            let vm = Arc::clone(&vm);
            Box::new(move |port| vm.doorbell(port).map_err(std::io::Error::other))
        },
    }));
    registry.insert(Arc::clone(&domain));
    registry.store().connect(&domain, store_port);
    let mut backends = Vec::new();
    for dev in cfg.disks {
        backends.push(
            crate::blkback::start(Arc::clone(&domain), Arc::clone(registry), dev)
                .map_err(|e| internal("starting a block backend")(e.to_string()))?,
        );
    }
    for dev in cfg.nets {
        backends.push(
            crate::netback::start(Arc::clone(&domain), Arc::clone(registry), dev)
                .map_err(|e| internal("starting a net backend")(e.to_string()))?,
        );
    }

    let mut threads = Vec::new();
    for (v, vcpu) in vcpus.into_iter().enumerate() {
        let t = hv_layout
            .descriptor_tables(v as u32)
            .map_err(|e| internal("descriptor tables")(e.to_string()))?;
        let boot = BootState::new(
            cfg.image.entry,
            layout::BOOT_STACK_GPA + layout::BOOT_STACK_SIZE,
            layout::START_INFO_GPA,
            t,
        );
        let runner = VcpuThread {
            dom: Arc::clone(&domain),
            id: v as u32,
            vcpu,
            boot,
            hv_layout,
            bus: Arc::clone(&bus),
        };
        let name = format!("{}-vcpu{v}", domain.name);
        threads.push(
            thread::Builder::new()
                .name(name)
                .spawn(move || runner.run())
                .map_err(|e| internal("starting a vCPU thread")(e.to_string()))?,
        );
    }
    let d = Arc::clone(&domain);
    let timer = thread::Builder::new()
        .name(format!("{}-timer", domain.name))
        .spawn(move || d.run_timers())
        .map_err(|e| internal("starting the timer thread")(e.to_string()))?;
    threads.extend(backends);
    Ok(RunningDomain {
        domain,
        threads,
        timer: Some(timer),
        _vm: vm,
    })
}

/// The pvclock record of a vCPU: its TSC relative to the host's, as KVM reports it.
///
/// The offset is 0 on this project's KVM (the guest reads the host's TSC) but not in general
/// (VMX/SVM give each VM an offset). Each sample brackets the MSR read with two host reads; the
/// tightest bracket wins.
fn pvclock_for(clock: &Clock, vcpu: &Vcpu, tsc_hz: u64) -> PvclockTimeInfo {
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..5 {
        let before = rdtsc();
        let Ok(guest) = vcpu.guest_tsc() else { break };
        let after = rdtsc();
        let width = after.wrapping_sub(before);
        let mid = before.wrapping_add(width / 2);
        let offset = guest.wrapping_sub(mid) as i64;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
    }
    clock.pvclock(tsc_hz, best.map_or(0, |(_, o)| o))
}

/// The default path of the KVM device, overridable with `HV_KVM_DEVICE` (for tests).
pub fn kvm_path() -> PathBuf {
    std::env::var_os("HV_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/kvm"))
}
