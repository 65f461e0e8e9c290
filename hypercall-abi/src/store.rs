//! The store protocol: a small hierarchical key-value service hosted by the hypervisor, reached by
//! each domain over a shared ring and an event channel. It is how frontends find their backends,
//! publish ring references and event channels, and move through the device states
//! ([`DeviceState`]), in the manner of XenStore, but with typed values ([`Value`]) instead of
//! strings.
//!
//! This module is the whole client-visible contract: the slot format, the message encoding, the
//! operations and their errors, permissions, quotas, watches and the path conventions.
//!
//! # 1. Transport
//!
//! Each domain has one store ring: one 4 KiB page holding a generic shared ring
//! ([`crate::ring`]: a 64-byte header, then slots) whose request and response type are both
//! [`StoreSlot`], 256 bytes, so the page holds [`STORE_RING_SLOTS`] (8) slots. The guest is the
//! front end (it produces requests and consumes responses), the hypervisor the back end. Each side
//! notifies the other on the store's event channel as the ring protocol says.
//!
//! [`StoreSlot`] (256 bytes, little-endian, 4-byte aligned):
//!
//! | offset | size | type | field | meaning |
//! | --- | --- | --- | --- | --- |
//! | 0 | 4 | u32 | `req_id` | Chosen by the guest for a request, non-zero; copied into its response. `0` in an event credit and a watch event. |
//! | 4 | 2 | u16 | `len` | Number of meaningful bytes in `data`, `0..=248` ([`STORE_PAYLOAD_MAX`]). |
//! | 6 | 2 | u16 | `flags` | `0` in requests and responses; [`SLOT_WATCH_EVENT`] in an event credit and a watch event. Other bits reserved (zero). |
//! | 8 | 248 | u8\[248\] | `data` | `data[..len]`: one encoded [`Request`] (guest to hv) or [`Response`] (hv to guest). The rest is ignored; senders write it as zero. |
//!
//! A slot the guest produces is one of:
//! - a **request**: `req_id != 0`, `flags == 0`, and `data[..len]` encodes exactly one
//!   [`Request`] (no trailing bytes) that passes [`Request::validate`]. The hv answers it with
//!   one response slot carrying the same `req_id` and `flags == 0`;
//! - an **event credit** ([`StoreSlot::event_credit`]): `req_id == 0`,
//!   `flags == SLOT_WATCH_EVENT`, `len == 0`. The hv keeps it unanswered until a watch event for
//!   the guest is due, and answers it with that **watch event**: `req_id == 0`,
//!   `flags == SLOT_WATCH_EVENT`, `data` encoding [`Response::WatchEvent`].
//!
//! Anything else is answered with [`Response::Error`] ([`StoreError::Invalid`], or
//! [`StoreError::TooBig`] for `len > 248`) carrying the slot's `req_id` and `flags == 0`.
//!
//! Why credits: the ring pairs every response with a request slot (the back end may never produce
//! more responses than it has consumed requests), so the hv can only send an unsolicited event
//! into a slot the guest has given it. A guest that watches keeps one or more credits posted
//! (each one is a slot of its [`STORE_RING_SLOTS`] in flight) and posts a new one for each event
//! it consumes. The hv queues the events due while the guest has no credit, delivers them in
//! order, and may drop events beyond a bounded queue, so a guest should always keep a credit
//! posted while it has watches. The ring's slot for response *i* says nothing about which slot
//! it answers: match responses by `req_id` (requests are answered in order among themselves;
//! credits are answered when events occur).
//!
//! The hv copies each slot out of shared memory once and decodes only its copy. The events a
//! request causes are queued after that request's response (so the immediate event of a
//! [`Request::Watch`] follows its `Ok`). Request ids need not be unique, but a client that keeps
//! several requests in flight should make them so.
//!
//! # 2. Encoding
//!
//! Messages are encoded with [postcard](https://docs.rs/postcard) 1.x, which a third party can
//! implement from these rules:
//! - `u16`, `u32`, `u64`: unsigned LEB128 varint (7 bits per byte, low first, high bit = more),
//!   at most 3, 5 and 10 bytes; encoders use the shortest form. `i64`: zig-zag
//!   (`(n << 1) ^ (n >> 63)`), then as `u64`. `bool`: one byte, `0` or `1` (anything else is an
//!   error).
//! - A string or byte string: varint length, then the bytes (strings are UTF-8).
//! - `Option<T>`: byte `0` (none) or byte `1` followed by `T`.
//! - A sequence (`heapless::Vec`): varint element count, then the elements. A tuple or struct:
//!   its fields in order, nothing between them.
//! - An enum: the varint variant index (the numbers in the tables below), then the variant's
//!   fields in order. An unknown index is an error.
//!
//! [`Request`]:
//!
//! | index | variant | fields, in order |
//! | --- | --- | --- |
//! | 0 | `Read` | `path: str` |
//! | 1 | `Write` | `path: str`, `value: Value` |
//! | 2 | `Mkdir` | `path: str` |
//! | 3 | `List` | `path: str`, `offset: u32` |
//! | 4 | `Remove` | `path: str` |
//! | 5 | `Watch` | `path: str`, `token: u32` |
//! | 6 | `Unwatch` | `path: str`, `token: u32` |
//! | 7 | `GetPerms` | `path: str` |
//! | 8 | `SetPerms` | `path: str`, `perms: Perms` |
//!
//! [`Response`]:
//!
//! | index | variant | fields, in order |
//! | --- | --- | --- |
//! | 0 | `Ok` | none |
//! | 1 | `Value` | `Value` |
//! | 2 | `List` | `names: seq<str>` (at most 16), `next: Option<u32>` |
//! | 3 | `Perms` | `Perms` |
//! | 4 | `Error` | `StoreError` |
//! | 5 | `WatchEvent` | `path: str`, `token: u32` |
//!
//! [`Value`]: `0 Bool(bool)`, `1 U64(u64)`, `2 I64(i64)`, `3 Str(str)`, `4 Bytes(bytes)`,
//! `5 State(DeviceState)`. [`DeviceState`]: the variant index is the state's number (0..=6).
//! [`Access`]: `0 None`, `1 Read`, `2 Write`, `3 ReadWrite`. [`Perms`]: `owner: u16`,
//! `others: Access`, `acl: seq<(u16, Access)>` (at most 8). [`StoreError`]: the index in its
//! table (0..=6).
//!
//! Example: `Read { path: "/a" }` is `00 02 2f 61`; `Response::Value(Value::U64(300))` is
//! `01 01 ac 02`.
//!
//! Decoding is strict: an unknown variant, an over-long sequence, invalid UTF-8, a bad `bool`, or
//! any byte after the message is [`StoreError::Invalid`]. [`encode_request`],
//! [`decode_request`], [`encode_response`] and [`decode_response`] do this for Rust code.
//!
//! # 3. Paths
//!
//! A path is absolute: `/` alone (the root), or `/` followed by one or more components separated
//! by single `/`. A component is one or more of `A-Z a-z 0-9 _ . -`, and is neither `.` nor `..`.
//! No empty component (no `//`, no trailing `/`). At most [`PATH_MAX`] (128) bytes.
//! [`check_path`] returns [`StoreError::TooBig`] for a longer path and [`StoreError::Invalid`]
//! for any other violation. A path names a node; its children are listed in byte order.
//!
//! # 4. Nodes, values and operations
//!
//! Every node except the root has a parent; a node has zero or more children, at most one
//! [`Value`] (a directory made by `Mkdir` or as a missing parent has none), and [`Perms`]. A
//! [`Value::Str`] or [`Value::Bytes`] is at most [`VALUE_MAX`] (112) bytes, or
//! [`StoreError::TooBig`]. Initially the store holds `/`, `/local`, `/local/domain` and each
//! domain's home `/local/domain/<domid>` (decimal), including the hypervisor's own
//! (`/local/domain/32752`, [`DOMID_HV`]), under which its backends live.
//!
//! | request | success | errors (besides `Invalid` for a malformed request) |
//! | --- | --- | --- |
//! | `Read` | `Value(v)`, or `Ok` if the node has no value | `NoEntry`, `Denied` (read) |
//! | `Write` | `Ok`; creates the node and missing parents | `Denied` (write), `NoSpace` (node quota), `Invalid` (illegal state transition) |
//! | `Mkdir` | `Ok`; creates the node (no value) and missing parents | `Exists`, `Denied`, `NoSpace` |
//! | `List` | `List { names, next }` | `NoEntry`, `Denied` (read) |
//! | `Remove` | `Ok`; removes the node and its whole subtree | `NoEntry`, `Denied` (write, or a protected node) |
//! | `Watch` | `Ok`, then one immediate watch event | `Exists` (same path and token), `Busy` (watch quota) |
//! | `Unwatch` | `Ok` | `NoEntry` (no such watch) |
//! | `GetPerms` | `Perms(p)` | `NoEntry`, `Denied` (read) |
//! | `SetPerms` | `Ok` | `NoEntry`, `Denied` (not the owner, or a guest changing the owner), `Invalid` (bad `Perms`) |
//!
//! - **Order of checks**: the request is validated first (`Invalid`, `TooBig`); then existence
//!   (`NoEntry`, `Exists`), then permission (`Denied`), then quota (`NoSpace`, `Busy`). A `Mkdir`
//!   of an existing node is `Denied` if the caller cannot read it, else `Exists`.
//! - **List** returns the names (single components) of the children in byte order, starting at
//!   index `offset`: as many as fit in one slot, at most [`LIST_MAX`] (16), and at least one if
//!   any remain. `next` is `Some(i)`, the `offset` of the following page, if children remain, else
//!   `None`. An `offset` at or past the end yields no names and `next: None`. Pages are not a
//!   snapshot: a change between two pages can skip or repeat a name.
//! - **Remove** of `/`, `/local` or `/local/domain` is `Denied` for every caller; a guest may not
//!   remove the home of a live domain (its own included).
//! - **Device states**: when a guest writes over a node whose value is a [`Value::State`], the new
//!   value must be a `State` the old one can move to ([`DeviceState::can_move_to`]), else
//!   `Invalid`. (The hypervisor is not bound by this; removing the node resets it.)
//!
//! # 5. Permissions
//!
//! Each node has [`Perms`]: an owner, an [`Access`] for all other domains, and an ACL of up to
//! [`ACL_MAX`] (8) per-domain entries. A domain may read a node if it owns it, or `others` or its
//! ACL entry grants read; write likewise. Only the node's own perms count (no check on ancestors).
//! The hypervisor ([`DOMID_HV`]) may do everything.
//! - Creating a node (`Write`, `Mkdir`) needs write on its nearest existing ancestor; every node
//!   created inherits that ancestor's perms, owner included.
//! - `GetPerms` needs read; `SetPerms` needs ownership, and a guest may not change the owner.
//!   A `Perms` is valid if its owner is below `0x7ff0` or is [`DOMID_HV`], and its ACL names
//!   distinct domains below `0x7ff0`.
//! - Homes are owned by their domain with `others: None`; everything outside homes belongs to the
//!   hypervisor with `others: None`. So a domain cannot write outside its home unless a node's
//!   perms let it.
//! - When a domain dies its home is removed, its watches dropped, nodes it owned elsewhere pass to
//!   the hypervisor and ACL entries naming it are deleted (so a later domain reusing the id
//!   inherits nothing).
//!
//! # 6. Quotas
//!
//! Nodes count against their owner. A guest's request that would create nodes owned by a domain
//! beyond [`MAX_NODES_PER_DOMAIN`] (256), or owned by the hypervisor beyond [`MAX_NODES_HV`],
//! fails with `NoSpace` and creates nothing. A guest may hold at most [`MAX_WATCHES_PER_DOMAIN`]
//! (32) watches; one more is `Busy`. The hypervisor's own requests are exempt.
//!
//! # 7. Watches
//!
//! `Watch { path, token }` registers a watch (the path need not exist, and no permission is
//! needed). It fires once at once (event path = the watched path), then whenever the watched node
//! or any descendant is written (`Write`, `Mkdir`, a domain's home created), has its perms set, or
//! is removed, and when an ancestor of the watched node is removed. Each event is
//! `WatchEvent { path, token }` where `path` is the node that changed (the removed subtree root, or
//! the watched path if the watched node lies inside a removed subtree), and `token` is the
//! watch's. One operation fires each watch at most once; watches fire in the order they were
//! registered. A watch fires only if its domain can read the changed node (for a change of perms,
//! under the new perms; for a removal, before it: the removed node, or the watched node when it
//! lies inside the removed subtree, which must then have existed). Events may be delivered after
//! further changes, and identical pending events (same path and token) coalesce into one: on an
//! event, read the current state. A watch is identified by (path, token); `Unwatch` removes one.
//!
//! # 8. Device layout (the convention frontends and backends follow)
//!
//! For device `<n>` of class `<class>` (for example `vbd`, `vif`, `console`) of frontend domain
//! `<front>`, served by backend domain `<back>` (which is [`DOMID_HV`] for backends inside the
//! hypervisor):
//!
//! ```text
//! /local/domain/<front>/device/<class>/<n>/            frontend_dir(front, class, n)
//!     backend        Str  path of the backend directory
//!     backend-id     U64  <back>
//!     state          State  the frontend's DeviceState
//!     ring-ref       U64  grant reference of the ring page (written by the frontend)
//!     event-channel  U64  unbound port allocated for <back> (written by the frontend)
//!     ...            device-specific keys (feature negotiation)
//! /local/domain/<back>/backend/<class>/<front>/<n>/    backend_dir(back, front, class, n)
//!     frontend       Str  path of the frontend directory
//!     frontend-id    U64  <front>
//!     state          State  the backend's DeviceState
//!     ...            device-specific keys (e.g. sectors, feature flags)
//! ```
//!
//! The hypervisor creates both directories (acting as the toolstack): first the directory itself,
//! then its perms (frontend directory: owner `<front>`, ACL `<back>: Read`; backend directory:
//! owner `<back>`, ACL `<front>: Read`), then the keys, which inherit those perms; it writes
//! `state = Initialising` on both sides. Each side then watches the peer's `state`, reads the
//! peer's keys, and moves its own `state` through the states of [`DeviceState`]. Unplugging is
//! done by moving to `Closing`/`Closed` and then the hypervisor removing both directories.

use core::fmt::Write as _;
use core::mem::{align_of, offset_of, size_of};

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{DomId, Errno, DOMID_HV};

/// Size of one store ring slot ([`StoreSlot`]).
pub const STORE_SLOT_SIZE: usize = 256;
/// Size of a slot's header (`req_id`, `len`, `flags`).
pub const STORE_SLOT_HEADER: usize = 8;
/// Most bytes of encoded message in one slot.
pub const STORE_PAYLOAD_MAX: usize = STORE_SLOT_SIZE - STORE_SLOT_HEADER;

/// [`StoreSlot::flags`] bit: this slot is an unsolicited watch event (its `req_id` is 0).
pub const SLOT_WATCH_EVENT: u16 = 1 << 0;
/// Every [`StoreSlot::flags`] bit ABI 1.x defines; the others are reserved (zero).
pub const SLOT_FLAGS_ALL: u16 = SLOT_WATCH_EVENT;
/// Size of the store ring area: one page.
pub const STORE_RING_BYTES: usize = 4096;
/// Number of slots in a store ring (the largest power of two that fits after the header).
pub const STORE_RING_SLOTS: u32 = 8;
const _: () =
    assert!(crate::ring::ring_slots::<StoreSlot, StoreSlot>(STORE_RING_BYTES) == STORE_RING_SLOTS);

/// Longest path, in bytes.
pub const PATH_MAX: usize = 128;
/// Longest [`Value::Str`] or [`Value::Bytes`], in bytes. Chosen so that the largest legal
/// request (a `Write` with a 128-byte path and a 112-byte value) fits in one slot.
pub const VALUE_MAX: usize = 112;
/// Most names in one [`Response::List`].
pub const LIST_MAX: usize = 16;
/// Most entries in a [`Perms::acl`].
pub const ACL_MAX: usize = 8;
/// Most nodes a domain may own (its quota), counting its home.
pub const MAX_NODES_PER_DOMAIN: u32 = 256;
/// Most nodes owned by the hypervisor that guests' requests may bring the store to.
pub const MAX_NODES_HV: u32 = 16384;
/// Most watches one domain may hold.
pub const MAX_WATCHES_PER_DOMAIN: u32 = 32;

/// One slot of a store ring: a request (guest to hv), a response or a watch event (hv to guest).
/// See the module documentation, §1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StoreSlot {
    /// The request's id (non-zero), copied into its response; 0 in a watch event.
    pub req_id: u32,
    /// Number of meaningful bytes in `data`, at most [`STORE_PAYLOAD_MAX`].
    pub len: u16,
    /// [`SLOT_WATCH_EVENT`] or 0; other bits are reserved.
    pub flags: u16,
    /// `data[..len]` is one postcard-encoded [`Request`] or [`Response`].
    pub data: [u8; STORE_PAYLOAD_MAX],
}
const _: () = assert!(size_of::<StoreSlot>() == STORE_SLOT_SIZE);
const _: () = assert!(align_of::<StoreSlot>() == 4);
const _: () = assert!(offset_of!(StoreSlot, req_id) == 0);
const _: () = assert!(offset_of!(StoreSlot, len) == 4);
const _: () = assert!(offset_of!(StoreSlot, flags) == 6);
const _: () = assert!(offset_of!(StoreSlot, data) == STORE_SLOT_HEADER);
const _: () = assert!(STORE_PAYLOAD_MAX <= u16::MAX as usize);

impl StoreSlot {
    /// An all-zero slot.
    pub const ZERO: StoreSlot = StoreSlot {
        req_id: 0,
        len: 0,
        flags: 0,
        data: [0; STORE_PAYLOAD_MAX],
    };

    /// A request slot. `Invalid` for `req_id == 0`, `TooBig` if the request does not fit.
    pub fn request(req_id: u32, req: &Request<'_>) -> Result<StoreSlot, StoreError> {
        if req_id == 0 {
            return Err(StoreError::Invalid);
        }
        let mut s = StoreSlot::ZERO;
        s.req_id = req_id;
        s.len = encode_request(req, &mut s.data)? as u16;
        Ok(s)
    }

    /// A response slot answering request `req_id`. `TooBig` if the response does not fit.
    pub fn response(req_id: u32, resp: &Response<'_>) -> Result<StoreSlot, StoreError> {
        let mut s = StoreSlot::ZERO;
        s.req_id = req_id;
        s.len = encode_response(resp, &mut s.data)? as u16;
        Ok(s)
    }

    /// A watch event slot. `TooBig` if it does not fit (never for a path of at most
    /// [`PATH_MAX`] bytes).
    pub fn watch_event(path: &str, token: u32) -> Result<StoreSlot, StoreError> {
        let mut s = StoreSlot::ZERO;
        s.flags = SLOT_WATCH_EVENT;
        s.len = encode_response(&Response::WatchEvent { path, token }, &mut s.data)? as u16;
        Ok(s)
    }

    /// An event credit: a slot the guest gives the hv to answer with a watch event.
    pub const fn event_credit() -> StoreSlot {
        let mut s = StoreSlot::ZERO;
        s.flags = SLOT_WATCH_EVENT;
        s
    }

    /// Whether the slot is marked as a watch event (or, from the guest, an event credit).
    pub fn is_watch_event(&self) -> bool {
        self.flags & SLOT_WATCH_EVENT != 0
    }

    /// Whether the slot is a well-formed event credit (`req_id == 0`,
    /// `flags == SLOT_WATCH_EVENT`, `len == 0`).
    pub fn is_event_credit(&self) -> bool {
        self.req_id == 0 && self.flags == SLOT_WATCH_EVENT && self.len == 0
    }

    /// `data[..len]`; `TooBig` if `len` exceeds [`STORE_PAYLOAD_MAX`].
    pub fn payload(&self) -> Result<&[u8], StoreError> {
        self.data.get(..self.len as usize).ok_or(StoreError::TooBig)
    }

    /// Decodes and validates this slot as a request (what the hv does): `Invalid` unless
    /// `req_id != 0`, `flags == 0`, and the payload is exactly one valid [`Request`]; `TooBig`
    /// for an over-long `len` or path or value.
    pub fn decode_request(&self) -> Result<Request<'_>, StoreError> {
        if self.req_id == 0 || self.flags != 0 {
            return Err(StoreError::Invalid);
        }
        let req = decode_request(self.payload()?)?;
        req.validate()?;
        Ok(req)
    }

    /// Decodes this slot as a response or watch event (what a guest does): `Invalid` for
    /// reserved flag bits, a watch event flag without a [`Response::WatchEvent`] and `req_id` 0,
    /// or a `WatchEvent` in a slot not marked as one.
    pub fn decode_response(&self) -> Result<Response<'_>, StoreError> {
        if self.flags & !SLOT_FLAGS_ALL != 0 {
            return Err(StoreError::Invalid);
        }
        let resp = decode_response(self.payload()?)?;
        let is_event = matches!(resp, Response::WatchEvent { .. });
        if is_event != self.is_watch_event() || (is_event && self.req_id != 0) {
            return Err(StoreError::Invalid);
        }
        Ok(resp)
    }
}

/// A store error, carried by [`Response::Error`]. Each maps to one [`Errno`]. The variant index
/// (its wire value) is the number in parentheses.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StoreError {
    /// (0) `ENOENT`: no such node, or no such watch.
    NoEntry = 0,
    /// (1) `EACCES`: permission denied, or a protected node.
    Denied = 1,
    /// (2) `EINVAL`: malformed slot or request, bad path, bad perms, illegal state transition.
    Invalid = 2,
    /// (3) `ENOSPC`: the node quota of the owner of the nodes to be created is exhausted.
    NoSpace = 3,
    /// (4) `E2BIG`: a path, value or message too large.
    TooBig = 4,
    /// (5) `EEXIST`: `Mkdir` of an existing node, or a duplicate watch.
    Exists = 5,
    /// (6) `EBUSY`: the caller holds the most watches it may.
    Busy = 6,
}

impl StoreError {
    /// Every store error.
    pub const ALL: [StoreError; 7] = [
        StoreError::NoEntry,
        StoreError::Denied,
        StoreError::Invalid,
        StoreError::NoSpace,
        StoreError::TooBig,
        StoreError::Exists,
        StoreError::Busy,
    ];

    /// The matching errno.
    pub const fn errno(self) -> Errno {
        match self {
            StoreError::NoEntry => Errno::ENOENT,
            StoreError::Denied => Errno::EACCES,
            StoreError::Invalid => Errno::EINVAL,
            StoreError::NoSpace => Errno::ENOSPC,
            StoreError::TooBig => Errno::E2BIG,
            StoreError::Exists => Errno::EEXIST,
            StoreError::Busy => Errno::EBUSY,
        }
    }

    /// The store error that maps to `e`, if any.
    pub fn from_errno(e: Errno) -> Option<StoreError> {
        StoreError::ALL.iter().copied().find(|s| s.errno() == e)
    }
}

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Errno {
        e.errno()
    }
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.errno().name())
    }
}

/// The state of one end of a split device, published in its `state` key (Xen's
/// `XenbusState`). The wire value (variant index) is the discriminant.
///
/// Legal transitions ([`DeviceState::can_move_to`]); staying in the same state is always legal:
///
/// | from | to |
/// | --- | --- |
/// | `Unknown` | `Initialising`, `InitWait`, `Closed` |
/// | `Initialising` | `InitWait`, `Initialised`, `Connected`, `Closing`, `Closed` |
/// | `InitWait` | `Initialised`, `Connected`, `Closing`, `Closed` |
/// | `Initialised` | `Connected`, `Closing`, `Closed` |
/// | `Connected` | `Closing`, `Closed` |
/// | `Closing` | `Closed` |
/// | `Closed` | `Unknown`, `Initialising`, `InitWait` |
///
/// So setup only moves forward, any live state can start closing, and only a closed device can
/// be set up again (a reconnect after a reset: the frontend to `Initialising`, the backend to
/// `InitWait`).
#[repr(u8)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum DeviceState {
    /// No state yet, or the device is gone (the state a missing `state` key stands for).
    #[default]
    Unknown = 0,
    /// The driver is starting: it is reading its configuration and has published nothing for
    /// its peer yet. The hypervisor creates both ends in this state.
    Initialising = 1,
    /// Backend: its early setup is done (the backing resource is open, its feature keys are
    /// written) and it waits for the frontend to publish its ring details.
    InitWait = 2,
    /// Frontend: it has published its ring details (`ring-ref`, `event-channel`, features) and
    /// waits for the backend to connect.
    Initialised = 3,
    /// The ring is mapped and the event channel bound; requests flow. (A frontend goes here
    /// once the backend is `Connected`.)
    Connected = 4,
    /// This end is shutting down (unplug or error) and asks its peer to close too.
    Closing = 5,
    /// This end has released the ring, grants and event channel. The device can be removed, or
    /// set up again.
    Closed = 6,
}

impl DeviceState {
    /// Every state, in wire order.
    pub const ALL: [DeviceState; 7] = [
        DeviceState::Unknown,
        DeviceState::Initialising,
        DeviceState::InitWait,
        DeviceState::Initialised,
        DeviceState::Connected,
        DeviceState::Closing,
        DeviceState::Closed,
    ];

    /// The state with wire value `v`, if any.
    pub const fn from_u8(v: u8) -> Option<DeviceState> {
        match v {
            0 => Some(DeviceState::Unknown),
            1 => Some(DeviceState::Initialising),
            2 => Some(DeviceState::InitWait),
            3 => Some(DeviceState::Initialised),
            4 => Some(DeviceState::Connected),
            5 => Some(DeviceState::Closing),
            6 => Some(DeviceState::Closed),
            _ => None,
        }
    }

    /// Whether an end in state `self` may move to `next` (see the table on [`DeviceState`]).
    pub const fn can_move_to(self, next: DeviceState) -> bool {
        use DeviceState::*;
        if self as u8 == next as u8 {
            return true;
        }
        match self {
            Unknown => matches!(next, Initialising | InitWait | Closed),
            Initialising => matches!(next, InitWait | Initialised | Connected | Closing | Closed),
            InitWait => matches!(next, Initialised | Connected | Closing | Closed),
            Initialised => matches!(next, Connected | Closing | Closed),
            Connected => matches!(next, Closing | Closed),
            Closing => matches!(next, Closed),
            Closed => matches!(next, Unknown | Initialising | InitWait),
        }
    }
}

/// A typed value held by a node. Strings and byte strings are at most [`VALUE_MAX`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value<'a> {
    /// (0) A boolean (feature flags).
    Bool(bool),
    /// (1) An unsigned integer (domain ids, grant references, ports, sizes).
    U64(u64),
    /// (2) A signed integer.
    I64(i64),
    /// (3) A UTF-8 string (paths, names).
    Str(&'a str),
    /// (4) Raw bytes (MAC addresses, UUIDs).
    Bytes(&'a [u8]),
    /// (5) A device state.
    State(DeviceState),
}

impl Value<'_> {
    /// `TooBig` for a string or byte string longer than [`VALUE_MAX`].
    pub fn validate(&self) -> Result<(), StoreError> {
        let len = match self {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        };
        if len > VALUE_MAX {
            Err(StoreError::TooBig)
        } else {
            Ok(())
        }
    }
}

/// The rights a domain has on a node. Wire value: the discriminant.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// (0) Neither read nor write.
    #[default]
    None = 0,
    /// (1) Read (and list, get perms, be told by watches).
    Read = 1,
    /// (2) Write (and create children, remove).
    Write = 2,
    /// (3) Read and write.
    ReadWrite = 3,
}

impl Access {
    /// The access granting `read` and/or `write`.
    pub const fn new(read: bool, write: bool) -> Access {
        match (read, write) {
            (false, false) => Access::None,
            (true, false) => Access::Read,
            (false, true) => Access::Write,
            (true, true) => Access::ReadWrite,
        }
    }

    /// Whether it grants read.
    pub const fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    /// Whether it grants write.
    pub const fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }

    /// What either `self` or `other` grants.
    pub const fn union(self, other: Access) -> Access {
        Access::new(
            self.can_read() || other.can_read(),
            self.can_write() || other.can_write(),
        )
    }
}

/// The permissions of a node. See the module documentation, §5.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perms {
    /// The owning domain: it has full access, may set the perms, and the node counts against its
    /// quota.
    pub owner: DomId,
    /// What every other domain may do.
    pub others: Access,
    /// Per-domain grants, added to `others`. Domains are distinct.
    pub acl: heapless::Vec<(DomId, Access), ACL_MAX>,
}

impl Perms {
    /// Owned by `owner`, no access for anyone else.
    pub fn owned_by(owner: DomId) -> Perms {
        Perms {
            owner,
            others: Access::None,
            acl: heapless::Vec::new(),
        }
    }

    /// What domain `dom` may do on a node with these perms ([`DOMID_HV`] and the owner may do
    /// everything).
    pub fn access(&self, dom: DomId) -> Access {
        if dom == DOMID_HV || dom == self.owner {
            return Access::ReadWrite;
        }
        self.acl
            .iter()
            .filter(|(d, _)| *d == dom)
            .fold(self.others, |a, (_, b)| a.union(*b))
    }

    /// Whether `dom` may read.
    pub fn can_read(&self, dom: DomId) -> bool {
        self.access(dom).can_read()
    }

    /// Whether `dom` may write.
    pub fn can_write(&self, dom: DomId) -> bool {
        self.access(dom).can_write()
    }

    /// Gives `dom` the access `a` (replacing its entry if it has one). `NoSpace` if the ACL is
    /// full.
    pub fn grant(&mut self, dom: DomId, a: Access) -> Result<(), StoreError> {
        if let Some(e) = self.acl.iter_mut().find(|(d, _)| *d == dom) {
            e.1 = a;
            return Ok(());
        }
        self.acl.push((dom, a)).map_err(|_| StoreError::NoSpace)
    }

    /// `Invalid` unless the owner is a domain id (below `0x7ff0`) or [`DOMID_HV`], and the ACL
    /// names distinct domain ids below `0x7ff0`.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.owner > DOMID_HV {
            return Err(StoreError::Invalid);
        }
        for (i, (d, _)) in self.acl.iter().enumerate() {
            if *d >= DOMID_HV || self.acl[..i].iter().any(|(e, _)| e == d) {
                return Err(StoreError::Invalid);
            }
        }
        Ok(())
    }
}

/// A request from a guest. See the module documentation, §2 and §4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// (0) Read a node's value.
    Read {
        /// The node.
        path: &'a str,
    },
    /// (1) Set a node's value, creating it and its missing parents.
    Write {
        /// The node.
        path: &'a str,
        /// The new value.
        #[serde(borrow)]
        value: Value<'a>,
    },
    /// (2) Create a node without a value (and its missing parents).
    Mkdir {
        /// The node.
        path: &'a str,
    },
    /// (3) List a page of a node's children.
    List {
        /// The node.
        path: &'a str,
        /// Index of the first child to return (0, then the previous response's `next`).
        offset: u32,
    },
    /// (4) Remove a node and its subtree.
    Remove {
        /// The node.
        path: &'a str,
    },
    /// (5) Watch a node and its subtree.
    Watch {
        /// The node (need not exist).
        path: &'a str,
        /// Returned in each event of this watch.
        token: u32,
    },
    /// (6) Remove a watch.
    Unwatch {
        /// The watched path.
        path: &'a str,
        /// The token it was registered with.
        token: u32,
    },
    /// (7) Read a node's permissions.
    GetPerms {
        /// The node.
        path: &'a str,
    },
    /// (8) Set a node's permissions.
    SetPerms {
        /// The node.
        path: &'a str,
        /// The new permissions.
        perms: Perms,
    },
}

impl<'a> Request<'a> {
    /// The path the request names.
    pub fn path(&self) -> &'a str {
        match *self {
            Request::Read { path }
            | Request::Write { path, .. }
            | Request::Mkdir { path }
            | Request::List { path, .. }
            | Request::Remove { path }
            | Request::Watch { path, .. }
            | Request::Unwatch { path, .. }
            | Request::GetPerms { path }
            | Request::SetPerms { path, .. } => path,
        }
    }

    /// Checks the path ([`check_path`]), the value ([`Value::validate`]) and the perms
    /// ([`Perms::validate`]).
    pub fn validate(&self) -> Result<(), StoreError> {
        check_path(self.path())?;
        match self {
            Request::Write { value, .. } => value.validate(),
            Request::SetPerms { perms, .. } => perms.validate(),
            _ => Ok(()),
        }
    }
}

/// A response from the hv, or a watch event. See the module documentation, §2 and §4.
// `List` is large (272 bytes) but this crate has no allocator to box it, and it lives on the
// stack only briefly.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response<'a> {
    /// (0) Success without data (also: `Read` of a node without a value).
    Ok,
    /// (1) The value of a `Read`.
    Value(#[serde(borrow)] Value<'a>),
    /// (2) A page of a `List`.
    List {
        /// Child names (single components), in byte order.
        #[serde(borrow)]
        names: heapless::Vec<&'a str, LIST_MAX>,
        /// The `offset` of the next page, if children remain.
        next: Option<u32>,
    },
    /// (3) The perms of a `GetPerms`.
    Perms(Perms),
    /// (4) The request failed.
    Error(StoreError),
    /// (5) A watch fired (only in a slot with [`SLOT_WATCH_EVENT`]).
    WatchEvent {
        /// The node that changed.
        path: &'a str,
        /// The watch's token.
        token: u32,
    },
}

fn map_ser(e: postcard::Error) -> StoreError {
    match e {
        postcard::Error::SerializeBufferFull => StoreError::TooBig,
        _ => StoreError::Invalid,
    }
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    if bytes.len() > STORE_PAYLOAD_MAX {
        return Err(StoreError::TooBig);
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        _ => Err(StoreError::Invalid),
    }
}

/// Encodes `req` into `buf` (at most its first [`STORE_PAYLOAD_MAX`] bytes); returns the length.
/// `TooBig` if it does not fit.
pub fn encode_request(req: &Request<'_>, buf: &mut [u8]) -> Result<usize, StoreError> {
    let cap = buf.len().min(STORE_PAYLOAD_MAX);
    postcard::to_slice(req, &mut buf[..cap])
        .map(|s| s.len())
        .map_err(map_ser)
}

/// Decodes exactly one request from `bytes`, borrowing its strings. `TooBig` for more than
/// [`STORE_PAYLOAD_MAX`] bytes, `Invalid` for a malformed message or trailing bytes. Does not
/// [`Request::validate`].
pub fn decode_request(bytes: &[u8]) -> Result<Request<'_>, StoreError> {
    decode(bytes)
}

/// Encodes `resp` into `buf` (at most its first [`STORE_PAYLOAD_MAX`] bytes); returns the
/// length. `TooBig` if it does not fit.
pub fn encode_response(resp: &Response<'_>, buf: &mut [u8]) -> Result<usize, StoreError> {
    let cap = buf.len().min(STORE_PAYLOAD_MAX);
    postcard::to_slice(resp, &mut buf[..cap])
        .map(|s| s.len())
        .map_err(map_ser)
}

/// Decodes exactly one response from `bytes`, borrowing its strings. Errors as
/// [`decode_request`].
pub fn decode_response(bytes: &[u8]) -> Result<Response<'_>, StoreError> {
    decode(bytes)
}

/// Checks one path component: `Invalid` unless it is 1..=127 bytes of `[A-Za-z0-9_.-]` and not
/// `.` or `..`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() < PATH_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid)
    }
}

/// Checks a path against the rules of the module documentation, §3: `TooBig` if longer than
/// [`PATH_MAX`], `Invalid` if otherwise malformed.
pub fn check_path(path: &str) -> Result<(), StoreError> {
    if path.len() > PATH_MAX {
        return Err(StoreError::TooBig);
    }
    if path == "/" {
        return Ok(());
    }
    let rest = path.strip_prefix('/').ok_or(StoreError::Invalid)?;
    rest.split('/').try_for_each(check_name)
}

/// Whether `path` is a valid path.
pub fn is_valid_path(path: &str) -> bool {
    check_path(path).is_ok()
}

/// The components of a valid path (none for `/`).
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// The parent of a valid path (`None` for `/`).
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// Whether valid path `path` is `root` or lies below it.
pub fn is_in_subtree(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

/// A path held without allocation.
pub type StorePath = heapless::String<PATH_MAX>;

/// `base` + `/` + `name`: `Invalid` if `name` is not a valid component, `TooBig` if the result
/// is longer than [`PATH_MAX`]. `base` must be a valid path.
pub fn join(base: &str, name: &str) -> Result<StorePath, StoreError> {
    check_name(name)?;
    let mut p = StorePath::new();
    let sep = if base == "/" { "" } else { "/" };
    write!(p, "{base}{sep}{name}").map_err(|_| StoreError::TooBig)?;
    Ok(p)
}

/// `/local`.
pub const LOCAL: &str = "/local";
/// `/local/domain`: the parent of every domain's home.
pub const LOCAL_DOMAIN: &str = "/local/domain";

/// The nodes nobody may remove.
pub const PROTECTED: [&str; 3] = ["/", LOCAL, LOCAL_DOMAIN];

/// A domain's home, `/local/domain/<domid>` (decimal).
pub fn home_path(domid: DomId) -> StorePath {
    let mut p = StorePath::new();
    // At most 14 + 5 bytes: always fits.
    let _ = write!(p, "{LOCAL_DOMAIN}/{domid}");
    p
}

/// The frontend directory of a device: `/local/domain/<front>/device/<class>/<n>`. `Invalid` if
/// `class` is not a valid component.
pub fn frontend_dir(front: DomId, class: &str, n: u32) -> Result<StorePath, StoreError> {
    check_name(class)?;
    let mut p = StorePath::new();
    write!(p, "{LOCAL_DOMAIN}/{front}/{}/{class}/{n}", key::DEVICE)
        .map_err(|_| StoreError::TooBig)?;
    Ok(p)
}

/// The backend directory of a device: `/local/domain/<back>/backend/<class>/<front>/<n>`.
/// `Invalid` if `class` is not a valid component.
pub fn backend_dir(
    back: DomId,
    front: DomId,
    class: &str,
    n: u32,
) -> Result<StorePath, StoreError> {
    check_name(class)?;
    let mut p = StorePath::new();
    write!(
        p,
        "{LOCAL_DOMAIN}/{back}/{}/{class}/{front}/{n}",
        key::BACKEND
    )
    .map_err(|_| StoreError::TooBig)?;
    Ok(p)
}

/// Names of the well-known directories and keys of the device layout (module documentation, §8).
pub mod key {
    /// In a home: the directory of the domain's frontend devices.
    pub const DEVICE: &str = "device";
    /// In a home: the directory of the backends the domain serves. In a frontend directory:
    /// the backend directory's path ([`Value::Str`](super::Value::Str)).
    pub const BACKEND: &str = "backend";
    /// In a frontend directory: the backend's domain id (`U64`).
    pub const BACKEND_ID: &str = "backend-id";
    /// In a backend directory: the frontend directory's path (`Str`).
    pub const FRONTEND: &str = "frontend";
    /// In a backend directory: the frontend's domain id (`U64`).
    pub const FRONTEND_ID: &str = "frontend-id";
    /// In either directory: that end's [`DeviceState`](super::DeviceState) (`State`).
    pub const STATE: &str = "state";
    /// In a frontend directory: the grant reference of the ring page (`U64`).
    pub const RING_REF: &str = "ring-ref";
    /// In a frontend directory: the event channel port the backend binds to (`U64`).
    pub const EVENT_CHANNEL: &str = "event-channel";
}

#[cfg(feature = "alloc")]
/// An owned copy of a [`Value`].
///
/// ```
/// use hypercall_abi::store::{OwnedValue, Value};
/// let v = OwnedValue::from_value(&Value::Str("ping"));
/// assert_eq!(v.as_str(), Some("ping"));
/// assert_eq!(v.as_value(), Value::Str("ping"));
/// assert_eq!(OwnedValue::U64(7).as_u64(), Some(7));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedValue {
    /// [`Value::Bool`].
    Bool(bool),
    /// [`Value::U64`].
    U64(u64),
    /// [`Value::I64`].
    I64(i64),
    /// [`Value::Str`].
    Str(alloc::string::String),
    /// [`Value::Bytes`].
    Bytes(alloc::vec::Vec<u8>),
    /// [`Value::State`].
    State(DeviceState),
}

#[cfg(feature = "alloc")]
impl OwnedValue {
    /// Copies a borrowed value.
    pub fn from_value(v: &Value<'_>) -> OwnedValue {
        match *v {
            Value::Bool(b) => OwnedValue::Bool(b),
            Value::U64(n) => OwnedValue::U64(n),
            Value::I64(n) => OwnedValue::I64(n),
            Value::Str(s) => OwnedValue::Str(alloc::string::String::from(s)),
            Value::Bytes(b) => OwnedValue::Bytes(alloc::vec::Vec::from(b)),
            Value::State(s) => OwnedValue::State(s),
        }
    }

    /// Borrows it as a [`Value`].
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Bool(b) => Value::Bool(*b),
            OwnedValue::U64(n) => Value::U64(*n),
            OwnedValue::I64(n) => Value::I64(*n),
            OwnedValue::Str(s) => Value::Str(s),
            OwnedValue::Bytes(b) => Value::Bytes(b),
            OwnedValue::State(s) => Value::State(*s),
        }
    }

    /// The number, if it is a [`Value::U64`].
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            OwnedValue::U64(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if it is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            OwnedValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The state, if it is a [`Value::State`].
    pub fn as_state(&self) -> Option<DeviceState> {
        match self {
            OwnedValue::State(s) => Some(*s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::vec::Vec;

    const PATH128: &str = "/local/domain/32751/device/vbd/4294967295/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn max_perms() -> Perms {
        let mut acl = heapless::Vec::new();
        for i in 0..ACL_MAX {
            acl.push((0x7fef - i as u16, Access::ReadWrite)).unwrap();
        }
        Perms {
            owner: 0x7fef,
            others: Access::ReadWrite,
            acl,
        }
    }

    fn values() -> Vec<Value<'static>> {
        static BYTES: [u8; VALUE_MAX] = [0xff; VALUE_MAX];
        let mut v = alloc::vec![
            Value::Bool(true),
            Value::Bool(false),
            Value::U64(u64::MAX),
            Value::I64(i64::MIN),
            Value::I64(-1),
            Value::Str(""),
            Value::Str("/local/domain/0"),
            Value::Bytes(&BYTES),
            Value::Bytes(&[]),
        ];
        for s in DeviceState::ALL {
            v.push(Value::State(s));
        }
        v
    }

    fn requests() -> Vec<Request<'static>> {
        let mut r = alloc::vec![
            Request::Read { path: "/" },
            Request::Mkdir { path: "/a/b" },
            Request::List {
                path: PATH128,
                offset: u32::MAX
            },
            Request::Remove { path: "/x" },
            Request::Watch {
                path: PATH128,
                token: u32::MAX
            },
            Request::Unwatch {
                path: "/w",
                token: 0
            },
            Request::GetPerms { path: "/p" },
            Request::SetPerms {
                path: PATH128,
                perms: max_perms()
            },
            Request::SetPerms {
                path: "/q",
                perms: Perms::owned_by(DOMID_HV)
            },
        ];
        for value in values() {
            r.push(Request::Write {
                path: PATH128,
                value,
            });
        }
        r
    }

    fn responses() -> Vec<Response<'static>> {
        let mut names = heapless::Vec::new();
        for n in ["a", "b", "state", "ring-ref"] {
            names.push(n).unwrap();
        }
        let mut r = alloc::vec![
            Response::Ok,
            Response::List {
                names: names.clone(),
                next: Some(7)
            },
            Response::List {
                names: heapless::Vec::new(),
                next: None
            },
            Response::Perms(max_perms()),
            Response::WatchEvent {
                path: PATH128,
                token: u32::MAX
            },
        ];
        for v in values() {
            r.push(Response::Value(v));
        }
        for e in StoreError::ALL {
            r.push(Response::Error(e));
        }
        r
    }

    #[test]
    fn path128_is_legal_and_maximal() {
        assert_eq!(PATH128.len(), PATH_MAX);
        assert_eq!(check_path(PATH128), Ok(()));
    }

    #[test]
    fn every_request_round_trips_and_fits() {
        for req in requests() {
            req.validate().unwrap();
            let mut buf = [0u8; STORE_PAYLOAD_MAX];
            let n = encode_request(&req, &mut buf).unwrap_or_else(|e| panic!("{req:?}: {e}"));
            assert_eq!(decode_request(&buf[..n]), Ok(req.clone()));
            let slot = StoreSlot::request(9, &req).unwrap();
            assert_eq!(slot.decode_request(), Ok(req.clone()));
            // Via alloc too (postcard's own encoder agrees).
            let v = postcard::to_allocvec(&req).unwrap();
            assert_eq!(&v[..], &buf[..n]);
        }
    }

    #[test]
    fn largest_legal_request_fits_in_a_slot() {
        static BYTES: [u8; VALUE_MAX] = [0; VALUE_MAX];
        let big = [
            Request::Write {
                path: PATH128,
                value: Value::Bytes(&BYTES),
            },
            Request::SetPerms {
                path: PATH128,
                perms: max_perms(),
            },
        ];
        let longest = requests()
            .iter()
            .chain(big.iter())
            .map(|r| postcard::to_allocvec(r).unwrap().len())
            .max()
            .unwrap();
        assert!(longest <= STORE_PAYLOAD_MAX, "{longest}");
        let n = postcard::to_allocvec(&big[0]).unwrap().len();
        assert_eq!(n, 1 + 2 + PATH_MAX + 1 + 1 + VALUE_MAX);
        // One more byte of value would be illegal (and is rejected before encoding).
        let over = [0u8; VALUE_MAX + 1];
        let r = Request::Write {
            path: "/a",
            value: Value::Bytes(&over),
        };
        assert_eq!(r.validate(), Err(StoreError::TooBig));
    }

    #[test]
    fn every_response_round_trips_and_fits() {
        for resp in responses() {
            let mut buf = [0u8; STORE_PAYLOAD_MAX];
            let n = encode_response(&resp, &mut buf).unwrap_or_else(|e| panic!("{resp:?}: {e}"));
            assert_eq!(decode_response(&buf[..n]), Ok(resp.clone()));
        }
        // A page holding one name of the longest possible component always fits.
        let long = &PATH128[..PATH_MAX - 1];
        let mut names = heapless::Vec::new();
        names.push(long).unwrap();
        let r = Response::List {
            names,
            next: Some(u32::MAX),
        };
        assert!(postcard::to_allocvec(&r).unwrap().len() <= STORE_PAYLOAD_MAX);
    }

    #[test]
    fn wire_examples() {
        let mut buf = [0u8; 16];
        let n = encode_request(&Request::Read { path: "/a" }, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[0, 2, b'/', b'a']);
        let n = encode_response(&Response::Value(Value::U64(300)), &mut buf).unwrap();
        assert_eq!(&buf[..n], &[1, 1, 0xac, 2]);
        for s in DeviceState::ALL {
            let n = encode_response(&Response::Value(Value::State(s)), &mut buf).unwrap();
            assert_eq!(&buf[..n], &[1, 5, s as u8]);
        }
        for e in StoreError::ALL {
            let n = encode_response(&Response::Error(e), &mut buf).unwrap();
            assert_eq!(&buf[..n], &[4, e as u8]);
        }
        let n = encode_request(
            &Request::SetPerms {
                path: "/",
                perms: Perms {
                    owner: 1,
                    others: Access::Read,
                    acl: heapless::Vec::from_slice(&[(2, Access::ReadWrite)]).unwrap(),
                },
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..n], &[8, 1, b'/', 1, 1, 1, 2, 3]);
    }

    #[test]
    fn decoding_is_strict() {
        // Trailing byte.
        assert_eq!(decode_request(&[0, 1, b'/', 0]), Err(StoreError::Invalid));
        // Unknown variant, truncated, bad bool, bad state, bad utf-8, empty.
        assert_eq!(decode_request(&[9, 1, b'/']), Err(StoreError::Invalid));
        assert_eq!(decode_request(&[0, 5, b'/']), Err(StoreError::Invalid));
        assert_eq!(
            decode_request(&[1, 1, b'/', 0, 2]),
            Err(StoreError::Invalid)
        );
        assert_eq!(
            decode_request(&[1, 1, b'/', 5, 7]),
            Err(StoreError::Invalid)
        );
        assert_eq!(decode_request(&[0, 1, 0xff]), Err(StoreError::Invalid));
        assert_eq!(decode_request(&[]), Err(StoreError::Invalid));
        assert_eq!(
            decode_request(&[0u8; STORE_PAYLOAD_MAX + 1]),
            Err(StoreError::TooBig)
        );
        // An ACL of 9 entries.
        let mut v = alloc::vec![8, 1, b'/', 0, 0, 9];
        for d in 0..9 {
            v.extend_from_slice(&[d, 1]);
        }
        assert_eq!(decode_request(&v), Err(StoreError::Invalid));
        // 17 list names.
        let mut v = alloc::vec![2, 17];
        for _ in 0..17 {
            v.extend_from_slice(&[1, b'a']);
        }
        v.push(0);
        assert_eq!(decode_response(&v), Err(StoreError::Invalid));
    }

    #[test]
    fn encode_reports_too_big() {
        let mut small = [0u8; 3];
        assert_eq!(
            encode_request(&Request::Read { path: "/abc" }, &mut small),
            Err(StoreError::TooBig)
        );
        // Longer than a slot, even with a large buffer.
        let long = [b'a'; 300];
        let path = core::str::from_utf8(&long).unwrap();
        let mut big = [0u8; 512];
        assert_eq!(
            encode_request(&Request::Read { path }, &mut big),
            Err(StoreError::TooBig)
        );
    }

    #[test]
    fn slots() {
        assert_eq!(
            StoreSlot::request(0, &Request::Read { path: "/" }),
            Err(StoreError::Invalid)
        );
        let mut s = StoreSlot::request(5, &Request::Read { path: "/" }).unwrap();
        assert_eq!(s.as_bytes().len(), 256);
        let copy = StoreSlot::read_from_bytes(s.as_bytes()).unwrap();
        assert_eq!(copy, s);
        s.flags = 2;
        assert_eq!(s.decode_request(), Err(StoreError::Invalid));
        s.flags = 0;
        s.len = 249;
        assert_eq!(s.decode_request(), Err(StoreError::TooBig));
        s.len = 3;
        s.req_id = 0;
        assert_eq!(s.decode_request(), Err(StoreError::Invalid));
        // A well-encoded but invalid request.
        let s = StoreSlot::request(1, &Request::Read { path: "/a//b" }).unwrap();
        assert_eq!(s.decode_request(), Err(StoreError::Invalid));

        let c = StoreSlot::event_credit();
        assert!(c.is_event_credit() && c.is_watch_event());
        assert_eq!(c.decode_request(), Err(StoreError::Invalid));
        let mut not = c;
        not.len = 1;
        assert!(!not.is_event_credit());
        let e = StoreSlot::watch_event(PATH128, 3).unwrap();
        assert!(e.is_watch_event());
        assert_eq!(e.req_id, 0);
        assert_eq!(
            e.decode_response(),
            Ok(Response::WatchEvent {
                path: PATH128,
                token: 3
            })
        );
        let r = StoreSlot::response(4, &Response::Ok).unwrap();
        assert_eq!(r.decode_response(), Ok(Response::Ok));
        let mut bad = r;
        bad.flags = SLOT_WATCH_EVENT;
        assert_eq!(bad.decode_response(), Err(StoreError::Invalid));
        let mut bad = e;
        bad.flags = 0;
        assert_eq!(bad.decode_response(), Err(StoreError::Invalid));
        let mut bad = r;
        bad.flags = 0x8000;
        assert_eq!(bad.decode_response(), Err(StoreError::Invalid));
    }

    #[test]
    fn paths() {
        for p in [
            "/",
            "/a",
            "/local/domain/7",
            "/A-Z_a.z-09",
            "/a/...",
            "/.hidden",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        for p in [
            "", "a", "a/b", "//", "/a/", "/a//b", "/a b", "/a/./b", "/a/../b", "/.", "/é", "/a\0",
            "/a:b", "/a/b/",
        ] {
            assert_eq!(check_path(p), Err(StoreError::Invalid), "{p:?}");
        }
        let long = [b'a'; PATH_MAX];
        let mut p = alloc::string::String::from("/");
        p.push_str(core::str::from_utf8(&long[..PATH_MAX - 1]).unwrap());
        assert_eq!(check_path(&p), Ok(()));
        p.push('a');
        assert_eq!(check_path(&p), Err(StoreError::TooBig));

        assert_eq!(parent("/"), None);
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/a/b/c"), Some("/a/b"));
        assert!(is_in_subtree("/a/b", "/a"));
        assert!(is_in_subtree("/a", "/a"));
        assert!(is_in_subtree("/a", "/"));
        assert!(!is_in_subtree("/ab", "/a"));
        assert!(!is_in_subtree("/a", "/a/b"));
        assert_eq!(components("/").count(), 0);
        assert_eq!(components("/a/b").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(join("/", "a").unwrap().as_str(), "/a");
        assert_eq!(join("/a", "b").unwrap().as_str(), "/a/b");
        assert_eq!(join("/a", "b/c"), Err(StoreError::Invalid));
        assert_eq!(join(PATH128, "b"), Err(StoreError::TooBig));
    }

    #[test]
    fn well_known_paths() {
        assert_eq!(home_path(0).as_str(), "/local/domain/0");
        assert_eq!(home_path(DOMID_HV).as_str(), "/local/domain/32752");
        assert_eq!(
            frontend_dir(3, "vbd", 0).unwrap().as_str(),
            "/local/domain/3/device/vbd/0"
        );
        assert_eq!(
            backend_dir(DOMID_HV, 3, "vbd", 0).unwrap().as_str(),
            "/local/domain/32752/backend/vbd/3/0"
        );
        assert_eq!(frontend_dir(3, "a/b", 0), Err(StoreError::Invalid));
        let p = backend_dir(u16::MAX, u16::MAX, "vif", u32::MAX).unwrap();
        let p = join(&p, key::EVENT_CHANNEL).unwrap();
        assert!(is_valid_path(&p));
        for k in [
            key::DEVICE,
            key::BACKEND,
            key::BACKEND_ID,
            key::FRONTEND,
            key::FRONTEND_ID,
            key::STATE,
            key::RING_REF,
            key::EVENT_CHANNEL,
        ] {
            check_name(k).unwrap();
        }
    }

    #[test]
    fn errors_map_to_errno() {
        for e in StoreError::ALL {
            assert_eq!(StoreError::from_errno(e.errno()), Some(e));
            assert_eq!(Errno::from(e), e.errno());
        }
        assert_eq!(StoreError::from_errno(Errno::ENOSYS), None);
        assert_eq!(StoreError::Denied.errno(), Errno::EACCES);
        assert_eq!(StoreError::Busy.errno(), Errno::EBUSY);
    }

    #[test]
    fn state_transitions() {
        use DeviceState::*;
        for s in DeviceState::ALL {
            assert!(s.can_move_to(s));
            assert_eq!(DeviceState::from_u8(s as u8), Some(s));
        }
        assert_eq!(DeviceState::from_u8(7), None);
        // The normal life of a frontend and a backend.
        for path in [
            &[Initialising, Initialised, Connected, Closing, Closed][..],
            &[
                Initialising,
                InitWait,
                Connected,
                Closing,
                Closed,
                InitWait,
                Connected,
            ],
            &[Unknown, Initialising, Closed, Initialising],
        ] {
            for w in path.windows(2) {
                assert!(w[0].can_move_to(w[1]), "{:?} -> {:?}", w[0], w[1]);
            }
        }
        for (a, b) in [
            (Connected, Initialising),
            (Connected, Initialised),
            (Closing, Connected),
            (Closed, Closing),
            (Closed, Connected),
            (Initialised, InitWait),
            (Unknown, Connected),
            (Connected, Unknown),
        ] {
            assert!(!a.can_move_to(b), "{a:?} -> {b:?}");
        }
        // Every live state can close.
        for s in [Initialising, InitWait, Initialised, Connected] {
            assert!(s.can_move_to(Closing) && s.can_move_to(Closed));
        }
    }

    #[test]
    fn perms() {
        let mut p = Perms::owned_by(3);
        assert!(p.can_read(3) && p.can_write(3));
        assert!(p.can_read(DOMID_HV) && p.can_write(DOMID_HV));
        assert!(!p.can_read(4));
        p.grant(4, Access::Read).unwrap();
        assert!(p.can_read(4) && !p.can_write(4));
        p.others = Access::Write;
        assert_eq!(p.access(4), Access::ReadWrite);
        assert_eq!(p.access(5), Access::Write);
        p.grant(4, Access::None).unwrap();
        assert_eq!(p.acl.len(), 1);
        assert_eq!(p.validate(), Ok(()));
        p.acl.push((4, Access::Read)).unwrap();
        assert_eq!(p.validate(), Err(StoreError::Invalid));
        let mut q = Perms::owned_by(0x7ff1);
        assert_eq!(q.validate(), Err(StoreError::Invalid));
        q.owner = DOMID_HV;
        assert_eq!(q.validate(), Ok(()));
        q.grant(DOMID_HV, Access::Read).unwrap();
        assert_eq!(q.validate(), Err(StoreError::Invalid));
        let mut full = max_perms();
        assert_eq!(full.grant(1, Access::Read), Err(StoreError::NoSpace));
        assert_eq!(Access::Read.union(Access::Write), Access::ReadWrite);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(r) = decode_request(&bytes) {
                let _ = r.validate();
                let mut buf = [0u8; STORE_PAYLOAD_MAX];
                // Re-encoding may differ (over-long varints decode) but means the same.
                let n = encode_request(&r, &mut buf).unwrap();
                proptest::prop_assert_eq!(decode_request(&buf[..n]), Ok(r));
            }
            let _ = decode_response(&bytes);
        }
    }
}
