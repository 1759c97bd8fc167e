//! The leader's side of log time: when to propose `Time` and `Grace`.

use super::Command;
use crate::error::ConfigError;

/// Turns a leader's ticks into the [`Command::Time`] and [`Command::Grace`] entries that move
/// a lock service's log time. Sans-IO: call [`tick`](LeaseClock::tick) on every replica at
/// every tick, and propose what it returns.
///
/// - On a replica that does not lead, it returns nothing.
/// - On becoming leader it returns [`Command::Grace`] first: every lease is extended by
///   `grace` ticks past the log time this replica has applied, before this leader's first
///   `Time` can expire anyone. Keep-alives sent while there was no leader could not be
///   chosen; the grace gives their clients time to send them again.
/// - Then, every `interval` ticks, [`Command::Time`] with the leader's clock: the log time it
///   had applied when it took over, plus the ticks it has led since, but never more than
///   `interval` past the log time it has applied (a lost `Time` slows log time down instead
///   of making it jump: a lease renewed at the stale log time keeps its whole length).
///
/// A deposed leader's late `Time` entries are harmless: the service ignores a `now` below its
/// log time.
///
/// ```
/// use synod::lock::{Command, LeaseClock};
///
/// let mut clock = LeaseClock::new(5, 50).unwrap();
/// assert_eq!(clock.tick(false, 0), None);
/// assert_eq!(clock.tick(true, 0), Some(Command::Grace { ticks: 50 }));
/// // Each `Time` applied before the next one is proposed:
/// let mut applied_now = 0;
/// let mut proposed = Vec::new();
/// for _ in 0..10 {
///     if let Some(command) = clock.tick(true, applied_now) {
///         if let Command::Time { now } = command {
///             applied_now = now;
///         }
///         proposed.push(command);
///     }
/// }
/// assert_eq!(proposed, [Command::Time { now: 5 }, Command::Time { now: 10 }]);
/// // If they are lost, log time runs slow rather than jumping past the lost ones:
/// let proposed: Vec<Command> = (0..10).filter_map(|_| clock.tick(true, 10)).collect();
/// assert_eq!(proposed, [Command::Time { now: 15 }, Command::Time { now: 15 }]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseClock {
    interval: u64,
    grace: u64,
    leading: bool,
    clock: u64,
    since_time: u64,
}

impl LeaseClock {
    /// A clock that proposes `Time` every `interval` ticks and a `grace` of that many ticks
    /// when its replica becomes leader. Choose `grace` above the longest time a client may
    /// need to reach the new leader, and `interval` well below the shortest lease.
    ///
    /// # Errors
    /// [`ConfigError`] if `interval` is 0.
    pub fn new(interval: u64, grace: u64) -> Result<LeaseClock, ConfigError> {
        if interval == 0 {
            return Err(ConfigError::new("interval", "must be at least 1"));
        }
        Ok(LeaseClock {
            interval,
            grace,
            leading: false,
            clock: 0,
            since_time: 0,
        })
    }

    /// One tick. `is_leader`: whether this replica leads now; `applied_now`: the service's
    /// [`now`](super::LockService::now) on this replica. Returns the command to propose, if
    /// any.
    pub fn tick(&mut self, is_leader: bool, applied_now: u64) -> Option<Command> {
        if !is_leader {
            self.leading = false;
            return None;
        }
        if !self.leading {
            self.leading = true;
            self.clock = applied_now;
            self.since_time = 0;
            return Some(Command::Grace { ticks: self.grace });
        }
        self.clock = self.clock.max(applied_now).saturating_add(1);
        self.since_time += 1;
        if self.since_time < self.interval {
            return None;
        }
        self.since_time = 0;
        // Never more than `interval` past the log time applied here: if `Time` entries were
        // lost, log time then runs slow (leases last longer, which is safe) instead of
        // jumping over the lost ones, which would end a lease renewed meanwhile (counted from
        // the stale log time) early, while its client still trusts it.
        let now = self.clock.min(applied_now.saturating_add(self.interval));
        Some(Command::Time { now })
    }
}
