//! A three-replica cluster on `MemStorage` to step bad input into, drained with the documented
//! Ready loop. Shared by `tests/replica_bad_input.rs` and the `step` fuzz target
//! (`fuzz/fuzz_targets/step.rs` includes this file by path).

use synod::{Config, Event, MemStorage, Message, NodeId, Recovered, Replica, Storage};

pub struct Cluster {
    pub replicas: Vec<Replica>,
    pub storages: Vec<MemStorage>,
    /// Messages sent and not yet delivered.
    pub queue: Vec<Message>,
}

impl Cluster {
    /// Three fresh replicas with short timers and a small `accept_lookahead_slots_max` (16),
    /// each drained once.
    pub fn new() -> Cluster {
        let members: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let replicas = members
            .iter()
            .map(|&id| {
                let mut config = Config::new(id, members.clone());
                config.election_ticks = 4;
                config.heartbeat_ticks = 1;
                config.retransmit_ticks = 2;
                config.accept_lookahead_slots_max = 16;
                Replica::new(config, Recovered::default()).expect("valid config")
            })
            .collect();
        let mut cluster = Cluster {
            replicas,
            storages: vec![MemStorage::new(); 3],
            queue: Vec::new(),
        };
        for index in 0..3 {
            cluster.drain(index);
        }
        cluster
    }

    /// Steps `message` into its recipient (if it is a member) and drains the recipient.
    pub fn step(&mut self, message: Message) {
        let Some(index) = (1..=3).position(|id| NodeId(id) == message.to) else {
            return;
        };
        let _ = self.replicas[index].step(message);
        self.drain(index);
    }

    /// The documented Ready loop, with synchronous writes. It must come to an end: a replica
    /// still producing batches after 64 is a bug.
    pub fn drain(&mut self, index: usize) {
        let (replica, storage) = (&mut self.replicas[index], &mut self.storages[index]);
        for _ in 0..64 {
            if !replica.has_ready() {
                return;
            }
            let mut ready = replica.ready();
            ready.append_messages_to(&mut self.queue);
            if let Some(snapshot) = ready.take_snapshot() {
                storage.save_snapshot(&snapshot).expect("memory storage");
                storage.compact(snapshot.slot);
            }
            storage.write(ready.persist_mut()).expect("memory storage");
            ready.append_persisted_messages_to(&mut self.queue);
            let _ = replica.committed(&ready).count();
            let events = ready.take_events();
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
            for event in events {
                if let Event::SnapshotNeeded { follower } = event {
                    if let Ok(Some(snapshot)) = storage.load_snapshot() {
                        let _ = replica.send_snapshot(follower, &snapshot);
                    }
                }
            }
        }
        panic!("replica #{index} kept producing ready batches");
    }
}
