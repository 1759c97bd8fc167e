//! Membership change: configuration entries in the log, one at a time.
//!
//! A change is a log entry ([`Value::Membership`]). Once its slot `s` is chosen, the new
//! membership governs every slot after `s`: its majorities choose them and elect their
//! leaders. Two rules make that safe without joint quorums:
//!
//! - **Nothing after a change until it is chosen.** A leader gives no slot beyond a change's
//!   slot until that slot is chosen (proposals are `Busy` meanwhile), so every slot up to `s`
//!   is chosen by majorities of the old membership and every slot after it by majorities of
//!   the new one: each slot has exactly one membership, known before any value is proposed
//!   for it.
//! - **Phase 1 stops at a change.** A candidate runs phase 1 with the membership that governs
//!   its first unchosen slot. If the values it recovers include a change at slot `s`, what
//!   its promises report after `s` says nothing (a majority of the new membership may have
//!   chosen values there that no acceptor of the old one holds): it re-proposes up to `s`
//!   only, and once `s` is chosen runs phase 1 again, in the new membership — also when the
//!   change names the membership already in force (a retried change can be recovered like
//!   any other): until then it knows nothing of the slots after `s`, so it serves no read
//!   either (its old majority confirming its ballot says nothing about them). If a change at
//!   `s` was chosen, a majority of the old membership accepted it, so every phase-1 majority
//!   of the old membership reports it (P2c): no candidate can miss a chosen change.
//!
//! When a replica's chosen mark passes a change it adopts the membership: a leader that is
//! still a voter campaigns again at once (without pre-votes: the acceptors that follow it do
//! not hold its own campaign against it); a leader that was removed tells the old and new
//! members the change is chosen and hands over to a caught-up voter; candidates give up.
//! Knowledge of a chosen change can be thin after faults (the removed leader may be the only
//! node that has it): a candidate behind the voters that refuse it fetches from them (their
//! `PreVoteReply` carries their chosen mark), or installs their snapshot if they compacted
//! (a pre-candidate installs one like a follower), and a non-voter that hears no leader tells the
//! voters its chosen mark once per election timeout (an empty `FetchReply`). Learners accept
//! like voters but are never counted and never campaign; a replica that is not a voter (a
//! learner, a removed node, or a node joining with `Config::join` that has not learned a
//! membership yet) never campaigns.
//!
//! Members may lag behind a change: a replica accepts the messages leaders and candidates send
//! (Prepare, Accept, heartbeats, fetch replies, snapshots) from nodes it does not know, so that a
//! member that missed a change still follows a leader the change added and catches up.

use super::{Event, Replica, Role, StepDownReason};
use crate::error::MembershipError;
use crate::message::Body;
use crate::quorum::VoteSet;
use crate::types::{Entry, Membership, MembershipAt, NodeId, Slot, Value};

/// The member list of a replica: every member of `membership` (if known) and the replica
/// itself, sorted; its own index; the voters as a set of indices.
pub(super) fn member_list(
    id: NodeId,
    membership: Option<&Membership>,
) -> (Vec<NodeId>, usize, VoteSet) {
    let mut members: Vec<NodeId> = membership.map_or_else(Vec::new, |m| m.all().collect());
    if !members.contains(&id) {
        members.push(id);
    }
    members.sort_unstable();
    let self_index = members.binary_search(&id).expect("pushed above");
    let mut voters = VoteSet::EMPTY;
    if let Some(membership) = membership {
        for (index, member) in members.iter().enumerate() {
            if membership.is_voter(*member) {
                voters.insert(index);
            }
        }
    }
    (members, self_index, voters)
}

impl Replica {
    /// The membership in force (governing the slots after the chosen mark), or `None` on a
    /// node that joins a running cluster and has not learned it yet.
    pub fn membership(&self) -> Option<&Membership> {
        self.memberships.last().map(|at| &at.membership)
    }

    /// True if this replica votes in the membership in force: only voters campaign.
    pub fn is_voter(&self) -> bool {
        self.voters.contains(self.self_index)
    }

    /// Proposes a change of membership: add or remove voters and learners, promote a learner
    /// to voter, or replace members, in any combination, one change at a time. Returns the
    /// slot of the configuration entry; once it is chosen every replica reports
    /// [`Event::MembershipChanged`] and the new membership governs every later slot.
    ///
    /// Start a node being added first, with [`Config::joining`](crate::Config::joining) (or
    /// `Config::join`), and make sure the transports can reach it. To keep the cluster
    /// available, add a node as a learner first, and promote it once it has caught up
    /// ([`Status`](crate::Status) shows its progress at the leader): a voter that is far
    /// behind does not help choose anything until it has caught up. Removing the leader is
    /// allowed: it hands the leadership over once the change is chosen.
    ///
    /// Until the change is chosen, [`propose`](Replica::propose) returns `Busy` (slots after
    /// the change wait for it). If the leadership changes first, the entry may or may not be
    /// chosen: watch for the event, or read [`membership`](Replica::membership), and retry.
    ///
    /// # Errors
    /// - [`MembershipError::NotLeader`]: only the leader changes the membership.
    /// - [`MembershipError::Invalid`]: the membership is not usable
    ///   ([`Membership::validate`]).
    /// - [`MembershipError::InProgress`]: a change is under way.
    /// - [`MembershipError::Busy`]: the leader cannot take a proposal now.
    pub fn change_membership(&mut self, membership: Membership) -> Result<Slot, MembershipError> {
        let Some(leadership) = &self.leadership else {
            return Err(MembershipError::NotLeader { hint: self.leader });
        };
        membership.validate().map_err(MembershipError::Invalid)?;
        if let Some(slot) = leadership.membership_pending {
            return Err(MembershipError::InProgress { slot });
        }
        if !self.incarnation_durable || !self.has_room_for(0) {
            return Err(MembershipError::Busy);
        }
        let slot = self.leadership.as_ref().expect("checked above").next_slot;
        tracing::info!(node = %self.config.id, slot, %membership, "membership change proposed");
        self.append_value(Value::Membership(Box::new(membership)));
        self.leadership
            .as_mut()
            .expect("checked above")
            .membership_pending = Some(slot);
        Ok(slot)
    }

    /// The chosen mark moved from `from` to the current one: adopt the membership changes
    /// among the newly chosen slots, in slot order (a follower that catches up may pass
    /// several at once; each is kept, so that a snapshot of any slot still held carries the
    /// membership of its slot). A scan of the new slots, of one tag each.
    pub(super) fn adopt_chosen_membership(&mut self, from: Slot) {
        // Collected first (adopting changes the replica); usually empty, which allocates nothing.
        let changes = memberships_in(self.log.range(from + 1, self.hard.chosen));
        for at in changes {
            self.adopt_membership(at);
        }
        self.membership_floor = self.unchosen_membership_floor();
    }

    /// The lowest slot above the chosen mark whose entry holds a membership (`Slot::MAX`:
    /// none). A scan of the unchosen entries, done only when one was chosen.
    pub(super) fn unchosen_membership_floor(&self) -> Slot {
        self.log
            .range(self.hard.chosen + 1, self.log.last())
            .find(|entry| matches!(entry.value, Value::Membership(_)))
            .map_or(Slot::MAX, |entry| entry.slot)
    }

    /// Clears a leader's change under way once its slot is chosen (it changed nothing if it
    /// named the membership already in force).
    fn clear_pending_membership(&mut self) {
        let chosen = self.hard.chosen;
        if let Some(leadership) = &mut self.leadership {
            if leadership
                .membership_pending
                .is_some_and(|slot| slot <= chosen)
            {
                leadership.membership_pending = None;
            }
        }
    }

    /// Puts `at` in force (see the module documentation for what each role does).
    pub(super) fn adopt_membership(&mut self, at: MembershipAt) {
        if self
            .memberships
            .last()
            .is_some_and(|last| last.slot >= at.slot)
        {
            return;
        }
        if self.membership() == Some(&at.membership) {
            // Nothing changes, except for a leader whose phase 1 stopped at this change: it
            // recovered nothing after it (a stale change retried, or one naming the
            // membership in force, can be recovered like any other), so it runs phase 1
            // again from the slot after it, as it would after a real change.
            let rerun = self
                .leadership
                .as_ref()
                .is_some_and(|leadership| leadership.phase_one_stopped);
            self.clear_pending_membership();
            if rerun {
                self.step_down(StepDownReason::MembershipChanged);
                self.start_election(None);
            }
            return;
        }
        tracing::info!(node = %self.config.id, slot = at.slot, membership = %at.membership,
            "membership changed");
        let stays_voter = at.membership.is_voter(self.config.id);
        // A leader tells the old members and the new ones that the change is chosen (it may be
        // the only node that knows), and, if it was removed itself, picks a caught-up voter of
        // the new membership to hand over to.
        let mut handover = None;
        if let Some(leadership) = &self.leadership {
            let (ballot, chosen) = (self.hard.promised, self.hard.chosen);
            let mut commits = Vec::new();
            for (index, member) in self.members.iter().enumerate() {
                if index == self.self_index {
                    continue;
                }
                commits.push(*member);
                let progress = &leadership.followers[index];
                let caught_up = progress.next_slot > at.slot
                    && progress.inflight.is_empty()
                    && !progress.behind_compaction(self.log.first());
                if !stays_voter
                    && handover.is_none()
                    && caught_up
                    && at.membership.is_voter(*member)
                {
                    handover = Some(*member);
                }
            }
            // The members it adds hear it too: with no voter left from the old membership
            // (say {1} -> {2}), nobody else would ever tell them.
            for member in at.membership.all() {
                if member != self.config.id && !commits.contains(&member) {
                    commits.push(member);
                }
            }
            for member in commits {
                self.send(member, Body::Commit { ballot, chosen });
            }
            if let Some(target) = handover {
                self.send(target, Body::TimeoutNow { ballot });
            }
        }
        self.remap_members(Some(&at.membership));
        self.memberships.push(at.clone());
        self.prune_memberships();
        self.memberships_dirty = true;
        self.events.push(Event::MembershipChanged {
            slot: at.slot,
            membership: at.membership,
        });
        match self.role {
            Role::Leader => {
                self.step_down(StepDownReason::MembershipChanged);
                if stays_voter {
                    self.start_election(None);
                }
            }
            Role::Candidate | Role::PreCandidate => self.step_down(StepDownReason::Preempted),
            Role::Follower => {}
        }
    }

    /// Rebuilds the member list for `membership`, carrying each member's snapshot state over
    /// by id. The leader and candidate state, indexed by the old list, is dropped by the
    /// caller right after (it steps down).
    fn remap_members(&mut self, membership: Option<&Membership>) {
        let (members, self_index, voters) = member_list(self.config.id, membership);
        let old = std::mem::replace(&mut self.members, members);
        let mut wanted = vec![None; self.members.len()];
        let mut outgoing = vec![None; self.members.len()];
        for (index, member) in old.iter().enumerate() {
            if let Ok(new_index) = self.members.binary_search(member) {
                wanted[new_index] = self.snapshot_wanted_tick[index];
                outgoing[new_index] = self.snapshots_out[index].take();
            }
        }
        self.snapshot_wanted_tick = wanted;
        self.snapshots_out = outgoing;
        self.self_index = self_index;
        self.voters = voters;
        self.quorum = voters.len() / 2 + 1;
        self.pre_votes = VoteSet::EMPTY;
    }

    /// Drops the memberships no slot still held needs: every one before the newest that
    /// governs the log's first slot.
    pub(super) fn prune_memberships(&mut self) {
        let first = self.log.first();
        let keep_from = self
            .memberships
            .iter()
            .rposition(|at| at.slot < first)
            .unwrap_or(0);
        if keep_from > 0 {
            self.memberships.drain(..keep_from);
            self.memberships_dirty = true;
        }
    }

    /// The membership governing the slots after `slot`, if this replica still knows it.
    pub(super) fn membership_at(&self, slot: Slot) -> Option<&MembershipAt> {
        self.memberships.iter().rev().find(|at| at.slot <= slot)
    }
}

/// The memberships of the configuration entries among `entries`, in their order.
pub(super) fn memberships_in<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<MembershipAt> {
    entries
        .filter_map(|entry| match &entry.value {
            Value::Membership(membership) => Some(MembershipAt {
                slot: entry.slot,
                membership: (**membership).clone(),
            }),
            _ => None,
        })
        .collect()
}
