//! A counting global allocator for the measurement binaries (the `table_memory` test and
//! the `simulate` example) and nothing else: a binary opts in with
//! `#[global_allocator] static GLOBAL: CountingAlloc = CountingAlloc;`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicIsize, Ordering},
};

/// Heap bytes currently allocated through the counting allocator (requested sizes).
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Heap bytes allocated minus freed by this thread (requested sizes).
    static THREAD_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// Heap bytes live now, all threads together.
pub fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Heap bytes this thread allocated minus those it freed: what dropping a structure
/// built and dropped on one thread frees, whatever other threads do meanwhile.
pub fn thread_net_bytes() -> isize {
    THREAD_BYTES.with(Cell::get)
}

fn count(delta: isize) {
    LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
    // Not available while the thread is being torn down: only the total counts then.
    let _ = THREAD_BYTES.try_with(|b| b.set(b.get() + delta));
}

/// The system allocator, counting live bytes.
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}
