//! synod: `Replica` + `MemStorage` (or `FileStorage`), driven by the Ready loop of the crate
//! documentation.

use crate::harness::{Cluster, Digest};
use bytes::Bytes;
use synod::{Config, MemStorage, Message, NodeId, Recovered, Replica, Slot, Storage, Value};

/// The knobs tuned for throughput (see README.md).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// `Config::inflight_msgs_max`: Accepts in flight per follower.
    pub inflight_msgs_max: usize,
    /// `Config::accept_bytes_max`: payload bytes in one Accept.
    pub accept_bytes_max: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            inflight_msgs_max: 256,
            accept_bytes_max: 256 << 10,
        }
    }
}

pub struct SynodCluster<S: Storage = MemStorage> {
    replicas: Vec<Replica>,
    storages: Vec<S>,
    appliers: Vec<Digest>,
    /// Messages to deliver in the next round, and the buffer the current round drains.
    queue: Vec<Message>,
    delivering: Vec<Message>,
    leader: usize,
    delivered: u64,
    /// Per replica, the last slot it applied.
    applied_slots: Vec<Slot>,
}

impl SynodCluster<MemStorage> {
    pub fn new(nodes: usize, window: u64, payload: usize, tuning: Tuning) -> SynodCluster {
        let storages = (0..nodes).map(|_| MemStorage::new()).collect();
        SynodCluster::with_storages(storages, window, payload, tuning)
    }
}

impl<S: Storage> SynodCluster<S> {
    /// A cluster of one replica per storage (fresh storages: this is a benchmark).
    pub fn with_storages(
        mut storages: Vec<S>,
        window: u64,
        payload: usize,
        tuning: Tuning,
    ) -> SynodCluster<S> {
        let nodes = storages.len();
        let members: Vec<NodeId> = (1..=nodes as u64).map(NodeId).collect();
        let replicas = members
            .iter()
            .zip(&mut storages)
            .map(|(&id, storage)| {
                let mut config = Config::new(id, members.clone());
                config.inflight_msgs_max = tuning.inflight_msgs_max;
                config.accept_bytes_max = tuning.accept_bytes_max;
                // The client's window bounds what is uncommitted; these only must not refuse it.
                config.uncommitted_entries_max = (window as usize).max(1) * 2;
                config.uncommitted_bytes_max =
                    ((window as usize).max(1) * payload * 2).max(1 << 20);
                config.inflight_bytes_max = usize::MAX / 2;
                let recovered: Recovered = storage.recover().expect("fresh storage");
                Replica::new(config, recovered).expect("valid config")
            })
            .collect();
        let mut cluster = SynodCluster {
            replicas,
            storages,
            appliers: vec![Digest::default(); nodes],
            queue: Vec::new(),
            delivering: Vec::new(),
            leader: 0,
            delivered: 0,
            applied_slots: vec![0; nodes],
        };
        // Elect replica 0: tick it alone until it leads, then let everything settle.
        for _ in 0..10_000 {
            if cluster.replicas[0].is_leader() {
                break;
            }
            cluster.replicas[0].tick();
            while cluster.round() {}
        }
        assert!(cluster.replicas[0].is_leader(), "synod elected no leader");
        while cluster.round() {}
        cluster
    }
}

impl<S: Storage> SynodCluster<S> {
    /// The storages, to read their counters after a run.
    pub fn storages(&self) -> &[S] {
        &self.storages
    }
}

impl<S: Storage> Cluster for SynodCluster<S> {
    fn propose(&mut self, payload: Vec<u8>) {
        if let Err(error) = self.replicas[self.leader].propose(Bytes::from(payload)) {
            panic!("synod refused a proposal: {error}");
        }
    }

    fn round(&mut self) -> bool {
        let mut busy = !self.queue.is_empty();
        std::mem::swap(&mut self.queue, &mut self.delivering);
        for message in self.delivering.drain(..) {
            self.delivered += 1;
            let to = message.to.0 as usize - 1;
            self.replicas[to]
                .step(message)
                .expect("synod refused a message");
        }
        for index in 0..self.replicas.len() {
            let replica = &mut self.replicas[index];
            while replica.has_ready() {
                busy = true;
                let mut ready = replica.ready();
                ready.append_messages_to(&mut self.queue);
                self.storages[index]
                    .write(ready.persist_mut())
                    .expect("storage write");
                ready.append_persisted_messages_to(&mut self.queue);
                for entry in replica.committed(&ready) {
                    self.applied_slots[index] = entry.slot;
                    if let Value::Command { data, .. } = &entry.value {
                        self.appliers[index].apply(data);
                    }
                }
                replica
                    .advance(ready)
                    .expect("its own ready, acknowledged in order");
            }
        }
        busy
    }

    fn compact(&mut self) {
        let through = self.applied_slots.iter().copied().min().unwrap_or(0);
        for (replica, storage) in self.replicas.iter_mut().zip(&mut self.storages) {
            replica
                .compact(through)
                .expect("every replica applied through the lowest applied slot");
            storage.compact(through).expect("storage compaction");
        }
    }

    fn tick(&mut self) {
        for replica in &mut self.replicas {
            replica.tick();
        }
    }

    fn appliers(&self) -> &[Digest] {
        &self.appliers
    }

    fn messages(&self) -> u64 {
        self.delivered
    }
}
