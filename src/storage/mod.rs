//! Durable state: the [`Storage`] trait and its implementations.
//!
//! A replica's durable state is its [`HardState`] (promised ballot, chosen mark, incarnation)
//! and its log: for each slot, the entry it accepted with the highest ballot. The replica hands
//! the application a [`WriteBatch`] in every `Ready`; the application writes it with
//! [`Storage::write`] and only then sends the messages that depend on it.
//!
//! The application's state machine can save its state as a [`Snapshot`] with
//! [`Storage::save_snapshot`]; the log prefix the snapshot covers may then be discarded with
//! [`Storage::compact`]. Saving a snapshot never compacts by itself: when to discard the
//! prefix (for instance, only once every peer has caught up past it) is the caller's choice.

pub mod file;
mod mem;

pub use file::{FileStorage, FileStorageOptions};
pub use mem::MemStorage;

use crate::error::StorageError;
use crate::types::{Entries, Entry, HardState, MembershipAt, Slot};
use bytes::Bytes;

/// One atomic write: either all of it is durable after a crash, or none of it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriteBatch {
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to store, in runs of consecutive slots, in the order produced; a later entry for
    /// a slot replaces an earlier one (a higher ballot's value, or the chosen value fetched
    /// from the leader). The runs are shared with the replica's log and its Accepts: keeping
    /// one costs a reference count, not a copy. [`WriteBatch::entries`] iterates them.
    pub runs: Vec<Entries>,
    /// The write must be on stable storage (fsync) before it is acknowledged: it carries a
    /// promise or an accepted value that a message will reveal.
    pub must_sync: bool,
    /// `Some`: the cluster's membership changed (a configuration entry was chosen, or a
    /// snapshot from a peer was installed); store this list in place of the one stored before,
    /// atomically with the rest of the batch, and return it from [`Storage::recover`]. Oldest
    /// first; the last one is in force. Rare: most batches carry `None`.
    pub memberships: Option<Vec<MembershipAt>>,
    /// `Some(s)`: discard every entry up to and including `s`, as [`Storage::compact`]`(s)`
    /// does, atomically with the rest of the batch (never the rest without it). The replica
    /// sets it in its first ready after a restart with [`Config::applied`] above the
    /// recovered chosen mark: a snapshot installed from a peer was saved, and a crash came
    /// before the storage was compacted through it, so the storage still holds accepted
    /// values at or below `s` that may not be the chosen ones; the batch makes `s` the
    /// durable chosen mark, and they must not then be read back as chosen. Rare: `None`
    /// otherwise.
    ///
    /// [`Config::applied`]: crate::Config::applied
    pub compact_through: Option<Slot>,
}

impl WriteBatch {
    /// A batch of `entries` (any slots, in the order to write them; consecutive slots are
    /// grouped into runs) and `hard_state`.
    pub fn new(hard_state: Option<HardState>, entries: Vec<Entry>, must_sync: bool) -> WriteBatch {
        let mut runs = Vec::new();
        let mut current: Vec<Entry> = Vec::new();
        for entry in entries {
            if current
                .last()
                .is_some_and(|last| last.slot + 1 != entry.slot)
            {
                runs.push(Entries::from(std::mem::take(&mut current)));
            }
            current.push(entry);
        }
        if !current.is_empty() {
            runs.push(Entries::from(current));
        }
        WriteBatch {
            hard_state,
            runs,
            must_sync,
            memberships: None,
            compact_through: None,
        }
    }

    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.memberships.is_none()
            && self.compact_through.is_none()
            && self.runs.iter().all(|run| run.is_empty())
    }

    /// Every entry of the batch, run after run, in the order to write them.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + Clone + '_ {
        self.runs.iter().flat_map(|run| run.iter())
    }
}

/// What a replica restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last hard state written.
    pub hard_state: HardState,
    /// For each stored slot, the last entry written for it, in slot order.
    pub entries: Vec<Entry>,
    /// The last membership list written ([`WriteBatch::memberships`]), extended with the
    /// membership of the saved snapshot ([`Snapshot::membership`]) if that one is newer.
    /// Empty if none was ever written: the replica then starts from `Config::members`.
    pub memberships: Vec<MembershipAt>,
}

/// The membership list to recover: `written` (the last list a batch stored), with the saved
/// snapshot's membership appended if it is newer than the last one written. Shared by the
/// storages so that they agree.
pub(crate) fn recovered_memberships(
    written: &[MembershipAt],
    snapshot: Option<&Snapshot>,
) -> Vec<MembershipAt> {
    let mut memberships = written.to_vec();
    if let Some(at) = snapshot.and_then(|snapshot| snapshot.membership.as_ref()) {
        if memberships.last().map_or(true, |last| at.slot > last.slot) {
            memberships.push(at.clone());
        }
    }
    memberships
}

/// The state the application's state machine saved after applying every slot up to and
/// including `slot`: restoring `data` and then applying the entries after `slot` rebuilds the
/// state machine.
///
/// `data` is opaque to synod; its format is the application's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// The last slot the snapshot covers: every chosen entry up to and including it is
    /// reflected in `data`.
    pub slot: Slot,
    /// The serialized state machine.
    pub data: Bytes,
    /// The membership in force after `slot`, on a snapshot that a replica installed from a
    /// peer (`Ready::snapshot`): saving the snapshot saves it too, so that a crash before the
    /// ready's batch is written does not lose it. `None` on the application's own snapshots
    /// (the replica keeps its membership in its write batches).
    pub membership: Option<MembershipAt>,
}

/// Durable storage for one replica.
///
/// Every method returns a `Result`: a storage failure is the application's to handle (usually
/// by stopping the node), never a panic.
pub trait Storage {
    /// Reads back the durable state, as the last successful `write`s left it.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] or [`StorageError::Foreign`] if the stored data cannot be
    /// trusted; [`StorageError::Io`] if it cannot be read.
    fn recover(&mut self) -> Result<Recovered, StorageError>;

    /// Writes `batch` atomically; if `batch.must_sync`, it is durable when this returns `Ok`.
    /// Atomically means the hard state, the entries, the membership list and the compaction
    /// mark ([`WriteBatch::compact_through`]) of the batch are all durable, or none of them.
    ///
    /// The batch is lent, not given: the storage may move the runs out of `batch.runs`
    /// (a memory storage keeps them that way, without a copy) or leave them, and the caller
    /// must not rely on what is left. A replica's [`Ready`](crate::Ready) lends its batch with
    /// [`persist_mut`](crate::Ready::persist_mut) and reuses the emptied buffer once handed
    /// back with `advance`, so steady-state writes allocate no entry vectors.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the write or the sync failed; nothing of the batch may be
    /// acknowledged then.
    fn write(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError>;

    /// The stored entries for slots `first..=last`, in slot order, skipping slots with no
    /// entry.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] if part of the range was compacted away;
    /// [`StorageError::Io`] or [`StorageError::Corrupt`] if it cannot be read.
    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError>;

    /// Saves `snapshot`, replacing the current one if it is newer; it is durable when this
    /// returns `Ok`.
    ///
    /// A snapshot whose slot is at or below the current snapshot's slot is **ignored**: it
    /// returns `Ok(())` without writing anything, and the current (newer or equal) snapshot
    /// stays in force. Nothing is compacted: call [`Storage::compact`] for that.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the snapshot cannot be written or synced, or is larger than
    /// the implementation accepts. The previous snapshot then stays in force, unless the
    /// implementation documents otherwise.
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// The snapshot last saved, or `None` if none was ever saved.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] or [`StorageError::Foreign`] if the stored snapshot cannot be
    /// trusted; [`StorageError::Io`] if it cannot be read.
    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError>;

    /// Discards every entry up to and including `through` (they are covered by a snapshot).
    /// Compacting below an earlier mark discards nothing more. Entries in the discarded range
    /// are no longer returned by [`Storage::recover`] or [`Storage::entries`].
    ///
    /// # Errors
    /// [`StorageError::Io`] if the discard cannot be made durable.
    fn compact(&mut self, through: Slot) -> Result<(), StorageError>;
}
