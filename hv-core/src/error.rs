//! The errors `hv` reports to its user, each with one line of text and its own exit code.
//!
//! Exit codes: 0..=63 are the guest's own poweroff code; 2 is a command-line usage error (clap);
//! the rest are listed in [`ExitCode`].

use std::path::PathBuf;
use thiserror::Error;

/// `hv`'s exit codes other than the guest's own.
pub mod exit_code {
    /// A guest crashed (unhandled exception, triple fault, panic, ...).
    pub const GUEST_CRASHED: u8 = 70;
    /// `/dev/kvm` does not exist.
    pub const KVM_MISSING: u8 = 71;
    /// `/dev/kvm` exists but cannot be opened (permission).
    pub const KVM_PERMISSION: u8 = 72;
    /// The guest image cannot be read.
    pub const IMAGE_UNREADABLE: u8 = 73;
    /// The guest image is not an ELF file.
    pub const NOT_ELF: u8 = 74;
    /// The image is an ELF file but not a static x86_64 executable.
    pub const WRONG_ARCH: u8 = 75;
    /// The image has no ABI note.
    pub const NO_ABI_NOTE: u8 = 76;
    /// The image needs another ABI major or features this hv lacks.
    pub const ABI_MISMATCH: u8 = 77;
    /// The image does not fit in the guest's memory.
    pub const IMAGE_TOO_LARGE: u8 = 78;
    /// A memory size argument is malformed or out of range.
    pub const BAD_SIZE: u8 = 79;
    /// The vCPU count is 0 or more than supported.
    pub const BAD_VCPUS: u8 = 80;
    /// Another argument is invalid (e.g. the command line is too long).
    pub const BAD_ARGUMENT: u8 = 81;
    /// The `--config` file is unreadable or invalid.
    pub const BAD_CONFIG: u8 = 82;
    /// A disk image cannot be used (missing, a directory, size not a multiple of 512).
    pub const BAD_DISK: u8 = 83;
    /// A `--net tap:NAME` interface cannot be opened or configured (privilege, busy, not a
    /// TAP, no `/dev/net/tun`).
    pub const TAP: u8 = 84;
    /// KVM or the host failed while setting up or running a domain (a hypervisor error).
    pub const HV_INTERNAL: u8 = 90;
}

/// Why a guest image was refused.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file cannot be read.
    #[error("cannot read guest image {path}: {source}")]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No ELF magic.
    #[error("{path} is not an ELF file")]
    NotElf {
        /// The path given.
        path: PathBuf,
    },
    /// Wrong class, byte order, machine or type.
    #[error("{path} is {what}, not a static x86_64 ELF64 executable")]
    WrongArch {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// Structurally broken ELF.
    #[error("{path} is a malformed ELF file: {why}")]
    Malformed {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No `HVPV` ABI note.
    #[error("{path} has no hv ABI note (PT_NOTE \"HVPV\"); build it with guest-sdk")]
    NoAbiNote {
        /// The path given.
        path: PathBuf,
    },
    /// ABI major differs.
    #[error("{path} was built for ABI {guest_major}.{guest_minor}, but this hv implements ABI {hv_major}.{hv_minor}")]
    AbiMajor {
        /// The path given.
        path: PathBuf,
        /// The guest's major.
        guest_major: u16,
        /// The guest's minor.
        guest_minor: u16,
        /// The hv's major.
        hv_major: u16,
        /// The hv's minor.
        hv_minor: u16,
    },
    /// The guest requires features this hv does not offer.
    #[error(
        "{path} requires ABI features {missing:#x} that this hv (ABI {hv_major}.{hv_minor}) lacks"
    )]
    MissingFeatures {
        /// The path given.
        path: PathBuf,
        /// The missing bits.
        missing: u64,
        /// The hv's major.
        hv_major: u16,
        /// The hv's minor.
        hv_minor: u16,
    },
    /// A segment lies outside what the guest's memory can hold.
    #[error("{path} needs memory up to {end:#x} but the guest has {mem:#x} bytes (image must load at or above {base:#x}); raise --mem")]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// End of the highest segment.
        end: u64,
        /// Guest memory size.
        mem: u64,
        /// Lowest load address allowed.
        base: u64,
    },
}

impl ImageError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        use exit_code::*;
        match self {
            ImageError::Unreadable { .. } => IMAGE_UNREADABLE,
            ImageError::NotElf { .. } => NOT_ELF,
            ImageError::WrongArch { .. } | ImageError::Malformed { .. } => WRONG_ARCH,
            ImageError::NoAbiNote { .. } => NO_ABI_NOTE,
            ImageError::AbiMajor { .. } | ImageError::MissingFeatures { .. } => ABI_MISMATCH,
            ImageError::TooLarge { .. } => IMAGE_TOO_LARGE,
        }
    }
}

/// Every error `hv` can end with.
#[derive(Debug, Error)]
pub enum HvError {
    /// `/dev/kvm` (or the device named) is absent.
    #[error("KVM is not available: {path} does not exist (is the kvm module loaded?)")]
    KvmMissing {
        /// The device path.
        path: PathBuf,
    },
    /// No permission to open the KVM device.
    #[error("KVM is not usable: permission denied opening {path} (add yourself to the kvm group or run as root)")]
    KvmPermission {
        /// The device path.
        path: PathBuf,
    },
    /// The guest image was refused.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A size argument is malformed or out of range.
    #[error("invalid {what} {value:?}: {why}")]
    BadSize {
        /// Which argument.
        what: &'static str,
        /// The text given.
        value: String,
        /// Why it is wrong.
        why: String,
    },
    /// Bad vCPU count.
    #[error("invalid --vcpus {value}: must be between 1 and {max}")]
    BadVcpus {
        /// The count given.
        value: String,
        /// The most supported.
        max: u32,
    },
    /// Another invalid argument.
    #[error("invalid argument: {0}")]
    BadArgument(String),
    /// The config file is unreadable or invalid.
    #[error("invalid config {path}: {why}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A disk image cannot be used.
    #[error("{0}")]
    BadDisk(String),
    /// A TAP interface cannot be opened or configured.
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    /// KVM or the host failed.
    #[error("hypervisor error: {0}")]
    Internal(String),
}

impl HvError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        use exit_code::*;
        match self {
            HvError::KvmMissing { .. } => KVM_MISSING,
            HvError::KvmPermission { .. } => KVM_PERMISSION,
            HvError::Image(e) => e.exit_code(),
            HvError::BadSize { .. } => BAD_SIZE,
            HvError::BadVcpus { .. } => BAD_VCPUS,
            HvError::BadArgument(_) => BAD_ARGUMENT,
            HvError::BadConfig { .. } => BAD_CONFIG,
            HvError::BadDisk(_) => BAD_DISK,
            HvError::Tap(_) => TAP,
            HvError::Internal(_) => HV_INTERNAL,
        }
    }
}

/// Parses a memory size: a number of bytes with an optional `K`, `M` or `G` suffix (powers of
/// 1024, case-insensitive, optional `iB`/`B`), e.g. `64M`, `1G`, `512KiB`, `1048576`.
pub fn parse_size(what: &'static str, text: &str) -> Result<u64, HvError> {
    let bad = |why: &str| HvError::BadSize {
        what,
        value: text.to_string(),
        why: why.to_string(),
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad("expected a number with an optional K, M or G suffix"));
    }
    let n: u64 = t[..digits_end]
        .parse()
        .map_err(|_| bad("number too large"))?;
    let shift = match t[digits_end..].to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad("unknown suffix (use K, M or G)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| bad("number too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("x", "64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("x", "1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("x", "512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("x", "4096").unwrap(), 4096);
        for bad in [
            "",
            "M",
            "12Q",
            "-5",
            "1.5G",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert!(parse_size("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        use exit_code::*;
        let mut all = vec![
            GUEST_CRASHED,
            KVM_MISSING,
            KVM_PERMISSION,
            IMAGE_UNREADABLE,
            NOT_ELF,
            WRONG_ARCH,
            NO_ABI_NOTE,
            ABI_MISMATCH,
            IMAGE_TOO_LARGE,
            BAD_SIZE,
            BAD_VCPUS,
            BAD_ARGUMENT,
            BAD_CONFIG,
            BAD_DISK,
            TAP,
            HV_INTERNAL,
        ];
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all
            .iter()
            .all(|&c| c as u64 > hypercall_abi::sched::MAX_EXIT_CODE && c != 2));
    }
}
