//! `hv-core`: the hypervisor. Domains on Linux KVM that run paravirtualized guest kernels at CPL 3
//! and serve their hypercalls.
//!
//! Layers, bottom up:
//! - [`kvm`] — the only module that touches KVM; [`tap`] — the only one that touches
//!   `/dev/net/tun`;
//! - [`x86`] — the CPU tables the hv owns for each guest (page tables, GDT, IDT, TSS);
//! - [`memory`], [`layout`], [`loader`] — guest RAM with checked access, where things go in it,
//!   and the guest image;
//! - [`evtchn`], [`console`], [`time`], [`stats`] — event channel ports, the console backend,
//!   system time and pvclock, counters;
//! - [`domain`] — a domain's shared state and event delivery; [`hypercall`] — the dispatcher;
//! - [`vcpu`] — the vCPU run loop; [`vmm`] — building and running domains;
//! - the `hv` CLI (`src/main.rs`) on top, with [`error`] giving each failure its exit code.
#![deny(missing_docs)]

pub mod backend_host;
pub mod blkback;
pub mod config;
pub mod console;
pub mod devices;
pub mod domain;
pub mod error;
pub mod evtchn;
pub mod grant;
pub mod hypercall;
pub mod kvm;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod netback;
pub mod registry;
pub mod stats;
pub mod store;
pub mod store_service;
pub mod tap;
pub mod time;
pub mod vcpu;
pub mod vmm;
pub mod x86;
