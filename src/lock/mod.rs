//! A distributed lock service: a deterministic state machine applied from chosen log entries.
//!
//! Put a [`LockService`] behind a [`Replica`](crate::Replica) and every replica holds the same
//! locks. Clients open **sessions** with a lease and keep them alive; a session acquires
//! **exclusive** or **shared** locks, at once ([`Wait::Try`]) or by queueing in **FIFO** order
//! with an optional **timeout**; every grant carries a **fencing token** (the slot of the
//! entry that granted it), which the resources the lock guards use to refuse a deposed
//! holder's late writes. A session whose lease runs out **expires**: its locks are released
//! after a **lock-delay**, so that a holder that was merely slow has time to notice before
//! anyone else gets the lock.
//!
//! **Time is in the log.** Applying an entry never reads a clock. The leader proposes
//! [`Command::Time`] entries as its ticks pass ([`LeaseClock`] does it), and only they make
//! leases expire, waits time out and lock-delays end; every replica applies them at the same
//! slot, so every replica expires the same sessions at the same point of the log. While there
//! is no leader, log time stands still. A new leader first proposes [`Command::Grace`], which
//! extends every lease before its first `Time` can expire anyone.
//!
//! ```
//! use synod::lock::{Command, LockEvent, LockLimits, LockService, Mode, Outcome, Wait};
//!
//! let mut locks = LockService::new(LockLimits::default()).unwrap();
//! // Entries as the log chose them: (slot, command). Commands travel encoded.
//! let mut apply = |slot, command: Command| locks.apply(slot, &command.encode());
//!
//! let open = |client| Command::Open { client, lease: 100, tag: 0 };
//! let Outcome::Opened { session: alice, .. } = apply(1, open(1)) else { panic!() };
//! let Outcome::Opened { session: bob, .. } = apply(2, open(2)) else { panic!() };
//! let acquire = |session| Command::Acquire {
//!     session, name: "printer".into(), mode: Mode::Exclusive, wait: Wait::Forever,
//! };
//! assert!(matches!(apply(3, acquire(alice)), Outcome::Granted { .. }));
//! assert_eq!(apply(4, acquire(bob)), Outcome::Queued { position: 0 });
//! // Alice releases at slot 5: Bob gets the lock, with token 5.
//! apply(5, Command::Release { session: alice, name: "printer".into(), token: None });
//! # drop(apply);
//! assert!(matches!(
//!     locks.take_events()[..],
//!     [LockEvent::Granted { token, .. }] if token.0 == 5
//! ));
//! ```
//!
//! On the client's side, [`LockClient`] builds the commands, schedules keep-alives and keeps a
//! conservative local view of the lease and the tokens of the locks held.
//!
//! # Exactly once
//!
//! Paxos chooses every copy of a command it is given. A server that proposes a client's
//! command again when it cannot tell whether the first proposal was chosen (the leader
//! changed, the answer is late) may see it chosen twice, and the second copy may come after
//! the client acted on the first answer. Most commands do no harm twice: `Open`, `KeepAlive`
//! and `Close` renew or end what they did, and a `Release` with a token never touches another
//! grant. But an `Acquire` applied again after the client released its grant takes the lock
//! again, for a client that does not know it (and a token-less `Release` may release a later
//! grant). A proposer that re-proposes therefore wraps its commands in [`Command::Once`]:
//! it opens a proposer session once ([`Command::OpenProposer`]), numbers its proposals, and
//! every later copy of one is answered what the first copy was, without being applied, or,
//! once the proposer acknowledged that answer, refused (the table is a [`SessionTable`], in
//! the replicated state and its snapshot).
//!
//! ```
//! use synod::lock::{Command, LockError, LockLimits, LockService, Mode, Outcome, Wait};
//! use synod::session::RequestHeader;
//!
//! let mut locks = LockService::new(LockLimits::default()).unwrap();
//! let mut slot = 0;
//! let mut apply = |command: &Command| {
//!     slot += 1;
//!     locks.apply(slot, &command.encode())
//! };
//! let Outcome::ProposerOpened { proposer } = apply(&Command::OpenProposer) else { panic!() };
//! let Outcome::Opened { session, .. } = apply(&Command::Open { client: 1, lease: 100, tag: 0 })
//! else { panic!() };
//! let once = |sequence, command| Command::Once {
//!     header: RequestHeader { client: proposer, sequence, acknowledged_below: sequence },
//!     command: Box::new(command),
//! };
//! let acquire = once(1, Command::Acquire {
//!     session, name: "printer".into(), mode: Mode::Exclusive, wait: Wait::Forever,
//! });
//! let Outcome::Granted { token } = apply(&acquire) else { panic!() };
//! // A second copy (the answer was slow, the proposer proposed again) gets the same answer.
//! assert_eq!(apply(&acquire), Outcome::Granted { token });
//! apply(&once(2, Command::Release { session, name: "printer".into(), token: Some(token) }));
//! // A copy after the proposer acknowledged the answer is refused, and takes nothing.
//! assert!(matches!(apply(&acquire), Outcome::Refused(LockError::StaleRequest { .. })));
//! # drop(apply);
//! assert!(locks.holders("printer").is_empty());
//! ```
//!
//! Bad input never panics: undecodable bytes, unknown sessions and out-of-bound requests are
//! [`Outcome::Refused`] with a [`LockError`], and leave the state unchanged. Everything is
//! bounded by [`LockLimits`].

mod client;
mod clock;
mod command;
#[cfg(test)]
mod tests;

pub use client::{LockClient, RELEASED_MAX};
pub use clock::LeaseClock;
pub use command::{Command, HeldLock, Outcome, Wait, COMMAND_BYTES_CEILING};

use crate::error::ConfigError;
use crate::session::{
    ClientId, Outcome as SessionOutcome, RequestHeader, SessionLimits, SessionTable,
};
use crate::types::Slot;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use thiserror::Error;

/// A session, named by the slot of the [`Command::Open`] that opened it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A fencing token: the slot of the entry that granted a lock.
///
/// A grant's token is larger than the token of every grant made by an earlier entry, of any
/// lock; the grants one entry makes (a group of shared waiters, or the locks one expiry
/// frees) share it. A resource guarded by a lock remembers the largest token it has seen and
/// refuses requests with a smaller one: a holder that lost its lock without knowing can then
/// do no harm.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct FencingToken(pub u64);

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// One holder, no one else.
    Exclusive,
    /// Any number of shared holders, no exclusive one.
    Shared,
}

/// Why a command changed nothing. Every replica refuses the same commands the same way.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Error, Serialize, Deserialize)]
pub enum LockError {
    /// The entry is not an encoded [`Command`]: a client bug or corruption.
    #[error("malformed command: {reason}")]
    Malformed {
        /// What the decoder found wrong.
        reason: String,
    },
    /// The entry's slot is not above the last one applied: the application applied out of
    /// order or twice. Apply each chosen entry once, in slot order.
    #[error("slot {slot} applied after slot {last}")]
    SlotReplayed {
        /// The slot given.
        slot: Slot,
        /// The last slot applied.
        last: Slot,
    },
    /// No such session is open (never opened, closed, or expired). Open a new one.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The lease asked for is outside the service's bounds.
    #[error("lease of {lease} ticks outside {min}..={max}")]
    LeaseOutOfRange {
        /// The lease asked for.
        lease: u64,
        /// [`LockLimits::lease_min`].
        min: u64,
        /// [`LockLimits::lease_max`].
        max: u64,
    },
    /// The lock name is longer than [`LockLimits::name_bytes_max`].
    #[error("lock name of {length} bytes exceeds {max}")]
    NameTooLong {
        /// The name's length.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// A try-lock found the lock held, queued for, or in its lock-delay. Try again later, or
    /// wait.
    #[error("lock is busy")]
    Busy,
    /// The session holds the lock in the other mode. Locks are not upgraded or downgraded:
    /// release it first.
    #[error("already held in {0:?} mode")]
    HeldInOtherMode(Mode),
    /// The session neither holds the lock nor waits for it.
    #[error("lock not held")]
    NotHeld,
    /// [`LockLimits::sessions_max`] sessions are open.
    #[error("too many sessions (at most {max})")]
    TooManySessions {
        /// The maximum.
        max: usize,
    },
    /// [`LockLimits::locks_max`] locks are in use (held, queued for, or in lock-delay).
    #[error("too many locks in use (at most {max})")]
    TooManyLocks {
        /// The maximum.
        max: usize,
    },
    /// The session holds or waits for [`LockLimits::locks_per_session_max`] locks.
    #[error("session holds or awaits too many locks (at most {max})")]
    TooManyLocksInSession {
        /// The maximum.
        max: usize,
    },
    /// The lock's queue holds [`LockLimits::waiters_max`] waiters.
    #[error("lock queue full (at most {max} waiters)")]
    QueueFull {
        /// The maximum.
        max: usize,
    },
    /// A [`Command::Once`] whose sequence number is below the proposer's acknowledgement: a
    /// late copy of a proposal whose answer the proposer already had, or gave up on. Not
    /// applied.
    #[error("request {sequence} of proposer {proposer} is stale")]
    StaleRequest {
        /// The proposer session.
        proposer: ClientId,
        /// The sequence number.
        sequence: u64,
    },
    /// A later copy of a [`Command::Once`] that was applied, whose answer the proposer session
    /// no longer keeps ([`LockLimits::proposers`] bounds the bytes kept). Not applied again;
    /// the command took effect, its answer is lost.
    #[error("request {sequence} of proposer {proposer} was applied; its answer is lost")]
    ResponseDropped {
        /// The proposer session.
        proposer: ClientId,
        /// The sequence number.
        sequence: u64,
    },
    /// The proposer session keeps the answers of as many unacknowledged requests as
    /// [`LockLimits::proposers`] allows. Not applied: acknowledge answers, then propose again.
    #[error("proposer {proposer} has too many unacknowledged requests")]
    TooManyRequests {
        /// The proposer session.
        proposer: ClientId,
    },
    /// The proposer session was opened but is gone (evicted by newer ones past
    /// [`LockLimits::proposers`]). Not applied: open another proposer session. Its
    /// unacknowledged requests may or may not have taken effect.
    #[error("proposer {0} expired")]
    ProposerExpired(ClientId),
    /// No such proposer session was ever opened. Not applied.
    #[error("unknown proposer {0}")]
    UnknownProposer(ClientId),
    /// The proposer table refused the command (a
    /// [`SessionError`](crate::session::SessionError)): proposer ids are exhausted, which
    /// only a corrupt snapshot leads to. Not applied.
    #[error("the proposer table refused the command: {reason}")]
    ProposerTableRefused {
        /// The table's error.
        reason: String,
    },
}

impl From<crate::session::SessionError> for LockError {
    fn from(error: crate::session::SessionError) -> LockError {
        LockError::ProposerTableRefused {
            reason: error.to_string(),
        }
    }
}

/// The highest log time: a [`Command::Time`] beyond it moves log time to it, no further, so
/// that every lease end and wait deadline counted from log time fits in a `u64`.
pub const TIME_MAX: u64 = 1 << 62;

/// What happened to a session that did not ask for it just then: grants to queued acquires,
/// timeouts, expiries. Drained with [`LockService::take_events`]; the replica serving the
/// session tells its client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockEvent {
    /// A queued acquire was granted.
    Granted {
        /// The session.
        session: SessionId,
        /// The lock.
        name: String,
        /// The mode it is held in.
        mode: Mode,
        /// Its fencing token.
        token: FencingToken,
    },
    /// A queued acquire waited its [`Wait::Ticks`] out and was dropped.
    TimedOut {
        /// The session.
        session: SessionId,
        /// The lock.
        name: String,
    },
    /// The session's lease ran out: it is gone, its waits are dropped, and `released` lists
    /// the locks it held, which others can have after the lock-delay.
    Expired {
        /// The session.
        session: SessionId,
        /// The locks it held.
        released: Vec<String>,
    },
}

/// The bounds of a lock service. Part of the replicated state: every replica must use the
/// same limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockLimits {
    /// Open sessions at most. Default 10 000.
    pub sessions_max: usize,
    /// Locks in use at most (held, queued for, or in lock-delay). Default 100 000.
    pub locks_max: usize,
    /// Locks one session holds or waits for, at most. Default 1 000.
    pub locks_per_session_max: usize,
    /// Waiters in one lock's queue at most. Default 1 000.
    pub waiters_max: usize,
    /// The longest lock name, in bytes. Default 256.
    pub name_bytes_max: usize,
    /// The shortest lease a session may ask for, in ticks. Default 10.
    pub lease_min: u64,
    /// The longest lease a session may ask for, in ticks. Default 100 000.
    pub lease_max: u64,
    /// How long a lock released by an expiry stays unavailable, in ticks. Default 20.
    pub lock_delay: u64,
    /// The bounds of the proposer sessions of [`Command::Once`]: how many (past it, opening
    /// one evicts the least recently active), and the unacknowledged answers each keeps.
    /// Default: 1 024 proposers, 1 024 answers and 256 KiB of answers each.
    pub proposers: SessionLimits,
}

impl Default for LockLimits {
    fn default() -> LockLimits {
        LockLimits {
            sessions_max: 10_000,
            locks_max: 100_000,
            locks_per_session_max: 1_000,
            waiters_max: 1_000,
            name_bytes_max: 256,
            lease_min: 10,
            lease_max: 100_000,
            lock_delay: 20,
            proposers: SessionLimits {
                sessions_max: 1024,
                responses_per_session_max: 1024,
                response_bytes_per_session_max: 256 << 10,
            },
        }
    }
}

impl LockLimits {
    /// Checks the limits.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bound that is zero (every `_max` and
    /// `lease_min` must be at least 1) or `lease_min > lease_max`, or the first field of
    /// `proposers` that [`SessionLimits::validate`] refuses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.proposers.validate()?;
        let positive = [
            ("sessions_max", self.sessions_max as u64),
            ("locks_max", self.locks_max as u64),
            ("locks_per_session_max", self.locks_per_session_max as u64),
            ("waiters_max", self.waiters_max as u64),
            ("name_bytes_max", self.name_bytes_max as u64),
            ("lease_min", self.lease_min),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        if self.lease_min > self.lease_max {
            return Err(ConfigError::new("lease_max", "must be at least lease_min"));
        }
        Ok(())
    }
}

/// Why [`LockService::restore`] refused a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The bytes are not an encoded snapshot.
    #[error("undecodable lock snapshot: {0}")]
    Undecodable(String),
    /// The snapshot decodes but breaks an invariant: it was not written by
    /// [`LockService::snapshot`], or was corrupted.
    #[error("invalid lock snapshot: {0}")]
    Invalid(&'static str),
}

/// The hard ceiling on a snapshot [`LockService::restore`] accepts.
pub const SNAPSHOT_BYTES_CEILING: usize = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    client: u64,
    lease: u64,
    expires_at: u64,
    /// Locks held and awaited, by name (derived from the locks; not serialized).
    #[serde(skip)]
    held: BTreeSet<String>,
    #[serde(skip)]
    waiting: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    session: SessionId,
    mode: Mode,
    token: FencingToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Waiter {
    session: SessionId,
    mode: Mode,
    /// Log time at which the wait times out (`None`: never).
    deadline: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Lock {
    holders: Vec<Holder>,
    waiters: VecDeque<Waiter>,
    /// Log time before which nothing is granted (the lock-delay after an expiry).
    available_at: u64,
}

impl Lock {
    fn admits(&self, mode: Mode) -> bool {
        match mode {
            Mode::Exclusive => self.holders.is_empty(),
            Mode::Shared => self
                .holders
                .iter()
                .all(|holder| holder.mode == Mode::Shared),
        }
    }
}

/// The replicated part of the state: what a snapshot holds. The indexes are rebuilt from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    limits: LockLimits,
    now: u64,
    last_slot: Slot,
    sessions: BTreeMap<SessionId, Session>,
    locks: BTreeMap<String, Lock>,
    /// The proposer sessions of [`Command::Once`], with the answers they keep.
    proposers: SessionTable<Outcome>,
}

/// The lock service state machine. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct LockService {
    state: State,
    /// Each client's live session.
    clients: BTreeMap<u64, SessionId>,
    /// Sessions by lease end.
    expiries: BTreeSet<(u64, SessionId)>,
    /// Timed waits by deadline.
    deadlines: BTreeSet<(u64, SessionId, String)>,
    /// Locks in lock-delay, by the end of it.
    delayed: BTreeSet<(u64, String)>,
    events: Vec<LockEvent>,
}

impl PartialEq for LockService {
    /// Two services are equal if their replicated state is (events are not compared).
    fn eq(&self, other: &LockService) -> bool {
        self.state == other.state
    }
}

impl LockService {
    /// An empty service.
    ///
    /// # Errors
    /// [`ConfigError`] if `limits` do not [validate](LockLimits::validate).
    pub fn new(limits: LockLimits) -> Result<LockService, ConfigError> {
        limits.validate()?;
        Ok(LockService::from_state(State {
            limits,
            now: 0,
            last_slot: 0,
            sessions: BTreeMap::new(),
            locks: BTreeMap::new(),
            proposers: SessionTable::new(limits.proposers)?,
        }))
    }

    /// The limits.
    pub fn limits(&self) -> &LockLimits {
        &self.state.limits
    }

    /// Log time: the `now` of the last [`Command::Time`] applied.
    pub fn now(&self) -> u64 {
        self.state.now
    }

    /// The last slot applied (0: none).
    pub fn last_applied_slot(&self) -> Slot {
        self.state.last_slot
    }

    /// The number of open sessions.
    pub fn session_count(&self) -> usize {
        self.state.sessions.len()
    }

    /// When `session`'s lease ends, in log time, or `None` if it is not open.
    pub fn lease_end(&self, session: SessionId) -> Option<u64> {
        self.state.sessions.get(&session).map(|s| s.expires_at)
    }

    /// Who holds lock `name`, in grant order, with their mode and token.
    pub fn holders(&self, name: &str) -> Vec<(SessionId, Mode, FencingToken)> {
        self.state.locks.get(name).map_or_else(Vec::new, |lock| {
            lock.holders
                .iter()
                .map(|holder| (holder.session, holder.mode, holder.token))
                .collect()
        })
    }

    /// Who waits for lock `name`, first first.
    pub fn waiters(&self, name: &str) -> Vec<(SessionId, Mode)> {
        self.state.locks.get(name).map_or_else(Vec::new, |lock| {
            lock.waiters
                .iter()
                .map(|waiter| (waiter.session, waiter.mode))
                .collect()
        })
    }

    /// The events since the last call: grants to queued acquires, timeouts, expiries, in the
    /// order they happened.
    pub fn take_events(&mut self) -> Vec<LockEvent> {
        std::mem::take(&mut self.events)
    }

    /// Applies the chosen entry at `slot`, whose bytes are an encoded [`Command`]. Call it on
    /// every replica for every chosen entry, in slot order, exactly once.
    ///
    /// Returns what the proposer should be told. Undecodable bytes are
    /// [`Outcome::Refused`]`(`[`LockError::Malformed`]`)`, and a slot at or below the last
    /// one applied is [`LockError::SlotReplayed`]; a refused command changes nothing (the
    /// slot still counts as applied, except for a replayed one).
    pub fn apply(&mut self, slot: Slot, command: &[u8]) -> Outcome {
        if slot <= self.state.last_slot {
            return Outcome::Refused(LockError::SlotReplayed {
                slot,
                last: self.state.last_slot,
            });
        }
        self.state.last_slot = slot;
        match Command::decode(command) {
            Ok(command) => self.apply_command(slot, command),
            Err(error) => Outcome::Refused(error),
        }
    }

    fn apply_command(&mut self, slot: Slot, command: Command) -> Outcome {
        let result = match command {
            Command::Open { client, lease, .. } => self.open(slot, client, lease),
            Command::KeepAlive { session, .. } => self.keep_alive(session),
            Command::Close { session } => self.close(slot, session),
            Command::Acquire {
                session,
                name,
                mode,
                wait,
            } => self.acquire(slot, session, name, mode, wait),
            Command::Release {
                session,
                name,
                token,
            } => self.release(slot, session, &name, token),
            Command::Time { now } => Ok(self.advance_time(slot, now)),
            Command::Grace { ticks } => Ok(self.grace(ticks)),
            Command::OpenProposer => match self.state.proposers.open(slot) {
                Ok(opened) => Ok(Outcome::ProposerOpened {
                    proposer: opened.client,
                }),
                Err(error) => Err(error.into()),
            },
            Command::Once { header, command } => self.apply_once(slot, header, *command),
        };
        result.unwrap_or_else(Outcome::Refused)
    }

    /// Applies `command` unless the proposer session `header` names has applied it already.
    fn apply_once(
        &mut self,
        slot: Slot,
        header: RequestHeader,
        command: Command,
    ) -> Result<Outcome, LockError> {
        if matches!(command, Command::Once { .. } | Command::OpenProposer) {
            return Err(LockError::Malformed {
                reason: "a proposer command inside Once".into(),
            });
        }
        let proposer = header.client;
        let sequence = header.sequence;
        match self.state.proposers.check(header, slot) {
            SessionOutcome::New => {
                let outcome = self.apply_command(slot, command);
                // Cannot fail: `check` just answered New for `header`, and nothing came
                // between (apply_command never touches the proposer table).
                self.state.proposers.record(header, outcome.clone())?;
                Ok(outcome)
            }
            SessionOutcome::Duplicate(outcome) => Ok(outcome),
            SessionOutcome::Stale => Err(LockError::StaleRequest { proposer, sequence }),
            SessionOutcome::ResponseDropped => {
                Err(LockError::ResponseDropped { proposer, sequence })
            }
            SessionOutcome::SessionFull => Err(LockError::TooManyRequests { proposer }),
            SessionOutcome::SessionExpired => Err(LockError::ProposerExpired(proposer)),
            SessionOutcome::UnknownSession => Err(LockError::UnknownProposer(proposer)),
            SessionOutcome::Misuse(error) => Err(error.into()),
        }
    }

    fn open(&mut self, slot: Slot, client: u64, lease: u64) -> Result<Outcome, LockError> {
        let limits = self.state.limits;
        if !(limits.lease_min..=limits.lease_max).contains(&lease) {
            return Err(LockError::LeaseOutOfRange {
                lease,
                min: limits.lease_min,
                max: limits.lease_max,
            });
        }
        let expires_at = self.state.now.saturating_add(lease);
        if let Some(&session) = self.clients.get(&client) {
            self.session_mut(session).lease = lease;
            self.set_lease_end(session, expires_at);
            return Ok(Outcome::Opened {
                session,
                expires_at,
                held: self.held_by(session),
            });
        }
        if self.state.sessions.len() >= limits.sessions_max {
            return Err(LockError::TooManySessions {
                max: limits.sessions_max,
            });
        }
        let session = SessionId(slot);
        self.state.sessions.insert(
            session,
            Session {
                client,
                lease,
                expires_at,
                held: BTreeSet::new(),
                waiting: BTreeSet::new(),
            },
        );
        self.clients.insert(client, session);
        self.expiries.insert((expires_at, session));
        Ok(Outcome::Opened {
            session,
            expires_at,
            held: Vec::new(),
        })
    }

    /// The locks `session` holds, by name.
    fn held_by(&self, session: SessionId) -> Vec<HeldLock> {
        self.state.sessions[&session]
            .held
            .iter()
            .filter_map(|name| {
                let holder = self
                    .state
                    .locks
                    .get(name)?
                    .holders
                    .iter()
                    .find(|h| h.session == session)?;
                Some(HeldLock {
                    name: name.clone(),
                    mode: holder.mode,
                    token: holder.token,
                })
            })
            .collect()
    }

    fn keep_alive(&mut self, session: SessionId) -> Result<Outcome, LockError> {
        let lease = self
            .state
            .sessions
            .get(&session)
            .ok_or(LockError::UnknownSession(session))?
            .lease;
        let expires_at = self.state.now.saturating_add(lease);
        self.set_lease_end(session, expires_at);
        Ok(Outcome::Renewed { expires_at })
    }

    /// Moves `session`'s lease end, in the session and in the expiry index.
    fn set_lease_end(&mut self, session: SessionId, expires_at: u64) {
        let entry = self.session_mut(session);
        let old = std::mem::replace(&mut entry.expires_at, expires_at);
        self.expiries.remove(&(old, session));
        self.expiries.insert((expires_at, session));
    }

    fn close(&mut self, slot: Slot, session: SessionId) -> Result<Outcome, LockError> {
        if !self.state.sessions.contains_key(&session) {
            return Err(LockError::UnknownSession(session));
        }
        // What the close frees is granted by this entry, without lock-delay.
        let (released, awaited) = self.end_session(session, false);
        for name in awaited.iter().chain(&released) {
            self.grant_waiters(slot, name);
        }
        Ok(Outcome::Closed { released })
    }

    fn acquire(
        &mut self,
        slot: Slot,
        session: SessionId,
        name: String,
        mode: Mode,
        wait: Wait,
    ) -> Result<Outcome, LockError> {
        let limits = self.state.limits;
        let now = self.state.now;
        let entry = self
            .state
            .sessions
            .get(&session)
            .ok_or(LockError::UnknownSession(session))?;
        if name.len() > limits.name_bytes_max {
            return Err(LockError::NameTooLong {
                length: name.len(),
                max: limits.name_bytes_max,
            });
        }
        if let Some(lock) = self.state.locks.get(&name) {
            if let Some(holder) = lock.holders.iter().find(|h| h.session == session) {
                // A retried acquire: answer as the first time.
                return if holder.mode == mode {
                    Ok(Outcome::Granted {
                        token: holder.token,
                    })
                } else {
                    Err(LockError::HeldInOtherMode(holder.mode))
                };
            }
            if let Some(position) = lock.waiters.iter().position(|w| w.session == session) {
                return Ok(Outcome::Queued { position });
            }
        }
        if entry.held.len() + entry.waiting.len() >= limits.locks_per_session_max {
            return Err(LockError::TooManyLocksInSession {
                max: limits.locks_per_session_max,
            });
        }
        let existing = self.state.locks.get(&name);
        if existing.is_none() && self.state.locks.len() >= limits.locks_max {
            return Err(LockError::TooManyLocks {
                max: limits.locks_max,
            });
        }
        let grantable = existing.map_or(true, |lock| {
            now >= lock.available_at && lock.waiters.is_empty() && lock.admits(mode)
        });
        if grantable {
            let token = FencingToken(slot);
            let lock = self.state.locks.entry(name.clone()).or_default();
            lock.holders.push(Holder {
                session,
                mode,
                token,
            });
            self.session_mut(session).held.insert(name);
            return Ok(Outcome::Granted { token });
        }
        let deadline = match wait {
            Wait::Try => return Err(LockError::Busy),
            Wait::Ticks(ticks) => Some(now.saturating_add(ticks)),
            Wait::Forever => None,
        };
        let lock = self
            .state
            .locks
            .get_mut(&name)
            .expect("not grantable: exists");
        if lock.waiters.len() >= limits.waiters_max {
            return Err(LockError::QueueFull {
                max: limits.waiters_max,
            });
        }
        lock.waiters.push_back(Waiter {
            session,
            mode,
            deadline,
        });
        let position = lock.waiters.len() - 1;
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, session, name.clone()));
        }
        self.session_mut(session).waiting.insert(name);
        Ok(Outcome::Queued { position })
    }

    fn release(
        &mut self,
        slot: Slot,
        session: SessionId,
        name: &str,
        token: Option<FencingToken>,
    ) -> Result<Outcome, LockError> {
        if !self.state.sessions.contains_key(&session) {
            return Err(LockError::UnknownSession(session));
        }
        let lock = self.state.locks.get_mut(name).ok_or(LockError::NotHeld)?;
        let holder = lock
            .holders
            .iter()
            .position(|h| h.session == session && token.map_or(true, |token| token == h.token));
        let outcome = if let Some(index) = holder {
            let released = lock.holders.remove(index);
            self.session_mut(session).held.remove(name);
            Outcome::Released {
                token: released.token,
            }
        } else if token.is_some() {
            // Not that grant: a stale release never touches a later grant, nor a wait.
            return Err(LockError::NotHeld);
        } else if let Some(index) = lock.waiters.iter().position(|w| w.session == session) {
            let waiter = lock.waiters.remove(index).expect("found");
            if let Some(deadline) = waiter.deadline {
                self.deadlines.remove(&(deadline, session, name.to_owned()));
            }
            self.session_mut(session).waiting.remove(name);
            Outcome::Withdrawn
        } else {
            return Err(LockError::NotHeld);
        };
        self.grant_waiters(slot, name);
        Ok(outcome)
    }

    fn advance_time(&mut self, slot: Slot, now: u64) -> Outcome {
        // Log time stops at TIME_MAX: a lease or deadline counted from it never saturates
        // (a session whose lease end equalled a saturated `now` could never expire).
        let now = now.min(TIME_MAX);
        if now <= self.state.now {
            return Outcome::Time {
                now: self.state.now,
            };
        }
        self.state.now = now;
        let mut touched: BTreeSet<String> = BTreeSet::new();
        // 1. Sessions whose lease ran out, in order of expiry.
        while let Some(&(expires_at, session)) = self.expiries.first() {
            if expires_at > now {
                break;
            }
            let (released, awaited) = self.end_session(session, true);
            touched.extend(awaited);
            touched.extend(released.iter().cloned());
            self.events.push(LockEvent::Expired { session, released });
        }
        // 2. Waits past their deadline.
        while let Some((deadline, session, name)) = self.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let lock = self
                .state
                .locks
                .get_mut(&name)
                .expect("awaited lock exists");
            lock.waiters.retain(|waiter| waiter.session != session);
            self.session_mut(session).waiting.remove(&name);
            self.events.push(LockEvent::TimedOut {
                session,
                name: name.clone(),
            });
            touched.insert(name);
        }
        // 3. Lock-delays that are over.
        while let Some((available_at, name)) = self.delayed.first().cloned() {
            if available_at > now {
                break;
            }
            self.delayed.pop_first();
            touched.insert(name);
        }
        for name in touched {
            self.grant_waiters(slot, &name);
        }
        Outcome::Time { now }
    }

    fn grace(&mut self, ticks: u64) -> Outcome {
        let floor = self.state.now.saturating_add(ticks);
        // The leases ending before the floor are the first entries of the expiry index.
        let short: Vec<SessionId> = self
            .expiries
            .iter()
            .take_while(|(expires_at, _)| *expires_at < floor)
            .map(|(_, session)| *session)
            .collect();
        for session in short {
            self.set_lease_end(session, floor);
        }
        Outcome::Time {
            now: self.state.now,
        }
    }

    /// Removes `session`: releases its locks (with lock-delay if it `expired`) and drops its
    /// waits. Returns the locks it held and those it waited for: the caller grants them.
    fn end_session(&mut self, session: SessionId, expired: bool) -> (Vec<String>, Vec<String>) {
        let entry = self
            .state
            .sessions
            .remove(&session)
            .expect("caller checked");
        self.clients.remove(&entry.client);
        self.expiries.remove(&(entry.expires_at, session));
        let now = self.state.now;
        let delay = self.state.limits.lock_delay;
        for name in &entry.waiting {
            let lock = self.state.locks.get_mut(name).expect("awaited lock exists");
            if let Some(index) = lock.waiters.iter().position(|w| w.session == session) {
                if let Some(deadline) = lock.waiters[index].deadline {
                    self.deadlines.remove(&(deadline, session, name.clone()));
                }
                lock.waiters.remove(index);
            }
        }
        for name in &entry.held {
            let lock = self.state.locks.get_mut(name).expect("held lock exists");
            lock.holders.retain(|holder| holder.session != session);
            if expired && delay > 0 {
                let available_at = now.saturating_add(delay);
                if lock.available_at < available_at {
                    self.delayed.remove(&(lock.available_at, name.clone()));
                    lock.available_at = available_at;
                    self.delayed.insert((available_at, name.clone()));
                }
            }
        }
        (
            entry.held.into_iter().collect(),
            entry.waiting.into_iter().collect(),
        )
    }

    /// Grants lock `name` to the waiters at the head of its queue that it admits, in order
    /// (one exclusive, or a run of shared), unless it is in lock-delay; forgets the lock if
    /// nothing is left of it.
    fn grant_waiters(&mut self, slot: Slot, name: &str) {
        let now = self.state.now;
        let Some(lock) = self.state.locks.get_mut(name) else {
            return;
        };
        if now >= lock.available_at {
            while let Some(&waiter) = lock.waiters.front() {
                if !lock.admits(waiter.mode) {
                    break;
                }
                lock.waiters.pop_front();
                let token = FencingToken(slot);
                lock.holders.push(Holder {
                    session: waiter.session,
                    mode: waiter.mode,
                    token,
                });
                if let Some(deadline) = waiter.deadline {
                    self.deadlines
                        .remove(&(deadline, waiter.session, name.to_owned()));
                }
                let session = self
                    .state
                    .sessions
                    .get_mut(&waiter.session)
                    .expect("waiters' sessions are open");
                session.waiting.remove(name);
                session.held.insert(name.to_owned());
                self.events.push(LockEvent::Granted {
                    session: waiter.session,
                    name: name.to_owned(),
                    mode: waiter.mode,
                    token,
                });
            }
        }
        if lock.holders.is_empty() && lock.waiters.is_empty() && now >= lock.available_at {
            self.state.locks.remove(name);
        }
    }

    fn session_mut(&mut self, session: SessionId) -> &mut Session {
        self.state
            .sessions
            .get_mut(&session)
            .expect("caller checked the session")
    }

    /// Encodes the replicated state, canonically: equal states give equal bytes. Events
    /// not yet taken are not part of it.
    pub fn snapshot(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(&self.state, bincode::config::standard())
            .expect("encoding into a vector cannot fail")
    }

    /// Rebuilds a service from [`snapshot`](Self::snapshot) bytes, checking every invariant.
    /// Never panics on corrupt input.
    ///
    /// # Errors
    /// [`SnapshotError::Undecodable`] or [`SnapshotError::Invalid`].
    pub fn restore(bytes: &[u8]) -> Result<LockService, SnapshotError> {
        if bytes.len() > SNAPSHOT_BYTES_CEILING {
            return Err(SnapshotError::Invalid("snapshot larger than the ceiling"));
        }
        let config = bincode::config::standard().with_limit::<SNAPSHOT_BYTES_CEILING>();
        let state = match bincode::serde::decode_from_slice::<State, _>(bytes, config) {
            Ok((state, consumed)) if consumed == bytes.len() => state,
            Ok(_) => return Err(SnapshotError::Invalid("trailing bytes")),
            Err(error) => return Err(SnapshotError::Undecodable(error.to_string())),
        };
        if state.limits.validate().is_err() {
            return Err(SnapshotError::Invalid("limits out of range"));
        }
        if *state.proposers.limits() != state.limits.proposers {
            return Err(SnapshotError::Invalid(
                "the proposer sessions' limits differ from the service's",
            ));
        }
        if state.proposers.last_index() > state.last_slot {
            return Err(SnapshotError::Invalid(
                "the proposer sessions are ahead of the last slot applied",
            ));
        }
        // Every holder and waiter must name an open session, once per lock, before the
        // indexes can be rebuilt from them.
        for lock in state.locks.values() {
            let mut seen = BTreeSet::new();
            let sessions = lock
                .holders
                .iter()
                .map(|h| h.session)
                .chain(lock.waiters.iter().map(|w| w.session));
            for session in sessions {
                if !state.sessions.contains_key(&session) {
                    return Err(SnapshotError::Invalid(
                        "lock names a session that is not open",
                    ));
                }
                if !seen.insert(session) {
                    return Err(SnapshotError::Invalid("session twice in one lock"));
                }
            }
        }
        let service = LockService::from_state(state);
        service.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(service)
    }

    /// Builds the indexes from the replicated state.
    fn from_state(mut state: State) -> LockService {
        let mut clients = BTreeMap::new();
        let mut expiries = BTreeSet::new();
        let mut deadlines = BTreeSet::new();
        let mut delayed = BTreeSet::new();
        for (&id, session) in &mut state.sessions {
            session.held.clear();
            session.waiting.clear();
            clients.insert(session.client, id);
            expiries.insert((session.expires_at, id));
        }
        for (name, lock) in &state.locks {
            for holder in &lock.holders {
                if let Some(session) = state.sessions.get_mut(&holder.session) {
                    session.held.insert(name.clone());
                }
            }
            for waiter in &lock.waiters {
                if let Some(session) = state.sessions.get_mut(&waiter.session) {
                    session.waiting.insert(name.clone());
                }
                if let Some(deadline) = waiter.deadline {
                    deadlines.insert((deadline, waiter.session, name.clone()));
                }
            }
            if lock.available_at > state.now {
                delayed.insert((lock.available_at, name.clone()));
            }
        }
        LockService {
            state,
            clients,
            expiries,
            deadlines,
            delayed,
            events: Vec::new(),
        }
    }

    /// Checks every invariant of the state: no lock held exclusively alongside another
    /// holder, no session past its lease, no wait past its deadline, no grantable waiter left
    /// waiting, no token from the future, every bound kept. [`restore`](Self::restore) runs
    /// it; tests, fuzzers and simulations can run it after every entry. It walks the whole
    /// state.
    ///
    /// # Errors
    /// The broken invariant, in words: a bug in this module, or a state restored from a
    /// snapshot that was not written by it.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let state = &self.state;
        let limits = &state.limits;
        if state.sessions.len() > limits.sessions_max || state.locks.len() > limits.locks_max {
            return Err("more sessions or locks than the limits allow");
        }
        if self.clients.len() != state.sessions.len() {
            return Err("two sessions for one client");
        }
        for (&id, session) in &state.sessions {
            if session.expires_at <= state.now {
                return Err("a session outlived its lease");
            }
            if id.0 > state.last_slot {
                return Err("a session opened after the last slot");
            }
            if !(limits.lease_min..=limits.lease_max).contains(&session.lease) {
                return Err("a lease out of range");
            }
            if session.held.len() + session.waiting.len() > limits.locks_per_session_max {
                return Err("a session holds or awaits too many locks");
            }
        }
        for (name, lock) in &state.locks {
            if name.len() > limits.name_bytes_max {
                return Err("a lock name above its bound");
            }
            if lock.waiters.len() > limits.waiters_max {
                return Err("a lock queue above its bound");
            }
            let exclusive = lock
                .holders
                .iter()
                .filter(|h| h.mode == Mode::Exclusive)
                .count();
            if exclusive > 1 || (exclusive == 1 && lock.holders.len() > 1) {
                return Err("an exclusive lock with another holder");
            }
            if lock.holders.iter().any(|h| h.token.0 > state.last_slot) {
                return Err("a token from the future");
            }
            if lock.holders.is_empty() && lock.waiters.is_empty() && lock.available_at <= state.now
            {
                return Err("an unused lock was kept");
            }
            // A waiter at the head that the lock admits should have been granted.
            if let Some(first) = lock.waiters.front() {
                if state.now >= lock.available_at && lock.admits(first.mode) {
                    return Err("a grantable waiter was left waiting");
                }
            }
            if lock
                .waiters
                .iter()
                .any(|w| w.deadline.is_some_and(|deadline| deadline < state.now))
            {
                return Err("a wait outlived its deadline");
            }
        }
        Ok(())
    }
}
