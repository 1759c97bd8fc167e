//! OmniPaxos 0.2.4 + omnipaxos_storage's `MemoryStorage`: `append` at the leader,
//! `handle_incoming` / `take_outgoing_messages` for the network, `read_decided_suffix` to apply.

use crate::harness::{Cluster, Digest};
use bytes::Bytes;
use omnipaxos::messages::Message;
use omnipaxos::storage::{Entry, NoSnapshot};
use omnipaxos::util::LogEntry;
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use omnipaxos_storage::memory_storage::MemoryStorage;

/// The log entry: the command bytes, shared (not copied) when OmniPaxos clones an entry into
/// a message or its storage, exactly as synod and raft-rs share theirs.
#[derive(Clone, Debug)]
pub struct Command(Bytes);

impl Entry for Command {
    type Snapshot = NoSnapshot;
}

/// The knobs tuned for throughput (see README.md).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// `ServerConfig::batch_size`: entries buffered before they are appended and sent
    /// (1 = no batching; a partial batch waits for `flush_batch_tick_timeout` ticks).
    pub batch_size: usize,
    /// `ServerConfig::flush_batch_tick_timeout`.
    pub flush_batch_tick_timeout: u64,
    /// `ServerConfig::buffer_size`: initial capacity of the outgoing message buffer.
    pub buffer_size: usize,
}

impl Tuning {
    /// The tuning for a client window of `window` commands: batches as large as possible, up to
    /// 64 entries, but dividing the window, so that the client's refills (which in this
    /// harness come in whole windows) never leave a partial batch waiting for the flush timer.
    pub fn for_window(window: u64) -> Tuning {
        let batch_size = (1..=64.min(window.max(1)))
            .rev()
            .find(|size| window.is_multiple_of(*size))
            .unwrap_or(1) as usize;
        Tuning {
            batch_size,
            flush_batch_tick_timeout: 1,
            buffer_size: 100_000,
        }
    }
}

type Node = OmniPaxos<Command, MemoryStorage<Command>>;

pub struct OmniCluster {
    nodes: Vec<Node>,
    appliers: Vec<Digest>,
    /// Per node, the log index up to which it has applied (exclusive).
    applied_idx: Vec<usize>,
    queue: Vec<Message<Command>>,
    delivering: Vec<Message<Command>>,
    leader: usize,
    delivered: u64,
}

impl OmniCluster {
    pub fn new(count: usize, tuning: Tuning) -> OmniCluster {
        let pids: Vec<u64> = (1..=count as u64).collect();
        let nodes = pids
            .iter()
            .map(|&pid| {
                let config = OmniPaxosConfig {
                    cluster_config: ClusterConfig {
                        configuration_id: 1,
                        nodes: pids.clone(),
                        flexible_quorum: None,
                    },
                    server_config: ServerConfig {
                        pid,
                        election_tick_timeout: 1,
                        resend_message_tick_timeout: 10,
                        buffer_size: tuning.buffer_size,
                        batch_size: tuning.batch_size,
                        flush_batch_tick_timeout: tuning.flush_batch_tick_timeout,
                        ..ServerConfig::default()
                    },
                };
                config
                    .build(MemoryStorage::default())
                    .expect("valid config")
            })
            .collect();
        let mut cluster = OmniCluster {
            nodes,
            appliers: vec![Digest::default(); count],
            applied_idx: vec![0; count],
            queue: Vec::new(),
            delivering: Vec::new(),
            leader: usize::MAX,
            delivered: 0,
        };
        // Heartbeat rounds (one tick each) until every node has followed the same leader, in
        // its accept phase, for several rounds in a row (right after the first agreement the
        // ballot leader election may still move once); then let everything settle.
        let mut stable_rounds = 0;
        let mut last = None;
        for _ in 0..1_000 {
            cluster.tick();
            while cluster.round() {}
            let leaders: Vec<_> = cluster
                .nodes
                .iter()
                .map(|node| node.get_current_leader())
                .collect();
            let agreed = match leaders[0] {
                Some((leader, true)) if leaders.iter().all(|l| *l == Some((leader, true))) => {
                    Some(leader)
                }
                _ => None,
            };
            stable_rounds = if agreed.is_some() && agreed == last {
                stable_rounds + 1
            } else {
                0
            };
            last = agreed;
            if stable_rounds == 10 {
                cluster.leader = agreed.expect("agreed") as usize - 1;
                break;
            }
        }
        assert!(cluster.leader < count, "OmniPaxos elected no leader");
        while cluster.round() {}
        cluster
    }
}

impl Cluster for OmniCluster {
    fn propose(&mut self, payload: Vec<u8>) {
        if let Err(error) = self.nodes[self.leader].append(Command(Bytes::from(payload))) {
            panic!("OmniPaxos refused a proposal: {error:?}");
        }
    }

    fn round(&mut self) -> bool {
        let mut busy = !self.queue.is_empty();
        std::mem::swap(&mut self.queue, &mut self.delivering);
        for message in self.delivering.drain(..) {
            self.delivered += 1;
            let to = message.get_receiver() as usize - 1;
            self.nodes[to].handle_incoming(message);
        }
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let queued = self.queue.len();
            node.take_outgoing_messages(&mut self.queue);
            busy |= self.queue.len() > queued;
            let decided = node.get_decided_idx();
            let applied = &mut self.applied_idx[index];
            if decided > *applied {
                busy = true;
                let entries = node
                    .read_decided_suffix(*applied)
                    .expect("decided entries are readable");
                for entry in entries {
                    match entry {
                        LogEntry::Decided(Command(data)) => self.appliers[index].apply(&data),
                        other => panic!("unexpected log entry {other:?}"),
                    }
                }
                *applied = decided;
            }
        }
        busy
    }

    /// `trim` at the leader, which trims its own storage and tells the followers to trim
    /// theirs (one Compaction message each).
    fn compact(&mut self) {
        let through = self.applied_idx.iter().copied().min().unwrap_or(0);
        if let Err(error) = self.nodes[self.leader].trim(Some(through)) {
            panic!("OmniPaxos refused to trim at {through}: {error:?}");
        }
    }

    fn tick(&mut self) {
        for node in &mut self.nodes {
            node.tick();
        }
    }

    fn appliers(&self) -> &[Digest] {
        &self.appliers
    }

    fn messages(&self) -> u64 {
        self.delivered
    }
}
