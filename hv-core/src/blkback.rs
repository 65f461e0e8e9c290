//! Block devices served by the hv: for each `--disk`, a backend thread that acts as the
//! toolstack (creates the device directories in the store), waits for the frontend to publish
//! its ring and event channel, then serves the ring with `pv_drivers`' block backend, through
//! [`HvHost`] (see [`crate::backend_host`] for how grants are held).

use std::sync::Arc;
use std::thread;

use hypercall_abi::evtchn::Port;
use hypercall_abi::io::blk;
use hypercall_abi::store::{self as st, DeviceState, Value};
use hypercall_abi::PAGE_SIZE;
use pv_drivers::backend::{BlkBackend, BlkFeatures, BlkRing, Disk};

use crate::backend_host::{
    read_state, read_u64, setup_device, store_write, DeviceSetup, Hold, HvHost,
};
use crate::domain::{Domain, Signal};
use crate::evtchn::Backend;
use crate::registry::Registry;

/// A disk to serve.
pub struct DiskDevice {
    /// Device number (`vbd/<n>`).
    pub n: u32,
    /// The opened image.
    pub disk: Disk,
    /// Offer no writes.
    pub read_only: bool,
}

/// Starts the backend thread of one disk of `dom`.
pub fn start(
    dom: Arc<Domain>,
    reg: Arc<Registry>,
    dev: DiskDevice,
) -> std::io::Result<thread::JoinHandle<()>> {
    let DeviceSetup {
        signal,
        front,
        back,
    } = setup_device(
        &dom,
        &reg,
        Backend::Block(dev.n),
        "vbd",
        dev.n,
        |_, back| publish(&reg, &dev, back),
    )?;
    thread::Builder::new()
        .name(format!("{}-vbd{}", dom.name, dev.n))
        .spawn(move || serve(dom, reg, dev, signal, front, back))
}

/// Writes the backend's feature keys and moves it to InitWait.
fn publish(reg: &Registry, dev: &DiskDevice, back: &str) {
    let (ro, flush, discard) = (
        dev.read_only,
        true,
        !dev.read_only && dev.disk.supports_discard(),
    );
    let k = |dir: &str, key: &str| format!("{dir}/{key}");
    store_write(
        reg,
        &k(back, blk::KEY_SECTORS),
        Value::U64(dev.disk.sectors()),
    );
    store_write(
        reg,
        &k(back, blk::KEY_SECTOR_SIZE),
        Value::U64(blk::SECTOR_SIZE),
    );
    store_write(reg, &k(back, blk::KEY_READ_ONLY), Value::Bool(ro));
    store_write(reg, &k(back, blk::KEY_FEATURE_FLUSH), Value::Bool(flush));
    store_write(
        reg,
        &k(back, blk::KEY_FEATURE_DISCARD),
        Value::Bool(discard),
    );
    store_write(
        reg,
        &k(back, blk::KEY_MAX_SEGMENTS),
        Value::U64(blk::MAX_SEGMENTS as u64),
    );
    store_write(
        reg,
        &k(back, st::key::STATE),
        Value::State(DeviceState::InitWait),
    );
}

/// Maps the frontend's ring and connects its port, once it says `Initialised`. The returned
/// hold keeps the ring page granted while the device is connected.
fn connect(
    dom: &Arc<Domain>,
    reg: &Arc<Registry>,
    dev: &DiskDevice,
    front: &str,
) -> Result<(BlkRing, Port, Hold), String> {
    let ring_ref = read_u64(reg, &format!("{front}/{}", st::key::RING_REF)).ok_or("no ring-ref")?;
    let port =
        read_u64(reg, &format!("{front}/{}", st::key::EVENT_CHANNEL)).ok_or("no event-channel")?;
    let gref = u32::try_from(ring_ref).map_err(|_| format!("ring-ref {ring_ref}: out of range"))?;
    let (hold, frame) =
        Hold::take(dom, reg, gref, true).map_err(|e| format!("ring-ref {ring_ref}: {e}"))?;
    let port = dom
        .bind_to_backend(port, Backend::Block(dev.n))
        .map_err(|e| format!("event-channel {port}: {e}"))?;
    // SAFETY: the ring page is a page of the frontend's RAM (checked by hv_hold), alive as
    // long as `dom`, which the serving thread holds (and held granted by `hold`); the guest writes it concurrently, which the
    // ring is built for.
    let ring = unsafe { BlkRing::new(dom.ram.host_base().add(frame as usize), PAGE_SIZE as usize) }
        .map_err(|e| format!("ring: {e}"))?;
    Ok((ring, port, hold))
}

fn serve(
    dom: Arc<Domain>,
    reg: Arc<Registry>,
    dev: DiskDevice,
    signal: Arc<Signal>,
    front: String,
    back: String,
) {
    let back_state = format!("{back}/{}", st::key::STATE);
    let front_state = format!("{front}/{}", st::key::STATE);
    let features = BlkFeatures {
        read_only: dev.read_only,
        flush: true,
        discard: !dev.read_only,
    };
    let mut backend: Option<(BlkBackend<HvHost>, Hold)> = None;
    let mut pending_disk = Some(dev.disk);
    let n = dev.n;
    // Set when the device must end up Closed (the frontend closed it, broke its ring, or could
    // not be connected); the state is written after everything is released.
    let mut close = false;
    loop {
        signal.wait(None);
        if dom.is_stopping() {
            break;
        }
        let fstate = read_state(&reg, &front_state);
        if let Some((b, _ring_hold)) = backend.as_mut() {
            if matches!(fstate, Some(DeviceState::Closing | DeviceState::Closed)) {
                close = true;
                break;
            }
            if b.process().is_err() {
                eprintln!(
                    "hv: vbd{n} of domain {}: the frontend broke its ring; disconnected",
                    dom.name
                );
                close = true;
                break;
            }
            continue;
        }
        if !matches!(
            fstate,
            Some(DeviceState::Initialised | DeviceState::Connected)
        ) {
            continue;
        }
        let probe = DiskDevice {
            n,
            disk: match pending_disk.take() {
                Some(d) => d,
                None => break,
            },
            read_only: features.read_only,
        };
        match connect(&dom, &reg, &probe, &front) {
            Ok((ring, port, ring_hold)) => {
                let host = HvHost::new(Arc::clone(&dom), Arc::clone(&reg), port);
                let mut b = BlkBackend::new(ring, probe.disk, features, host);
                let counters = b.counters();
                dom.stats.add_device(
                    format!("vbd/{n}"),
                    Box::new(move || {
                        let s = counters.snapshot();
                        format!(
                            "{} requests ({} reads {} bytes, {} writes {} bytes, {} flushes, \
                             {} discards), {} failed",
                            s.requests,
                            s.reads,
                            s.bytes_read,
                            s.writes,
                            s.bytes_written,
                            s.flushes,
                            s.discards,
                            s.errors
                        )
                    }),
                );
                store_write(&reg, &back_state, Value::State(DeviceState::Connected));
                let broken = b.process().is_err();
                backend = Some((b, ring_hold));
                if broken {
                    close = true;
                    break;
                }
            }
            Err(why) => {
                eprintln!("hv: vbd{n} of domain {}: cannot connect: {why}", dom.name);
                close = true;
                break;
            }
        }
    }
    // Closed means released: let go of the ring page and every grant first.
    drop(backend);
    if close {
        store_write(&reg, &back_state, Value::State(DeviceState::Closed));
    }
}
