//! Read-index reads (`Replica::read_index`), one rule per test: a read is confirmed only by a
//! quorum echoing a read round sent after it was asked; its slot covers every write that
//! could have been acknowledged (the leader's chosen mark, and everything phase 1
//! recovered); a deposed leader aborts its reads instead of confirming them; reads are
//! bounded and share rounds. Reads asked of a follower go to the leader in one request per
//! ready, take the leader's slot, and are aborted if the leader refuses, steps down or does
//! not answer; an answer to a previous life of the follower answers nothing.

mod common;

use common::Net;
use synod::message::{Body, Message};
use synod::{NodeId, ReadError, Slot};

/// Queued heartbeats from `from`, with their read rounds.
fn heartbeats_from(net: &Net, from: u64) -> Vec<(NodeId, u64)> {
    net.queue
        .iter()
        .filter(|message| message.from == NodeId(from))
        .filter_map(|message| match message.body {
            Body::Heartbeat { read, .. } => Some((message.to, read)),
            _ => None,
        })
        .collect()
}

/// A three-member cluster led by n1 with `writes` commands chosen and applied everywhere.
fn cluster(writes: usize) -> Net {
    let mut net = Net::new(3);
    net.elect(1);
    for index in 0..writes {
        net.propose(1, &format!("w{index}"));
        net.stabilize();
    }
    net
}

#[test]
fn a_read_waits_for_a_quorum_to_echo_a_round_sent_after_it() {
    let mut net = cluster(2);
    let chosen = net.replica(1).status().chosen;
    net.queue.clear();
    net.replica_mut(1).read_index(7).unwrap();
    // Nothing is confirmed by asking alone, nor by the heartbeats that asking sends.
    net.process(NodeId(1));
    assert!(net.reads(1).is_empty());
    let rounds = heartbeats_from(&net, 1);
    assert_eq!(rounds, [(NodeId(2), 1), (NodeId(3), 1)]);
    // One follower's echo makes a quorum with the leader.
    let to_2 = net.queue.iter().position(|m| m.to == NodeId(2)).unwrap();
    net.deliver(to_2);
    assert!(net.reads(1).is_empty(), "confirmed before the echo arrived");
    let reply = net.queue.iter().position(|m| m.to == NodeId(1)).unwrap();
    assert!(matches!(
        net.queue[reply].body,
        Body::HeartbeatReply { read: 1, .. }
    ));
    net.deliver(reply);
    assert_eq!(net.reads(1), [(7, Some(chosen))]);
    // The third echo confirms nothing twice.
    net.stabilize();
    assert_eq!(net.reads(1), [(7, Some(chosen))]);
}

#[test]
fn an_echo_of_an_earlier_round_confirms_nothing() {
    let mut net = cluster(1);
    net.queue.clear();
    // Read 1 goes out in round 1; read 2 is asked while round 1 is in flight.
    net.replica_mut(1).read_index(1).unwrap();
    net.process(NodeId(1));
    assert_eq!(heartbeats_from(&net, 1), [(NodeId(2), 1), (NodeId(3), 1)]);
    net.replica_mut(1).read_index(2).unwrap();
    let ballot = net.replica(1).status().promised;
    for from in [2, 3] {
        let echo = Message {
            from: NodeId(from),
            to: NodeId(1),
            body: Body::HeartbeatReply {
                ballot,
                chosen: 1,
                read: 1,
            },
        };
        net.replica_mut(1).step(echo).unwrap();
    }
    // An echo of a round the leader has not sent yet (a faulty peer) counts as the last
    // round sent, not as read 2's.
    let forged = Message {
        from: NodeId(2),
        to: NodeId(1),
        body: Body::HeartbeatReply {
            ballot,
            chosen: 1,
            read: 99,
        },
    };
    net.replica_mut(1).step(forged).unwrap();
    // Round 1 confirms read 1 only: read 2 was asked after round 1 went out.
    assert_eq!(net.reads(1).len(), 0, "reported before a ready");
    net.queue.clear();
    net.process(NodeId(1));
    assert_eq!(net.reads(1), [(1, Some(net.replica(1).status().chosen))]);
    // Round 2 goes out with that ready, and confirms read 2.
    assert_eq!(heartbeats_from(&net, 1), [(NodeId(2), 2), (NodeId(3), 2)]);
    net.stabilize();
    assert_eq!(net.reads(1).len(), 2);
}

#[test]
fn reads_asked_before_one_ready_share_one_round() {
    let mut net = cluster(1);
    net.queue.clear();
    for context in 1..=5 {
        net.replica_mut(1).read_index(context).unwrap();
    }
    net.process(NodeId(1));
    assert_eq!(
        heartbeats_from(&net, 1).len(),
        2,
        "one heartbeat per follower"
    );
    net.stabilize();
    let confirmed: Vec<u64> = net.reads(1).iter().map(|(context, _)| *context).collect();
    assert_eq!(confirmed, [1, 2, 3, 4, 5]);
    // A later read needs a later round.
    net.replica_mut(1).read_index(6).unwrap();
    net.process(NodeId(1));
    assert!(heartbeats_from(&net, 1).iter().all(|(_, read)| *read == 2));
    net.stabilize();
    assert_eq!(net.reads(1).len(), 6);
}

#[test]
fn a_read_slot_covers_the_writes_chosen_before_it() {
    let mut net = cluster(3);
    assert_eq!(net.commands(1), ["w0", "w1", "w2"]);
    let chosen = net.replica(1).status().chosen;
    assert!(chosen >= 3, "three writes chosen by {chosen}");
    net.replica_mut(1).read_index(1).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    net.propose(1, "later");
    net.stabilize();
    net.replica_mut(1).read_index(2).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    let slots: Vec<Option<Slot>> = net.reads(1).iter().map(|(_, slot)| *slot).collect();
    assert_eq!(slots, [Some(chosen), Some(chosen + 1)]);
}

#[test]
fn a_new_leader_reads_no_lower_than_what_phase_1_recovered() {
    // n1 gets "x" accepted by n2 (so chosen, and perhaps acknowledged) and crashes before
    // anyone else learns it is chosen. n3 leads next: its chosen mark is behind "x", but
    // phase 1 found it, so n3's reads wait for it.
    let mut net = cluster(1);
    net.isolate(3);
    net.propose(1, "x");
    net.drop_where(|message| matches!(message.body, Body::Commit { .. }));
    // Only the Accept to n2 and n2's Accepted.
    for _ in 0..2 {
        let index = net
            .queue
            .iter()
            .position(|m| matches!(m.body, Body::Accept { .. } | Body::Accepted { .. }))
            .unwrap();
        net.deliver(index);
    }
    let x_slot = net.replica(1).status().chosen;
    assert!(net.commands(1).contains(&"x".to_string()));
    net.crash(1);
    net.queue.clear();
    net.heal();
    // n2 stops trusting n1; n3 campaigns and wins on n2's promise. Nothing else is
    // delivered yet: n3 re-proposes "x" but has not had it chosen.
    let election_ticks = net.replica(2).config().election_ticks;
    for _ in 0..election_ticks {
        net.tick(2);
    }
    net.queue.retain(|message| message.from != NodeId(2));
    while net.queue.is_empty() {
        net.tick(3);
    }
    while !net.replica(3).is_leader() {
        net.deliver(0);
    }
    let leader_chosen = net.replica(3).status().chosen;
    assert!(
        leader_chosen < x_slot,
        "n3 knew {leader_chosen} chosen already"
    );
    net.replica_mut(3).read_index(5).unwrap();
    net.process(NodeId(3));
    net.stabilize();
    let [(5, Some(slot))] = net.reads(3)[..] else {
        panic!("{:?}", net.reads(3));
    };
    assert_eq!(
        slot, x_slot,
        "n3's chosen mark at its election: {leader_chosen}"
    );
    assert!(net.commands(3).contains(&"x".to_string()));
}

#[test]
fn a_deposed_leader_aborts_its_reads_and_never_confirms_them() {
    let mut net = cluster(1);
    // n1 is cut off and hears nothing (it is not ticked, so check-quorum keeps it leading);
    // n2 leads the others under a higher ballot.
    net.isolate(1);
    let election_ticks = net.replica(3).config().election_ticks;
    for _ in 0..election_ticks {
        net.tick(3);
    }
    net.queue.retain(|message| message.from != NodeId(3));
    while !net.replica(2).is_leader() {
        net.tick(2);
        net.stabilize();
    }
    assert!(net.replica(1).is_leader(), "n1 does not know yet");
    net.replica_mut(1).read_index(9).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(net.reads(1).is_empty());
    // n1's next round reaches the others: they promised higher and reject it.
    net.heal();
    net.replica_mut(1).read_index(10).unwrap();
    net.process(NodeId(1));
    assert_eq!(heartbeats_from(&net, 1).len(), 2);
    net.stabilize();
    assert_eq!(net.reads(1), [(9, None), (10, None)]);
    assert!(!net.replica(1).is_leader());
    assert!(net.replica(2).is_leader());
}

#[test]
fn five_members_need_two_echoes() {
    let mut net = Net::new(5);
    net.elect(1);
    net.queue.clear();
    // A faulty n4 echoes a round never sent: it must not count for the read asked next.
    let forged = Message {
        from: NodeId(4),
        to: NodeId(1),
        body: Body::HeartbeatReply {
            ballot: net.replica(1).status().promised,
            chosen: 0,
            read: 99,
        },
    };
    net.replica_mut(1).step(forged).unwrap();
    net.replica_mut(1).read_index(3).unwrap();
    net.process(NodeId(1));
    assert_eq!(heartbeats_from(&net, 1).len(), 4);
    for follower in [2, 3] {
        let index = net
            .queue
            .iter()
            .position(|m| m.to == NodeId(follower))
            .unwrap();
        net.deliver(index);
    }
    let replies: Vec<usize> = (0..net.queue.len())
        .filter(|index| net.queue[*index].to == NodeId(1))
        .collect();
    assert_eq!(replies.len(), 2);
    net.deliver(replies[0]);
    assert!(net.reads(1).is_empty(), "confirmed by two of five");
    let last = net.queue.iter().position(|m| m.to == NodeId(1)).unwrap();
    net.deliver(last);
    assert_eq!(net.reads(1).len(), 1);
}

#[test]
fn followers_that_do_not_forward_reads_refuse_them_and_name_the_leader() {
    let mut net = Net::with(3, |config| config.forward_reads = false);
    net.elect(1);
    assert_eq!(
        net.replica_mut(2).read_index(1),
        Err(ReadError::NotLeader {
            hint: Some(NodeId(1))
        })
    );
}

#[test]
fn a_replica_that_knows_no_leader_refuses_reads() {
    let mut net = Net::new(3);
    assert_eq!(
        net.replica_mut(2).read_index(1),
        Err(ReadError::NotLeader { hint: None })
    );
}

/// Queued read requests: (from, to, incarnation, round).
fn read_requests(net: &Net) -> Vec<(NodeId, NodeId, u64, u64)> {
    net.queue
        .iter()
        .filter_map(|message| match message.body {
            Body::ReadIndex { incarnation, round } => {
                Some((message.from, message.to, incarnation, round))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn reads_asked_of_a_follower_before_one_ready_share_one_request_to_the_leader() {
    let mut net = cluster(1);
    net.queue.clear();
    for context in 1..=3 {
        net.replica_mut(2).read_index(context).unwrap();
    }
    net.process(NodeId(2));
    let requests = read_requests(&net);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0].0, requests[0].1), (NodeId(2), NodeId(1)));
    assert_eq!(requests[0].3, 1, "the first request of this incarnation");
    // The leader's answer waits for its own read round.
    net.deliver_first(|message| matches!(message.body, Body::ReadIndex { .. }));
    assert!(net.reads(2).is_empty());
    assert_eq!(
        heartbeats_from(&net, 1).len(),
        2,
        "n1 confirms it leads first"
    );
    net.stabilize();
    let chosen = net.replica(1).status().chosen;
    assert_eq!(
        net.reads(2),
        [(1, Some(chosen)), (2, Some(chosen)), (3, Some(chosen))]
    );
}

/// The follower's read must see a write the leader acknowledged even if the follower has not
/// learned it: its slot is the leader's, and the application waits to apply it.
#[test]
fn a_follower_read_covers_a_write_the_follower_has_not_learned() {
    let mut net = cluster(1);
    // "x" is chosen by n1 and n3; n2 hears nothing of it.
    net.isolate(2);
    net.propose(1, "x");
    net.stabilize();
    assert_eq!(net.commands(1), ["w0", "x"]);
    let x_slot = net.replica(1).status().chosen;
    assert!(net.replica(2).status().applied < x_slot);
    net.heal();
    net.replica_mut(2).read_index(5).unwrap();
    // Only the request and its answer reach n2 (and n1's read round reaches n3).
    net.process(NodeId(2));
    for _ in 0..100 {
        let Some(next) = net.queue.iter().position(|message| {
            message.to != NodeId(2) || matches!(message.body, Body::ReadIndexReply { .. })
        }) else {
            break;
        };
        net.deliver(next);
    }
    assert_eq!(net.reads(2), [(5, Some(x_slot))]);
}

#[test]
fn a_follower_read_is_aborted_when_its_leader_steps_down_before_confirming_it() {
    let mut net = cluster(1);
    net.queue.clear();
    net.replica_mut(2).read_index(5).unwrap();
    net.process(NodeId(2));
    net.deliver_first(|message| matches!(message.body, Body::ReadIndex { .. }));
    assert_eq!(heartbeats_from(&net, 1).len(), 2);
    // n1's read round is lost; n1 hands over to n3 before it sends another.
    net.drop_where(|message| matches!(message.body, Body::Heartbeat { .. }));
    net.replica_mut(1).transfer_leadership(NodeId(3)).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(net.replica(3).is_leader());
    assert_eq!(net.reads(2), [(5, None)]);
}

#[test]
fn a_follower_read_the_leader_never_answers_is_aborted_after_an_election_timeout() {
    let mut net = cluster(1);
    net.queue.clear();
    net.replica_mut(2).read_index(5).unwrap();
    net.process(NodeId(2));
    assert_eq!(read_requests(&net).len(), 1);
    net.queue.clear(); // the request is lost
    let election_ticks = net.replica(2).config().election_ticks;
    for _ in 1..election_ticks {
        net.tick(2);
    }
    assert!(net.reads(2).is_empty());
    net.tick(2);
    assert_eq!(net.reads(2), [(5, None)]);
}

#[test]
fn a_leaders_answer_to_a_previous_life_of_the_follower_answers_nothing() {
    let mut net = cluster(1);
    net.queue.clear();
    net.replica_mut(2).read_index(5).unwrap();
    net.process(NodeId(2));
    let old = read_requests(&net);
    // n2 restarts and asks again: the same round number, a new incarnation.
    net.crash(2);
    net.restart(2);
    let old_request: Vec<Message> = net
        .queue
        .drain(..)
        .filter(|message| matches!(message.body, Body::ReadIndex { .. }))
        .collect();
    while net.replica(2).leader() != Some(NodeId(1)) {
        net.tick(1);
        net.stabilize();
    }
    net.queue.extend(old_request);
    net.replica_mut(2).read_index(6).unwrap();
    net.process(NodeId(2));
    let requests = read_requests(&net);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].3, old[0].3, "rounds restart at 1");
    assert!(requests[1].2 > old[0].2, "the incarnation grew");
    // Only the old request reaches n1; its answer must not confirm the new read.
    let new_incarnation = requests[1].2;
    net.drop_where(|message| {
        matches!(message.body, Body::ReadIndex { incarnation, .. } if incarnation == new_incarnation)
    });
    net.stabilize();
    assert!(net.reads(2).is_empty(), "{:?}", net.reads(2));
}

#[test]
fn a_replica_that_does_not_lead_refuses_a_read_request() {
    let mut net = cluster(1);
    net.queue.clear();
    let request = Message {
        from: NodeId(2),
        to: NodeId(3),
        body: Body::ReadIndex {
            incarnation: 1,
            round: 4,
        },
    };
    net.replica_mut(3).step(request).unwrap();
    net.process(NodeId(3));
    assert_eq!(net.queue.len(), 1);
    assert_eq!(
        net.queue[0].body,
        Body::ReadIndexReply {
            incarnation: 1,
            round: 4,
            slot: None
        }
    );
}

#[test]
fn reads_waiting_are_bounded() {
    let mut net = Net::with(3, |config| config.reads_max = 2);
    net.elect(1);
    net.queue.clear();
    net.replica_mut(1).read_index(1).unwrap();
    net.replica_mut(1).read_index(2).unwrap();
    assert_eq!(net.replica_mut(1).read_index(3), Err(ReadError::Busy));
    net.process(NodeId(1));
    net.stabilize();
    assert_eq!(net.reads(1).len(), 2);
    net.replica_mut(1).read_index(3).unwrap();
}

#[test]
fn a_single_member_confirms_at_once() {
    let mut net = Net::new(1);
    net.elect(1);
    net.propose(1, "w");
    net.replica_mut(1).read_index(4).unwrap();
    net.process(NodeId(1));
    let chosen = net.replica(1).status().chosen;
    assert_eq!(net.reads(1), [(4, Some(chosen))]);
}

#[test]
fn read_requests_and_answers_numbered_zero_are_malformed() {
    let mut net = cluster(1);
    for body in [
        Body::ReadIndex {
            incarnation: 1,
            round: 0,
        },
        Body::ReadIndexReply {
            incarnation: 1,
            round: 0,
            slot: Some(1),
        },
    ] {
        let message = Message {
            from: NodeId(2),
            to: NodeId(1),
            body,
        };
        assert!(matches!(
            net.replica_mut(1).step(message),
            Err(synod::StepError::Malformed { .. })
        ));
    }
}
