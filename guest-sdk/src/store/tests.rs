//! The client against a small fake store served over a real ring in host memory.

extern crate std;

use std::boxed::Box;
use std::collections::BTreeMap;
use std::string::String;
use std::vec;
use std::vec::Vec;

use hypercall_abi::ring::BackRing;
use hypercall_abi::store::{is_in_subtree, parent};

use super::*;

/// A page for the ring, 8-byte aligned.
#[repr(C, align(4096))]
struct Page([u64; 512]);

/// The fake store, which shares the clock and the ring with the client's transport.
struct Server {
    back: BackRing<StoreSlot, StoreSlot>,
    nodes: BTreeMap<String, Option<OwnedValue>>,
    watches: Vec<(String, u32)>,
    events: VecDeque<(String, u32)>,
    credits: u32,
    /// Names per List page.
    page: usize,
    /// Ignore requests (never answer).
    deaf: bool,
    /// Requests served.
    served: u32,
    /// A node written after this many waits (a domain appearing late).
    late: Option<(u32, String, OwnedValue)>,
    waits: u32,
}

struct Fake {
    server: Server,
    now: u64,
    notifies: u32,
}

impl Server {
    fn fire(&mut self, path: &str) {
        for (w, t) in &self.watches {
            if is_in_subtree(path, w) {
                self.events.push_back((path.into(), *t));
            }
        }
    }

    fn set(&mut self, path: &str, v: Option<OwnedValue>) {
        let mut p = path;
        while let Some(up) = parent(p) {
            self.nodes.entry(up.into()).or_insert(None);
            p = up;
        }
        self.nodes.insert(path.into(), v);
        self.fire(path);
    }

    fn handle(&mut self, req: &Request<'_>) -> OwnedResponse {
        if req.validate().is_err() {
            return OwnedResponse::Error(StoreError::Invalid);
        }
        let missing = OwnedResponse::Error(StoreError::NoEntry);
        match *req {
            Request::Read { path } => match self.nodes.get(path) {
                Some(Some(v)) => OwnedResponse::Value(v.clone()),
                Some(None) => OwnedResponse::Ok,
                None => missing,
            },
            Request::Write { path, value } => {
                if path.starts_with("/ro") {
                    return OwnedResponse::Error(StoreError::Denied);
                }
                self.set(path, Some(OwnedValue::from_value(&value)));
                OwnedResponse::Ok
            }
            Request::Mkdir { path } => {
                if self.nodes.contains_key(path) {
                    return OwnedResponse::Error(StoreError::Exists);
                }
                self.set(path, None);
                OwnedResponse::Ok
            }
            Request::List { path, offset } => {
                if !self.nodes.contains_key(path) {
                    return missing;
                }
                let prefix = if path == "/" {
                    String::from("/")
                } else {
                    format!("{path}/")
                };
                let kids: Vec<String> = self
                    .nodes
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                    .map(String::from)
                    .collect();
                let start = (offset as usize).min(kids.len());
                let end = (start + self.page).min(kids.len());
                OwnedResponse::List {
                    names: kids[start..end].to_vec(),
                    next: (end < kids.len()).then_some(end as u32),
                }
            }
            Request::Remove { path } => {
                if self.nodes.remove(path).is_none() {
                    return missing;
                }
                self.nodes.retain(|k, _| !is_in_subtree(k, path));
                self.fire(path);
                OwnedResponse::Ok
            }
            Request::Watch { path, token } => {
                if self.watches.iter().any(|(p, t)| p == path && *t == token) {
                    return OwnedResponse::Error(StoreError::Exists);
                }
                self.watches.push((path.into(), token));
                self.events.push_back((path.into(), token));
                OwnedResponse::Ok
            }
            Request::Unwatch { path, token } => {
                let before = self.watches.len();
                self.watches.retain(|(p, t)| !(p == path && *t == token));
                if self.watches.len() == before {
                    missing
                } else {
                    OwnedResponse::Ok
                }
            }
            Request::GetPerms { path } => match self.nodes.get(path) {
                Some(_) => OwnedResponse::Perms(Perms::owned_by(1)),
                None => missing,
            },
            Request::SetPerms { .. } => OwnedResponse::Ok,
        }
    }

    fn respond(&mut self, id: u32, r: &OwnedResponse) {
        let slot = match r {
            OwnedResponse::Ok => StoreSlot::response(id, &Response::Ok),
            OwnedResponse::Value(v) => StoreSlot::response(id, &Response::Value(v.as_value())),
            OwnedResponse::List { names, next } => StoreSlot::response(
                id,
                &Response::List {
                    names: names.iter().map(String::as_str).collect(),
                    next: *next,
                },
            ),
            OwnedResponse::Perms(p) => StoreSlot::response(id, &Response::Perms(p.clone())),
            OwnedResponse::Error(e) => StoreSlot::response(id, &Response::Error(*e)),
            OwnedResponse::WatchEvent { .. } => unreachable!(),
        };
        self.back.push_response(&slot.unwrap()).unwrap();
    }

    /// Serves what the ring holds, delivers events into credits; returns whether it answered.
    fn serve(&mut self) -> bool {
        if self.deaf {
            return false;
        }
        let mut answered = false;
        loop {
            while let Some(slot) = self.back.poll_request().unwrap() {
                if slot.is_event_credit() {
                    self.credits += 1;
                    continue;
                }
                self.served += 1;
                let r = match slot.decode_request() {
                    Ok(req) => self.handle(&req),
                    Err(e) => OwnedResponse::Error(e),
                };
                self.respond(slot.req_id, &r);
                answered = true;
            }
            if !self.back.final_check_for_requests().unwrap() {
                break;
            }
        }
        while self.credits > 0 {
            let Some((path, token)) = self.events.pop_front() else {
                break;
            };
            self.credits -= 1;
            let e = StoreSlot::watch_event(&path, token).unwrap();
            self.back.push_response(&e).unwrap();
            answered = true;
        }
        self.back.push_responses_and_check_notify();
        answered
    }
}

impl Transport for Fake {
    fn notify(&mut self) -> Result<()> {
        self.notifies += 1;
        self.server.serve();
        Ok(())
    }

    fn clear(&mut self) {}

    fn wait(&mut self, deadline_ns: u64) -> Result<()> {
        self.server.waits += 1;
        if let Some((after, path, v)) = self.server.late.take() {
            if self.server.waits >= after {
                self.server.set(&path, Some(v));
            } else {
                self.server.late = Some((after, path, v));
            }
        }
        self.now += 1_000_000;
        if self.server.serve() {
            return Ok(());
        }
        if deadline_ns != 0 {
            self.now = self.now.max(deadline_ns);
        }
        Err(Error::Errno(Errno::ETIMEDOUT))
    }

    fn now_ns(&self) -> u64 {
        self.now
    }
}

fn client() -> (Client<Fake>, Box<Page>) {
    let mut page = Box::new(Page([0; 512]));
    let ptr = page.0.as_mut_ptr().cast::<u8>();
    // SAFETY: the page outlives both rings (the test keeps the Box) and is only accessed
    // through them.
    let front = unsafe { FrontRing::new(ptr, STORE_RING_BYTES) }.unwrap();
    // SAFETY: as above.
    let back = unsafe { BackRing::new(ptr, STORE_RING_BYTES) }.unwrap();
    let mut server = Server {
        back,
        nodes: BTreeMap::new(),
        watches: Vec::new(),
        events: VecDeque::new(),
        credits: 0,
        page: 3,
        deaf: false,
        served: 0,
        late: None,
        waits: 0,
    };
    for p in ["/", "/local", "/local/domain"] {
        server.nodes.insert(p.into(), None);
    }
    let fake = Fake {
        server,
        now: 1,
        notifies: 0,
    };
    (Client::new(front, fake), page)
}

#[test]
fn read_write_mkdir_remove() {
    let (mut c, _page) = client();
    assert_eq!(c.read("/a/b"), Err(Error::Errno(Errno::ENOENT)));
    c.expect_ok(&Request::Write {
        path: "/a/b",
        value: Value::U64(42),
    })
    .unwrap();
    assert_eq!(c.read("/a/b"), Ok(Some(OwnedValue::U64(42))));
    // The parent was made without a value.
    assert_eq!(c.read("/a"), Ok(None));
    assert_eq!(
        c.expect_ok(&Request::Mkdir { path: "/a" }),
        Err(Error::Errno(Errno::EEXIST))
    );
    assert_eq!(
        c.expect_ok(&Request::Write {
            path: "/ro",
            value: Value::Bool(true)
        }),
        Err(Error::Errno(Errno::EACCES))
    );
    c.expect_ok(&Request::Remove { path: "/a" }).unwrap();
    assert_eq!(c.read("/a/b"), Err(Error::Errno(Errno::ENOENT)));
    assert_eq!(c.get_perms("/local").unwrap().owner, 1);
    assert_eq!(c.get_perms("/nope"), Err(Error::Errno(Errno::ENOENT)));
}

#[test]
fn typed_calls_check_locally_raw_requests_do_not() {
    let (mut c, _page) = client();
    assert_eq!(c.read("a//b"), Err(Error::Errno(Errno::EINVAL)));
    assert_eq!(c.transport.server.served, 0);
    assert_eq!(
        c.request(&Request::Read { path: "a//b" }),
        Ok(OwnedResponse::Error(StoreError::Invalid))
    );
    assert_eq!(c.transport.server.served, 1);
}

#[test]
fn list_follows_pages() {
    let (mut c, _page) = client();
    for i in 0..8 {
        let path = format!("/local/domain/{i}");
        c.expect_ok(&Request::Mkdir { path: &path }).unwrap();
    }
    let names = c.list("/local/domain").unwrap();
    assert_eq!(names, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    // 3 names per page: 3 requests.
    assert_eq!(c.transport.server.served, 8 + 3);
    assert_eq!(c.list("/nothing"), Err(Error::Errno(Errno::ENOENT)));
}

#[test]
fn watches_deliver_events_and_keep_credits_posted() {
    let (mut c, _page) = client();
    c.expect_ok(&Request::Watch {
        path: "/w",
        token: 5,
    })
    .unwrap();
    assert_eq!(c.watches, 1);
    // The immediate event.
    assert_eq!(
        c.wait_event(None, 0).unwrap(),
        Some((String::from("/w"), 5))
    );
    for i in 0..10u64 {
        c.expect_ok(&Request::Write {
            path: "/w/x",
            value: Value::U64(i),
        })
        .unwrap();
    }
    for _ in 0..10 {
        assert_eq!(
            c.wait_event(Some(5), 0).unwrap(),
            Some((String::from("/w/x"), 5))
        );
    }
    // Nothing more: the deadline passes.
    let deadline = c.transport.now + 5_000_000;
    assert_eq!(c.wait_event(None, deadline).unwrap(), None);
    // Credits stay posted on the server's side.
    assert_eq!(c.credits + c.transport.server.credits, 2 * EVENT_CREDITS);
    assert_eq!(c.credits, EVENT_CREDITS);
    c.expect_ok(&Request::Unwatch {
        path: "/w",
        token: 5,
    })
    .unwrap();
    assert_eq!(c.watches, 0);
    assert_eq!(
        c.expect_ok(&Request::Unwatch {
            path: "/w",
            token: 5
        }),
        Err(Error::Errno(Errno::ENOENT))
    );
    assert_eq!(c.watches, 0);
}

#[test]
fn a_failed_watch_does_not_count() {
    let (mut c, _page) = client();
    let w = Request::Watch {
        path: "/w",
        token: 1,
    };
    c.expect_ok(&w).unwrap();
    assert_eq!(c.expect_ok(&w), Err(Error::Errno(Errno::EEXIST)));
    assert_eq!(c.watches, 1);
}

#[test]
fn requests_time_out_and_late_answers_are_dropped() {
    let (mut c, _page) = client();
    c.transport.server.deaf = true;
    assert_eq!(c.read("/local"), Err(Error::Errno(Errno::ETIMEDOUT)));
    c.transport.server.deaf = false;
    // The late answer to the first request is skipped; the second gets its own.
    assert_eq!(c.read("/local"), Ok(None));
    assert_eq!(c.read("/x"), Err(Error::Errno(Errno::ENOENT)));
}

#[test]
fn notifications_follow_the_ring() {
    let (mut c, _page) = client();
    for _ in 0..20 {
        c.read("/local").unwrap();
    }
    // The fake serves on every notification and re-arms, so each request needs one.
    assert_eq!(c.transport.notifies, 20);
}

#[test]
fn finds_domains_by_name_now_or_later() {
    let (mut c, _page) = client();
    for (id, name) in [(1, "ping"), (2, "pong")] {
        c.expect_ok(&Request::Write {
            path: &format!("/local/domain/{id}/name"),
            value: Value::Str(name),
        })
        .unwrap();
    }
    // A home without a name is skipped.
    c.expect_ok(&Request::Mkdir {
        path: "/local/domain/3",
    })
    .unwrap();
    assert_eq!(c.find_domain("pong", 0), Ok(2));
    assert_eq!(c.find_domain("ping", 0), Ok(1));
    // Not there, ever.
    let deadline = c.transport.now + 2 * time::NS_PER_SEC;
    assert_eq!(
        c.find_domain("nobody", deadline),
        Err(Error::Errno(Errno::ETIMEDOUT))
    );
    assert_eq!(c.watches, 0);
    assert!(c.events.is_empty());
    // Appears after a few waits.
    c.transport.server.late = Some((
        c.transport.server.waits + 3,
        String::from("/local/domain/9/name"),
        OwnedValue::Str("late".into()),
    ));
    assert_eq!(c.find_domain("late", 0), Ok(9));
    assert_eq!(c.watches, 0);
    assert!(c.transport.server.watches.is_empty());
}

#[test]
fn owned_values_and_responses() {
    for v in [
        Value::Bool(true),
        Value::U64(1),
        Value::I64(-1),
        Value::Str("s"),
        Value::Bytes(&[1, 2]),
        Value::State(DeviceState::Connected),
    ] {
        assert_eq!(OwnedValue::from_value(&v).as_value(), v);
    }
    assert_eq!(
        OwnedValue::State(DeviceState::Closed).as_state(),
        Some(DeviceState::Closed)
    );
    assert_eq!(OwnedValue::Bool(true).as_u64(), None);
    let names = vec!["a"];
    let r = Response::List {
        names: names.into_iter().collect(),
        next: None,
    };
    assert_eq!(
        OwnedResponse::from_response(&r),
        OwnedResponse::List {
            names: vec![String::from("a")],
            next: None
        }
    );
    assert_eq!(
        OwnedResponse::Error(StoreError::Busy).ok(),
        Err(Error::Errno(Errno::EBUSY))
    );
}

#[test]
fn outside_a_guest_there_is_no_store() {
    assert_eq!(read("/"), Err(Error::Errno(Errno::ENOSYS)));
    assert_eq!(find_domain("a/b", 0), Err(Error::Errno(Errno::EINVAL)));
}
