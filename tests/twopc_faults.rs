//! Two-phase commit under faults, over many seeds: lost, duplicated and reordered messages,
//! participants that crash (also between their write and the messages that needed it), and
//! coordinators that crash and are replaced by another one recovered from the decision log
//! (as the next leader of a Paxos group holding the log would be). The decision log is
//! first-writer-wins and applies entries after a delay; entries a crashed coordinator handed
//! out may be chosen or lost.
//!
//! Checked: atomicity (no transaction both committed and aborted anywhere), validity (a commit
//! only with every participant's yes), and, once the faults stop, that every prepared
//! participant learns the decision.
//!
//! A failing seed replays alone: `SYNOD_TWOPC_SEED=N cargo test --test twopc_faults` (add
//! `SYNOD_TWOPC_TRACE=1` to see each ready and each takeover). `SYNOD_TWOPC_SEEDS=N` runs
//! seeds `0..N` (300 by default).

use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use synod::twopc::{
    Coordinator, CoordinatorConfig, CoordinatorEvent, DecisionLog, LogEntry, Message, Outcome,
    Participant, ParticipantConfig, ParticipantEvent, ParticipantRecord, TxnId,
};
use synod::NodeId;

const COORDINATORS: [NodeId; 2] = [NodeId(100), NodeId(101)];
const PARTICIPANTS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

struct World {
    rng: ChaCha8Rng,
    seed: u64,
    /// The active coordinator (index into COORDINATORS) and its machine, if any is up.
    coordinator: Option<(usize, Coordinator)>,
    log: DecisionLog,
    /// Entries handed to the log and not yet chosen: (who handed it, entry).
    pending_log: Vec<(usize, LogEntry)>,
    participants: BTreeMap<NodeId, Option<Participant>>,
    /// Each participant's durable prepared records, and its latest finished ones.
    disks: BTreeMap<NodeId, BTreeMap<TxnId, ParticipantRecord>>,
    finished: BTreeMap<NodeId, Vec<ParticipantRecord>>,
    network: Vec<Message>,
    faults: bool,
    next_txn: u64,
    /// Every outcome anyone reported for each transaction.
    outcomes: BTreeMap<TxnId, BTreeSet<Outcome>>,
    /// Who is (or was) durably prepared on what, and the participants of each transaction
    /// begun.
    yes: BTreeMap<TxnId, BTreeSet<NodeId>>,
    members: BTreeMap<TxnId, Vec<NodeId>>,
    commits_seen: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut world = World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            coordinator: None,
            log: DecisionLog::new(),
            pending_log: Vec::new(),
            participants: BTreeMap::new(),
            disks: BTreeMap::new(),
            finished: BTreeMap::new(),
            network: Vec::new(),
            faults: true,
            next_txn: 1,
            outcomes: BTreeMap::new(),
            yes: BTreeMap::new(),
            members: BTreeMap::new(),
            commits_seen: 0,
        };
        world.start_coordinator(0);
        for id in PARTICIPANTS {
            world.disks.insert(id, BTreeMap::new());
            world.finished.insert(id, Vec::new());
            world.participants.insert(id, None);
            world.restart_participant(id);
        }
        world
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.next_u32() % 100 < percent
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.rng.next_u64() % bound as u64) as usize
    }

    fn coordinator_config(index: usize) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::new(COORDINATORS[index]);
        config.vote_ticks = 30;
        config.resend_ticks = 7;
        config
    }

    /// The next coordinator takes over: the log entries still in flight are chosen or lost,
    /// then it recovers from the log (a new Paxos leader has applied everything chosen).
    fn start_coordinator(&mut self, index: usize) {
        if std::env::var("SYNOD_TWOPC_TRACE").is_ok() {
            eprintln!(
                "coordinator {index} takes over; pending {:?}; log {:?}",
                self.pending_log, self.log
            );
        }
        for (_, entry) in std::mem::take(&mut self.pending_log) {
            if self.chance(50) {
                self.log.apply(&entry);
            }
        }
        let coordinator =
            Coordinator::recover(World::coordinator_config(index), &self.log).unwrap();
        self.coordinator = Some((index, coordinator));
        self.drain_coordinator();
    }

    fn restart_participant(&mut self, id: NodeId) {
        let mut config = ParticipantConfig::new(id);
        config.coordinators = COORDINATORS.to_vec();
        config.query_ticks = 11;
        let records = self.finished[&id]
            .iter()
            .chain(self.disks[&id].values())
            .cloned()
            .collect::<Vec<_>>();
        let participant = Participant::recover(config, records).unwrap();
        self.participants.insert(id, Some(participant));
        self.drain_participant(id);
    }

    fn record(&mut self, txn: TxnId, outcome: Outcome, by: String) {
        if std::env::var("SYNOD_TWOPC_TRACE").is_ok() {
            eprintln!("{txn}: {outcome:?} by {by}");
        }
        let seen = self.outcomes.entry(txn).or_default();
        seen.insert(outcome);
        assert!(
            seen.len() == 1,
            "seed {}: {txn} both committed and aborted (last report by {by})",
            self.seed
        );
        if outcome == Outcome::Commit {
            // Validity: only with every participant's yes.
            let members = &self.members[&txn];
            let yes = self.yes.get(&txn).cloned().unwrap_or_default();
            assert!(
                members.iter().all(|member| yes.contains(member)),
                "seed {}: {txn} committed without every yes ({yes:?} of {members:?})",
                self.seed
            );
            self.commits_seen += 1;
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if self.faults && self.chance(8) {
                continue; // lost
            }
            if self.faults && self.chance(5) {
                self.network.push(message.clone()); // duplicated
            }
            self.network.push(message);
        }
    }

    fn drain_coordinator(&mut self) {
        loop {
            let Some((index, coordinator)) = self.coordinator.as_mut() else {
                return;
            };
            if !coordinator.has_ready() {
                return;
            }
            let index = *index;
            let mut ready = coordinator.ready();
            for entry in ready.take_log() {
                self.pending_log.push((index, entry));
            }
            self.send(ready.take_messages());
            for CoordinatorEvent::Decided { txn, outcome } in ready.take_events() {
                self.record(txn, outcome, format!("coordinator {index}"));
            }
        }
    }

    fn drain_participant(&mut self, id: NodeId) {
        loop {
            let Some(Some(participant)) = self.participants.get_mut(&id) else {
                return;
            };
            if !participant.has_ready() {
                return;
            }
            let mut ready = participant.ready();
            if std::env::var("SYNOD_TWOPC_TRACE").is_ok() {
                eprintln!("{id} ready: {ready:?}");
            }
            let messages = ready.take_messages();
            self.send(messages);
            for record in ready.take_records() {
                let disk = self.disks.get_mut(&id).unwrap();
                match record {
                    ParticipantRecord::Prepared { txn, .. } => {
                        // A yes vote counts once its prepared record is durable.
                        self.yes.entry(txn).or_default().insert(id);
                        disk.insert(txn, record);
                    }
                    ParticipantRecord::Finished { txn, .. } => {
                        disk.remove(&txn);
                        let finished = self.finished.get_mut(&id).unwrap();
                        finished.push(record);
                        if finished.len() > 4096 {
                            finished.remove(0);
                        }
                    }
                }
            }
            // The decisions are applied in the same atomic write as their finished records.
            let events = ready.take_events();
            for event in &events {
                if let ParticipantEvent::Decided { txn, outcome, .. } = event {
                    self.record(*txn, *outcome, format!("participant {id}"));
                }
            }
            // A crash between the write and the messages that waited for it.
            if self.faults && self.chance(3) {
                self.participants.insert(id, None);
                return;
            }
            let persisted = ready.take_persisted_messages();
            self.send(persisted);
            for event in events {
                if let ParticipantEvent::VoteRequested { txn, .. } = event {
                    let yes = !self.chance(12);
                    let participant = self.participants.get_mut(&id).unwrap().as_mut();
                    participant.unwrap().vote(txn, yes).unwrap();
                }
            }
        }
    }

    fn deliver(&mut self) {
        if self.network.is_empty() {
            return;
        }
        let index = self.below(self.network.len());
        let message = self.network.swap_remove(index);
        if let Some(position) = COORDINATORS.iter().position(|c| *c == message.to) {
            if let Some((active, coordinator)) = self.coordinator.as_mut() {
                if *active == position {
                    coordinator.step(message).expect("valid message");
                    self.drain_coordinator();
                }
            }
        } else if let Some(Some(participant)) = self.participants.get_mut(&message.to) {
            let to = message.to;
            participant.step(message).expect("valid message");
            self.drain_participant(to);
        }
    }

    fn choose_log_entry(&mut self) {
        if self.pending_log.is_empty() {
            return;
        }
        let (by, entry) = self.pending_log.remove(0);
        let answer = self.log.apply(&entry);
        if let (Some((txn, decided)), Some((active, coordinator))) =
            (answer, self.coordinator.as_mut())
        {
            if *active == by {
                coordinator.on_logged(txn, &decided);
                self.drain_coordinator();
            }
        }
    }

    fn tick(&mut self) {
        if let Some((_, coordinator)) = self.coordinator.as_mut() {
            coordinator.tick();
            self.drain_coordinator();
        }
        for id in PARTICIPANTS {
            if let Some(Some(participant)) = self.participants.get_mut(&id) {
                participant.tick();
                self.drain_participant(id);
            }
        }
    }

    fn begin(&mut self) {
        let Some((_, coordinator)) = self.coordinator.as_mut() else {
            return;
        };
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        let count = 1 + (self.rng.next_u32() % 3) as usize;
        let members: Vec<NodeId> = PARTICIPANTS[..count].to_vec();
        let parts = members
            .iter()
            .map(|id| (*id, Bytes::from(format!("{txn} at {id}"))))
            .collect();
        if coordinator.begin(txn, parts).is_ok() {
            self.members.insert(txn, members);
        }
        self.drain_coordinator();
    }

    fn fault(&mut self) {
        match self.below(3) {
            0 => {
                // The active coordinator crashes; the other one takes over.
                let next = self.coordinator.take().map_or(0, |(index, _)| 1 - index);
                self.start_coordinator(next);
            }
            _ => {
                let id = PARTICIPANTS[self.below(PARTICIPANTS.len())];
                if self.participants[&id].is_some() {
                    self.participants.insert(id, None);
                } else {
                    self.restart_participant(id);
                }
            }
        }
    }

    fn step(&mut self) {
        match self.below(100) {
            0..=44 => self.deliver(),
            45..=64 => self.choose_log_entry(),
            65..=84 => self.tick(),
            85..=94 => self.begin(),
            _ if self.faults && self.chance(30) => self.fault(),
            _ => {}
        }
    }

    fn run(&mut self) {
        for _ in 0..3_000 {
            self.step();
        }
        // Faults stop: everyone is up, and everything pending must finish.
        self.faults = false;
        for id in PARTICIPANTS {
            if self.participants[&id].is_none() {
                self.restart_participant(id);
            }
        }
        if self.coordinator.is_none() {
            self.start_coordinator(0);
        }
        for _ in 0..400 {
            while !self.network.is_empty() {
                self.deliver();
            }
            while !self.pending_log.is_empty() {
                self.choose_log_entry();
            }
            self.tick();
        }
        for (id, participant) in &self.participants {
            let prepared: Vec<TxnId> = participant.as_ref().unwrap().prepared().collect();
            assert!(
                prepared.is_empty(),
                "seed {}: participant {id} still prepared on {prepared:?}",
                self.seed
            );
            assert!(
                self.disks[id].is_empty(),
                "seed {}: {id} kept records",
                self.seed
            );
        }
        // Every participant that voted yes learned the decision.
        for (txn, voters) in &self.yes {
            assert!(
                !voters.is_empty() && self.outcomes.contains_key(txn),
                "seed {}: {txn} prepared but never decided",
                self.seed
            );
        }
    }
}

#[test]
fn atomicity_and_termination_under_faults() {
    let seeds: Vec<u64> = match std::env::var("SYNOD_TWOPC_SEED") {
        Ok(seed) => vec![seed.parse().expect("SYNOD_TWOPC_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SYNOD_TWOPC_SEEDS").map_or(300, |n| n.parse().unwrap());
            (0..count).collect()
        }
    };
    let mut commits = 0;
    let mut aborts = 0;
    for seed in seeds {
        let mut world = World::new(seed);
        world.run();
        commits += world.commits_seen;
        aborts += world
            .outcomes
            .values()
            .filter(|outcomes| outcomes.contains(&Outcome::Abort))
            .count();
    }
    // The runs must exercise both outcomes, or they check nothing.
    eprintln!("{commits} commits and {aborts} aborts checked");
    assert!(
        commits > 100 && aborts > 100,
        "{commits} commits, {aborts} aborts"
    );
}
