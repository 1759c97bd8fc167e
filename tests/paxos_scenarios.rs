//! Deterministic scenario tests of single-decree Paxos (`synod::paxos`). Each test names the
//! rule it checks; section numbers refer to Lamport, *Paxos Made Simple* (2001).

mod paxos_net;

use bytes::Bytes;
use paxos_net::{config, Net, INSTANCE};
use synod::paxos::{
    Body, Config, DurableState, Event, InstanceId, Message, Node, Proposal, ProposeError,
    ProposerPhase, StepError,
};
use synod::{AcknowledgeError, Ballot, ConfigError, NodeId};

fn bytes(value: &'static str) -> Bytes {
    Bytes::from_static(value.as_bytes())
}

fn ballot(round: u64, node: u64) -> Ballot {
    Ballot::new(round, NodeId(node))
}

fn message(from: u64, to: u64, body: Body) -> Message {
    Message {
        instance: INSTANCE,
        from: NodeId(from),
        to: NodeId(to),
        body,
    }
}

/// A fresh node `id` of `members`, driven by hand.
fn lone(id: u64, members: u64) -> Node {
    Node::new(config(id, members), DurableState::default()).unwrap()
}

/// Drains every ready of `node` with synchronous writes; returns (messages sent before the
/// write, messages sent after it, events).
fn drain(node: &mut Node) -> (Vec<Message>, Vec<Message>, Vec<Event>) {
    let (mut before, mut after, mut events) = (Vec::new(), Vec::new(), Vec::new());
    while node.has_ready() {
        let mut ready = node.ready();
        before.extend(ready.take_messages());
        after.extend(ready.take_persisted_messages());
        events.extend(ready.take_events());
        node.advance(ready)
            .expect("its own ready, acknowledged in order");
    }
    (before, after, events)
}

fn chosen_everywhere(net: &Net) -> Option<Bytes> {
    let first = net.node(1).chosen()?.clone();
    net.ids()
        .iter()
        .all(|id| net.node(id.0).chosen() == Some(&first))
        .then_some(first)
}

#[test]
fn a_lone_proposer_gets_its_value_chosen_and_learned_everywhere() {
    // §2.2–2.3: with no competition, phase 1 and phase 2 each need one round trip to a majority;
    // every learner learns from the acceptors' Accepted messages.
    let mut net = Net::new(3);
    net.propose(1, "commit").unwrap();
    net.deliver_all();
    assert_eq!(chosen_everywhere(&net), Some(bytes("commit")));
    assert!(net.events(1).contains(&Event::Chosen {
        value: bytes("commit")
    }));
    assert_eq!(net.node(1).proposer_phase(), ProposerPhase::Idle);
    net.check_safety().unwrap();
    // Prepare to 2 peers, 2 Promises, Accept to 2 peers, 3 acceptors x 2 Accepted, Decided x 2.
    assert_eq!(net.sent.len(), 2 + 2 + 2 + 6 + 2);
}

#[test]
fn p1_an_acceptor_accepts_the_first_proposal_it_receives() {
    // §2.2 P1: an acceptor must accept the first proposal that it receives — an Accept with no
    // Prepare before it is accepted when nothing higher was promised.
    let mut acceptor = lone(2, 3);
    let value = bytes("v");
    acceptor
        .step(message(
            1,
            2,
            Body::Accept {
                ballot: ballot(1, 1),
                value: value.clone(),
            },
        ))
        .unwrap();
    let (before, after, _) = drain(&mut acceptor);
    assert!(before.is_empty());
    let expected = Body::Accepted {
        ballot: ballot(1, 1),
        value: value.clone(),
    };
    assert_eq!(after.len(), 2, "Accepted goes to every other learner");
    assert!(after.iter().all(|m| m.body == expected));
    assert_eq!(
        acceptor.accepted(),
        Some(&Proposal {
            ballot: ballot(1, 1),
            value
        })
    );
}

#[test]
fn p1a_an_acceptor_refuses_anything_below_its_promise() {
    // §2.2 P1a: an acceptor can accept a proposal numbered n iff it has not responded to a
    // prepare request having a number greater than n. The refusal names the promise (§2.5).
    let mut acceptor = lone(2, 3);
    acceptor
        .step(message(
            3,
            2,
            Body::Prepare {
                ballot: ballot(5, 3),
            },
        ))
        .unwrap();
    drain(&mut acceptor);
    acceptor
        .step(message(
            1,
            2,
            Body::Accept {
                ballot: ballot(4, 1),
                value: bytes("late"),
            },
        ))
        .unwrap();
    acceptor
        .step(message(
            1,
            2,
            Body::Prepare {
                ballot: ballot(5, 1),
            },
        ))
        .unwrap();
    let (before, after, _) = drain(&mut acceptor);
    assert!(after.is_empty(), "nothing promised or accepted");
    assert_eq!(acceptor.accepted(), None);
    assert_eq!(acceptor.promised(), ballot(5, 3));
    let nacks: Vec<_> = before.iter().map(|m| &m.body).collect();
    assert!(nacks.contains(&&Body::Nack {
        ballot: ballot(4, 1),
        promised: ballot(5, 3)
    }));
    assert!(nacks.contains(&&Body::Nack {
        ballot: ballot(5, 1),
        promised: ballot(5, 3)
    }));
}

#[test]
fn p2c_a_proposer_adopts_the_highest_ballot_value_reported() {
    // §2.2 P2c: the value proposed in phase 2 is the value of the highest-numbered proposal
    // among the accepted proposals reported by a majority, not the proposer's own.
    let mut proposer = lone(5, 5);
    // Let the proposer see round 3, so its ballot is above the reported ones.
    proposer
        .step(message(
            2,
            5,
            Body::Prepare {
                ballot: ballot(3, 2),
            },
        ))
        .unwrap();
    drain(&mut proposer);
    let mine = proposer.propose(bytes("mine")).unwrap();
    assert_eq!(mine, ballot(4, 5));
    drain(&mut proposer); // its own promise counts once durable
    proposer
        .step(message(
            1,
            5,
            Body::Promise {
                ballot: mine,
                accepted: Some(Proposal {
                    ballot: ballot(2, 1),
                    value: bytes("older"),
                }),
            },
        ))
        .unwrap();
    assert_eq!(
        proposer.proposer_phase(),
        ProposerPhase::Preparing { ballot: mine },
        "two of five promises are not a majority"
    );
    proposer
        .step(message(
            2,
            5,
            Body::Promise {
                ballot: mine,
                accepted: Some(Proposal {
                    ballot: ballot(3, 2),
                    value: bytes("newer"),
                }),
            },
        ))
        .unwrap();
    let (before, _, events) = drain(&mut proposer);
    assert!(events.contains(&Event::Accepting {
        ballot: mine,
        value: bytes("newer"),
        adopted: true
    }));
    let accepts: Vec<_> = before
        .iter()
        .filter(|m| matches!(m.body, Body::Accept { .. }))
        .collect();
    assert_eq!(accepts.len(), 4);
    assert!(accepts.iter().all(|m| m.body
        == Body::Accept {
            ballot: mine,
            value: bytes("newer")
        }));
}

#[test]
fn p2c_a_value_accepted_by_a_minority_survives_into_the_next_ballot() {
    // §2.2 P2c end to end: n1's "a" reaches only n2's acceptor; n3 then proposes "b", but its
    // phase-1 quorum includes n2, so it proposes "a", and "a" is chosen.
    let mut net = Net::new(3);
    net.propose(1, "a").unwrap();
    // Phase 1 completes with n2; then n1's Accept reaches n2 only, and the Accepteds are lost.
    while let Some(index) = net
        .queue
        .iter()
        .position(|m| !matches!(m.body, Body::Accept { .. } | Body::Accepted { .. }))
    {
        net.deliver(index);
    }
    let to_n2 = net
        .queue
        .iter()
        .position(|m| matches!(m.body, Body::Accept { .. }) && m.to == NodeId(2))
        .unwrap();
    net.deliver(to_n2);
    net.queue.clear();
    assert!(net.node(1).chosen().is_none());
    net.crash(1); // n1's proposer is gone for good
    net.propose(3, "b").unwrap();
    net.deliver_all();
    assert!(net.events(3).iter().any(|event| matches!(
        event,
        Event::Accepting { value, adopted: true, .. } if value == "a"
    )));
    assert_eq!(net.node(2).chosen(), Some(&bytes("a")));
    assert_eq!(net.node(3).chosen(), Some(&bytes("a")));
    net.check_safety().unwrap();
}

#[test]
fn a_promise_never_goes_backwards_across_a_restart() {
    // §2.2 / §2.4: an acceptor remembers its promise in stable storage; a restart from the
    // persisted state keeps it, and a promise that was never durable was never revealed.
    let mut net = Net::new(3);
    net.node_mut(2)
        .step(message(
            3,
            2,
            Body::Prepare {
                ballot: ballot(5, 3),
            },
        ))
        .unwrap();
    net.process(NodeId(2));
    assert_eq!(net.members[&NodeId(2)].disk.promised, ballot(5, 3));
    net.queue.clear();

    // A higher promise whose write is lost in a crash.
    net.sync_writes = false;
    net.node_mut(2)
        .step(message(
            1,
            2,
            Body::Prepare {
                ballot: ballot(6, 1),
            },
        ))
        .unwrap();
    net.process(NodeId(2));
    assert!(
        net.queue.is_empty(),
        "the Promise waits for its write (persistence before promise)"
    );
    net.crash(2);
    net.restart(2);
    net.sync_writes = true;
    assert_eq!(net.node(2).promised(), ballot(5, 3), "durable promise kept");

    // Below the durable promise: refused, even after the restart.
    net.node_mut(2)
        .step(message(
            1,
            2,
            Body::Prepare {
                ballot: ballot(4, 1),
            },
        ))
        .unwrap();
    net.process(NodeId(2));
    assert_eq!(
        net.queue.pop().unwrap().body,
        Body::Nack {
            ballot: ballot(4, 1),
            promised: ballot(5, 3)
        }
    );
    let history = &net.members[&NodeId(2)].disk_history;
    assert!(history.windows(2).all(|w| w[0].promised <= w[1].promised));
}

#[test]
fn no_promise_accepted_or_prepare_is_released_before_its_write() {
    // Persistence before promise (DESIGN.md §2): Promise and Accepted wait in
    // `take_persisted_messages`; so do the Prepares of a new ballot (a proposer never reuses a
    // ballot: §2.4); and the node's own votes count only after `on_persisted`.
    let mut proposer = lone(1, 3);
    proposer.propose(bytes("v")).unwrap();
    let mut ready = proposer.ready();
    assert!(ready.must_sync());
    assert_eq!(ready.persist().unwrap().proposer_round, 1);
    assert!(ready.take_messages().is_empty());
    let prepares = ready.take_persisted_messages();
    assert_eq!(prepares.len(), 2);
    assert!(prepares
        .iter()
        .all(|m| matches!(m.body, Body::Prepare { .. })));
    let own_promise_write = ready.number();
    // The write is still in flight; a peer's promise arrives.
    let mine = ballot(1, 1);
    proposer
        .step(message(
            2,
            1,
            Body::Promise {
                ballot: mine,
                accepted: None,
            },
        ))
        .unwrap();
    assert_eq!(
        proposer.proposer_phase(),
        ProposerPhase::Preparing { ballot: mine },
        "its own promise does not count before its write: 1 of 3 is no majority"
    );
    proposer
        .on_persisted(own_promise_write)
        .expect("a number handed out, acknowledged in order");
    assert_eq!(
        proposer.proposer_phase(),
        ProposerPhase::Accepting { ballot: mine }
    );
    let mut ready = proposer.ready();
    let accepts = ready.take_messages();
    assert!(accepts
        .iter()
        .all(|m| matches!(m.body, Body::Accept { .. })));
    assert!(ready.persist().unwrap().accepted.is_some());
    let accepted = ready.take_persisted_messages();
    assert_eq!(accepted.len(), 2);
    assert!(accepted
        .iter()
        .all(|m| matches!(m.body, Body::Accepted { .. })));

    // The acceptor side: the Promise is held back until the write.
    let mut acceptor = lone(2, 3);
    acceptor
        .step(message(1, 2, Body::Prepare { ballot: mine }))
        .unwrap();
    let mut ready = acceptor.ready();
    assert!(ready.take_messages().is_empty());
    assert_eq!(ready.persist().unwrap().promised, mine);
    assert!(ready.must_sync());
    assert_eq!(ready.take_persisted_messages().len(), 1);
}

#[test]
fn a_restarted_proposer_never_reuses_a_ballot() {
    // §2.4: "a proposer ... must remember (in stable storage) the highest-numbered proposal it
    // has tried to issue". Two values in one ballot would break P2.
    let mut net = Net::new(3);
    let first = net.propose(1, "a").unwrap();
    net.queue.clear(); // the Prepares are lost
    net.crash(1);
    net.restart(1);
    let second = net.propose(1, "b").unwrap();
    assert!(second > first, "{second} after {first}");
    net.deliver_all();
    assert_eq!(chosen_everywhere(&net), Some(bytes("b")));

    // Without the round on disk (lost write), the Prepares were never sent either.
    let mut net = Net::new(3);
    net.sync_writes = false;
    net.propose(1, "a").unwrap();
    assert!(net.queue.is_empty());
    net.crash(1);
    net.restart(1);
    net.sync_writes = true;
    net.propose(1, "b").unwrap();
    net.deliver_all();
    assert_eq!(chosen_everywhere(&net), Some(bytes("b")));
}

#[test]
fn duelling_proposers_converge_via_randomized_backoff() {
    // §2.4: two proposers that keep preempting each other never choose; a randomized,
    // growing backoff (seeded, in ticks) separates them so one completes both phases.
    let mut net = Net::new(3);
    net.propose(1, "one").unwrap();
    net.propose(3, "three").unwrap();
    let rounds = net.run_until_learned(500);
    assert!(net.all_learned(), "no value after {rounds} rounds");
    net.check_safety().unwrap();
    let abandoned: usize = [1, 3]
        .iter()
        .map(|id| {
            net.events(*id)
                .iter()
                .filter(|e| matches!(e, Event::Abandoned { .. }))
                .count()
        })
        .sum();
    assert!(abandoned > 0, "the proposers did duel");
    let chosen = net.node(1).chosen().unwrap().clone();
    assert!(chosen == "one" || chosen == "three");
}

#[test]
fn duels_among_many_proposers_end_for_every_seed() {
    // Liveness under contention, across seeds: five proposers at once, lockstep delivery.
    for seed in 0..40u64 {
        let mut net = Net::with(5, |config| config.seed = seed * 100 + config.id.0);
        for id in 1..=5 {
            let value: &'static str = ["a", "b", "c", "d", "e"][id as usize - 1];
            net.propose(id, value).unwrap();
        }
        let rounds = net.run_until_learned(2_000);
        assert!(
            net.all_learned(),
            "seed {seed}: no value after {rounds} rounds"
        );
        net.check_safety().unwrap();
    }
}

#[test]
fn lost_messages_are_recovered_by_the_phase_timeout() {
    // Paxos tolerates message loss (§2.1's model); the proposer retries after `phase_ticks`.
    let mut net = Net::new(3);
    net.propose(1, "v").unwrap();
    net.queue.clear(); // lose the Prepares
    for _ in 0..50 {
        net.tick_all();
        // Lose every Accept the first time round.
        if net
            .queue
            .iter()
            .any(|m| matches!(m.body, Body::Accept { .. }))
            && net
                .sent
                .iter()
                .filter(|m| matches!(m.body, Body::Accept { .. }))
                .count()
                <= 2
        {
            net.queue.retain(|m| !matches!(m.body, Body::Accept { .. }));
        }
        net.deliver_all();
        if net.all_learned() {
            break;
        }
    }
    assert_eq!(chosen_everywhere(&net), Some(bytes("v")));
    assert!(net
        .events(1)
        .iter()
        .any(|e| matches!(e, Event::Abandoned { promised: None, .. })));
    net.check_safety().unwrap();
}

#[test]
fn duplicated_and_reordered_messages_are_harmless() {
    // §2.1: messages can be duplicated and delivered out of order without corruption.
    let mut net = Net::new(3);
    net.propose(1, "x").unwrap();
    net.propose(2, "y").unwrap();
    for _ in 0..400 {
        // Duplicate everything in flight, then deliver newest first.
        let copies = net.queue.clone();
        net.queue.extend(copies);
        while !net.queue.is_empty() {
            let last = net.queue.len() - 1;
            net.deliver(last);
            net.check_safety().unwrap();
        }
        if net.all_learned() {
            break;
        }
        net.tick_all();
    }
    assert!(chosen_everywhere(&net).is_some());
    net.check_safety().unwrap();
}

#[test]
fn a_minority_cannot_choose() {
    // §2.2: a value is chosen only when a majority accepted it; two of five acceptors are not
    // enough, however long the proposer tries. When the majority returns, it completes.
    let mut net = Net::new(5);
    for id in 3..=5 {
        net.isolate(id);
    }
    net.propose(1, "v").unwrap();
    for _ in 0..300 {
        net.tick_all();
        net.deliver_all();
    }
    assert!(net.chosen_by_votes().is_empty());
    assert!(net.learned().is_empty());
    assert!(net
        .events(1)
        .iter()
        .any(|e| matches!(e, Event::Abandoned { .. })));
    net.blocked.clear();
    net.run_until_learned(200);
    assert_eq!(chosen_everywhere(&net), Some(bytes("v")));
    net.check_safety().unwrap();
}

#[test]
fn a_learner_learns_only_from_a_majority_of_votes_in_one_ballot() {
    // §2.3: a learner must find out that a proposal has been accepted by a majority of
    // acceptors — the same proposal (ballot), counted per acceptor, whoever claims otherwise.
    let mut learner = lone(1, 5);
    let v = bytes("v");
    let accepted = |from: u64, round: u64| {
        message(
            from,
            1,
            Body::Accepted {
                ballot: ballot(round, 2),
                value: v.clone(),
            },
        )
    };
    // One acceptor repeating itself is one vote.
    for _ in 0..5 {
        learner.step(accepted(2, 1)).unwrap();
    }
    // Three acceptors, but in three different ballots.
    learner.step(accepted(3, 2)).unwrap();
    learner.step(accepted(4, 3)).unwrap();
    assert_eq!(learner.chosen(), None);
    // A third vote in ballot 3.
    learner.step(accepted(5, 3)).unwrap();
    assert_eq!(learner.chosen(), None, "two votes in ballot 3");
    learner.step(accepted(3, 3)).unwrap();
    assert_eq!(learner.chosen(), Some(&v));
    let (_, _, events) = drain(&mut learner);
    assert_eq!(events, vec![Event::Chosen { value: v.clone() }]);
    let mut ready = learner.ready();
    assert!(ready.take_events().is_empty(), "Chosen is reported once");
    learner
        .advance(ready)
        .expect("its own ready, acknowledged in order");
}

#[test]
fn a_learner_learns_from_a_decided_message() {
    // §2.3: a learner can learn the chosen value from another learner that knows it.
    let mut learner = lone(3, 3);
    learner
        .step(message(1, 3, Body::Decided { value: bytes("v") }))
        .unwrap();
    assert_eq!(learner.chosen(), Some(&bytes("v")));
    let mut ready = learner.ready();
    assert_eq!(ready.persist().unwrap().chosen, Some(bytes("v")));
    assert!(!ready.must_sync(), "the chosen value can be learned again");
    assert_eq!(
        ready.take_events(),
        vec![Event::Chosen { value: bytes("v") }]
    );
    learner
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    // The same announcement again is harmless.
    learner
        .step(message(2, 3, Body::Decided { value: bytes("v") }))
        .unwrap();
    assert!(!learner.has_ready());
}

#[test]
fn a_late_proposer_drives_the_chosen_value_not_its_own() {
    // §2.2 P2 (via P2c): once a value is chosen, every higher proposal has that value; a node
    // that missed the outcome and proposes learns the chosen value instead.
    let mut net = Net::new(3);
    net.isolate(3);
    net.propose(1, "commit").unwrap();
    net.deliver_all();
    assert_eq!(net.node(1).chosen(), Some(&bytes("commit")));
    assert_eq!(net.node(3).chosen(), None);
    net.blocked.clear();
    net.propose(3, "abort").unwrap();
    net.deliver_all();
    assert_eq!(chosen_everywhere(&net), Some(bytes("commit")));
    net.check_safety().unwrap();
    // Once chosen, `propose` refuses with the outcome.
    assert_eq!(
        net.node_mut(3).propose(bytes("again")),
        Err(ProposeError::AlreadyChosen {
            value: bytes("again"),
            chosen: bytes("commit")
        })
    );
}

#[test]
fn a_recovered_node_keeps_the_chosen_value() {
    let mut net = Net::new(3);
    net.propose(2, "v").unwrap();
    net.deliver_all();
    net.crash(2);
    net.restart(2);
    assert_eq!(net.node(2).chosen(), Some(&bytes("v")));
    assert!(!net.node(2).has_ready(), "no second Chosen event");
}

#[test]
fn writes_may_complete_later_in_order() {
    // Asynchronous storage: several readies in flight, acknowledged in order by number.
    let mut net = Net::new(3);
    net.sync_writes = false;
    net.propose(1, "v").unwrap();
    for _ in 0..20 {
        for id in net.ids() {
            net.persist_all(id);
        }
        net.deliver_all();
    }
    assert_eq!(chosen_everywhere(&net), Some(bytes("v")));
}

#[test]
fn acknowledging_writes_out_of_order_is_refused() {
    let mut node = lone(1, 3);
    node.propose(bytes("v")).unwrap();
    let first = node.ready();
    node.step(message(
        2,
        1,
        Body::Prepare {
            ballot: ballot(9, 2),
        },
    ))
    .unwrap();
    let second = node.ready();
    node.on_persisted(second.number())
        .expect("a number handed out, acknowledged in order");
    assert_eq!(
        node.on_persisted(first.number()),
        Err(AcknowledgeError::OutOfOrder {
            number: first.number(),
            acknowledged: second.number()
        })
    );
}

#[test]
fn many_instances_share_one_transport() {
    // Messages carry their instance; route them by it. Two instances of the same members
    // choose independently.
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let instances = [InstanceId(100), InstanceId(200)];
    let mut nodes: Vec<Node> = Vec::new();
    for instance in instances {
        for id in &members {
            let config = Config::new(instance, *id, members.clone());
            nodes.push(Node::new(config, DurableState::default()).unwrap());
        }
    }
    nodes[0].propose(bytes("first")).unwrap();
    nodes[4].propose(bytes("second")).unwrap();
    let mut wire: Vec<Message> = Vec::new();
    for _ in 0..20 {
        for node in nodes.iter_mut() {
            let (before, after, _) = drain(node);
            wire.extend(before);
            wire.extend(after);
        }
        for message in std::mem::take(&mut wire) {
            let node = nodes
                .iter_mut()
                .find(|n| n.instance() == message.instance && n.id() == message.to)
                .unwrap();
            node.step(message).unwrap();
        }
    }
    assert!(nodes[..3]
        .iter()
        .all(|n| n.chosen() == Some(&bytes("first"))));
    assert!(nodes[3..]
        .iter()
        .all(|n| n.chosen() == Some(&bytes("second"))));
}

#[test]
fn bad_input_is_refused_with_a_typed_error_and_changes_nothing() {
    // DESIGN.md §5: bad input from the network is a StepError; it never panics and never
    // changes state.
    let mut node = lone(1, 3);
    node.propose(bytes("mine")).unwrap();
    drain(&mut node);
    node.step(message(
        2,
        1,
        Body::Accepted {
            ballot: ballot(7, 3),
            value: bytes("x"),
        },
    ))
    .unwrap();
    drain(&mut node);
    let before = node.clone();
    let prepare = Body::Prepare {
        ballot: ballot(9, 2),
    };
    let cases: Vec<(Message, StepError)> = vec![
        (
            Message {
                instance: InstanceId(8),
                ..message(2, 1, prepare.clone())
            },
            StepError::WrongInstance {
                found: InstanceId(8),
                this: INSTANCE,
            },
        ),
        (
            message(2, 3, prepare.clone()),
            StepError::WrongRecipient {
                to: NodeId(3),
                this: NodeId(1),
            },
        ),
        (
            message(
                9,
                1,
                Body::Prepare {
                    ballot: ballot(9, 9),
                },
            ),
            StepError::UnknownNode(NodeId(9)),
        ),
        (
            message(
                1,
                1,
                Body::Prepare {
                    ballot: ballot(9, 1),
                },
            ),
            StepError::FromSelf(NodeId(1)),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(node.step(input), Err(expected));
    }
    let malformed = [
        // A Prepare or Accept for a ballot the sender does not own.
        message(
            2,
            1,
            Body::Prepare {
                ballot: ballot(9, 3),
            },
        ),
        message(
            2,
            1,
            Body::Accept {
                ballot: ballot(9, 3),
                value: bytes("v"),
            },
        ),
        // Round 0 is below every real ballot.
        message(
            2,
            1,
            Body::Prepare {
                ballot: ballot(0, 2),
            },
        ),
        // A promise reporting an acceptance above itself.
        message(
            2,
            1,
            Body::Promise {
                ballot: ballot(1, 1),
                accepted: Some(Proposal {
                    ballot: ballot(2, 3),
                    value: bytes("v"),
                }),
            },
        ),
        // Answers to a ballot this node does not own.
        message(
            2,
            1,
            Body::Promise {
                ballot: ballot(1, 3),
                accepted: None,
            },
        ),
        message(
            2,
            1,
            Body::Nack {
                ballot: ballot(1, 3),
                promised: ballot(2, 2),
            },
        ),
        // A Nack whose promise is not above the refused ballot.
        message(
            2,
            1,
            Body::Nack {
                ballot: ballot(1, 1),
                promised: ballot(1, 1),
            },
        ),
        // A second value for a ballot whose value is known.
        message(
            3,
            1,
            Body::Accepted {
                ballot: ballot(7, 3),
                value: bytes("y"),
            },
        ),
        // Over value_bytes_max.
        message(
            2,
            1,
            Body::Decided {
                value: Bytes::from(vec![0; (1 << 20) + 1]),
            },
        ),
    ];
    for input in malformed {
        let kind = input.body.kind();
        match node.step(input) {
            Err(StepError::Malformed { kind: got, .. }) => assert_eq!(got, kind),
            other => panic!("{kind}: expected Malformed, got {other:?}"),
        }
    }
    assert_eq!(node.dropped_messages(), before.dropped_messages() + 13);
    assert_eq!(node.durable_state(), before.durable_state());
    assert_eq!(node.proposer_phase(), before.proposer_phase());
    assert!(!node.has_ready(), "nothing to send, write or report");

    // A Decided that contradicts the chosen value.
    let mut learner = lone(2, 3);
    learner
        .step(message(1, 2, Body::Decided { value: bytes("a") }))
        .unwrap();
    drain(&mut learner);
    assert!(matches!(
        learner.step(message(3, 2, Body::Decided { value: bytes("b") })),
        Err(StepError::Malformed { .. })
    ));
    assert_eq!(learner.chosen(), Some(&bytes("a")));
}

#[test]
fn propose_errors_hand_the_value_back() {
    let mut node = lone(1, 3);
    let huge = Bytes::from(vec![1; (1 << 20) + 1]);
    let error = node.propose(huge.clone()).unwrap_err();
    assert!(matches!(error, ProposeError::TooLarge { bytes, .. } if bytes == huge.len()));
    assert_eq!(error.into_value(), huge);
    let largest = Bytes::from(vec![1; 1 << 20]);
    node.propose(largest)
        .expect("a value of exactly value_bytes_max is accepted");
    let mut node = lone(1, 3);
    node.propose(bytes("a")).unwrap();
    assert_eq!(
        node.propose(bytes("b")),
        Err(ProposeError::InProgress { value: bytes("b") })
    );
}

#[test]
fn config_and_recovered_state_are_validated() {
    let mut bad = config(1, 3);
    bad.backoff_ticks_max = 0;
    assert_eq!(
        Node::new(bad, DurableState::default()).unwrap_err().field,
        "backoff_ticks_max"
    );
    let inconsistent = DurableState {
        promised: ballot(1, 1),
        accepted: Some(Proposal {
            ballot: ballot(2, 2),
            value: bytes("v"),
        }),
        ..DurableState::default()
    };
    assert_eq!(
        Node::new(config(1, 3), inconsistent).unwrap_err(),
        ConfigError::new("recovered", "the accepted ballot is above the promise")
    );
}

#[test]
fn same_inputs_give_the_same_outputs() {
    // Determinism: the same schedule, twice, sends the same messages byte for byte.
    let run = || {
        let mut net = Net::new(3);
        net.propose(1, "one").unwrap();
        net.propose(2, "two").unwrap();
        net.propose(3, "three").unwrap();
        net.run_until_learned(500);
        net.sent
    };
    assert_eq!(run(), run());
}

#[test]
fn a_proposer_that_learns_from_a_decided_message_announces_it_too() {
    // Found by the property test: n1's "v1" is chosen by n2 and n3, but n3 hears neither n2's
    // Accepted nor n1's Decided, and n1 crashes before its (lazy) record of the chosen value is
    // written. Restarted, n1 proposes again and learns "v1" from n2's Decided; it must tell
    // everyone, or n3, which is not proposing, never learns.
    let mut net = Net::new(3);
    net.blocked.insert((NodeId(2), NodeId(3)));
    net.blocked.insert((NodeId(1), NodeId(3)));
    net.propose(1, "v1").unwrap();
    net.deliver_all();
    assert_eq!(net.node(2).chosen(), Some(&bytes("v1")));
    assert_eq!(net.node(3).chosen(), None);
    net.members.get_mut(&NodeId(1)).unwrap().disk.chosen = None; // the lazy write was lost
    net.crash(1);
    net.blocked.clear();
    net.restart(1);
    assert_eq!(net.node(1).chosen(), None);
    net.propose(1, "other").unwrap();
    net.deliver_all();
    assert_eq!(chosen_everywhere(&net), Some(bytes("v1")));
    net.check_safety().unwrap();
}

#[test]
fn messages_and_durable_state_round_trip_through_the_wire_codec() {
    // Messages derive serde so they travel over the crate's framed codec, like the replica's.
    let codec = synod::Codec::new(1, 1 << 20).expect("a frame size within the codec's limits");
    let mut node = lone(1, 3);
    node.propose(bytes("commit")).unwrap();
    let mut ready = node.ready();
    let state = ready.take_persist().unwrap();
    let mut messages = ready.take_persisted_messages();
    messages.push(message(
        2,
        1,
        Body::Promise {
            ballot: ballot(1, 1),
            accepted: Some(Proposal {
                ballot: ballot(1, 1),
                value: bytes("v"),
            }),
        },
    ));
    messages.push(message(3, 1, Body::Decided { value: bytes("v") }));
    for original in messages {
        let frame = codec.encode(&original).unwrap();
        let (decoded, used): (Message, usize) = codec.decode(&frame).unwrap();
        assert_eq!((decoded, used), (original, frame.len()));
    }
    let frame = codec.encode(&state).unwrap();
    let (decoded, _): (DurableState, usize) = codec.decode(&frame).unwrap();
    assert_eq!(decoded, state);
}

/// Input validation at the size bound: a value of exactly `value_bytes_max` is valid in every
/// message that carries one, one byte more is malformed, and so is a promise reporting a
/// proposal no acceptor can have accepted (round 0).
#[test]
fn values_at_the_size_bound_are_valid_and_one_byte_more_is_not() {
    let max = 1 << 20;
    let carrying = |size: usize| {
        let value = Bytes::from(vec![7; size]);
        vec![
            Body::Promise {
                ballot: ballot(2, 1),
                accepted: Some(Proposal {
                    ballot: ballot(1, 3),
                    value: value.clone(),
                }),
            },
            Body::Accept {
                ballot: ballot(2, 2),
                value: value.clone(),
            },
            Body::Accepted {
                ballot: ballot(3, 2),
                value: value.clone(),
            },
            Body::Decided { value },
        ]
    };
    for body in carrying(max + 1) {
        let kind = body.kind();
        let mut node = lone(1, 3);
        assert!(
            matches!(
                node.step(message(2, 1, body)),
                Err(StepError::Malformed { .. })
            ),
            "{kind} over the bound"
        );
    }
    for body in carrying(max) {
        let kind = body.kind();
        let mut node = lone(1, 3);
        if let Err(error) = node.step(message(2, 1, body)) {
            panic!("{kind} at the bound refused: {error}");
        }
    }
    let mut node = lone(1, 3);
    let impossible = Body::Promise {
        ballot: ballot(1, 1),
        accepted: Some(Proposal {
            ballot: ballot(0, 3),
            value: bytes("v"),
        }),
    };
    assert!(matches!(
        node.step(message(2, 1, impossible)),
        Err(StepError::Malformed { .. })
    ));
}

/// A beaten proposer retries above the promise the Nack reported (not one round above its own,
/// which would only be beaten again), after a randomized backoff whose window doubles with every
/// retry and is capped by `backoff_ticks_max`.
#[test]
fn a_beaten_proposer_retries_above_the_reported_promise_with_growing_backoff() {
    let mut node = lone(1, 3);
    node.propose(bytes("v")).unwrap();
    let mut round = 1;
    let mut backoffs = Vec::new();
    for attempt in 0..8u64 {
        let (_, after, _) = drain(&mut node);
        let prepared = after
            .iter()
            .find_map(|message| match message.body {
                Body::Prepare { ballot } => Some(ballot),
                _ => None,
            })
            .expect("the proposer prepares");
        assert_eq!(prepared.round, round, "attempt {attempt}");
        let promised = ballot(round + 10, 2);
        node.step(message(
            2,
            1,
            Body::Nack {
                ballot: prepared,
                promised,
            },
        ))
        .unwrap();
        let (_, _, events) = drain(&mut node);
        let backoff = events
            .iter()
            .find_map(|event| match event {
                Event::Abandoned { backoff_ticks, .. } => Some(*backoff_ticks),
                _ => None,
            })
            .expect("a Nack of the current ballot abandons it");
        backoffs.push(backoff);
        for _ in 0..backoff {
            node.tick();
        }
        round = promised.round + 1;
    }
    let config = config(1, 3);
    assert!(backoffs
        .iter()
        .all(|&b| b >= 1 && b <= config.backoff_ticks_max));
    assert!(
        backoffs
            .iter()
            .any(|&b| b > 2 * config.backoff_ticks_initial),
        "the window never grew past its second size: {backoffs:?}"
    );
}

/// A member that knows the chosen value answers a late Accept with `Decided` (as it answers a
/// late Prepare), so the proposer stops at once.
#[test]
fn a_late_accept_is_answered_with_the_decision() {
    let mut node = lone(3, 3);
    node.step(message(1, 3, Body::Decided { value: bytes("v") }))
        .unwrap();
    drain(&mut node);
    node.step(message(
        2,
        3,
        Body::Accept {
            ballot: ballot(4, 2),
            value: bytes("w"),
        },
    ))
    .unwrap();
    let (before, after, _) = drain(&mut node);
    assert!(
        before
            .iter()
            .chain(&after)
            .any(|m| m.to == NodeId(2) && m.body == Body::Decided { value: bytes("v") }),
        "{before:?} {after:?}"
    );
}

/// A repeated Accept changes nothing durable: the acceptance is sent again, without a write.
#[test]
fn a_repeated_accept_is_answered_without_a_write() {
    let mut node = lone(2, 3);
    let accept = message(
        1,
        2,
        Body::Accept {
            ballot: ballot(1, 1),
            value: bytes("v"),
        },
    );
    node.step(accept.clone()).unwrap();
    drain(&mut node);
    node.step(accept).unwrap();
    let mut ready = node.ready();
    assert!(ready.persist().is_none(), "nothing durable changed");
    let mut sent = ready.take_messages();
    sent.extend(ready.take_persisted_messages());
    node.advance(ready)
        .expect("its own ready, acknowledged in order");
    let acceptances = sent
        .iter()
        .filter(|m| matches!(m.body, Body::Accepted { ballot: b, .. } if b == ballot(1, 1)))
        .count();
    assert_eq!(acceptances, 2, "to both other members: {sent:?}");
}

/// `has_ready` reports output of each kind on its own: a repeated Prepare's promise (a message
/// to release after a write that changes nothing), and a value learned from other members'
/// acceptances (an event alone).
#[test]
fn has_ready_reports_a_lone_promise_or_a_lone_event() {
    let mut node = lone(2, 3);
    let prepare = message(
        1,
        2,
        Body::Prepare {
            ballot: ballot(1, 1),
        },
    );
    node.step(prepare.clone()).unwrap();
    drain(&mut node);
    node.step(prepare).unwrap();
    assert!(node.has_ready(), "the repeated promise waits to be sent");
    let (before, after, _) = drain(&mut node);
    assert!(before
        .iter()
        .chain(&after)
        .any(|m| matches!(m.body, Body::Promise { .. })));

    let mut learner = lone(3, 3);
    for from in [1, 2] {
        learner
            .step(message(
                from,
                3,
                Body::Accepted {
                    ballot: ballot(1, 1),
                    value: bytes("v"),
                },
            ))
            .unwrap();
    }
    assert!(learner.has_ready(), "the Chosen event waits to be reported");
    let (_, _, events) = drain(&mut learner);
    assert!(events
        .iter()
        .any(|event| matches!(event, Event::Chosen { .. })));
}
