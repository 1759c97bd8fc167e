//! The companion modules' costs, without consensus: placing a key on the ring, computing a
//! rebalancing's transfers, applying lock-service entries, and one two-phase commit between
//! an in-memory coordinator and two participants.
//!
//! Run: `cargo bench --bench companions`. Criterion reports elements/s: keys placed, entries
//! applied, or transactions committed per second.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use synod::lock::{Command, LockLimits, LockService, Mode, Wait};
use synod::ring::{GroupId, Ring, RingConfig};
use synod::twopc::{
    Coordinator, CoordinatorConfig, DecisionLog, Message, Participant, ParticipantConfig,
    ParticipantEvent, TxnId,
};
use synod::NodeId;

fn ring(groups: u64) -> Ring {
    let mut ring = Ring::new(RingConfig::default()).unwrap();
    for group in 1..=groups {
        ring.insert(GroupId(group), 1).unwrap();
    }
    ring
}

fn ring_benches(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("user:{i}").into_bytes())
        .collect();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(keys.len() as u64));
    let sixteen = ring(16);
    group.bench_function("locate, 16 groups x 128 points", |b| {
        b.iter(|| {
            keys.iter()
                .map(|key| sixteen.locate(key).unwrap().0)
                .sum::<u64>()
        })
    });
    group.throughput(Throughput::Elements(1));
    let seventeen = ring(17);
    group.bench_function("transfers_to, 16 -> 17 groups", |b| {
        b.iter(|| sixteen.transfers_to(&seventeen).len())
    });
    group.finish();
}

fn lock_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock");
    // Per iteration: one session acquires and releases one of 64 locks, and log time moves.
    group.throughput(Throughput::Elements(3));
    let mut service = LockService::new(LockLimits::default()).unwrap();
    let mut slot = 0;
    let mut apply = |service: &mut LockService, command: &Command| {
        slot += 1;
        service.apply(slot, &command.encode())
    };
    apply(
        &mut service,
        &Command::Open {
            client: 1,
            lease: 100_000,
            tag: 0,
        },
    );
    let session = synod::lock::SessionId(1);
    let names: Vec<String> = (0..64).map(|i| format!("lock-{i}")).collect();
    let mut now = 0;
    let mut index = 0;
    group.bench_function("acquire, release, time (encoded entries)", |b| {
        b.iter(|| {
            let name = names[index % names.len()].clone();
            index += 1;
            now += 1;
            apply(
                &mut service,
                &Command::Acquire {
                    session,
                    name: name.clone(),
                    mode: Mode::Exclusive,
                    wait: Wait::Try,
                },
            );
            apply(
                &mut service,
                &Command::Release {
                    session,
                    name,
                    token: None,
                },
            );
            apply(&mut service, &Command::Time { now })
        })
    });
    group.finish();
}

/// One commit: begin, two votes with their prepared records, the logged decision, two
/// decisions and their acknowledgements, the forgotten entry.
fn twopc_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("twopc");
    group.throughput(Throughput::Elements(1));
    let ids = [NodeId(1), NodeId(2)];
    let mut coordinator = Coordinator::new(CoordinatorConfig::new(NodeId(100))).unwrap();
    let mut participants: Vec<Participant> = ids
        .iter()
        .map(|id| Participant::new(ParticipantConfig::new(*id)).unwrap())
        .collect();
    let mut log = DecisionLog::new();
    let mut next = 0;
    let payload = Bytes::from_static(b"debit 10");
    group.bench_function("one commit, two participants, in memory", |b| {
        b.iter(|| {
            next += 1;
            let txn = TxnId(next);
            let parts = ids.iter().map(|id| (*id, payload.clone())).collect();
            coordinator.begin(txn, parts).unwrap();
            let mut network: Vec<Message> = Vec::new();
            loop {
                while coordinator.has_ready() {
                    let mut ready = coordinator.ready();
                    for entry in ready.take_log() {
                        if let Some((txn, decided)) = log.apply(&entry) {
                            coordinator.on_logged(txn, &decided);
                        }
                    }
                    network.extend(ready.take_messages());
                    ready.take_events();
                }
                if network.is_empty() {
                    break;
                }
                for message in std::mem::take(&mut network) {
                    if message.to == NodeId(100) {
                        coordinator.step(message).unwrap();
                        continue;
                    }
                    let participant = &mut participants[message.to.0 as usize - 1];
                    participant.step(message).unwrap();
                    while participant.has_ready() {
                        let mut ready = participant.ready();
                        network.extend(ready.take_messages());
                        ready.take_records();
                        network.extend(ready.take_persisted_messages());
                        for event in ready.take_events() {
                            if let ParticipantEvent::VoteRequested { txn, .. } = event {
                                participant.vote(txn, true).unwrap();
                            }
                        }
                    }
                }
            }
            txn
        })
    });
    group.finish();
}

criterion_group!(benches, ring_benches, lock_benches, twopc_benches);
criterion_main!(benches);
