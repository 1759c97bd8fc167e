//! Pages: fixed-capacity buffers that one [`Writer`] fills front to back while the prefix it
//! has *frozen* is shared, read-only, by any number of [`Shared`] handles on any thread.
//!
//! This is the crate's only `unsafe` code, and why it exists: a replica's log, its storage and
//! every follower's Accept hold the same entries, so the entries live in shared runs
//! ([`Entries`](crate::Entries)). With one command in flight each `ready` seals a run of one
//! entry; as a separate allocation each, those runs cost an allocation and a free per entry,
//! a reference count on a cold cache line per holder, and one slot per entry in every holder's
//! run list (thousands of 40-byte slots per holder between compactions). A page holds the runs
//! of many consecutive seals: a seal is a pointer and a length into the page the writer keeps
//! filling, and a holder that already has the run just before it extends that run instead of
//! storing another (`Shared::try_extend`). Safe Rust has no container that hands out shared
//! slices of a buffer that is still being appended to (`Arc<[T]>` is complete when made;
//! `bytes::BytesMut` does exactly this, for bytes only). The gain is measured in
//! `benches/peers/README.md`.
//!
//! # Invariants (what makes the `unsafe` blocks sound)
//!
//! 1. Slots `0..initialised` of a page hold values; the others do not. Only the writer changes
//!    `initialised`, and the page drops exactly those values when it is dropped.
//! 2. A page has at most one writer, which is not `Clone` and needs `&mut` for every change.
//!    The writer writes only slots at or beyond its `frozen` mark, and the mark only grows.
//! 3. A `Shared` handle covers slots below the writer's `frozen` mark at the time it was made
//!    (or of a page that has no writer), and keeps the page alive: its values are initialised
//!    and are never written while it exists, so reading them through `&[T]` is sound from any
//!    thread that has the handle.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The smallest and largest capacity, in values, of a page the writer allocates (a page is
/// larger than the largest only when one unfrozen stretch needs it).
const CAPACITY_MIN: usize = 256;
const CAPACITY_MAX: usize = 4096;

/// A page whose values carry at least this many bytes (as their writer counts them) is retired
/// at the next freeze. Values live as long as their page, so this bounds what one handle can
/// keep alive beyond its own values: a holder that keeps the newest entry of a page keeps the
/// commands of the whole page.
pub(crate) const PAGE_BYTES_MAX: usize = 1 << 20;

/// A buffer of `slots.len()` values, the first `initialised` of them written.
struct Page<T> {
    initialised: AtomicUsize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: a page is shared between threads only through `Shared` handles (which read frozen,
// initialised slots that nobody writes: invariant 3) and its one writer (which writes only
// slots no handle covers: invariant 2). So `&Page<T>` on several threads gives `&T` to
// frozen values on several threads (needs `T: Sync`), and the values may be dropped on any
// thread (needs `T: Send`).
unsafe impl<T: Send + Sync> Sync for Page<T> {}

// A panic cannot leave a page half-changed where a shared reference sees it: handles read
// only frozen values, and the writer changes the rest through `&mut` (as `Arc<[T]>` was).
impl<T: std::panic::RefUnwindSafe> std::panic::RefUnwindSafe for Page<T> {}

impl<T> Page<T> {
    fn with_capacity(capacity: usize) -> Arc<Page<T>> {
        Arc::new(Page {
            initialised: AtomicUsize::new(0),
            slots: (0..capacity)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
        })
    }

    /// A raw pointer to slot `index` (at most the capacity: one past the end is allowed).
    fn slot(&self, index: usize) -> *mut T {
        debug_assert!(index <= self.slots.len());
        // `UnsafeCell<MaybeUninit<T>>` has the layout of `T`; `wrapping_add` keeps the
        // one-past-the-end pointer well defined without touching memory.
        (self.slots.as_ptr() as *mut T).wrapping_add(index)
    }
}

impl<T> Drop for Page<T> {
    fn drop(&mut self) {
        let initialised = *self.initialised.get_mut();
        for slot in &mut self.slots[..initialised] {
            // SAFETY: invariant 1; `&mut self` means no handle or writer is left.
            unsafe { slot.get_mut().assume_init_drop() };
        }
    }
}

/// A read-only run of consecutive values of one page (or the empty run, which holds no page):
/// cloning it shares the page, dereferencing it gives the values as a slice.
pub(crate) struct Shared<T> {
    page: Option<Arc<Page<T>>>,
    start: NonNull<T>,
    len: usize,
}

// SAFETY: a handle gives `&[T]` (needs `T: Sync` to cross threads) and may drop the last
// reference to the page, dropping its values (needs `T: Send`); the raw pointer points into
// the page the handle keeps alive.
unsafe impl<T: Send + Sync> Send for Shared<T> {}
// SAFETY: as above; `&Shared<T>` gives only `&[T]` and clones.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The empty run.
    pub(crate) const fn empty() -> Shared<T> {
        Shared {
            page: None,
            start: NonNull::dangling(),
            len: 0,
        }
    }

    /// Moves `values` into a page of their own, all frozen, reusing the vector's buffer when
    /// it has no spare capacity (no allocation if there are none).
    pub(crate) fn from_vec(values: Vec<T>) -> Shared<T> {
        if values.is_empty() {
            return Shared::empty();
        }
        let slots: Box<[UnsafeCell<MaybeUninit<T>>]> = values
            .into_iter()
            .map(|value| UnsafeCell::new(MaybeUninit::new(value)))
            .collect();
        let len = slots.len();
        let page = Arc::new(Page {
            initialised: AtomicUsize::new(len),
            slots,
        });
        Shared {
            start: NonNull::new(page.slot(0)).expect("a page's slots are not null"),
            page: Some(page),
            len,
        }
    }

    /// The sub-run `from..to` of this run (indices into it).
    ///
    /// # Panics
    /// If `from > to` or `to > len()`, as slice indexing would.
    pub(crate) fn sub(&self, from: usize, to: usize) -> Shared<T> {
        assert!(from <= to && to <= self.len, "sub-run out of bounds");
        if from == to {
            return Shared::empty();
        }
        Shared {
            page: self.page.clone(),
            // SAFETY: `from < to <= len`: within the run.
            start: unsafe { NonNull::new_unchecked(self.start.as_ptr().add(from)) },
            len: to - from,
        }
    }

    /// Drops the first `count` values from the run (at most all of them).
    pub(crate) fn drop_front(&mut self, count: usize) {
        if count >= self.len {
            *self = Shared::empty();
        } else if count > 0 {
            // SAFETY: `count < len`: within the run.
            self.start = unsafe { NonNull::new_unchecked(self.start.as_ptr().add(count)) };
            self.len -= count;
        }
    }

    /// Extends this run by the values of `next` when `next` starts right where this run ends,
    /// in the same page, and says whether it did. `next` is left as it is: this run's own
    /// reference keeps the page alive, so no reference count changes.
    #[inline]
    pub(crate) fn try_extend(&mut self, next: &Shared<T>) -> bool {
        match (&self.page, &next.page) {
            (Some(mine), Some(theirs))
                if Arc::ptr_eq(mine, theirs)
                    && self.start.as_ptr().wrapping_add(self.len) == next.start.as_ptr() =>
            {
                // Invariant 3 holds for the union: `next` witnesses that its values are frozen.
                self.len += next.len;
                true
            }
            _ => false,
        }
    }

    /// True if both runs hold the same page (or are both empty): for tests.
    #[cfg(test)]
    pub(crate) fn same_page(&self, other: &Shared<T>) -> bool {
        match (&self.page, &other.page) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            (None, None) => true,
            _ => false,
        }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared {
            page: self.page.clone(),
            start: self.start,
            len: self.len,
        }
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Shared<T> {
        Shared::empty()
    }
}

impl<T> Deref for Shared<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: invariant 3 (for the empty run: a dangling, aligned pointer and length 0).
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

/// The one writer of the page being filled: appends values, lets its owner change the values
/// not yet frozen, and freezes them into [`Shared`] runs.
pub(crate) struct Writer<T> {
    page: Option<Arc<Page<T>>>,
    /// Slots below it are frozen (shared or droppable only with the page).
    frozen: usize,
    /// Slots below it are initialised.
    len: usize,
    /// The capacity of the next page: grows with the longest run frozen and the longest
    /// unfrozen stretch seen (up to `CAPACITY_MAX`), so a writer that seals large batches
    /// does not move them from page to page.
    next_capacity: usize,
    /// The bytes the values of the current page carry, as `push` was told.
    page_bytes: usize,
}

impl<T> Default for Writer<T> {
    fn default() -> Writer<T> {
        Writer {
            page: None,
            frozen: 0,
            len: 0,
            next_capacity: CAPACITY_MIN,
            page_bytes: 0,
        }
    }
}

impl<T> Writer<T> {
    /// Appends `value`, which carries `bytes` bytes of its own (counted towards
    /// [`PAGE_BYTES_MAX`]), after the unfrozen values.
    #[inline]
    pub(crate) fn push(&mut self, value: T, bytes: usize) {
        if !matches!(&self.page, Some(page) if self.len < page.slots.len()) {
            self.next_page();
        }
        let Some(page) = &self.page else {
            unreachable!("next_page made a page")
        };
        // SAFETY: `len` is below the capacity and at or beyond `frozen`: no handle covers the
        // slot (invariant 2), and it holds no value (invariant 1).
        unsafe { page.slot(self.len).write(value) };
        self.len += 1;
        page.initialised.store(self.len, Ordering::Relaxed);
        self.page_bytes = self.page_bytes.saturating_add(bytes);
    }

    /// Moves the unfrozen values into a new page with room for more and makes it current.
    #[cold]
    #[inline(never)]
    fn next_page(&mut self) {
        let unfrozen = self.len - self.frozen;
        let wanted = (2 * (unfrozen + 1)).clamp(CAPACITY_MIN, CAPACITY_MAX);
        self.next_capacity = self.next_capacity.max(wanted);
        let page = Page::<T>::with_capacity(self.next_capacity.max(unfrozen + 1));
        if let Some(old) = self.page.take() {
            for index in 0..unfrozen {
                // SAFETY: slots `frozen..len` of the old page are initialised and no handle
                // covers them (invariants 1, 2); each is read once, then forgotten by lowering
                // `initialised` below them before anything else can happen. The new slots are
                // fresh.
                unsafe { page.slot(index).write(old.slot(self.frozen + index).read()) };
            }
            old.initialised.store(self.frozen, Ordering::Relaxed);
        }
        page.initialised.store(unfrozen, Ordering::Relaxed);
        self.frozen = 0;
        self.len = unfrozen;
        self.page_bytes = 0;
        self.page = Some(page);
    }

    /// The values not yet frozen, in order.
    #[inline]
    pub(crate) fn unfrozen(&self) -> &[T] {
        match &self.page {
            // SAFETY: slots `frozen..len` are initialised and only `&mut self` writes them.
            Some(page) => unsafe {
                std::slice::from_raw_parts(page.slot(self.frozen), self.len - self.frozen)
            },
            None => &[],
        }
    }

    /// The values not yet frozen, to change in place.
    #[inline]
    pub(crate) fn unfrozen_mut(&mut self) -> &mut [T] {
        match &self.page {
            // SAFETY: slots `frozen..len` are initialised, no handle covers them, and
            // `&mut self` is the only way to reach them.
            Some(page) => unsafe {
                std::slice::from_raw_parts_mut(page.slot(self.frozen), self.len - self.frozen)
            },
            None => &mut [],
        }
    }

    /// Freezes every value appended so far and returns the run of those not frozen before
    /// (empty if none). Retires the page if its values carry [`PAGE_BYTES_MAX`] bytes.
    #[inline]
    pub(crate) fn freeze(&mut self) -> Shared<T> {
        let (Some(page), true) = (&self.page, self.len > self.frozen) else {
            return Shared::empty();
        };
        let run = Shared {
            page: Some(page.clone()),
            // SAFETY (invariant 3 from here on): `frozen < len <= capacity`.
            start: unsafe { NonNull::new_unchecked(page.slot(self.frozen)) },
            len: self.len - self.frozen,
        };
        // Room for a few more runs like this one in the next page, so that a writer sealing
        // large batches moves few of them from a full page to the next.
        self.next_capacity = self
            .next_capacity
            .max(run.len.saturating_mul(4).clamp(CAPACITY_MIN, CAPACITY_MAX));
        self.frozen = self.len;
        if self.page_bytes >= PAGE_BYTES_MAX {
            self.retire_page();
        }
        run
    }

    /// Freezes the first `count` unfrozen values (at most all) without handing them out: they
    /// are dropped with the page.
    pub(crate) fn discard_front(&mut self, count: usize) {
        self.frozen += count.min(self.len - self.frozen);
    }

    /// Starts the next value on a new page (the current one is left to its handles), unless
    /// values are unfrozen.
    fn retire_page(&mut self) {
        if self.len == self.frozen {
            self.page = None;
            self.frozen = 0;
            self.len = 0;
            self.page_bytes = 0;
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Writer<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.unfrozen()).finish()
    }
}

impl<T: Clone> Clone for Writer<T> {
    /// A writer of a page of its own holding copies of the unfrozen values.
    fn clone(&self) -> Writer<T> {
        let mut copy = Writer {
            next_capacity: self.next_capacity,
            ..Writer::default()
        };
        for value in self.unfrozen() {
            copy.push(value.clone(), 0);
        }
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts live values, to check every value is dropped exactly once.
    struct Counted(Arc<AtomicUsize>, u64);

    impl Counted {
        fn new(live: &Arc<AtomicUsize>, value: u64) -> Counted {
            live.fetch_add(1, Ordering::SeqCst);
            Counted(live.clone(), value)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn values(run: &[Counted]) -> Vec<u64> {
        run.iter().map(|value| value.1).collect()
    }

    #[test]
    fn frozen_runs_stay_readable_while_the_writer_appends_and_moves_pages() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut writer = Writer::default();
        let mut runs = Vec::new();
        let mut next = 0;
        for batch in [1, 1, 3, 70, 1, 200, 5000, 2] {
            for _ in 0..batch {
                writer.push(Counted::new(&live, next), 0);
                next += 1;
            }
            runs.push(writer.freeze());
        }
        let mut expected = 0;
        for (run, batch) in runs.iter().zip([1, 1, 3, 70, 1, 200, 5000, 2]) {
            assert_eq!(
                values(run),
                (expected..expected + batch).collect::<Vec<_>>()
            );
            expected += batch;
        }
        assert_eq!(live.load(Ordering::SeqCst), next as usize);
        drop(writer);
        assert_eq!(
            live.load(Ordering::SeqCst),
            next as usize,
            "the runs hold them"
        );
        drop(runs);
        assert_eq!(live.load(Ordering::SeqCst), 0, "every value dropped once");
    }

    #[test]
    fn consecutive_seals_join_and_other_runs_do_not() {
        let mut writer = Writer::default();
        writer.push(1, 0);
        let mut first = writer.freeze();
        writer.push(2, 0);
        writer.push(3, 0);
        let second = writer.freeze();
        assert!(first.same_page(&second));
        assert!(
            first.try_extend(&second),
            "consecutive runs of one page join"
        );
        assert_eq!(&first[..], &[1, 2, 3]);
        drop(second);
        assert_eq!(&first[..], &[1, 2, 3], "the joined run keeps the page");
        assert!(!first.try_extend(&first.sub(2, 3)), "not adjacent");
        assert!(
            !first.try_extend(&Shared::from_vec(vec![4])),
            "another page"
        );
        let mut empty = Shared::empty();
        assert!(!empty.try_extend(&first.sub(0, 1)));
    }

    #[test]
    fn unfrozen_values_change_in_place_and_discarded_ones_drop_with_the_page() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut writer = Writer::default();
        for value in 0..5 {
            writer.push(Counted::new(&live, value), 0);
        }
        writer.unfrozen_mut()[1] = Counted::new(&live, 10);
        assert_eq!(
            live.load(Ordering::SeqCst),
            5,
            "the replaced value was dropped"
        );
        writer.discard_front(2);
        assert_eq!(values(writer.unfrozen()), [2, 3, 4]);
        let run = writer.freeze();
        assert_eq!(values(&run), [2, 3, 4]);
        assert!(writer.unfrozen().is_empty() && writer.freeze().is_empty());
        drop(writer);
        assert_eq!(
            live.load(Ordering::SeqCst),
            5,
            "discarded values live with the page"
        );
        drop(run);
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_page_that_carries_enough_bytes_is_retired_at_the_next_freeze() {
        let mut writer = Writer::default();
        writer.push(1u8, PAGE_BYTES_MAX / 2);
        let first = writer.freeze();
        writer.push(2, PAGE_BYTES_MAX / 2 - 1);
        let second = writer.freeze();
        assert!(first.same_page(&second), "below the bound: one page");
        writer.push(3, 1);
        writer.push(4, 0); // the bound is checked when freezing, not on every push
        let third = writer.freeze();
        assert!(second.same_page(&third));
        writer.push(5, 0);
        let fourth = writer.freeze();
        assert!(!third.same_page(&fourth), "the full page was retired");
        assert_eq!(&fourth[..], &[5]);
    }

    #[test]
    fn sub_runs_and_drop_front_stay_within_the_run() {
        let run = Shared::from_vec((0..10).collect::<Vec<u32>>());
        assert_eq!(&run.sub(2, 5)[..], &[2, 3, 4]);
        assert!(run.sub(4, 4).is_empty());
        let mut tail = run.sub(5, 10);
        tail.drop_front(3);
        assert_eq!(&tail[..], &[8, 9]);
        tail.drop_front(7);
        assert!(tail.is_empty());
        assert!(std::panic::catch_unwind(|| run.sub(3, 11)).is_err());
        assert!(Shared::<u32>::from_vec(Vec::new()).is_empty());
    }

    #[test]
    fn runs_keep_the_auto_traits_of_a_shared_slice() {
        fn shareable<T: Send + Sync + std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
        shareable::<Shared<String>>();
        shareable::<crate::Entries>();
        shareable::<crate::Message>();
        shareable::<crate::Replica>();
    }

    #[test]
    fn a_cloned_writer_owns_copies_of_the_unfrozen_values() {
        let mut writer = Writer::default();
        writer.push(String::from("a"), 1);
        let _frozen = writer.freeze();
        writer.push(String::from("b"), 1);
        let mut copy = writer.clone();
        copy.unfrozen_mut()[0].push('!');
        assert_eq!(writer.unfrozen(), ["b"]);
        assert_eq!(copy.unfrozen(), ["b!"]);
    }

    #[test]
    fn runs_are_read_and_dropped_on_other_threads() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut writer = Writer::default();
        let mut threads = Vec::new();
        for batch in 0..50u64 {
            for offset in 0..=batch % 7 {
                writer.push(Counted::new(&live, batch * 100 + offset), 0);
            }
            let run = writer.freeze();
            threads.push(std::thread::spawn(move || {
                let expected: Vec<u64> = (0..=batch % 7).map(|o| batch * 100 + o).collect();
                assert_eq!(values(&run), expected);
            }));
        }
        drop(writer);
        for thread in threads {
            thread.join().expect("reader thread");
        }
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
