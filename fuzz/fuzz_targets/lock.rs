//! Drives the lock service with a history decoded from the input: each step is a command
//! built from a few input bytes (a small set of clients and lock names, so that commands
//! collide), or raw bytes. After every entry the service's invariants must hold; a grant's
//! token must never go down; at the end a snapshot must restore to an equal service, and the
//! raw input fed to `restore` must not panic.
//!
//! Run from the repository root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run lock -- -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;
use synod::lock::{Command, FencingToken, LockLimits, LockService, Mode, Outcome, SessionId, Wait};
use synod::session::{ClientId, RequestHeader, SessionLimits};

fuzz_target!(|data: &[u8]| {
    let _ = LockService::restore(data);
    let limits = LockLimits {
        sessions_max: 4,
        locks_max: 3,
        locks_per_session_max: 2,
        waiters_max: 2,
        name_bytes_max: 8,
        lease_min: 2,
        lease_max: 40,
        lock_delay: 3,
        proposers: SessionLimits {
            sessions_max: 2,
            responses_per_session_max: 2,
            response_bytes_per_session_max: 256,
        },
    };
    let mut service = LockService::new(limits).expect("valid limits");
    let names = ["a", "b", "c", "dd"];
    let mut now = 0u64;
    let mut slot = 0u64;
    let mut newest = FencingToken(0);
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        let (&arg, rest) = rest.split_first().unwrap_or((&0, &[]));
        input = rest;
        let session = SessionId(u64::from(arg >> 4) + 1);
        let name = names[usize::from(arg & 3)].to_string();
        let bytes = match op % 11 {
            0 => Command::Open {
                client: u64::from(arg & 7),
                lease: u64::from(arg >> 2),
                tag: 0,
            }
            .encode(),
            1 => Command::KeepAlive { session, tag: 0 }.encode(),
            2 => Command::Close { session }.encode(),
            3 | 4 => Command::Acquire {
                session,
                name,
                mode: if op & 0x10 != 0 {
                    Mode::Shared
                } else {
                    Mode::Exclusive
                },
                wait: match op >> 6 {
                    0 => Wait::Try,
                    1 => Wait::Ticks(u64::from(arg & 7)),
                    2 => Wait::Ticks(0),
                    _ => Wait::Forever,
                },
            }
            .encode(),
            5 => Command::Release {
                session,
                name,
                token: (op & 0x40 != 0)
                    .then(|| FencingToken(slot.saturating_sub(u64::from(arg >> 5)))),
            }
            .encode(),
            6 => {
                now += u64::from(arg & 15);
                Command::Time { now }.encode()
            }
            7 => Command::Grace {
                ticks: u64::from(arg & 31),
            }
            .encode(),
            8 => Command::OpenProposer.encode(),
            9 => Command::Once {
                header: RequestHeader {
                    client: ClientId(u64::from(arg & 3)),
                    sequence: u64::from((arg >> 2) & 7),
                    acknowledged_below: u64::from((op >> 5) & 7),
                },
                command: Box::new(Command::Acquire {
                    session,
                    name,
                    mode: Mode::Exclusive,
                    wait: Wait::Forever,
                }),
            }
            .encode(),
            _ => {
                // Raw bytes: as many as `arg` says.
                let take = usize::from(arg & 31).min(input.len());
                let (raw, rest) = input.split_at(take);
                input = rest;
                raw.to_vec()
            }
        };
        slot += 1 + u64::from(op & 0x20 != 0);
        let outcome = service.apply(slot, &bytes);
        if let Err(broken) = service.check_invariants() {
            panic!("invariant broken after slot {slot}: {broken}");
        }
        if let Outcome::Granted { token } = outcome {
            if token.0 == slot {
                assert!(token > newest, "token {token:?} after {newest:?}");
                newest = token;
            }
        }
        for event in service.take_events() {
            if let synod::lock::LockEvent::Granted { token, .. } = event {
                assert_eq!(token.0, slot);
                assert!(token >= newest);
                newest = token;
            }
        }
    }
    let restored = LockService::restore(&service.snapshot()).expect("own snapshot restores");
    assert!(restored == service);
});
