//! A minimal client of the store ring, written against `hypercall-abi` alone (not the SDK's
//! client), shared by the conformance and isolation guests so that they test the ABI itself.
//! It uses its parent binary's raw hypercall helpers.
// Each binary uses a different subset of it.
#![allow(dead_code)]

use super::*;

/// A value read from the store, owned.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Val {
    Bool(bool),
    U64(u64),
    I64(i64),
    Str(String),
    Bytes(Vec<u8>),
    State(DeviceState),
}

impl Val {
    pub(super) fn of(v: &Value<'_>) -> Val {
        match *v {
            Value::Bool(b) => Val::Bool(b),
            Value::U64(x) => Val::U64(x),
            Value::I64(x) => Val::I64(x),
            Value::Str(s) => Val::Str(String::from(s)),
            Value::Bytes(b) => Val::Bytes(b.to_vec()),
            Value::State(s) => Val::State(s),
        }
    }
}

/// A store answer, owned.
#[derive(Debug)]
pub(super) enum Reply {
    Ok,
    Value(Val),
    List(Vec<String>, Option<u32>),
    Perms(Perms),
    Error(StoreError),
}

pub(super) fn describe_reply(r: &Reply) -> String {
    match r {
        Reply::Ok => String::from("Ok"),
        Reply::Value(v) => format!("Value({v:?})"),
        Reply::List(n, next) => format!("List({} names, next {next:?})", n.len()),
        Reply::Perms(p) => format!("Perms({p:?})"),
        Reply::Error(e) => format!("Error({e})"),
    }
}

/// Decodes the answer to a request (flags 0, not a watch event).
pub(super) fn decode_answer(s: &StoreSlot) -> Result<Reply, String> {
    if s.flags != 0 {
        return Err(format!(
            "the answer to request {} has flags {:#x}",
            s.req_id, s.flags
        ));
    }
    let r = s
        .decode_response()
        .map_err(|e| format!("undecodable answer to request {}: {e}", s.req_id))?;
    Ok(match r {
        Response::Ok => Reply::Ok,
        Response::Value(v) => Reply::Value(Val::of(&v)),
        Response::List { names, next } => {
            Reply::List(names.iter().map(|n| String::from(*n)).collect(), next)
        }
        Response::Perms(p) => Reply::Perms(p),
        Response::Error(e) => Reply::Error(e),
        Response::WatchEvent { .. } => return Err(String::from("a watch event as an answer")),
    })
}

/// A store client: the front end of the domain's store ring, notified on the store port (which
/// it masks, and waits on with `sched_op(poll)`).
pub(super) struct Store {
    pub(super) ring: FrontRing<StoreSlot, StoreSlot>,
    pub(super) port: Port,
    pub(super) next_id: u32,
    /// Answers not yet claimed by their request.
    pub(super) answers: Vec<StoreSlot>,
    /// Watch events received, in order: (path, token).
    pub(super) events: Vec<(String, u32)>,
    /// Event credits posted and not yet answered.
    pub(super) credits: u32,
    /// Watch-event slots that did not decode.
    pub(super) bad_events: u32,
}

impl Store {
    pub(super) fn new(si: &StartInfo) -> Result<Store, String> {
        let gpa = si.store_ring_gpa;
        if gpa == 0
            || !gpa.is_multiple_of(PAGE_SIZE)
            || gpa
                .checked_add(STORE_RING_BYTES as u64)
                .is_none_or(|e| e > si.ram_bytes)
        {
            return Err(format!("store ring at {gpa:#x} is not a page of RAM"));
        }
        let port = si.store_port;
        let r = evtchn_op(evtchn::MASK, u64::from(port), 0);
        if r != 0 {
            return Err(format!("mask(store port {port}): {}", describe(r)));
        }
        // SAFETY: the store ring is a page of our RAM (checked above; identity-mapped) shared
        // with the hv for the domain's life, and this client is the only code that touches it.
        let ring = unsafe { FrontRing::new(gpa as *mut u8, STORE_RING_BYTES) }
            .map_err(|e| format!("store ring: {e}"))?;
        Ok(Store {
            ring,
            port,
            next_id: 0,
            answers: Vec::new(),
            events: Vec::new(),
            credits: 0,
            bad_events: 0,
        })
    }

    /// Puts a slot on the ring and notifies the store if the ring protocol says so.
    pub(super) fn push(&mut self, slot: &StoreSlot) -> Result<(), String> {
        self.ring
            .push_request(slot)
            .map_err(|e| format!("store ring: {e}"))?;
        if self.ring.push_requests_and_check_notify() {
            let r = evtchn_op(evtchn::SEND, u64::from(self.port), 0);
            if r != 0 {
                return Err(format!("send(store port): {}", describe(r)));
            }
        }
        Ok(())
    }

    /// Takes every slot the store has produced; whether there was any.
    pub(super) fn pump(&mut self) -> Result<bool, String> {
        let mut any = false;
        loop {
            let s = match self.ring.poll_response() {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(any),
                Err(e) => return Err(format!("store ring: {e}")),
            };
            any = true;
            if s.flags & SLOT_WATCH_EVENT != 0 && s.req_id == 0 {
                self.credits = self.credits.saturating_sub(1);
                match s.decode_response() {
                    Ok(Response::WatchEvent { path, token }) => {
                        self.events.push((String::from(path), token))
                    }
                    _ => self.bad_events += 1,
                }
            } else {
                self.answers.push(s);
            }
        }
    }

    /// Waits until the store produces something (`Ok(true)`) or `deadline` passes.
    pub(super) fn wait(&mut self, deadline: u64) -> Result<bool, String> {
        loop {
            if self.pump()? {
                return Ok(true);
            }
            if self
                .ring
                .final_check_for_responses()
                .map_err(|e| format!("store ring: {e}"))?
            {
                continue;
            }
            if now() >= deadline {
                return Ok(false);
            }
            let r = poll_ports(&[self.port], deadline);
            clear_pending(self.port);
            if r != 0 && r != ETIMEDOUT.to_raw() {
                return Err(format!("poll(store port): {}", describe(r)));
            }
        }
    }

    /// Sends a raw slot and returns the answer carrying its `req_id`.
    pub(super) fn call_slot(&mut self, slot: &StoreSlot) -> Result<StoreSlot, String> {
        let id = slot.req_id;
        self.push(slot)?;
        let deadline = now() + STORE_TIMEOUT_NS;
        loop {
            if let Some(i) = self.answers.iter().position(|s| s.req_id == id) {
                return Ok(self.answers.remove(i));
            }
            if !self.wait(deadline)? {
                return Err(format!("the store did not answer request {id} within 2 s"));
            }
        }
    }

    pub(super) fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub(super) fn call(&mut self, req: &Request<'_>) -> Result<Reply, String> {
        let id = self.next_id();
        let slot = StoreSlot::request(id, req).map_err(|e| format!("encoding {req:?}: {e}"))?;
        let answer = self.call_slot(&slot)?;
        decode_answer(&answer)
    }

    pub(super) fn read(&mut self, path: &str) -> Result<Reply, String> {
        self.call(&Request::Read { path })
    }

    pub(super) fn write(&mut self, path: &str, value: Value<'_>) -> Result<Reply, String> {
        self.call(&Request::Write { path, value })
    }

    pub(super) fn post_credit(&mut self) -> Result<(), String> {
        self.push(&StoreSlot::event_credit())?;
        self.credits += 1;
        Ok(())
    }

    /// Waits for a watch event `(path, token)`; `Ok(false)` at the deadline.
    pub(super) fn wait_event(
        &mut self,
        path: &str,
        token: u32,
        deadline: u64,
    ) -> Result<bool, String> {
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|(p, t)| p == path && *t == token)
            {
                self.events.remove(i);
                return Ok(true);
            }
            if !self.wait(deadline)? {
                return Ok(false);
            }
        }
    }

    /// Every child of `path`, following the list pages.
    pub(super) fn list_all(&mut self, path: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut offset = 0;
        for _ in 0..1000 {
            match self.call(&Request::List { path, offset })? {
                Reply::List(names, next) => {
                    out.extend(names);
                    match next {
                        Some(n) if n > offset => offset = n,
                        Some(n) => return Err(format!("list {path}: next {n} does not advance")),
                        None => return Ok(out),
                    }
                }
                other => return Err(format!("list {path}: {}", describe_reply(&other))),
            }
        }
        Err(format!("list {path}: more than 1000 pages"))
    }

    /// A `U64` node, `None` if it does not exist.
    pub(super) fn read_u64(&mut self, path: &str) -> Result<Option<u64>, String> {
        match self.read(path)? {
            Reply::Value(Val::U64(v)) => Ok(Some(v)),
            Reply::Error(StoreError::NoEntry) => Ok(None),
            other => Err(format!("read {path}: {}", describe_reply(&other))),
        }
    }

    /// Looks in `/local/domain` for a domain other than `me` whose `name` is `name`, until
    /// `deadline`.
    pub(super) fn find_domain(
        &mut self,
        me: u16,
        name: &str,
        deadline: u64,
    ) -> Result<Option<u16>, String> {
        loop {
            for id in self.list_all("/local/domain")? {
                let Ok(d) = id.parse::<u16>() else { continue };
                if d == me {
                    continue;
                }
                if let Reply::Value(Val::Str(n)) = self.read(&format!("/local/domain/{d}/name"))? {
                    if n == name {
                        return Ok(Some(d));
                    }
                }
            }
            if now() >= deadline {
                return Ok(None);
            }
            guest_sdk::time::sleep(20 * NS_PER_MS);
        }
    }
}
