//! A `#[global_allocator]` that counts heap allocations while counting is switched on.
//!
//! Counted: every `alloc`, `alloc_zeroed` and `realloc` call (a `realloc` that grows a `Vec` is
//! a trip to the allocator like any other). Frees are not counted. The counters are plain
//! relaxed atomics: the harness is single-threaded, so they cost one uncontended add each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// The allocator: `System`, plus counters.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[inline]
fn count(size: usize) {
    if ON.load(Relaxed) {
        CALLS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches no memory of the
// allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Allocation calls and bytes requested while counting was on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub calls: u64,
    pub bytes: u64,
}

/// Zeroes the counters and switches counting on.
pub fn start() {
    CALLS.store(0, Relaxed);
    BYTES.store(0, Relaxed);
    ON.store(true, Relaxed);
}

/// Switches counting off and returns what was counted since `start`.
pub fn stop() -> Counts {
    ON.store(false, Relaxed);
    Counts {
        calls: CALLS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

/// Runs `f` with counting suspended (the client building its payload is not the library's
/// allocation), then restores the previous state.
#[inline]
pub fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let was = ON.swap(false, Relaxed);
    let result = f();
    ON.store(was, Relaxed);
    result
}
