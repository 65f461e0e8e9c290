//! Write paravirtualized guest kernels in Rust for the `hv` hypervisor.
//!
//! A guest is a `no_std`, `no_main` binary for the `x86_64-unknown-none` target. It runs in
//! 64-bit mode at CPL 3 (as Xen PV guests do) and calls the hypervisor by hypercall for
//! everything a kernel would do with privileged instructions. This crate gives it a runtime
//! (entry point, console, heap, event upcall, timer, panic handler) and typed wrappers for the
//! hypercalls of ABI v1 ([`hypercall_abi`], re-exported as [`abi`]).
//!
//! # Writing a guest
//!
//! A guest crate depends on `guest-sdk`; its `src/main.rs` (or a `src/bin/*.rs`) starts with
//! `#![no_std]` and `#![no_main]`, then:
//!
//! ```no_run
//! use guest_sdk::{println, StartInfo};
//!
//! guest_sdk::entry!(guest_main);
//!
//! fn guest_main(start: &StartInfo) {
//!     println!("Hello from domain {}: {}", start.domid, start.cmdline());
//!     // Returning powers the domain off with exit code 0; `guest_sdk::exit(n)` picks the code.
//! }
//! ```
//!
//! (The function may be called `main` too, as in `demo-guest`'s `hello`.) Build it with
//! `cargo build --release --target x86_64-unknown-none` and run it with
//! `hv run target/x86_64-unknown-none/release/GUEST`. The target needs two link flags, which
//! the workspace's `.cargo/config.toml` sets:
//!
//! ```toml
//! [target.x86_64-unknown-none]
//! rustflags = ["-C", "link-arg=-Tguest.ld", "-C", "relocation-model=static"]
//! ```
//!
//! `guest.ld` is the SDK's linker script (its build script puts it on the linker's search
//! path): a static, non-PIE ELF linked at 0x200000 with separate R-X, R and RW segments and the
//! ABI note in a `PT_NOTE` segment.
//!
//! # What the runtime does
//!
//! [`entry!`] emits `_start` and the ELF ABI note (ABI version and the features the SDK
//! needs). `_start` aligns the stack and runs the runtime ([`rt`]), which checks the
//! [`StartInfo`] page, gives the largest free RAM region to the heap (`extern crate alloc;`
//! works), switches the console to the PV ring, registers the event upcall and binds
//! `VIRQ_TIMER` for [`time`], and calls `main`. A panic prints
//! `panicked at FILE:LINE:COL: MESSAGE` and stops the domain as crashed. The SDK installs no
//! exception handler: an unhandled exception is reported by the hypervisor with its symbol.
//!
//! # Modules
//!
//! - [`console`]: [`print!`], [`println!`] (PV console ring) and the early console;
//! - [`events`]: event channels (within the domain and between domains) and their handlers
//!   (run from the upcall);
//! - [`grant`]: grant tables: share pages with other domains, map or copy theirs;
//! - [`store`]: the store client (typed key-value service: find peers, publish and negotiate
//!   devices, watches);
//! - [`multicall`]: several hypercalls in one exit;
//! - [`heap`]: the heap, and page-aligned [`heap::Pages`] for rings and shared data;
//! - [`time`]: pvclock system time, wall clock, the one-shot timer, [`time::sleep`];
//! - [`sched`]: [`yield_now`], block, poll, [`exit`], [`crash`];
//! - [`sync`]: masking upcalls, [`sync::IrqMutex`];
//! - [`trap`]: exception handlers (low level), the fault address;
//! - [`vcpu`], [`hv`]: vCPU operations, ABI version and features;
//! - [`hypercall()`]: the raw hypercall, for tests that pass hostile arguments.
//!
//! Every wrapper returns [`Result`] with [`Error`], which carries the ABI's [`abi::Errno`].
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod arch;
pub mod console;
mod error;
pub mod events;
pub mod grant;
pub mod heap;
pub mod hv;
pub mod multicall;
pub mod rt;
pub mod sched;
mod shared;
pub mod store;
pub mod sync;
pub mod time;
pub mod trap;
pub mod vcpu;

pub use arch::hypercall;
pub use error::{Error, Result};
pub use hypercall_abi as abi;
pub use hypercall_abi::start_info::StartInfo;
pub use sched::{crash, exit, yield_now};

/// The StartInfo page, once the runtime has started (`None` before, and on the host).
///
/// ```no_run
/// let si = guest_sdk::start_info().expect("called from a guest");
/// guest_sdk::println!("{} vCPU(s)", si.nr_vcpus);
/// ```
pub fn start_info() -> Option<&'static StartInfo> {
    shared::start_info()
}

/// Declares the guest's entry function: `guest_sdk::entry!(main);` with
/// `fn main(start: &StartInfo)`.
///
/// In a guest build (`target_os = "none"`) it emits `_start` (which aligns the stack and
/// calls the SDK runtime, see [`rt`]) and the ELF ABI note in section `.note.hvpv`, requiring
/// [`rt::SDK_FEATURES`]. A guest that needs more features names them:
/// `guest_sdk::entry!(main, required_features = guest_sdk::abi::Features::SMP);`. The
/// hypervisor refuses to start a guest whose required features it lacks.
///
/// On other targets it only checks the function's type, so code that uses it still compiles
/// (for documentation tests).
///
/// ```no_run
/// use guest_sdk::StartInfo;
///
/// guest_sdk::entry!(kernel_main, required_features = guest_sdk::abi::Features::SMP);
///
/// fn kernel_main(start: &StartInfo) {
///     guest_sdk::println!("{} vCPUs", start.nr_vcpus);
/// }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!($main, required_features = $crate::abi::Features::empty());
    };
    ($main:path, required_features = $features:expr) => {
        #[cfg(target_os = "none")]
        #[used]
        #[unsafe(link_section = ".note.hvpv")]
        static __GUEST_SDK_ABI_NOTE: $crate::abi::note::AbiNote =
            $crate::abi::note::AbiNote::new($crate::rt::SDK_FEATURES.union($features));

        #[cfg(target_os = "none")]
        extern "C" fn __guest_sdk_start(start_info_gpa: u64) -> ! {
            $crate::rt::start(start_info_gpa, $main)
        }

        // The entry point: the hypervisor enters it at CPL 3 with rsp at the top of the boot
        // stack and rdi = StartInfo's address. Clear the frame pointer (end of backtraces),
        // align the stack for the call, and never return.
        #[cfg(target_os = "none")]
        ::core::arch::global_asm!(
            ".pushsection .text._start, \"ax\", @progbits",
            ".globl _start",
            ".type _start, @function",
            "_start:",
            "    xor ebp, ebp",
            "    and rsp, -16",
            "    call {start}",
            "    ud2",
            ".size _start, . - _start",
            ".popsection",
            start = sym __guest_sdk_start,
        );

        // On other targets (documentation tests) only check the types.
        #[cfg(not(target_os = "none"))]
        const _: () = {
            let _: fn(&'static $crate::StartInfo) = $main;
            let _: $crate::abi::Features = $features;
        };
    };
}
