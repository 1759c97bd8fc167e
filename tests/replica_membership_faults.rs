//! Membership change under adversarial schedules: scenarios that attack the two rules
//! (nothing after a change until it is chosen; phase 1 stops at a change) and the handover,
//! snapshot, restart and read paths around them. Five of them failed when they were written
//! (session 14's review); each says what went wrong and what the fix is.

mod common;

use common::Net;
use synod::message::{Body, Message};
use synod::replica::Event;
use synod::{Membership, NodeId, ReadError, Value};

fn ids(list: &[u64]) -> Vec<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

fn voters(list: &[u64]) -> Membership {
    Membership::new(ids(list), [])
}

fn is_accept_to(message: &Message, to: u64) -> bool {
    message.to == NodeId(to) && matches!(message.body, Body::Accept { .. })
}

fn is_accepted_from(message: &Message, from: u64) -> bool {
    message.from == NodeId(from) && matches!(message.body, Body::Accepted { .. })
}

/// The value `id` applied at `slot`, as a string ("noop", "membership" or the command).
fn applied_at(net: &Net, id: u64, slot: u64) -> Option<String> {
    net.applied(id).get(&slot).map(|value| match value {
        Value::Command { data, .. } => String::from_utf8(data.to_vec()).unwrap(),
        Value::Noop => "noop".to_string(),
        Value::Membership(_) => "membership".to_string(),
    })
}

/// Safety: a change to the membership already in force, recovered by phase 1, made the new
/// leader skip phase 1 for every slot after it. Fixed: a leader whose phase 1 stopped at a
/// recovered change runs phase 1 again once it is chosen, whatever the change names
/// (`Leadership::phase_one_stopped`).
///
/// `become_leader` stops phase 1 at the first change it recovers (slot `s`), sets
/// `membership_pending = Some(s)` and gives out slots from `s + 1` once `s` is chosen,
/// expecting `adopt_membership` to step it down and campaign again in the new membership.
/// But when the change names the membership already in force, `adopt_membership` only clears
/// the pending change and returns: the leader keeps leading with `next_slot = s + 1`, although
/// its phase 1 discarded what the promises reported after `s`.
///
/// Sequence (three voters, n1 leads):
/// 1. n1 proposes the no-op change {1,2,3} at `s`; only n2 gets the Accept and n1 gets n2's
///    Accepted: `s` is chosen (n1, n2), n1 keeps leading (same membership).
/// 2. The Commits for `s` are lost. n1 proposes "x" at `s + 1`; only n3 gets the Accept
///    (it lacks `s`, so its chosen mark stays below `s`); n3's Accepted makes "x" chosen at
///    `s + 1` by {n1, n3}, and n1 applies it.
/// 3. n1 crashes. n2 (chosen mark `s - 1`) wins pre-votes and phase 1 with n3: the promises
///    report the change at `s` (n2) and "x" at `s + 1` (n3). n2 stops at `s`, re-proposes the
///    change, gets it chosen, "adopts" the same membership and keeps leading at `s + 1`.
/// 4. n2 proposes "y": it gets slot `s + 1`, n3 accepts it over "x" (higher ballot), and "y"
///    is chosen at `s + 1`, where "x" was chosen already.
#[test]
fn a_recovered_change_to_the_same_membership_must_not_skip_phase_one_after_it() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.tick_all(2);

    let s = net
        .replica_mut(1)
        .change_membership(voters(&[1, 2, 3]))
        .unwrap();
    net.process(NodeId(1));
    // Only n2 gets the change; n2's Accepted makes it chosen at n1.
    net.drop_where(|message| is_accept_to(message, 3));
    net.deliver_first(|message| is_accept_to(message, 2));
    net.deliver_first(|message| is_accepted_from(message, 2));
    assert_eq!(net.replica(1).status().chosen, s);
    assert!(
        net.replica(1).is_leader(),
        "the same membership: n1 leads on"
    );
    // The Commits for `s` are lost.
    net.drop_where(|message| message.from == NodeId(1));
    // "x" at s + 1 reaches n3 only, and n3's acceptance makes it chosen.
    net.propose(1, "x");
    net.drop_where(|message| is_accept_to(message, 2));
    net.deliver_first(|message| is_accept_to(message, 3));
    net.drop_where(|message| message.from == NodeId(3) && !is_accepted_from(message, 3));
    net.deliver_first(|message| is_accepted_from(message, 3));
    assert_eq!(net.replica(1).status().chosen, s + 1);
    assert_eq!(applied_at(&net, 1, s + 1).as_deref(), Some("x"));
    assert!(net.replica(2).status().chosen < s);
    assert!(net.replica(3).status().chosen < s);

    net.crash(1);
    net.queue.clear();
    net.elect(2);
    net.tick_all(3);
    assert!(net.replica(2).is_leader());
    net.propose(2, "y");
    net.stabilize();
    net.tick_all(3);
    // n1 applied "x" at s + 1: no other value may be chosen there.
    for id in [2, 3] {
        if let Some(value) = applied_at(&net, id, s + 1) {
            assert_eq!(value, "x", "n{id} applied another value at slot {}", s + 1);
        }
    }
    net.assert_agreement();
}

/// Liveness: a single voter with a learner never confirmed a read while the learner was
/// unreachable. Fixed: a leader that is the only voter answers reads at once.
///
/// `confirm_read` answers at once only when `members.len() == 1`; a learner is a member, so
/// the sole voter queues the read for a read round. `confirm_reads`, which would find that
/// the quorum of one voter (the leader itself) echoed the round, runs only when a
/// `HeartbeatReply` arrives, and only the learner can send one. With the learner down the
/// read waits forever (no abort either: the leader never steps down, check-quorum counts
/// voters only), although nobody but this leader can lead.
#[test]
fn a_sole_voter_confirms_reads_without_its_learner() {
    let mut net = Net::new(1);
    net.elect(1);
    net.join(2);
    let with_learner = Membership::new(ids(&[1]), ids(&[2]));
    net.replica_mut(1)
        .change_membership(with_learner.clone())
        .unwrap();
    net.process(NodeId(1));
    net.stabilize();
    net.tick_all(5);
    assert_eq!(net.replica(2).membership(), Some(&with_learner));
    assert!(net.replica(1).is_leader());
    net.isolate(2);
    net.replica_mut(1).read_index(7).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    for _ in 0..100 {
        net.tick(1);
        net.stabilize();
    }
    assert!(net.replica(1).is_leader(), "the sole voter leads on");
    assert!(
        net.reads(1).iter().any(|(context, _)| *context == 7),
        "read 7 neither confirmed nor aborted after 100 ticks: {:?}",
        net.reads(1)
    );
}

/// Liveness (found by `sim` seeds 15126 and 16054 of `--nodes 3 --spare-nodes 2
/// --kv-clients 4`, and 27211 with `--lease-ticks 5`): a voter that missed a change and must catch up through a snapshot never
/// installs it, because it is a pre-candidate.
///
/// n3 leads {1, 2, 3} and changes to voters {2}, learner {1}, chosen by {1, 3} while n2 is cut
/// off; n1 and n3 then snapshot and compact. n2, the only voter, still believes in {1, 2, 3}
/// and, still cut off, has timed out once already (a pre-candidate before it hears anyone;
/// had it been a follower when the first hint arrived, it would have installed the snapshot):
/// at each election timeout it becomes a pre-candidate and sends PreVotes; n1 and n3 refuse
/// (n2 is behind) but their replies carry their chosen mark, so n2 fetches from them. They
/// compacted the slots n2 lacks: `SnapshotNeeded`, and the snapshot is sent. But
/// `on_snapshot_chunk` / `install_snapshot` take a snapshot only in `Role::Follower`, and n2
/// is a `PreCandidate` (it stays one: its pre-vote never gets a quorum, and the next timeout
/// starts another): it answers every chunk with "not needed". No leader is ever elected.
/// (`on_fetch_reply` accepted fetched entries in `PreCandidate`; the snapshot path did not.)
/// Fixed: a pre-candidate installs a snapshot like a follower.
#[test]
fn a_voter_that_missed_the_change_catches_up_through_a_snapshot() {
    let mut net = Net::new(3);
    net.elect(3);
    net.propose(3, "a");
    net.stabilize();
    net.isolate(2);
    let alone = Membership::new(ids(&[2]), ids(&[1]));
    net.replica_mut(3).change_membership(alone.clone()).unwrap();
    net.process(NodeId(3));
    net.stabilize();
    net.tick_all(2);
    assert_eq!(net.replica(3).membership(), Some(&alone));
    assert_eq!(net.replica(1).membership(), Some(&alone));
    for id in [1, 3] {
        net.snapshot_and_compact(id);
    }
    // n2, still cut off, times out and becomes a pre-candidate (it stays one).
    for _ in 0..30 {
        net.tick(2);
    }
    assert_eq!(net.replica(2).role(), synod::Role::PreCandidate);
    net.heal();
    net.tick_all(200);
    let sent_snapshots = net
        .sent
        .iter()
        .filter(|message| message.to == NodeId(2) && matches!(message.body, Body::Snapshot { .. }))
        .count();
    assert!(sent_snapshots > 0, "the snapshot was offered");
    assert_eq!(
        net.replica(2).membership(),
        Some(&alone),
        "n2 never learned the change ({sent_snapshots} snapshot chunks sent to it, role {:?})",
        net.replica(2).role()
    );
    assert_eq!(net.leader(), Some(NodeId(2)));
    net.propose(2, "b");
    net.stabilize();
    assert_eq!(net.commands(2), ["a", "b"]);
}

/// The chosen mark a message carries to its recipient, if any.
fn chosen_carried(message: &Message) -> Option<u64> {
    match &message.body {
        Body::Accept { chosen, .. }
        | Body::Commit { chosen, .. }
        | Body::Heartbeat { chosen, .. }
        | Body::FetchReply { chosen, .. } => Some(*chosen),
        _ => None,
    }
}

/// Delivers everything, FIFO, except the messages `drop` picks (dropped instead).
fn settle_dropping(net: &mut Net, drop: impl Fn(&Message) -> bool) {
    for _ in 0..100_000 {
        if net.queue.is_empty() {
            return;
        }
        if drop(&net.queue[0]) {
            net.queue.remove(0);
        } else {
            net.deliver(0);
        }
    }
    panic!("network never went quiet");
}

/// Safety (the same as the first test, reached without anyone asking for the membership already
/// in force): an operator retries a change at a deposed leader, and the stale entry is later
/// recovered by a leader whose membership already is the target.
///
/// M0 = voters {1, 2, 3}; M1 = the same voters and learner 4.
/// 1. n1 leads M0 (ballot b1). Cut off (its messages lost), it takes "p" at `s - 1` and the
///    operator's change to M1 at `s`: both stay in n1's log only. n1 crashes.
/// 2. n2 is elected in M0 (b2), the operator retries the change there: chosen at `s - 1`; n2
///    campaigns again in M1 and leads it (b3). It takes "v" at `s`, which only n2 (and the
///    learner) accept. n2 crashes; the learner is cut off for good.
/// 3. n1 restarts, fetches `s - 1` from n3 (so it is in M1 too) and wins phase 1 in M1 with
///    n3 from `s`: the highest value reported at `s` is its own stale change to M1 (b1). It
///    stops there, re-proposes it (b4) and, once chosen, "adopts" M1 — the membership already
///    in force — and leads on from `s + 1` without having recovered anything after `s`.
///    (Harmless so far: nothing was chosen after `s`.) n3 is kept from learning that `s` is
///    chosen (the messages telling it are lost).
/// 4. n2 restarts; n1 gets "w" chosen at `s + 1` by {1, 2} and applies it. n1 crashes.
/// 5. n2 (chosen mark `s - 1`) wins phase 1 in M1 with n3 from `s`: the change to M1 (b4,
///    from n3) at `s`, "w" (b4, from n2) at `s + 1`. It stops at `s`, gets the change chosen,
///    "adopts" M1 again, leads on from `s + 1` and gets "z" chosen there, over "w".
///
/// Fixed as the first test: step 5's n2 campaigns again once `s` is chosen and recovers "w".
#[test]
fn a_stale_retried_change_must_not_skip_phase_one_after_it() {
    let mut net = Net::new(3);
    net.join(4);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.tick_all(2);
    let m1 = Membership::new(ids(&[1, 2, 3]), ids(&[4]));

    // 1. The stale leader's proposals never leave it.
    net.propose(1, "p");
    let s = net.replica_mut(1).change_membership(m1.clone()).unwrap();
    net.process(NodeId(1));
    net.drop_where(|message| message.from == NodeId(1));
    net.crash(1);

    // 2. The retry succeeds at n2, which then leads M1.
    net.elect(2);
    let s1 = net.replica_mut(2).change_membership(m1.clone()).unwrap();
    assert_eq!(s1, s - 1);
    net.process(NodeId(2));
    net.stabilize();
    net.tick_all(2);
    assert!(net.replica(2).is_leader());
    for id in [2, 3, 4] {
        assert_eq!(net.replica(id).membership(), Some(&m1), "n{id}");
    }
    net.propose(2, "v");
    net.drop_where(|message| is_accept_to(message, 3));
    net.stabilize();
    assert!(net.replica(2).status().chosen < s);
    net.crash(2);
    net.isolate(4);

    // 3. n1 recovers its own stale change at `s` and leads on past it; n3 never hears that
    //    `s` is chosen.
    net.restart(1);
    let to_n3_past_s = move |message: &Message| {
        message.to == NodeId(3) && chosen_carried(message).is_some_and(|chosen| chosen >= s)
    };
    for _ in 0..60 {
        net.tick(3); // n3 lets its stickiness lapse; its own campaign is dropped
        net.queue.retain(|message| message.from != NodeId(3));
    }
    for _ in 0..200 {
        if net.replica(1).is_leader() && net.replica(1).status().chosen >= s {
            break;
        }
        net.tick(1);
        settle_dropping(&mut net, to_n3_past_s);
    }
    assert!(net.replica(1).is_leader());
    assert_eq!(net.replica(1).status().chosen, s);
    assert_eq!(applied_at(&net, 1, s).as_deref(), Some("membership"));
    assert!(net.replica(3).status().chosen < s);

    // 4. "w" is chosen at s + 1 by {1, 2}.
    net.restart(2);
    settle_dropping(&mut net, to_n3_past_s);
    net.propose(1, "w");
    settle_dropping(&mut net, |message| {
        to_n3_past_s(message)
            || (message.to == NodeId(1) && matches!(message.body, Body::Fetch { .. }))
            || (message.from == NodeId(1) && message.to == NodeId(2) && !is_accept_to(message, 2))
    });
    assert_eq!(applied_at(&net, 1, s + 1).as_deref(), Some("w"));
    assert!(net.replica(2).status().chosen < s);
    net.crash(1);
    net.queue.clear();

    // 5. n2 recovers the change at `s` and overwrites `s + 1`.
    net.elect(2);
    net.tick_all(3);
    assert!(net.replica(2).is_leader());
    net.propose(2, "z");
    net.stabilize();
    net.tick_all(3);
    for id in [2, 3] {
        if let Some(value) = applied_at(&net, id, s + 1) {
            assert_eq!(value, "w", "n{id} applied another value at slot {}", s + 1);
        }
    }
    net.assert_agreement();
}

/// Linearizability: a leader whose phase 1 stopped at a recovered change confirmed reads
/// with a majority of the old membership, although the change may be chosen already and the
/// new membership may have acknowledged writes after it. Fixed: such a leader serves no read
/// (`ReadError::Busy`; a follower's request is refused) until it has campaigned again.
///
/// M0 = {1, 2, 3}, M1 = {1, 4, 5}.
/// 1. n1 leads M0 and changes to M1 at `s`: n2 and n3 accept, n2's Accepted makes it chosen.
///    The messages that would tell n2 and n3 it is chosen are lost (they are cut off).
/// 2. n1 campaigns in M1, leads it with n4 and n5, and gets "x" chosen and applied at `s + 1`:
///    acknowledged to its client.
/// 3. n1, n4, n5 are cut off from n2 and n3. n2 (chosen mark `s - 1`, still in M0) wins
///    phase 1 with n3 from `s`, recovers the change and leads M0 with it pending (slot `s`
///    is `read_floor`). A client now asks n2 for a read: the read round is echoed by n3 (the
///    Accept of the change is lost), and n2 reports `ReadReady` at slot `s`, which lacks "x".
///    The M0 majority {2, 3} that confirmed it says nothing about M1's slots after `s`.
#[test]
fn a_leader_with_a_recovered_change_does_not_confirm_stale_reads() {
    let mut net = Net::new(3);
    net.join(4);
    net.join(5);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.tick_all(2);
    let m1 = voters(&[1, 4, 5]);

    // 1. Chosen by {1, 2}; n2 and n3 never hear that it is.
    let s = net.replica_mut(1).change_membership(m1.clone()).unwrap();
    net.process(NodeId(1));
    net.deliver_first(|message| is_accept_to(message, 2));
    net.deliver_first(|message| is_accept_to(message, 3));
    net.drop_where(|message| is_accepted_from(message, 3));
    net.deliver_first(|message| is_accepted_from(message, 2));
    assert_eq!(net.replica(1).membership(), Some(&m1));
    net.isolate(2);
    net.isolate(3);
    // 2. n1 leads M1 and "x" is acknowledged at s + 1.
    net.stabilize();
    net.tick_all(3);
    assert!(net.replica(1).is_leader());
    net.propose(1, "x");
    net.stabilize();
    assert_eq!(applied_at(&net, 1, s + 1).as_deref(), Some("x"));
    assert!(net.replica(2).status().chosen < s && net.replica(3).status().chosen < s);

    // 3. n2 and n3 on their own; n2 wins phase 1 in M0.
    net.heal();
    for id in [1, 4, 5] {
        net.isolate(id);
    }
    for _ in 0..60 {
        net.tick(3);
        net.queue.retain(|message| message.from != NodeId(3));
    }
    for _ in 0..200 {
        if net.replica(2).is_leader() {
            break;
        }
        net.tick(2);
        while !net.queue.is_empty() && !net.replica(2).is_leader() {
            net.deliver(0);
        }
    }
    assert!(net.replica(2).is_leader());
    assert_eq!(net.replica(2).status().membership_pending, Some(s));
    // The client asks n2 for a read after "x" was acknowledged: refused, and so is n3's
    // request on behalf of its own client.
    assert_eq!(net.replica_mut(2).read_index(7), Err(ReadError::Busy));
    // The change's Accepts are lost; n2's heartbeats get through.
    net.process(NodeId(2));
    net.drop_where(|message| is_accept_to(message, 3));
    net.stabilize();
    assert_eq!(net.replica(3).leader(), Some(NodeId(2)));
    net.replica_mut(3).read_index(8).unwrap();
    net.process(NodeId(3));
    net.drop_where(|message| is_accept_to(message, 3));
    net.stabilize();
    assert_eq!(
        net.reads(3),
        [(8, None)],
        "n2 confirmed n3's read with the old membership's majority"
    );
}

/// Right: a transfer to a voter that the pending change removes. n1 leads {1..5}, proposes
/// {1, 2, 3, 4} and transfers to n5; only n5 hears it, so the change is not chosen when n5
/// has acknowledged it and gets `TimeoutNow`. n5 campaigns in the old membership, recovers
/// the change, gets it chosen, finds itself removed and hands over to a voter of the new
/// membership; nothing is lost.
#[test]
fn a_transfer_to_a_node_the_pending_change_removes_ends_with_a_new_member_leading() {
    let mut net = Net::new(5);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.tick_all(2);
    let without_5 = voters(&[1, 2, 3, 4]);
    net.replica_mut(1)
        .change_membership(without_5.clone())
        .unwrap();
    net.replica_mut(1).transfer_leadership(NodeId(5)).unwrap();
    net.process(NodeId(1));
    // Only n1 and n5 talk until n5 has the handover.
    let between_1_and_5 =
        |message: &Message| matches!((message.from.0, message.to.0), (1, 5) | (5, 1));
    net.drop_where(|message| !between_1_and_5(message));
    settle_dropping(&mut net, |message| {
        !between_1_and_5(message) || matches!(message.body, Body::Prepare { .. })
    });
    assert!(
        net.nodes[&NodeId(5)]
            .events
            .iter()
            .any(|event| matches!(event, Event::ElectionStarted { .. })),
        "n5 took the handover"
    );
    assert_eq!(
        net.replica(1).status().chosen,
        net.replica(5).status().chosen
    );
    assert_ne!(
        net.replica(5).membership(),
        Some(&without_5),
        "not chosen yet"
    );
    // n5's Prepares (lost above) are sent again.
    net.tick_all(40);
    assert!(
        net.nodes[&NodeId(5)]
            .events
            .iter()
            .any(|event| matches!(event, Event::BecameLeader { .. })),
        "n5 led the old membership to choose the change"
    );
    let leader = net.leader().expect("a leader").0;
    assert!((1..=4).contains(&leader), "n{leader} leads");
    for id in 1..=5 {
        assert_eq!(net.replica(id).membership(), Some(&without_5), "n{id}");
    }
    net.propose(leader, "b");
    net.stabilize();
    net.tick_all(2);
    for id in 1..=4 {
        assert_eq!(net.commands(id), ["a", "b"], "n{id}");
    }
    net.assert_agreement();
}

/// Right: shrink to one voter while the two others miss it, write alone, grow back. The
/// removed nodes campaign among themselves in the old membership, recover the change, get it
/// chosen and stop; the single voter's writes survive the growth.
#[test]
fn shrink_to_one_voter_behind_the_others_back_and_grow_again() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.tick_all(2);
    let alone = voters(&[1]);
    net.replica_mut(1).change_membership(alone.clone()).unwrap();
    net.process(NodeId(1));
    net.deliver_first(|message| is_accept_to(message, 2));
    net.deliver_first(|message| is_accepted_from(message, 2));
    assert_eq!(net.replica(1).membership(), Some(&alone));
    net.isolate(1);
    net.tick_all(3);
    assert!(net.replica(1).is_leader());
    net.propose(1, "solo");
    // n2 and n3 still believe in {1, 2, 3}: they recover the change and stop.
    net.tick_all(60);
    for id in [2, 3] {
        assert_eq!(net.replica(id).membership(), Some(&alone), "n{id}");
        assert!(!net.replica(id).is_voter());
    }
    net.heal();
    net.tick_all(5);
    assert!(net.replica(1).is_leader());
    let all = voters(&[1, 2, 3]);
    net.replica_mut(1).change_membership(all.clone()).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    net.tick_all(10);
    let leader = net.leader().expect("a leader").0;
    net.propose(leader, "b");
    net.stabilize();
    net.tick_all(3);
    for id in 1..=3 {
        assert_eq!(net.replica(id).membership(), Some(&all), "n{id}");
        assert_eq!(net.commands(id), ["a", "solo", "b"], "n{id}");
    }
    net.assert_agreement();
}

/// Right: the leader crashes right after its change is chosen, before anyone else learns it;
/// it restarts in the new membership (stored with the chosen mark in the same batch) and the
/// old members recover the change from the acceptors.
#[test]
fn a_leader_restarted_right_after_its_change_is_chosen_keeps_it() {
    let mut net = Net::new(3);
    net.join(4);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let four = voters(&[1, 2, 3, 4]);
    let s = net.replica_mut(1).change_membership(four.clone()).unwrap();
    net.process(NodeId(1));
    net.deliver_first(|message| is_accept_to(message, 2));
    net.deliver_first(|message| is_accepted_from(message, 2));
    assert_eq!(net.replica(1).membership(), Some(&four));
    net.crash(1);
    net.queue.clear();
    net.restart(1);
    assert_eq!(net.replica(1).membership(), Some(&four));
    assert_eq!(net.replica(1).status().chosen, s);
    net.tick_all(60);
    let leader = net.leader().expect("a leader").0;
    net.propose(leader, "b");
    net.stabilize();
    net.tick_all(3);
    for id in 1..=4 {
        assert_eq!(net.replica(id).membership(), Some(&four), "n{id}");
        assert_eq!(net.commands(id), ["a", "b"], "n{id}");
    }
    net.assert_agreement();
}
