//! Two-phase commit under faults: a seeded world of [`Coordinator`]s, [`Participant`]s and a
//! [`DecisionLog`], with the 2PC checkers.
//!
//! The world loses, duplicates and reorders messages; crashes participants (also between
//! their write and the messages that waited for it) and restarts them from their records;
//! crashes the active coordinator and lets the other one take over, recovered from the
//! decision log, as the next leader of a Paxos group holding that log would (the log's entries
//! still in flight when it crashes are chosen or lost at random). The decision log applies
//! entries after a random delay, first writer wins. Participants vote no now and then.
//!
//! Checked after every step: **atomicity** (no transaction committed anywhere and aborted
//! anywhere else, participants and coordinators alike) and **validity** (a commit only with a
//! durable yes from every participant). Then the faults stop and everyone comes back:
//! **termination** (every participant that was prepared learns the decision, and no prepared
//! record is left).
//!
//! ```
//! use synod::sim::twopc::{run, TwoPcConfig};
//!
//! let stats = run(&TwoPcConfig::new(7)).expect("2PC is atomic");
//! assert!(stats.begun > 0);
//! ```
//!
//! A failing seed replays alone: `cargo run --release --example sim -- --twopc --seed N`.

use crate::twopc::{
    Coordinator, CoordinatorConfig, CoordinatorEvent, DecisionLog, LogEntry, Message, Outcome,
    Participant, ParticipantConfig, ParticipantEvent, ParticipantRecord, TxnId,
};
use crate::types::NodeId;
use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One run of the 2PC world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPcConfig {
    /// Seeds every random choice: the same seed gives the same run.
    pub seed: u64,
    /// Participants (1 to 16); each transaction involves one to three of them. Default 3.
    pub participants: usize,
    /// Steps with faults on. Default 3 000.
    pub steps: u64,
    /// Rounds after the faults stop, within which everything must finish. Default 400.
    pub settle_rounds: u64,
    /// Whether faults are injected at all. Default true.
    pub faults: bool,
    /// Trace every ready and takeover to standard error.
    pub trace: bool,
}

impl TwoPcConfig {
    /// The defaults, with `seed`.
    pub fn new(seed: u64) -> TwoPcConfig {
        TwoPcConfig {
            seed,
            participants: 3,
            steps: 3_000,
            settle_rounds: 400,
            faults: true,
            trace: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TwoPcStats {
    /// Transactions begun.
    pub begun: u64,
    /// Transactions committed (at some participant or coordinator).
    pub committed: u64,
    /// Transactions aborted.
    pub aborted: u64,
    /// Coordinator crashes, each followed by a takeover.
    pub takeovers: u64,
    /// Participant crashes.
    pub participant_crashes: u64,
    /// Messages sent (before loss and duplication).
    pub messages: u64,
}

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPcViolation {
    /// The run's seed.
    pub seed: u64,
    /// The checker: `check_2pc_atomicity`, `check_2pc_validity` or `check_2pc_termination`.
    pub property: &'static str,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for TwoPcViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {}: {} (replay: cargo run --release --example sim -- --twopc --seed {})",
            self.seed, self.property, self.detail, self.seed
        )
    }
}

impl std::error::Error for TwoPcViolation {}

/// Runs one seed.
///
/// # Errors
/// The first [`TwoPcViolation`].
///
/// # Panics
/// If `config.participants` is not within 1..=16.
pub fn run(config: &TwoPcConfig) -> Result<TwoPcStats, TwoPcViolation> {
    assert!(
        (1..=16).contains(&config.participants),
        "1 to 16 participants"
    );
    let mut world = World::new(config);
    world.run()?;
    Ok(world.stats)
}

const COORDINATORS: [NodeId; 2] = [NodeId(100), NodeId(101)];

struct World {
    rng: ChaCha8Rng,
    config: TwoPcConfig,
    participant_ids: Vec<NodeId>,
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
    /// Who is (or was) durably prepared on what, and the participants of each transaction.
    prepared: BTreeMap<TxnId, BTreeSet<NodeId>>,
    members: BTreeMap<TxnId, Vec<NodeId>>,
    stats: TwoPcStats,
    violation: Option<TwoPcViolation>,
}

impl World {
    fn new(config: &TwoPcConfig) -> World {
        let participant_ids: Vec<NodeId> = (1..=config.participants as u64).map(NodeId).collect();
        let mut world = World {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config: config.clone(),
            participant_ids: participant_ids.clone(),
            coordinator: None,
            log: DecisionLog::new(),
            pending_log: Vec::new(),
            participants: BTreeMap::new(),
            disks: BTreeMap::new(),
            finished: BTreeMap::new(),
            network: Vec::new(),
            faults: config.faults,
            next_txn: 1,
            outcomes: BTreeMap::new(),
            prepared: BTreeMap::new(),
            members: BTreeMap::new(),
            stats: TwoPcStats::default(),
            violation: None,
        };
        world.start_coordinator(0);
        for id in participant_ids {
            world.disks.insert(id, BTreeMap::new());
            world.finished.insert(id, Vec::new());
            world.participants.insert(id, None);
            world.restart_participant(id);
        }
        world
    }

    fn violated(&mut self, property: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(TwoPcViolation {
                seed: self.config.seed,
                property,
                detail,
            });
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.next_u32() % 100 < percent
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.rng.next_u64() % bound as u64) as usize
    }

    fn coordinator_config(index: usize) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::new(COORDINATORS[index]);
        config.vote_ticks = 100;
        config.resend_ticks = 7;
        config
    }

    /// The next coordinator takes over: the log entries still in flight are chosen or lost,
    /// then it recovers from the log (a new Paxos leader has applied everything chosen).
    fn start_coordinator(&mut self, index: usize) {
        if self.config.trace {
            eprintln!(
                "coordinator {index} takes over; in flight {:?}",
                self.pending_log
            );
        }
        for (_, entry) in std::mem::take(&mut self.pending_log) {
            if self.chance(50) {
                self.log.apply(&entry);
            }
        }
        let coordinator = Coordinator::recover(World::coordinator_config(index), &self.log)
            .expect("valid configuration");
        self.coordinator = Some((index, coordinator));
        self.drain_coordinator();
    }

    fn restart_participant(&mut self, id: NodeId) {
        let mut config = ParticipantConfig::new(id);
        config.coordinators = COORDINATORS.to_vec();
        config.query_ticks = 11;
        let records: Vec<ParticipantRecord> = self.finished[&id]
            .iter()
            .chain(self.disks[&id].values())
            .cloned()
            .collect();
        let participant = Participant::recover(config, records).expect("valid configuration");
        self.participants.insert(id, Some(participant));
        self.drain_participant(id);
    }

    /// The atomicity and validity checkers, on every report of an outcome.
    fn record(&mut self, txn: TxnId, outcome: Outcome, by: String) {
        if self.config.trace {
            eprintln!("{txn}: {outcome:?} by {by}");
        }
        let seen = self.outcomes.entry(txn).or_default();
        let fresh = seen.insert(outcome);
        if seen.len() > 1 {
            self.violated(
                "check_2pc_atomicity",
                format!("{txn} both committed and aborted (the second report by {by})"),
            );
            return;
        }
        if !fresh {
            return;
        }
        match outcome {
            Outcome::Commit => {
                self.stats.committed += 1;
                let members = self.members.get(&txn).cloned().unwrap_or_default();
                let prepared = self.prepared.get(&txn).cloned().unwrap_or_default();
                if members.is_empty() || !members.iter().all(|m| prepared.contains(m)) {
                    self.violated(
                        "check_2pc_validity",
                        format!("{txn} committed with {prepared:?} prepared of {members:?}"),
                    );
                }
            }
            Outcome::Abort => self.stats.aborted += 1,
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.stats.messages += 1;
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
                self.record(txn, outcome, format!("coordinator {}", COORDINATORS[index]));
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
            if self.config.trace {
                eprintln!("{id} ready: {ready:?}");
            }
            self.send(ready.take_messages());
            for record in ready.take_records() {
                let disk = self
                    .disks
                    .get_mut(&id)
                    .expect("every participant has a disk");
                match record {
                    ParticipantRecord::Prepared { txn, .. } => {
                        // A yes vote counts once its prepared record is durable.
                        self.prepared.entry(txn).or_default().insert(id);
                        disk.insert(txn, record);
                    }
                    ParticipantRecord::Finished { txn, .. } => {
                        disk.remove(&txn);
                        let finished = self.finished.get_mut(&id).expect("kept");
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
                self.stats.participant_crashes += 1;
                return;
            }
            self.send(ready.take_persisted_messages());
            for event in events {
                if let ParticipantEvent::VoteRequested { txn, .. } = event {
                    let yes = !self.chance(12);
                    if let Some(Some(participant)) = self.participants.get_mut(&id) {
                        participant.vote(txn, yes).expect("a vote was asked for");
                    }
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
        let to = message.to;
        if let Some(position) = COORDINATORS.iter().position(|c| *c == to) {
            if let Some((active, coordinator)) = self.coordinator.as_mut() {
                if *active == position {
                    if let Err(error) = coordinator.step(message) {
                        self.violated("check_2pc_messages", format!("{to} refused: {error}"));
                    }
                    self.drain_coordinator();
                }
            }
        } else if let Some(Some(participant)) = self.participants.get_mut(&to) {
            if let Err(error) = participant.step(message) {
                self.violated("check_2pc_messages", format!("{to} refused: {error}"));
            }
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
        for index in 0..self.participant_ids.len() {
            let id = self.participant_ids[index];
            if let Some(Some(participant)) = self.participants.get_mut(&id) {
                participant.tick();
                self.drain_participant(id);
            }
        }
    }

    fn begin(&mut self) {
        let count = 1 + self.below(3.min(self.participant_ids.len()));
        let start = self.below(self.participant_ids.len() - count + 1);
        let members: Vec<NodeId> = self.participant_ids[start..start + count].to_vec();
        let Some((_, coordinator)) = self.coordinator.as_mut() else {
            return;
        };
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        let parts = members
            .iter()
            .map(|id| (*id, Bytes::from(format!("{txn} at {id}"))))
            .collect();
        if coordinator.begin(txn, parts).is_ok() {
            self.members.insert(txn, members);
            self.stats.begun += 1;
        }
        self.drain_coordinator();
    }

    fn fault(&mut self) {
        if self.below(3) == 0 {
            // The active coordinator crashes; the other one takes over.
            let next = self.coordinator.take().map_or(0, |(index, _)| 1 - index);
            self.stats.takeovers += 1;
            self.start_coordinator(next);
        } else {
            let index = self.below(self.participant_ids.len());
            let id = self.participant_ids[index];
            if self.participants[&id].is_some() {
                self.participants.insert(id, None);
                self.stats.participant_crashes += 1;
            } else {
                self.restart_participant(id);
            }
        }
    }

    fn step(&mut self) {
        match self.below(100) {
            0..=49 => self.deliver(),
            50..=69 => self.choose_log_entry(),
            70..=91 => self.tick(),
            92..=94 => self.begin(),
            _ if self.faults && self.chance(10) => self.fault(),
            _ => {}
        }
    }

    fn check(&mut self) -> Result<(), TwoPcViolation> {
        match self.violation.take() {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    }

    fn run(&mut self) -> Result<(), TwoPcViolation> {
        for _ in 0..self.config.steps {
            self.step();
            self.check()?;
        }
        // Faults stop: everyone is up, and everything pending must finish.
        self.faults = false;
        for index in 0..self.participant_ids.len() {
            let id = self.participant_ids[index];
            if self.participants[&id].is_none() {
                self.restart_participant(id);
            }
        }
        if self.coordinator.is_none() {
            self.start_coordinator(0);
        }
        for _ in 0..self.config.settle_rounds {
            while !self.network.is_empty() {
                self.deliver();
            }
            while !self.pending_log.is_empty() {
                self.choose_log_entry();
            }
            self.tick();
            self.check()?;
        }
        let mut stuck = Vec::new();
        for (id, participant) in &self.participants {
            let left: Vec<TxnId> = participant
                .as_ref()
                .map(|p| p.prepared().collect())
                .unwrap_or_default();
            if !left.is_empty() || !self.disks[id].is_empty() {
                stuck.push(format!("participant {id} still prepared on {left:?}"));
            }
        }
        if let Some(detail) = stuck.into_iter().next() {
            self.violated("check_2pc_termination", detail);
        }
        let undecided: Vec<TxnId> = self
            .prepared
            .keys()
            .filter(|txn| !self.outcomes.contains_key(txn))
            .copied()
            .collect();
        if !undecided.is_empty() {
            let detail = format!("{undecided:?} prepared but never decided");
            self.violated("check_2pc_termination", detail);
        }
        self.check()
    }
}
