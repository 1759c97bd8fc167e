//! In-memory storage for tests, benchmarks and the simulator.

use super::{recovered_memberships, Recovered, Snapshot, Storage, WriteBatch};
use crate::error::StorageError;
use crate::log::Log;
use crate::types::{Entry, HardState, MembershipAt, Slot};

/// Storage held in memory. Every write is "durable" at once; it survives a simulated restart
/// of the replica as long as the `MemStorage` value itself is kept.
///
/// Entries are kept in the runs the replica hands out, shared rather than copied (a write costs
/// one reference count per run), so the common append costs O(1) whatever the batch size.
#[derive(Clone, Debug)]
pub struct MemStorage {
    hard_state: HardState,
    /// The stored entries; its first slot is one past the compaction mark.
    log: Log,
    snapshot: Option<Snapshot>,
    memberships: Vec<MembershipAt>,
    writes: u64,
    syncs: u64,
}

impl Default for MemStorage {
    fn default() -> MemStorage {
        MemStorage {
            hard_state: HardState::default(),
            log: Log::new(1),
            snapshot: None,
            memberships: Vec::new(),
            writes: 0,
            syncs: 0,
        }
    }
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// The hard state last written.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The number of successful `write` calls.
    pub fn write_count(&self) -> u64 {
        self.writes
    }

    /// The number of writes that asked for a sync.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The number of slots stored.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// True if no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.log.len() == 0
    }

    /// Forgets every entry up to and including `through` (after the application saved its
    /// state up to there). Later writes for those slots are ignored, and reading them is
    /// [`StorageError::Unavailable`]. Compacting below an earlier mark does nothing.
    pub fn compact(&mut self, through: Slot) {
        self.log.compact(through);
    }

    /// The compaction mark: every slot up to and including it was discarded (0: none).
    pub fn compacted_through(&self) -> Slot {
        self.log.first() - 1
    }

    /// The snapshot last saved, if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
}

impl Storage for MemStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(Recovered {
            hard_state: self.hard_state,
            entries: self.log.range(0, Slot::MAX).cloned().collect(),
            memberships: recovered_memberships(&self.memberships, self.snapshot.as_ref()),
        })
    }

    /// Keeps the batch's runs (no copy), leaving `batch.runs` empty. Never fails.
    fn write(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        if let Some(through) = batch.compact_through {
            self.log.compact(through);
        }
        // Many batches carry no run (a Commit's, say): skip building and dropping a `Drain`.
        if !batch.runs.is_empty() {
            for run in batch.runs.drain(..) {
                self.log.put(run);
            }
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(memberships) = batch.memberships.take() {
            self.memberships = memberships;
        }
        self.writes += 1;
        if batch.must_sync {
            self.syncs += 1;
        }
        Ok(())
    }

    /// # Errors
    /// [`StorageError::Unavailable`] if `first` is at or below the compaction mark.
    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError> {
        let compacted_through = self.compacted_through();
        if first <= last && compacted_through > 0 && first <= compacted_through {
            return Err(StorageError::Unavailable {
                slot: first,
                first: compacted_through + 1,
                last: self.log.last(),
            });
        }
        Ok(self.log.range(first, last).cloned().collect())
    }

    /// Keeps `snapshot` unless the current snapshot is at the same or a later slot. Never
    /// fails.
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let newer = match &self.snapshot {
            Some(current) => snapshot.slot > current.slot,
            None => true,
        };
        if newer {
            self.snapshot = Some(snapshot.clone());
        }
        Ok(())
    }

    /// Never fails.
    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.snapshot.clone())
    }

    /// Delegates to [`MemStorage::compact`]; never fails.
    fn compact(&mut self, through: Slot) -> Result<(), StorageError> {
        MemStorage::compact(self, through);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, NodeId, Value};
    use bytes::Bytes;

    fn entry(slot: Slot, round: u64) -> Entry {
        Entry {
            slot,
            ballot: Ballot::new(round, NodeId(1)),
            value: Value::Noop,
        }
    }

    /// Writes `entries` in one batch (no hard state, no sync).
    fn write_entries(storage: &mut MemStorage, entries: Vec<Entry>) {
        let mut batch = WriteBatch::new(None, entries, false);
        storage.write(&mut batch).unwrap();
    }

    /// The slots `recover` returns.
    fn recovered_slots(storage: &mut MemStorage) -> Vec<Slot> {
        let recovered = storage.recover().unwrap();
        recovered.entries.iter().map(|entry| entry.slot).collect()
    }

    #[test]
    fn later_entry_for_a_slot_replaces_the_earlier() {
        let mut storage = MemStorage::new();
        assert!(storage.is_empty());
        let mut batch = WriteBatch::new(
            Some(HardState {
                promised: Ballot::new(2, NodeId(1)),
                chosen: 0,
                incarnation: 1,
            }),
            vec![entry(1, 1), entry(2, 1), entry(1, 2)],
            true,
        );
        storage.write(&mut batch).unwrap();
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.entries, vec![entry(1, 2), entry(2, 1)]);
        assert_eq!(recovered.hard_state.promised, Ballot::new(2, NodeId(1)));
        assert_eq!(storage.sync_count(), 1);
        assert_eq!(storage.entries(2, 5).unwrap(), vec![entry(2, 1)]);
        assert_eq!(storage.len(), 2);
        assert!(!storage.is_empty());
        assert_eq!(storage.hard_state(), recovered.hard_state);
        assert!(batch.runs.is_empty(), "the runs were moved in");
    }

    #[test]
    fn compaction_discards_the_prefix_and_ignores_late_writes_below_it() {
        let mut storage = MemStorage::new();
        write_entries(&mut storage, (1..=5).map(|slot| entry(slot, 1)).collect());
        storage.compact(3);
        storage.compact(2); // below the mark: nothing more
        assert_eq!(storage.compacted_through(), 3);
        assert_eq!(storage.len(), 2);
        write_entries(&mut storage, vec![entry(2, 2), entry(6, 1)]);
        let slots = recovered_slots(&mut storage);
        assert_eq!(slots, [4, 5, 6], "slot 2 is covered by the snapshot");
        assert!(matches!(
            storage.entries(3, 5),
            Err(StorageError::Unavailable {
                slot: 3,
                first: 4,
                last: 6
            })
        ));
        assert_eq!(storage.entries(4, 4).unwrap(), vec![entry(4, 1)]);
        storage.compact(9); // past everything stored
        assert!(storage.is_empty());
        write_entries(&mut storage, vec![entry(9, 1), entry(10, 1)]);
        assert_eq!(storage.entries(10, 10).unwrap(), vec![entry(10, 1)]);
        assert_eq!(storage.len(), 1);
    }

    #[test]
    fn compaction_at_and_below_the_first_stored_slot() {
        let mut storage = MemStorage::new();
        write_entries(&mut storage, vec![entry(5, 1), entry(6, 1)]);
        storage.compact(3); // below the first stored slot: nothing stored is dropped
        assert_eq!(storage.len(), 2);
        assert_eq!(
            storage.entries(5, 6).unwrap(),
            vec![entry(5, 1), entry(6, 1)]
        );
        storage.compact(5); // exactly the first stored slot
        assert_eq!(storage.len(), 1);
        assert_eq!(storage.entries(6, 6).unwrap(), vec![entry(6, 1)]);
        assert_eq!(storage.write_count(), 1);
        storage.write(&mut WriteBatch::default()).unwrap();
        assert_eq!(storage.write_count(), 2, "every write is counted");
        assert_eq!(storage.sync_count(), 0);
    }

    #[test]
    fn holes_and_out_of_order_slots() {
        let mut storage = MemStorage::new();
        write_entries(&mut storage, vec![entry(5, 1), entry(3, 1), entry(9, 1)]);
        assert_eq!(storage.len(), 3);
        let slots = recovered_slots(&mut storage);
        assert_eq!(slots, vec![3, 5, 9]);
        assert_eq!(storage.entries(0, 4).unwrap(), vec![entry(3, 1)]);
        assert_eq!(storage.entries(6, 8).unwrap(), vec![]);
        assert_eq!(storage.entries(10, 20).unwrap(), vec![]);
        Storage::compact(&mut storage, 5).unwrap();
        assert_eq!(storage.len(), 1);
        assert!(matches!(
            storage.entries(0, 100),
            Err(StorageError::Unavailable { slot: 0, .. })
        ));
        assert_eq!(storage.entries(6, 100).unwrap(), vec![entry(9, 1)]);
    }

    #[test]
    fn snapshots_round_trip_and_an_older_one_is_ignored() {
        let mut storage = MemStorage::new();
        assert_eq!(storage.load_snapshot().unwrap(), None);
        let newer = Snapshot {
            slot: 7,
            data: Bytes::from_static(b"seven"),
            membership: None,
        };
        storage.save_snapshot(&newer).unwrap();
        assert_eq!(storage.load_snapshot().unwrap(), Some(newer.clone()));
        for slot in [3, 7] {
            let older = Snapshot {
                slot,
                data: Bytes::from_static(b"older"),
                membership: None,
            };
            storage.save_snapshot(&older).unwrap();
            assert_eq!(storage.load_snapshot().unwrap(), Some(newer.clone()));
        }
        let newest = Snapshot {
            slot: 8,
            data: Bytes::new(),
            membership: None,
        };
        storage.save_snapshot(&newest).unwrap();
        assert_eq!(storage.snapshot(), Some(&newest));
    }
}
