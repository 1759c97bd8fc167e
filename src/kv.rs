//! A deterministic key-value state machine, applied from chosen log entries.
//!
//! This is the simulator's standard workload and the state machine behind the key-value
//! example server. It shows how an application sits on top of a replica:
//!
//! - Clients send [`Command`]s encoded with [`Command::encode`]; the bytes are proposed as-is.
//! - Every replica applies each chosen command, in slot order, with
//!   [`KvStateMachine::apply`], and the replica that received the request returns the
//!   [`Response`] to the client.
//! - Requests are deduplicated by a [`SessionTable`]: a client retries a request with the same
//!   [`RequestHeader`] until it gets a response, and the request takes effect exactly once
//!   (see [`crate::session`] for the precise contract).
//! - [`KvStateMachine::digest`] fingerprints the whole state so that replicas can be compared
//!   after applying the same prefix of the log.
//!
//! Everything here is deterministic: no clock, no randomness, no hash-map iteration order.
//! Bad input (undecodable bytes, oversized keys) yields an error [`Response`], never a panic.

use crate::error::ConfigError;
use crate::session::{
    ClientId, Outcome, RequestHeader, ResponseSize, SessionError, SessionLimits, SessionTable,
};
use crate::types::Slot;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// The hard ceiling on the size of an encoded command or response the decoder accepts.
/// [`KvLimits::command_bytes_max`] may only lower it. (The decoder allocates a byte string's
/// declared length before reading it, so this also bounds what corrupt input can allocate.)
pub const COMMAND_BYTES_CEILING: usize = 64 * 1024 * 1024;

/// The hard ceiling on the size of a snapshot [`KvStateMachine::restore`] accepts.
pub const SNAPSHOT_BYTES_CEILING: usize = 1024 * 1024 * 1024;

/// One operation on the store. Every operation touches exactly one key.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Reads the value of `key`. Answers [`Output::Value`].
    Get {
        /// The key.
        key: Bytes,
    },
    /// Sets `key` to `value`. Answers [`Output::Written`].
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key`. Answers [`Output::Deleted`] with whether it existed.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Appends `value` to the value of `key` (a missing key counts as empty). Answers
    /// [`Output::Appended`] with the new length.
    Append {
        /// The key.
        key: Bytes,
        /// The bytes to append.
        value: Bytes,
    },
    /// If the value of `key` equals `expected` (`None`: the key is absent), sets it to `new`
    /// (`None`: removes it). Answers [`Output::Swapped`] with whether it did.
    CompareAndSwap {
        /// The key.
        key: Bytes,
        /// The value the key must have for the swap to happen; `None` means absent.
        expected: Option<Bytes>,
        /// The value to set; `None` removes the key.
        new: Option<Bytes>,
    },
}

impl Operation {
    /// The key the operation touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Operation::Get { key }
            | Operation::Put { key, .. }
            | Operation::Delete { key }
            | Operation::Append { key, .. }
            | Operation::CompareAndSwap { key, .. } => key,
        }
    }

    /// Whether the operation never changes the store.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Operation::Get { .. })
    }
}

/// Writes bytes as a quoted string, escaping what is not printable ASCII.
pub(crate) fn write_quoted(formatter: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    write!(formatter, "\"{}\"", bytes.escape_ascii())
}

fn write_optional(formatter: &mut fmt::Formatter<'_>, bytes: &Option<Bytes>) -> fmt::Result {
    match bytes {
        Some(bytes) => write_quoted(formatter, bytes),
        None => write!(formatter, "absent"),
    }
}

impl fmt::Debug for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Get { key } => {
                write!(formatter, "get(")?;
                write_quoted(formatter, key)?;
            }
            Operation::Put { key, value } => {
                write!(formatter, "put(")?;
                write_quoted(formatter, key)?;
                write!(formatter, ", ")?;
                write_quoted(formatter, value)?;
            }
            Operation::Delete { key } => {
                write!(formatter, "delete(")?;
                write_quoted(formatter, key)?;
            }
            Operation::Append { key, value } => {
                write!(formatter, "append(")?;
                write_quoted(formatter, key)?;
                write!(formatter, ", ")?;
                write_quoted(formatter, value)?;
            }
            Operation::CompareAndSwap { key, expected, new } => {
                write!(formatter, "cas(")?;
                write_quoted(formatter, key)?;
                write!(formatter, ", ")?;
                write_optional(formatter, expected)?;
                write!(formatter, " -> ")?;
                write_optional(formatter, new)?;
            }
        }
        write!(formatter, ")")
    }
}

/// The result of an [`Operation`] that took effect.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Output {
    /// The value read by [`Operation::Get`]; `None` if the key is absent.
    Value(Option<Bytes>),
    /// [`Operation::Put`] is done.
    Written,
    /// [`Operation::Delete`] is done; whether the key existed.
    Deleted(bool),
    /// [`Operation::Append`] is done; the value's new length.
    Appended {
        /// The length of the value after the append, in bytes.
        length_bytes: u64,
    },
    /// [`Operation::CompareAndSwap`] is done; whether the value matched and was swapped.
    Swapped(bool),
}

impl fmt::Debug for Output {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Value(value) => write_optional(formatter, value),
            Output::Written => write!(formatter, "ok"),
            Output::Deleted(existed) => write!(formatter, "deleted={existed}"),
            Output::Appended { length_bytes } => write!(formatter, "length={length_bytes}"),
            Output::Swapped(swapped) => write!(formatter, "swapped={swapped}"),
        }
    }
}

/// A command, as proposed to the log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Opens a client session. Answers [`Response::SessionOpened`] with the new id. Retrying it
    /// opens another session; the unused one is evicted or expired in time.
    OpenSession,
    /// Closes a client session. Answers [`Response::SessionClosed`].
    CloseSession {
        /// The session to close.
        client: ClientId,
    },
    /// Expires every session not active since `inactive_before` (a slot). Proposed by the
    /// application (typically the leader, from its clock), never decided during apply.
    /// Answers [`Response::SessionsExpired`].
    ExpireSessions {
        /// Sessions whose last request was applied at a slot below this one expire.
        inactive_before: Slot,
    },
    /// A client request, applied at most once per `header`.
    Request {
        /// The session, sequence number and acknowledgement watermark.
        header: RequestHeader,
        /// What to do.
        operation: Operation,
    },
}

impl Command {
    /// Encodes the command for proposing (bincode, standard configuration).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a command. Fails with [`KvError::Malformed`] on bytes that are not exactly one
    /// encoded command, or [`KvError::CommandTooLarge`] above [`COMMAND_BYTES_CEILING`].
    pub fn decode(bytes: &[u8]) -> Result<Command, KvError> {
        decode(bytes)
    }
}

/// Why a command had no effect (or, for [`KvError::ResponseDropped`], why its result is not
/// known). Sent to the client inside [`Response::Error`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Error, Serialize, Deserialize)]
pub enum KvError {
    /// The command bytes could not be decoded. Not applied; a client bug or corruption.
    #[error("malformed command: {reason}")]
    Malformed {
        /// What the decoder found wrong.
        reason: String,
    },
    /// The encoded command is longer than the store accepts. Not applied; send a smaller one.
    #[error("command of {length_bytes} bytes exceeds the maximum of {max_bytes}")]
    CommandTooLarge {
        /// The command's length.
        length_bytes: u64,
        /// The maximum.
        max_bytes: u64,
    },
    /// The client's session is gone (closed, evicted or expired). Not applied; open a new
    /// session. Unacknowledged requests of the old session may or may not have taken effect.
    #[error("session expired")]
    SessionExpired,
    /// No such session was ever opened. Not applied.
    #[error("unknown session")]
    UnknownSession,
    /// The request's sequence number was already acknowledged by the client: a delayed copy.
    /// Not applied (again); the client can ignore this answer.
    #[error("stale request: already acknowledged")]
    Stale,
    /// Too many unacknowledged requests in the session. Not applied; acknowledge responses
    /// and retry.
    #[error("session full: too many unacknowledged requests")]
    SessionFull,
    /// The request took effect (once), but its response was dropped from the session cache to
    /// respect the byte bound. Do not retry; the result is unknown.
    #[error("request applied, response dropped from the session cache")]
    ResponseDropped,
    /// The key is longer than [`KvLimits::key_bytes_max`]. Not applied.
    #[error("key of {length_bytes} bytes exceeds the maximum of {max_bytes}")]
    KeyTooLarge {
        /// The key's length.
        length_bytes: u64,
        /// The maximum.
        max_bytes: u64,
    },
    /// The value (for an append: the resulting value) is longer than
    /// [`KvLimits::value_bytes_max`]. Not applied.
    #[error("value of {length_bytes} bytes exceeds the maximum of {max_bytes}")]
    ValueTooLarge {
        /// The value's length.
        length_bytes: u64,
        /// The maximum.
        max_bytes: u64,
    },
    /// The store already holds [`KvLimits::keys_max`] keys and the operation would add one.
    /// Not applied; delete keys first.
    #[error("store full: {keys_max} keys")]
    TooManyKeys {
        /// The maximum number of keys.
        keys_max: u64,
    },
    /// The operation would take the store's keys and values above
    /// [`KvLimits::store_bytes_max`] bytes. Not applied; delete keys first.
    #[error("store full: {store_bytes_max} bytes of keys and values")]
    StoreFull {
        /// The maximum.
        store_bytes_max: u64,
    },
    /// [`KvStateMachine::apply`] was called for a slot at or below the last one applied: a
    /// bug in the caller (entries are applied once, in slot order). Not applied; nothing
    /// changed.
    #[error("slot {slot} applied after slot {last}")]
    SlotReplayed {
        /// The slot given.
        slot: u64,
        /// The last slot applied.
        last: u64,
    },
    /// The session table refused the command (see [`SessionError`]): client ids are
    /// exhausted, which only a corrupt snapshot leads to. Not applied.
    #[error("session table refused the command: {reason}")]
    SessionRefused {
        /// The session table's error.
        reason: String,
    },
}

impl From<SessionError> for KvError {
    fn from(error: SessionError) -> KvError {
        KvError::SessionRefused {
            reason: error.to_string(),
        }
    }
}

/// The answer to one [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    /// A session was opened for the client.
    SessionOpened {
        /// The new session's id; put it in every [`RequestHeader`].
        client: ClientId,
    },
    /// A session was closed.
    SessionClosed {
        /// Whether the session was open.
        was_open: bool,
    },
    /// Idle sessions were expired.
    SessionsExpired {
        /// How many.
        count: u64,
    },
    /// The request took effect, with this output.
    Output(Output),
    /// The command had no effect (or, for [`KvError::ResponseDropped`], an unknown result).
    Error(KvError),
}

impl Response {
    /// Encodes the response for the client (bincode, standard configuration).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a response. Fails with [`KvError::Malformed`] on bytes that are not exactly one
    /// encoded response.
    pub fn decode(bytes: &[u8]) -> Result<Response, KvError> {
        decode(bytes)
    }
}

impl ResponseSize for Response {
    fn size_bytes(&self) -> usize {
        // The enum itself, plus the bytes it owns.
        let owned_bytes = match self {
            Response::Output(Output::Value(Some(value))) => value.len(),
            Response::Error(KvError::Malformed { reason } | KvError::SessionRefused { reason }) => {
                reason.len()
            }
            _ => 0,
        };
        std::mem::size_of::<Response>() + owned_bytes
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding our own plain data types into memory cannot fail.
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding a key-value command or response")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, KvError> {
    if bytes.len() > COMMAND_BYTES_CEILING {
        return Err(KvError::CommandTooLarge {
            length_bytes: bytes.len() as u64,
            max_bytes: COMMAND_BYTES_CEILING as u64,
        });
    }
    let config = bincode::config::standard().with_limit::<COMMAND_BYTES_CEILING>();
    match bincode::serde::decode_from_slice::<T, _>(bytes, config) {
        Ok((value, consumed)) if consumed == bytes.len() => Ok(value),
        Ok((_, consumed)) => Err(KvError::Malformed {
            reason: format!("{} trailing bytes", bytes.len() - consumed),
        }),
        Err(error) => Err(KvError::Malformed {
            reason: error.to_string(),
        }),
    }
}

/// The bounds of a [`KvStateMachine`]. Part of the replicated state: every replica must use the
/// same limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvLimits {
    /// Keys in the store.
    pub keys_max: usize,
    /// Length of one key.
    pub key_bytes_max: usize,
    /// Length of one value.
    pub value_bytes_max: usize,
    /// Length of one encoded command; at most [`COMMAND_BYTES_CEILING`].
    pub command_bytes_max: usize,
    /// Bytes of all keys and values together. The store is what a snapshot holds: keep this
    /// (plus the sessions' cached responses) below the replica's
    /// [`Config::snapshot_bytes_max`](crate::Config::snapshot_bytes_max), or compaction fails
    /// and the log grows without bound. Default 512 MiB (the snapshot limit is 1 GiB).
    pub store_bytes_max: usize,
    /// The bounds of the session table.
    pub sessions: SessionLimits,
}

impl Default for KvLimits {
    fn default() -> KvLimits {
        KvLimits {
            keys_max: 1_000_000,
            key_bytes_max: 1024,
            value_bytes_max: 1024 * 1024,
            command_bytes_max: 2 * 1024 * 1024,
            store_bytes_max: 512 << 20,
            sessions: SessionLimits::default(),
        }
    }
}

impl KvLimits {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys_max == 0 {
            return Err(ConfigError::new("keys_max", "must be at least 1"));
        }
        if self.key_bytes_max == 0 {
            return Err(ConfigError::new("key_bytes_max", "must be at least 1"));
        }
        if self.store_bytes_max == 0 {
            return Err(ConfigError::new("store_bytes_max", "must be at least 1"));
        }
        if self.command_bytes_max == 0 || self.command_bytes_max > COMMAND_BYTES_CEILING {
            return Err(ConfigError::new(
                "command_bytes_max",
                "must be between 1 and COMMAND_BYTES_CEILING",
            ));
        }
        self.sessions.validate()
    }
}

/// A snapshot given to [`KvStateMachine::restore`] is corrupt or from incompatible code.
/// Do not use it; fetch a snapshot from another replica.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The bytes do not decode to a state machine (this includes a session table that breaks
    /// one of its invariants).
    #[error("undecodable snapshot: {0}")]
    Undecodable(String),
    /// The store in the snapshot breaks an invariant.
    #[error("invalid snapshot: {0}")]
    Invalid(&'static str),
}

/// The replicated key-value store: data plus client sessions.
///
/// Inputs: [`apply`](Self::apply) for each chosen command, in slot order, exactly once (skip
/// no-op entries). Outputs: the [`Response`] of each command, and [`digest`](Self::digest) /
/// [`snapshot`](Self::snapshot) of the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStateMachine {
    limits: KvLimits,
    /// The store. At most `limits.keys_max` keys, each within the key and value bounds.
    data: BTreeMap<Bytes, Bytes>,
    /// Bytes of the keys and values in `data` (derived; at most `limits.store_bytes_max`).
    data_bytes: usize,
    /// Deduplicates requests; responses are cached for retries.
    sessions: SessionTable<Response>,
    /// The last slot applied; 0 before the first.
    last_applied_slot: Slot,
}

/// The serialized form of a [`KvStateMachine`] (its snapshot), as read back.
#[derive(Deserialize)]
struct KvSnapshot {
    limits: KvLimits,
    last_applied_slot: Slot,
    data: BTreeMap<Bytes, Bytes>,
    sessions: SessionTable<Response>,
}

/// The serialized form as written: the fields of [`KvSnapshot`], in the same order, borrowed.
#[derive(Serialize)]
struct KvSnapshotRef<'a> {
    limits: &'a KvLimits,
    last_applied_slot: Slot,
    data: &'a BTreeMap<Bytes, Bytes>,
    sessions: &'a SessionTable<Response>,
}

impl KvStateMachine {
    /// Creates an empty store.
    ///
    /// # Errors
    /// The [`ConfigError`] of [`KvLimits::validate`] if `limits` is invalid.
    pub fn new(limits: KvLimits) -> Result<KvStateMachine, ConfigError> {
        limits.validate()?;
        Ok(KvStateMachine {
            limits,
            data: BTreeMap::new(),
            data_bytes: 0,
            sessions: SessionTable::new(limits.sessions)?,
            last_applied_slot: 0,
        })
    }

    /// The limits the store was created with.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// The last slot applied; 0 before the first.
    pub fn last_applied_slot(&self) -> Slot {
        self.last_applied_slot
    }

    /// Reads `key` from this replica's copy, bypassing the log. Only as fresh as the last
    /// applied slot: a linearizable read goes through the log (or a read index).
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.data.get(key)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The session table.
    pub fn sessions(&self) -> &SessionTable<Response> {
        &self.sessions
    }

    /// Applies the command chosen for `slot` and returns its response.
    ///
    /// Bytes that do not decode give [`KvError::Malformed`]; the slot still counts as applied.
    /// A `slot` at or below the last one applied (entries are applied once, in slot order)
    /// gives [`KvError::SlotReplayed`] and changes nothing.
    pub fn apply(&mut self, slot: Slot, command: &[u8]) -> Response {
        if let Some(replayed) = self.replayed(slot) {
            return replayed;
        }
        if command.len() > self.limits.command_bytes_max {
            self.last_applied_slot = slot;
            return Response::Error(KvError::CommandTooLarge {
                length_bytes: command.len() as u64,
                max_bytes: self.limits.command_bytes_max as u64,
            });
        }
        match Command::decode(command) {
            Ok(command) => self.apply_command(slot, command),
            Err(error) => {
                self.last_applied_slot = slot;
                Response::Error(error)
            }
        }
    }

    /// Applies an already decoded command chosen for `slot`; see [`apply`](Self::apply).
    pub fn apply_command(&mut self, slot: Slot, command: Command) -> Response {
        if let Some(replayed) = self.replayed(slot) {
            return replayed;
        }
        self.last_applied_slot = slot;
        let response = match command {
            Command::OpenSession => match self.sessions.open(slot) {
                Ok(opened) => Response::SessionOpened {
                    client: opened.client,
                },
                Err(error) => Response::Error(error.into()),
            },
            Command::CloseSession { client } => match self.sessions.close(client) {
                Ok(was_open) => Response::SessionClosed { was_open },
                Err(error) => Response::Error(error.into()),
            },
            Command::ExpireSessions { inactive_before } => {
                match self.sessions.expire_inactive(inactive_before) {
                    Ok(count) => Response::SessionsExpired {
                        count: count as u64,
                    },
                    Err(error) => Response::Error(error.into()),
                }
            }
            Command::Request { header, operation } => {
                let limits = &self.limits;
                let store = &mut Store {
                    data: &mut self.data,
                    bytes: &mut self.data_bytes,
                };
                match self.sessions.execute(header, slot, || {
                    match apply_operation(limits, store, operation) {
                        Ok(output) => Response::Output(output),
                        Err(error) => Response::Error(error),
                    }
                }) {
                    Ok(response) => response,
                    Err(refusal) => Response::Error(refusal_error(refusal)),
                }
            }
        };
        self.check_invariants();
        response
    }

    /// The answer to a slot at or below the last one applied, if `slot` is one.
    fn replayed(&self, slot: Slot) -> Option<Response> {
        (slot <= self.last_applied_slot).then(|| {
            Response::Error(KvError::SlotReplayed {
                slot,
                last: self.last_applied_slot,
            })
        })
    }

    /// A 64-bit fingerprint of the whole replicated state (data, sessions, last applied slot,
    /// limits). Replicas that applied the same log prefix have equal digests; a difference
    /// means divergence. Not cryptographic. Costs a full encoding of the state.
    pub fn digest(&self) -> u64 {
        fnv1a_64(&self.snapshot())
    }

    /// Encodes the whole state, canonically: equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        encode(&KvSnapshotRef {
            limits: &self.limits,
            last_applied_slot: self.last_applied_slot,
            data: &self.data,
            sessions: &self.sessions,
        })
    }

    /// Rebuilds a state machine from [`snapshot`](Self::snapshot) bytes, checking every
    /// invariant. Never panics on corrupt input.
    pub fn restore(bytes: &[u8]) -> Result<KvStateMachine, SnapshotError> {
        if bytes.len() > SNAPSHOT_BYTES_CEILING {
            return Err(SnapshotError::Invalid("snapshot larger than the ceiling"));
        }
        let config = bincode::config::standard().with_limit::<SNAPSHOT_BYTES_CEILING>();
        let snapshot = match bincode::serde::decode_from_slice::<KvSnapshot, _>(bytes, config) {
            Ok((snapshot, consumed)) if consumed == bytes.len() => snapshot,
            Ok(_) => return Err(SnapshotError::Invalid("trailing bytes")),
            Err(error) => return Err(SnapshotError::Undecodable(error.to_string())),
        };
        let limits = snapshot.limits;
        if limits.validate().is_err() {
            return Err(SnapshotError::Invalid("limits out of range"));
        }
        if *snapshot.sessions.limits() != limits.sessions {
            return Err(SnapshotError::Invalid("session limits differ"));
        }
        if snapshot.sessions.last_index() > snapshot.last_applied_slot {
            return Err(SnapshotError::Invalid("sessions ahead of the last slot"));
        }
        if snapshot.data.len() > limits.keys_max {
            return Err(SnapshotError::Invalid("more keys than keys_max"));
        }
        let mut data_bytes = 0usize;
        for (key, value) in &snapshot.data {
            if key.len() > limits.key_bytes_max || value.len() > limits.value_bytes_max {
                return Err(SnapshotError::Invalid("key or value above its bound"));
            }
            data_bytes = data_bytes.saturating_add(key.len() + value.len());
        }
        if data_bytes > limits.store_bytes_max {
            return Err(SnapshotError::Invalid("more bytes than store_bytes_max"));
        }
        Ok(KvStateMachine {
            limits,
            data: snapshot.data,
            data_bytes,
            sessions: snapshot.sessions,
            last_applied_slot: snapshot.last_applied_slot,
        })
    }

    fn check_invariants(&self) {
        debug_assert!(self.data.len() <= self.limits.keys_max);
        debug_assert!(self.data_bytes <= self.limits.store_bytes_max);
        debug_assert!(self.sessions.last_index() <= self.last_applied_slot);
    }
}

/// The store and the bytes of its keys and values, changed together.
struct Store<'a> {
    data: &'a mut BTreeMap<Bytes, Bytes>,
    bytes: &'a mut usize,
}

impl Store<'_> {
    /// Refuses `key = value` if it would add a key past `keys_max` or take the store past
    /// `store_bytes_max`.
    fn check_room(
        &self,
        limits: &KvLimits,
        key: &Bytes,
        value_bytes: usize,
    ) -> Result<(), KvError> {
        let old_bytes = self.data.get(key).map(|old| key.len() + old.len());
        if old_bytes.is_none() && self.data.len() >= limits.keys_max {
            return Err(KvError::TooManyKeys {
                keys_max: limits.keys_max as u64,
            });
        }
        let bytes = *self.bytes - old_bytes.unwrap_or(0) + key.len() + value_bytes;
        if bytes > limits.store_bytes_max {
            return Err(KvError::StoreFull {
                store_bytes_max: limits.store_bytes_max as u64,
            });
        }
        Ok(())
    }

    fn insert(&mut self, key: Bytes, value: Bytes) {
        *self.bytes += key.len() + value.len();
        if let Some(old) = self.data.insert(key.clone(), value) {
            *self.bytes -= key.len() + old.len();
        }
    }

    fn remove(&mut self, key: &Bytes) -> bool {
        match self.data.remove(key) {
            Some(old) => {
                *self.bytes -= key.len() + old.len();
                true
            }
            None => false,
        }
    }
}

/// Applies one operation to the store, or explains why it cannot.
fn apply_operation(
    limits: &KvLimits,
    store: &mut Store<'_>,
    operation: Operation,
) -> Result<Output, KvError> {
    let key_length_bytes = operation.key().len();
    if key_length_bytes > limits.key_bytes_max {
        return Err(KvError::KeyTooLarge {
            length_bytes: key_length_bytes as u64,
            max_bytes: limits.key_bytes_max as u64,
        });
    }
    let check_value = |length_bytes: usize| {
        if length_bytes > limits.value_bytes_max {
            return Err(KvError::ValueTooLarge {
                length_bytes: length_bytes as u64,
                max_bytes: limits.value_bytes_max as u64,
            });
        }
        Ok(())
    };
    match operation {
        Operation::Get { key } => Ok(Output::Value(store.data.get(&key).cloned())),
        Operation::Put { key, value } => {
            check_value(value.len())?;
            store.check_room(limits, &key, value.len())?;
            store.insert(key, value);
            Ok(Output::Written)
        }
        Operation::Delete { key } => Ok(Output::Deleted(store.remove(&key))),
        Operation::Append { key, value } => {
            let current_length_bytes = store.data.get(&key).map_or(0, Bytes::len);
            let length_bytes = current_length_bytes.saturating_add(value.len());
            check_value(length_bytes)?;
            store.check_room(limits, &key, length_bytes)?;
            let mut appended = Vec::with_capacity(length_bytes);
            if let Some(current) = store.data.get(&key) {
                appended.extend_from_slice(current);
            }
            appended.extend_from_slice(&value);
            store.insert(key, Bytes::from(appended));
            Ok(Output::Appended {
                length_bytes: length_bytes as u64,
            })
        }
        Operation::CompareAndSwap { key, expected, new } => {
            if let Some(new) = &new {
                check_value(new.len())?;
            }
            if store.data.get(&key) != expected.as_ref() {
                return Ok(Output::Swapped(false));
            }
            match new {
                Some(new) => {
                    store.check_room(limits, &key, new.len())?;
                    store.insert(key, new);
                }
                None => {
                    store.remove(&key);
                }
            }
            Ok(Output::Swapped(true))
        }
    }
}

/// The error for a request the session table refused to apply.
fn refusal_error(outcome: Outcome<Response>) -> KvError {
    match outcome {
        Outcome::ResponseDropped => KvError::ResponseDropped,
        Outcome::Stale => KvError::Stale,
        Outcome::SessionFull => KvError::SessionFull,
        Outcome::SessionExpired => KvError::SessionExpired,
        Outcome::UnknownSession => KvError::UnknownSession,
        Outcome::Misuse(error) => error.into(),
        // `execute` answers New and Duplicate itself; never handed here.
        Outcome::New | Outcome::Duplicate(_) => KvError::SessionRefused {
            reason: "unexpected session outcome".into(),
        },
    }
}

/// FNV-1a, 64 bits: a small, stable, non-cryptographic hash.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn the_store_stays_within_store_bytes_max_and_a_snapshot_beyond_it_is_refused() {
        let limits = KvLimits {
            store_bytes_max: 20,
            ..small_limits()
        };
        let mut machine = KvStateMachine::new(limits).unwrap();
        let mut slot = 0;
        let mut apply = |machine: &mut KvStateMachine, command: Command| {
            slot += 1;
            machine.apply(slot, &command.encode())
        };
        let Response::SessionOpened { client } = apply(&mut machine, Command::OpenSession) else {
            panic!()
        };
        let mut sequence = 0;
        let mut request = |operation| {
            sequence += 1;
            Command::Request {
                header: RequestHeader {
                    client,
                    sequence,
                    acknowledged_below: sequence,
                },
                operation,
            }
        };
        let put = |key: &str, value: &str| Operation::Put {
            key: bytes(key),
            value: bytes(value),
        };
        // 2 + 8 and 2 + 8: 20 bytes, the limit.
        for key in ["k1", "k2"] {
            let response = apply(&mut machine, request(put(key, "12345678")));
            assert_eq!(response, Response::Output(Output::Written));
        }
        let full = Response::Error(KvError::StoreFull {
            store_bytes_max: 20,
        });
        assert_eq!(apply(&mut machine, request(put("k3", "1"))), full);
        // Replacing a value counts the difference; growing past the limit is refused.
        assert_eq!(
            apply(&mut machine, request(put("k1", "1234567"))),
            Response::Output(Output::Written)
        );
        let append = Operation::Append {
            key: bytes("k1"),
            value: bytes("8"),
        };
        assert_eq!(
            apply(&mut machine, request(append)),
            Response::Output(Output::Appended { length_bytes: 8 })
        );
        assert_eq!(apply(&mut machine, request(put("k3", "1"))), full);
        // Deleting frees the key's bytes.
        let delete = Operation::Delete { key: bytes("k2") };
        assert_eq!(
            apply(&mut machine, request(delete)),
            Response::Output(Output::Deleted(true))
        );
        assert_eq!(
            apply(&mut machine, request(put("k3", "1"))),
            Response::Output(Output::Written)
        );
        assert_eq!(machine.data_bytes, 2 + 8 + 2 + 1);
        // A restored replica counts the same bytes; a snapshot above its limit is refused.
        let restored = KvStateMachine::restore(&machine.snapshot()).unwrap();
        assert_eq!(restored, machine);
        let mut tighter = machine.clone();
        tighter.limits.store_bytes_max = 12;
        assert_eq!(
            KvStateMachine::restore(&tighter.snapshot()),
            Err(SnapshotError::Invalid("more bytes than store_bytes_max"))
        );
    }

    fn small_limits() -> KvLimits {
        KvLimits {
            keys_max: 3,
            key_bytes_max: 8,
            value_bytes_max: 8,
            command_bytes_max: 256,
            store_bytes_max: 1024,
            sessions: SessionLimits {
                sessions_max: 2,
                responses_per_session_max: 4,
                response_bytes_per_session_max: 1024,
            },
        }
    }

    /// Applies commands at consecutive slots, like a replica's apply loop.
    struct Harness {
        machine: KvStateMachine,
        slot: Slot,
    }

    impl Harness {
        fn new(limits: KvLimits) -> Harness {
            Harness {
                machine: KvStateMachine::new(limits).unwrap(),
                slot: 0,
            }
        }

        fn apply(&mut self, command: &Command) -> Response {
            self.slot += 1;
            self.machine.apply(self.slot, &command.encode())
        }

        fn open(&mut self) -> ClientId {
            match self.apply(&Command::OpenSession) {
                Response::SessionOpened { client } => client,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn request(client: ClientId, sequence: u64, operation: Operation) -> Command {
        Command::Request {
            header: RequestHeader {
                client,
                sequence,
                acknowledged_below: sequence,
            },
            operation,
        }
    }

    fn output(output: Output) -> Response {
        Response::Output(output)
    }

    #[test]
    fn operations_behave_like_a_map() {
        let mut harness = Harness::new(KvLimits::default());
        let client = harness.open();
        let key = || bytes("k");
        let steps = [
            (Operation::Get { key: key() }, output(Output::Value(None))),
            (
                Operation::Put {
                    key: key(),
                    value: bytes("a"),
                },
                output(Output::Written),
            ),
            (
                Operation::Append {
                    key: key(),
                    value: bytes("bc"),
                },
                output(Output::Appended { length_bytes: 3 }),
            ),
            (
                Operation::Get { key: key() },
                output(Output::Value(Some(bytes("abc")))),
            ),
            (
                Operation::CompareAndSwap {
                    key: key(),
                    expected: Some(bytes("x")),
                    new: Some(bytes("y")),
                },
                output(Output::Swapped(false)),
            ),
            (
                Operation::CompareAndSwap {
                    key: key(),
                    expected: Some(bytes("abc")),
                    new: Some(bytes("y")),
                },
                output(Output::Swapped(true)),
            ),
            (
                Operation::Delete { key: key() },
                output(Output::Deleted(true)),
            ),
            (
                Operation::Delete { key: key() },
                output(Output::Deleted(false)),
            ),
            (
                Operation::CompareAndSwap {
                    key: key(),
                    expected: None,
                    new: Some(bytes("z")),
                },
                output(Output::Swapped(true)),
            ),
            (
                Operation::CompareAndSwap {
                    key: key(),
                    expected: Some(bytes("z")),
                    new: None,
                },
                output(Output::Swapped(true)),
            ),
            (Operation::Get { key: key() }, output(Output::Value(None))),
        ];
        for (sequence, (operation, expected)) in steps.into_iter().enumerate() {
            let response = harness.apply(&request(client, sequence as u64 + 1, operation));
            assert_eq!(response, expected, "step {sequence}");
        }
    }

    #[test]
    fn retried_request_applies_once_and_gets_the_same_answer() {
        let mut harness = Harness::new(KvLimits::default());
        let client = harness.open();
        let append = request(
            client,
            1,
            Operation::Append {
                key: bytes("k"),
                value: bytes("x"),
            },
        );
        for _ in 0..3 {
            assert_eq!(
                harness.apply(&append),
                output(Output::Appended { length_bytes: 1 })
            );
        }
        assert_eq!(harness.machine.get(b"k"), Some(&bytes("x")));
        // Once acknowledged, a late copy is stale and still not applied.
        let get = request(client, 2, Operation::Get { key: bytes("k") });
        assert_eq!(harness.apply(&get), output(Output::Value(Some(bytes("x")))));
        assert_eq!(harness.apply(&append), Response::Error(KvError::Stale));
        assert_eq!(harness.machine.get(b"k"), Some(&bytes("x")));
    }

    #[test]
    fn limits_are_enforced_and_rejections_are_cached() {
        let mut harness = Harness::new(small_limits());
        let client = harness.open();
        let too_long = request(
            client,
            1,
            Operation::Put {
                key: bytes("k"),
                value: bytes("123456789"),
            },
        );
        let error = Response::Error(KvError::ValueTooLarge {
            length_bytes: 9,
            max_bytes: 8,
        });
        assert_eq!(harness.apply(&too_long), error);
        assert_eq!(harness.apply(&too_long), error);
        let long_key = request(
            client,
            2,
            Operation::Get {
                key: bytes("123456789"),
            },
        );
        assert!(matches!(
            harness.apply(&long_key),
            Response::Error(KvError::KeyTooLarge { .. })
        ));
        for (sequence, key) in [(3, "a"), (4, "b"), (5, "c")] {
            let put = request(
                client,
                sequence,
                Operation::Put {
                    key: bytes(key),
                    value: bytes("v"),
                },
            );
            assert_eq!(harness.apply(&put), output(Output::Written));
        }
        let fourth = request(
            client,
            6,
            Operation::Put {
                key: bytes("d"),
                value: bytes("v"),
            },
        );
        assert_eq!(
            harness.apply(&fourth),
            Response::Error(KvError::TooManyKeys { keys_max: 3 })
        );
        let append = request(
            client,
            7,
            Operation::Append {
                key: bytes("a"),
                value: bytes("12345678"),
            },
        );
        assert!(matches!(
            harness.apply(&append),
            Response::Error(KvError::ValueTooLarge {
                length_bytes: 9,
                ..
            })
        ));
        assert_eq!(harness.machine.len(), 3);
    }

    #[test]
    fn sessions_expire_and_refuse_instead_of_reapplying() {
        let mut harness = Harness::new(small_limits());
        let first = harness.open();
        let put = request(
            first,
            1,
            Operation::Append {
                key: bytes("k"),
                value: bytes("x"),
            },
        );
        harness.apply(&put);
        harness.open();
        harness.open(); // evicts `first`, the least recently active
        assert_eq!(
            harness.apply(&put),
            Response::Error(KvError::SessionExpired)
        );
        assert_eq!(harness.machine.get(b"k"), Some(&bytes("x")));
        let slot = harness.slot;
        assert_eq!(
            harness.apply(&Command::ExpireSessions {
                inactive_before: slot + 1
            }),
            Response::SessionsExpired { count: 2 }
        );
        assert_eq!(
            harness.apply(&Command::CloseSession { client: first }),
            Response::SessionClosed { was_open: false }
        );
        assert_eq!(
            harness.apply(&request(
                ClientId(77),
                1,
                Operation::Get { key: bytes("k") }
            )),
            Response::Error(KvError::UnknownSession)
        );
    }

    #[test]
    fn malformed_commands_are_errors() {
        let mut harness = Harness::new(small_limits());
        assert!(matches!(
            harness.machine.apply(1, &[0xff, 0xff, 0xff]),
            Response::Error(KvError::Malformed { .. })
        ));
        let mut trailing = Command::OpenSession.encode();
        trailing.push(0);
        assert!(matches!(
            harness.machine.apply(2, &trailing),
            Response::Error(KvError::Malformed { .. })
        ));
        assert!(matches!(
            harness.machine.apply(3, &[0; 300]),
            Response::Error(KvError::CommandTooLarge { .. })
        ));
        assert_eq!(harness.machine.last_applied_slot(), 3);
    }

    #[test]
    fn snapshot_restores_an_equal_machine_and_rejects_corruption() {
        let mut harness = Harness::new(small_limits());
        let client = harness.open();
        harness.apply(&request(
            client,
            1,
            Operation::Put {
                key: bytes("k"),
                value: bytes("v"),
            },
        ));
        let snapshot = harness.machine.snapshot();
        let restored = KvStateMachine::restore(&snapshot).unwrap();
        assert_eq!(restored, harness.machine);
        assert_eq!(restored.digest(), harness.machine.digest());
        for position in 0..snapshot.len() {
            let mut corrupt = snapshot.clone();
            corrupt[position] ^= 0xa5;
            if let Ok(machine) = KvStateMachine::restore(&corrupt) {
                machine.check_invariants();
            }
        }
    }

    #[test]
    fn digest_tracks_state() {
        let mut first = Harness::new(KvLimits::default());
        let mut second = Harness::new(KvLimits::default());
        assert_eq!(first.machine.digest(), second.machine.digest());
        let client = first.open();
        second.open();
        assert_eq!(first.machine.digest(), second.machine.digest());
        let put = |value: &str| {
            request(
                client,
                1,
                Operation::Put {
                    key: bytes("k"),
                    value: bytes(value),
                },
            )
        };
        first.apply(&put("a"));
        second.apply(&put("b"));
        assert_ne!(first.machine.digest(), second.machine.digest());
    }

    #[test]
    fn debug_formats_are_readable() {
        let operation = Operation::CompareAndSwap {
            key: bytes("k\n"),
            expected: None,
            new: Some(bytes("v")),
        };
        assert_eq!(format!("{operation:?}"), "cas(\"k\\n\", absent -> \"v\")");
        assert_eq!(format!("{:?}", Output::Value(Some(bytes("v")))), "\"v\"");
    }

    proptest! {
        /// Arbitrary bytes never panic the state machine.
        #[test]
        fn arbitrary_bytes_never_panic(commands in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 1..50)) {
            let mut machine = KvStateMachine::new(small_limits()).unwrap();
            for (index, command) in commands.iter().enumerate() {
                machine.apply(index as u64 + 1, command);
            }
        }

        /// Valid commands with corrupted bytes never panic the state machine either.
        #[test]
        fn corrupted_commands_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            value_length_bytes in 0usize..12,
        ) {
            let mut machine = KvStateMachine::new(small_limits()).unwrap();
            machine.apply(1, &Command::OpenSession.encode());
            let command = Command::Request {
                header: RequestHeader { client: ClientId(1), sequence: 1, acknowledged_below: 1 },
                operation: Operation::CompareAndSwap {
                    key: bytes("key"),
                    expected: Some(Bytes::from(vec![7; value_length_bytes])),
                    new: None,
                },
            };
            let mut encoded = command.encode();
            for (position, mask) in flips {
                let length = encoded.len();
                encoded[position % length] ^= mask;
            }
            machine.apply(2, &encoded);
        }

        /// Two replicas applying the same commands, one of them restored from a snapshot
        /// half-way, end with the same digest.
        #[test]
        fn replicas_agree(operations in proptest::collection::vec(
            (0u64..3, 0u8..5, 0u8..3, 0u8..3), 1..60), cut in 0usize..60) {
            let mut first = Harness::new(small_limits());
            let mut second = Harness::new(small_limits());
            let client = first.open();
            second.open();
            for (step, (sequence, kind, key, value)) in operations.iter().enumerate() {
                if step == cut {
                    second.machine = KvStateMachine::restore(&second.machine.snapshot()).unwrap();
                }
                let key = Bytes::from(vec![b'a' + key]);
                let value = Bytes::from(vec![b'0' + value]);
                let operation = match kind {
                    0 => Operation::Get { key },
                    1 => Operation::Put { key, value },
                    2 => Operation::Delete { key },
                    3 => Operation::Append { key, value },
                    _ => Operation::CompareAndSwap { key, expected: Some(value.clone()), new: None },
                };
                let command = Command::Request {
                    header: RequestHeader { client, sequence: *sequence, acknowledged_below: 0 },
                    operation,
                };
                prop_assert_eq!(first.apply(&command), second.apply(&command));
                prop_assert_eq!(first.machine.digest(), second.machine.digest());
            }
        }
    }
}
