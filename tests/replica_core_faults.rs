//! The core replica protocol under adversarial schedules (session 15's review): elections and
//! phase 1 (`replica/election.rs`), the acceptor's promises and acceptances and the `Ready`
//! contract that releases them (`acceptor.rs`, `ready.rs`), the leader's phase 2, windows and
//! forwarded proposals (`leader.rs`, `progress.rs`), learning and catch-up (`learner.rs`), the
//! log (`log.rs`), quorum arithmetic and member indices (`quorum.rs`, `membership::member_list`),
//! message validation (`message.rs`, `Replica::validate`), `Config` at its bounds, and the
//! single-decree `synod::paxos` node. Membership change, reads, leases, transfer and snapshots
//! have their own files (`replica_membership_faults.rs`, `replica_reads_faults.rs`,
//! `snapshot_faults.rs`) and are not repeated here.
//!
//! Every scenario is a deterministic test driven through the public API: a small in-test network
//! that decides the fate of every message (deliver, drop, duplicate, reorder, or refuse it as the
//! TCP transport does when it does not fit a frame), and, where the `Ready` contract is the
//! target, replicas whose writes complete later, in an order and at moments the schedule picks
//! (a seeded sweep, `asynchronous_writes_under_faults_keep_every_promise_and_agree`, with a
//! companion showing that it catches an application that breaks the contract).
//!
//! What held: persistence before promise under asynchronous writes, duplicates between a vote
//! and its write, and crashes that lose writes in flight (30 000 seeds of 2 000 actions and
//! 6 000 of 8 000, with loss, partitions, forced campaigns, transfers and leases); agreement and
//! liveness after such faults; promises across restarts; forwarded proposals attributed to
//! their proposer and filtered by incarnation; strangers unable to depose a live leader; chosen
//! entries served from a mark not yet durable. What broke, all fixed in session 15 (the
//! scenarios now pass): no message size bound on phase 1, so a backlog larger than the
//! transport's frame stops every election for good (default configuration); no command size
//! bound, so one command larger than a frame stalls the log; a panic in `step` at 64 members;
//! an `election_ticks` that validates but overflows; a `u64::MAX` round that makes the
//! single-decree node panic; forwarded proposals reordered by the network dropped as
//! duplicates. The fixes: promises are paged (`Body::Promise::next_slot`, pages of
//! `Config::fetch_bytes_max`); `Config::command_bytes_max` (`ProposeError::TooLarge`);
//! `MEMBERS_MAX` is 63; `election_ticks` at most `u32::MAX / 2`; `paxos::ROUND_MAX`; a leader
//! keeps each member's forwarded ids in a bounded window instead of a high-water mark.

mod fault_cluster;

use bytes::Bytes;
use fault_cluster::{
    candidate_n1_with, command, config, drain, ids, is_from, is_to, panic_text, prepare, Cluster,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use synod::message::{Body, Command, Message};
use synod::{
    Ballot, Codec, Config, Entry, MemStorage, Membership, NodeId, ProposalId, Recovered, Replica,
    Storage, Value,
};

// ---------------------------------------------------------------------------------------------
// The in-test network
// ---------------------------------------------------------------------------------------------

/// The frame limit of the TCP transport's default configuration (`TcpConfig::new`), which drops a
/// message that does not fit (`TcpStats::dropped_encode`).
fn default_frame_bytes_max() -> usize {
    #[cfg(feature = "net")]
    {
        let config = synod::transport::tcp::TcpConfig::new(
            NodeId(1),
            0,
            "127.0.0.1:0".parse().unwrap(),
            BTreeMap::new(),
        );
        assert_eq!(config.frame_bytes_max, 16 << 20);
        config.frame_bytes_max
    }
    #[cfg(not(feature = "net"))]
    {
        16 << 20
    }
}

// ---------------------------------------------------------------------------------------------
// Liveness: messages the transport cannot carry
// ---------------------------------------------------------------------------------------------

/// n1 leads three replicas whose messages cross a transport with the TCP transport's default
/// frame limit (16 MiB). n1 proposes `commands` commands of 1 MiB in one burst; its Accepts
/// reach n2 and n3 (the window lets 16 MiB through per follower), and n1 crashes before any
/// acknowledgement reaches it, then restarts. Returns the cluster after the crash and restart.
fn burst_then_leader_crash(commands: usize) -> Cluster {
    let mut cluster = Cluster::new(3);
    cluster.codec = Some(
        Codec::new(0, default_frame_bytes_max()).expect("a frame size within the codec's limits"),
    );
    cluster.elect(1);
    cluster.stabilize();
    let block = Bytes::from(vec![b'x'; 1 << 20]);
    for _ in 0..commands {
        cluster.replica_mut(1).propose(block.clone()).unwrap();
    }
    cluster.process(NodeId(1));
    while cluster.queue.iter().any(|m| m.body.kind() == "Accept") {
        cluster.deliver_first(|m| m.body.kind() == "Accept");
    }
    cluster.crash(1); // the Accepteds on their way to n1 are lost with it
    cluster.stabilize();
    cluster.restart(1);
    cluster
}

/// Runs the cluster fault-free for up to `ticks` ticks; returns the leader once one is elected
/// and a command proposed to it is applied by every node.
fn elect_and_commit(cluster: &mut Cluster, ticks: u32) -> Option<NodeId> {
    for _ in 0..ticks {
        cluster.tick_all(1);
        if let Some(leader) = cluster.leader() {
            cluster.propose(leader.0, "after");
            for _ in 0..50 {
                cluster.tick_all(1);
                if (1..=3)
                    .all(|id| cluster.commands(id).last().map(String::as_str) == Some("after"))
                {
                    return Some(leader);
                }
            }
            return None;
        }
    }
    None
}

/// The control for the next scenario: with 15 commands of 1 MiB on the followers, every Promise
/// fits a frame, and once n1 is back a leader is elected and commits (the harness's frame limit
/// is not what stops the other schedule).
#[test]
fn after_a_leader_crash_a_backlog_that_fits_a_frame_is_recovered() {
    let mut cluster = burst_then_leader_crash(15);
    assert!(elect_and_commit(&mut cluster, 300).is_some());
    assert!(cluster.oversized.is_empty(), "{:?}", cluster.oversized);
    for id in 1..=3 {
        assert_eq!(
            cluster.commands(id).len(),
            16,
            "n{id}: the backlog, then \"after\""
        );
    }
    cluster.assert_agreement();
}

/// Liveness, with the default `Config` and the TCP transport's default frame limit: once the
/// acceptors hold more than a frame's worth of accepted, not-yet-known-chosen entries, no
/// candidate can ever complete phase 1. The cluster never elects a leader again, with every node
/// up and the network healed.
///
/// Schedule: n1 leads {1, 2, 3} and proposes 20 commands of 1 MiB in one burst (a kv client may
/// send SETs of up to 2 MiB: 8 of them are enough). The per-follower window
/// (`inflight_bytes_max`, 16 MiB by default) lets 16 of them reach n2 and n3, which accept them;
/// n1 crashes before their Accepteds reach it and restarts. From then on every Prepare
/// (first slot 1) is answered by a Promise that reports every entry from slot 1 on: 16 or 20
/// MiB, more than the 16 MiB frame, so the transport drops it (`TcpStats::dropped_encode`)
/// every time the candidate retransmits its Prepare. No candidate gets a second promise.
///
/// Why it breaks the guarantee: phase 2 is bounded per message (`accept_bytes_max`), catch-up
/// too (`fetch_bytes_max`), snapshots are chunked, but `Body::Promise` carries
/// `log.range(first_slot, log.last())` whole (`Replica::on_prepare`), and nothing in `Config`
/// relates the backlog an acceptor may hold (`inflight_bytes_max`, `uncommitted_bytes_max`,
/// `accept_lookahead_slots_max`) to the frame the transport can carry. The state is permanent:
/// the entries stay accepted, and no leader ever comes to get them chosen or overwrite them.
///
/// Fix direction: page phase 1. The acceptor reports at most `accept_bytes_max` (or a new
/// `promise_bytes_max`) of entries per Promise and says where it stopped (`Promise { more_from:
/// Option<Slot>, .. }`); the candidate asks again from there (a `Prepare` with a later
/// `first_slot` for the same ballot, promised without a new write) and counts the acceptor once
/// its last page arrived (`election.rs`, `add_promise`). A stopgap: default
/// `inflight_bytes_max` and `uncommitted_bytes_max` well below the transport's frame, and say
/// in `Config` that an acceptor's unchosen backlog must fit one frame.
#[test]
fn a_backlog_larger_than_a_frame_does_not_stop_every_election() {
    let mut cluster = burst_then_leader_crash(20);
    let leader = elect_and_commit(&mut cluster, 300);
    let promises = cluster
        .oversized
        .iter()
        .filter(|kind| **kind == "Promise")
        .count();
    assert!(
        leader.is_some(),
        "no leader elected in 300 fault-free ticks after the crash: {promises} Promises (and \
         {} other messages) dropped for exceeding the {} byte frame",
        cluster.oversized.len() - promises,
        default_frame_bytes_max()
    );
    cluster.assert_agreement();
}

/// Liveness: one command larger than the transport's frame stops the log for good while its
/// leader lives, and nothing in the replica's API prevents proposing it.
///
/// Schedule: n1 leads {1, 2, 3} over a transport with the default 16 MiB frame and takes a
/// 17 MiB command (`propose` only checks `uncommitted_bytes_max`, 64 MiB by default). Its
/// Accept (one entry: "at least one entry is always sent") never fits a frame; n1 retransmits
/// it every `retransmit_ticks` forever. Later commands get later slots and are accepted, but
/// the chosen mark is a prefix: nothing after the big slot is ever chosen. Heartbeats still
/// pass, so check-quorum keeps n1 leading. (Were n1 to crash, its own Promise would carry the
/// command and be dropped the same way: see the previous scenario.)
///
/// Fix direction: a `Config::command_bytes_max` (kept well below the transport's frame, and
/// with it `accept_bytes_max` and `fetch_bytes_max`, whose "at least one entry" then fits too),
/// checked by `propose` and `on_forward` with a typed `ProposeError::TooLarge { command }`, as
/// `synod::paxos` does with `value_bytes_max`.
#[test]
fn a_command_larger_than_a_frame_is_refused_or_gets_through() {
    let mut cluster = Cluster::new(3);
    cluster.codec = Some(
        Codec::new(0, default_frame_bytes_max()).expect("a frame size within the codec's limits"),
    );
    cluster.elect(1);
    cluster.stabilize();
    let huge = Bytes::from(vec![b'h'; 17 << 20]);
    let taken = cluster.replica_mut(1).propose(huge).is_ok();
    cluster.process(NodeId(1));
    cluster.propose(1, "small");
    cluster.tick_all(100);
    assert_eq!(cluster.leader(), Some(NodeId(1)), "n1 keeps leading");
    assert!(
        !taken || cluster.commands(2).contains(&"small".to_string()),
        "propose took the 17 MiB command, and after 100 ticks nothing after it is chosen: \
         n1's chosen mark is {}, {} Accepts dropped for exceeding the frame",
        cluster.replica(1).status().chosen,
        cluster
            .oversized
            .iter()
            .filter(|kind| **kind == "Accept")
            .count()
    );
}

// ---------------------------------------------------------------------------------------------
// Panics and bounds: `MEMBERS_MAX`, `Config` at its limits, the single-decree node
// ---------------------------------------------------------------------------------------------

/// A panic inside `step` at the limit of 64 members.
///
/// `Membership::validate` allows 64 members (voters and learners), and a replica tracks votes
/// in a 64-bit `VoteSet` indexed by its member list. But a replica's member list is the
/// membership in force *plus itself* (`membership::member_list`): a node that a change leaves
/// out of a 64-member membership has 65 entries, and the voter sorted last gets index 64, which
/// `VoteSet::insert` refuses with a panic ("voter index out of range").
///
/// Schedule: voters {1, 2, 3} and learners {4..=64} (64 members; the learners need not even
/// run). n2 leads and replaces voter 1 by a new voter 65: `change_membership({2, 3, 65},
/// learners {4..=64})`, 64 members, valid, chosen by n2 and n3. n1 learns that the change is
/// chosen (n2's Commit) and panics in `Replica::step`, in `adopt_membership` →
/// `remap_members` → `member_list`. (Had n1 led and removed itself, it would have panicked the
/// same way on the Accepted that chose the change; a restarted n1 would panic in
/// `Replica::new`.) A `step` must return `Ok` or an error, never panic, and replacing a member
/// is one of the documented changes.
///
/// Fix direction: in `member_list`, do not give the replica itself a voter bit it can never
/// have (keep it out of `members` when it is not a member, with `self_index` as an
/// `Option`), or cap a membership at 63 members so that the replica always fits
/// (`Membership::validate`, `MEMBERS_MAX`).
#[test]
fn replacing_a_member_of_a_full_membership_does_not_panic_the_node_it_removes() {
    // 64 members: refused since MEMBERS_MAX became 63 (session 15), by the membership and by
    // the configuration.
    let learners = ids(4..=64);
    assert!(Membership::new(ids([1, 2, 3]), learners.clone())
        .validate()
        .is_err());
    let mut config = config(1, 3);
    config.learners = learners;
    assert!(config.validate().is_err());
    // At the limit, 63 members, a removed node learns its removal: the next scenario.
}

/// The same arithmetic one step inside the limit: a node removed from a 63-member membership
/// (64 entries with itself) learns its removal without trouble.
#[test]
fn a_node_removed_from_a_63_member_membership_learns_it() {
    let learners = ids(4..=63);
    let mut cluster = Cluster::empty();
    for id in 1..=3 {
        let mut config = config(id, 3);
        config.learners = learners.clone();
        cluster.start(config);
    }
    cluster.elect(2);
    let replaced = Membership::new(ids([2, 3, 64]), learners);
    cluster
        .replica_mut(2)
        .change_membership(replaced.clone())
        .unwrap();
    cluster.process(NodeId(2));
    cluster.stabilize();
    cluster.tick_all(3);
    cluster.assert_no_panic();
    assert_eq!(cluster.replica(1).membership(), Some(&replaced));
    assert!(!cluster.replica(1).is_voter());
}

/// `Config` at its bounds: `validate` accepts any `election_ticks` above `heartbeat_ticks`, but
/// `Replica::reset_election_timer` draws the timeout as the `u32` sum `election_ticks +
/// rng % election_ticks`, which overflows for `election_ticks` above `u32::MAX / 2`: a debug
/// build panics in `Replica::new` ("attempt to add with overflow"), a release build wraps to a
/// timeout below `election_ticks` (the documented window `election_ticks..2 *
/// election_ticks` is broken, and with it the stickiness argument for leases).
///
/// The test fails in builds with overflow checks (the test profile); a release build wraps
/// silently, and the wrapped timeout cannot be observed without ticking billions of times.
///
/// Fix direction: draw the timeout in `u64` (store `election_timeout` as `u64`), or have
/// `Config::validate` refuse `election_ticks > u32::MAX / 2`.
#[test]
fn an_election_timeout_that_validates_does_not_overflow() {
    for election_ticks in [u32::MAX, u32::MAX / 2 + 1] {
        let mut config = config(1, 3);
        config.election_ticks = election_ticks;
        config.heartbeat_ticks = 1;
        assert!(config.validate().is_err(), "{election_ticks} is refused");
    }
    let mut config = config(1, 3);
    config.election_ticks = u32::MAX / 2;
    config.heartbeat_ticks = 1;
    assert_eq!(config.validate(), Ok(()), "u32::MAX / 2 is valid");
    let started = catch_unwind(AssertUnwindSafe(|| {
        Replica::new(config, Recovered::default()).map(|_| ())
    }));
    assert!(
        matches!(started, Ok(Ok(()))),
        "Replica::new with election_ticks u32::MAX / 2: {:?}",
        started.map_err(panic_text)
    );
}

/// Bad input to the single-decree node: `synod::paxos::Node::step` accepts any ballot round up
/// to `u64::MAX` (it checks only round 0) and raises the round to beat with it
/// (`Node::see`). The next ballot this node makes is `round_seen + 1`, and
/// `Node::start_prepare` turns the overflow into a panic ("ballot rounds do not run out"): a
/// Prepare with round `u64::MAX` from a peer makes this node's next `propose` panic; a Nack
/// reporting a promise at `u64::MAX` makes the proposer's retry panic inside `tick`. The
/// module promises "bad input is an Err, never a panic". (The replica bounds every round and
/// slot by `SLOT_OR_ROUND_MAX`; the single-decree node has no such bound.)
///
/// Fix direction: refuse rounds above a bound in `Node::validate` (`StepError::Malformed`), as
/// `Replica::validate` does with `SLOT_OR_ROUND_MAX`, and check `proposer_round` and the
/// recovered ballots against it in `Node::new`.
#[test]
fn paxos_a_peer_round_at_u64_max_never_makes_a_later_call_panic() {
    use synod::paxos::{self, DurableState, InstanceId};
    let instance = InstanceId(1);
    let members = ids(1..=3);
    let node = |id| {
        paxos::Node::new(
            paxos::Config::new(instance, NodeId(id), members.clone()),
            DurableState::default(),
        )
        .unwrap()
    };
    let to_1 = |from, body| paxos::Message {
        instance,
        from: NodeId(from),
        to: NodeId(1),
        body,
    };

    // A Prepare at round u64::MAX, then a proposal.
    let mut acceptor = node(1);
    let stepped = acceptor.step(to_1(
        2,
        paxos::Body::Prepare {
            ballot: Ballot::new(u64::MAX, NodeId(2)),
        },
    ));
    let proposed = catch_unwind(AssertUnwindSafe(|| {
        acceptor.propose(Bytes::from_static(b"v")).map(|_| ())
    }));
    assert!(
        proposed.is_ok(),
        "step returned {stepped:?}; the next propose panicked: {}",
        proposed.map_err(panic_text).unwrap_err()
    );

    // A Nack reporting a promise at u64::MAX, then ticks until the retry.
    let mut proposer = node(1);
    let ballot = proposer.propose(Bytes::from_static(b"v")).unwrap();
    let stepped = proposer.step(to_1(
        2,
        paxos::Body::Nack {
            ballot,
            promised: Ballot::new(u64::MAX, NodeId(2)),
        },
    ));
    let ticked = catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..200 {
            proposer.tick();
            while proposer.has_ready() {
                let ready = proposer.ready();
                proposer
                    .advance(ready)
                    .expect("its own ready, acknowledged in order");
            }
        }
    }));
    assert!(
        ticked.is_ok(),
        "step returned {stepped:?}; a later tick panicked: {}",
        ticked.map_err(panic_text).unwrap_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: what a Promise may report, who may forward what
// ---------------------------------------------------------------------------------------------

/// n1 of {1, 2, 3} campaigns and wins its pre-vote with n2's grant: it is a candidate whose own
/// promise is durable, waiting for one more Promise. Returns its ballot.
fn candidate_n1() -> (Replica, Ballot) {
    candidate_n1_with(|_| {})
}

/// Rule confirmed (and why `Replica::validate` cannot copy the single-decree node's check that
/// a Promise reports no ballot above the one it promises): an honest acceptor may report a
/// chosen entry in a ballot *above* the promise. A replica stores fetched chosen entries with the
/// ballot they were chosen in, and fetching raises no promise; a Prepare of a lower ballot that
/// reaches it afterwards (delayed in the network, or retransmitted) is promised, and the Promise
/// reports that entry. The candidate takes it (refusing it would refuse an honest peer), and can
/// adopt only the chosen value from it; it cannot win with that ballot anyway, since the quorum
/// that chose the entry promised a higher one.
///
/// Schedule (five voters): n2 learns from n4 that slot 1 holds "v", chosen in ballot 7.3 (a
/// pre-candidate fetches from a voter that is ahead of it, without promising anything). n1's
/// Prepare in ballot 1.1, delayed until now, reaches n2, which promises it and reports "v" in
/// 7.3. n1, a candidate with n5's pre-vote and n2's, takes the Promise.
#[test]
fn an_honest_promise_may_report_a_chosen_entry_above_its_ballot() {
    let config5 = |id| {
        let mut config = config(id, 5);
        config.election_ticks = 10;
        config
    };
    let fresh = |id| {
        let mut replica = Replica::new(config5(id), Recovered::default()).unwrap();
        drain(&mut replica);
        replica
    };
    let chosen_in = Ballot::new(7, NodeId(3));
    let chosen_entry = Entry {
        slot: 1,
        ballot: chosen_in,
        value: command("v"),
    };
    // n2 fetches the chosen entry from n4.
    let mut n2 = fresh(2);
    n2.step(Message {
        from: NodeId(4),
        to: NodeId(2),
        body: Body::FetchReply {
            ballot: chosen_in,
            entries: vec![chosen_entry.clone()],
            chosen: 1,
        },
    })
    .unwrap();
    drain(&mut n2);
    assert_eq!(n2.status().chosen, 1);
    assert_eq!(
        n2.status().promised,
        Ballot::ZERO,
        "fetching promises nothing"
    );
    // n1 campaigns in a low ballot (it has seen nothing higher).
    let mut n1 = fresh(1);
    n1.campaign();
    let pre_vote = drain(&mut n1)
        .into_iter()
        .find_map(|message| match message.body {
            Body::PreVote { ballot, .. } => Some(ballot),
            _ => None,
        })
        .unwrap();
    for voter in [2, 5] {
        n1.step(Message {
            from: NodeId(voter),
            to: NodeId(1),
            body: Body::PreVoteReply {
                ballot: pre_vote,
                granted: true,
                promised: Ballot::ZERO,
                chosen: 0,
            },
        })
        .unwrap();
    }
    let prepare_to_2 = drain(&mut n1)
        .into_iter()
        .find(|message| is_to(message, 2, "Prepare"))
        .expect("n1 runs phase 1");
    let ballot = n1.status().promised;
    assert!(ballot < chosen_in);
    // The Prepare reaches n2 late: n2 promises and reports the chosen entry above the ballot.
    n2.step(prepare_to_2).unwrap();
    let promise = drain(&mut n2)
        .into_iter()
        .find(|message| is_to(message, 1, "Promise"))
        .expect("n2 promises");
    let Body::Promise { accepted, .. } = &promise.body else {
        unreachable!()
    };
    assert_eq!(accepted, &vec![chosen_entry]);
    assert!(accepted[0].ballot > ballot, "honestly above the promise");
    assert_eq!(n1.step(promise), Ok(()), "an honest Promise is taken");
    assert_eq!(n1.role(), synod::Role::Candidate, "one promise short");
}

/// Rule confirmed: a candidate that completes phase 1 re-proposes, in its own ballot, the
/// highest-ballot value a Promise reported.
#[test]
fn an_honest_promise_is_taken_and_its_value_reproposed() {
    let (mut candidate, ballot) = candidate_n1();
    candidate
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Promise {
                ballot,
                first_slot: 1,
                accepted: vec![Entry {
                    slot: 1,
                    ballot: Ballot::new(ballot.round - 1, NodeId(3)),
                    value: command("kept"),
                }],
                chosen: 0,
                next_slot: None,
            },
        })
        .unwrap();
    assert!(candidate.is_leader());
    let accepts: Vec<Message> = drain(&mut candidate);
    assert!(accepts.iter().any(|message| {
        matches!(&message.body, Body::Accept { entries, .. }
            if entries.len() == 1 && entries[0].value == command("kept") && entries[0].ballot == ballot)
    }));
}

fn forward(from: u64, to: u64, origin: u64, sequence: u64, data: &'static str) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Forward {
            commands: vec![Command {
                id: ProposalId {
                    node: NodeId(origin),
                    incarnation: 1,
                    sequence,
                },
                data: Bytes::from_static(data.as_bytes()),
            }],
        },
    }
}

/// Rule confirmed (misattribution): a leader proposes a forwarded command only under the id of
/// the member that forwarded it. A Forward carrying another member's ids is dropped, and it
/// does not mark those ids as seen: the real proposer's command with the same id still gets
/// through.
#[test]
fn a_forward_naming_another_proposer_is_dropped_without_shadowing_it() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.stabilize();
    let incarnation = cluster.replica(2).status().incarnation;
    let mut forged = forward(3, 1, 2, 1, "forged");
    let mut genuine = forward(2, 1, 2, 1, "genuine");
    for message in [&mut forged, &mut genuine] {
        if let Body::Forward { commands } = &mut message.body {
            commands[0].id.incarnation = incarnation;
        }
    }
    let dropped = cluster.replica(1).status().dropped_messages;
    cluster.step(forged);
    assert_eq!(cluster.replica(1).status().dropped_messages, dropped + 1);
    cluster.step(genuine);
    cluster.stabilize();
    cluster.tick_all(2);
    for id in 1..=3 {
        assert_eq!(cluster.commands(id), ["genuine"], "n{id}");
    }
    let applied = cluster.nodes[&NodeId(3)]
        .applied
        .values()
        .find_map(|value| match value {
            Value::Command { id, .. } => Some(*id),
            _ => None,
        });
    assert_eq!(
        applied.map(|id| id.node),
        Some(NodeId(2)),
        "attributed to n2"
    );
}

/// Proposals lost without any change of leader: the leader's duplicate filter for forwarded
/// commands (`Leadership::forwarded_seen`) keeps only the highest (incarnation, sequence) seen
/// per member and drops every command at or below it. A follower that proposes twice sends two
/// Forwards; if the network delivers the second one first, the first command is dropped as a
/// "duplicate" although it was never proposed. `propose` answered `Ok(id)` for it, and its
/// documentation says a forwarded command "may be lost if the leader changes" — here the leader
/// never changed, every message was delivered, and nothing reports the loss (the application
/// can only notice by a timeout).
///
/// Fix direction (`leader.rs`, `on_forward`): remember the recently proposed ids per member
/// exactly (a bounded set, or a contiguous watermark plus the ids seen above it, per
/// incarnation), so that only a true duplicate is dropped; or have a follower number its
/// Forwards and the leader accept them in order.
#[test]
fn forwards_delivered_out_of_order_are_both_proposed() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.stabilize();
    let first = cluster.propose(2, "first");
    let second = cluster.propose(2, "second");
    assert!(first.sequence < second.sequence);
    let forwards = cluster
        .queue
        .iter()
        .filter(|message| is_from(message, 2, "Forward"))
        .count();
    assert_eq!(forwards, 2, "one Forward per ready");
    // The network delivers the second Forward first.
    let second_forward = cluster
        .queue
        .iter()
        .rposition(|message| is_from(message, 2, "Forward"))
        .unwrap();
    let message = cluster.queue.remove(second_forward).unwrap();
    cluster.step(message);
    cluster.stabilize();
    cluster.tick_all(3);
    assert_eq!(
        cluster.leader(),
        Some(NodeId(1)),
        "the leader never changed"
    );
    let mut applied = cluster.commands(1);
    applied.sort();
    assert_eq!(
        applied,
        ["first", "second"],
        "propose answered Ok for both; dropped messages at n1: {}",
        cluster.replica(1).status().dropped_messages
    );
}

/// Rule confirmed: a node outside the membership (a misconfigured process, a node removed long
/// ago) cannot depose a live leader by campaigning: its pre-votes are denied and its Prepares,
/// however high their ballot, are ignored by the leader and by every follower that hears the
/// leader (leader stickiness holds for strangers too), and the leader keeps committing.
#[test]
fn a_stranger_campaigning_cannot_depose_a_live_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "before");
    cluster.stabilize();
    let ballot = Ballot::new(1 << 40, NodeId(9));
    for to in 1..=3 {
        let promised = cluster.replica(to).status().promised;
        let replica = cluster.replica_mut(to);
        replica
            .step(Message {
                from: NodeId(9),
                to: NodeId(to),
                body: Body::PreVote {
                    ballot,
                    chosen: 1 << 40,
                },
            })
            .unwrap();
        replica.step(prepare(9, to, ballot, 1)).unwrap();
        let answers = drain(replica);
        assert!(
            answers.iter().all(|message| !matches!(
                message.body,
                Body::Promise { .. } | Body::PreVoteReply { granted: true, .. }
            )),
            "n{to} answered the stranger: {answers:?}"
        );
        assert_eq!(cluster.replica(to).status().promised, promised, "n{to}");
    }
    cluster.propose(1, "after");
    cluster.tick_all(2);
    assert_eq!(cluster.leader(), Some(NodeId(1)));
    for id in 1..=3 {
        assert_eq!(cluster.commands(id), ["before", "after"], "n{id}");
    }
}

/// Rule confirmed: a chosen mark is a fact about a quorum's acceptances, not about the disk of
/// the replica that reports it, so a replica may serve chosen entries before its own chosen mark
/// is durable (`on_fetch` answers from the in-memory mark; the Ready contract lets a
/// `FetchReply` go before the write). What the fetcher applies stays chosen after the server
/// crashes and forgets its mark.
///
/// Schedule: n1 leads {1, 2, 3} and cannot reach n3. "a" is chosen at slot 1 by n1 and n2; n2
/// learns it from n1's Commit in a ready whose write it never completes, answers n3's Fetch
/// from that mark (n3 applies "a") and crashes. n1 crashes for good; n2 restarts with chosen
/// mark 0. n2 and n3 elect a leader and commit "b": both apply "a" at slot 1, then "b".
#[test]
fn chosen_entries_served_before_the_servers_write_stay_chosen_after_it_crashes() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.stabilize();
    cluster.blocked.insert((NodeId(1), NodeId(3)));
    cluster.propose(1, "a");
    cluster.deliver_first(|m| is_to(m, 2, "Accept"));
    cluster.deliver_first(|m| is_from(m, 2, "Accepted"));
    assert_eq!(cluster.replica(1).status().chosen, 1);
    let position = cluster
        .queue
        .iter()
        .position(|m| is_to(m, 2, "Commit") || is_to(m, 2, "Heartbeat"))
        .expect("n1 tells n2 the new chosen mark");
    let commit = cluster.queue.remove(position).unwrap();
    let n2 = cluster.replica_mut(2);
    n2.step(commit).unwrap();
    assert_eq!(n2.status().chosen, 1);
    let unwritten = n2.ready(); // its write (chosen mark 1) never completes
    assert_eq!(
        unwritten.persist().hard_state.map(|hard| hard.chosen),
        Some(1)
    );
    let leader_ballot = n2.status().leader_ballot;
    n2.step(Message {
        from: NodeId(3),
        to: NodeId(2),
        body: Body::Fetch {
            ballot: leader_ballot,
            first_slot: 1,
        },
    })
    .unwrap();
    let mut answer = n2.ready();
    let replies = answer.take_messages();
    drop((unwritten, answer));
    let reply = replies
        .into_iter()
        .find(|m| is_to(m, 3, "FetchReply"))
        .expect("n2 serves slot 1 from its unwritten mark");
    cluster.crash(2);
    cluster.step(reply);
    assert_eq!(cluster.commands(3), ["a"]);
    cluster.crash(1);
    cluster.restart(2);
    assert_eq!(cluster.replica(2).status().chosen, 0, "n2 forgot its mark");
    cluster.blocked.clear();
    let mut leader = None;
    for _ in 0..200 {
        cluster.tick_all(1);
        leader = cluster.leader();
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("n2 and n3 elect a leader");
    cluster.propose(leader.0, "b");
    cluster.tick_all(3);
    for id in [2, 3] {
        assert_eq!(cluster.commands(id), ["a", "b"], "n{id}");
    }
    cluster.assert_agreement();
}

/// Rule confirmed (`ProposalId` across restarts): the leader's duplicate filter for forwarded
/// commands is keyed by the follower's incarnation, so a follower that restarts and numbers
/// its proposals from 1 again is not taken for a replay of its previous life; and a replayed
/// Forward of the previous life, arriving late, is dropped.
#[test]
fn a_restarted_followers_forwards_are_not_taken_for_duplicates() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.stabilize();
    for data in ["one", "two", "three"] {
        cluster.propose(2, data);
    }
    let replay = cluster
        .queue
        .iter()
        .find(|m| is_from(m, 2, "Forward"))
        .cloned()
        .unwrap();
    cluster.stabilize();
    cluster.crash(2);
    cluster.restart(2);
    cluster.tick_all(2); // n2 hears the leader again
    let id = cluster.propose(2, "again");
    assert_eq!(id.sequence, 1, "a new life numbers from 1");
    cluster.stabilize();
    cluster.step(replay);
    cluster.tick_all(2);
    for node in 1..=3 {
        assert_eq!(
            cluster.commands(node),
            ["one", "two", "three", "again"],
            "n{node}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The `Ready` contract under asynchronous writes: a seeded schedule sweep
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so that a schedule is its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A write handed out by a ready and not yet durable, with the messages that wait for it.
struct PendingWrite {
    number: u64,
    write: synod::WriteBatch,
    messages: Vec<Message>,
}

struct AsyncNode {
    config: Config,
    replica: Option<Replica>,
    storage: MemStorage,
    pending: VecDeque<PendingWrite>,
    /// The highest ballot this node revealed in a Promise or Accepted (durable by then).
    revealed: Ballot,
}

/// Replicas whose writes complete whenever the schedule says (in order), whose readies are
/// taken while messages keep arriving, and which crash with writes in flight. Checked after
/// every action: a Promise or Accepted is released only once the state it reveals is in the
/// node's storage; a restarted node recovers at least every promise it revealed; no two values
/// are applied in one slot, anywhere, ever.
struct AsyncWorld {
    nodes: Vec<AsyncNode>,
    network: Vec<Message>,
    applied: BTreeMap<u64, Value>,
    /// The command each applied proposal id carried: an id names one command.
    ids: BTreeMap<ProposalId, Bytes>,
    rng: Rng,
    proposals: u64,
    trace: Vec<String>,
    /// A deliberately broken application, to show that the checks catch one: it sends the
    /// messages that should wait for the write at once.
    release_early: bool,
    /// Directed links that drop what they carry (partitions, one-way ones too).
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl AsyncWorld {
    fn new(seed: u64, members: u64) -> AsyncWorld {
        let mut rng = Rng::new(seed);
        // Small limits, so that windows fill, Accepts split and the lookahead bites.
        let lookahead = [2, 4, 1 << 18][rng.below(3) as usize];
        let inflight = [1, 2, 256][rng.below(3) as usize];
        let check_quorum = rng.chance(70);
        let lease_ticks = if rng.chance(30) { 3 } else { 0 };
        let forward_proposals = rng.chance(80);
        let nodes = (1..=members)
            .map(|id| {
                let mut config = config(id, members);
                config.seed = seed ^ (id << 32);
                config.election_ticks = 6;
                config.heartbeat_ticks = 2;
                config.retransmit_ticks = 3;
                config.accept_lookahead_slots_max = lookahead;
                config.inflight_msgs_max = inflight;
                config.accept_bytes_max = 8;
                config.uncommitted_entries_max = 6;
                config.check_quorum = check_quorum;
                config.lease_ticks = lease_ticks;
                config.forward_proposals = forward_proposals;
                let replica = Replica::new(config.clone(), Recovered::default()).unwrap();
                AsyncNode {
                    config,
                    replica: Some(replica),
                    storage: MemStorage::new(),
                    pending: VecDeque::new(),
                    revealed: Ballot::ZERO,
                }
            })
            .collect();
        AsyncWorld {
            nodes,
            network: Vec::new(),
            applied: BTreeMap::new(),
            ids: BTreeMap::new(),
            rng,
            proposals: 0,
            trace: Vec::new(),
            release_early: false,
            blocked: BTreeSet::new(),
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 60 {
            self.trace.remove(0);
        }
        self.trace.push(line);
    }

    /// Takes one ready of node `index`: its messages go out, its write waits, its committed
    /// entries are applied (chosen: applying before the local write is allowed).
    fn take_ready(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        if !replica.has_ready() {
            return Ok(());
        }
        let mut ready = replica.ready();
        let number = ready.number();
        let messages = ready.take_messages();
        if let Some(early) = messages
            .iter()
            .find(|m| matches!(m.body, Body::Promise { .. } | Body::Accepted { .. }))
        {
            return Err(format!("released before its write: {early:?}"));
        }
        let committed: Vec<Entry> = replica.committed(&ready).cloned().collect();
        let write = ready.take_persist();
        let mut persisted = ready.take_persisted_messages();
        replica.recycle(ready);
        if self.release_early {
            for message in persisted.drain(..) {
                if let Body::Promise { ballot, .. } | Body::Accepted { ballot, .. } = message.body {
                    node.revealed = node.revealed.max(ballot);
                }
                self.network.push(message);
            }
        }
        node.pending.push_back(PendingWrite {
            number,
            write,
            messages: persisted,
        });
        self.network.extend(messages);
        for entry in committed {
            if let Some(known) = self.applied.get(&entry.slot) {
                if *known != entry.value {
                    return Err(format!(
                        "slot {}: n{} applied {:?}, {:?} was applied before",
                        entry.slot,
                        index + 1,
                        entry.value,
                        known
                    ));
                }
            }
            if let Value::Command { id, data } = &entry.value {
                if let Some(known) = self.ids.insert(*id, data.clone()) {
                    if known != *data {
                        return Err(format!("{id:?} names {known:?} and {data:?}"));
                    }
                }
            }
            self.applied.insert(entry.slot, entry.value);
        }
        Ok(())
    }

    /// Completes node `index`'s oldest write: it becomes durable, the messages that waited for
    /// it are checked against the storage and released, and the replica is told.
    fn complete_write(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        let Some(mut pending) = node.pending.pop_front() else {
            return Ok(());
        };
        node.storage.write(&mut pending.write).unwrap();
        let durable = node.storage.hard_state();
        for message in &pending.messages {
            let (ballot, slots): (Ballot, Vec<(u64, Ballot)>) = match &message.body {
                Body::Promise {
                    ballot, accepted, ..
                } => (
                    *ballot,
                    accepted.iter().map(|e| (e.slot, e.ballot)).collect(),
                ),
                Body::Accepted {
                    ballot,
                    first_slot,
                    last_slot,
                } => (
                    *ballot,
                    (*first_slot..=*last_slot).map(|s| (s, *ballot)).collect(),
                ),
                _ => continue,
            };
            let promised_durable = durable.promised >= ballot;
            let mut missing = Vec::new();
            for (slot, accepted_in) in slots {
                if slot <= durable.chosen {
                    continue;
                }
                let stored = node.storage.entries(slot, slot).unwrap();
                if !stored
                    .first()
                    .is_some_and(|entry| entry.ballot >= accepted_in)
                {
                    missing.push(slot);
                }
            }
            if !promised_durable || !missing.is_empty() {
                return Err(format!(
                    "n{} released {message:?} with durable promise {} and slots {missing:?} not \
                     durable",
                    index + 1,
                    durable.promised
                ));
            }
            node.revealed = node.revealed.max(ballot);
        }
        if let Some(replica) = node.replica.as_mut() {
            replica
                .on_persisted(pending.number)
                .expect("a number handed out, acknowledged in order");
        }
        self.network.extend(pending.messages);
        Ok(())
    }

    fn crash(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.replica = None;
        node.pending.clear(); // writes in flight are lost
        let id = NodeId(index as u64 + 1);
        self.network.retain(|message| message.to != id);
    }

    fn restart(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        let recovered = node.storage.recover().unwrap();
        if recovered.hard_state.promised < node.revealed {
            return Err(format!(
                "n{} recovered promise {} below the {} it revealed",
                index + 1,
                recovered.hard_state.promised,
                node.revealed
            ));
        }
        node.replica =
            Some(Replica::new(node.config.clone(), recovered).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn deliver(&mut self, position: usize, duplicate: bool) -> Result<(), String> {
        let message = if duplicate {
            self.network[position].clone()
        } else {
            self.network.swap_remove(position)
        };
        if self.blocked.contains(&(message.from, message.to)) {
            return Ok(());
        }
        let index = message.to.0 as usize - 1;
        let Some(replica) = self.nodes[index].replica.as_mut() else {
            return Ok(());
        };
        match replica.step(message.clone()) {
            Ok(()) => Ok(()),
            Err(error) => Err(format!("an honest message refused: {error}: {message:?}")),
        }
    }

    fn propose(&mut self, index: usize) {
        if let Some(replica) = self.nodes[index].replica.as_mut() {
            self.proposals += 1;
            let data = Bytes::from(format!("c{}", self.proposals));
            let _ = replica.propose(data);
        }
    }

    /// One random action.
    fn step_random(&mut self) -> Result<(), String> {
        let count = self.nodes.len();
        let index = self.rng.below(count as u64) as usize;
        let roll = self.rng.below(100);
        match roll {
            0..=19 => {
                self.note(format!("tick n{}", index + 1));
                if let Some(replica) = self.nodes[index].replica.as_mut() {
                    replica.tick();
                }
            }
            20..=39 => {
                self.note(format!("ready n{}", index + 1));
                self.take_ready(index)?;
            }
            40..=57 => {
                self.note(format!("write n{}", index + 1));
                self.complete_write(index)?;
            }
            58..=90 if !self.network.is_empty() => {
                let position = self.rng.below(self.network.len() as u64) as usize;
                let duplicate = self.rng.chance(10);
                let message = &self.network[position];
                let line = format!(
                    "deliver{} {message:?}",
                    if duplicate { " (dup)" } else { "" }
                );
                self.note(line);
                self.deliver(position, duplicate)?;
            }
            91..=92 if !self.network.is_empty() => {
                let position = self.rng.below(self.network.len() as u64) as usize;
                let message = self.network.swap_remove(position);
                self.note(format!("drop {message:?}"));
            }
            93 => {
                if self.rng.chance(40) {
                    self.note("partitions healed".to_string());
                    self.blocked.clear();
                } else {
                    let from = NodeId(index as u64 + 1);
                    let to = NodeId(self.rng.below(count as u64) + 1);
                    let both = self.rng.chance(50);
                    self.note(format!("link {from} -> {to} cut (both ways: {both})"));
                    self.blocked.insert((from, to));
                    if both {
                        self.blocked.insert((to, from));
                    }
                }
            }
            94..=96 => {
                self.note(format!("propose at n{}", index + 1));
                self.propose(index);
            }
            97 => {
                let to = NodeId(self.rng.below(count as u64) + 1);
                let line = match self.nodes[index].replica.as_mut() {
                    Some(replica) if replica.is_leader() => {
                        let outcome = replica.transfer_leadership(to);
                        format!("n{} transfers to {to}: {outcome:?}", index + 1)
                    }
                    Some(replica) => {
                        replica.campaign();
                        format!("n{} campaigns", index + 1)
                    }
                    None => return Ok(()),
                };
                self.note(line);
            }
            98 if self.nodes[index].replica.is_some() => {
                self.note(format!("crash n{}", index + 1));
                self.crash(index);
            }
            _ if self.nodes[index].replica.is_none() => {
                self.note(format!("restart n{}", index + 1));
                self.restart(index)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Fault-free from now on: every node up, every ready taken and written at once, every
    /// message delivered. Returns once a command proposed at the leader is applied, or an error
    /// if that takes more than `ticks` rounds.
    fn heal_and_commit(&mut self, ticks: u32) -> Result<(), String> {
        self.blocked.clear();
        for index in 0..self.nodes.len() {
            if self.nodes[index].replica.is_none() {
                self.restart(index)?;
            }
        }
        let mut proposed = None;
        for _ in 0..ticks {
            for index in 0..self.nodes.len() {
                if let Some(replica) = self.nodes[index].replica.as_mut() {
                    replica.tick();
                }
            }
            for _ in 0..10_000 {
                let mut busy = false;
                for index in 0..self.nodes.len() {
                    while self.nodes[index]
                        .replica
                        .as_ref()
                        .is_some_and(Replica::has_ready)
                    {
                        self.take_ready(index)?;
                        busy = true;
                    }
                    while !self.nodes[index].pending.is_empty() {
                        self.complete_write(index)?;
                        busy = true;
                    }
                }
                while let Some(position) = self.network.len().checked_sub(1) {
                    self.deliver(position, false)?;
                    busy = true;
                }
                if !busy {
                    break;
                }
            }
            let leader = self
                .nodes
                .iter()
                .position(|node| node.replica.as_ref().is_some_and(Replica::is_leader));
            // Proposed (again) under every new leadership until it is applied: a proposal to
            // a leader that is deposed before it is chosen may be lost.
            if let Some(index) = leader {
                let ballot = self.nodes[index]
                    .replica
                    .as_ref()
                    .unwrap()
                    .status()
                    .promised;
                let applied = self
                    .applied
                    .values()
                    .any(|value| matches!(value, Value::Command { data, .. } if data == "final"));
                if !applied && proposed != Some(ballot) {
                    let data = Bytes::from_static(b"final");
                    if self.nodes[index]
                        .replica
                        .as_mut()
                        .unwrap()
                        .propose(data)
                        .is_ok()
                    {
                        proposed = Some(ballot);
                    }
                }
            }
            let final_slot = self.applied.iter().find_map(|(slot, value)| {
                matches!(value, Value::Command { data, .. } if data == "final").then_some(*slot)
            });
            let marks: BTreeSet<(u64, u64)> = self
                .nodes
                .iter()
                .map(|node| {
                    let status = node.replica.as_ref().unwrap().status();
                    (status.chosen, status.applied)
                })
                .collect();
            if let (Some(slot), Some(&(chosen, applied))) = (final_slot, marks.first()) {
                if marks.len() == 1 && chosen == applied && applied >= slot {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no command committed everywhere within {ticks} fault-free ticks (leader proposed: \
             {proposed:?}; status: {:?})",
            self.nodes
                .iter()
                .map(|node| {
                    let status = node.replica.as_ref().unwrap().status();
                    (
                        status.role,
                        status.promised,
                        status.chosen,
                        status.last_slot,
                    )
                })
                .collect::<Vec<_>>()
        ))
    }
}

/// Runs one seeded schedule of `steps` random actions on `members` replicas, then a fault-free
/// suffix that must commit.
fn run_async_schedule(seed: u64, members: u64, steps: u32) -> Result<(), String> {
    run_schedule_with(seed, members, steps, false)
}

fn run_schedule_with(
    seed: u64,
    members: u64,
    steps: u32,
    release_early: bool,
) -> Result<(), String> {
    let mut world = AsyncWorld::new(seed, members);
    world.release_early = release_early;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..steps {
            world.step_random()?;
        }
        world.heal_and_commit(300)
    }));
    let outcome = outcome.unwrap_or_else(|payload| Err(format!("panic: {}", panic_text(payload))));
    outcome.map_err(|error| {
        format!(
            "seed {seed}, {members} members: {error}\nlast actions:\n  {}",
            world.trace.join("\n  ")
        )
    })
}

/// Rules confirmed by a sweep: under asynchronous writes completed in order at any moment,
/// readies taken while messages (and duplicates) keep arriving, crashes that lose every write
/// in flight, restarts, loss, reordering, partitions (one-way ones too), forced campaigns and
/// leadership transfers, with small windows, Accepts and lookaheads, with and without
/// check-quorum and leases: no Promise or Accepted is ever released before the storage holds
/// what it reveals, no restarted node forgets a promise it revealed, no slot is ever applied
/// with two values, no proposal id names two commands, and once the faults stop a leader is
/// elected and commits. 30 000 seeds passed when this was written (`CORE_FAULTS_SEEDS=n` runs
/// more seeds, `CORE_FAULTS_STEPS=n` longer schedules).
#[test]
fn asynchronous_writes_under_faults_keep_every_promise_and_agree() {
    let seeds: u64 = std::env::var("CORE_FAULTS_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(400);
    let steps: u32 = std::env::var("CORE_FAULTS_STEPS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(2000);
    for seed in 0..seeds {
        let members = [3, 3, 5, 1, 2][(seed % 5) as usize];
        if let Err(failure) = run_async_schedule(seed, members, steps) {
            panic!("{failure}");
        }
    }
}

/// The sweep can fail: an application that sends promises and acceptances without waiting for
/// their write (the `Ready` contract broken on purpose) is caught within a few hundred seeds,
/// by a restarted node that forgot a promise it revealed or by two values applied in a slot.
#[test]
fn the_sweep_catches_promises_released_before_their_write() {
    let caught = (0..1000u64).find_map(|seed| {
        let members = [3, 3, 5, 1, 2][(seed % 5) as usize];
        run_schedule_with(seed, members, 2000, true).err()
    });
    let caught = caught.expect("no seed of 1000 caught the early release");
    assert!(
        caught.contains("below the") || caught.contains("applied"),
        "{caught}"
    );
}

/// The review's note "a `Forward` above the frame loses every queued proposal", fixed in
/// session 15: a follower whose queued forwards would not fit one message of
/// `accept_bytes_max` sends them in several, in order, and the leader proposes every one.
/// Here the frame holds 16 KiB and a follower queues eight 4 KiB commands (32 KiB) before its
/// ready: one Forward would be dropped whole.
#[test]
fn queued_forwards_larger_than_a_frame_go_in_several_messages() {
    let mut cluster = Cluster::with(3, |config| config.accept_bytes_max = 8 << 10);
    cluster.codec = Some(Codec::new(0, 16 << 10).expect("a frame size within the codec's limits"));
    cluster.elect(1);
    cluster.stabilize();
    let commands: Vec<String> = (0..8)
        .map(|index| format!("{index}{}", "f".repeat(4095)))
        .collect();
    for command in &commands {
        cluster
            .replica_mut(2)
            .propose(Bytes::from(command.clone()))
            .expect("forwarded");
    }
    cluster.process(NodeId(2));
    cluster.stabilize();
    cluster.tick_all(3);
    cluster.stabilize();
    assert!(
        cluster.oversized.is_empty(),
        "dropped: {:?}",
        cluster.oversized
    );
    for id in 1..=3 {
        // (`commands` names a command this large by its size.)
        assert_eq!(cluster.commands(id).len(), commands.len(), "node {id}");
    }
}
