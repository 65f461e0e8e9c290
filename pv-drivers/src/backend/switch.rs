//! An in-hypervisor learning Ethernet switch that connects the `vif`s of several domains (and
//! possibly a TAP device) as ports.
//!
//! The switch only decides where a frame goes: [`Switch::forward`] returns the ports to send
//! it to, and the caller hands the frame to each port's backend
//! ([`NetBackend::deliver`](super::net::NetBackend::deliver)).
//!
//! # Rules
//!
//! - A frame shorter than an Ethernet header ([`ETH_HLEN`] bytes) is dropped, as is a frame
//!   from a port that does not exist, and one whose source address is a group (multicast or
//!   broadcast) address or all zeros.
//! - The switch learns the source address of every other frame: the address is now behind the
//!   frame's port (moving it there if it was learned on another port). The table holds at most
//!   the capacity given to [`Switch::new`]; when it is full, new addresses are not learned
//!   (frames to them are flooded), so a port sending from random addresses cannot grow it.
//! - A frame to a group address (broadcast and multicast, the low bit of the first byte set),
//!   or to an address not in the table, is flooded: sent to every port but its source. A frame
//!   to a learned address goes to that address's port only, unless that is the source port
//!   (the destination is on the sender's own segment): then it is dropped.
//! - A frame is never sent back to its source port.
//! - Nothing ages: an address stays learned until its port is removed or it is seen behind
//!   another port.
//! - Port security: a port added with [`Switch::add_pinned_port`] owns its address. Its
//!   address is in the table from the start (whatever the capacity) and never moves; a frame
//!   from that port with another source address, or from any other port with that source
//!   address, is dropped ([`DropReason::Spoofed`]). The hv pins every port it makes for a
//!   domain to the MAC address it gave the domain, so no domain can take another's traffic or
//!   fill the table. A port added with [`Switch::add_port`] may claim any address.

use std::collections::{BTreeSet, HashMap};
use std::vec::Vec;

use hypercall_abi::io::net::{ETH_HLEN, MAC_LEN};

/// A MAC address.
pub type Mac = [u8; MAC_LEN];

/// The table size used by [`Switch::default`].
pub const DEFAULT_TABLE_SIZE: usize = 1024;

/// A port of a [`Switch`]. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(u64);

/// What [`Switch::forward`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Sent to the one port that has the destination address.
    Unicast(PortId),
    /// Sent to every port but the source (possibly none).
    Flood,
    /// Sent nowhere.
    Dropped(DropReason),
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// From a port that does not exist.
    UnknownPort,
    /// The source address is a group address or zero.
    BadSource,
    /// The destination was learned on the source port.
    Local,
    /// The source address is not the pinned port's own, or is another pinned port's.
    Spoofed,
}

/// A learning Ethernet switch. See the [module documentation](self) for its rules.
#[derive(Debug)]
pub struct Switch {
    ports: BTreeSet<PortId>,
    next: u64,
    table: HashMap<Mac, PortId>,
    capacity: usize,
    /// Pinned ports and their addresses.
    pins: HashMap<PortId, Mac>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new(DEFAULT_TABLE_SIZE)
    }
}

fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// A switch without ports whose table learns at most `capacity` addresses.
    pub fn new(capacity: usize) -> Switch {
        Switch {
            ports: BTreeSet::new(),
            next: 0,
            table: HashMap::new(),
            capacity,
            pins: HashMap::new(),
        }
    }

    /// Adds a port that may send from any address.
    pub fn add_port(&mut self) -> PortId {
        let id = PortId(self.next);
        self.next += 1;
        self.ports.insert(id);
        id
    }

    /// Adds a port that owns `mac` (see Port security in the [module
    /// documentation](self)). If another port owned `mac`, this one takes it over.
    pub fn add_pinned_port(&mut self, mac: Mac) -> PortId {
        let id = self.add_port();
        self.pins.retain(|_, m| *m != mac);
        self.pins.insert(id, mac);
        self.table.insert(mac, id);
        id
    }

    /// The port that owns `mac`, if one does.
    fn owner(&self, mac: &Mac) -> Option<PortId> {
        self.pins.iter().find_map(|(p, m)| (m == mac).then_some(*p))
    }

    /// Removes a port and forgets the addresses learned on it; `false` if it did not exist.
    pub fn remove_port(&mut self, port: PortId) -> bool {
        if !self.ports.remove(&port) {
            return false;
        }
        self.table.retain(|_, p| *p != port);
        self.pins.remove(&port);
        true
    }

    /// The ports, in the order they were added.
    pub fn ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports.iter().copied()
    }

    /// The port `mac` was learned on.
    pub fn lookup(&self, mac: &Mac) -> Option<PortId> {
        self.table.get(mac).copied()
    }

    /// Addresses learned.
    pub fn learned(&self) -> usize {
        self.table.len()
    }

    /// Decides where `frame`, received on `from`, goes, learning its source address: replaces
    /// the contents of `out` with the destination ports (in the order they were added).
    pub fn forward(&mut self, from: PortId, frame: &[u8], out: &mut Vec<PortId>) -> Verdict {
        out.clear();
        if !self.ports.contains(&from) {
            return Verdict::Dropped(DropReason::UnknownPort);
        }
        let Some(header) = frame.get(..ETH_HLEN) else {
            return Verdict::Dropped(DropReason::Runt);
        };
        let mut dst = [0; MAC_LEN];
        let mut src = [0; MAC_LEN];
        dst.copy_from_slice(&header[..MAC_LEN]);
        src.copy_from_slice(&header[MAC_LEN..2 * MAC_LEN]);
        if is_group(&src) || src == [0; MAC_LEN] {
            return Verdict::Dropped(DropReason::BadSource);
        }
        let spoofed = match self.pins.get(&from) {
            Some(own) => *own != src,
            None => self.owner(&src).is_some(),
        };
        if spoofed {
            return Verdict::Dropped(DropReason::Spoofed);
        }
        self.learn(src, from);
        if !is_group(&dst) {
            if let Some(&port) = self.table.get(&dst) {
                if port == from {
                    return Verdict::Dropped(DropReason::Local);
                }
                out.push(port);
                return Verdict::Unicast(port);
            }
        }
        out.extend(self.ports.iter().copied().filter(|p| *p != from));
        Verdict::Flood
    }

    fn learn(&mut self, mac: Mac, port: PortId) {
        if let Some(p) = self.table.get_mut(&mac) {
            *p = port;
        } else if self.table.len() < self.capacity {
            self.table.insert(mac, port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    const A: Mac = [0x02, 0, 0, 0, 0, 0xa];
    const B: Mac = [0x02, 0, 0, 0, 0, 0xb];
    const C: Mac = [0x02, 0, 0, 0, 0, 0xc];
    const BCAST: Mac = [0xff; 6];
    const MCAST: Mac = [0x01, 0x00, 0x5e, 0, 0, 1];

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, 1, 2, 3]);
        f
    }

    fn fwd(sw: &mut Switch, from: PortId, f: &[u8]) -> (Verdict, Vec<PortId>) {
        let mut out = vec![PortId(999)];
        let v = sw.forward(from, f, &mut out);
        (v, out)
    }

    #[test]
    fn learns_then_unicasts() {
        let mut sw = Switch::default();
        let (p0, p1, p2) = (sw.add_port(), sw.add_port(), sw.add_port());
        // Unknown destination: flooded to all but the source.
        assert_eq!(
            fwd(&mut sw, p0, &frame(B, A)),
            (Verdict::Flood, vec![p1, p2])
        );
        assert_eq!(sw.lookup(&A), Some(p0));
        // B answers A: unicast, and B is learned.
        assert_eq!(
            fwd(&mut sw, p1, &frame(A, B)),
            (Verdict::Unicast(p0), vec![p0])
        );
        assert_eq!(
            fwd(&mut sw, p0, &frame(B, A)),
            (Verdict::Unicast(p1), vec![p1])
        );
        assert_eq!(sw.learned(), 2);
    }

    #[test]
    fn floods_group_addresses_even_when_learned_never_to_source() {
        let mut sw = Switch::default();
        let (p0, p1, p2) = (sw.add_port(), sw.add_port(), sw.add_port());
        fwd(&mut sw, p1, &frame(A, B));
        for dst in [BCAST, MCAST] {
            assert_eq!(
                fwd(&mut sw, p1, &frame(dst, B)),
                (Verdict::Flood, vec![p0, p2])
            );
        }
        // A lone port floods to nobody.
        let mut one = Switch::default();
        let q = one.add_port();
        assert_eq!(fwd(&mut one, q, &frame(BCAST, A)), (Verdict::Flood, vec![]));
    }

    #[test]
    fn drops_local_runts_bad_sources_and_unknown_ports() {
        let mut sw = Switch::default();
        let (p0, p1) = (sw.add_port(), sw.add_port());
        fwd(&mut sw, p0, &frame(BCAST, A));
        fwd(&mut sw, p0, &frame(BCAST, C));
        assert_eq!(
            fwd(&mut sw, p0, &frame(C, A)),
            (Verdict::Dropped(DropReason::Local), vec![])
        );
        let f = frame(B, A);
        for len in [0, 1, ETH_HLEN - 1] {
            assert_eq!(
                fwd(&mut sw, p0, &f[..len]),
                (Verdict::Dropped(DropReason::Runt), vec![])
            );
        }
        // Exactly a header is enough.
        assert_eq!(fwd(&mut sw, p0, &f[..ETH_HLEN]).0, Verdict::Flood);
        for src in [BCAST, MCAST, [0; 6]] {
            assert_eq!(
                fwd(&mut sw, p1, &frame(A, src)),
                (Verdict::Dropped(DropReason::BadSource), vec![])
            );
        }
        assert_eq!(
            fwd(&mut sw, PortId(77), &frame(A, B)),
            (Verdict::Dropped(DropReason::UnknownPort), vec![])
        );
        assert_eq!(sw.lookup(&B), None);
    }

    #[test]
    fn a_station_moves_and_removed_ports_are_forgotten() {
        let mut sw = Switch::default();
        let (p0, p1, p2) = (sw.add_port(), sw.add_port(), sw.add_port());
        fwd(&mut sw, p0, &frame(BCAST, A));
        fwd(&mut sw, p1, &frame(BCAST, A));
        assert_eq!(sw.lookup(&A), Some(p1));
        assert_eq!(fwd(&mut sw, p2, &frame(A, B)).0, Verdict::Unicast(p1));
        assert!(sw.remove_port(p1));
        assert!(!sw.remove_port(p1));
        assert_eq!(sw.lookup(&A), None);
        assert_eq!(fwd(&mut sw, p2, &frame(A, B)), (Verdict::Flood, vec![p0]));
        assert_eq!(
            fwd(&mut sw, p1, &frame(B, A)).0,
            Verdict::Dropped(DropReason::UnknownPort)
        );
        // Ids are not reused.
        let p3 = sw.add_port();
        assert!(p3 > p2);
        assert_eq!(sw.ports().collect::<Vec<_>>(), vec![p0, p2, p3]);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut sw = Switch::new(2);
        let (p0, p1) = (sw.add_port(), sw.add_port());
        for i in 0..100u8 {
            fwd(&mut sw, p0, &frame(BCAST, [2, 0, 0, 0, 1, i]));
        }
        assert_eq!(sw.learned(), 2);
        // Known addresses still move; unknown ones are flooded.
        fwd(&mut sw, p1, &frame(BCAST, [2, 0, 0, 0, 1, 0]));
        assert_eq!(sw.lookup(&[2, 0, 0, 0, 1, 0]), Some(p1));
        assert_eq!(fwd(&mut sw, p1, &frame(C, B)), (Verdict::Flood, vec![p0]));
        assert_eq!(sw.lookup(&B), None);
    }

    #[test]
    fn pinned_ports_own_their_address() {
        let mut sw = Switch::new(1);
        let (a, b, free) = (sw.add_pinned_port(A), sw.add_pinned_port(B), sw.add_port());
        // Both pinned addresses are known before any frame, whatever the capacity.
        assert_eq!((sw.lookup(&A), sw.lookup(&B)), (Some(a), Some(b)));
        assert_eq!(
            fwd(&mut sw, a, &frame(B, A)),
            (Verdict::Unicast(b), vec![b])
        );
        // A pinned port cannot send from another address, known or not...
        for src in [C, B] {
            assert_eq!(
                fwd(&mut sw, a, &frame(BCAST, src)),
                (Verdict::Dropped(DropReason::Spoofed), vec![])
            );
        }
        // ...and no port can send from a pinned port's address, so it never moves.
        assert_eq!(
            fwd(&mut sw, free, &frame(BCAST, A)).0,
            Verdict::Dropped(DropReason::Spoofed)
        );
        assert_eq!(sw.lookup(&A), Some(a));
        assert_eq!(fwd(&mut sw, b, &frame(A, B)).0, Verdict::Unicast(a));
        // An unpinned port may send from any other address; the pinned ones fill this
        // table, so C is not learned.
        assert_eq!(fwd(&mut sw, free, &frame(A, C)).0, Verdict::Unicast(a));
        assert_eq!(sw.lookup(&C), None);
        // Removing the pinned port frees its address.
        assert!(sw.remove_port(a));
        assert_eq!(sw.lookup(&A), None);
        assert_eq!(fwd(&mut sw, free, &frame(BCAST, A)).0, Verdict::Flood);
    }
}
