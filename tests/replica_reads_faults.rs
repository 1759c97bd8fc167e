//! Linearizable reads (read-index at the leader and at followers, leader leases) and
//! leadership transfer under adversarial schedules (session 14's review). Each test documents
//! a rule that holds against an attack; two of them failed when written, and say what was
//! fixed.

mod common;

use common::Net;
use synod::message::{Body, Message};
use synod::{Ballot, NodeId};

/// Asks n`id` for read `context` and reports whether it was answered at once (a lease read:
/// no round of heartbeats), and with which slot.
fn read_at_once(net: &mut Net, id: u64, context: u64) -> Option<u64> {
    let before = net.reads(id).len();
    net.replica_mut(id).read_index(context).unwrap();
    net.process(NodeId(id));
    net.reads(id)[before..]
        .iter()
        .find(|(c, _)| *c == context)
        .and_then(|(_, slot)| *slot)
}

/// n1 leads a leased cluster of `members`; a heartbeat round sent by n1's last tick was just
/// echoed by everyone (the followers have not ticked since they heard it).
fn leader_with_lease(members: u64, election: u32, lease: u32) -> Net {
    let mut net = Net::with(members, move |config| {
        config.election_ticks = election;
        config.lease_ticks = lease;
    });
    net.elect(1);
    net.propose(1, "w");
    net.stabilize();
    let heartbeat_ticks = net.replica(1).config().heartbeat_ticks;
    for _ in 0..heartbeat_ticks {
        net.tick(1);
    }
    net.stabilize();
    net
}

/// `Config::lease_ticks` documents that leases are safe as long as "no member's ticks run
/// faster than the leader's by a factor above `election_ticks / lease_ticks` (half of
/// `election_ticks` tolerates 2x)". Tick granularity eats one follower tick of that margin:
///
/// - election_ticks 10, lease_ticks 5, followers' clocks at exactly 2x the leader's (the
///   documented limit, not above it), in the worst phase: n1 sends its lease round at the
///   very start of its tick `t` (lease until `t + 5`), and n2, n3 hear it just before their
///   own tick boundary (their count `h`).
/// - Real time unit `k` (one leader tick): n1 ticks once, n2 and n3 tick twice. After unit
///   `t + 4` n2 and n3 are at `h + 10` = `heard + election_ticks`: stickiness is over, n2's
///   `campaign` passes, n3 grants the pre-vote and the Prepare, n2 leads and gets "x"
///   chosen by n2 and n3 (acknowledged).
/// - n1 is still at tick `t + 4 < lease_until`: `read_index` is answered at once with a slot
///   below "x"'s: a stale read after an acknowledged write (linearizability violated).
///
/// The follower's stickiness was granted from its count at the moment it heard (up to one of
/// its ticks late in real time), so the true bound was `(election_ticks - 1) / lease_ticks`
/// (and the simulator's default skew, ratio up to 1.3 / 0.7 = 1.86, with lease 5 was beyond
/// it). Fixed: with leases, stickiness (and the vote block after a start) lasts one tick
/// more, so that `election_ticks` whole ticks have passed.
#[test]
fn a_lease_at_exactly_the_documented_clock_ratio_serves_no_stale_read() {
    if let Some(stale) = followers_at_twice_the_leaders_rate(10, 5) {
        panic!("{stale}");
    }
}

/// The same schedule with one tick of margin (lease 4: 2x is below `(10 - 1) / 4`) never
/// lets n1 answer at once once n2 leads.
#[test]
fn a_lease_with_one_tick_of_margin_survives_the_same_schedule() {
    assert_eq!(followers_at_twice_the_leaders_rate(10, 4), None);
}

/// Runs the schedule above: n1 leased and cut off, n2 and n3 ticking twice per n1 tick (in
/// the worst phase), n2 campaigning as soon as it may. Once n2 leads and "x" is chosen,
/// returns a description of n1's lease read if n1 still answers one at once.
fn followers_at_twice_the_leaders_rate(election: u32, lease: u32) -> Option<String> {
    let mut net = leader_with_lease(3, election, lease);
    net.isolate(1);
    // The followers' two ticks of the unit in which the round arrived.
    for id in [2, 3] {
        net.tick(id);
        net.tick(id);
    }
    for unit in 1..=u64::from(election) {
        net.tick(1);
        for _ in 0..2 {
            net.tick(2);
            net.tick(3);
            // n2 campaigns the moment its stickiness lets it.
            net.replica_mut(2).campaign();
            net.process(NodeId(2));
            net.stabilize();
        }
        if net.replica(2).is_leader() {
            net.propose(2, "x");
            net.stabilize();
            let x_slot = net.replica(2).status().chosen;
            assert!(net.commands(3).contains(&"x".to_string()), "x acknowledged");
            return read_at_once(&mut net, 1, 1000 + unit).map(|slot| {
                format!(
                    "n1 answered a lease read at slot {slot} after x was chosen at slot \
                     {x_slot} by n2's leadership (unit {unit})"
                )
            });
        }
    }
    panic!("n2 never became leader");
}

fn heartbeat_reply(from: u64, ballot: Ballot, read: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(1),
        body: Body::HeartbeatReply {
            ballot,
            chosen: 0,
            read,
        },
    }
}

/// Echoes held back from n1's first leadership (ballot b1, rounds 1..) arrive once n1 leads
/// again under b2 and asks a read in round 1 of b2: same sender, same round number, but
/// another ballot. They must confirm nothing.
#[test]
fn an_echo_from_a_previous_leadership_confirms_nothing() {
    let mut net = Net::new(3);
    net.elect(1);
    let b1 = net.replica(1).status().promised;
    net.replica_mut(1).read_index(1).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert_eq!(net.reads(1).len(), 1);
    // n1 hands over to n2 and takes the leadership back: a new ballot, rounds from 1 again.
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(net.replica(2).is_leader());
    net.replica_mut(2).transfer_leadership(NodeId(1)).unwrap();
    net.process(NodeId(2));
    net.stabilize();
    assert!(net.replica(1).is_leader());
    let b2 = net.replica(1).status().promised;
    assert!(b2 > b1);
    net.queue.clear();
    net.replica_mut(1).read_index(2).unwrap();
    net.process(NodeId(1));
    net.queue.clear(); // the round of b2 is lost
    for from in [2, 3] {
        for read in [1, 2, 99] {
            net.replica_mut(1)
                .step(heartbeat_reply(from, b1, read))
                .unwrap();
        }
    }
    net.process(NodeId(1));
    assert_eq!(net.reads(1).len(), 1, "{:?}", net.reads(1));
    // The echo of b2 does.
    net.replica_mut(1).step(heartbeat_reply(2, b2, 1)).unwrap();
    net.process(NodeId(1));
    assert_eq!(net.reads(1).len(), 2);
}

/// A ReadIndexReply from a member the request was not sent to (or from the right member but
/// for a later round) answers nothing; the leader's own answer answers the request.
#[test]
fn a_read_index_reply_answers_only_requests_sent_to_its_sender_up_to_its_round() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    net.queue.clear();
    net.replica_mut(2).read_index(5).unwrap();
    net.process(NodeId(2));
    let (incarnation, round) = match net.queue[0].body {
        Body::ReadIndex { incarnation, round } => (incarnation, round),
        ref other => panic!("{other:?}"),
    };
    net.queue.clear(); // the request is held back
    let reply = |from: u64, round: u64| Message {
        from: NodeId(from),
        to: NodeId(2),
        body: Body::ReadIndexReply {
            incarnation,
            round,
            slot: Some(0),
        },
    };
    net.replica_mut(2).step(reply(3, round)).unwrap();
    net.replica_mut(2).step(reply(3, round + 5)).unwrap();
    net.process(NodeId(2));
    assert!(net.reads(2).is_empty(), "{:?}", net.reads(2));
    // A later read goes out in request round + 1; n1's answer to the first request does not
    // answer it (it was asked after that request left).
    net.replica_mut(2).read_index(6).unwrap();
    net.process(NodeId(2));
    net.queue.clear();
    net.replica_mut(2).step(reply(1, round)).unwrap();
    net.process(NodeId(2));
    assert_eq!(net.reads(2), [(5, Some(0))]);
}

/// A lease does not outlive the leadership that earned it: after a handover and back, the
/// first read of n1's new leadership takes a round.
#[test]
fn a_lease_does_not_carry_over_to_the_next_leadership() {
    let mut net = leader_with_lease(3, 10, 4);
    assert!(read_at_once(&mut net, 1, 1).is_some());
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(net.replica(2).is_leader());
    net.replica_mut(2).transfer_leadership(NodeId(1)).unwrap();
    net.process(NodeId(2));
    net.stabilize();
    assert!(net.replica(1).is_leader());
    net.queue.clear();
    assert_eq!(read_at_once(&mut net, 1, 2), None);
}

/// A follower's request that reaches a leased leader after it started a transfer is not
/// answered at once: the TimeoutNow may already be on its way.
#[test]
fn a_follower_request_after_a_transfer_started_waits_for_a_round() {
    let mut net = leader_with_lease(3, 10, 4);
    net.queue.clear();
    net.replica_mut(1).transfer_leadership(NodeId(3)).unwrap();
    net.process(NodeId(1));
    net.drop_where(|message| matches!(message.body, Body::TimeoutNow { .. }));
    net.replica_mut(2).read_index(7).unwrap();
    net.process(NodeId(2));
    net.deliver_first(|message| matches!(message.body, Body::ReadIndex { .. }));
    assert!(
        !net.queue
            .iter()
            .any(|message| matches!(message.body, Body::ReadIndexReply { .. })),
        "answered at once during a transfer"
    );
    assert!(net
        .queue
        .iter()
        .any(|message| matches!(message.body, Body::Heartbeat { .. })));
}

/// Check-quorum steps a cut-off leader down with reads waiting, its own and a follower's:
/// its own are aborted, the follower's request is refused (the answer is lost to the
/// partition, so the follower aborts on its timer), and nothing is confirmed.
#[test]
fn check_quorum_aborts_the_reads_waiting() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    net.queue.clear();
    net.replica_mut(2).read_index(8).unwrap();
    net.process(NodeId(2));
    net.deliver_first(|message| matches!(message.body, Body::ReadIndex { .. }));
    net.replica_mut(1).read_index(9).unwrap();
    net.process(NodeId(1));
    net.isolate(1);
    let election_ticks = net.replica(1).config().election_ticks;
    for _ in 0..election_ticks {
        net.tick(1);
    }
    assert!(!net.replica(1).is_leader());
    assert_eq!(net.reads(1), [(9, None)]);
    let refused = net
        .sent
        .iter()
        .filter(|m| {
            matches!(m.body, Body::ReadIndexReply { slot: None, .. }) && m.from == NodeId(1)
        })
        .count();
    assert_eq!(refused, 1);
    for _ in 0..election_ticks {
        net.tick(2);
    }
    assert_eq!(net.reads(2), [(8, None)]);
}

/// Delivers everything like `Net::stabilize`, but drops every message `drop` picks.
fn stabilize_dropping(net: &mut Net, drop: impl Fn(&Message) -> bool) {
    for _ in 0..100_000 {
        net.drop_where(&drop);
        if net.queue.is_empty() {
            return;
        }
        net.deliver(0);
    }
    panic!("network never went quiet");
}

/// A transfer to a voter that lags behind the others' compaction point. n3 missed the slots
/// n1 and n2 then compacted (its snapshot never arrives). It accepts the newest slot, so n1
/// counted it "caught up" (`send_timeout_now_if_caught_up` looked only at the unchosen
/// slots) and sent it TimeoutNow. n3's Prepare asks from its own first unchosen slot, which
/// n1 and n2 compacted away: both ignore it (`on_prepare`: "it needs compacted slots"),
/// before the handover check, so n1 did not step down as `Transferred` either. n3 had
/// promised a higher ballot and Rejected n1's next heartbeat: n1 stepped down (`Preempted`),
/// leaving no leader until an election timeout passed. Fixed: a target whose chosen mark is
/// behind the leader's compaction point is not caught up (nor is it picked by a removed
/// leader's handover); the transfer waits, and is abandoned with n1 still leading.
#[test]
fn a_transfer_waits_while_the_target_needs_a_snapshot() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    for index in 0..3 {
        net.propose(1, &format!("w{index}"));
        net.stabilize();
    }
    net.stabilize();
    net.snapshot_and_compact(1);
    net.snapshot_and_compact(2);
    net.heal();
    let no_snapshot = |message: &Message| matches!(message.body, Body::Snapshot { .. });
    // n3 hears n1 again and accepts a new slot, but never gets the compacted ones.
    net.tick(1);
    net.tick(1);
    stabilize_dropping(&mut net, no_snapshot);
    net.propose(1, "y");
    stabilize_dropping(&mut net, no_snapshot);
    assert!(net.replica(3).status().chosen < net.replica(1).status().first_slot);
    assert_eq!(net.replica(3).leader(), Some(NodeId(1)));
    net.replica_mut(1).transfer_leadership(NodeId(3)).unwrap();
    let election_ticks = net.replica(1).config().election_ticks;
    for _ in 0..=election_ticks {
        net.process(NodeId(1));
        assert!(
            !net.queue
                .iter()
                .any(|m| matches!(m.body, Body::TimeoutNow { .. })),
            "TimeoutNow sent to a target that needs a snapshot"
        );
        stabilize_dropping(&mut net, no_snapshot);
        net.tick(1);
    }
    stabilize_dropping(&mut net, no_snapshot);
    assert!(net.replica(1).is_leader(), "n1 was deposed");
    // Abandoned after an election timeout: proposals are taken again.
    net.replica_mut(1)
        .propose(bytes::Bytes::from_static(b"z"))
        .expect("the transfer was abandoned");
}

/// Read messages from a node outside the membership are refused (not answered, no panic);
/// an echo of a round far beyond the last one sent counts as the last one; huge numbers are
/// malformed.
#[test]
fn read_messages_from_strangers_or_with_absurd_numbers_are_refused() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    net.queue.clear();
    let ballot = net.replica(1).status().promised;
    for body in [
        Body::ReadIndex {
            incarnation: 1,
            round: 1,
        },
        Body::ReadIndexReply {
            incarnation: 1,
            round: 1,
            slot: Some(1),
        },
        Body::HeartbeatReply {
            ballot,
            chosen: 0,
            read: 1,
        },
    ] {
        let message = Message {
            from: NodeId(9),
            to: NodeId(1),
            body,
        };
        assert!(matches!(
            net.replica_mut(1).step(message),
            Err(synod::StepError::UnknownNode(NodeId(9)))
        ));
    }
    net.process(NodeId(1));
    assert!(net.queue.is_empty());
    let huge = Message {
        from: NodeId(2),
        to: NodeId(1),
        body: Body::ReadIndex {
            incarnation: u64::MAX,
            round: 1,
        },
    };
    assert!(matches!(
        net.replica_mut(1).step(huge),
        Err(synod::StepError::Malformed { .. })
    ));
    // A round number of u64::MAX in a request is only a context: answered, not overflowed.
    let request = Message {
        from: NodeId(2),
        to: NodeId(1),
        body: Body::ReadIndex {
            incarnation: 1,
            round: u64::MAX,
        },
    };
    net.replica_mut(1).step(request).unwrap();
    net.process(NodeId(1));
    net.replica_mut(1)
        .step(heartbeat_reply(3, ballot, u64::MAX))
        .unwrap();
    net.process(NodeId(1));
    assert!(net.queue.iter().any(|m| matches!(
        m.body,
        Body::ReadIndexReply {
            round: u64::MAX,
            slot: Some(_),
            ..
        }
    )));
}

/// With leases, a follower that restarted refuses ordinary Prepares for an election timeout,
/// but a handover by the leader it follows still completes (the transfer ended the lease).
#[test]
fn a_handover_completes_through_a_freshly_restarted_follower() {
    let mut net = leader_with_lease(3, 10, 4);
    net.crash(3);
    net.restart(3);
    net.tick(1);
    net.tick(1);
    net.stabilize();
    assert_eq!(net.replica(3).leader(), Some(NodeId(1)));
    net.crash(2); // n3's promise is needed
    net.replica_mut(1).transfer_leadership(NodeId(3)).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(net.replica(3).is_leader());
    assert!(!net.replica(1).is_leader());
}
