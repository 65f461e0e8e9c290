//! `hv`: run paravirtualized guests on KVM.
//!
//! ```text
//! hv run GUEST.elf [--mem SIZE] [--vcpus N] [--cmdline STR] [--disk PATH[,readonly]]...
//!        [--net switch:NAME|tap:NAME[,host=A.B.C.D/P]]... [--emulated-net switch:NAME] [--stats]
//! hv run --config DOMAINS.toml [--stats]
//! ```
//! The guest's console goes to stdout; `hv`'s own messages (one line each) to stderr. `hv`
//! exits with the guest's poweroff code (0..=63), or with one of the codes in
//! `hv_core::error::exit_code`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};

use clap::{Parser, Subcommand};
use hv_core::blkback::DiskDevice;
use hv_core::config::{self, DomainSpec, NetSpec, DEFAULT_MEM};
use hv_core::devices::AtaDisk;
use hv_core::domain::StopReason;
use hv_core::error::{exit_code, HvError};
use hv_core::hypercall::OFFERED;
use hv_core::kvm::{Kvm, KvmError};
use hv_core::loader::GuestImage;
use hv_core::netback::{NetDevice, Uplink};
use hv_core::registry::Registry;
use hv_core::tap::Tap;
use hv_core::time::Clock;
use hv_core::vmm::{kvm_path, start_domain, DomainConfig};
use hypercall_abi::sched::MAX_EXIT_CODE;
use hypercall_abi::MAX_VCPUS;
use pv_drivers::backend::Disk;

/// A paravirtualized micro-hypervisor on KVM.
#[derive(Parser)]
#[command(name = "hv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel (a static x86_64 ELF built with guest-sdk), or the domains of a
    /// config file, and run them to their end.
    Run {
        /// The guest image (or use --config).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        guest: Option<PathBuf>,
        /// Run the domains described by this TOML file (see examples/).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Guest RAM: bytes, or with a K, M or G suffix.
        #[arg(long, default_value = DEFAULT_MEM, value_name = "SIZE", allow_hyphen_values = true)]
        mem: String,
        /// Number of vCPUs (vCPU 0 starts; the guest starts others with vcpu_op(up)).
        #[arg(
            long,
            default_value = "1",
            value_name = "N",
            allow_hyphen_values = true
        )]
        vcpus: String,
        /// Command line passed to the guest in StartInfo.
        #[arg(long, default_value = "", value_name = "STR")]
        cmdline: String,
        /// A raw disk image for the guest, `PATH[,readonly]`; repeat for more disks.
        #[arg(long, value_name = "PATH[,readonly]")]
        disk: Vec<String>,
        /// A raw disk image served by an emulated ATA/IDE disk on the primary channel
        /// (port I/O, full virtualization), `PATH[,readonly]`; for comparisons.
        #[arg(long, value_name = "PATH[,readonly]")]
        ata_disk: Option<String>,
        /// A paravirtual network interface on the in-hv learning switch NAME (created by its
        /// first interface), `switch:NAME`, or on the host TAP interface NAME (created if
        /// missing; `host=` sets the host side's address and brings it up; needs
        /// CAP_NET_ADMIN), `tap:NAME[,host=A.B.C.D/P]`; repeat for more interfaces (vif/0,
        /// vif/1, ...).
        #[arg(long, value_name = "switch:NAME|tap:NAME[,host=A.B.C.D/P]")]
        net: Vec<String>,
        /// An emulated NE2000 network card (ports 0x300..=0x31F, full virtualization, for
        /// comparisons) on the in-hv switch NAME, `switch:NAME`.
        #[arg(long, value_name = "switch:NAME")]
        emulated_net: Option<String>,
        /// Print exits by reason, hypercalls by number and device counters when each domain stops
        /// (to stderr).
        #[arg(long)]
        stats: bool,
    },
}

/// `SIGUSR1` asks for a dump: `hv` prints the domain's counters and raises `VIRQ_DEBUG` on every
/// vCPU that bound it.
mod debug_signal {
    use std::sync::Arc;

    use hv_core::registry::Registry;
    use hypercall_abi::evtchn::virq;

    fn sigusr1_set() -> libc::sigset_t {
        // SAFETY: sigemptyset/sigaddset initialise the set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            set
        }
    }

    /// Blocks `SIGUSR1` in this thread and so in every thread it starts later; call first.
    pub fn block() {
        let set = sigusr1_set();
        // SAFETY: `set` is a valid signal set; the old mask is not needed.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    }

    /// Starts a thread that serves `SIGUSR1` for every domain of `registry` until the process
    /// ends.
    pub fn watch(registry: Arc<Registry>) {
        let _ = std::thread::Builder::new()
            .name("debug-signal".into())
            .spawn(move || loop {
                let set = sigusr1_set();
                let mut sig = 0;
                // SAFETY: `set` and `sig` are valid; SIGUSR1 is blocked in every thread, so
                // sigwait is the only consumer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                for domain in registry.all() {
                    eprint!("{}", domain.stats.report(&domain.name));
                    for v in 0..domain.nr_vcpus {
                        domain.fire_virq(virq::DEBUG, v);
                    }
                }
            });
    }
}

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    debug_signal::block();
    let clock = Arc::new(Clock::new());
    let cli = Cli::parse();
    let Command::Run {
        guest,
        config,
        mem,
        vcpus,
        cmdline,
        disk,
        ata_disk,
        net,
        emulated_net,
        stats,
    } = cli.command;
    let specs = match (guest, config) {
        (_, Some(file)) => config::load(&file),
        (Some(guest), None) => single(
            guest,
            &mem,
            &vcpus,
            cmdline,
            &disk,
            ata_disk.as_deref(),
            &net,
            emulated_net.as_deref(),
        ),
        (None, None) => Err(HvError::BadArgument(
            "give a guest image or --config".into(),
        )),
    };
    match specs.and_then(|s| run(&clock, s, stats, start)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hv: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

// One parameter per command-line flag.
#[allow(clippy::too_many_arguments)]
fn single(
    guest: PathBuf,
    mem: &str,
    vcpus: &str,
    cmdline: String,
    disks: &[String],
    ata_disk: Option<&str>,
    nets: &[String],
    emulated_net: Option<&str>,
) -> Result<Vec<DomainSpec>, HvError> {
    let nets = config::parse_nets(nets)?;
    let emulated_net = emulated_net.map(config::parse_emulated_net).transpose()?;
    let disks = disks
        .iter()
        .map(|d| config::parse_disk(d))
        .collect::<Result<Vec<_>, _>>()?;
    let ata_disk = ata_disk.map(config::parse_disk).transpose()?;
    let mem = config::parse_mem(mem)?;
    let vcpus = config::parse_vcpus(vcpus)?;
    config::check_cmdline(&cmdline)?;
    let name = guest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".into());
    Ok(vec![DomainSpec {
        name,
        kernel: guest,
        mem,
        vcpus,
        cmdline,
        disks,
        ata_disk,
        nets,
        emulated_net,
    }])
}

/// Writes a domain's console output line by line, each line prefixed with the domain's name
/// (used when several domains share stdout).
struct Prefixed {
    prefix: String,
    line: Vec<u8>,
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' {
                let mut out = std::io::stdout().lock();
                out.write_all(self.prefix.as_bytes())?;
                out.write_all(&self.line)?;
                self.line.clear();
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn run(
    clock: &Arc<Clock>,
    specs: Vec<DomainSpec>,
    stats: bool,
    start: std::time::Instant,
) -> Result<u8, HvError> {
    // Validate every image and open every disk and TAP before starting anything.
    let mut images = Vec::new();
    let mut disks = Vec::new();
    let mut nets = Vec::new();
    for s in &specs {
        images.push(GuestImage::load(&s.kernel, OFFERED)?);
        nets.push(net_devices(&s.nets)?);
        let mut devs = Vec::new();
        for (n, d) in s.disks.iter().enumerate() {
            let disk =
                Disk::open(&d.path, d.read_only).map_err(|e| HvError::BadDisk(e.to_string()))?;
            devs.push(DiskDevice {
                n: n as u32,
                disk,
                read_only: d.read_only,
            });
        }
        let ata = match &s.ata_disk {
            None => None,
            Some(d) => Some(
                AtaDisk::open(&d.path, d.read_only).map_err(|e| HvError::BadDisk(e.to_string()))?,
            ),
        };
        disks.push((devs, ata));
    }
    let path = kvm_path();
    let kvm = Kvm::open(&path).map_err(|e| match e {
        KvmError::NotFound { .. } => HvError::KvmMissing { path: path.clone() },
        KvmError::PermissionDenied { .. } => HvError::KvmPermission { path: path.clone() },
        other => HvError::Internal(other.to_string()),
    })?;
    let max = (kvm.max_vcpus() as u32).min(MAX_VCPUS);
    if let Some(s) = specs.iter().find(|s| s.vcpus > max) {
        return Err(HvError::BadVcpus {
            value: s.vcpus.to_string(),
            max,
        });
    }
    let registry = Registry::new();
    let many = specs.len() > 1;
    debug_signal::watch(Arc::clone(&registry));
    let (tx, rx) = mpsc::channel();
    for (i, (((spec, image), (disks, ata_disk)), nets)) in
        specs.iter().zip(images).zip(disks).zip(nets).enumerate()
    {
        let prefix = format!("[{}] ", spec.name);
        let sink = move || -> Box<dyn Write + Send> {
            if many {
                Box::new(Prefixed {
                    prefix: prefix.clone(),
                    line: Vec::new(),
                })
            } else {
                Box::new(std::io::stdout())
            }
        };
        let cfg = DomainConfig {
            name: spec.name.clone(),
            image,
            mem: spec.mem,
            vcpus: spec.vcpus,
            cmdline: spec.cmdline.clone(),
            disks,
            ata_disk,
            nets,
            emulated_net: spec.emulated_net.clone(),
        };
        let running = match start_domain(&kvm, clock, &registry, (i + 1) as u16, cfg, sink) {
            Ok(r) => r,
            Err(e) => {
                // Stop what already runs, then report.
                registry.stop_all();
                for _ in 0..i {
                    let _ = rx.recv();
                }
                return Err(e);
            }
        };
        let (tx, registry) = (tx.clone(), Arc::clone(&registry));
        std::thread::spawn(move || {
            let domain = Arc::clone(&running.domain);
            let reason = running.wait();
            registry.remove(&domain);
            let _ = tx.send((domain, reason));
        });
    }
    drop(tx);
    let mut worst: Option<u8> = None;
    for (domain, reason) in rx {
        let name = &domain.name;
        if stats {
            eprint!("{}", domain.stats.report(name));
            eprintln!(
                "  hv run time {:>20.3} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
        let code = match reason {
            StopReason::Poweroff(code) => {
                eprintln!(
                    "hv: domain {name} (id {}) powered off with code {code}",
                    domain.id
                );
                code
            }
            StopReason::Crash(why) => {
                eprintln!("hv: domain {name} (id {}) crashed: {why}", domain.id);
                exit_code::GUEST_CRASHED
            }
            StopReason::HvError(why) => {
                eprintln!("hv: error: domain {name} (id {}): {why}", domain.id);
                exit_code::HV_INTERNAL
            }
        };
        // Crashes and hv errors outrank poweroff codes; among poweroff codes the first
        // non-zero one wins.
        worst = Some(match worst {
            None => code,
            Some(w) if w > MAX_EXIT_CODE as u8 => w.max(code),
            Some(_) if code > MAX_EXIT_CODE as u8 => code,
            Some(0) => code,
            Some(w) => w,
        });
    }
    Ok(worst.unwrap_or(0))
}

/// The network interfaces of one domain, TAPs opened (and configured when asked).
fn net_devices(specs: &[NetSpec]) -> Result<Vec<NetDevice>, HvError> {
    let mut devs = Vec::new();
    for (n, net) in specs.iter().enumerate() {
        let uplink = match net {
            NetSpec::Switch(name) => Uplink::Switch(name.clone()),
            NetSpec::Tap { name, host } => {
                let tap = Tap::open(name)?;
                if let Some(host) = host {
                    tap.configure(*host)?;
                }
                Uplink::Tap(Arc::new(tap))
            }
        };
        devs.push(NetDevice {
            n: n as u32,
            uplink,
        });
    }
    Ok(devs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Vec<DomainSpec>, HvError> {
        let cli = Cli::try_parse_from(args).map_err(|e| HvError::BadArgument(e.to_string()))?;
        let Command::Run {
            guest,
            mem,
            vcpus,
            cmdline,
            disk,
            ata_disk,
            net,
            emulated_net,
            ..
        } = cli.command;
        let guest = guest.ok_or_else(|| HvError::BadArgument("no guest".into()))?;
        single(
            guest,
            &mem,
            &vcpus,
            cmdline,
            &disk,
            ata_disk.as_deref(),
            &net,
            emulated_net.as_deref(),
        )
    }

    #[test]
    fn net_flags() {
        let specs = parse(&["hv", "run", "g.elf"]).unwrap();
        assert!(specs[0].nets.is_empty());
        let specs = parse(&[
            "hv",
            "run",
            "g.elf",
            "--net",
            "switch:lan",
            "--net",
            "switch:wan",
        ])
        .unwrap();
        assert_eq!(
            specs[0].nets,
            vec![NetSpec::Switch("lan".into()), NetSpec::Switch("wan".into())]
        );
        let specs = parse(&[
            "hv",
            "run",
            "g.elf",
            "--net",
            "tap:tap0",
            "--net",
            "tap:hv0,host=10.77.0.1/24",
        ])
        .unwrap();
        assert!(matches!(
            &specs[0].nets[..],
            [NetSpec::Tap { name: a, host: None }, NetSpec::Tap { name: b, host: Some(h) }]
                if a == "tap0" && b == "hv0" && h.to_string() == "10.77.0.1/24"
        ));
        let long = parse(&["hv", "run", "g.elf", "--net", "tap:a_name_too_long_"]).unwrap_err();
        assert_eq!(long.exit_code(), exit_code::BAD_ARGUMENT);
        assert!(long.to_string().contains("1 to 15"), "{long}");
        assert!(parse(&["hv", "run", "g.elf", "--net", "switch:"]).is_err());
        assert!(parse(&["hv", "run", "g.elf", "--net"]).is_err());
    }

    #[test]
    fn emulated_net_flag() {
        assert_eq!(
            parse(&["hv", "run", "g.elf"]).unwrap()[0].emulated_net,
            None
        );
        let specs = parse(&["hv", "run", "g.elf", "--emulated-net", "switch:lan"]).unwrap();
        assert_eq!(specs[0].emulated_net.as_deref(), Some("lan"));
        assert!(parse(&["hv", "run", "g.elf", "--emulated-net", "tap:tap0"]).is_err());
        assert!(parse(&["hv", "run", "g.elf", "--emulated-net", "switch:"]).is_err());
        // One card per domain: its ports are fixed.
        assert!(parse(&[
            "hv",
            "run",
            "g.elf",
            "--emulated-net",
            "switch:a",
            "--emulated-net",
            "switch:b"
        ])
        .is_err());
    }
}
