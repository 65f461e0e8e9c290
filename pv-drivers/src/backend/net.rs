//! The network backend: serves the [`hypercall_abi::io::net`] rings of one frontend.
//!
//! [`NetBackend::process_tx`] drains the frontend's TX ring and hands every well-formed frame
//! to a [`FrameSink`] (a [`Switch`](super::switch::Switch) port, a TAP device, a test);
//! [`NetBackend::deliver`] copies a frame into the buffers the frontend posted on its RX ring.
//! Neither ever waits for the frontend.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::vec::Vec;

use hypercall_abi::io::net::{
    NetRxRequest, NetRxResponse, NetTxRequest, NetTxResponse, ETH_HLEN, MAX_MTU, MAX_TX_SLOTS,
    RXF_MORE_DATA, RX_BUFFER_SIZE, TXF_MORE_DATA,
};
use hypercall_abi::ring::BackRing;
use hypercall_abi::Errno;

use super::{GrantHost, GrantedPage, PAGE_SIZE};

const _: () = assert!(RX_BUFFER_SIZE == PAGE_SIZE);

/// The back end of a TX ring.
pub type NetTxRing = BackRing<NetTxRequest, NetTxResponse>;
/// The back end of an RX ring.
pub type NetRxRing = BackRing<NetRxRequest, NetRxResponse>;

/// Where [`NetBackend::process_tx`] sends the frames the frontend transmits. Any
/// `FnMut(&[u8])` is one.
pub trait FrameSink {
    /// Takes one complete Ethernet frame (1 to `mtu + ETH_HLEN` bytes; its contents are the
    /// frontend's, unchecked). Must not block for long.
    fn frame(&mut self, frame: &[u8]);
}

impl<F: FnMut(&[u8])> FrameSink for F {
    fn frame(&mut self, frame: &[u8]) {
        self(frame)
    }
}

/// Why a [`NetBackend`] call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetError {
    /// The frontend wrote an impossible ring index: stop serving the device and move its state
    /// to `Closed`. Every later call fails the same way without touching the rings.
    Disconnect,
    /// [`deliver`](NetBackend::deliver): the frontend has not posted enough RX buffers; the
    /// frame was dropped (counted in `rx_dropped`).
    NoBuffers,
    /// [`deliver`](NetBackend::deliver): the frame is empty or longer than `mtu + ETH_HLEN`;
    /// dropped (counted in `rx_dropped`).
    BadFrame,
    /// [`deliver`](NetBackend::deliver): a buffer taken for the frame was unusable (this is the
    /// status it was answered with); the frame was dropped (counted in `rx_errors`).
    BadBuffer(Errno),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Disconnect => {
                f.write_str("the frontend wrote an impossible ring index; device disconnected")
            }
            NetError::NoBuffers => f.write_str("no receive buffer posted; frame dropped"),
            NetError::BadFrame => f.write_str("frame empty or above the MTU; dropped"),
            NetError::BadBuffer(e) => write!(f, "unusable receive buffer ({e:?}); frame dropped"),
        }
    }
}

impl std::error::Error for NetError {}

/// Live counters of a network backend, readable from any thread ([`NetBackend::counters`]).
#[derive(Debug, Default)]
pub struct NetCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_errors: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    rx_errors: AtomicU64,
}

/// A snapshot of [`NetCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetStats {
    /// Frames taken from the TX ring and handed to the sink.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// TX packets refused (answered with an error status).
    pub tx_errors: u64,
    /// Frames delivered into RX buffers.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames dropped for lack of RX buffers, or because they were empty or too large.
    pub rx_dropped: u64,
    /// Frames dropped because a buffer taken for them was unusable.
    pub rx_errors: u64,
}

impl NetCounters {
    /// The counters' current values.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            tx_errors: get(&self.tx_errors),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            rx_errors: get(&self.rx_errors),
        }
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A network backend: one frontend's TX and RX rings, reaching granted pages and the
/// frontend's event channel through its [`GrantHost`].
///
/// # Transmit
///
/// Each TX slot is copied out of the ring once, and only the copies are looked at. A packet is
/// the slots up to the first without `TXF_MORE_DATA`, or [`MAX_TX_SLOTS`] slots. If the ring
/// holds only the start of a packet, its slots are kept (unanswered) until the rest is
/// published: a frontend that never publishes the rest only stalls its own TX ring. A packet's
/// status is the first failing check in this order: `EINVAL` (see the
/// [protocol](hypercall_abi::io::net)), `E2BIG` (above `mtu + ETH_HLEN`), `EACCES` (a grant
/// refused; no data is copied before every page of the packet was granted). A good packet is
/// gathered into one buffer and handed to the sink; then every slot is answered. The frame's
/// contents are not checked (a runt is the sink's business).
///
/// # Receive
///
/// [`deliver`](Self::deliver) takes exactly the buffers a frame needs, or none at all when
/// fewer are posted; see the [protocol](hypercall_abi::io::net) for how unusable buffers are
/// answered. The backend holds no buffer between calls, so it keeps no state about `id`s.
///
/// Data moves between granted pages and local buffers with atomic loads and stores (the
/// frontend may write its pages at any time), one copy each way.
pub struct NetBackend<H: GrantHost> {
    tx: NetTxRing,
    rx: NetRxRing,
    host: H,
    mtu: u16,
    counters: Arc<NetCounters>,
    disconnected: bool,
    /// The TX slots of the packet being gathered (possibly incomplete between calls).
    chain: Vec<NetTxRequest>,
    /// Scratch: the frame being gathered, pages of one packet or frame, RX requests taken.
    frame: Vec<u8>,
    pages: Vec<GrantedPage<H::Guard>>,
    rx_taken: Vec<(NetRxRequest, Result<(), Errno>)>,
}

impl<H: GrantHost> fmt::Debug for NetBackend<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetBackend")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .field("mtu", &self.mtu)
            .field("disconnected", &self.disconnected)
            .field("pending_tx_slots", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn status_of(e: Errno) -> i16 {
    // Every errno value is below 200.
    -(e as i32 as i16)
}

impl<H: GrantHost> NetBackend<H> {
    /// A backend serving `tx` and `rx` (already attached to the frontend's ring pages) with
    /// the given MTU, lowered to [`MAX_MTU`] if above. Publish [`mtu`](Self::mtu).
    pub fn new(tx: NetTxRing, rx: NetRxRing, mtu: u16, host: H) -> Self {
        let mtu = mtu.min(MAX_MTU);
        NetBackend {
            tx,
            rx,
            host,
            mtu,
            counters: Arc::default(),
            disconnected: false,
            chain: Vec::with_capacity(MAX_TX_SLOTS),
            frame: Vec::new(),
            pages: Vec::with_capacity(MAX_TX_SLOTS),
            rx_taken: Vec::with_capacity(MAX_TX_SLOTS),
        }
    }

    /// The MTU served.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The largest frame, `mtu + ETH_HLEN` bytes.
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + ETH_HLEN
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The live counters (share them with a stats printer).
    pub fn counters(&self) -> Arc<NetCounters> {
        Arc::clone(&self.counters)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }

    /// Whether a ring was found broken.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// TX slots held because their packet's end has not been published yet.
    pub fn pending_tx_slots(&self) -> usize {
        self.chain.len()
    }

    /// Takes the backend apart (to close the device).
    pub fn into_parts(self) -> (NetTxRing, NetRxRing, H) {
        (self.tx, self.rx, self.host)
    }

    fn disconnect(&mut self) -> NetError {
        self.disconnected = true;
        NetError::Disconnect
    }

    /// Serves every TX slot the frontend has published, until the ring is empty after the
    /// final check (so the caller may wait for the next notification), handing each good frame
    /// to `sink`; returns how many packets were answered (good or not). Responses are published
    /// packet by packet, notifying the frontend whenever the ring says it is waiting.
    ///
    /// [`NetError::Disconnect`] if the frontend broke the ring.
    pub fn process_tx<S: FrameSink + ?Sized>(&mut self, sink: &mut S) -> Result<usize, NetError> {
        if self.disconnected {
            return Err(NetError::Disconnect);
        }
        let mut packets = 0;
        loop {
            loop {
                let req = match self.tx.poll_request() {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(_) => return Err(self.disconnect()),
                };
                self.chain.push(req);
                if req.flags & TXF_MORE_DATA != 0 && self.chain.len() < MAX_TX_SLOTS {
                    continue;
                }
                let status = self.gather();
                self.pages.clear();
                let c = &*self.counters;
                match status {
                    Ok(()) => {
                        sink.frame(&self.frame);
                        NetCounters::add(&c.tx_packets, 1);
                        NetCounters::add(&c.tx_bytes, self.frame.len() as u64);
                    }
                    Err(_) => NetCounters::add(&c.tx_errors, 1),
                }
                self.frame.clear();
                let status = status.err().map_or(0, status_of);
                for r in &self.chain {
                    let rsp = NetTxResponse { id: r.id, status };
                    // Cannot fail: every slot of the chain is consumed and unanswered.
                    if self.tx.push_response(&rsp).is_err() {
                        self.chain.clear();
                        return Err(self.disconnect());
                    }
                }
                self.chain.clear();
                packets += 1;
                if self.tx.push_responses_and_check_notify() {
                    self.host.notify();
                }
            }
            match self.tx.final_check_for_requests() {
                Ok(true) => continue,
                Ok(false) => return Ok(packets),
                Err(_) => return Err(self.disconnect()),
            }
        }
    }

    /// Validates the complete chain in `self.chain` and gathers its frame into `self.frame`,
    /// holding its pages in `self.pages`.
    fn gather(&mut self) -> Result<(), Errno> {
        let chain = &self.chain[..];
        let (first, rest) = chain.split_first().ok_or(Errno::EINVAL)?;
        let last = chain.last().ok_or(Errno::EINVAL)?;
        if last.flags & TXF_MORE_DATA != 0
            || chain
                .iter()
                .any(|r| r.flags & !TXF_MORE_DATA != 0 || r.pad != 0)
        {
            return Err(Errno::EINVAL);
        }
        let total = usize::from(first.size);
        let others: usize = rest.iter().map(|r| usize::from(r.size)).sum();
        // The first fragment must be at least one byte (this also refuses an empty packet).
        if others >= total {
            return Err(Errno::EINVAL);
        }
        let frag_len = |i: usize, r: &NetTxRequest| {
            if i == 0 {
                total - others
            } else {
                usize::from(r.size)
            }
        };
        if chain
            .iter()
            .enumerate()
            .any(|(i, r)| frag_len(i, r) == 0 || usize::from(r.offset) + frag_len(i, r) > PAGE_SIZE)
        {
            return Err(Errno::EINVAL);
        }
        if total > self.max_frame() {
            return Err(Errno::E2BIG);
        }
        for r in chain {
            let page = self.host.page(r.gref, false).map_err(|_| Errno::EACCES)?;
            self.pages.push(page);
        }
        self.frame.resize(total, 0);
        let mut pos = 0;
        for (i, (r, page)) in chain.iter().zip(&self.pages).enumerate() {
            let len = frag_len(i, r);
            let src = page.as_ptr().wrapping_add(usize::from(r.offset));
            // SAFETY: offset + len <= PAGE_SIZE (checked above), so the range is inside the
            // page, which is readable while `self.pages` holds it (GrantedPage contract).
            unsafe { load_bytes(src, &mut self.frame[pos..pos + len]) };
            pos += len;
        }
        Ok(())
    }

    /// Copies `frame` into the RX buffers the frontend posted and answers them, notifying the
    /// frontend if it is waiting. Never waits: without enough buffers the frame is dropped.
    ///
    /// Errors: [`NetError::BadFrame`] (empty, or longer than [`max_frame`](Self::max_frame)),
    /// [`NetError::NoBuffers`] (fewer buffers posted than the frame needs, nothing taken),
    /// [`NetError::BadBuffer`] (the frame was dropped and its buffers answered as the
    /// [protocol](hypercall_abi::io::net) says), [`NetError::Disconnect`] (broken ring).
    pub fn deliver(&mut self, frame: &[u8]) -> Result<(), NetError> {
        if self.disconnected {
            return Err(NetError::Disconnect);
        }
        if frame.is_empty() || frame.len() > self.max_frame() {
            NetCounters::add(&self.counters.rx_dropped, 1);
            return Err(NetError::BadFrame);
        }
        let need = frame.len().div_ceil(RX_BUFFER_SIZE);
        let avail = match self.rx.unconsumed_requests() {
            Ok(n) => n as usize,
            Err(_) => return Err(self.disconnect()),
        };
        if avail < need {
            NetCounters::add(&self.counters.rx_dropped, 1);
            return Err(NetError::NoBuffers);
        }
        let result = self.take_buffers(need);
        if let Err(NetError::Disconnect) = result {
            self.rx_taken.clear();
            self.pages.clear();
            return Err(self.disconnect());
        }
        let c = &*self.counters;
        match result {
            Ok(()) => {
                for (k, page) in self.pages.iter().enumerate() {
                    let chunk =
                        &frame[k * RX_BUFFER_SIZE..frame.len().min((k + 1) * RX_BUFFER_SIZE)];
                    // SAFETY: chunk.len() <= RX_BUFFER_SIZE == PAGE_SIZE, from the page's start;
                    // the page was granted writable and is held until `self.pages` is cleared.
                    unsafe { store_bytes(page.as_ptr(), chunk) };
                }
                NetCounters::add(&c.rx_packets, 1);
                NetCounters::add(&c.rx_bytes, frame.len() as u64);
            }
            Err(NetError::NoBuffers) => NetCounters::add(&c.rx_dropped, 1),
            Err(_) => NetCounters::add(&c.rx_errors, 1),
        }
        self.pages.clear();
        let good = result.is_ok();
        let n = self.rx_taken.len();
        for (k, (req, st)) in self.rx_taken.iter().enumerate() {
            let rsp = if good {
                let len = (frame.len() - k * RX_BUFFER_SIZE).min(RX_BUFFER_SIZE);
                NetRxResponse {
                    id: req.id,
                    offset: 0,
                    flags: if k + 1 < n { RXF_MORE_DATA } else { 0 },
                    // len <= RX_BUFFER_SIZE <= i16::MAX (asserted in the protocol).
                    status: len as i16,
                }
            } else {
                NetRxResponse {
                    id: req.id,
                    offset: 0,
                    flags: 0,
                    status: status_of(st.err().unwrap_or(Errno::EAGAIN)),
                }
            };
            // Cannot fail: every request taken is consumed and unanswered.
            if self.rx.push_response(&rsp).is_err() {
                self.rx_taken.clear();
                return Err(self.disconnect());
            }
        }
        self.rx_taken.clear();
        if n > 0 && self.rx.push_responses_and_check_notify() {
            self.host.notify();
        }
        result
    }

    /// Takes `need` RX requests into `self.rx_taken`, each with its verdict, holding the pages
    /// of the good ones in `self.pages`. `Ok` iff all `need` were taken and are good.
    fn take_buffers(&mut self, need: usize) -> Result<(), NetError> {
        let mut result = Ok(());
        for _ in 0..need {
            let req = match self.rx.poll_request() {
                Ok(Some(req)) => req,
                // The frontend moved its index back since it was counted.
                Ok(None) => return Err(NetError::NoBuffers),
                Err(_) => return Err(NetError::Disconnect),
            };
            let verdict = if req.pad != 0 {
                Err(Errno::EINVAL)
            } else {
                self.host
                    .page(req.gref, true)
                    .map(|p| self.pages.push(p))
                    .map_err(|_| Errno::EACCES)
            };
            if let (Ok(()), Err(e)) = (result, verdict) {
                result = Err(NetError::BadBuffer(e));
            }
            self.rx_taken.push((req, verdict));
        }
        result
    }
}

/// Copies `dst.len()` bytes from `src` with atomic loads (aligned words where possible).
///
/// # Safety
///
/// `src..src + dst.len()` must lie inside one granted page that is readable for the whole call
/// and accessed by this program only atomically.
unsafe fn load_bytes(src: *const u8, dst: &mut [u8]) {
    let src = src.cast_mut();
    let n = dst.len();
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, so `p` is inside the range the caller vouches for.
        let p = unsafe { src.add(i) };
        if p.cast::<u64>().is_aligned() && n - i >= 8 {
            // SAFETY: the 8 bytes at `p` are inside the range (i + 8 <= n) and aligned; the
            // range is readable and only accessed atomically (caller's contract).
            let w = unsafe { AtomicU64::from_ptr(p.cast()) }.load(Ordering::Relaxed);
            dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        } else {
            // SAFETY: the byte at `p` is inside the range, as above.
            dst[i] = unsafe { AtomicU8::from_ptr(p) }.load(Ordering::Relaxed);
            i += 1;
        }
    }
}

/// Copies `src` to `dst` with atomic stores (aligned words where possible).
///
/// # Safety
///
/// `dst..dst + src.len()` must lie inside one granted page that is writable for the whole call
/// and accessed by this program only atomically.
unsafe fn store_bytes(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, so `p` is inside the range the caller vouches for.
        let p = unsafe { dst.add(i) };
        if p.cast::<u64>().is_aligned() && n - i >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[i..i + 8]);
            // SAFETY: the 8 bytes at `p` are inside the range (i + 8 <= n) and aligned; the
            // range is writable and only accessed atomically (caller's contract).
            unsafe { AtomicU64::from_ptr(p.cast()) }
                .store(u64::from_ne_bytes(w), Ordering::Relaxed);
            i += 8;
        } else {
            // SAFETY: the byte at `p` is inside the range, as above.
            unsafe { AtomicU8::from_ptr(p) }.store(src[i], Ordering::Relaxed);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests;
