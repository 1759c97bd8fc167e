//! Client sessions: exactly-once application of retried requests.
//!
//! Paxos chooses every command it is given, duplicates included: a client that times out and
//! sends its request again may see it chosen twice, in two slots. A [`SessionTable`] sits next to
//! the application's state machine and makes the second copy harmless: it remembers, per client,
//! which sequence numbers have been applied and what they answered, so a retry gets the cached
//! answer instead of being applied again.
//!
//! # Replicated, deterministic
//!
//! The table is part of the replicated state. It must be changed only while applying chosen
//! entries, in slot order, on every replica alike, and saved in the same snapshot as the state
//! machine it guards. It never reads a clock: "least recently used" means the smallest logical
//! index (usually the slot) passed by the caller, and idle sessions expire only when the
//! application writes an explicit [`SessionTable::expire_inactive`] command into the log.
//!
//! # Protocol
//!
//! 1. A client first has a session opened for it ([`SessionTable::open`], applied from a
//!    chosen "open session" command). The table allocates the [`ClientId`]; ids are never
//!    reused, which is what lets the table tell an expired session from a new one.
//! 2. Each request carries a [`RequestHeader`]: the client id, a sequence number unique within
//!    the session, and `acknowledged_below`, the client's statement that it has received every
//!    response for sequence numbers below it. Requests may be pipelined and may be chosen in any
//!    order; sequence numbers need not be contiguous.
//! 3. When the request's entry is applied, the application calls [`SessionTable::check`]; on
//!    [`Outcome::New`] it applies the command and hands the response to
//!    [`SessionTable::record`]. [`SessionTable::execute`] does both around a closure.
//!
//! # The contract
//!
//! - A request is applied **at most once**, always, whatever is duplicated, reordered or lost.
//! - A retried request is applied **exactly once** and every copy gets **the same response** as
//!   long as its session has not been closed, evicted or expired, and the client has not
//!   acknowledged it. Once the session is gone, a request gets [`Outcome::SessionExpired`]
//!   instead of being applied a second time; the client must open a new session and may not
//!   know whether its last unacknowledged requests took effect.
//! - Bounds are deterministic. Past [`SessionLimits::sessions_max`], opening a session evicts
//!   the least recently active one. Past [`SessionLimits::responses_per_session_max`]
//!   unacknowledged requests, a new request is refused with [`Outcome::SessionFull`] (not
//!   applied). Past [`SessionLimits::response_bytes_per_session_max`] cached bytes, the oldest
//!   responses are dropped: those requests stay applied once, and a retry of one gets
//!   [`Outcome::ResponseDropped`].
//!
//! A client keeps its pipeline within `responses_per_session_max` and acknowledges promptly;
//! then it never sees `SessionFull`.

use crate::error::ConfigError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use thiserror::Error;

/// The most client ids a [`SessionTable`] allocates in its lifetime: a deserialized table
/// whose next id is above it is refused (no real table opens 2^62 sessions, and a table
/// claiming to be near the end of the id space could not open sessions for long).
pub const CLIENT_IDS_MAX: u64 = 1 << 62;

/// Identifies a client session. Allocated by [`SessionTable::open`], starting at 1, never reused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "c{}", self.0)
    }
}

/// What every request says about itself so that it can be deduplicated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestHeader {
    /// The session the request belongs to.
    pub client: ClientId,
    /// Unique within the session; a retry reuses the sequence number of the original.
    pub sequence: u64,
    /// The client has received the responses of every sequence number below this one; the
    /// table may forget them. Only ever raised: a lower value than a previous request's is
    /// ignored.
    pub acknowledged_below: u64,
}

/// The size a cached response counts against [`SessionLimits::response_bytes_per_session_max`].
pub trait ResponseSize {
    /// Approximate heap and inline size of the response, in bytes.
    fn size_bytes(&self) -> usize;
}

impl ResponseSize for Bytes {
    fn size_bytes(&self) -> usize {
        self.len()
    }
}

impl ResponseSize for Vec<u8> {
    fn size_bytes(&self) -> usize {
        self.len()
    }
}

impl ResponseSize for () {
    fn size_bytes(&self) -> usize {
        0
    }
}

/// The bounds of a [`SessionTable`]. Part of the replicated state: every replica must use the
/// same limits, or their tables diverge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Open sessions; opening one more evicts the least recently active session.
    pub sessions_max: usize,
    /// Applied but unacknowledged requests remembered per session (cached response or not);
    /// a new request past it is refused with [`Outcome::SessionFull`].
    pub responses_per_session_max: usize,
    /// Cached response bytes per session; past it the oldest responses are dropped.
    pub response_bytes_per_session_max: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            sessions_max: 4096,
            responses_per_session_max: 64,
            response_bytes_per_session_max: 1024 * 1024,
        }
    }
}

impl SessionLimits {
    /// Checks that every limit is usable (all must be at least 1).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sessions_max == 0 {
            return Err(ConfigError::new("sessions_max", "must be at least 1"));
        }
        if self.responses_per_session_max == 0 {
            return Err(ConfigError::new(
                "responses_per_session_max",
                "must be at least 1",
            ));
        }
        if self.response_bytes_per_session_max == 0 {
            return Err(ConfigError::new(
                "response_bytes_per_session_max",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What to do with a request, as decided by [`SessionTable::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// Never applied: apply it now, then call [`SessionTable::record`] with its response.
    New,
    /// Already applied: do not apply it again; answer with this cached response.
    Duplicate(R),
    /// Already applied, but its response was dropped to keep the session under
    /// [`SessionLimits::response_bytes_per_session_max`]. Do not apply it again; tell the client
    /// the request took effect and its result is lost.
    ResponseDropped,
    /// The sequence number is below the client's acknowledged watermark: the client already
    /// has the response, so this is a delayed copy. Do not apply it; the answer is ignored.
    Stale,
    /// The session already remembers [`SessionLimits::responses_per_session_max`] applied,
    /// unacknowledged requests. Not applied; the client should acknowledge responses (or wait
    /// for outstanding ones) and retry.
    SessionFull,
    /// The session was opened once but has since been closed, evicted or expired. Not applied;
    /// the client must open a new session. Its unacknowledged requests may or may not have
    /// taken effect.
    SessionExpired,
    /// No session with this id was ever opened (a forged or corrupted id). Not applied.
    UnknownSession,
    /// The call broke the table's protocol (an index below one already passed in, or a
    /// `New` request still waiting for its [`record`](SessionTable::record)): a bug in the
    /// caller, not a fault of the request. Nothing changed; the request was not applied.
    Misuse(SessionError),
}

/// A [`SessionTable`] call broke the table's protocol: a bug in the caller. The table is
/// unchanged. Logical indices only rise (pass each entry's slot, in slot order), and a
/// [`check`](SessionTable::check) answering [`Outcome::New`] must be followed by the
/// [`record`](SessionTable::record) of the same request before any other call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SessionError {
    /// `index` is below `last`, an index already passed in.
    #[error("logical index {index} is below {last}, an index already passed in")]
    IndexBehind {
        /// The index given.
        index: u64,
        /// The highest index passed in so far.
        last: u64,
    },
    /// A `check` answered [`Outcome::New`] for `pending`, whose `record` has not come yet.
    #[error("request {pending:?} awaits its record; record it before any other call")]
    AwaitingRecord {
        /// The request waiting for its record.
        pending: RequestHeader,
    },
    /// `record` of a request that the last `check` did not answer [`Outcome::New`] for.
    #[error("record of {request:?}, which no check answered New for")]
    NotAwaited {
        /// The request given to `record`.
        request: RequestHeader,
    },
    /// [`CLIENT_IDS_MAX`] client ids have been allocated: no session can be opened (only a
    /// corrupt or forged snapshot gets here).
    #[error("client ids exhausted (at most CLIENT_IDS_MAX are allocated)")]
    IdsExhausted,
}

/// The result of [`SessionTable::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedSession {
    /// The new session's id, to be returned to the client.
    pub client: ClientId,
    /// The least recently active session, evicted to stay within
    /// [`SessionLimits::sessions_max`], if the table was full.
    pub evicted: Option<ClientId>,
}

/// A serialized [`SessionTable`] breaks an invariant: the snapshot is corrupt or was written by
/// incompatible code. Do not load it; fetch a snapshot from another replica.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid session table state: {reason}")]
pub struct InvalidSessionState {
    /// The broken invariant.
    pub reason: &'static str,
}

/// One client's session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Session<R> {
    /// The logical index of the last request (or the open) seen from this client. Key of the
    /// least-recently-used order.
    last_active_index: u64,
    /// Every response below this sequence number has been received by the client and is
    /// forgotten. Only rises.
    acknowledged_below: u64,
    /// Applied requests at or above `acknowledged_below`, with their cached response, or
    /// `None` when the response was dropped for size. At most `responses_per_session_max`.
    applied: BTreeMap<u64, Option<R>>,
    /// Sum of the sizes of the cached responses in `applied`; at most
    /// `response_bytes_per_session_max`.
    cached_bytes: usize,
}

/// The deduplication table: per client, the applied sequence numbers and their responses.
///
/// `R` is the response type cached for retries; it must be cheap to clone (e.g. [`Bytes`]).
/// See the [module documentation](self) for the protocol and the exactly-once contract.
///
/// Serializes (for snapshots) to a canonical form: equal tables encode to equal bytes, so a
/// digest of the encoding compares replicas. Deserializing validates every invariant.
/// Serializing between a `New` [`check`](Self::check) and its [`record`](Self::record) is a
/// programming error (the table is mid-apply): the serializer's error, nothing written.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    try_from = "SessionTableState<R>",
    bound(deserialize = "R: Deserialize<'de> + ResponseSize")
)]
pub struct SessionTable<R = Bytes> {
    limits: SessionLimits,
    /// Open sessions, by id.
    sessions: BTreeMap<ClientId, Session<R>>,
    /// The same sessions ordered by (last_active_index, client): the first is evicted first.
    /// Always holds exactly one pair per session.
    by_activity: BTreeSet<(u64, ClientId)>,
    /// The id the next `open` allocates. Every id below it has been allocated once.
    next_client: u64,
    /// The highest logical index passed in so far; indices never go backwards.
    last_index: u64,
    /// A request `check` answered `New` for and `record` has not yet completed. Transient:
    /// between two calls during one apply, never in a snapshot.
    awaiting_record: Option<RequestHeader>,
}

/// The serialized form of a [`SessionTable`], as read back.
#[derive(Deserialize)]
struct SessionTableState<R> {
    limits: SessionLimits,
    next_client: u64,
    last_index: u64,
    sessions: BTreeMap<ClientId, Session<R>>,
}

/// The serialized form of a [`SessionTable`], as written: the same fields as
/// [`SessionTableState`], in the same order, borrowed so that saving copies nothing.
#[derive(Serialize)]
struct SessionTableStateRef<'a, R> {
    limits: &'a SessionLimits,
    next_client: u64,
    last_index: u64,
    sessions: &'a BTreeMap<ClientId, Session<R>>,
}

impl<R: Serialize> Serialize for SessionTable<R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.awaiting_record.is_some() {
            return Err(serde::ser::Error::custom(
                "a session table cannot be saved between check and record",
            ));
        }
        SessionTableStateRef {
            limits: &self.limits,
            next_client: self.next_client,
            last_index: self.last_index,
            sessions: &self.sessions,
        }
        .serialize(serializer)
    }
}

impl<R: ResponseSize> TryFrom<SessionTableState<R>> for SessionTable<R> {
    type Error = InvalidSessionState;

    fn try_from(state: SessionTableState<R>) -> Result<SessionTable<R>, InvalidSessionState> {
        let invalid = |reason| Err(InvalidSessionState { reason });
        if state.limits.validate().is_err() {
            return invalid("limits out of range");
        }
        if state.next_client == 0 {
            return invalid("next client id is zero");
        }
        if state.next_client > CLIENT_IDS_MAX {
            // No real table opens 2^62 sessions; a snapshot that says so would run out of ids
            // to allocate.
            return invalid("next client id above CLIENT_IDS_MAX");
        }
        if state.sessions.len() > state.limits.sessions_max {
            return invalid("more sessions than sessions_max");
        }
        let mut by_activity = BTreeSet::new();
        for (client, session) in &state.sessions {
            if client.0 == 0 || client.0 >= state.next_client {
                return invalid("session id was never allocated");
            }
            if session.last_active_index > state.last_index {
                return invalid("session active after the last index");
            }
            if session.applied.len() > state.limits.responses_per_session_max {
                return invalid("more responses than responses_per_session_max");
            }
            let mut cached_bytes: usize = 0;
            for (sequence, response) in &session.applied {
                if *sequence < session.acknowledged_below {
                    return invalid("response kept below the acknowledged watermark");
                }
                if let Some(response) = response {
                    cached_bytes = cached_bytes.saturating_add(response.size_bytes());
                }
            }
            if cached_bytes != session.cached_bytes {
                return invalid("cached byte count does not match the responses");
            }
            if cached_bytes > state.limits.response_bytes_per_session_max {
                return invalid("more cached bytes than response_bytes_per_session_max");
            }
            by_activity.insert((session.last_active_index, *client));
        }
        let table = SessionTable {
            limits: state.limits,
            sessions: state.sessions,
            by_activity,
            next_client: state.next_client,
            last_index: state.last_index,
            awaiting_record: None,
        };
        table.check_invariants();
        Ok(table)
    }
}

impl<R: Clone + ResponseSize> SessionTable<R> {
    /// Creates an empty table.
    ///
    /// # Errors
    /// The [`ConfigError`] of [`SessionLimits::validate`] if `limits` is invalid.
    pub fn new(limits: SessionLimits) -> Result<SessionTable<R>, ConfigError> {
        limits.validate()?;
        Ok(SessionTable {
            limits,
            sessions: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            next_client: 1,
            last_index: 0,
            awaiting_record: None,
        })
    }

    /// The limits the table was created with.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// The number of open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `client` has an open session.
    pub fn contains(&self, client: ClientId) -> bool {
        self.sessions.contains_key(&client)
    }

    /// The highest logical index passed to the table so far.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Opens a session at logical `index` (the slot of the "open session" command) and
    /// allocates its id. If [`SessionLimits::sessions_max`] sessions are open, the least recently
    /// active one (smallest last index, then smallest id) is evicted first.
    ///
    /// # Errors
    /// [`SessionError::IndexBehind`] if `index` is below an index already passed in,
    /// [`SessionError::AwaitingRecord`] between a `New` `check` and its `record`,
    /// [`SessionError::IdsExhausted`] once [`CLIENT_IDS_MAX`] ids are allocated. Nothing
    /// changed.
    pub fn open(&mut self, index: u64) -> Result<OpenedSession, SessionError> {
        self.check_index(index)?;
        // An id at CLIENT_IDS_MAX would make a table (and its snapshot) that no longer loads.
        if self.next_client >= CLIENT_IDS_MAX {
            return Err(SessionError::IdsExhausted);
        }
        self.last_index = index;
        let mut evicted = None;
        if self.sessions.len() >= self.limits.sessions_max {
            let oldest = self.by_activity.pop_first();
            let (_, oldest_client) = oldest.expect("a full table has a least recent session");
            let removed = self.sessions.remove(&oldest_client);
            assert!(removed.is_some());
            evicted = Some(oldest_client);
        }
        let client = ClientId(self.next_client);
        // Below CLIENT_IDS_MAX (checked above): no overflow.
        self.next_client += 1;
        let session = Session {
            last_active_index: index,
            acknowledged_below: 0,
            applied: BTreeMap::new(),
            cached_bytes: 0,
        };
        self.sessions.insert(client, session);
        self.by_activity.insert((index, client));
        self.check_invariants();
        Ok(OpenedSession { client, evicted })
    }

    /// Closes `client`'s session at the client's request (or an operator's): its cached
    /// responses are forgotten and its later requests get [`Outcome::SessionExpired`].
    /// Returns whether the session was open.
    ///
    /// # Errors
    /// [`SessionError::AwaitingRecord`] between a `New` `check` and its `record`; nothing
    /// changed.
    pub fn close(&mut self, client: ClientId) -> Result<bool, SessionError> {
        self.check_not_awaiting()?;
        let Some(session) = self.sessions.remove(&client) else {
            return Ok(false);
        };
        let removed = self
            .by_activity
            .remove(&(session.last_active_index, client));
        debug_assert!(removed);
        self.check_invariants();
        Ok(true)
    }

    /// Expires every session whose last activity is below `before_index`. Returns how many.
    ///
    /// The table never decides this on its own: the application (typically the leader, from
    /// its clock) proposes an "expire sessions inactive before slot X" command and applies it
    /// here, so every replica expires the same sessions.
    ///
    /// # Errors
    /// [`SessionError::AwaitingRecord`] between a `New` `check` and its `record`; nothing
    /// changed.
    pub fn expire_inactive(&mut self, before_index: u64) -> Result<usize, SessionError> {
        self.check_not_awaiting()?;
        let mut expired = 0;
        // Bounded: each iteration removes one of at most `sessions_max` sessions.
        for _ in 0..self.limits.sessions_max {
            let Some(&(last_active_index, client)) = self.by_activity.first() else {
                break;
            };
            if last_active_index >= before_index {
                break;
            }
            self.by_activity.pop_first();
            let removed = self.sessions.remove(&client);
            debug_assert!(removed.is_some());
            expired += 1;
        }
        self.check_invariants();
        Ok(expired)
    }

    /// Decides what to do with a request applied at logical `index` (its slot).
    ///
    /// First raises the session's acknowledged watermark to `request.acknowledged_below`
    /// (forgetting the responses below it) and marks the session active at `index`; then
    /// answers. On [`Outcome::New`] the caller must apply the request and call
    /// [`record`](Self::record) before any other call on the table. No other outcome needs a
    /// follow-up call.
    ///
    /// A call that breaks the protocol (`index` below an index already passed in, or a `New`
    /// request still waiting for its `record`) is answered [`Outcome::Misuse`] and changes
    /// nothing.
    pub fn check(&mut self, request: RequestHeader, index: u64) -> Outcome<R> {
        if let Err(error) = self.check_index(index) {
            return Outcome::Misuse(error);
        }
        self.last_index = index;
        let client = request.client;
        let Some(session) = self.sessions.get_mut(&client) else {
            if client.0 == 0 || client.0 >= self.next_client {
                return Outcome::UnknownSession;
            }
            return Outcome::SessionExpired;
        };

        let previous_index = session.last_active_index;
        session.last_active_index = index;
        let moved = self.by_activity.remove(&(previous_index, client));
        debug_assert!(moved);
        self.by_activity.insert((index, client));

        if request.acknowledged_below > session.acknowledged_below {
            session.acknowledged_below = request.acknowledged_below;
            let kept = session.applied.split_off(&request.acknowledged_below);
            let forgotten = std::mem::replace(&mut session.applied, kept);
            for response in forgotten.into_values().flatten() {
                session.cached_bytes -= response.size_bytes();
            }
        }

        let outcome = if request.sequence < session.acknowledged_below {
            Outcome::Stale
        } else if let Some(cached) = session.applied.get(&request.sequence) {
            match cached {
                Some(response) => Outcome::Duplicate(response.clone()),
                None => Outcome::ResponseDropped,
            }
        } else if session.applied.len() >= self.limits.responses_per_session_max {
            Outcome::SessionFull
        } else {
            self.awaiting_record = Some(request);
            Outcome::New
        };
        self.check_invariants();
        outcome
    }

    /// Records the response of a request that [`check`](Self::check) just answered
    /// [`Outcome::New`] for, so that its retries get this response. Drops the session's oldest
    /// cached responses if it now caches more than
    /// [`SessionLimits::response_bytes_per_session_max`] bytes (a response larger than that is
    /// not cached at all).
    ///
    /// Deterministic rejections computed by the application (say, a value too large) must be
    /// recorded too, so that every retry gets the same answer.
    ///
    /// # Errors
    /// [`SessionError::NotAwaited`] unless `request` is exactly the request of the last `New`
    /// outcome (with no other call since); nothing changed.
    pub fn record(&mut self, request: RequestHeader, response: R) -> Result<(), SessionError> {
        if self.awaiting_record != Some(request) {
            return Err(SessionError::NotAwaited { request });
        }
        // Invariant: `check` answered New for it and no call came between (every other call
        // is refused while a record is awaited), so its session is open and has room.
        let Some(session) = self.sessions.get_mut(&request.client) else {
            return Err(SessionError::NotAwaited { request });
        };
        self.awaiting_record = None;
        let bytes_max = self.limits.response_bytes_per_session_max;
        debug_assert!(request.sequence >= session.acknowledged_below);
        debug_assert!(session.applied.len() < self.limits.responses_per_session_max);

        let size_bytes = response.size_bytes();
        let cached = if size_bytes <= bytes_max {
            session.cached_bytes += size_bytes;
            Some(response)
        } else {
            None
        };
        let previous = session.applied.insert(request.sequence, cached);
        debug_assert!(previous.is_none(), "a sequence number is applied once");

        // Bounded by the number of responses in the session.
        for response in session.applied.values_mut() {
            if session.cached_bytes <= bytes_max {
                break;
            }
            if let Some(dropped) = response.take() {
                session.cached_bytes -= dropped.size_bytes();
            }
        }
        debug_assert!(session.cached_bytes <= bytes_max);
        self.check_invariants();
        Ok(())
    }

    /// Applies a request at most once: [`check`](Self::check), then on [`Outcome::New`] runs
    /// `apply` and [`record`](Self::record)s its response.
    ///
    /// Returns `Ok(response)` with the fresh response for a new request or the cached one for
    /// a duplicate; `Err(outcome)` with the refusal otherwise (`apply` was not run, and must
    /// not be: see [`Outcome`] for what to tell the client; [`Outcome::Misuse`] is a bug of
    /// the caller).
    pub fn execute(
        &mut self,
        request: RequestHeader,
        index: u64,
        apply: impl FnOnce() -> R,
    ) -> Result<R, Outcome<R>> {
        match self.check(request, index) {
            Outcome::New => {
                let response = apply();
                match self.record(request, response.clone()) {
                    Ok(()) => Ok(response),
                    Err(error) => Err(Outcome::Misuse(error)),
                }
            }
            Outcome::Duplicate(response) => Ok(response),
            refused => Err(refused),
        }
    }

    /// Refuses a call while a `New` request awaits its record.
    fn check_not_awaiting(&self) -> Result<(), SessionError> {
        match self.awaiting_record {
            Some(pending) => Err(SessionError::AwaitingRecord { pending }),
            None => Ok(()),
        }
    }

    /// Refuses an index below one already passed in (or a call while a record is awaited).
    fn check_index(&self, index: u64) -> Result<(), SessionError> {
        self.check_not_awaiting()?;
        if index < self.last_index {
            return Err(SessionError::IndexBehind {
                index,
                last: self.last_index,
            });
        }
        Ok(())
    }
}

impl<R> SessionTable<R> {
    /// Cheap structural invariants, checked after every change in debug builds.
    fn check_invariants(&self) {
        debug_assert_eq!(self.sessions.len(), self.by_activity.len());
        debug_assert!(self.sessions.len() <= self.limits.sessions_max);
        debug_assert!(self.next_client >= 1);
        if cfg!(debug_assertions) {
            for (client, session) in &self.sessions {
                assert!(client.0 < self.next_client);
                assert!(session.last_active_index <= self.last_index);
                assert!(self
                    .by_activity
                    .contains(&(session.last_active_index, *client)));
                assert!(session.applied.len() <= self.limits.responses_per_session_max);
                assert!(session.cached_bytes <= self.limits.response_bytes_per_session_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn limits(sessions_max: usize, responses_max: usize, bytes_max: usize) -> SessionLimits {
        SessionLimits {
            sessions_max,
            responses_per_session_max: responses_max,
            response_bytes_per_session_max: bytes_max,
        }
    }

    fn header(client: ClientId, sequence: u64, acknowledged_below: u64) -> RequestHeader {
        RequestHeader {
            client,
            sequence,
            acknowledged_below,
        }
    }

    fn response(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn new_then_duplicate_returns_the_cached_response() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        let client = table.open(1).unwrap().client;
        assert_eq!(client, ClientId(1));
        let request = header(client, 1, 0);
        assert_eq!(table.check(request, 2), Outcome::New);
        table.record(request, response("one")).unwrap();
        assert_eq!(table.check(request, 3), Outcome::Duplicate(response("one")));
        assert_eq!(table.check(request, 4), Outcome::Duplicate(response("one")));
    }

    #[test]
    fn acknowledged_requests_become_stale_and_are_forgotten() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        let client = table.open(1).unwrap().client;
        for sequence in 1..=3 {
            let request = header(client, sequence, 1);
            assert_eq!(table.check(request, 1 + sequence), Outcome::New);
            table.record(request, response("x")).unwrap();
        }
        // The client has received 1 and 2.
        let request = header(client, 4, 3);
        assert_eq!(table.check(request, 10), Outcome::New);
        table.record(request, response("four")).unwrap();
        assert_eq!(table.check(header(client, 1, 0), 11), Outcome::Stale);
        assert_eq!(table.check(header(client, 2, 0), 11), Outcome::Stale);
        assert_eq!(
            table.check(header(client, 3, 0), 11),
            Outcome::Duplicate(response("x"))
        );
        assert_eq!(table.sessions[&client].applied.len(), 2);
        assert_eq!(table.sessions[&client].cached_bytes, 5);
    }

    #[test]
    fn pipelined_requests_apply_in_any_order() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        let client = table.open(1).unwrap().client;
        for sequence in [5, 3, 4, 1, 2] {
            let request = header(client, sequence, 1);
            assert_eq!(table.check(request, 2), Outcome::New);
            table
                .record(request, response(&sequence.to_string()))
                .unwrap();
        }
        for sequence in 1..=5 {
            assert_eq!(
                table.check(header(client, sequence, 1), 3),
                Outcome::Duplicate(response(&sequence.to_string()))
            );
        }
    }

    #[test]
    fn full_session_refuses_new_requests_until_acknowledged() {
        let mut table = SessionTable::<Bytes>::new(limits(4, 2, 1024)).unwrap();
        let client = table.open(1).unwrap().client;
        for sequence in 1..=2 {
            let request = header(client, sequence, 1);
            assert_eq!(table.check(request, 2), Outcome::New);
            table.record(request, response("r")).unwrap();
        }
        assert_eq!(table.check(header(client, 3, 1), 3), Outcome::SessionFull);
        // A retry of an applied request is still answered.
        assert_eq!(
            table.check(header(client, 2, 1), 3),
            Outcome::Duplicate(response("r"))
        );
        // Acknowledging 1 frees room for 3.
        let request = header(client, 3, 2);
        assert_eq!(table.check(request, 4), Outcome::New);
        table.record(request, response("three")).unwrap();
    }

    #[test]
    fn byte_bound_drops_oldest_responses_but_never_reapplies() {
        let mut table = SessionTable::<Bytes>::new(limits(4, 8, 10)).unwrap();
        let client = table.open(1).unwrap().client;
        for (sequence, text) in [(1, "aaaa"), (2, "bbbb"), (3, "cccc")] {
            let request = header(client, sequence, 1);
            assert_eq!(table.check(request, 2), Outcome::New);
            table.record(request, response(text)).unwrap();
        }
        assert_eq!(
            table.check(header(client, 1, 1), 3),
            Outcome::ResponseDropped
        );
        assert_eq!(
            table.check(header(client, 2, 1), 3),
            Outcome::Duplicate(response("bbbb"))
        );
        // A response above the bound is never cached.
        let request = header(client, 4, 1);
        assert_eq!(table.check(request, 4), Outcome::New);
        table
            .record(request, response("this is far too long"))
            .unwrap();
        assert_eq!(table.check(request, 5), Outcome::ResponseDropped);
        assert_eq!(table.sessions[&client].cached_bytes, 8);
    }

    #[test]
    fn least_recently_active_session_is_evicted_and_expires() {
        let mut table = SessionTable::<Bytes>::new(limits(2, 4, 64)).unwrap();
        let first = table.open(1).unwrap().client;
        let second = table.open(2).unwrap().client;
        // `first` is active again at 3, so `second` is the least recent.
        let request = header(first, 1, 1);
        assert_eq!(table.check(request, 3), Outcome::New);
        table.record(request, response("r")).unwrap();
        let opened = table.open(4).unwrap();
        assert_eq!(opened.evicted, Some(second));
        assert_eq!(
            table.check(header(second, 1, 1), 5),
            Outcome::SessionExpired
        );
        assert_eq!(
            table.check(header(ClientId(99), 1, 1), 5),
            Outcome::UnknownSession
        );
        assert_eq!(
            table.check(header(ClientId(0), 1, 1), 5),
            Outcome::UnknownSession
        );
        assert!(table.contains(first));
        assert!(table.contains(opened.client));
    }

    #[test]
    fn close_and_expire_inactive() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        let clients: Vec<ClientId> = (1..=4)
            .map(|index| table.open(index).unwrap().client)
            .collect();
        assert!(table.close(clients[0]).unwrap());
        assert!(!table.close(clients[0]).unwrap());
        assert_eq!(
            table.check(header(clients[0], 1, 1), 5),
            Outcome::SessionExpired
        );
        assert_eq!(table.expire_inactive(4).unwrap(), 2);
        assert_eq!(table.len(), 1);
        assert!(table.contains(clients[3]));
        assert_eq!(
            table.check(header(clients[1], 1, 1), 6),
            Outcome::SessionExpired
        );
    }

    #[test]
    fn execute_runs_the_closure_once() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        let client = table.open(1).unwrap().client;
        let mut runs = 0;
        for index in 2..5 {
            let result = table.execute(header(client, 7, 1), index, || {
                runs += 1;
                response("done")
            });
            assert_eq!(result, Ok(response("done")));
        }
        assert_eq!(runs, 1);
    }

    #[test]
    fn record_without_check_is_misuse() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        let client = table.open(1).unwrap().client;
        let request = header(client, 1, 1);
        assert_eq!(
            table.record(request, response("r")),
            Err(SessionError::NotAwaited { request })
        );
    }

    #[test]
    fn index_going_backwards_is_misuse() {
        let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
        table.open(5).unwrap();
        let before = table.clone();
        assert_eq!(
            table.open(4),
            Err(SessionError::IndexBehind { index: 4, last: 5 })
        );
        assert_eq!(table, before);
    }

    #[test]
    fn snapshot_round_trips_and_rejects_corruption() {
        let mut table = SessionTable::<Bytes>::new(limits(3, 4, 64)).unwrap();
        let client = table.open(1).unwrap().client;
        let request = header(client, 1, 1);
        assert_eq!(table.check(request, 2), Outcome::New);
        table.record(request, response("one")).unwrap();
        table.open(3).unwrap();

        // Untrusted bytes are decoded with a limit: bincode allocates a byte string's
        // declared length before reading it.
        let config = bincode::config::standard().with_limit::<4096>();
        let encoded = bincode::serde::encode_to_vec(&table, config).unwrap();
        let (decoded, _): (SessionTable<Bytes>, usize) =
            bincode::serde::decode_from_slice(&encoded, config).unwrap();
        assert_eq!(decoded, table);
        let again = bincode::serde::encode_to_vec(&decoded, config).unwrap();
        assert_eq!(again, encoded);

        // Flipping any single byte either fails to decode, or decodes to a valid table.
        for position in 0..encoded.len() {
            let mut corrupt = encoded.clone();
            corrupt[position] ^= 0x5a;
            let result: Result<(SessionTable<Bytes>, usize), _> =
                bincode::serde::decode_from_slice(&corrupt, config);
            if let Ok((table, _)) = result {
                table.check_invariants();
            }
        }
    }

    /// One client's view: which requests it has sent and what it has received.
    #[derive(Default)]
    struct ClientModel {
        received: BTreeSet<u64>,
    }

    impl ClientModel {
        fn acknowledged_below(&self) -> u64 {
            // Contiguous prefix of received responses, starting at 1.
            let mut below = 1;
            while self.received.contains(&below) {
                below += 1;
            }
            below
        }
    }

    proptest! {
        /// Random deliveries of requests (duplicated, reordered, interleaved with evictions,
        /// closes and expirations) apply each (client, sequence) at most once, and every copy
        /// answered from the table gets the response of the single application.
        #[test]
        fn random_retries_apply_at_most_once(
            sessions_max in 1usize..4,
            responses_max in 1usize..5,
            bytes_max in 1usize..24,
            deliveries in proptest::collection::vec(
                (0usize..5, 1u64..8, any::<bool>(), 0u8..20), 1..200),
        ) {
            let mut table = SessionTable::<Bytes>::new(limits(sessions_max, responses_max, bytes_max)).unwrap();
            let mut clients: Vec<ClientId> = Vec::new();
            let mut models: HashMap<ClientId, ClientModel> = HashMap::new();
            let mut applied: HashMap<(ClientId, u64), Bytes> = HashMap::new();
            let mut index = 0;
            for (client_choice, sequence, acknowledge, action) in deliveries {
                index += 1;
                if clients.is_empty() || action == 0 {
                    let client = table.open(index).unwrap().client;
                    clients.push(client);
                    models.insert(client, ClientModel::default());
                    continue;
                }
                let client = clients[client_choice % clients.len()];
                if action == 1 {
                    table.close(client).unwrap();
                    continue;
                }
                if action == 2 {
                    table.expire_inactive(index.saturating_sub(10)).unwrap();
                    continue;
                }
                let model = models.get_mut(&client).unwrap();
                // A client may send a stale watermark (a delayed copy), never a false one.
                let acknowledged_below = if acknowledge { model.acknowledged_below() } else { 0 };
                let request = header(client, sequence, acknowledged_below);
                // Responses vary in size so the byte bound drops some.
                let fresh = Bytes::from(format!("{}:{}:{}", client.0, sequence, index).repeat(1 + (index as usize % 3)));
                match table.execute(request, index, || fresh.clone()) {
                    Ok(response) => {
                        match applied.get(&(client, sequence)) {
                            Some(first) => prop_assert_eq!(first, &response),
                            None => {
                                prop_assert_eq!(&response, &fresh);
                                applied.insert((client, sequence), response);
                            }
                        }
                        model.received.insert(sequence);
                    }
                    Err(Outcome::Stale) => {
                        prop_assert!(sequence < model.acknowledged_below());
                    }
                    Err(Outcome::ResponseDropped) => {
                        prop_assert!(applied.contains_key(&(client, sequence)));
                        model.received.insert(sequence);
                    }
                    Err(Outcome::SessionFull) => {
                        prop_assert!(!applied.contains_key(&(client, sequence)));
                    }
                    Err(Outcome::SessionExpired) => prop_assert!(!table.contains(client)),
                    Err(other) => prop_assert!(false, "unexpected outcome {:?}", other),
                }
            }
        }

        /// Without evictions every request is applied exactly once, whatever the order and
        /// duplication of its copies.
        #[test]
        fn every_request_applies_exactly_once_without_eviction(
            order in proptest::collection::vec((0u64..3, 1u64..6), 1..120),
        ) {
            let mut table = SessionTable::<Bytes>::new(limits(8, 8, 1024)).unwrap();
            let clients: Vec<ClientId> = (0..3).map(|index| table.open(index).unwrap().client).collect();
            let mut runs: HashMap<(ClientId, u64), u32> = HashMap::new();
            for (step, (client_index, sequence)) in order.iter().enumerate() {
                let client = clients[*client_index as usize];
                let result = table.execute(header(client, *sequence, 1), 3 + step as u64, || {
                    *runs.entry((client, *sequence)).or_default() += 1;
                    Bytes::from(format!("{}", step))
                });
                prop_assert!(result.is_ok());
            }
            for (client_index, sequence) in &order {
                let client = clients[*client_index as usize];
                prop_assert_eq!(runs[&(client, *sequence)], 1);
            }
        }
    }
}
