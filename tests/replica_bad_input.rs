//! Bad input never panics: three replicas run a normal schedule (ticks, proposals, deliveries)
//! while arbitrary messages, with numbers drawn from the edges (0, 1, `SLOT_OR_ROUND_MAX` and
//! around it, `u64::MAX`), senders and recipients that are wrong, unknown or forged, are stepped
//! into them. Every `step` must return `Ok` or an error, and every Ready loop must run to the
//! end; nothing else is checked (forged messages may legitimately break agreement: Paxos trusts
//! its members, `tests/replica_props.rs` checks agreement under honest schedules).
//!
//! Promises report entries at edge slots too, scattered with holes: a new leader fills the
//! slots no promise reports with no-ops, and `step` refuses a Promise leaving more holes than
//! `Config::accept_lookahead_slots_max` (16 here), so one report at a huge slot
//! cannot make it fill billions (`a_promise_leaving_more_holes_than_the_lookahead_is_refused`
//! in `tests/replica_rules.rs` pins that rule).

mod bad_input_cluster;

use bad_input_cluster::Cluster;
use bytes::Bytes;
use proptest::prelude::*;
use synod::message::{Body, Command, Message};
use synod::replica::SLOT_OR_ROUND_MAX;
use synod::{Ballot, Config, Entries, Entry, NodeId, ProposalId, Recovered, Replica, Slot, Value};

/// A number from the edges, or a small one.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..12u64,
        1 => Just(SLOT_OR_ROUND_MAX - 1),
        1 => Just(SLOT_OR_ROUND_MAX),
        1 => Just(SLOT_OR_ROUND_MAX + 1),
        1 => Just(u64::MAX - 1),
        1 => Just(u64::MAX),
    ]
}

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![4 => (1..=3u64).prop_map(NodeId), 1 => Just(NodeId(0)), 1 => Just(NodeId(9))]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (number(), node()).prop_map(|(round, node)| Ballot::new(round, node))
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Noop),
        (node(), 0..3u64, 0..5u64).prop_map(|(node, incarnation, sequence)| Value::Command {
            id: ProposalId {
                node,
                incarnation,
                sequence,
            },
            data: Bytes::from_static(b"x"),
        }),
    ]
}

/// `count` entries from `first`, consecutive unless `scatter`, in `ballot` unless `mixed`.
fn entries(first: Slot, count: usize, ballot: Ballot, scatter: bool, value: Value) -> Vec<Entry> {
    (0..count as u64)
        .map(|offset| Entry {
            slot: if scatter {
                first.wrapping_add(offset * 3)
            } else {
                first.wrapping_add(offset)
            },
            ballot,
            value: value.clone(),
        })
        .collect()
}

fn body() -> impl Strategy<Value = Body> {
    let run = || (number(), 0..4usize, ballot(), any::<bool>(), value());
    prop_oneof![
        (ballot(), number()).prop_map(|(ballot, chosen)| Body::PreVote { ballot, chosen }),
        (ballot(), any::<bool>(), ballot(), number()).prop_map(
            |(ballot, granted, promised, chosen)| Body::PreVoteReply {
                ballot,
                granted,
                promised,
                chosen,
            },
        ),
        (ballot(), number(), proptest::option::of(ballot())).prop_map(
            |(ballot, first_slot, transfer)| {
                Body::Prepare {
                    ballot,
                    first_slot,
                    transfer,
                }
            }
        ),
        ballot().prop_map(|ballot| Body::TimeoutNow { ballot }),
        (ballot(), number(), run(), number()).prop_map(
            |(ballot, first_slot, (first, count, accepted_in, scatter, value), chosen)| {
                Body::Promise {
                    ballot,
                    first_slot,
                    accepted: entries(first, count, accepted_in, scatter, value),
                    chosen,
                    next_slot: None,
                }
            }
        ),
        (ballot(), number(), run()).prop_map(
            |(ballot, chosen, (first, count, _, scatter, value))| Body::Accept {
                ballot,
                chosen,
                entries: Entries::from(entries(first, count, ballot, scatter, value)),
            }
        ),
        (ballot(), number(), number()).prop_map(|(ballot, first_slot, last_slot)| {
            Body::Accepted {
                ballot,
                first_slot,
                last_slot,
            }
        }),
        (ballot(), ballot()).prop_map(|(ballot, promised)| Body::Reject { ballot, promised }),
        (ballot(), number(), number()).prop_map(|(ballot, chosen, read)| Body::Heartbeat {
            ballot,
            chosen,
            read
        }),
        (ballot(), number(), number()).prop_map(|(ballot, chosen, read)| {
            Body::HeartbeatReply {
                ballot,
                chosen,
                read,
            }
        }),
        (ballot(), number()).prop_map(|(ballot, chosen)| Body::Commit { ballot, chosen }),
        (ballot(), number()).prop_map(|(ballot, first_slot)| Body::Fetch { ballot, first_slot }),
        (ballot(), number(), run()).prop_map(
            |(ballot, chosen, (first, count, entry_ballot, scatter, value))| Body::FetchReply {
                ballot,
                entries: entries(first, count, entry_ballot, scatter, value),
                chosen,
            }
        ),
        (number(), number())
            .prop_map(|(incarnation, round)| Body::ReadIndex { incarnation, round }),
        (number(), number(), proptest::option::of(number())).prop_map(
            |(incarnation, round, slot)| Body::ReadIndexReply {
                incarnation,
                round,
                slot,
            }
        ),
        (node(), 0..3u64, 0..5u64).prop_map(|(node, incarnation, sequence)| Body::Forward {
            commands: vec![Command {
                id: ProposalId {
                    node,
                    incarnation,
                    sequence,
                },
                data: Bytes::from_static(b"f"),
            }],
        }),
        (number(), 0..12u64, 0..24u64, number()).prop_map(
            |(slot, offset, total, membership_slot)| Body::Snapshot {
                slot,
                offset,
                total,
                data: Bytes::from_static(b"snapshot"),
                membership: Box::new(synod::MembershipAt {
                    slot: membership_slot,
                    membership: synod::Membership::new([NodeId(1), NodeId(2), NodeId(3)], []),
                }),
            }
        ),
        (number(), number()).prop_map(|(slot, received)| Body::SnapshotAck { slot, received }),
    ]
}

#[derive(Clone, Debug)]
enum Action {
    Inject(NodeId, NodeId, Body),
    Deliver(usize),
    Tick(usize),
    Propose(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (node(), node(), body()).prop_map(|(from, to, body)| Action::Inject(from, to, body)),
        6 => any::<usize>().prop_map(Action::Deliver),
        3 => (0..3usize).prop_map(Action::Tick),
        2 => (0..3usize).prop_map(Action::Propose),
    ]
}

fn run(actions: Vec<Action>) {
    let mut cluster = Cluster::new();
    for action in actions {
        match action {
            Action::Inject(from, to, body) => cluster.step(Message { from, to, body }),
            Action::Deliver(index) if !cluster.queue.is_empty() => {
                let message = cluster.queue.remove(index % cluster.queue.len());
                cluster.step(message);
            }
            Action::Deliver(_) => {}
            Action::Tick(index) => {
                cluster.replicas[index].tick();
                cluster.drain(index);
            }
            Action::Propose(index) => {
                let _ = cluster.replicas[index].propose(Bytes::from_static(b"p"));
                cluster.drain(index);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_messages_never_panic_a_replica(actions in proptest::collection::vec(action(), 1..300)) {
        run(actions);
    }
}

#[test]
fn every_slot_and_round_field_is_bounded() {
    // Each number a message carries, set just beyond SLOT_OR_ROUND_MAX, makes the message
    // malformed, whatever field it is in; the same message with the number at the bound is not
    // refused for it.
    let ballot_of = |round: u64| Ballot::new(round, NodeId(1));
    let run = |first: u64, round: u64| {
        vec![Entry {
            slot: first,
            ballot: ballot_of(round),
            value: Value::Noop,
        }]
    };
    let bodies = |n: u64| -> Vec<(&'static str, Body)> {
        vec![
            (
                "PreVote round",
                Body::PreVote {
                    ballot: ballot_of(n),
                    chosen: 0,
                },
            ),
            (
                "PreVote chosen",
                Body::PreVote {
                    ballot: ballot_of(1),
                    chosen: n,
                },
            ),
            (
                "PreVoteReply round",
                Body::PreVoteReply {
                    ballot: ballot_of(n),
                    granted: false,
                    promised: ballot_of(1),
                    chosen: 0,
                },
            ),
            (
                "PreVoteReply promised",
                Body::PreVoteReply {
                    ballot: ballot_of(1),
                    granted: false,
                    promised: ballot_of(n),
                    chosen: 0,
                },
            ),
            (
                "PreVoteReply chosen",
                Body::PreVoteReply {
                    ballot: ballot_of(1),
                    granted: false,
                    promised: ballot_of(1),
                    chosen: n,
                },
            ),
            (
                "Prepare round",
                Body::Prepare {
                    ballot: ballot_of(n),
                    first_slot: 1,
                    transfer: None,
                },
            ),
            (
                "Prepare first_slot",
                Body::Prepare {
                    ballot: ballot_of(1),
                    first_slot: n,
                    transfer: None,
                },
            ),
            (
                "Promise round",
                Body::Promise {
                    ballot: ballot_of(n),
                    first_slot: 1,
                    accepted: vec![],
                    chosen: 0,
                    next_slot: None,
                },
            ),
            (
                "Promise first_slot",
                Body::Promise {
                    ballot: ballot_of(1),
                    first_slot: n,
                    accepted: vec![],
                    chosen: 0,
                    next_slot: None,
                },
            ),
            (
                "Promise chosen",
                Body::Promise {
                    ballot: ballot_of(1),
                    first_slot: 1,
                    accepted: vec![],
                    chosen: n,
                    next_slot: None,
                },
            ),
            (
                "Promise entry slot",
                Body::Promise {
                    ballot: ballot_of(1),
                    first_slot: n - 1,
                    accepted: run(n, 1),
                    chosen: 0,
                    next_slot: None,
                },
            ),
            (
                "Promise entry round",
                Body::Promise {
                    ballot: ballot_of(1),
                    first_slot: 1,
                    accepted: run(1, n),
                    chosen: 0,
                    next_slot: None,
                },
            ),
            (
                "Accept round",
                Body::Accept {
                    ballot: ballot_of(n),
                    chosen: 0,
                    entries: Entries::new(),
                },
            ),
            (
                "Accept chosen",
                Body::Accept {
                    ballot: ballot_of(1),
                    chosen: n,
                    entries: Entries::new(),
                },
            ),
            (
                "Accept entry slot",
                Body::Accept {
                    ballot: ballot_of(1),
                    chosen: 0,
                    entries: run(n, 1).into(),
                },
            ),
            (
                "Accepted round",
                Body::Accepted {
                    ballot: ballot_of(n),
                    first_slot: 1,
                    last_slot: 1,
                },
            ),
            (
                "Accepted last_slot",
                Body::Accepted {
                    ballot: ballot_of(1),
                    first_slot: 1,
                    last_slot: n,
                },
            ),
            (
                "Reject round",
                Body::Reject {
                    ballot: ballot_of(n),
                    promised: ballot_of(1),
                },
            ),
            (
                "Reject promised",
                Body::Reject {
                    ballot: ballot_of(1),
                    promised: ballot_of(n),
                },
            ),
            (
                "TimeoutNow round",
                Body::TimeoutNow {
                    ballot: ballot_of(n),
                },
            ),
            (
                "Heartbeat round",
                Body::Heartbeat {
                    ballot: ballot_of(n),
                    chosen: 0,
                    read: 0,
                },
            ),
            (
                "Heartbeat chosen",
                Body::Heartbeat {
                    ballot: ballot_of(1),
                    chosen: n,
                    read: 0,
                },
            ),
            (
                "HeartbeatReply chosen",
                Body::HeartbeatReply {
                    ballot: ballot_of(1),
                    chosen: n,
                    read: 0,
                },
            ),
            (
                "ReadIndex incarnation",
                Body::ReadIndex {
                    incarnation: n,
                    round: 1,
                },
            ),
            (
                "ReadIndexReply slot",
                Body::ReadIndexReply {
                    incarnation: 1,
                    round: 1,
                    slot: Some(n),
                },
            ),
            (
                "Commit chosen",
                Body::Commit {
                    ballot: ballot_of(1),
                    chosen: n,
                },
            ),
            (
                "Fetch first_slot",
                Body::Fetch {
                    ballot: ballot_of(1),
                    first_slot: n,
                },
            ),
            (
                "FetchReply chosen",
                Body::FetchReply {
                    ballot: ballot_of(1),
                    entries: vec![],
                    chosen: n,
                },
            ),
            (
                "FetchReply entry slot",
                Body::FetchReply {
                    ballot: ballot_of(1),
                    entries: run(n, 1),
                    chosen: 0,
                },
            ),
            (
                "FetchReply entry round",
                Body::FetchReply {
                    ballot: ballot_of(1),
                    entries: run(1, n),
                    chosen: 0,
                },
            ),
            (
                "Snapshot slot",
                Body::Snapshot {
                    slot: n,
                    offset: 0,
                    total: 1,
                    data: Bytes::from_static(b"s"),
                    membership: Box::new(synod::MembershipAt {
                        slot: 0,
                        membership: synod::Membership::new([NodeId(1), NodeId(2), NodeId(3)], []),
                    }),
                },
            ),
            (
                "SnapshotAck slot",
                Body::SnapshotAck {
                    slot: n,
                    received: 0,
                },
            ),
        ]
    };
    let refused = |body: Body| {
        let mut replica = Replica::new(
            Config::new(NodeId(2), (1..=3).map(NodeId).collect()),
            Recovered::default(),
        )
        .unwrap();
        let message = Message {
            from: NodeId(1),
            to: NodeId(2),
            body,
        };
        matches!(
            replica.step(message),
            Err(synod::StepError::Malformed { reason, .. }) if reason.contains("SLOT_OR_ROUND_MAX")
        )
    };
    for ((field, beyond), (_, at)) in bodies(SLOT_OR_ROUND_MAX + 1)
        .into_iter()
        .zip(bodies(SLOT_OR_ROUND_MAX))
    {
        assert!(refused(beyond), "{field} beyond the bound was not refused");
        assert!(!refused(at), "{field} at the bound was refused for it");
    }
}
