//! A domain's event channel port table: which ports are open and what each is bound to. Pure
//! bookkeeping; delivery through the shared-info page is in [`crate::domain`].

use hypercall_abi::evtchn::{state, virq, EvtchnStatus, Port};
use hypercall_abi::shared_info::NR_EVENT_CHANNELS;
use hypercall_abi::{DomId, Errno, DOMID_HV, MAX_VCPUS};

/// Default per-domain limit on open ports.
pub const DEFAULT_MAX_PORTS: u32 = 1024;

/// Which hv-hosted backend a port is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The console ring.
    Console,
    /// The store ring.
    Store,
    /// Block device `n` of the domain.
    Block(u32),
    /// Network interface `n` (`vif/<n>`) of the domain.
    Net(u32),
}

/// What an open port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// A virtual interrupt on a vCPU.
    Virq {
        /// The VIRQ number.
        virq: u32,
        /// The vCPU it is delivered to.
        vcpu: u32,
    },
    /// An IPI port: `send` delivers to `vcpu`.
    Ipi {
        /// The target vCPU.
        vcpu: u32,
    },
    /// Connected to a backend in the hv; its events go to vCPU 0.
    HvBackend(Backend),
    /// Allocated for `remote` to connect to; events go to vCPU 0.
    Unbound {
        /// The domain allowed to bind it.
        remote: DomId,
    },
    /// Connected to `remote_port` of `remote`; events go to vCPU 0.
    Interdomain {
        /// The peer domain.
        remote: DomId,
        /// The peer's port.
        remote_port: Port,
    },
}

impl Binding {
    /// The vCPU this port's events are delivered to.
    pub fn vcpu(&self) -> u32 {
        match *self {
            Binding::Virq { vcpu, .. } | Binding::Ipi { vcpu } => vcpu,
            Binding::HvBackend(_) | Binding::Unbound { .. } | Binding::Interdomain { .. } => 0,
        }
    }
}

/// The port table of one domain.
#[derive(Debug)]
pub struct PortTable {
    ports: Vec<Option<Binding>>,
    virq: Vec<[Option<Port>; virq::COUNT as usize]>,
    open: u32,
    max_open: u32,
    nr_vcpus: u32,
}

impl PortTable {
    /// An empty table for a domain with `nr_vcpus` vCPUs, allowing at most `max_open` open ports.
    pub fn new(nr_vcpus: u32, max_open: u32) -> PortTable {
        PortTable {
            ports: vec![None; NR_EVENT_CHANNELS as usize],
            virq: vec![[None; virq::COUNT as usize]; nr_vcpus.min(MAX_VCPUS) as usize],
            open: 0,
            max_open: max_open.min(NR_EVENT_CHANNELS - 1),
            nr_vcpus,
        }
    }

    /// The binding of an open port; `EINVAL` for port 0, out of range or not open.
    pub fn get(&self, port: u64) -> Result<Binding, Errno> {
        if port == 0 || port >= NR_EVENT_CHANNELS as u64 {
            return Err(Errno::EINVAL);
        }
        self.ports[port as usize].ok_or(Errno::EINVAL)
    }

    fn check_vcpu(&self, vcpu: u64) -> Result<u32, Errno> {
        if vcpu < self.nr_vcpus as u64 {
            Ok(vcpu as u32)
        } else {
            Err(Errno::ESRCH)
        }
    }

    fn alloc(&mut self, b: Binding) -> Result<Port, Errno> {
        if self.open >= self.max_open {
            return Err(Errno::ENOSPC);
        }
        let port = (1..NR_EVENT_CHANNELS)
            .find(|&p| self.ports[p as usize].is_none())
            .ok_or(Errno::ENOSPC)?;
        self.ports[port as usize] = Some(b);
        self.open += 1;
        Ok(port)
    }

    /// Opens a port to a hv backend (at domain creation).
    pub fn bind_backend(&mut self, backend: Backend) -> Result<Port, Errno> {
        self.alloc(Binding::HvBackend(backend))
    }

    /// `bind_virq(virq, vcpu)`.
    pub fn bind_virq(&mut self, v: u64, vcpu: u64) -> Result<Port, Errno> {
        if v >= virq::COUNT as u64 {
            return Err(Errno::EINVAL);
        }
        let vcpu = self.check_vcpu(vcpu)?;
        if self.virq[vcpu as usize][v as usize].is_some() {
            return Err(Errno::EEXIST);
        }
        let port = self.alloc(Binding::Virq {
            virq: v as u32,
            vcpu,
        })?;
        self.virq[vcpu as usize][v as usize] = Some(port);
        Ok(port)
    }

    /// `bind_ipi(vcpu)`.
    pub fn bind_ipi(&mut self, vcpu: u64) -> Result<Port, Errno> {
        let vcpu = self.check_vcpu(vcpu)?;
        self.alloc(Binding::Ipi { vcpu })
    }

    /// `alloc_unbound(remote)` (the caller has checked that `remote` exists).
    pub fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno> {
        self.alloc(Binding::Unbound { remote })
    }

    /// Opens a local port connected to `remote_port` of `remote` (the caller has checked the
    /// remote side and will connect it back).
    pub fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        self.alloc(Binding::Interdomain {
            remote,
            remote_port,
        })
    }

    /// Rebinds an open port (an interdomain peer connecting or disconnecting).
    pub fn rebind(&mut self, port: Port, b: Binding) {
        if let Some(slot) = self.ports.get_mut(port as usize) {
            if slot.is_some() {
                *slot = Some(b);
            }
        }
    }

    /// `close(port)`: `EPERM` for the console and store ports. Returns the binding it had.
    pub fn close(&mut self, port: u64) -> Result<Binding, Errno> {
        let b = self.get(port)?;
        // The console and store ports belong to the hv; a device port the guest connected to
        // one of the hv's backends is the guest's to close.
        if let Binding::HvBackend(Backend::Console | Backend::Store) = b {
            return Err(Errno::EPERM);
        }
        self.free(port as Port);
        Ok(b)
    }

    /// Frees a port whatever it is bound to (domain teardown).
    pub fn free(&mut self, port: Port) {
        let Some(b) = self.ports.get_mut(port as usize).and_then(Option::take) else {
            return;
        };
        if let Binding::Virq { virq, vcpu } = b {
            self.virq[vcpu as usize][virq as usize] = None;
        }
        self.open -= 1;
    }

    /// Every open port with its binding.
    pub fn open_ports(&self) -> Vec<(Port, Binding)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(p, b)| b.map(|b| (p as Port, b)))
            .collect()
    }

    /// The port a VIRQ is bound to on a vCPU, if any.
    pub fn virq_port(&self, v: u32, vcpu: u32) -> Option<Port> {
        *self.virq.get(vcpu as usize)?.get(v as usize)?
    }

    /// The status record of `port` (pending/masked filled in by the caller).
    pub fn status(&self, port: u64) -> Result<EvtchnStatus, Errno> {
        if port == 0 || port >= NR_EVENT_CHANNELS as u64 {
            return Err(Errno::EINVAL);
        }
        let mut s = EvtchnStatus {
            port: port as u32,
            ..Default::default()
        };
        match self.ports[port as usize] {
            None => s.state = state::FREE,
            Some(Binding::Virq { virq, vcpu }) => {
                s.state = state::VIRQ;
                s.virq = virq;
                s.vcpu = vcpu;
            }
            Some(Binding::Ipi { vcpu }) => {
                s.state = state::IPI;
                s.vcpu = vcpu;
            }
            Some(Binding::HvBackend(_)) => {
                s.state = state::HV_BACKEND;
                s.remote_domid = DOMID_HV as u32;
            }
            Some(Binding::Unbound { remote }) => {
                s.state = state::UNBOUND;
                s.remote_domid = remote as u32;
            }
            Some(Binding::Interdomain {
                remote,
                remote_port,
            }) => {
                s.state = state::INTERDOMAIN;
                s.remote_domid = remote as u32;
                s.remote_port = remote_port;
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_close_and_errors() {
        let mut t = PortTable::new(2, 8);
        let console = t.bind_backend(Backend::Console).unwrap();
        assert_eq!(console, 1);
        let timer = t.bind_virq(virq::TIMER as u64, 0).unwrap();
        assert_eq!(t.bind_virq(virq::TIMER as u64, 0), Err(Errno::EEXIST));
        assert_eq!(t.bind_virq(virq::TIMER as u64, 1).map(|_| ()), Ok(()));
        assert_eq!(t.bind_virq(99, 0), Err(Errno::EINVAL));
        assert_eq!(t.bind_virq(0, 2), Err(Errno::ESRCH));
        assert_eq!(t.bind_ipi(5), Err(Errno::ESRCH));
        assert_eq!(t.close(console as u64), Err(Errno::EPERM));
        assert_eq!(t.close(0), Err(Errno::EINVAL));
        assert_eq!(t.close(4096), Err(Errno::EINVAL));
        assert_eq!(t.close(u64::MAX), Err(Errno::EINVAL));
        t.close(timer as u64).unwrap();
        let u = t.alloc_unbound(7).unwrap();
        assert_eq!(t.status(u as u64).unwrap().state, state::UNBOUND);
        assert_eq!(t.status(u as u64).unwrap().remote_domid, 7);
        t.rebind(
            u,
            Binding::Interdomain {
                remote: 7,
                remote_port: 9,
            },
        );
        let s = t.status(u as u64).unwrap();
        assert_eq!(
            (s.state, s.remote_domid, s.remote_port),
            (state::INTERDOMAIN, 7, 9)
        );
        t.close(u as u64).unwrap();
        assert_eq!(t.close(timer as u64), Err(Errno::EINVAL));
        assert_eq!(t.virq_port(virq::TIMER, 0), None);
        assert_eq!(t.status(timer as u64).unwrap().state, state::FREE);
        // Exhaustion at the limit, and a closed port can be reused.
        let mut n = 0;
        while t.bind_ipi(0).is_ok() {
            n += 1;
        }
        assert_eq!(t.bind_ipi(0), Err(Errno::ENOSPC));
        assert_eq!(n, 8 - 2);
    }
}
