//! Membership change: adding, removing, promoting and replacing members one change at a time,
//! and the two rules that keep it safe (nothing after a change until it is chosen; phase 1
//! stops at a change).

mod common;

use bytes::Bytes;
use common::Net;
use synod::message::Body;
use synod::replica::{Event, StepDownReason};
use synod::{Membership, MembershipError, NodeId, ProposeError, Value};

fn ids(list: &[u64]) -> Vec<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

fn voters(list: &[u64]) -> Membership {
    Membership::new(ids(list), [])
}

/// Proposes `membership` at `leader` and lets the network settle (with a few ticks, so that a
/// leader that must campaign again does).
fn change(net: &mut Net, leader: u64, membership: Membership) -> u64 {
    let slot = net
        .replica_mut(leader)
        .change_membership(membership)
        .expect("change accepted");
    net.process(NodeId(leader));
    net.stabilize();
    slot
}

/// The membership changes `id` reported, in order.
fn changes(net: &Net, id: u64) -> Vec<(u64, Membership)> {
    net.nodes[&NodeId(id)]
        .events
        .iter()
        .filter_map(|event| match event {
            Event::MembershipChanged { slot, membership } => Some((*slot, membership.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_learner_catches_up_and_a_promoted_learner_votes() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.join(4);
    assert_eq!(
        net.replica(4).membership(),
        None,
        "a joining node knows nothing"
    );
    assert!(!net.replica(4).is_voter());
    let learners = Membership::new(ids(&[1, 2, 3]), ids(&[4]));
    let slot = change(&mut net, 1, learners.clone());
    net.tick_all(3);
    for id in 1..=4 {
        assert_eq!(net.replica(id).membership(), Some(&learners), "n{id}");
        assert_eq!(changes(&net, id).last(), Some(&(slot, learners.clone())));
    }
    assert!(
        net.replica(1).is_leader(),
        "the leader stays a voter and is elected again"
    );
    net.propose(1, "b");
    net.stabilize();
    assert_eq!(net.commands(4), ["a", "b"], "the learner has every command");
    net.tick_all(2); // a heartbeat round: the leader learns the learner's chosen mark
    let status = net.replica(1).status();
    let learner = status.followers.iter().find(|f| f.id == NodeId(4)).unwrap();
    assert!(
        !learner.voter && learner.chosen == status.chosen,
        "{learner:?}"
    );
    assert!(status
        .followers
        .iter()
        .all(|follower| follower.voter == (follower.id != NodeId(4))));

    // A learner is not counted: with n2 and n3 cut off, nothing is chosen.
    net.isolate(2);
    net.isolate(3);
    let before = net.replica(1).status().chosen;
    net.replica_mut(1)
        .propose(Bytes::from_static(b"c"))
        .unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert_eq!(
        net.replica(1).status().chosen,
        before,
        "a learner made a quorum"
    );
    net.heal();
    net.tick_all(5);
    assert_eq!(net.commands(4), ["a", "b", "c"]);

    // Promoted, n4 counts: {1, 4} is not a majority of four voters, {1, 2, 4} is.
    let all = voters(&[1, 2, 3, 4]);
    let leader = net.leader().unwrap().0;
    change(&mut net, leader, all.clone());
    net.tick_all(3);
    assert_eq!(net.replica(4).membership(), Some(&all));
    assert!(net.replica(4).is_voter());
    let leader = net.leader().expect("a leader").0;
    let others: Vec<u64> = (1..=4).filter(|id| *id != leader).collect();
    net.isolate(others[0]);
    net.isolate(others[1]);
    let before = net.replica(leader).status().chosen;
    net.replica_mut(leader)
        .propose(Bytes::from_static(b"d"))
        .unwrap();
    net.process(NodeId(leader));
    net.stabilize();
    assert_eq!(
        net.replica(leader).status().chosen,
        before,
        "two of four voters chose"
    );
    net.heal();
    net.tick_all(5);
    assert!(net.commands(4).ends_with(&["d".to_string()]));
    net.assert_agreement();
}

#[test]
fn a_removed_follower_stops_counting_and_never_campaigns() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let two = voters(&[1, 2]);
    change(&mut net, 1, two.clone());
    net.tick_all(3);
    assert_eq!(net.replica(3).membership(), Some(&two));
    assert!(!net.replica(3).is_voter());
    assert!(net.replica(1).is_leader());
    // n3 no longer counts: without n2 nothing is chosen.
    net.isolate(2);
    let before = net.replica(1).status().chosen;
    net.replica_mut(1)
        .propose(Bytes::from_static(b"b"))
        .unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert_eq!(net.replica(1).status().chosen, before);
    net.heal();
    // The removed node, left alone, never starts an election.
    net.isolate(3);
    let elections = |net: &Net| {
        net.nodes[&NodeId(3)]
            .events
            .iter()
            .filter(|event| matches!(event, Event::ElectionStarted { .. }))
            .count()
    };
    let (started, sent) = (elections(&net), net.sent.len());
    for _ in 0..100 {
        net.tick(3);
    }
    assert_eq!(elections(&net), started);
    // All it sends is a hint to the voters, once per election timeout: how far it knows
    // the log chosen (a voter that missed the change would fetch from it).
    let from_n3: Vec<_> = net.sent[sent..]
        .iter()
        .filter(|message| message.from == NodeId(3))
        .collect();
    assert!(!from_n3.is_empty() && from_n3.len() <= 2 * 100 / 10);
    assert!(from_n3.iter().all(|message| matches!(
        &message.body,
        Body::FetchReply { entries, .. } if entries.is_empty()
    )));
    net.heal();
    net.tick_all(5);
    assert_eq!(net.commands(2), ["a", "b"]);
    net.assert_agreement();
}

#[test]
fn a_removed_leader_hands_over_at_once() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let slot = change(&mut net, 1, voters(&[2, 3]));
    // No tick: the handover needs no election timeout.
    let leader = net.leader().expect("a new leader without waiting");
    assert_ne!(leader, NodeId(1));
    assert!(net.nodes[&NodeId(1)].events.iter().any(|event| matches!(
        event,
        Event::SteppedDown {
            reason: StepDownReason::MembershipChanged,
            ..
        }
    )));
    assert!(!net.replica(1).is_voter());
    assert_eq!(changes(&net, 1), [(slot, voters(&[2, 3]))]);
    net.propose(leader.0, "b");
    net.stabilize();
    assert_eq!(net.commands(2), ["a", "b"]);
    assert_eq!(net.commands(3), ["a", "b"]);
    net.assert_agreement();
}

#[test]
fn a_node_is_replaced_in_one_change() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.join(4);
    let replaced = voters(&[1, 2, 4]);
    change(&mut net, 1, replaced.clone());
    net.tick_all(3);
    assert_eq!(net.replica(4).membership(), Some(&replaced));
    let leader = net.leader().unwrap().0;
    net.crash(3); // gone for good
    net.isolate(2); // and n2 out of reach: {1, 4} is the majority now
    net.propose(leader, "b");
    net.stabilize();
    assert_eq!(net.commands(4), ["a", "b"]);
    net.heal();
    net.tick_all(5);
    assert_eq!(net.commands(2), ["a", "b"]);
    net.assert_agreement();
}

#[test]
fn one_change_at_a_time_and_nothing_after_it_until_it_is_chosen() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    let slot = net
        .replica_mut(1)
        .change_membership(voters(&[1, 2]))
        .unwrap();
    assert_eq!(
        net.replica_mut(1).change_membership(voters(&[1, 3])),
        Err(MembershipError::InProgress { slot })
    );
    match net.replica_mut(1).propose(Bytes::from_static(b"x")) {
        Err(ProposeError::Busy { .. }) => {}
        other => panic!("a proposal after an unchosen change: {other:?}"),
    }
    assert!(matches!(
        net.replica_mut(2).change_membership(voters(&[1, 2])),
        Err(MembershipError::NotLeader { .. })
    ));
    assert!(matches!(
        net.replica_mut(1)
            .change_membership(Membership::new([], ids(&[1]))),
        Err(MembershipError::Invalid(_))
    ));
    net.process(NodeId(1));
    net.heal();
    net.tick_all(5);
    assert_eq!(net.replica(1).membership(), Some(&voters(&[1, 2])));
    net.propose(net.leader().unwrap().0, "x");
    net.stabilize();
    assert_eq!(net.commands(2), ["x"]);
    net.assert_agreement();
}

#[test]
fn a_change_to_the_same_membership_changes_nothing() {
    let mut net = Net::new(3);
    net.elect(1);
    change(&mut net, 1, voters(&[1, 2, 3]));
    assert!(net.replica(1).is_leader());
    assert!(changes(&net, 1).is_empty());
    net.propose(1, "a");
    net.stabilize();
    assert_eq!(net.commands(3), ["a"]);
}

#[test]
fn a_restarted_replica_recovers_its_membership() {
    let mut net = Net::new(3);
    net.elect(1);
    net.join(4);
    let four = voters(&[1, 2, 3, 4]);
    change(&mut net, 1, four.clone());
    net.tick_all(3);
    for id in [2, 4] {
        net.crash(id);
        net.restart(id);
        assert_eq!(net.replica(id).membership(), Some(&four), "n{id}");
    }
    // The stored membership wins over the configuration's member list.
    assert_eq!(net.nodes[&NodeId(2)].config.members, ids(&[1, 2, 3]));
    assert!(net.replica(4).is_voter());
    net.tick_all(5);
    let leader = net.leader().unwrap().0;
    net.propose(leader, "a");
    net.stabilize();
    assert_eq!(net.commands(4), ["a"]);
}

/// Phase 1 must stop at a change. n1 (leading {1, 2, 3}) gets a change to {1, 4, 5} chosen by
/// {1, 2}, campaigns again in the new membership and gets "x" chosen by {1, 4} at the next
/// slot. n3 never heard of any of it. If n3 now won phase 1 in {1, 2, 3} with n2 and went on
/// past the change, it would fill the slot after it with a no-op: "x" was chosen there by a
/// majority of the new membership that no member of the old one but n1 knows about.
#[test]
fn phase_one_stops_at_a_change() {
    let mut net = Net::new(3);
    net.elect(1);
    net.join(4);
    net.join(5);
    net.isolate(3);
    let new = voters(&[1, 4, 5]);
    let slot = net.replica_mut(1).change_membership(new.clone()).unwrap();
    net.process(NodeId(1));
    // n2 accepts the change (so it is chosen) but hears nothing after that.
    net.deliver_first(|message| {
        message.to == NodeId(2) && matches!(message.body, Body::Accept { .. })
    });
    net.deliver_first(|message| {
        message.to == NodeId(1) && matches!(message.body, Body::Accepted { .. })
    });
    assert_eq!(net.replica(1).membership(), Some(&new));
    net.isolate(2);
    net.stabilize();
    net.tick_all(1);
    assert!(net.replica(1).is_leader(), "n1 leads {{1, 4, 5}}");
    net.propose(1, "x");
    net.stabilize();
    let x_slot = net.replica(1).status().chosen;
    assert_eq!(x_slot, slot + 1);
    assert_eq!(net.commands(4), ["x"]);

    // Now n1, n4 and n5 go away, and n2 and n3 meet again.
    for id in [1, 4, 5] {
        net.crash(id);
    }
    net.heal();
    for id in [1, 4, 5] {
        net.isolate(id);
    }
    // Whichever of them wins phase 1 in the old membership recovers the change and takes no
    // proposal until it is chosen: the slot after it is not this membership's to fill.
    let mut refused = 0;
    let mut try_proposing = |net: &mut Net| {
        for id in [2, 3] {
            if net.replica(id).is_leader() {
                assert_eq!(net.replica(id).status().membership_pending, Some(slot));
                match net.replica_mut(id).propose(Bytes::from_static(b"z")) {
                    Err(ProposeError::Busy { .. }) => refused += 1,
                    other => panic!("n{id} proposed after an unchosen change: {other:?}"),
                }
            }
        }
    };
    for _ in 0..200 {
        for id in [3, 2] {
            net.tick(id);
        }
        // One message at a time, trying to propose after each.
        while !net.queue.is_empty() {
            net.deliver(0);
            try_proposing(&mut net);
        }
    }
    assert!(refused > 0, "n2 or n3 led the old membership");
    // It got the change chosen, adopted the new membership (in which neither votes) and
    // stopped: nothing was decided after the change.
    for id in [2, 3] {
        assert_eq!(net.replica(id).membership(), Some(&new), "n{id}");
        assert!(!net.replica(id).is_voter());
        assert!(
            !net.applied(id).contains_key(&x_slot),
            "n{id} decided the slot after the change without the new membership"
        );
    }
    // The new membership comes back and carries on; everyone agrees on "x".
    for id in [1, 4, 5] {
        net.restart(id);
    }
    net.heal();
    net.tick_all(30);
    let leader = net.leader().expect("the new membership elects").0;
    assert!([1, 4, 5].contains(&leader));
    net.propose(leader, "y");
    net.stabilize();
    net.tick_all(5);
    for id in [1, 4, 5] {
        assert_eq!(net.commands(id), ["x", "y"], "n{id}");
    }
    assert!(matches!(
        net.applied(2).get(&slot),
        Some(Value::Membership(_))
    ));
    net.assert_agreement();
}

#[test]
fn a_lagging_member_follows_a_leader_it_does_not_know() {
    // n3 misses the change that adds n4 and the handover to n4 when n1 removes itself.
    let mut net = Net::new(3);
    net.elect(1);
    net.join(4);
    net.isolate(3);
    change(&mut net, 1, voters(&[1, 2, 3, 4]));
    net.tick_all(2);
    let leader = net.leader().unwrap().0;
    change(&mut net, leader, voters(&[2, 3, 4]));
    net.tick_all(20);
    let leader = net.leader().unwrap();
    net.propose(leader.0, "a");
    net.stabilize();
    assert_eq!(net.replica(3).membership(), Some(&voters(&[1, 2, 3])));
    net.heal();
    net.isolate(1);
    net.tick_all(10);
    assert_eq!(net.replica(3).membership(), Some(&voters(&[2, 3, 4])));
    assert_eq!(net.commands(3), ["a"]);
    net.assert_agreement();
}

#[test]
fn a_single_voter_hands_the_cluster_to_a_new_node() {
    let mut net = Net::new(1);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.join(2);
    change(&mut net, 1, voters(&[2]));
    assert!(!net.replica(1).is_voter());
    net.tick_all(30);
    assert_eq!(net.leader(), Some(NodeId(2)));
    net.propose(2, "b");
    net.stabilize();
    assert_eq!(net.commands(2), ["a", "b"]);
}

#[test]
fn learners_and_joining_nodes_never_campaign() {
    let mut net = Net::new(3);
    net.elect(1);
    net.join(4);
    net.join(5);
    change(&mut net, 1, Membership::new(ids(&[1, 2, 3]), ids(&[4])));
    net.tick_all(2);
    assert!(!net.replica(4).is_voter() && net.replica(4).membership().is_some());
    assert_eq!(net.replica(5).membership(), None, "n5 was never added");
    for id in [4, 5] {
        net.isolate(id);
        let sent = net.sent.len();
        for _ in 0..100 {
            net.tick(id);
        }
        assert!(
            net.sent[sent..].iter().all(|message| !matches!(
                message.body,
                Body::PreVote { .. } | Body::Prepare { .. }
            )),
            "n{id} campaigned"
        );
        net.replica_mut(id).campaign();
        assert_eq!(net.replica(id).role(), synod::Role::Follower);
        net.heal();
    }
    assert_eq!(
        net.replica_mut(1).transfer_leadership(NodeId(4)),
        Err(synod::TransferError::UnknownNode(NodeId(4))),
        "a learner cannot lead"
    );
}

#[test]
fn a_learner_does_not_confirm_reads() {
    let mut net = Net::new(3);
    net.elect(1);
    net.join(4);
    change(&mut net, 1, Membership::new(ids(&[1, 2, 3]), ids(&[4])));
    net.tick_all(2);
    assert!(net.replica(1).is_leader());
    net.isolate(2);
    net.isolate(3);
    net.replica_mut(1).read_index(7).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(
        net.reads(1).iter().all(|(context, _)| *context != 7),
        "the leader and a learner confirmed a read"
    );
    net.heal();
    net.tick_all(3);
    assert!(
        net.reads(1)
            .iter()
            .any(|(context, slot)| *context == 7 && slot.is_some()),
        "confirmed once the voters answer: {:?}",
        net.reads(1)
    );
}

#[test]
fn a_node_added_behind_the_compaction_point_learns_the_membership_from_the_snapshot() {
    let mut net = Net::new(3);
    net.elect(1);
    for index in 0..5 {
        net.propose(1, &format!("c{index}"));
    }
    net.stabilize();
    net.tick_all(2);
    for id in 1..=3 {
        net.snapshot_and_compact(id);
    }
    net.join(4);
    let four = voters(&[1, 2, 3, 4]);
    change(&mut net, 1, four.clone());
    net.tick_all(5);
    assert_eq!(net.nodes[&NodeId(4)].snapshots_installed, 1);
    assert_eq!(net.replica(4).membership(), Some(&four));
    assert!(net.replica(4).is_voter());
    let leader = net.leader().unwrap().0;
    net.propose(leader, "after");
    net.stabilize();
    assert_eq!(net.commands(4).last().map(String::as_str), Some("after"));
    // Restarted from its snapshot, n4 keeps the membership.
    net.crash(4);
    net.restart(4);
    assert_eq!(net.replica(4).membership(), Some(&four));
    net.assert_agreement();
}

#[test]
fn an_accept_with_an_invalid_membership_is_refused() {
    let mut replica = common::started(2, 3);
    let ballot = synod::Ballot::new(1, NodeId(1));
    let before = replica.status();
    let error = replica
        .step(synod::Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::Accept {
                ballot,
                chosen: 0,
                entries: synod::Entries::one(synod::Entry {
                    slot: 1,
                    ballot,
                    value: Value::Membership(Box::new(Membership::new([], ids(&[1])))),
                }),
            },
        })
        .unwrap_err();
    assert!(
        matches!(error, synod::StepError::Malformed { .. }),
        "{error}"
    );
    let mut after = replica.status();
    after.dropped_messages -= 1;
    assert_eq!(after, before);
}

/// The leader removes itself while the only voter left missed the change: the nodes that know
/// it is chosen (the old leader, a learner now) refuse the laggard's pre-votes, as they refuse
/// anyone behind them, but their replies say how far they know the log chosen, and the
/// laggard fetches from them, learns that it is the only voter, and leads.
#[test]
fn a_voter_that_missed_the_change_catches_up_from_the_pre_vote_replies() {
    let mut net = Net::new(3);
    net.elect(3);
    net.propose(3, "a");
    net.stabilize();
    net.isolate(2);
    let alone = Membership::new(ids(&[2]), ids(&[1]));
    change(&mut net, 3, alone.clone());
    assert_eq!(net.replica(3).membership(), Some(&alone));
    assert_eq!(net.replica(1).membership(), Some(&alone));
    assert_eq!(net.replica(2).membership(), Some(&voters(&[1, 2, 3])));
    assert_eq!(net.leader(), None, "nobody leads: n2 never heard of it");
    net.heal();
    net.tick_all(60);
    assert_eq!(net.leader(), Some(NodeId(2)));
    assert_eq!(net.replica(2).membership(), Some(&alone));
    net.propose(2, "b");
    net.stabilize();
    assert_eq!(net.commands(1), ["a", "b"]);
}

/// The only node that knows the change is chosen is the removed leader, and the new voter (a
/// joining node) lost the one message that told it. The removed node, hearing no leader,
/// tells the voters how far it knows the log chosen once per election timeout; the joining
/// node fetches, learns the membership and leads.
#[test]
fn a_removed_leader_keeps_telling_a_voter_that_missed_the_change() {
    let mut net = Net::new(1);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.join(2);
    net.replica_mut(1).change_membership(voters(&[2])).unwrap();
    net.process(NodeId(1));
    assert!(!net.replica(1).is_voter(), "chosen by n1 alone");
    let lost = net.drop_where(|message| message.to == NodeId(2));
    assert!(lost > 0, "the Commit to n2 is lost");
    net.stabilize();
    assert_eq!(net.replica(2).membership(), None);
    net.tick_all(60);
    assert_eq!(net.replica(2).membership(), Some(&voters(&[2])));
    assert_eq!(net.leader(), Some(NodeId(2)));
    net.propose(2, "b");
    net.stabilize();
    assert_eq!(net.commands(2), ["a", "b"]);
}

/// `Config::members` and `Config::join` are read at a node's first start only. n4 was started
/// to join and has accepted entries, but has not learned a membership when it crashes; an
/// operator restarts it as a founding member of {1, 2, 3, 4} (a guess: the cluster is
/// {1, 2, 3}). It must go on joining: it never campaigns with the guess, and it takes the
/// membership the cluster sends. A founding member restarted with another member list keeps
/// the one it stored at its first start.
#[test]
fn members_and_join_are_read_at_the_first_start_only() {
    let mut net = Net::new(3);
    net.elect(1);
    net.join(4);
    // n4 accepts what the leader sends it (it is not a member yet: it is sent nothing).
    net.propose(1, "a");
    net.stabilize();
    net.crash(4);
    net.nodes.get_mut(&NodeId(4)).unwrap().config = common::config(4, 4);
    net.restart(4);
    assert_eq!(
        net.replica(4).membership(),
        None,
        "a node started to join took its configured member list after a restart"
    );
    assert!(!net.replica(4).is_voter());
    net.isolate(4);
    let sent = net.sent.len();
    for _ in 0..100 {
        net.tick(4);
    }
    assert!(
        net.sent[sent..]
            .iter()
            .all(|message| !matches!(message.body, Body::PreVote { .. } | Body::Prepare { .. })),
        "n4 campaigned with a guessed membership"
    );
    net.heal();
    let learners = Membership::new(ids(&[1, 2, 3]), ids(&[4]));
    change(&mut net, 1, learners.clone());
    net.tick_all(3);
    assert_eq!(net.replica(4).membership(), Some(&learners));
    assert_eq!(net.commands(4), ["a"]);

    // A founding member ignores a new member list (and `join`) at later starts.
    net.crash(2);
    let node = net.nodes.get_mut(&NodeId(2)).unwrap();
    node.config.members = ids(&[2, 5, 6]);
    node.config.join = true;
    net.restart(2);
    assert_eq!(net.replica(2).membership(), Some(&learners));
    assert!(net.replica(2).is_voter());

    // The same through a storage that holds the first membership from the first ready on.
    let mut fresh = Net::new(3);
    fresh.crash(3);
    fresh.nodes.get_mut(&NodeId(3)).unwrap().config.members = ids(&[3]);
    fresh.restart(3);
    assert_eq!(fresh.replica(3).membership(), Some(&voters(&[1, 2, 3])));
}
