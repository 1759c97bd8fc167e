//! The learner: advancing the chosen mark and fetching chosen values this replica lacks.

use super::{Event, Replica, Role};
use crate::message::Body;
use crate::storage::Snapshot;
use crate::types::{Ballot, Entry, MembershipAt, NodeId, Slot};
use bytes::Bytes;

impl Replica {
    /// The leader of `ballot` says every slot up to `chosen` is chosen. A local entry accepted in
    /// that same ballot holds the value that ballot proposed, hence the chosen one; any other
    /// slot must be fetched.
    pub(super) fn learn_chosen(&mut self, ballot: Ballot, chosen: Slot) {
        self.leader_chosen = self.leader_chosen.max(chosen);
        let mark = self.hard.chosen;
        if chosen > mark {
            // Up to the first hole or entry of another ballot.
            let held = self.log.held_in_ballot_through(mark + 1, chosen, ballot);
            self.set_chosen(held);
        }
        if self.hard.chosen < self.leader_chosen && self.fetch_sent_tick.is_none() {
            self.send_fetch();
        }
    }

    /// Asks the leader for the chosen entries this replica lacks; with no leader heard from
    /// within an election timeout, the peer that last said it knows more (`fetch_from`).
    fn send_fetch(&mut self) {
        let leader = self.leader.filter(|leader| *leader != self.config.id);
        let live = self.now - self.leader_heard_tick < u64::from(self.config.election_ticks);
        let source = match (leader, self.fetch_from) {
            (Some(leader), _) if live => Some(leader),
            (_, Some(peer)) => Some(peer),
            (leader, None) => leader,
        };
        let Some(source) = source else {
            return;
        };
        self.fetch_sent_tick = Some(self.now);
        let (ballot, first_slot) = (self.leader_ballot, self.hard.chosen + 1);
        self.send(source, Body::Fetch { ballot, first_slot });
    }

    /// Peer `from` knows every slot up to `chosen` chosen, beyond this replica's mark: fetch
    /// from it (unless a leader is known, which is asked instead).
    pub(super) fn learn_chosen_from(&mut self, from: NodeId, chosen: Slot) {
        self.leader_chosen = self.leader_chosen.max(chosen);
        self.fetch_from = Some(from);
        if self.fetch_sent_tick.is_none() {
            self.send_fetch();
        }
    }

    /// A replica that does not vote and hears no leader tells the voters how far it knows
    /// the log chosen (an unsolicited `FetchReply` without entries), once per election
    /// timeout: a voter that missed a membership change (it may not even know it votes) then
    /// fetches from it. A removed leader may be the only node that knows its removal was
    /// chosen.
    pub(super) fn hint_voters(&mut self) {
        let Some(membership) = self.membership() else {
            return; // a joining node knows nobody to tell
        };
        let voters: Vec<NodeId> = membership
            .voters
            .iter()
            .copied()
            .filter(|voter| *voter != self.config.id)
            .collect();
        let (ballot, chosen) = (self.hard.promised, self.hard.chosen);
        for voter in voters {
            self.send(
                voter,
                Body::FetchReply {
                    ballot,
                    entries: Vec::new(),
                    chosen,
                },
            );
        }
    }

    /// Retransmits a Fetch that got no answer.
    pub(super) fn retry_fetch(&mut self) {
        if self.hard.chosen >= self.leader_chosen {
            self.fetch_sent_tick = None;
            return;
        }
        let stale = match self.fetch_sent_tick {
            Some(sent) => self.now - sent >= u64::from(self.config.retransmit_ticks),
            None => true,
        };
        if stale {
            self.send_fetch();
        }
    }

    /// The entries of the log in `first..=last`, up to `fetch_bytes_max` payload bytes (at
    /// least one entry), and the slot of the first entry left out, if any: one FetchReply,
    /// or one page of a Promise.
    pub(super) fn page_of_entries(&self, first: Slot, last: Slot) -> (Vec<Entry>, Option<Slot>) {
        let mut bytes = 0;
        let mut entries = Vec::new();
        for entry in self.log.range(first, last) {
            let size = entry.value.size_bytes();
            if !entries.is_empty() && bytes + size > self.config.fetch_bytes_max {
                return (entries, Some(entry.slot));
            }
            bytes += size;
            entries.push(entry.clone());
        }
        (entries, None)
    }

    /// Serves chosen entries from `first_slot` on, up to `fetch_bytes_max`. Any replica serves
    /// what it knows chosen.
    pub(super) fn on_fetch(&mut self, from: NodeId, first_slot: Slot) {
        let first_slot = first_slot.max(1);
        if first_slot > self.hard.chosen {
            return;
        }
        if first_slot < self.log.first() {
            // Report the lagging member once per election timeout, not at every Fetch it
            // retries while the application prepares and sends the snapshot.
            let index = self.member_index(from).expect("validated sender");
            let quiet = self.snapshot_wanted_tick[index].is_some_and(|reported| {
                self.now.saturating_sub(reported) < u64::from(self.config.election_ticks)
            });
            if !quiet {
                self.snapshot_wanted_tick[index] = Some(self.now);
                self.events.push(Event::SnapshotNeeded { follower: from });
            }
            return;
        }
        let (entries, _) = self.page_of_entries(first_slot, self.hard.chosen);
        let (ballot, chosen) = (self.hard.promised, self.hard.chosen);
        self.send(
            from,
            Body::FetchReply {
                ballot,
                entries,
                chosen,
            },
        );
    }

    /// A peer's snapshot, whole: every slot up to `slot` is chosen and reflected in `data`. A
    /// follower behind it installs it (the next ready hands it to the application, which
    /// restores its state machine and saves it before writing that ready's batch) and fetches
    /// what follows.
    pub(super) fn install_snapshot(
        &mut self,
        from: NodeId,
        slot: Slot,
        data: Bytes,
        membership: MembershipAt,
    ) {
        if !matches!(self.role, Role::Follower | Role::PreCandidate) || slot <= self.hard.chosen {
            // A leader's vote window starts at its chosen mark and a candidate's phase 1 at
            // its own: neither moves here. A follower (or a pre-candidate, which has asked
            // nobody to promise anything yet, and may be a voter that missed a change and
            // learns it only from this snapshot) already past `slot` needs nothing.
            return;
        }
        tracing::debug!(
            node = %self.config.id, %from, slot, chosen = self.hard.chosen,
            "installing a snapshot"
        );
        // Slots up to `slot` are chosen and now reflected in the snapshot: what the log holds
        // there (accepted values, perhaps not the chosen ones) is dropped, unwritten entries
        // with it. Entries after `slot` stay: they are accepted values like any other.
        for run in &mut self.unpersisted {
            run.drop_below(slot + 1);
        }
        self.unpersisted.retain(|run| !run.is_empty());
        super::bound_emptied(&mut self.unpersisted);
        // An acceptance waiting for the write must not claim entries that will not be written.
        self.persisted_messages
            .retain_mut(|message| match &mut message.body {
                Body::Accepted {
                    first_slot,
                    last_slot,
                    ..
                } => {
                    *first_slot = (*first_slot).max(slot + 1);
                    first_slot <= last_slot
                }
                _ => true,
            });
        super::bound_emptied(&mut self.persisted_messages);
        self.log.compact(slot);
        // The chosen mark jumps over slots this replica never held: the snapshot's membership
        // is the one in force after it (adopted before the mark moves, so that no change
        // among the entries still held below it is adopted over it).
        let snapshot_membership = MembershipAt {
            slot,
            membership: membership.membership,
        };
        self.adopt_membership(snapshot_membership.clone());
        self.set_chosen(slot);
        self.applied = slot;
        self.leader_chosen = self.leader_chosen.max(slot);
        self.fetch_sent_tick = None;
        self.installed_snapshot = Some(Snapshot {
            slot,
            data,
            membership: Some(snapshot_membership),
        });
        if self.hard.chosen < self.leader_chosen {
            self.send_fetch();
        }
    }

    /// Stores fetched chosen values that extend the chosen prefix.
    pub(super) fn on_fetch_reply(&mut self, from: NodeId, entries: Vec<Entry>, chosen: Slot) {
        if !matches!(self.role, Role::Follower | Role::PreCandidate) {
            // A leader's vote window is aligned with its chosen mark, and a candidate's
            // phase 1 starts at its own: never move them here.
            return;
        }
        if entries.is_empty() && chosen <= self.hard.chosen {
            return; // a hint (see `hint_voters`) that tells nothing new
        }
        self.fetch_sent_tick = None;
        self.leader_chosen = self.leader_chosen.max(chosen);
        if chosen > self.hard.chosen {
            self.fetch_from = Some(from);
        }
        for entry in entries {
            if entry.slot <= self.hard.chosen || entry.slot > chosen {
                continue;
            }
            if entry.slot != self.hard.chosen + 1 {
                break;
            }
            let slot = entry.slot;
            if self.log.get(slot) != Some(&entry) {
                self.store(entry);
            }
            self.set_chosen(slot);
        }
        if self.hard.chosen < self.leader_chosen {
            self.send_fetch();
        }
    }
}
