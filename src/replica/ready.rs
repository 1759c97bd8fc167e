//! The batch of work a replica hands the application: [`Ready`], and the [`Event`]s in it.

use crate::message::Message;
use crate::storage::{Snapshot, WriteBatch};
use crate::types::{Ballot, NodeId, Origin, Slot};

/// Something that happened inside the replica that the application may want to know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// This replica started an election (phase 1) with `ballot`.
    ElectionStarted {
        /// The candidate's ballot.
        ballot: Ballot,
    },
    /// This replica won phase 1 and leads under `ballot`.
    BecameLeader {
        /// The leader's ballot.
        ballot: Ballot,
    },
    /// This replica stopped leading.
    SteppedDown {
        /// The ballot it led under.
        ballot: Ballot,
        /// Why it stepped down.
        reason: StepDownReason,
    },
    /// The leader this replica follows changed (`None`: it knows of no leader).
    LeaderChanged {
        /// The new leader, if known.
        leader: Option<NodeId>,
        /// Its ballot.
        ballot: Ballot,
    },
    /// A follower asked for entries this replica has compacted away: it needs a snapshot.
    /// Answer with [`Replica::send_snapshot`](super::Replica::send_snapshot) and the snapshot
    /// the application saved. Raised at most once per election timeout for the same follower
    /// while it keeps asking.
    SnapshotNeeded {
        /// The lagging follower.
        follower: NodeId,
    },
    /// The membership changed: the configuration entry at `slot` is chosen (or a snapshot
    /// covering it was installed), and `membership` governs every later slot. Connect to the
    /// nodes it adds (the transport must reach them); a node it leaves out (check with
    /// [`Membership::contains`](crate::Membership::contains) and this replica's id) is out of
    /// the cluster and can be shut down once it has applied what it wants to.
    MembershipChanged {
        /// The slot of the configuration entry (or of the installed snapshot).
        slot: Slot,
        /// The new membership.
        membership: crate::types::Membership,
    },
    /// A leadership transfer to `to`
    /// ([`Replica::transfer_leadership`](super::Replica::transfer_leadership)) did not
    /// complete within `election_ticks`: this replica leads on and takes proposals again.
    TransferAborted {
        /// The intended new leader.
        to: NodeId,
    },
    /// A read asked with [`Replica::read_index`](super::Replica::read_index) is confirmed:
    /// serve it from the state machine once it has applied `slot` (at once if it has).
    ReadReady {
        /// The context the read was asked with.
        context: u64,
        /// The slot the state must have applied.
        slot: Slot,
    },
    /// A read asked with [`Replica::read_index`](super::Replica::read_index) will not be
    /// confirmed: the leadership ended. Ask the new leader.
    ReadAborted {
        /// The context the read was asked with.
        context: u64,
    },
}

/// Why a leader stepped down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepDownReason {
    /// An acceptor has promised a higher ballot.
    Preempted,
    /// It did not hear from a quorum within the election timeout (check-quorum).
    LostQuorum,
    /// It handed its leadership over
    /// ([`Replica::transfer_leadership`](super::Replica::transfer_leadership)): the target
    /// started phase 1 with a higher ballot.
    Transferred,
    /// A membership change was chosen. A leader that is still a voter campaigns again at
    /// once, in the new membership (the slots after the change need its quorums); one that
    /// is not hands over to a voter of the new membership. Also a leader whose election
    /// recovered the change (its phase 1 stopped there) once it is chosen, even if the
    /// change named the membership in force: it runs phase 1 for the slots after it.
    MembershipChanged,
}

/// One numbered batch of work, produced by [`Replica::ready`](super::Replica::ready).
///
/// Drain it in this order:
/// 1. [`take_messages`](Ready::take_messages): send at once (safe before the write);
///    then, if [`take_snapshot`](Ready::take_snapshot) returns a snapshot a peer sent,
///    restore the state machine from it, save it and compact the storage through its slot;
/// 2. [`persist_mut`](Ready::persist_mut) (or [`take_persist`](Ready::take_persist) for a
///    write that completes later): write atomically; sync if `must_sync`;
/// 3. [`take_persisted_messages`](Ready::take_persisted_messages): send only once the write
///    is durable (promises and acceptances);
/// 4. [`Replica::committed`](super::Replica::committed): apply the newly chosen entries, in
///    order, exactly once (borrowed from the log: nothing is copied);
/// 5. hand the ready back with [`Replica::advance`](super::Replica::advance), or, if the
///    write completes later, with [`Replica::recycle`](super::Replica::recycle), and call
///    [`Replica::on_persisted`](super::Replica::on_persisted) with [`number`](Ready::number)
///    when the write is durable (writes must complete in order).
///
/// Each `take_*` method has a `drain_*` twin that leaves the emptied buffer in the ready;
/// `advance` then keeps it for the next batch, so a hot loop allocates no output vectors.
#[derive(Default)]
#[must_use = "a Ready carries messages and writes that must be handled"]
pub struct Ready {
    /// Boxed, and the box handed back by `advance` is reused by the next `ready`: a `Ready` is
    /// one pointer to move, and a steady stream of batches allocates neither it nor its
    /// buffers.
    pub(super) batch: Box<Batch>,
}

/// What a [`Ready`] holds.
#[derive(Clone, Debug, Default)]
pub(super) struct Batch {
    pub(super) number: u64,
    /// The replica that made the batch (zero, which no replica has, in a default one).
    pub(super) origin: Origin,
    pub(super) write: WriteBatch,
    pub(super) messages: Vec<Message>,
    pub(super) persisted_messages: Vec<Message>,
    /// The newly chosen slots handed out, `first..=last` (empty if `first > last`).
    pub(super) committed: (Slot, Slot),
    pub(super) snapshot: Option<Snapshot>,
    pub(super) events: Vec<Event>,
}

impl Batch {
    /// Empties the batch for reuse, keeping its buffers' room (up to `capacity_max` elements
    /// each: one huge batch must not pin its memory for the replica's lifetime). What the
    /// application did not drain is dropped here, as it would have been with the ready.
    #[inline]
    pub(super) fn reset(&mut self, capacity_max: usize) {
        // Usually already empty: the application drained the ready.
        #[inline(always)]
        fn clear<T>(buffer: &mut Vec<T>, capacity_max: usize) {
            if !buffer.is_empty() {
                buffer.clear();
            }
            if buffer.capacity() > capacity_max {
                *buffer = Vec::new();
            }
        }
        clear(&mut self.write.runs, capacity_max);
        clear(&mut self.messages, capacity_max);
        clear(&mut self.persisted_messages, capacity_max);
        clear(&mut self.events, capacity_max);
        self.write.hard_state = None;
        self.write.memberships = None;
        self.write.compact_through = None;
        self.snapshot = None;
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let batch = &self.batch;
        f.debug_struct("Ready")
            .field("number", &batch.number)
            .field("write", &batch.write)
            .field("messages", &batch.messages)
            .field("persisted_messages", &batch.persisted_messages)
            .field("committed", &batch.committed)
            .field("snapshot", &batch.snapshot)
            .field("events", &batch.events)
            .finish()
    }
}

impl Ready {
    /// The batch's number: pass it to `on_persisted` once the write is durable.
    pub fn number(&self) -> u64 {
        self.batch.number
    }

    /// What to write to storage, to look at (tests, metrics); lend it to
    /// [`Storage::write`](crate::Storage::write) with [`persist_mut`](Ready::persist_mut).
    pub fn persist(&self) -> &WriteBatch {
        &self.batch.write
    }

    /// The write, to lend to [`Storage::write`](crate::Storage::write) in the drain loop:
    /// `storage.write(ready.persist_mut())?`. The storage may move the entries out (a memory
    /// storage keeps them without copying); the emptied vector stays in the ready and
    /// [`Replica::advance`](super::Replica::advance) reuses it for the next batch.
    #[inline]
    pub fn persist_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch.write
    }

    /// Takes the write out of the ready, for a write that completes later (a storage thread):
    /// write it atomically, then acknowledge it with `on_persisted(number)` once durable, and
    /// only then send the persisted messages. A write done in the drain loop should use
    /// [`persist_mut`](Ready::persist_mut), which lets the buffer be reused.
    pub fn take_persist(&mut self) -> WriteBatch {
        std::mem::take(&mut self.batch.write)
    }

    /// Messages that may be sent before the write (or concurrently with it).
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.batch.messages)
    }

    /// Like [`take_messages`](Ready::take_messages), but leaves the emptied buffer in the
    /// ready, so [`Replica::advance`](super::Replica::advance) can reuse it.
    pub fn drain_messages(&mut self) -> std::vec::Drain<'_, Message> {
        self.batch.messages.drain(..)
    }

    /// Moves the messages that may be sent before the write to the end of `out` (one bulk
    /// copy), leaving the emptied buffer in the ready for reuse: for an application that
    /// queues messages itself.
    #[inline]
    pub fn append_messages_to(&mut self, out: &mut Vec<Message>) {
        out.append(&mut self.batch.messages);
    }

    /// Like [`append_messages_to`](Ready::append_messages_to), for the messages that may be
    /// sent only after the write is durable.
    #[inline]
    pub fn append_persisted_messages_to(&mut self, out: &mut Vec<Message>) {
        out.append(&mut self.batch.persisted_messages);
    }

    /// Messages that may be sent only after the write is durable.
    pub fn take_persisted_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.batch.persisted_messages)
    }

    /// Like [`take_persisted_messages`](Ready::take_persisted_messages), but leaves the emptied
    /// buffer in the ready for reuse.
    pub fn drain_persisted_messages(&mut self) -> std::vec::Drain<'_, Message> {
        self.batch.persisted_messages.drain(..)
    }

    /// The slots this ready hands out as newly chosen (empty if none); read their entries
    /// with [`Replica::committed`](super::Replica::committed).
    pub fn committed_slots(&self) -> std::ops::RangeInclusive<Slot> {
        let (first, last) = self.batch.committed;
        first..=last
    }

    /// A snapshot received from a peer and installed: every slot up to its `slot` is chosen
    /// and reflected in its data, and the replica's chosen and applied marks moved there (the
    /// ready's committed entries start after it). Before writing this ready's batch (which
    /// records the new chosen mark), the application must restore its state machine from the
    /// data, save the snapshot ([`Storage::save_snapshot`](crate::Storage::save_snapshot)) and
    /// compact its storage through the slot ([`Storage::compact`](crate::Storage::compact)):
    /// after a crash it then restarts from the snapshot, with `Config::applied` at its slot.
    pub fn take_snapshot(&mut self) -> Option<Snapshot> {
        self.batch.snapshot.take()
    }

    /// The installed snapshot, if any, without taking it (see
    /// [`take_snapshot`](Ready::take_snapshot)).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.batch.snapshot.as_ref()
    }

    /// What happened since the last ready (elections, leader changes).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.batch.events)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::message::Body;
    use bytes::Bytes;

    /// A heartbeat from node 1 to `to`: any message, for tests that only move messages.
    pub(in crate::replica) fn heartbeat(to: u64) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(to),
            body: Body::Heartbeat {
                ballot: Ballot {
                    round: 1,
                    node: NodeId(1),
                },
                chosen: 0,
                read: 0,
            },
        }
    }

    fn ready_with(batch: Batch) -> Ready {
        Ready {
            batch: Box::new(batch),
        }
    }

    #[test]
    fn the_accessors_hand_out_what_the_batch_holds() {
        let snapshot = Snapshot {
            slot: 7,
            data: Bytes::from_static(b"state"),
            membership: None,
        };
        let mut ready = ready_with(Batch {
            number: 3,
            messages: vec![heartbeat(2)],
            persisted_messages: vec![heartbeat(3), heartbeat(4)],
            committed: (5, 6),
            snapshot: Some(snapshot.clone()),
            ..Batch::default()
        });
        assert_eq!(ready.number(), 3);
        assert_eq!(ready.committed_slots(), 5..=6);
        assert_eq!(ready.snapshot(), Some(&snapshot));
        let shown = format!("{ready:?}");
        for field in [
            "number: 3",
            "persisted_messages",
            "committed: (5, 6)",
            "slot: 7",
        ] {
            assert!(shown.contains(field), "{field} missing from {shown}");
        }
        let mut out = vec![heartbeat(9)];
        ready.append_messages_to(&mut out);
        ready.append_persisted_messages_to(&mut out);
        let to: Vec<u64> = out.iter().map(|message| message.to.0).collect();
        assert_eq!(to, [9, 2, 3, 4]);
        assert!(ready.batch.messages.is_empty() && ready.batch.persisted_messages.is_empty());
        assert_eq!(ready.take_snapshot(), Some(snapshot));
        assert_eq!(ready.snapshot(), None);
    }

    #[test]
    fn reset_empties_the_batch_and_keeps_buffers_up_to_the_bound() {
        let mut batch = Batch {
            messages: Vec::with_capacity(64),
            persisted_messages: Vec::with_capacity(65),
            events: Vec::with_capacity(66),
            snapshot: Some(Snapshot::default()),
            ..Batch::default()
        };
        batch.messages.push(heartbeat(2));
        batch.write.runs = Vec::with_capacity(64);
        batch.write.hard_state = Some(Default::default());
        batch.reset(64);
        assert!(batch.messages.is_empty() && batch.write.hard_state.is_none());
        assert!(batch.snapshot.is_none());
        // Exactly the bound is kept; above it the buffer is let go.
        assert_eq!(batch.messages.capacity(), 64);
        assert_eq!(batch.write.runs.capacity(), 64);
        assert_eq!(batch.persisted_messages.capacity(), 0);
        assert_eq!(batch.events.capacity(), 0);
    }
}
