//! raft-rs 0.7.0: `RawNode` + its `MemStorage`, driven by the Ready loop its crate
//! documentation teaches (messages, committed entries, append, hard state, persisted
//! messages, `advance`, the `LightReady`, `advance_apply`).

use crate::harness::{Cluster, Digest};
use raft::eraftpb::{EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

/// The knobs tuned for throughput (see README.md).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// `Config::max_inflight_msgs`: append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// `Config::max_size_per_msg`: bytes of entries in one append (0 = one entry each).
    pub max_size_per_msg: u64,
    /// `Config::batch_append`: merge new entries into an append not yet taken by the
    /// application instead of queueing another message.
    pub batch_append: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            max_inflight_msgs: 256,
            max_size_per_msg: 256 << 10,
            batch_append: true,
        }
    }
}

pub struct RaftCluster {
    nodes: Vec<RawNode<MemStorage>>,
    appliers: Vec<Digest>,
    queue: Vec<Message>,
    delivering: Vec<Message>,
    leader: usize,
    delivered: u64,
    /// Per node, the index of the last entry it applied.
    applied: Vec<u64>,
}

impl RaftCluster {
    pub fn new(count: usize, tuning: Tuning) -> RaftCluster {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let voters: Vec<u64> = (1..=count as u64).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let config = Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 2,
                    max_inflight_msgs: tuning.max_inflight_msgs,
                    max_size_per_msg: tuning.max_size_per_msg,
                    batch_append: tuning.batch_append,
                    // The same safety features synod always runs with.
                    pre_vote: true,
                    check_quorum: true,
                    ..Config::default()
                };
                let storage = MemStorage::new_with_conf_state((voters.clone(), vec![]));
                RawNode::new(&config, storage, &logger).expect("valid raft config")
            })
            .collect();
        let mut cluster = RaftCluster {
            nodes,
            appliers: vec![Digest::default(); count],
            queue: Vec::new(),
            delivering: Vec::new(),
            leader: 0,
            delivered: 0,
            applied: vec![0; count],
        };
        cluster.nodes[0].campaign().expect("campaign");
        while cluster.round() {}
        assert_eq!(
            cluster.nodes[0].raft.state,
            StateRole::Leader,
            "raft-rs elected no leader"
        );
        cluster
    }
}

fn apply(digest: &mut Digest, applied: &mut u64, entries: Vec<raft::eraftpb::Entry>) {
    for entry in entries {
        *applied = entry.index;
        // The new leader's empty entry carries no command.
        if entry.data.is_empty() {
            continue;
        }
        assert_eq!(entry.get_entry_type(), EntryType::EntryNormal);
        digest.apply(&entry.data);
    }
}

impl Cluster for RaftCluster {
    fn propose(&mut self, payload: Vec<u8>) {
        if let Err(error) = self.nodes[self.leader].propose(Vec::new(), payload) {
            panic!("raft-rs refused a proposal: {error}");
        }
    }

    fn round(&mut self) -> bool {
        let mut busy = !self.queue.is_empty();
        std::mem::swap(&mut self.queue, &mut self.delivering);
        for message in self.delivering.drain(..) {
            self.delivered += 1;
            let to = message.to as usize - 1;
            self.nodes[to]
                .step(message)
                .expect("raft-rs refused a message");
        }
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            while node.has_ready() {
                busy = true;
                let mut ready = node.ready();
                // 1. Messages (the leader sends before its write).
                self.queue.extend(ready.take_messages());
                // 2. Snapshots never happen here: logs are compacted only below what every
                //    node has applied, so no follower ever needs one.
                assert!(ready.snapshot().is_empty(), "unexpected snapshot");
                // 3. Committed entries.
                apply(
                    &mut self.appliers[index],
                    &mut self.applied[index],
                    ready.take_committed_entries(),
                );
                // 4. Entries to the log, 5. the hard state.
                if !ready.entries().is_empty() {
                    node.mut_store()
                        .wl()
                        .append(ready.entries())
                        .expect("MemStorage append");
                }
                if let Some(hard_state) = ready.hs() {
                    node.mut_store().wl().set_hardstate(hard_state.clone());
                }
                // 6. Messages released by the write.
                self.queue.extend(ready.take_persisted_messages());
                // 7. Advance; the LightReady carries what the write made possible.
                let mut light = node.advance(ready);
                if let Some(commit) = light.commit_index() {
                    node.mut_store().wl().mut_hard_state().set_commit(commit);
                }
                self.queue.extend(light.take_messages());
                apply(
                    &mut self.appliers[index],
                    &mut self.applied[index],
                    light.take_committed_entries(),
                );
                node.advance_apply();
            }
        }
        busy
    }

    /// `MemStorage::compact` on every node (raft-rs compacts locally; it keeps the entry at
    /// the compaction index itself).
    fn compact(&mut self) {
        let through = self.applied.iter().copied().min().unwrap_or(0);
        for node in &mut self.nodes {
            node.mut_store()
                .wl()
                .compact(through)
                .expect("raft-rs compaction");
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
