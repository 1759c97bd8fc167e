//! Elections: timers, pre-votes, phase 1 as a candidate, and becoming leader.

use super::{
    Candidacy, Event, Leadership, Progress, Replica, Role, SelfVote, SlotVotes, StepDownReason,
};
use crate::message::Body;
use crate::quorum::VoteSet;
use crate::types::{Ballot, Entry, NodeId, Slot, Value};
use std::collections::{BTreeMap, VecDeque};

impl Replica {
    /// True while this replica believes a leader is alive: it leads, or heard from the leader
    /// within `election_ticks`. Pre-votes are denied and Prepares ignored meanwhile (leader
    /// stickiness).
    ///
    /// A campaign by the very leader this replica follows is not held against it: that leader
    /// is evidently no longer leading (it restarted, or stepped down).
    ///
    /// With leases, a replica also counts as following a live leader for its first
    /// `election_ticks` ticks after it started, and every window is one tick longer: a
    /// message heard during tick `n` may have come at its very end, so `election_ticks`
    /// whole ticks have passed since only once the count is past `n + election_ticks` (a
    /// lease of `election_ticks / r` leader ticks then holds against followers ticking up
    /// to `r` times faster, as `Config::lease_ticks` says).
    pub(super) fn in_leader_lease(&self, candidate: NodeId) -> bool {
        match self.role {
            Role::Leader => true,
            _ => {
                let sticky_ticks =
                    u64::from(self.config.election_ticks) + u64::from(self.config.lease_ticks > 0);
                self.now < self.votes_blocked_until
                    || (self.leader.is_some_and(|leader| leader != candidate)
                        && self.now - self.leader_heard_tick < sticky_ticks)
            }
        }
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.role == Role::Candidate {
            self.retransmit_prepare();
        }
        if matches!(self.role, Role::Follower | Role::PreCandidate) {
            self.retry_fetch();
        }
        if self.election_elapsed >= self.election_timeout {
            if !self.is_voter() {
                self.reset_election_timer();
                self.hint_voters();
                return;
            }
            self.start_pre_vote();
        }
    }

    /// Asks every member whether it would promise a ballot above every round seen. Changes no
    /// durable state: a replica cut off from the others can do this forever without raising
    /// anyone's promise.
    pub(super) fn start_pre_vote(&mut self) {
        self.reset_election_timer();
        if self.role == Role::Leader || !self.is_voter() {
            return; // only voters campaign
        }
        self.candidacy = None;
        self.role = Role::PreCandidate;
        if self.leader.is_some() {
            self.set_leader(None, Ballot::ZERO);
        }
        let ballot = Ballot::new(
            self.round_seen.max(self.hard.promised.round) + 1,
            self.config.id,
        );
        self.pre_vote_ballot = ballot;
        self.pre_votes = VoteSet::EMPTY;
        self.pre_votes.insert(self.self_index);
        tracing::debug!(node = %self.config.id, %ballot, "pre-vote");
        for index in 0..self.members.len() {
            if index != self.self_index && self.voters.contains(index) {
                let chosen = self.hard.chosen;
                self.send(self.members[index], Body::PreVote { ballot, chosen });
            }
        }
        self.check_pre_vote_quorum();
    }

    /// True while the phase 1 of the ballot this replica promised, owned by another replica
    /// than `candidate`, progressed within `election_ticks` (see `phase_one_heard_tick`).
    fn in_phase_one_of_another(&self, candidate: NodeId) -> bool {
        self.hard.promised.node != candidate
            && self
                .phase_one_heard_tick
                .is_some_and(|heard| self.now - heard < u64::from(self.config.election_ticks))
    }

    pub(super) fn on_pre_vote(&mut self, from: NodeId, ballot: Ballot, chosen: Slot) {
        let granted = !self.in_leader_lease(from)
            && !self.in_phase_one_of_another(from)
            && ballot > self.hard.promised
            && chosen >= self.hard.chosen;
        let (promised, chosen) = (self.hard.promised, self.hard.chosen);
        self.send(
            from,
            Body::PreVoteReply {
                ballot,
                granted,
                promised,
                chosen,
            },
        );
    }

    pub(super) fn on_pre_vote_reply(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        granted: bool,
        promised: Ballot,
        chosen: Slot,
    ) {
        self.round_seen = self.round_seen.max(promised.round);
        if chosen > self.hard.chosen && self.role == Role::PreCandidate {
            // Behind the voter that answered: fetch from it. A candidate that missed a
            // membership change learns it that way (the voters that know it may be the only
            // ones left, and they refuse a candidate behind them).
            self.learn_chosen_from(from, chosen);
        }
        if self.role != Role::PreCandidate || ballot != self.pre_vote_ballot || !granted {
            return;
        }
        let index = self.member_index(from).expect("validated sender");
        if self.voters.contains(index) {
            self.pre_votes.insert(index);
            self.check_pre_vote_quorum();
        }
    }

    fn check_pre_vote_quorum(&mut self) {
        if self.pre_votes.len() >= self.quorum() {
            self.start_election(None);
        }
    }

    /// The leader this replica follows hands it the leadership: campaign at once, without
    /// pre-votes, if `ballot` is still the one followed (a delayed or duplicated `TimeoutNow`
    /// of an earlier leadership is ignored).
    pub(super) fn on_timeout_now(&mut self, from: NodeId, ballot: Ballot) {
        if self.role != Role::Follower || ballot != self.hard.promised || self.leader != Some(from)
        {
            return;
        }
        tracing::info!(node = %self.config.id, %from, "leadership handed over");
        self.start_election(Some(ballot));
    }

    /// Phase 1a (*Paxos Made Simple* §2.2): promise a fresh ballot to itself and send
    /// `Prepare(ballot, first unchosen slot)` to every acceptor. `transfer`: the leader
    /// handed its leadership over (see `Body::Prepare::transfer`).
    pub(super) fn start_election(&mut self, transfer: Option<Ballot>) {
        if !self.is_voter() {
            return; // only voters campaign
        }
        let round = self.round_seen.max(self.hard.promised.round) + 1;
        let ballot = Ballot::new(round, self.config.id);
        self.round_seen = round;
        self.role = Role::Candidate;
        self.reset_election_timer();
        self.promise(ballot);
        let first_slot = self.hard.chosen + 1;
        self.candidacy = Some(Candidacy {
            first_slot,
            promised: VoteSet::EMPTY,
            reported: BTreeMap::new(),
            pages: BTreeMap::new(),
            sent_tick: self.now,
            transfer,
        });
        self.pending_self_votes.push(SelfVote::Promise(ballot));
        tracing::info!(node = %self.config.id, %ballot, first_slot, "election started");
        self.events.push(Event::ElectionStarted { ballot });
        for index in 0..self.members.len() {
            if index != self.self_index && self.voters.contains(index) {
                let body = Body::Prepare {
                    ballot,
                    first_slot,
                    transfer,
                };
                self.send(self.members[index], body);
            }
        }
    }

    fn retransmit_prepare(&mut self) {
        let Some(candidacy) = &mut self.candidacy else {
            return;
        };
        if self.now - candidacy.sent_tick < u64::from(self.config.retransmit_ticks) {
            return;
        }
        candidacy.sent_tick = self.now;
        let ballot = self.hard.promised;
        let mut prepares = Vec::new();
        for index in 0..self.members.len() {
            if index != self.self_index
                && self.voters.contains(index)
                && !candidacy.promised.contains(index)
            {
                // From the page the acceptor owes next, if its promise is paged.
                let first_slot = candidacy
                    .pages
                    .get(&index)
                    .map_or(candidacy.first_slot, |&(next_slot, _)| next_slot);
                let body = Body::Prepare {
                    ballot,
                    first_slot,
                    transfer: candidacy.transfer,
                };
                prepares.push((self.members[index], body));
            }
        }
        for (to, body) in prepares {
            self.send(to, body);
        }
    }

    /// Phase 1b arrives: merge the reported values, keeping the highest ballot per slot.
    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        accepted: Vec<Entry>,
        _chosen: Slot,
        next_slot: Option<Slot>,
    ) {
        let index = self.member_index(from).expect("validated sender");
        if self.voters.contains(index) {
            self.add_promise(index, ballot, first_slot, accepted, next_slot);
        }
    }

    /// Counts this replica's own promise, now that it is durable.
    pub(super) fn count_own_promise(&mut self, ballot: Ballot) {
        let first_slot = match &self.candidacy {
            Some(candidacy) if self.role == Role::Candidate && self.hard.promised == ballot => {
                candidacy.first_slot
            }
            _ => return,
        };
        let own: Vec<Entry> = self
            .log
            .range(first_slot, self.log.last())
            .cloned()
            .collect();
        self.add_promise(self.self_index, ballot, first_slot, own, None);
    }

    fn add_promise(
        &mut self,
        index: usize,
        ballot: Ballot,
        first_slot: Slot,
        accepted: Vec<Entry>,
        next_slot: Option<Slot>,
    ) {
        if self.role != Role::Candidate || ballot != self.hard.promised {
            return;
        }
        let quorum = self.quorum();
        let self_index = self.self_index;
        let Some(candidacy) = &mut self.candidacy else {
            return;
        };
        // The page expected from this acceptor: its first, or the one its last page named.
        let (expected, unreported_before) = candidacy
            .pages
            .get(&index)
            .copied()
            .unwrap_or((candidacy.first_slot, 0));
        if first_slot != expected || candidacy.promised.contains(index) {
            return;
        }
        // The slots this page leaves unreported, up to the next page: over a whole promise an
        // honest acceptor leaves at most `accept_lookahead_slots_max` (validation bounds one
        // message). A promise past it is dropped: this acceptor is not counted.
        let unreported =
            unreported_before + super::promise_page_unreported(first_slot, &accepted, next_slot);
        if unreported > self.config.accept_lookahead_slots_max {
            candidacy.pages.remove(&index);
            self.dropped_messages += 1;
            return;
        }
        match next_slot {
            Some(next_slot) => {
                candidacy.pages.insert(index, (next_slot, unreported));
            }
            None => {
                candidacy.pages.remove(&index);
                candidacy.promised.insert(index);
            }
        }
        for entry in accepted {
            if entry.slot < candidacy.first_slot {
                continue;
            }
            match candidacy.reported.get(&entry.slot) {
                Some(known) if known.ballot >= entry.ballot => {}
                _ => {
                    candidacy.reported.insert(entry.slot, entry);
                }
            }
        }
        if let Some(next_slot) = next_slot {
            // Phase 1 is progressing: a long promise must not run the candidate out of time,
            // nor let it grant a pre-vote that would preempt it.
            self.election_elapsed = 0;
            self.phase_one_heard_tick = Some(self.now);
            // Ask for the next page at once (a lost one is asked again by the retransmission).
            let body = Body::Prepare {
                ballot,
                first_slot: next_slot,
                transfer: candidacy.transfer,
            };
            self.send(self.members[index], body);
            return;
        }
        // The leader counts its own promise only once durable: without it, a crash could let
        // this node reuse the ballot with other values.
        if candidacy.promised.len() >= quorum && candidacy.promised.contains(self_index) {
            self.become_leader();
        }
    }

    /// Phase 1 is won: re-propose, in this ballot, the highest-ballot value reported for every
    /// slot from the first unchosen one, and a no-op for every hole (*Paxos Made Simple* §3).
    fn become_leader(&mut self) {
        let candidacy = self
            .candidacy
            .take()
            .expect("only a candidate becomes leader");
        let ballot = self.hard.promised;
        let first_slot = self.hard.chosen + 1;
        // Phase 1 stops at the first membership change: the slots after it belong to the
        // new membership, whose majorities this phase 1 did not ask (see `membership`).
        let change = candidacy
            .reported
            .values()
            .find(|entry| matches!(entry.value, Value::Membership(_)))
            .map(|entry| entry.slot);
        let last_slot = match change {
            Some(slot) => slot,
            None => candidacy
                .reported
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                .max(self.log.last()),
        };
        let mut uncommitted_bytes = 0;
        let mut votes = VecDeque::with_capacity((last_slot + 1 - first_slot) as usize);
        for slot in first_slot..=last_slot {
            let value = match candidacy.reported.get(&slot) {
                Some(entry) => entry.value.clone(),
                None => Value::Noop,
            };
            uncommitted_bytes += value.size_bytes();
            votes.push_back(SlotVotes::new(value.size_bytes()));
            self.store(Entry {
                slot,
                ballot,
                value,
            });
        }
        if last_slot >= first_slot {
            self.pending_self_votes
                .push(SelfVote::Accepted(ballot, first_slot, last_slot));
        }
        let now = self.now;
        self.leadership = Some(Leadership {
            next_slot: last_slot + 1,
            votes,
            followers: vec![Progress::new(first_slot, now); self.members.len()],
            uncommitted_bytes,
            heartbeat_elapsed: 0,
            check_quorum_elapsed: 0,
            read_floor: last_slot,
            read_round: 0,
            read_round_wanted: false,
            read_acks: vec![0; self.members.len()],
            reads: VecDeque::new(),
            transfer: None,
            lease_until: 0,
            round_ticks: VecDeque::new(),
            lease_ended: false,
            forwarded_seen: vec![super::ForwardWindow::default(); self.members.len()],
            membership_pending: change,
            phase_one_stopped: change.is_some(),
        });
        self.role = Role::Leader;
        self.set_leader(Some(self.config.id), ballot);
        self.forward_queue.clear();
        tracing::info!(node = %self.config.id, %ballot, first_slot, last_slot, "became leader");
        self.events.push(Event::BecameLeader { ballot });
        self.broadcast_heartbeat();
    }

    /// Gives up leading (or campaigning) and follows; keeps the promise.
    pub(super) fn step_down(&mut self, reason: StepDownReason) {
        if self.role == Role::Leader {
            let ballot = self.hard.promised;
            tracing::info!(node = %self.config.id, %ballot, ?reason, "stepped down");
            self.events.push(Event::SteppedDown { ballot, reason });
        }
        self.role = Role::Follower;
        if let Some(leadership) = self.leadership.take() {
            // A follower's request is refused: it asks the new leader once it hears of it.
            for read in leadership.reads {
                self.answer_read(read.context, read.from, None);
            }
        }
        self.candidacy = None;
        if self.leader.is_some() {
            self.set_leader(None, Ballot::ZERO);
        }
        self.reset_election_timer();
    }

    /// Adopts `from` (owner of `ballot`) as the leader: it is live and at least as high as
    /// anything promised here.
    #[inline]
    pub(super) fn follow(&mut self, from: NodeId, ballot: Ballot) {
        debug_assert!(ballot >= self.hard.promised);
        if self.role != Role::Follower {
            let reason = StepDownReason::Preempted;
            self.step_down(reason);
        }
        self.promise(ballot);
        self.set_leader(Some(from), ballot);
        self.leader_heard_tick = self.now;
        self.election_elapsed = 0;
    }

    /// An acceptor refused our ballot because it promised a higher one.
    pub(super) fn on_reject(&mut self, _from: NodeId, ballot: Ballot, promised: Ballot) {
        self.round_seen = self.round_seen.max(promised.round);
        if ballot != self.hard.promised || promised <= ballot {
            return;
        }
        if matches!(self.role, Role::Leader | Role::Candidate) {
            tracing::info!(node = %self.config.id, %ballot, %promised, "preempted");
            self.step_down(StepDownReason::Preempted);
        }
    }
}
