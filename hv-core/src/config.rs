//! What to run: one domain from the command line, or several from a TOML file.
//!
//! ```toml
//! # examples/pingpong.toml
//! [[domain]]
//! name = "ping"                 # unique; shown in console prefixes and reports
//! kernel = "../target/x86_64-unknown-none/release/pingpong"   # relative to this file
//! mem = "64M"                   # optional, default 64M
//! vcpus = 1                     # optional, default 1
//! cmdline = "role=ping"         # optional
//! disks = ["disk.img", "ro.img,readonly"]   # optional; relative to this file
//!
//! [[domain]]
//! name = "pong"
//! kernel = "../target/x86_64-unknown-none/release/pingpong"
//! cmdline = "role=pong"
//! ```
//! Domains get ids 1, 2, ... in file order.

use std::path::{Path, PathBuf};

use hypercall_abi::start_info::CMDLINE_MAX;
use hypercall_abi::{MAX_VCPUS, PAGE_SIZE};
use serde::Deserialize;

use crate::error::{parse_size, HvError};
use crate::layout::{MAX_MEM, MIN_MEM};

/// Default guest RAM.
pub const DEFAULT_MEM: &str = "64M";
/// Most domains one `hv` runs.
pub const MAX_DOMAINS: usize = 64;

/// A disk given to a domain: `PATH[,readonly]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image file.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
}

/// Parses `PATH[,readonly]`.
pub fn parse_disk(text: &str) -> Result<DiskSpec, HvError> {
    let (path, opts) = match text.rsplit_once(',') {
        Some((p, o)) => (p, Some(o)),
        None => (text, None),
    };
    let read_only = match opts {
        None => false,
        Some("readonly") | Some("ro") => true,
        Some(o) => {
            return Err(HvError::BadArgument(format!(
                "--disk {text:?}: unknown option {o:?} (use PATH or PATH,readonly)"
            )))
        }
    };
    if path.is_empty() {
        return Err(HvError::BadArgument(format!("--disk {text:?}: no path")));
    }
    Ok(DiskSpec {
        path: PathBuf::from(path),
        read_only,
    })
}

/// One domain to run, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// Unique name.
    pub name: String,
    /// Guest image path.
    pub kernel: PathBuf,
    /// RAM bytes.
    pub mem: u64,
    /// vCPU count.
    pub vcpus: u32,
    /// Command line.
    pub cmdline: String,
    /// Disks, in order (device numbers 0, 1, ...).
    pub disks: Vec<DiskSpec>,
    /// An emulated ATA disk.
    pub ata_disk: Option<DiskSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    domain: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    kernel: PathBuf,
    mem: Option<String>,
    vcpus: Option<toml::Value>,
    cmdline: Option<String>,
    #[serde(default)]
    disks: Vec<String>,
    ata_disk: Option<String>,
}

/// Parses and checks `--mem`.
pub fn parse_mem(text: &str) -> Result<u64, HvError> {
    let mem = parse_size("--mem", text)?;
    if !(MIN_MEM..=MAX_MEM).contains(&mem) || !mem.is_multiple_of(PAGE_SIZE) {
        return Err(HvError::BadSize {
            what: "--mem",
            value: text.to_string(),
            why: format!(
                "must be a multiple of 4 KiB between {} MiB and {} GiB",
                MIN_MEM >> 20,
                MAX_MEM >> 30
            ),
        });
    }
    Ok(mem)
}

/// Parses and checks `--vcpus` (the KVM limit is checked later).
pub fn parse_vcpus(text: &str) -> Result<u32, HvError> {
    let bad = || HvError::BadVcpus {
        value: text.to_string(),
        max: MAX_VCPUS,
    };
    let n: u32 = text.trim().parse().map_err(|_| bad())?;
    if n == 0 || n > MAX_VCPUS {
        return Err(bad());
    }
    Ok(n)
}

/// Checks a command line's length.
pub fn check_cmdline(cmdline: &str) -> Result<(), HvError> {
    if cmdline.len() > CMDLINE_MAX {
        return Err(HvError::BadArgument(format!(
            "--cmdline is {} bytes, at most {CMDLINE_MAX} are allowed",
            cmdline.len()
        )));
    }
    Ok(())
}

/// Reads a TOML config file.
pub fn load(path: &Path) -> Result<Vec<DomainSpec>, HvError> {
    let bad = |why: String| HvError::BadConfig {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: File = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
    if file.domain.is_empty() {
        return Err(bad("no [[domain]] entries".into()));
    }
    if file.domain.len() > MAX_DOMAINS {
        return Err(bad(format!("more than {MAX_DOMAINS} domains")));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut specs: Vec<DomainSpec> = Vec::new();
    for e in file.domain {
        let ctx = |err: HvError| bad(format!("domain {:?}: {err}", e.name));
        if e.name.is_empty()
            || !e
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(format!(
                "domain name {:?} must be non-empty [A-Za-z0-9_.-]",
                e.name
            )));
        }
        if specs.iter().any(|s| s.name == e.name) {
            return Err(bad(format!("two domains are named {:?}", e.name)));
        }
        let mem = parse_mem(e.mem.as_deref().unwrap_or(DEFAULT_MEM)).map_err(ctx)?;
        let vcpus = match &e.vcpus {
            None => 1,
            Some(v) => parse_vcpus(&v.to_string()).map_err(ctx)?,
        };
        let cmdline = e.cmdline.clone().unwrap_or_default();
        check_cmdline(&cmdline).map_err(ctx)?;
        let mut disks = Vec::new();
        for d in &e.disks {
            let mut spec = parse_disk(d).map_err(ctx)?;
            spec.path = base.join(spec.path);
            disks.push(spec);
        }
        let ata_disk = match &e.ata_disk {
            None => None,
            Some(d) => {
                let mut spec = parse_disk(d).map_err(ctx)?;
                spec.path = base.join(spec.path);
                Some(spec)
            }
        };
        specs.push(DomainSpec {
            name: e.name,
            kernel: base.join(e.kernel),
            mem,
            vcpus,
            cmdline,
            disks,
            ata_disk,
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Vec<DomainSpec>, HvError> {
        let dir = std::env::temp_dir().join(format!("hv-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!(
            "{:x}.toml",
            text.len() * 7919 + text.bytes().map(u64::from).sum::<u64>() as usize
        ));
        std::fs::write(&p, text).unwrap();
        load(&p)
    }

    #[test]
    fn parses_domains_with_defaults_and_relative_paths() {
        let specs = load_str(
            "[[domain]]\nname = \"a\"\nkernel = \"k.elf\"\n\n[[domain]]\nname = \"b\"\nkernel = \"/abs/k\"\nmem = \"32M\"\nvcpus = 2\ncmdline = \"x=1\"\n",
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].mem, 64 << 20);
        assert!(specs[0].kernel.ends_with("k.elf") && specs[0].kernel.is_absolute());
        assert_eq!(
            (specs[1].mem, specs[1].vcpus, specs[1].cmdline.as_str()),
            (32 << 20, 2, "x=1")
        );
        assert_eq!(specs[1].kernel, PathBuf::from("/abs/k"));
    }

    #[test]
    fn disks() {
        assert_eq!(
            parse_disk("a.img").unwrap(),
            DiskSpec {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_disk("/x/a,b.img,readonly").unwrap(),
            DiskSpec {
                path: "/x/a,b.img".into(),
                read_only: true
            }
        );
        assert!(parse_disk("a.img,rw").is_err());
        assert!(parse_disk(",readonly").is_err());
        let specs = load_str(
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\ndisks = [\"d.img\", \"e.img,readonly\"]\n",
        )
        .unwrap();
        assert_eq!(specs[0].disks.len(), 2);
        assert!(specs[0].disks[1].read_only && specs[0].disks[0].path.is_absolute());
    }

    #[test]
    fn refuses_bad_configs() {
        for bad in [
            "",
            "[[domain]]\nname = \"a\"\n",
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nbogus = 1\n",
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\n[[domain]]\nname = \"a\"\nkernel = \"k\"\n",
            "[[domain]]\nname = \"a b\"\nkernel = \"k\"\n",
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nmem = \"12Q\"\n",
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nvcpus = 0\n",
            "not toml at all [",
        ] {
            assert!(
                matches!(load_str(bad), Err(HvError::BadConfig { .. })),
                "{bad:?}"
            );
        }
    }
}
