//! In-memory storage for tests, benchmarks and the simulator.

use super::{Recovered, Storage, WriteBatch};
use crate::error::StorageError;
use crate::types::{Entry, HardState, Slot};
use std::collections::BTreeMap;

/// Storage held in memory. Every write is "durable" at once; it survives a simulated restart
/// of the replica as long as the `MemStorage` value itself is kept.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    entries: BTreeMap<Slot, Entry>,
    writes: u64,
    syncs: u64,
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
        self.entries.len()
    }

    /// True if no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Storage for MemStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(Recovered {
            hard_state: self.hard_state,
            entries: self.entries.values().cloned().collect(),
        })
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        for entry in &batch.entries {
            self.entries.insert(entry.slot, entry.clone());
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = hard_state;
        }
        self.writes += 1;
        if batch.must_sync {
            self.syncs += 1;
        }
        Ok(())
    }

    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .entries
            .range(first..=last)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, NodeId, Value};

    #[test]
    fn later_entry_for_a_slot_replaces_the_earlier() {
        let mut storage = MemStorage::new();
        let entry = |slot, round| Entry {
            slot,
            ballot: Ballot::new(round, NodeId(1)),
            value: Value::Noop,
        };
        let batch = WriteBatch {
            hard_state: Some(HardState {
                promised: Ballot::new(2, NodeId(1)),
                chosen: 0,
                incarnation: 1,
            }),
            entries: vec![entry(1, 1), entry(2, 1), entry(1, 2)],
            must_sync: true,
        };
        storage.write(&batch).unwrap();
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.entries, vec![entry(1, 2), entry(2, 1)]);
        assert_eq!(recovered.hard_state.promised, Ballot::new(2, NodeId(1)));
        assert_eq!(storage.sync_count(), 1);
        assert_eq!(storage.entries(2, 5).unwrap(), vec![entry(2, 1)]);
    }
}
