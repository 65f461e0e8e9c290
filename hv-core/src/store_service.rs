//! The store backend: connects each domain's store ring (the guest is the ring's front end) to
//! the store engine ([`crate::store::Store`]), and delivers watch events through the event
//! credits guests post (see `hypercall_abi::store`).
//!
//! Requests are served synchronously when the guest notifies the store port, on the notifying
//! vCPU's thread, under the hub's lock. Watch events for other domains are pushed into their
//! rings at the same time, and their store port is raised.

use std::collections::BTreeMap;
use std::sync::Arc;

use hypercall_abi::evtchn::Port;
use hypercall_abi::ring::BackRing;
use hypercall_abi::store::{Access, Perms, Request, StoreSlot, Value, STORE_RING_BYTES};
use hypercall_abi::{DomId, DOMID_HV};

use crate::domain::{Domain, Signal};
use crate::layout::STORE_RING_GPA;
use crate::store::{EventQueue, SlotReply, Store, WatchFire};

/// One domain's connection to the store.
struct Conn {
    ring: BackRing<StoreSlot, StoreSlot>,
    events: EventQueue,
    port: Port,
    dom: Arc<Domain>,
    disconnected: bool,
}

/// The store engine and every domain's connection to it.
pub struct StoreHub {
    engine: Store,
    conns: BTreeMap<DomId, Conn>,
    /// Watches the hv's own backends hold: a fire with token `i` raises `hv_watches[i]`.
    hv_watches: Vec<Arc<Signal>>,
}

impl Default for StoreHub {
    fn default() -> Self {
        StoreHub::new()
    }
}

impl StoreHub {
    /// A store with `/local/domain` listable by every domain (so domains can find each other).
    pub fn new() -> StoreHub {
        let mut engine = Store::new();
        let perms = Perms {
            owner: DOMID_HV,
            others: Access::Read,
            acl: heapless::Vec::new(),
        };
        let _ = engine.handle(
            DOMID_HV,
            &Request::SetPerms {
                path: "/local/domain",
                perms,
            },
        );
        StoreHub {
            engine,
            conns: BTreeMap::new(),
            hv_watches: Vec::new(),
        }
    }

    /// Serves a request of the hv itself (acting as toolstack or backend).
    pub fn hv_request(&mut self, req: &Request<'_>) -> crate::store::ResponseBuf {
        let (resp, fires) = self.engine.handle(DOMID_HV, req);
        self.deliver(fires, None);
        resp
    }

    /// Watches `path` for one of the hv's backends: every change raises `signal`.
    pub fn hv_watch(&mut self, path: &str, signal: Arc<Signal>) {
        let token = self.hv_watches.len() as u32;
        self.hv_watches.push(signal);
        let (_, fires) = self
            .engine
            .handle(DOMID_HV, &Request::Watch { path, token });
        self.deliver(fires, None);
    }

    /// Connects a new domain: creates its home and its readable `name`, and attaches its ring.
    pub fn connect(&mut self, dom: &Arc<Domain>, store_port: Port) {
        let mut fires = self.engine.add_domain(dom.id).unwrap_or_default();
        let home = format!("/local/domain/{}", dom.id);
        let name_path = format!("{home}/name");
        let (_, f) = self.engine.handle(
            DOMID_HV,
            &Request::Write {
                path: &name_path,
                value: Value::Str(&dom.name),
            },
        );
        fires.extend(f);
        let perms = Perms {
            owner: dom.id,
            others: Access::Read,
            acl: heapless::Vec::new(),
        };
        let (_, f) = self.engine.handle(
            DOMID_HV,
            &Request::SetPerms {
                path: &name_path,
                perms,
            },
        );
        fires.extend(f);
        // SAFETY: the store ring page lies inside the domain's RAM (below MIN_MEM), which lives
        // as long as `dom`, and the connection (which holds `dom`) is dropped in `disconnect`
        // before the domain is. The guest writes the page concurrently, which the ring allows.
        let ring = unsafe {
            BackRing::new(
                dom.ram.host_base().add(STORE_RING_GPA as usize),
                STORE_RING_BYTES,
            )
        };
        match ring {
            Ok(ring) => {
                self.conns.insert(
                    dom.id,
                    Conn {
                        ring,
                        events: EventQueue::new(),
                        port: store_port,
                        dom: Arc::clone(dom),
                        disconnected: false,
                    },
                );
            }
            Err(e) => eprintln!("hv: store: cannot attach domain {}'s ring: {e}", dom.id),
        }
        self.deliver(fires, None);
    }

    /// Disconnects a stopped domain: its home is removed and its watches dropped.
    pub fn disconnect(&mut self, id: DomId) {
        self.conns.remove(&id);
        let fires = self.engine.remove_domain(id);
        self.deliver(fires, None);
    }

    /// Serves what `id` has put on its ring.
    pub fn serve(&mut self, id: DomId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.disconnected {
            return;
        }
        let mut fires = Vec::new();
        loop {
            let slot = match conn.ring.poll_request() {
                Ok(Some(slot)) => slot,
                Ok(None) => match conn.ring.final_check_for_requests() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        Self::cut(conn, &e.to_string());
                        break;
                    }
                },
                Err(e) => {
                    Self::cut(conn, &e.to_string());
                    break;
                }
            };
            let (reply, f) = self.engine.handle_slot(id, &slot);
            match reply {
                SlotReply::Reply(s) => {
                    if conn.ring.push_response(&s).is_err() {
                        Self::cut(conn, "no room for a response");
                        break;
                    }
                }
                SlotReply::Credit => conn.events.add_credit(),
            }
            fires.extend(f);
        }
        self.deliver(fires, Some(id));
    }

    fn cut(conn: &mut Conn, why: &str) {
        conn.disconnected = true;
        eprintln!(
            "hv: store: domain {} broke its store ring ({why}); store disconnected",
            conn.dom.id
        );
    }

    /// Queues `fires` on their domains, puts what the credits allow on the rings, and raises
    /// the store port of every domain whose ring got responses (`also` gets a flush even
    /// without fires: it has just been served).
    fn deliver(&mut self, fires: Vec<WatchFire>, also: Option<DomId>) {
        let mut touched: Vec<DomId> = also.into_iter().collect();
        for f in fires {
            if f.domid == DOMID_HV {
                if let Some(s) = self.hv_watches.get(f.token as usize) {
                    s.raise();
                }
                continue;
            }
            if let Some(c) = self.conns.get_mut(&f.domid) {
                if !touched.contains(&f.domid) {
                    touched.push(f.domid);
                }
                c.events.push(f);
            }
        }
        for id in touched {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.disconnected {
                continue;
            }
            while let Some(slot) = c.events.pop_slot() {
                if c.ring.push_response(&slot).is_err() {
                    break;
                }
            }
            if c.ring.push_responses_and_check_notify() {
                c.dom.deliver(c.port, 0);
            }
        }
    }
}

/// Serves the requests waiting in `dom`'s store ring.
pub fn serve(dom: &Domain) {
    if let Ok(reg) = dom.registry() {
        reg.store().serve(dom.id);
    }
}
