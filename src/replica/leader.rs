//! The leader: phase 2 with batching, pipelining and flow control; counting acceptances;
//! heartbeats, retransmission and check-quorum.

use super::progress::Inflight;
use super::{Event, Replica, Role, SelfVote, SlotVotes, StepDownReason};
use crate::message::{Body, Command, Message};
use crate::types::{Ballot, Entry, NodeId, ProposalId, Slot, Value};
use bytes::Bytes;

impl Replica {
    /// True if a command of `size_bytes` fits within the uncommitted bounds (and no
    /// leadership transfer is under way).
    pub(super) fn has_room_for(&self, size_bytes: usize) -> bool {
        let leadership = self.leadership.as_ref().expect("leader state");
        leadership.transfer.is_none()
            && leadership.membership_pending.is_none()
            && leadership.votes.len() < self.config.uncommitted_entries_max
            && leadership.uncommitted_bytes + size_bytes <= self.config.uncommitted_bytes_max
    }

    /// Gives the command the next slot, in this leader's ballot.
    #[inline]
    pub(super) fn append_command(&mut self, id: ProposalId, data: Bytes) {
        self.append_value(Value::Command { id, data });
    }

    /// Gives `value` the next slot, in this leader's ballot.
    #[inline]
    pub(super) fn append_value(&mut self, value: Value) {
        let ballot = self.hard.promised;
        let leadership = self.leadership.as_mut().expect("leader state");
        let slot = leadership.next_slot;
        let bytes = value.size_bytes();
        leadership.next_slot += 1;
        leadership.uncommitted_bytes += bytes;
        leadership.votes.push_back(SlotVotes::new(bytes));
        debug_assert_eq!(self.hard.chosen + leadership.votes.len() as Slot, slot);
        self.store(Entry {
            slot,
            ballot,
            value,
        });
        // Coalesce this replica's own acceptance with the previous one of the same batch.
        match self.pending_self_votes.last_mut() {
            Some(SelfVote::Accepted(vote_ballot, _, last))
                if *vote_ballot == ballot && *last + 1 == slot =>
            {
                *last = slot;
            }
            _ => self
                .pending_self_votes
                .push(SelfVote::Accepted(ballot, slot, slot)),
        }
    }

    /// True if some follower has entries or a chosen mark waiting to be sent.
    pub(super) fn leader_has_work(&self) -> bool {
        let Some(leadership) = &self.leadership else {
            return false;
        };
        leadership
            .followers
            .iter()
            .enumerate()
            .any(|(index, progress)| {
                index != self.self_index
                    && ((progress.next_slot < leadership.next_slot
                        && progress.has_room(
                            self.config.inflight_msgs_max,
                            self.config.inflight_bytes_max,
                        ))
                        || progress.sent_chosen < self.hard.chosen)
            })
    }

    /// Sends every follower the Accepts its window allows, batched up to `accept_bytes_max`,
    /// or a Commit if only the chosen mark moved.
    pub(super) fn flush_accepts(&mut self) {
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        // The new entries become one run, shared by every Accept and the write.
        self.log.seal(&mut self.unpersisted);
        let ballot = self.hard.promised;
        let chosen = self.hard.chosen;
        let next_slot = leadership.next_slot;
        // Every unchosen slot fits one Accept: no need to count against the byte limit.
        let all_fit = leadership.uncommitted_bytes <= self.config.accept_bytes_max;
        for index in 0..self.members.len() {
            if index == self.self_index {
                continue;
            }
            let to = self.members[index];
            let progress = &mut leadership.followers[index];
            let mut sent_accept = false;
            // Chosen slots need no more votes; a follower lacking them fetches them.
            progress.next_slot = progress.next_slot.max(chosen + 1);
            while progress.next_slot < next_slot
                && progress.has_room(
                    self.config.inflight_msgs_max,
                    self.config.inflight_bytes_max,
                )
            {
                let first_slot = progress.next_slot;
                // The leader holds every slot from its first unchosen one to `next_slot - 1`
                // (phase 1 filled the holes with no-ops), and they carry its ballot.
                let (last_slot, counted_bytes) = if all_fit {
                    (next_slot - 1, None)
                } else {
                    // Count as many as fit the byte limit (at least one).
                    let (mut count, mut bytes) = (0, 0);
                    for entry in self.log.contiguous(first_slot, next_slot - 1) {
                        let size = entry.value.size_bytes();
                        if count > 0 && bytes + size > self.config.accept_bytes_max {
                            break;
                        }
                        bytes += size;
                        count += 1;
                    }
                    (first_slot + count - 1, Some(bytes))
                };
                // Shared with the log (one reference count), not copied.
                let entries = self.log.slice(first_slot, last_slot);
                debug_assert!(
                    entries.iter().all(|entry| entry.ballot == ballot),
                    "an unchosen slot's ballot"
                );
                let bytes = counted_bytes
                    .unwrap_or_else(|| entries.iter().map(|entry| entry.value.size_bytes()).sum());
                debug_assert_eq!(entries.last_slot(), Some(last_slot));
                progress.next_slot = last_slot + 1;
                progress.push(Inflight {
                    first_slot,
                    last_slot,
                    bytes,
                    sent_tick: self.now,
                });
                progress.sent_chosen = chosen;
                self.messages.push(Message {
                    from: self.config.id,
                    to,
                    body: Body::Accept {
                        ballot,
                        chosen,
                        entries,
                    },
                });
                sent_accept = true;
            }
            if !sent_accept && progress.sent_chosen < chosen {
                progress.sent_chosen = chosen;
                self.messages.push(Message {
                    from: self.config.id,
                    to,
                    body: Body::Commit { ballot, chosen },
                });
            }
        }
    }

    /// Sends queued forwarded proposals to the known leader: in one message, or in several of
    /// at most `accept_bytes_max` payload bytes each (at least one command each) when they
    /// would not fit one (a message above the transport's frame would lose them all).
    pub(super) fn flush_forwards(&mut self) {
        if self.forward_queue.is_empty() {
            return;
        }
        match self.leader {
            Some(leader) if leader != self.config.id && self.role != Role::Leader => {
                let mut commands = std::mem::take(&mut self.forward_queue);
                let bytes_max = self.config.accept_bytes_max;
                let total: usize = commands.iter().map(|command| command.data.len()).sum();
                if total <= bytes_max {
                    self.send(leader, Body::Forward { commands });
                    return;
                }
                while !commands.is_empty() {
                    let mut bytes = 0;
                    let count = commands
                        .iter()
                        .take_while(|command| {
                            bytes += command.data.len();
                            bytes <= bytes_max
                        })
                        .count()
                        .max(1);
                    let rest = commands.split_off(count);
                    self.send(leader, Body::Forward { commands });
                    commands = rest;
                }
            }
            _ => self.forward_queue.clear(), // no leader to forward to: the proposals are lost
        }
    }

    /// Phase 2b arrives at the leader.
    pub(super) fn on_accepted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
    ) {
        let index = self.member_index(from).expect("validated sender");
        if let Some(leadership) = &mut self.leadership {
            if ballot == self.hard.promised {
                let progress = &mut leadership.followers[index];
                progress.heard_tick = self.now;
                progress.acknowledge(last_slot);
            }
        }
        self.record_acceptance(index, ballot, first_slot, last_slot);
        self.send_timeout_now_if_caught_up();
    }

    /// During a leadership transfer, sends the target `TimeoutNow` once it has been sent
    /// every slot and has acknowledged every one not chosen yet (its phase 1 then has little
    /// to recover); again every `retransmit_ticks` in case it was lost.
    pub(super) fn send_timeout_now_if_caught_up(&mut self) {
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        let Some(transfer) = &mut leadership.transfer else {
            return;
        };
        let progress = &leadership.followers[transfer.to];
        // The target's phase 1 starts after its chosen mark: acceptors ignore a Prepare that
        // needs slots they compacted, so a target behind the compaction point (waiting for a
        // snapshot) would depose this leader and win nothing.
        let caught_up = progress.next_slot >= leadership.next_slot
            && progress.inflight.is_empty()
            && !progress.behind_compaction(self.log.first());
        let due = transfer.sent_tick.map_or(true, |sent| {
            self.now - sent >= u64::from(self.config.retransmit_ticks)
        });
        if caught_up && due {
            transfer.sent_tick = Some(self.now);
            let (to, ballot) = (self.members[transfer.to], self.hard.promised);
            self.send(to, Body::TimeoutNow { ballot });
        }
    }

    /// Counts acceptor `index`'s acceptance of `first_slot..=last_slot` in `ballot`, and moves
    /// the chosen mark over every slot a majority has accepted in this ballot.
    pub(super) fn record_acceptance(
        &mut self,
        index: usize,
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
    ) {
        if self.role != Role::Leader || ballot != self.hard.promised || !self.voters.contains(index)
        {
            return; // a learner's acceptance counts for nothing
        }
        let quorum = self.quorum();
        let leadership = self.leadership.as_mut().expect("leader state");
        let base = self.hard.chosen + 1;
        let first = first_slot.max(base);
        let last = last_slot.min(leadership.next_slot - 1);
        if first > last {
            return;
        }
        let (low, high) = ((first - base) as usize, (last - base) as usize);
        if low == high {
            // One slot (one command in flight): no range to split over the ring's halves.
            if let Some(votes) = leadership.votes.get_mut(low) {
                votes.acceptors.insert(index);
            }
        } else {
            for votes in leadership.votes.range_mut(low..=high) {
                votes.acceptors.insert(index);
            }
        }
        let mut chosen = self.hard.chosen;
        while let Some(votes) = leadership.votes.front() {
            if !votes.acceptors.has_at_least(quorum) {
                break;
            }
            leadership.uncommitted_bytes -= votes.bytes;
            leadership.votes.pop_front();
            chosen += 1;
        }
        if chosen > self.hard.chosen {
            for progress in &mut leadership.followers {
                progress.forget_chosen(chosen);
            }
            self.set_chosen(chosen);
            self.leader_chosen = self.leader_chosen.max(chosen);
        }
    }

    pub(super) fn on_heartbeat_reply(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen: Slot,
        read: u64,
    ) {
        let index = self.member_index(from).expect("validated sender");
        if ballot != self.hard.promised {
            return;
        }
        if let Some(leadership) = &mut self.leadership {
            let progress = &mut leadership.followers[index];
            progress.heard_tick = self.now;
            progress.follower_chosen = progress.follower_chosen.max(chosen);
            // A round not sent yet (from a faulty peer) confirms nothing beyond the last one.
            let echoed = read.min(leadership.read_round);
            if echoed > leadership.read_acks[index] {
                leadership.read_acks[index] = echoed;
                self.confirm_reads();
            }
        }
    }

    /// Sends a new read round if reads are waiting for one: a heartbeat to every follower.
    pub(super) fn send_read_round(&mut self) {
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        if !leadership.read_round_wanted {
            return;
        }
        leadership.read_round_wanted = false;
        leadership.heartbeat_elapsed = 0;
        self.start_read_round();
        self.broadcast_heartbeat();
    }

    /// Numbers a new read round for the next heartbeats; with leases, remembers when it was
    /// sent, so that its echo by a quorum can renew the lease.
    fn start_read_round(&mut self) {
        let leadership = self.leadership.as_mut().expect("leader state");
        leadership.read_round += 1;
        if self.config.lease_ticks > 0 {
            /// Rounds sent and not yet confirmed that can still renew the lease.
            const ROUND_TICKS_MAX: usize = 64;
            if leadership.round_ticks.len() == ROUND_TICKS_MAX {
                leadership.round_ticks.pop_front();
            }
            leadership
                .round_ticks
                .push_back((leadership.read_round, self.now));
        }
    }

    /// True if this leader holds a lease: a quorum echoed a round sent fewer than
    /// `lease_ticks` ago, and no transfer was started.
    pub(super) fn holds_lease(&self) -> bool {
        self.leadership
            .as_ref()
            .is_some_and(|leadership| !leadership.lease_ended && self.now < leadership.lease_until)
    }

    /// Reports the reads whose round a quorum (this leader included) has echoed.
    fn confirm_reads(&mut self) {
        let (quorum, voters) = (self.quorum(), self.voters);
        let leadership = self.leadership.as_mut().expect("leader state");
        let mut echoed: Vec<u64> = leadership.read_acks.clone();
        echoed[self.self_index] = leadership.read_round;
        // Only voters confirm: a learner's echo says nothing about who can be elected.
        let mut index = 0;
        echoed.retain(|_| {
            index += 1;
            voters.contains(index - 1)
        });
        echoed.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = echoed[quorum - 1];
        // The lease runs from when the confirmed round was sent: every member that echoed it
        // heard this leader after that, and refuses other candidates for `election_ticks`
        // from then.
        while let Some(&(round, sent)) = leadership.round_ticks.front() {
            if round > confirmed {
                break;
            }
            leadership.round_ticks.pop_front();
            if round == confirmed {
                let until = sent + u64::from(self.config.lease_ticks);
                leadership.lease_until = leadership.lease_until.max(until);
            }
        }
        loop {
            let leadership = self.leadership.as_mut().expect("leader state");
            if !leadership
                .reads
                .front()
                .is_some_and(|read| read.round <= confirmed)
            {
                break;
            }
            let read = leadership.reads.pop_front().expect("checked above");
            self.answer_read(read.context, read.from, Some(read.slot));
        }
    }

    /// Commands forwarded by a follower: propose them as if local, dropping what does not fit.
    pub(super) fn on_forward(&mut self, from: NodeId, commands: Vec<Command>) {
        if self.role != Role::Leader {
            self.dropped_messages += 1;
            return; // the follower will learn the new leader and its client will retry
        }
        let origin = self.member_index(from).expect("validated sender");
        for command in commands {
            let key = (command.id.incarnation, command.id.sequence);
            let seen = self
                .leadership
                .as_ref()
                .expect("leader state")
                .forwarded_seen[origin]
                .seen(key);
            if command.id.node != from || seen {
                self.dropped_messages += 1; // a duplicate (or a forward of a forward)
                continue;
            }
            if command.data.len() > self.config.command_bytes_max {
                self.dropped_messages += 1; // the follower's propose refuses these
                continue;
            }
            if self.has_room_for(command.data.len()) {
                self.leadership
                    .as_mut()
                    .expect("leader state")
                    .forwarded_seen[origin]
                    .insert(key);
                self.append_command(command.id, command.data);
            } else {
                self.dropped_messages += 1;
            }
        }
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let (ballot, chosen) = (self.hard.promised, self.hard.chosen);
        let read = self
            .leadership
            .as_ref()
            .map_or(0, |leadership| leadership.read_round);
        for index in 0..self.members.len() {
            if index != self.self_index {
                let body = Body::Heartbeat {
                    ballot,
                    chosen,
                    read,
                };
                self.send(self.members[index], body);
            }
        }
        if let Some(leadership) = &mut self.leadership {
            for progress in &mut leadership.followers {
                progress.sent_chosen = progress.sent_chosen.max(chosen);
            }
        }
    }

    pub(super) fn tick_leader(&mut self) {
        let leadership = self.leadership.as_mut().expect("leader state");
        leadership.heartbeat_elapsed += 1;
        leadership.check_quorum_elapsed += 1;
        let heartbeat_due = leadership.heartbeat_elapsed >= self.config.heartbeat_ticks;
        let check_due = leadership.check_quorum_elapsed >= self.config.election_ticks;
        if heartbeat_due {
            leadership.heartbeat_elapsed = 0;
            if self.config.lease_ticks > 0 {
                // Every heartbeat is a new round: its echoes keep the lease alive.
                self.start_read_round();
            }
            self.broadcast_heartbeat();
        }
        self.retransmit_accepts();
        if let Some(transfer) = &mut self.leadership.as_mut().expect("leader state").transfer {
            transfer.elapsed += 1;
            if transfer.elapsed >= self.config.election_ticks {
                let to = self.members[transfer.to];
                tracing::info!(node = %self.config.id, %to, "leadership transfer abandoned");
                self.leadership.as_mut().expect("leader state").transfer = None;
                self.events.push(Event::TransferAborted { to });
            } else {
                self.send_timeout_now_if_caught_up();
            }
        }
        if check_due {
            self.leadership
                .as_mut()
                .expect("leader state")
                .check_quorum_elapsed = 0;
            if self.config.check_quorum && !self.hears_quorum() {
                tracing::info!(node = %self.config.id, "lost quorum");
                self.step_down(StepDownReason::LostQuorum);
            }
        }
    }

    /// True if a quorum (this replica included) was heard within `election_ticks`.
    fn hears_quorum(&self) -> bool {
        let leadership = self.leadership.as_ref().expect("leader state");
        let window = u64::from(self.config.election_ticks);
        let heard = leadership
            .followers
            .iter()
            .enumerate()
            .filter(|(index, progress)| {
                self.voters.contains(*index)
                    && (*index == self.self_index || self.now - progress.heard_tick < window)
            })
            .count();
        heard >= self.quorum()
    }

    /// Sends again every Accept unacknowledged for `retransmit_ticks`; to a follower not heard
    /// from within `election_ticks`, only the oldest (a probe), so a dead node costs little.
    fn retransmit_accepts(&mut self) {
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        self.log.seal(&mut self.unpersisted);
        let (ballot, chosen) = (self.hard.promised, self.hard.chosen);
        let retransmit = u64::from(self.config.retransmit_ticks);
        let window = u64::from(self.config.election_ticks);
        for index in 0..self.members.len() {
            if index == self.self_index {
                continue;
            }
            let to = self.members[index];
            let progress = &mut leadership.followers[index];
            let live = self.now - progress.heard_tick < window;
            for inflight in progress.inflight.iter_mut() {
                if self.now - inflight.sent_tick < retransmit {
                    if live {
                        continue;
                    }
                    break;
                }
                inflight.sent_tick = self.now;
                // Slots chosen since the first send need no more votes.
                let first_slot = inflight.first_slot.max(chosen + 1);
                let entries = self.log.slice(first_slot, inflight.last_slot);
                self.messages.push(Message {
                    from: self.config.id,
                    to,
                    body: Body::Accept {
                        ballot,
                        chosen,
                        entries,
                    },
                });
                if !live {
                    break;
                }
            }
        }
    }
}
