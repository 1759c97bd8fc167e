//! The lock service on a replicated log: three replicas, a leader change, log time proposed
//! by whoever leads. Every replica must reach the same locks, and leases must behave as the
//! module promises across the change (grace first, expiry only by log time).

mod common;

use bytes::Bytes;
use common::Net;
use std::collections::BTreeMap;
use synod::lock::{
    Command, FencingToken, LeaseClock, LockEvent, LockLimits, LockService, Mode, Outcome,
    SessionId, Wait,
};
use synod::{NodeId, Value};

/// A replicated lock service: the cluster, and on each node its lock service and lease clock.
struct Locks {
    net: Net,
    services: BTreeMap<u64, LockService>,
    clocks: BTreeMap<u64, LeaseClock>,
    /// What each node's service answered, by slot.
    outcomes: BTreeMap<u64, BTreeMap<u64, Outcome>>,
    events: BTreeMap<u64, Vec<(u64, LockEvent)>>,
    /// The Time and Grace entries, by slot, with the node that proposed them.
    clock_entries: Vec<(NodeId, Command)>,
}

impl Locks {
    fn new() -> Locks {
        let net = Net::new(3);
        let limits = LockLimits {
            lock_delay: 20,
            ..LockLimits::default()
        };
        let mut locks = Locks {
            net,
            services: BTreeMap::new(),
            clocks: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            events: BTreeMap::new(),
            clock_entries: Vec::new(),
        };
        for id in 1..=3 {
            locks.services.insert(id, LockService::new(limits).unwrap());
            locks.clocks.insert(id, LeaseClock::new(5, 100).unwrap());
            locks.outcomes.insert(id, BTreeMap::new());
            locks.events.insert(id, Vec::new());
        }
        locks
    }

    fn leader(&self) -> u64 {
        self.net.leader().expect("a leader").0
    }

    /// Proposes `command` at node `at` and lets the network settle.
    fn propose_at(&mut self, at: u64, command: &Command) {
        self.net
            .replica_mut(at)
            .propose(Bytes::from(command.encode()))
            .expect("proposal accepted");
        self.net.process(NodeId(at));
        self.net.stabilize();
        self.apply_all();
    }

    /// Proposes at the leader; returns what the leader's service answered.
    fn propose(&mut self, command: Command) -> Outcome {
        let leader = self.leader();
        let before = self.services[&leader].last_applied_slot();
        self.propose_at(leader, &command);
        let (_, outcome) = self.outcomes[&leader]
            .range(before + 1..)
            .find(|(slot, _)| {
                matches!(&self.net.applied(leader)[slot], Value::Command { data, .. }
                    if Command::decode(data).as_ref() == Ok(&command))
            })
            .expect("the command was applied");
        outcome.clone()
    }

    /// Applies what each node has newly chosen to its lock service.
    fn apply_all(&mut self) {
        for id in 1..=3 {
            let service = self.services.get_mut(&id).unwrap();
            let from = service.last_applied_slot() + 1;
            let entries: Vec<(u64, Value)> = self
                .net
                .applied(id)
                .range(from..)
                .map(|(slot, value)| (*slot, value.clone()))
                .collect();
            for (slot, value) in entries {
                if let Value::Command { data, .. } = value {
                    let outcome = service.apply(slot, &data);
                    self.outcomes.get_mut(&id).unwrap().insert(slot, outcome);
                    let events = service.take_events();
                    self.events
                        .get_mut(&id)
                        .unwrap()
                        .extend(events.into_iter().map(|event| (slot, event)));
                }
            }
        }
    }

    /// One tick everywhere: the replicas tick, and the leader's lease clock proposes.
    fn tick(&mut self) {
        self.net.tick_all(1);
        self.apply_all();
        for id in 1..=3 {
            let up = self.net.nodes[&NodeId(id)].replica.is_some();
            let leads = up && self.net.replica(id).is_leader();
            let now = self.services[&id].now();
            if let Some(command) = self.clocks.get_mut(&id).unwrap().tick(leads, now) {
                self.clock_entries.push((NodeId(id), command.clone()));
                self.propose_at(id, &command);
            }
        }
    }

    fn ticks(&mut self, count: u32, mut each: impl FnMut(&mut Locks, u32)) {
        for tick in 0..count {
            self.tick();
            each(self, tick);
        }
    }
}

fn opened(outcome: Outcome) -> SessionId {
    match outcome {
        Outcome::Opened { session, .. } => session,
        other => panic!("not opened: {other:?}"),
    }
}

#[test]
fn every_replica_holds_the_same_locks_across_a_leader_change() {
    let mut locks = Locks::new();
    locks.net.elect(1);
    let alice = opened(locks.propose(Command::Open {
        client: 1,
        lease: 30,
        tag: 0,
    }));
    let bob = opened(locks.propose(Command::Open {
        client: 2,
        lease: 1000,
        tag: 0,
    }));
    let acquire = |session| Command::Acquire {
        session,
        name: "printer".into(),
        mode: Mode::Exclusive,
        wait: Wait::Forever,
    };
    let Outcome::Granted { token: alice_token } = locks.propose(acquire(alice)) else {
        panic!("alice should get the free lock");
    };
    assert_eq!(locks.propose(acquire(bob)), Outcome::Queued { position: 0 });

    // Alice keeps her session alive through 60 ticks, twice her lease.
    locks.ticks(60, |locks, tick| {
        if tick % 10 == 0 {
            locks.propose(Command::KeepAlive {
                session: alice,
                tag: 0,
            });
        }
    });
    assert!(locks.services[&1].now() >= 50, "the leader moves log time");
    assert_eq!(
        locks.services[&1].holders("printer"),
        [(alice, Mode::Exclusive, alice_token)]
    );

    // Node 1 is cut off; node 2 takes over. Its first clock entry is a grace.
    locks.net.isolate(1);
    locks.net.elect(2);
    let clock_entries_before = locks.clock_entries.len();
    locks.ticks(40, |locks, tick| {
        if tick % 10 == 0 {
            locks.propose(Command::KeepAlive {
                session: alice,
                tag: 0,
            });
        }
    });
    let from_node_2: Vec<&Command> = locks.clock_entries[clock_entries_before..]
        .iter()
        .filter(|(id, _)| *id == NodeId(2))
        .map(|(_, command)| command)
        .collect();
    assert_eq!(from_node_2[0], &Command::Grace { ticks: 100 });
    assert!(matches!(from_node_2[1], Command::Time { .. }));
    assert_eq!(
        locks.services[&2].holders("printer"),
        [(alice, Mode::Exclusive, alice_token)],
        "alice kept her lock across the change"
    );
    locks.net.heal();

    // Alice goes quiet: her lease (and the grace) run out in log time, the lock-delay passes,
    // and the lock goes to Bob with a larger token.
    locks.ticks(200, |_, _| {});
    let events = &locks.events[&2];
    let expired = events
        .iter()
        .find(|(_, event)| matches!(event, LockEvent::Expired { session, .. } if *session == alice))
        .expect("alice expired");
    let granted = events
        .iter()
        .find(|(_, event)| matches!(event, LockEvent::Granted { session, .. } if *session == bob))
        .expect("bob was granted the lock");
    assert!(granted.0 > expired.0);
    let LockEvent::Granted { token, .. } = granted.1 else {
        unreachable!()
    };
    assert_eq!(token, FencingToken(granted.0));
    assert!(token > alice_token);
    let holder = locks.services[&2].holders("printer");
    assert_eq!(holder, [(bob, Mode::Exclusive, token)]);

    // Every replica applied the same entries to the same state, with the same answers and
    // the same events.
    locks.net.stabilize();
    locks.apply_all();
    locks.net.assert_agreement();
    let last = locks
        .services
        .values()
        .map(|s| s.last_applied_slot())
        .min()
        .unwrap();
    assert!(last > 20);
    for id in 2..=3 {
        let common = |outcomes: &BTreeMap<u64, Outcome>| {
            outcomes
                .range(..=last)
                .map(|(slot, outcome)| (*slot, outcome.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(common(&locks.outcomes[&1]), common(&locks.outcomes[&id]));
        let events = |id: u64| -> Vec<(u64, LockEvent)> {
            locks.events[&id]
                .iter()
                .filter(|(slot, _)| *slot <= last)
                .cloned()
                .collect()
        };
        assert_eq!(events(1), events(id));
    }
    // Node 1 caught up after the heal: all three are at the same slot, in the same state.
    let snapshots: Vec<(u64, Vec<u8>)> = locks
        .services
        .values()
        .map(|service| (service.last_applied_slot(), service.snapshot()))
        .collect();
    assert!(snapshots.windows(2).all(|pair| pair[0] == pair[1]));
}
