//! The runtime: what runs between `_start` and the guest's `main`, and the panic handler.
//!
//! [`entry!`](crate::entry) emits `_start` and the ABI note into the guest binary; `_start`
//! aligns the stack and calls [`start`], which
//! 1. checks the StartInfo page the hypervisor passed in `rdi` (magic, ABI major);
//! 2. gives the largest RAM region to the heap (in guests);
//! 3. records the shared-info page and switches the console to the PV ring;
//! 4. registers the event upcall and binds `VIRQ_TIMER` on vCPU 0 (for [`crate::time`]);
//! 5. unmasks upcalls and calls `main`; when `main` returns, powers off with code 0.
//!
//! If a step fails (the hypervisor broke the boot protocol) it says so on the early console
//! and crashes the domain with code 2.

use core::sync::atomic::Ordering;

use hypercall_abi::console::ConsoleRing;
use hypercall_abi::shared_info::SharedInfo;
use hypercall_abi::start_info::{StartInfo, START_INFO_MAGIC};
use hypercall_abi::{Features, ABI_MAJOR, PAGE_SIZE};

use crate::{console, events, heap, sched, shared, time, Error};

/// The ABI features the SDK's runtime uses; [`entry!`](crate::entry) puts them (and the
/// guest's own) in the ELF note as required features.
pub const SDK_FEATURES: Features = Features::EARLY_CONSOLE
    .union(Features::CONSOLE_RING)
    .union(Features::EVENT_CHANNELS)
    .union(Features::TIMER)
    .union(Features::PVCLOCK)
    .union(Features::TRAPS);

/// The crash code of a failed runtime start.
const INIT_FAILED: u64 = 2;

fn fail(what: core::fmt::Arguments<'_>) -> ! {
    console::early_print(format_args!("guest-sdk: cannot start: {what}\n"));
    sched::crash(INIT_FAILED)
}

/// Sets the runtime up, runs `main` and powers off with code 0 when it returns. Called by the
/// `_start` that [`entry!`](crate::entry) emits, with the StartInfo address from `rdi`; not
/// meant to be called otherwise.
#[doc(hidden)]
pub fn start(start_info_gpa: u64, main: fn(&'static StartInfo)) -> ! {
    if start_info_gpa == 0 || !start_info_gpa.is_multiple_of(PAGE_SIZE) {
        fail(format_args!("bad StartInfo address {start_info_gpa:#x}"));
    }
    let si_ptr = start_info_gpa as *const StartInfo;
    // SAFETY: the boot protocol: `rdi` holds the guest-physical address of the StartInfo page,
    // mapped read-only (identity map, so it is also its address) for the domain's life; it is
    // non-null and page-aligned (checked above).
    let si: &'static StartInfo = unsafe { &*si_ptr };
    if si.magic != START_INFO_MAGIC {
        fail(format_args!("bad StartInfo magic {:#x}", si.magic));
    }
    if si.abi_major != ABI_MAJOR {
        fail(format_args!(
            "hypervisor ABI {}.{}, guest built for ABI {ABI_MAJOR}.x",
            si.abi_major, si.abi_minor
        ));
    }
    // SAFETY: `si` is the StartInfo page, valid and unchanging (checked above).
    unsafe { shared::set_start_info(si) };
    if let Err((what, e)) = init(si) {
        fail(format_args!("{what}: {e}"));
    }
    main(si);
    sched::exit(0)
}

fn page_ok(gpa: u64, si: &StartInfo) -> bool {
    gpa != 0
        && gpa.is_multiple_of(PAGE_SIZE)
        && gpa
            .checked_add(PAGE_SIZE)
            .is_some_and(|e| e <= si.ram_bytes)
}

fn init(si: &'static StartInfo) -> Result<(), (&'static str, Error)> {
    // SAFETY: `regions()` is the domain's memory map; this runs once.
    unsafe { heap::init(si.regions()) };

    let einval = Error::Errno(hypercall_abi::Errno::EINVAL);
    if !page_ok(si.shared_info_gpa, si) {
        return Err(("shared info page outside RAM", einval));
    }
    // SAFETY: checked to be a page of guest RAM; the boot protocol makes it the SharedInfo
    // page, mapped read-write for the domain's life.
    unsafe { shared::set_shared_info(si.shared_info_gpa as *mut SharedInfo) };
    let s = shared::shared().ok_or(("shared info", einval))?;
    // Upcalls stay masked until the runtime is ready for them.
    s.upcall_mask(0).store(1, Ordering::SeqCst);

    if Features::from_bits_retain(si.features).contains(Features::CONSOLE_RING)
        && page_ok(si.console_ring_gpa, si)
    {
        // SAFETY: checked to be a page of guest RAM; the boot protocol makes it the console
        // ring, mapped read-write for the domain's life.
        unsafe { console::init_ring(si.console_ring_gpa as *mut ConsoleRing, si.console_port) };
    }

    events::register_callback().map_err(|e| ("set_callback", e))?;
    time::init().map_err(|e| ("bind VIRQ_TIMER on vCPU 0", e))?;

    s.upcall_mask(0).store(0, Ordering::SeqCst);
    if s.upcall_pending(0).load(Ordering::SeqCst) != 0 {
        sched::yield_now();
    }
    Ok(())
}

/// The panic handler (guests only): prints `panicked at FILE:LINE:COL: MESSAGE` on the early
/// console (no locks: the panic may have happened while one was held) and stops the domain
/// with `shutdown(crash, 1)`.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::AtomicBool;
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if !PANICKING.swap(true, Ordering::SeqCst) {
        match info.location() {
            Some(l) => console::early_print(format_args!(
                "panicked at {}:{}:{}: {}\n",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            )),
            None => console::early_print(format_args!("panicked: {}\n", info.message())),
        }
    }
    sched::crash(1)
}
