//! A lock service applied from a hand-driven log, for the tests of the lock service and
//! `LockClient` (`tests/lock_session_faults.rs`, `tests/session15_faults.rs`): every entry is
//! applied at the next slot and the service's invariants are checked after it.
#![allow(dead_code)]

use synod::lock::{Command, LockClient, LockLimits, LockService, Mode, Outcome, Wait};

/// A lock service and its log's next slot.
pub struct Log {
    pub service: LockService,
    pub slot: u64,
}

impl Log {
    pub fn new(limits: LockLimits) -> Log {
        Log {
            service: LockService::new(limits).unwrap(),
            slot: 0,
        }
    }

    pub fn apply(&mut self, command: &Command) -> Outcome {
        self.slot += 1;
        let outcome = self.service.apply(self.slot, &command.encode());
        self.service
            .check_invariants()
            .expect("invariants hold after every entry");
        outcome
    }

    /// Applies and lets `clients` see the events (grants, expiries) at once.
    pub fn apply_and_tell(
        &mut self,
        command: &Command,
        clients: &mut [&mut LockClient],
    ) -> Outcome {
        let outcome = self.apply(command);
        for event in self.service.take_events() {
            for client in clients.iter_mut() {
                client.on_event(&event);
            }
        }
        outcome
    }

    /// Applies `command` of `client` and hands `client` its outcome at once.
    pub fn submit(&mut self, client: &mut LockClient, command: &Command) -> Outcome {
        let outcome = self.apply(command);
        client.on_outcome(command, &outcome);
        outcome
    }

    /// `client` opens a session (applied and answered at once); returns the open.
    pub fn open(&mut self, client: &mut LockClient) -> Command {
        let open = client.open();
        self.submit(client, &open);
        open
    }

    /// `client` asks for `name` exclusively, waiting for ever (applied and answered at once);
    /// returns the acquire and its outcome.
    pub fn acquire_exclusive(&mut self, client: &mut LockClient, name: &str) -> (Command, Outcome) {
        let acquire = client
            .acquire(name, Mode::Exclusive, Wait::Forever)
            .unwrap();
        let outcome = self.submit(client, &acquire);
        (acquire, outcome)
    }
}
