//! What clients and the leader propose to a lock service, and what applying it answers.

use super::{FencingToken, LockError, Mode, SessionId};
use crate::session::{ClientId, RequestHeader, ResponseSize};
use serde::{Deserialize, Serialize};

/// The hard ceiling on an encoded command the decoder accepts (a lock name is at most
/// [`LockLimits::name_bytes_max`](super::LockLimits::name_bytes_max), far below it). It also
/// bounds what corrupt input can make the decoder allocate.
pub const COMMAND_BYTES_CEILING: usize = 64 * 1024;

/// How long an acquire may wait in the lock's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Wait {
    /// Try-lock: granted now, or refused with [`LockError::Busy`]; never queued.
    Try,
    /// Queue for at most this many ticks of log time, then give up
    /// ([`LockEvent::TimedOut`](super::LockEvent::TimedOut)).
    Ticks(u64),
    /// Queue until granted, or until the session ends.
    Forever,
}

/// One entry of a lock service's log. Clients propose the session and lock commands; the
/// leader proposes [`Command::Time`] and [`Command::Grace`] (see
/// [`LeaseClock`](super::LeaseClock)). Encode with [`Command::encode`] and propose the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Opens a session for `client` with a lease of `lease` ticks, or, if `client` already has
    /// a live session, renews that one (so a retried open opens one session). Answers
    /// [`Outcome::Opened`].
    Open {
        /// The client's identity, chosen by the client and unique among live clients.
        client: u64,
        /// The lease, in ticks of log time, between
        /// [`LockLimits::lease_min`](super::LockLimits::lease_min) and
        /// [`LockLimits::lease_max`](super::LockLimits::lease_max).
        lease: u64,
        /// Opaque to the service, as in [`Command::KeepAlive`]: [`LockClient`](super::LockClient)
        /// puts the local tick it sent this open at here, and credits the answer with it.
        tag: u64,
    },
    /// Renews the session's lease: it now expires `lease` ticks after the current log time.
    /// Answers [`Outcome::Renewed`].
    KeepAlive {
        /// The session.
        session: SessionId,
        /// Opaque to the service: it only travels with the command, back to the proposer
        /// with the answer. [`LockClient`](super::LockClient) puts the local tick it sent
        /// this keep-alive at here, and credits the answer with exactly that send.
        tag: u64,
    },
    /// Ends the session: its locks are released (without lock-delay: the holder let go on
    /// purpose) and its waits dropped. Answers [`Outcome::Closed`].
    Close {
        /// The session.
        session: SessionId,
    },
    /// Asks for lock `name` in `mode`. Answers [`Outcome::Granted`] (also when the session
    /// already holds it in that mode: a retry while the grant lasts is harmless),
    /// [`Outcome::Queued`], or a refusal. A copy applied after the session released the grant
    /// takes the lock again: a proposer that proposes copies wraps it in [`Command::Once`].
    Acquire {
        /// The session.
        session: SessionId,
        /// The lock's name, at most
        /// [`LockLimits::name_bytes_max`](super::LockLimits::name_bytes_max) bytes.
        name: String,
        /// Exclusive or shared.
        mode: Mode,
        /// Whether and how long to queue.
        wait: Wait,
    },
    /// Releases lock `name` if the session holds it ([`Outcome::Released`]), or withdraws the
    /// session's place in its queue ([`Outcome::Withdrawn`]).
    ///
    /// With a `token`, only the grant of that token is released: a release delayed or
    /// repeated in the network cannot release a later grant of the same lock to the same
    /// session (it is answered [`LockError::NotHeld`]), and a wait is never withdrawn.
    Release {
        /// The session.
        session: SessionId,
        /// The lock's name.
        name: String,
        /// The grant to release (`None`: whatever the session holds, or its wait).
        token: Option<FencingToken>,
    },
    /// The leader's clock: log time becomes `now` (ticks). Sessions whose lease ran out
    /// expire, waits past their deadline time out, locks whose lock-delay is over are
    /// granted. Proposed by the leader only; a `now` below the current log time is ignored
    /// (a deposed leader's late entry). Answers [`Outcome::Time`].
    Time {
        /// The new log time.
        now: u64,
    },
    /// Extends every live lease to at least `ticks` past the current log time. A new leader
    /// proposes it before its first [`Command::Time`], so that no client loses its session
    /// because keep-alives could not be chosen while there was no leader. Answers
    /// [`Outcome::Time`].
    Grace {
        /// The grace, in ticks.
        ticks: u64,
    },
    /// Opens a *proposer* session, for proposing commands exactly once with
    /// [`Command::Once`]. Answers [`Outcome::ProposerOpened`]. A proposer is whatever proposes
    /// again when it cannot tell whether a proposal was chosen (a server re-proposing a
    /// client's command after a leader change, say), not a lock session: many proposers may
    /// act for one lock session. See [exactly once](super#exactly-once).
    OpenProposer,
    /// Applies `command` at most once, however many copies of this entry are chosen: the
    /// first copy applies it, a later copy is answered what the first one was and changes
    /// nothing. `header` names the proposer session ([`Command::OpenProposer`]), a sequence
    /// number unique within it (every copy carries the same one) and the proposer's
    /// acknowledgement of the answers it has received (a copy below it is refused, never
    /// applied). Answers what `command` answers, or a refusal of the proposal:
    /// [`LockError::StaleRequest`], [`LockError::ResponseDropped`],
    /// [`LockError::TooManyRequests`], [`LockError::ProposerExpired`],
    /// [`LockError::UnknownProposer`]; a nested `Once` or `OpenProposer` is
    /// [`LockError::Malformed`].
    Once {
        /// The proposer session, the sequence number and the acknowledgement.
        header: RequestHeader,
        /// The command to apply once.
        command: Box<Command>,
    },
}

impl Command {
    /// Encodes the command for proposing (bincode, standard configuration).
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding a lock command into a vector cannot fail")
    }

    /// Decodes a command.
    ///
    /// # Errors
    /// [`LockError::Malformed`] if `bytes` are not exactly one encoded command of at most
    /// [`COMMAND_BYTES_CEILING`] bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Command, LockError> {
        if bytes.len() > COMMAND_BYTES_CEILING {
            return Err(LockError::Malformed {
                reason: format!("{} bytes, above the ceiling", bytes.len()),
            });
        }
        let config = bincode::config::standard().with_limit::<COMMAND_BYTES_CEILING>();
        match bincode::serde::decode_from_slice::<Command, _>(bytes, config) {
            Ok((command, consumed)) if consumed == bytes.len() => Ok(command),
            Ok(_) => Err(LockError::Malformed {
                reason: "trailing bytes".into(),
            }),
            Err(error) => Err(LockError::Malformed {
                reason: error.to_string(),
            }),
        }
    }
}

/// A lock a session holds, as [`Outcome::Opened`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldLock {
    /// The lock's name.
    pub name: String,
    /// How it is held.
    pub mode: Mode,
    /// The fencing token of the grant.
    pub token: FencingToken,
}

/// What applying one command answers, for the client that proposed it. Every replica
/// computes the same outcome; the one that took the request returns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The session is open (or was, and is renewed); its lease ends at log time `expires_at`.
    Opened {
        /// The session, named by the slot that opened it.
        session: SessionId,
        /// When the lease ends, in log time, unless renewed.
        expires_at: u64,
        /// The locks the session holds, by name (none for a new session): what a client that
        /// restarted and opened its session again holds without knowing it.
        held: Vec<HeldLock>,
    },
    /// The lease is renewed until log time `expires_at`.
    Renewed {
        /// When the lease ends, unless renewed again.
        expires_at: u64,
    },
    /// The session ended; `released` lists the locks it held.
    Closed {
        /// The locks the session held, by name.
        released: Vec<String>,
    },
    /// The session holds the lock. Present `token` with every use of what the lock guards:
    /// it is larger than the token of every earlier grant of any lock by this service.
    Granted {
        /// The fencing token: the slot of the entry that granted the lock.
        token: FencingToken,
    },
    /// The acquire waits in the lock's queue, at `position` (0: first). The grant (or the
    /// timeout) comes later, as a [`LockEvent`](super::LockEvent).
    Queued {
        /// Waiters ahead of this one.
        position: usize,
    },
    /// The lock is released: the grant of `token`. (A release without a token may release a
    /// grant its proposer has not heard of yet: a wait granted just before the withdraw was
    /// applied. The token tells the client which grant is gone, so that the grant's event,
    /// arriving later, is known to be stale.)
    Released {
        /// The fencing token of the grant released.
        token: FencingToken,
    },
    /// The session's wait for the lock is withdrawn.
    Withdrawn,
    /// Log time is now `now` (unchanged if the command was stale).
    Time {
        /// The current log time.
        now: u64,
    },
    /// A proposer session is open: put `proposer` in the header of every
    /// [`Command::Once`].
    ProposerOpened {
        /// The proposer session's id.
        proposer: ClientId,
    },
    /// Nothing changed; the reason is given. The state machine is unchanged.
    Refused(LockError),
}

impl ResponseSize for Outcome {
    /// An estimate of the outcome's size, for the bound on the answers a proposer session
    /// keeps ([`LockLimits::proposers`](super::LockLimits::proposers)).
    fn size_bytes(&self) -> usize {
        const BASE: usize = std::mem::size_of::<Outcome>();
        match self {
            Outcome::Closed { released } => {
                BASE + released
                    .iter()
                    .map(|name| std::mem::size_of::<String>() + name.len())
                    .sum::<usize>()
            }
            Outcome::Opened { held, .. } => {
                BASE + held
                    .iter()
                    .map(|lock| std::mem::size_of::<HeldLock>() + lock.name.len())
                    .sum::<usize>()
            }
            Outcome::Refused(
                LockError::Malformed { reason } | LockError::ProposerTableRefused { reason },
            ) => BASE + reason.len(),
            _ => BASE,
        }
    }
}
