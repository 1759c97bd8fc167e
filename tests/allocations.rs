//! Heap allocations of the steady-state Ready loop, counted per thread by a global allocator.
//!
//! A count, not a time: it is deterministic, so it can be asserted. The bounds are the
//! figures measured when the buffer reuse landed (see `Replica::advance`); a change that makes
//! the hot path allocate more per entry fails here before it shows in a benchmark.

use bytes::Bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use synod::{Config, MemStorage, Message, NodeId, Recovered, Replica, Storage};

/// Counts the allocations (and reallocations) of the current thread, then defers to `System`.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting touches only a const-initialized thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(pointer, layout, size) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Three replicas on `MemStorage`, driven by the documented drain loop, in one thread.
struct Cluster {
    replicas: Vec<Replica>,
    storages: Vec<MemStorage>,
    applied: Vec<u64>,
    queue: Vec<Message>,
    delivering: Vec<Message>,
}

impl Cluster {
    fn new(window: usize) -> Cluster {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let replicas = members
            .iter()
            .map(|&id| {
                let mut config = Config::new(id, members.clone());
                config.uncommitted_entries_max = 2 * window.max(1);
                Replica::new(config, Recovered::default()).unwrap()
            })
            .collect();
        let mut cluster = Cluster {
            replicas,
            storages: vec![MemStorage::new(); 3],
            applied: vec![0; 3],
            queue: Vec::new(),
            delivering: Vec::new(),
        };
        while !cluster.replicas[0].is_leader() {
            cluster.replicas[0].tick();
            while cluster.round() {}
        }
        cluster
    }

    /// Delivers what is queued, then drains every replica once. True if anything happened.
    fn round(&mut self) -> bool {
        let mut busy = !self.queue.is_empty();
        std::mem::swap(&mut self.queue, &mut self.delivering);
        for message in self.delivering.drain(..) {
            let to = message.to.0 as usize - 1;
            self.replicas[to].step(message).unwrap();
        }
        for index in 0..3 {
            let replica = &mut self.replicas[index];
            while replica.has_ready() {
                busy = true;
                let mut ready = replica.ready();
                self.queue.extend(ready.drain_messages());
                self.storages[index].write(ready.persist_mut()).unwrap();
                self.queue.extend(ready.drain_persisted_messages());
                self.applied[index] += replica.committed(&ready).count() as u64;
                replica
                    .advance(ready)
                    .expect("its own ready, acknowledged in order");
            }
        }
        busy
    }

    /// Proposes `count` commands in windows of `window`, each window applied everywhere before
    /// the next; returns the allocations this took.
    fn run(&mut self, count: usize, window: usize) -> u64 {
        let payload = Bytes::from_static(&[7; 64]);
        let before = allocations();
        for _ in 0..count / window {
            let target = self.applied.iter().min().unwrap() + window as u64;
            for _ in 0..window {
                self.replicas[0].propose(payload.clone()).unwrap();
            }
            while self.applied.iter().any(|&applied| applied < target) {
                assert!(self.round(), "the cluster stalled");
            }
        }
        allocations() - before
    }
}

/// Runs a warm-up, then `count` commands; returns allocations per command (all three replicas
/// and their storages together).
fn per_command(window: usize, count: usize) -> f64 {
    let mut cluster = Cluster::new(window);
    cluster.run(count, window);
    cluster.run(count, window) as f64 / count as f64
}

#[test]
fn a_full_window_allocates_under_one_allocation_per_entry_per_replica() {
    // 0.005 measured: the leader's entries go straight into a page of a few batches (two
    // allocations per page); the log, the write and both Accepts hold runs of that page, and
    // followers keep the run they get. (0.010 with one allocation per batch, before pages.)
    let allocations = per_command(100, 20_000);
    eprintln!("window 100: {allocations:.3} allocations per command (3 replicas)");
    assert!(
        allocations < 0.01,
        "{allocations:.3} allocations per command, over 3 replicas"
    );
}

#[test]
fn one_command_in_flight_reuses_the_ready_buffers() {
    // 0.009 measured: each one-entry batch is frozen in place in the leader's current page
    // (256 entries, two allocations), which both Accepts, the write and every log share; each
    // holder joins consecutive batches into one run. Every Ready buffer is reused. (1.0 before
    // pages: an allocation per batch.)
    let allocations = per_command(1, 5_000);
    eprintln!("window 1: {allocations:.3} allocations per command (3 replicas)");
    assert!(
        allocations <= 0.02,
        "{allocations:.3} allocations per command, over 3 replicas"
    );
}
