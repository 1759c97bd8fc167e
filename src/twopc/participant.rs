//! The participant: votes, stays prepared, applies the decision.

use super::{Body, Message, Outcome, StepError, TxnId};
use crate::error::ConfigError;
use crate::types::NodeId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use thiserror::Error;

/// How a [`Participant`] behaves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParticipantConfig {
    /// This participant's address.
    pub id: NodeId,
    /// Where to send status queries. Empty (the default): the node that sent the vote
    /// request. With the decision log in a Paxos group, list every replica of the group, so
    /// that whichever leads answers.
    pub coordinators: Vec<NodeId>,
    /// Ticks a prepared transaction waits between status queries. Default 20.
    pub query_ticks: u64,
    /// Transactions awaiting a vote or prepared, at most; more vote requests are refused
    /// (and time out at their coordinator). Default 10 000.
    pub txns_max: usize,
    /// The largest payload a vote request may carry. Default 1 MiB.
    pub payload_bytes_max: usize,
    /// Finished transactions remembered one by one, so that a duplicated vote request
    /// arriving after the decision is not taken for a new transaction. Default 4096 (0:
    /// none). Beyond it the participant keeps a **floor** per coordinator, the highest
    /// transaction of that coordinator it forgot (handed out as [`ParticipantRecord::Floor`]),
    /// and votes no, without asking the application, on a vote request at or below the floor
    /// for a transaction it does not know: see the [module documentation](super#forgetting).
    pub finished_remembered: usize,
    /// Distinct coordinators served, at most (besides the members of
    /// [`coordinators`](Self::coordinators), always served). Default 1024. A participant
    /// keeps a floor per coordinator it served and can never forget one (a floor lowered or
    /// dropped could let a duplicated vote request prepare a forgotten transaction again), so
    /// this bounds that memory: once this many coordinators were served, a vote request from
    /// another one is answered no at once, without asking the application (a no is always
    /// safe; its transaction aborts) and without remembering anything. Raise it if more
    /// coordinators are legitimate.
    pub coordinators_max: usize,
}

impl ParticipantConfig {
    /// A configuration with the defaults.
    pub fn new(id: NodeId) -> ParticipantConfig {
        ParticipantConfig {
            id,
            coordinators: Vec::new(),
            query_ticks: 20,
            txns_max: 10_000,
            payload_bytes_max: 1 << 20,
            finished_remembered: 4096,
            coordinators_max: 1024,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.query_ticks == 0 {
            return Err(ConfigError::new("query_ticks", "must be at least 1"));
        }
        if self.txns_max == 0 {
            return Err(ConfigError::new("txns_max", "must be at least 1"));
        }
        if self.coordinators_max == 0 && self.coordinators.is_empty() {
            return Err(ConfigError::new(
                "coordinators_max",
                "must be at least 1 (or list the coordinators)",
            ));
        }
        Ok(())
    }
}

/// What a participant keeps durable: one record per prepared transaction, one per finished
/// one, and a floor per coordinator. Write each record a ready hands out, in order, before
/// sending its persisted messages; on restart pass [`Participant::recover`] the prepared
/// records not followed by their finished one, the newest finished ones (at least
/// [`ParticipantConfig::finished_remembered`] of them, oldest first) and the newest floor of
/// each coordinator.
///
/// A finished record may be dropped once it is not among the newest
/// `finished_remembered`, and a floor once a higher floor of the same coordinator is written:
/// the participant hands a floor out, in an earlier ready or ahead of it in the same one,
/// before the finished record that pushes a transaction it covers out of that window. (So a
/// crash part-way through a ready's records never leaves a forgotten transaction covered by
/// neither its finished record nor a floor.)
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// `txn` is prepared: this participant voted yes and must await the decision, across
    /// crashes.
    Prepared {
        /// The transaction.
        txn: TxnId,
        /// Who asked.
        coordinator: NodeId,
        /// This participant's part.
        payload: Bytes,
    },
    /// `txn` is decided (commit or abort): its prepared record can go. Write it together
    /// with the effect of the decision on your state (applying the commit), atomically.
    Finished {
        /// The transaction.
        txn: TxnId,
        /// The coordinator that asked for the vote (the prepared record's), whose floor
        /// rises to `txn` when the participant forgets the transaction.
        coordinator: NodeId,
        /// The decision.
        outcome: Outcome,
    },
    /// The participant forgot finished transactions of `coordinator` up to `txn`: a vote
    /// request from it at or below `txn`, for a transaction the participant does not know,
    /// is answered no. Handed out whenever the floor rises; only the newest one of each
    /// coordinator matters (a lower one changes nothing). It needs no sync of its own.
    Floor {
        /// The coordinator whose transactions the floor covers.
        coordinator: NodeId,
        /// The highest transaction of that coordinator forgotten.
        txn: TxnId,
    },
}

/// What the application hears from a participant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParticipantEvent {
    /// A coordinator asks for a vote on `payload`: check it (and lock what it needs), then
    /// call [`Participant::vote`].
    VoteRequested {
        /// The transaction.
        txn: TxnId,
        /// This participant's part.
        payload: Bytes,
    },
    /// `txn` is decided: on commit apply `payload`, on abort release what the vote locked.
    /// Reported once per transaction (again after a crash that lost the finished record).
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The decision.
        outcome: Outcome,
        /// This participant's part.
        payload: Bytes,
    },
}

/// Why [`Participant::vote`] refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum VoteError {
    /// No vote is awaited for `txn` (never asked, already voted, or already decided).
    #[error("no vote awaited for {0}")]
    NotAsked(TxnId),
}

/// One numbered batch of a participant's work. Drain in order:
/// [`take_messages`](Self::take_messages) (send: no votes, nothing that needs the write),
/// [`take_records`](Self::take_records) (write, and sync if [`must_sync`](Self::must_sync)),
/// [`take_persisted_messages`](Self::take_persisted_messages) (send once the write is
/// durable: yes votes, acknowledgements), [`take_events`](Self::take_events).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ParticipantReady {
    messages: Vec<Message>,
    records: Vec<ParticipantRecord>,
    must_sync: bool,
    persisted_messages: Vec<Message>,
    events: Vec<ParticipantEvent>,
}

impl ParticipantReady {
    /// Messages to send now.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    /// Records to write, in order.
    pub fn take_records(&mut self) -> Vec<ParticipantRecord> {
        std::mem::take(&mut self.records)
    }

    /// True if the records must be durable before the persisted messages go (a prepared or
    /// committed record). Abort records need no sync: presumed abort.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    /// Messages to send once the records are durable.
    pub fn take_persisted_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.persisted_messages)
    }

    /// What happened.
    pub fn take_events(&mut self) -> Vec<ParticipantEvent> {
        std::mem::take(&mut self.events)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    /// The application was asked to vote.
    Asked { coordinator: NodeId, payload: Bytes },
    /// Voted yes; bound by the decision.
    Prepared {
        coordinator: NodeId,
        payload: Bytes,
        since_query: u64,
    },
}

/// The two-phase-commit participant. See the [module documentation](super).
///
/// Inputs: [`step`](Self::step), [`vote`](Self::vote), [`tick`](Self::tick). Outputs:
/// [`ready`](Self::ready) while [`has_ready`](Self::has_ready).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Participant {
    config: ParticipantConfig,
    txns: BTreeMap<TxnId, State>,
    /// Finished transactions remembered, with the coordinator that asked for each.
    finished: BTreeMap<TxnId, NodeId>,
    finished_order: VecDeque<TxnId>,
    /// The highest transaction forgotten, by the coordinator that asked for it.
    floors: BTreeMap<NodeId, TxnId>,
    /// Every coordinator served (a transaction accepted from it, or recovered), but the
    /// configured ones: those that have a floor or may get one. Never shrinks; bounded by
    /// `coordinators_max` (plus what was recovered). With the configured coordinators, a
    /// superset of the keys of `floors`.
    served: BTreeSet<NodeId>,
    ready: ParticipantReady,
    /// Vote requests answered no without asking the application, for operators.
    refusals: Refusals,
}

/// Vote requests a [`Participant`] answered no without asking the application, counted
/// since it was built or recovered ([`Participant::refusals`]). A rising count is worth a
/// look: it means duplicates arriving late, or more coordinators than configured.
///
/// Not part of the participant's identity: two participants that differ only here are equal
/// and hash alike (so a model checker does not see a new state per refused duplicate).
#[derive(Clone, Copy, Debug, Default)]
pub struct Refusals {
    /// Requests at or below their coordinator's [floor](Participant::floor): possibly a
    /// duplicate of a forgotten finished transaction, so never prepared again.
    pub below_floor: u64,
    /// Requests from a coordinator past [`ParticipantConfig::coordinators_max`].
    pub coordinators_max: u64,
}

impl PartialEq for Refusals {
    fn eq(&self, _other: &Refusals) -> bool {
        true
    }
}

impl Eq for Refusals {}

impl std::hash::Hash for Refusals {
    fn hash<H: std::hash::Hasher>(&self, _state: &mut H) {}
}

impl Participant {
    /// A participant with nothing prepared.
    ///
    /// # Errors
    /// [`ConfigError`] if `query_ticks` or `txns_max` is 0.
    pub fn new(config: ParticipantConfig) -> Result<Participant, ConfigError> {
        config.validate()?;
        Ok(Participant {
            config,
            txns: BTreeMap::new(),
            finished: BTreeMap::new(),
            finished_order: VecDeque::new(),
            floors: BTreeMap::new(),
            served: BTreeSet::new(),
            ready: ParticipantReady::default(),
            refusals: Refusals::default(),
        })
    }

    /// A participant restarted from its records: the `Prepared` ones without a later
    /// `Finished` (it stays prepared on each, and asks for the decision at once), the
    /// most recent `Finished` ones, oldest first (it remembers the newest
    /// [`ParticipantConfig::finished_remembered`] of those transactions as over, so that a
    /// vote request duplicated by the network long ago does not prepare one again), and the
    /// `Floor` ones (any order; the highest of each coordinator counts). Finished
    /// records beyond the window raise their coordinator's floor as they are forgotten, and
    /// the first ready hands out the `Floor` records for that.
    ///
    /// # Errors
    /// [`ConfigError`] as for [`new`](Self::new).
    pub fn recover(
        config: ParticipantConfig,
        records: impl IntoIterator<Item = ParticipantRecord>,
    ) -> Result<Participant, ConfigError> {
        let mut participant = Participant::new(config)?;
        for record in records {
            match record {
                ParticipantRecord::Prepared {
                    txn,
                    coordinator,
                    payload,
                } => {
                    participant.note_served(coordinator);
                    participant.txns.insert(
                        txn,
                        State::Prepared {
                            coordinator,
                            payload,
                            since_query: 0,
                        },
                    );
                }
                ParticipantRecord::Finished {
                    txn, coordinator, ..
                } => {
                    participant.note_served(coordinator);
                    participant.txns.remove(&txn);
                    participant.remember_finished(txn, coordinator);
                }
                ParticipantRecord::Floor { coordinator, txn } => {
                    participant.note_served(coordinator);
                    participant.raise_floor(coordinator, txn);
                }
            }
        }
        let prepared: Vec<(TxnId, NodeId)> = participant
            .txns
            .iter()
            .filter_map(|(txn, state)| match state {
                State::Prepared { coordinator, .. } => Some((*txn, *coordinator)),
                State::Asked { .. } => None,
            })
            .collect();
        for (txn, coordinator) in prepared {
            participant.query(txn, coordinator);
        }
        Ok(participant)
    }

    /// The configuration.
    pub fn config(&self) -> &ParticipantConfig {
        &self.config
    }

    /// The transactions prepared here, waiting for their decision.
    pub fn prepared(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.txns
            .iter()
            .filter(|(_, state)| matches!(state, State::Prepared { .. }))
            .map(|(txn, _)| *txn)
    }

    /// The floor that applies to vote requests from `coordinator`: a request at or below it
    /// for a transaction this participant does not know is answered no. The highest
    /// transaction of `coordinator` forgotten here, or with `coordinator` one of
    /// [`ParticipantConfig::coordinators`], of any of them. `None`: nothing forgotten.
    pub fn floor(&self, coordinator: NodeId) -> Option<TxnId> {
        let own = self.floors.get(&coordinator).copied();
        if !self.config.coordinators.contains(&coordinator) {
            return own;
        }
        let group = self
            .config
            .coordinators
            .iter()
            .filter_map(|member| self.floors.get(member).copied())
            .max();
        own.max(group)
    }

    /// The application's vote on `txn`, after [`ParticipantEvent::VoteRequested`]. Yes:
    /// the next ready writes a prepared record and sends the vote once it is durable. No:
    /// the vote goes at once and the transaction is forgotten here: release what the vote
    /// request locked now (the transaction aborts, and no `Decided` follows).
    ///
    /// # Errors
    /// [`VoteError::NotAsked`] if no vote is awaited for `txn`.
    pub fn vote(&mut self, txn: TxnId, yes: bool) -> Result<(), VoteError> {
        let Some(State::Asked {
            coordinator,
            payload,
        }) = self.txns.get(&txn).cloned()
        else {
            return Err(VoteError::NotAsked(txn));
        };
        let message = Message {
            txn,
            from: self.config.id,
            to: coordinator,
            body: Body::Vote { yes },
        };
        if yes {
            self.ready.records.push(ParticipantRecord::Prepared {
                txn,
                coordinator,
                payload: payload.clone(),
            });
            self.ready.must_sync = true;
            self.ready.persisted_messages.push(message);
            self.txns.insert(
                txn,
                State::Prepared {
                    coordinator,
                    payload,
                    since_query: 0,
                },
            );
        } else {
            self.ready.messages.push(message);
            self.txns.remove(&txn);
            self.remember_finished(txn, coordinator);
        }
        Ok(())
    }

    /// One tick: prepared transactions ask for their decision every `query_ticks`.
    pub fn tick(&mut self) {
        let mut due = Vec::new();
        for (&txn, state) in &mut self.txns {
            if let State::Prepared {
                coordinator,
                since_query,
                ..
            } = state
            {
                *since_query += 1;
                if *since_query >= self.config.query_ticks {
                    *since_query = 0;
                    due.push((txn, *coordinator));
                }
            }
        }
        for (txn, coordinator) in due {
            self.query(txn, coordinator);
        }
    }

    /// A message from a coordinator.
    ///
    /// # Errors
    /// [`StepError`] if it is not addressed here, carries a payload above the bound, would
    /// start a transaction beyond `txns_max`, or makes no sense (a vote, or a commit for a
    /// transaction this participant never voted yes on); the participant is unchanged then.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        let unexpected = message.received_by(self.config.id)?;
        let Message {
            txn, from, body, ..
        } = message;
        match body {
            Body::VoteRequest { payload } => {
                if payload.len() > self.config.payload_bytes_max {
                    return Err(StepError::PayloadTooLarge {
                        bytes: payload.len(),
                        max: self.config.payload_bytes_max,
                    });
                }
                match self.txns.get(&txn) {
                    // Asked already: the application's vote is pending.
                    Some(State::Asked { .. }) => {}
                    // Prepared: say the yes vote again, after the write of this ready (the
                    // prepared record may be in a ready not written yet: a duplicate request
                    // can arrive between `vote` and the write).
                    Some(State::Prepared { coordinator, .. }) => {
                        let to = *coordinator;
                        self.ready.persisted_messages.push(Message {
                            txn,
                            from: self.config.id,
                            to,
                            body: Body::Vote { yes: true },
                        });
                    }
                    // A duplicate of a request whose transaction is over.
                    None if self.finished.contains_key(&txn) => {}
                    // At or below the floor, not known: possibly a duplicate of a request
                    // whose transaction is over and forgotten here (preparing it again
                    // could apply a commit twice). No: a decided transaction ignores a late
                    // vote, an undecided one aborts.
                    None if self.floor(from).is_some_and(|floor| txn <= floor) => {
                        self.refusals.below_floor += 1;
                        tracing::debug!(
                            coordinator = %from,
                            %txn,
                            "2pc participant: vote request at or below the coordinator's floor, voting no"
                        );
                        self.ready.messages.push(Message {
                            txn,
                            from: self.config.id,
                            to: from,
                            body: Body::Vote { yes: false },
                        });
                    }
                    // A coordinator past `coordinators_max`: no, remembering nothing (it
                    // would need a floor of its own, which could never be forgotten).
                    None if !self.may_serve(from) => {
                        self.refusals.coordinators_max += 1;
                        tracing::warn!(
                            coordinator = %from,
                            %txn,
                            coordinators_max = self.config.coordinators_max,
                            "2pc participant: vote request from a coordinator past coordinators_max, voting no"
                        );
                        self.ready.messages.push(Message {
                            txn,
                            from: self.config.id,
                            to: from,
                            body: Body::Vote { yes: false },
                        });
                    }
                    None => {
                        if self.txns.len() >= self.config.txns_max {
                            return Err(StepError::TooManyTxns {
                                max: self.config.txns_max,
                            });
                        }
                        self.note_served(from);
                        self.txns.insert(
                            txn,
                            State::Asked {
                                coordinator: from,
                                payload: payload.clone(),
                            },
                        );
                        self.ready
                            .events
                            .push(ParticipantEvent::VoteRequested { txn, payload });
                    }
                }
                Ok(())
            }
            Body::Decision { outcome } => {
                match (self.txns.get(&txn).cloned(), outcome) {
                    (
                        Some(State::Prepared {
                            payload,
                            coordinator,
                            ..
                        }),
                        _,
                    ) => {
                        self.txns.remove(&txn);
                        // Any floor this raises goes first: an application that writes the
                        // records one by one and keeps only the newest finished ones drops
                        // the finished record the floor covers as soon as this one is
                        // written, and a crash between the two must not lose both.
                        self.remember_finished(txn, coordinator);
                        self.ready.records.push(ParticipantRecord::Finished {
                            txn,
                            coordinator,
                            outcome,
                        });
                        self.ready.events.push(ParticipantEvent::Decided {
                            txn,
                            outcome,
                            payload,
                        });
                        if outcome == Outcome::Commit {
                            // The commit must survive a crash before the coordinator may
                            // forget it.
                            self.ready.must_sync = true;
                            self.ready.persisted_messages.push(Message {
                                txn,
                                from: self.config.id,
                                to: from,
                                body: Body::DecisionAck,
                            });
                        }
                    }
                    // The coordinator gave up before this participant voted.
                    (
                        Some(State::Asked {
                            payload,
                            coordinator,
                        }),
                        Outcome::Abort,
                    ) => {
                        self.txns.remove(&txn);
                        self.remember_finished(txn, coordinator);
                        self.ready.events.push(ParticipantEvent::Decided {
                            txn,
                            outcome,
                            payload,
                        });
                    }
                    (Some(State::Asked { .. }), Outcome::Commit) => return Err(unexpected),
                    // Finished here and forgotten: a resent commit still wants its ack, after
                    // the write of this ready (the commit record may be in a ready not
                    // written yet: a duplicate decision can arrive before the write).
                    (None, Outcome::Commit) => {
                        self.ready.persisted_messages.push(Message {
                            txn,
                            from: self.config.id,
                            to: from,
                            body: Body::DecisionAck,
                        });
                    }
                    (None, Outcome::Abort) => {}
                }
                Ok(())
            }
            Body::Vote { .. } | Body::DecisionAck | Body::StatusQuery => Err(unexpected),
        }
    }

    /// True if [`ready`](Self::ready) has something.
    pub fn has_ready(&self) -> bool {
        !self.ready.messages.is_empty()
            || !self.ready.records.is_empty()
            || !self.ready.persisted_messages.is_empty()
            || !self.ready.events.is_empty()
    }

    /// Takes the pending work.
    pub fn ready(&mut self) -> ParticipantReady {
        std::mem::take(&mut self.ready)
    }

    /// The vote requests answered no without asking the application (see [`Refusals`]).
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// The number of distinct coordinators served so far (each may hold a floor, which is
    /// never forgotten): at most [`ParticipantConfig::coordinators_max`], not counting the
    /// configured coordinators, plus those of recovered records.
    pub fn coordinators_served(&self) -> usize {
        self.served.len()
    }

    /// Whether a new transaction from `coordinator` may be taken: it was served already, is
    /// a configured coordinator, or there is room for one more.
    fn may_serve(&self, coordinator: NodeId) -> bool {
        self.served.len() < self.config.coordinators_max
            || self.served.contains(&coordinator)
            || self.config.coordinators.contains(&coordinator)
    }

    /// Counts `coordinator` as served (the configured coordinators are not counted).
    fn note_served(&mut self, coordinator: NodeId) {
        if !self.config.coordinators.contains(&coordinator) {
            self.served.insert(coordinator);
        }
    }

    fn query(&mut self, txn: TxnId, coordinator: NodeId) {
        let targets = if self.config.coordinators.is_empty() {
            vec![coordinator]
        } else {
            self.config.coordinators.clone()
        };
        for to in targets {
            self.ready.messages.push(Message {
                txn,
                from: self.config.id,
                to,
                body: Body::StatusQuery,
            });
        }
    }

    /// Remembers `txn` (asked for by `coordinator`) as over; the oldest remembered beyond
    /// the window is forgotten, and raises its coordinator's floor.
    fn remember_finished(&mut self, txn: TxnId, coordinator: NodeId) {
        if self.finished.insert(txn, coordinator).is_none() {
            self.finished_order.push_back(txn);
        }
        while self.finished_order.len() > self.config.finished_remembered {
            let Some(old) = self.finished_order.pop_front() else {
                break;
            };
            if let Some(coordinator) = self.finished.remove(&old) {
                if self.raise_floor(coordinator, old) {
                    self.ready.records.push(ParticipantRecord::Floor {
                        coordinator,
                        txn: old,
                    });
                }
            }
        }
    }

    /// Raises `coordinator`'s floor to `txn`; false if it was there or higher already.
    fn raise_floor(&mut self, coordinator: NodeId, txn: TxnId) -> bool {
        match self.floors.get(&coordinator) {
            Some(floor) if *floor >= txn => false,
            _ => {
                self.floors.insert(coordinator, txn);
                true
            }
        }
    }
}
