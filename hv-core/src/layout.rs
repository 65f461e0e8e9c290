//! Where things live in a domain's guest-physical memory, and the memory map it is told about.
//!
//! ```text
//! 0x0000_0000  not mapped (catches null pointers)
//! 0x0000_1000  StartInfo            read-only
//! 0x0000_2000  SharedInfo           read-write
//! 0x0000_3000  console ring         read-write
//! 0x0000_4000  store ring           read-write
//! 0x0001_0000  trap stacks          per vCPU: 16 KiB alternate stack + 4 KiB crash stack
//! 0x0010_0000  boot stack           1 MiB, top at 0x20_0000
//! 0x0020_0000  the guest image      ELF segments, permissions from their flags
//! image end    free RAM             read-write, not executable
//! 0x30_0000_0000 grant window       not RAM: pages of other domains appear here when mapped
//! ```
//! The hv's own tables live outside RAM, in the hv region (see [`crate::x86`]).

use hypercall_abi::start_info::{mem_kind, MemRegion, MAX_MEM_REGIONS};
use hypercall_abi::{MAX_VCPUS, PAGE_SIZE};

use crate::error::ImageError;
use crate::loader::GuestImage;
use crate::x86::{UserRange, GRANT_WINDOW_GPA, GRANT_WINDOW_SLOTS};

/// StartInfo page.
pub const START_INFO_GPA: u64 = 0x1000;
/// SharedInfo page.
pub const SHARED_INFO_GPA: u64 = 0x2000;
/// Console ring page.
pub const CONSOLE_RING_GPA: u64 = 0x3000;
/// Store ring page.
pub const STORE_RING_GPA: u64 = 0x4000;
/// One past the last page the hv shares with the guest at boot.
const HV_SHARED_END: u64 = STORE_RING_GPA + PAGE_SIZE;
/// First trap stack.
pub const TRAP_STACKS_GPA: u64 = 0x1_0000;
/// Size of a vCPU's alternate exception stack (IST1).
pub const ALT_STACK_SIZE: u64 = 16 * 1024;
/// Size of a vCPU's crash-report stack (IST2).
pub const CRASH_STACK_SIZE: u64 = 4 * 1024;
/// Boot stack.
pub const BOOT_STACK_GPA: u64 = 0x10_0000;
/// Boot stack size.
pub const BOOT_STACK_SIZE: u64 = 0x10_0000;
/// Lowest address a guest image may load at.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Smallest guest memory `hv` accepts.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest guest memory `hv` accepts.
pub const MAX_MEM: u64 = 64 << 30;

const _: () = assert!(
    TRAP_STACKS_GPA + MAX_VCPUS as u64 * (ALT_STACK_SIZE + CRASH_STACK_SIZE) <= BOOT_STACK_GPA
);

/// The top of vCPU `v`'s alternate stack.
pub const fn alt_stack_top(v: u32) -> u64 {
    TRAP_STACKS_GPA + (v as u64) * (ALT_STACK_SIZE + CRASH_STACK_SIZE) + ALT_STACK_SIZE
}

/// The top of vCPU `v`'s crash stack.
pub const fn crash_stack_top(v: u32) -> u64 {
    alt_stack_top(v) + CRASH_STACK_SIZE
}

/// The guest-physical layout of one domain.
#[derive(Debug, Clone)]
pub struct Layout {
    /// RAM size.
    pub mem: u64,
    /// vCPU count.
    pub nr_vcpus: u32,
    /// The memory map for StartInfo.
    pub regions: Vec<MemRegion>,
    /// Page permissions for the page tables.
    pub user_ranges: Vec<UserRange>,
}

const fn page_up(x: u64) -> u64 {
    (x + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}
const fn page_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

impl Layout {
    /// Lays out a domain with `mem` bytes of RAM running `image` on `nr_vcpus` vCPUs.
    pub fn new(mem: u64, nr_vcpus: u32, image: &GuestImage) -> Result<Layout, ImageError> {
        let (lo, hi) = image.extent();
        if lo < IMAGE_BASE || page_up(hi) > mem {
            return Err(ImageError::TooLarge {
                path: image.path.clone(),
                end: hi,
                mem,
                base: IMAGE_BASE,
            });
        }
        let trap_end = TRAP_STACKS_GPA + nr_vcpus as u64 * (ALT_STACK_SIZE + CRASH_STACK_SIZE);
        let image_end = page_up(hi);
        let region = |base: u64, end: u64, kind: u32| MemRegion {
            base,
            len: end - base,
            kind,
            pad: 0,
        };
        let mut regions = vec![
            region(START_INFO_GPA, HV_SHARED_END, mem_kind::HV_SHARED),
            region(TRAP_STACKS_GPA, trap_end, mem_kind::TRAP_STACKS),
            region(
                BOOT_STACK_GPA,
                BOOT_STACK_GPA + BOOT_STACK_SIZE,
                mem_kind::BOOT_STACK,
            ),
            region(page_down(lo), image_end, mem_kind::IMAGE),
        ];
        if image_end < mem {
            regions.push(region(image_end, mem, mem_kind::RAM));
        }
        regions.push(region(
            GRANT_WINDOW_GPA,
            GRANT_WINDOW_GPA + GRANT_WINDOW_SLOTS as u64 * PAGE_SIZE,
            mem_kind::GRANT_WINDOW,
        ));
        debug_assert!(regions.len() <= MAX_MEM_REGIONS);

        let rw = |start: u64, end: u64| UserRange {
            start,
            end,
            writable: true,
            executable: false,
        };
        let mut user_ranges = vec![
            UserRange {
                start: START_INFO_GPA,
                end: START_INFO_GPA + PAGE_SIZE,
                writable: false,
                executable: false,
            },
            rw(SHARED_INFO_GPA, HV_SHARED_END),
            rw(TRAP_STACKS_GPA, trap_end),
            rw(BOOT_STACK_GPA, BOOT_STACK_GPA + BOOT_STACK_SIZE),
        ];
        // Image pages: a page shared by two segments gets the union of their permissions.
        let mut image_ranges: Vec<UserRange> = Vec::new();
        for s in &image.segments {
            let (start, end) = (page_down(s.addr), page_up(s.addr + s.mem_size));
            let mut r = UserRange {
                start,
                end,
                writable: s.writable,
                executable: s.executable,
            };
            if let Some(prev) = image_ranges.last_mut() {
                if prev.end > r.start {
                    // Split off the shared page into the previous range with merged flags.
                    let shared = UserRange {
                        start: r.start,
                        end: prev.end,
                        writable: prev.writable || r.writable,
                        executable: prev.executable || r.executable,
                    };
                    prev.end = r.start;
                    r.start = shared.end;
                    if prev.start == prev.end {
                        image_ranges.pop();
                    }
                    image_ranges.push(shared);
                }
            }
            if r.start < r.end {
                image_ranges.push(r);
            }
        }
        user_ranges.extend(image_ranges);
        if image_end < mem {
            user_ranges.push(rw(image_end, mem));
        }
        Ok(Layout {
            mem,
            nr_vcpus,
            regions,
            user_ranges,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{Segment, SymbolTable};
    use hypercall_abi::note::AbiNoteDesc;
    use std::path::PathBuf;

    fn image(segs: &[(u64, u64, bool, bool)]) -> GuestImage {
        GuestImage {
            path: PathBuf::from("t"),
            entry: IMAGE_BASE,
            segments: segs
                .iter()
                .map(|&(addr, mem_size, writable, executable)| Segment {
                    addr,
                    data: vec![],
                    mem_size,
                    writable,
                    executable,
                })
                .collect(),
            note: AbiNoteDesc {
                major: 1,
                minor: 0,
                reserved: 0,
                required_features: 0,
            },
            symbols: SymbolTable::default(),
        }
    }

    #[test]
    fn map_covers_image_and_ram_without_overlap() {
        let img = image(&[
            (0x20_0000, 0x1800, false, true),
            (0x20_1800, 0x1000, false, false),
            (0x20_3000, 0x2000, true, false),
        ]);
        let l = Layout::new(16 << 20, 2, &img).unwrap();
        for w in l.regions.windows(2) {
            assert!(w[0].base + w[0].len <= w[1].base);
        }
        for w in l.user_ranges.windows(2) {
            assert!(w[0].end <= w[1].start, "{:?}", l.user_ranges);
        }
        // The page shared by text and rodata is executable and read-only.
        let shared = l.user_ranges.iter().find(|r| r.start == 0x20_1000).unwrap();
        assert!(shared.executable && !shared.writable);
        let ram = l.regions.iter().find(|r| r.kind == mem_kind::RAM).unwrap();
        assert_eq!(ram.base + ram.len, 16 << 20);
        assert_eq!(l.regions.last().unwrap().kind, mem_kind::GRANT_WINDOW);
    }

    #[test]
    fn too_small_memory_is_refused() {
        let img = image(&[(0x20_0000, 0x100_0000, false, true)]);
        assert!(matches!(
            Layout::new(8 << 20, 1, &img),
            Err(ImageError::TooLarge { .. })
        ));
        let low = image(&[(0x1000, 0x1000, false, true)]);
        assert!(Layout::new(8 << 20, 1, &low).is_err());
    }
}
