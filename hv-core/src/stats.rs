//! Per-domain counters: exits by reason, hypercalls by number, and the counters of the
//! domain's paravirtual devices (`hv --stats`).

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hypercall_abi::hypercall;

/// Why a vCPU left the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// `out` to the hypercall port.
    Hypercall,
    /// Any other port I/O (the ping port, emulated devices).
    PortIo,
    /// An MMIO access.
    Mmio,
    /// Kicked out of the guest (signal / immediate exit) to deliver an event or stop.
    Kick,
    /// A doorbell write, served inside the kernel (counted from the eventfd).
    Ioeventfd,
    /// The interrupt window opened.
    IrqWindow,
    /// `hlt`.
    Halt,
    /// Triple fault / shutdown.
    Shutdown,
    /// The exception stub reported an unhandled exception.
    Crash,
    /// Anything else.
    Other,
}

impl ExitReason {
    const ALL: [ExitReason; 10] = [
        ExitReason::Hypercall,
        ExitReason::PortIo,
        ExitReason::Mmio,
        ExitReason::Kick,
        ExitReason::Ioeventfd,
        ExitReason::IrqWindow,
        ExitReason::Halt,
        ExitReason::Shutdown,
        ExitReason::Crash,
        ExitReason::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            ExitReason::Hypercall => "hypercall",
            ExitReason::PortIo => "port-io",
            ExitReason::Mmio => "mmio",
            ExitReason::Kick => "kick",
            ExitReason::Ioeventfd => "ioeventfd",
            ExitReason::IrqWindow => "irq-window",
            ExitReason::Halt => "halt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Crash => "crash",
            ExitReason::Other => "other",
        }
    }
}

const NR_HC: usize = hypercall::COUNT as usize + 1;

/// Describes a device's counters in one line (for [`Stats::report`]).
pub type DeviceReport = Box<dyn Fn() -> String + Send + Sync>;

/// The devices whose counters a report shows, in the order they were added.
#[derive(Default)]
struct Devices(Mutex<Vec<(String, DeviceReport)>>);

impl fmt::Debug for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .0
            .lock()
            .map(|d| d.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        f.debug_tuple("Devices").field(&names).finish()
    }
}

/// The counters of one domain.
#[derive(Debug, Default)]
pub struct Stats {
    exits: [AtomicU64; ExitReason::ALL.len()],
    hypercalls: [AtomicU64; NR_HC],
    injections: AtomicU64,
    devices: Devices,
}

impl Stats {
    /// Counts an exit.
    pub fn exit(&self, r: ExitReason) {
        self.exits[r as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` exits of one reason.
    pub fn exits_n(&self, r: ExitReason, n: u64) {
        self.exits[r as usize].fetch_add(n, Relaxed);
    }

    /// Counts a hypercall (numbers past the ABI's count as "unknown").
    pub fn hypercall(&self, nr: u64) {
        let i = (nr as usize).min(NR_HC - 1);
        self.hypercalls[i].fetch_add(1, Relaxed);
    }

    /// Counts an upcall injection.
    pub fn injection(&self) {
        self.injections.fetch_add(1, Relaxed);
    }

    /// Adds device `name` (e.g. `vif/0`) to the reports: `report` describes its counters.
    pub fn add_device(&self, name: String, report: DeviceReport) {
        self.devices
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, report));
    }

    /// Exits of one reason so far.
    pub fn exits(&self, r: ExitReason) -> u64 {
        self.exits[r as usize].load(Relaxed)
    }

    /// A report: exits by reason, hypercalls by number, upcalls injected, then one line per
    /// device.
    pub fn report(&self, domain: &str) -> String {
        let mut s = String::new();
        let total: u64 = ExitReason::ALL.iter().map(|&r| self.exits(r)).sum();
        let _ = writeln!(s, "stats for domain {domain}: {total} exits");
        for r in ExitReason::ALL {
            let n = self.exits(r);
            if n > 0 {
                let _ = writeln!(s, "  exit {:<12} {n:>10}", r.name());
            }
        }
        for (i, c) in self.hypercalls.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                let name = if i == NR_HC - 1 {
                    "unknown"
                } else {
                    hypercall::name(i as u64)
                };
                let _ = writeln!(s, "  hypercall {i:>2} {name:<16} {n:>10}");
            }
        }
        let _ = writeln!(
            s,
            "  upcalls injected {:>14}",
            self.injections.load(Relaxed)
        );
        for (name, report) in self
            .devices
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(s, "  device {name}: {}", report());
        }
        s
    }
}
