//! `hv-core`: the hypervisor. Domains on Linux KVM that run paravirtualized guest kernels at CPL 3
//! and serve their hypercalls.
//!
//! Layers, bottom up: [`kvm`] (the only module that touches KVM), [`x86`] (the CPU tables the hv
//! owns for each guest: page tables, GDT, IDT, TSS), then domains, memory, hypercall dispatch,
//! event channels, scheduling and time, and the console; the `hv` CLI sits on top.
#![deny(missing_docs)]

pub mod kvm;
pub mod x86;
