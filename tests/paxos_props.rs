//! Property tests of single-decree Paxos (`synod::paxos`): 3 and 5 nodes, several concurrent
//! proposers, random delivery order, loss, duplication, asynchronous writes, and crashes that
//! lose every write not yet durable (restarts recover from the last durable record).
//!
//! Checked after every action, from the acceptors' revealed votes rather than the nodes' claims
//! (`Net::check_safety`):
//! - at most one value is chosen (a majority accepted it in one ballot) — *Paxos Made Simple*
//!   §2.1 safety;
//! - the chosen value was proposed;
//! - every learner learned that value and no other (so all learners agree);
//! - no promise goes backwards on disk (asserted by the harness on every write).
//!
//! After the random schedule, a liveness phase (every node up, no faults) must end with every
//! node knowing the same value.

mod paxos_net;

use bytes::Bytes;
use paxos_net::Net;
use proptest::prelude::*;
use synod::NodeId;

#[derive(Clone, Debug)]
enum Action {
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Persist(u64),
    Tick(u64),
    Propose(u64),
    Crash(u64),
    Restart(u64),
}

fn action(nodes: u64) -> impl Strategy<Value = Action> {
    prop_oneof![
        30 => any::<usize>().prop_map(Action::Deliver),
        4 => any::<usize>().prop_map(Action::Drop),
        3 => any::<usize>().prop_map(Action::Duplicate),
        15 => (1..=nodes).prop_map(Action::Persist),
        12 => (1..=nodes).prop_map(Action::Tick),
        3 => (1..=nodes).prop_map(Action::Propose),
        1 => (1..=nodes).prop_map(Action::Crash),
        2 => (1..=nodes).prop_map(Action::Restart),
    ]
}

const VALUES: [&str; 8] = ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"];

/// Runs the schedule, checking safety after every action, then the liveness phase. Returns
/// whether a value was chosen during the random schedule itself.
fn run(nodes: u64, actions: Vec<Action>) -> Result<bool, TestCaseError> {
    let mut net = Net::with(nodes, |config| {
        config.phase_ticks = 4;
        config.backoff_ticks_initial = 2;
        config.backoff_ticks_max = 16;
    });
    net.sync_writes = false;
    let mut proposals = 0;
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
            Action::Persist(id) if net.is_alive(id) => {
                net.persist_one(NodeId(id));
            }
            Action::Tick(id) => net.tick(id),
            Action::Propose(id) if net.is_alive(id) && proposals < VALUES.len() => {
                // Refusals (in progress, already chosen) are fine: they hand the value back.
                let _ = net.propose(id, VALUES[proposals]);
                proposals += 1;
            }
            Action::Crash(id) => net.crash(id),
            Action::Restart(id) if !net.is_alive(id) => net.restart(id),
            _ => {}
        }
        net.check_safety().map_err(TestCaseError::fail)?;
    }
    let chosen_during_chaos = !net.chosen_by_votes().is_empty();

    // Liveness phase: every node up, writes synchronous, no loss.
    for id in 1..=nodes {
        if !net.is_alive(id) {
            net.restart(id);
        }
        net.persist_all(NodeId(id));
    }
    net.sync_writes = true;
    // A node learns the outcome for sure by proposing (the documented way): every node that
    // does not know it and is not proposing proposes. If nothing is chosen yet, "last" may
    // win; otherwise the chosen value is adopted (P2c) or announced to it.
    for id in 1..=nodes {
        if net.node(id).chosen().is_none() && !proposing(&net, id) {
            let _ = net.propose(id, "last");
        }
    }
    net.run_until_learned(2_000);
    net.check_safety().map_err(TestCaseError::fail)?;
    prop_assert!(
        net.all_learned(),
        "liveness: no value learned after faults stopped"
    );
    let values: std::collections::BTreeSet<Bytes> = net
        .ids()
        .iter()
        .map(|id| net.node(id.0).chosen().unwrap().clone())
        .collect();
    prop_assert_eq!(values.len(), 1, "learners disagree: {:?}", values);
    Ok(chosen_during_chaos)
}

fn proposing(net: &Net, id: u64) -> bool {
    net.node(id).proposer_phase() != synod::paxos::ProposerPhase::Idle
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn three_nodes_choose_at_most_one_value(actions in proptest::collection::vec(action(3), 1..400)) {
        run(3, actions)?;
    }

    #[test]
    fn five_nodes_choose_at_most_one_value(actions in proptest::collection::vec(action(5), 1..500)) {
        run(5, actions)?;
    }
}

/// The properties are not vacuous: plain fair schedules with concurrent proposers choose during
/// the schedule itself, not only in the liveness phase.
#[test]
fn fair_schedules_choose_during_the_schedule() {
    for nodes in [3u64, 5] {
        let mut actions = Vec::new();
        for id in 1..=nodes {
            actions.push(Action::Propose(id));
        }
        for step in 0..400u64 {
            actions.push(Action::Persist(1 + step % nodes));
            actions.push(Action::Deliver(step as usize * 7));
            if step % 5 == 0 {
                actions.push(Action::Tick(1 + step % nodes));
            }
        }
        assert!(run(nodes, actions).unwrap(), "{nodes} nodes chose nothing");
    }
}
