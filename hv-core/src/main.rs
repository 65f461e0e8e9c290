//! `hv`: run paravirtualized guests on KVM.
//!
//! ```text
//! hv run GUEST.elf [--mem SIZE] [--vcpus N] [--cmdline STR] [--stats]
//! ```
//! The guest's console goes to stdout; `hv`'s own messages (one line each) to stderr. `hv`
//! exits with the guest's poweroff code (0..=63), or with one of the codes in
//! `hv_core::error::exit_code`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hv_core::domain::StopReason;
use hv_core::error::{exit_code, parse_size, HvError};
use hv_core::hypercall::OFFERED;
use hv_core::kvm::{Kvm, KvmError};
use hv_core::layout::{MAX_MEM, MIN_MEM};
use hv_core::loader::GuestImage;
use hv_core::time::Clock;
use hv_core::vmm::{kvm_path, start_domain, DomainConfig};
use hypercall_abi::{MAX_VCPUS, PAGE_SIZE};

/// A paravirtualized micro-hypervisor on KVM.
#[derive(Parser)]
#[command(name = "hv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel (a static x86_64 ELF built with guest-sdk) and run it to its end.
    Run {
        /// The guest image.
        guest: PathBuf,
        /// Guest RAM: bytes, or with a K, M or G suffix.
        #[arg(
            long,
            default_value = "64M",
            value_name = "SIZE",
            allow_hyphen_values = true
        )]
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
        /// Print exits by reason and hypercalls by number when the guest stops (to stderr).
        #[arg(long)]
        stats: bool,
    },
}

/// `SIGUSR1` asks for a dump: `hv` prints the domain's counters and raises `VIRQ_DEBUG` on every
/// vCPU that bound it.
mod debug_signal {
    use std::sync::Arc;

    use hv_core::domain::Domain;
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

    /// Starts a thread that serves `SIGUSR1` for `domain` until the process ends.
    pub fn watch(domain: Arc<Domain>) {
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
                eprint!("{}", domain.stats.report(&domain.name));
                for v in 0..domain.nr_vcpus {
                    domain.fire_virq(virq::DEBUG, v);
                }
            });
    }
}

fn main() -> ExitCode {
    let start = std::time::Instant::now();
    debug_signal::block();
    let clock = Arc::new(Clock::new());
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            guest,
            mem,
            vcpus,
            cmdline,
            stats,
        } => match run(&clock, guest, &mem, &vcpus, cmdline, stats, start) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("hv: error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

fn run(
    clock: &Arc<Clock>,
    guest: PathBuf,
    mem: &str,
    vcpus: &str,
    cmdline: String,
    stats: bool,
    start: std::time::Instant,
) -> Result<u8, HvError> {
    let mem_bytes = parse_size("--mem", mem)?;
    if !(MIN_MEM..=MAX_MEM).contains(&mem_bytes) || mem_bytes % PAGE_SIZE != 0 {
        return Err(HvError::BadSize {
            what: "--mem",
            value: mem.to_string(),
            why: format!(
                "must be a multiple of 4 KiB between {} MiB and {} GiB",
                MIN_MEM >> 20,
                MAX_MEM >> 30
            ),
        });
    }
    let bad_vcpus = |max| HvError::BadVcpus {
        value: vcpus.to_string(),
        max,
    };
    let nr_vcpus: u32 = vcpus.trim().parse().map_err(|_| bad_vcpus(MAX_VCPUS))?;
    if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
        return Err(bad_vcpus(MAX_VCPUS));
    }
    if cmdline.len() > hypercall_abi::start_info::CMDLINE_MAX {
        return Err(HvError::BadArgument(format!(
            "--cmdline is {} bytes, at most {} are allowed",
            cmdline.len(),
            hypercall_abi::start_info::CMDLINE_MAX
        )));
    }
    let image = GuestImage::load(&guest, OFFERED)?;
    let path = kvm_path();
    let kvm = Kvm::open(&path).map_err(|e| match e {
        KvmError::NotFound { .. } => HvError::KvmMissing { path: path.clone() },
        KvmError::PermissionDenied { .. } => HvError::KvmPermission { path: path.clone() },
        other => HvError::Internal(other.to_string()),
    })?;
    let max = (kvm.max_vcpus() as u32).min(MAX_VCPUS);
    if nr_vcpus > max {
        return Err(bad_vcpus(max));
    }
    let name = guest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".into());
    let cfg = DomainConfig {
        name: name.clone(),
        image,
        mem: mem_bytes,
        vcpus: nr_vcpus,
        cmdline,
    };
    let running = start_domain(&kvm, clock, 1, cfg, Box::new(std::io::stdout()))?;
    let domain = Arc::clone(&running.domain);
    debug_signal::watch(Arc::clone(&domain));
    let reason = running.wait();
    if stats {
        eprint!("{}", domain.stats.report(&name));
        eprintln!(
            "  hv run time {:>20.3} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(match reason {
        StopReason::Poweroff(code) => {
            eprintln!("hv: domain {name} powered off with code {code}");
            code
        }
        StopReason::Crash(why) => {
            eprintln!("hv: domain {name} crashed: {why}");
            exit_code::GUEST_CRASHED
        }
        StopReason::HvError(why) => {
            eprintln!("hv: error: domain {name}: {why}");
            exit_code::HV_INTERNAL
        }
    })
}
