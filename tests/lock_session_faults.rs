//! Adversarial review of the deterministic state machines applied from the log: the lock
//! service (`synod::lock`), client sessions (`synod::session`) and the kv state machine
//! (`synod::kv`).
//!
//! Scenarios from session 14's review. The bugs they showed are fixed: log time no longer
//! jumps over lost `Time` entries; a late keep-alive answer no longer extends the local lease
//! from its arrival; answers to an earlier session's commands are ignored; log time stops at
//! `TIME_MAX` (session 14); a duplicated acquire is applied once through `Command::Once`; a
//! grant event after a withdraw that released that grant is stale (session 15).

mod lock_log;

use bytes::Bytes;
use lock_log::Log;
use synod::kv::{self, KvLimits, KvStateMachine, Operation, Output, Response};
use synod::lock::{
    Command, FencingToken, LeaseClock, LockClient, LockEvent, LockLimits, LockService, Mode,
    Outcome, SessionId, Wait,
};
use synod::session::{
    ClientId, Outcome as SessionOutcome, RequestHeader, SessionLimits, SessionTable,
};

fn acquire(session: SessionId, name: &str, mode: Mode, wait: Wait) -> Command {
    Command::Acquire {
        session,
        name: name.into(),
        mode,
        wait,
    }
}

// ---------------------------------------------------------------------------------------------
// Lock service: bugs
// ---------------------------------------------------------------------------------------------

/// Log time lags the leader's clock whenever `Time` entries are lost (a refused or dropped
/// proposal: lockd's `run_clock` ignores `propose` errors; the sim drops 4 % of proposals). A
/// `KeepAlive` applied during the lag sets `expires_at = applied_now + lease`, with the stale
/// `applied_now`; the next `Time` that gets through jumps log time to the leader's clock, so the
/// lease really lasts `lease - lag` leader ticks after it was renewed. `LockClient` trusts the
/// renewal for `lease - margin` ticks from the moment it *sent* it, so as soon as the lag
/// exceeds `margin + lock_delay` the service gives the lock to someone else while the old
/// holder's local lease still holds: two clients hold the lock in their own views, with clocks
/// that run at exactly the same rate.
///
/// Here: lease 60 (margin 6), lock-delay 10, `LeaseClock` interval 5, four `Time` entries lost
/// (log time 60, lag 20, when A's keep-alive is applied at tick 80). A's lease ends at log time 120 instead
/// of ~140; B is granted at tick 130; A trusts its lease until tick 134.
///
/// The same failure is what `cargo run --release --example sim -- --locks --seed 34536 --nodes 4`
/// (and `--seed 16051 --clock-rate-min 0.9`) finds: Time 1050..1060 lost, a keep-alive applied
/// at log time 1045, then Time 1065.
///
/// Fix direction: never let log time jump: the leader should propose
/// `Time { now: min(clock, applied_now + interval) }` (log time then runs slow after a loss,
/// which is the safe direction), or the service should start a renewed lease from the largest
/// `now` the leader could have reached (e.g. `now + interval` slack), or `LockClient`'s margin
/// must cover the clock interval plus lost `Time` entries.
#[test]
fn lost_time_entries_shorten_a_renewed_lease_and_break_exclusion() {
    let both = lease_world(true);
    assert!(
        both.is_none(),
        "A and B both hold \"x\" in their views from tick {:?} (tick, log time)",
        both
    );
}

/// The same world as [`lost_time_entries_shorten_a_renewed_lease_and_break_exclusion`]
/// without the lost `Time` entries: the local lease ends first, as promised.
#[test]
fn without_lost_time_entries_the_local_lease_ends_before_the_lock_moves() {
    assert_eq!(lease_world(false), None);
}

/// A holds "x", B waits; A is cut off after tick 80; returns the first (tick, log time) at
/// which both hold "x" in their views.
fn lease_world(lose_time_entries: bool) -> Option<(u64, u64)> {
    let mut log = Log::new(LockLimits {
        lease_min: 3,
        lock_delay: 10,
        ..LockLimits::default()
    });
    let mut clock = LeaseClock::new(5, 40).unwrap();
    let mut a = LockClient::new(1, 60).unwrap();
    let mut b = LockClient::new(2, 60).unwrap();

    // Tick 0: the leader's grace, both sessions, A holds "x", B waits for it.
    let grace = clock.tick(true, log.service.now()).unwrap();
    log.apply(&grace);
    for client in [&mut a, &mut b] {
        log.open(client);
    }
    log.acquire_exclusive(&mut a, "x");
    let (_, outcome) = log.acquire_exclusive(&mut b, "x");
    assert!(a.token("x").is_some());
    assert_eq!(outcome, Outcome::Queued { position: 0 });

    let mut both = None;
    for tick in 1..=200u64 {
        // The leader's clock: its Time entries of ticks 65, 70, 75 and 80 are lost.
        if let Some(command) = clock.tick(true, log.service.now()) {
            let lost = lose_time_entries && (61..=80).contains(&tick);
            if !lost {
                // A is cut off from tick 80 on: it does not hear of its expiry.
                if tick <= 80 {
                    log.apply_and_tell(&command, &mut [&mut a, &mut b]);
                } else {
                    log.apply_and_tell(&command, &mut [&mut b]);
                }
            }
        }
        // Both clients' clocks run exactly at the leader's rate. A stalls after tick 80: its
        // later keep-alives are lost (and it hears no events).
        if let Some(keep_alive) = a.tick() {
            if tick <= 80 {
                log.submit(&mut a, &keep_alive);
            }
        }
        if let Some(keep_alive) = b.tick() {
            let mut clients = [&mut b];
            let outcome = log.apply_and_tell(&keep_alive, &mut clients);
            b.on_outcome(&keep_alive, &outcome);
        }
        if a.token("x").is_some() && b.token("x").is_some() && both.is_none() {
            both = Some((tick, log.service.now()));
        }
    }
    both
}

/// A retried `Acquire` was documented as harmless ("answered as the first time"), and lockd
/// re-proposes every command until it is answered, so one ACQUIRE can be chosen twice. If the
/// client got the first copy's grant and released the lock before the second copy is
/// applied, the second copy grants the lock again, to a session whose client believes it
/// released it and has nobody waiting for that answer (lockd's `waiters` entry for the
/// request is gone). The lock is then held until the session ends, which for a client that
/// keeps its session alive is never: every other waiter starves.
///
/// Fixed in session 15: a proposer that re-proposes wraps its commands in `Command::Once`
/// (a proposer session of the service, `SessionTable` semantics); lockd does. A copy is
/// answered from the table and never applied twice. A bare command is still applied as
/// often as it is chosen, as the lock module's documentation says.
#[test]
fn a_duplicated_acquire_applied_after_the_release_does_not_grant_the_lock_again() {
    let mut log = Log::new(LockLimits::default());
    let Outcome::ProposerOpened { proposer } = log.apply(&Command::OpenProposer) else {
        panic!()
    };
    let Outcome::Opened { session: a, .. } = log.apply(&Command::Open {
        client: 1,
        lease: 100,
        tag: 0,
    }) else {
        panic!()
    };
    let Outcome::Opened { session: b, .. } = log.apply(&Command::Open {
        client: 2,
        lease: 100,
        tag: 0,
    }) else {
        panic!()
    };
    let once = |sequence, command| Command::Once {
        header: RequestHeader {
            client: proposer,
            sequence,
            // The proposer (lockd) acknowledges each answer it has delivered.
            acknowledged_below: sequence,
        },
        command: Box::new(command),
    };
    let request = once(1, acquire(a, "x", Mode::Exclusive, Wait::Forever));
    let first = log.apply(&request);
    let Outcome::Granted { token } = first else {
        panic!("{first:?}")
    };
    // The client uses the lock and releases that grant.
    assert_eq!(
        log.apply(&once(
            2,
            Command::Release {
                session: a,
                name: "x".into(),
                token: Some(token)
            }
        )),
        Outcome::Released { token }
    );
    // The re-proposed copy of the same request is chosen later.
    let second = log.apply(&request);
    // B gets the lock.
    let b_outcome = log.apply(&once(3, acquire(b, "x", Mode::Exclusive, Wait::Forever)));
    assert!(
        !matches!(second, Outcome::Granted { .. }),
        "the stale copy was granted again ({second:?}); B: {b_outcome:?}; holders {:?}",
        log.service.holders("x")
    );
    assert!(
        matches!(b_outcome, Outcome::Granted { .. }),
        "{b_outcome:?}"
    );
}

/// `LockService` never reads a clock, but nothing stops log time reaching `u64::MAX` (a bad or
/// hostile `Time` entry: `apply` accepts any bytes). Then `Open` computes
/// `expires_at = now.saturating_add(lease) == now`: the session can never expire (no later
/// `Time` can pass it), and the state breaks the service's own invariant "a session outlived its
/// lease", so `restore` refuses the service's own snapshot (lockd then panics in
/// `apply_committed` when a follower is sent that snapshot).
///
/// Fix direction: refuse `Time` (and `Grace`, `Wait::Ticks`, leases) whose sum with `now`
/// would saturate (e.g. cap `now` at `u64::MAX - lease_max - lock_delay`), or refuse `Open` /
/// `KeepAlive` when `now + lease` overflows.
#[test]
fn log_time_at_u64_max_makes_an_open_session_immortal_and_the_snapshot_unrestorable() {
    let mut log = Log::new(LockLimits::default());
    log.slot += 1;
    log.service
        .apply(log.slot, &Command::Time { now: u64::MAX }.encode());
    log.slot += 1;
    let outcome = log.service.apply(
        log.slot,
        &Command::Open {
            client: 1,
            lease: 100,
            tag: 0,
        }
        .encode(),
    );
    assert!(matches!(outcome, Outcome::Opened { .. }), "{outcome:?}");
    let invariants = log.service.check_invariants();
    let restored = LockService::restore(&log.service.snapshot());
    assert!(
        invariants.is_ok() && restored.is_ok(),
        "invariants: {invariants:?}; restore of its own snapshot: {:?}",
        restored.err()
    );
}

// ---------------------------------------------------------------------------------------------
// LockClient: bugs
// ---------------------------------------------------------------------------------------------

/// `LockClient::renewed` credits a renewal whose send tick it no longer knows
/// (`renewal_sent_at` is `None`) as if it had been sent *now*:
/// `until = unwrap_or(self.now) + lease - margin`. `renewal_sent_at` holds one tick for every
/// keep-alive in flight, and the first answer consumes it; the answer of an older keep-alive
/// that arrives after a newer one (two connections, a slow path, a retried proposal) is then
/// credited at its arrival time, although the service started that lease when it applied it,
/// long before. The local lease outlives the service's lease, and the service hands the lock
/// to another client while the old holder still trusts its token.
///
/// Here: lease 100 (margin 10, keep-alive every 33). K1 is sent at 33 and applied at once, but
/// its answer arrives only at tick 98; K2 (sent 66, applied at once) is answered at once. The
/// service's last renewal (K2) ends at 166; B gets the lock at 186 (lock-delay 20); A trusts
/// its lease until 98 + 90 = 188.
///
/// Fix direction: remember the send tick of every renewal in flight (keyed by the command, or
/// a queue), and credit an answer only from its own send tick; an answer that cannot be
/// matched must not extend the local lease.
#[test]
fn a_late_keep_alive_answer_extends_the_local_lease_past_the_service_lease() {
    let mut log = Log::new(LockLimits::default());
    let mut a = LockClient::new(1, 100).unwrap();
    let mut b = LockClient::new(2, 100).unwrap();
    for client in [&mut a, &mut b] {
        log.open(client);
    }
    log.acquire_exclusive(&mut a, "x");
    log.acquire_exclusive(&mut b, "x");

    let mut late: Option<(Command, Outcome)> = None;
    let mut both = None;
    for tick in 1..=250u64 {
        // Log time follows the clients' clocks exactly.
        log.apply_and_tell(&Command::Time { now: tick }, &mut [&mut b]);
        if let Some(keep_alive) = a.tick() {
            match tick {
                33 => late = Some((keep_alive.clone(), log.apply(&keep_alive))),
                66 => {
                    log.submit(&mut a, &keep_alive);
                }
                _ => {} // A is cut off from the cluster from here on.
            }
        }
        if tick == 98 {
            let (command, outcome) = late.take().unwrap();
            assert!(matches!(outcome, Outcome::Renewed { expires_at: 133 }));
            a.on_outcome(&command, &outcome);
        }
        if let Some(keep_alive) = b.tick() {
            let outcome = log.apply_and_tell(&keep_alive, &mut [&mut b]);
            b.on_outcome(&keep_alive, &outcome);
        }
        if a.token("x").is_some() && b.token("x").is_some() && both.is_none() {
            both = Some(tick);
        }
    }
    assert!(both.is_none(), "A and B both hold \"x\" at tick {both:?}");
}

/// Left open by session 14 ("renewals are matched to sends only approximately"), fixed in
/// session 15: the client credited an answer with the oldest renewal sent since the previous
/// answer, not with the send of the keep-alive answered. Answers that arrive out of order
/// then credit an old keep-alive with a newer send.
///
/// Here: lease 100 (margin 10, keep-alive every 33). K1 (sent 33) is applied at once but its
/// answer is slow; K2 (sent 66) is applied and answered at once; K3 (sent 99) is lost. K1's
/// answer arrives at 100 and was credited with K3's send: A trusted its lease until
/// 99 + 90 = 189, while the service's last renewal (K2) ends at 166 and B gets the lock at
/// 186 (lock-delay 20). Now every `KeepAlive` carries its send tick (`tag`), and the answer
/// is credited with exactly that send: A's lease ends at 66 + 90 = 156.
#[test]
fn an_answer_arriving_out_of_order_is_credited_with_its_own_keep_alive() {
    let mut log = Log::new(LockLimits::default());
    let mut a = LockClient::new(1, 100).unwrap();
    let mut b = LockClient::new(2, 100).unwrap();
    for client in [&mut a, &mut b] {
        log.open(client);
    }
    log.acquire_exclusive(&mut a, "x");
    log.acquire_exclusive(&mut b, "x");

    let mut slow: Option<(Command, Outcome)> = None;
    let mut both = None;
    let mut a_live_until = 0;
    for tick in 1..=250u64 {
        log.apply_and_tell(&Command::Time { now: tick }, &mut [&mut b]);
        if let Some(keep_alive) = a.tick() {
            match tick {
                33 => slow = Some((keep_alive.clone(), log.apply(&keep_alive))),
                66 => {
                    log.submit(&mut a, &keep_alive);
                }
                _ => {} // K3 and later are lost: A is cut off.
            }
        }
        if tick == 100 {
            let (command, outcome) = slow.take().unwrap();
            assert!(matches!(outcome, Outcome::Renewed { expires_at: 133 }));
            a.on_outcome(&command, &outcome);
        }
        if let Some(keep_alive) = b.tick() {
            let outcome = log.apply_and_tell(&keep_alive, &mut [&mut b]);
            b.on_outcome(&keep_alive, &outcome);
        }
        if a.is_live() {
            a_live_until = tick;
        }
        if a.token("x").is_some() && b.token("x").is_some() && both.is_none() {
            both = Some(tick);
        }
    }
    assert!(both.is_none(), "A and B both hold \"x\" at tick {both:?}");
    assert_eq!(a_live_until, 155, "A trusts its lease until 66 + 90");
    assert!(b.token("x").is_some(), "B got the lock");
}

/// `LockClient::on_outcome` takes `(Acquire, Granted)` without checking that the acquire was
/// made by the *current* session. An answer that arrives late — after the session expired and
/// the client opened a new one — is recorded as a lock held by the new session, with the old,
/// already-revoked token, and `token()` returns it while the new session is live. Meanwhile the
/// service has given the lock to someone else: two holders in the clients' views. (The
/// `KeepAlive`/`Renewed`, `Open`/`Opened` and `Close`/`Closed` arms have the same blind spot:
/// a late `Closed` of an old session makes the client forget its new session and the locks the
/// service still grants to it.)
///
/// Fix direction: in `on_outcome`, ignore answers to commands whose `session` is not
/// `self.session` (as `on_event` already does).
#[test]
fn a_late_grant_answer_of_an_expired_session_is_held_by_the_new_session() {
    let mut log = Log::new(LockLimits::default());
    let mut a = LockClient::new(1, 100).unwrap();
    let mut b = LockClient::new(2, 100).unwrap();
    for client in [&mut a, &mut b] {
        log.open(client);
    }
    // A's acquire is granted; the answer is delayed.
    let acquire_a = a.acquire("x", Mode::Exclusive, Wait::Forever).unwrap();
    let granted = log.apply(&acquire_a);
    let Outcome::Granted { token: old_token } = granted else {
        panic!("{granted:?}")
    };
    log.acquire_exclusive(&mut b, "x");
    // A is cut off: its keep-alives are lost, its session expires at 100, and after the
    // lock-delay B gets the lock.
    for tick in 1..=130u64 {
        a.tick();
        if let Some(keep_alive) = b.tick() {
            log.submit(&mut b, &keep_alive);
        }
        log.apply_and_tell(&Command::Time { now: tick }, &mut [&mut a, &mut b]);
    }
    assert_eq!(a.session(), None, "A heard of its expiry");
    let b_token = b.token("x").expect("B holds x");
    assert!(b_token > old_token);
    // A opens a new session; then the old grant's answer finally arrives.
    log.open(&mut a);
    a.on_outcome(&acquire_a, &granted);
    assert_eq!(
        a.token("x"),
        None,
        "A's new session believes it holds x with the revoked token while B holds it with {b_token:?}"
    );
}

/// `LockClient::release` of a lock it only *waits* for sends `Release { token: None }` (a
/// withdraw). If the service granted the wait just before the withdraw was applied, the withdraw
/// releases that grant (answered `Released`). `on_outcome` then forgets the release
/// (`releasing.remove`), and records no token in `released` (there was none), so the
/// `Granted` event of that grant — events travel separately from answers and may arrive after
/// them — is taken as a live grant: the client believes it holds a lock the service has already
/// released and given to someone else.
///
/// Fixed in session 15: `Outcome::Released` carries the token of the grant it released, and
/// the client records it as released, so the late event's grant is stale.
#[test]
fn a_grant_event_after_a_withdraw_is_not_taken_as_held() {
    let mut log = Log::new(LockLimits::default());
    let mut a = LockClient::new(1, 100).unwrap();
    let mut b = LockClient::new(2, 100).unwrap();
    let mut c = LockClient::new(3, 100).unwrap();
    for client in [&mut a, &mut b, &mut c] {
        log.open(client);
    }
    log.acquire_exclusive(&mut a, "x");
    let (_, outcome) = log.acquire_exclusive(&mut b, "x");
    assert_eq!(outcome, Outcome::Queued { position: 0 });
    // B gives up waiting; A releases first in the log, which grants B.
    let withdraw = b.release("x").unwrap();
    assert!(matches!(withdraw, Command::Release { token: None, .. }));
    let release_a = a.release("x").unwrap();
    log.submit(&mut a, &release_a);
    let events = log.service.take_events();
    assert!(matches!(&events[..], [LockEvent::Granted { .. }]));
    // The withdraw releases that grant; B hears the answer first.
    let outcome = log.apply(&withdraw);
    assert!(matches!(outcome, Outcome::Released { .. }), "{outcome:?}");
    b.on_outcome(&withdraw, &outcome);
    // C takes the free lock.
    let acquire_c = c.acquire("x", Mode::Exclusive, Wait::Try).unwrap();
    log.submit(&mut c, &acquire_c);
    let c_token = c.token("x").expect("C holds x");
    // B's grant event arrives late.
    b.on_event(&events[0]);
    assert_eq!(
        b.token("x"),
        None,
        "B believes it holds x (released by its withdraw) while C holds it with {c_token:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Lock service: behaviour that is right
// ---------------------------------------------------------------------------------------------

/// Fencing tokens only grow across every way a lock changes hands (release, close, timeout of
/// the waiter ahead, expiry plus lock-delay), a retried acquire gets the same token, and the
/// lock-delay holds off even a try-lock.
#[test]
fn fencing_tokens_grow_through_release_close_timeout_and_expiry() {
    let mut log = Log::new(LockLimits {
        lock_delay: 7,
        ..LockLimits::default()
    });
    let mut sessions = Vec::new();
    for client in 1..=5 {
        let Outcome::Opened { session, .. } = log.apply(&Command::Open {
            client,
            lease: 50,
            tag: 0,
        }) else {
            panic!()
        };
        sessions.push(session);
    }
    let mut last = FencingToken(0);
    let mut check = |token: FencingToken| {
        assert!(token > last, "{token:?} after {last:?}");
        last = token;
    };
    let Outcome::Granted { token } =
        log.apply(&acquire(sessions[0], "x", Mode::Exclusive, Wait::Try))
    else {
        panic!()
    };
    check(token);
    // A retried acquire answers the same grant.
    assert_eq!(
        log.apply(&acquire(sessions[0], "x", Mode::Exclusive, Wait::Forever)),
        Outcome::Granted { token }
    );
    // 1 waits 5 ticks, 2 forever, 3 forever (shared).
    log.apply(&acquire(sessions[1], "x", Mode::Exclusive, Wait::Ticks(5)));
    log.apply(&acquire(sessions[2], "x", Mode::Exclusive, Wait::Forever));
    log.apply(&acquire(sessions[3], "x", Mode::Shared, Wait::Forever));
    // 1's wait times out; 0 still holds.
    log.apply(&Command::Time { now: 5 });
    assert!(matches!(
        log.service.take_events()[..],
        [LockEvent::TimedOut { session, .. }] if session == sessions[1]
    ));
    // 0 closes: 2 gets it by that entry.
    log.apply(&Command::Close {
        session: sessions[0],
    });
    let events = log.service.take_events();
    let [LockEvent::Granted { token, session, .. }] = events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(session, sessions[2]);
    check(token);
    // 2 stops keeping alive; everyone else is kept alive. 2 expires at 50; lock-delay 7.
    for now in (10..=56).step_by(10) {
        for &session in [sessions[1], sessions[3], sessions[4]].iter() {
            log.apply(&Command::KeepAlive { session, tag: 0 });
        }
        log.apply(&Command::Time { now });
    }
    log.service.take_events();
    assert!(
        log.service.holders("x").is_empty(),
        "released by the expiry"
    );
    assert_eq!(
        log.apply(&acquire(sessions[4], "x", Mode::Exclusive, Wait::Try)),
        Outcome::Refused(synod::lock::LockError::Busy),
        "in lock-delay"
    );
    log.apply(&Command::Time { now: 57 });
    let events = log.service.take_events();
    let [LockEvent::Granted { token, session, .. }] = events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(session, sessions[3]);
    check(token);
}

/// Huge numbers from the log never panic and keep the invariants: `Wait::Ticks(u64::MAX)`,
/// `Grace { ticks: u64::MAX }`, tokens and sessions of `u64::MAX`, slots up to `u64::MAX`.
#[test]
fn huge_numbers_do_not_panic_or_break_invariants() {
    let mut log = Log::new(LockLimits::default());
    let Outcome::Opened { session: a, .. } = log.apply(&Command::Open {
        client: u64::MAX,
        lease: 10,
        tag: 0,
    }) else {
        panic!()
    };
    let Outcome::Opened { session: b, .. } = log.apply(&Command::Open {
        client: 0,
        lease: 100_000,
        tag: 0,
    }) else {
        panic!()
    };
    log.apply(&acquire(a, "x", Mode::Shared, Wait::Try));
    assert_eq!(
        log.apply(&acquire(b, "x", Mode::Exclusive, Wait::Ticks(u64::MAX))),
        Outcome::Queued { position: 0 }
    );
    log.apply(&Command::Grace { ticks: u64::MAX });
    log.apply(&Command::Release {
        session: a,
        name: "x".into(),
        token: Some(FencingToken(u64::MAX)),
    });
    log.apply(&Command::KeepAlive {
        session: SessionId(u64::MAX),
        tag: u64::MAX,
    });
    log.apply(&Command::Time { now: u64::MAX - 1 });
    assert_eq!(log.service.session_count(), 2, "the grace kept both");
    // The last slot there is.
    let outcome = log
        .service
        .apply(u64::MAX, &Command::Close { session: a }.encode());
    assert!(matches!(outcome, Outcome::Closed { .. }));
    log.service.check_invariants().unwrap();
    let events = log.service.take_events();
    assert!(
        matches!(&events[..], [LockEvent::Granted { token, .. }] if token.0 == u64::MAX),
        "{events:?}"
    );
    assert!(matches!(
        log.service
            .apply(u64::MAX, &Command::Time { now: 1 }.encode()),
        Outcome::Refused(synod::lock::LockError::SlotReplayed { .. })
    ));
    let restored = LockService::restore(&log.service.snapshot()).unwrap();
    assert_eq!(restored, log.service);
}

/// Two replicas applying the same log (including refused, malformed and stale entries) end with
/// byte-identical snapshots and the same events, and a replica restored from a mid-log snapshot
/// converges too.
#[test]
fn replicas_and_a_restored_replica_stay_identical() {
    let mut commands: Vec<Vec<u8>> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let mut now = 0;
    for index in 0..3_000u64 {
        let session = SessionId(1 + next(index + 1));
        let name = ["a", "b", "c"][next(3) as usize].to_string();
        let mode = if next(3) == 0 {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let wait = [Wait::Try, Wait::Forever, Wait::Ticks(next(30))][next(3) as usize];
        let command = match next(10) {
            0 => Command::Open {
                client: next(8),
                lease: 10 + next(40),
                tag: 0,
            },
            1 => Command::KeepAlive { session, tag: 0 },
            2 => Command::Close { session },
            3 | 4 => {
                now += next(12);
                Command::Time { now }
            }
            5 => Command::Release {
                session,
                name,
                token: if next(2) == 0 {
                    None
                } else {
                    Some(FencingToken(next(index + 1)))
                },
            },
            6 if next(20) == 0 => Command::Grace { ticks: next(50) },
            _ => Command::Acquire {
                session,
                name,
                mode,
                wait,
            },
        };
        let mut bytes = command.encode();
        if next(100) == 0 {
            bytes.push(0);
        }
        commands.push(bytes);
    }
    let limits = LockLimits {
        lease_min: 10,
        lock_delay: 5,
        waiters_max: 3,
        locks_per_session_max: 2,
        ..LockLimits::default()
    };
    let mut one = Log::new(limits);
    let mut two = Log::new(limits);
    let mut restored: Option<Log> = None;
    let mut events = (Vec::new(), Vec::new(), Vec::new());
    for (index, bytes) in commands.iter().enumerate() {
        let slot = index as u64 + 1;
        let first = one.service.apply(slot, bytes);
        let second = two.service.apply(slot, bytes);
        assert_eq!(first, second);
        one.service.check_invariants().unwrap();
        events.0.extend(one.service.take_events());
        events.1.extend(two.service.take_events());
        if let Some(log) = &mut restored {
            assert_eq!(log.service.apply(slot, bytes), first);
            events.2.extend(log.service.take_events());
        }
        if slot == 1_500 {
            restored = Some(Log {
                service: LockService::restore(&one.service.snapshot()).unwrap(),
                slot,
            });
            events.2 = events.0.clone();
        }
    }
    assert_eq!(one.service.snapshot(), two.service.snapshot());
    assert_eq!(restored.unwrap().service.snapshot(), one.service.snapshot());
    assert_eq!(events.0, events.1);
    assert_eq!(events.0, events.2);
}

// ---------------------------------------------------------------------------------------------
// Sessions and kv: behaviour that is right
// ---------------------------------------------------------------------------------------------

fn header(client: ClientId, sequence: u64, acknowledged_below: u64) -> RequestHeader {
    RequestHeader {
        client,
        sequence,
        acknowledged_below,
    }
}

/// The reply cache is per session: the same sequence number in two sessions gets each its own
/// answer; a session's id is never reused after it is closed, so a request of the closed
/// session is never answered from a new session's cache nor applied again.
#[test]
fn reply_caches_never_answer_another_sessions_request() {
    let mut table = SessionTable::<Bytes>::new(SessionLimits {
        sessions_max: 2,
        responses_per_session_max: 4,
        response_bytes_per_session_max: 64,
    })
    .unwrap();
    let one = table.open(1).unwrap().client;
    let two = table.open(2).unwrap().client;
    assert_eq!(
        table.execute(header(one, 1, 0), 3, || Bytes::from("one")),
        Ok(Bytes::from("one"))
    );
    assert_eq!(
        table.execute(header(two, 1, 0), 4, || Bytes::from("two")),
        Ok(Bytes::from("two"))
    );
    assert_eq!(
        table.check(header(one, 1, 0), 5),
        SessionOutcome::Duplicate(Bytes::from("one"))
    );
    assert_eq!(
        table.check(header(two, 1, 0), 6),
        SessionOutcome::Duplicate(Bytes::from("two"))
    );
    assert!(table.close(one).unwrap());
    let three = table.open(7).unwrap().client;
    assert_ne!(three, one);
    assert_eq!(
        table.check(header(one, 1, 0), 8),
        SessionOutcome::SessionExpired
    );
    // A third open evicts the least recently active (two, active at 6).
    let four = table.open(9).unwrap();
    assert_eq!(four.evicted, Some(two));
    assert_eq!(
        table.check(header(two, 1, 0), 10),
        SessionOutcome::SessionExpired
    );
    // Huge sequence numbers and watermarks are fine; a watermark never goes down.
    assert_eq!(
        table.execute(header(three, u64::MAX, u64::MAX), 11, || Bytes::from("max")),
        Ok(Bytes::from("max"))
    );
    assert_eq!(
        table.check(header(three, u64::MAX, 0), 12),
        SessionOutcome::Duplicate(Bytes::from("max"))
    );
    assert_eq!(table.check(header(three, 5, 0), 13), SessionOutcome::Stale);
}

fn kv_apply(machine: &mut KvStateMachine, slot: &mut u64, command: &kv::Command) -> Response {
    *slot += 1;
    machine.apply(*slot, &command.encode())
}

/// A kv request chosen many times (before and after a snapshot, interleaved with other
/// clients' writes to the same key) takes effect once and every copy gets the first answer;
/// once acknowledged it is stale, never re-applied.
#[test]
fn kv_duplicates_apply_once_across_a_snapshot() {
    let limits = KvLimits {
        sessions: SessionLimits {
            sessions_max: 4,
            responses_per_session_max: 4,
            response_bytes_per_session_max: 4096,
        },
        ..KvLimits::default()
    };
    let mut machine = KvStateMachine::new(limits).unwrap();
    let mut slot = 0;
    let open = |machine: &mut KvStateMachine, slot: &mut u64| match kv_apply(
        machine,
        slot,
        &kv::Command::OpenSession,
    ) {
        Response::SessionOpened { client } => client,
        other => panic!("{other:?}"),
    };
    let a = open(&mut machine, &mut slot);
    let b = open(&mut machine, &mut slot);
    let append = |client, sequence, acknowledged_below, value: &'static str| kv::Command::Request {
        header: header(client, sequence, acknowledged_below),
        operation: Operation::Append {
            key: Bytes::from("k"),
            value: Bytes::from(value),
        },
    };
    let first = kv_apply(&mut machine, &mut slot, &append(a, 1, 1, "a"));
    assert_eq!(
        first,
        Response::Output(Output::Appended { length_bytes: 1 })
    );
    kv_apply(&mut machine, &mut slot, &append(b, 1, 1, "b"));
    assert_eq!(
        kv_apply(&mut machine, &mut slot, &append(a, 1, 1, "a")),
        first
    );
    let mut restored = KvStateMachine::restore(&machine.snapshot()).unwrap();
    assert_eq!(restored.digest(), machine.digest());
    let mut restored_slot = slot;
    for machine_slot in [
        (&mut machine, &mut slot),
        (&mut restored, &mut restored_slot),
    ] {
        let (machine, slot) = machine_slot;
        assert_eq!(kv_apply(machine, slot, &append(a, 1, 1, "a")), first);
        assert_eq!(machine.get(b"k").unwrap(), &Bytes::from("ab"));
        // Acknowledged: a later copy is stale, not applied.
        kv_apply(machine, slot, &append(a, 2, 2, "c"));
        assert_eq!(
            kv_apply(machine, slot, &append(a, 1, 0, "a")),
            Response::Error(kv::KvError::Stale)
        );
        assert_eq!(machine.get(b"k").unwrap(), &Bytes::from("abc"));
    }
    assert_eq!(restored.digest(), machine.digest());
}
