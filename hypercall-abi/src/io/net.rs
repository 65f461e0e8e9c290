//! The network device protocol (`vif`), in the manner of Xen's netif.
//!
//! A `vif` carries Ethernet frames (destination MAC, source MAC, EtherType, payload; no
//! preamble and no FCS) between a frontend and a backend, one ring per direction.
//!
//! # Connection
//!
//! The hypervisor creates the device directories (see [`crate::store`] §8) for interface `<n>`
//! of domain `<front>`: the frontend directory `/local/domain/<front>/device/vif/<n>` and the
//! backend directory (`backend` key). The backend publishes in its directory: [`KEY_MAC`]
//! (`Bytes`, [`MAC_LEN`] bytes: the address the frontend is to use as its own), [`KEY_MTU`]
//! (`U64`, the largest payload, [`DEFAULT_MTU`] normally; a frame is at most `mtu +`
//! [`ETH_HLEN`] bytes), [`KEY_FEATURE_SG`] (`Bool`, always `true` in this version: packets may
//! span several slots in both directions), then moves its `state` to `InitWait`. The frontend
//! allocates one page per ring, grants both to the backend domain, allocates an unbound event
//! channel port for the backend domain (one port serves both rings), writes [`KEY_TX_RING_REF`],
//! [`KEY_RX_RING_REF`] and [`KEY_EVENT_CHANNEL`] (`U64` each) in its directory and moves its
//! `state` to `Initialised`. The backend maps the rings, connects to the port and moves to
//! `Connected`; the frontend then moves to `Connected` too. Either side leaves with `Closing`
//! then `Closed`.
//!
//! # Transmit (frontend to backend)
//!
//! The TX ring is a [`crate::ring`] ring of [`NetTxRequest`] / [`NetTxResponse`] on one page
//! ([`TX_RING_SLOTS`] slots). A packet occupies one or more consecutive slots, at most
//! [`MAX_TX_SLOTS`]: each slot names a fragment of the packet, `size` bytes at `offset` in a
//! page that the frontend granted to the backend domain (read-only is enough), and every slot
//! but the last has [`TXF_MORE_DATA`]. The first slot's `size` is the **whole packet's** size;
//! its own fragment is what the other slots leave (`size` minus theirs). Every fragment is at
//! least one byte long and lies inside its page. A frontend publishes a packet's slots together.
//!
//! Every slot gets exactly one response with its `id`, in ring order; all the slots of a packet
//! get the packet's status: 0 (the backend took the frame; like Ethernet, it may still be
//! dropped further on), `-EINVAL` for a malformed packet (an unknown flag, a non-zero reserved
//! field, an empty fragment, one that crosses its page's end, fragments that add up to more
//! than the first slot's `size`, or a chain whose [`MAX_TX_SLOTS`]th slot still has
//! [`TXF_MORE_DATA`]: the packet ends there and the next slot starts a new one), `-E2BIG` for a
//! frame larger than `mtu + ETH_HLEN`, `-EACCES` for a grant the backend cannot use.
//!
//! # Receive (backend to frontend)
//!
//! The RX ring is a ring of [`NetRxRequest`] / [`NetRxResponse`] ([`RX_RING_SLOTS`] slots). The
//! frontend posts empty buffers: each request names a whole page granted to the backend domain
//! **read-write**. The backend fills buffers in ring order; a frame takes `ceil(len / 4096)`
//! buffers, and if fewer are posted when the frame arrives the backend drops it (it never waits
//! for buffers). Each buffer is answered with its request's `id`: `status` is the number of
//! frame bytes in it (at least 1), starting at `offset` in the page, and `flags` has
//! [`RXF_MORE_DATA`] when the frame continues in the next response.
//!
//! A response with `status < 0` carries no data and `flags` 0; the frontend simply posts the
//! buffer again. `-EINVAL` marks a request with a non-zero reserved field and `-EACCES` a grant
//! the backend cannot use; the frame that was to go into that buffer is dropped, and the other
//! buffers taken for it are returned unused with `-EAGAIN`.
//!
//! `id`s are chosen by the frontend and only echoed: the backend never looks them up, so a
//! duplicate or meaningless `id` can only confuse the frontend itself. A backend that finds a
//! ring itself broken (impossible indices) disconnects (`Closed`).

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes in a MAC address.
pub const MAC_LEN: usize = 6;
/// Bytes in an Ethernet header (destination, source, EtherType).
pub const ETH_HLEN: usize = 14;
/// The usual MTU, published unless configured otherwise.
pub const DEFAULT_MTU: u16 = 1500;
/// The largest packet a slot chain can describe (the first slot's `size` is a `u16`).
pub const MAX_PACKET_SIZE: usize = u16::MAX as usize;
/// The largest MTU: a frame of `MAX_MTU + ETH_HLEN` bytes is [`MAX_PACKET_SIZE`].
pub const MAX_MTU: u16 = (MAX_PACKET_SIZE - ETH_HLEN) as u16;
/// Most slots one TX packet may take: enough for [`MAX_PACKET_SIZE`] bytes in pages, each
/// fragment at any offset.
pub const MAX_TX_SLOTS: usize = 18;
/// Bytes of data one RX buffer holds (a whole page).
pub const RX_BUFFER_SIZE: usize = 4096;

/// TX flag: the packet continues in the next slot.
pub const TXF_MORE_DATA: u16 = 1 << 0;
/// RX flag: the frame continues in the next response.
pub const RXF_MORE_DATA: u16 = 1 << 0;

/// Store key (backend): the frontend's MAC address.
pub const KEY_MAC: &str = "mac";
/// Store key (backend): the largest payload; frames are at most `mtu + ETH_HLEN` bytes.
pub const KEY_MTU: &str = "mtu";
/// Store key (backend): packets may span several slots (always `true` in this version).
pub const KEY_FEATURE_SG: &str = "feature-sg";
/// Store key (frontend): grant reference of the TX ring page.
pub const KEY_TX_RING_REF: &str = "tx-ring-ref";
/// Store key (frontend): grant reference of the RX ring page.
pub const KEY_RX_RING_REF: &str = "rx-ring-ref";
/// Store key (frontend): the unbound port allocated for the backend (both rings).
pub const KEY_EVENT_CHANNEL: &str = "event-channel";

/// A TX slot: one fragment of a packet.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetTxRequest {
    /// Chosen by the frontend; echoed in the response.
    pub id: u16,
    /// [`TXF_MORE_DATA`] or 0.
    pub flags: u16,
    /// Grant reference of the fragment's page.
    pub gref: u32,
    /// First byte of the fragment in the page.
    pub offset: u16,
    /// In a packet's first slot, the whole packet's size; in the others, this fragment's.
    pub size: u16,
    /// Reserved, must be zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<NetTxRequest>() == 16);
const _: () = assert!(offset_of!(NetTxRequest, flags) == 2);
const _: () = assert!(offset_of!(NetTxRequest, gref) == 4);
const _: () = assert!(offset_of!(NetTxRequest, offset) == 8);
const _: () = assert!(offset_of!(NetTxRequest, size) == 10);
const _: () = assert!(offset_of!(NetTxRequest, pad) == 12);

/// The answer to one TX slot.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetTxResponse {
    /// The slot's `id`.
    pub id: u16,
    /// 0, or `-errno` (the packet's status).
    pub status: i16,
}
const _: () = assert!(size_of::<NetTxResponse>() == 4);
const _: () = assert!(offset_of!(NetTxResponse, status) == 2);

/// An RX buffer posted by the frontend.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetRxRequest {
    /// Chosen by the frontend; echoed in the response.
    pub id: u16,
    /// Reserved, must be zero.
    pub pad: u16,
    /// Grant reference of the buffer's page (granted read-write).
    pub gref: u32,
}
const _: () = assert!(size_of::<NetRxRequest>() == 8);
const _: () = assert!(offset_of!(NetRxRequest, gref) == 4);

/// A filled (or refused) RX buffer.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// First byte of data in the page.
    pub offset: u16,
    /// [`RXF_MORE_DATA`] or 0.
    pub flags: u16,
    /// Bytes of the frame in this buffer (`>= 1`), or `-errno` (no data).
    pub status: i16,
}
const _: () = assert!(size_of::<NetRxResponse>() == 8);
const _: () = assert!(offset_of!(NetRxResponse, offset) == 2);
const _: () = assert!(offset_of!(NetRxResponse, flags) == 4);
const _: () = assert!(offset_of!(NetRxResponse, status) == 6);

/// TX ring slots on one page.
pub const TX_RING_SLOTS: u32 = crate::ring::ring_slots::<NetTxRequest, NetTxResponse>(4096);
const _: () = assert!(TX_RING_SLOTS == 128);
/// RX ring slots on one page.
pub const RX_RING_SLOTS: u32 = crate::ring::ring_slots::<NetRxRequest, NetRxResponse>(4096);
const _: () = assert!(RX_RING_SLOTS == 256);

// A maximal packet fits in the slots allowed (an unaligned one takes a slot more than its
// pages), a maximal frame in the RX ring, and a buffer's byte count in `status`.
const _: () = assert!(MAX_PACKET_SIZE.div_ceil(4096) < MAX_TX_SLOTS);
const _: () = assert!(MAX_TX_SLOTS <= TX_RING_SLOTS as usize);
const _: () = assert!(MAX_PACKET_SIZE.div_ceil(RX_BUFFER_SIZE) <= RX_RING_SLOTS as usize);
const _: () = assert!(RX_BUFFER_SIZE <= i16::MAX as usize);
