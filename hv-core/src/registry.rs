//! The domains of one `hv` process, and the state they share: the grant book, the store and
//! the network switches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use hypercall_abi::{DomId, Errno};

use crate::domain::Domain;
use crate::grant::GrantBook;
use crate::netback::Switches;
use crate::store_service::StoreHub;

/// Every live domain, by id.
#[derive(Default)]
pub struct Registry {
    domains: RwLock<BTreeMap<DomId, Arc<Domain>>>,
    grants: Mutex<GrantBook>,
    store: Mutex<StoreHub>,
    switches: Switches,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Adds a domain.
    pub fn insert(&self, d: Arc<Domain>) {
        self.grants().add_domain(d.id);
        self.domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.id, d);
    }

    /// A live domain, or `ESRCH`.
    pub fn get(&self, id: DomId) -> Result<Arc<Domain>, Errno> {
        self.domains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
            .ok_or(Errno::ESRCH)
    }

    /// Removes a stopped domain: its interdomain peers become unbound and its grants are
    /// revoked from their holders.
    pub fn remove(&self, dom: &Domain) {
        self.domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&dom.id);
        dom.disconnect_peers();
        self.grants().remove_domain(dom, |id| self.get(id).ok());
        self.store().disconnect(dom.id);
    }

    /// The store and its connections.
    pub fn store(&self) -> MutexGuard<'_, StoreHub> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every live domain, in id order.
    pub fn all(&self) -> Vec<Arc<Domain>> {
        self.domains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Tells every domain to stop (used when starting a later domain failed).
    pub fn stop_all(&self) {
        for d in self.all() {
            d.stop(crate::domain::StopReason::HvError(
                "another domain failed to start".into(),
            ));
        }
    }

    /// The named network switches connecting the domains' vifs.
    pub fn switches(&self) -> &Switches {
        &self.switches
    }

    /// The grant book (one lock for all grant operations).
    pub fn grants(&self) -> MutexGuard<'_, GrantBook> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }
}
