//! Safety checkers, each named for the property it checks, fed by the simulation as things
//! become durable, are released, or are applied.
//!
//! Chosen values are computed from what acceptors durably wrote, never from what a leader
//! believes: a value is chosen in a slot once a majority of the voters of the membership that
//! governs the slot durably accepted it in one ballot led with that membership. The membership
//! that governs a slot is the one chosen at the last configuration entry before it (the initial
//! one before any), so chosen values and memberships are computed together, in slot order; a
//! ballot counts only for slots its leader's membership governs (a leader that does not know
//! of a change proposes under the old voters, and their acceptances choose nothing after the
//! change).

use crate::message::{Body, Message};
use crate::quorum::{majority, VoteSet};
use crate::storage::{MemStorage, Recovered, Storage, WriteBatch};
use crate::types::{Ballot, Entry, Membership, NodeId, ProposalId, Slot, Value};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker that caught it (e.g. `check_one_value_chosen_per_slot`).
    pub property: &'static str,
    /// What exactly happened.
    pub detail: String,
}

impl Violation {
    /// Creates a violation of `property`.
    pub fn new(property: &'static str, detail: String) -> Violation {
        Violation { property, detail }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.property, self.detail)
    }
}

impl std::error::Error for Violation {}

/// Membership changes the checkers saw chosen, for the statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MembershipCounts {
    /// Configuration entries chosen that changed the membership.
    pub(crate) chosen: u64,
    /// Nodes that became members.
    pub(crate) added: u64,
    /// Members that left.
    pub(crate) removed: u64,
    /// Voters made learners and learners made voters.
    pub(crate) role_changed: u64,
}

/// What one node's current incarnation knows of the membership, per its events.
#[derive(Clone, Debug, Default)]
struct NodeView {
    /// The membership in force at the node (`None`: a joining node that has not learned one).
    membership: Option<Membership>,
    /// The slot of the last change the node adopted in this incarnation (or recovered).
    slot: Slot,
}

/// The voters of `membership`, as a set of node indexes (node `n` is index `n - 1`).
fn voter_set(membership: &Membership) -> VoteSet {
    let mut voters = VoteSet::EMPTY;
    for id in &membership.voters {
        voters.insert((id.0 as usize).wrapping_sub(1));
    }
    voters
}

/// The checkers' memory of the run.
#[derive(Debug)]
pub(crate) struct Checker {
    /// Every node the run may start (initial and spare).
    nodes: usize,
    /// Durable acceptances: for each (slot, ballot), the value and who accepted it.
    votes: BTreeMap<(Slot, Ballot), (Value, VoteSet)>,
    /// Values chosen, per the durable votes.
    chosen: BTreeMap<Slot, Value>,
    /// The memberships chosen, by the slot of their configuration entry (the initial one at
    /// slot 0): each governs the slots after its own, up to the next one.
    memberships: BTreeMap<Slot, Membership>,
    /// The voters each ballot's leader led with (its membership when it was elected).
    ballot_voters: BTreeMap<Ballot, VoteSet>,
    /// The membership some node reported changing to at each slot.
    reported: BTreeMap<Slot, Membership>,
    /// What each node's current incarnation knows of the membership.
    views: Vec<NodeView>,
    /// Slots of the configuration entries already counted into `counts`.
    counted: BTreeSet<Slot>,
    /// Membership changes chosen so far.
    counts: MembershipCounts,
    /// Every command ever proposed.
    proposed: BTreeMap<ProposalId, Bytes>,
    /// Each node's durable promise.
    promised: Vec<Ballot>,
    /// The owner of each ballot that led.
    leaders: BTreeMap<Ballot, NodeId>,
    /// The value applied in each slot (by whichever node applied it first).
    applied: BTreeMap<Slot, Value>,
    /// Nodes that applied each command.
    applied_by: BTreeMap<ProposalId, VoteSet>,
    /// Commands their proposer saw committed.
    acknowledged: BTreeSet<ProposalId>,
    /// A digest of the state-machine snapshot taken (or installed) at each slot.
    snapshots: BTreeMap<Slot, u64>,
}

impl Checker {
    /// A checker for `nodes` nodes (ids `1..=nodes`) of which `initial` is the membership the
    /// cluster starts with.
    pub(crate) fn new(nodes: usize, initial: Membership) -> Checker {
        Checker {
            nodes,
            votes: BTreeMap::new(),
            chosen: BTreeMap::new(),
            memberships: BTreeMap::from([(0, initial)]),
            ballot_voters: BTreeMap::new(),
            reported: BTreeMap::new(),
            views: vec![NodeView::default(); nodes],
            counted: BTreeSet::new(),
            counts: MembershipCounts::default(),
            proposed: BTreeMap::new(),
            promised: vec![Ballot::ZERO; nodes],
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            applied_by: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            snapshots: BTreeMap::new(),
        }
    }

    /// Membership changes chosen so far.
    pub(crate) fn membership_counts(&self) -> MembershipCounts {
        self.counts
    }

    /// The membership that governs `slot` (chosen at the last configuration entry before it).
    fn governing(&self, slot: Slot) -> &Membership {
        self.memberships
            .range(..slot)
            .next_back()
            .map(|(_, membership)| membership)
            .expect("the initial membership governs from slot 1")
    }

    /// The last chosen membership and the slot of its configuration entry (0: the initial
    /// one): the membership in force once every chosen slot is applied.
    pub(crate) fn latest_membership(&self) -> (Slot, &Membership) {
        self.memberships
            .iter()
            .next_back()
            .map(|(slot, membership)| (*slot, membership))
            .expect("the initial membership")
    }

    /// Every chosen membership that governs a slot after `slot`, with the slot of its
    /// configuration entry: the one in force at `slot` and every later one.
    pub(crate) fn memberships_after(&self, slot: Slot) -> Vec<(Slot, &Membership)> {
        let start = self
            .memberships
            .range(..=slot)
            .next_back()
            .map_or(0, |(start, _)| *start);
        self.memberships
            .range(start..)
            .map(|(slot, membership)| (*slot, membership))
            .collect()
    }

    /// A snapshot of slot `slot` was taken or installed: state machines that applied the same
    /// slots must produce the same bytes, and a snapshot covers only slots some node applied.
    pub(crate) fn on_snapshot(&mut self, slot: Slot, data: &[u8]) -> Result<(), Violation> {
        let applied = self.applied.range(..=slot).count() as Slot;
        if applied != slot {
            return Err(Violation::new(
                "check_snapshots_cover_applied_slots",
                format!(
                    "a snapshot of slot {slot}, but only {applied} of those slots were applied"
                ),
            ));
        }
        let digest = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        match self.snapshots.insert(slot, digest) {
            Some(previous) if previous != digest => Err(Violation::new(
                "check_snapshots_agree",
                format!("two different snapshots of slot {slot}"),
            )),
            _ => Ok(()),
        }
    }

    /// Node `index` installed a snapshot of `slot` from a peer: it holds every command applied
    /// up to `slot` without applying them one by one.
    pub(crate) fn on_snapshot_installed(
        &mut self,
        index: usize,
        slot: Slot,
    ) -> Result<(), Violation> {
        for value in self.applied.range(..=slot).map(|(_, value)| value) {
            if let Value::Command { id, .. } = value {
                self.applied_by.entry(*id).or_default().insert(index);
            }
        }
        Ok(())
    }

    pub(crate) fn on_proposed(&mut self, id: ProposalId, data: Bytes) {
        self.proposed.insert(id, data);
    }

    pub(crate) fn on_acknowledged(&mut self, id: ProposalId) {
        self.acknowledged.insert(id);
    }

    /// True if every node in `nodes` applied command `id`.
    pub(crate) fn applied_by_all(&self, id: ProposalId, nodes: VoteSet) -> bool {
        self.applied_by
            .get(&id)
            .is_some_and(|by| by.contains_all(nodes))
    }

    /// The commands acknowledged so far.
    pub(crate) fn acknowledged(&self) -> BTreeSet<ProposalId> {
        self.acknowledged.clone()
    }

    /// Every command of `acknowledged` was applied by every node in `nodes`. Call it once they
    /// have all applied a command proposed after those were acknowledged.
    pub(crate) fn check_acknowledged_survive(
        &self,
        acknowledged: &BTreeSet<ProposalId>,
        nodes: VoteSet,
    ) -> Result<(), Violation> {
        for id in acknowledged {
            if !self.applied_by_all(*id, nodes) {
                return Err(Violation::new(
                    "check_acknowledged_survive",
                    format!("acknowledged command {id:?} is missing from a live node"),
                ));
            }
        }
        Ok(())
    }

    /// A write of node `index` became durable.
    pub(crate) fn on_durable(&mut self, index: usize, batch: &WriteBatch) -> Result<(), Violation> {
        if let Some(hard_state) = batch.hard_state {
            if hard_state.promised < self.promised[index] {
                return Err(Violation::new(
                    "check_promise_never_regresses",
                    format!(
                        "node index {index} wrote promise {} after {}",
                        hard_state.promised, self.promised[index]
                    ),
                ));
            }
            self.promised[index] = hard_state.promised;
        }
        // Every entry written counts as an acceptance, including the chosen entries a lagging
        // node copies from a peer's FetchReply (stored with the ballot they were accepted
        // in). Sound: a copy holds the same (slot, ballot, value) as an acceptance made in
        // that ballot (`check_one_value_per_ballot` checks it like any other), so its vote
        // can only complete a majority for that ballot's own value. In a legal run that is
        // the value chosen in the slot: the checker may see it chosen earlier, or in an
        // older ballot, but never a second value, so no legal run is flagged. In a broken
        // run a second value chosen in the slot is still `check_one_value_chosen_per_slot`,
        // and a node applying another value than its peers `check_consistent_applied_prefixes`,
        // whatever the copies count. What a copy can do is make a value a node wrongly served
        // as chosen look chosen; a node serves only entries at or below its chosen mark, and
        // `on_restart` refuses a recovered mark over a slot where nothing was chosen (the
        // one way such an entry outlives the node's own apply check).
        for entry in batch.entries() {
            self.on_accepted(index, entry)?;
        }
        Ok(())
    }

    fn on_accepted(&mut self, index: usize, entry: &Entry) -> Result<(), Violation> {
        if let Value::Command { id, data } = &entry.value {
            if self.proposed.get(id) != Some(data) {
                return Err(Violation::new(
                    "check_chosen_were_proposed",
                    format!(
                        "slot {} holds command {id:?} that was never proposed",
                        entry.slot
                    ),
                ));
            }
        }
        let key = (entry.slot, entry.ballot);
        let (value, voters) = self
            .votes
            .entry(key)
            .or_insert_with(|| (entry.value.clone(), VoteSet::EMPTY));
        if *value != entry.value {
            return Err(Violation::new(
                "check_one_value_per_ballot",
                format!(
                    "slot {} ballot {}: {:?} and {:?}",
                    entry.slot, entry.ballot, value, entry.value
                ),
            ));
        }
        voters.insert(index);
        if let Some(value) = self.chosen_in(entry.slot, entry.ballot) {
            self.mark_chosen(entry.slot, value)?;
        }
        Ok(())
    }

    /// The value chosen in `slot` by the durable votes of `ballot`, if they are a majority
    /// of the voters of the membership that governs `slot`, and `ballot` was led with those
    /// voters.
    fn chosen_in(&self, slot: Slot, ballot: Ballot) -> Option<Value> {
        let (value, votes) = self.votes.get(&(slot, ballot))?;
        let voters = voter_set(self.governing(slot));
        if self.ballot_voters.get(&ballot) != Some(&voters) {
            return None;
        }
        let counted = (0..self.nodes)
            .filter(|index| votes.contains(*index) && voters.contains(*index))
            .count();
        (counted >= majority(voters.len())).then(|| value.clone())
    }

    /// `value` is chosen in `slot`: it must be the only one; a configuration entry puts its
    /// membership in force after `slot`, which may change what the votes already durable
    /// after it choose.
    fn mark_chosen(&mut self, slot: Slot, value: Value) -> Result<(), Violation> {
        match self.chosen.get(&slot) {
            Some(chosen) if *chosen != value => {
                return Err(Violation::new(
                    "check_one_value_chosen_per_slot",
                    format!("slot {slot}: {chosen:?} was chosen, then {value:?}"),
                ))
            }
            Some(_) => return Ok(()),
            None => {}
        }
        self.chosen.insert(slot, value.clone());
        if let Value::Membership(membership) = value {
            self.membership_chosen(slot, *membership);
            self.rejudge_after(slot)?;
        }
        Ok(())
    }

    /// The configuration entry at `slot` is chosen: its membership governs the slots after
    /// it. Counted once per slot.
    fn membership_chosen(&mut self, slot: Slot, membership: Membership) {
        let previous = self.governing(slot).clone();
        if self.counted.insert(slot) && previous != membership {
            let counts = &mut self.counts;
            counts.chosen += 1;
            counts.added += membership
                .all()
                .filter(|id| !previous.contains(*id))
                .count() as u64;
            counts.removed += previous
                .all()
                .filter(|id| !membership.contains(*id))
                .count() as u64;
            counts.role_changed += membership
                .all()
                .filter(|id| {
                    previous.contains(*id) && previous.is_voter(*id) != membership.is_voter(*id)
                })
                .count() as u64;
        }
        self.memberships.insert(slot, membership);
    }

    /// A membership chosen at `slot` governs the slots after it: what was judged chosen there
    /// under the membership believed in force before is judged again, in slot order, from
    /// the durable votes. (Rare: a leader proposes nothing after a change until it is chosen,
    /// so only votes of leaders that did not know of the change are there.) A slot some node
    /// applied must still be chosen, with the same value.
    fn rejudge_after(&mut self, slot: Slot) -> Result<(), Violation> {
        let before = self.chosen.split_off(&(slot + 1));
        self.memberships.split_off(&(slot + 1));
        let judged: Vec<(Slot, Ballot)> = self
            .votes
            .range((slot + 1, Ballot::ZERO)..)
            .map(|(key, _)| *key)
            .collect();
        for (later, ballot) in judged {
            if let Some(value) = self.chosen_in(later, ballot) {
                match self.chosen.get(&later) {
                    Some(chosen) if *chosen != value => {
                        return Err(Violation::new(
                            "check_one_value_chosen_per_slot",
                            format!("slot {later}: {chosen:?} was chosen, then {value:?}"),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.chosen.insert(later, value.clone());
                        if let Value::Membership(membership) = value {
                            self.membership_chosen(later, *membership);
                        }
                    }
                }
            }
        }
        for (later, value) in before {
            if self.chosen.get(&later) == Some(&value) {
                continue;
            }
            if let Some(applied) = self.applied.get(&later) {
                return Err(Violation::new(
                    "check_applied_were_chosen",
                    format!(
                        "slot {later}: {applied:?} was applied, but under the membership chosen at slot {slot} the votes choose {:?}",
                        self.chosen.get(&later)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Node `index` restarted with `recovered`, and the application's snapshot at `applied`
    /// (0: none): it must remember its last durable promise, and every entry it recovered at
    /// or below its recovered chosen mark must hold the value chosen there (the replica
    /// serves them as chosen, to itself and to peers that fetch them). Entries up to a
    /// snapshot beyond the recovered chosen mark are exempt: the replica discards them (a
    /// crash came between saving the snapshot and the write that made its slot the chosen
    /// mark).
    ///
    /// A slot where the checker knows nothing chosen is a violation too. A node's chosen mark
    /// covers a slot only once a majority's acceptances there were durable, and every durable
    /// write passes through [`on_durable`](Self::on_durable) first, so in a correct run the
    /// checker always knows the value. Accepting the entry would leave the bug to the apply
    /// check, which need not see it: if the node serves the entry by Fetch before it applies
    /// it (a crash after a ready's messages, before its write and apply), the peers' durable
    /// copies count as votes in the entry's ballot (see `on_durable`), can make a majority
    /// there, and the value then looks chosen to every later check.
    pub(crate) fn on_restart(
        &mut self,
        index: usize,
        recovered: &Recovered,
        applied: Slot,
    ) -> Result<(), Violation> {
        if recovered.hard_state.promised < self.promised[index] {
            return Err(Violation::new(
                "check_promise_never_regresses",
                format!(
                    "node index {index} restarted with promise {} after promising {}",
                    recovered.hard_state.promised, self.promised[index]
                ),
            ));
        }
        self.promised[index] = recovered.hard_state.promised;
        let chosen_mark = recovered.hard_state.chosen;
        let discarded = if applied > chosen_mark { applied } else { 0 };
        for entry in &recovered.entries {
            if entry.slot <= discarded || entry.slot > chosen_mark {
                continue;
            }
            match self.chosen.get(&entry.slot) {
                Some(chosen) if *chosen != entry.value => {
                    return Err(Violation::new(
                        "check_recovered_chosen_were_chosen",
                        format!(
                            "node index {index} restarted with {:?} in slot {} (ballot {}) at or below its chosen mark {chosen_mark}, but {chosen:?} was chosen there",
                            entry.value, entry.slot, entry.ballot
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(Violation::new(
                        "check_recovered_chosen_were_chosen",
                        format!(
                            "node index {index} restarted with {:?} in slot {} (ballot {}) at or below its chosen mark {chosen_mark}, but nothing was chosen there",
                            entry.value, entry.slot, entry.ballot
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Node `index` releases `message` after a write: what it reveals must be durable.
    pub(crate) fn on_release(
        &mut self,
        index: usize,
        storage: &MemStorage,
        message: &Message,
    ) -> Result<(), Violation> {
        let durable = storage.hard_state();
        let violation =
            |what: String| Err(Violation::new("check_persistence_before_promise", what));
        match &message.body {
            Body::Promise { ballot, .. } if durable.promised < *ballot => violation(format!(
                "node index {index} promised {ballot} with {} durable",
                durable.promised
            )),
            Body::Accepted {
                ballot,
                first_slot,
                last_slot,
            } => {
                if durable.promised < *ballot {
                    return violation(format!(
                        "node index {index} accepted in {ballot} with promise {} durable",
                        durable.promised
                    ));
                }
                // Slots compacted away are in the node's snapshot, so chosen (the sim compacts
                // only what the node applied, or a snapshot it installed covers), though
                // perhaps not yet durably marked so: an acceptance for one changes nothing
                // and is not checked against the log.
                let mut storage = storage.clone();
                let settled = durable.chosen.max(storage.compacted_through());
                let from = (*first_slot).max(storage.compacted_through() + 1);
                let stored = if from <= *last_slot {
                    storage
                        .entries(from, *last_slot)
                        .expect("entries above the compaction mark")
                } else {
                    Vec::new()
                };
                for slot in *first_slot..=*last_slot {
                    let held = stored.iter().find(|entry| entry.slot == slot);
                    let ok = slot <= settled || held.is_some_and(|entry| entry.ballot >= *ballot);
                    if !ok {
                        return violation(format!(
                            "node index {index} acknowledged slot {slot} in {ballot} before writing it"
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Node `index` (id `id`) became leader of `ballot`, with the membership its events
    /// last reported: that membership's voters are the ones its ballot counts.
    pub(crate) fn on_leader(
        &mut self,
        index: usize,
        id: NodeId,
        ballot: Ballot,
    ) -> Result<(), Violation> {
        if ballot.node != id {
            return Err(Violation::new(
                "check_one_leader_per_ballot",
                format!("{id} leads in {ballot}, owned by {}", ballot.node),
            ));
        }
        if let Some(previous) = self.leaders.insert(ballot, id) {
            return Err(Violation::new(
                "check_one_leader_per_ballot",
                format!("{previous} and {id} both led in {ballot}"),
            ));
        }
        let Some(membership) = &self.views[index].membership else {
            return Err(Violation::new(
                "check_only_voters_campaign",
                format!("{id} leads in {ballot} without knowing any membership"),
            ));
        };
        self.ballot_voters.insert(ballot, voter_set(membership));
        Ok(())
    }

    /// Node `index` started an incarnation knowing `membership` (`None`: a joining node that
    /// learned none yet), adopted at `slot` (0 if not known).
    pub(crate) fn on_start(&mut self, index: usize, membership: Option<&Membership>, slot: Slot) {
        self.views[index] = NodeView {
            membership: membership.cloned(),
            slot,
        };
    }

    /// Node `index` (id `id`) started an election: only a voter of the membership it knows
    /// campaigns (a learner, a node that adopted a membership without itself as voter, or a
    /// joining node that knows none, never does).
    pub(crate) fn on_election_started(
        &mut self,
        index: usize,
        id: NodeId,
        ballot: Ballot,
    ) -> Result<(), Violation> {
        match &self.views[index].membership {
            Some(membership) if membership.is_voter(id) => Ok(()),
            Some(membership) => Err(Violation::new(
                "check_only_voters_campaign",
                format!(
                    "{id} started an election in {ballot}, but it is not a voter of the membership it adopted ({membership})"
                ),
            )),
            None => Err(Violation::new(
                "check_only_voters_campaign",
                format!("{id} started an election in {ballot} without knowing any membership"),
            )),
        }
    }

    /// Node `index` (id `id`) reported that `membership` governs the slots after `slot`
    /// (`Event::MembershipChanged`): every node reports the same membership for a slot, it is
    /// the one the durable votes chose in force after `slot`, and a node's membership never
    /// goes back to an older slot within an incarnation.
    pub(crate) fn check_membership_agreement(
        &mut self,
        index: usize,
        id: NodeId,
        slot: Slot,
        membership: &Membership,
    ) -> Result<(), Violation> {
        let violation = |detail| Err(Violation::new("check_membership_agreement", detail));
        if let Some(reported) = self.reported.get(&slot) {
            if reported != membership {
                return violation(format!(
                    "{id} changed to {membership} at slot {slot}, another node to {reported}"
                ));
            }
        }
        let (chosen_at, chosen) = self
            .memberships
            .range(..=slot)
            .next_back()
            .expect("the initial membership");
        if chosen != membership {
            return violation(format!(
                "{id} changed to {membership} at slot {slot}, but the membership chosen in force after it is {chosen} (chosen at slot {chosen_at})"
            ));
        }
        let view = &mut self.views[index];
        if view.membership.is_some() && slot <= view.slot {
            return Err(Violation::new(
                "check_membership_never_regresses",
                format!(
                    "{id} changed to {membership} at slot {slot}, after adopting the change at slot {}",
                    view.slot
                ),
            ));
        }
        *view = NodeView {
            membership: Some(membership.clone()),
            slot,
        };
        self.reported.insert(slot, membership.clone());
        Ok(())
    }

    /// Node `index` applied `entry`: every node must apply the same value in each slot, and
    /// only a chosen one.
    pub(crate) fn on_applied(&mut self, index: usize, entry: &Entry) -> Result<(), Violation> {
        match self.chosen.get(&entry.slot) {
            Some(chosen) if *chosen == entry.value => {}
            other => {
                return Err(Violation::new(
                    "check_applied_were_chosen",
                    format!(
                        "node index {index} applied {:?} in slot {}; chosen: {other:?}",
                        entry.value, entry.slot
                    ),
                ))
            }
        }
        match self.applied.get(&entry.slot) {
            Some(value) if *value != entry.value => {
                return Err(Violation::new(
                    "check_consistent_applied_prefixes",
                    format!(
                        "slot {}: {:?} applied elsewhere, {:?} at node index {index}",
                        entry.slot, value, entry.value
                    ),
                ))
            }
            Some(_) => {}
            None => {
                self.applied.insert(entry.slot, entry.value.clone());
            }
        }
        if let Value::Command { id, .. } = &entry.value {
            self.applied_by.entry(*id).or_default().insert(index);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Each checker catches a deliberately broken input.
    use super::*;
    use crate::types::HardState;

    fn ballot(round: u64) -> Ballot {
        Ballot::new(round, NodeId(1))
    }

    fn voters(ids: &[u64]) -> Membership {
        Membership::new(ids.iter().copied().map(NodeId), [])
    }

    /// A checker of three voters, every one started knowing them.
    fn three() -> Checker {
        let mut checker = Checker::new(3, voters(&[1, 2, 3]));
        for index in 0..3 {
            checker.on_start(index, Some(&voters(&[1, 2, 3])), 0);
        }
        checker
    }

    fn command(checker: &mut Checker, sequence: u64, data: &'static str) -> Value {
        let id = ProposalId {
            node: NodeId(1),
            incarnation: 1,
            sequence,
        };
        checker.on_proposed(id, Bytes::from_static(data.as_bytes()));
        Value::Command {
            id,
            data: Bytes::from_static(data.as_bytes()),
        }
    }

    fn accept(
        checker: &mut Checker,
        index: usize,
        slot: Slot,
        round: u64,
        value: &Value,
    ) -> Result<(), Violation> {
        // The ballot's leader led with the voters that govern the slot.
        let led_with = voter_set(checker.governing(slot));
        checker
            .ballot_voters
            .entry(ballot(round))
            .or_insert(led_with);
        let batch = WriteBatch::new(
            None,
            vec![Entry {
                slot,
                ballot: ballot(round),
                value: value.clone(),
            }],
            true,
        );
        checker.on_durable(index, &batch)
    }

    #[test]
    fn catches_two_values_chosen_in_one_slot() {
        let mut checker = three();
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 2, &b).unwrap();
        let violation = accept(&mut checker, 2, 1, 2, &b).unwrap_err();
        assert_eq!(violation.property, "check_one_value_chosen_per_slot");
    }

    #[test]
    fn a_vote_counts_once_and_only_from_a_voter() {
        // Voters 1, 2, 3 and learners 4, 5 (nodes of the run, not of the membership).
        let mut checker = Checker::new(5, voters(&[1, 2, 3]));
        for index in 0..5 {
            checker.on_start(index, Some(&voters(&[1, 2, 3])), 0);
        }
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        // Node 1 writes its acceptance three times (a retransmitted accept), and the learners
        // accept too: still one vote of three.
        for _ in 0..3 {
            accept(&mut checker, 0, 1, 1, &a).unwrap();
        }
        accept(&mut checker, 3, 1, 1, &a).unwrap();
        accept(&mut checker, 4, 1, 1, &a).unwrap();
        assert_eq!(checker.chosen.get(&1), None);
        // So a later ballot may still choose another value there, legally.
        accept(&mut checker, 1, 1, 2, &b).unwrap();
        accept(&mut checker, 2, 1, 2, &b).unwrap();
        assert_eq!(checker.chosen.get(&1), Some(&b));
        // And once chosen, a majority for `a` in yet another ballot is caught.
        accept(&mut checker, 1, 1, 3, &a).unwrap();
        assert_eq!(
            accept(&mut checker, 2, 1, 3, &a).unwrap_err().property,
            "check_one_value_chosen_per_slot"
        );
    }

    #[test]
    fn the_same_value_chosen_again_in_a_later_ballot_is_legal() {
        let mut checker = three();
        let a = command(&mut checker, 1, "a");
        for (index, round) in [(0, 1), (1, 1), (1, 2), (2, 2), (0, 3), (2, 3)] {
            accept(&mut checker, index, 1, round, &a).unwrap();
        }
        assert_eq!(checker.chosen.get(&1), Some(&a));
    }

    #[test]
    fn catches_two_values_in_one_ballot() {
        let mut checker = three();
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        assert_eq!(
            accept(&mut checker, 1, 1, 1, &b).unwrap_err().property,
            "check_one_value_per_ballot"
        );
    }

    #[test]
    fn catches_a_value_never_proposed() {
        let mut checker = three();
        let forged = Value::Command {
            id: ProposalId::default(),
            data: Bytes::from_static(b"forged"),
        };
        assert_eq!(
            accept(&mut checker, 0, 1, 1, &forged).unwrap_err().property,
            "check_chosen_were_proposed"
        );
    }

    #[test]
    fn catches_a_promise_going_backwards() {
        let mut checker = three();
        let write = |round| WriteBatch {
            hard_state: Some(HardState {
                promised: ballot(round),
                chosen: 0,
                incarnation: 1,
            }),
            runs: vec![],
            must_sync: true,
            memberships: None,
            compact_through: None,
        };
        checker.on_durable(0, &write(5)).unwrap();
        assert_eq!(
            checker.on_durable(0, &write(4)).unwrap_err().property,
            "check_promise_never_regresses"
        );
        let recovered = Recovered {
            hard_state: HardState {
                promised: ballot(3),
                chosen: 0,
                incarnation: 1,
            },
            entries: vec![],
            memberships: Vec::new(),
        };
        assert_eq!(
            checker.on_restart(0, &recovered, 0).unwrap_err().property,
            "check_promise_never_regresses"
        );
    }

    #[test]
    fn catches_a_restart_that_reads_back_an_unchosen_value_below_its_chosen_mark() {
        let mut checker = three();
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        // Node 3 accepted `a` in slot 1; nodes 1 and 2 then chose `b` there.
        accept(&mut checker, 2, 1, 1, &a).unwrap();
        accept(&mut checker, 0, 1, 2, &b).unwrap();
        accept(&mut checker, 1, 1, 2, &b).unwrap();
        let recovered = |chosen| Recovered {
            hard_state: HardState {
                promised: ballot(2),
                chosen,
                incarnation: 2,
            },
            entries: vec![Entry {
                slot: 1,
                ballot: ballot(1),
                value: a.clone(),
            }],
            memberships: Vec::new(),
        };
        // Above the chosen mark it is just an old acceptance.
        checker.on_restart(2, &recovered(0), 0).unwrap();
        // Below a snapshot beyond the chosen mark the replica discards it.
        checker.on_restart(2, &recovered(0), 1).unwrap();
        // At or below the chosen mark it would be served as chosen.
        for applied in [0, 1] {
            assert_eq!(
                checker
                    .on_restart(2, &recovered(1), applied)
                    .unwrap_err()
                    .property,
                "check_recovered_chosen_were_chosen"
            );
        }
    }

    /// Bug: a recovered entry at or below the chosen mark was accepted when the checker knew
    /// nothing chosen in its slot. A node that recovers a chosen mark over a value only it
    /// accepted would serve it as chosen; peers that fetch it write copies, and the copies
    /// count as votes in its ballot: once they make a majority the value looks chosen, and
    /// the peers' applies pass. Fails with the `None` arm of `on_restart` accepting.
    #[test]
    fn catches_a_restart_whose_chosen_mark_covers_a_slot_where_nothing_was_chosen() {
        let mut checker = three();
        let a = command(&mut checker, 1, "a");
        // Only node 3 accepted `a` in slot 1: nothing is chosen there.
        accept(&mut checker, 2, 1, 1, &a).unwrap();
        let recovered = Recovered {
            hard_state: HardState {
                promised: ballot(1),
                chosen: 1,
                incarnation: 2,
            },
            entries: vec![Entry {
                slot: 1,
                ballot: ballot(1),
                value: a.clone(),
            }],
            memberships: Vec::new(),
        };
        assert_eq!(
            checker.on_restart(2, &recovered, 0).unwrap_err().property,
            "check_recovered_chosen_were_chosen"
        );
        // What the restart check stands in for: node 1 fetches the entry and writes a copy,
        // which counts as its vote in ballot 1; `a` then looks chosen, and applying it
        // passes.
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        let entry = Entry {
            slot: 1,
            ballot: ballot(1),
            value: a,
        };
        checker.on_applied(0, &entry).unwrap();
    }

    #[test]
    fn catches_a_promise_released_before_its_write() {
        let mut checker = three();
        let storage = MemStorage::new();
        let promise = Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Promise {
                ballot: ballot(1),
                first_slot: 1,
                accepted: vec![],
                chosen: 0,
                next_slot: None,
            },
        };
        let violation = checker.on_release(1, &storage, &promise).unwrap_err();
        assert_eq!(violation.property, "check_persistence_before_promise");
        let accepted = Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Accepted {
                ballot: Ballot::ZERO,
                first_slot: 1,
                last_slot: 1,
            },
        };
        let violation = checker.on_release(1, &storage, &accepted).unwrap_err();
        assert_eq!(violation.property, "check_persistence_before_promise");
    }

    #[test]
    fn catches_an_acknowledged_command_missing_from_a_live_node() {
        let mut checker = three();
        let a = command(&mut checker, 1, "a");
        let Value::Command { id, .. } = a.clone() else {
            unreachable!()
        };
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 1, &a).unwrap();
        checker
            .on_applied(
                0,
                &Entry {
                    slot: 1,
                    ballot: ballot(1),
                    value: a,
                },
            )
            .unwrap();
        checker.on_acknowledged(id);
        let acknowledged = checker.acknowledged();
        let mut everyone = VoteSet::EMPTY;
        for index in 0..3 {
            everyone.insert(index);
        }
        let violation = checker
            .check_acknowledged_survive(&acknowledged, everyone)
            .unwrap_err();
        assert_eq!(violation.property, "check_acknowledged_survive");
        let mut only_zero = VoteSet::EMPTY;
        only_zero.insert(0);
        checker
            .check_acknowledged_survive(&acknowledged, only_zero)
            .unwrap();
    }

    #[test]
    fn catches_snapshots_that_disagree_or_cover_unapplied_slots() {
        let mut checker = three();
        let a = command(&mut checker, 1, "a");
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 1, &a).unwrap();
        assert_eq!(
            checker.on_snapshot(1, b"state").unwrap_err().property,
            "check_snapshots_cover_applied_slots"
        );
        checker
            .on_applied(
                0,
                &Entry {
                    slot: 1,
                    ballot: ballot(1),
                    value: a.clone(),
                },
            )
            .unwrap();
        checker.on_snapshot(1, b"state").unwrap();
        checker.on_snapshot(1, b"state").unwrap();
        assert_eq!(
            checker.on_snapshot(1, b"other").unwrap_err().property,
            "check_snapshots_agree"
        );
        // Installing it counts as applying what it covers.
        let Value::Command { id, .. } = a else {
            unreachable!()
        };
        let mut node_two = VoteSet::EMPTY;
        node_two.insert(2);
        assert!(!checker.applied_by_all(id, node_two));
        checker.on_snapshot_installed(2, 1).unwrap();
        assert!(checker.applied_by_all(id, node_two));
    }

    #[test]
    fn catches_two_leaders_in_one_ballot() {
        let mut checker = three();
        checker.on_leader(0, NodeId(1), ballot(1)).unwrap();
        assert_eq!(
            checker
                .on_leader(0, NodeId(1), ballot(1))
                .unwrap_err()
                .property,
            "check_one_leader_per_ballot"
        );
        assert_eq!(
            checker
                .on_leader(1, NodeId(2), ballot(2))
                .unwrap_err()
                .property,
            "check_one_leader_per_ballot"
        );
    }

    #[test]
    fn catches_applying_what_was_not_chosen_or_diverging_logs() {
        let mut checker = three();
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        let entry = |value: &Value| Entry {
            slot: 1,
            ballot: ballot(1),
            value: value.clone(),
        };
        assert_eq!(
            checker.on_applied(0, &entry(&a)).unwrap_err().property,
            "check_applied_were_chosen"
        );
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 1, &a).unwrap();
        checker.on_applied(0, &entry(&a)).unwrap();
        // Force a diverging application past the chosen check to reach the prefix checker.
        checker.chosen.insert(1, b.clone());
        assert_eq!(
            checker.on_applied(1, &entry(&b)).unwrap_err().property,
            "check_consistent_applied_prefixes"
        );
    }

    fn change(checker: &mut Checker, slot: Slot, round: u64, to: &Membership) {
        let value = Value::Membership(Box::new(to.clone()));
        for index in 0..3 {
            accept(checker, index, slot, round, &value).unwrap();
        }
    }

    #[test]
    fn a_chosen_change_moves_the_majorities_of_later_slots() {
        let mut checker = Checker::new(5, voters(&[1, 2, 3]));
        checker.on_start(0, Some(&voters(&[1, 2, 3])), 0);
        let new = voters(&[3, 4, 5]);
        change(&mut checker, 1, 1, &new);
        assert_eq!(checker.latest_membership(), (1, &new));
        // Ballot 2 was led with the new voters: 1 and 2 are no longer counted.
        checker.ballot_voters.insert(ballot(2), voter_set(&new));
        let a = command(&mut checker, 1, "a");
        let batch = |index: usize| {
            let entry = Entry {
                slot: 2,
                ballot: ballot(2),
                value: a.clone(),
            };
            (index, WriteBatch::new(None, vec![entry], true))
        };
        for (index, write) in [batch(0), batch(1)] {
            checker.on_durable(index, &write).unwrap();
        }
        assert_eq!(
            checker.chosen.get(&2),
            None,
            "old voters chose a slot after the change"
        );
        let (index, write) = batch(3);
        checker.on_durable(index, &write).unwrap();
        let (index, write) = batch(4);
        checker.on_durable(index, &write).unwrap();
        assert_eq!(checker.chosen.get(&2), Some(&a));
        assert_eq!(
            checker.membership_counts(),
            MembershipCounts {
                chosen: 1,
                added: 2,
                removed: 2,
                role_changed: 0
            }
        );
    }

    #[test]
    fn a_ballot_led_with_other_voters_chooses_nothing() {
        let mut checker = three();
        let a = command(&mut checker, 1, "a");
        // A leader that believes the voters are 1, 2 and 4 (it guessed).
        checker
            .ballot_voters
            .insert(ballot(1), voter_set(&voters(&[1, 2, 4])));
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 1, &a).unwrap();
        assert_eq!(checker.chosen.get(&1), None);
        let entry = Entry {
            slot: 1,
            ballot: ballot(1),
            value: a,
        };
        assert_eq!(
            checker.on_applied(0, &entry).unwrap_err().property,
            "check_applied_were_chosen"
        );
    }

    #[test]
    fn a_slot_applied_under_the_old_voters_is_caught_once_an_earlier_change_is_chosen() {
        let mut checker = Checker::new(4, voters(&[1, 2, 3]));
        let a = command(&mut checker, 1, "a");
        // Slot 2 is chosen by the old voters, and applied, before the change at slot 1 is.
        accept(&mut checker, 0, 2, 1, &a).unwrap();
        accept(&mut checker, 1, 2, 1, &a).unwrap();
        let entry = Entry {
            slot: 2,
            ballot: ballot(1),
            value: a,
        };
        checker.applied.insert(2, entry.value.clone());
        let violation = (0..3)
            .map(|index| {
                let value = Value::Membership(Box::new(voters(&[1, 4])));
                accept(&mut checker, index, 1, 2, &value)
            })
            .find_map(Result::err)
            .expect("the slot applied is not chosen under the new voters");
        assert_eq!(violation.property, "check_applied_were_chosen");
    }

    #[test]
    fn catches_memberships_that_disagree_or_go_back() {
        let mut checker = Checker::new(4, voters(&[1, 2, 3]));
        for index in 0..4 {
            let known = (index < 3).then(|| voters(&[1, 2, 3]));
            checker.on_start(index, known.as_ref(), 0);
        }
        let new = Membership::new([NodeId(1), NodeId(2), NodeId(3)], [NodeId(4)]);
        let property = |result: Result<(), Violation>| result.unwrap_err().property;
        // Not chosen yet: reporting it is wrong.
        assert_eq!(
            property(checker.check_membership_agreement(0, NodeId(1), 3, &new)),
            "check_membership_agreement"
        );
        change(&mut checker, 3, 1, &new);
        checker
            .check_membership_agreement(0, NodeId(1), 3, &new)
            .unwrap();
        // A snapshot of a later slot carries the membership in force after it.
        checker
            .check_membership_agreement(3, NodeId(4), 9, &new)
            .unwrap();
        assert_eq!(
            property(checker.check_membership_agreement(1, NodeId(2), 3, &voters(&[1, 2]))),
            "check_membership_agreement"
        );
        assert_eq!(
            property(checker.check_membership_agreement(0, NodeId(1), 3, &new)),
            "check_membership_never_regresses"
        );
    }

    #[test]
    fn catches_a_node_campaigning_without_being_a_voter() {
        let mut checker = Checker::new(4, voters(&[1, 2, 3]));
        checker.on_start(0, Some(&voters(&[1, 2, 3])), 0);
        checker.on_start(3, None, 0);
        checker
            .on_election_started(0, NodeId(1), Ballot::new(1, NodeId(1)))
            .unwrap();
        let property = |result: Result<(), Violation>| result.unwrap_err().property;
        assert_eq!(
            property(checker.on_election_started(3, NodeId(4), Ballot::new(1, NodeId(4)))),
            "check_only_voters_campaign"
        );
        let removed = voters(&[2, 3]);
        change(&mut checker, 1, 1, &removed);
        checker
            .check_membership_agreement(0, NodeId(1), 1, &removed)
            .unwrap();
        assert_eq!(
            property(checker.on_election_started(0, NodeId(1), Ballot::new(2, NodeId(1)))),
            "check_only_voters_campaign"
        );
        assert_eq!(
            property(checker.on_leader(3, NodeId(4), Ballot::new(3, NodeId(4)))),
            "check_only_voters_campaign"
        );
    }
}
