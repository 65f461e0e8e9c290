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
//! nets = ["switch:lan"]         # optional; vif/0, vif/1, ... on in-hv switches, or host
//!                               # TAPs: "tap:hv0,host=10.77.0.1/24"
//! emulated_net = "switch:lan"   # optional; an emulated NE2000 card (ports 0x300..=0x31F)
//!
//! [[domain]]
//! name = "pong"
//! kernel = "../target/x86_64-unknown-none/release/pingpong"
//! cmdline = "role=pong"
//! ```
//! Domains get ids 1, 2, ... in file order.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hypercall_abi::start_info::CMDLINE_MAX;
use hypercall_abi::{MAX_VCPUS, PAGE_SIZE};
use serde::Deserialize;

use crate::error::{parse_size, HvError};
use crate::layout::{MAX_MEM, MIN_MEM};
use crate::tap::{self, HostAddr};

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

/// Most network interfaces one domain has.
pub const MAX_NETS: usize = 16;

/// Longest switch name.
pub const MAX_SWITCH_NAME: usize = 64;

/// What a domain's network interface is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetSpec {
    /// A port of the in-hv learning switch of this name (created by its first interface).
    Switch(String),
    /// The host TAP interface of this name (created if it does not exist; see [`crate::tap`]).
    Tap {
        /// The interface name.
        name: String,
        /// The host side's address, set (and the link brought up) by `hv`, if given.
        host: Option<HostAddr>,
    },
}

/// Whether `name` is 1 to `max` of `[A-Za-z0-9_.-]`.
fn simple_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses `A.B.C.D/P` (P from 1 to 32; a unicast address).
pub fn parse_host_addr(text: &str) -> Result<HostAddr, String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or("the host address must be A.B.C.D/P")?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address A.B.C.D"))?;
    let prefix: u8 = match prefix.parse() {
        Ok(p @ 1..=32) => p,
        _ => return Err(format!("prefix {prefix:?} must be 1 to 32")),
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!("{addr} is not a unicast address"));
    }
    Ok(HostAddr { addr, prefix })
}

/// Parses `switch:NAME` (NAME: 1 to [`MAX_SWITCH_NAME`] of `[A-Za-z0-9_.-]`) or
/// `tap:NAME[,host=A.B.C.D/P]` (NAME: 1 to [`tap::MAX_NAME`] of `[A-Za-z0-9_.-]`, not `.` or
/// `..`).
pub fn parse_net(text: &str) -> Result<NetSpec, HvError> {
    let bad = |why: &str| HvError::BadArgument(format!("--net {text:?}: {why}"));
    match text.split_once(':') {
        Some(("switch", name)) => {
            if !simple_name(name, MAX_SWITCH_NAME) {
                return Err(bad(&format!(
                    "the switch name must be 1 to {MAX_SWITCH_NAME} of [A-Za-z0-9_.-]"
                )));
            }
            Ok(NetSpec::Switch(name.to_string()))
        }
        Some(("tap", rest)) => {
            let (name, opts) = match rest.split_once(',') {
                Some((n, o)) => (n, Some(o)),
                None => (rest, None),
            };
            if !simple_name(name, tap::MAX_NAME) || name == "." || name == ".." {
                return Err(bad(&format!(
                    "the tap name must be 1 to {} of [A-Za-z0-9_.-]",
                    tap::MAX_NAME
                )));
            }
            let host = match opts.map(|o| o.split_once('=')) {
                None => None,
                Some(Some(("host", a))) => Some(parse_host_addr(a).map_err(|e| bad(&e))?),
                Some(_) => return Err(bad("use tap:NAME or tap:NAME,host=A.B.C.D/P")),
            };
            Ok(NetSpec::Tap {
                name: name.to_string(),
                host,
            })
        }
        _ => Err(bad("use switch:NAME or tap:NAME[,host=A.B.C.D/P]")),
    }
}

/// Parses `--emulated-net switch:NAME`: the switch the domain's emulated NE2000 card is a port
/// of (it connects to nothing else).
pub fn parse_emulated_net(text: &str) -> Result<String, HvError> {
    let spec = parse_net(text).map_err(|e| match e {
        HvError::BadArgument(m) => HvError::BadArgument(m.replacen("--net", "--emulated-net", 1)),
        other => other,
    })?;
    // The card is a port of a switch only (no TAP uplink).
    match spec {
        NetSpec::Switch(name) => Ok(name),
        NetSpec::Tap { .. } => Err(HvError::BadArgument(format!(
            "--emulated-net {text:?}: the emulated card connects only to a switch (switch:NAME)"
        ))),
    }
}

/// Parses a domain's interfaces (at most [`MAX_NETS`]).
pub fn parse_nets<S: AsRef<str>>(texts: &[S]) -> Result<Vec<NetSpec>, HvError> {
    if texts.len() > MAX_NETS {
        return Err(HvError::BadArgument(format!(
            "{} network interfaces; at most {MAX_NETS} are allowed",
            texts.len()
        )));
    }
    texts.iter().map(|t| parse_net(t.as_ref())).collect()
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
    /// Network interfaces, in order (device numbers 0, 1, ...).
    pub nets: Vec<NetSpec>,
    /// The switch of an emulated NE2000 card.
    pub emulated_net: Option<String>,
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
    #[serde(default)]
    nets: Vec<String>,
    emulated_net: Option<String>,
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
        let nets = parse_nets(&e.nets).map_err(ctx)?;
        let emulated_net = e
            .emulated_net
            .as_deref()
            .map(parse_emulated_net)
            .transpose()
            .map_err(ctx)?;
        specs.push(DomainSpec {
            name: e.name,
            kernel: base.join(e.kernel),
            mem,
            vcpus,
            cmdline,
            disks,
            ata_disk,
            nets,
            emulated_net,
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
    fn nets() {
        assert_eq!(
            parse_net("switch:lan").unwrap(),
            NetSpec::Switch("lan".into())
        );
        assert_eq!(
            parse_net("switch:a-b_c.1").unwrap(),
            NetSpec::Switch("a-b_c.1".into())
        );
        assert_eq!(
            parse_net("tap:tap0").unwrap(),
            NetSpec::Tap {
                name: "tap0".into(),
                host: None
            }
        );
        assert_eq!(
            parse_net("tap:hv0,host=10.77.0.1/24").unwrap(),
            NetSpec::Tap {
                name: "hv0".into(),
                host: Some(HostAddr {
                    addr: Ipv4Addr::new(10, 77, 0, 1),
                    prefix: 24
                })
            }
        );
        let longest = format!("tap:{}", "t".repeat(tap::MAX_NAME));
        assert!(parse_net(&longest).is_ok());
        let e = parse_net("tap:abcdefghijklmnop").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: --net \"tap:abcdefghijklmnop\": the tap name must be 1 to 15 of [A-Za-z0-9_.-]"
        );
        let e = parse_net("tap:hv0,host=10.77.0.1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: --net \"tap:hv0,host=10.77.0.1\": the host address must be A.B.C.D/P"
        );
        let long = format!("switch:{}", "x".repeat(MAX_SWITCH_NAME + 1));
        let long_tap = format!("tap:{}", "t".repeat(tap::MAX_NAME + 1));
        for bad in [
            "switch:",
            "switch:a b",
            "switch:a/b",
            "lan",
            "bridge:lan",
            "",
            long.as_str(),
            "tap:",
            "tap:.",
            "tap:..",
            "tap:a/b",
            "tap:a:b",
            "tap:a b",
            "tap:hv%d",
            long_tap.as_str(),
            "tap:hv0,",
            "tap:hv0,host",
            "tap:hv0,mtu=9000",
            "tap:hv0,host=10.77.0.1/0",
            "tap:hv0,host=10.77.0.1/33",
            "tap:hv0,host=10.77.0.1/x",
            "tap:hv0,host=10.77.0/24",
            "tap:hv0,host=10.77.0.256/24",
            "tap:hv0,host=0.0.0.0/24",
            "tap:hv0,host=224.0.0.1/4",
            "tap:hv0,host=255.255.255.255/32",
            "tap:hv0,host=10.77.0.1/24,host=10.77.0.2/24",
        ] {
            assert!(
                matches!(parse_net(bad), Err(HvError::BadArgument(_))),
                "{bad:?}"
            );
        }
        assert!(parse_nets(&vec!["switch:lan"; MAX_NETS]).is_ok());
        assert!(parse_nets(&vec!["switch:lan"; MAX_NETS + 1]).is_err());
        let specs = load_str(
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nnets = [\"switch:lan\", \"switch:wan\"]\n[[domain]]\nname = \"b\"\nkernel = \"k\"\n",
        )
        .unwrap();
        assert_eq!(
            specs[0].nets,
            vec![NetSpec::Switch("lan".into()), NetSpec::Switch("wan".into())]
        );
        assert!(specs[1].nets.is_empty());
        let specs = load_str(
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nnets = [\"tap:hv0,host=10.77.0.1/24\", \"tap:t1\"]\n",
        )
        .unwrap();
        assert_eq!(
            specs[0].nets,
            vec![
                parse_net("tap:hv0,host=10.77.0.1/24").unwrap(),
                NetSpec::Tap {
                    name: "t1".into(),
                    host: None
                }
            ]
        );
        for bad in [
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nnets = [\"tap:sixteen_chars_xy\"]\n",
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nnets = \"switch:lan\"\n",
        ] {
            assert!(
                matches!(load_str(bad), Err(HvError::BadConfig { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn emulated_net() {
        assert_eq!(parse_emulated_net("switch:lan").unwrap(), "lan");
        for bad in ["switch:", "lan", "tap:tap0", "switch:a b"] {
            let e = parse_emulated_net(bad).unwrap_err();
            assert!(matches!(e, HvError::BadArgument(_)), "{bad:?}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        assert!(parse_emulated_net("switch:")
            .unwrap_err()
            .to_string()
            .contains("--emulated-net"));
        let specs = load_str(
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nemulated_net = \"switch:lan\"\n[[domain]]\nname = \"b\"\nkernel = \"k\"\n",
        )
        .unwrap();
        assert_eq!(specs[0].emulated_net.as_deref(), Some("lan"));
        assert_eq!(specs[1].emulated_net, None);
        for bad in [
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nemulated_net = \"switch:\"\n",
            "[[domain]]\nname = \"a\"\nkernel = \"k\"\nemulated_net = [\"switch:a\", \"switch:b\"]\n",
        ] {
            assert!(
                matches!(load_str(bad), Err(HvError::BadConfig { .. })),
                "{bad:?}"
            );
        }
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
