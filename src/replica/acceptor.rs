//! The acceptor: promises (phase 1b) and acceptances (phase 2b), each released only after the
//! write it depends on is durable.

use super::{Replica, Role, StepDownReason};
use crate::message::Body;
use crate::types::{Ballot, Entries, NodeId, Slot};

impl Replica {
    /// Phase 1b. *Paxos Made Simple* §2.2, P1a: an acceptor may promise `ballot` iff it has not
    /// promised a higher one; the promise reports every value it accepted from `first_slot` on.
    ///
    /// Leader stickiness: a Prepare is ignored while a live leader is known, unless that
    /// leader handed its leadership over (`transfer` names the ballot promised here).
    pub(super) fn on_prepare(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        transfer: Option<Ballot>,
    ) {
        let transfer = transfer == Some(self.hard.promised);
        if ballot < self.hard.promised {
            let promised = self.hard.promised;
            tracing::debug!(node = %self.config.id, %from, %ballot, %promised, "prepare rejected");
            self.send(from, Body::Reject { ballot, promised });
            return;
        }
        if ballot > self.hard.promised && !transfer && self.in_leader_lease(from) {
            // Leader stickiness: a live leader is known; do not help depose it.
            tracing::debug!(node = %self.config.id, %ballot, "prepare ignored: leader is live");
            return;
        }
        let first_slot = first_slot.max(1);
        if first_slot < self.log.first() {
            // P1b: the promise must report every value accepted from `first_slot` on, and the
            // slots below `log.first()` were compacted away. A promise without them would read
            // as "nothing accepted there" and let the candidate fill chosen slots with no-ops
            // or new commands. Such a candidate is behind a snapshot: promise nothing.
            tracing::debug!(
                node = %self.config.id, %from, %ballot, first_slot,
                compacted_through = self.log.first() - 1,
                "prepare ignored: it needs compacted slots"
            );
            return;
        }
        if ballot > self.hard.promised {
            if self.role != Role::Follower {
                let handed_over = self.leadership.as_ref().is_some_and(|leadership| {
                    leadership
                        .transfer
                        .is_some_and(|transfer| self.members[transfer.to] == from)
                });
                self.step_down(if transfer && handed_over {
                    StepDownReason::Transferred
                } else {
                    StepDownReason::Preempted
                });
            }
            self.promise(ballot);
            if self.leader.is_some() {
                self.set_leader(None, Ballot::ZERO);
            }
            // Give the candidate time to finish phase 1 before campaigning ourselves.
            self.election_elapsed = 0;
        }
        if ballot == self.hard.promised && from == ballot.node {
            // The candidate this replica promised asks for a page of its promise: phase 1 is
            // progressing, give it time to finish before campaigning ourselves.
            self.election_elapsed = 0;
            self.phase_one_heard_tick = Some(self.now);
        }
        // One page of at most `fetch_bytes_max` payload bytes (and at least one entry): a
        // backlog larger than a message is sent in pages the candidate asks for in turn.
        let (accepted, next_slot) = self.page_of_entries(first_slot, self.log.last());
        let chosen = self.hard.chosen;
        self.send_after_persist(
            from,
            Body::Promise {
                ballot,
                first_slot,
                accepted,
                chosen,
                next_slot,
            },
        );
    }

    /// Phase 2b. *Paxos Made Simple* §2.2, P1a: accept iff no higher ballot was promised. Each
    /// slot is accepted on its own: slots missing before these leave holes, not a stall.
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen: Slot,
        entries: Entries,
        membership_slot: Option<Slot>,
    ) {
        if ballot < self.hard.promised {
            let promised = self.hard.promised;
            tracing::debug!(node = %self.config.id, %from, %ballot, %promised, "accept rejected");
            self.send(from, Body::Reject { ballot, promised });
            return;
        }
        self.follow(from, ballot);
        let horizon = self
            .hard
            .chosen
            .saturating_add(self.config.accept_lookahead_slots_max);
        // Slots beyond the horizon are left out (the leader sends them again); the ones
        // within it are accepted. Ignoring the whole Accept instead would deadlock a leader
        // whose every unchosen slot is in Accepts that reach past some acceptor's horizon:
        // nothing would be chosen, so no horizon would move.
        let entries = match entries.last_slot() {
            Some(last) if last > horizon => entries.slots(0, horizon),
            _ => entries,
        };
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let (first_slot, last_slot) = (first.slot, last.slot);
            if first_slot > self.hard.chosen.max(self.log.last()) {
                // The common case: every slot is beyond anything held (the entries are
                // contiguous, `step` checked, and `log.last() >= log.first() - 1`), so none
                // is chosen, compacted or a duplicate. The run is kept as it came, shared
                // by the log and the write.
                if let Some(slot) = membership_slot {
                    self.membership_floor = self.membership_floor.min(slot);
                }
                self.log.append(entries, &mut self.unpersisted);
            } else {
                for entry in entries.iter().cloned() {
                    // A slot already known chosen holds the chosen value, which is the value
                    // any higher ballot proposes (P2c): nothing to store.
                    if entry.slot <= self.hard.chosen || entry.slot < self.log.first() {
                        continue;
                    }
                    let known = self.log.get(entry.slot);
                    if known.is_some_and(|known| known.ballot == entry.ballot) {
                        continue; // a duplicate: the first copy is (being) written
                    }
                    self.store(entry);
                }
            }
            self.send_after_persist(
                from,
                Body::Accepted {
                    ballot,
                    first_slot,
                    last_slot,
                },
            );
        }
        self.learn_chosen(ballot, chosen);
    }

    /// A heartbeat (expects a reply, which echoes its read round) or a Commit (`read` is
    /// `None`: no reply): the leader is alive and its chosen mark moved.
    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen: Slot,
        read: Option<u64>,
    ) {
        if ballot < self.hard.promised {
            if read.is_some() {
                let promised = self.hard.promised;
                self.send(from, Body::Reject { ballot, promised });
            }
            return;
        }
        self.follow(from, ballot);
        self.learn_chosen(ballot, chosen);
        if let Some(read) = read {
            let chosen = self.hard.chosen;
            self.send(
                from,
                Body::HeartbeatReply {
                    ballot,
                    chosen,
                    read,
                },
            );
        }
    }
}
