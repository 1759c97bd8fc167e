//! The coordinator: collects votes, logs the decision, announces it.

use super::{Body, Decided, DecisionLog, LogEntry, Message, Outcome, StepError, TxnId};
use crate::error::ConfigError;
use crate::types::NodeId;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// How a [`Coordinator`] behaves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorConfig {
    /// This coordinator's address.
    pub id: NodeId,
    /// Ticks to wait for every vote before deciding abort. Default 50.
    pub vote_ticks: u64,
    /// Ticks between resends of an unanswered vote request or commit decision. Default 10.
    pub resend_ticks: u64,
    /// Transactions tracked at once, at most; [`Coordinator::begin`] refuses more. Default
    /// 10 000.
    pub txns_max: usize,
}

impl CoordinatorConfig {
    /// A configuration with the defaults.
    pub fn new(id: NodeId) -> CoordinatorConfig {
        CoordinatorConfig {
            id,
            vote_ticks: 50,
            resend_ticks: 10,
            txns_max: 10_000,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.vote_ticks == 0 {
            return Err(ConfigError::new("vote_ticks", "must be at least 1"));
        }
        if self.resend_ticks == 0 {
            return Err(ConfigError::new("resend_ticks", "must be at least 1"));
        }
        if self.txns_max == 0 {
            return Err(ConfigError::new("txns_max", "must be at least 1"));
        }
        Ok(())
    }
}

/// Why [`Coordinator::begin`] refused a transaction. Nothing was started.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BeginError {
    /// The transaction is already in flight here.
    #[error("transaction {0} is already in flight")]
    Duplicate(TxnId),
    /// A transaction needs at least one participant, each named once.
    #[error("participants must be one or more distinct nodes")]
    BadParticipants,
    /// [`CoordinatorConfig::txns_max`] transactions are in flight; retry later.
    #[error("too many transactions in flight (at most {max})")]
    TooManyTxns {
        /// The bound.
        max: usize,
    },
}

/// What the application hears from a coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorEvent {
    /// The decision for `txn` is logged: tell the client. Reported once per transaction this
    /// coordinator began, and for every decision it recovered from the log (a client of the
    /// previous coordinator may be waiting for it); not for the aborts it logs to answer a
    /// participant's query about a transaction it has no record of.
    Decided {
        /// The transaction.
        txn: TxnId,
        /// The decision.
        outcome: Outcome,
    },
}

/// One batch of a coordinator's work. Drain in order: [`take_log`](Self::take_log) (write or
/// propose each entry, apply it to the [`DecisionLog`], and report each `Decide` with
/// [`Coordinator::on_logged`], whenever that happens), then
/// [`take_messages`](Self::take_messages) (send), then [`take_events`](Self::take_events).
///
/// No message here depends on an entry of the same batch: decisions are only sent after
/// `on_logged`. The coordinator needs no `advance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CoordinatorReady {
    log: Vec<LogEntry>,
    messages: Vec<Message>,
    events: Vec<CoordinatorEvent>,
}

impl CoordinatorReady {
    /// The entries to log, in order. `Decide` entries must be reported back with
    /// [`Coordinator::on_logged`]; one that is not reported within `resend_ticks` is handed
    /// out again (a proposal to a Paxos group can be lost; the log keeps the first decision,
    /// so a copy changes nothing). `Forget` entries need not be durable at once, and one that
    /// is lost only keeps the decision live until a recovering coordinator announces it again.
    pub fn take_log(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.log)
    }

    /// The messages to send.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    /// What happened.
    pub fn take_events(&mut self) -> Vec<CoordinatorEvent> {
        std::mem::take(&mut self.events)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// Collecting votes; `yes` holds the participants that voted yes.
    Voting { yes: BTreeSet<NodeId>, elapsed: u64 },
    /// The decision was handed to the log; waiting for `on_logged`. The entry is handed out
    /// again every `resend_ticks` until then: a proposal to a Paxos group can be lost.
    Logging { outcome: Outcome },
    /// A commit decision is being announced; `unacked` still have to confirm it.
    Announcing { unacked: BTreeSet<NodeId> },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Txn {
    participants: Vec<NodeId>,
    /// The vote requests' payloads, by participant (dropped once decided).
    payloads: Vec<Bytes>,
    phase: Phase,
    since_send: u64,
    /// Whether to report the decision with [`CoordinatorEvent::Decided`]: yes for a
    /// transaction this coordinator began or recovered from the log, no for one it only
    /// learnt of from a participant's query (a late duplicate of a query may arrive after a
    /// committed transaction was forgotten; the abort logged to answer it is no decision
    /// anyone waits for, and nobody prepared is left to hear it).
    report: bool,
}

/// The two-phase-commit coordinator. See the [module documentation](super).
///
/// Inputs: [`begin`](Self::begin), [`step`](Self::step), [`tick`](Self::tick),
/// [`on_logged`](Self::on_logged). Outputs: [`ready`](Self::ready) while
/// [`has_ready`](Self::has_ready).
///
/// When the decision log is a Paxos group, run the coordinator on the group's leader only:
/// drop it when the replica stops leading, and [`recover`](Self::recover) a new one from the
/// replica's applied [`DecisionLog`] when it leads again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    config: CoordinatorConfig,
    txns: BTreeMap<TxnId, Txn>,
    ready: CoordinatorReady,
}

impl Coordinator {
    /// A coordinator with nothing in flight.
    ///
    /// # Errors
    /// [`ConfigError`] if a tick count or `txns_max` is 0.
    pub fn new(config: CoordinatorConfig) -> Result<Coordinator, ConfigError> {
        config.validate()?;
        Ok(Coordinator {
            config,
            txns: BTreeMap::new(),
            ready: CoordinatorReady::default(),
        })
    }

    /// A coordinator that picks up where the decision log says: every commit decision in it
    /// is announced again until acknowledged, every abort announced once. Transactions that
    /// were still collecting votes are not in the log: they are aborted (presumed abort),
    /// when a participant asks.
    ///
    /// # Errors
    /// [`ConfigError`] as for [`new`](Self::new).
    pub fn recover(
        config: CoordinatorConfig,
        log: &DecisionLog,
    ) -> Result<Coordinator, ConfigError> {
        let mut coordinator = Coordinator::new(config)?;
        for (txn, decided) in log.decisions() {
            coordinator.txns.insert(
                txn,
                Txn {
                    participants: decided.participants.clone(),
                    payloads: Vec::new(),
                    phase: Phase::Logging {
                        outcome: decided.outcome,
                    },
                    since_send: 0,
                    report: true,
                },
            );
            coordinator.on_logged(txn, decided);
        }
        Ok(coordinator)
    }

    /// The configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The number of transactions in flight.
    pub fn in_flight(&self) -> usize {
        self.txns.len()
    }

    /// Starts `txn`: asks each participant to vote on its part.
    ///
    /// # Errors
    /// [`BeginError`]; nothing is started then.
    pub fn begin(&mut self, txn: TxnId, parts: Vec<(NodeId, Bytes)>) -> Result<(), BeginError> {
        if self.txns.contains_key(&txn) {
            return Err(BeginError::Duplicate(txn));
        }
        let participants: Vec<NodeId> = parts.iter().map(|(node, _)| *node).collect();
        let distinct: BTreeSet<NodeId> = participants.iter().copied().collect();
        if participants.is_empty() || distinct.len() != participants.len() {
            return Err(BeginError::BadParticipants);
        }
        if self.txns.len() >= self.config.txns_max {
            return Err(BeginError::TooManyTxns {
                max: self.config.txns_max,
            });
        }
        let payloads: Vec<Bytes> = parts.into_iter().map(|(_, payload)| payload).collect();
        for (participant, payload) in participants.iter().zip(&payloads) {
            self.send(
                txn,
                *participant,
                Body::VoteRequest {
                    payload: payload.clone(),
                },
            );
        }
        self.txns.insert(
            txn,
            Txn {
                participants,
                payloads,
                phase: Phase::Voting {
                    yes: BTreeSet::new(),
                    elapsed: 0,
                },
                since_send: 0,
                report: true,
            },
        );
        Ok(())
    }

    /// Aborts `txn` if it is still collecting votes (the application gave up on it). Returns
    /// false if it is not, or is already deciding.
    pub fn abort(&mut self, txn: TxnId) -> bool {
        match self.txns.get(&txn) {
            Some(Txn {
                phase: Phase::Voting { .. },
                ..
            }) => {
                self.decide(txn, Outcome::Abort);
                true
            }
            _ => false,
        }
    }

    /// One tick: vote timeouts and resends count them.
    pub fn tick(&mut self) {
        let mut timed_out = Vec::new();
        let mut resend = Vec::new();
        let mut relog = Vec::new();
        for (&txn, state) in &mut self.txns {
            state.since_send += 1;
            let due = state.since_send >= self.config.resend_ticks;
            if due {
                state.since_send = 0;
            }
            match &mut state.phase {
                Phase::Voting { yes, elapsed } => {
                    *elapsed += 1;
                    if *elapsed >= self.config.vote_ticks {
                        timed_out.push(txn);
                    } else if due {
                        for (participant, payload) in state.participants.iter().zip(&state.payloads)
                        {
                            if !yes.contains(participant) {
                                resend.push((
                                    txn,
                                    *participant,
                                    Body::VoteRequest {
                                        payload: payload.clone(),
                                    },
                                ));
                            }
                        }
                    }
                }
                Phase::Logging { outcome } => {
                    if due {
                        relog.push((txn, *outcome));
                    }
                }
                Phase::Announcing { unacked } => {
                    if due {
                        for participant in unacked.iter() {
                            resend.push((
                                txn,
                                *participant,
                                Body::Decision {
                                    outcome: Outcome::Commit,
                                },
                            ));
                        }
                    }
                }
            }
        }
        for (txn, to, body) in resend {
            self.send(txn, to, body);
        }
        for txn in timed_out {
            self.decide(txn, Outcome::Abort);
        }
        for (txn, outcome) in relog {
            self.decide(txn, outcome);
        }
    }

    /// A message from a participant.
    ///
    /// # Errors
    /// [`StepError`] if it is not addressed here or makes no sense (a vote from a node that
    /// is not a participant, a vote request); the coordinator is unchanged then.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        let unexpected = message.received_by(self.config.id)?;
        let Message {
            txn, from, body, ..
        } = message;
        let Some(state) = self.txns.get_mut(&txn) else {
            return match body {
                // A prepared participant asks, or votes yes, about a transaction this
                // coordinator has no record of: presumed abort — but logged first, so that it
                // cannot contradict a decision another coordinator logged.
                Body::StatusQuery | Body::Vote { yes: true } => {
                    if self.txns.len() >= self.config.txns_max {
                        return Err(StepError::TooManyTxns {
                            max: self.config.txns_max,
                        });
                    }
                    self.txns.insert(
                        txn,
                        Txn {
                            participants: vec![from],
                            payloads: Vec::new(),
                            phase: Phase::Logging {
                                outcome: Outcome::Abort,
                            },
                            since_send: 0,
                            report: false,
                        },
                    );
                    self.ready.log.push(LogEntry::Decide {
                        txn,
                        outcome: Outcome::Abort,
                        participants: vec![from],
                    });
                    Ok(())
                }
                // Late votes and acknowledgements of a finished transaction.
                Body::Vote { yes: false } | Body::DecisionAck => Ok(()),
                Body::VoteRequest { .. } | Body::Decision { .. } => Err(unexpected),
            };
        };
        if !state.participants.contains(&from) {
            // While a presumed abort is being logged for a transaction this coordinator
            // learnt of from one participant's query, the others may ask or vote too: the
            // log's answer names them all, or they ask again.
            // Late messages about an earlier incarnation of the transaction are ignored too;
            // only a vote while voting, from a node that was never asked, is refused.
            let participant_kind = matches!(
                body,
                Body::StatusQuery | Body::Vote { .. } | Body::DecisionAck
            );
            let voting = matches!(state.phase, Phase::Voting { .. });
            return if participant_kind && !voting {
                Ok(())
            } else {
                Err(unexpected)
            };
        }
        match (body, &mut state.phase) {
            (Body::Vote { yes: true }, Phase::Voting { yes, .. }) => {
                yes.insert(from);
                if yes.len() == state.participants.len() {
                    self.decide(txn, Outcome::Commit);
                }
            }
            (Body::Vote { yes: false }, Phase::Voting { .. }) => {
                self.decide(txn, Outcome::Abort);
            }
            (Body::DecisionAck, Phase::Announcing { unacked }) => {
                unacked.remove(&from);
                if unacked.is_empty() {
                    self.txns.remove(&txn);
                    self.ready.log.push(LogEntry::Forget { txn });
                }
            }
            (Body::StatusQuery | Body::Vote { yes: true }, Phase::Announcing { .. }) => {
                self.send(
                    txn,
                    from,
                    Body::Decision {
                        outcome: Outcome::Commit,
                    },
                );
            }
            // Still voting or logging: the answer comes with the decision.
            (Body::StatusQuery, _) => {}
            // Votes after the decision, acknowledgements before it.
            (Body::Vote { .. } | Body::DecisionAck, _) => {}
            (body @ (Body::VoteRequest { .. } | Body::Decision { .. }), _) => {
                return Err(StepError::Unexpected {
                    kind: body.kind(),
                    from,
                    txn,
                });
            }
        }
        Ok(())
    }

    /// The decision log's answer for `txn`: the decision it holds (the first one logged,
    /// whoever asked for it). Call it once the `Decide` entry this coordinator handed out is
    /// durable (local log) or chosen and applied (Paxos group). Announces the decision:
    /// a commit until every participant acknowledges it, an abort once.
    ///
    /// A report for a transaction this coordinator is not waiting on (already reported, or
    /// another coordinator's entry) is ignored.
    pub fn on_logged(&mut self, txn: TxnId, decided: &Decided) {
        let Some(state) = self.txns.get_mut(&txn) else {
            return;
        };
        if !matches!(state.phase, Phase::Logging { .. }) {
            return;
        }
        let report = state.report;
        match decided.outcome {
            // The log's participants are authoritative (a query may have reached a
            // coordinator that knew only the asker).
            Outcome::Commit => {
                state.participants = decided.participants.clone();
                state.payloads = Vec::new();
                state.since_send = 0;
                state.phase = Phase::Announcing {
                    unacked: decided.participants.iter().copied().collect(),
                };
            }
            // Presumed abort: no acknowledgements; forget it now.
            Outcome::Abort => {
                self.txns.remove(&txn);
                self.ready.log.push(LogEntry::Forget { txn });
            }
        }
        for participant in &decided.participants {
            self.send(
                txn,
                *participant,
                Body::Decision {
                    outcome: decided.outcome,
                },
            );
        }
        if report {
            self.ready.events.push(CoordinatorEvent::Decided {
                txn,
                outcome: decided.outcome,
            });
        }
    }

    /// True if [`ready`](Self::ready) has something.
    pub fn has_ready(&self) -> bool {
        !self.ready.log.is_empty()
            || !self.ready.messages.is_empty()
            || !self.ready.events.is_empty()
    }

    /// Takes the pending work.
    pub fn ready(&mut self) -> CoordinatorReady {
        std::mem::take(&mut self.ready)
    }

    fn decide(&mut self, txn: TxnId, outcome: Outcome) {
        let state = self.txns.get_mut(&txn).expect("caller checked");
        state.phase = Phase::Logging { outcome };
        state.since_send = 0;
        self.ready.log.push(LogEntry::Decide {
            txn,
            outcome,
            participants: state.participants.clone(),
        });
    }

    fn send(&mut self, txn: TxnId, to: NodeId, body: Body) {
        self.ready.messages.push(Message {
            txn,
            from: self.config.id,
            to,
            body,
        });
    }
}
