//! Property tests: random message schedules (order, loss, duplication), ticks, proposals,
//! crashes and restarts never break agreement.
//!
//! Checked after every action:
//! - at most one value is applied per slot, across all nodes and restarts (agreement);
//! - every applied command was proposed (validity);
//! - every node's applied log is a gap-free prefix 1..=n (so applied logs are prefixes of each
//!   other, given agreement);
//! - a replica whose `has_ready()` is false hands out an empty `ready()`.

mod common;

use bytes::Bytes;
use common::Net;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use synod::{NodeId, Value};

#[derive(Clone, Debug)]
enum Action {
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Tick(u64),
    Propose(u64),
    Crash(u64),
    Restart(u64),
}

fn action(nodes: u64) -> impl Strategy<Value = Action> {
    prop_oneof![
        30 => any::<usize>().prop_map(Action::Deliver),
        3 => any::<usize>().prop_map(Action::Drop),
        2 => any::<usize>().prop_map(Action::Duplicate),
        20 => (1..=nodes).prop_map(Action::Tick),
        6 => (1..=nodes).prop_map(Action::Propose),
        1 => (1..=nodes).prop_map(Action::Crash),
        2 => (1..=nodes).prop_map(Action::Restart),
    ]
}

/// Runs the schedule, checking after every action; returns the number of slots applied.
fn run(nodes: u64, actions: Vec<Action>) -> Result<usize, TestCaseError> {
    let mut net = Net::with(nodes, |config| {
        config.election_ticks = 4;
        config.heartbeat_ticks = 1;
        config.retransmit_ticks = 2;
        config.accept_bytes_max = 8;
        config.inflight_msgs_max = 4;
    });
    let mut proposed: BTreeSet<Bytes> = BTreeSet::new();
    let mut chosen: BTreeMap<u64, Value> = BTreeMap::new();
    let mut counter = 0;
    for action in actions {
        match action {
            Action::Deliver(index) if !net.queue.is_empty() => {
                let index = index % net.queue.len();
                net.deliver(index);
            }
            Action::Drop(index) if !net.queue.is_empty() => {
                let index = index % net.queue.len();
                net.queue.remove(index);
            }
            Action::Duplicate(index) if !net.queue.is_empty() => {
                let index = index % net.queue.len();
                let copy = net.queue[index].clone();
                net.queue.push(copy);
            }
            Action::Tick(id) => net.tick(id),
            Action::Propose(id) => {
                if let Some(replica) = net.nodes.get_mut(&NodeId(id)).unwrap().replica.as_mut() {
                    counter += 1;
                    let data = Bytes::from(format!("c{counter}"));
                    if replica.propose(data.clone()).is_ok() {
                        proposed.insert(data);
                    }
                    net.process(NodeId(id));
                }
            }
            Action::Crash(id) => net.crash(id),
            Action::Restart(id) if net.nodes[&NodeId(id)].replica.is_none() => net.restart(id),
            _ => {}
        }
        for (id, node) in &net.nodes {
            if let Some(replica) = node.replica.as_ref().filter(|r| !r.has_ready()) {
                // `has_ready` false means `ready` has nothing: the Ready loop stopped for good.
                let mut probe = replica.clone();
                let mut ready = probe.ready();
                let persist = ready.take_persist();
                prop_assert!(
                    persist.runs.is_empty()
                        && persist.hard_state.is_none()
                        && ready.take_messages().is_empty()
                        && ready.take_persisted_messages().is_empty()
                        && probe.committed(&ready).next().is_none()
                        && ready.committed_slots().is_empty()
                        && ready.take_events().is_empty(),
                    "{} has_ready() is false but ready() is not empty",
                    id
                );
            }
            for (position, (slot, value)) in node.applied.iter().enumerate() {
                prop_assert_eq!(*slot, position as u64 + 1, "{} applied with a gap", id);
                if let Value::Command { data, .. } = value {
                    prop_assert!(
                        proposed.contains(data),
                        "{} applied an unproposed command",
                        id
                    );
                }
                if let Some(previous) = chosen.insert(*slot, value.clone()) {
                    prop_assert_eq!(&previous, value, "slot {} has two values", slot);
                }
            }
        }
    }
    Ok(chosen.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn three_replicas_agree_under_any_schedule(actions in proptest::collection::vec(action(3), 1..600)) {
        run(3, actions)?;
    }

    #[test]
    fn five_replicas_agree_under_any_schedule(actions in proptest::collection::vec(action(5), 1..600)) {
        run(5, actions)?;
    }
}

/// The properties above are not vacuous: a plain schedule does choose values.
#[test]
fn a_fair_schedule_chooses_values() {
    let mut actions = Vec::new();
    for round in 0..200u64 {
        actions.push(Action::Tick(1 + round % 3));
        actions.push(Action::Propose(1 + round % 3));
        for _ in 0..6 {
            actions.push(Action::Deliver(0));
        }
    }
    let applied = run(3, actions).unwrap();
    assert!(applied >= 50, "only {applied} slots applied");
}
