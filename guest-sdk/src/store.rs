//! A client of the store: the hierarchical, typed key-value service the hypervisor hosts, in
//! which domains find each other, publish ring references and event channels, and move their
//! devices through the [`DeviceState`]s (the protocol is [`hypercall_abi::store`]).
//!
//! The client speaks to the hypervisor over this domain's store ring (StartInfo's
//! `store_ring_gpa`, a [`FrontRing`] of [`StoreSlot`]s) and its event channel (`store_port`).
//! It connects on first use: initialises the ring and masks the store port, on which it then
//! waits with `sched_op(poll)`, clearing the port's pending bit itself.
//!
//! Each call sends one request (or, for [`list`], one per page), notifies the hypervisor when
//! the ring asks for it, and waits until the response carrying its request id arrives or the
//! request timeout ([`set_request_timeout`], 10 s by default) passes (`ETIMEDOUT`). Watch
//! events that arrive meanwhile are queued for [`wait_event`]. While this domain holds watches
//! the client keeps event credits posted ([`EVENT_CREDITS`]), and posts a new one for each
//! event it receives, as the protocol requires.
//!
//! A store error comes back as [`Error::Errno`] with the error's errno ([`StoreError::errno`]:
//! `NoEntry` is `ENOENT`, `Denied` is `EACCES`, ...). A response that is not a valid answer is
//! [`Error::BadResponse`]; a broken ring is [`Error::Ring`].
//!
//! **Call it from ordinary code (`main` and what it calls), never from an event handler**: a
//! call waits for the hypervisor, and a handler that interrupted another store call would find
//! the client busy (it then fails with `EBUSY` rather than deadlock).
//!
//! ```no_run
//! use guest_sdk::store::{self, OwnedValue, Value};
//!
//! let home = guest_sdk::abi::store::home_path(guest_sdk::start_info().unwrap().domid);
//! let key = format!("{home}/greeting");
//! store::write(&key, Value::Str("hello")).unwrap();
//! assert_eq!(store::read(&key).unwrap(), Some(OwnedValue::Str("hello".into())));
//! for name in store::list(&home).unwrap() {
//!     guest_sdk::println!("{home}/{name}");
//! }
//! ```

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use hypercall_abi::ring::FrontRing;
use hypercall_abi::store::{check_name, LOCAL_DOMAIN, STORE_RING_BYTES};
pub use hypercall_abi::store::{
    Access, DeviceState, Perms, Request, Response, StoreError, StoreSlot, Value,
};
use hypercall_abi::{DomId, Errno, Features, PAGE_SIZE};

use crate::events::{self, Port};
use crate::{sched, time, Error, Result};

/// The request timeout until [`set_request_timeout`] changes it: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT_NS: u64 = 10 * time::NS_PER_SEC;
/// Event credits the client keeps posted while the domain holds watches.
pub const EVENT_CREDITS: u32 = 2;
/// Most watch events the client queues for [`wait_event`]; later ones are dropped (and
/// counted by [`dropped_events`]). Read the current state after an event anyway.
pub const MAX_QUEUED_EVENTS: usize = 256;
/// The watch token [`find_domain`] uses on `/local/domain`; do not use it for your own watches.
pub const FIND_DOMAIN_TOKEN: u32 = 0xfd0d_0d0d;
/// How often [`find_domain`] lists the domains again even without a watch event.
const FIND_RESCAN_NS: u64 = 500 * time::NS_PER_MS;

static REQUEST_TIMEOUT_NS: AtomicU64 = AtomicU64::new(DEFAULT_REQUEST_TIMEOUT_NS);

/// Sets how long a request waits for its response before failing with `ETIMEDOUT` (0: wait
/// forever). A response that arrives later is discarded.
///
/// ```no_run
/// guest_sdk::store::set_request_timeout(2 * guest_sdk::time::NS_PER_SEC);
/// ```
pub fn set_request_timeout(ns: u64) {
    REQUEST_TIMEOUT_NS.store(ns, Ordering::Relaxed);
}

pub use hypercall_abi::store::OwnedValue;

/// An owned copy of a [`Response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedResponse {
    /// [`Response::Ok`].
    Ok,
    /// [`Response::Value`].
    Value(OwnedValue),
    /// [`Response::List`].
    List {
        /// Child names.
        names: Vec<String>,
        /// The offset of the next page, if children remain.
        next: Option<u32>,
    },
    /// [`Response::Perms`].
    Perms(Perms),
    /// [`Response::Error`].
    Error(StoreError),
    /// [`Response::WatchEvent`].
    WatchEvent {
        /// The node that changed.
        path: String,
        /// The watch's token.
        token: u32,
    },
}

impl OwnedResponse {
    /// Copies a borrowed response.
    ///
    /// ```
    /// use guest_sdk::store::{OwnedResponse, OwnedValue, Response, Value};
    /// let r = OwnedResponse::from_response(&Response::Value(Value::U64(3)));
    /// assert_eq!(r, OwnedResponse::Value(OwnedValue::U64(3)));
    /// ```
    pub fn from_response(r: &Response<'_>) -> OwnedResponse {
        match r {
            Response::Ok => OwnedResponse::Ok,
            Response::Value(v) => OwnedResponse::Value(OwnedValue::from_value(v)),
            Response::List { names, next } => OwnedResponse::List {
                names: names.iter().map(|n| n.to_string()).collect(),
                next: *next,
            },
            Response::Perms(p) => OwnedResponse::Perms(p.clone()),
            Response::Error(e) => OwnedResponse::Error(*e),
            Response::WatchEvent { path, token } => OwnedResponse::WatchEvent {
                path: path.to_string(),
                token: *token,
            },
        }
    }

    /// `Err` with the errno of an [`OwnedResponse::Error`], else the response.
    fn ok(self) -> Result<OwnedResponse> {
        match self {
            OwnedResponse::Error(e) => Err(e.into()),
            r => Ok(r),
        }
    }
}

/// How a client reaches its store: notify the server, wait for it. The event channel in a
/// guest; a fake server in unit tests.
trait Transport {
    /// Tells the server that requests were published.
    fn notify(&mut self) -> Result<()>;
    /// Forgets earlier notifications from the server (before the ring is checked).
    fn clear(&mut self);
    /// Waits until the server notifies or system time reaches `deadline_ns` (0: no deadline);
    /// `ETIMEDOUT` for the deadline.
    fn wait(&mut self, deadline_ns: u64) -> Result<()>;
    /// System time, ns.
    fn now_ns(&self) -> u64;
}

/// The store's event channel, masked and polled.
struct EvtchnTransport {
    port: Port,
}

impl Transport for EvtchnTransport {
    fn notify(&mut self) -> Result<()> {
        events::send(self.port)
    }

    fn clear(&mut self) {
        events::clear_pending(self.port);
    }

    fn wait(&mut self, deadline_ns: u64) -> Result<()> {
        sched::poll(&[self.port], deadline_ns)
    }

    fn now_ns(&self) -> u64 {
        time::monotonic_ns()
    }
}

/// The client's state: the ring, request ids, queued events, credits and watches.
struct Client<T> {
    ring: FrontRing<StoreSlot, StoreSlot>,
    transport: T,
    next_id: u32,
    events: VecDeque<(String, u32)>,
    dropped: u64,
    /// Event credits posted and not yet answered.
    credits: u32,
    /// Watches this domain holds (registered through this client).
    watches: u32,
}

impl<T: Transport> Client<T> {
    fn new(ring: FrontRing<StoreSlot, StoreSlot>, transport: T) -> Client<T> {
        Client {
            ring,
            transport,
            next_id: 1,
            events: VecDeque::new(),
            dropped: 0,
            credits: 0,
            watches: 0,
        }
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Publishes what was pushed, notifying the server if the ring says so.
    fn publish(&mut self) -> Result<()> {
        if self.ring.push_requests_and_check_notify() {
            self.transport.notify()?;
        }
        Ok(())
    }

    /// Posts event credits up to [`EVENT_CREDITS`] while watches exist, always leaving a slot
    /// free for requests.
    fn top_up_credits(&mut self) -> Result<()> {
        let mut pushed = false;
        while self.watches > 0 && self.credits < EVENT_CREDITS && self.ring.free_requests() > 1 {
            self.ring.push_request(&StoreSlot::event_credit())?;
            self.credits += 1;
            pushed = true;
        }
        if pushed {
            self.publish()?;
        }
        Ok(())
    }

    fn queue_event(&mut self, path: &str, token: u32) {
        if self.events.len() < MAX_QUEUED_EVENTS {
            self.events.push_back((path.to_string(), token));
        } else {
            self.dropped += 1;
        }
    }

    /// Takes every published response: queues watch events (and replaces their credits),
    /// drops stray responses, and returns the one answering request `want`, if it came.
    fn drain(&mut self, want: Option<u32>) -> Result<Option<StoreSlot>> {
        let mut found = None;
        while let Some(slot) = self.ring.poll_response()? {
            if slot.is_watch_event() {
                self.credits = self.credits.saturating_sub(1);
                if let Ok(Response::WatchEvent { path, token }) = slot.decode_response() {
                    self.queue_event(path, token);
                }
            } else if found.is_none() && want == Some(slot.req_id) {
                found = Some(slot);
            }
            // Anything else answers a request that timed out: nobody waits for it.
        }
        self.top_up_credits()?;
        Ok(found)
    }

    /// Runs `f` (which drains the ring) until it returns something, waiting for the server in
    /// between; `None` once system time reaches `deadline_ns` (0: never).
    fn wait_for<R>(
        &mut self,
        deadline_ns: u64,
        mut f: impl FnMut(&mut Self) -> Result<Option<R>>,
    ) -> Result<Option<R>> {
        loop {
            // Clear first: a notification sent after this leaves the port pending, so the wait
            // below returns at once and nothing is missed.
            self.transport.clear();
            if let Some(r) = f(self)? {
                return Ok(Some(r));
            }
            if self.ring.final_check_for_responses()? {
                continue;
            }
            if deadline_ns != 0 && self.transport.now_ns() >= deadline_ns {
                return Ok(None);
            }
            match self.transport.wait(deadline_ns) {
                Ok(()) | Err(Error::Errno(Errno::ETIMEDOUT)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a slot and waits for the response with the same `req_id`.
    fn transact_slot(&mut self, slot: &StoreSlot) -> Result<StoreSlot> {
        if self.ring.free_requests() == 0 {
            self.drain(None)?;
            if self.ring.free_requests() == 0 {
                return Err(Error::Errno(Errno::EBUSY));
            }
        }
        self.ring.push_request(slot)?;
        self.publish()?;
        let timeout = REQUEST_TIMEOUT_NS.load(Ordering::Relaxed);
        let deadline = match timeout {
            0 => 0,
            t => self.transport.now_ns().saturating_add(t).max(1),
        };
        let id = slot.req_id;
        self.wait_for(deadline, |c| c.drain(Some(id)))?
            .ok_or(Error::Errno(Errno::ETIMEDOUT))
    }

    /// Sends a request and returns its response as is (a store error is `Ok(Error(..))`).
    fn request(&mut self, req: &Request<'_>) -> Result<OwnedResponse> {
        let watch = matches!(req, Request::Watch { .. });
        if watch {
            // Have a credit posted before the watch's immediate event is due.
            self.watches += 1;
            if let Err(e) = self.top_up_credits() {
                self.watches -= 1;
                return Err(e);
            }
        }
        let id = self.next_id();
        let r = StoreSlot::request(id, req)
            .map_err(Error::from)
            .and_then(|slot| self.transact_slot(&slot))
            .and_then(|rsp| {
                rsp.decode_response()
                    .map(|r| OwnedResponse::from_response(&r))
                    .map_err(|_| Error::BadResponse)
            });
        let ok = matches!(r, Ok(OwnedResponse::Ok));
        match req {
            Request::Watch { .. } if !ok => self.watches -= 1,
            Request::Unwatch { .. } if ok => self.watches = self.watches.saturating_sub(1),
            _ => {}
        }
        r
    }

    /// A request through the typed API: checked locally first, store errors as `Err`.
    fn call(&mut self, req: &Request<'_>) -> Result<OwnedResponse> {
        req.validate()?;
        self.request(req)?.ok()
    }

    fn expect_ok(&mut self, req: &Request<'_>) -> Result<()> {
        match self.call(req)? {
            OwnedResponse::Ok => Ok(()),
            _ => Err(Error::BadResponse),
        }
    }

    fn read(&mut self, path: &str) -> Result<Option<OwnedValue>> {
        match self.call(&Request::Read { path })? {
            OwnedResponse::Value(v) => Ok(Some(v)),
            OwnedResponse::Ok => Ok(None),
            _ => Err(Error::BadResponse),
        }
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            match self.call(&Request::List { path, offset })? {
                OwnedResponse::List { names, next } => {
                    all.extend(names);
                    match next {
                        None => return Ok(all),
                        // Every page but the last holds at least one name: a `next` that does
                        // not move forward would loop for ever.
                        Some(n) if n > offset => offset = n,
                        Some(_) => return Err(Error::BadResponse),
                    }
                }
                _ => return Err(Error::BadResponse),
            }
        }
    }

    fn get_perms(&mut self, path: &str) -> Result<Perms> {
        match self.call(&Request::GetPerms { path })? {
            OwnedResponse::Perms(p) => Ok(p),
            _ => Err(Error::BadResponse),
        }
    }

    /// Removes and returns the first queued event (with `token`, if given).
    fn take_event(&mut self, token: Option<u32>) -> Option<(String, u32)> {
        let i = self
            .events
            .iter()
            .position(|(_, t)| token.is_none_or(|want| *t == want))?;
        self.events.remove(i)
    }

    fn wait_event(
        &mut self,
        token: Option<u32>,
        deadline_ns: u64,
    ) -> Result<Option<(String, u32)>> {
        self.wait_for(deadline_ns, |c| {
            if let Some(e) = c.take_event(token) {
                return Ok(Some(e));
            }
            c.drain(None)?;
            Ok(c.take_event(token))
        })
    }

    /// The id of the domain named `name`, from one listing of `/local/domain`.
    fn scan_domains(&mut self, name: &str) -> Result<Option<DomId>> {
        for entry in self.list(LOCAL_DOMAIN)? {
            let Ok(id) = entry.parse::<DomId>() else {
                continue;
            };
            match self.read(&format!("{LOCAL_DOMAIN}/{id}/name")) {
                Ok(Some(OwnedValue::Str(s))) if s == name => return Ok(Some(id)),
                Ok(_) => {}
                // A home without a name yet, or one we may not read.
                Err(Error::Errno(Errno::ENOENT | Errno::EACCES)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn find_domain(&mut self, name: &str, deadline_ns: u64) -> Result<DomId> {
        if let Some(id) = self.scan_domains(name)? {
            return Ok(id);
        }
        let watch = Request::Watch {
            path: LOCAL_DOMAIN,
            token: FIND_DOMAIN_TOKEN,
        };
        let watching = match self.call(&watch) {
            Ok(_) => true,
            // Out of watches: fall back to listing periodically.
            Err(Error::Errno(Errno::EBUSY)) => false,
            Err(e) => return Err(e),
        };
        let r = self.find_domain_watching(name, deadline_ns);
        if watching {
            let _ = self.call(&Request::Unwatch {
                path: LOCAL_DOMAIN,
                token: FIND_DOMAIN_TOKEN,
            });
            self.events.retain(|(_, t)| *t != FIND_DOMAIN_TOKEN);
        }
        r
    }

    fn find_domain_watching(&mut self, name: &str, deadline_ns: u64) -> Result<DomId> {
        loop {
            let now = self.transport.now_ns();
            let rescan = now.saturating_add(FIND_RESCAN_NS);
            let until = if deadline_ns == 0 {
                rescan
            } else {
                rescan.min(deadline_ns)
            };
            // An event (the watch's first one included) or the rescan period: list again.
            self.wait_event(Some(FIND_DOMAIN_TOKEN), until)?;
            while self.take_event(Some(FIND_DOMAIN_TOKEN)).is_some() {}
            if let Some(id) = self.scan_domains(name)? {
                return Ok(id);
            }
            if deadline_ns != 0 && self.transport.now_ns() >= deadline_ns {
                return Err(Error::Errno(Errno::ETIMEDOUT));
            }
        }
    }
}

/// The domain's client, made on first use.
static CLIENT: spin::Mutex<Option<Client<EvtchnTransport>>> = spin::Mutex::new(None);

fn connect() -> Result<Client<EvtchnTransport>> {
    let enosys = Error::Errno(Errno::ENOSYS);
    let si = crate::start_info().ok_or(enosys)?;
    let gpa = si.store_ring_gpa;
    let in_ram = gpa != 0
        && gpa.is_multiple_of(PAGE_SIZE)
        && gpa
            .checked_add(STORE_RING_BYTES as u64)
            .is_some_and(|end| end <= si.ram_bytes);
    if !Features::from_bits_retain(si.features).contains(Features::STORE)
        || si.store_port == 0
        || !in_ram
    {
        return Err(enosys);
    }
    // The client waits on the port itself: no upcall may clear its pending bit.
    events::mask(si.store_port)?;
    // SAFETY: the boot protocol makes `store_ring_gpa` this domain's store ring page (checked
    // to be a page of RAM), mapped read-write for the domain's life. The client, made once and
    // kept in `CLIENT` for ever, is the only code in this program that accesses it, and only
    // through the ring (atomically).
    let ring = unsafe { FrontRing::new(gpa as *mut u8, STORE_RING_BYTES) }?;
    Ok(Client::new(
        ring,
        EvtchnTransport {
            port: si.store_port,
        },
    ))
}

fn with_client<R>(f: impl FnOnce(&mut Client<EvtchnTransport>) -> Result<R>) -> Result<R> {
    let mut guard = CLIENT.try_lock().ok_or(Error::Errno(Errno::EBUSY))?;
    if guard.is_none() {
        *guard = Some(connect()?);
    }
    match guard.as_mut() {
        Some(c) => f(c),
        None => Err(Error::Errno(Errno::ENOSYS)),
    }
}

/// Reads the value of node `path`: `Some(value)`, or `None` if the node exists without a
/// value (a directory). `ENOENT` if it does not exist, `EACCES` if we may not read it.
///
/// ```no_run
/// let name = guest_sdk::store::read("/local/domain/1/name").unwrap();
/// # let _ = name;
/// ```
pub fn read(path: &str) -> Result<Option<OwnedValue>> {
    with_client(|c| c.read(path))
}

/// Writes `value` at `path`, creating the node and its missing parents (which inherit the
/// perms of their nearest existing ancestor). `EACCES` without write access, `ENOSPC` past the
/// node quota, `EINVAL` for a state change [`DeviceState::can_move_to`] does not allow.
///
/// ```no_run
/// use guest_sdk::store::{self, DeviceState, Value};
/// store::write("/local/domain/1/device/vif/0/state", Value::State(DeviceState::Initialised))
///     .unwrap();
/// ```
pub fn write(path: &str, value: Value<'_>) -> Result<()> {
    with_client(|c| c.expect_ok(&Request::Write { path, value }))
}

/// Creates node `path` without a value, and its missing parents. `EEXIST` if it exists.
///
/// ```no_run
/// guest_sdk::store::mkdir("/local/domain/1/device/vif/0").unwrap();
/// ```
pub fn mkdir(path: &str) -> Result<()> {
    with_client(|c| c.expect_ok(&Request::Mkdir { path }))
}

/// The names of `path`'s children, in byte order (every page of `List`, one request each;
/// pages are not a snapshot, so a concurrent change can skip or repeat a name).
///
/// ```no_run
/// for id in guest_sdk::store::list("/local/domain").unwrap() {
///     guest_sdk::println!("domain {id}");
/// }
/// ```
pub fn list(path: &str) -> Result<Vec<String>> {
    with_client(|c| c.list(path))
}

/// Removes node `path` and its whole subtree. `ENOENT` if it does not exist, `EACCES` without
/// write access or for a protected node.
///
/// ```no_run
/// guest_sdk::store::remove("/local/domain/1/device/vif/0").unwrap();
/// ```
pub fn remove(path: &str) -> Result<()> {
    with_client(|c| c.expect_ok(&Request::Remove { path }))
}

/// The perms of node `path`.
///
/// ```no_run
/// let p = guest_sdk::store::get_perms("/local/domain/1").unwrap();
/// assert_eq!(p.owner, 1);
/// ```
pub fn get_perms(path: &str) -> Result<Perms> {
    with_client(|c| c.get_perms(path))
}

/// Sets the perms of node `path` (we must own it, and may not change the owner). Nodes created
/// below it afterwards inherit them.
///
/// ```no_run
/// use guest_sdk::store::{self, Access, Perms};
/// let mut p = Perms::owned_by(1);
/// p.grant(2, Access::Read).unwrap(); // domain 2 may read
/// store::set_perms("/local/domain/1/device/vif/0", &p).unwrap();
/// ```
pub fn set_perms(path: &str, perms: &Perms) -> Result<()> {
    with_client(|c| {
        c.expect_ok(&Request::SetPerms {
            path,
            perms: perms.clone(),
        })
    })
}

/// Watches node `path` and its subtree (the path need not exist). An event `(path, token)`
/// fires at once, then whenever a node we can read changes there; take them with
/// [`wait_event`]. `EEXIST` for a duplicate `(path, token)`, `EBUSY` past the watch quota.
///
/// ```no_run
/// guest_sdk::store::watch("/local/domain/2/backend", 1).unwrap();
/// ```
pub fn watch(path: &str, token: u32) -> Result<()> {
    with_client(|c| c.expect_ok(&Request::Watch { path, token }))
}

/// Removes the watch `(path, token)`. `ENOENT` if there is none. Events it fired before may
/// still be queued.
///
/// ```no_run
/// guest_sdk::store::unwatch("/local/domain/2/backend", 1).unwrap();
/// ```
pub fn unwatch(path: &str, token: u32) -> Result<()> {
    with_client(|c| c.expect_ok(&Request::Unwatch { path, token }))
}

/// The next watch event `(path, token)`, waiting for one until system time reaches
/// `deadline_ns` (0: no deadline); `Ok(None)` at the deadline. Events are hints: read the
/// current state after one.
///
/// ```no_run
/// use guest_sdk::{store, time};
/// store::watch("/local/domain/2/backend", 1).unwrap();
/// while let Some((path, token)) = store::wait_event(time::monotonic_ns() + time::NS_PER_SEC).unwrap() {
///     guest_sdk::println!("{path} changed (watch {token})");
/// }
/// ```
pub fn wait_event(deadline_ns: u64) -> Result<Option<(String, u32)>> {
    with_client(|c| c.wait_event(None, deadline_ns))
}

/// Watch events dropped because more than [`MAX_QUEUED_EVENTS`] were queued.
///
/// ```no_run
/// assert_eq!(guest_sdk::store::dropped_events(), 0);
/// ```
pub fn dropped_events() -> u64 {
    CLIENT
        .try_lock()
        .and_then(|c| c.as_ref().map(|c| c.dropped))
        .unwrap_or(0)
}

/// Sends `req` as is (no local checks) and returns the response as is: a store error is
/// `Ok(OwnedResponse::Error(..))`. For conformance tests. A `Watch` or `Unwatch` answered `Ok`
/// counts as one of ours (credits are kept posted for it).
///
/// ```no_run
/// use guest_sdk::store::{self, OwnedResponse, Request, StoreError};
/// let r = store::request(&Request::Read { path: "/a//b" }).unwrap();
/// assert_eq!(r, OwnedResponse::Error(StoreError::Invalid));
/// ```
pub fn request(req: &Request<'_>) -> Result<OwnedResponse> {
    with_client(|c| c.request(req))
}

/// Sends a hand-made slot (any `req_id`, `len`, `flags` and bytes) and returns the first
/// non-event response slot carrying its `req_id`, undecoded. For conformance tests of malformed
/// requests. A slot the hypervisor does not answer (a well-formed event credit) times out.
///
/// ```no_run
/// use guest_sdk::store::{self, StoreSlot};
/// let mut slot = StoreSlot::ZERO;
/// slot.req_id = 77;
/// slot.len = 249; // too long
/// let rsp = store::request_slot(&slot).unwrap();
/// assert_eq!(rsp.req_id, 77);
/// ```
pub fn request_slot(slot: &StoreSlot) -> Result<StoreSlot> {
    with_client(|c| c.transact_slot(slot))
}

/// The id of the domain named `name` (the hypervisor publishes each domain's name at
/// `/local/domain/<id>/name`). Lists `/local/domain` and reads the names; if none matches,
/// watches `/local/domain` (token [`FIND_DOMAIN_TOKEN`]) and lists again on each event, and at
/// least every 500 ms, until the name appears or system time reaches `deadline_ns` (0: no
/// deadline; `ETIMEDOUT`). `EINVAL` for a name that cannot be a path component.
///
/// ```no_run
/// use guest_sdk::{store, time};
/// let pong = store::find_domain("pong", time::monotonic_ns() + 5 * time::NS_PER_SEC).unwrap();
/// guest_sdk::println!("pong is domain {pong}");
/// ```
pub fn find_domain(name: &str, deadline_ns: u64) -> Result<DomId> {
    check_name(name).map_err(|_| Error::Errno(Errno::EINVAL))?;
    with_client(|c| c.find_domain(name, deadline_ns))
}

#[cfg(test)]
mod tests;
