//! Deterministic scenario tests of the Multi-Paxos replica. Each test names the rule it checks.

mod common;

use bytes::Bytes;
use common::Net;
use synod::message::{Body, Message};
use synod::replica::{Event, Role, StepDownReason};
use synod::{
    AcknowledgeError, Ballot, Entry, NodeId, ProposeError, Recovered, Replica, StepError, Storage,
    Value,
};

fn is_accept(message: &Message) -> bool {
    matches!(message.body, Body::Accept { .. })
}

#[test]
fn a_single_leader_is_elected_and_known_to_all() {
    // Multi-Paxos: one distinguished proposer (Paxos Made Simple §3), found by election.
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(net.leader(), Some(NodeId(1)));
    for id in 1..=3 {
        assert_eq!(
            net.replica(id).leader(),
            Some(NodeId(1)),
            "n{id} knows the leader"
        );
    }
    let ballot = net.replica(1).status().promised;
    assert_eq!(ballot.node, NodeId(1), "a leader's ballot is its own");
    assert!(net.nodes[&NodeId(1)]
        .events
        .contains(&Event::BecameLeader { ballot }));
}

#[test]
fn election_happens_by_ticks_alone() {
    // Time is ticks: with every node ticking, randomized timeouts elect exactly one leader.
    let mut net = Net::new(5);
    net.tick_all(60);
    let leader = net.leader().expect("a leader within 60 ticks");
    for id in 1..=5 {
        assert_eq!(net.replica(id).leader(), Some(leader));
    }
}

#[test]
fn steady_replication_applies_everything_in_order_everywhere() {
    let mut net = Net::new(3);
    net.elect(1);
    let expected: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    for command in &expected {
        net.replica_mut(1)
            .propose(Bytes::from(command.clone()))
            .unwrap();
    }
    net.process_all();
    net.stabilize();
    for id in 1..=3 {
        assert_eq!(net.commands(id), expected, "n{id}");
    }
    // Batching: 100 proposals in one ready travel in a handful of Accepts, not 100 per follower.
    let accepts = net.sent.iter().filter(|message| is_accept(message)).count();
    assert!(accepts <= 4, "{accepts} Accept messages for 100 proposals");
}

#[test]
fn leader_counts_its_own_vote_only_after_its_write() {
    // DESIGN §2 persistence before promise: a single-node cluster chooses nothing until the
    // ready carrying the entry is acknowledged as durable.
    let mut replica = Replica::new(common::config(1, 1), Recovered::default()).unwrap();
    let first = replica.ready();
    replica
        .advance(first)
        .expect("its own ready, acknowledged in order");
    while !replica.is_leader() {
        replica.tick();
        while replica.has_ready() {
            let ready = replica.ready();
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
        }
    }
    replica.propose(Bytes::from_static(b"x")).unwrap();
    let ready = replica.ready();
    assert_eq!(ready.persist().entries().count(), 1);
    assert!(ready.persist().must_sync);
    assert!(replica.committed(&ready).next().is_none());
    assert_eq!(
        replica.status().chosen,
        0,
        "not chosen before the write is durable"
    );
    // A second ready is taken while the first write is still in flight (asynchronous storage).
    let second = replica.ready();
    assert!(second.persist().is_empty());
    replica
        .on_persisted(ready.number())
        .expect("a number handed out, acknowledged in order");
    assert_eq!(replica.status().chosen, 1);
    let third = replica.ready();
    assert_eq!(replica.committed(&third).count(), 1);
    assert_eq!(third.committed_slots(), 1..=1);
}

#[test]
fn committed_entries_are_read_from_the_log_and_outlive_later_calls() {
    // `Replica::committed` borrows the chosen entries from the log instead of copying them
    // into the ready: they must stay readable (and unchanged) while the replica moves on,
    // and slots the application compacted meanwhile are skipped, never a panic.
    let mut replica = Replica::new(common::config(1, 1), Recovered::default()).unwrap();
    while !replica.is_leader() {
        replica.tick();
        while replica.has_ready() {
            let ready = replica.ready();
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
        }
    }
    let before = replica.status().chosen;
    for command in [&b"a"[..], b"b", b"c"] {
        replica.propose(Bytes::copy_from_slice(command)).unwrap();
    }
    let write = replica.ready();
    replica
        .advance(write)
        .expect("its own ready, acknowledged in order");
    let ready = replica.ready();
    assert_eq!(ready.committed_slots(), before + 1..=before + 3);
    let commands = |replica: &Replica, ready: &synod::replica::Ready| -> Vec<(u64, Bytes)> {
        replica
            .committed(ready)
            .filter_map(|entry| match &entry.value {
                Value::Command { data, .. } => Some((entry.slot, data.clone())),
                _ => None,
            })
            .collect()
    };
    let first = commands(&replica, &ready);
    assert_eq!(
        first.iter().map(|(_, data)| &data[..]).collect::<Vec<_>>(),
        [&b"a"[..], b"b", b"c"]
    );
    // The replica moves on: more proposals, writes, readies, a tick.
    replica.propose(Bytes::from_static(b"d")).unwrap();
    while replica.has_ready() {
        let next = replica.ready();
        replica
            .advance(next)
            .expect("its own ready, acknowledged in order");
    }
    replica.tick();
    assert_eq!(
        commands(&replica, &ready),
        first,
        "chosen entries never change"
    );
    // Each slot is handed out once: later readies hand out only later slots.
    replica.propose(Bytes::from_static(b"e")).unwrap();
    while replica.has_ready() {
        let later = replica.ready();
        assert!(later.committed_slots().all(|slot| slot > before + 3));
        assert!(replica
            .committed(&later)
            .all(|entry| entry.slot > before + 3));
        replica
            .advance(later)
            .expect("its own ready, acknowledged in order");
    }
    // Compacting part of the range skips those slots; compacting all of it leaves nothing.
    replica
        .compact(before + 2)
        .expect("compacting at or below the applied mark");
    assert_eq!(commands(&replica, &ready), first[2..]);
    replica
        .compact(before + 3)
        .expect("compacting at or below the applied mark");
    assert!(replica.committed(&ready).next().is_none());
}

#[test]
fn writes_must_be_acknowledged_in_order() {
    let mut replica = Replica::new(common::config(1, 3), Recovered::default()).unwrap();
    let first = replica.ready();
    let _second = replica.ready();
    replica
        .on_persisted(2)
        .expect("a number handed out, acknowledged in order");
    assert_eq!(
        replica.on_persisted(first.number()),
        Err(AcknowledgeError::OutOfOrder {
            number: first.number(),
            acknowledged: 2
        })
    );
    assert_eq!(
        replica.on_persisted(2),
        Ok(()),
        "the same number again is fine"
    );
}

#[test]
fn promises_wait_for_the_write() {
    // Persistence before promise: Promise and Accepted only ever leave in the persisted list.
    let mut follower = Replica::new(common::config(2, 3), Recovered::default()).unwrap();
    let ready = follower.ready();
    follower
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let ballot = Ballot::new(1, NodeId(1));
    follower
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::Prepare {
                ballot,
                first_slot: 1,
                transfer: None,
            },
        })
        .unwrap();
    let mut ready = follower.ready();
    assert!(ready.take_messages().is_empty());
    assert_eq!(ready.persist().hard_state.unwrap().promised, ballot);
    assert!(ready.persist().must_sync);
    let after = ready.take_persisted_messages();
    assert!(matches!(
        after[..],
        [Message {
            body: Body::Promise { .. },
            ..
        }]
    ));
}

#[test]
fn new_leader_recovers_a_value_accepted_by_a_minority() {
    // Paxos Made Simple §2.2, P2c: a new leader proposes the highest-ballot value reported by a
    // quorum, so a value that may have been chosen is never replaced.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "precious");
    // n2 receives the Accept and durably accepts; n3 never does; the leader never hears back.
    net.drop_where(|message| message.to == NodeId(3));
    let accept = net
        .queue
        .iter()
        .position(is_accept)
        .expect("an Accept to n2");
    net.deliver(accept);
    net.drop_where(|message| matches!(message.body, Body::Accepted { .. }));
    net.queue.clear();
    net.crash(1);
    // n3, which never saw the value, becomes leader with n2's promise.
    net.elect(3);
    net.stabilize();
    for id in [2, 3] {
        assert_eq!(net.commands(id), vec!["precious"], "n{id}");
    }
    assert_eq!(
        net.applied(3).keys().copied().collect::<Vec<_>>(),
        vec![1],
        "same slot"
    );
}

#[test]
fn holes_become_noops_and_later_slots_keep_their_values() {
    // Paxos Made Simple §3: a new leader fills slots nobody reported with no-ops, and recovers
    // slots beyond the hole.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.replica_mut(1)
        .propose(Bytes::from_static(b"lost"))
        .unwrap();
    net.process(NodeId(1));
    net.queue.clear(); // the Accept for slot 2 is lost everywhere
    net.replica_mut(1)
        .propose(Bytes::from_static(b"kept"))
        .unwrap();
    net.process(NodeId(1));
    // Slot 3 reaches n2 only; acknowledgements are lost.
    net.drop_where(|message| message.to == NodeId(3));
    while let Some(index) = net.queue.iter().position(is_accept) {
        net.deliver(index);
    }
    net.queue.clear();
    net.crash(1);
    net.elect(3);
    net.stabilize();
    let applied = net.applied(3);
    assert_eq!(
        applied.get(&2),
        Some(&Value::Noop),
        "the hole is filled with a no-op"
    );
    assert!(matches!(applied.get(&3), Some(Value::Command { data, .. }) if &data[..] == b"kept"));
    net.restart(1);
    net.tick_all(5);
    net.assert_agreement();
    assert_eq!(net.commands(1), vec!["a", "kept"]);
}

#[test]
fn a_lost_accept_leaves_a_hole_not_a_stall() {
    // Per-slot acceptance: a follower accepts slot 3 though slot 2 never arrived; the leader
    // retransmits slot 2 and every slot is chosen.
    let mut net = Net::with(3, |config| config.accept_bytes_max = 1);
    net.elect(1);
    net.isolate(3);
    for command in ["s1", "s2", "s3"] {
        net.replica_mut(1).propose(Bytes::from(command)).unwrap();
    }
    net.process(NodeId(1));
    // Three Accepts (one slot each, accept_bytes_max = 1) to n2: lose the one for slot 2.
    let lost = net.drop_where(|message| {
        matches!(&message.body, Body::Accept { entries, .. } if entries.first().map(|e| e.slot) == Some(2))
    });
    assert_eq!(lost, 1);
    net.stabilize();
    assert_eq!(
        net.replica(1).status().chosen,
        1,
        "slot 2 is a hole at the only live follower"
    );
    let stored = net.nodes[&NodeId(2)].storage.clone().recover().unwrap();
    assert!(
        stored.entries.iter().any(|entry| entry.slot == 3),
        "slot 3 accepted despite the hole"
    );
    for _ in 0..10 {
        net.tick(1);
        net.tick(2);
        net.stabilize();
    }
    assert_eq!(net.commands(1), vec!["s1", "s2", "s3"]);
    assert_eq!(net.commands(2), vec!["s1", "s2", "s3"]);
}

#[test]
fn duplicated_and_reordered_messages_change_nothing() {
    let mut net = Net::new(3);
    net.elect(2);
    for round in 0..20 {
        net.replica_mut(2)
            .propose(Bytes::from(format!("c{round}")))
            .unwrap();
        net.process(NodeId(2));
        // Duplicate everything, then deliver newest first.
        let copies = net.queue.clone();
        net.queue.extend(copies);
        while !net.queue.is_empty() {
            let last = net.queue.len() - 1;
            net.deliver(last);
        }
    }
    net.tick_all(3);
    let expected: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for id in 1..=3 {
        assert_eq!(net.commands(id), expected, "n{id}");
    }
}

#[test]
fn dueling_proposers_converge_on_one_leader() {
    // Paxos Made Simple §3: two proposers preempting each other can stall progress; randomized
    // timeouts and Reject-driven step-down make one of them win, and values stay agreed.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "before");
    net.stabilize();
    net.isolate(1);
    net.crash(1);
    // n2 and n3 time out together and campaign with interleaved messages.
    for _ in 0..40 {
        net.tick(2);
        net.tick(3);
        // Deliver in alternating order to mix the two elections.
        while !net.queue.is_empty() {
            let index = net.queue.len() / 2;
            net.deliver(index);
        }
        if net.leader().is_some() {
            break;
        }
    }
    let leader = net.leader().expect("one proposer wins");
    net.heal();
    net.restart(1);
    net.propose(leader.0, "after");
    net.tick_all(5);
    for id in 1..=3 {
        assert_eq!(net.commands(id), vec!["before", "after"], "n{id}");
    }
}

#[test]
fn a_preempted_leader_steps_down_on_reject() {
    // Without check-quorum the isolated old leader keeps its role; the first Reject ends it.
    let mut net = Net::with(3, |config| config.check_quorum = false);
    net.elect(1);
    net.isolate(1);
    net.elect(2);
    net.heal();
    net.propose(1, "stale");
    net.stabilize();
    assert_eq!(net.replica(1).role(), Role::Follower);
    assert!(net.nodes[&NodeId(1)].events.iter().any(|event| matches!(
        event,
        Event::SteppedDown {
            reason: StepDownReason::Preempted,
            ..
        }
    )));
    assert!(
        net.commands(2).is_empty(),
        "the stale leader's proposal was not chosen in its ballot"
    );
}

#[test]
fn partitioned_leader_steps_down_and_nothing_is_lost() {
    let mut net = Net::new(5);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, &format!("a{i}"));
    }
    net.stabilize();
    net.isolate(1);
    // The old leader keeps accepting proposals it cannot commit.
    net.propose(1, "orphan");
    // Check-quorum: within election_ticks without hearing a quorum it steps down.
    for _ in 0..25 {
        net.tick(1);
    }
    assert_eq!(net.replica(1).role(), Role::Follower);
    assert!(net.nodes[&NodeId(1)].events.iter().any(|event| matches!(
        event,
        Event::SteppedDown {
            reason: StepDownReason::LostQuorum,
            ..
        }
    )));
    net.elect(2);
    for i in 0..5 {
        net.propose(2, &format!("b{i}"));
    }
    net.stabilize();
    net.heal();
    net.tick_all(20);
    let expected: Vec<String> = (0..5)
        .map(|i| format!("a{i}"))
        .chain((0..5).map(|i| format!("b{i}")))
        .collect();
    for id in 1..=5 {
        assert_eq!(net.commands(id), expected, "n{id}");
    }
    net.assert_agreement();
}

#[test]
fn a_cut_off_replica_does_not_depose_the_leader_when_it_returns() {
    // Pre-vote and leader stickiness: the returning node's elections never raised its ballot.
    let mut net = Net::new(3);
    net.elect(1);
    let ballot = net.replica(1).status().promised;
    net.isolate(3);
    for _ in 0..200 {
        net.tick(1);
        net.tick(2);
        net.tick(3);
        net.stabilize();
    }
    assert_eq!(
        net.replica(3).status().promised,
        ballot,
        "pre-votes changed no promise"
    );
    net.heal();
    net.propose(1, "x");
    net.tick_all(30);
    assert_eq!(net.leader(), Some(NodeId(1)));
    assert_eq!(net.replica(1).status().promised, ballot, "same leadership");
    assert_eq!(net.replica(3).leader(), Some(NodeId(1)));
    assert_eq!(net.commands(3), vec!["x"]);
}

#[test]
fn a_replica_restarts_from_its_storage() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..10 {
        net.propose(1, &format!("c{i}"));
    }
    net.stabilize();
    let before = net.replica(2).status();
    net.crash(2);
    for i in 10..20 {
        net.propose(1, &format!("c{i}"));
    }
    net.stabilize();
    net.restart(2);
    let after = net.replica(2).status();
    assert_eq!(
        after.promised, before.promised,
        "the promise survives the restart"
    );
    assert_eq!(
        after.chosen, before.chosen,
        "the chosen mark survives the restart"
    );
    assert_eq!(after.incarnation, before.incarnation + 1);
    net.tick_all(10);
    let expected: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    assert_eq!(
        net.commands(2),
        expected,
        "caught up by fetching chosen entries"
    );
}

#[test]
fn a_restarted_leader_never_reuses_proposal_ids() {
    let mut net = Net::new(1);
    net.elect(1);
    let first = net.propose(1, "a");
    net.crash(1);
    net.restart(1);
    net.elect(1);
    let second = net.propose(1, "b");
    assert_ne!(first, second);
    assert!(second.incarnation > first.incarnation);
}

#[test]
fn busy_past_the_uncommitted_backlog_hands_the_command_back() {
    let mut net = Net::with(3, |config| {
        config.uncommitted_bytes_max = 100;
        config.uncommitted_entries_max = 1000;
    });
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    let mut accepted = 0;
    let error = loop {
        match net.replica_mut(1).propose(Bytes::from(vec![7u8; 10])) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted <= 10, "the bound must hold");
    };
    assert_eq!(accepted, 10);
    assert_eq!(
        error,
        ProposeError::Busy {
            command: Bytes::from(vec![7u8; 10])
        }
    );
    // Entry-count bound too.
    let mut net = Net::with(3, |config| config.uncommitted_entries_max = 3);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    for _ in 0..3 {
        net.replica_mut(1)
            .propose(Bytes::from_static(b"x"))
            .unwrap();
    }
    assert!(matches!(
        net.replica_mut(1).propose(Bytes::from_static(b"y")),
        Err(ProposeError::Busy { .. })
    ));
}

#[test]
fn not_leader_carries_the_right_hint_and_the_command() {
    let mut net = Net::with(3, |config| config.forward_proposals = false);
    let command = Bytes::from_static(b"c");
    match net.replica_mut(2).propose(command.clone()) {
        Err(ProposeError::NotLeader {
            hint: None,
            command: back,
        }) => assert_eq!(back, command),
        other => panic!("before any election: {other:?}"),
    }
    net.elect(3);
    match net.replica_mut(2).propose(command.clone()) {
        Err(ProposeError::NotLeader {
            hint,
            command: back,
        }) => {
            assert_eq!(hint, Some(NodeId(3)));
            assert_eq!(back, command);
        }
        other => panic!("expected NotLeader: {other:?}"),
    }
}

#[test]
fn followers_forward_proposals_to_the_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    let id = net.propose(2, "via follower");
    net.stabilize();
    assert_eq!(id.node, NodeId(2));
    for node in 1..=3 {
        assert_eq!(net.commands(node), vec!["via follower"]);
    }
    let committed = net.applied(2).values().find_map(|value| match value {
        Value::Command { id, .. } => Some(*id),
        _ => None,
    });
    assert_eq!(
        committed,
        Some(id),
        "the proposer can match its command by id"
    );
}

#[test]
fn followers_learn_the_chosen_mark_without_waiting_for_new_proposals() {
    // The chosen mark travels at once in a Commit, so a single in-flight proposal applies on
    // every replica within one round trip plus one message.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "only");
    net.stabilize();
    for id in 1..=3 {
        assert_eq!(net.commands(id), vec!["only"], "n{id}");
    }
    assert!(net
        .sent
        .iter()
        .any(|message| matches!(message.body, Body::Commit { .. })));
}

#[test]
fn bad_input_is_refused_without_changing_state() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "x");
    net.stabilize();
    let replica = net.replica_mut(2);
    let before = replica.status();
    let ballot = Ballot::new(99, NodeId(1));
    let entry = |slot| Entry {
        slot,
        ballot,
        value: Value::Noop,
    };
    let cases = [
        (
            Message {
                // A reply: only members are asked (a leader's or a candidate's message from an
                // unknown node is taken, as a membership this replica has not learned may
                // include it).
                from: NodeId(9),
                to: NodeId(2),
                body: Body::HeartbeatReply {
                    ballot,
                    chosen: 1,
                    read: 0,
                },
            },
            "unknown node",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(3),
                body: Body::Heartbeat {
                    ballot,
                    chosen: 1,
                    read: 0,
                },
            },
            "wrong recipient",
        ),
        (
            Message {
                from: NodeId(3),
                to: NodeId(2),
                body: Body::Heartbeat {
                    ballot,
                    chosen: 1,
                    read: 0,
                },
            },
            "ballot of another node",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Accept {
                    ballot,
                    chosen: 0,
                    entries: vec![entry(5), entry(7)].into(),
                },
            },
            "gap in Accept",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Accept {
                    ballot,
                    chosen: 0,
                    entries: vec![Entry {
                        slot: 5,
                        ballot: Ballot::new(1, NodeId(1)),
                        value: Value::Noop,
                    }]
                    .into(),
                },
            },
            "entry ballot differs",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Accept {
                    ballot,
                    chosen: 0,
                    entries: vec![entry(0)].into(),
                },
            },
            "slot zero",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Accepted {
                    ballot,
                    first_slot: 9,
                    last_slot: 3,
                },
            },
            "inverted range",
        ),
        (
            Message {
                from: NodeId(3),
                to: NodeId(2),
                body: Body::Promise {
                    ballot,
                    first_slot: 4,
                    accepted: vec![entry(2)],
                    chosen: 0,
                    next_slot: None,
                },
            },
            "promise below first slot",
        ),
        (
            Message {
                from: NodeId(2),
                to: NodeId(2),
                body: Body::Forward { commands: vec![] },
            },
            "from itself",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::FetchReply {
                    ballot,
                    entries: vec![entry(2), entry(4)],
                    chosen: 4,
                },
            },
            "gap in FetchReply",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::FetchReply {
                    ballot,
                    entries: vec![entry(0), entry(1)],
                    chosen: 1,
                },
            },
            "slot zero in FetchReply",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Accept {
                    ballot,
                    chosen: 0,
                    entries: vec![entry(u64::MAX), entry(0)].into(),
                },
            },
            "Accept wrapping past the last slot",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::FetchReply {
                    ballot,
                    entries: vec![entry(u64::MAX), entry(0)],
                    chosen: 1,
                },
            },
            "FetchReply wrapping past the last slot",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::PreVote {
                    ballot: Ballot::new(u64::MAX, NodeId(1)),
                    chosen: 0,
                },
            },
            "round beyond SLOT_OR_ROUND_MAX (a campaign would overflow it)",
        ),
        (
            Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Commit {
                    ballot,
                    chosen: synod::replica::SLOT_OR_ROUND_MAX + 1,
                },
            },
            "chosen mark beyond SLOT_OR_ROUND_MAX",
        ),
    ];
    let refused = cases.len() as u64;
    for (message, case) in cases {
        let error = replica.step(message).expect_err(case);
        match (case, &error) {
            ("unknown node", StepError::UnknownNode(NodeId(9)))
            | ("wrong recipient", StepError::WrongRecipient { .. }) => {}
            (_, StepError::Malformed { .. })
                if case != "unknown node" && case != "wrong recipient" => {}
            _ => panic!("{case}: unexpected {error:?}"),
        }
        assert!(
            !replica.has_ready() || replica.status().dropped_messages > 0,
            "{case}"
        );
    }
    let mut after = replica.status();
    assert_eq!(after.dropped_messages, before.dropped_messages + refused);
    after.dropped_messages = before.dropped_messages;
    assert_eq!(after, before, "refused input changed nothing");
}

#[test]
fn a_lagging_replica_fetches_chosen_entries() {
    let mut net = Net::with(3, |config| config.fetch_bytes_max = 8);
    net.elect(1);
    net.isolate(3);
    for i in 0..30 {
        net.propose(1, &format!("c{i:02}"));
    }
    net.stabilize();
    net.heal();
    net.tick_all(10);
    let expected: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
    assert_eq!(net.commands(3), expected);
    let fetches = net
        .sent
        .iter()
        .filter(|message| matches!(message.body, Body::Fetch { .. }))
        .count();
    assert!(
        fetches >= 2,
        "small fetch_bytes_max makes the catch-up take several round trips: {fetches}"
    );
}

#[test]
fn an_acceptor_never_accepts_below_its_promise() {
    // Paxos Made Simple §2.2, P1a.
    let mut replica = Replica::new(common::config(2, 3), Recovered::default()).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let high = Ballot::new(5, NodeId(3));
    let low = Ballot::new(4, NodeId(1));
    replica
        .step(Message {
            from: NodeId(3),
            to: NodeId(2),
            body: Body::Prepare {
                ballot: high,
                first_slot: 1,
                transfer: None,
            },
        })
        .unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let entries = vec![Entry {
        slot: 1,
        ballot: low,
        value: Value::Noop,
    }];
    replica
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::Accept {
                ballot: low,
                chosen: 0,
                entries: entries.into(),
            },
        })
        .unwrap();
    let mut ready = replica.ready();
    assert!(
        ready.persist().entries().next().is_none(),
        "nothing accepted"
    );
    let replies = ready.take_messages();
    assert_eq!(
        replies,
        vec![Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Reject {
                ballot: low,
                promised: high
            }
        }]
    );
    assert!(ready.take_persisted_messages().is_empty());
}

#[test]
fn an_acceptor_reports_its_highest_ballot_values_in_a_promise() {
    // Paxos Made Simple §2.2, phase 1b: the promise carries the accepted proposals.
    let mut replica = Replica::new(common::config(2, 3), Recovered::default()).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let first = Ballot::new(1, NodeId(1));
    let data = Bytes::from_static(b"v");
    let value = Value::Command {
        id: Default::default(),
        data,
    };
    let entries = vec![Entry {
        slot: 1,
        ballot: first,
        value: value.clone(),
    }];
    replica
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::Accept {
                ballot: first,
                chosen: 0,
                entries: entries.into(),
            },
        })
        .unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let second = Ballot::new(2, NodeId(3));
    replica
        .step(Message {
            from: NodeId(3),
            to: NodeId(2),
            body: Body::Prepare {
                ballot: second,
                first_slot: 1,
                transfer: None,
            },
        })
        .ok();
    // Stickiness: n2 heard from n1 just now, so it ignores the Prepare...
    assert!(!replica.has_ready() || replica.ready().take_persisted_messages().is_empty());
    // ...until the leader has been silent for a whole election timeout.
    for _ in 0..replica.config().election_ticks {
        replica.tick();
    }
    while replica.has_ready() {
        let ready = replica.ready();
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
    replica
        .step(Message {
            from: NodeId(3),
            to: NodeId(2),
            body: Body::Prepare {
                ballot: second,
                first_slot: 1,
                transfer: None,
            },
        })
        .unwrap();
    let mut ready = replica.ready();
    let promise = ready.take_persisted_messages();
    match &promise[..] {
        [Message {
            body: Body::Promise {
                ballot, accepted, ..
            },
            ..
        }] => {
            assert_eq!(*ballot, second);
            assert_eq!(
                accepted,
                &vec![Entry {
                    slot: 1,
                    ballot: first,
                    value
                }]
            );
        }
        other => panic!("expected one promise: {other:?}"),
    }
}

#[test]
fn the_window_bounds_messages_and_bytes_in_flight_per_follower() {
    let mut net = Net::with(3, |config| {
        config.inflight_msgs_max = 3;
        config.accept_bytes_max = 10;
        config.inflight_bytes_max = 25;
    });
    net.elect(1);
    net.isolate(3);
    net.sent.clear();
    for _ in 0..50 {
        net.replica_mut(1)
            .propose(Bytes::from(vec![1u8; 10]))
            .unwrap();
    }
    net.process(NodeId(1));
    let to_three: Vec<&Message> = net
        .sent
        .iter()
        .filter(|message| message.to == NodeId(3) && is_accept(message))
        .collect();
    assert_eq!(
        to_three.len(),
        3,
        "the byte window (25) admits three 10-byte Accepts"
    );
    for message in &to_three {
        if let Body::Accept { entries, .. } = &message.body {
            assert_eq!(
                entries.len(),
                1,
                "accept_bytes_max = 10 fits one 10-byte command"
            );
        }
    }
    let status = net.replica(1).status();
    let three = status
        .followers
        .iter()
        .find(|follower| follower.id == NodeId(3))
        .unwrap();
    assert_eq!(three.inflight_msgs, 3);
    assert_eq!(three.inflight_bytes, 30);
    // The healthy follower's window drains as it acknowledges: everything commits.
    net.stabilize();
    assert_eq!(net.commands(2).len(), 50);
}

#[test]
fn a_restarted_leader_may_campaign_at_once_among_its_own_followers() {
    // Stickiness protects a live leader from others; a campaign by the leader itself (it
    // restarted) is not held against it by the followers that still trust it.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.crash(1);
    net.restart(1);
    for _ in 0..100 {
        if net.replica(1).is_leader() {
            break;
        }
        net.tick(1); // only n1's clock moves: n2 and n3 still trust n1 as leader
        net.stabilize();
    }
    assert!(net.replica(1).is_leader());
    net.propose(1, "b");
    net.stabilize();
    assert_eq!(net.commands(2), vec!["a", "b"]);
}

#[test]
fn campaign_starts_an_election_at_once_but_respects_a_live_leader() {
    let mut net = Net::new(3);
    net.replica_mut(2).campaign();
    net.process(NodeId(2));
    net.stabilize();
    assert_eq!(net.leader(), Some(NodeId(2)), "no timeout needed");
    // n3 campaigning while n2 leads and is heard: pre-votes are denied, nothing changes.
    let ballot = net.replica(2).status().promised;
    net.replica_mut(3).campaign();
    net.process(NodeId(3));
    net.stabilize();
    assert_eq!(net.leader(), Some(NodeId(2)));
    assert_eq!(net.replica(1).status().promised, ballot);
}

#[test]
fn a_duplicated_forward_is_proposed_once() {
    let mut net = Net::new(3);
    net.elect(1);
    net.replica_mut(2)
        .propose(Bytes::from_static(b"once"))
        .unwrap();
    net.process(NodeId(2));
    let forward = net
        .queue
        .iter()
        .find(|message| matches!(message.body, Body::Forward { .. }))
        .cloned()
        .expect("a forward");
    net.queue.push(forward.clone());
    net.queue.push(forward);
    let dropped = net.replica(1).status().dropped_messages;
    net.stabilize();
    for id in 1..=3 {
        assert_eq!(net.commands(id), vec!["once"], "n{id}");
    }
    // Every refused copy is counted, so an operator sees it.
    assert_eq!(net.replica(1).status().dropped_messages, dropped + 2);
}

#[test]
fn replicas_clone_compare_and_hash_by_their_whole_state() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    let hash = |replica: &Replica| {
        let mut hasher = DefaultHasher::new();
        replica.hash(&mut hasher);
        hasher.finish()
    };
    let mut net = Net::new(3);
    net.elect(1);
    let original = net.replica(2).clone();
    let mut fork = original.clone();
    assert_eq!(fork, original);
    assert_eq!(hash(&fork), hash(&original));
    assert_eq!(original.id(), NodeId(2));
    fork.tick();
    assert_ne!(fork, original, "time is state");
    assert_ne!(hash(&fork), hash(&original), "different states hash apart");
    let mut other = original.clone();
    other.tick();
    assert_eq!(fork, other, "same inputs, same state (determinism)");
    assert_eq!(hash(&fork), hash(&other));
}
