//! The bank's replicated state machines and the coordinator's wiring, free of I/O.
//!
//! - The **ledger** (group 0) holds the transfers begun and the 2PC [`DecisionLog`]. A
//!   transfer's transaction id is the slot of its `Begin` entry, so ids are never reused.
//! - A **shard** (group `s`, 1 ≤ s ≤ shards) holds the accounts the ring places on it, and a
//!   2PC [`Participant`] that runs *inside* the state machine: the coordinator's messages are
//!   log entries of the shard, every replica of the shard steps its copy of the participant
//!   with them, and decides its vote from the same balances. The participant's records are
//!   durable because the entry that produced them is chosen; they are kept in the state (and
//!   its snapshots) and hand the participant back to [`Participant::recover`] on restore.
//! - [`Coordination`] runs the [`Coordinator`] on whichever process leads the ledger: its
//!   messages to a participant become entries of that shard's log, the messages the shard's
//!   participant answers with (read off the local replica's apply) are stepped back into it,
//!   and its decision-log entries become entries of the ledger.
//!
//! Applying an entry reads nothing but the state and the entry, so every replica of a group
//! computes the same state and the same outputs.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use synod::ring::{GroupId, Ring, RingConfig};
use synod::twopc::{
    BeginError, Body, Coordinator, CoordinatorConfig, Decided, DecisionLog, LogEntry, Message,
    Outcome, Participant, ParticipantConfig, ParticipantEvent, ParticipantRecord, TxnId,
};
use synod::{NodeId, Slot};

/// The coordinator's address in 2PC messages: whichever process leads the ledger plays it.
pub const COORDINATOR: NodeId = NodeId(u64::MAX);
/// The ledger's group number; shards are 1..=shards.
pub const LEDGER: u64 = 0;
/// The largest amount one deposit, withdrawal or transfer moves.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;
/// The largest balance an account may reach (credits that would pass it are refused).
pub const BALANCE_MAX: i64 = 1_000_000_000_000_000;
/// The longest account name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Transfers begun and not yet decided, at most; more `Begin`s are refused.
pub const PENDING_MAX: usize = 10_000;
/// Idempotency keys remembered per group (oldest forgotten first).
pub const KEYS_MAX: usize = 100_000;
/// The largest log entry the state machines decode.
pub const ENTRY_BYTES_MAX: usize = 64 * 1024;
/// Outcomes of transfers the ledger keeps (oldest forgotten first): enough that a transfer
/// whose key is still remembered ([`KEYS_MAX`] newest) has its outcome remembered too (at
/// most `KEYS_MAX` transfers begun after it, and [`PENDING_MAX`] begun before it and decided
/// after it).
pub const OUTCOMES_MAX: usize = KEYS_MAX + PENDING_MAX;
/// Finished transactions a shard's participant remembers.
const FINISHED_REMEMBERED: usize = 4096;

/// The 2PC address of shard `shard`'s participant.
pub fn participant_id(shard: u64) -> NodeId {
    NodeId(shard)
}

/// Who proposed an entry, so that the process serving the client can answer it: the node and
/// its request number (0: nobody waits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The proposing process's node id.
    pub node: u64,
    /// Its request number.
    pub request: u64,
}

/// An idempotency key: entries with the same key have one effect, and a retry gets the first
/// one's answer. `(0, k)` is a client's key `k`; a process makes up keys with a non-zero first
/// half that is new at every start.
pub type Key = (u64, u64);

/// A transfer between two accounts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    /// The debited account.
    pub from: String,
    /// The credited account.
    pub to: String,
    /// How much moves (positive).
    pub amount: i64,
}

/// One operation of a shard's part in a transaction: add `delta` to `account`.
type Ops = Vec<(String, i64)>;

/// A log entry of the ledger or of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entry {
    /// Ledger: begin `transfer`; its transaction id is this entry's slot.
    Begin {
        /// Who waits for the answer.
        origin: Origin,
        /// The transfer's idempotency key.
        key: Key,
        /// What moves.
        transfer: Transfer,
    },
    /// Ledger: an entry of the 2PC decision log, proposed by the coordinator.
    Decision(LogEntry),
    /// Shard: add `delta` to `account` (a deposit; a withdrawal if negative, refused if it
    /// would overdraw the account).
    Adjust {
        /// Who waits for the answer.
        origin: Origin,
        /// The idempotency key.
        key: Key,
        /// The account.
        account: String,
        /// The change.
        delta: i64,
    },
    /// Shard: read an account through the log (a linearizable read).
    Read {
        /// Who waits for the answer.
        origin: Origin,
        /// The account.
        account: String,
    },
    /// Shard: a message from the coordinator to the shard's participant.
    TwoPc(Message),
}

impl Entry {
    /// The entry's bytes, for a proposal.
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            bincode::serde::encode_to_vec(self, bincode::config::standard())
                .expect("encoding into a vector cannot fail"),
        )
    }

    /// Decodes an entry: `None` for anything but exactly one entry of at most
    /// [`ENTRY_BYTES_MAX`] bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() > ENTRY_BYTES_MAX {
            return None;
        }
        let config = bincode::config::standard().with_limit::<ENTRY_BYTES_MAX>();
        match bincode::serde::decode_from_slice::<Entry, _>(bytes, config) {
            Ok((entry, consumed)) if consumed == bytes.len() => Some(entry),
            _ => None,
        }
    }

    /// Who waits for this entry's answer, if anyone.
    pub fn origin(&self) -> Option<Origin> {
        match self {
            Entry::Begin { origin, .. }
            | Entry::Adjust { origin, .. }
            | Entry::Read { origin, .. } => Some(*origin).filter(|origin| origin.request != 0),
            Entry::Decision(_) | Entry::TwoPc(_) => None,
        }
    }
}

/// What an entry answers the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Answer {
    /// The transfer is transaction `txn` (a new one, or the one its key already began).
    Begun(TxnId),
    /// An account's state after the entry: its balance, and what prepared transfers hold of
    /// it (debits not yet committed).
    Balance {
        /// The committed balance.
        balance: i64,
        /// Held by prepared transfers out of it.
        held: i64,
    },
    /// A withdrawal larger than the balance less what is held.
    Insufficient {
        /// The committed balance.
        balance: i64,
        /// Held by prepared transfers out of it.
        held: i64,
    },
    /// The entry was refused; nothing changed.
    Refused(String),
}

/// Checks an account name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("an account name has 1 to {NAME_BYTES_MAX} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an account name has no spaces or control characters".to_string());
    }
    Ok(())
}

/// Checks an amount.
pub fn check_amount(amount: i64) -> Result<(), String> {
    if amount <= 0 || amount > AMOUNT_MAX {
        return Err(format!("an amount is between 1 and {AMOUNT_MAX}"));
    }
    Ok(())
}

/// Checks a change of balance: a non-zero amount either way.
fn check_delta(delta: i64) -> Result<(), String> {
    check_amount(i64::try_from(delta.unsigned_abs()).unwrap_or(i64::MAX))
}

impl Transfer {
    /// Checks the names and the amount, and that the accounts differ.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.from)?;
        check_name(&self.to)?;
        check_amount(self.amount)?;
        if self.from == self.to {
            return Err("a transfer needs two different accounts".to_string());
        }
        Ok(())
    }
}

/// Remembers the answers of the last [`KEYS_MAX`] keys, oldest forgotten first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Keys<V> {
    answers: BTreeMap<Key, V>,
    order: VecDeque<Key>,
}

impl<V> Default for Keys<V> {
    fn default() -> Keys<V> {
        Keys {
            answers: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V: Clone> Keys<V> {
    fn get(&self, key: &Key) -> Option<V> {
        self.answers.get(key).cloned()
    }

    fn insert(&mut self, key: Key, answer: V) {
        if self.answers.insert(key, answer).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KEYS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        let distinct: BTreeSet<&Key> = self.order.iter().collect();
        if self.order.len() > KEYS_MAX
            || distinct.len() != self.order.len()
            || distinct.len() != self.answers.len()
            || distinct.iter().any(|key| !self.answers.contains_key(key))
        {
            return Err("the idempotency keys are inconsistent".to_string());
        }
        Ok(())
    }
}

/// Encodes a value of the bank's state for a snapshot.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding into a vector cannot fail")
}

/// Decodes a snapshot: exactly one value, within `max` bytes.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    const SNAPSHOT_BYTES_MAX: usize = 1 << 30;
    let config = bincode::config::standard().with_limit::<SNAPSHOT_BYTES_MAX>();
    match bincode::serde::decode_from_slice::<T, _>(bytes, config) {
        Ok((value, consumed)) if consumed == bytes.len() => Ok(value),
        Ok(_) => Err("trailing bytes".to_string()),
        Err(error) => Err(error.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// The ledger.

/// What applying a ledger entry did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerApplied {
    /// The answer for the entry's origin.
    pub answer: Option<Answer>,
    /// A transfer just begun: the coordinator (if this process runs it) begins it.
    pub begun: Option<(TxnId, Transfer)>,
    /// The decision log's answer to a `Decide`: the coordinator is told, and clients waiting
    /// for the transaction hear its outcome.
    pub decided: Option<(TxnId, Decided)>,
}

/// Group 0's state: the transfers begun and not yet decided, the decision log, and the
/// outcomes of the transfers decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    decisions: DecisionLog,
    pending: BTreeMap<TxnId, Transfer>,
    keys: Keys<TxnId>,
    outcomes: Outcomes,
}

/// What the ledger knows of a transaction ([`Ledger::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Decided: committed or aborted.
    Decided(Outcome),
    /// Begun and not yet decided.
    Pending,
    /// Nothing remembered, and the id is at or below what the ledger forgot: if it was a
    /// transfer, it was decided long ago and its outcome is no longer kept.
    Forgotten,
    /// Nothing remembered, and above everything forgotten: no such transfer (yet).
    Unknown,
}

/// The outcome of every transfer the ledger decided, the newest [`OUTCOMES_MAX`] of them.
///
/// The decision log alone is not enough to answer clients: it keeps its newest
/// [`DecisionLog::FINISHED_MAX`] finished transactions only (fewer than the idempotency keys
/// the ledger remembers, so a keyed retry could find its transaction and no outcome), and a
/// transaction whose first `Decide` comes in below the log's floor is aborted without being
/// recorded there. The ledger records each transfer's outcome as it leaves `pending`: that
/// is its decision, the first the log answered (an abort at the floor included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Outcomes {
    by_txn: BTreeMap<TxnId, Outcome>,
    order: VecDeque<TxnId>,
    /// The highest transaction forgotten.
    floor: Option<TxnId>,
}

impl Outcomes {
    fn insert(&mut self, txn: TxnId, outcome: Outcome) {
        if self.by_txn.insert(txn, outcome).is_none() {
            self.order.push_back(txn);
        }
        while self.order.len() > OUTCOMES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_txn.remove(&old);
                self.floor = self.floor.max(Some(old));
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        let distinct: BTreeSet<&TxnId> = self.order.iter().collect();
        if self.order.len() > OUTCOMES_MAX
            || distinct.len() != self.order.len()
            || distinct.len() != self.by_txn.len()
            || distinct.iter().any(|txn| !self.by_txn.contains_key(txn))
        {
            return Err("the outcomes are inconsistent".to_string());
        }
        Ok(())
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Applies the entry chosen at `slot` (bytes that are not a ledger entry change nothing).
    pub fn apply(&mut self, slot: Slot, data: &[u8]) -> LedgerApplied {
        let mut applied = LedgerApplied::default();
        match Entry::decode(data) {
            Some(Entry::Begin { key, transfer, .. }) => {
                if let Some(txn) = self.keys.get(&key) {
                    applied.answer = Some(Answer::Begun(txn));
                } else if let Err(reason) = transfer.check() {
                    applied.answer = Some(Answer::Refused(reason));
                } else if self.pending.len() >= PENDING_MAX {
                    applied.answer = Some(Answer::Refused(format!(
                        "{PENDING_MAX} transfers are under way; try again"
                    )));
                } else {
                    let txn = TxnId(slot);
                    self.pending.insert(txn, transfer.clone());
                    self.keys.insert(key, txn);
                    applied.answer = Some(Answer::Begun(txn));
                    applied.begun = Some((txn, transfer));
                }
            }
            Some(Entry::Decision(entry)) => {
                if let Some((txn, decided)) = self.decisions.apply(&entry) {
                    // The first decision of a pending transfer is its outcome, also an abort
                    // the log answered at its floor without recording it.
                    if self.pending.remove(&txn).is_some() {
                        self.outcomes.insert(txn, decided.outcome);
                    }
                    applied.decided = Some((txn, decided));
                }
            }
            Some(entry) if entry.origin().is_some() => {
                applied.answer = Some(Answer::Refused("not a ledger command".to_string()));
            }
            Some(_) | None => {}
        }
        applied
    }

    /// The outcome of `txn`: decided (and remembered), or `None` if it is pending or unknown
    /// (see [`pending`](Self::pending) and [`status`](Self::status)).
    pub fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        self.outcomes
            .by_txn
            .get(&txn)
            .copied()
            .or_else(|| self.decisions.outcome(txn))
    }

    /// What the ledger knows of `txn` (for a client asking about it).
    pub fn status(&self, txn: TxnId) -> TxnStatus {
        if let Some(outcome) = self.outcome(txn) {
            return TxnStatus::Decided(outcome);
        }
        if self.pending(txn) {
            return TxnStatus::Pending;
        }
        let floor = self.outcomes.floor.max(self.decisions.floor());
        if floor.is_some_and(|floor| txn <= floor) {
            TxnStatus::Forgotten
        } else {
            TxnStatus::Unknown
        }
    }

    /// The shards that may not have applied `txn`'s commit yet: the participants of a commit
    /// the decision log holds live, from its `Decide` until its `Forget` (which the
    /// coordinator logs once every participant acknowledged the commit, and a participant
    /// acknowledges it once the shard's log holds the decision and has applied it). `None`
    /// for anything else: no commit, or one every participant has applied.
    pub fn unacknowledged_commit(&self, txn: TxnId) -> Option<Vec<u64>> {
        let decided = self.decisions.get(txn)?;
        (decided.outcome == Outcome::Commit).then(|| {
            decided
                .participants
                .iter()
                .map(|participant| participant.0)
                .collect()
        })
    }

    /// Whether `txn`'s commit is visible to every read of the shards it involves: it is
    /// committed, and every one of its shards has applied it, as the ledger knows
    /// ([`unacknowledged_commit`](Self::unacknowledged_commit) is `None`) or as `applied`
    /// says for a shard still to acknowledge it (this process's replica of that shard
    /// applied it: [`Shard::commit_applied`]). A replica applies only chosen entries, so
    /// then the decision is in the shard's log, and a later read through that log, or by
    /// read-index on any replica, includes it. `applied` returns false for a shard it does
    /// not know.
    pub fn commit_visible(&self, txn: TxnId, applied: impl FnMut(u64) -> bool) -> bool {
        if self.outcome(txn) != Some(Outcome::Commit) {
            return false;
        }
        match self.unacknowledged_commit(txn) {
            None => true,
            Some(shards) => shards.into_iter().all(applied),
        }
    }

    /// Whether `txn` is begun and not yet decided.
    pub fn pending(&self, txn: TxnId) -> bool {
        self.pending.contains_key(&txn)
    }

    /// The transfers begun and not yet decided.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The state's bytes, for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        encode(self)
    }

    /// The ledger a snapshot holds.
    ///
    /// # Errors
    /// Bytes that are not a consistent ledger.
    pub fn restore(bytes: &[u8]) -> Result<Ledger, String> {
        let ledger: Ledger = decode(bytes)?;
        ledger.keys.check()?;
        ledger.outcomes.check()?;
        if ledger.pending.len() > PENDING_MAX {
            return Err("too many pending transfers".to_string());
        }
        for (txn, transfer) in &ledger.pending {
            transfer.check()?;
            if ledger.outcome(*txn).is_some() {
                return Err(format!("{txn} is both pending and decided"));
            }
        }
        Ok(ledger)
    }
}

// ---------------------------------------------------------------------------------------
// A shard.

/// One account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Account {
    /// The committed balance.
    balance: i64,
    /// Debits of prepared transactions: not available to anything else.
    held: i64,
    /// Credits of prepared transactions: counted against [`BALANCE_MAX`].
    incoming: i64,
}

/// What applying a shard entry did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardApplied {
    /// The answer for the entry's origin.
    pub answer: Option<Answer>,
    /// The participant's messages to the coordinator (votes, acknowledgements): stepped into
    /// the coordinator if this process runs it, dropped otherwise (the coordinator resends).
    pub messages: Vec<Message>,
}

/// What a shard keeps durable of its participant: the prepared records, the finished
/// transactions it remembers, oldest first, with the coordinator that asked (those that voted
/// no too), and the floor of what it forgot, by coordinator (a vote request at or below it,
/// for a transaction the participant does not know, is answered no: it may be a duplicate of
/// one forgotten, whose commit must not be applied twice).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Records {
    prepared: BTreeMap<TxnId, ParticipantRecord>,
    finished: VecDeque<(TxnId, NodeId, Outcome)>,
    finished_set: BTreeSet<TxnId>,
    floors: BTreeMap<NodeId, TxnId>,
}

impl Records {
    /// The participant's own memory, record by record; a vote of no adds an abort (the
    /// participant remembers those too, and a restored copy must remember the same).
    fn keep(&mut self, record: ParticipantRecord) {
        match record {
            ParticipantRecord::Prepared { txn, .. } => {
                self.prepared.insert(txn, record);
            }
            ParticipantRecord::Finished {
                txn,
                coordinator,
                outcome,
            } => {
                self.prepared.remove(&txn);
                self.finish(txn, coordinator, outcome);
            }
            // Handed out as the participant forgets what `finish` drops here too.
            ParticipantRecord::Floor { coordinator, txn } => {
                let floor = self.floors.entry(coordinator).or_insert(txn);
                *floor = txn.max(*floor);
            }
        }
    }

    fn finish(&mut self, txn: TxnId, coordinator: NodeId, outcome: Outcome) {
        if self.finished_set.insert(txn) {
            self.finished.push_back((txn, coordinator, outcome));
        }
        while self.finished.len() > FINISHED_REMEMBERED {
            if let Some((old, _, _)) = self.finished.pop_front() {
                self.finished_set.remove(&old);
            }
        }
    }

    /// The records to recover a participant from: the floors, the finished ones, then the
    /// prepared ones.
    fn all(&self) -> Vec<ParticipantRecord> {
        let floors = self
            .floors
            .iter()
            .map(|(&coordinator, &txn)| ParticipantRecord::Floor { coordinator, txn });
        let finished =
            self.finished
                .iter()
                .map(|&(txn, coordinator, outcome)| ParticipantRecord::Finished {
                    txn,
                    coordinator,
                    outcome,
                });
        floors
            .chain(finished)
            .chain(self.prepared.values().cloned())
            .collect()
    }
}

/// A shard's state: its accounts and its 2PC participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    shard: u64,
    accounts: BTreeMap<String, Account>,
    records: Records,
    keys: Keys<Answer>,
    participant: Participant,
}

/// What a shard's snapshot holds (the participant is rebuilt from the records).
#[derive(Serialize, Deserialize)]
struct ShardImage {
    shard: u64,
    accounts: BTreeMap<String, Account>,
    records: Records,
    keys: Keys<Answer>,
}

/// A [`ShardImage`] borrowed from the state, to encode (the same bytes).
#[derive(Serialize)]
struct ShardImageRef<'a> {
    shard: u64,
    accounts: &'a BTreeMap<String, Account>,
    records: &'a Records,
    keys: &'a Keys<Answer>,
}

fn participant_config(shard: u64) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(participant_id(shard));
    config.coordinators = vec![COORDINATOR];
    config.finished_remembered = FINISHED_REMEMBERED;
    config.payload_bytes_max = ENTRY_BYTES_MAX;
    config
}

impl Shard {
    /// Shard `shard` with no accounts.
    pub fn new(shard: u64) -> Shard {
        Shard {
            shard,
            accounts: BTreeMap::new(),
            records: Records::default(),
            keys: Keys::default(),
            participant: Participant::new(participant_config(shard))
                .expect("the participant configuration is valid"),
        }
    }

    /// Applies a chosen entry (bytes that are not a shard entry change nothing).
    pub fn apply(&mut self, data: &[u8]) -> ShardApplied {
        let mut applied = ShardApplied::default();
        match Entry::decode(data) {
            Some(Entry::Adjust {
                key,
                account,
                delta,
                ..
            }) => {
                let answer = match self.keys.get(&key) {
                    Some(answer) => answer,
                    None => {
                        let answer = self.adjust(&account, delta);
                        if !matches!(answer, Answer::Refused(_)) {
                            self.keys.insert(key, answer.clone());
                        }
                        answer
                    }
                };
                applied.answer = Some(answer);
            }
            Some(Entry::Read { account, .. }) => {
                let state = self.accounts.get(&account).copied().unwrap_or_default();
                applied.answer = Some(Answer::Balance {
                    balance: state.balance,
                    held: state.held,
                });
            }
            Some(Entry::TwoPc(message)) => {
                // A message the participant refuses (not addressed to it, beyond its bounds,
                // nonsense) changes nothing, on every replica alike.
                let from = message.from;
                let stepped = self.participant.step(message);
                if stepped.is_ok() {
                    self.drain(from, &mut applied.messages);
                }
            }
            Some(entry) if entry.origin().is_some() => {
                applied.answer = Some(Answer::Refused("not a shard command".to_string()));
            }
            Some(_) | None => {}
        }
        applied
    }

    fn adjust(&mut self, account: &str, delta: i64) -> Answer {
        if let Err(reason) = check_name(account).and_then(|_| check_delta(delta)) {
            return Answer::Refused(reason);
        }
        let state = self.accounts.entry(account.to_string()).or_default();
        if delta < 0 && state.balance - state.held < -delta {
            return Answer::Insufficient {
                balance: state.balance,
                held: state.held,
            };
        }
        if delta > 0 && state.balance + state.incoming + delta > BALANCE_MAX {
            return Answer::Refused(format!("a balance stays below {BALANCE_MAX}"));
        }
        state.balance += delta;
        Answer::Balance {
            balance: state.balance,
            held: state.held,
        }
    }

    /// Hands the participant's work out: messages to the coordinator, records to keep, votes
    /// decided from the balances, decisions applied to them.
    fn drain(&mut self, from: NodeId, messages: &mut Vec<Message>) {
        while self.participant.has_ready() {
            let mut ready = self.participant.ready();
            messages.extend(ready.take_messages());
            for record in ready.take_records() {
                self.records.keep(record);
            }
            // Durable: the records are part of the state this chosen entry produced.
            messages.extend(ready.take_persisted_messages());
            for event in ready.take_events() {
                match event {
                    ParticipantEvent::VoteRequested { txn, payload } => {
                        let yes = self.reserve(&payload);
                        if !yes {
                            // The request being applied asked: `from` is its coordinator.
                            self.records.finish(txn, from, Outcome::Abort);
                        }
                        self.participant
                            .vote(txn, yes)
                            .expect("the participant just asked for this vote");
                    }
                    ParticipantEvent::Decided {
                        outcome, payload, ..
                    } => self.settle(outcome, &payload),
                }
            }
        }
    }

    /// Decides a vote: yes if every operation is valid and fits the balances;
    /// then its debits are held and its credits counted as incoming until the decision.
    fn reserve(&mut self, payload: &[u8]) -> bool {
        let Some(ops) = decode_ops(payload) else {
            return false;
        };
        let mut change: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (account, delta) in &ops {
            if check_name(account).is_err() || check_delta(*delta).is_err() {
                return false;
            }
            let (debit, credit) = change.entry(account).or_default();
            if *delta < 0 {
                *debit += -delta;
            } else {
                *credit += delta;
            }
        }
        for (account, (debit, credit)) in &change {
            let state = self.accounts.get(*account).copied().unwrap_or_default();
            if state.balance - state.held < *debit
                || state.balance + state.incoming + credit > BALANCE_MAX
            {
                return false;
            }
        }
        for (account, (debit, credit)) in change {
            let state = self.accounts.entry(account.to_string()).or_default();
            state.held += debit;
            state.incoming += credit;
        }
        true
    }

    /// Applies a decision to what [`reserve`](Self::reserve) set aside.
    fn settle(&mut self, outcome: Outcome, payload: &[u8]) {
        let ops = decode_ops(payload).expect("a prepared payload was decoded when voting");
        for (account, delta) in ops {
            let state = self.accounts.entry(account).or_default();
            if delta < 0 {
                state.held += delta;
            } else {
                state.incoming -= delta;
            }
            if outcome == Outcome::Commit {
                state.balance += delta;
            }
        }
    }

    /// Whether this replica has applied the commit of `txn`, a transaction the ledger
    /// committed (so this shard voted yes on it): it is not prepared here, and finished here
    /// (among the newest [`FINISHED_REMEMBERED`]) or at or below the participant's floor.
    /// The floor's case: a vote request at or below the floor for a transaction the
    /// participant does not know is answered no, so a committed transaction's vote request
    /// was applied (and prepared it) before the floor passed it; not prepared any more, it
    /// has finished since. False while this replica has not applied the decision (or not
    /// even the vote request).
    pub fn commit_applied(&self, txn: TxnId) -> bool {
        !self.records.prepared.contains_key(&txn)
            && (self.records.finished_set.contains(&txn)
                || self
                    .participant
                    .floor(COORDINATOR)
                    .is_some_and(|floor| txn <= floor))
    }

    /// The transactions prepared here, awaiting their decision.
    pub fn prepared(&self) -> Vec<TxnId> {
        self.participant.prepared().collect()
    }

    /// An account's committed balance and held amount, as this replica has applied them.
    pub fn balance(&self, account: &str) -> (i64, i64) {
        let state = self.accounts.get(account).copied().unwrap_or_default();
        (state.balance, state.held)
    }

    /// The sum of the committed balances.
    pub fn total(&self) -> i64 {
        self.accounts.values().map(|account| account.balance).sum()
    }

    /// The number of accounts.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// The state's bytes, for a snapshot: a [`ShardImage`], encoded from the state in place
    /// (no copy of it).
    pub fn snapshot(&self) -> Vec<u8> {
        encode(&ShardImageRef {
            shard: self.shard,
            accounts: &self.accounts,
            records: &self.records,
            keys: &self.keys,
        })
    }

    /// The shard a snapshot holds, with its participant recovered from the records.
    ///
    /// # Errors
    /// Bytes that are not a consistent image of shard `shard`.
    pub fn restore(shard: u64, bytes: &[u8]) -> Result<Shard, String> {
        let image: ShardImage = decode(bytes)?;
        if image.shard != shard {
            return Err(format!(
                "the snapshot is shard {}'s, not shard {shard}'s",
                image.shard
            ));
        }
        image.keys.check()?;
        let records = &image.records;
        let finished: BTreeSet<TxnId> = records.finished.iter().map(|(txn, ..)| *txn).collect();
        if finished != records.finished_set
            || finished.len() != records.finished.len()
            || records.finished.len() > FINISHED_REMEMBERED
        {
            return Err("the finished transactions are inconsistent".to_string());
        }
        // What the prepared records hold must be what the accounts say is held.
        let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (txn, record) in &records.prepared {
            let ParticipantRecord::Prepared {
                txn: inner,
                payload,
                ..
            } = record
            else {
                return Err(format!("{txn}'s record is not a prepared one"));
            };
            let ops = decode_ops(payload).filter(|_| inner == txn);
            let ops = ops.ok_or_else(|| format!("{txn}'s prepared record is malformed"))?;
            for (account, delta) in ops {
                let (held, incoming) = expected.entry(account).or_default();
                if delta < 0 {
                    *held = held.saturating_sub(delta);
                } else {
                    *incoming = incoming.saturating_add(delta);
                }
            }
        }
        for (name, account) in &image.accounts {
            let (held, incoming) = expected.remove(name).unwrap_or_default();
            if account.held != held
                || account.incoming != incoming
                || account.balance < account.held
                || account.balance.saturating_add(account.incoming) > BALANCE_MAX
            {
                return Err(format!(
                    "account {name} disagrees with the prepared records"
                ));
            }
        }
        if !expected.is_empty() {
            return Err("a prepared record names an unknown account".to_string());
        }
        let mut participant = Participant::recover(participant_config(shard), records.all())
            .map_err(|error| error.to_string())?;
        // Its status queries: the coordinator's process asks the shards itself.
        let _ = participant.ready();
        Ok(Shard {
            shard,
            accounts: image.accounts,
            records: image.records,
            keys: image.keys,
            participant,
        })
    }
}

fn encode_ops(ops: &Ops) -> Bytes {
    Bytes::from(encode(ops))
}

fn decode_ops(bytes: &[u8]) -> Option<Ops> {
    let config = bincode::config::standard().with_limit::<ENTRY_BYTES_MAX>();
    match bincode::serde::decode_from_slice::<Ops, _>(bytes, config) {
        Ok((ops, consumed)) if consumed == bytes.len() && !ops.is_empty() => Some(ops),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Placement and the coordinator.

/// Which shard holds an account: a consistent-hash ring over the shards, the same on every
/// process (the number of shards is part of the cluster's configuration).
#[derive(Clone, Debug)]
pub struct Placement {
    ring: Ring,
}

impl Placement {
    /// Shards `1..=shards`, of equal weight.
    ///
    /// # Errors
    /// No shards, or more than the ring holds.
    pub fn new(shards: u64) -> Result<Placement, String> {
        if shards == 0 || shards > 1024 {
            return Err("between 1 and 1024 shards".to_string());
        }
        let mut ring = Ring::new(RingConfig::default()).map_err(|error| error.to_string())?;
        for shard in 1..=shards {
            ring.insert(GroupId(shard), 1)
                .map_err(|error| error.to_string())?;
        }
        Ok(Placement { ring })
    }

    /// The shard of `account`.
    pub fn shard(&self, account: &str) -> u64 {
        self.ring
            .locate(account.as_bytes())
            .expect("the ring has shards")
            .0
    }

    /// Each shard's part of `transfer`: its operations, encoded.
    pub fn parts(&self, transfer: &Transfer) -> Vec<(NodeId, Bytes)> {
        let mut parts: BTreeMap<u64, Ops> = BTreeMap::new();
        parts
            .entry(self.shard(&transfer.from))
            .or_default()
            .push((transfer.from.clone(), -transfer.amount));
        parts
            .entry(self.shard(&transfer.to))
            .or_default()
            .push((transfer.to.clone(), transfer.amount));
        parts
            .into_iter()
            .map(|(shard, ops)| (participant_id(shard), encode_ops(&ops)))
            .collect()
    }
}

/// The coordinator, while this process leads the ledger, and what it asks to propose.
#[derive(Debug)]
pub struct Coordination {
    placement: Placement,
    config: CoordinatorConfig,
    coordinator: Option<Coordinator>,
    /// Transfers the coordinator could not begin yet (it was full), begun again each tick.
    deferred: BTreeMap<TxnId, Transfer>,
    proposals: Vec<(u64, Entry)>,
}

impl Coordination {
    /// No coordinator yet; `vote_ticks` and `resend_ticks` as in [`CoordinatorConfig`].
    ///
    /// # Errors
    /// A configuration the coordinator refuses.
    pub fn new(placement: Placement, vote_ticks: u64, resend_ticks: u64) -> Result<Self, String> {
        let mut config = CoordinatorConfig::new(COORDINATOR);
        config.vote_ticks = vote_ticks;
        config.resend_ticks = resend_ticks;
        // Room for every pending transfer, and for the decided ones still being announced.
        config.txns_max = 4 * PENDING_MAX;
        Coordinator::new(config.clone()).map_err(|error| error.to_string())?;
        Ok(Coordination {
            placement,
            config,
            coordinator: None,
            deferred: BTreeMap::new(),
            proposals: Vec::new(),
        })
    }

    /// Whether a coordinator runs here.
    pub fn running(&self) -> bool {
        self.coordinator.is_some()
    }

    /// This process now leads the ledger: a coordinator recovered from the ledger's decision
    /// log resumes its decisions, and begins again every transfer begun and not decided (a
    /// retry of the same transaction: the participants answer a repeated vote request with
    /// the vote they gave, and the log keeps the first decision).
    pub fn take_over(&mut self, ledger: &Ledger) {
        let coordinator = Coordinator::recover(self.config.clone(), &ledger.decisions)
            .expect("the configuration was checked");
        self.coordinator = Some(coordinator);
        self.deferred.clear();
        for (txn, transfer) in &ledger.pending {
            self.begin(*txn, transfer);
        }
        self.collect();
    }

    /// Begins `txn`, or defers it while the coordinator is full.
    fn begin(&mut self, txn: TxnId, transfer: &Transfer) {
        let Some(coordinator) = &mut self.coordinator else {
            return;
        };
        // Otherwise begun, or already known to it (decided from a participant's query):
        // either way the decision log will have the answer.
        let begun = coordinator.begin(txn, self.placement.parts(transfer));
        if let Err(BeginError::TooManyTxns { .. }) = begun {
            self.deferred.insert(txn, transfer.clone());
        }
    }

    /// This process no longer leads the ledger: the next leader's coordinator takes over
    /// (a coordinator must not outlive its leadership; it is recovered afresh each time).
    pub fn step_down(&mut self) {
        self.coordinator = None;
        self.deferred.clear();
        self.proposals.clear();
    }

    /// The ledger began `txn`.
    pub fn begun(&mut self, txn: TxnId, transfer: &Transfer) {
        self.begin(txn, transfer);
        self.collect();
    }

    /// The ledger's decision log answered a `Decide` for `txn`.
    pub fn logged(&mut self, txn: TxnId, decided: &Decided) {
        self.deferred.remove(&txn);
        if let Some(coordinator) = &mut self.coordinator {
            coordinator.on_logged(txn, decided);
            self.collect();
        }
    }

    /// Messages a shard's participant sent (read off this process's replica of the shard).
    pub fn deliver(&mut self, messages: Vec<Message>) {
        if let Some(coordinator) = &mut self.coordinator {
            for message in messages {
                // Refusals are messages for an older coordinator, or beyond the bounds:
                // dropped like a lost message.
                let _ = coordinator.step(message);
            }
            self.collect();
        }
    }

    /// Asks, on behalf of shard `shard`'s participant, for the decision on each of
    /// `prepared`: a participant inside a replicated state machine cannot tick, so the
    /// coordinator's process asks for it from its own replica of the shard.
    pub fn query(&mut self, shard: u64, prepared: Vec<TxnId>) {
        let queries = prepared.into_iter().map(|txn| Message {
            txn,
            from: participant_id(shard),
            to: COORDINATOR,
            body: Body::StatusQuery,
        });
        let queries: Vec<Message> = queries.collect();
        self.deliver(queries);
    }

    /// One tick of the coordinator: vote timeouts and resends.
    pub fn tick(&mut self) {
        if let Some(coordinator) = &mut self.coordinator {
            coordinator.tick();
            for (txn, transfer) in std::mem::take(&mut self.deferred) {
                self.begin(txn, &transfer);
            }
            self.collect();
        }
    }

    /// What to propose, by group: decision-log entries to the ledger, messages to the shards.
    pub fn take_proposals(&mut self) -> Vec<(u64, Entry)> {
        std::mem::take(&mut self.proposals)
    }

    fn collect(&mut self) {
        let Some(coordinator) = &mut self.coordinator else {
            return;
        };
        while coordinator.has_ready() {
            let mut ready = coordinator.ready();
            for entry in ready.take_log() {
                self.proposals.push((LEDGER, Entry::Decision(entry)));
            }
            for message in ready.take_messages() {
                self.proposals.push((message.to.0, Entry::TwoPc(message)));
            }
            // Clients hear of decisions from the ledger's log, on whichever process serves them.
            let _ = ready.take_events();
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
