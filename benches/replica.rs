//! Steady-state throughput of the replica: 3 replicas in one thread, MemStorage, 64-byte
//! commands, a client keeping a window of proposals in flight (in flight = not yet applied on
//! every replica). Messages travel as Rust values; nothing is serialized.
//!
//! Run: `cargo bench --bench replica`. Criterion reports elements/s = commits/s.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::collections::VecDeque;
use synod::{Config, MemStorage, Message, NodeId, Recovered, Replica, Storage};

struct Cluster {
    replicas: Vec<Replica>,
    storages: Vec<MemStorage>,
    inbox: VecDeque<Message>,
    /// Slots applied by each replica.
    applied: Vec<u64>,
    payload: Bytes,
}

impl Cluster {
    fn new(nodes: u64, inflight: usize) -> Cluster {
        let members: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        let replicas = members
            .iter()
            .map(|&id| {
                let mut config = Config::new(id, members.clone());
                config.uncommitted_entries_max = inflight.max(1) * 2;
                config.inflight_msgs_max = 64;
                Replica::new(config, Recovered::default()).unwrap()
            })
            .collect();
        let mut cluster = Cluster {
            replicas,
            storages: vec![MemStorage::new(); nodes as usize],
            inbox: VecDeque::new(),
            applied: vec![0; nodes as usize],
            payload: Bytes::from(vec![0xAB; 64]),
        };
        while !cluster.replicas[0].is_leader() {
            cluster.replicas[0].tick();
            cluster.pump();
        }
        cluster
    }

    /// Drains every ready and delivers every message until quiet.
    fn pump(&mut self) {
        loop {
            let mut idle = true;
            for index in 0..self.replicas.len() {
                if self.replicas[index].has_ready() {
                    idle = false;
                    let mut ready = self.replicas[index].ready();
                    self.inbox.extend(ready.drain_messages());
                    self.storages[index].write(ready.persist_mut()).unwrap();
                    self.inbox.extend(ready.drain_persisted_messages());
                    if let Some(last) = self.replicas[index].committed(&ready).last() {
                        self.applied[index] = last.slot;
                    }
                    self.replicas[index]
                        .advance(ready)
                        .expect("its own ready, acknowledged in order");
                }
            }
            while let Some(message) = self.inbox.pop_front() {
                idle = false;
                let to = message.to.0 as usize - 1;
                self.replicas[to].step(message).unwrap();
            }
            if idle {
                return;
            }
        }
    }

    /// Commits `count` commands keeping at most `window` in flight; returns when all are applied
    /// on every replica.
    fn run(&mut self, count: u64, window: u64) {
        let start = *self.applied.iter().min().unwrap();
        let target = self.replicas[0].status().last_slot + count;
        let mut proposed = 0;
        while *self.applied.iter().min().unwrap() < target {
            let applied_everywhere = *self.applied.iter().min().unwrap();
            let inflight = start + proposed - applied_everywhere;
            let room = window.saturating_sub(inflight).min(count - proposed);
            for _ in 0..room {
                self.replicas[0].propose(self.payload.clone()).unwrap();
                proposed += 1;
            }
            self.pump();
        }
    }
}

fn steady_state(criterion: &mut Criterion) {
    const COMMANDS: u64 = 20_000;
    let mut group = criterion.benchmark_group("replica");
    group.throughput(Throughput::Elements(COMMANDS));
    group.sample_size(10);
    for (nodes, window) in [(3u64, 1000u64), (3, 1), (5, 1000)] {
        let commands = if window == 1 { COMMANDS / 10 } else { COMMANDS };
        group.throughput(Throughput::Elements(commands));
        group.bench_function(
            format!("{nodes}_replicas_{window}_in_flight_64B"),
            |bencher| {
                bencher.iter_batched(
                    || Cluster::new(nodes, window as usize),
                    |mut cluster| cluster.run(commands, window),
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, steady_state);
criterion_main!(benches);
