//! The lock service under faults: a seeded world of [`LockClient`]s on clocks of their own, a
//! replicated log that delays, loses and reorders nothing but changes leader, and the lock
//! checkers.
//!
//! The log is modelled, not run: the replica's agreement is checked by the main simulator, so
//! here every replica is one [`LockService`] applying the chosen entries in order. What the
//! world varies is time and failure:
//! - **Clients' clocks** run at rates of their own (at least
//!   [`LocksConfig::clock_rate_min`] of the leader's), and clients **stall** (a pause, a
//!   partition) while their clocks go on: their keep-alives stop and their lease runs out.
//! - **Proposals** take a random number of steps to be chosen, and some are lost; answers
//!   take steps to come back, and some are lost.
//! - **The leader fails** now and then: its proposals in flight are chosen or lost, log time
//!   stands still while there is no leader, and the next one proposes a `Grace` before its
//!   first `Time` ([`LeaseClock`]).
//!
//! - **Modes**: each acquire asks for a shared lock with probability
//!   [`LocksConfig::shared_percent`], else for an exclusive one.
//!
//! Checked after every step — **exclusion**: at any moment, in the clients' own views (a
//! client holds the lock while [`LockClient::token`] is some, in the mode
//! [`LockClient::held`] gives), either one client holds the lock exclusively and no one else
//! holds it, or any number hold it shared. That is the promise of the local lease: it must
//! end before the service lets the lock go, as long as a client's clock runs at least
//! `1 - margin` (0.9) as fast as the leader's. The service's own holders are checked the same
//! way after every entry, with [`LockService::check_invariants`]. Also **fencing**: a client's
//! token is always the token of a grant the service made to that client's session, in the
//! mode the client believes it holds; every grant's token is the slot of the entry that made
//! it (the shared waiters one entry grants share it), so tokens only grow from entry to
//! entry. And **fairness**: an acquire is granted at once only if no one waited for the lock
//! (a shared acquire does not pass a queued exclusive one). A configuration with clocks
//! slower than the margin (say `clock_rate_min: 0.5`) breaks exclusion, and the checker says
//! so: the fencing tokens are what protect a resource then.
//!
//! ```
//! use synod::sim::locks::{run, LocksConfig};
//!
//! let stats = run(&LocksConfig::new(3)).expect("mutual exclusion");
//! assert!(stats.grants > 0);
//! ```

use crate::lock::{
    Command, FencingToken, LeaseClock, LockClient, LockEvent, LockLimits, LockService, Mode,
    Outcome, SessionId, Wait,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt;

const LOCK: &str = "x";

/// One run of the lock world.
#[derive(Clone, Debug, PartialEq)]
pub struct LocksConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// Clients contending for the lock. Default 4.
    pub clients: usize,
    /// Steps (each one tick of the leader's clock). Default 4 000.
    pub steps: u64,
    /// The slowest client clock, as a fraction of the leader's rate. Default 0.92 (within
    /// the client's 10 % margin).
    pub clock_rate_min: f64,
    /// The lease clients ask for, in ticks. Default 60.
    pub lease: u64,
    /// Whether leaders fail, clients stall and messages are lost. Default true.
    pub faults: bool,
    /// The percentage of acquires that ask for a [`Mode::Shared`] lock (the others ask for
    /// [`Mode::Exclusive`]), 0 to 100. Default 50.
    pub shared_percent: u32,
    /// Print every entry applied and every event to standard error.
    pub trace: bool,
}

impl LocksConfig {
    /// The defaults, with `seed`.
    pub fn new(seed: u64) -> LocksConfig {
        LocksConfig {
            seed,
            clients: 4,
            steps: 4_000,
            clock_rate_min: 0.92,
            lease: 60,
            faults: true,
            shared_percent: 50,
            trace: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocksStats {
    /// Grants the service made (each session a group grant reaches counts once).
    pub grants: u64,
    /// Of them, grants in [`Mode::Shared`].
    pub shared_grants: u64,
    /// Sessions the service expired.
    pub expiries: u64,
    /// Leader failures.
    pub leader_changes: u64,
    /// Client stalls.
    pub stalls: u64,
    /// Steps some client held the lock in its own view.
    pub held_steps: u64,
    /// Steps two or more clients held the lock, shared, in their own views.
    pub shared_steps: u64,
}

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocksViolation {
    /// The run's seed.
    pub seed: u64,
    /// The step.
    pub step: u64,
    /// `check_lock_exclusion`, `check_lock_fencing`, `check_lock_fairness` or
    /// `check_lock_service` (the service's own invariants).
    pub property: &'static str,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for LocksViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {}: {} (replay: cargo run --release --example sim -- --locks --seed {})",
            self.seed, self.step, self.property, self.detail, self.seed
        )
    }
}

impl std::error::Error for LocksViolation {}

/// Runs one seed.
///
/// # Errors
/// The first [`LocksViolation`].
///
/// # Panics
/// If `config.clients` is 0, `config.clock_rate_min` is not in (0, 1] or
/// `config.shared_percent` is above 100.
pub fn run(config: &LocksConfig) -> Result<LocksStats, LocksViolation> {
    assert!(config.clients > 0, "at least one client");
    assert!(config.shared_percent <= 100, "shared_percent in 0..=100");
    assert!(
        config.clock_rate_min > 0.0 && config.clock_rate_min <= 1.0,
        "clock_rate_min in (0, 1]"
    );
    World::new(config).run()
}

/// What a client is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    /// Nothing in flight.
    Idle,
    /// A command is on its way (proposed, or its answer is), since this step.
    Waiting { since: u64 },
    /// Queued for the lock since this step; a grant or the wait's end comes as an event.
    Queued { since: u64 },
    /// Holds the lock in its view until this step.
    Holding { until: u64 },
}

struct Client {
    lock: LockClient,
    rate: f64,
    /// Fractional ticks owed to the client's clock.
    accumulated: f64,
    stalled_until: u64,
    want: Want,
}

/// A proposal on its way into the log.
struct Proposal {
    chosen_at: u64,
    command: Command,
    /// The client to answer, if any (the leader's clock entries have none).
    client: Option<usize>,
}

/// An answer or event on its way back to a client.
struct Delivery {
    at: u64,
    client: usize,
    command: Option<Command>,
    outcome: Option<Outcome>,
    event: Option<LockEvent>,
}

struct World {
    rng: ChaCha8Rng,
    config: LocksConfig,
    step: u64,
    service: LockService,
    slot: u64,
    clients: Vec<Client>,
    /// The leader's clock, while there is a leader.
    leader: Option<LeaseClock>,
    /// When the next leader takes over, while there is none.
    leaderless_until: u64,
    proposals: Vec<Proposal>,
    deliveries: Vec<Delivery>,
    /// Every grant the service made, by token, with the sessions it went to (several, for
    /// shared waiters granted by one entry) and the mode: a token a client holds must be one
    /// of them, granted to that client's session in the mode the client holds.
    granted: BTreeMap<FencingToken, BTreeMap<SessionId, Mode>>,
    /// The newest grant's token: grants only grow.
    last_grant: FencingToken,
    stats: LocksStats,
}

impl World {
    fn new(config: &LocksConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let clients = (0..config.clients)
            .map(|index| {
                let spread = 1.0 - config.clock_rate_min;
                let rate = 1.0 - spread * (rng.next_u32() as f64 / u32::MAX as f64);
                Client {
                    lock: LockClient::new(index as u64 + 1, config.lease).expect("lease >= 3"),
                    rate,
                    accumulated: 0.0,
                    stalled_until: 0,
                    want: Want::Idle,
                }
            })
            .collect();
        let limits = LockLimits {
            lease_min: 3,
            lock_delay: 10,
            ..LockLimits::default()
        };
        World {
            rng,
            config: config.clone(),
            step: 0,
            service: LockService::new(limits).expect("valid limits"),
            slot: 0,
            clients,
            leader: Some(LeaseClock::new(5, 40).expect("valid clock")),
            leaderless_until: 0,
            proposals: Vec::new(),
            deliveries: Vec::new(),
            granted: BTreeMap::new(),
            last_grant: FencingToken(0),
            stats: LocksStats::default(),
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.next_u32() % 100 < percent
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.rng.next_u64() % bound.max(1)
    }

    fn violation(&self, property: &'static str, detail: String) -> LocksViolation {
        LocksViolation {
            seed: self.config.seed,
            step: self.step,
            property,
            detail,
        }
    }

    /// A client (or the leader) proposes: chosen a few steps later, unless lost, or unless
    /// there is no leader to take it.
    fn propose(&mut self, command: Command, client: Option<usize>) {
        if self.leader.is_none() || (self.config.faults && self.chance(4)) {
            return;
        }
        let delay = 1 + self.below(4);
        self.proposals.push(Proposal {
            chosen_at: self.step + delay,
            command,
            client,
        });
    }

    fn deliver(
        &mut self,
        client: usize,
        command: Option<Command>,
        outcome: Option<Outcome>,
        event: Option<LockEvent>,
    ) {
        // Answers to a command may be lost; events come over the session's connection, late
        // but surely.
        if command.is_some() && self.config.faults && self.chance(4) {
            return;
        }
        let at = self.step + 1 + self.below(3);
        self.deliveries.push(Delivery {
            at,
            client,
            command,
            outcome,
            event,
        });
    }

    /// Applies the proposals chosen by now, in order.
    fn choose(&mut self) -> Result<(), LocksViolation> {
        let mut index = 0;
        while index < self.proposals.len() {
            if self.proposals[index].chosen_at > self.step {
                index += 1;
                continue;
            }
            let proposal = self.proposals.remove(index);
            self.slot += 1;
            let queued_before = !self.service.waiters(LOCK).is_empty();
            let outcome = self.service.apply(self.slot, &proposal.command.encode());
            if self.config.trace {
                eprintln!(
                    "step {} slot {} now {} client {:?}: {:?} -> {:?}",
                    self.step,
                    self.slot,
                    self.service.now(),
                    proposal.client,
                    proposal.command,
                    outcome
                );
            }
            if let Outcome::Granted { token } = outcome {
                self.record_grant(token, &proposal.command, queued_before)?;
            }
            self.check_service()?;
            if let Some(client) = proposal.client {
                self.deliver(client, Some(proposal.command), Some(outcome), None);
            }
            for event in self.service.take_events() {
                if self.config.trace {
                    eprintln!("    event {event:?}");
                }
                match &event {
                    LockEvent::Granted {
                        session,
                        token,
                        mode,
                        ..
                    } => self.note_grant(*token, *session, *mode)?,
                    LockEvent::Expired { .. } => self.stats.expiries += 1,
                    LockEvent::TimedOut { .. } => {}
                }
                let session = match &event {
                    LockEvent::Granted { session, .. }
                    | LockEvent::TimedOut { session, .. }
                    | LockEvent::Expired { session, .. } => *session,
                };
                let owner = (0..self.clients.len())
                    .find(|&index| self.clients[index].lock.session() == Some(session));
                if let Some(owner) = owner {
                    self.deliver(owner, None, None, Some(event));
                }
            }
        }
        Ok(())
    }

    /// A grant the entry at `self.slot` made (an answer or an event): its token must be that
    /// slot, no smaller than the last grant's (equal only for the grants of one entry), a
    /// session is granted a token once, and the grants of the lock one entry makes are one
    /// exclusive or a run of shared.
    fn note_grant(
        &mut self,
        token: FencingToken,
        session: SessionId,
        mode: Mode,
    ) -> Result<(), LocksViolation> {
        let shares = self.granted.get(&token).is_some_and(|sessions| {
            sessions.contains_key(&session)
                || mode == Mode::Exclusive
                || sessions.values().any(|&other| other == Mode::Exclusive)
        });
        if token.0 != self.slot || token < self.last_grant || shares {
            let detail = format!(
                "{session:?} granted {token:?} ({mode:?}) at slot {} after {:?}",
                self.slot, self.last_grant
            );
            return Err(self.violation("check_lock_fencing", detail));
        }
        self.stats.grants += 1;
        if mode == Mode::Shared {
            self.stats.shared_grants += 1;
        }
        self.last_grant = token;
        self.granted.entry(token).or_default().insert(session, mode);
        Ok(())
    }

    /// The answer `Granted { token }` to `command`, applied at `self.slot`; `queued_before`:
    /// whether someone waited for the lock just before.
    fn record_grant(
        &mut self,
        token: FencingToken,
        command: &Command,
        queued_before: bool,
    ) -> Result<(), LocksViolation> {
        let Command::Acquire { session, mode, .. } = command else {
            return Ok(());
        };
        if token.0 == self.slot {
            // A fresh grant, past whoever waited: FIFO says no (a shared acquire must not
            // pass a queued exclusive one, or exclusive waiters starve).
            if queued_before {
                let detail =
                    format!("{session:?} granted {token:?} ({mode:?}) at once while others waited");
                return Err(self.violation("check_lock_fairness", detail));
            }
            // An acquire grants only to whoever asked: no earlier grant shares its token.
            if token <= self.last_grant {
                let detail = format!("grant {token:?} after {:?}", self.last_grant);
                return Err(self.violation("check_lock_fencing", detail));
            }
            return self.note_grant(token, *session, *mode);
        }
        // An older token: the answer to a retried acquire, which must repeat the grant this
        // session already had, in the same mode. Recording it as a grant would make a token
        // answered to the wrong session (or never granted) look like a grant the service
        // made to it.
        let had = self
            .granted
            .get(&token)
            .and_then(|sessions| sessions.get(session));
        if had != Some(mode) {
            let detail = format!(
                "{session:?} was answered {token:?} ({mode:?}) at slot {}, granted to {:?}",
                self.slot,
                self.granted.get(&token)
            );
            return Err(self.violation("check_lock_fencing", detail));
        }
        Ok(())
    }

    /// The service's holders after an entry: one exclusive or any number of shared; and the
    /// service's own invariants.
    fn check_service(&self) -> Result<(), LocksViolation> {
        let holders = self.service.holders(LOCK);
        if !compatible(holders.iter().map(|&(_, mode, _)| mode)) {
            let detail = format!(
                "the service's holders after slot {}: {holders:?}",
                self.slot
            );
            return Err(self.violation("check_lock_exclusion", detail));
        }
        if let Err(broken) = self.service.check_invariants() {
            let detail = format!("after slot {}: {broken}", self.slot);
            return Err(self.violation("check_lock_service", detail));
        }
        Ok(())
    }

    /// Hands the answers and events due by now to their clients.
    fn receive(&mut self) {
        let mut index = 0;
        while index < self.deliveries.len() {
            let due = self.deliveries[index].at <= self.step;
            let client = self.deliveries[index].client;
            if !due || self.clients[client].stalled_until > self.step {
                index += 1;
                continue;
            }
            let delivery = self.deliveries.remove(index);
            let step = self.step;
            let state = &mut self.clients[client];
            if let (Some(command), Some(outcome)) = (&delivery.command, &delivery.outcome) {
                state.lock.on_outcome(command, outcome);
                // Keep-alives run on their own; any other answer ends the wait.
                let keep_alive = matches!(command, Command::KeepAlive { .. });
                if matches!(state.want, Want::Waiting { .. }) && !keep_alive {
                    state.want = match outcome {
                        Outcome::Queued { .. } => Want::Queued { since: step },
                        _ => Want::Idle,
                    };
                }
            }
            if let Some(event) = &delivery.event {
                state.lock.on_event(event);
                if matches!(state.want, Want::Queued { .. }) {
                    state.want = Want::Idle;
                }
            }
        }
    }

    /// Each client's clock advances at its rate; live clients act.
    fn clients_act(&mut self) {
        for index in 0..self.clients.len() {
            let hold = 5 + self.below(40);
            let forever = self.chance(50);
            let mode = if self.chance(self.config.shared_percent) {
                Mode::Shared
            } else {
                Mode::Exclusive
            };
            let step = self.step;
            let client = &mut self.clients[index];
            client.accumulated += client.rate;
            let mut commands = Vec::new();
            while client.accumulated >= 1.0 {
                client.accumulated -= 1.0;
                if let Some(keep_alive) = client.lock.tick() {
                    commands.push(keep_alive);
                }
            }
            let stalled = client.stalled_until > step;
            if !stalled {
                let holding = client.lock.token(LOCK).is_some();
                match client.want.clone() {
                    Want::Idle if client.lock.session().is_none() => {
                        commands.push(client.lock.open());
                        client.want = Want::Waiting { since: step };
                    }
                    Want::Idle | Want::Queued { .. } if holding => {
                        client.want = Want::Holding { until: step + hold };
                    }
                    Want::Idle => {
                        let wait = if forever {
                            Wait::Forever
                        } else {
                            Wait::Ticks(30)
                        };
                        // While a release waits for its answer, no acquire: say it again.
                        let command = client
                            .lock
                            .acquire(LOCK, mode, wait)
                            .or_else(|| client.lock.release(LOCK));
                        if let Some(command) = command {
                            commands.push(command);
                            client.want = Want::Waiting { since: step };
                        }
                    }
                    // An answer may be lost: after a while, act again.
                    Want::Waiting { since } if since + 20 <= step => client.want = Want::Idle,
                    // A grant may have been lost with a crashed connection: ask again.
                    Want::Queued { since } if since + 100 <= step => client.want = Want::Idle,
                    Want::Holding { until } if until <= step || !holding => {
                        if let Some(release) = client.lock.release(LOCK) {
                            commands.push(release);
                        }
                        client.want = Want::Waiting { since: step };
                    }
                    Want::Waiting { .. } | Want::Queued { .. } | Want::Holding { .. } => {}
                }
            }
            // A stalled client's messages do not leave it (its clock runs on).
            if !stalled {
                for command in commands {
                    self.propose(command, Some(index));
                }
            }
        }
    }

    /// The leader's clock, and its failures.
    fn leader_acts(&mut self) {
        if self.leader.is_none() {
            if self.step >= self.leaderless_until {
                self.leader = Some(LeaseClock::new(5, 40).expect("valid clock"));
            }
            return;
        }
        if self.config.faults && self.below(400) == 0 {
            // The leader fails: what it had in flight is chosen or lost; no leader for a
            // while.
            self.stats.leader_changes += 1;
            self.leader = None;
            let gap = 5 + self.below(40);
            self.leaderless_until = self.step + gap;
            self.proposals.retain(|_| self.rng.next_u32() % 2 == 0);
            return;
        }
        let now = self.service.now();
        let clock = self.leader.as_mut().expect("checked");
        if let Some(command) = clock.tick(true, now) {
            self.propose(command, None);
        }
    }

    fn faults(&mut self) {
        if self.config.faults && self.below(300) == 0 {
            let index = self.below(self.clients.len() as u64) as usize;
            if self.clients[index].stalled_until <= self.step {
                let length = 20 + self.below(3 * self.config.lease);
                self.clients[index].stalled_until = self.step + length;
                self.stats.stalls += 1;
            }
        }
    }

    /// Exclusion and fencing, as the clients see them.
    fn check(&mut self) -> Result<(), LocksViolation> {
        if self.config.trace {
            let views: Vec<String> = self
                .clients
                .iter()
                .map(|c| {
                    format!(
                        "{:?}/{:?}/{:?}/stalled {}",
                        c.lock.session(),
                        c.lock.token(LOCK),
                        c.want,
                        c.stalled_until > self.step
                    )
                })
                .collect();
            eprintln!("step {}: {}", self.step, views.join(" | "));
        }
        // Who holds the lock in its own view: a token while the local lease holds, in the
        // mode the client took it in.
        let holders: Vec<(usize, Mode, FencingToken)> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(index, client)| {
                let token = client.lock.token(LOCK)?;
                let (_, mode, _) = client.lock.held().find(|&(name, ..)| name == LOCK)?;
                Some((index, mode, token))
            })
            .collect();
        for &(index, mode, token) in &holders {
            let sessions = self.granted.get(&token);
            let session = self.clients[index].lock.session();
            let granted = session.and_then(|session| sessions?.get(&session));
            if granted != Some(&mode) {
                let detail = format!(
                    "client {index} ({session:?}) holds {token:?} {mode:?}, granted to {sessions:?}"
                );
                return Err(self.violation("check_lock_fencing", detail));
            }
        }
        if !compatible(holders.iter().map(|&(_, mode, _)| mode)) {
            let rates: Vec<f64> = holders.iter().map(|h| self.clients[h.0].rate).collect();
            let detail = format!("clients {holders:?} all hold the lock (clock rates {rates:?})");
            return Err(self.violation("check_lock_exclusion", detail));
        }
        if !holders.is_empty() {
            self.stats.held_steps += 1;
        }
        if holders.len() > 1 {
            self.stats.shared_steps += 1;
        }
        Ok(())
    }

    fn run(mut self) -> Result<LocksStats, LocksViolation> {
        while self.step < self.config.steps {
            self.step += 1;
            self.leader_acts();
            self.choose()?;
            self.receive();
            self.clients_act();
            self.faults();
            self.check()?;
        }
        Ok(self.stats)
    }
}

/// Whether holders in these modes may hold one lock at once: one exclusive holder alone, or
/// any number of shared ones.
fn compatible(modes: impl Iterator<Item = Mode>) -> bool {
    let (mut holders, mut exclusive) = (0, false);
    for mode in modes {
        holders += 1;
        exclusive |= mode == Mode::Exclusive;
    }
    !exclusive || holders <= 1
}

#[cfg(test)]
mod tests {
    //! The checkers on hand-built grants and client views (a broken service is not reachable
    //! through [`run`], whose service is the real one).
    use super::*;

    fn acquire_in(session: u64, mode: Mode) -> Command {
        Command::Acquire {
            session: SessionId(session),
            name: LOCK.into(),
            mode,
            wait: Wait::Forever,
        }
    }

    fn acquire(session: u64) -> Command {
        acquire_in(session, Mode::Exclusive)
    }

    /// Bug: `record_grant` took any `Granted` answer carrying an older token (the answer to a
    /// retried acquire) as a grant to the asking session, and overwrote the record of whom
    /// the token went to. A service answering session 2 with session 1's token was not
    /// caught: session 2's client then held a token the service never granted it, and the
    /// per-step fencing check agreed with the overwritten record. Fails without the check in
    /// `record_grant`.
    #[test]
    fn a_retried_acquire_answered_with_another_sessions_token_is_a_fencing_violation() {
        let mut world = World::new(&LocksConfig::new(1));
        world.slot = 5;
        world
            .record_grant(FencingToken(5), &acquire(1), false)
            .unwrap();
        world.slot = 9;
        let violation = world
            .record_grant(FencingToken(5), &acquire(2), false)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
        assert_eq!(
            world.granted[&FencingToken(5)].keys().collect::<Vec<_>>(),
            [&SessionId(1)]
        );
        // A token never granted at all, older than the slot.
        let violation = world
            .record_grant(FencingToken(7), &acquire(1), false)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
        // The same session's token, but answered to an acquire in the other mode.
        let violation = world
            .record_grant(FencingToken(5), &acquire_in(1, Mode::Shared), false)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
    }

    #[test]
    fn legal_grants_are_not_flagged() {
        let mut world = World::new(&LocksConfig::new(1));
        world.slot = 5;
        world
            .record_grant(FencingToken(5), &acquire(1), false)
            .unwrap();
        // The answer to a retried acquire repeats the grant.
        world.slot = 6;
        world
            .record_grant(FencingToken(5), &acquire(1), false)
            .unwrap();
        // The lock expired and is granted again, with a larger token.
        world.slot = 20;
        world
            .record_grant(FencingToken(20), &acquire(2), false)
            .unwrap();
        assert_eq!(world.last_grant, FencingToken(20));
        assert_eq!(world.stats.grants, 2);
        // A new grant must be larger than the last one.
        world.slot = 20;
        let violation = world
            .record_grant(FencingToken(20), &acquire(3), false)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
    }

    /// One entry grants a run of shared waiters: they share its token, legally; the same
    /// session granted twice by it, or a grant whose token is not its entry's slot, is not.
    #[test]
    fn shared_waiters_granted_by_one_entry_share_its_token() {
        let mut world = World::new(&LocksConfig::new(1));
        world.slot = 8;
        for session in [1, 2, 3] {
            world
                .note_grant(FencingToken(8), SessionId(session), Mode::Shared)
                .unwrap();
        }
        assert_eq!((world.stats.grants, world.stats.shared_grants), (3, 3));
        let violation = world
            .note_grant(FencingToken(8), SessionId(2), Mode::Shared)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
        // An exclusive grant never shares its entry's token (one lock here).
        let violation = world
            .note_grant(FencingToken(8), SessionId(4), Mode::Exclusive)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
        world.slot = 9;
        let violation = world
            .note_grant(FencingToken(8), SessionId(4), Mode::Shared)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
        world
            .note_grant(FencingToken(9), SessionId(4), Mode::Exclusive)
            .unwrap();
        let violation = world
            .note_grant(FencingToken(9), SessionId(5), Mode::Shared)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing");
    }

    /// A shared acquire granted at once while an exclusive one waits jumps the FIFO queue.
    #[test]
    fn a_grant_past_a_queue_is_a_fairness_violation() {
        let mut world = World::new(&LocksConfig::new(1));
        world.slot = 4;
        let violation = world
            .record_grant(FencingToken(4), &acquire_in(1, Mode::Shared), true)
            .unwrap_err();
        assert_eq!(violation.property, "check_lock_fairness");
        // A retried acquire answered with its old token while others wait is legal.
        world
            .record_grant(FencingToken(4), &acquire_in(1, Mode::Shared), false)
            .unwrap();
        world.slot = 7;
        world
            .record_grant(FencingToken(4), &acquire_in(1, Mode::Shared), true)
            .unwrap();
    }

    /// Client `index` of `world` opens session `session` and is answered `token` for an
    /// acquire in `mode` (the answer is hand-built: the service may never have made it).
    fn hold(world: &mut World, index: usize, session: u64, mode: Mode, token: u64) {
        let client = &mut world.clients[index].lock;
        let open = client.open();
        let opened = Outcome::Opened {
            session: SessionId(session),
            expires_at: 100,
            held: Vec::new(),
        };
        client.on_outcome(&open, &opened);
        let acquire = client.acquire(LOCK, mode, Wait::Forever).unwrap();
        client.on_outcome(
            &acquire,
            &Outcome::Granted {
                token: FencingToken(token),
            },
        );
        assert_eq!(client.token(LOCK), Some(FencingToken(token)));
    }

    /// The mutation: a broken service (or client) grants a shared lock while an exclusive
    /// one is held. The grants themselves look fine to the fencing checker (each token is
    /// its entry's slot, to the session asking); the exclusion checker must see the two
    /// holders. Fails if `compatible` ignores modes (returns true for any holders); its
    /// former mode-blind rule, at most one holder, fails `many_shared_holders_at_once_are_legal`.
    #[test]
    fn a_shared_grant_while_an_exclusive_one_is_held_is_an_exclusion_violation() {
        let mut world = World::new(&LocksConfig {
            clients: 3,
            ..LocksConfig::new(1)
        });
        world.slot = 5;
        world
            .record_grant(FencingToken(5), &acquire_in(1, Mode::Exclusive), false)
            .unwrap();
        hold(&mut world, 0, 1, Mode::Exclusive, 5);
        world.check().unwrap();
        world.slot = 6;
        world
            .record_grant(FencingToken(6), &acquire_in(2, Mode::Shared), false)
            .unwrap();
        hold(&mut world, 1, 2, Mode::Shared, 6);
        let violation = world.check().unwrap_err();
        assert_eq!(violation.property, "check_lock_exclusion", "{violation}");

        // Shared, then exclusive: caught too.
        let mut world = World::new(&LocksConfig {
            clients: 3,
            ..LocksConfig::new(1)
        });
        world.slot = 5;
        world
            .record_grant(FencingToken(5), &acquire_in(1, Mode::Shared), false)
            .unwrap();
        hold(&mut world, 0, 1, Mode::Shared, 5);
        world.slot = 6;
        world
            .record_grant(FencingToken(6), &acquire_in(2, Mode::Exclusive), false)
            .unwrap();
        hold(&mut world, 1, 2, Mode::Exclusive, 6);
        let violation = world.check().unwrap_err();
        assert_eq!(violation.property, "check_lock_exclusion", "{violation}");
    }

    #[test]
    fn many_shared_holders_at_once_are_legal() {
        let mut world = World::new(&LocksConfig {
            clients: 3,
            ..LocksConfig::new(1)
        });
        world.slot = 5;
        for session in [1, 2] {
            world
                .note_grant(FencingToken(5), SessionId(session), Mode::Shared)
                .unwrap();
        }
        world.slot = 6;
        world
            .record_grant(FencingToken(6), &acquire_in(3, Mode::Shared), false)
            .unwrap();
        hold(&mut world, 0, 1, Mode::Shared, 5);
        hold(&mut world, 1, 2, Mode::Shared, 5);
        hold(&mut world, 2, 3, Mode::Shared, 6);
        world.check().unwrap();
        assert_eq!((world.stats.held_steps, world.stats.shared_steps), (1, 1));
    }

    /// A client holding a token in a mode the service did not grant it in (it took a shared
    /// grant for an exclusive one) breaks fencing, even alone.
    #[test]
    fn a_token_held_in_the_wrong_mode_is_a_fencing_violation() {
        let mut world = World::new(&LocksConfig::new(1));
        world.slot = 5;
        world
            .note_grant(FencingToken(5), SessionId(1), Mode::Shared)
            .unwrap();
        hold(&mut world, 0, 1, Mode::Exclusive, 5);
        let violation = world.check().unwrap_err();
        assert_eq!(violation.property, "check_lock_fencing", "{violation}");
    }

    #[test]
    fn compatible_modes() {
        use Mode::{Exclusive, Shared};
        assert!(compatible([].into_iter()));
        assert!(compatible([Exclusive].into_iter()));
        assert!(compatible([Shared, Shared, Shared].into_iter()));
        assert!(!compatible([Exclusive, Exclusive].into_iter()));
        assert!(!compatible([Shared, Exclusive].into_iter()));
        assert!(!compatible([Exclusive, Shared, Shared].into_iter()));
    }
}
