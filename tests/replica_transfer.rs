//! Leadership transfer (`Replica::transfer_leadership`), one rule per test: the target takes
//! over at once (no election timeout) once it has acknowledged everything, the acceptors set
//! leader stickiness aside for it, nothing chosen is lost, proposals wait meanwhile, a
//! transfer that does not complete is abandoned, and only the leader it follows makes a
//! replica campaign.

mod common;

use common::Net;
use synod::message::{Body, Message};
use synod::replica::{Event, StepDownReason};
use synod::{NodeId, ProposeError, TransferError};

fn timeouts_now(net: &Net) -> Vec<NodeId> {
    net.queue
        .iter()
        .filter(|message| matches!(message.body, Body::TimeoutNow { .. }))
        .map(|message| message.to)
        .collect()
}

fn events(net: &Net, id: u64) -> &[Event] {
    &net.nodes[&NodeId(id)].events
}

#[test]
fn the_target_takes_over_without_waiting_for_a_timeout() {
    let mut net = Net::new(3);
    net.elect(1);
    for command in ["a", "b"] {
        net.propose(1, command);
        net.stabilize();
    }
    let old_ballot = net.replica(1).status().promised;
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.process(NodeId(1));
    assert_eq!(timeouts_now(&net), [NodeId(2)]);
    // No tick anywhere: n3 heard from n1 just now and would ignore an ordinary Prepare.
    net.stabilize();
    assert!(net.replica(2).is_leader());
    assert!(!net.replica(1).is_leader());
    assert!(net.replica(2).status().promised > old_ballot);
    assert!(events(&net, 1).contains(&Event::SteppedDown {
        ballot: old_ballot,
        reason: StepDownReason::Transferred,
    }));
    // Nothing chosen is lost, and the new leader takes proposals.
    net.propose(2, "c");
    net.stabilize();
    for id in 1..=3 {
        assert_eq!(net.commands(id), ["a", "b", "c"], "n{id}");
    }
    net.assert_agreement();
}

#[test]
fn the_leader_waits_until_the_target_has_acknowledged_what_is_not_chosen() {
    let mut net = Net::new(5);
    net.elect(1);
    net.queue.clear();
    net.propose(1, "x");
    // Only n3 gets its Accept: "x" is accepted by two of five, not chosen, and n2 lacks it.
    let held: Vec<Message> = net
        .queue
        .iter()
        .filter(|message| message.to == NodeId(2))
        .cloned()
        .collect();
    net.queue.retain(|message| message.to == NodeId(3));
    net.stabilize();
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(timeouts_now(&net).is_empty());
    assert!(net.replica(1).is_leader());
    // n2 accepts; its Accepted chooses "x" and lets n1 hand over.
    net.queue.extend(held);
    net.deliver(0);
    let accepted = net
        .queue
        .iter()
        .position(|m| matches!(m.body, Body::Accepted { .. }))
        .unwrap();
    net.deliver(accepted);
    assert_eq!(timeouts_now(&net), [NodeId(2)]);
    net.stabilize();
    assert!(net.replica(2).is_leader());
    assert_eq!(net.commands(2), ["x"]);
}

#[test]
fn proposals_are_refused_while_a_transfer_is_under_way() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(2); // the transfer cannot complete
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    assert!(matches!(
        net.replica_mut(1).propose("during".into()),
        Err(ProposeError::Busy { .. })
    ));
    // A follower's forwarded command is dropped too (its client retries).
    net.replica_mut(3).propose("forwarded".into()).unwrap();
    net.process(NodeId(3));
    net.stabilize();
    assert!(net.commands(1).is_empty());
}

#[test]
fn a_transfer_that_does_not_complete_is_abandoned() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(2);
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    let election_ticks = net.replica(1).config().election_ticks;
    for _ in 0..election_ticks {
        net.tick(1);
        net.stabilize();
    }
    assert!(events(&net, 1).contains(&Event::TransferAborted { to: NodeId(2) }));
    assert!(net.replica(1).is_leader(), "n3 keeps the quorum");
    net.propose(1, "after");
    net.stabilize();
    assert_eq!(net.commands(3), ["after"]);
}

#[test]
fn a_lost_timeout_now_is_sent_again() {
    let mut net = Net::new(3);
    net.elect(1);
    net.replica_mut(1).transfer_leadership(NodeId(3)).unwrap();
    net.process(NodeId(1));
    assert_eq!(
        net.drop_where(|m| matches!(m.body, Body::TimeoutNow { .. })),
        1
    );
    let retransmit = net.replica(1).config().retransmit_ticks;
    for _ in 0..retransmit {
        net.tick(1);
    }
    assert_eq!(timeouts_now(&net), [NodeId(3)]);
    net.stabilize();
    assert!(net.replica(3).is_leader());
}

#[test]
fn only_the_leader_followed_at_its_ballot_can_hand_over() {
    let mut net = Net::new(3);
    net.elect(1);
    net.queue.clear();
    let ballot = net.replica(1).status().promised;
    // n3 is not n2's leader; and n1's ballot is not the one n2 follows once n3 leads.
    let forged = Message {
        from: NodeId(3),
        to: NodeId(2),
        body: Body::TimeoutNow {
            ballot: synod::Ballot::new(ballot.round, NodeId(3)),
        },
    };
    net.replica_mut(2).step(forged).unwrap();
    net.process(NodeId(2));
    assert!(net.queue.is_empty(), "n2 campaigned for n3's say-so");
    let stale = Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::TimeoutNow {
            ballot: synod::Ballot::new(ballot.round + 1, NodeId(1)),
        },
    };
    net.replica_mut(2).step(stale).unwrap();
    net.process(NodeId(2));
    assert!(
        net.queue.is_empty(),
        "n2 campaigned for a ballot it does not follow"
    );
    // The real one works.
    let real = Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::TimeoutNow { ballot },
    };
    net.replica_mut(2).step(real).unwrap();
    net.process(NodeId(2));
    assert!(net
        .queue
        .iter()
        .all(|m| matches!(m.body, Body::Prepare { transfer: Some(handed_over), .. } if handed_over == ballot)));
    assert_eq!(net.queue.len(), 2);
}

#[test]
fn an_ordinary_prepare_still_respects_a_live_leader() {
    // The same Prepare without the transfer flag is ignored by a follower that just heard
    // from its leader: stickiness is set aside only for a handover by the leadership it
    // follows, not for one by an earlier leadership (a Prepare that arrives late).
    let mut net = Net::new(3);
    net.elect(1);
    net.queue.clear();
    let followed = net.replica(3).status().promised;
    let round = net.replica(1).status().promised.round + 1;
    let earlier = synod::Ballot::new(followed.round - 1, NodeId(1));
    for transfer in [None, Some(earlier), Some(followed)] {
        let prepare = Message {
            from: NodeId(2),
            to: NodeId(3),
            body: Body::Prepare {
                ballot: synod::Ballot::new(round, NodeId(2)),
                first_slot: 1,
                transfer,
            },
        };
        net.replica_mut(3).step(prepare).unwrap();
        net.process(NodeId(3));
        let promised = net
            .queue
            .iter()
            .any(|m| matches!(m.body, Body::Promise { .. }));
        assert_eq!(
            promised,
            transfer == Some(followed),
            "transfer: {transfer:?}"
        );
    }
}

#[test]
fn misuse_is_refused() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(
        net.replica_mut(2).transfer_leadership(NodeId(3)),
        Err(TransferError::NotLeader {
            hint: Some(NodeId(1))
        })
    );
    assert_eq!(
        net.replica_mut(1).transfer_leadership(NodeId(9)),
        Err(TransferError::UnknownNode(NodeId(9)))
    );
    // To itself: cancels a transfer under way.
    net.isolate(2);
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.replica_mut(1).transfer_leadership(NodeId(1)).unwrap();
    net.propose(1, "kept");
    net.heal();
    net.stabilize();
    assert!(net.replica(1).is_leader());
}

/// The read-index rule across a handover: the old leader keeps believing it leads until the
/// target's Prepare reaches it, and a read it is asked meanwhile never confirms a slot that
/// misses a write the new leader already acknowledged.
#[test]
fn a_read_at_the_old_leader_never_misses_what_the_new_leader_chose() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.replica_mut(1).transfer_leadership(NodeId(2)).unwrap();
    net.process(NodeId(1));
    // n2 has everything: the handover starts at once.
    net.deliver_first(|message| matches!(message.body, Body::TimeoutNow { .. }));
    // From here on n1 hears nothing (n2's Prepare to it is lost): n2 takes over with n3 and
    // gets "w" chosen.
    net.isolate(1);
    net.stabilize();
    assert!(net.replica(2).is_leader());
    net.propose(2, "w");
    net.stabilize();
    assert_eq!(net.commands(2), ["a", "w"]);
    let w_slot = net.replica(2).status().chosen;
    assert!(net.replica(1).is_leader(), "n1 has not heard of n2");
    net.replica_mut(1).read_index(7).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    assert!(net.reads(1).is_empty(), "no echo reached n1");
    // The partition heals: n1's round reaches acceptors that promised n2.
    net.heal();
    net.replica_mut(1).read_index(8).unwrap();
    net.process(NodeId(1));
    net.stabilize();
    for (context, slot) in net.reads(1) {
        if let Some(slot) = slot {
            assert!(
                slot >= w_slot,
                "read {context} confirmed slot {slot} < {w_slot}"
            );
        }
    }
    assert_eq!(net.reads(1), [(7, None), (8, None)]);
    assert!(!net.replica(1).is_leader());
    net.assert_agreement();
}
