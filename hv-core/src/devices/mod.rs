//! Emulated classic devices, reached by trap-and-emulate port I/O: the full-virtualization
//! path that the paravirtual drivers are compared against (DESIGN §8).
//!
//! - [`Uart16550`] — a 16550 UART (COM1, ports `0x3F8..=0x3FF`): one exit per byte;
//! - [`AtaDisk`] — an ATA disk driven by PIO on the primary channel (`0x1F0..=0x1F7` and
//!   `0x3F6`), backed by a raw image file;
//! - [`Ne2k`] — an NE2000-compatible network card (`0x300..=0x31F`) on a port of an in-hv
//!   switch.
//!
//! A [`PortBus`] routes port accesses to the devices that claim them. The run loop allows the
//! bus's [`PortBus::ports`] in the guest's TSS I/O bitmap, then hands each port I/O exit for one
//! of them to [`PortBus::serve`] (or, without KVM, to [`PortBus::out`] / [`PortBus::input`]).
//!
//! Accesses follow the `KVM_EXIT_IO` shape: `size` is the item size (1, 2 or 4 bytes) and the
//! data holds `count` items back to back, little-endian; `count > 1` is string I/O
//! (`rep outs`/`rep ins`). Nothing a guest does through a port panics or blocks: bad accesses
//! are answered (reads with all ones) and reported as a [`DeviceError`] the caller may count
//! or ignore.
//!
//! The devices deliver no interrupts: guests poll (the UART's LSR, the disk's status, the
//! card's ISR).

pub mod ata;
pub mod ne2k;
pub mod uart;

use std::collections::BTreeMap;

use thiserror::Error;

use crate::kvm::{Exit, KvmError, Vcpu};

pub use ata::{AtaDisk, DiskError, ATA_PRIMARY_BASE, ATA_PRIMARY_CTRL};
pub use ne2k::{Ne2k, SwitchUplink, NE2K_BASE};
pub use uart::{Uart16550, UartInput, COM1};

/// A device on the port bus.
///
/// `size` is the item size of the access (1, 2 or 4) and the buffer holds a whole number of
/// items (`count = len / size`, more than one for string I/O); the bus checks both before
/// calling. Items are little-endian, as `in`/`out` see them.
pub trait PortDevice: Send {
    /// A short name for messages ("uart16550", "ata").
    fn name(&self) -> &'static str;
    /// Every port the device answers (the first port of an access selects the device).
    fn ports(&self) -> Vec<u16>;
    /// `count` items written to `port` (`out`, `rep outs`).
    fn write(&mut self, port: u16, size: u8, data: &[u8]);
    /// `count` items read from `port` (`in`, `rep ins`): fill all of `out`.
    fn read(&mut self, port: u16, size: u8, out: &mut [u8]);
}

/// Errors from the port bus.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// Two devices claim the same port.
    #[error("port {port:#x} is claimed by both {existing} and {added}")]
    PortConflict {
        /// The port.
        port: u16,
        /// The device already on the bus.
        existing: &'static str,
        /// The device being added.
        added: &'static str,
    },
    /// No device answers this port (reads returned all ones).
    #[error("no device at port {port:#x}")]
    NoDevice {
        /// The port.
        port: u16,
    },
    /// An access whose item size is not 1, 2 or 4, or whose data is not a whole number of
    /// items (reads returned all ones; the device was not called).
    #[error("bad access to port {port:#x}: {len} bytes in items of {size}")]
    BadAccess {
        /// The port.
        port: u16,
        /// The item size.
        size: u8,
        /// The data length.
        len: usize,
    },
    /// Exchanging the data with KVM failed.
    #[error("port I/O data: {0}")]
    Kvm(#[from] KvmError),
}

/// Routes port accesses to devices. `Send`; a domain with several vCPUs shares one bus behind a
/// mutex (the devices' state is per domain).
#[derive(Default)]
pub struct PortBus {
    devices: Vec<Box<dyn PortDevice>>,
    /// Port -> index into `devices`.
    map: BTreeMap<u16, usize>,
    /// Reused buffer for `in` data.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for PortBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortBus")
            .field(
                "devices",
                &self.devices.iter().map(|d| d.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PortBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device; fails, adding nothing, if one of its ports is already claimed.
    pub fn add(&mut self, device: Box<dyn PortDevice>) -> Result<(), DeviceError> {
        let ports = device.ports();
        for &port in &ports {
            if let Some(&i) = self.map.get(&port) {
                return Err(DeviceError::PortConflict {
                    port,
                    existing: self.devices[i].name(),
                    added: device.name(),
                });
            }
        }
        let index = self.devices.len();
        for port in ports {
            self.map.insert(port, index);
        }
        self.devices.push(device);
        Ok(())
    }

    /// Every port some device claims, ascending: allow these in the guest's TSS I/O bitmap.
    pub fn ports(&self) -> Vec<u16> {
        self.map.keys().copied().collect()
    }

    /// Whether a device answers `port`.
    pub fn claims(&self, port: u16) -> bool {
        self.map.contains_key(&port)
    }

    fn route(&mut self, port: u16, size: u8, len: usize) -> Result<usize, DeviceError> {
        if !matches!(size, 1 | 2 | 4) || !len.is_multiple_of(usize::from(size)) {
            return Err(DeviceError::BadAccess { port, size, len });
        }
        self.map
            .get(&port)
            .copied()
            .ok_or(DeviceError::NoDevice { port })
    }

    /// An `out` (or `rep outs`) of `data.len() / size` items of `size` bytes to `port`. Data to
    /// a port nobody claims is dropped (and reported).
    pub fn out(&mut self, port: u16, size: u8, data: &[u8]) -> Result<(), DeviceError> {
        let i = self.route(port, size, data.len())?;
        self.devices[i].write(port, size, data);
        Ok(())
    }

    /// An `in` (or `rep ins`) of `out.len() / size` items of `size` bytes from `port`. `out` is
    /// always filled: with all ones when nobody claims the port (a floating bus).
    pub fn input(&mut self, port: u16, size: u8, out: &mut [u8]) -> Result<(), DeviceError> {
        match self.route(port, size, out.len()) {
            Ok(i) => {
                self.devices[i].read(port, size, out);
                Ok(())
            }
            Err(e) => {
                out.fill(0xff);
                Err(e)
            }
        }
    }

    /// Serves `exit` if it is port I/O to a port on this bus: passes the written data to the
    /// device, or supplies the data read to `vcpu` (single and string I/O alike). Returns
    /// `Ok(false)`, touching nothing, for any other exit.
    pub fn serve(&mut self, vcpu: &mut Vcpu, exit: &Exit) -> Result<bool, DeviceError> {
        match *exit {
            Exit::IoOut { port, size, .. } if self.claims(port) => {
                let data = vcpu.io_out_data()?;
                self.out(port, size, data)?;
                Ok(true)
            }
            Exit::IoIn { port, size } if self.claims(port) => {
                let len = usize::from(size).saturating_mul(vcpu.io_count() as usize);
                let mut buf = std::mem::take(&mut self.scratch);
                buf.clear();
                buf.resize(len, 0);
                let read = self.input(port, size, &mut buf);
                // Always complete the `in`, even after a device-level error.
                let supplied = vcpu.set_io_in_items(&buf);
                self.scratch = buf;
                supplied?;
                read.map(|()| true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests;
