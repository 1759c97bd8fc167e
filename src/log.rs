//! The replica's in-memory view of its log: for each slot from `first` on, the entry with the
//! highest ballot it has accepted (or the chosen value it fetched), or nothing (a hole).
//!
//! Slots below `first` were compacted away by the application. The log is a window of
//! `Option<Entry>` indexed by `slot - first`; holes cost one empty cell.

use crate::types::{Entry, Slot};
use std::collections::VecDeque;

/// Entries by slot, from `first` on, with holes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Log {
    /// The slot of `cells[0]`. Every slot below it was chosen, applied and compacted.
    first: Slot,
    /// `cells[i]` holds the entry of slot `first + i`, if any. Never ends with `None`.
    cells: VecDeque<Option<Entry>>,
}

impl Log {
    /// An empty log whose first slot is `first` (1 for a fresh replica).
    pub(crate) fn new(first: Slot) -> Log {
        assert!(first >= 1, "slots start at 1");
        Log {
            first,
            cells: VecDeque::new(),
        }
    }

    /// The first slot still held (compaction point + 1).
    pub(crate) fn first(&self) -> Slot {
        self.first
    }

    /// The highest slot holding an entry, or `first - 1` if none.
    pub(crate) fn last(&self) -> Slot {
        self.first + self.cells.len() as Slot - 1
    }

    /// The entry at `slot`, if held.
    #[inline]
    pub(crate) fn get(&self, slot: Slot) -> Option<&Entry> {
        if slot < self.first {
            return None;
        }
        self.cells
            .get((slot - self.first) as usize)
            .and_then(Option::as_ref)
    }

    /// Stores `entry` in its slot, replacing what was there.
    ///
    /// # Panics
    /// If the slot was compacted away (the caller checks `first()` first).
    #[inline(always)]
    pub(crate) fn set(&mut self, entry: Entry) {
        assert!(
            entry.slot >= self.first,
            "slot {} below the log's first slot",
            entry.slot
        );
        let index = (entry.slot - self.first) as usize;
        if index == self.cells.len() {
            self.cells.push_back(Some(entry)); // the common case: the next slot
        } else {
            if index > self.cells.len() {
                self.cells.resize(index + 1, None);
            }
            self.cells[index] = Some(entry);
        }
        debug_assert!(self.cells.back().is_some_and(Option::is_some));
    }

    /// Stores `entries`, contiguous and all beyond `last()` (a hole before them if they do not
    /// start right after it).
    ///
    /// # Panics
    /// If the first entry is not beyond `last()` (the caller checks).
    pub(crate) fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(first.slot > self.last(), "append below the log's end");
        debug_assert!(entries
            .windows(2)
            .all(|pair| pair[1].slot == pair[0].slot + 1));
        let index = (first.slot - self.first) as usize;
        self.cells.resize(index, None);
        self.cells.extend(entries.into_iter().map(Some));
    }

    /// The entries held in `first..=last`, skipping holes.
    pub(crate) fn range(&self, first: Slot, last: Slot) -> impl Iterator<Item = &Entry> + '_ {
        let cells = self.cell_indices(first.max(self.first), last.min(self.last()));
        self.cells.range(cells).filter_map(Option::as_ref)
    }

    /// The entries of `first..=last`, which must all be held (chosen slots, say): an exact-size
    /// iterator, so collecting it reserves once instead of checking capacity per entry.
    ///
    /// # Panics
    /// If a slot of the range is not held (a hole, or outside the log).
    pub(crate) fn contiguous(
        &self,
        first: Slot,
        last: Slot,
    ) -> impl ExactSizeIterator<Item = &Entry> + '_ {
        assert!(
            first > last || (first >= self.first && last <= self.last()),
            "slots {first}..={last} outside the log"
        );
        self.cells
            .range(self.cell_indices(first, last))
            .map(|cell| cell.as_ref().expect("a held range has no hole"))
    }

    /// The indices in `cells` of slots `first..=last` (empty if `first > last`); both must be
    /// within the log unless the range is empty.
    fn cell_indices(&self, first: Slot, last: Slot) -> std::ops::Range<usize> {
        if first > last {
            0..0
        } else {
            (first - self.first) as usize..(last - self.first) as usize + 1
        }
    }

    /// Forgets every slot up to and including `through`.
    pub(crate) fn compact(&mut self, through: Slot) {
        if through < self.first {
            return;
        }
        let count = ((through - self.first + 1) as usize).min(self.cells.len());
        self.cells.drain(..count);
        self.first = through + 1;
        while self.cells.back().is_some_and(Option::is_none) {
            self.cells.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, NodeId, Value};

    fn entry(slot: Slot) -> Entry {
        Entry {
            slot,
            ballot: Ballot::new(1, NodeId(1)),
            value: Value::Noop,
        }
    }

    #[test]
    fn holes_are_empty_and_ranges_skip_them() {
        let mut log = Log::new(1);
        assert_eq!(log.last(), 0);
        log.set(entry(3));
        log.set(entry(1));
        assert_eq!(log.last(), 3);
        assert!(log.get(2).is_none());
        assert_eq!(
            log.range(1, 10).map(|e| e.slot).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(log.range(4, 10).count(), 0);
        assert_eq!(log.range(0, 0).count(), 0);
    }

    #[test]
    fn append_extends_the_log_leaving_a_hole_before_a_gap() {
        let mut log = Log::new(1);
        log.append(vec![entry(1), entry(2)]);
        log.append(vec![entry(5), entry(6)]);
        assert_eq!(log.last(), 6);
        assert_eq!(
            log.range(1, 10).map(|e| e.slot).collect::<Vec<_>>(),
            vec![1, 2, 5, 6]
        );
        assert!(log.get(3).is_none() && log.get(4).is_none());
        // After a compaction past the end, appending starts the new window.
        log.compact(8);
        log.append(vec![entry(9)]);
        log.append(Vec::new());
        assert_eq!((log.first(), log.last()), (9, 9));
        assert_eq!(log.get(9).map(|e| e.slot), Some(9));
    }

    #[test]
    #[should_panic(expected = "append below the log's end")]
    fn append_refuses_slots_already_in_the_log() {
        let mut log = Log::new(1);
        log.append(vec![entry(1), entry(2)]);
        log.append(vec![entry(2)]);
    }

    #[test]
    fn compaction_moves_the_first_slot() {
        let mut log = Log::new(1);
        for slot in 1..=5 {
            log.set(entry(slot));
        }
        log.compact(3);
        assert_eq!(log.first(), 4);
        assert!(log.get(3).is_none());
        assert_eq!(log.get(4).unwrap().slot, 4);
        assert_eq!(log.last(), 5);
        log.compact(9);
        assert_eq!(log.first(), 10);
        assert_eq!(log.last(), 9);
        log.set(entry(12));
        assert_eq!(log.last(), 12);
    }
}
