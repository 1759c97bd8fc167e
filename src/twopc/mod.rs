//! Two-phase commit, sans-IO: a [`Coordinator`] and a [`Participant`], with **presumed
//! abort**, and a [`DecisionLog`] that lets the coordinator's decisions live in a Paxos group
//! so that a coordinator crash blocks no one.
//!
//! # The protocol
//! 1. The coordinator sends each participant a [`Body::VoteRequest`] with that participant's
//!    part of the transaction.
//! 2. A participant that can commit its part makes a **prepared** record durable, and only
//!    then votes yes ([`Body::Vote`]); from then on it may neither commit nor abort on its own,
//!    and it stays prepared across crashes. A participant that cannot votes no and forgets
//!    the transaction.
//! 3. With a yes from every participant the coordinator decides commit; with any no, or
//!    when votes do not come within [`CoordinatorConfig::vote_ticks`], abort. The decision
//!    is written to the **decision log** before anyone hears of it, and the log's answer is
//!    the decision: the first decision logged for a transaction wins.
//! 4. The coordinator sends [`Body::Decision`] to every participant, again until each
//!    answers [`Body::DecisionAck`] (commit only: presumed abort) and then forgets it.
//! 5. A prepared participant that hears nothing asks ([`Body::StatusQuery`]) every
//!    [`ParticipantConfig::query_ticks`], of every coordinator it knows.
//!
//! **Presumed abort**: a transaction the coordinator has no record of is aborted. Aborts are
//! not acknowledged and need no durable record at a participant; a participant that voted no
//! keeps nothing. A coordinator asked about a transaction it does not know first logs an abort
//! for it (first writer wins), so that it can never contradict a decision another
//! coordinator logged.
//!
//! # Blocking and non-blocking
//! Where the decision log lives decides what a coordinator crash costs:
//! - In a local file of the coordinator (write [`CoordinatorReady::take_log`] entries, fsync,
//!   apply them to a [`DecisionLog`] and report with [`Coordinator::on_logged`]): prepared
//!   participants wait until that coordinator restarts ([`Coordinator::recover`]). That is
//!   classic 2PC.
//! - In a Paxos group: propose the entries (encoded with [`LogEntry::encode`]) to a
//!   [`Replica`](crate::Replica) and apply the chosen ones to a [`DecisionLog`] on every
//!   replica. Whichever replica leads runs the coordinator, recovered from its copy of the
//!   log; participants list every replica in [`ParticipantConfig::coordinators`] and ask them
//!   all. A proposal may be lost (the coordinator hands a `Decide` out again until it is
//!   reported). A coordinator crash then costs one election, and two coordinators running at once
//!   (an old leader that does not know it was deposed) cannot disagree: the log keeps the
//!   first decision and both report that one. (One single-decree
//!   [`paxos`](crate::paxos) instance per transaction does the same job without a leader:
//!   propose the `Decide` entry to the transaction's instance, and apply the chosen value.)
//!
//! Every state is durable before the message that reveals it: a yes vote after the prepared
//! record, a commit decision after the log entry, a commit acknowledgement after the
//! participant's commit record. Both machines have the crate's face: `tick`, `step`, a
//! numbered `ready` drained in order (messages, then the write, then the messages that
//! needed it, then events) and `advance`.
//!
//! # Forgetting
//! Both sides remember finished transactions in bounded windows: a participant the newest
//! [`ParticipantConfig::finished_remembered`] (default 4096), the decision log the newest
//! [`DecisionLog::finished_max`] (default [`DecisionLog::FINISHED_MAX`]). A message about a
//! transaction that left a window must not be taken for news:
//! - **A participant** keeps, per coordinator, a **floor**: the highest transaction of that
//!   coordinator it forgot. A vote request at or below the floor for a transaction it does
//!   not know (not in flight, not remembered) is answered **no** at once, without asking the
//!   application. Preparing it again could apply a committed transaction twice: the
//!   coordinator, told yes about a transaction it forgot, logs a presumed abort, and the
//!   log, still remembering the commit, answers commit. The no is safe whatever the
//!   request was: a decided transaction ignores a late vote, an undecided one aborts. The
//!   floor is durable: each rise is handed out as a [`ParticipantRecord::Floor`] and
//!   [`Participant::recover`] takes it back. With [`ParticipantConfig::coordinators`] set
//!   (a coordinator group), a request from any member meets the highest floor of them all.
//! - **The decision log** keeps a floor too, the highest transaction it dropped: a `Decide`
//!   at or below it for a transaction it holds nothing about is answered abort and not
//!   recorded. That is what a late vote or status query about a forgotten transaction makes
//!   a coordinator log (a presumed abort); the abort goes to a participant that is past the
//!   transaction and ignores it. Recording it could contradict the forgotten decision (a
//!   committed transaction later read as aborted), and a late `Decide` of commit recorded anew
//!   could commit at a participant still prepared on a transaction that aborted. Late
//!   acknowledgements and no votes about a forgotten transaction are ignored, as before.
//!
//! What the floors rest on:
//! - A participant's no is always safe. For its floor to catch every duplicate, every vote
//!   request for a transaction must come from the coordinator that began it or from a member
//!   of the participant's coordinator group, and ids are never reused (also across the
//!   coordinators a participant serves; see [`TxnId`]).
//! - The log's unrecorded abort is safe for participants: none is prepared on a forgotten
//!   commit (a commit is forgotten only once every participant acknowledged it). The
//!   coordinator that handed out the late `Decide` hears abort, so a copy of a `Decide` must
//!   reach the log before the log forgets its transaction, within `finished_max` later
//!   forgotten ones (a coordinator hears the log's answer as soon as the first copy is
//!   applied, and stops handing it out).
//! - Liveness: each coordinator (group) hands out ids that **grow in the order it begins its
//!   transactions**. Ids may still reach a participant out of order: a vote request delayed
//!   past `finished_remembered` later transactions of its coordinator finished at that
//!   participant is refused (its transaction aborts, to be retried under a new id); a
//!   transaction whose first `Decide` reaches the log after `finished_max` transactions with
//!   higher ids were finished and dropped aborts.
//!
//! One transaction over two participants, with the decision log kept locally:
//!
//! ```
//! use bytes::Bytes;
//! use synod::twopc::*;
//! use synod::NodeId;
//!
//! let (c, p1, p2) = (NodeId(10), NodeId(1), NodeId(2));
//! let mut coordinator = Coordinator::new(CoordinatorConfig::new(c)).unwrap();
//! let mut participants = [
//!     Participant::new(ParticipantConfig::new(p1)).unwrap(),
//!     Participant::new(ParticipantConfig::new(p2)).unwrap(),
//! ];
//! let mut log = DecisionLog::new(); // in a file, or in a Paxos group
//! let mut network: Vec<Message> = Vec::new();
//!
//! let txn = TxnId(1);
//! let parts = vec![(p1, Bytes::from("debit 10")), (p2, Bytes::from("credit 10"))];
//! coordinator.begin(txn, parts).unwrap();
//! let mut decided = None;
//! while decided.is_none() {
//!     while coordinator.has_ready() {
//!         let mut ready = coordinator.ready();
//!         for entry in ready.take_log() {
//!             // Durable (or chosen) first; then the log's answer goes back.
//!             if let Some((txn, decision)) = log.apply(&entry) {
//!                 coordinator.on_logged(txn, &decision);
//!             }
//!         }
//!         network.extend(ready.take_messages());
//!         for CoordinatorEvent::Decided { outcome, .. } in ready.take_events() {
//!             decided = Some(outcome);
//!         }
//!     }
//!     for message in std::mem::take(&mut network) {
//!         if message.to == c {
//!             coordinator.step(message).unwrap();
//!             continue;
//!         }
//!         let participant = participants.iter_mut().find(|p| p.config().id == message.to);
//!         let participant = participant.unwrap();
//!         participant.step(message).unwrap();
//!         while participant.has_ready() {
//!             let mut ready = participant.ready();
//!             network.extend(ready.take_messages());
//!             let _records = ready.take_records(); // write them; fsync if ready.must_sync()
//!             network.extend(ready.take_persisted_messages()); // once durable
//!             for event in ready.take_events() {
//!                 if let ParticipantEvent::VoteRequested { txn, .. } = event {
//!                     participant.vote(txn, true).unwrap(); // checked and locked: yes
//!                 }
//!             }
//!         }
//!     }
//! }
//! assert_eq!(decided, Some(Outcome::Commit));
//! ```

mod coordinator;
mod participant;
#[cfg(test)]
mod tests;

pub use coordinator::{
    BeginError, Coordinator, CoordinatorConfig, CoordinatorEvent, CoordinatorReady,
};
pub use participant::{
    Participant, ParticipantConfig, ParticipantEvent, ParticipantReady, ParticipantRecord,
    Refusals, VoteError,
};

use crate::types::NodeId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use thiserror::Error;

/// Names a transaction. The application picks it, and must never reuse one: not with the
/// same coordinator (or coordinator group), nor across the coordinators a participant serves
/// (a participant knows a transaction by its id alone). The decision log remembers finished
/// transactions ([`DecisionLog::finished_max`] of them) and answers a reused id with the old
/// outcome; beyond their windows the participant and the log refuse ids at or below the
/// floors of what they forgot, so each coordinator's ids should grow in the order it begins
/// its transactions (see [Forgetting](self#forgetting)). A counter kept in the same Paxos
/// group, or a (node, sequence) pair with the sequence in the low bits, does it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TxnId(pub u64);

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// What became of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Every participant applies its part.
    Commit,
    /// No participant applies anything.
    Abort,
}

/// A message between a coordinator and a participant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The transaction it is about.
    pub txn: TxnId,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// What it says.
    pub body: Body,
}

impl Message {
    /// Refuses a message not addressed to `this`; otherwise the error to give if its content
    /// makes no sense to the receiver. Both machines' `step` start with it.
    fn received_by(&self, this: NodeId) -> Result<StepError, StepError> {
        if self.to != this {
            return Err(StepError::WrongRecipient { to: self.to, this });
        }
        Ok(StepError::Unexpected {
            kind: self.body.kind(),
            from: self.from,
            txn: self.txn,
        })
    }
}

/// The content of a [`Message`]. (The vote request is not called "Prepare": that word
/// belongs to Paxos.)
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// Coordinator to participant: "can you commit your part, `payload`?"
    VoteRequest {
        /// The participant's part of the transaction, opaque to this module.
        payload: Bytes,
    },
    /// Participant to coordinator: its vote. A yes is sent only once the participant's
    /// prepared record is durable.
    Vote {
        /// Yes: prepared, and bound by the coordinator's decision.
        yes: bool,
    },
    /// Coordinator to participant: the decision, sent only once it is logged.
    Decision {
        /// The decision.
        outcome: Outcome,
    },
    /// Participant to coordinator: a commit decision is durable here; stop resending it.
    DecisionAck,
    /// Prepared participant to coordinator: "what became of this transaction?"
    StatusQuery,
}

impl Body {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::VoteRequest { .. } => "VoteRequest",
            Body::Vote { .. } => "Vote",
            Body::Decision { .. } => "Decision",
            Body::DecisionAck => "DecisionAck",
            Body::StatusQuery => "StatusQuery",
        }
    }
}

/// A message was refused by `step`; the machine is unchanged. Count it and move on.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StepError {
    /// The message is addressed to another node.
    #[error("message addressed to {to}, this is {this}")]
    WrongRecipient {
        /// The addressee.
        to: NodeId,
        /// This node.
        this: NodeId,
    },
    /// The message makes no sense for this role or this transaction's state, e.g. a vote from
    /// a node that is not one of the transaction's participants, or a vote request at a
    /// coordinator.
    #[error("unexpected {kind} from {from} for {txn}")]
    Unexpected {
        /// The message's kind.
        kind: &'static str,
        /// Its sender.
        from: NodeId,
        /// Its transaction.
        txn: TxnId,
    },
    /// The payload is larger than the configured bound.
    #[error("payload of {bytes} bytes above the bound of {max}")]
    PayloadTooLarge {
        /// The payload's size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The node tracks as many transactions as it may; the message would start another one.
    /// The sender retries.
    #[error("too many transactions in flight (at most {max})")]
    TooManyTxns {
        /// The bound.
        max: usize,
    },
}

/// An entry of the decision log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogEntry {
    /// Decides `txn`, unless the log already holds a decision for it (the first one wins).
    /// `participants` is kept so that a recovering coordinator can resend the decision.
    Decide {
        /// The transaction.
        txn: TxnId,
        /// The decision asked for.
        outcome: Outcome,
        /// The participants to tell.
        participants: Vec<NodeId>,
    },
    /// Every participant has the decision: the log may forget the transaction.
    Forget {
        /// The transaction.
        txn: TxnId,
    },
}

impl LogEntry {
    /// Encodes the entry, to propose it to a Paxos group or write it to a file.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding into a vector cannot fail")
    }

    /// Decodes an entry.
    ///
    /// # Errors
    /// [`DecodeError`] if `bytes` are not exactly one encoded entry of at most
    /// [`LogEntry::BYTES_MAX`] bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
        if bytes.len() > LogEntry::BYTES_MAX {
            return Err(DecodeError(format!(
                "{} bytes, above the bound",
                bytes.len()
            )));
        }
        let config = bincode::config::standard().with_limit::<{ LogEntry::BYTES_MAX }>();
        match bincode::serde::decode_from_slice::<LogEntry, _>(bytes, config) {
            Ok((entry, consumed)) if consumed == bytes.len() => Ok(entry),
            Ok(_) => Err(DecodeError("trailing bytes".into())),
            Err(error) => Err(DecodeError(error.to_string())),
        }
    }

    /// The largest encoded entry [`LogEntry::decode`] accepts.
    pub const BYTES_MAX: usize = 1 << 20;
}

/// Bytes that are not an encoded [`LogEntry`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("malformed decision log entry: {0}")]
pub struct DecodeError(pub String);

/// A decision the log holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decided {
    /// The decision.
    pub outcome: Outcome,
    /// The participants to tell.
    pub participants: Vec<NodeId>,
}

/// The decision log's state machine: apply its entries in log order, on every copy, and the
/// copies agree on every decision. The **first** `Decide` for a transaction wins; later ones
/// change nothing and are answered with the decision already there.
///
/// A `Forget` does not make the log forget the outcome at once: the transaction moves to a
/// bounded memory of finished transactions ([`DecisionLog::FINISHED_MAX`] of them by default,
/// [`with_finished_max`](Self::with_finished_max) to choose; oldest dropped first), so that a
/// late duplicate of a participant's query, arriving after a committed transaction was
/// forgotten, is answered with the commit and not with a presumed abort. Only the live
/// decisions are what a recovering coordinator resumes.
///
/// Beyond that memory the log keeps a **floor**, the highest transaction it dropped: a
/// `Decide` at or below the floor for a transaction it holds nothing about is answered
/// **abort** and not recorded (so [`outcome`](Self::outcome) stays `None`): it can only be a
/// late copy about a transaction decided and forgotten long ago (whose participants are all
/// past it: no one is prepared on a forgotten commit), or one whose decision comes later than
/// `finished_max` transactions with higher ids were finished, which aborts. Recording it
/// instead could contradict the forgotten decision. See the [module documentation](self#forgetting)
/// for what this assumes of transaction ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DecisionLog {
    decided: BTreeMap<TxnId, Decided>,
    finished: BTreeMap<TxnId, Outcome>,
    finished_order: VecDeque<TxnId>,
    finished_max: usize,
    floor: Option<TxnId>,
}

impl Default for DecisionLog {
    fn default() -> DecisionLog {
        DecisionLog::with_finished_max(DecisionLog::FINISHED_MAX)
    }
}

impl DecisionLog {
    /// How many finished transactions the log remembers by default.
    pub const FINISHED_MAX: usize = 65_536;

    /// An empty log.
    pub fn new() -> DecisionLog {
        DecisionLog::default()
    }

    /// An empty log that remembers `finished_max` finished transactions (0: none; every
    /// `Forget` raises the floor at once). Every copy of one log must use the same bound:
    /// it decides what the log answers.
    pub fn with_finished_max(finished_max: usize) -> DecisionLog {
        DecisionLog {
            decided: BTreeMap::new(),
            finished: BTreeMap::new(),
            finished_order: VecDeque::new(),
            finished_max,
            floor: None,
        }
    }

    /// How many finished transactions the log remembers.
    pub fn finished_max(&self) -> usize {
        self.finished_max
    }

    /// The highest transaction the log dropped from its memory of finished ones, if any.
    pub fn floor(&self) -> Option<TxnId> {
        self.floor
    }

    /// Applies one entry. For a `Decide`, returns the transaction's decision: the one just
    /// applied, or the one that was there first (for a finished transaction: its outcome,
    /// with the participants the entry named; for one at or below the [floor](Self::floor)
    /// the log holds nothing about: abort, not recorded). For a `Forget`, returns `None`.
    pub fn apply(&mut self, entry: &LogEntry) -> Option<(TxnId, Decided)> {
        match entry {
            LogEntry::Decide {
                txn,
                outcome,
                participants,
            } => {
                let known = self.finished.get(txn).copied();
                let forgotten = self.floor.is_some_and(|floor| *txn <= floor)
                    && !self.decided.contains_key(txn);
                if let Some(outcome) = known.or(forgotten.then_some(Outcome::Abort)) {
                    return Some((
                        *txn,
                        Decided {
                            outcome,
                            participants: participants.clone(),
                        },
                    ));
                }
                let decided = self.decided.entry(*txn).or_insert_with(|| Decided {
                    outcome: *outcome,
                    participants: participants.clone(),
                });
                Some((*txn, decided.clone()))
            }
            LogEntry::Forget { txn } => {
                if let Some(decided) = self.decided.remove(txn) {
                    self.finished.insert(*txn, decided.outcome);
                    self.finished_order.push_back(*txn);
                    while self.finished_order.len() > self.finished_max {
                        let Some(old) = self.finished_order.pop_front() else {
                            break;
                        };
                        self.finished.remove(&old);
                        self.floor = self.floor.max(Some(old));
                    }
                }
                None
            }
        }
    }

    /// The live decision for `txn` (decided, not yet forgotten), if any.
    pub fn get(&self, txn: TxnId) -> Option<&Decided> {
        self.decided.get(&txn)
    }

    /// The outcome of `txn` if it is decided or among the finished transactions remembered.
    pub fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.decided
            .get(&txn)
            .map(|decided| decided.outcome)
            .or_else(|| self.finished.get(&txn).copied())
    }

    /// Every live decision, by transaction: what [`Coordinator::recover`] resumes.
    pub fn decisions(&self) -> impl Iterator<Item = (TxnId, &Decided)> {
        self.decided.iter().map(|(txn, decided)| (*txn, decided))
    }

    /// The number of live decisions.
    pub fn len(&self) -> usize {
        self.decided.len()
    }

    /// True if the log holds no live decision.
    pub fn is_empty(&self) -> bool {
        self.decided.is_empty()
    }
}
