//! A hand-driven in-memory cluster for scenario tests: the test decides the fate of every
//! message (deliver, drop, duplicate, reorder) and when each node ticks, crashes or restarts.
#![allow(dead_code)]

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use synod::message::{Body, Message};
use synod::replica::Event;
use synod::{Config, Entry, MemStorage, NodeId, ProposalId, Replica, Snapshot, Storage, Value};

pub struct Node {
    pub config: Config,
    pub replica: Option<Replica>,
    pub storage: MemStorage,
    /// Values applied by this node, by slot (kept across restarts: a restarted node re-applies
    /// from slot 1 and must apply the same values).
    pub applied: BTreeMap<u64, Value>,
    pub events: Vec<Event>,
    /// Snapshots received from a peer and installed.
    pub snapshots_installed: u64,
}

pub struct Net {
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages in transit, in send order.
    pub queue: Vec<Message>,
    /// Directed links that drop messages.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Every message ever sent (for counting).
    pub sent: Vec<Message>,
}

pub fn ids(count: u64) -> Vec<NodeId> {
    (1..=count).map(NodeId).collect()
}

pub fn config(id: u64, members: u64) -> Config {
    let mut config = Config::new(NodeId(id), ids(members));
    config.seed = 1000 + id;
    config
}

/// The membership list a founding member of a cluster of `members` writes with its first
/// ready: a hand-built `Recovered` of such a member holds it.
pub fn first_memberships(members: u64) -> Vec<synod::MembershipAt> {
    vec![synod::MembershipAt {
        slot: 0,
        membership: config(1, members).initial_membership(),
    }]
}

/// A fresh replica `id` of a cluster of `members`, its first ready (the incarnation write)
/// written and acknowledged.
pub fn started(id: u64, members: u64) -> Replica {
    let mut replica = Replica::new(config(id, members), Default::default()).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    replica
}

impl Net {
    pub fn new(members: u64) -> Net {
        Net::with(members, |_| {})
    }

    pub fn with(members: u64, tweak: impl Fn(&mut Config)) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            queue: Vec::new(),
            blocked: BTreeSet::new(),
            sent: Vec::new(),
        };
        for id in 1..=members {
            let mut config = config(id, members);
            tweak(&mut config);
            net.start(config);
        }
        net
    }

    /// Starts node `id` with `Config::joining` (no membership: it waits to be added).
    pub fn join(&mut self, id: u64) {
        let mut config = Config::joining(NodeId(id));
        config.seed = 1000 + id;
        self.start(config);
    }

    /// Starts a fresh node with `config` (empty storage) and drains its first ready.
    fn start(&mut self, config: Config) {
        let id = config.id;
        let replica = Replica::new(config.clone(), Default::default()).unwrap();
        self.nodes.insert(
            id,
            Node {
                config,
                replica: Some(replica),
                storage: MemStorage::new(),
                applied: BTreeMap::new(),
                events: Vec::new(),
                snapshots_installed: 0,
            },
        );
        self.process(id);
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn replica(&self, id: u64) -> &Replica {
        self.nodes[&NodeId(id)]
            .replica
            .as_ref()
            .expect("node is up")
    }

    pub fn replica_mut(&mut self, id: u64) -> &mut Replica {
        self.nodes
            .get_mut(&NodeId(id))
            .unwrap()
            .replica
            .as_mut()
            .expect("node is up")
    }

    /// Drains `id`'s ready batches synchronously: write, then send everything.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..16 {
            let node = self.nodes.get_mut(&id).unwrap();
            let Some(replica) = node.replica.as_mut() else {
                return;
            };
            if !replica.has_ready() {
                return;
            }
            let mut ready = replica.ready();
            let mut out = ready.take_messages();
            for message in &out {
                assert!(
                    !matches!(message.body, Body::Promise { .. } | Body::Accepted { .. }),
                    "promise or acceptance offered before its write"
                );
            }
            if let Some(snapshot) = ready.take_snapshot() {
                // Installed from a peer: restore the "state machine" (the applied map), then
                // save the snapshot and compact, all before the ready's write.
                for (slot, value) in decode_snapshot(&snapshot) {
                    if let Some(previous) = node.applied.insert(slot, value.clone()) {
                        assert_eq!(
                            previous, value,
                            "{id}: the snapshot disagrees in slot {slot}"
                        );
                    }
                }
                node.storage.save_snapshot(&snapshot).unwrap();
                node.storage.compact(snapshot.slot);
                node.snapshots_installed += 1;
            }
            node.storage.write(ready.persist_mut()).unwrap();
            out.extend(ready.take_persisted_messages());
            for entry in replica.committed(&ready) {
                if let Some(previous) = node.applied.insert(entry.slot, entry.value.clone()) {
                    assert_eq!(
                        previous, entry.value,
                        "{id} applied two values in slot {}",
                        entry.slot
                    );
                }
            }
            let events = ready.take_events();
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
            for event in &events {
                // Answer a lagging follower with the saved snapshot, if there is one.
                if let Event::SnapshotNeeded { follower } = event {
                    if let Some(snapshot) = node.storage.load_snapshot().unwrap() {
                        replica.send_snapshot(*follower, &snapshot).unwrap();
                    }
                }
            }
            node.events.extend(events);
            for message in out {
                self.sent.push(message.clone());
                if !self.blocked.contains(&(message.from, message.to)) {
                    self.queue.push(message);
                }
            }
        }
        panic!("{id} kept producing ready batches");
    }

    pub fn process_all(&mut self) {
        for id in self.ids() {
            self.process(id);
        }
    }

    /// Delivers one message (the one at `index` in the queue).
    pub fn deliver(&mut self, index: usize) {
        let message = self.queue.remove(index);
        let to = message.to;
        if self.blocked.contains(&(message.from, to)) {
            return;
        }
        if let Some(replica) = self.nodes.get_mut(&to).unwrap().replica.as_mut() {
            match replica.step(message) {
                // A reply from a node that a membership change removed meanwhile.
                Ok(()) | Err(synod::StepError::UnknownNode(_)) => {}
                Err(error) => panic!("invalid message: {error}"),
            }
            self.process(to);
        }
    }

    /// Delivers the first queued message that `predicate` picks.
    ///
    /// # Panics
    /// If none is queued.
    pub fn deliver_first(&mut self, predicate: impl Fn(&Message) -> bool) {
        let index = self
            .queue
            .iter()
            .position(predicate)
            .expect("a message to deliver");
        self.deliver(index);
    }

    /// Delivers everything, FIFO, until the network is quiet (bounded).
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            if self.queue.is_empty() {
                return;
            }
            self.deliver(0);
        }
        panic!("network never went quiet");
    }

    /// Drops every queued message matching `predicate`; returns how many.
    pub fn drop_where(&mut self, predicate: impl Fn(&Message) -> bool) -> usize {
        let before = self.queue.len();
        self.queue.retain(|message| !predicate(message));
        before - self.queue.len()
    }

    pub fn tick(&mut self, id: u64) {
        if let Some(replica) = self.nodes.get_mut(&NodeId(id)).unwrap().replica.as_mut() {
            replica.tick();
        }
        self.process(NodeId(id));
    }

    /// Ticks every live node `count` times, delivering messages after each round.
    pub fn tick_all(&mut self, count: u32) {
        for _ in 0..count {
            for id in self.ids() {
                self.tick(id.0);
            }
            self.stabilize();
        }
    }

    /// Makes `id` leader: first lets an election timeout pass at every other live node (so
    /// none still trusts an old leader; their own campaigns are dropped), then ticks only `id`
    /// until it wins.
    pub fn elect(&mut self, id: u64) {
        if self.replica(id).is_leader() {
            return;
        }
        let others: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|other| *other != NodeId(id))
            .collect();
        for other in others {
            let Some(replica) = self.nodes[&other].replica.as_ref() else {
                continue;
            };
            // One tick more than `election_ticks`: with leases, votes stay blocked that long.
            for _ in 0..=replica.config().election_ticks {
                self.tick(other.0);
            }
            self.queue.retain(|message| message.from != other);
        }
        for _ in 0..1000 {
            if self.replica(id).is_leader() {
                return;
            }
            self.tick(id);
            self.stabilize();
        }
        panic!("n{id} never became leader");
    }

    pub fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.replica.as_ref().is_some_and(Replica::is_leader))
            .map(|(id, _)| *id)
            .collect();
        assert!(
            leaders.len() <= 1 || {
                let ballots: BTreeSet<_> = leaders
                    .iter()
                    .map(|id| self.nodes[id].replica.as_ref().unwrap().status().promised)
                    .collect();
                ballots.len() == leaders.len()
            }
        );
        leaders.last().copied()
    }

    pub fn propose(&mut self, id: u64, data: &str) -> ProposalId {
        let proposal = self
            .replica_mut(id)
            .propose(Bytes::from(data.to_string()))
            .expect("proposal accepted");
        self.process(NodeId(id));
        proposal
    }

    pub fn crash(&mut self, id: u64) {
        self.nodes.get_mut(&NodeId(id)).unwrap().replica = None;
        self.queue.retain(|message| message.to != NodeId(id));
    }

    pub fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&NodeId(id)).unwrap();
        let recovered = node.storage.recover().unwrap();
        if let Some(snapshot) = node.storage.load_snapshot().unwrap() {
            node.config.applied = snapshot.slot; // the state machine restarts from it
        }
        node.replica = Some(Replica::new(node.config.clone(), recovered).unwrap());
        self.process(NodeId(id));
    }

    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != NodeId(id) {
                self.blocked.insert((NodeId(id), other));
                self.blocked.insert((other, NodeId(id)));
            }
        }
        self.queue
            .retain(|message| message.from != NodeId(id) && message.to != NodeId(id));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// The commands applied by `id`, in slot order, as strings (no-ops skipped).
    pub fn commands(&self, id: u64) -> Vec<String> {
        self.nodes[&NodeId(id)]
            .applied
            .values()
            .filter_map(|value| match value {
                Value::Command { data, .. } => Some(String::from_utf8(data.to_vec()).unwrap()),
                _ => None,
            })
            .collect()
    }

    pub fn applied(&self, id: u64) -> &BTreeMap<u64, Value> {
        &self.nodes[&NodeId(id)].applied
    }

    /// Asserts that every pair of nodes applied the same value in every slot both applied.
    pub fn assert_agreement(&self) {
        let mut by_slot: BTreeMap<u64, &Value> = BTreeMap::new();
        for (id, node) in &self.nodes {
            for (slot, value) in &node.applied {
                if let Some(other) = by_slot.insert(*slot, value) {
                    assert_eq!(other, value, "slot {slot} disagrees at {id}");
                }
            }
        }
    }
}

impl Net {
    /// The read-index reads `id` reported so far, in order: `(context, Some(slot))`
    /// confirmed, `(context, None)` aborted.
    pub fn reads(&self, id: u64) -> Vec<(u64, Option<u64>)> {
        self.nodes[&NodeId(id)]
            .events
            .iter()
            .filter_map(|event| match event {
                Event::ReadReady { context, slot } => Some((*context, Some(*slot))),
                Event::ReadAborted { context } => Some((*context, None)),
                _ => None,
            })
            .collect()
    }

    /// True if `leader` has reported `Event::SnapshotNeeded` for `follower`.
    pub fn reported_snapshot_needed(&self, leader: u64, follower: u64) -> bool {
        self.nodes[&NodeId(leader)].events.iter().any(
            |event| matches!(event, Event::SnapshotNeeded { follower: f } if *f == NodeId(follower)),
        )
    }

    /// `id` snapshots its "state machine" (the applied map) at its applied mark, saves the
    /// snapshot and compacts its replica and storage through it, as an application does.
    /// Returns the snapshot's slot.
    pub fn snapshot_and_compact(&mut self, id: u64) -> u64 {
        let applied = self.replica(id).status().applied;
        let node = self.nodes.get_mut(&NodeId(id)).unwrap();
        let snapshot = encode_snapshot(applied, &node.applied);
        node.storage.save_snapshot(&snapshot).unwrap();
        node.replica
            .as_mut()
            .expect("node is up")
            .compact(applied)
            .expect("compacting at or below the applied mark");
        node.storage.compact(applied);
        applied
    }
}

/// n3 misses slots 1..=3 while n1 and n2 choose, apply, snapshot and compact them (the
/// snapshot scenarios of `tests/replica_snapshots.rs` and `tests/snapshot_faults.rs`).
pub fn n3_behind_the_compaction_point_with(tweak: impl Fn(&mut Config)) -> Net {
    let mut net = Net::with(3, tweak);
    net.isolate(3);
    net.elect(1);
    for data in ["a", "b", "c"] {
        net.propose(1, data);
    }
    net.stabilize();
    for id in [1, 2] {
        assert_eq!(net.snapshot_and_compact(id), 3);
    }
    net
}

/// The applied values up to `slot`, as a snapshot's bytes.
pub fn encode_snapshot(slot: u64, applied: &BTreeMap<u64, Value>) -> Snapshot {
    let values: Vec<(u64, Value)> = applied
        .range(..=slot)
        .map(|(slot, value)| (*slot, value.clone()))
        .collect();
    let data = bincode::serde::encode_to_vec(&values, bincode::config::standard()).unwrap();
    Snapshot {
        slot,
        data: Bytes::from(data),
        membership: None,
    }
}

/// The applied values a snapshot holds.
pub fn decode_snapshot(snapshot: &Snapshot) -> Vec<(u64, Value)> {
    let (values, _): (Vec<(u64, Value)>, usize) =
        bincode::serde::decode_from_slice(&snapshot.data, bincode::config::standard()).unwrap();
    values
}

pub fn command(entry: &Entry) -> Option<&[u8]> {
    match &entry.value {
        Value::Command { data, .. } => Some(data),
        _ => None,
    }
}
