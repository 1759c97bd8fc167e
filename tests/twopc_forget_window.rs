//! What a participant and the decision log do with a message about a transaction they have
//! forgotten: a vote request duplicated by the network that arrives after its transaction
//! fell out of the participant's window of finished transactions
//! (`ParticipantConfig::finished_remembered`), and a late vote or query that makes a
//! coordinator log a presumed abort after the decision log forgot the transaction.
//!
//! Deterministic: every message is delivered by hand, in the order the test says.
//!
//! Without the floors (`ParticipantRecord::Floor`, `DecisionLog::floor`), the first two tests
//! fail: the duplicate prepares t1 again at the participant, whose coordinator, told yes about
//! a transaction it forgot, logs a presumed abort; the log, still remembering the commit,
//! answers commit and the participant applies t1 a second time (or, the log having forgotten
//! too, aborts it after it committed). The restart test fails if the floor is not recovered,
//! the coordinator-side test if the log records the late presumed abort.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use synod::twopc::*;
use synod::NodeId;

const C: NodeId = NodeId(100);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);

/// One participant and what its application did: the records on its disk, and every
/// decision it applied.
struct Node {
    participant: Participant,
    disk: Vec<ParticipantRecord>,
    applied: Vec<(TxnId, Outcome, Bytes)>,
    vote_requests: Vec<TxnId>,
}

struct World {
    coordinator: Coordinator,
    log: DecisionLog,
    nodes: BTreeMap<NodeId, Node>,
    network: VecDeque<Message>,
    decided: Vec<(TxnId, Outcome)>,
}

fn participant_config(id: NodeId, remembered: usize) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(id);
    config.finished_remembered = remembered;
    config
}

impl World {
    fn new(remembered: usize, log: DecisionLog) -> World {
        let mut nodes = BTreeMap::new();
        for id in [P1, P2] {
            let participant = Participant::new(participant_config(id, remembered)).unwrap();
            nodes.insert(
                id,
                Node {
                    participant,
                    disk: Vec::new(),
                    applied: Vec::new(),
                    vote_requests: Vec::new(),
                },
            );
        }
        World {
            coordinator: Coordinator::new(CoordinatorConfig::new(C)).unwrap(),
            log,
            nodes,
            network: VecDeque::new(),
            decided: Vec::new(),
        }
    }

    /// The coordinator's work: log entries applied at once (a local log), then messages.
    fn drain_coordinator(&mut self) {
        while self.coordinator.has_ready() {
            let mut ready = self.coordinator.ready();
            for entry in ready.take_log() {
                if let Some((txn, decided)) = self.log.apply(&entry) {
                    self.coordinator.on_logged(txn, &decided);
                }
            }
            self.network.extend(ready.take_messages());
            for CoordinatorEvent::Decided { txn, outcome } in ready.take_events() {
                self.decided.push((txn, outcome));
            }
        }
    }

    /// A participant's work: records written, then the messages that waited; every vote
    /// asked for is yes (the payload is always acceptable).
    fn drain_participant(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        while node.participant.has_ready() {
            let mut ready = node.participant.ready();
            self.network.extend(ready.take_messages());
            node.disk.extend(ready.take_records());
            self.network.extend(ready.take_persisted_messages());
            for event in ready.take_events() {
                match event {
                    ParticipantEvent::VoteRequested { txn, .. } => {
                        node.vote_requests.push(txn);
                        node.participant.vote(txn, true).unwrap();
                    }
                    ParticipantEvent::Decided {
                        txn,
                        outcome,
                        payload,
                    } => node.applied.push((txn, outcome, payload)),
                }
            }
        }
    }

    fn deliver(&mut self, message: Message) {
        if message.to == C {
            // Refusals are counted as losses by a real application; none is expected here.
            self.coordinator.step(message).unwrap();
            self.drain_coordinator();
        } else {
            let to = message.to;
            let node = self.nodes.get_mut(&to).unwrap();
            node.participant.step(message).unwrap();
            self.drain_participant(to);
        }
    }

    /// Delivers everything in flight, in order, except what `hold` keeps back (returned).
    fn settle(&mut self, mut hold: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut held = Vec::new();
        while let Some(message) = self.network.pop_front() {
            if hold(&message) {
                held.push(message);
            } else {
                self.deliver(message);
            }
        }
        held
    }

    /// Runs `txn` over `members` to its end; returns the vote requests it made (every
    /// request was also delivered: a kept copy is a duplicate the network made).
    fn run(&mut self, txn: u64, members: &[NodeId]) -> Vec<Message> {
        let parts = members
            .iter()
            .map(|id| (*id, Bytes::from(format!("t{txn}: move 10 at {id}"))))
            .collect();
        self.coordinator.begin(TxnId(txn), parts).unwrap();
        self.drain_coordinator();
        let requests: Vec<Message> = self
            .network
            .iter()
            .filter(|m| matches!(m.body, Body::VoteRequest { .. }))
            .cloned()
            .collect();
        self.settle(|_| false);
        assert!(
            self.decided.iter().any(|(t, _)| *t == TxnId(txn)),
            "t{txn} is decided"
        );
        requests
    }

    /// Ticks everyone `rounds` times, delivering everything after each tick.
    fn idle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.coordinator.tick();
            self.drain_coordinator();
            for id in [P1, P2] {
                self.nodes.get_mut(&id).unwrap().participant.tick();
                self.drain_participant(id);
            }
            self.settle(|_| false);
        }
    }

    /// Participant `id` crashes and restarts from what an application that trims its disk
    /// keeps: the newest `remembered` finished records, the newest floor of each coordinator,
    /// and the prepared records not followed by their finished one.
    fn restart(&mut self, id: NodeId, remembered: usize) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut floors: BTreeMap<NodeId, ParticipantRecord> = BTreeMap::new();
        let mut finished: Vec<ParticipantRecord> = Vec::new();
        let mut prepared: BTreeMap<TxnId, ParticipantRecord> = BTreeMap::new();
        for record in &node.disk {
            match record {
                ParticipantRecord::Prepared { txn, .. } => {
                    prepared.insert(*txn, record.clone());
                }
                ParticipantRecord::Finished { txn, .. } => {
                    prepared.remove(txn);
                    finished.push(record.clone());
                }
                ParticipantRecord::Floor { coordinator, txn } => {
                    let higher = match floors.get(coordinator) {
                        Some(ParticipantRecord::Floor { txn: kept, .. }) => txn > kept,
                        _ => true,
                    };
                    if higher {
                        floors.insert(*coordinator, record.clone());
                    }
                }
            }
        }
        let newest = finished.len().saturating_sub(remembered);
        let kept: Vec<ParticipantRecord> = floors
            .into_values()
            .chain(finished.drain(newest..))
            .chain(prepared.into_values())
            .collect();
        node.disk = kept.clone();
        node.participant = Participant::recover(participant_config(id, remembered), kept).unwrap();
        self.drain_participant(id);
    }

    fn applied(&self, id: NodeId, txn: u64) -> Vec<Outcome> {
        self.nodes[&id]
            .applied
            .iter()
            .filter(|(t, _, _)| *t == TxnId(txn))
            .map(|(_, outcome, _)| *outcome)
            .collect()
    }
}

/// The duplicate of t1's vote request to P1, delivered after P1 finished t2 and t3 (with a
/// window of 2, t1 is forgotten there), while the coordinator's decision log still remembers
/// t1's commit: P1 must not prepare t1 again, and above all must not apply it twice.
#[test]
fn a_duplicate_vote_request_after_the_window_does_not_apply_a_commit_twice() {
    let mut world = World::new(2, DecisionLog::new());
    let requests = world.run(1, &[P1, P2]);
    let duplicate = requests.into_iter().find(|m| m.to == P1).unwrap();
    assert_eq!(world.applied(P1, 1), [Outcome::Commit]);
    world.run(2, &[P1]);
    world.run(3, &[P1]);
    assert_eq!(world.log.outcome(TxnId(1)), Some(Outcome::Commit));
    assert_eq!(world.nodes[&P1].participant.floor(C), Some(TxnId(1)));

    world.deliver(duplicate);
    // Answered no at once, without asking the application.
    let votes = world.settle(|m| m.to == C);
    assert_eq!(
        votes,
        [Message {
            txn: TxnId(1),
            from: P1,
            to: C,
            body: Body::Vote { yes: false }
        }]
    );
    // Counted for operators (and not part of the participant's identity).
    assert_eq!(world.nodes[&P1].participant.refusals().below_floor, 1);
    assert_eq!(world.nodes[&P1].participant.refusals().coordinators_max, 0);
    for vote in votes {
        world.deliver(vote);
    }
    world.idle(100);

    assert_eq!(
        world.applied(P1, 1),
        [Outcome::Commit],
        "t1 was applied at P1 more than once"
    );
    assert_eq!(
        world.nodes[&P1].vote_requests,
        [TxnId(1), TxnId(2), TxnId(3)]
    );
    assert_eq!(world.nodes[&P1].participant.prepared().count(), 0);
    assert_eq!(world.coordinator.in_flight(), 0);
    assert_eq!(world.log.outcome(TxnId(1)), Some(Outcome::Commit));
    assert_eq!(world.decided.len(), 3, "one report per transaction begun");
}

/// The same duplicate when the decision log has forgotten t1 as well: the participant, had
/// it prepared t1 again, would hear a presumed abort and report t1 decided twice, commit
/// then abort.
#[test]
fn a_duplicate_vote_request_after_both_windows_does_not_decide_a_transaction_twice() {
    let mut world = World::new(2, DecisionLog::with_finished_max(1));
    let requests = world.run(1, &[P1, P2]);
    let duplicate = requests.into_iter().find(|m| m.to == P1).unwrap();
    world.run(2, &[P1]);
    world.run(3, &[P1]);
    assert_eq!(world.log.outcome(TxnId(1)), None, "the log forgot t1");
    assert_eq!(world.log.floor(), Some(TxnId(2)));

    world.deliver(duplicate);
    world.idle(100);

    assert_eq!(world.applied(P1, 1), [Outcome::Commit]);
    assert_eq!(
        world.nodes[&P1].vote_requests,
        [TxnId(1), TxnId(2), TxnId(3)]
    );
    assert_eq!(world.nodes[&P1].participant.prepared().count(), 0);
    assert_eq!(world.coordinator.in_flight(), 0);
}

/// The floor is durable: P1 restarts from a trimmed disk (the newest two finished records,
/// the newest floor) and still refuses the duplicate.
#[test]
fn the_floor_survives_a_restart_from_a_trimmed_disk() {
    let mut world = World::new(2, DecisionLog::new());
    let requests = world.run(1, &[P1, P2]);
    let duplicate = requests.into_iter().find(|m| m.to == P1).unwrap();
    for txn in 2..=5 {
        world.run(txn, &[P1]);
    }
    world.restart(P1, 2);
    assert!(world.nodes[&P1]
        .disk
        .iter()
        .all(|record| !matches!(record, ParticipantRecord::Finished { txn, .. } if txn.0 <= 3)));
    assert_eq!(world.nodes[&P1].participant.floor(C), Some(TxnId(3)));

    world.deliver(duplicate);
    world.idle(100);
    assert_eq!(world.applied(P1, 1), [Outcome::Commit]);
    assert_eq!(world.nodes[&P1].participant.prepared().count(), 0);

    // A restart with a smaller window forgets more as it reads the finished records, and
    // hands out the floor that rose.
    let disk = world.nodes[&P1].disk.clone();
    let mut recovered = Participant::recover(participant_config(P1, 1), disk).unwrap();
    assert_eq!(recovered.floor(C), Some(TxnId(4)));
    assert_eq!(
        recovered.ready().take_records(),
        [ParticipantRecord::Floor {
            coordinator: C,
            txn: TxnId(4)
        }]
    );
}

/// Transaction ids may reach a participant out of order: a fresh transaction whose vote
/// request is delayed until later transactions of its coordinator finished and were
/// forgotten there is refused, and aborts everywhere (safe; the application retries it
/// under a new id).
#[test]
fn a_vote_request_delayed_past_the_window_aborts_its_transaction() {
    let mut world = World::new(2, DecisionLog::new());
    let parts = vec![(P1, Bytes::from("t1 at P1")), (P2, Bytes::from("t1 at P2"))];
    world.coordinator.begin(TxnId(1), parts).unwrap();
    world.drain_coordinator();
    let delayed = world.settle(|m| m.to == P1);
    assert_eq!(delayed.len(), 1, "P2 prepared t1; P1's request is late");
    for txn in 2..=4 {
        world.run(txn, &[P1]);
    }
    assert_eq!(world.nodes[&P1].participant.floor(C), Some(TxnId(2)));
    for message in delayed {
        world.deliver(message);
    }
    world.idle(10);
    assert!(world.decided.contains(&(TxnId(1), Outcome::Abort)));
    assert_eq!(world.coordinator.in_flight(), 0);
    assert_eq!(world.applied(P2, 1), [Outcome::Abort]);
    assert_eq!(world.applied(P1, 1), []);
    assert!(!world.nodes[&P1].vote_requests.contains(&TxnId(1)));
}

/// The coordinator side: a yes vote duplicated by the network, arriving after the
/// coordinator and the decision log both forgot the committed transaction, makes the
/// coordinator log a presumed abort. The log answers abort (the participant is past t1 and
/// ignores it) but must not record it: t1 committed, and the log must never say otherwise.
#[test]
fn a_late_vote_after_the_log_forgot_a_commit_records_no_abort() {
    let mut world = World::new(2, DecisionLog::with_finished_max(1));
    world
        .coordinator
        .begin(TxnId(1), vec![(P1, Bytes::from("t1 at P1"))])
        .unwrap();
    world.drain_coordinator();
    let mut late_vote = None;
    world.settle(|m| {
        if m.body == (Body::Vote { yes: true }) && late_vote.is_none() {
            late_vote = Some(m.clone());
        }
        false
    });
    assert_eq!(world.applied(P1, 1), [Outcome::Commit]);
    world.run(2, &[P1]);
    world.run(3, &[P1]);
    assert_eq!(world.log.outcome(TxnId(1)), None, "the log forgot t1");

    world.deliver(late_vote.expect("P1 voted yes"));
    world.idle(10);
    assert_eq!(
        world.log.outcome(TxnId(1)),
        None,
        "t1 must not read as aborted"
    );
    assert!(world.log.is_empty());
    assert_eq!(world.applied(P1, 1), [Outcome::Commit]);
    assert_eq!(world.coordinator.in_flight(), 0);
    // A late `Decide` of commit for a transaction the log forgot is answered abort as well:
    // recorded anew, it could commit a transaction that aborted at a participant still
    // prepared on it.
    let (_, answer) = world
        .log
        .apply(&LogEntry::Decide {
            txn: TxnId(1),
            outcome: Outcome::Commit,
            participants: vec![P1],
        })
        .unwrap();
    assert_eq!(answer.outcome, Outcome::Abort);
    assert_eq!(world.log.outcome(TxnId(1)), None);
}

/// With a coordinator group (`ParticipantConfig::coordinators`), a transaction's requests
/// may come from any member: the floor a request meets is the highest of the group's.
#[test]
fn a_coordinator_group_shares_its_floor() {
    let (a, b) = (NodeId(100), NodeId(101));
    let mut config = participant_config(P1, 1);
    config.coordinators = vec![a, b];
    let mut participant = Participant::new(config).unwrap();
    let request = |txn, from| Message {
        txn: TxnId(txn),
        from,
        to: P1,
        body: Body::VoteRequest {
            payload: Bytes::from("x"),
        },
    };
    for txn in 1..=2 {
        participant.step(request(txn, a)).unwrap();
        participant.ready();
        participant.vote(TxnId(txn), false).unwrap();
        let mut ready = participant.ready();
        ready.take_messages();
        if txn == 2 {
            assert_eq!(
                ready.take_records(),
                [ParticipantRecord::Floor {
                    coordinator: a,
                    txn: TxnId(1)
                }]
            );
        }
    }
    assert_eq!(participant.floor(b), Some(TxnId(1)));
    assert_eq!(participant.floor(NodeId(7)), None, "not a member");
    participant.step(request(1, b)).unwrap();
    let mut ready = participant.ready();
    assert!(ready.take_events().is_empty());
    assert_eq!(
        ready.take_messages(),
        [Message {
            txn: TxnId(1),
            from: P1,
            to: b,
            body: Body::Vote { yes: false }
        }]
    );
    // Above the floor: a new transaction, asked as usual.
    participant.step(request(3, b)).unwrap();
    assert!(matches!(
        &participant.ready().take_events()[..],
        [ParticipantEvent::VoteRequested { .. }]
    ));
}

/// The simulator's 2PC world with both windows small: participants and the decision log
/// forget transactions within a run while lost, duplicated and reordered messages about them
/// are still in flight, with crashes and coordinator takeovers. Atomicity (the log included:
/// it never changes an outcome it held), applied once, validity, durability before
/// revealing and termination must hold, and the floors must have been met.
///
/// `SYNOD_TWOPC_FORGET_SEEDS=N` runs seeds `0..N` (200 by default).
#[test]
fn the_2pc_world_stays_atomic_while_both_sides_forget() {
    use synod::sim::twopc::{run, TwoPcConfig, TwoPcStats};
    let count: u64 = std::env::var("SYNOD_TWOPC_FORGET_SEEDS").map_or(200, |n| n.parse().unwrap());
    let mut total = TwoPcStats::default();
    // (participant window, log window): the participant forgetting first (the log still
    // remembers the commit a duplicate would be answered with), and both at once.
    for (remembered, log) in [(2, 64), (2, 2), (0, 0)] {
        for seed in 0..count {
            let config = TwoPcConfig {
                finished_remembered: remembered,
                log_finished_max: log,
                ..TwoPcConfig::new(seed)
            };
            let stats = run(&config).unwrap_or_else(|violation| {
                panic!("{violation} (participant window {remembered}, log window {log})")
            });
            total.committed += stats.committed;
            total.aborted += stats.aborted;
            total.floor_refusals += stats.floor_refusals;
            total.log_floor_aborts += stats.log_floor_aborts;
        }
    }
    eprintln!(
        "{} commits, {} aborts, {} votes refused at a participant's floor, {} decisions \
         answered abort at the log's floor",
        total.committed, total.aborted, total.floor_refusals, total.log_floor_aborts
    );
    assert!(total.committed > 100 && total.aborted > 100);
    assert!(total.floor_refusals > 100 && total.log_floor_aborts > 100);
}
