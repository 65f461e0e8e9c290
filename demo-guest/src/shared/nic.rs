//! One trait over the two network cards a guest can drive with smoltcp: the paravirtual vif
//! (`pv_drivers::frontend::net::NetDevice`) and the hv's emulated NE2000 card ([`Ne2k`]).
//! Shared by `netdemo` and `netbench` (included with `#[path]`, next to `ne2k.rs`).
// Each binary uses part of it.
#![allow(dead_code)]

use alloc::format;
use alloc::string::String;

use pv_drivers::frontend::net::smoltcp;
use pv_drivers::frontend::net::NetDevice;
use smoltcp::iface::Interface;

use super::ne2k::{self, Ne2k};

/// What a guest needs from a network card besides smoltcp's `Device`.
pub trait Nic: smoltcp::phy::Device + Sized {
    /// Its name in messages.
    const NAME: &'static str;
    /// Opens the card; a one-line reason if it cannot be.
    fn open() -> Result<Self, String>;
    /// Its MAC address.
    fn mac(&self) -> [u8; 6];
    /// The largest payload it carries.
    fn mtu(&self) -> usize;
    /// A smoltcp interface with its MAC address and no IP address yet.
    fn interface(&mut self) -> Interface;
    /// Waits for the network until `until` (system time) at most; a one-line reason if the
    /// card broke.
    fn wait_until(&mut self, until: u64) -> Result<(), String>;
    /// Frames sent and received so far.
    fn frames(&self) -> (u64, u64);
    /// Its counters, for a closing line.
    fn report(&self) -> String;
}

impl Nic for NetDevice {
    const NAME: &'static str = "vif/0";

    fn open() -> Result<Self, String> {
        NetDevice::open(0).map_err(|e| format!("cannot open vif/0: {e}"))
    }

    fn mac(&self) -> [u8; 6] {
        NetDevice::mac(self)
    }

    fn mtu(&self) -> usize {
        NetDevice::mtu(self) as usize
    }

    fn interface(&mut self) -> Interface {
        NetDevice::interface(self)
    }

    fn wait_until(&mut self, until: u64) -> Result<(), String> {
        self.wait(until)
            .map(|_| ())
            .map_err(|e| format!("vif/0: {e}"))
    }

    fn frames(&self) -> (u64, u64) {
        let s = self.stats();
        (s.tx_frames, s.rx_frames)
    }

    fn report(&self) -> String {
        let st = self.stats();
        format!(
            "frames tx {} rx {}; notifications {}, blocks {}",
            st.tx_frames, st.rx_frames, st.notifications, st.blocks
        )
    }
}

impl Nic for Ne2k {
    const NAME: &'static str = "ne2k";

    fn open() -> Result<Self, String> {
        Ne2k::open().map_err(|e| format!("cannot open the ne2k card: {e}"))
    }

    fn mac(&self) -> [u8; 6] {
        Ne2k::mac(self)
    }

    fn mtu(&self) -> usize {
        ne2k::MAX_FRAME - 14
    }

    fn interface(&mut self) -> Interface {
        Ne2k::interface(self)
    }

    fn wait_until(&mut self, until: u64) -> Result<(), String> {
        self.wait(until);
        Ok(())
    }

    fn frames(&self) -> (u64, u64) {
        let s = self.stats();
        (s.tx_frames, s.rx_frames)
    }

    fn report(&self) -> String {
        let st = self.stats();
        format!(
            "frames tx {} rx {}; port I/O instructions: tx {} rx {} idle {}; errors tx {} rx {}, overruns {}",
            st.tx_frames,
            st.rx_frames,
            st.tx_ios,
            st.rx_ios,
            st.idle_ios,
            st.tx_errors,
            st.rx_errors,
            st.overruns
        )
    }
}
