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
        }
    }

    pub(crate) fn on_proposed(&mut self, id: ProposalId, data: Bytes) {
        self.proposed.insert(id, data);
    }

    pub(crate) fn on_acknowledged(&mut self, id: ProposalId) {
        self.acknowledged.insert(id);
    }

    /// True if every one of `nodes` applied command `id`.
    pub(crate) fn applied_everywhere(&self, id: ProposalId, nodes: usize) -> bool {
        self.applied_by.get(&id).is_some_and(|by| by.len() == nodes)
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
        for entry in &batch.entries {
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
    pub(crate) fn on_restart(&mut self, index: usize, recovered: &Recovered) {
        assert_eq!(
            recovered.hard_state.promised, self.promised[index],
            "storage must return the last durable promise"
        );
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
                let mut storage = storage.clone();
                let stored = storage
                    .entries(*first_slot, *last_slot)
                    .expect("MemStorage cannot fail");
                for slot in *first_slot..=*last_slot {
                    let held = stored.iter().find(|entry| entry.slot == slot);
                    let ok =
                        slot <= durable.chosen || held.is_some_and(|entry| entry.ballot >= *ballot);
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
