//! The replica's in-memory view of its log: for each slot from `first` on, the entry with the
//! highest ballot it has accepted (or the chosen value it fetched), or nothing (a hole).
//!
//! Slots below `first` were compacted away by the application. The log is a sequence of shared
//! runs ([`Entries`]) in slot order, with holes between them, followed by an open *tail*: the
//! entries stored one by one since the tail was last sealed. The tail is the unfrozen end of a
//! page (`crate::page`) that the runs sealed before it share: sealing freezes the tail into
//! one shared run in place and hands a reference to it to a *sink* (the replica's unwritten
//! entries), so the log, the storage write and every follower's Accept share the page, and no
//! entry is cloned or moved on the steady-state path. A run that continues the newest run in
//! the same page is joined to it, so a log holds one run for many one-entry batches.
//!
//! [`MemStorage`](crate::MemStorage) keeps its entries in a `Log` too, through
//! [`Log::put`].

use crate::page::Writer;
use crate::types::{Ballot, Entries, Entry, Slot};
use std::collections::VecDeque;

/// Entries by slot, from `first` on, with holes.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    /// Every slot below it was chosen, applied and compacted.
    first: Slot,
    /// Non-empty runs of consecutive slots, in slot order, not overlapping, all at or above
    /// `first` and below `tail_first` when the tail holds entries.
    runs: VecDeque<Entries>,
    /// Entries of consecutive slots from `tail_first` on, beyond every run, not yet sealed:
    /// the unfrozen part of the page that the runs sealed before share.
    tail: Writer<Entry>,
    /// The slot of `tail[0]` (meaningless while the tail is empty).
    tail_first: Slot,
}

/// The first slot of a run (runs in a log are never empty); reads no entry.
#[inline]
fn run_first(run: &Entries) -> Slot {
    run.first_slot_of_held()
}

/// The last slot of a run; reads no entry.
#[inline]
fn run_last(run: &Entries) -> Slot {
    run.last_slot_of_held()
}

/// Walks `entries`, consecutive slots from `low` (at most `next`), from slot `next` up to
/// `last` while they carry `ballot`. Returns the first slot not covered, and whether an entry
/// of another ballot stopped the walk (rather than `last` or the end of `entries`).
#[inline]
fn walk_in_ballot(
    entries: &[Entry],
    low: Slot,
    mut next: Slot,
    last: Slot,
    ballot: Ballot,
) -> (Slot, bool) {
    let start = (next - low) as usize;
    let end = entries
        .len()
        .min(start.saturating_add((last - next) as usize + 1));
    for entry in entries.get(start..end).unwrap_or(&[]) {
        if entry.ballot != ballot {
            return (next, true);
        }
        next += 1;
    }
    (next, false)
}

/// The entries of `run` in `first..=last` (both clipped to the run). The run's bounds come
/// from its fields, so a run wholly outside the range is skipped without touching its entries.
#[inline]
fn clip(run: &Entries, first: Slot, last: Slot) -> &[Entry] {
    let low = run_first(run);
    let (first, last) = (first.max(low), last.min(run_last(run)));
    if first > last {
        &[]
    } else {
        &run[(first - low) as usize..=(last - low) as usize]
    }
}

impl Log {
    /// An empty log whose first slot is `first` (1 for a fresh replica).
    pub(crate) fn new(first: Slot) -> Log {
        assert!(first >= 1, "slots start at 1");
        Log {
            first,
            runs: VecDeque::new(),
            tail: Writer::default(),
            tail_first: 0,
        }
    }

    /// The first slot still held (compaction point + 1).
    pub(crate) fn first(&self) -> Slot {
        self.first
    }

    /// The highest slot holding an entry, or `first - 1` if none.
    pub(crate) fn last(&self) -> Slot {
        if !self.tail().is_empty() {
            self.tail_first + self.tail().len() as Slot - 1
        } else {
            self.runs.back().map_or(self.first - 1, run_last)
        }
    }

    /// The number of slots holding an entry.
    pub(crate) fn len(&self) -> usize {
        self.runs.iter().map(|run| run.len()).sum::<usize>() + self.tail().len()
    }

    /// True if the tail holds entries not yet sealed into a run (and handed to a sink).
    pub(crate) fn has_unsealed(&self) -> bool {
        !self.tail().is_empty()
    }

    /// The index of the first run whose last slot is at or beyond `slot` (`runs.len()` if
    /// none). Most lookups are for recent slots, so the last few runs are tried before a binary
    /// search: with one-entry batches the log holds thousands of runs.
    #[inline]
    fn locate(&self, slot: Slot) -> usize {
        const RECENT: usize = 4;
        let count = self.runs.len();
        for index in (count.saturating_sub(RECENT)..count).rev() {
            let run = &self.runs[index];
            if run_first(run) <= slot {
                return if run_last(run) >= slot {
                    index
                } else {
                    index + 1
                };
            }
        }
        // Every recent run starts beyond `slot`: the answer is among the older ones.
        self.runs.partition_point(|run| run_last(run) < slot)
    }

    /// The entries of the tail, not yet sealed (in slot order).
    pub(crate) fn unsealed(&self) -> &[Entry] {
        self.tail.unfrozen()
    }

    /// The tail's entries.
    #[inline]
    fn tail(&self) -> &[Entry] {
        self.tail.unfrozen()
    }

    /// Appends `entry` to the tail (its slot follows the tail's last).
    #[inline]
    fn push_tail(&mut self, entry: Entry) {
        let bytes = entry.value.size_bytes();
        self.tail.push(entry, bytes);
    }

    /// Keeps `run` (beyond every run held) as the newest run: joined to the newest run when
    /// it continues it in the same page (consecutive seals), so one run stands for many
    /// one-entry batches.
    #[inline]
    fn push_run(&mut self, run: Entries) {
        if !self.join_run(&run) {
            self.runs.push_back(run);
        }
    }

    /// Extends the newest run by `run` if `run` continues it in the same page; says whether
    /// it did (then the log needs no reference of its own to `run`).
    #[inline]
    fn join_run(&mut self, run: &Entries) -> bool {
        self.runs
            .back_mut()
            .is_some_and(|back| back.try_extend(run))
    }

    /// The entry at `slot`, if held.
    #[inline]
    pub(crate) fn get(&self, slot: Slot) -> Option<&Entry> {
        if slot < self.first {
            return None;
        }
        if !self.tail().is_empty() && slot >= self.tail_first {
            return self.tail().get((slot - self.tail_first) as usize);
        }
        let index = self.locate(slot);
        let run = self.runs.get(index)?;
        let low = run_first(run);
        (slot >= low).then(|| &run[(slot - low) as usize])
    }

    /// Stores `entry` in its slot, replacing what was there. An entry for the slot after the
    /// tail (the common case) or inside it goes into the tail, to be handed to `sink` when the
    /// tail is sealed; any other becomes a run of its own, handed to `sink` at once (after the
    /// tail, if storing it seals the tail first).
    ///
    /// # Panics
    /// If the slot was compacted away (the caller checks `first()` first).
    #[inline]
    pub(crate) fn set(&mut self, entry: Entry, sink: &mut Vec<Entries>) {
        assert!(
            entry.slot >= self.first,
            "slot {} below the log's first slot",
            entry.slot
        );
        let slot = entry.slot;
        if self.tail().is_empty() {
            if !self.runs.back().is_some_and(|run| run_last(run) >= slot) {
                self.tail_first = slot;
                self.push_tail(entry);
                return;
            }
        } else {
            let end = self.tail_first + self.tail().len() as Slot;
            if slot == end {
                self.push_tail(entry);
                return;
            }
            if slot > end {
                self.seal(sink);
                self.tail_first = slot;
                self.push_tail(entry);
                return;
            }
            if slot >= self.tail_first {
                let bytes = entry.value.size_bytes();
                self.tail
                    .replace((slot - self.tail_first) as usize, entry, bytes);
                return;
            }
        }
        // Below the tail: a run of one, spliced in.
        let run = Entries::one(entry);
        sink.push(run.clone());
        self.put(run);
    }

    /// Stores `run` (consecutive slots, all beyond `last()`; a hole before it if it does not
    /// start right after it) without copying it, and hands it to `sink` after the tail, which
    /// it seals first.
    ///
    /// # Panics
    /// If the run does not start beyond `last()` (the caller checks).
    pub(crate) fn append(&mut self, run: Entries, sink: &mut Vec<Entries>) {
        let Some(first) = run.first_slot() else {
            return;
        };
        assert!(first > self.last(), "append below the log's end");
        debug_assert!(run.windows(2).all(|pair| pair[1].slot == pair[0].slot + 1));
        self.seal(sink);
        if !self.join_run(&run) {
            self.runs.push_back(run.clone());
        }
        sink.push(run);
    }

    /// Freezes the tail into a run (in its page: no entry cloned or moved) and hands the run
    /// to `sink`.
    #[inline]
    pub(crate) fn seal(&mut self, sink: &mut Vec<Entries>) {
        if !self.tail().is_empty() {
            self.seal_tail(sink);
        }
    }

    #[inline(never)]
    fn seal_tail(&mut self, sink: &mut Vec<Entries>) {
        let run = Entries::from_shared(self.tail.freeze());
        if !self.join_run(&run) {
            self.runs.push_back(run.clone());
        }
        sink.push(run);
    }

    /// Stores `run` (consecutive slots), replacing whatever the log held in its slots. The part
    /// below `first()` is ignored (compacted slots).
    ///
    /// # Panics
    /// If the tail holds entries at or below the run's last slot (a replica's log stores
    /// through `set` and `append`, which take care of the tail).
    #[inline]
    pub(crate) fn put(&mut self, run: Entries) {
        // The common case, inlined: a run beyond everything held, with no tail (the runs hold
        // no slot below `self.first`, so neither does this one).
        if let (Some(first), Some(back)) = (run.first_slot(), self.runs.back()) {
            if self.tail().is_empty() && first > run_last(back) {
                self.push_run(run);
                return;
            }
        }
        self.put_anywhere(run);
    }

    #[inline(never)]
    fn put_anywhere(&mut self, mut run: Entries) {
        run.drop_below(self.first);
        let (Some(first), Some(last)) = (run.first_slot(), run.last_slot()) else {
            return;
        };
        assert!(
            self.tail().is_empty() || last < self.tail_first,
            "a run put over the log's tail"
        );
        if !self.runs.back().is_some_and(|back| run_last(back) >= first) {
            self.runs.push_back(run);
            return;
        }
        // Runs `low..high` overlap `first..=last`; keep what sticks out on either side.
        let low = self.locate(first);
        let high = self.runs.partition_point(|held| run_first(held) <= last);
        let mut pieces = Vec::with_capacity(3);
        if low < high {
            let left = &self.runs[low];
            if run_first(left) < first {
                pieces.push(left.slots(run_first(left), first - 1));
            }
        }
        pieces.push(run);
        if low < high {
            let right = &self.runs[high - 1];
            if run_last(right) > last {
                pieces.push(right.slots(last + 1, run_last(right)));
            }
        }
        self.runs.drain(low..high);
        for (offset, piece) in pieces.into_iter().enumerate() {
            self.runs.insert(low + offset, piece);
        }
    }

    /// The entries held in `first..=last`, skipping holes.
    #[inline]
    pub(crate) fn range(&self, first: Slot, last: Slot) -> Range<'_> {
        Range {
            slices: self.slices(first, last),
            current: [].iter(),
        }
    }

    /// The entries held in `first..=last` as slices of consecutive slots, in slot order (the
    /// next slice starts right after the previous one, where two runs meet, or after a hole):
    /// for loops that want a tight inner loop.
    #[inline]
    pub(crate) fn slices(&self, first: Slot, last: Slot) -> Slices<'_> {
        let first = first.max(self.first);
        if first > last {
            return Slices {
                runs: &self.runs,
                next: self.runs.len(),
                first,
                last,
                tail: &[],
            };
        }
        Slices {
            runs: &self.runs,
            next: self.locate(first),
            first,
            last,
            tail: self.tail_slice(first, last),
        }
    }

    /// The last slot of the longest stretch `from..` (up to `last`) in which every slot is
    /// held with `ballot`, or `from - 1` if `from` is not: how far a leader's chosen mark
    /// covers values this log holds. One pass, run by run, without a lookup per slot. `from`
    /// is at least 1.
    pub(crate) fn held_in_ballot_through(&self, from: Slot, last: Slot, ballot: Ballot) -> Slot {
        let mut next = from;
        if next < self.first || next > last {
            return next - 1;
        }
        // The common case: `from` is in the newest run and nothing follows it.
        if let (true, Some(run)) = (self.tail().is_empty(), self.runs.back()) {
            let low = run_first(run);
            if low <= next {
                return walk_in_ballot(run, low, next, last, ballot).0 - 1;
            }
        }
        let runs = self
            .runs
            .range(self.locate(next)..)
            .map(|run| (run_first(run), &run[..]));
        let tail = (!self.tail().is_empty()).then_some((self.tail_first, self.tail()));
        for (low, entries) in runs.chain(tail) {
            if next > last || low > next {
                break; // done, or a hole
            }
            let (after, other_ballot) = walk_in_ballot(entries, low, next, last, ballot);
            next = after;
            if other_ballot {
                break;
            }
        }
        next - 1
    }

    /// The tail's entries in `first..=last`.
    fn tail_slice(&self, first: Slot, last: Slot) -> &[Entry] {
        if self.tail().is_empty() {
            return &[];
        }
        let (low, high) = (first.max(self.tail_first), last.min(self.last()));
        if low > high {
            &[]
        } else {
            &self.tail()[(low - self.tail_first) as usize..=(high - self.tail_first) as usize]
        }
    }

    /// The entries of `first..=last`, which must all be held (chosen slots, say).
    ///
    /// # Panics
    /// If a slot of the range is not held (a hole, or outside the log).
    pub(crate) fn contiguous(&self, first: Slot, last: Slot) -> impl Iterator<Item = &Entry> + '_ {
        self.assert_held(first, last);
        self.range(first, last)
    }

    /// Panics unless every slot of `first..=last` is held (an empty range always is). Walks
    /// the range run by run, not entry by entry.
    fn assert_held(&self, first: Slot, last: Slot) {
        if first > last {
            return;
        }
        assert!(
            first >= self.first && last <= self.last(),
            "slots {first}..={last} outside the log"
        );
        let mut next = first;
        for run in self.slices(first, last) {
            assert_eq!(run[0].slot, next, "a held range has no hole");
            next = run[run.len() - 1].slot + 1;
        }
        assert_eq!(next, last + 1, "a held range has no hole");
    }

    /// The entries of `first..=last` as one run: shared with the log (no entry copied) when a
    /// single sealed run holds them all, as in steady state; copied otherwise.
    ///
    /// # Panics
    /// If a slot of the range is not held.
    pub(crate) fn slice(&self, first: Slot, last: Slot) -> Entries {
        if first > last {
            return Entries::new();
        }
        if self.tail().is_empty() || last < self.tail_first {
            let index = self.locate(first);
            if let Some(run) = self.runs.get(index) {
                let low = run_first(run);
                if low <= first && last <= run_last(run) {
                    return run.held_slots(low, first, last);
                }
            }
        }
        self.contiguous(first, last).cloned().collect()
    }

    /// Forgets every slot up to and including `through`.
    pub(crate) fn compact(&mut self, through: Slot) {
        if through < self.first {
            return;
        }
        while self
            .runs
            .front()
            .is_some_and(|run| run_last(run) <= through)
        {
            self.runs.pop_front();
        }
        // Saturating: compacting through `Slot::MAX` (everything) must not overflow.
        let next = through.saturating_add(1);
        if let Some(run) = self.runs.front_mut() {
            run.drop_below(next);
        }
        if !self.tail().is_empty() && through >= self.tail_first {
            let count = ((next - self.tail_first) as usize).min(self.tail().len());
            self.tail.discard_front(count);
            self.tail_first += count as Slot;
        }
        self.first = next;
    }
}

/// The iterator of [`Log::slices`]: the sealed runs' parts in range, then the tail's.
pub(crate) struct Slices<'a> {
    /// The log's runs, and the index of the next one that may hold a slot in range.
    runs: &'a VecDeque<Entries>,
    next: usize,
    first: Slot,
    last: Slot,
    /// The tail's part in range (empty if none), handed out after the runs.
    tail: &'a [Entry],
}

impl<'a> Iterator for Slices<'a> {
    type Item = &'a [Entry];

    #[inline]
    fn next(&mut self) -> Option<&'a [Entry]> {
        while let Some(run) = self.runs.get(self.next) {
            if run_first(run) > self.last {
                self.next = self.runs.len();
                break;
            }
            self.next += 1;
            let slice = clip(run, self.first, self.last);
            if !slice.is_empty() {
                return Some(slice);
            }
        }
        if self.tail.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.tail))
        }
    }
}

/// The iterator of [`Log::range`]: the entries of [`Slices`], one by one (leaner than
/// `flatten`, which also keeps a back iterator).
pub(crate) struct Range<'a> {
    slices: Slices<'a>,
    current: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for Range<'a> {
    type Item = &'a Entry;

    #[inline]
    fn next(&mut self) -> Option<&'a Entry> {
        loop {
            if let Some(entry) = self.current.next() {
                return Some(entry);
            }
            self.current = self.slices.next()?.iter();
        }
    }
}

/// Logs are equal if they hold the same entries from the same first slot, however the
/// entries are split into runs.
impl PartialEq for Log {
    fn eq(&self, other: &Log) -> bool {
        self.first == other.first
            && self
                .range(self.first, self.last())
                .eq(other.range(other.first, other.last()))
    }
}

impl Eq for Log {}

impl std::hash::Hash for Log {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.first.hash(state);
        for entry in self.range(self.first, self.last()) {
            entry.hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, NodeId, Value};

    fn entry(slot: Slot) -> Entry {
        entry_in(slot, 1)
    }

    fn entry_in(slot: Slot, round: u64) -> Entry {
        Entry {
            slot,
            ballot: Ballot::new(round, NodeId(1)),
            value: Value::Noop,
        }
    }

    fn slots(log: &Log) -> Vec<Slot> {
        log.range(0, Slot::MAX).map(|e| e.slot).collect()
    }

    fn run(first: Slot, last: Slot, round: u64) -> Entries {
        (first..=last).map(|slot| entry_in(slot, round)).collect()
    }

    #[test]
    fn holes_are_empty_and_ranges_skip_them() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        assert_eq!(log.last(), 0);
        log.set(entry(3), &mut sink);
        log.set(entry(1), &mut sink);
        assert_eq!(log.last(), 3);
        assert!(log.get(2).is_none());
        assert_eq!(slots(&log), vec![1, 3]);
        assert_eq!(log.range(4, 10).count(), 0);
        assert_eq!(log.range(0, 0).count(), 0);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn the_tail_is_handed_to_the_sink_when_sealed() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        for slot in 1..=3 {
            log.set(entry(slot), &mut sink);
        }
        log.set(entry_in(2, 2), &mut sink); // inside the tail: replaced in place
        assert!(sink.is_empty() && log.has_unsealed());
        log.seal(&mut sink);
        assert!(!log.has_unsealed());
        assert_eq!(
            sink,
            vec![Entries::from(vec![entry(1), entry_in(2, 2), entry(3)])]
        );
        // Below the tail: a run of its own, handed out at once; the sealed run is split.
        log.set(entry(4), &mut sink);
        log.set(entry_in(2, 3), &mut sink);
        assert_eq!(sink.len(), 2);
        assert_eq!(sink[1], Entries::one(entry_in(2, 3)));
        assert_eq!(log.get(2), Some(&entry_in(2, 3)));
        assert_eq!(slots(&log), vec![1, 2, 3, 4]);
        // A gap after the tail seals it first, so the sink keeps the order of the writes.
        log.set(entry(7), &mut sink);
        assert_eq!(sink.len(), 3);
        assert_eq!(sink[2], Entries::one(entry(4)));
        assert!(log.get(5).is_none() && log.get(7).is_some());
    }

    #[test]
    fn consecutive_seals_share_a_page_and_every_holder_keeps_them_as_one_run() {
        let mut log = Log::new(1);
        let mut storage = Log::new(1); // a holder that `put`s what the sink hands it
        let mut sink = Vec::new();
        for slot in 1..=10 {
            log.set(entry(slot), &mut sink);
            log.seal(&mut sink);
        }
        assert_eq!(sink.len(), 10, "one run per seal");
        assert!(sink.iter().all(|run| run.same_page(&sink[0])));
        assert_eq!(log.runs.len(), 1, "joined");
        for run in sink.drain(..) {
            storage.put(run);
        }
        assert_eq!(storage.runs.len(), 1, "joined");
        assert_eq!(slots(&storage), (1..=10).collect::<Vec<_>>());
        // A gap in slots is not joined, though the page continues.
        log.set(entry(12), &mut sink);
        log.seal(&mut sink);
        assert!(sink[0].same_page(&log.runs[0]));
        storage.put(sink.pop().expect("sealed"));
        assert_eq!((log.runs.len(), storage.runs.len()), (2, 2));
        assert_eq!(slots(&storage), [(1..=10).collect(), vec![12]].concat());
        // Runs of another page are not joined either.
        storage.put(Entries::one(entry(13)));
        assert_eq!(storage.runs.len(), 3);
        // Compaction inside a joined run keeps the rest of it.
        storage.compact(4);
        assert_eq!(storage.get(5), Some(&entry(5)));
        assert_eq!(storage.len(), 6 + 1 + 1);
    }

    #[test]
    fn append_shares_the_run_and_leaves_a_hole_before_a_gap() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        log.set(entry(1), &mut sink);
        let appended = run(2, 3, 1);
        log.append(appended.clone(), &mut sink);
        log.append(run(6, 7, 1), &mut sink);
        assert_eq!(sink.len(), 3, "the tail, then each run");
        assert_eq!(sink[1], appended);
        assert_eq!(slots(&log), vec![1, 2, 3, 6, 7]);
        assert!(log.get(4).is_none() && log.get(5).is_none());
        assert_eq!(log.slice(2, 3), appended);
        assert!(
            std::ptr::eq(log.slice(2, 3).as_ptr(), appended.as_ptr()),
            "a slice within one run shares it"
        );
        assert!(std::ptr::eq(log.slice(3, 3).as_ptr(), &appended[1]));
        assert_eq!(log.slice(1, 3), run(1, 3, 1), "across runs: copied");
        log.set(entry(8), &mut sink); // an open tail does not stop sealed runs being shared
        assert!(log.has_unsealed());
        assert!(std::ptr::eq(log.slice(2, 3).as_ptr(), appended.as_ptr()));
        assert!(log.slice(3, 2).is_empty());
        // After a compaction past the end, appending starts the new window.
        log.compact(8);
        log.append(run(9, 9, 1), &mut sink);
        log.append(Entries::new(), &mut sink);
        assert_eq!((log.first(), log.last()), (9, 9));
        assert_eq!(log.get(9).map(|e| e.slot), Some(9));
    }

    #[test]
    #[should_panic(expected = "append below the log's end")]
    fn append_refuses_slots_already_in_the_log() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        log.append(run(1, 2, 1), &mut sink);
        log.append(run(2, 2, 1), &mut sink);
    }

    #[test]
    #[should_panic(expected = "a held range has no hole")]
    fn slice_refuses_a_range_with_a_hole() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        log.set(entry(1), &mut sink);
        log.set(entry(3), &mut sink);
        log.seal(&mut sink);
        let _ = log.slice(1, 3);
    }

    #[test]
    #[should_panic(expected = "a held range has no hole")]
    fn slice_refuses_a_range_ending_in_a_hole() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        log.append(run(1, 2, 1), &mut sink);
        log.append(run(4, 4, 1), &mut sink);
        let _ = log.slice(1, 3);
    }

    #[test]
    fn put_replaces_what_it_overlaps() {
        let mut log = Log::new(1);
        log.put(run(1, 5, 1));
        log.put(run(8, 9, 1));
        log.put(run(4, 8, 2));
        let rounds: Vec<(Slot, u64)> = log
            .range(0, 100)
            .map(|e| (e.slot, e.ballot.round))
            .collect();
        assert_eq!(
            rounds,
            [
                (1, 1),
                (2, 1),
                (3, 1),
                (4, 2),
                (5, 2),
                (6, 2),
                (7, 2),
                (8, 2),
                (9, 1)
            ]
        );
        log.put(run(2, 2, 3)); // inside one run: split in three
        assert_eq!(log.get(2).unwrap().ballot.round, 3);
        assert_eq!(log.get(3).unwrap().ballot.round, 1);
        assert_eq!(log.len(), 9);
        log.compact(3);
        log.put(run(1, 4, 4)); // compacted slots ignored
        assert_eq!(slots(&log), (4..=9).collect::<Vec<_>>());
        assert_eq!(log.get(4).unwrap().ballot.round, 4);
    }

    #[test]
    fn logs_compare_by_content_not_by_runs() {
        let mut sink = Vec::new();
        let mut sealed = Log::new(1);
        let mut open = Log::new(1);
        for slot in 1..=4 {
            sealed.set(entry(slot), &mut sink);
            open.set(entry(slot), &mut sink);
            if slot == 2 {
                sealed.seal(&mut sink);
            }
        }
        assert_eq!(sealed, open);
        let hash = |log: &Log| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            log.hash(&mut hasher);
            hasher.finish()
        };
        assert_eq!(hash(&sealed), hash(&open));
        open.set(entry_in(4, 2), &mut sink);
        assert_ne!(sealed, open);
        assert_ne!(hash(&sealed), hash(&open));
    }

    #[test]
    fn compaction_moves_the_first_slot() {
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        for slot in 1..=3 {
            log.set(entry(slot), &mut sink);
        }
        log.seal(&mut sink);
        for slot in 4..=5 {
            log.set(entry(slot), &mut sink);
        }
        log.compact(2);
        assert_eq!((log.first(), slots(&log)), (3, vec![3, 4, 5]));
        log.compact(4); // through the runs and into the tail
        assert_eq!(log.first(), 5);
        assert_eq!(log.len(), 1, "slot 4 left the tail");
        assert!(log.get(3).is_none() && log.get(4).is_none());
        assert_eq!(log.get(5).unwrap().slot, 5);
        assert_eq!(log.last(), 5);
        log.compact(9);
        assert_eq!(log.first(), 10);
        assert_eq!(log.last(), 9);
        log.set(entry(12), &mut sink);
        assert_eq!(log.last(), 12);
        assert_eq!(slots(&log), vec![12]);
    }

    /// One step of the model test.
    #[derive(Clone, Debug)]
    enum Op {
        /// `set` at `first + offset`, in `round`.
        Set(u64, u64),
        /// `append` of `count` slots after a gap of `gap`, in `round`.
        Append(u64, u64, u64),
        Seal,
        /// `compact` through `first + offset - 1`.
        Compact(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..24u64, 1..4u64).prop_map(|(offset, round)| Op::Set(offset, round)),
            3 => (1..6u64, 0..3u64, 1..4u64).prop_map(|(count, gap, round)| Op::Append(count, gap, round)),
            2 => Just(Op::Seal),
            1 => (0..12u64).prop_map(Op::Compact),
        ]
    }

    /// Applies `runs` in order to `store`, as a storage writing the sink would.
    fn write(store: &mut std::collections::BTreeMap<Slot, Entry>, first: Slot, runs: &[Entries]) {
        for entry in runs.iter().flat_map(|run| run.iter()) {
            if entry.slot >= first {
                store.insert(entry.slot, entry.clone());
            }
        }
    }

    proptest::proptest! {
        /// Against a map of slot to entry: every read agrees after every step, and what the sink
        /// received, written in order, is exactly the log once the tail is sealed.
        #[test]
        fn the_log_behaves_as_a_map_of_slots(ops in proptest::collection::vec(op(), 1..80)) {
            use std::collections::BTreeMap;
            let mut log = Log::new(1);
            let mut model: BTreeMap<Slot, Entry> = BTreeMap::new();
            let mut stored: BTreeMap<Slot, Entry> = BTreeMap::new();
            let mut sink = Vec::new();
            for op in ops {
                match op {
                    Op::Set(offset, round) => {
                        let entry = entry_in(log.first() + offset, round);
                        model.insert(entry.slot, entry.clone());
                        log.set(entry, &mut sink);
                    }
                    Op::Append(count, gap, round) => {
                        let start = log.last() + 1 + gap;
                        let run = run(start, start + count - 1, round);
                        for entry in run.iter() {
                            model.insert(entry.slot, entry.clone());
                        }
                        log.append(run, &mut sink);
                    }
                    Op::Seal => log.seal(&mut sink),
                    Op::Compact(offset) => {
                        let through = log.first() + offset - 1;
                        log.compact(through);
                        model.retain(|slot, _| *slot > through);
                        write(&mut stored, 0, &std::mem::take(&mut sink));
                        stored.retain(|slot, _| *slot > through);
                    }
                }
                let first = log.first();
                let last = model.keys().next_back().copied().unwrap_or(first - 1);
                proptest::prop_assert_eq!(log.last(), last);
                proptest::prop_assert_eq!(log.len(), model.len());
                for slot in first.saturating_sub(2)..=last + 2 {
                    proptest::prop_assert_eq!(log.get(slot), model.get(&slot), "slot {}", slot);
                }
                for (low, high) in [(0, Slot::MAX), (first + 1, last), (first + 3, first + 9), (last, last + 4)] {
                    let expected: Vec<&Entry> = model.range(low..=high.max(low)).map(|(_, e)| e).filter(|e| e.slot <= high).collect();
                    let got: Vec<&Entry> = log.range(low, high).collect();
                    proptest::prop_assert_eq!(got, expected, "range {}..={}", low, high);
                    let mut previous: Option<Slot> = None;
                    for slice in log.slices(low, high) {
                        proptest::prop_assert!(!slice.is_empty());
                        proptest::prop_assert!(slice.windows(2).all(|pair| pair[1].slot == pair[0].slot + 1));
                        proptest::prop_assert!(!previous.is_some_and(|end| slice[0].slot <= end), "slices out of order");
                        previous = Some(slice[slice.len() - 1].slot);
                    }
                }
                // How far each stretch from a slot is held in one ballot, against the map.
                for from in first.saturating_sub(2).max(1)..=last + 2 {
                    for round in 1..4u64 {
                        let ballot = entry_in(1, round).ballot;
                        for bound in [from - 1, from, from + 2, last + 3] {
                            let mut expected = from - 1;
                            while expected < bound
                                && model.get(&(expected + 1)).is_some_and(|e| e.ballot == ballot)
                            {
                                expected += 1;
                            }
                            proptest::prop_assert_eq!(
                                log.held_in_ballot_through(from, bound, ballot), expected,
                                "from {} to {} in round {}", from, bound, round
                            );
                        }
                    }
                }
                // Every held stretch reads back as one run, whole and in parts.
                if let Some((&low, _)) = model.iter().next() {
                    let mut high = low;
                    while model.contains_key(&(high + 1)) {
                        high += 1;
                    }
                    let expected: Vec<Entry> = model.range(low..=high).map(|(_, e)| e.clone()).collect();
                    log.seal(&mut sink);
                    proptest::prop_assert_eq!(log.slice(low, high).to_vec(), expected.clone());
                    proptest::prop_assert_eq!(log.slice(high, high).to_vec(), expected[expected.len() - 1..].to_vec());
                }
            }
            log.seal(&mut sink);
            write(&mut stored, log.first(), &sink);
            stored.retain(|slot, _| *slot >= log.first());
            proptest::prop_assert_eq!(&stored, &model, "the sink, written in order, is the log");
        }

        /// `put` (the memory storage's write) against a map: later runs replace earlier ones
        /// slot by slot, and compacted slots stay out.
        #[test]
        fn put_behaves_as_a_map_of_slots(
            runs in proptest::collection::vec((1..40u64, 1..8u64, 1..9u64, proptest::bool::weighted(0.15)), 1..40),
        ) {
            use std::collections::BTreeMap;
            let mut log = Log::new(1);
            let mut model: BTreeMap<Slot, Entry> = BTreeMap::new();
            for (start, count, round, compact) in runs {
                if compact {
                    let through = start / 2;
                    log.compact(through);
                    model.retain(|slot, _| *slot > through);
                    continue;
                }
                let run = run(start, start + count - 1, round);
                for entry in run.iter().filter(|entry| entry.slot >= log.first()) {
                    model.insert(entry.slot, entry.clone());
                }
                log.put(run);
                let got: Vec<&Entry> = log.range(0, Slot::MAX).collect();
                let expected: Vec<&Entry> = model.values().collect();
                proptest::prop_assert_eq!(got, expected);
                for slot in 0..60 {
                    proptest::prop_assert_eq!(log.get(slot), model.get(&slot));
                }
                proptest::prop_assert_eq!(log.len(), model.len());
            }
        }
    }

    #[test]
    fn lookups_find_old_runs_among_many() {
        // More runs than `locate` tries from the back, so older slots take the binary search.
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        for start in (1..=60).step_by(3) {
            log.append(run(start, start + 1, 1), &mut sink); // a hole after each run
        }
        assert_eq!(log.runs.len(), 20);
        for slot in 1..=61 {
            let held = slot % 3 != 0 && slot < 60;
            assert_eq!(log.get(slot).is_some(), held, "slot {slot}");
        }
        assert_eq!(
            log.range(4, 11).map(|e| e.slot).collect::<Vec<_>>(),
            [4, 5, 7, 8, 10, 11]
        );
        assert_eq!(log.slice(7, 8), run(7, 8, 1));
        log.put(run(9, 9, 2));
        assert_eq!(log.get(9).unwrap().ballot.round, 2);
        assert_eq!(log.len(), 41);
    }

    #[test]
    fn commands_stored_over_the_tail_count_towards_the_page_bound() {
        use crate::page::PAGE_BYTES_MAX;
        use crate::types::ProposalId;
        let mut log = Log::new(1);
        let mut sink = Vec::new();
        for slot in 1..=16 {
            log.set(entry(slot), &mut sink); // a no-op carries no bytes
        }
        for slot in 1..=16 {
            let data = bytes::Bytes::from(vec![slot as u8; PAGE_BYTES_MAX / 8]);
            let value = Value::Command {
                id: ProposalId::default(),
                data,
            };
            // A higher ballot's value for a slot of the tail: replaced in place.
            log.set(
                Entry {
                    slot,
                    ballot: Ballot::new(2, NodeId(2)),
                    value,
                },
                &mut sink,
            );
        }
        log.seal(&mut sink);
        let batch = sink.pop().expect("sealed");
        let bytes: usize = batch.iter().map(|entry| entry.value.size_bytes()).sum();
        assert_eq!(bytes, 2 * PAGE_BYTES_MAX);
        log.set(entry(17), &mut sink);
        log.seal(&mut sink);
        let next = sink.pop().expect("sealed");
        assert!(
            !next.same_page(&batch),
            "a page carrying twice PAGE_BYTES_MAX bytes is retired at the freeze"
        );
    }
}
