//! Leader leases (`Config::lease_ticks`), one rule per test: a lease comes from a quorum
//! echoing a heartbeat round and runs `lease_ticks` from when that round was sent; under it
//! reads (the leader's and its followers') are answered at once; it runs out, it ends with a
//! transfer, and it never outlives the followers' stickiness, which a restarted replica and
//! a forced campaign respect too.

mod common;

use common::Net;
use synod::message::{Body, Message};
use synod::{Ballot, Config, NodeId, Replica};

const LEASE: u32 = 4;

fn leased(members: u64) -> Net {
    leased_for(members, LEASE)
}

fn leased_for(members: u64, lease: u32) -> Net {
    Net::with(members, move |config| config.lease_ticks = lease)
}

fn heartbeats_queued(net: &Net) -> usize {
    net.queue
        .iter()
        .filter(|message| matches!(message.body, Body::Heartbeat { .. }))
        .count()
}

/// Asks n`id` for read `context` and reports whether it was answered at once (without a
/// round of heartbeats or any message).
fn read_at_once(net: &mut Net, id: u64, context: u64) -> bool {
    let before = net.reads(id).len();
    net.replica_mut(id).read_index(context).unwrap();
    net.process(NodeId(id));
    let answered =
        net.reads(id)[before..].contains(&(context, Some(net.replica(id).status().chosen)));
    if answered {
        assert_eq!(heartbeats_queued(net), 0, "a lease read sends nothing");
    }
    answered
}

/// n1 leads with a lease: a heartbeat round sent by a tick was echoed by a quorum.
fn leader_with_lease() -> Net {
    leader_with_lease_for(LEASE)
}

fn leader_with_lease_for(lease: u32) -> Net {
    let mut net = leased_for(3, lease);
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

#[test]
fn lease_ticks_must_be_below_election_ticks() {
    let mut config = common::config(1, 3);
    config.lease_ticks = config.election_ticks;
    assert!(matches!(
        Replica::new(config, Default::default()),
        Err(error) if error.to_string().contains("lease_ticks")
    ));
    let config = Config {
        lease_ticks: 9,
        ..common::config(1, 3)
    };
    assert!(Replica::new(config, Default::default()).is_ok());
}

#[test]
fn a_leader_reads_at_once_only_after_a_quorum_echoed_a_round() {
    let mut net = leased(3);
    net.elect(1);
    net.stabilize();
    net.queue.clear();
    // Elected, but no round of its own has been echoed yet: a read takes a round.
    assert!(!read_at_once(&mut net, 1, 1));
    net.stabilize();
    assert_eq!(net.reads(1).len(), 1);
    // Every round is timed, the read's too: once a quorum echoed it, reads come at once.
    net.queue.clear();
    assert!(read_at_once(&mut net, 1, 4));
    // So are the heartbeat rounds that ticks send.
    let mut net = leader_with_lease();
    net.queue.clear();
    assert!(read_at_once(&mut net, 1, 2));
    assert!(read_at_once(&mut net, 1, 3));
    assert_eq!(net.replica(1).status().lease_reads, 2);
    // Without leases, the same leader takes a round for every read.
    let mut net = Net::new(3);
    net.elect(1);
    for context in 1..=2 {
        net.stabilize();
        net.queue.clear();
        assert!(!read_at_once(&mut net, 1, context));
    }
}

#[test]
fn the_lease_runs_out_lease_ticks_after_its_round_was_sent() {
    let mut net = leader_with_lease();
    // The round that gave the lease was sent by the last tick; from now on n1 hears nothing.
    net.isolate(1);
    for tick in 1..LEASE {
        net.tick(1);
        assert!(read_at_once(&mut net, 1, u64::from(tick)), "tick {tick}");
    }
    net.tick(1);
    assert!(!read_at_once(&mut net, 1, 99), "the lease has run out");
}

/// Echoes that arrive late give no longer lease: it counts from when the round left.
#[test]
fn the_lease_counts_from_when_the_round_was_sent_not_echoed() {
    let mut net = leased(3);
    net.elect(1);
    net.stabilize();
    let heartbeat_ticks = net.replica(1).config().heartbeat_ticks;
    for _ in 0..heartbeat_ticks {
        net.tick(1);
    }
    // The round is on its way; it is echoed two ticks later.
    let in_flight: Vec<Message> = net.queue.drain(..).collect();
    net.tick(1);
    net.tick(1);
    net.queue
        .retain(|message| !matches!(message.body, Body::Heartbeat { .. }));
    net.queue.extend(in_flight);
    net.stabilize();
    net.isolate(1);
    assert!(read_at_once(&mut net, 1, 1));
    net.tick(1);
    assert!(read_at_once(&mut net, 1, 2));
    net.tick(1);
    assert!(
        !read_at_once(&mut net, 1, 3),
        "{LEASE} ticks after the round left"
    );
}

#[test]
fn a_transfer_ends_the_lease() {
    let mut net = leader_with_lease();
    assert!(read_at_once(&mut net, 1, 1));
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.queue.clear();
    assert!(!read_at_once(&mut net, 1, 2));
    // Even if the transfer is abandoned, this leadership holds no lease any more: the
    // TimeoutNow may still be on its way.
    net.replica_mut(1).transfer_leadership(NodeId(1)).unwrap();
    let heartbeat_ticks = net.replica(1).config().heartbeat_ticks;
    for _ in 0..heartbeat_ticks {
        net.tick(1);
    }
    net.drop_where(|message| matches!(message.body, Body::TimeoutNow { .. }));
    net.stabilize();
    assert!(net.replica(1).is_leader());
    assert!(!read_at_once(&mut net, 1, 3));
}

#[test]
fn a_follower_read_is_answered_at_once_by_a_leader_with_a_lease() {
    let mut net = leader_with_lease();
    net.queue.clear();
    net.replica_mut(2).read_index(7).unwrap();
    net.process(NodeId(2));
    net.deliver_first(|message| matches!(message.body, Body::ReadIndex { .. }));
    assert_eq!(heartbeats_queued(&net), 0, "no round for it");
    net.stabilize();
    let chosen = net.replica(1).status().chosen;
    assert_eq!(net.reads(2), [(7, Some(chosen))]);
    assert_eq!(net.replica(1).status().lease_reads, 1);
}

/// The safety argument, run tick by tick: n1 is cut off right after renewing its lease; the
/// others elect a new leader as soon as their stickiness allows (n2 asks to campaign at every
/// tick); at no tick does n1 answer a read at once while another leader exists.
#[test]
fn a_cut_off_leader_never_holds_its_lease_once_another_leader_exists() {
    // The longest lease allowed too: one tick below the election timeout.
    for lease in [LEASE, 9] {
        cut_off_leader(lease);
    }
}

fn cut_off_leader(lease: u32) {
    let mut net = leader_with_lease_for(lease);
    net.isolate(1);
    let mut context = 0;
    for _ in 0..200 {
        for id in 1..=3 {
            net.tick(id);
        }
        // n2 campaigns the moment its stickiness lets it.
        net.replica_mut(2).campaign();
        net.process(NodeId(2));
        net.stabilize();
        context += 1;
        let at_once = read_at_once(&mut net, 1, context);
        let other_leader = net.replica(2).is_leader() || net.replica(3).is_leader();
        assert!(
            !(at_once && other_leader),
            "tick {context}: two leaders, n1 leased"
        );
        if other_leader {
            let election_ticks = u64::from(net.replica(2).config().election_ticks);
            assert!(
                context <= election_ticks + 1,
                "elected at tick {context}: too late to test"
            );
            return;
        }
    }
    panic!("n2 and n3 never elected a leader");
}

fn prepare(from: u64, to: u64, round: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Prepare {
            ballot: Ballot::new(round, NodeId(from)),
            first_slot: 1,
            transfer: None,
        },
    }
}

fn promises_queued(net: &Net) -> usize {
    net.queue
        .iter()
        .filter(|message| matches!(message.body, Body::Promise { .. }))
        .count()
}

#[test]
fn a_started_replica_promises_nothing_for_an_election_timeout() {
    // Without leases a fresh replica promises at once...
    let mut net = Net::new(3);
    net.replica_mut(3).step(prepare(2, 3, 5)).unwrap();
    net.process(NodeId(3));
    assert_eq!(promises_queued(&net), 1);
    // ... with leases it may have acknowledged a lease before it restarted: it waits
    // `election_ticks` whole ticks, which takes one tick more than that many counts (its
    // first tick may come at once after it started).
    let mut net = leased(3);
    let election_ticks = net.replica(3).config().election_ticks;
    for _ in 0..election_ticks {
        net.tick(3);
    }
    net.queue.clear();
    net.replica_mut(3).step(prepare(2, 3, 5)).unwrap();
    net.process(NodeId(3));
    assert_eq!(promises_queued(&net), 0);
    net.tick(3);
    net.queue.clear();
    net.replica_mut(3).step(prepare(2, 3, 6)).unwrap();
    net.process(NodeId(3));
    assert_eq!(promises_queued(&net), 1);
}

#[test]
fn a_restarted_follower_does_not_help_depose_a_leased_leader() {
    let mut net = leader_with_lease();
    net.crash(3);
    net.restart(3);
    net.queue.clear();
    net.replica_mut(3).step(prepare(2, 3, 50)).unwrap();
    net.process(NodeId(3));
    assert_eq!(promises_queued(&net), 0);
}

#[test]
fn campaign_does_nothing_while_the_leader_is_live() {
    let mut net = leader_with_lease();
    net.queue.clear();
    net.replica_mut(2).campaign();
    net.process(NodeId(2));
    assert!(net.queue.is_empty(), "{:?}", net.queue);
    // Without leases the same campaign starts (a pre-vote the others deny).
    let mut net = Net::new(3);
    net.elect(1);
    net.queue.clear();
    net.replica_mut(2).campaign();
    net.process(NodeId(2));
    assert!(net
        .queue
        .iter()
        .any(|message| matches!(message.body, Body::PreVote { .. })));
}

/// The clock assumption is real: when the followers' ticks run three times as fast as the
/// leader's, a lease of 9 ticks (election timeout 10) outlives their stickiness, and the cut
/// off leader still answers at once while another leads. `lease_ticks` documents the margin.
#[test]
fn a_lease_is_only_as_safe_as_its_clock_assumption() {
    let mut net = leader_with_lease_for(9);
    net.isolate(1);
    for step in 0..200u64 {
        if step % 3 == 0 {
            net.tick(1);
        }
        net.tick(2);
        net.tick(3);
        net.replica_mut(2).campaign();
        net.process(NodeId(2));
        net.stabilize();
        let at_once = read_at_once(&mut net, 1, step + 1);
        if net.replica(2).is_leader() {
            assert!(at_once, "step {step}: the lease ended in time after all");
            return;
        }
    }
    panic!("n2 never became leader");
}
