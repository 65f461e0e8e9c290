//! What the hv's device backends ([`crate::blkback`], [`crate::netback`]) share: [`HvHost`],
//! the hv as a [`GrantHost`] (grant lookups in the frontend's grant table, notifications on the
//! frontend's port), [`Hold`], a held grant, and small store helpers for acting as the
//! toolstack.
//!
//! A backend reaches the frontend's pages only through the grant table
//! ([`GrantBook::hv_hold`]): every page it uses, ring pages included, is held for as long as it
//! is used, and a held grant counts as mapped, so the frontend cannot end it meanwhile.
//!
//! [`GrantBook::hv_hold`]: crate::grant::GrantBook::hv_hold

use std::ptr::NonNull;
use std::sync::Arc;

use hypercall_abi::evtchn::Port;
use hypercall_abi::store::{self as st, Access, DeviceState, Perms, Request, Value};
use hypercall_abi::{Errno, DOMID_HV, PAGE_SIZE};
use pv_drivers::backend::{GrantHost, GrantedPage};

use crate::domain::{Domain, Signal};
use crate::evtchn::Backend;
use crate::registry::Registry;
use crate::store::{OwnedValue, ResponseBuf};

/// The hv as a backend's host for one device of one frontend: grant lookups in the frontend's
/// grant table, notifications on the frontend's port `port`.
pub struct HvHost {
    dom: Arc<Domain>,
    reg: Arc<Registry>,
    port: Port,
}

impl HvHost {
    /// A host serving `dom`'s grants and notifying its port `port` (a port bound to the
    /// device's backend).
    pub fn new(dom: Arc<Domain>, reg: Arc<Registry>, port: Port) -> HvHost {
        HvHost { dom, reg, port }
    }

    /// The port notified.
    pub fn port(&self) -> Port {
        self.port
    }
}

/// A hold on one of the frontend's grants: keeps the frontend's RAM alive and makes the grant
/// count as mapped (the frontend's `end_access` gets `EBUSY`) until dropped.
pub struct Hold {
    dom: Arc<Domain>,
    reg: Arc<Registry>,
    gref: u32,
}

impl Hold {
    /// Holds grant `gref` of `dom` (for writing if `write`); returns the hold and the granted
    /// frame's offset in `dom`'s RAM (page-aligned, the whole page inside the RAM).
    pub fn take(
        dom: &Arc<Domain>,
        reg: &Arc<Registry>,
        gref: u32,
        write: bool,
    ) -> Result<(Hold, u64), Errno> {
        let frame = reg.grants().hv_hold(dom, gref as u64, write)?;
        let hold = Hold {
            dom: Arc::clone(dom),
            reg: Arc::clone(reg),
            gref,
        };
        Ok((hold, frame))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.reg.grants().hv_release(self.dom.id, self.gref);
    }
}

impl GrantHost for HvHost {
    type Guard = Hold;

    fn page(&self, gref: u32, write: bool) -> Result<GrantedPage<Hold>, Errno> {
        let (hold, frame) = Hold::take(&self.dom, &self.reg, gref, write)?;
        // `hv_hold` checked that the page-aligned frame lies inside the frontend's RAM.
        debug_assert!(frame + PAGE_SIZE <= self.dom.ram.size());
        // SAFETY: computing an address inside the frontend's RAM mapping (checked above).
        let ptr = unsafe { self.dom.ram.host_base().add(frame as usize) };
        let ptr = NonNull::new(ptr).ok_or(Errno::EFAULT)?;
        // SAFETY: the pointer is page-aligned (frames are), inside the RAM mapping, which the
        // hold (with an Arc of the domain owning the mapping) keeps alive, and the hold keeps
        // the frontend from ending the grant; the hv holds no Rust references into guest RAM;
        // writable since guest RAM is mapped read-write.
        Ok(unsafe { GrantedPage::new(ptr, hold) })
    }

    fn notify(&self) {
        self.dom.deliver(self.port, 0);
    }
}

/// Writes `value` at `path` as the hv (errors ignored: the hv owns these paths).
pub(crate) fn store_write(reg: &Registry, path: &str, value: Value<'_>) {
    let _ = reg.store().hv_request(&Request::Write { path, value });
}

fn store_read(reg: &Registry, path: &str) -> Option<OwnedValue> {
    match reg.store().hv_request(&Request::Read { path }) {
        ResponseBuf::Value(v) => Some(v),
        _ => None,
    }
}

/// The `U64` at `path`, if there is one.
pub(crate) fn read_u64(reg: &Registry, path: &str) -> Option<u64> {
    match store_read(reg, path)? {
        OwnedValue::U64(v) => Some(v),
        _ => None,
    }
}

/// The device state at `path`, if there is one.
pub(crate) fn read_state(reg: &Registry, path: &str) -> Option<DeviceState> {
    match store_read(reg, path)? {
        OwnedValue::State(s) => Some(s),
        _ => None,
    }
}

/// Creates a device's two directories as the toolstack: the frontend directory `front`, owned
/// by `dom`, and the backend directory `back`, owned by the hv and readable by `dom`.
pub(crate) fn make_device_dirs(reg: &Registry, dom: &Domain, front: &str, back: &str) {
    {
        let mut store = reg.store();
        let _ = store.hv_request(&Request::Mkdir { path: front });
        let _ = store.hv_request(&Request::SetPerms {
            path: front,
            perms: Perms::owned_by(dom.id),
        });
        let _ = store.hv_request(&Request::Mkdir { path: back });
        let mut perms = Perms::owned_by(DOMID_HV);
        let _ = perms.grant(dom.id, Access::Read);
        let _ = store.hv_request(&Request::SetPerms { path: back, perms });
    }
    // The keys that link the two directories, and the frontend's initial state.
    let k = |dir: &str, key: &str| format!("{dir}/{key}");
    store_write(reg, &k(front, st::key::BACKEND), Value::Str(back));
    store_write(
        reg,
        &k(front, st::key::BACKEND_ID),
        Value::U64(DOMID_HV as u64),
    );
    store_write(
        reg,
        &k(front, st::key::STATE),
        Value::State(DeviceState::Initialising),
    );
    store_write(reg, &k(back, st::key::FRONTEND), Value::Str(front));
    store_write(
        reg,
        &k(back, st::key::FRONTEND_ID),
        Value::U64(dom.id as u64),
    );
}

/// What a device backend thread starts from: its wake-up signal and the two directories.
pub(crate) struct DeviceSetup {
    /// Raised by the frontend's notifications, store changes of its state, and shutdown.
    pub signal: Arc<Signal>,
    /// The frontend directory.
    pub front: String,
    /// The backend directory.
    pub back: String,
}

/// Sets up device `class`/`n` of `dom` served by `backend`: registers the backend's signal,
/// creates both directories as the toolstack, lets `publish` write the backend's own keys, and
/// watches the frontend's state.
pub(crate) fn setup_device(
    dom: &Domain,
    reg: &Registry,
    backend: Backend,
    class: &str,
    n: u32,
    publish: impl FnOnce(&str, &str),
) -> std::io::Result<DeviceSetup> {
    let (Ok(front), Ok(back)) = (
        st::frontend_dir(dom.id, class, n),
        st::backend_dir(DOMID_HV, dom.id, class, n),
    ) else {
        return Err(std::io::Error::other("device path too long"));
    };
    let (front, back) = (front.to_string(), back.to_string());
    let signal = Arc::new(Signal::default());
    dom.add_backend_signal(backend, Arc::clone(&signal));
    make_device_dirs(reg, dom, &front, &back);
    publish(&front, &back);
    reg.store()
        .hv_watch(&format!("{front}/{}", st::key::STATE), Arc::clone(&signal));
    Ok(DeviceSetup {
        signal,
        front,
        back,
    })
}
