//! The lock service's rules, one test each, and a property test over random histories.

use super::*;
use proptest::prelude::*;

/// A service and the slots of its log.
struct Log {
    service: LockService,
    slot: Slot,
}

impl Log {
    fn new() -> Log {
        Log::with(LockLimits {
            lock_delay: 10,
            ..LockLimits::default()
        })
    }

    fn with(limits: LockLimits) -> Log {
        Log {
            service: LockService::new(limits).unwrap(),
            slot: 0,
        }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.slot += 1;
        let outcome = self.service.apply(self.slot, &command.encode());
        self.service
            .check_invariants()
            .expect("invariants hold after every entry");
        outcome
    }

    fn open(&mut self, client: u64, lease: u64) -> SessionId {
        match self.apply(Command::Open {
            client,
            lease,
            tag: 0,
        }) {
            Outcome::Opened { session, .. } => session,
            other => panic!("open refused: {other:?}"),
        }
    }

    fn acquire(&mut self, session: SessionId, name: &str, mode: Mode, wait: Wait) -> Outcome {
        self.apply(Command::Acquire {
            session,
            name: name.into(),
            mode,
            wait,
        })
    }

    fn release(&mut self, session: SessionId, name: &str) -> Outcome {
        self.apply(Command::Release {
            session,
            name: name.into(),
            token: None,
        })
    }

    fn time(&mut self, now: u64) -> Outcome {
        self.apply(Command::Time { now })
    }

    fn granted(&self) -> Outcome {
        Outcome::Granted {
            token: FencingToken(self.slot),
        }
    }
}

use Mode::{Exclusive, Shared};

#[test]
fn an_exclusive_lock_excludes_and_a_try_lock_is_busy() {
    let mut log = Log::new();
    let (a, b) = (log.open(1, 100), log.open(2, 100));
    assert_eq!(log.acquire(a, "x", Exclusive, Wait::Try), log.granted());
    assert_eq!(
        log.acquire(b, "x", Exclusive, Wait::Try),
        Outcome::Refused(LockError::Busy)
    );
    assert_eq!(
        log.acquire(b, "x", Shared, Wait::Try),
        Outcome::Refused(LockError::Busy)
    );
    assert_eq!(log.service.holders("x"), [(a, Exclusive, FencingToken(3))]);
    // Another lock is independent.
    assert_eq!(log.acquire(b, "y", Exclusive, Wait::Try), log.granted());
}

#[test]
fn waiters_are_granted_in_fifo_order_with_the_token_of_the_granting_entry() {
    let mut log = Log::new();
    let sessions: Vec<SessionId> = (1..=4).map(|client| log.open(client, 100)).collect();
    assert_eq!(
        log.acquire(sessions[0], "x", Exclusive, Wait::Forever),
        log.granted()
    );
    for (position, &session) in sessions[1..].iter().enumerate() {
        assert_eq!(
            log.acquire(session, "x", Exclusive, Wait::Forever),
            Outcome::Queued { position }
        );
    }
    let mut tokens = vec![FencingToken(5)];
    for index in 0..3 {
        assert_eq!(
            log.release(sessions[index], "x"),
            Outcome::Released {
                token: tokens[index]
            }
        );
        let events = log.service.take_events();
        assert_eq!(
            events,
            [LockEvent::Granted {
                session: sessions[index + 1],
                name: "x".into(),
                mode: Exclusive,
                token: FencingToken(log.slot),
            }]
        );
        tokens.push(FencingToken(log.slot));
    }
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "{tokens:?}"
    );
    assert_eq!(
        log.release(sessions[3], "x"),
        Outcome::Released { token: tokens[3] }
    );
    // Nothing is left of the lock.
    assert!(log.service.holders("x").is_empty());
    assert!(log.service.state.locks.is_empty());
}

#[test]
fn readers_share_a_writer_waits_and_later_readers_queue_behind_the_writer() {
    let mut log = Log::new();
    let (r1, r2, w, r3) = (
        log.open(1, 100),
        log.open(2, 100),
        log.open(3, 100),
        log.open(4, 100),
    );
    assert_eq!(log.acquire(r1, "x", Shared, Wait::Forever), log.granted());
    assert_eq!(log.acquire(r2, "x", Shared, Wait::Forever), log.granted());
    assert_eq!(
        log.acquire(w, "x", Exclusive, Wait::Forever),
        Outcome::Queued { position: 0 }
    );
    // A reader may not overtake the queued writer: no starvation.
    assert_eq!(
        log.acquire(r3, "x", Shared, Wait::Try),
        Outcome::Refused(LockError::Busy)
    );
    assert_eq!(
        log.acquire(r3, "x", Shared, Wait::Forever),
        Outcome::Queued { position: 1 }
    );
    log.release(r1, "x");
    assert!(log.service.take_events().is_empty(), "r2 still reads");
    log.release(r2, "x");
    assert_eq!(
        log.service.holders("x"),
        [(w, Exclusive, FencingToken(log.slot))]
    );
    log.service.take_events();
    log.release(w, "x");
    assert_eq!(
        log.service.holders("x"),
        [(r3, Shared, FencingToken(log.slot))]
    );
}

#[test]
fn a_run_of_shared_waiters_is_granted_together() {
    let mut log = Log::new();
    let w = log.open(1, 100);
    let readers: Vec<SessionId> = (2..=4).map(|client| log.open(client, 100)).collect();
    let w2 = log.open(5, 100);
    log.acquire(w, "x", Exclusive, Wait::Forever);
    for &reader in &readers {
        log.acquire(reader, "x", Shared, Wait::Forever);
    }
    log.acquire(w2, "x", Exclusive, Wait::Forever);
    log.release(w, "x");
    let token = FencingToken(log.slot);
    let holders = log.service.holders("x");
    assert_eq!(
        holders,
        readers
            .iter()
            .map(|&r| (r, Shared, token))
            .collect::<Vec<_>>()
    );
    assert_eq!(log.service.waiters("x"), [(w2, Exclusive)]);
    assert_eq!(log.service.take_events().len(), 3);
}

#[test]
fn a_retried_acquire_is_answered_as_the_first_time() {
    let mut log = Log::new();
    let (a, b) = (log.open(1, 100), log.open(2, 100));
    let first = log.acquire(a, "x", Exclusive, Wait::Forever);
    assert_eq!(
        first,
        Outcome::Granted {
            token: FencingToken(3)
        }
    );
    assert_eq!(log.acquire(a, "x", Exclusive, Wait::Forever), first);
    assert_eq!(
        log.acquire(a, "x", Shared, Wait::Forever),
        Outcome::Refused(LockError::HeldInOtherMode(Exclusive))
    );
    assert_eq!(
        log.acquire(b, "x", Exclusive, Wait::Forever),
        Outcome::Queued { position: 0 }
    );
    assert_eq!(
        log.acquire(b, "x", Exclusive, Wait::Try),
        Outcome::Queued { position: 0 }
    );
    assert_eq!(log.service.waiters("x"), [(b, Exclusive)]);
}

#[test]
fn release_withdraws_a_wait_and_refuses_what_is_not_held() {
    let mut log = Log::new();
    let (a, b, c) = (log.open(1, 100), log.open(2, 100), log.open(3, 100));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    log.acquire(c, "x", Shared, Wait::Forever);
    assert_eq!(log.release(b, "x"), Outcome::Withdrawn);
    assert_eq!(log.service.waiters("x"), [(c, Shared)]);
    assert_eq!(log.release(b, "x"), Outcome::Refused(LockError::NotHeld));
    assert_eq!(
        log.release(b, "nothing"),
        Outcome::Refused(LockError::NotHeld)
    );
    let ghost = SessionId(999);
    assert_eq!(
        log.release(ghost, "x"),
        Outcome::Refused(LockError::UnknownSession(ghost))
    );
    assert_eq!(
        log.acquire(ghost, "x", Shared, Wait::Try),
        Outcome::Refused(LockError::UnknownSession(ghost))
    );
    // Withdrawing the head of the queue lets the next waiter in if the lock admits it.
    let mut log = Log::new();
    let (r, w, r2) = (log.open(1, 100), log.open(2, 100), log.open(3, 100));
    log.acquire(r, "x", Shared, Wait::Forever);
    log.acquire(w, "x", Exclusive, Wait::Forever);
    log.acquire(r2, "x", Shared, Wait::Forever);
    assert_eq!(log.release(w, "x"), Outcome::Withdrawn);
    assert_eq!(
        log.service.holders("x"),
        [
            (r, Shared, FencingToken(4)),
            (r2, Shared, FencingToken(log.slot))
        ]
    );
}

#[test]
fn a_release_with_a_token_releases_that_grant_only() {
    let mut log = Log::new();
    let (a, b) = (log.open(1, 100), log.open(2, 100));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    let first = FencingToken(log.slot);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    let release = |token| Command::Release {
        session: a,
        name: "x".into(),
        token,
    };
    assert_eq!(
        log.apply(release(Some(first))),
        Outcome::Released { token: first }
    );
    // b has it now; a queues again and gets it back with a later token.
    log.acquire(a, "x", Exclusive, Wait::Forever);
    assert_eq!(
        log.apply(release(Some(first))),
        Outcome::Refused(LockError::NotHeld),
        "a's wait stays"
    );
    assert_eq!(log.service.waiters("x"), [(a, Exclusive)]);
    log.release(b, "x");
    let second = FencingToken(log.slot);
    assert_eq!(log.service.holders("x"), [(a, Exclusive, second)]);
    // A late copy of the first release does not release the second grant.
    assert_eq!(
        log.apply(release(Some(first))),
        Outcome::Refused(LockError::NotHeld)
    );
    assert_eq!(log.service.holders("x"), [(a, Exclusive, second)]);
    assert_eq!(
        log.apply(release(Some(second))),
        Outcome::Released { token: second }
    );
}

#[test]
fn a_timed_wait_times_out_and_unblocks_the_waiters_behind_it() {
    let mut log = Log::new();
    let (r, w, r2) = (log.open(1, 1000), log.open(2, 1000), log.open(3, 1000));
    log.acquire(r, "x", Shared, Wait::Forever);
    assert_eq!(
        log.acquire(w, "x", Exclusive, Wait::Ticks(20)),
        Outcome::Queued { position: 0 }
    );
    log.acquire(r2, "x", Shared, Wait::Forever);
    log.time(19);
    assert!(log.service.take_events().is_empty());
    log.time(20);
    assert_eq!(
        log.service.take_events(),
        [
            LockEvent::TimedOut {
                session: w,
                name: "x".into()
            },
            LockEvent::Granted {
                session: r2,
                name: "x".into(),
                mode: Shared,
                token: FencingToken(log.slot)
            }
        ]
    );
    assert!(log.service.waiters("x").is_empty());
    // A zero wait times out at the next Time entry.
    let v = log.open(4, 1000);
    log.acquire(v, "y", Exclusive, Wait::Forever);
    assert_eq!(
        log.acquire(w, "y", Exclusive, Wait::Ticks(0)),
        Outcome::Queued { position: 0 }
    );
    log.time(21);
    assert_eq!(
        log.service.take_events(),
        [LockEvent::TimedOut {
            session: w,
            name: "y".into()
        }]
    );
}

#[test]
fn an_expired_session_loses_its_locks_after_the_lock_delay() {
    let mut log = Log::new(); // lock_delay 10
    let (a, b) = (log.open(1, 50), log.open(2, 1000));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(a, "y", Shared, Wait::Forever);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    log.time(49);
    assert_eq!(log.service.lease_end(a), Some(50));
    log.time(50);
    assert_eq!(
        log.service.take_events(),
        [LockEvent::Expired {
            session: a,
            released: vec!["x".into(), "y".into()]
        }]
    );
    assert_eq!(log.service.lease_end(a), None);
    // In the delay: nobody gets either lock, not even by try-lock.
    assert!(log.service.holders("x").is_empty());
    assert_eq!(
        log.acquire(b, "y", Shared, Wait::Try),
        Outcome::Refused(LockError::Busy)
    );
    assert_eq!(
        log.acquire(a, "z", Shared, Wait::Try),
        Outcome::Refused(LockError::UnknownSession(a))
    );
    log.time(59);
    assert!(log.service.take_events().is_empty());
    log.time(60);
    assert_eq!(
        log.service.take_events(),
        [LockEvent::Granted {
            session: b,
            name: "x".into(),
            mode: Exclusive,
            token: FencingToken(log.slot)
        }]
    );
    // The delay is over for y too, and the unused lock is forgotten.
    assert!(!log.service.state.locks.contains_key("y"));
    assert_eq!(log.acquire(b, "y", Shared, Wait::Try), log.granted());
}

#[test]
fn a_closed_session_releases_at_once_and_a_zero_delay_expiry_too() {
    let mut log = Log::new();
    let (a, b) = (log.open(1, 50), log.open(2, 1000));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    assert_eq!(
        log.apply(Command::Close { session: a }),
        Outcome::Closed {
            released: vec!["x".into()]
        }
    );
    assert_eq!(
        log.service.holders("x"),
        [(b, Exclusive, FencingToken(log.slot))]
    );
    assert_eq!(
        log.apply(Command::Close { session: a }),
        Outcome::Refused(LockError::UnknownSession(a))
    );
    // The client can open a new session; it is a new one.
    let again = log.open(1, 50);
    assert_ne!(again, a);

    let mut log = Log::with(LockLimits {
        lock_delay: 0,
        ..LockLimits::default()
    });
    let (a, b) = (log.open(1, 50), log.open(2, 1000));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    log.time(50);
    assert_eq!(
        log.service.holders("x"),
        [(b, Exclusive, FencingToken(log.slot))]
    );
}

#[test]
fn keep_alives_and_reopens_renew_the_lease() {
    let mut log = Log::new();
    let a = log.open(1, 50);
    log.time(40);
    assert_eq!(
        log.apply(Command::KeepAlive { session: a, tag: 0 }),
        Outcome::Renewed { expires_at: 90 }
    );
    log.time(89);
    // Opening again for the same client renews the same session (a retried open).
    assert_eq!(
        log.apply(Command::Open {
            client: 1,
            lease: 20,
            tag: 0,
        }),
        Outcome::Opened {
            session: a,
            expires_at: 109,
            held: vec![],
        }
    );
    assert_eq!(log.service.session_count(), 1);
    log.time(109);
    assert_eq!(log.service.session_count(), 0);
    assert_eq!(
        log.apply(Command::KeepAlive { session: a, tag: 0 }),
        Outcome::Refused(LockError::UnknownSession(a))
    );
    for lease in [0, 9, 100_001] {
        assert_eq!(
            log.apply(Command::Open {
                client: 2,
                lease,
                tag: 0
            }),
            Outcome::Refused(LockError::LeaseOutOfRange {
                lease,
                min: 10,
                max: 100_000
            })
        );
    }
}

#[test]
fn grace_extends_every_lease_and_stale_time_is_ignored() {
    let mut log = Log::new();
    let (a, b) = (log.open(1, 10), log.open(2, 500));
    log.time(5);
    assert_eq!(
        log.apply(Command::Grace { ticks: 100 }),
        Outcome::Time { now: 5 }
    );
    assert_eq!(log.service.lease_end(a), Some(105));
    assert_eq!(log.service.lease_end(b), Some(500));
    assert_eq!(log.time(3), Outcome::Time { now: 5 });
    assert_eq!(log.time(5), Outcome::Time { now: 5 });
    log.time(104);
    assert_eq!(log.service.session_count(), 2);
    log.time(105);
    assert_eq!(log.service.session_count(), 1);
}

#[test]
fn limits_refuse_and_change_nothing() {
    let mut log = Log::with(LockLimits {
        sessions_max: 2,
        locks_max: 2,
        locks_per_session_max: 2,
        waiters_max: 1,
        name_bytes_max: 4,
        ..LockLimits::default()
    });
    let (a, b) = (log.open(1, 100), log.open(2, 100));
    let before = log.service.state.clone();
    let refusals = [
        (
            Command::Open {
                client: 3,
                lease: 100,
                tag: 0,
            },
            LockError::TooManySessions { max: 2 },
        ),
        (
            Command::Acquire {
                session: a,
                name: "12345".into(),
                mode: Shared,
                wait: Wait::Try,
            },
            LockError::NameTooLong { length: 5, max: 4 },
        ),
    ];
    for (command, error) in refusals {
        assert_eq!(log.apply(command), Outcome::Refused(error));
    }
    // The last slot moved on; nothing else did.
    let after = &log.service.state;
    assert_eq!(after.last_slot, before.last_slot + 2);
    assert_eq!(
        (&after.sessions, &after.locks, after.now),
        (&before.sessions, &before.locks, before.now)
    );

    log.acquire(a, "l1", Exclusive, Wait::Forever);
    log.acquire(a, "l2", Exclusive, Wait::Forever);
    assert_eq!(
        log.acquire(a, "l3", Exclusive, Wait::Forever),
        Outcome::Refused(LockError::TooManyLocksInSession { max: 2 })
    );
    assert_eq!(
        log.acquire(b, "l3", Exclusive, Wait::Forever),
        Outcome::Refused(LockError::TooManyLocks { max: 2 })
    );
    assert_eq!(
        log.acquire(b, "l1", Exclusive, Wait::Forever),
        Outcome::Queued { position: 0 }
    );
    let c = {
        // Free a session slot for a third client.
        log.apply(Command::Close { session: b });
        log.open(3, 100)
    };
    log.acquire(c, "l1", Exclusive, Wait::Forever);
    let d_refused = log.apply(Command::Open {
        client: 4,
        lease: 100,
        tag: 0,
    });
    assert_eq!(
        d_refused,
        Outcome::Refused(LockError::TooManySessions { max: 2 })
    );
    assert_eq!(log.service.waiters("l1"), [(c, Exclusive)]);
    let limits = LockLimits {
        waiters_max: 1,
        ..LockLimits::default()
    };
    let mut log = Log::with(limits);
    let (a, b, c) = (log.open(1, 100), log.open(2, 100), log.open(3, 100));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    assert_eq!(
        log.acquire(c, "x", Exclusive, Wait::Forever),
        Outcome::Refused(LockError::QueueFull { max: 1 })
    );
}

#[test]
fn bounds_are_inclusive_and_accessors_report_the_state() {
    let limits = LockLimits {
        lease_min: 30,
        lease_max: 30,
        name_bytes_max: 4,
        ..LockLimits::default()
    };
    let mut log = Log::with(limits);
    assert_eq!(log.service.limits(), &limits);
    let a = log.open(1, 30);
    assert_eq!(format!("{a}"), format!("s{}", a.0));
    assert_eq!(log.acquire(a, "1234", Shared, Wait::Try), log.granted());
    log.time(7);
    assert_eq!(log.service.now(), 7);
    assert_eq!(log.service.last_applied_slot(), log.slot);
    // Services compare by their replicated state.
    let other = LockService::new(limits).unwrap();
    assert_ne!(log.service, other);
    assert_eq!(
        LockService::restore(&log.service.snapshot()).unwrap(),
        log.service
    );
}

#[test]
fn bad_entries_are_refused_without_a_panic() {
    let mut service = LockService::new(LockLimits::default()).unwrap();
    assert!(matches!(
        service.apply(1, &[0xff, 0xff, 0xff]),
        Outcome::Refused(LockError::Malformed { .. })
    ));
    let mut trailing = Command::Time { now: 1 }.encode();
    trailing.push(0);
    assert!(matches!(
        service.apply(2, &trailing),
        Outcome::Refused(LockError::Malformed { .. })
    ));
    assert!(matches!(
        service.apply(3, &vec![0; COMMAND_BYTES_CEILING + 1]),
        Outcome::Refused(LockError::Malformed { .. })
    ));
    assert_eq!(
        service.apply(3, &Command::Time { now: 1 }.encode()),
        Outcome::Refused(LockError::SlotReplayed { slot: 3, last: 3 })
    );
    assert_eq!(service.now(), 0);
    assert_eq!(service.last_applied_slot(), 3);
    assert!(LockService::new(LockLimits {
        lease_min: 10,
        lease_max: 9,
        ..LockLimits::default()
    })
    .is_err());
    assert!(LockService::new(LockLimits {
        waiters_max: 0,
        ..LockLimits::default()
    })
    .is_err());
}

#[test]
fn a_snapshot_restores_the_same_service() {
    let mut log = Log::new();
    let (a, b, c) = (log.open(1, 50), log.open(2, 500), log.open(3, 500));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(b, "x", Shared, Wait::Ticks(100));
    log.acquire(c, "x", Shared, Wait::Forever);
    log.acquire(c, "y", Shared, Wait::Forever);
    let bytes = log.service.snapshot();
    let mut restored = LockService::restore(&bytes).unwrap();
    assert_eq!(restored, log.service);
    restored.check_invariants().unwrap();
    // Both behave alike from here: a expires, the delay ends, b and c share x.
    let rest = [Command::Time { now: 50 }, Command::Time { now: 60 }];
    for command in rest {
        log.slot += 1;
        let bytes = command.encode();
        assert_eq!(
            log.service.apply(log.slot, &bytes),
            restored.apply(log.slot, &bytes)
        );
        assert_eq!(log.service.take_events(), restored.take_events());
    }
    assert_eq!(log.service.snapshot(), restored.snapshot());
    assert_eq!(restored.holders("x").len(), 2);
}

#[test]
fn a_corrupt_snapshot_is_refused() {
    let mut log = Log::new();
    let (a, b) = (log.open(1, 50), log.open(2, 50));
    log.acquire(a, "x", Exclusive, Wait::Forever);
    log.acquire(b, "x", Exclusive, Wait::Forever);
    let bytes = log.service.snapshot();
    assert!(matches!(
        LockService::restore(&bytes[..bytes.len() - 1]),
        Err(SnapshotError::Undecodable(_))
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        LockService::restore(&longer),
        Err(SnapshotError::Invalid("trailing bytes"))
    );
    // States that decode but break an invariant.
    let tamper = |change: &dyn Fn(&mut State)| {
        let mut state = log.service.state.clone();
        change(&mut state);
        let bytes = bincode::serde::encode_to_vec(&state, bincode::config::standard()).unwrap();
        LockService::restore(&bytes)
    };
    let two_exclusive = tamper(&|state| {
        let lock = state.locks.get_mut("x").unwrap();
        let waiter = lock.waiters.pop_front().unwrap();
        lock.holders.push(Holder {
            session: waiter.session,
            mode: Exclusive,
            token: FencingToken(1),
        });
    });
    assert_eq!(
        two_exclusive,
        Err(SnapshotError::Invalid(
            "an exclusive lock with another holder"
        ))
    );
    let exclusive_and_shared = tamper(&|state| {
        let lock = state.locks.get_mut("x").unwrap();
        let waiter = lock.waiters.pop_front().unwrap();
        lock.holders.push(Holder {
            session: waiter.session,
            mode: Shared,
            token: FencingToken(1),
        });
    });
    assert_eq!(
        exclusive_and_shared,
        Err(SnapshotError::Invalid(
            "an exclusive lock with another holder"
        ))
    );
    let future = tamper(&|state| {
        state.locks.get_mut("x").unwrap().holders[0].token = FencingToken(state.last_slot + 1);
    });
    assert_eq!(
        future,
        Err(SnapshotError::Invalid("a token from the future"))
    );
    let ghost = tamper(&|state| {
        state.sessions.remove(&b);
    });
    assert!(ghost.is_err());
    let expired = tamper(&|state| state.now = 1000);
    assert_eq!(
        expired,
        Err(SnapshotError::Invalid("a session outlived its lease"))
    );
    let stuck = tamper(&|state| {
        state.locks.get_mut("x").unwrap().holders.clear();
    });
    assert_eq!(
        stuck,
        Err(SnapshotError::Invalid(
            "a grantable waiter was left waiting"
        ))
    );
    // Random bytes never panic.
    for seed in 0..200u64 {
        let junk: Vec<u8> = (0..(seed % 40))
            .map(|i| (seed.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
            .collect();
        let _ = LockService::restore(&junk);
    }
}

#[test]
fn a_snapshot_over_its_own_limits_is_refused() {
    let mut log = Log::new();
    let a = log.open(1, 50);
    log.open(2, 50);
    log.acquire(a, "ab", Exclusive, Wait::Forever);
    log.acquire(a, "cd", Exclusive, Wait::Forever);
    let restore_with = |change: &dyn Fn(&mut LockLimits)| {
        let mut state = log.service.state.clone();
        change(&mut state.limits);
        let bytes = bincode::serde::encode_to_vec(&state, bincode::config::standard()).unwrap();
        LockService::restore(&bytes)
    };
    // At the limits exactly: fine.
    assert!(restore_with(&|limits| {
        limits.sessions_max = 2;
        limits.locks_max = 2;
        limits.locks_per_session_max = 2;
        limits.name_bytes_max = 2;
    })
    .is_ok());
    let over = Err(SnapshotError::Invalid(
        "more sessions or locks than the limits allow",
    ));
    assert_eq!(restore_with(&|limits| limits.sessions_max = 1), over);
    assert_eq!(restore_with(&|limits| limits.locks_max = 1), over);
    assert_eq!(
        restore_with(&|limits| limits.locks_per_session_max = 1),
        Err(SnapshotError::Invalid(
            "a session holds or awaits too many locks"
        ))
    );
    assert_eq!(
        restore_with(&|limits| limits.name_bytes_max = 1),
        Err(SnapshotError::Invalid("a lock name above its bound"))
    );
}

#[test]
fn the_lease_clock_graces_then_ticks_and_stops_when_deposed() {
    assert!(LeaseClock::new(0, 10).is_err());
    let mut clock = LeaseClock::new(3, 40).unwrap();
    assert_eq!(clock.tick(false, 7), None);
    assert_eq!(clock.tick(true, 7), Some(Command::Grace { ticks: 40 }));
    assert_eq!(clock.tick(true, 7), None);
    assert_eq!(clock.tick(true, 7), None);
    assert_eq!(clock.tick(true, 7), Some(Command::Time { now: 10 }));
    // The applied log time overtook this leader's clock (a previous leader ran ahead).
    assert_eq!(clock.tick(true, 50), None);
    assert_eq!(clock.tick(true, 50), None);
    assert_eq!(clock.tick(true, 50), Some(Command::Time { now: 53 }));
    // Deposed, then leading again: grace first, from the applied log time.
    assert_eq!(clock.tick(false, 53), None);
    assert_eq!(clock.tick(true, 60), Some(Command::Grace { ticks: 40 }));
    let times: Vec<Command> = (0..3).filter_map(|_| clock.tick(true, 60)).collect();
    assert_eq!(times, [Command::Time { now: 63 }]);
}

impl Log {
    fn open_proposer(&mut self) -> ClientId {
        match self.apply(Command::OpenProposer) {
            Outcome::ProposerOpened { proposer } => proposer,
            other => panic!("open proposer refused: {other:?}"),
        }
    }
}

/// `command` proposed once by `proposer` as request `sequence`, acknowledging below `ack`.
fn once(proposer: ClientId, sequence: u64, ack: u64, command: Command) -> Command {
    Command::Once {
        header: RequestHeader {
            client: proposer,
            sequence,
            acknowledged_below: ack,
        },
        command: Box::new(command),
    }
}

#[test]
fn once_applies_a_command_once_and_answers_its_copies_the_same() {
    let mut log = Log::new();
    let proposer = log.open_proposer();
    let (a, b) = (log.open(1, 100), log.open(2, 100));
    let acquire = |session| Command::Acquire {
        session,
        name: "x".into(),
        mode: Exclusive,
        wait: Wait::Forever,
    };
    let withdraw = |session| Command::Release {
        session,
        name: "x".into(),
        token: None,
    };
    // A holds x; B queues (request 1), withdraws (request 2), and queues again (request 3).
    log.acquire(a, "x", Exclusive, Wait::Forever);
    let a_token = FencingToken(log.slot);
    let queue = once(proposer, 1, 1, acquire(b));
    assert_eq!(log.apply(queue.clone()), Outcome::Queued { position: 0 });
    let withdrawal = once(proposer, 2, 1, withdraw(b));
    assert_eq!(log.apply(withdrawal.clone()), Outcome::Withdrawn);
    let queue_again = once(proposer, 3, 1, acquire(b));
    assert_eq!(log.apply(queue_again), Outcome::Queued { position: 0 });
    // Late copies of requests 1 and 2 (request 1 not acknowledged yet): answered as the first
    // time, and nothing changes: the withdraw does not drop the new wait.
    assert_eq!(log.apply(queue), Outcome::Queued { position: 0 });
    assert_eq!(log.apply(withdrawal.clone()), Outcome::Withdrawn);
    assert_eq!(log.service.waiters("x"), [(b, Exclusive)]);
    // A releases: B is granted by its third request.
    log.release(a, "x");
    let b_token = FencingToken(log.slot);
    assert!(matches!(
        log.service.take_events()[..],
        [LockEvent::Granted { session, token, .. }] if session == b && token == b_token
    ));
    assert!(b_token > a_token);
    // A copy of the withdraw now would release B's grant if applied; it is not.
    assert_eq!(log.apply(withdrawal), Outcome::Withdrawn);
    assert_eq!(log.service.holders("x"), [(b, Exclusive, b_token)]);
    assert!(log.service.take_events().is_empty());
    // The same command under a new sequence number is a new request.
    assert_eq!(
        log.apply(once(proposer, 4, 4, withdraw(b))),
        Outcome::Released { token: b_token }
    );
    assert!(log.service.holders("x").is_empty());
}

#[test]
fn once_refuses_stale_unknown_expired_full_and_nested_requests_and_changes_nothing() {
    let mut log = Log::with(LockLimits {
        proposers: crate::session::SessionLimits {
            sessions_max: 2,
            responses_per_session_max: 2,
            response_bytes_per_session_max: 1024,
        },
        ..LockLimits::default()
    });
    let first = log.open_proposer();
    let a = log.open(1, 100);
    let acquire = |name: &str| Command::Acquire {
        session: a,
        name: name.into(),
        mode: Exclusive,
        wait: Wait::Try,
    };
    assert!(matches!(
        log.apply(once(first, 5, 0, acquire("x"))),
        Outcome::Granted { .. }
    ));
    assert!(matches!(
        log.apply(once(first, 6, 0, acquire("y"))),
        Outcome::Granted { .. }
    ));
    let state = log.service.state.locks.clone();
    // Two answers kept, none acknowledged: a third request is refused, not applied.
    assert_eq!(
        log.apply(once(first, 7, 0, acquire("z"))),
        Outcome::Refused(LockError::TooManyRequests { proposer: first })
    );
    // Below the acknowledgement: refused, not applied.
    assert_eq!(
        log.apply(once(first, 5, 6, acquire("x"))),
        Outcome::Refused(LockError::StaleRequest {
            proposer: first,
            sequence: 5
        })
    );
    // Nested proposer commands are malformed.
    for nested in [Command::OpenProposer, once(first, 9, 0, acquire("z"))] {
        assert!(matches!(
            log.apply(once(first, 8, 6, nested)),
            Outcome::Refused(LockError::Malformed { .. })
        ));
    }
    // Never opened.
    assert_eq!(
        log.apply(once(ClientId(77), 1, 0, acquire("z"))),
        Outcome::Refused(LockError::UnknownProposer(ClientId(77)))
    );
    // Two more proposers evict the least recently active one: the first.
    log.open_proposer();
    log.open_proposer();
    assert_eq!(
        log.apply(once(first, 6, 6, acquire("y"))),
        Outcome::Refused(LockError::ProposerExpired(first))
    );
    assert_eq!(
        log.service.state.locks, state,
        "no refusal changed the locks"
    );
}

#[test]
fn proposer_sessions_survive_a_snapshot_and_their_limits_must_match() {
    let mut log = Log::new();
    let proposer = log.open_proposer();
    let a = log.open(1, 100);
    let acquire = once(
        proposer,
        1,
        0,
        Command::Acquire {
            session: a,
            name: "x".into(),
            mode: Exclusive,
            wait: Wait::Try,
        },
    );
    let granted = log.apply(acquire.clone());
    let mut restored = LockService::restore(&log.service.snapshot()).unwrap();
    assert_eq!(restored, log.service);
    // The restored replica answers a copy from the table, as the others do.
    log.slot += 1;
    assert_eq!(restored.apply(log.slot, &acquire.encode()), granted);
    assert_eq!(log.service.apply(log.slot, &acquire.encode()), granted);
    assert_eq!(restored.snapshot(), log.service.snapshot());
    // A snapshot whose proposer table disagrees with its limits is refused.
    let mut state = log.service.state.clone();
    state.limits.proposers.sessions_max += 1;
    let bytes = bincode::serde::encode_to_vec(&state, bincode::config::standard()).unwrap();
    assert_eq!(
        LockService::restore(&bytes),
        Err(SnapshotError::Invalid(
            "the proposer sessions' limits differ from the service's"
        ))
    );
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    Open(u64),
    KeepAlive(u64),
    Close(u64),
    Acquire(u64, u8, bool, u8),
    Release(u64, u8, Option<u64>),
    Time(u64),
    Grace,
    Junk(Vec<u8>),
    OpenProposer,
    /// Proposer (index), sequence, acknowledged below, the command.
    Once(u8, u64, u64, Box<Step>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => base_step(),
        1 => Just(Step::OpenProposer),
        4 => (0u8..3, 0u64..6, 0u64..4, base_step())
            .prop_map(|(p, s, a, inner)| Step::Once(p, s, a, Box::new(inner))),
    ]
}

fn base_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u64..5).prop_map(Step::Open),
        2 => (0u64..5).prop_map(Step::KeepAlive),
        1 => (0u64..5).prop_map(Step::Close),
        6 => (0u64..5, 0u8..3, any::<bool>(), 0u8..4)
            .prop_map(|(c, l, e, w)| Step::Acquire(c, l, e, w)),
        3 => (0u64..5, 0u8..3, proptest::option::of(0u64..8))
            .prop_map(|(c, l, t)| Step::Release(c, l, t)),
        3 => (1u64..15).prop_map(Step::Time),
        1 => Just(Step::Grace),
        1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(Step::Junk),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Over random histories: the invariants hold after every entry (exclusion among them),
    /// fencing tokens only grow, every grant is the head of the queue it left, a replica
    /// restored from a snapshot taken midway answers the rest identically, and junk is
    /// refused.
    #[test]
    fn random_histories_keep_every_invariant(steps in proptest::collection::vec(step(), 1..80)) {
        let mut log = Log::with(LockLimits {
            lease_min: 5,
            lock_delay: 4,
            waiters_max: 3,
            ..LockLimits::default()
        });
        let names = ["a", "b", "c"];
        let mut now = 0;
        let mut last_token = FencingToken(0);
        let mut commands = Vec::new();
        let mut outcomes = Vec::new();
        let mut halfway = None;
        let mut first_outcomes: BTreeMap<(ClientId, u64), Outcome> = BTreeMap::new();
        for (index, step) in steps.iter().enumerate() {
            if index == steps.len() / 2 {
                halfway = Some((log.service.snapshot(), log.slot, commands.len()));
            }
            let session = |client: u64, log: &Log| {
                log.service.clients.get(&client).copied().unwrap_or(SessionId(1_000 + client))
            };
            let command = |step: &Step, log: &Log, now: u64| -> Option<Command> {
                Some(match step {
                    Step::Open(client) => Command::Open { client: *client, lease: 5 + client * 3, tag: 0 },
                    Step::KeepAlive(client) => Command::KeepAlive { session: session(*client, log), tag: 0 },
                    Step::Close(client) => Command::Close { session: session(*client, log) },
                    Step::Acquire(client, name, exclusive, wait) => Command::Acquire {
                        session: session(*client, log),
                        name: names[*name as usize].into(),
                        mode: if *exclusive { Exclusive } else { Shared },
                        wait: [Wait::Try, Wait::Ticks(0), Wait::Ticks(6), Wait::Forever][*wait as usize],
                    },
                    Step::Release(client, name, token) => Command::Release {
                        session: session(*client, log),
                        name: names[*name as usize].into(),
                        token: token.map(|slot| FencingToken(log.slot.saturating_sub(slot))),
                    },
                    Step::Time(_) => Command::Time { now },
                    Step::Grace => Command::Grace { ticks: 7 },
                    Step::OpenProposer => Command::OpenProposer,
                    Step::Junk(_) | Step::Once(..) => return None,
                })
            };
            match step {
                Step::Time(by) => now += by,
                Step::Once(_, _, _, inner) => {
                    if let Step::Time(by) = **inner {
                        now += by;
                    }
                }
                _ => {}
            }
            // A repeated (proposer, sequence): the first copy's outcome, if it was applied.
            let mut repeated = None;
            let bytes = match step {
                Step::Junk(bytes) => bytes.clone(),
                Step::Once(proposer, sequence, acknowledged, inner) => {
                    let header = RequestHeader {
                        client: ClientId(u64::from(*proposer) + 1),
                        sequence: *sequence,
                        acknowledged_below: *acknowledged,
                    };
                    repeated = Some(first_outcomes.get(&(header.client, header.sequence)).cloned());
                    let inner = command(inner, &log, now).unwrap_or(Command::Time { now });
                    Command::Once { header, command: Box::new(inner) }.encode()
                }
                step => command(step, &log, now).expect("not junk").encode(),
            };
            // The heads of every queue, to check that grants come from there.
            let heads: Vec<Vec<SessionId>> = names
                .iter()
                .map(|name| log.service.waiters(name).iter().map(|w| w.0).collect())
                .collect();
            let before = (
                log.service.state.sessions.clone(),
                log.service.state.locks.clone(),
                log.service.state.now,
            );
            log.slot += 1;
            let outcome = log.service.apply(log.slot, &bytes);
            prop_assert_eq!(log.service.check_invariants(), Ok(()));
            let proposal_refused = matches!(
                outcome,
                Outcome::Refused(
                    LockError::StaleRequest { .. }
                        | LockError::ResponseDropped { .. }
                        | LockError::TooManyRequests { .. }
                        | LockError::ProposerExpired(_)
                        | LockError::UnknownProposer(_)
                )
            );
            if let (Some(first), Step::Once(proposer, sequence, ..)) = (&repeated, step) {
                let key = (ClientId(u64::from(*proposer) + 1), *sequence);
                match first {
                    // Applied once already: never again. The first answer, or a refusal.
                    Some(first) => {
                        prop_assert!(proposal_refused || outcome == *first,
                            "copy answered {:?}, first {:?}", outcome, first);
                        let after = (
                            log.service.state.sessions.clone(),
                            log.service.state.locks.clone(),
                            log.service.state.now,
                        );
                        prop_assert!(before == after, "a copy changed the state");
                    }
                    None if !proposal_refused => {
                        first_outcomes.insert(key, outcome.clone());
                    }
                    None => {}
                }
            }
            let duplicate = matches!(repeated, Some(Some(_)));
            if let (Outcome::Granted { token }, false) = (&outcome, duplicate) {
                let token = *token;
                if token.0 == log.slot {
                    // A new grant: its token is above every earlier entry's.
                    prop_assert!(token > last_token);
                    last_token = token;
                } else {
                    // A retried acquire: the token of the grant it already has.
                    prop_assert!(token <= last_token);
                    prop_assert!(names.iter().any(|name| log.service.holders(name).iter()
                        .any(|holder| holder.2 == token)));
                }
            }
            if let Step::Junk(_) = step {
                let malformed = matches!(outcome, Outcome::Refused(LockError::Malformed { .. }));
                prop_assert!(malformed || Command::decode(&bytes).is_ok());
            }
            let mut granted: Vec<Vec<SessionId>> = vec![Vec::new(); names.len()];
            for event in log.service.take_events() {
                if let LockEvent::Granted { session, name, token, .. } = event {
                    prop_assert_eq!(token, FencingToken(log.slot));
                    prop_assert!(token >= last_token);
                    last_token = token;
                    let lock = names.iter().position(|n| *n == name).unwrap();
                    granted[lock].push(session);
                }
            }
            for (lock, sessions) in granted.iter().enumerate() {
                // Grants from a queue are its head, in order (waiters ahead of them may have
                // left the queue in this entry, by timeout, expiry or withdrawal).
                let queue = &heads[lock];
                let mut position = 0;
                for session in sessions {
                    let found = queue[position..].iter().position(|s| s == session);
                    prop_assert!(found.is_some(), "{:?} granted out of {:?}", session, queue);
                    position += found.unwrap() + 1;
                }
            }
            commands.push(bytes);
            outcomes.push(outcome);
        }
        // A replica restored midway answers the rest identically.
        let (snapshot, slot, done) = halfway.unwrap();
        let mut restored = LockService::restore(&snapshot).unwrap();
        for (offset, bytes) in commands[done..].iter().enumerate() {
            let outcome = restored.apply(slot + 1 + offset as u64, bytes);
            prop_assert_eq!(&outcome, &outcomes[done + offset]);
        }
        prop_assert_eq!(restored.snapshot(), log.service.snapshot());
    }

    /// Arbitrary bytes never make the decoder panic.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Command::decode(&bytes);
        let _ = LockService::restore(&bytes);
    }
}

#[test]
fn the_client_trusts_its_lease_conservatively_and_forgets_a_lost_session() {
    assert!(LockClient::new(1, 2).is_err());
    let mut client = LockClient::new(1, 100).unwrap();
    assert_eq!(client.acquire("x", Exclusive, Wait::Try), None);
    assert!(!client.is_live());
    let open = client.open();
    for _ in 0..5 {
        assert_eq!(client.tick(), None, "no keep-alive without a session");
    }
    // Answered at local tick 5, but sent at 0: trusted until 0 + 100 - 10.
    client.on_outcome(
        &open,
        &Outcome::Opened {
            session: SessionId(9),
            expires_at: 100,
            held: vec![],
        },
    );
    let acquire = client.acquire("x", Exclusive, Wait::Forever).unwrap();
    client.on_outcome(
        &acquire,
        &Outcome::Granted {
            token: FencingToken(12),
        },
    );
    // A queued acquire of "y": its grant comes as an event.
    let acquire_y = client.acquire("y", Shared, Wait::Forever).unwrap();
    client.on_outcome(&acquire_y, &Outcome::Queued { position: 0 });
    client.on_event(&LockEvent::Granted {
        session: SessionId(9),
        name: "y".into(),
        mode: Shared,
        token: FencingToken(15),
    });
    client.on_event(&LockEvent::Granted {
        session: SessionId(8),
        name: "z".into(),
        mode: Shared,
        token: FencingToken(16),
    });
    assert_eq!(
        client.held().collect::<Vec<_>>(),
        [
            ("x", Exclusive, FencingToken(12)),
            ("y", Shared, FencingToken(15))
        ]
    );
    let mut keep_alive = None;
    while client
        .tick()
        .map(|command| keep_alive = Some(command))
        .is_none()
    {}
    assert_eq!(
        keep_alive,
        Some(Command::KeepAlive {
            session: SessionId(9),
            tag: 33,
        })
    );
    // One keep-alive every third of the lease: 33 local ticks apart.
    let mut probe = client.clone();
    let gaps: Vec<u32> = (0..2)
        .map(|_| (1..).find(|_| probe.tick().is_some()).unwrap())
        .collect();
    assert_eq!(gaps, [33, 33]);
    // Not answered yet: the lease ends at 90 locally.
    while client.is_live() {
        assert_eq!(client.token("x"), Some(FencingToken(12)));
        client.tick();
    }
    assert_eq!(client.token("x"), None);
    // The keep-alive sent at 33 is answered late: trusted until 33 + 90.
    client.on_outcome(&keep_alive.unwrap(), &Outcome::Renewed { expires_at: 130 });
    assert!(client.is_live());
    for _ in 90..123 {
        client.tick();
    }
    assert!(!client.is_live());
    assert_eq!(
        client.release("y"),
        Some(Command::Release {
            session: SessionId(9),
            name: "y".into(),
            token: Some(FencingToken(15)),
        })
    );
    assert_eq!(client.held().count(), 1);
    // The service says the session is gone: everything is forgotten.
    client.on_event(&LockEvent::Expired {
        session: SessionId(9),
        released: vec![],
    });
    assert_eq!(client.session(), None);
    assert_eq!(client.held().count(), 0);
    // A refusal for an unknown session and a close do the same (for later sessions: a
    // session opened later has a larger id).
    for (session, ending) in [
        (
            SessionId(40),
            (
                Command::KeepAlive {
                    session: SessionId(40),
                    tag: 0,
                },
                Outcome::Refused(LockError::UnknownSession(SessionId(40))),
            ),
        ),
        (
            SessionId(41),
            (
                Command::Close {
                    session: SessionId(41),
                },
                Outcome::Closed { released: vec![] },
            ),
        ),
    ] {
        let open = client.open();
        client.on_outcome(
            &open,
            &Outcome::Opened {
                session,
                expires_at: 500,
                held: vec![],
            },
        );
        assert!(client.is_live());
        client.on_outcome(&ending.0, &ending.1);
        assert!(!client.is_live() && client.session().is_none());
    }
}

#[test]
fn the_client_ignores_what_concerns_other_sessions_and_keeps_locks_across_a_renewal() {
    let mut client = LockClient::new(1, 100).unwrap();
    let open = client.open();
    let opened = |session| Outcome::Opened {
        session: SessionId(session),
        expires_at: 100,
        held: vec![],
    };
    client.on_outcome(&open, &opened(9));
    assert_eq!(client.session(), Some(SessionId(9)));
    let acquire = client.acquire("x", Shared, Wait::Try).unwrap();
    client.on_outcome(
        &acquire,
        &Outcome::Granted {
            token: FencingToken(3),
        },
    );
    // Another session's expiry or refusal is not this client's.
    client.on_event(&LockEvent::Expired {
        session: SessionId(8),
        released: vec![],
    });
    let other = Command::KeepAlive {
        session: SessionId(8),
        tag: 0,
    };
    client.on_outcome(
        &other,
        &Outcome::Refused(LockError::UnknownSession(SessionId(8))),
    );
    assert_eq!(client.session(), Some(SessionId(9)));
    // Opening again renews the same session: the locks stay.
    let open = client.open();
    client.on_outcome(&open, &opened(9));
    assert_eq!(client.token("x"), Some(FencingToken(3)));
    // A different session (the old one was lost meanwhile): the locks are gone.
    let open = client.open();
    client.on_outcome(&open, &opened(12));
    assert_eq!(client.session(), Some(SessionId(12)));
    assert_eq!(client.held().count(), 0);
}

#[test]
fn the_client_waits_for_a_release_and_ignores_stale_grants() {
    let mut client = LockClient::new(1, 100).unwrap();
    let open = client.open();
    client.on_outcome(
        &open,
        &Outcome::Opened {
            session: SessionId(2),
            expires_at: 100,
            held: vec![],
        },
    );
    let acquire = client.acquire("x", Exclusive, Wait::Forever).unwrap();
    client.on_outcome(
        &acquire,
        &Outcome::Granted {
            token: FencingToken(5),
        },
    );
    let release = client.release("x").unwrap();
    assert_eq!(
        release,
        Command::Release {
            session: SessionId(2),
            name: "x".into(),
            token: Some(FencingToken(5)),
        }
    );
    // No acquire until the release is answered; a repeated release names the same grant.
    assert_eq!(client.acquire("x", Exclusive, Wait::Forever), None);
    assert_eq!(client.release("x"), Some(release.clone()));
    // An answer to an acquire the log ordered before the release: stale, ignored.
    client.on_outcome(
        &acquire,
        &Outcome::Granted {
            token: FencingToken(5),
        },
    );
    assert_eq!(client.token("x"), None);
    client.on_outcome(
        &release,
        &Outcome::Released {
            token: FencingToken(5),
        },
    );
    let again = client.acquire("x", Exclusive, Wait::Forever).unwrap();
    // The old grant, answered late, is still stale; a new one counts.
    client.on_outcome(
        &again,
        &Outcome::Granted {
            token: FencingToken(5),
        },
    );
    assert_eq!(client.token("x"), None);
    client.on_event(&LockEvent::Granted {
        session: SessionId(2),
        name: "x".into(),
        mode: Exclusive,
        token: FencingToken(9),
    });
    assert_eq!(client.token("x"), Some(FencingToken(9)));
    // Withdrawing a wait names no grant.
    assert_eq!(
        client.release("y"),
        Some(Command::Release {
            session: SessionId(2),
            name: "y".into(),
            token: None,
        })
    );
}

#[test]
fn the_local_lease_ends_exactly_a_margin_before_the_lease() {
    let mut client = LockClient::new(1, 100).unwrap();
    let open = client.open();
    client.on_outcome(
        &open,
        &Outcome::Opened {
            session: SessionId(2),
            expires_at: 100,
            held: vec![],
        },
    );
    // Sent at local tick 0: trusted for 100 - 10 ticks.
    let mut keep_alive = None;
    for tick in 1..=90 {
        assert!(client.is_live(), "tick {tick}");
        if let Some(command) = client.tick() {
            keep_alive.get_or_insert(command);
        }
    }
    assert!(!client.is_live(), "the local lease ends at 90");
    // The keep-alive went out at tick 33: answered now, it is trusted until 33 + 90.
    client.on_outcome(&keep_alive.unwrap(), &Outcome::Renewed { expires_at: 200 });
    for _ in 90..122 {
        client.tick();
    }
    assert!(client.is_live());
    client.tick();
    assert!(!client.is_live(), "the renewed local lease ends at 123");
}

#[test]
fn the_client_remembers_a_bounded_number_of_releases_and_none_across_sessions() {
    let mut client = LockClient::new(1, 100).unwrap();
    let open = client.open();
    client.on_outcome(
        &open,
        &Outcome::Opened {
            session: SessionId(1),
            expires_at: 100,
            held: vec![],
        },
    );
    let hold = |client: &mut LockClient, name: &str, token: u64| {
        let acquire = client.acquire(name, Exclusive, Wait::Try).unwrap();
        client.on_outcome(
            &acquire,
            &Outcome::Granted {
                token: FencingToken(token),
            },
        );
        acquire
    };
    // Lock i is granted token 10 + i and released, for one lock more than remembered.
    let mut acquires = Vec::new();
    for index in 0..=RELEASED_MAX as u64 {
        let name = format!("lock{index}");
        acquires.push(hold(&mut client, &name, 10 + index));
        let release = client.release(&name).unwrap();
        client.on_outcome(
            &release,
            &Outcome::Released {
                token: FencingToken(10 + index),
            },
        );
    }
    assert_eq!(client.released.len(), RELEASED_MAX);
    // The oldest release is forgotten: a late copy of its grant is taken (the bound's price);
    // a late copy of any other is stale.
    client.on_outcome(
        &acquires[1],
        &Outcome::Granted {
            token: FencingToken(11),
        },
    );
    assert_eq!(client.token("lock1"), None);
    client.on_outcome(
        &acquires[0],
        &Outcome::Granted {
            token: FencingToken(10),
        },
    );
    assert_eq!(client.token("lock0"), Some(FencingToken(10)));
    // A new session starts with nothing of the old one.
    let open = client.open();
    client.on_outcome(
        &open,
        &Outcome::Opened {
            session: SessionId(2),
            expires_at: 200,
            held: vec![],
        },
    );
    assert!(client.released.is_empty() && client.held().next().is_none());
}

#[test]
fn a_restarted_client_learns_the_locks_its_session_holds_and_a_late_answer_changes_nothing() {
    let mut log = Log::new();
    let mut client = LockClient::new(7, 100).unwrap();
    let open = client.open();
    let outcome = log.apply(open.clone());
    assert!(matches!(&outcome, Outcome::Opened { held, .. } if held.is_empty()));
    client.on_outcome(&open, &outcome);
    for (name, mode) in [("x", Exclusive), ("y", Shared)] {
        let acquire = client.acquire(name, mode, Wait::Try).unwrap();
        let outcome = log.apply(acquire.clone());
        client.on_outcome(&acquire, &outcome);
    }
    let held: Vec<_> = client
        .held()
        .map(|(n, m, t)| (n.to_owned(), m, t))
        .collect();
    assert_eq!(held.len(), 2);
    // The client restarts: it knows nothing, opens its session again, and learns its locks.
    let mut restarted = LockClient::new(7, 100).unwrap();
    let reopen = restarted.open();
    let reopened = log.apply(reopen.clone());
    restarted.on_outcome(&reopen, &reopened);
    let relearned: Vec<_> = restarted
        .held()
        .map(|(n, m, t)| (n.to_owned(), m, t))
        .collect();
    assert_eq!(relearned, held);
    assert_eq!(restarted.token("x"), Some(held[0].2));
    // It releases x; an answer to an earlier open of the same session, listing x, arrives
    // late: nothing comes back.
    let release = restarted.release("x").unwrap();
    let outcome = log.apply(release.clone());
    restarted.on_outcome(&release, &outcome);
    restarted.on_outcome(&reopen, &reopened);
    assert_eq!(restarted.token("x"), None);
    assert!(restarted.token("y").is_some());
}
