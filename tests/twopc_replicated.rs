//! Non-blocking commit for real: the coordinator's decision log is a three-replica Paxos group
//! (synod `Replica`s), the coordinator runs on whichever replica leads, and the leader is cut
//! off in the middle of a transaction. The next leader recovers the coordinator from its own
//! copy of the log, and the prepared participants learn the decision from it.

mod common;

use bytes::Bytes;
use common::Net;
use std::collections::BTreeMap;
use synod::twopc::{
    Coordinator, CoordinatorConfig, CoordinatorEvent, DecisionLog, LogEntry, Message, Outcome,
    Participant, ParticipantConfig, ParticipantEvent, TxnId,
};
use synod::{NodeId, Value};

/// The coordinator group: replicas 1..=3 of `net`. Participants are nodes 11 and 12, outside
/// the group, which list the three replicas as their coordinators.
struct World {
    net: Net,
    /// Each replica's decision log, applied from its chosen entries, and how far.
    logs: BTreeMap<u64, (DecisionLog, u64)>,
    /// The coordinator on the current leader, and which replica that is.
    coordinator: Option<(u64, Coordinator)>,
    participants: BTreeMap<NodeId, Participant>,
    to_participants: Vec<Message>,
    decided_at_participants: BTreeMap<(NodeId, TxnId), Outcome>,
    decided_at_coordinators: Vec<(u64, TxnId, Outcome)>,
}

const GROUP: [u64; 3] = [1, 2, 3];
const PARTICIPANTS: [NodeId; 2] = [NodeId(11), NodeId(12)];

impl World {
    fn new() -> World {
        let mut participants = BTreeMap::new();
        for id in PARTICIPANTS {
            let mut config = ParticipantConfig::new(id);
            config.coordinators = GROUP.iter().map(|id| NodeId(*id)).collect();
            config.query_ticks = 3;
            participants.insert(id, Participant::new(config).unwrap());
        }
        World {
            net: Net::new(3),
            logs: GROUP
                .iter()
                .map(|id| (*id, (DecisionLog::new(), 0)))
                .collect(),
            coordinator: None,
            participants,
            to_participants: Vec::new(),
            decided_at_participants: BTreeMap::new(),
            decided_at_coordinators: Vec::new(),
        }
    }

    /// Makes `leader` lead, and runs the coordinator there, recovered from its log.
    fn lead(&mut self, leader: u64) {
        self.net.elect(leader);
        self.net.stabilize();
        self.apply_logs();
        let log = &self.logs[&leader].0;
        let coordinator =
            Coordinator::recover(CoordinatorConfig::new(NodeId(leader)), log).unwrap();
        self.coordinator = Some((leader, coordinator));
        self.drain_coordinator();
    }

    /// Applies newly chosen entries to every replica's decision log; the coordinator hears the
    /// log's answer for its own entries from its own replica's log.
    fn apply_logs(&mut self) {
        for id in GROUP {
            let (log, applied) = self.logs.get_mut(&id).unwrap();
            let entries: Vec<(u64, Value)> = self
                .net
                .applied(id)
                .range(*applied + 1..)
                .map(|(slot, value)| (*slot, value.clone()))
                .collect();
            for (slot, value) in entries {
                *applied = slot;
                let Value::Command { data, .. } = value else {
                    continue;
                };
                let entry = LogEntry::decode(&data).expect("the group logs only entries");
                if let Some((txn, decided)) = log.apply(&entry) {
                    if let Some((leader, coordinator)) = self.coordinator.as_mut() {
                        if *leader == id {
                            coordinator.on_logged(txn, &decided);
                        }
                    }
                }
            }
        }
    }

    fn drain_coordinator(&mut self) {
        loop {
            let Some((leader, coordinator)) = self.coordinator.as_mut() else {
                return;
            };
            if !coordinator.has_ready() {
                return;
            }
            let leader = *leader;
            let mut ready = coordinator.ready();
            for entry in ready.take_log() {
                // The decision goes to the Paxos group; its answer comes back in apply_logs.
                self.net
                    .replica_mut(leader)
                    .propose(Bytes::from(entry.encode()))
                    .expect("the leader takes proposals");
                self.net.process(NodeId(leader));
            }
            self.to_participants.extend(ready.take_messages());
            for CoordinatorEvent::Decided { txn, outcome } in ready.take_events() {
                self.decided_at_coordinators.push((leader, txn, outcome));
            }
            self.net.stabilize();
            self.apply_logs();
        }
    }

    /// Delivers messages between the coordinator group and the participants until quiet;
    /// messages to a replica that does not run the coordinator are lost (as to a crashed or
    /// cut-off one).
    fn exchange(&mut self) {
        for _ in 0..100 {
            let messages = std::mem::take(&mut self.to_participants);
            if messages.is_empty() {
                return;
            }
            for message in messages {
                if let Some(participant) = self.participants.get_mut(&message.to) {
                    let id = message.to;
                    participant.step(message).unwrap();
                    self.drain_participant(id);
                } else if let Some((leader, coordinator)) = self.coordinator.as_mut() {
                    if message.to == NodeId(*leader) {
                        coordinator.step(message).unwrap();
                        self.drain_coordinator();
                    }
                }
            }
        }
        panic!("the exchange never went quiet");
    }

    fn drain_participant(&mut self, id: NodeId) {
        let participant = self.participants.get_mut(&id).unwrap();
        while participant.has_ready() {
            let mut ready = participant.ready();
            self.to_participants.extend(ready.take_messages());
            ready.take_records(); // durable here (the participants do not crash in this test)
            self.to_participants.extend(ready.take_persisted_messages());
            for event in ready.take_events() {
                match event {
                    ParticipantEvent::VoteRequested { txn, .. } => {
                        participant.vote(txn, true).unwrap();
                    }
                    ParticipantEvent::Decided { txn, outcome, .. } => {
                        self.decided_at_participants.insert((id, txn), outcome);
                    }
                }
            }
        }
    }

    /// Begins `txn` at the coordinator and delivers its vote requests: both participants
    /// prepare. Returns their yes votes, not delivered.
    fn begin_and_prepare(&mut self, txn: TxnId) -> Vec<Message> {
        let parts = PARTICIPANTS
            .iter()
            .map(|id| (*id, Bytes::from(format!("{txn} at {id}"))))
            .collect();
        let (_, coordinator) = self.coordinator.as_mut().expect("a coordinator runs");
        coordinator.begin(txn, parts).unwrap();
        self.drain_coordinator();
        for request in std::mem::take(&mut self.to_participants) {
            let id = request.to;
            self.participants
                .get_mut(&id)
                .unwrap()
                .step(request)
                .unwrap();
            self.drain_participant(id);
        }
        std::mem::take(&mut self.to_participants)
    }

    /// Both participants reported `outcome` for `txn`.
    fn assert_decided(&self, txn: TxnId, outcome: Outcome) {
        for id in PARTICIPANTS {
            assert_eq!(
                self.decided_at_participants.get(&(id, txn)),
                Some(&outcome),
                "{id}"
            );
            assert_eq!(self.participants[&id].prepared().count(), 0, "{id}");
        }
    }

    fn tick_participants(&mut self) {
        for id in PARTICIPANTS {
            self.participants.get_mut(&id).unwrap().tick();
            self.drain_participant(id);
        }
    }
}

#[test]
fn a_commit_logged_by_a_leader_that_is_then_cut_off_reaches_every_participant() {
    let mut world = World::new();
    world.lead(1);
    let txn = TxnId(1);
    // The yes votes are held back from the coordinator until the decision is in flight.
    let votes = world.begin_and_prepare(txn);
    assert_eq!(votes.len(), 2);
    for vote in votes {
        world.coordinator.as_mut().unwrap().1.step(vote).unwrap();
    }
    // The coordinator proposes its commit to the group; the group chooses it; and the
    // coordinator's replica is cut off before any Decision leaves it.
    world.drain_coordinator();
    assert_eq!(world.decided_at_coordinators, [(1, txn, Outcome::Commit)]);
    world.to_participants.clear();
    world.net.isolate(1);
    world.coordinator = None;
    for id in PARTICIPANTS {
        assert_eq!(
            world.participants[&id].prepared().collect::<Vec<_>>(),
            [txn],
            "prepared, and blocked in classic 2PC"
        );
    }

    // Replica 2 takes over: its copy of the log holds the commit.
    world.lead(2);
    assert_eq!(world.logs[&2].0.get(txn).unwrap().outcome, Outcome::Commit);
    assert!(world
        .decided_at_coordinators
        .contains(&(2, txn, Outcome::Commit)));
    world.exchange();
    for _ in 0..5 {
        world.tick_participants();
        world.exchange();
    }
    world.assert_decided(txn, Outcome::Commit);
    // Acknowledged by both: the new coordinator forgets it, through the log.
    assert_eq!(world.coordinator.as_ref().unwrap().1.in_flight(), 0);
    world.net.stabilize();
    world.apply_logs();
    assert!(world.logs[&2].0.get(txn).is_none());
    assert_eq!(world.logs[&2].0.outcome(txn), Some(Outcome::Commit));
}

#[test]
fn a_transaction_still_voting_when_its_leader_is_cut_off_aborts_at_the_next_leader() {
    let mut world = World::new();
    world.lead(1);
    let txn = TxnId(7);
    // Both participants prepare, but their votes never reach replica 1.
    world.begin_and_prepare(txn);
    world.to_participants.clear();
    world.net.isolate(1);
    world.coordinator = None;
    world.lead(3);
    // The prepared participants ask; the new coordinator has no record: presumed abort,
    // logged in the group first.
    for _ in 0..5 {
        world.tick_participants();
        world.exchange();
    }
    world.assert_decided(txn, Outcome::Abort);
    assert_eq!(world.logs[&3].0.outcome(txn), Some(Outcome::Abort));
    // Every replica that applied the log agrees.
    world.net.heal();
    world.net.tick_all(30);
    world.apply_logs();
    for id in GROUP {
        assert_eq!(
            world.logs[&id].0.outcome(txn),
            Some(Outcome::Abort),
            "replica {id}"
        );
    }
}
