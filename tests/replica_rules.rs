//! One deterministic test per acceptor, election, leader and learner rule that the other suites left unpinned
//! (each was found by `cargo mutants`: a mutation of the rule survived every other test). Each
//! test names the rule it checks.

mod common;

use bytes::Bytes;
use common::Net;
use synod::message::{Body, Message};
use synod::{Ballot, Entry, NodeId, ProposalId, Recovered, Replica, Storage, Value};

/// A fresh acceptor `id` of a 3-member cluster whose incarnation write is done.
fn acceptor(id: u64) -> Replica {
    let mut replica = Replica::new(common::config(id, 3), Recovered::default()).unwrap();
    drain(&mut replica);
    replica
}

fn prepare(from: u64, to: u64, ballot: Ballot) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Prepare {
            ballot,
            first_slot: 1,
            transfer: None,
        },
    }
}

/// An Accept from `from` to n2 for slot 1 alone, in `ballot`, carrying the chosen mark.
fn accept_slot_1(from: u64, ballot: Ballot, chosen: u64, value: Value) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(2),
        body: Body::Accept {
            ballot,
            chosen,
            entries: vec![Entry {
                slot: 1,
                ballot,
                value,
            }]
            .into(),
        },
    }
}

/// An Accept from n1 to n2 of `slots` (commands "x"), in `ballot`, carrying `chosen`.
fn accept_run(ballot: Ballot, slots: std::ops::RangeInclusive<u64>, chosen: u64) -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::Accept {
            ballot,
            chosen,
            entries: slots
                .map(|slot| Entry {
                    slot,
                    ballot,
                    value: command("x"),
                })
                .collect(),
        },
    }
}

/// A Commit from n1 to n2.
fn commit_to_2(ballot: Ballot, chosen: u64) -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::Commit { ballot, chosen },
    }
}

fn command(data: &'static str) -> Value {
    Value::Command {
        id: ProposalId::default(),
        data: Bytes::from_static(data.as_bytes()),
    }
}

/// A quiet 3-member cluster led by n1.
fn elected() -> Net {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    net
}

/// Runs `replica`'s Ready loop until it is idle, with synchronous writes; returns every
/// message it sent (before and after its writes).
fn drain(replica: &mut Replica) -> Vec<Message> {
    let mut sent = Vec::new();
    while replica.has_ready() {
        let mut ready = replica.ready();
        sent.extend(ready.take_messages());
        sent.extend(ready.take_persisted_messages());
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
    sent
}

/// Makes `candidate` (node 1) campaign and grants its pre-vote from each of `voters`, who
/// report `promised`; the candidate then starts phase 1 (not yet drained).
fn win_pre_vote(candidate: &mut Replica, voters: &[u64], promised: Ballot) {
    candidate.campaign();
    let ballot = drain(candidate)
        .iter()
        .find_map(|message| match message.body {
            Body::PreVote { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("a pre-vote");
    for &from in voters {
        candidate
            .step(Message {
                from: NodeId(from),
                to: NodeId(1),
                body: Body::PreVoteReply {
                    ballot,
                    granted: true,
                    promised,
                    chosen: 0,
                },
            })
            .unwrap();
    }
}

#[test]
fn an_acceptor_refuses_a_prepare_below_its_promise() {
    // Paxos Made Simple §2.2, P1a: having promised ballot 2.3, an acceptor must never promise
    // (or report its votes to) the lower ballot 1.1: it answers Reject with its promise.
    let mut replica = acceptor(2);
    let high = Ballot::new(2, NodeId(3));
    let low = Ballot::new(1, NodeId(1));
    replica.step(prepare(3, 2, high)).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    replica.step(prepare(1, 2, low)).unwrap();
    let mut ready = replica.ready();
    assert!(ready.persist().is_empty(), "a refusal writes nothing");
    assert!(
        ready.take_persisted_messages().is_empty(),
        "no promise for 1.1"
    );
    assert_eq!(
        ready.take_messages(),
        vec![Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Reject {
                ballot: low,
                promised: high
            }
        }]
    );
    assert_eq!(replica.status().promised, high);
}

#[test]
fn a_repeated_prepare_for_the_promised_ballot_is_promised_again_without_a_write() {
    // P1a allows a promise to a ballot not below the promise: a retransmitted Prepare (its
    // Promise may have been lost) is answered with a Promise again; the promise is already
    // durable, so the answer needs no new write.
    let mut replica = acceptor(2);
    let ballot = Ballot::new(1, NodeId(1));
    replica.step(prepare(1, 2, ballot)).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    replica.step(prepare(1, 2, ballot)).unwrap();
    let mut ready = replica.ready();
    assert!(
        ready.persist().hard_state.is_none(),
        "the promise is not written twice"
    );
    assert!(
        ready.take_messages().is_empty(),
        "no Reject for the promised ballot"
    );
    let promises = ready.take_persisted_messages();
    assert!(
        matches!(promises[..], [Message { body: Body::Promise { ballot: b, .. }, .. }] if b == ballot),
        "{promises:?}"
    );
}

#[test]
fn a_late_duplicate_of_the_leaders_prepare_does_not_unseat_it_at_a_follower() {
    // Leader stickiness: a follower forgets its leader only for a higher ballot. The leader's
    // own Prepare, duplicated and delivered after phase 2 began, changes nothing.
    let mut net = elected();
    let old_prepare = net
        .sent
        .iter()
        .find(|message| {
            message.to == NodeId(2)
                && matches!(message.body, Body::Prepare { ballot, .. } if ballot == net.replica(1).status().promised)
        })
        .expect("n1 sent n2 a Prepare")
        .clone();
    net.propose(1, "x");
    net.stabilize();
    let follower = net.replica_mut(2);
    assert_eq!(follower.leader(), Some(NodeId(1)));
    follower.step(old_prepare).unwrap();
    assert_eq!(
        follower.leader(),
        Some(NodeId(1)),
        "the duplicate unseated n1"
    );
    let ready = follower.ready();
    assert!(
        ready.persist().hard_state.is_none(),
        "no new promise to write"
    );
    follower
        .advance(ready)
        .expect("its own ready, acknowledged in order");
}

#[test]
fn an_accept_for_slots_already_chosen_writes_nothing() {
    // A slot known chosen holds the chosen value, which every higher ballot proposes again
    // (P2c): a later Accept for it, even in a higher ballot, is acknowledged but not stored.
    let mut replica = acceptor(2);
    let first = Ballot::new(1, NodeId(1));
    let value = command("v");
    replica
        .step(accept_slot_1(1, first, 0, value.clone()))
        .unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    replica
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::Commit {
                ballot: first,
                chosen: 1,
            },
        })
        .unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    assert_eq!(replica.status().chosen, 1);
    let second = Ballot::new(2, NodeId(3));
    replica.step(accept_slot_1(3, second, 1, value)).unwrap();
    let mut ready = replica.ready();
    assert!(
        ready.persist().runs.is_empty(),
        "a chosen slot was stored again: {:?}",
        ready.persist().runs
    );
    let acknowledged = ready.take_persisted_messages();
    assert!(
        matches!(acknowledged[..], [Message { body: Body::Accepted { ballot, .. }, .. }] if ballot == second),
        "{acknowledged:?}"
    );
}

#[test]
fn a_healthy_leader_ignores_a_higher_prepare() {
    // Leader stickiness on the leader itself: however long it has led, a leader that hears its
    // quorum does not promise a returning replica's higher ballot (only a Reject of its own
    // Accepts, from an acceptor that promised higher, can depose it).
    let mut net = Net::new(3);
    net.elect(1);
    let election_ticks = net.replica(1).config().election_ticks;
    net.tick_all(election_ticks * 3);
    assert!(net.replica(1).is_leader());
    let promised = net.replica(1).status().promised;
    let higher = Ballot::new(promised.round + 10, NodeId(3));
    let leader = net.replica_mut(1);
    leader.step(prepare(3, 1, higher)).unwrap();
    assert!(leader.is_leader(), "the leader stepped down");
    assert_eq!(leader.status().promised, promised);
    let mut ready = leader.ready();
    assert!(ready.take_persisted_messages().is_empty(), "no promise");
    leader
        .advance(ready)
        .expect("its own ready, acknowledged in order");
}

#[test]
fn stickiness_holds_however_long_the_cluster_has_run() {
    // Leader stickiness counts the ticks since the leader was last heard, not since start: a
    // follower that heard its leader a moment ago ignores a higher Prepare after many ticks.
    let mut net = Net::new(3);
    net.elect(1);
    let election_ticks = net.replica(1).config().election_ticks;
    net.tick_all(election_ticks * 10);
    assert_eq!(net.replica(2).leader(), Some(NodeId(1)));
    let promised = net.replica(2).status().promised;
    let higher = Ballot::new(promised.round + 10, NodeId(3));
    let follower = net.replica_mut(2);
    follower.step(prepare(3, 2, higher)).unwrap();
    assert_eq!(follower.status().promised, promised, "promised a usurper");
    assert_eq!(follower.leader(), Some(NodeId(1)));
}

#[test]
fn a_candidate_retransmits_its_prepare_to_acceptors_that_have_not_promised() {
    // Phase 1 over a lossy network: Prepares lost on the way are sent again after
    // `retransmit_ticks`, before any election timeout, and only to acceptors still silent.
    let mut net = Net::new(3);
    net.replica_mut(1).campaign();
    net.process(NodeId(1));
    // Let the pre-vote through, then lose every Prepare.
    for _ in 0..100 {
        if net.replica(1).role() == synod::Role::Candidate {
            break;
        }
        assert!(!net.queue.is_empty(), "the campaign stalled before phase 1");
        net.deliver(0);
    }
    assert_eq!(net.replica(1).role(), synod::Role::Candidate);
    let lost = net.drop_where(|message| matches!(message.body, Body::Prepare { .. }));
    assert_eq!(lost, 2);
    let sent_before = net.sent.len();
    let retransmit_ticks = net.replica(1).config().retransmit_ticks;
    for _ in 0..retransmit_ticks {
        net.tick(1);
    }
    let resent = net.sent[sent_before..]
        .iter()
        .filter(|message| matches!(message.body, Body::Prepare { .. }))
        .count();
    assert_eq!(resent, 2, "the lost Prepares were not sent again");
    net.stabilize();
    assert!(net.replica(1).is_leader());
}

/// A replica of a 3-member cluster that has chosen slot 1 and whose leader went silent long
/// ago (so no leader lease protects anyone).
fn acceptor_with_one_chosen_slot_and_no_live_leader() -> Replica {
    let mut replica = acceptor(2);
    let ballot = Ballot::new(1, NodeId(1));
    replica
        .step(accept_slot_1(1, ballot, 1, command("v")))
        .unwrap();
    for _ in 0..replica.config().election_ticks * 2 {
        replica.tick();
        drain(&mut replica);
    }
    assert_eq!(replica.status().chosen, 1);
    replica
}

fn pre_vote_granted(replica: &mut Replica, ballot: Ballot, chosen: u64) -> bool {
    replica
        .step(Message {
            from: NodeId(3),
            to: NodeId(2),
            body: Body::PreVote { ballot, chosen },
        })
        .unwrap();
    let mut ready = replica.ready();
    let replies = ready.take_messages();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let granted: Vec<bool> = replies
        .iter()
        .filter_map(|message| match message.body {
            Body::PreVoteReply { granted, .. } if message.to == NodeId(3) => Some(granted),
            _ => None,
        })
        .collect();
    assert_eq!(granted.len(), 1, "{replies:?}");
    granted[0]
}

#[test]
fn a_pre_vote_is_denied_to_a_replica_that_knows_fewer_chosen_slots() {
    // Pre-vote: a replica whose chosen mark is behind ours would have to fetch before it could
    // lead well; with no live leader, it gets our vote only if it knows as much as we do.
    let mut replica = acceptor_with_one_chosen_slot_and_no_live_leader();
    let round = replica.status().promised.round + 5;
    let ballot = Ballot::new(round, NodeId(3));
    assert!(
        !pre_vote_granted(&mut replica, ballot, 0),
        "granted to a replica behind"
    );
    assert!(pre_vote_granted(&mut replica, ballot, 1));
}

#[test]
fn a_pre_vote_is_denied_for_a_ballot_not_above_the_promise() {
    // Pre-vote asks "would you promise this ballot?": not if it is not above the promise (P1a).
    let mut replica = acceptor_with_one_chosen_slot_and_no_live_leader();
    let promised = Ballot::new(replica.status().promised.round + 2, NodeId(3));
    replica.step(prepare(3, 2, promised)).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    assert_eq!(replica.status().promised, promised);
    assert!(!pre_vote_granted(&mut replica, promised, 1));
    let above = Ballot::new(promised.round + 1, NodeId(3));
    assert!(pre_vote_granted(&mut replica, above, 1));
}

#[test]
fn denied_pre_votes_never_add_up_to_an_election() {
    // Pre-vote: only grants count. A replica cut off from the leader, whose pre-votes the
    // leader's followers deny, never starts phase 1: its promise stays where it was.
    let mut net = Net::new(3);
    net.elect(1);
    net.blocked.insert((NodeId(1), NodeId(3)));
    net.blocked.insert((NodeId(3), NodeId(1)));
    let promised = net.replica(3).status().promised;
    let election_ticks = net.replica(3).config().election_ticks;
    let mut denials = 0;
    for _ in 0..election_ticks * 6 {
        net.tick_all(1);
        denials += net
            .sent
            .iter()
            .filter(|message| {
                message.to == NodeId(3)
                    && matches!(message.body, Body::PreVoteReply { granted: false, .. })
            })
            .count();
        net.sent.clear();
        assert_ne!(net.replica(3).role(), synod::Role::Candidate);
    }
    assert!(denials > 0, "n3 never asked for a pre-vote");
    assert_eq!(net.replica(3).status().promised, promised);
    assert!(net.replica(1).is_leader());
}

/// Delivers the first queued message that matches `predicate` (and processes its recipient).
fn deliver_first(net: &mut Net, predicate: impl Fn(&Message) -> bool) {
    let index = net
        .queue
        .iter()
        .position(predicate)
        .expect("a matching message is queued");
    net.deliver(index);
}

fn is_accept_to(message: &Message, to: u64) -> bool {
    message.to == NodeId(to) && matches!(message.body, Body::Accept { .. })
}

fn is_accepted_from(message: &Message, from: u64) -> bool {
    message.from == NodeId(from) && matches!(message.body, Body::Accepted { .. })
}

fn accept_slots(message: &Message) -> Vec<u64> {
    match &message.body {
        Body::Accept { entries, .. } => entries.iter().map(|entry| entry.slot).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn a_follower_whose_window_frees_gets_the_next_accept_at_once() {
    // Flow control: a follower's window (here one Accept) holds back later slots, and the
    // acknowledgement that frees it releases the next Accept in the same batch, not a tick
    // later, even when that acknowledgement chooses nothing (5 members: the leader and one
    // follower are not a quorum).
    let mut net = Net::with(5, |config| config.inflight_msgs_max = 1);
    net.elect(1);
    net.stabilize();
    net.propose(1, "a");
    net.propose(1, "b");
    let to_n4: Vec<Vec<u64>> = net
        .queue
        .iter()
        .filter(|message| is_accept_to(message, 4))
        .map(accept_slots)
        .collect();
    assert_eq!(to_n4.len(), 1, "the window holds one Accept: {to_n4:?}");
    let slot_b = to_n4[0][0] + 1;
    let chosen = net.replica(1).status().chosen;
    deliver_first(&mut net, |message| is_accept_to(message, 4));
    let sent_before = net.sent.len();
    deliver_first(&mut net, |message| is_accepted_from(message, 4));
    assert_eq!(net.replica(1).status().chosen, chosen, "nothing was chosen");
    let released: Vec<Vec<u64>> = net.sent[sent_before..]
        .iter()
        .filter(|message| is_accept_to(message, 4))
        .map(accept_slots)
        .collect();
    assert_eq!(released, vec![vec![slot_b]], "b was not sent to n4 at once");
}

#[test]
fn an_accept_carries_entries_up_to_exactly_its_byte_limit() {
    // Batching: `accept_bytes_max` is an inclusive bound on the payload bytes of one Accept.
    let mut net = Net::with(3, |config| {
        config.accept_bytes_max = 8;
        config.inflight_msgs_max = 16;
    });
    net.elect(1);
    net.stabilize();
    let leader = net.replica_mut(1);
    for command in ["aaaa", "bbbb", "cccc"] {
        leader
            .propose(Bytes::from_static(command.as_bytes()))
            .unwrap();
    }
    net.process(NodeId(1));
    let batches: Vec<Vec<u64>> = net
        .queue
        .iter()
        .filter(|message| is_accept_to(message, 2))
        .map(accept_slots)
        .collect();
    assert_eq!(batches.len(), 2, "4 + 4 bytes fill one Accept: {batches:?}");
    assert_eq!(batches[0].len(), 2);
    assert_eq!(batches[1].len(), 1);
}

#[test]
fn an_accepted_for_slots_never_proposed_is_ignored() {
    // Bad input never panics: a (buggy or forged) Accepted in the leader's ballot that claims
    // slots beyond the last one proposed counts for nothing.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "x");
    net.stabilize();
    let before = net.replica(1).status();
    let ballot = before.promised;
    let leader = net.replica_mut(1);
    leader
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Accepted {
                ballot,
                first_slot: before.last_slot + 1,
                last_slot: before.last_slot + 1000,
            },
        })
        .ok();
    let after = leader.status();
    assert_eq!(after.chosen, before.chosen);
    assert_eq!(after.last_slot, before.last_slot);
    assert!(leader.is_leader());
}

#[test]
fn uncommitted_bytes_return_to_zero_once_everything_is_chosen() {
    // Flow control: the uncommitted backlog counts payload bytes proposed and not yet chosen;
    // choosing releases them (or the leader would end up refusing everything with Busy).
    let mut net = Net::new(3);
    net.elect(1);
    for command in ["aaaa", "bb", "c"] {
        net.propose(1, command);
    }
    assert_eq!(net.replica(1).status().uncommitted_bytes, 7);
    net.stabilize();
    assert_eq!(net.replica(1).status().uncommitted_bytes, 0);
    // One command chosen alone releases exactly its bytes.
    net.propose(1, "eeeee");
    assert_eq!(net.replica(1).status().uncommitted_bytes, 5);
    net.stabilize();
    assert_eq!(net.replica(1).status().uncommitted_bytes, 0);
}

#[test]
fn a_follower_sent_an_accept_gets_no_separate_commit() {
    // The chosen mark rides on Accepts: a batch that carries an Accept to a follower sends it
    // no Commit as well.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let sent_before = net.sent.len();
    net.propose(1, "b");
    let to_n2: Vec<&Message> = net.sent[sent_before..]
        .iter()
        .filter(|message| message.to == NodeId(2))
        .collect();
    assert_eq!(to_n2.len(), 1, "{to_n2:?}");
    assert!(matches!(to_n2[0].body, Body::Accept { .. }));
}

#[test]
fn no_commit_is_sent_when_the_chosen_mark_did_not_move() {
    // A Commit only announces a chosen mark the follower has not been sent; a quiet leader's
    // batches (heartbeats) carry no Commits.
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let sent_before = net.sent.len();
    for _ in 0..net.replica(1).config().election_ticks {
        net.tick(1);
        net.stabilize();
    }
    let commits = net.sent[sent_before..]
        .iter()
        .filter(|message| matches!(message.body, Body::Commit { .. }))
        .count();
    assert!(
        net.sent[sent_before..]
            .iter()
            .any(|message| matches!(message.body, Body::Heartbeat { .. })),
        "the leader sent no heartbeat"
    );
    assert_eq!(commits, 0);
}

#[test]
fn a_leader_heartbeats_every_heartbeat_ticks_not_every_tick() {
    // Heartbeats are paced by `heartbeat_ticks` (a quiet cluster costs little).
    let mut net = elected();
    let heartbeat_ticks = u64::from(net.replica(1).config().heartbeat_ticks);
    assert!(heartbeat_ticks > 1, "the test needs heartbeat_ticks > 1");
    let ticks = heartbeat_ticks * 10;
    let sent_before = net.sent.len();
    for _ in 0..ticks {
        net.tick(1);
        net.stabilize();
    }
    let heartbeats_to_n2 = net.sent[sent_before..]
        .iter()
        .filter(|message| message.to == NodeId(2) && matches!(message.body, Body::Heartbeat { .. }))
        .count() as u64;
    assert_eq!(heartbeats_to_n2, ticks / heartbeat_ticks);
}

#[test]
fn a_follower_fetches_once_what_it_lacks_and_never_what_it_holds() {
    // Learning (Paxos Made Simple §3): a chosen mark beyond the local log triggers one Fetch
    // (retried by ticks, not by every message); a mark the log already covers triggers none.
    let mut replica = acceptor(2);
    let ballot = Ballot::new(1, NodeId(1));
    replica
        .step(accept_slot_1(1, ballot, 0, command("a")))
        .unwrap();
    let commit = |chosen| commit_to_2(ballot, chosen);
    let fetches = |replica: &mut Replica| {
        let mut ready = replica.ready();
        let count = ready
            .take_messages()
            .iter()
            .filter(|message| matches!(message.body, Body::Fetch { .. }))
            .count();
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
        count
    };
    fetches(&mut replica);
    replica.step(commit(1)).unwrap();
    assert_eq!(fetches(&mut replica), 0, "slot 1 is held: nothing to fetch");
    assert_eq!(replica.status().chosen, 1);
    replica.step(commit(3)).unwrap();
    assert_eq!(fetches(&mut replica), 1, "slots 2 and 3 are missing");
    replica.step(commit(3)).unwrap();
    assert_eq!(fetches(&mut replica), 0, "a Fetch is already outstanding");
    // A reply that reaches the leader's mark asks for nothing more.
    let entries = [2, 3]
        .map(|slot| Entry {
            slot,
            ballot,
            value: command("b"),
        })
        .to_vec();
    replica
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::FetchReply {
                ballot,
                entries,
                chosen: 3,
            },
        })
        .unwrap();
    assert_eq!(replica.status().chosen, 3);
    assert_eq!(
        fetches(&mut replica),
        0,
        "the reply reached the leader's mark"
    );
}

fn fetch_reply_slots(net: &mut Net, first_slot: u64) -> Option<Vec<u64>> {
    let ballot = net.replica(1).status().promised;
    let leader = net.replica_mut(1);
    leader
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Fetch { ballot, first_slot },
        })
        .unwrap();
    let mut ready = leader.ready();
    let replies: Vec<Vec<u64>> = ready
        .take_messages()
        .into_iter()
        .filter_map(|message| match message.body {
            Body::FetchReply { entries, .. } => {
                Some(entries.iter().map(|entry| entry.slot).collect())
            }
            _ => None,
        })
        .collect();
    leader
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    assert!(replies.len() <= 1);
    replies.into_iter().next()
}

#[test]
fn a_fetch_is_served_from_its_first_slot_to_the_chosen_mark_within_the_byte_limit() {
    // Catch-up: any replica serves the chosen entries it holds, from the asked slot through
    // its chosen mark, at most `fetch_bytes_max` payload bytes (inclusive) per reply; a Fetch
    // above the chosen mark gets no answer.
    let mut net = Net::with(3, |config| config.fetch_bytes_max = 8);
    net.elect(1);
    for command in ["aaaa", "bbbb", "cccc"] {
        net.propose(1, command);
    }
    net.stabilize();
    let chosen = net.replica(1).status().chosen;
    assert!(chosen >= 3);
    assert_eq!(fetch_reply_slots(&mut net, chosen), Some(vec![chosen]));
    assert_eq!(fetch_reply_slots(&mut net, chosen + 1), None);
    let from = chosen - 2;
    assert_eq!(
        fetch_reply_slots(&mut net, from),
        Some(vec![from, from + 1]),
        "4 + 4 bytes fill one reply"
    );
}

#[test]
fn lost_accepts_to_a_live_follower_are_all_sent_again_after_retransmit_ticks_and_not_before() {
    // Retransmission: every Accept unanswered for `retransmit_ticks` is sent again, once per
    // interval (not on every tick), to a follower heard from recently (a silent one gets only
    // the oldest, as a probe).
    let mut net = elected();
    net.propose(1, "a");
    net.propose(1, "b");
    let last = net.replica(1).status().last_slot;
    assert_eq!(
        net.drop_where(|message| matches!(message.body, Body::Accept { .. })),
        4,
        "two Accepts to each follower"
    );
    let retransmit_ticks = net.replica(1).config().retransmit_ticks;
    let accepts_to_n3 = |net: &Net, from: usize| {
        net.sent[from..]
            .iter()
            .filter(|message| is_accept_to(message, 3))
            .map(accept_slots)
            .collect::<Vec<_>>()
    };
    let sent_before = net.sent.len();
    for _ in 1..retransmit_ticks {
        net.tick(1);
        net.queue
            .retain(|message| !matches!(message.body, Body::Accept { .. }));
        net.stabilize(); // heartbeats and their replies keep n3 live
    }
    assert!(
        accepts_to_n3(&net, sent_before).is_empty(),
        "sent too early"
    );
    net.tick(1);
    assert_eq!(
        accepts_to_n3(&net, sent_before),
        vec![vec![last - 1], vec![last]]
    );
    net.stabilize();
    assert!(net.replica(1).status().chosen >= last);
}

#[test]
fn a_new_leader_adopts_the_highest_ballot_value_whatever_order_promises_arrive_in() {
    // Paxos Made Simple §2.2, P2c: among the values the promises report for a slot, the leader
    // proposes the one accepted in the highest ballot, even when a lower one is reported later.
    let mut replica = Replica::new(common::config(1, 5), Recovered::default()).unwrap();
    drain(&mut replica);
    win_pre_vote(&mut replica, &[2, 3], Ballot::ZERO);
    // Drained: the candidate's own promise is durable.
    let ballot = drain(&mut replica)
        .iter()
        .find_map(|message| match message.body {
            Body::Prepare { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("phase 1 started");
    let high = Entry {
        slot: 1,
        ballot: Ballot::new(ballot.round - 1, NodeId(4)),
        value: command("high"),
    };
    let low = Entry {
        slot: 1,
        ballot: Ballot::new(ballot.round - 1, NodeId(2)),
        value: command("low"),
    };
    assert!(low.ballot < high.ballot && high.ballot < ballot);
    for (from, accepted) in [(2, high.clone()), (3, low)] {
        replica
            .step(Message {
                from: NodeId(from),
                to: NodeId(1),
                body: Body::Promise {
                    ballot,
                    first_slot: 1,
                    accepted: vec![accepted],
                    chosen: 0,
                    next_slot: None,
                },
            })
            .unwrap();
    }
    let mut ready = replica.ready();
    let proposed: Vec<Value> = ready
        .take_messages()
        .into_iter()
        .filter_map(|message| match message.body {
            Body::Accept { entries, .. } => entries
                .into_iter()
                .find(|entry| entry.slot == 1)
                .map(|entry| entry.value.clone()),
            _ => None,
        })
        .collect();
    assert!(replica.is_leader());
    assert!(!proposed.is_empty(), "slot 1 was not re-proposed");
    assert!(
        proposed.iter().all(|value| *value == high.value),
        "P2c: proposed {proposed:?}"
    );
}

/// Persistence before promise, at the leader: its own acceptance of a slot counts toward the
/// quorum only once the write of the ready that carried it is acknowledged, not when an
/// earlier ready's write is.
#[test]
fn a_leader_counts_its_own_acceptance_only_once_that_write_is_durable() {
    let mut net = elected();
    let leader = net.replica_mut(1);
    let ballot = leader.status().promised;
    let slot_x = leader.status().last_slot + 1;
    leader.propose(Bytes::from_static(b"x")).unwrap();
    let ready_x = leader.ready();
    leader.propose(Bytes::from_static(b"y")).unwrap();
    let ready_y = leader.ready();
    assert!(ready_y.number() > ready_x.number());
    leader
        .on_persisted(ready_x.number())
        .expect("a number handed out, acknowledged in order");
    leader
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Accepted {
                ballot,
                first_slot: slot_x,
                last_slot: slot_x + 1,
            },
        })
        .unwrap();
    assert_eq!(
        leader.status().chosen,
        slot_x,
        "y is accepted by n2 only: the leader's own acceptance of it is not durable yet"
    );
    leader
        .on_persisted(ready_y.number())
        .expect("a number handed out, acknowledged in order");
    assert_eq!(leader.status().chosen, slot_x + 1);
}

/// A follower's election timeout is drawn from `election_ticks..2 * election_ticks`: it starts
/// a pre-vote no sooner and no later, whatever the seed.
#[test]
fn election_timeouts_fall_in_their_window() {
    for seed in 0..16 {
        let mut config = common::config(2, 3);
        config.seed = seed;
        config.election_ticks = 10;
        let mut replica = Replica::new(config, Recovered::default()).unwrap();
        drain(&mut replica);
        let mut ticks = 0;
        let started = loop {
            ticks += 1;
            replica.tick();
            let pre_vote = drain(&mut replica)
                .iter()
                .any(|message| matches!(message.body, Body::PreVote { .. }));
            if pre_vote || ticks > 100 {
                break ticks;
            }
        };
        assert!(
            (10..20).contains(&started),
            "seed {seed}: pre-vote after {started} ticks"
        );
    }
}

/// The application learns of each change of leader once: followers report the new leader when
/// they first hear of it, and not again on every heartbeat.
#[test]
fn a_change_of_leader_is_reported_once() {
    let mut net = elected();
    net.tick_all(10);
    for id in [2, 3] {
        let reports = net.nodes[&NodeId(id)]
            .events
            .iter()
            .filter(|event| {
                matches!(event, synod::Event::LeaderChanged { leader: Some(leader), .. } if *leader == NodeId(1))
            })
            .count();
        assert_eq!(reports, 1, "n{id}");
    }
}

/// Status reports how long ago the leader heard from each follower, and where the log starts
/// after compaction.
#[test]
fn status_reports_silence_and_compaction() {
    let mut net = Net::new(3);
    net.elect(1);
    for index in 0..5 {
        net.propose(1, &format!("c{index}"));
    }
    net.stabilize();
    let silence = |net: &Net| {
        net.replica(1)
            .status()
            .followers
            .iter()
            .map(|follower| follower.ticks_since_heard)
            .collect::<Vec<_>>()
    };
    let before = silence(&net);
    assert!(
        before.iter().all(|&ticks| ticks <= 1),
        "followers were just heard: {before:?}"
    );
    net.tick(1);
    net.tick(1);
    net.queue.clear();
    let after = silence(&net);
    assert_eq!(
        after,
        before.iter().map(|ticks| ticks + 2).collect::<Vec<_>>()
    );
    let follower = net.replica_mut(2);
    let applied = follower.status().applied;
    assert!(applied >= 3);
    follower
        .compact(3)
        .expect("compacting at or below the applied mark");
    assert_eq!(follower.status().first_slot, 4);
}

fn forward(from: u64, to: u64, sequences: std::ops::RangeInclusive<u64>) -> Message {
    let commands = sequences
        .map(|sequence| synod::message::Command {
            id: ProposalId {
                node: NodeId(from),
                incarnation: 1,
                sequence,
            },
            data: Bytes::from_static(b"f"),
        })
        .collect();
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Forward { commands },
    }
}

/// Forwarded proposals that cannot be taken are dropped, and counted: at a replica that is not
/// the leader (the follower's client retries), and at a leader whose uncommitted bound is full.
#[test]
fn forwards_that_cannot_be_taken_are_dropped_and_counted() {
    let mut net = Net::with(3, |config| config.uncommitted_entries_max = 2);
    net.elect(1);
    net.stabilize();
    let follower = net.replica_mut(2);
    let before = follower.status().dropped_messages;
    follower.step(forward(3, 2, 1..=1)).unwrap();
    assert_eq!(follower.status().dropped_messages, before + 1);

    let leader = net.replica_mut(1);
    let before = leader.status();
    leader.step(forward(2, 1, 1..=5)).unwrap();
    let after = leader.status();
    assert_eq!(after.last_slot, before.last_slot + 2, "room for two");
    assert_eq!(after.dropped_messages, before.dropped_messages + 3);
}

/// A fetched entry is taken as chosen only up to the chosen mark the reply carries: entries
/// past it (the leader's uncommitted tail) are not chosen yet.
#[test]
fn a_fetch_reply_counts_as_chosen_only_up_to_its_mark() {
    let mut follower = acceptor(2);
    let ballot = Ballot::new(1, NodeId(1));
    let entries = (1..=3)
        .map(|slot| Entry {
            slot,
            ballot,
            value: command("f"),
        })
        .collect();
    follower
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::FetchReply {
                ballot,
                entries,
                chosen: 2,
            },
        })
        .unwrap();
    assert_eq!(follower.status().chosen, 2);
    let ready = follower.ready();
    let committed: Vec<u64> = follower.committed(&ready).map(|e| e.slot).collect();
    assert_eq!(committed, vec![1, 2]);
    follower
        .advance(ready)
        .expect("its own ready, acknowledged in order");
}

/// Lost Prepares are sent again after `retransmit_ticks` (to the members that have not
/// promised yet), not before and not only at the next election.
#[test]
fn a_candidate_resends_prepares_after_retransmit_ticks() {
    let mut candidate = acceptor(1);
    for _ in 0..5 {
        candidate.tick(); // a clock that does not start at 0 (below the election timeout)
    }
    assert!(!candidate.has_ready());
    win_pre_vote(&mut candidate, &[2], Ballot::ZERO);
    let prepares = |candidate: &mut Replica| {
        drain(candidate)
            .iter()
            .filter(|message| matches!(message.body, Body::Prepare { .. }))
            .count()
    };
    assert_eq!(prepares(&mut candidate), 2, "the first round of Prepares");
    let retransmit = candidate.config().retransmit_ticks;
    for tick in 1..retransmit {
        candidate.tick();
        assert_eq!(
            prepares(&mut candidate),
            0,
            "resent after {tick} ticks only"
        );
    }
    candidate.tick();
    assert_eq!(
        prepares(&mut candidate),
        2,
        "resent after {retransmit} ticks"
    );
}

/// A leader steps down only for a rejection of its current ballot by a higher promise: a
/// rejection naming a promise that is not higher (a stale or garbled one) changes nothing.
#[test]
fn a_rejection_without_a_higher_promise_does_not_depose_the_leader() {
    let mut net = elected();
    let leader = net.replica_mut(1);
    let ballot = leader.status().promised;
    leader
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Reject {
                ballot,
                promised: ballot,
            },
        })
        .unwrap();
    assert!(leader.is_leader());
    let higher = Ballot::new(ballot.round + 1, NodeId(2));
    leader
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::Reject {
                ballot,
                promised: higher,
            },
        })
        .unwrap();
    assert!(!leader.is_leader(), "a higher promise deposes it");
}

/// Phase 1 counts only promises of the candidate's current ballot: a late promise for an older
/// ballot of the same candidate must not complete the quorum.
#[test]
fn a_promise_for_an_older_ballot_does_not_count() {
    let mut candidate = acceptor(1);
    candidate
        .step(prepare(3, 1, Ballot::new(3, NodeId(3))))
        .unwrap();
    drain(&mut candidate);
    win_pre_vote(&mut candidate, &[2], Ballot::new(3, NodeId(3)));
    drain(&mut candidate);
    let current = candidate.status().promised;
    assert!(current.round >= 4 && current.node == NodeId(1), "{current}");
    let promise = |ballot| Message {
        from: NodeId(2),
        to: NodeId(1),
        body: Body::Promise {
            ballot,
            first_slot: 1,
            accepted: Vec::new(),
            chosen: 0,
            next_slot: None,
        },
    };
    candidate.step(promise(Ballot::new(2, NodeId(1)))).unwrap();
    drain(&mut candidate);
    assert!(
        !candidate.is_leader(),
        "a promise for an older ballot counted"
    );
    candidate.step(promise(current)).unwrap();
    drain(&mut candidate);
    assert!(candidate.is_leader());
}

/// Flow control: a follower has at most `inflight_msgs_max` unacknowledged Accepts.
#[test]
fn a_follower_has_at_most_inflight_msgs_max_accepts_outstanding() {
    let mut net = Net::with(3, |config| {
        config.inflight_msgs_max = 2;
        config.accept_bytes_max = 1; // one command per Accept
    });
    net.elect(1);
    net.stabilize();
    let leader = net.replica_mut(1);
    for index in 0..5 {
        leader.propose(Bytes::from(format!("c{index}"))).unwrap();
    }
    let accepts = drain(leader)
        .iter()
        .filter(|m| m.to == NodeId(2) && matches!(m.body, Body::Accept { .. }))
        .count();
    assert_eq!(accepts, 2);
}

/// Check-quorum: a leader that hears from no follower steps down at the first check at which a
/// whole `election_ticks` has passed since it last heard from a quorum, not a check later. The
/// check runs every `election_ticks`; over every phase of that cycle, the earliest step-down
/// comes exactly `election_ticks` ticks after the leader last heard from a follower.
#[test]
fn an_isolated_leader_steps_down_at_the_first_check_past_the_window() {
    let election_ticks = u64::from(common::config(1, 3).election_ticks);
    let mut earliest = u64::MAX;
    for phase in 0..election_ticks {
        let mut net = Net::new(3);
        net.elect(1);
        net.stabilize();
        for _ in 0..phase {
            net.tick_all(1);
        }
        let silence = net
            .replica(1)
            .status()
            .followers
            .iter()
            .map(|follower| follower.ticks_since_heard)
            .min()
            .unwrap();
        let mut ticks = 0;
        while net.replica(1).is_leader() {
            let leader = net.replica_mut(1);
            leader.tick();
            ticks += 1;
            drain(leader); // nothing reaches the followers, nothing comes back
            assert!(ticks <= 3 * election_ticks, "never stepped down");
        }
        earliest = earliest.min(silence + ticks);
    }
    assert_eq!(earliest, election_ticks);
}

/// A cluster where n1 led and n1, n2 chose and applied "a", "b", "c" in slots 1..=3 while n3
/// was cut off, then compacted their logs through slot 3; n1 has crashed and n2's lease on it
/// has run out. n3 knows nothing of slots 1..=3.
fn compacted_majority_and_a_blank_node() -> Net {
    let mut net = Net::new(3);
    net.isolate(3);
    net.elect(1);
    for data in ["a", "b", "c"] {
        net.propose(1, data);
    }
    net.stabilize();
    assert_eq!(net.commands(2), ["a", "b", "c"]);
    for id in [1, 2] {
        let replica = net.replica_mut(id);
        let applied = replica.status().applied;
        assert_eq!(applied, 3);
        replica
            .compact(applied)
            .expect("compacting at or below the applied mark");
    }
    net.crash(1);
    net.heal();
    let ticks = net.replica(2).config().election_ticks * 2;
    for _ in 0..ticks {
        net.tick(2);
    }
    net.queue.clear(); // n2's own campaign goes nowhere
    net
}

#[test]
fn an_acceptor_does_not_promise_a_candidate_that_needs_slots_it_compacted() {
    // P1b (Paxos Made Simple §2.2): a promise reports every value the acceptor accepted from
    // the candidate's first unchosen slot on. An acceptor that compacted some of those slots
    // away cannot report them; a promise without them would read as "nothing accepted there".
    // It stays silent and promises nothing (the candidate needs a snapshot, not votes).
    let mut net = compacted_majority_and_a_blank_node();
    let replica = net.replica_mut(2);
    let promised = replica.status().promised;
    let ballot = Ballot::new(promised.round + 1, NodeId(3));
    for first_slot in [1, 3] {
        replica
            .step(Message {
                from: NodeId(3),
                to: NodeId(2),
                body: Body::Prepare {
                    ballot,
                    first_slot,
                    transfer: None,
                },
            })
            .unwrap();
        let sent = drain(replica);
        assert!(
            !sent
                .iter()
                .any(|message| matches!(message.body, Body::Promise { .. })),
            "promised from slot {first_slot} without the compacted slots: {sent:?}"
        );
        assert_eq!(replica.status().promised, promised, "nothing promised");
    }
    // A candidate that needs nothing compacted is promised as usual.
    replica
        .step(Message {
            from: NodeId(3),
            to: NodeId(2),
            body: Body::Prepare {
                ballot,
                first_slot: 4,
                transfer: None,
            },
        })
        .unwrap();
    let sent = drain(replica);
    assert!(
        sent.iter()
            .any(|message| matches!(message.body, Body::Promise { first_slot: 4, .. })),
        "no promise from slot 4: {sent:?}"
    );
    assert_eq!(replica.status().promised, ballot);
}

#[test]
fn a_candidate_behind_the_compaction_point_cannot_overwrite_chosen_slots() {
    // The same rule, end to end: n3 (blank) campaigns with n2's pre-vote (granted earlier, say,
    // and delivered late). Were n2 to promise without its compacted slots, n3 would lead with
    // next slot 1 and choose a new command in slot 1, where n1 and n2 applied "a".
    let mut net = compacted_majority_and_a_blank_node();
    net.replica_mut(3).campaign();
    net.process(NodeId(3));
    let ballot = net
        .queue
        .iter()
        .find_map(|message| match message.body {
            Body::PreVote { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("a pre-vote");
    net.queue.clear();
    let promised = net.replica(2).status().promised;
    net.replica_mut(3)
        .step(Message {
            from: NodeId(2),
            to: NodeId(3),
            body: Body::PreVoteReply {
                ballot,
                granted: true,
                promised,
                chosen: 0,
            },
        })
        .unwrap();
    net.process(NodeId(3));
    net.stabilize();
    assert!(
        !net.replica(3).is_leader(),
        "n3 won phase 1 without learning the chosen slots 1..=3"
    );
    net.assert_agreement();
}

#[test]
fn a_replica_restarted_after_compacting_every_entry_starts_its_log_after_the_chosen_mark() {
    // Storage compacted through the chosen mark recovers no entry at all. The replica must
    // start (no "chosen slot has no entry" error) with its log after the chosen mark, and
    // treat slots 1..=3 as compacted: no promise to a candidate that needs them.
    let hard_state = synod::HardState {
        promised: Ballot::new(1, NodeId(1)),
        chosen: 3,
        incarnation: 1,
    };
    let recovered = Recovered {
        hard_state,
        entries: Vec::new(),
        memberships: common::first_memberships(3),
    };
    let mut config = common::config(2, 3);
    config.applied = 3;
    let mut replica = Replica::new(config, recovered).expect("restarts after full compaction");
    drain(&mut replica);
    assert_eq!(replica.status().first_slot, 4);
    let ballot = Ballot::new(2, NodeId(3));
    let promise_from = |replica: &mut Replica, first_slot| {
        replica
            .step(Message {
                from: NodeId(3),
                to: NodeId(2),
                body: Body::Prepare {
                    ballot,
                    first_slot,
                    transfer: None,
                },
            })
            .unwrap();
        drain(replica)
            .into_iter()
            .any(|message| matches!(message.body, Body::Promise { .. }))
    };
    assert!(
        !promise_from(&mut replica, 2),
        "promised over compacted slots"
    );
    assert!(promise_from(&mut replica, 4), "no promise from slot 4");
}

#[test]
fn a_restart_below_the_compaction_point_is_refused() {
    // Committed entries are handed out again from `config.applied + 1` after a restart. If the
    // storage compacted those slots away, they cannot be: the application must restore its
    // snapshot and pass the snapshot's slot, else the replica would silently skip commands.
    let entries = (4..=5)
        .map(|slot| Entry {
            slot,
            ballot: Ballot::new(1, NodeId(1)),
            value: command("x"),
        })
        .collect();
    let recovered = Recovered {
        hard_state: synod::HardState {
            promised: Ballot::new(1, NodeId(1)),
            chosen: 5,
            incarnation: 1,
        },
        entries,
        memberships: common::first_memberships(3),
    };
    let mut config = common::config(2, 3);
    config.applied = 2;
    let error = Replica::new(config.clone(), recovered.clone()).unwrap_err();
    assert!(error.to_string().contains("applied"), "{error}");
    config.applied = 3;
    let mut replica = Replica::new(config, recovered).expect("snapshot at slot 3");
    let ready = replica.ready();
    let slots: Vec<u64> = replica.committed(&ready).map(|e| e.slot).collect();
    assert_eq!(slots, [4, 5]);
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_from_a_snapshot_installed_by_restart() {
    // With the log compacted on the others, a lagging follower cannot fetch the slots it lacks:
    // the leader reports `SnapshotNeeded`. The application installs its snapshot by restarting
    // the follower from it: its storage gets a hard state whose chosen mark is the snapshot's
    // slot (its promise kept) and is compacted through that slot, its state machine restores
    // the snapshot, and the replica restarts with `Config::applied` at the slot. It then
    // follows the log from the slot after.
    let mut net = Net::new(3);
    net.isolate(3);
    net.elect(1);
    for data in ["a", "b", "c"] {
        net.propose(1, data);
    }
    net.stabilize();
    let snapshot_slot = net.replica(1).status().applied;
    assert_eq!(snapshot_slot, 3);
    for id in [1, 2] {
        net.replica_mut(id)
            .compact(snapshot_slot)
            .expect("compacting at or below the applied mark");
        let node = net.nodes.get_mut(&NodeId(id)).unwrap();
        node.storage.compact(snapshot_slot);
    }
    net.heal();
    net.propose(1, "d");
    net.stabilize();
    net.tick_all(3);
    assert!(
        net.reported_snapshot_needed(1, 3),
        "the leader reports the follower it cannot serve: {events:?}",
        events = net.nodes[&NodeId(1)].events
    );
    assert!(net.commands(3).is_empty(), "n3 cannot apply past its gap");

    // Install the snapshot of slot 3 on n3.
    net.crash(3);
    let snapshot: Vec<(u64, Value)> = net
        .applied(1)
        .range(..=snapshot_slot)
        .map(|(slot, value)| (*slot, value.clone()))
        .collect();
    let node = net.nodes.get_mut(&NodeId(3)).unwrap();
    let mut hard_state = node.storage.hard_state();
    hard_state.chosen = hard_state.chosen.max(snapshot_slot);
    node.storage
        .write(&mut synod::WriteBatch {
            hard_state: Some(hard_state),
            runs: Vec::new(),
            must_sync: true,
            memberships: None,
            compact_through: None,
        })
        .unwrap();
    node.storage.compact(snapshot_slot);
    node.config.applied = snapshot_slot;
    node.applied.extend(snapshot); // the state machine restored from the snapshot
    net.restart(3);

    net.propose(1, "e");
    net.stabilize();
    net.tick_all(3);
    assert_eq!(net.commands(3), ["a", "b", "c", "d", "e"]);
    net.assert_agreement();
}

#[test]
fn an_acceptor_stores_only_the_slots_within_its_lookahead() {
    // Config::accept_lookahead_slots_max: slots more than that far beyond the chosen mark are
    // not stored (the leader sends them again once the mark moves), however new they are; the
    // slots of the same Accept within the lookahead are accepted.
    let mut config = common::config(2, 3);
    config.accept_lookahead_slots_max = 4;
    let mut replica = Replica::new(config, Recovered::default()).unwrap();
    drain(&mut replica);
    let ballot = Ballot::new(1, NodeId(1));
    let accept = |slots| accept_run(ballot, slots, 0);
    for (slots, stored, acknowledged) in [
        (5..=6, vec![], None),
        (4..=5, vec![4], Some((4, 4))),
        (2..=9, vec![2, 3], Some((2, 4))),
    ] {
        replica.step(accept(slots.clone())).unwrap();
        let mut ready = replica.ready();
        let written: Vec<u64> = ready.persist().entries().map(|e| e.slot).collect();
        assert_eq!(written, stored, "{slots:?}");
        let replies: Vec<(u64, u64)> = ready
            .take_persisted_messages()
            .iter()
            .filter_map(|message| match message.body {
                Body::Accepted {
                    first_slot,
                    last_slot,
                    ..
                } => Some((first_slot, last_slot)),
                _ => None,
            })
            .collect();
        assert_eq!(
            replies,
            acknowledged.into_iter().collect::<Vec<_>>(),
            "{slots:?}"
        );
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
}

#[test]
fn a_leader_further_ahead_than_the_lookahead_still_gets_its_slots_chosen() {
    // One Accept carrying more unchosen slots than the acceptors' lookahead: each acceptor
    // takes the slots within it, they are chosen, the mark moves, and the retransmissions
    // bring the rest. (Ignoring the whole Accept deadlocked: nothing was ever chosen.)
    let mut net = Net::with(3, |config| config.accept_lookahead_slots_max = 4);
    net.elect(1);
    for index in 0..10 {
        net.replica_mut(1)
            .propose(format!("c{index}").into())
            .unwrap();
    }
    net.process(NodeId(1));
    net.stabilize();
    let retransmit = net.replica(1).config().retransmit_ticks;
    for _ in 0..4 * retransmit {
        net.tick_all(1);
    }
    let expected: Vec<String> = (0..10).map(|index| format!("c{index}")).collect();
    for id in 1..=3 {
        assert_eq!(net.commands(id), expected, "n{id}");
    }
}

#[test]
fn a_higher_ballot_overwrites_an_unchosen_slot_and_a_duplicate_is_not_written_twice() {
    // Acceptors accept per slot (P1a): an Accept in a higher ballot for a slot holding an
    // older, unchosen acceptance is stored (its Accepted claims the new ballot, so the new
    // entry must be what is written); the same Accept delivered again is acknowledged without
    // a second write.
    let mut replica = acceptor(2);
    let first = Ballot::new(1, NodeId(1));
    replica
        .step(accept_slot_1(1, first, 0, command("old")))
        .unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let second = Ballot::new(2, NodeId(3));
    for (delivery, written) in [("first", true), ("duplicate", false)] {
        replica
            .step(accept_slot_1(3, second, 0, command("new")))
            .unwrap();
        let mut ready = replica.ready();
        let entries: Vec<(Ballot, Value)> = ready
            .persist()
            .entries()
            .map(|entry| (entry.ballot, entry.value.clone()))
            .collect();
        if written {
            assert_eq!(entries, [(second, command("new"))], "{delivery}");
        } else {
            assert!(entries.is_empty(), "{delivery}: written again: {entries:?}");
        }
        let acknowledged = ready.take_persisted_messages();
        assert!(
            matches!(acknowledged[..], [Message { body: Body::Accepted { ballot, .. }, .. }] if ballot == second),
            "{delivery}: {acknowledged:?}"
        );
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
}

#[test]
fn a_follower_learns_each_chosen_mark_its_log_covers_without_fetching() {
    // Learning (Paxos Made Simple §3): an entry accepted in the leader's ballot is the value
    // that ballot proposed, so a Commit covering held entries moves the chosen mark at once,
    // every time, with no Fetch.
    let mut replica = acceptor(2);
    let ballot = Ballot::new(1, NodeId(1));
    let is_fetch = |message: &Message| matches!(message.body, Body::Fetch { .. });
    replica.step(accept_run(ballot, 1..=2, 0)).unwrap();
    drain(&mut replica);
    replica.step(commit_to_2(ballot, 2)).unwrap();
    assert_eq!(replica.status().chosen, 2);
    assert!(!drain(&mut replica).iter().any(is_fetch));
    replica.step(accept_run(ballot, 3..=5, 2)).unwrap();
    drain(&mut replica);
    replica.step(commit_to_2(ballot, 5)).unwrap();
    assert_eq!(replica.status().chosen, 5, "the second mark, from 2 to 5");
    assert!(!drain(&mut replica).iter().any(is_fetch));
}

#[test]
fn append_messages_to_hands_over_what_take_messages_would() {
    let mut net = elected();
    net.replica_mut(1)
        .propose(Bytes::from_static(b"a"))
        .unwrap();
    let mut taken = net.replica(1).clone();
    let mut appended = taken.clone();
    let mut ready = taken.ready();
    let expected = (ready.take_messages(), ready.take_persisted_messages());
    let mut ready = appended.ready();
    let mut queue = vec![Message {
        from: NodeId(9),
        to: NodeId(9),
        body: Body::Forward { commands: vec![] },
    }];
    ready.append_messages_to(&mut queue);
    let mut persisted = Vec::new();
    ready.append_persisted_messages_to(&mut persisted);
    assert!(!expected.0.is_empty(), "the leader has Accepts to send");
    assert_eq!(
        queue[1..],
        expected.0[..],
        "appended after what the queue held"
    );
    assert_eq!(persisted, expected.1);
    assert!(ready.take_messages().is_empty() && ready.take_persisted_messages().is_empty());
}

/// A Promise may leave at most `accept_lookahead_slots_max` of its slots unreported (an honest
/// acceptor holds every slot up to its chosen mark and accepts none further than that beyond
/// it): one leaving more is refused as malformed and does not count, so a faulty peer's report
/// at a huge slot cannot make the new leader fill every slot up to it with no-ops. A promise
/// leaving exactly that many counts, and the leader fills them.
#[test]
fn a_promise_leaving_more_holes_than_the_lookahead_is_refused() {
    let lookahead = 64;
    let mut config = common::config(1, 3);
    config.accept_lookahead_slots_max = lookahead;
    let mut candidate = Replica::new(config, Recovered::default()).unwrap();
    drain(&mut candidate);
    win_pre_vote(&mut candidate, &[2], Ballot::ZERO);
    let ballot = drain(&mut candidate)
        .iter()
        .find_map(|message| match message.body {
            Body::Prepare { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("phase 1 started");
    let reporting = |slots: &[u64]| Message {
        from: NodeId(2),
        to: NodeId(1),
        body: Body::Promise {
            ballot,
            first_slot: 1,
            accepted: slots
                .iter()
                .map(|&slot| Entry {
                    slot,
                    ballot: Ballot::new(1, NodeId(2)),
                    value: command("x"),
                })
                .collect(),
            chosen: 0,
            next_slot: None,
        },
    };
    let dropped = candidate.status().dropped_messages;
    for slots in [
        vec![synod::replica::SLOT_OR_ROUND_MAX],
        vec![lookahead + 2],
        vec![1, 3, lookahead + 4],
    ] {
        let refused = candidate.step(reporting(&slots));
        assert!(
            matches!(&refused, Err(synod::StepError::Malformed { reason, .. }) if reason.contains("accept_lookahead_slots_max")),
            "{slots:?}: {refused:?}"
        );
        drain(&mut candidate);
        assert!(!candidate.is_leader(), "{slots:?} counted as a promise");
    }
    assert_eq!(candidate.status().dropped_messages, dropped + 3);
    // Slots 1 and 2 + lookahead reported, the `lookahead` slots between them not.
    candidate.step(reporting(&[1, lookahead + 2])).unwrap();
    drain(&mut candidate);
    assert!(candidate.is_leader());
    let status = candidate.status();
    assert_eq!(
        status.uncommitted_bytes, 2,
        "two commands re-proposed, no-ops between"
    );
}

/// The same node leading again under a higher ballot is a change of leader too: the follower
/// reports it with the new ballot (and stamps its fetches with it).
#[test]
fn the_same_leader_under_a_higher_ballot_is_reported_again() {
    let mut follower = acceptor(2);
    drain(&mut follower);
    let heartbeat = |round| Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::Heartbeat {
            ballot: Ballot::new(round, NodeId(1)),
            chosen: 0,
            read: 0,
        },
    };
    let mut reported = Vec::new();
    for round in [1, 1, 2] {
        follower.step(heartbeat(round)).unwrap();
        let mut ready = follower.ready();
        reported.extend(
            ready
                .take_events()
                .into_iter()
                .filter_map(|event| match event {
                    synod::Event::LeaderChanged { leader, ballot } => Some((leader, ballot.round)),
                    _ => None,
                }),
        );
        follower
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
    assert_eq!(reported, [(Some(NodeId(1)), 1), (Some(NodeId(1)), 2)]);
}
