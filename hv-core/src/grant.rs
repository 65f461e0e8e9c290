//! Grant tables: a domain grants one of its frames to one named domain; the grantee maps it into
//! its grant window or has the hv copy through it; the granter ends access (refused while
//! mapped) or revokes it forcibly.
//!
//! The entries live in the granter's RAM and are the guest's to write: the hv copies an entry
//! once per operation and checks the copy. The hv's own record of who has mapped what is the
//! [`GrantBook`], one for the whole hv, behind one lock: grant operations are rare next to the
//! work they enable, and one lock makes map/unmap/revoke/copy across domains free of ordering
//! problems. A mapping is real sharing: the grantee's window page is a second mapping of the
//! granter's memfd page, and its page-table entry is set user, no-execute, writable only for a
//! read-write map. Unmapping puts an anonymous page back under the slot, which makes KVM drop
//! its translations (its MMU notifier), and clears the entry.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use hypercall_abi::grant::{
    CopyPtr, GrantCopy, GrantEntry, GrantRef, COPY_DST_GREF, COPY_SRC_GREF, GTF_ALL,
    GTF_PERMIT_ACCESS, GTF_READONLY, MAP_READONLY, MAX_COPY_OPS, MAX_GRANT_ENTRIES,
};
use hypercall_abi::{DomId, Errno, PAGE_SIZE};

use crate::domain::Domain;
use crate::x86::{GRANT_WINDOW_GPA, GRANT_WINDOW_SLOTS};

/// The host side of a domain's grant window: `GRANT_WINDOW_SLOTS` pages of host address space
/// registered with KVM as one memory slot, each backed either by an anonymous page (unmapped)
/// or by a page of another domain's memfd (mapped).
pub struct Window {
    base: *mut u8,
}

// SAFETY: `base` is a mapping owned by the Window; it is only remapped under the GrantBook lock.
unsafe impl Send for Window {}
// SAFETY: as above.
unsafe impl Sync for Window {}

const WINDOW_BYTES: usize = GRANT_WINDOW_SLOTS as usize * PAGE_SIZE as usize;

impl Window {
    /// Reserves the window, every slot backed by a private zero page.
    pub fn new() -> io::Result<Window> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                WINDOW_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Window { base: p.cast() })
    }

    /// Host address of slot 0 (for the KVM memory slot).
    pub fn host_base(&self) -> *mut u8 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        WINDOW_BYTES as u64
    }

    fn slot_addr(&self, slot: u32) -> *mut libc::c_void {
        // SAFETY: slot < GRANT_WINDOW_SLOTS (checked by callers), so the address is inside.
        unsafe { self.base.add(slot as usize * PAGE_SIZE as usize).cast() }
    }

    fn map(&self, slot: u32, fd: i32, offset: u64, readonly: bool) -> io::Result<()> {
        let prot = if readonly {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: replaces exactly one page inside our own mapping with a shared mapping of a
        // memfd page that exists (offset < the memfd's size, checked by the caller).
        let p = unsafe {
            libc::mmap(
                self.slot_addr(slot),
                PAGE_SIZE as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap(&self, slot: u32) -> io::Result<()> {
        // SAFETY: replaces exactly one page inside our own mapping with a private zero page.
        let p = unsafe {
            libc::mmap(
                self.slot_addr(slot),
                PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmaps the region this Window mapped; nothing refers to it any more (the
        // domain and its VM are gone).
        unsafe { libc::munmap(self.base.cast(), WINDOW_BYTES) };
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    granter: DomId,
    gref: GrantRef,
    readonly: bool,
    revoked: bool,
}

/// One domain's part of the book.
#[derive(Default)]
struct DomainGrants {
    table: Option<(u64, u32)>,
    /// What this domain has mapped in its window, by slot.
    slots: BTreeMap<u32, Mapping>,
    /// Who has this domain's grants mapped: gref -> (grantee, slot).
    mapped_by: BTreeMap<GrantRef, Vec<(DomId, u32)>>,
}

/// The hv's record of grant tables and mappings, for all domains.
#[derive(Default)]
pub struct GrantBook {
    doms: BTreeMap<DomId, DomainGrants>,
    /// Grants the hv's own backends are using right now: (granter, gref) -> how many holds.
    /// A held grant counts as mapped: `end_access` refuses it with `EBUSY`.
    hv_holds: BTreeMap<(DomId, GrantRef), u32>,
}

/// A checked copy of a grant entry.
struct Granted {
    frame: u64,
    readonly: bool,
}

/// Reads and checks `granter`'s entry `gref` for use by `grantee`.
fn read_entry(
    book: &GrantBook,
    granter: &Domain,
    gref: u64,
    grantee: DomId,
) -> Result<Granted, Errno> {
    let (gpa, nr) = book
        .doms
        .get(&granter.id)
        .and_then(|d| d.table)
        .ok_or(Errno::EINVAL)?;
    if gref >= nr as u64 {
        return Err(Errno::EINVAL);
    }
    let e: GrantEntry = granter.ram.read_obj(gpa + gref * 16)?;
    if e.flags & !GTF_ALL != 0 || e.reserved != 0 {
        return Err(Errno::EINVAL);
    }
    if e.flags & GTF_PERMIT_ACCESS == 0 {
        return Err(Errno::ENOENT);
    }
    if e.domid != grantee {
        return Err(Errno::EACCES);
    }
    if !e.frame.is_multiple_of(PAGE_SIZE) || granter.ram.check(e.frame, PAGE_SIZE).is_err() {
        return Err(Errno::EINVAL);
    }
    Ok(Granted {
        frame: e.frame,
        readonly: e.flags & GTF_READONLY != 0,
    })
}

/// The window slot of a grantee-supplied address.
fn window_slot(gpa: u64) -> Result<u32, Errno> {
    let off = gpa.checked_sub(GRANT_WINDOW_GPA).ok_or(Errno::EINVAL)?;
    if !off.is_multiple_of(PAGE_SIZE) || off / PAGE_SIZE >= GRANT_WINDOW_SLOTS as u64 {
        return Err(Errno::EINVAL);
    }
    Ok((off / PAGE_SIZE) as u32)
}

impl GrantBook {
    /// Starts keeping records for a domain.
    pub fn add_domain(&mut self, id: DomId) {
        self.doms.entry(id).or_default();
    }

    fn dom(&mut self, id: DomId) -> &mut DomainGrants {
        self.doms.entry(id).or_default()
    }

    /// `set_table(gpa, nr)`.
    pub fn set_table(&mut self, dom: &Domain, gpa: u64, nr: u64) -> Result<(), Errno> {
        if !gpa.is_multiple_of(PAGE_SIZE) || nr == 0 || nr > MAX_GRANT_ENTRIES {
            return Err(Errno::EINVAL);
        }
        dom.ram.check(gpa, nr * 16)?;
        let held = self.hv_holds.keys().any(|&(d, _)| d == dom.id);
        let d = self.dom(dom.id);
        if held || d.mapped_by.values().any(|v| !v.is_empty()) {
            return Err(Errno::EBUSY);
        }
        d.table = Some((gpa, nr as u32));
        Ok(())
    }

    /// `map(granter, gref, gpa, flags)` by `grantee`.
    pub fn map(
        &mut self,
        grantee: &Domain,
        granter: &Arc<Domain>,
        gref: u64,
        gpa: u64,
        flags: u64,
    ) -> Result<(), Errno> {
        if flags & !MAP_READONLY != 0 {
            return Err(Errno::EINVAL);
        }
        let slot = window_slot(gpa)?;
        if granter.id == grantee.id {
            return Err(Errno::EINVAL);
        }
        if self.dom(grantee.id).slots.contains_key(&slot) {
            return Err(Errno::EBUSY);
        }
        let g = read_entry(self, granter, gref, grantee.id)?;
        let want_ro = flags & MAP_READONLY != 0;
        if g.readonly && !want_ro {
            return Err(Errno::EACCES);
        }
        grantee
            .window()
            .map(slot, granter.ram.fd(), g.frame, want_ro)
            .map_err(|_| Errno::ENOMEM)?;
        grantee.tables().set_window_pte(slot, Some(!want_ro));
        self.dom(grantee.id).slots.insert(
            slot,
            Mapping {
                granter: granter.id,
                gref: gref as GrantRef,
                readonly: want_ro,
                revoked: false,
            },
        );
        self.dom(granter.id)
            .mapped_by
            .entry(gref as GrantRef)
            .or_default()
            .push((grantee.id, slot));
        Ok(())
    }

    /// Removes a slot's mapping from `grantee`'s window (page table first, then the backing).
    fn clear_slot(grantee: &Domain, slot: u32) {
        grantee.tables().set_window_pte(slot, None);
        if grantee.window().unmap(slot).is_err() {
            // The page table no longer maps the slot, so the guest cannot reach the old page
            // even if the host mapping could not be replaced.
            eprintln!(
                "hv: grant: could not reset window slot {slot} of domain {}",
                grantee.id
            );
        }
    }

    /// `unmap(gpa)` by `grantee`.
    pub fn unmap(&mut self, grantee: &Domain, gpa: u64) -> Result<(), Errno> {
        let slot = window_slot(gpa)?;
        let m = self
            .dom(grantee.id)
            .slots
            .remove(&slot)
            .ok_or(Errno::EINVAL)?;
        if !m.revoked {
            Self::clear_slot(grantee, slot);
            if let Some(v) = self.dom(m.granter).mapped_by.get_mut(&m.gref) {
                v.retain(|&(d, s)| (d, s) != (grantee.id, slot));
            }
        }
        Ok(())
    }

    fn is_mapped(&self, granter: DomId, gref: GrantRef) -> bool {
        self.hv_holds.contains_key(&(granter, gref))
            || self
                .doms
                .get(&granter)
                .and_then(|d| d.mapped_by.get(&gref))
                .is_some_and(|v| !v.is_empty())
    }

    fn check_own_ref(&self, dom: &Domain, gref: u64) -> Result<u64, Errno> {
        let (gpa, nr) = self
            .doms
            .get(&dom.id)
            .and_then(|d| d.table)
            .ok_or(Errno::EINVAL)?;
        if gref >= nr as u64 {
            return Err(Errno::EINVAL);
        }
        Ok(gpa + gref * 16)
    }

    /// `end_access(gref)` by the granter.
    pub fn end_access(&mut self, dom: &Domain, gref: u64) -> Result<(), Errno> {
        let entry = self.check_own_ref(dom, gref)?;
        if self.is_mapped(dom.id, gref as GrantRef) {
            return Err(Errno::EBUSY);
        }
        dom.ram.write_obj(entry, &0u16)
    }

    /// `revoke(gref)` by the granter; `lookup` finds live domains. Returns mappings removed.
    pub fn revoke(
        &mut self,
        dom: &Domain,
        gref: u64,
        lookup: impl Fn(DomId) -> Option<Arc<Domain>>,
    ) -> Result<u64, Errno> {
        let entry = self.check_own_ref(dom, gref)?;
        let holders = self
            .dom(dom.id)
            .mapped_by
            .remove(&(gref as GrantRef))
            .unwrap_or_default();
        for &(grantee_id, slot) in &holders {
            if let Some(m) = self.dom(grantee_id).slots.get_mut(&slot) {
                m.revoked = true;
            }
            if let Some(grantee) = lookup(grantee_id) {
                Self::clear_slot(&grantee, slot);
            }
        }
        dom.ram.write_obj(entry, &0u16)?;
        Ok(holders.len() as u64)
    }

    /// For a backend inside the hv: checks `granter`'s grant `gref` for the hv
    /// ([`hypercall_abi::DOMID_HV`]), records a hold on it (until [`GrantBook::hv_release`]),
    /// and returns the granted frame's guest-physical address in the granter's RAM. `EACCES`
    /// for a write through a read-only grant. While held, the grant counts as mapped.
    pub fn hv_hold(&mut self, granter: &Domain, gref: u64, write: bool) -> Result<u64, Errno> {
        let g = read_entry(self, granter, gref, hypercall_abi::DOMID_HV)?;
        if write && g.readonly {
            return Err(Errno::EACCES);
        }
        *self
            .hv_holds
            .entry((granter.id, gref as GrantRef))
            .or_default() += 1;
        Ok(g.frame)
    }

    /// Ends one hold taken with [`GrantBook::hv_hold`].
    pub fn hv_release(&mut self, granter: DomId, gref: GrantRef) {
        if let Some(n) = self.hv_holds.get_mut(&(granter, gref)) {
            *n -= 1;
            if *n == 0 {
                self.hv_holds.remove(&(granter, gref));
            }
        }
    }

    /// Resolves one side of a copy to (domain, guest-physical address).
    fn resolve(
        &self,
        caller: &Arc<Domain>,
        p: &CopyPtr,
        is_gref: bool,
        len: u64,
        write: bool,
        lookup: &impl Fn(DomId) -> Option<Arc<Domain>>,
    ) -> Result<(Arc<Domain>, u64), Errno> {
        if !is_gref {
            if p.gref != 0 || p.domid != 0 || p.pad != 0 {
                return Err(Errno::EINVAL);
            }
            caller.ram.check(p.addr, len)?;
            return Ok((Arc::clone(caller), p.addr));
        }
        if p.pad != 0 {
            return Err(Errno::EINVAL);
        }
        if p.addr.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let granter = lookup(p.domid).ok_or(Errno::ESRCH)?;
        if granter.id == caller.id {
            return Err(Errno::EINVAL);
        }
        let g = read_entry(self, &granter, p.gref as u64, caller.id)?;
        if write && g.readonly {
            return Err(Errno::EACCES);
        }
        Ok((granter, g.frame + p.addr))
    }

    fn copy_one(
        &self,
        caller: &Arc<Domain>,
        op: &GrantCopy,
        lookup: &impl Fn(DomId) -> Option<Arc<Domain>>,
    ) -> Result<(), Errno> {
        if op.flags & !(COPY_SRC_GREF | COPY_DST_GREF) != 0 || op.pad != 0 {
            return Err(Errno::EINVAL);
        }
        let len = op.len as u64;
        if len == 0 || len > PAGE_SIZE {
            return Err(Errno::EINVAL);
        }
        let (src_dom, src) = self.resolve(
            caller,
            &op.src,
            op.flags & COPY_SRC_GREF != 0,
            len,
            false,
            lookup,
        )?;
        let (dst_dom, dst) = self.resolve(
            caller,
            &op.dst,
            op.flags & COPY_DST_GREF != 0,
            len,
            true,
            lookup,
        )?;
        let mut buf = vec![0u8; len as usize];
        src_dom.ram.read(src, &mut buf)?;
        dst_dom.ram.write(dst, &buf)
    }

    /// `copy(gpa, count)` by `caller`.
    pub fn copy(
        &self,
        caller: &Arc<Domain>,
        gpa: u64,
        count: u64,
        lookup: impl Fn(DomId) -> Option<Arc<Domain>>,
    ) -> Result<(), Errno> {
        if count > MAX_COPY_OPS {
            return Err(Errno::E2BIG);
        }
        let mut ops = vec![GrantCopy::default(); count as usize];
        caller
            .ram
            .read(gpa, zerocopy::IntoBytes::as_mut_bytes(ops.as_mut_slice()))?;
        for op in &mut ops {
            op.status = match self.copy_one(caller, op, &lookup) {
                Ok(()) => 0,
                Err(e) => e.to_raw(),
            };
        }
        caller
            .ram
            .write(gpa, zerocopy::IntoBytes::as_bytes(ops.as_slice()))
    }

    /// Forgets a stopped domain: its mappings of others' grants are removed, and others'
    /// mappings of its grants are revoked (their window pages become unmapped).
    pub fn remove_domain(&mut self, dom: &Domain, lookup: impl Fn(DomId) -> Option<Arc<Domain>>) {
        self.hv_holds.retain(|&(d, _), _| d != dom.id);
        let Some(d) = self.doms.remove(&dom.id) else {
            return;
        };
        for (slot, m) in d.slots {
            if !m.revoked {
                let granter = self.doms.get_mut(&m.granter);
                if let Some(v) = granter.and_then(|g| g.mapped_by.get_mut(&m.gref)) {
                    v.retain(|&(g, s)| (g, s) != (dom.id, slot));
                }
            }
        }
        for (_, holders) in d.mapped_by {
            for (grantee_id, slot) in holders {
                let grantee_rec = self.doms.get_mut(&grantee_id);
                if let Some(m) = grantee_rec.and_then(|g| g.slots.get_mut(&slot)) {
                    m.revoked = true;
                }
                if let Some(grantee) = lookup(grantee_id) {
                    Self::clear_slot(&grantee, slot);
                }
            }
        }
    }
}
