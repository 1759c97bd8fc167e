//! Two-phase commit under faults: a seeded world of [`Coordinator`]s, [`Participant`]s and a
//! [`DecisionLog`], with the 2PC checkers.
//!
//! The world loses, duplicates and reorders messages; crashes participants (also between
//! a ready's messages and its write, and between the write and the messages that waited for
//! it) and restarts them from their records; leaves a participant's ready undrained for a
//! while as messages and ticks go on arriving (a duplicate vote request between the vote and
//! its write, say);
//! crashes the active coordinator and lets the other one take over, recovered from the
//! decision log, as the next leader of a Paxos group holding that log would (the log's entries
//! still in flight when it crashes are chosen or lost at random). The decision log applies
//! entries after a random delay, first writer wins. Participants vote no now and then.
//!
//! With [`TwoPcConfig::finished_remembered`] and [`TwoPcConfig::log_finished_max`] small,
//! participants and the decision log forget finished transactions within a run, and late
//! duplicates of vote requests, votes and queries meet the floors that stand for them (see
//! [Forgetting](crate::twopc#forgetting)).
//!
//! Checked after every step: **atomicity** (no transaction committed anywhere and aborted
//! anywhere else, participants, coordinators and the decision log alike, and the log never
//! changes the outcome it holds for a transaction, even after forgetting it), **applied
//! once** (no participant applies a commit twice) and **validity** (a commit only with a
//! durable yes from every participant); and at every message a participant sends, that
//! what it reveals is durable (**durable before revealed**: a yes vote only with its prepared
//! record on the disk, a commit acknowledgement only with its commit record). Then the faults stop and everyone comes back:
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
    Body, Coordinator, CoordinatorConfig, CoordinatorEvent, DecisionLog, LogEntry, Message,
    Outcome, Participant, ParticipantConfig, ParticipantEvent, ParticipantRecord, TxnId, VoteError,
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
    /// With faults: the chance, in percent per ready a participant has to hand out, that it
    /// leaves the ready undrained for `1..=ready_hold_steps_max` steps, while messages and
    /// ticks go on being stepped into it (an application that drains late: nothing in the
    /// API obliges it to drain at once). Default 10.
    pub ready_hold_percent: u32,
    /// The longest hold of a participant's ready, in steps. Default 40.
    pub ready_hold_steps_max: u64,
    /// With faults: the chance, in percent per ready, that the participant crashes after
    /// sending the ready's messages and before its records reached the disk (they are
    /// lost). Default 3.
    pub crash_before_write_percent: u32,
    /// With faults: the chance, in percent per ready, that the participant crashes after
    /// its records are durable and before the messages that waited for them are sent.
    /// Default 3.
    pub crash_after_write_percent: u32,
    /// A deliberate bug, to prove the checkers catch it (never set it otherwise): the
    /// application sends a participant's persisted messages (yes votes, commit
    /// acknowledgements) with the others, before writing the ready's records.
    pub send_before_write: bool,
    /// Finished transactions each participant remembers
    /// ([`ParticipantConfig::finished_remembered`]), and the finished records its
    /// application keeps on disk (with the newest floor of each coordinator). Default 4096:
    /// a run forgets nothing.
    pub finished_remembered: usize,
    /// Finished transactions the decision log remembers
    /// ([`DecisionLog::with_finished_max`]). Default [`DecisionLog::FINISHED_MAX`].
    pub log_finished_max: usize,
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
            ready_hold_percent: 10,
            ready_hold_steps_max: 40,
            crash_before_write_percent: 3,
            crash_after_write_percent: 3,
            send_before_write: false,
            finished_remembered: 4096,
            log_finished_max: DecisionLog::FINISHED_MAX,
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
    /// Participant crashes (all of them: those inside a ready too).
    pub participant_crashes: u64,
    /// Participant crashes after a ready's messages were sent, before its records were
    /// written ([`TwoPcConfig::crash_before_write_percent`]).
    pub crashes_before_write: u64,
    /// Participant crashes after a ready's records were written, before the messages that
    /// waited for them were sent ([`TwoPcConfig::crash_after_write_percent`]).
    pub crashes_after_write: u64,
    /// Participant readies left undrained for a while ([`TwoPcConfig::ready_hold_percent`]).
    pub readies_held: u64,
    /// Messages sent (before loss and duplication).
    pub messages: u64,
    /// Vote requests a participant answered no because they were at or below the floor of
    /// what it forgot (not the application's no votes).
    pub floor_refusals: u64,
    /// `Decide` entries the decision log answered abort, unrecorded, because they were at or
    /// below the floor of what it forgot.
    pub log_floor_aborts: u64,
}

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPcViolation {
    /// The run's seed.
    pub seed: u64,
    /// The checker: `check_2pc_atomicity`, `check_2pc_applied_once`, `check_2pc_validity`,
    /// `check_2pc_termination`, `check_2pc_durable_before_revealed` or
    /// `check_2pc_messages`.
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
    /// Each participant's durable prepared records, its latest finished ones, and its newest
    /// floor of each coordinator.
    disks: BTreeMap<NodeId, BTreeMap<TxnId, ParticipantRecord>>,
    finished: BTreeMap<NodeId, Vec<ParticipantRecord>>,
    floors: BTreeMap<NodeId, BTreeMap<NodeId, ParticipantRecord>>,
    /// Every finished record each participant ever wrote (the disk keeps the newest only):
    /// for the checkers.
    finished_ever: BTreeMap<NodeId, BTreeMap<TxnId, Outcome>>,
    /// The commits each participant applied (with their durable finished record).
    applied: BTreeMap<NodeId, BTreeSet<TxnId>>,
    /// The no votes the application cast and the participant has not sent yet.
    no_votes: BTreeSet<(NodeId, TxnId)>,
    /// The outcome the decision log held for each transaction, once it held one.
    logged: BTreeMap<TxnId, Outcome>,
    network: Vec<Message>,
    faults: bool,
    /// Steps taken.
    now: u64,
    /// Participants that leave their ready undrained until the given step.
    held_until: BTreeMap<NodeId, u64>,
    /// Participants whose next ready was held: it comes late.
    late: BTreeSet<NodeId>,
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
            log: DecisionLog::with_finished_max(config.log_finished_max),
            pending_log: Vec::new(),
            participants: BTreeMap::new(),
            disks: BTreeMap::new(),
            finished: BTreeMap::new(),
            floors: BTreeMap::new(),
            finished_ever: BTreeMap::new(),
            applied: BTreeMap::new(),
            no_votes: BTreeSet::new(),
            logged: BTreeMap::new(),
            network: Vec::new(),
            faults: config.faults,
            now: 0,
            held_until: BTreeMap::new(),
            late: BTreeSet::new(),
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
            world.floors.insert(id, BTreeMap::new());
            world.finished_ever.insert(id, BTreeMap::new());
            world.applied.insert(id, BTreeSet::new());
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
                self.apply_log_entry(&entry);
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
        config.finished_remembered = self.config.finished_remembered;
        let records: Vec<ParticipantRecord> = self.floors[&id]
            .values()
            .chain(&self.finished[&id])
            .chain(self.disks[&id].values())
            .cloned()
            .collect();
        let participant = Participant::recover(config, records).expect("valid configuration");
        self.participants.insert(id, Some(participant));
        self.held_until.remove(&id);
        self.drain_participant(id);
    }

    /// Participant `id` crashes: what it had not written is lost.
    fn crash_participant(&mut self, id: NodeId) {
        if self.config.trace {
            eprintln!("{id} crashes");
        }
        self.participants.insert(id, None);
        self.held_until.remove(&id);
        self.late.remove(&id);
        self.stats.participant_crashes += 1;
    }

    /// Drains the participants whose held ready is due.
    fn release_held(&mut self) {
        let due: Vec<NodeId> = self
            .held_until
            .iter()
            .filter(|(_, until)| **until <= self.now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.held_until.remove(&id);
            self.drain_participant(id);
        }
    }

    /// Applies an entry to the decision log, and checks that the outcome the log holds for
    /// the transaction agrees with every other (it may forget it, never change it).
    fn apply_log_entry(&mut self, entry: &LogEntry) -> Option<(TxnId, crate::twopc::Decided)> {
        if let LogEntry::Decide { txn, .. } = entry {
            let floor = self.log.floor();
            if floor.is_some_and(|floor| *txn <= floor) && self.log.outcome(*txn).is_none() {
                self.stats.log_floor_aborts += 1;
            }
        }
        let answer = self.log.apply(entry);
        if let Some((txn, _)) = &answer {
            if let Some(outcome) = self.log.outcome(*txn) {
                let first = *self.logged.entry(*txn).or_insert(outcome);
                let reported = self.outcomes.get(txn).cloned().unwrap_or_default();
                if first != outcome || reported.iter().any(|seen| *seen != outcome) {
                    self.violated(
                        "check_2pc_atomicity",
                        format!(
                            "the decision log holds {outcome:?} for {txn}, which was {first:?} \
                             there and reported {reported:?}"
                        ),
                    );
                }
            }
        }
        answer
    }

    /// Participant `id` applied `txn`'s commit (with its durable finished record): never
    /// twice, even after it forgot the transaction.
    fn check_applied_once(&mut self, id: NodeId, txn: TxnId) {
        let applied = self.applied.get_mut(&id).expect("kept");
        if !applied.insert(txn) {
            self.violated(
                "check_2pc_applied_once",
                format!("participant {id} applied {txn}'s commit twice"),
            );
        }
    }

    /// The atomicity and validity checkers, on every report of an outcome.
    fn record(&mut self, txn: TxnId, outcome: Outcome, by: String) {
        if self.config.trace {
            eprintln!("{txn}: {outcome:?} by {by}");
        }
        if let Some(logged) = self.logged.get(&txn).filter(|logged| **logged != outcome) {
            let detail = format!("{txn}: {outcome:?} reported by {by}, the log held {logged:?}");
            self.violated("check_2pc_atomicity", detail);
            return;
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

    /// Participant `id` sends `messages`: a yes vote needs its prepared record on the disk
    /// (or the finished record that replaced it there: the same write may have prepared the
    /// transaction and applied its decision), a commit acknowledgement its commit record (the
    /// state they reveal must survive a crash, whatever happens to the ready still being
    /// written). Also counts the no votes the application did not cast: the floor's.
    fn check_durable_before_revealed(&mut self, id: NodeId, messages: &[Message]) {
        for message in messages {
            if message.body == (Body::Vote { yes: false })
                && !self.no_votes.remove(&(id, message.txn))
            {
                self.stats.floor_refusals += 1;
            }
            let finished = |outcome: Option<Outcome>| {
                self.finished_ever[&id]
                    .get(&message.txn)
                    .is_some_and(|done| outcome.map_or(true, |wanted| wanted == *done))
            };
            let durable = match message.body {
                Body::Vote { yes: true } => {
                    self.disks[&id].contains_key(&message.txn) || finished(None)
                }
                Body::DecisionAck => finished(Some(Outcome::Commit)),
                _ => true,
            };
            if !durable {
                let detail = format!(
                    "{id} sent {:?} for {} before the record it reveals was written",
                    message.body, message.txn
                );
                self.violated("check_2pc_durable_before_revealed", detail);
            }
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
            if !participant.has_ready() || self.held_until.contains_key(&id) {
                return;
            }
            if self.faults && self.chance(self.config.ready_hold_percent) {
                let steps = 1 + self.rng.next_u64() % self.config.ready_hold_steps_max.max(1);
                if self.config.trace {
                    eprintln!("{id} leaves its ready undrained for {steps} steps");
                }
                self.held_until.insert(id, self.now + steps);
                self.late.insert(id);
                self.stats.readies_held += 1;
                return;
            }
            let Some(Some(participant)) = self.participants.get_mut(&id) else {
                return;
            };
            let mut ready = participant.ready();
            let late = self.late.remove(&id);
            if self.config.trace {
                eprintln!("{id} ready: {ready:?}");
            }
            let mut messages = ready.take_messages();
            if self.config.send_before_write {
                messages.extend(ready.take_persisted_messages());
            }
            self.check_durable_before_revealed(id, &messages);
            self.send(messages);
            // A crash after the messages, before the records reached the disk.
            if self.faults && self.chance(self.config.crash_before_write_percent) {
                self.stats.crashes_before_write += 1;
                self.crash_participant(id);
                return;
            }
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
                    ParticipantRecord::Finished { txn, outcome, .. } => {
                        disk.remove(&txn);
                        let ever = self.finished_ever.get_mut(&id).expect("kept");
                        ever.insert(txn, outcome);
                        let finished = self.finished.get_mut(&id).expect("kept");
                        finished.push(record);
                        if finished.len() > self.config.finished_remembered {
                            finished.remove(0);
                        }
                    }
                    ParticipantRecord::Floor { coordinator, txn } => {
                        let floors = self.floors.get_mut(&id).expect("kept");
                        let higher = match floors.get(&coordinator) {
                            Some(ParticipantRecord::Floor { txn: kept, .. }) => txn > *kept,
                            _ => true,
                        };
                        if higher {
                            floors.insert(coordinator, record);
                        }
                    }
                }
            }
            // The decisions are applied in the same atomic write as their finished records.
            let events = ready.take_events();
            for event in &events {
                if let ParticipantEvent::Decided { txn, outcome, .. } = event {
                    if *outcome == Outcome::Commit {
                        self.check_applied_once(id, *txn);
                    }
                    self.record(*txn, *outcome, format!("participant {id}"));
                }
            }
            // A crash between the write and the messages that waited for it.
            if self.faults && self.chance(self.config.crash_after_write_percent) {
                self.stats.crashes_after_write += 1;
                self.crash_participant(id);
                return;
            }
            let messages = ready.take_persisted_messages();
            self.check_durable_before_revealed(id, &messages);
            self.send(messages);
            for event in events {
                if let ParticipantEvent::VoteRequested { txn, .. } = event {
                    let yes = !self.chance(12);
                    let Some(Some(participant)) = self.participants.get_mut(&id) else {
                        continue;
                    };
                    match participant.vote(txn, yes) {
                        Ok(()) if !yes => {
                            self.no_votes.insert((id, txn));
                        }
                        Ok(()) => {}
                        // The ready was held: the transaction was decided (an abort for a
                        // vote that did not come in time) before the application heard of
                        // the request.
                        Err(VoteError::NotAsked(_)) if late => {}
                        Err(error) => self.violated(
                            "check_2pc_messages",
                            format!("{id} refused the vote it asked for: {error}"),
                        ),
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
        let answer = self.apply_log_entry(&entry);
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
                self.crash_participant(id);
            } else {
                self.restart_participant(id);
            }
        }
    }

    fn step(&mut self) {
        self.now += 1;
        self.release_held();
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
        // Faults stop: everyone is up, held readies are drained, and everything pending
        // must finish.
        self.faults = false;
        let held: Vec<NodeId> = std::mem::take(&mut self.held_until).into_keys().collect();
        for id in held {
            self.drain_participant(id);
        }
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

#[cfg(test)]
mod tests {
    //! The 2PC checkers on hand-built reports (the world's machines are the real ones, so a
    //! broken coordinator or participant is not reachable through [`run`]).
    use super::*;

    const P1: NodeId = NodeId(1);
    const P2: NodeId = NodeId(2);

    /// A world with no transactions of its own yet, and transaction `txn` over `members`, of
    /// which `prepared` durably voted yes.
    fn world_with(txn: TxnId, members: &[NodeId], prepared: &[NodeId]) -> World {
        let mut world = World::new(&TwoPcConfig::new(1));
        world.members.insert(txn, members.to_vec());
        world
            .prepared
            .insert(txn, prepared.iter().copied().collect());
        world
    }

    fn property(world: &mut World) -> Option<&'static str> {
        world.check().err().map(|violation| violation.property)
    }

    #[test]
    fn a_commit_and_an_abort_of_one_transaction_break_atomicity() {
        let txn = TxnId(1000);
        let mut world = world_with(txn, &[P1, P2], &[P1, P2]);
        world.record(txn, Outcome::Commit, "participant 1".into());
        world.record(txn, Outcome::Commit, "coordinator".into());
        assert_eq!(property(&mut world), None);
        world.record(txn, Outcome::Abort, "participant 2".into());
        assert_eq!(property(&mut world), Some("check_2pc_atomicity"));
        // Against the outcome the decision log held, even with nothing reported yet.
        let mut world = world_with(txn, &[P1], &[P1]);
        world.logged.insert(txn, Outcome::Abort);
        world.record(txn, Outcome::Commit, "participant 1".into());
        assert_eq!(property(&mut world), Some("check_2pc_atomicity"));
    }

    #[test]
    fn a_commit_without_every_durable_yes_breaks_validity() {
        let txn = TxnId(1000);
        let mut world = world_with(txn, &[P1, P2], &[P1]);
        world.record(txn, Outcome::Commit, "coordinator".into());
        assert_eq!(property(&mut world), Some("check_2pc_validity"));
        // A transaction the world never began cannot commit either.
        let mut world = world_with(txn, &[], &[]);
        world.record(TxnId(1001), Outcome::Commit, "coordinator".into());
        assert_eq!(property(&mut world), Some("check_2pc_validity"));
    }

    #[test]
    fn an_abort_after_a_no_vote_is_legal() {
        // P2 voted no (no prepared record): abort, reported by everyone, as often as they
        // like.
        let txn = TxnId(1000);
        let mut world = world_with(txn, &[P1, P2], &[P1]);
        for by in [
            "coordinator",
            "participant 1",
            "participant 1",
            "participant 2",
        ] {
            world.record(txn, Outcome::Abort, by.into());
        }
        assert_eq!(property(&mut world), None);
        world.check_applied_once(P1, TxnId(1001));
        world.check_applied_once(P2, TxnId(1001));
        assert_eq!(property(&mut world), None);
    }

    #[test]
    fn a_commit_applied_twice_is_caught() {
        let mut world = World::new(&TwoPcConfig::new(1));
        world.check_applied_once(P1, TxnId(1000));
        assert_eq!(property(&mut world), None);
        world.check_applied_once(P1, TxnId(1000));
        assert_eq!(property(&mut world), Some("check_2pc_applied_once"));
    }

    #[test]
    fn what_a_participant_reveals_must_be_durable() {
        let message = |txn, body| Message {
            txn: TxnId(txn),
            from: P1,
            to: COORDINATORS[0],
            body,
        };
        let mut world = World::new(&TwoPcConfig::new(1));
        // Nothing on P1's disk for 1000.
        world.check_durable_before_revealed(P1, &[message(1000, Body::Vote { yes: true })]);
        assert_eq!(
            property(&mut world),
            Some("check_2pc_durable_before_revealed")
        );
        // An acknowledgement of a commit P1 recorded as an abort.
        world
            .finished_ever
            .get_mut(&P1)
            .unwrap()
            .insert(TxnId(1001), Outcome::Abort);
        world.check_durable_before_revealed(P1, &[message(1001, Body::DecisionAck)]);
        assert_eq!(
            property(&mut world),
            Some("check_2pc_durable_before_revealed")
        );
        // A yes vote sent after the same write prepared and aborted it (a held ready): its
        // finished record stands for the prepared one. A no vote needs nothing.
        world.check_durable_before_revealed(
            P1,
            &[
                message(1001, Body::Vote { yes: true }),
                message(1002, Body::Vote { yes: false }),
            ],
        );
        assert_eq!(property(&mut world), None);
    }
}
