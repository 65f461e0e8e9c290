//! The store engine: the hierarchical, typed key-value service the hv hosts (the protocol and the
//! full client-visible contract are in [`hypercall_abi::store`]). Pure logic: no KVM, no threads,
//! no guest memory. The plumbing copies a slot out of a domain's store ring, calls
//! [`Store::handle_slot`] (or [`Store::handle`] with a decoded request), puts the reply on the
//! ring, and routes each [`WatchFire`] to its domain: to that domain's [`EventQueue`] for a guest,
//! to the hv's own backends for [`DOMID_HV`].
//!
//! # Semantics
//!
//! - **Tree.** Initially `/`, `/local`, `/local/domain` and the hv's home
//!   `/local/domain/32752`, all owned by the hv with `others: None`. [`Store::add_domain`] creates
//!   `/local/domain/<id>` owned by the domain (`others: None`); [`Store::remove_domain`] removes it
//!   with its subtree, drops the domain's watches, gives nodes it owned elsewhere to the hv, and
//!   deletes ACL entries naming it (so a later domain with the same id inherits nothing).
//! - **Hierarchy.** `Write` and `Mkdir` create missing parents; `Read`, `List`, `GetPerms`,
//!   `SetPerms`, `Remove` of a missing node are `NoEntry`; `Mkdir` of an existing node is `Exists`
//!   (`Denied` if the caller cannot read it). `Remove` removes the whole subtree; `Remove` of `/`,
//!   `/local`, `/local/domain` is `Denied` for everyone, and of a live domain's home for guests.
//!   `Read` of a node without a value answers `Ok`.
//! - **Permissions.** Read (write) needs ownership, or `others` or the caller's ACL entry granting
//!   read (write); only the node's own perms count. Creating needs write on the nearest existing
//!   ancestor, and every created node (parents included) inherits that ancestor's perms, owner
//!   included. `GetPerms` needs read, `SetPerms` ownership, and only the hv may change an owner.
//!   The hv ([`DOMID_HV`]) may do anything; a request from a domain that was not added is
//!   `Denied`.
//! - **Device states.** A guest writing over a `State` value must write a `State` reachable by
//!   [`DeviceState::can_move_to`], else `Invalid`. The hv is exempt.
//! - **Quotas.** Nodes count against their owner. A guest request that would create nodes owned by
//!   a domain past [`MAX_NODES_PER_DOMAIN`], or by the hv past [`MAX_NODES_HV`], is `NoSpace` and
//!   creates nothing. A guest's watch past [`MAX_WATCHES_PER_DOMAIN`] is `Busy`. The hv's own
//!   requests are never refused for quota (but still counted).
//! - **Watches.** `Watch` (path need not exist, no permission needed; duplicate `(path, token)` is
//!   `Exists`) fires once at once, then on every write, mkdir, perms change or removal of the
//!   watched node or a descendant (event path: the changed node), and on the removal of an
//!   ancestor (event path: the watched path, if the watched node existed). A fire reaches the
//!   watcher only if it can read the changed node: after the change for a write or perms change,
//!   before it for a removal. Each operation fires a watch at most once; fires come in watch
//!   registration order. `Unwatch` of an unknown `(path, token)` is `NoEntry`.
//! - **Check order.** Validation (`Invalid`, `TooBig`), existence (`NoEntry`, `Exists`),
//!   permission (`Denied`), then quota (`NoSpace`, `Busy`). A failed request changes nothing.
//!
//! # Events
//!
//! The ring pairs each response with a request, so a guest receives watch events only in event
//! credits it posts ([`hypercall_abi::store`], §1). [`EventQueue`] holds a domain's pending
//! events and credits: identical pending events (same path and token) coalesce, and past
//! [`MAX_QUEUED_EVENTS`] new events are dropped and counted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hypercall_abi::store::{
    components, encode_response, home_path, is_in_subtree, parent, Perms, Request, Response,
    StoreError, StoreSlot, Value, LIST_MAX, LOCAL, LOCAL_DOMAIN, MAX_NODES_HV,
    MAX_NODES_PER_DOMAIN, MAX_WATCHES_PER_DOMAIN, PROTECTED, STORE_PAYLOAD_MAX,
};
use hypercall_abi::{DomId, DOMID_HV};

/// The most watch events an [`EventQueue`] holds; further ones are dropped.
pub const MAX_QUEUED_EVENTS: usize = 256;

/// A watch that fired: tell domain `domid` that `path` changed, with the watch's `token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchFire {
    /// The domain that registered the watch.
    pub domid: DomId,
    /// The node that changed (see the module documentation).
    pub path: String,
    /// The watch's token.
    pub token: u32,
}

impl WatchFire {
    /// The watch event slot for this fire.
    pub fn to_slot(&self) -> Result<StoreSlot, StoreError> {
        StoreSlot::watch_event(&self.path, self.token)
    }
}

pub use hypercall_abi::store::OwnedValue;

/// An owned [`Response`], as [`Store::handle`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBuf {
    /// [`Response::Ok`].
    Ok,
    /// [`Response::Value`].
    Value(OwnedValue),
    /// [`Response::List`]; the store never puts more than [`LIST_MAX`] names, nor more than fit
    /// in a slot.
    List {
        /// Child names.
        names: Vec<String>,
        /// Offset of the next page.
        next: Option<u32>,
    },
    /// [`Response::Perms`].
    Perms(Perms),
    /// [`Response::Error`].
    Error(StoreError),
    /// [`Response::WatchEvent`].
    WatchEvent {
        /// The changed node.
        path: String,
        /// The watch's token.
        token: u32,
    },
}

impl ResponseBuf {
    /// Borrows it as a [`Response`] (a `List` keeps at most its first [`LIST_MAX`] names).
    pub fn as_response(&self) -> Response<'_> {
        match self {
            ResponseBuf::Ok => Response::Ok,
            ResponseBuf::Value(v) => Response::Value(v.as_value()),
            ResponseBuf::List { names, next } => Response::List {
                names: names.iter().take(LIST_MAX).map(String::as_str).collect(),
                next: *next,
            },
            ResponseBuf::Perms(p) => Response::Perms(p.clone()),
            ResponseBuf::Error(e) => Response::Error(*e),
            ResponseBuf::WatchEvent { path, token } => Response::WatchEvent {
                path,
                token: *token,
            },
        }
    }

    /// Encodes it into `buf`; returns the length (`TooBig` if it does not fit).
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, StoreError> {
        encode_response(&self.as_response(), buf)
    }

    /// The response slot answering request `req_id` (`flags` 0). A response that does not fit
    /// (never one the store produced) becomes `Error(TooBig)`.
    pub fn to_slot(&self, req_id: u32) -> StoreSlot {
        StoreSlot::response(req_id, &self.as_response()).unwrap_or_else(|e| {
            let mut s = StoreSlot::ZERO;
            s.req_id = req_id;
            // Two bytes: always fits.
            s.len = encode_response(&Response::Error(e), &mut s.data).unwrap_or(0) as u16;
            s
        })
    }
}

/// What to do with a slot a guest produced ([`Store::handle_slot`]).
// Returned by value straight to the ring code; boxing the slot would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotReply {
    /// Put this response on the ring.
    Reply(StoreSlot),
    /// The slot is an event credit: add it to the domain's [`EventQueue`]
    /// ([`EventQueue::add_credit`]); it is answered later by an event.
    Credit,
}

#[derive(Clone, Debug)]
struct Node {
    value: Option<OwnedValue>,
    perms: Perms,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn new(perms: Perms) -> Node {
        Node {
            value: None,
            perms,
            children: BTreeMap::new(),
        }
    }

    /// Calls `f` on this node and every descendant.
    fn walk_mut(&mut self, f: &mut impl FnMut(&mut Node)) {
        f(self);
        for c in self.children.values_mut() {
            c.walk_mut(f);
        }
    }

    fn walk(&self, f: &mut impl FnMut(&Node)) {
        f(self);
        for c in self.children.values() {
            c.walk(f);
        }
    }
}

#[derive(Clone, Debug)]
struct Watch {
    domid: DomId,
    path: String,
    token: u32,
}

/// The store: the node tree, the live domains, per-owner node counts and the watches.
#[derive(Debug)]
pub struct Store {
    root: Node,
    domains: BTreeSet<DomId>,
    owned: BTreeMap<DomId, u32>,
    watches: Vec<Watch>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

type Handled = Result<(ResponseBuf, Vec<WatchFire>), StoreError>;

impl Store {
    /// A store holding `/`, `/local`, `/local/domain` and the hv's home, all the hv's.
    pub fn new() -> Store {
        let mut s = Store {
            root: Node::new(Perms::owned_by(DOMID_HV)),
            domains: BTreeSet::new(),
            owned: BTreeMap::new(),
            watches: Vec::new(),
        };
        s.owned.insert(DOMID_HV, 1);
        for p in [LOCAL, LOCAL_DOMAIN, home_path(DOMID_HV).as_str()] {
            s.create(p, Perms::owned_by(DOMID_HV));
        }
        s
    }

    /// Registers domain `domid` and creates its home `/local/domain/<domid>`, owned by it.
    /// `Invalid` for an id of `0x7ff0` or more, `Exists` if the domain or its home exists.
    /// Returns the watches that fire (those on the home or its ancestors).
    pub fn add_domain(&mut self, domid: DomId) -> Result<Vec<WatchFire>, StoreError> {
        if domid >= DOMID_HV {
            return Err(StoreError::Invalid);
        }
        let home = home_path(domid);
        if self.domains.contains(&domid) || self.node(&home).is_some() {
            return Err(StoreError::Exists);
        }
        self.create(&home, Perms::owned_by(domid));
        self.domains.insert(domid);
        Ok(self.fires_for_change(&home))
    }

    /// Forgets domain `domid`: drops its watches, removes its home subtree, gives the nodes it
    /// owns elsewhere to the hv and deletes ACL entries naming it. Returns the watches of other
    /// domains that fire on the removal of its home. Nothing happens for an unknown domain.
    pub fn remove_domain(&mut self, domid: DomId) -> Vec<WatchFire> {
        if !self.domains.remove(&domid) {
            return Vec::new();
        }
        self.watches.retain(|w| w.domid != domid);
        let home = home_path(domid);
        let fires = if self.node(&home).is_some() {
            let f = self.fires_for_removal(&home);
            self.detach(&home);
            f
        } else {
            Vec::new()
        };
        let mut moved = 0;
        self.root.walk_mut(&mut |n| {
            if n.perms.owner == domid {
                n.perms.owner = DOMID_HV;
                moved += 1;
            }
            n.perms.acl.retain(|(d, _)| *d != domid);
        });
        self.owned.remove(&domid);
        *self.owned.entry(DOMID_HV).or_default() += moved;
        fires
    }

    /// Whether `domid` was added and not removed.
    pub fn has_domain(&self, domid: DomId) -> bool {
        self.domains.contains(&domid)
    }

    /// The number of nodes `domid` owns (its quota use).
    pub fn node_count(&self, domid: DomId) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// The number of watches `domid` holds.
    pub fn watch_count(&self, domid: DomId) -> u32 {
        self.watches.iter().filter(|w| w.domid == domid).count() as u32
    }

    /// Serves one slot a guest produced (the caller passes its private copy of the slot): an
    /// event credit gives [`SlotReply::Credit`]; anything else is decoded, validated and
    /// handled, and answered with the request's `req_id`.
    pub fn handle_slot(&mut self, caller: DomId, slot: &StoreSlot) -> (SlotReply, Vec<WatchFire>) {
        if slot.is_event_credit() {
            return (SlotReply::Credit, Vec::new());
        }
        let (resp, fires) = match slot.decode_request() {
            Ok(req) => self.handle(caller, &req),
            Err(e) => (ResponseBuf::Error(e), Vec::new()),
        };
        (SlotReply::Reply(resp.to_slot(slot.req_id)), fires)
    }

    /// Serves one request from `caller` (a domain, or [`DOMID_HV`]). Returns the response and
    /// the watches that fire, in order. A failed request changes nothing and fires nothing.
    pub fn handle(&mut self, caller: DomId, req: &Request<'_>) -> (ResponseBuf, Vec<WatchFire>) {
        match self.try_handle(caller, req) {
            Ok(r) => r,
            Err(e) => (ResponseBuf::Error(e), Vec::new()),
        }
    }

    fn try_handle(&mut self, caller: DomId, req: &Request<'_>) -> Handled {
        if caller != DOMID_HV && !self.domains.contains(&caller) {
            return Err(StoreError::Denied);
        }
        req.validate()?;
        match req {
            Request::Read { path } => {
                let n = self.readable(caller, path)?;
                let r = match &n.value {
                    Some(v) => ResponseBuf::Value(v.clone()),
                    None => ResponseBuf::Ok,
                };
                Ok((r, Vec::new()))
            }
            Request::Write { path, value } => self.write(caller, path, Some(value)),
            Request::Mkdir { path } => self.write(caller, path, None),
            Request::List { path, offset } => {
                let n = self.readable(caller, path)?;
                Ok((list_page(n, *offset), Vec::new()))
            }
            Request::Remove { path } => self.remove(caller, path),
            Request::Watch { path, token } => self.watch(caller, path, *token),
            Request::Unwatch { path, token } => {
                let i = self
                    .watches
                    .iter()
                    .position(|w| w.domid == caller && w.path == *path && w.token == *token)
                    .ok_or(StoreError::NoEntry)?;
                self.watches.remove(i);
                Ok((ResponseBuf::Ok, Vec::new()))
            }
            Request::GetPerms { path } => {
                let n = self.readable(caller, path)?;
                Ok((ResponseBuf::Perms(n.perms.clone()), Vec::new()))
            }
            Request::SetPerms { path, perms } => self.set_perms(caller, path, perms),
        }
    }

    fn node(&self, path: &str) -> Option<&Node> {
        let mut n = &self.root;
        for c in components(path) {
            n = n.children.get(c)?;
        }
        Some(n)
    }

    fn node_mut(&mut self, path: &str) -> Option<&mut Node> {
        let mut n = &mut self.root;
        for c in components(path) {
            n = n.children.get_mut(c)?;
        }
        Some(n)
    }

    /// The node at `path` if it exists (`NoEntry`) and `caller` may read it (`Denied`).
    fn readable(&self, caller: DomId, path: &str) -> Result<&Node, StoreError> {
        let n = self.node(path).ok_or(StoreError::NoEntry)?;
        if n.perms.can_read(caller) {
            Ok(n)
        } else {
            Err(StoreError::Denied)
        }
    }

    /// The deepest existing node on the way to `path`, and how many components of `path` it
    /// covers.
    fn nearest(&self, path: &str) -> (&Node, usize) {
        let mut n = &self.root;
        let mut depth = 0;
        for c in components(path) {
            match n.children.get(c) {
                Some(child) => {
                    n = child;
                    depth += 1;
                }
                None => break,
            }
        }
        (n, depth)
    }

    /// Creates the missing nodes of `path` with `perms`, counting them against its owner.
    /// Returns the node at `path`.
    fn create(&mut self, path: &str, perms: Perms) -> &mut Node {
        let owner = perms.owner;
        let mut created = 0;
        let mut n = &mut self.root;
        for c in components(path) {
            n = n.children.entry(c.to_owned()).or_insert_with(|| {
                created += 1;
                Node::new(perms.clone())
            });
        }
        *self.owned.entry(owner).or_default() += created;
        n
    }

    /// Unlinks the (existing, non-root) subtree at `path` and uncounts its nodes.
    fn detach(&mut self, path: &str) {
        let Some(name) = components(path).last() else {
            return;
        };
        let Some(removed) = parent(path)
            .and_then(|p| self.node_mut(p))
            .and_then(|p| p.children.remove(name))
        else {
            return;
        };
        let owned = &mut self.owned;
        removed.walk(&mut |n| {
            if let Some(c) = owned.get_mut(&n.perms.owner) {
                *c = c.saturating_sub(1);
            }
        });
    }

    fn write(&mut self, caller: DomId, path: &str, value: Option<&Value<'_>>) -> Handled {
        let hv = caller == DOMID_HV;
        if let Some(n) = self.node(path) {
            match value {
                None if !n.perms.can_read(caller) => return Err(StoreError::Denied),
                None => return Err(StoreError::Exists),
                Some(_) if !n.perms.can_write(caller) => return Err(StoreError::Denied),
                Some(v) => {
                    if let (false, Some(OwnedValue::State(old))) = (hv, &n.value) {
                        if !matches!(v, Value::State(new) if old.can_move_to(*new)) {
                            return Err(StoreError::Invalid);
                        }
                    }
                }
            }
        } else {
            let (anc, depth) = self.nearest(path);
            if !anc.perms.can_write(caller) {
                return Err(StoreError::Denied);
            }
            let owner = anc.perms.owner;
            let new = (components(path).count() - depth) as u32;
            let limit = if owner == DOMID_HV {
                MAX_NODES_HV
            } else {
                MAX_NODES_PER_DOMAIN
            };
            if !hv && self.node_count(owner).saturating_add(new) > limit {
                return Err(StoreError::NoSpace);
            }
            let perms = anc.perms.clone();
            self.create(path, perms);
        }
        if let (Some(v), Some(n)) = (value, self.node_mut(path)) {
            n.value = Some(OwnedValue::from_value(v));
        }
        Ok((ResponseBuf::Ok, self.fires_for_change(path)))
    }

    fn is_live_home(&self, path: &str) -> bool {
        self.domains.iter().any(|d| home_path(*d).as_str() == path)
    }

    fn remove(&mut self, caller: DomId, path: &str) -> Handled {
        if PROTECTED.contains(&path) || (caller != DOMID_HV && self.is_live_home(path)) {
            return Err(StoreError::Denied);
        }
        let n = self.node(path).ok_or(StoreError::NoEntry)?;
        if !n.perms.can_write(caller) {
            return Err(StoreError::Denied);
        }
        let fires = self.fires_for_removal(path);
        self.detach(path);
        Ok((ResponseBuf::Ok, fires))
    }

    fn watch(&mut self, caller: DomId, path: &str, token: u32) -> Handled {
        if self
            .watches
            .iter()
            .any(|w| w.domid == caller && w.path == path && w.token == token)
        {
            return Err(StoreError::Exists);
        }
        if caller != DOMID_HV && self.watch_count(caller) >= MAX_WATCHES_PER_DOMAIN {
            return Err(StoreError::Busy);
        }
        self.watches.push(Watch {
            domid: caller,
            path: path.to_owned(),
            token,
        });
        let fire = WatchFire {
            domid: caller,
            path: path.to_owned(),
            token,
        };
        Ok((ResponseBuf::Ok, vec![fire]))
    }

    fn set_perms(&mut self, caller: DomId, path: &str, perms: &Perms) -> Handled {
        let n = self.node_mut(path).ok_or(StoreError::NoEntry)?;
        let old = n.perms.owner;
        if caller != DOMID_HV && (caller != old || perms.owner != old) {
            return Err(StoreError::Denied);
        }
        n.perms = perms.clone();
        if perms.owner != old {
            if let Some(c) = self.owned.get_mut(&old) {
                *c = c.saturating_sub(1);
            }
            *self.owned.entry(perms.owner).or_default() += 1;
        }
        Ok((ResponseBuf::Ok, self.fires_for_change(path)))
    }

    /// Fires for a write, mkdir or perms change of the (existing) node at `path`.
    fn fires_for_change(&self, path: &str) -> Vec<WatchFire> {
        let Some(n) = self.node(path) else {
            return Vec::new();
        };
        self.watches
            .iter()
            .filter(|w| is_in_subtree(path, &w.path) && n.perms.can_read(w.domid))
            .map(|w| WatchFire {
                domid: w.domid,
                path: path.to_owned(),
                token: w.token,
            })
            .collect()
    }

    /// Fires for the removal of the subtree at `path`, computed before it is removed.
    fn fires_for_removal(&self, path: &str) -> Vec<WatchFire> {
        let mut fires = Vec::new();
        for w in &self.watches {
            let (event, node) = if is_in_subtree(path, &w.path) {
                (path, self.node(path))
            } else if is_in_subtree(&w.path, path) {
                (w.path.as_str(), self.node(&w.path))
            } else {
                continue;
            };
            if node.is_some_and(|n| n.perms.can_read(w.domid)) {
                fires.push(WatchFire {
                    domid: w.domid,
                    path: event.to_owned(),
                    token: w.token,
                });
            }
        }
        fires
    }
}

/// Whether a `List` response with these names fits in a slot.
fn list_fits(names: &[String], next: Option<u32>) -> bool {
    if names.len() > LIST_MAX {
        return false;
    }
    let resp = Response::List {
        names: names.iter().map(String::as_str).collect(),
        next,
    };
    encode_response(&resp, &mut [0u8; STORE_PAYLOAD_MAX]).is_ok()
}

/// The page of `n`'s children starting at `offset`: as many names as fit in a slot.
fn list_page(n: &Node, offset: u32) -> ResponseBuf {
    let total = n.children.len();
    let mut names = Vec::new();
    let mut next = None;
    for (i, name) in n.children.keys().enumerate().skip(offset as usize) {
        names.push(name.clone());
        let more = (i + 1 < total).then_some(i as u32 + 1);
        if !list_fits(&names, more) {
            names.pop();
            next = Some(i as u32);
            break;
        }
    }
    ResponseBuf::List { names, next }
}

/// A domain's pending watch events and the event credits it has posted (see the module
/// documentation).
#[derive(Clone, Debug, Default)]
pub struct EventQueue {
    events: VecDeque<(String, u32)>,
    credits: u32,
    dropped: u64,
}

impl EventQueue {
    /// An empty queue without credits.
    pub fn new() -> EventQueue {
        EventQueue::default()
    }

    /// Queues a fire (its `domid` is not looked at): ignored if the same path and token are
    /// already pending, dropped (and counted) if [`MAX_QUEUED_EVENTS`] are.
    pub fn push(&mut self, fire: WatchFire) {
        if self
            .events
            .iter()
            .any(|(p, t)| *t == fire.token && *p == fire.path)
        {
            return;
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.dropped += 1;
            return;
        }
        self.events.push_back((fire.path, fire.token));
    }

    /// Records an event credit the guest posted.
    pub fn add_credit(&mut self) {
        self.credits = self.credits.saturating_add(1);
    }

    /// The next watch event slot to put on the ring, if an event is pending and a credit is
    /// available (which it uses up).
    pub fn pop_slot(&mut self) -> Option<StoreSlot> {
        while self.credits > 0 {
            let (path, token) = self.events.pop_front()?;
            if let Ok(s) = StoreSlot::watch_event(&path, token) {
                self.credits -= 1;
                return Some(s);
            }
        }
        None
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Number of unused credits.
    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// Number of events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::store::DeviceState::{self, *};
    use hypercall_abi::store::{
        decode_request, decode_response, frontend_dir, join, Access, VALUE_MAX,
    };
    use hypercall_abi::Errno;
    use proptest::prelude::*;

    const HV: DomId = DOMID_HV;

    fn store(doms: &[DomId]) -> Store {
        let mut s = Store::new();
        for &d in doms {
            s.add_domain(d).unwrap();
        }
        s
    }

    fn req(s: &mut Store, caller: DomId, r: Request<'_>) -> Result<ResponseBuf, StoreError> {
        match s.handle(caller, &r).0 {
            ResponseBuf::Error(e) => Err(e),
            ok => Ok(ok),
        }
    }

    fn write(s: &mut Store, caller: DomId, path: &str, v: Value<'_>) -> Result<(), StoreError> {
        req(s, caller, Request::Write { path, value: v }).map(|_| ())
    }

    fn read(s: &mut Store, caller: DomId, path: &str) -> Result<ResponseBuf, StoreError> {
        req(s, caller, Request::Read { path })
    }

    fn fires(s: &mut Store, caller: DomId, r: Request<'_>) -> Vec<(DomId, String, u32)> {
        let (resp, f) = s.handle(caller, &r);
        assert!(!matches!(resp, ResponseBuf::Error(_)), "{r:?}: {resp:?}");
        f.into_iter().map(|f| (f.domid, f.path, f.token)).collect()
    }

    fn list_all(s: &mut Store, caller: DomId, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            match req(s, caller, Request::List { path, offset }).unwrap() {
                ResponseBuf::List { names, next } => {
                    assert!(!names.is_empty() || next.is_none());
                    out.extend(names);
                    match next {
                        Some(n) => offset = n,
                        None => return out,
                    }
                }
                r => panic!("{r:?}"),
            }
        }
    }

    /// Recounts ownership from the tree.
    fn recount(s: &Store) -> BTreeMap<DomId, u32> {
        let mut m = BTreeMap::new();
        s.root
            .walk(&mut |n| *m.entry(n.perms.owner).or_insert(0) += 1);
        m
    }

    fn check_counts(s: &Store) {
        let want = recount(s);
        for (d, c) in &s.owned {
            assert_eq!(want.get(d).copied().unwrap_or(0), *c, "domain {d}");
        }
        for (d, c) in &want {
            assert_eq!(s.node_count(*d), *c, "domain {d}");
        }
    }

    #[test]
    fn initial_tree_and_homes() {
        let mut s = store(&[1]);
        assert_eq!(
            list_all(&mut s, HV, "/local/domain"),
            ["1", "32752"].map(String::from)
        );
        let p = match req(
            &mut s,
            HV,
            Request::GetPerms {
                path: "/local/domain/1",
            },
        ) {
            Ok(ResponseBuf::Perms(p)) => p,
            r => panic!("{r:?}"),
        };
        assert_eq!(p, Perms::owned_by(1));
        assert_eq!(s.node_count(1), 1);
        assert_eq!(s.add_domain(1), Err(StoreError::Exists));
        assert_eq!(s.add_domain(HV), Err(StoreError::Invalid));
        assert_eq!(s.add_domain(0xffff), Err(StoreError::Invalid));
        // The domain cannot read the tree above its home.
        assert_eq!(read(&mut s, 1, "/local"), Err(StoreError::Denied));
        assert_eq!(read(&mut s, 1, "/local/domain/1"), Ok(ResponseBuf::Ok));
        // An unknown caller gets nothing.
        assert_eq!(read(&mut s, 9, "/"), Err(StoreError::Denied));
        check_counts(&s);
    }

    #[test]
    fn read_write_mkdir_remove() {
        let mut s = store(&[1]);
        let home = "/local/domain/1";
        write(&mut s, 1, "/local/domain/1/a/b/c", Value::U64(7)).unwrap();
        assert_eq!(
            read(&mut s, 1, "/local/domain/1/a/b/c"),
            Ok(ResponseBuf::Value(OwnedValue::U64(7)))
        );
        // Created parents exist, have no value, and inherit the home's perms.
        assert_eq!(read(&mut s, 1, "/local/domain/1/a/b"), Ok(ResponseBuf::Ok));
        assert_eq!(
            req(
                &mut s,
                HV,
                Request::GetPerms {
                    path: "/local/domain/1/a"
                }
            ),
            Ok(ResponseBuf::Perms(Perms::owned_by(1)))
        );
        assert_eq!(s.node_count(1), 4);
        // Overwrite with another type.
        write(&mut s, 1, "/local/domain/1/a/b/c", Value::Str("x")).unwrap();
        assert_eq!(
            read(&mut s, 1, "/local/domain/1/a/b/c"),
            Ok(ResponseBuf::Value(OwnedValue::Str("x".into())))
        );
        for v in [
            Value::Bool(true),
            Value::I64(-3),
            Value::Bytes(&[1, 2, 3]),
            Value::State(Initialising),
        ] {
            write(&mut s, 1, "/local/domain/1/v", v).unwrap();
            assert_eq!(
                read(&mut s, 1, "/local/domain/1/v"),
                Ok(ResponseBuf::Value(OwnedValue::from_value(&v)))
            );
            s.handle(
                1,
                &Request::Remove {
                    path: "/local/domain/1/v",
                },
            );
        }
        assert_eq!(
            read(&mut s, 1, "/local/domain/1/nope"),
            Err(StoreError::NoEntry)
        );
        // Mkdir.
        req(
            &mut s,
            1,
            Request::Mkdir {
                path: "/local/domain/1/d/e",
            },
        )
        .unwrap();
        assert_eq!(read(&mut s, 1, "/local/domain/1/d/e"), Ok(ResponseBuf::Ok));
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Mkdir {
                    path: "/local/domain/1/d"
                }
            ),
            Err(StoreError::Exists)
        );
        // Remove takes the subtree.
        req(
            &mut s,
            1,
            Request::Remove {
                path: "/local/domain/1/a",
            },
        )
        .unwrap();
        assert_eq!(
            read(&mut s, 1, "/local/domain/1/a/b/c"),
            Err(StoreError::NoEntry)
        );
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Remove {
                    path: "/local/domain/1/a"
                }
            ),
            Err(StoreError::NoEntry)
        );
        assert_eq!(s.node_count(1), 3);
        // Protected nodes and homes.
        for p in ["/", "/local", "/local/domain"] {
            assert_eq!(
                req(&mut s, HV, Request::Remove { path: p }),
                Err(StoreError::Denied)
            );
        }
        assert_eq!(
            req(&mut s, 1, Request::Remove { path: home }),
            Err(StoreError::Denied)
        );
        // Bad paths and values.
        assert_eq!(
            read(&mut s, 1, "/local/domain/1/"),
            Err(StoreError::Invalid)
        );
        assert_eq!(read(&mut s, 1, "relative"), Err(StoreError::Invalid));
        let long = "x".repeat(VALUE_MAX + 1);
        assert_eq!(
            write(&mut s, 1, "/local/domain/1/big", Value::Str(&long)),
            Err(StoreError::TooBig)
        );
        check_counts(&s);
    }

    #[test]
    fn list_pagination() {
        let mut s = store(&[1]);
        let mut want = Vec::new();
        for i in 0..40 {
            let name = format!("child-{i:02}-{}", "n".repeat(i % 7 * 10));
            let p = format!("/local/domain/1/dir/{name}");
            write(&mut s, 1, &p, Value::U64(i as u64)).unwrap();
            want.push(name);
        }
        want.sort();
        assert_eq!(list_all(&mut s, 1, "/local/domain/1/dir"), want);
        // Every page fits and holds at most 16.
        let mut offset = 0;
        let mut pages = 0;
        loop {
            let r = req(
                &mut s,
                1,
                Request::List {
                    path: "/local/domain/1/dir",
                    offset,
                },
            )
            .unwrap();
            r.to_slot(1).decode_response().unwrap();
            let mut buf = [0u8; STORE_PAYLOAD_MAX];
            r.encode(&mut buf).unwrap();
            pages += 1;
            match r {
                ResponseBuf::List { names, next } => {
                    assert!(names.len() <= LIST_MAX);
                    match next {
                        Some(n) => offset = n,
                        None => break,
                    }
                }
                _ => unreachable!(),
            }
        }
        assert!(pages >= 3);
        // Exactly 16 short names: one page, no next.
        for i in 0..16 {
            write(
                &mut s,
                1,
                &format!("/local/domain/1/e/{i:02}"),
                Value::Bool(true),
            )
            .unwrap();
        }
        match req(
            &mut s,
            1,
            Request::List {
                path: "/local/domain/1/e",
                offset: 0,
            },
        )
        .unwrap()
        {
            ResponseBuf::List { names, next } => assert_eq!((names.len(), next), (16, None)),
            r => panic!("{r:?}"),
        }
        match req(
            &mut s,
            1,
            Request::List {
                path: "/local/domain/1/e",
                offset: 10,
            },
        )
        .unwrap()
        {
            ResponseBuf::List { names, next } => assert_eq!((names.len(), next), (6, None)),
            r => panic!("{r:?}"),
        }
        // Past the end, and a leaf.
        assert_eq!(
            req(
                &mut s,
                1,
                Request::List {
                    path: "/local/domain/1/e",
                    offset: u32::MAX
                }
            ),
            Ok(ResponseBuf::List {
                names: vec![],
                next: None
            })
        );
        assert_eq!(
            req(
                &mut s,
                1,
                Request::List {
                    path: "/local/domain/1/e/00",
                    offset: 0
                }
            ),
            Ok(ResponseBuf::List {
                names: vec![],
                next: None
            })
        );
        assert_eq!(
            req(
                &mut s,
                1,
                Request::List {
                    path: "/local/domain/1/x",
                    offset: 0
                }
            ),
            Err(StoreError::NoEntry)
        );
        // A 17-name directory has two pages.
        write(&mut s, 1, "/local/domain/1/e/16", Value::Bool(true)).unwrap();
        match req(
            &mut s,
            1,
            Request::List {
                path: "/local/domain/1/e",
                offset: 0,
            },
        )
        .unwrap()
        {
            ResponseBuf::List { names, next } => assert_eq!((names.len(), next), (16, Some(16))),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn permissions() {
        let mut s = store(&[1, 2]);
        write(&mut s, 1, "/local/domain/1/secret", Value::U64(1)).unwrap();
        // Writing into another domain's home, or outside any home.
        assert_eq!(
            write(&mut s, 2, "/local/domain/1/x", Value::U64(1)),
            Err(StoreError::Denied)
        );
        assert_eq!(
            write(&mut s, 2, "/local/domain/1/secret", Value::U64(1)),
            Err(StoreError::Denied)
        );
        assert_eq!(
            write(&mut s, 2, "/tool/x", Value::U64(1)),
            Err(StoreError::Denied)
        );
        assert_eq!(
            write(&mut s, 2, "/local/domain/3/x", Value::U64(1)),
            Err(StoreError::Denied)
        );
        assert_eq!(
            req(
                &mut s,
                2,
                Request::Mkdir {
                    path: "/local/domain/1/m"
                }
            ),
            Err(StoreError::Denied)
        );
        assert_eq!(
            req(
                &mut s,
                2,
                Request::Remove {
                    path: "/local/domain/1/secret"
                }
            ),
            Err(StoreError::Denied)
        );
        // Reading another's node without an ACL entry.
        assert_eq!(
            read(&mut s, 2, "/local/domain/1/secret"),
            Err(StoreError::Denied)
        );
        assert_eq!(
            req(
                &mut s,
                2,
                Request::GetPerms {
                    path: "/local/domain/1/secret"
                }
            ),
            Err(StoreError::Denied)
        );
        assert_eq!(
            req(
                &mut s,
                2,
                Request::List {
                    path: "/local/domain/1",
                    offset: 0
                }
            ),
            Err(StoreError::Denied)
        );
        // Mkdir of an existing unreadable node does not say it exists.
        assert_eq!(
            req(
                &mut s,
                2,
                Request::Mkdir {
                    path: "/local/domain/1/secret"
                }
            ),
            Err(StoreError::Denied)
        );
        // Only the owner sets perms.
        let mut p = Perms::owned_by(1);
        p.grant(2, Access::Read).unwrap();
        assert_eq!(
            req(
                &mut s,
                2,
                Request::SetPerms {
                    path: "/local/domain/1/secret",
                    perms: p.clone()
                }
            ),
            Err(StoreError::Denied)
        );
        req(
            &mut s,
            1,
            Request::SetPerms {
                path: "/local/domain/1/secret",
                perms: p.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            read(&mut s, 2, "/local/domain/1/secret"),
            Ok(ResponseBuf::Value(OwnedValue::U64(1)))
        );
        assert_eq!(
            req(
                &mut s,
                2,
                Request::GetPerms {
                    path: "/local/domain/1/secret"
                }
            ),
            Ok(ResponseBuf::Perms(p.clone()))
        );
        // Read is not write.
        assert_eq!(
            write(&mut s, 2, "/local/domain/1/secret", Value::U64(2)),
            Err(StoreError::Denied)
        );
        // Write by ACL; a node created below inherits the perms, owner included.
        p.grant(2, Access::ReadWrite).unwrap();
        req(
            &mut s,
            1,
            Request::SetPerms {
                path: "/local/domain/1/secret",
                perms: p.clone(),
            },
        )
        .unwrap();
        write(&mut s, 2, "/local/domain/1/secret", Value::U64(2)).unwrap();
        write(&mut s, 2, "/local/domain/1/secret/sub/leaf", Value::U64(3)).unwrap();
        assert_eq!(
            req(
                &mut s,
                2,
                Request::GetPerms {
                    path: "/local/domain/1/secret/sub/leaf"
                }
            ),
            Ok(ResponseBuf::Perms(p.clone()))
        );
        assert_eq!(s.node_count(1), 4);
        assert_eq!(s.node_count(2), 1);
        // `others` grants to everyone.
        req(
            &mut s,
            1,
            Request::SetPerms {
                path: "/local/domain/1",
                perms: Perms {
                    owner: 1,
                    others: Access::Read,
                    acl: Default::default(),
                },
            },
        )
        .unwrap();
        assert_eq!(read(&mut s, 2, "/local/domain/1"), Ok(ResponseBuf::Ok));
        // A guest cannot give a node away; the hv can.
        let other = Perms::owned_by(2);
        assert_eq!(
            req(
                &mut s,
                1,
                Request::SetPerms {
                    path: "/local/domain/1/secret",
                    perms: other.clone()
                }
            ),
            Err(StoreError::Denied)
        );
        req(
            &mut s,
            HV,
            Request::SetPerms {
                path: "/local/domain/1/secret",
                perms: other.clone(),
            },
        )
        .unwrap();
        assert_eq!(s.node_count(2), 2);
        assert_eq!(s.node_count(1), 3);
        // Bad perms: duplicate ACL entry, reserved owner.
        let mut dup = Perms::owned_by(2);
        dup.acl.push((1, Access::Read)).unwrap();
        dup.acl.push((1, Access::Write)).unwrap();
        assert_eq!(
            req(
                &mut s,
                2,
                Request::SetPerms {
                    path: "/local/domain/1/secret",
                    perms: dup
                }
            ),
            Err(StoreError::Invalid)
        );
        assert_eq!(
            req(
                &mut s,
                HV,
                Request::SetPerms {
                    path: "/",
                    perms: Perms::owned_by(0x7fff)
                }
            ),
            Err(StoreError::Invalid)
        );
        // The hv can do anything, anywhere.
        write(&mut s, HV, "/tool/hv/x", Value::U64(1)).unwrap();
        write(&mut s, HV, "/local/domain/2/from-hv", Value::U64(1)).unwrap();
        assert_eq!(
            read(&mut s, HV, "/local/domain/1/secret/sub/leaf").map(|_| ()),
            Ok(())
        );
        req(
            &mut s,
            HV,
            Request::Remove {
                path: "/local/domain/1/secret",
            },
        )
        .unwrap();
        check_counts(&s);
    }

    #[test]
    fn device_state_transitions() {
        let mut s = store(&[1]);
        let p = "/local/domain/1/device/vbd/0/state";
        write(&mut s, HV, p, Value::State(Initialising)).unwrap();
        write(&mut s, 1, p, Value::State(Initialised)).unwrap();
        write(&mut s, 1, p, Value::State(Initialised)).unwrap();
        assert_eq!(
            write(&mut s, 1, p, Value::State(InitWait)),
            Err(StoreError::Invalid)
        );
        assert_eq!(write(&mut s, 1, p, Value::U64(4)), Err(StoreError::Invalid));
        write(&mut s, 1, p, Value::State(Connected)).unwrap();
        write(&mut s, 1, p, Value::State(Closing)).unwrap();
        assert_eq!(
            write(&mut s, 1, p, Value::State(Connected)),
            Err(StoreError::Invalid)
        );
        // The hv is not bound; removing resets.
        write(&mut s, HV, p, Value::State(Connected)).unwrap();
        req(&mut s, 1, Request::Remove { path: p }).unwrap();
        write(&mut s, 1, p, Value::State(Connected)).unwrap();
    }

    #[test]
    fn node_quota() {
        let mut s = store(&[1, 2]);
        // The home counts: 255 more nodes fit.
        for i in 0..MAX_NODES_PER_DOMAIN - 1 {
            write(&mut s, 1, &format!("/local/domain/1/n{i}"), Value::U64(0)).unwrap();
        }
        assert_eq!(s.node_count(1), MAX_NODES_PER_DOMAIN);
        assert_eq!(
            write(&mut s, 1, "/local/domain/1/more", Value::U64(0)),
            Err(StoreError::NoSpace)
        );
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Mkdir {
                    path: "/local/domain/1/more"
                }
            ),
            Err(StoreError::NoSpace)
        );
        // Overwriting needs no quota.
        write(&mut s, 1, "/local/domain/1/n0", Value::U64(1)).unwrap();
        // A multi-node write is all or nothing.
        req(
            &mut s,
            1,
            Request::Remove {
                path: "/local/domain/1/n0",
            },
        )
        .unwrap();
        assert_eq!(
            write(&mut s, 1, "/local/domain/1/a/b", Value::U64(0)),
            Err(StoreError::NoSpace)
        );
        assert_eq!(
            read(&mut s, 1, "/local/domain/1/a"),
            Err(StoreError::NoEntry)
        );
        write(&mut s, 1, "/local/domain/1/a", Value::U64(0)).unwrap();
        // Other domains are unaffected; the hv is exempt.
        write(&mut s, 2, "/local/domain/2/x", Value::U64(0)).unwrap();
        write(&mut s, HV, "/local/domain/1/by-hv", Value::U64(0)).unwrap();
        assert_eq!(s.node_count(1), MAX_NODES_PER_DOMAIN + 1);
        // Removing frees quota.
        for i in 1..10 {
            req(
                &mut s,
                1,
                Request::Remove {
                    path: &format!("/local/domain/1/n{i}"),
                },
            )
            .unwrap();
        }
        write(&mut s, 1, "/local/domain/1/again", Value::U64(0)).unwrap();
        check_counts(&s);
    }

    #[test]
    fn watch_quota_and_unwatch() {
        let mut s = store(&[1]);
        for t in 0..MAX_WATCHES_PER_DOMAIN {
            req(
                &mut s,
                1,
                Request::Watch {
                    path: "/local/domain/1",
                    token: t,
                },
            )
            .unwrap();
        }
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Watch {
                    path: "/local/domain/1",
                    token: 99
                }
            ),
            Err(StoreError::Busy)
        );
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Watch {
                    path: "/local/domain/1",
                    token: 0
                }
            ),
            Err(StoreError::Exists)
        );
        assert_eq!(StoreError::Busy.errno(), Errno::EBUSY);
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Unwatch {
                    path: "/local/domain/1",
                    token: 99
                }
            ),
            Err(StoreError::NoEntry)
        );
        assert_eq!(
            req(
                &mut s,
                1,
                Request::Unwatch {
                    path: "/local",
                    token: 0
                }
            ),
            Err(StoreError::NoEntry)
        );
        req(
            &mut s,
            1,
            Request::Unwatch {
                path: "/local/domain/1",
                token: 0,
            },
        )
        .unwrap();
        assert_eq!(s.watch_count(1), MAX_WATCHES_PER_DOMAIN - 1);
        req(
            &mut s,
            1,
            Request::Watch {
                path: "/local/domain/1",
                token: 99,
            },
        )
        .unwrap();
        // The hv has no watch quota.
        for t in 0..2 * MAX_WATCHES_PER_DOMAIN {
            req(
                &mut s,
                HV,
                Request::Watch {
                    path: "/",
                    token: t,
                },
            )
            .unwrap();
        }
    }

    #[test]
    fn watches_fire_on_descendants_only() {
        let mut s = store(&[1]);
        // Fires once at once, even on a missing path.
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Watch {
                    path: "/local/domain/1/dev",
                    token: 7
                }
            ),
            [(1, "/local/domain/1/dev".to_string(), 7)]
        );
        fires(
            &mut s,
            1,
            Request::Watch {
                path: "/local/domain/1/dev/a",
                token: 8,
            },
        );
        fires(
            &mut s,
            1,
            Request::Watch {
                path: "/local/domain/1/other",
                token: 9,
            },
        );
        // A write deep below fires the ancestors' watches, once each, in registration order,
        // with the written path.
        let p = "/local/domain/1/dev/a/b";
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Write {
                    path: p,
                    value: Value::U64(1)
                }
            ),
            [(1, p.to_string(), 7), (1, p.to_string(), 8)]
        );
        // Unrelated paths, including a sibling sharing a prefix, do not fire.
        assert!(fires(
            &mut s,
            1,
            Request::Write {
                path: "/local/domain/1/devx",
                value: Value::U64(1)
            }
        )
        .is_empty());
        assert!(fires(
            &mut s,
            1,
            Request::Write {
                path: "/local/domain/1/dev2/a",
                value: Value::U64(1)
            }
        )
        .is_empty());
        // A write to the watched node itself, a mkdir, a perms change.
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Mkdir {
                    path: "/local/domain/1/other/d"
                }
            ),
            [(1, "/local/domain/1/other/d".to_string(), 9)]
        );
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::SetPerms {
                    path: "/local/domain/1/dev/a",
                    perms: Perms::owned_by(1)
                }
            ),
            [
                (1, "/local/domain/1/dev/a".to_string(), 7),
                (1, "/local/domain/1/dev/a".to_string(), 8)
            ]
        );
        // Removing a subtree: watches above get the removed path, watches inside get their own.
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Remove {
                    path: "/local/domain/1/dev"
                }
            ),
            [
                (1, "/local/domain/1/dev".to_string(), 7),
                (1, "/local/domain/1/dev/a".to_string(), 8)
            ]
        );
        // A failed request fires nothing.
        let (r, f) = s.handle(
            1,
            &Request::Remove {
                path: "/local/domain/1/dev",
            },
        );
        assert_eq!((r, f), (ResponseBuf::Error(StoreError::NoEntry), vec![]));
        // Unwatched: no more fires.
        fires(
            &mut s,
            1,
            Request::Unwatch {
                path: "/local/domain/1/other",
                token: 9,
            },
        );
        assert!(fires(
            &mut s,
            1,
            Request::Write {
                path: "/local/domain/1/other/d",
                value: Value::U64(1)
            }
        )
        .is_empty());
    }

    #[test]
    fn watch_fires_are_filtered_by_permission() {
        let mut s = store(&[1, 2]);
        fires(
            &mut s,
            2,
            Request::Watch {
                path: "/",
                token: 1,
            },
        );
        fires(
            &mut s,
            2,
            Request::Watch {
                path: "/local/domain/1/shared",
                token: 2,
            },
        );
        fires(
            &mut s,
            HV,
            Request::Watch {
                path: "/local/domain/1",
                token: 3,
            },
        );
        // Domain 2 cannot read domain 1's nodes: only the hv hears.
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Write {
                    path: "/local/domain/1/shared",
                    value: Value::U64(1)
                }
            ),
            [(HV, "/local/domain/1/shared".to_string(), 3)]
        );
        // Granting read makes the perms change itself visible, and later writes.
        let mut p = Perms::owned_by(1);
        p.grant(2, Access::Read).unwrap();
        let want = |t| (2, "/local/domain/1/shared".to_string(), t);
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::SetPerms {
                    path: "/local/domain/1/shared",
                    perms: p
                }
            ),
            [
                want(1),
                want(2),
                (HV, "/local/domain/1/shared".to_string(), 3)
            ]
        );
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Write {
                    path: "/local/domain/1/shared",
                    value: Value::U64(2)
                }
            )
            .len(),
            3
        );
        // Removal: heard by those who could read the node before.
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Remove {
                    path: "/local/domain/1/shared"
                }
            ),
            [
                want(1),
                want(2),
                (HV, "/local/domain/1/shared".to_string(), 3)
            ]
        );
        write(&mut s, 1, "/local/domain/1/private", Value::U64(1)).unwrap();
        assert_eq!(
            fires(
                &mut s,
                1,
                Request::Remove {
                    path: "/local/domain/1/private"
                }
            ),
            [(HV, "/local/domain/1/private".to_string(), 3)]
        );
        // A domain's creation is seen by the hv, not by domain 2 (it cannot read the new home).
        assert!(s.add_domain(3).unwrap().is_empty());
    }

    #[test]
    fn remove_domain_cleans_up() {
        let mut s = store(&[1, 2]);
        // Domain 2 is a backend: it watches domain 1's device, which grants it read.
        let front = frontend_dir(1, "vbd", 0).unwrap();
        let state = join(&front, "state").unwrap();
        req(&mut s, HV, Request::Mkdir { path: &front }).unwrap();
        let mut p = Perms::owned_by(1);
        p.grant(2, Access::Read).unwrap();
        req(
            &mut s,
            HV,
            Request::SetPerms {
                path: &front,
                perms: p,
            },
        )
        .unwrap();
        write(&mut s, HV, &state, Value::State(Initialising)).unwrap();
        fires(
            &mut s,
            2,
            Request::Watch {
                path: &state,
                token: 5,
            },
        );
        fires(
            &mut s,
            1,
            Request::Watch {
                path: "/local/domain/1",
                token: 6,
            },
        );
        // A node outside its home owned by domain 1, and an ACL entry naming it.
        write(&mut s, HV, "/tool/owned-by-1", Value::U64(0)).unwrap();
        req(
            &mut s,
            HV,
            Request::SetPerms {
                path: "/tool/owned-by-1",
                perms: Perms::owned_by(1),
            },
        )
        .unwrap();
        let mut acl = Perms::owned_by(2);
        acl.grant(1, Access::Read).unwrap();
        req(
            &mut s,
            HV,
            Request::SetPerms {
                path: "/local/domain/2",
                perms: acl,
            },
        )
        .unwrap();

        let f = s.remove_domain(1);
        assert_eq!(
            f,
            [WatchFire {
                domid: 2,
                path: state.to_string(),
                token: 5
            }]
        );
        assert!(!s.has_domain(1));
        assert_eq!(s.watch_count(1), 0);
        assert_eq!(s.node_count(1), 0);
        assert_eq!(
            read(&mut s, HV, "/local/domain/1"),
            Err(StoreError::NoEntry)
        );
        assert_eq!(
            req(
                &mut s,
                HV,
                Request::GetPerms {
                    path: "/tool/owned-by-1"
                }
            ),
            Ok(ResponseBuf::Perms(Perms::owned_by(HV)))
        );
        assert_eq!(
            req(
                &mut s,
                HV,
                Request::GetPerms {
                    path: "/local/domain/2"
                }
            ),
            Ok(ResponseBuf::Perms(Perms::owned_by(2)))
        );
        assert!(s.remove_domain(1).is_empty());
        check_counts(&s);
        // The id can be reused and starts clean.
        s.add_domain(1).unwrap();
        assert_eq!(s.node_count(1), 1);
        assert_eq!(read(&mut s, 1, "/tool/owned-by-1"), Err(StoreError::Denied));
        check_counts(&s);
    }

    #[test]
    fn slots_end_to_end() {
        let mut s = store(&[1]);
        let slot = StoreSlot::request(
            42,
            &Request::Write {
                path: "/local/domain/1/k",
                value: Value::Str("v"),
            },
        )
        .unwrap();
        let (r, _) = s.handle_slot(1, &slot);
        let SlotReply::Reply(out) = r else { panic!() };
        assert_eq!((out.req_id, out.flags), (42, 0));
        assert_eq!(out.decode_response(), Ok(Response::Ok));
        let slot = StoreSlot::request(
            43,
            &Request::Read {
                path: "/local/domain/1/k",
            },
        )
        .unwrap();
        let SlotReply::Reply(out) = s.handle_slot(1, &slot).0 else {
            panic!()
        };
        assert_eq!(out.decode_response(), Ok(Response::Value(Value::Str("v"))));
        // Garbage gets EINVAL with its req_id; a credit is a credit.
        let mut bad = StoreSlot::ZERO;
        bad.req_id = 44;
        bad.len = 3;
        bad.data[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        let SlotReply::Reply(out) = s.handle_slot(1, &bad).0 else {
            panic!()
        };
        assert_eq!(out.req_id, 44);
        assert_eq!(
            out.decode_response(),
            Ok(Response::Error(StoreError::Invalid))
        );
        assert_eq!(
            s.handle_slot(1, &StoreSlot::event_credit()).0,
            SlotReply::Credit
        );
        // Watch events through a queue.
        let mut q = EventQueue::new();
        let w = StoreSlot::request(
            45,
            &Request::Watch {
                path: "/local/domain/1",
                token: 3,
            },
        )
        .unwrap();
        for f in s.handle_slot(1, &w).1 {
            q.push(f);
        }
        let wr = StoreSlot::request(
            46,
            &Request::Write {
                path: "/local/domain/1/k",
                value: Value::U64(1),
            },
        )
        .unwrap();
        for _ in 0..3 {
            for f in s.handle_slot(1, &wr).1 {
                q.push(f);
            }
        }
        // Identical pending events coalesce.
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_slot(), None);
        q.add_credit();
        let e = q.pop_slot().unwrap();
        assert_eq!(
            e.decode_response(),
            Ok(Response::WatchEvent {
                path: "/local/domain/1",
                token: 3
            })
        );
        assert_eq!(q.pop_slot(), None);
        q.add_credit();
        q.add_credit();
        assert!(q.pop_slot().is_some());
        assert_eq!(q.pop_slot(), None);
        assert_eq!((q.credits(), q.is_empty()), (1, true));
        for i in 0..MAX_QUEUED_EVENTS + 5 {
            q.push(WatchFire {
                domid: 1,
                path: "/a".into(),
                token: i as u32,
            });
        }
        assert_eq!((q.len(), q.dropped()), (MAX_QUEUED_EVENTS, 5));
    }

    // ---- fuzz-ish ----

    #[derive(Clone, Debug)]
    enum OwnedReq {
        Read(String),
        Write(String, OwnedValue),
        Mkdir(String),
        List(String, u32),
        Remove(String),
        Watch(String, u32),
        Unwatch(String, u32),
        GetPerms(String),
        SetPerms(String, Perms),
    }

    impl OwnedReq {
        fn as_request(&self) -> Request<'_> {
            match self {
                OwnedReq::Read(p) => Request::Read { path: p },
                OwnedReq::Write(p, v) => Request::Write {
                    path: p,
                    value: v.as_value(),
                },
                OwnedReq::Mkdir(p) => Request::Mkdir { path: p },
                OwnedReq::List(p, o) => Request::List {
                    path: p,
                    offset: *o,
                },
                OwnedReq::Remove(p) => Request::Remove { path: p },
                OwnedReq::Watch(p, t) => Request::Watch { path: p, token: *t },
                OwnedReq::Unwatch(p, t) => Request::Unwatch { path: p, token: *t },
                OwnedReq::GetPerms(p) => Request::GetPerms { path: p },
                OwnedReq::SetPerms(p, perms) => Request::SetPerms {
                    path: p,
                    perms: perms.clone(),
                },
            }
        }
    }

    fn domid() -> impl Strategy<Value = DomId> {
        prop_oneof![0u16..4, Just(HV), Just(0x7fff)]
    }

    fn path() -> impl Strategy<Value = String> {
        let comp = prop_oneof![
            Just("local".to_string()),
            Just("domain".to_string()),
            Just("1".to_string()),
            Just("2".to_string()),
            Just("32752".to_string()),
            Just("device".to_string()),
            Just("state".to_string()),
            "[a-c]{1,2}",
            "[ -~]{0,3}",
        ];
        let prefix = prop_oneof![
            Just(""),
            Just("/local/domain/1"),
            Just("/local/domain/2"),
            Just("/local/domain/3"),
        ];
        prop_oneof![
            8 => (prefix, proptest::collection::vec(comp, 0..5)).prop_map(|(p, c)| {
                if p.is_empty() || !c.is_empty() {
                    format!("{p}/{}", c.join("/"))
                } else {
                    p.to_string()
                }
            }),
            1 => "[ -~]{0,140}",
        ]
    }

    fn value() -> impl Strategy<Value = OwnedValue> {
        prop_oneof![
            any::<bool>().prop_map(OwnedValue::Bool),
            any::<u64>().prop_map(OwnedValue::U64),
            any::<i64>().prop_map(OwnedValue::I64),
            "[a-z]{0,120}".prop_map(OwnedValue::Str),
            proptest::collection::vec(any::<u8>(), 0..120).prop_map(OwnedValue::Bytes),
            (0u8..7).prop_map(|v| OwnedValue::State(DeviceState::from_u8(v).unwrap())),
        ]
    }

    fn perms() -> impl Strategy<Value = Perms> {
        let access = (0u8..4).prop_map(|a| Access::new(a & 1 != 0, a & 2 != 0));
        (
            domid(),
            access.clone(),
            proptest::collection::vec((domid(), access), 0..4),
        )
            .prop_map(|(owner, others, acl)| Perms {
                owner,
                others,
                acl: acl.into_iter().collect(),
            })
    }

    fn request() -> impl Strategy<Value = OwnedReq> {
        prop_oneof![
            1 => path().prop_map(OwnedReq::Read),
            3 => (path(), value()).prop_map(|(p, v)| OwnedReq::Write(p, v)),
            1 => path().prop_map(OwnedReq::Mkdir),
            1 => (path(), 0u32..20).prop_map(|(p, o)| OwnedReq::List(p, o)),
            1 => path().prop_map(OwnedReq::Remove),
            1 => (path(), 0u32..3).prop_map(|(p, t)| OwnedReq::Watch(p, t)),
            1 => (path(), 0u32..3).prop_map(|(p, t)| OwnedReq::Unwatch(p, t)),
            1 => path().prop_map(OwnedReq::GetPerms),
            1 => (path(), perms()).prop_map(|(p, q)| OwnedReq::SetPerms(p, q)),
        ]
    }

    #[derive(Clone, Debug)]
    enum Op {
        Req(DomId, OwnedReq),
        Bytes(DomId, Vec<u8>),
        Add(DomId),
        RemoveDomain(DomId),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (domid(), request()).prop_map(|(d, r)| Op::Req(d, r)),
            2 => (domid(), proptest::collection::vec(any::<u8>(), 0..260))
                .prop_map(|(d, b)| Op::Bytes(d, b)),
            1 => domid().prop_map(Op::Add),
            1 => domid().prop_map(Op::RemoveDomain),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn random_requests_never_panic(ops in proptest::collection::vec(op(), 1..80)) {
            let mut s = store(&[1, 2]);
            for op in ops {
                let fires = match op {
                    Op::Req(d, r) => {
                        let (resp, fires) = s.handle(d, &r.as_request());
                        // Every response the store makes fits in a slot.
                        let mut buf = [0u8; STORE_PAYLOAD_MAX];
                        prop_assert!(resp.encode(&mut buf).is_ok(), "{:?}", resp);
                        fires
                    }
                    Op::Bytes(d, b) => {
                        let mut slot = StoreSlot::ZERO;
                        slot.req_id = 1;
                        let n = b.len().min(STORE_PAYLOAD_MAX);
                        slot.data[..n].copy_from_slice(&b[..n]);
                        slot.len = b.len() as u16;
                        s.handle_slot(d, &slot).1
                    }
                    Op::Add(d) => s.add_domain(d).unwrap_or_default(),
                    Op::RemoveDomain(d) => s.remove_domain(d),
                };
                for f in fires {
                    prop_assert!(f.to_slot().is_ok());
                    prop_assert!(f.domid == HV || s.has_domain(f.domid));
                }
                check_counts(&s);
                for d in 0..4 {
                    prop_assert!(s.watch_count(d) <= MAX_WATCHES_PER_DOMAIN);
                }
            }
        }
    }
}
