//! The process's allocator: mimalloc, called through its plain entry points whenever the
//! alignment asked for is one they give anyway.
//!
//! The `mimalloc` crate sends every request to `mi_malloc_aligned`, whose fast path checks the
//! block's alignment first and whose slow path (every block over 1 KiB, such as the boxed
//! future each proxied request makes) goes through the aligned allocator's generic code before
//! reaching the plain one. `mi_malloc`'s blocks are all 8-aligned, and 16-aligned when their
//! size is a multiple of 16 (the size classes holding them are all multiples of 16), which
//! covers nearly all of Rust's requests: a type's size is a multiple of its alignment.
//!
//! Each thread also keeps medium blocks it freed (see [`Kept`]): a proxied request
//! boxes one future of a few KiB, and mimalloc serves every block over 1 KiB through its
//! generic path (~160 instructions), finding the page's freed blocks and collecting them.
#![allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait: its callers rely on what it returns.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;

use libmimalloc_sys as mi;

/// mimalloc, with the plain entry points where they suffice.
pub struct Allocator;

/// Gives back to the system the memory this thread's heap holds free: for after a config
/// compile, whose parse frees most of what it allocated. mimalloc keeps freed pages for reuse
/// and purges them only in passing, on a later call from the same thread, so a thread that
/// compiled a config and went idle kept them.
pub fn release_memory() {
    // SAFETY: `mi_collect` has no preconditions; `true` returns every free page of this
    // thread's heap to the system at once.
    unsafe { mi::mi_collect(true) }
}

/// Whether a plain allocation of `size` bytes is aligned enough for `align`. Every block is
/// 8-aligned. Those of 24, 40 or 56 bytes (classes of an odd number of words) are not always
/// 16-aligned, and a size that is a multiple of 16 never falls in them.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= 8 || (align == 16 && size.is_multiple_of(16))
}

/// The sizes a thread keeps a freed block of: over mimalloc's small blocks (1 KiB, served by
/// its fast path) and up to a size worth keeping for the thread's life.
const KEPT_SIZES: std::ops::RangeInclusive<usize> = 1025..=8192;

/// The most freed medium blocks a thread keeps: more requests than one turn of the event loop
/// starts before any ends (32 connections each sent one in the turns measured).
const KEPT_BLOCKS: usize = 64;

/// After this many blocks in a row were not kept for their size, the kept ones are freed and
/// the next size freed is kept: a size freed at start-up must not hold the stack for good.
const REFUSED_TO_SWITCH: u32 = 16;

/// Freed medium blocks of one size, kept by a thread to serve its next requests of that size
/// (with an alignment `plain` serves): a stack linked through the blocks' first words. The
/// size kept is that of the first block freed while none is kept, or after
/// [`REFUSED_TO_SWITCH`] blocks of other sizes in a row, so it follows the size the thread
/// frees most. The blocks are mimalloc's, and are freed with the thread.
struct Kept {
    top: Cell<*mut u8>,
    count: Cell<usize>,
    size: Cell<usize>,
    /// Blocks not kept for their size since one was.
    refused: Cell<u32>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.free_all();
    }
}

impl Kept {
    fn free_all(&self) {
        while let Some(block) = self.pop(self.size.get()) {
            // SAFETY: a block kept is one mimalloc made and nothing else holds.
            unsafe { mi::mi_free(block.cast::<c_void>()) }
        }
    }

    /// A kept block of `size` bytes, when there is one.
    fn pop(&self, size: usize) -> Option<*mut u8> {
        let top = self.top.get();
        if top.is_null() || size != self.size.get() {
            return None;
        }
        // SAFETY: `top` is a kept block, at least 1 KiB and 8-aligned, whose first word holds
        // the next kept block (written by `push`).
        let next = unsafe { top.cast::<*mut u8>().read() };
        self.top.set(next);
        self.count.set(self.count.get() - 1);
        Some(top)
    }

    /// Keeps `block` of `size` bytes; `false` when it is not kept (full, or another size).
    fn push(&self, block: *mut u8, size: usize) -> bool {
        let mut count = self.count.get();
        if count > 0 && size != self.size.get() {
            let refused = self.refused.get() + 1;
            self.refused.set(refused);
            if refused < REFUSED_TO_SWITCH {
                return false;
            }
            self.free_all();
            count = 0;
        }
        if count == KEPT_BLOCKS {
            return false;
        }
        if count == 0 {
            self.size.set(size);
        }
        self.refused.set(0);
        // SAFETY: `block` was freed to us (nothing else holds it), at least 1 KiB and
        // 8-aligned: its first word is ours to write.
        unsafe { block.cast::<*mut u8>().write(self.top.get()) };
        self.top.set(block);
        self.count.set(count + 1);
        true
    }
}

thread_local! {
    static KEPT: Kept = const {
        Kept {
            top: Cell::new(ptr::null_mut()),
            count: Cell::new(0),
            size: Cell::new(0),
            refused: Cell::new(0),
        }
    };
}

/// A kept block of `size` bytes (no longer kept), if the thread has one.
#[inline(never)]
fn take_kept(size: usize) -> Option<*mut u8> {
    KEPT.try_with(|kept| kept.pop(size)).ok().flatten()
}

/// Keeps `block` of `size` bytes if it can: `false` when it is to be freed.
#[inline(never)]
fn keep(block: *mut u8, size: usize) -> bool {
    KEPT.try_with(|kept| kept.push(block, size))
        .unwrap_or(false)
}

// SAFETY: each method returns a block of at least `layout.size()` bytes aligned to
// `layout.align()` (mimalloc's plain calls only where `plain` says their alignment suffices,
// its aligned calls otherwise, or a kept block mimalloc made for the same size and a plain
// alignment), or null; every block, however it was made, is freed by `mi_free`, which takes
// blocks of either kind and from any thread.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls have no preconditions; a kept block is one
        // mimalloc made for this size and alignment, and nothing else holds it.
        unsafe {
            if plain(layout.size(), layout.align()) {
                if KEPT_SIZES.contains(&layout.size()) {
                    if let Some(block) = take_kept(layout.size()) {
                        return block;
                    }
                }
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if KEPT_SIZES.contains(&layout.size())
            && plain(layout.size(), layout.align())
            && keep(ptr, layout.size())
        {
            return;
        }
        // SAFETY: `ptr` came from this allocator (the trait's contract), so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps the alignment `layout` asked
        // for (plain only when the new size's alignment suffices).
        unsafe {
            if plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// This process's resident anonymous memory, bytes.
    fn rss_anon() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .unwrap();
        kib * 1024
    }

    #[test]
    fn memory_freed_by_a_parse_is_given_back_once_released() {
        // On a thread of its own, as a reload's compile runs: 32 MiB in the small blocks a
        // YAML tree is made of, written, then freed.
        std::thread::spawn(|| {
            let layout = Layout::from_size_align(512, 8).unwrap();
            let before = rss_anon();
            // SAFETY: non-zero size; each block is written within its size and freed once.
            let blocks: Vec<*mut u8> = (0..65_536)
                .map(|_| unsafe {
                    let b = Allocator.alloc(layout);
                    b.write_bytes(7, layout.size());
                    b
                })
                .collect();
            let grown = rss_anon();
            assert!(grown >= before + (24 << 20), "{before} -> {grown}");
            for b in blocks {
                // SAFETY: made above with this layout, freed once.
                unsafe { Allocator.dealloc(b, layout) };
            }
            release_memory();
            let released = rss_anon();
            assert!(
                released + (16 << 20) <= grown,
                "RssAnon {before} -> {grown} -> {released} after release_memory"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn freed_medium_blocks_serve_the_next_of_their_size_only() {
        let layout = Layout::from_size_align(2672, 8).unwrap();
        let other = Layout::from_size_align(2680, 8).unwrap();
        // SAFETY: non-zero sizes; each block is freed once, with its own layout.
        unsafe {
            let a = Allocator.alloc(layout);
            let b = Allocator.alloc(layout);
            Allocator.dealloc(a, layout);
            Allocator.dealloc(b, layout);
            let c = Allocator.alloc(other);
            assert!(c != a && c != b, "kept blocks serve only their own size");
            // Another size while blocks are kept: freed, not kept.
            Allocator.dealloc(c, other);
            assert_eq!(Allocator.alloc(layout), b, "the last freed first");
            assert_eq!(Allocator.alloc(layout), a);
            b.write_bytes(1, layout.size());
            // More than the stack holds: the rest are freed.
            let many: Vec<_> = (0..KEPT_BLOCKS + 3)
                .map(|_| Allocator.alloc(layout))
                .collect();
            for &m in &many {
                Allocator.dealloc(m, layout);
            }
            assert_eq!(KEPT.with(|k| k.count.get()), KEPT_BLOCKS);
            Allocator.dealloc(a, layout);
            Allocator.dealloc(b, layout);
            for _ in 0..KEPT_BLOCKS {
                let m = take_kept(layout.size()).unwrap();
                assert!(many.contains(&m));
                // SAFETY: no longer kept: freed once, as `dealloc` would.
                mi::mi_free(m.cast::<c_void>());
            }
            assert_eq!(take_kept(layout.size()), None);
            // Emptied, the stack takes the next size freed.
            let d = Allocator.alloc(other);
            Allocator.dealloc(d, other);
            assert_eq!(Allocator.alloc(other), d);
            Allocator.dealloc(d, other);
            // Enough blocks of another size in a row, and the stack switches to it.
            let third = Layout::from_size_align(4000, 8).unwrap();
            let blocks: Vec<_> = (0..REFUSED_TO_SWITCH)
                .map(|_| Allocator.alloc(third))
                .collect();
            for &t in &blocks {
                Allocator.dealloc(t, third);
            }
            assert_eq!(KEPT.with(|k| (k.size.get(), k.count.get())), (4000, 1));
            assert_eq!(
                Allocator.alloc(third),
                blocks[REFUSED_TO_SWITCH as usize - 1]
            );
            assert_eq!(
                take_kept(other.size()),
                None,
                "the other size's block was freed"
            );
        }
        // A thread's kept blocks are freed with it.
        std::thread::spawn(move || unsafe {
            let a = Allocator.alloc(layout);
            Allocator.dealloc(a, layout);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1, 7, 8, 15, 16, 17, 24, 32, 40, 48, 56, 100, 1024, 2672, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; the block is freed with the same allocator.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = Allocator.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert_eq!(q.read(), 0xa5);
                    Allocator.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
