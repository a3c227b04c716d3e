//! A global allocator that keeps hostile length prefixes from aborting the process.
//!
//! Kafka's wire format carries element counts (arrays, records, headers) that decoders turn into
//! `Vec::with_capacity(count)` before reading a single element; the `kafka-protocol` crate does
//! this too (an open upstream bug). A frame of a few bytes that claims 2^31 elements then asks for
//! hundreds of gigabytes, the kernel's overcommit heuristic refuses, and Rust aborts the process
//! on allocation failure: one malformed request would take the broker down.
//!
//! [`GuardedAlloc`] serves any request of at least [`HUGE_BYTES`] with an anonymous
//! `MAP_NORESERVE` mapping: address space only, no memory until a page is touched. The decoder
//! then fails on the missing bytes, the vector is dropped and the mapping unmapped; nothing was
//! ever committed. Real allocations that large (none exist in Quiver; requests are capped at
//! `socket.request.max.bytes`) still work and use memory as they touch it. Everything smaller
//! goes to mimalloc untouched.
//!
//! Everything else is served by mimalloc rather than the system allocator: the broker's fetch
//! and produce paths allocate and free buffers of several megabytes per request, which glibc
//! hands back to the kernel and faults in again each time; in the same-run A/B on this machine
//! mimalloc cut the broker's CPU per consumed message by about 45%.
//!
//! The `mimalloc` crate hands every request to mimalloc's aligned entry points, which serve a
//! block over 1 KiB whose size class is not a power of two by over-allocating and adjusting (a
//! one-record Produce request makes four such allocations: a third of the allocator's work in
//! it). mimalloc's plain entry points already align every block of 16 bytes or more to 16, and
//! smaller ones to their size class, as malloc does; so, as Rust's own system allocator decides
//! for malloc, a request whose alignment is at most 16 and at most its size goes to those
//! (`plain`), and only larger alignments (Arrow's 64-byte buffers) take the aligned path.
//!
//! Register it in a binary with `#[global_allocator] static A: GuardedAlloc = GuardedAlloc;`.
//!
//! What the guard is still needed for: only `kafka-protocol`'s message decoders, which Quiver
//! cannot change. Its array decoders reserve `Vec::with_capacity(count)` from the wire before
//! reading an element (requests on the server, responses in Quiver's client); its record batch
//! decoder reserves by the batch's record count, but Quiver never uses it on untrusted bytes.
//! Quiver's own decoders never size an allocation by a count from outside: record batches
//! (`kafka::records`, the produce path and the client's fetch decoding) reserve at most what the
//! bytes present can hold, and the group metadata and consumer protocol decoders clamp their
//! counts the same way. A program that embeds the Kafka listener without registering
//! [`GuardedAlloc`] is safe from those; for `kafka-protocol`'s arrays it depends on the global
//! allocator returning null, or lazily mapped memory, for an impossible request rather than
//! aborting. [`huge_allocations_are_survivable`] checks that, and the listener warns at start
//! when it does not hold.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::OnceLock;

use libmimalloc_sys as ffi;
use mimalloc::MiMalloc;

/// Requests at least this large are served by a no-reserve mapping.
pub const HUGE_BYTES: usize = 1 << 32;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedAlloc;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

fn mapped(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= page_size()
}

/// The alignment mimalloc gives every block of at least this many bytes (`MI_MAX_ALIGN_SIZE`);
/// a smaller block is aligned to its size class (a multiple of 8 bytes).
const PLAIN_ALIGN: usize = 16;

/// Whether a block of `size` bytes aligned to `align` may come from mimalloc's plain entry
/// points (`mi_malloc`, `mi_zalloc`, `mi_realloc`): their blocks are aligned to 16 bytes, or to
/// their size class when smaller, which covers any alignment up to 16 that is not larger than
/// the block.
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every method either forwards to mimalloc with the caller's layout unchanged (to its
// plain entry points only for layouts whose alignment they guarantee: see `plain`), or, for
// layouts that satisfy `mapped`, uses mmap/munmap of exactly `layout.size()` bytes. mmap returns
// page-aligned memory, and `mapped` admits only alignments up to the page size, so the alignment
// contract holds. `dealloc` and `realloc` decide by the same `mapped(layout)` test that `alloc`
// used for that layout (the caller must pass the layout the block was allocated with), so a
// block is always returned to the allocator that produced it. Nothing here unwinds.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) && !mapped(&layout) {
            // SAFETY: `mi_malloc` takes any size; its block is aligned as `plain` says.
            return unsafe { ffi::mi_malloc(layout.size()).cast() };
        }
        if !mapped(&layout) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { MiMalloc.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) && !mapped(&layout) {
            // SAFETY: as in `alloc`; `mi_zalloc` zero-fills the block.
            return unsafe { ffi::mi_zalloc(layout.size()).cast() };
        }
        if !mapped(&layout) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { MiMalloc.alloc_zeroed(layout) };
        }
        // Anonymous mappings are zero-filled.
        // SAFETY: same contract as `alloc`.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: `ptr` came from our mmap of `layout.size()` bytes (see the impl comment).
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from mimalloc with this layout.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(&layout) && !mapped(&new_layout) {
            if plain(layout.align(), new_size) {
                // SAFETY: the block belongs to mimalloc (whichever entry point made it, `mi_free`
                // and `mi_realloc` take it); the new block is aligned as `plain` says.
                return unsafe { ffi::mi_realloc(ptr.cast(), new_size).cast() };
            }
            // SAFETY: both old and new blocks belong to mimalloc.
            return unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold (or resizing a mapping): allocate, copy, free.
        // SAFETY: `new_layout` is valid; the copy covers the smaller of the two sizes, both of
        // which are readable/writable; the old block is freed with its own layout.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// True when the process's global allocator survives a request for far more memory than the
/// machine has (as [`GuardedAlloc`] does, or the system allocator with overcommit always on).
/// When false, a malformed request whose array count makes `kafka-protocol` reserve terabytes
/// aborts the process. Checked once, by asking for 1 TiB and freeing it untouched.
pub fn huge_allocations_are_survivable() -> bool {
    static SURVIVABLE: OnceLock<bool> = OnceLock::new();
    *SURVIVABLE.get_or_init(|| {
        let Ok(layout) = Layout::from_size_align(1 << 40, 8) else {
            return false;
        };
        // SAFETY: the layout has a non-zero size; a non-null block is freed at once with the
        // same layout and never touched. `alloc` returning null is not an error here (only
        // `handle_alloc_error` would abort, and it is not called).
        unsafe {
            let p = std::alloc::alloc(layout);
            if p.is_null() {
                return false;
            }
            std::alloc::dealloc(p, layout);
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_untouched_allocation_costs_nothing_and_frees() {
        let a = GuardedAlloc;
        // 1 TiB: far beyond this machine's memory; the overcommit heuristic would refuse it.
        let Ok(layout) = Layout::from_size_align(1 << 40, 8) else {
            panic!("layout")
        };
        // SAFETY: layout is non-zero sized; the block is freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "a no-reserve mapping of 1 TiB succeeds");
            *p = 7; // touching one page commits one page
            assert_eq!(*p, 7);
            a.dealloc(p, layout);
        }
    }

    #[test]
    fn small_allocations_and_growth_across_the_threshold_work() {
        let a = GuardedAlloc;
        let Ok(small) = Layout::from_size_align(64, 8) else {
            panic!("layout")
        };
        // SAFETY: each block is used within its size and freed with its final layout.
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            p.write_bytes(0xab, 64);
            let grown = a.realloc(p, small, HUGE_BYTES);
            assert!(!grown.is_null());
            assert_eq!(
                *grown.add(63),
                0xab,
                "contents survive the move into a mapping"
            );
            let Ok(big) = Layout::from_size_align(HUGE_BYTES, 8) else {
                panic!("layout")
            };
            let shrunk = a.realloc(grown, big, 32);
            assert_eq!(*shrunk.add(31), 0xab);
            a.dealloc(shrunk, Layout::from_size_align_unchecked(32, 8));
        }
    }

    #[test]
    fn every_block_is_aligned_as_asked_whichever_entry_point_serves_it() {
        let a = GuardedAlloc;
        let sizes = (1..=80)
            .chain([100, 1000, 1024, 1025, 1280, 1536, 3000, 4096, 5000, 70_000])
            .chain([(1 << 20) + 8]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    panic!("layout {size}/{align}")
                };
                // SAFETY: each block is used within its size and freed with its final layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && p.align_offset(align) == 0, "{size}/{align}");
                    p.write_bytes(0x5a, size);
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null() && z.align_offset(align) == 0, "{size}/{align}");
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed {size}/{align}");
                    a.dealloc(z, layout);
                    // Shrunk, then grown past the old size: aligned, contents kept.
                    let (mut block, mut current) = (p, layout);
                    for new_size in [size / 2 + 1, size * 3 + 5] {
                        let moved = a.realloc(block, current, new_size);
                        assert!(
                            !moved.is_null() && moved.align_offset(align) == 0,
                            "{size}/{align} -> {new_size}"
                        );
                        let kept = current.size().min(new_size);
                        assert!((0..kept).all(|i| *moved.add(i) == 0x5a), "kept {size}");
                        moved.write_bytes(0x5a, new_size);
                        block = moved;
                        current = Layout::from_size_align_unchecked(new_size, align);
                    }
                    a.dealloc(block, current);
                }
            }
        }
    }
}
