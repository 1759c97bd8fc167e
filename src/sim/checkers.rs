//! Safety checkers, each named for the property it checks, fed by the simulation as things
//! become durable, are released, or are applied.
//!
//! Chosen values are computed from what acceptors durably wrote (a value is chosen in a slot
//! once a majority durably accepted it in one ballot), never from what a leader believes.

use crate::message::{Body, Message};
use crate::quorum::VoteSet;
use crate::storage::{MemStorage, Recovered, Storage, WriteBatch};
use crate::types::{Ballot, Entry, NodeId, ProposalId, Slot, Value};
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

/// The checkers' memory of the run.
#[derive(Debug)]
pub(crate) struct Checker {
    members: usize,
    /// Durable acceptances: for each (slot, ballot), the value and who accepted it.
    votes: BTreeMap<(Slot, Ballot), (Value, VoteSet)>,
    /// Values chosen, per the durable votes.
    chosen: BTreeMap<Slot, Value>,
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
    pub(crate) fn new(members: usize) -> Checker {
        Checker {
            members,
            votes: BTreeMap::new(),
            chosen: BTreeMap::new(),
            proposed: BTreeMap::new(),
            promised: vec![Ballot::ZERO; members],
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            applied_by: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            snapshots: BTreeMap::new(),
        }
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
        if voters.is_majority_of(self.members) {
            let value = value.clone();
            match self.chosen.get(&entry.slot) {
                Some(chosen) if *chosen != value => {
                    return Err(Violation::new(
                        "check_one_value_chosen_per_slot",
                        format!(
                            "slot {}: {:?} was chosen, then {:?}",
                            entry.slot, chosen, value
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    self.chosen.insert(entry.slot, value);
                }
            }
        }
        Ok(())
    }

    /// Node `index` restarted with `recovered`: it must remember its last durable promise.
    pub(crate) fn on_restart(
        &mut self,
        index: usize,
        recovered: &Recovered,
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

    /// Node `index` (id `id`) became leader of `ballot`.
    pub(crate) fn on_leader(
        &mut self,
        _index: usize,
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
        let mut checker = Checker::new(3);
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 1, &a).unwrap();
        accept(&mut checker, 1, 1, 2, &b).unwrap();
        let violation = accept(&mut checker, 2, 1, 2, &b).unwrap_err();
        assert_eq!(violation.property, "check_one_value_chosen_per_slot");
    }

    #[test]
    fn catches_two_values_in_one_ballot() {
        let mut checker = Checker::new(3);
        let (a, b) = (command(&mut checker, 1, "a"), command(&mut checker, 2, "b"));
        accept(&mut checker, 0, 1, 1, &a).unwrap();
        assert_eq!(
            accept(&mut checker, 1, 1, 1, &b).unwrap_err().property,
            "check_one_value_per_ballot"
        );
    }

    #[test]
    fn catches_a_value_never_proposed() {
        let mut checker = Checker::new(3);
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
        let mut checker = Checker::new(3);
        let write = |round| WriteBatch {
            hard_state: Some(HardState {
                promised: ballot(round),
                chosen: 0,
                incarnation: 1,
            }),
            runs: vec![],
            must_sync: true,
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
        };
        assert_eq!(
            checker.on_restart(0, &recovered).unwrap_err().property,
            "check_promise_never_regresses"
        );
    }

    #[test]
    fn catches_a_promise_released_before_its_write() {
        let mut checker = Checker::new(3);
        let storage = MemStorage::new();
        let promise = Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Promise {
                ballot: ballot(1),
                first_slot: 1,
                accepted: vec![],
                chosen: 0,
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
        let mut checker = Checker::new(3);
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
        let mut checker = Checker::new(3);
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
        let mut checker = Checker::new(3);
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
        let mut checker = Checker::new(3);
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
}
