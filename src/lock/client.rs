//! The client's side: one session, its keep-alives, its locks, and a conservative view of its
//! lease.

use super::{Command, FencingToken, LockEvent, Mode, Outcome, SessionId, Wait};
use crate::error::ConfigError;
use std::collections::{BTreeMap, BTreeSet};

/// The most locks whose newest released token a [`LockClient`] remembers.
pub const RELEASED_MAX: usize = 1024;

/// A lock service client's bookkeeping, sans-IO: it builds the commands to propose, tells when
/// to send keep-alives, and keeps the locks held with their fencing tokens.
///
/// **The local lease.** The client counts its own ticks. A lease renewed by a command sent at
/// local tick `t` is trusted until `t + lease - margin`: the service starts the lease when it
/// applies the command, which is after `t`, so the client's view ends first as long as its
/// ticks run no slower than the leader's by more than the margin. Each keep-alive and open
/// carries the tick it was sent at (`tag`), so an answer is credited with its own send, in
/// whatever order the answers arrive. Past that point
/// [`is_live`](LockClient::is_live) is false and [`token`](LockClient::token) returns
/// nothing: stop using what the locks guard, and open a new session. (The fencing token is
/// what protects a resource from a client whose clock lies; the local lease only makes such
/// refusals rare.)
///
/// ```
/// use synod::lock::{Command, LockClient, Mode, Outcome, SessionId, FencingToken, Wait};
///
/// let mut client = LockClient::new(7, 100).unwrap();
/// let open = client.open();
/// assert_eq!(open, Command::Open { client: 7, lease: 100, tag: 0 });
/// // ... proposed, chosen, applied; the service answered:
/// let opened = Outcome::Opened { session: SessionId(3), expires_at: 100, held: vec![] };
/// client.on_outcome(&open, &opened);
/// let acquire = client.acquire("printer", Mode::Exclusive, Wait::Forever).unwrap();
/// client.on_outcome(&acquire, &Outcome::Granted { token: FencingToken(4) });
/// assert_eq!(client.token("printer"), Some(FencingToken(4)));
/// // A keep-alive is due every third of the lease.
/// let keep_alives = (0..100).filter_map(|_| client.tick()).count();
/// assert_eq!(keep_alives, 3);
/// ```
#[derive(Clone, Debug)]
pub struct LockClient {
    client: u64,
    lease: u64,
    margin: u64,
    keep_alive_every: u64,
    now: u64,
    session: Option<SessionId>,
    /// Sessions below this one are behind the client: an answer opening one is stale (a
    /// session id is the slot that opened it, so a later session has a larger id).
    session_floor: u64,
    last_keep_alive_at: u64,
    live_until: u64,
    held: BTreeMap<String, (Mode, FencingToken)>,
    /// Locks whose release is proposed and not yet answered: no acquire of them meanwhile.
    releasing: BTreeSet<String>,
    /// The newest token released of each lock, with the number of that release: an answer
    /// granting that token or an older one is stale (an acquire the log ordered before the
    /// release). Cleared with the session (grants of an earlier session are ignored anyway),
    /// and at most [`RELEASED_MAX`] locks: past it the least recently released is forgotten.
    pub(super) released: BTreeMap<String, (FencingToken, u64)>,
    /// The locks of `released` by the number of their last release.
    release_order: BTreeMap<u64, String>,
    /// Releases noted so far: numbers them.
    releases: u64,
}

impl LockClient {
    /// A client named `client` (unique among live clients) that asks for leases of `lease`
    /// ticks, sends a keep-alive every third of it, and trusts its lease for a tenth less
    /// than that.
    ///
    /// # Errors
    /// [`ConfigError`] if `lease` is below 3.
    pub fn new(client: u64, lease: u64) -> Result<LockClient, ConfigError> {
        if lease < 3 {
            return Err(ConfigError::new("lease", "must be at least 3 ticks"));
        }
        Ok(LockClient {
            client,
            lease,
            margin: lease / 10,
            keep_alive_every: lease / 3,
            now: 0,
            session: None,
            session_floor: 0,
            last_keep_alive_at: 0,
            live_until: 0,
            held: BTreeMap::new(),
            releasing: BTreeSet::new(),
            released: BTreeMap::new(),
            release_order: BTreeMap::new(),
            releases: 0,
        })
    }

    /// The command that opens (or renews) this client's session. A client that restarted
    /// (a new `LockClient` with the same `client` id) gets its old session back if it is
    /// still open, and the answer lists the locks it holds: [`held`](Self::held) has them.
    /// (Answers addressed to the client before its restart must not reach the new one: they
    /// travel over connections that end with it.)
    pub fn open(&mut self) -> Command {
        Command::Open {
            client: self.client,
            lease: self.lease,
            tag: self.now,
        }
    }

    /// One local tick. Returns a keep-alive to propose when one is due.
    pub fn tick(&mut self) -> Option<Command> {
        self.now += 1;
        let session = self.session?;
        if self.now - self.last_keep_alive_at < self.keep_alive_every {
            return None;
        }
        self.last_keep_alive_at = self.now;
        Some(Command::KeepAlive {
            session,
            tag: self.now,
        })
    }

    /// The command that asks for lock `name`, or `None` without a session, or while a
    /// release of that lock waits for its answer (the log could order the acquire first,
    /// which the release would then undo).
    pub fn acquire(&self, name: &str, mode: Mode, wait: Wait) -> Option<Command> {
        if self.releasing.contains(name) {
            return None;
        }
        Some(Command::Acquire {
            session: self.session?,
            name: name.to_owned(),
            mode,
            wait,
        })
    }

    /// The command that releases lock `name` (or withdraws the wait), or `None` without a
    /// session. The lock is forgotten here at once: stop using it before proposing this.
    /// Until [`on_outcome`](Self::on_outcome) hears the answer, [`acquire`](Self::acquire)
    /// of the lock returns `None`; if the answer may have been lost, propose the release again
    /// (it is harmless).
    pub fn release(&mut self, name: &str) -> Option<Command> {
        // The grant to release, so that a copy of this release that arrives late cannot
        // release a later grant: the one held now, or, for a repeated release, the one that
        // release was for. Without one, the release withdraws a wait.
        let token = match self.held.remove(name) {
            Some((_, token)) => {
                self.note_released(name, token);
                Some(token)
            }
            None if self.releasing.contains(name) => {
                self.released.get(name).map(|&(token, _)| token)
            }
            None => None,
        };
        let session = self.session?;
        self.releasing.insert(name.to_owned());
        Some(Command::Release {
            session,
            name: name.to_owned(),
            token,
        })
    }

    /// What the service answered to `command`, which this client proposed.
    pub fn on_outcome(&mut self, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            // An answer opening a session the client has left behind (one it lost, or one
            // before the session it has) is stale.
            (Command::Open { tag, .. }, Outcome::Opened { session, held, .. })
                if session.0 >= self.session_floor =>
            {
                if self.session != Some(*session) {
                    // Nothing of an earlier session concerns this one. The session may be
                    // one this client opened before a restart, holding locks: take them, so
                    // that they are used or released rather than kept unknowingly. (A later
                    // answer to an open of the same session lists nothing new: ignored.)
                    self.held = held
                        .iter()
                        .map(|lock| (lock.name.clone(), (lock.mode, lock.token)))
                        .collect();
                    self.released.clear();
                    self.release_order.clear();
                    self.releasing.clear();
                }
                self.session = Some(*session);
                self.session_floor = session.0;
                // Credited with the tick this very open was sent at.
                self.renewed(*tag);
            }
            // Answers to commands of an earlier session are stale: they say nothing of this
            // one (a late grant would hand out a revoked token). A renewal is credited with
            // the tick this very keep-alive was sent at, whatever order the answers arrive in.
            (Command::KeepAlive { session, tag }, Outcome::Renewed { .. })
                if Some(*session) == self.session =>
            {
                self.renewed(*tag)
            }
            (
                Command::Acquire {
                    session,
                    name,
                    mode,
                    ..
                },
                Outcome::Granted { token },
            ) if Some(*session) == self.session => {
                self.granted(name, *mode, *token);
            }
            (Command::Release { session, name, .. }, outcome) => {
                if let (Outcome::Released { token }, true) =
                    (outcome, Some(*session) == self.session)
                {
                    // The grant released may be one this client never heard of (a withdraw
                    // that met a fresh grant): its event, if it comes later, is stale.
                    self.note_released(name, *token);
                }
                self.releasing.remove(name);
            }
            (_, Outcome::Refused(super::LockError::UnknownSession(session)))
                if Some(*session) == self.session =>
            {
                self.lost();
            }
            (Command::Close { session }, Outcome::Closed { .. })
                if Some(*session) == self.session =>
            {
                self.lost()
            }
            _ => {}
        }
    }

    /// An event of the service about this client's session: a grant of a queued acquire, or
    /// the session's expiry. Events about other sessions are ignored.
    pub fn on_event(&mut self, event: &LockEvent) {
        match event {
            LockEvent::Granted {
                session,
                name,
                mode,
                token,
            } if Some(*session) == self.session => {
                self.granted(name, *mode, *token);
            }
            LockEvent::Expired { session, .. } if Some(*session) == self.session => self.lost(),
            _ => {}
        }
    }

    /// The session, once opened and while not known to be lost.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// True while the local lease holds: a session is open and was renewed recently enough.
    pub fn is_live(&self) -> bool {
        self.session.is_some() && self.now < self.live_until
    }

    /// The fencing token of lock `name`, while it is held and the local lease holds.
    pub fn token(&self, name: &str) -> Option<FencingToken> {
        if !self.is_live() {
            return None;
        }
        self.held.get(name).map(|(_, token)| *token)
    }

    /// The locks held, with their mode and token (whether or not the lease still holds).
    pub fn held(&self) -> impl Iterator<Item = (&str, Mode, FencingToken)> + '_ {
        self.held
            .iter()
            .map(|(name, (mode, token))| (name.as_str(), *mode, *token))
    }

    /// Remembers that the grant of `token` of lock `name` is released, forgetting the least
    /// recently released lock if more than [`RELEASED_MAX`] are remembered (never this one: a
    /// late grant of the release just made is the likeliest still to come).
    fn note_released(&mut self, name: &str, token: FencingToken) {
        self.releases += 1;
        let number = self.releases;
        let newest = match self.released.remove(name) {
            Some((previous, previous_number)) => {
                self.release_order.remove(&previous_number);
                previous.max(token)
            }
            None => token,
        };
        self.released.insert(name.to_owned(), (newest, number));
        self.release_order.insert(number, name.to_owned());
        if self.released.len() > RELEASED_MAX {
            let (_, oldest) = self.release_order.pop_first().expect("not empty");
            self.released.remove(&oldest);
        }
    }

    /// Takes a grant, unless it is stale: the lock is being released, or the token is one
    /// already released.
    fn granted(&mut self, name: &str, mode: Mode, token: FencingToken) {
        let stale = self.releasing.contains(name)
            || self
                .released
                .get(name)
                .is_some_and(|&(newest, _)| token <= newest);
        if !stale {
            self.held.insert(name.to_owned(), (mode, token));
        }
    }

    /// An answer to a renewal sent at local tick `sent_at`: the service started the lease
    /// after that, so the local lease holds until `sent_at + lease - margin`. A tag from the
    /// future (not one this client wrote) extends nothing.
    fn renewed(&mut self, sent_at: u64) {
        if sent_at > self.now {
            return;
        }
        let until = sent_at + self.lease - self.margin;
        self.live_until = self.live_until.max(until);
    }

    fn lost(&mut self) {
        if let Some(session) = self.session.take() {
            self.session_floor = self.session_floor.max(session.0.saturating_add(1));
        }
        self.held.clear();
        self.released.clear();
        self.release_order.clear();
        self.releasing.clear();
        self.live_until = 0;
    }
}
