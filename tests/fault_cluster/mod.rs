//! The hand-driven cluster of the adversarial replica reviews (`tests/replica_core_faults.rs`,
//! `tests/paging_faults.rs`): writes are synchronous (the ready loop of the crate
//! documentation), the network is a FIFO queue the test reorders, duplicates and drops from at
//! will, a panic while stepping or ticking a replica is caught and takes the node down, and an
//! optional frame codec drops what does not fit as the TCP transport does. Also the hand-made
//! messages and replicas those files step directly.
#![allow(dead_code)]

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use synod::message::{Body, Message};
use synod::replica::Event;
use synod::{
    Ballot, Codec, Config, MemStorage, NodeId, ProposalId, Recovered, Replica, Storage, Value,
};

pub struct Node {
    pub config: Config,
    pub replica: Option<Replica>,
    pub storage: MemStorage,
    /// Values applied, by slot (kept across restarts: a restarted node applies from its
    /// `Config::applied` again and must apply the same values).
    pub applied: BTreeMap<u64, Value>,
    pub events: Vec<Event>,
}

/// A hand-driven cluster. Writes are synchronous (the ready loop of the crate documentation);
/// the network is a FIFO queue the test reorders, duplicates and drops from at will.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// A transport's frame codec: a message that does not encode within its limit is dropped,
    /// as `TcpTransport` drops it.
    pub codec: Option<Codec>,
    /// The kinds of the messages dropped for not fitting a frame.
    pub oversized: Vec<&'static str>,
    /// Panics caught while stepping or ticking a replica (the node is then taken down).
    pub panics: Vec<String>,
}

pub fn ids(list: impl IntoIterator<Item = u64>) -> Vec<NodeId> {
    list.into_iter().map(NodeId).collect()
}

pub fn config(id: u64, voters: u64) -> Config {
    let mut config = Config::new(NodeId(id), ids(1..=voters));
    config.seed = 1000 + id;
    config
}

pub fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}

impl Cluster {
    pub fn new(voters: u64) -> Cluster {
        Cluster::with(voters, |_| {})
    }

    pub fn with(voters: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster::empty();
        for id in 1..=voters {
            let mut config = config(id, voters);
            tweak(&mut config);
            cluster.start(config);
        }
        cluster
    }

    pub fn empty() -> Cluster {
        Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            blocked: BTreeSet::new(),
            codec: None,
            oversized: Vec::new(),
            panics: Vec::new(),
        }
    }

    /// Starts a fresh node with `config` (empty storage) and drains its first ready.
    pub fn start(&mut self, config: Config) {
        let id = config.id;
        let replica = Replica::new(config.clone(), Recovered::default()).unwrap();
        self.nodes.insert(
            id,
            Node {
                config,
                replica: Some(replica),
                storage: MemStorage::new(),
                applied: BTreeMap::new(),
                events: Vec::new(),
            },
        );
        self.process(id);
    }

    pub fn replica(&self, id: u64) -> &Replica {
        self.nodes[&NodeId(id)].replica.as_ref().expect("up")
    }

    pub fn replica_mut(&mut self, id: u64) -> &mut Replica {
        self.nodes
            .get_mut(&NodeId(id))
            .unwrap()
            .replica
            .as_mut()
            .expect("up")
    }

    pub fn up(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.replica.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drains `id`'s readies: send, write, send what waited for the write, apply, advance.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..64 {
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
                    "{id}: a promise or acceptance offered before its write: {message:?}"
                );
            }
            assert!(
                ready.snapshot().is_none(),
                "no scenario here sends snapshots"
            );
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
            node.events.extend(ready.take_events());
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
            for message in out {
                self.send(message);
            }
        }
        panic!("{id} kept producing readies");
    }

    /// Hands `message` to the network: dropped if its link is blocked, its receiver is not
    /// running, or it does not fit the codec's frame.
    pub fn send(&mut self, message: Message) {
        if self.blocked.contains(&(message.from, message.to)) {
            return;
        }
        if !self
            .nodes
            .get(&message.to)
            .is_some_and(|node| node.replica.is_some())
        {
            return;
        }
        if let Some(codec) = &self.codec {
            if !fits(codec, &message) {
                self.oversized.push(message.body.kind());
                return;
            }
        }
        self.queue.push_back(message);
    }

    /// Steps `message` into its receiver (catching a panic) and drains the receiver's readies.
    pub fn step(&mut self, message: Message) {
        let to = message.to;
        if self.blocked.contains(&(message.from, to)) {
            return;
        }
        let Some(replica) = self
            .nodes
            .get_mut(&to)
            .and_then(|node| node.replica.as_mut())
        else {
            return;
        };
        let description = format!("{} {} -> {}", message.body.kind(), message.from, to);
        match catch_unwind(AssertUnwindSafe(|| replica.step(message))) {
            Ok(Ok(())) | Ok(Err(synod::StepError::UnknownNode(_))) => {}
            Ok(Err(error)) => panic!("{description}: refused: {error}"),
            Err(payload) => {
                let text = format!(
                    "{to} panicked stepping {description}: {}",
                    panic_text(payload)
                );
                self.panics.push(text);
                self.crash(to.0);
                return;
            }
        }
        self.process(to);
    }

    pub fn deliver_first(&mut self, predicate: impl Fn(&Message) -> bool) {
        let index = self
            .queue
            .iter()
            .position(predicate)
            .expect("a message to deliver");
        let message = self.queue.remove(index).unwrap();
        self.step(message);
    }

    /// Delivers everything, FIFO, until the network is quiet (bounded).
    pub fn stabilize(&mut self) {
        for _ in 0..200_000 {
            let Some(message) = self.queue.pop_front() else {
                return;
            };
            self.step(message);
        }
        panic!("the network never went quiet");
    }

    pub fn tick(&mut self, id: u64) {
        let Some(replica) = self
            .nodes
            .get_mut(&NodeId(id))
            .and_then(|node| node.replica.as_mut())
        else {
            return;
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| replica.tick())) {
            let text = format!("n{id} panicked ticking: {}", panic_text(payload));
            self.panics.push(text);
            self.crash(id);
            return;
        }
        self.process(NodeId(id));
    }

    /// Ticks every running node `count` times, delivering everything after each round.
    pub fn tick_all(&mut self, count: u32) {
        for _ in 0..count {
            for id in self.up() {
                self.tick(id.0);
            }
            self.stabilize();
        }
    }

    /// Makes `id` leader: every other running node first lets an election timeout pass (its
    /// own campaign dropped), then only `id` ticks until it wins.
    pub fn elect(&mut self, id: u64) {
        for other in self.up() {
            if other == NodeId(id) {
                continue;
            }
            let election_ticks = self.nodes[&other].config.election_ticks;
            for _ in 0..=election_ticks {
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
        self.nodes
            .iter()
            .filter(|(_, node)| node.replica.as_ref().is_some_and(Replica::is_leader))
            .map(|(id, _)| *id)
            .last()
    }

    pub fn propose(&mut self, id: u64, data: impl Into<Bytes>) -> ProposalId {
        let proposal = self
            .replica_mut(id)
            .propose(data.into())
            .expect("proposal taken");
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
        node.replica = Some(Replica::new(node.config.clone(), recovered).unwrap());
        self.process(NodeId(id));
    }

    /// The commands `id` applied, in slot order (no-ops and membership entries skipped).
    pub fn commands(&self, id: u64) -> Vec<String> {
        self.nodes[&NodeId(id)]
            .applied
            .values()
            .filter_map(|value| match value {
                Value::Command { data, .. } if data.len() <= 64 => {
                    Some(String::from_utf8_lossy(data).into_owned())
                }
                Value::Command { data, .. } => Some(format!("<{} bytes>", data.len())),
                _ => None,
            })
            .collect()
    }

    /// Every two nodes applied the same value in every slot both applied.
    pub fn assert_agreement(&self) {
        let mut by_slot: BTreeMap<u64, (NodeId, &Value)> = BTreeMap::new();
        for (id, node) in &self.nodes {
            for (slot, value) in &node.applied {
                if let Some((other, known)) = by_slot.insert(*slot, (*id, value)) {
                    assert_eq!(known, value, "slot {slot}: {other} and {id} disagree");
                }
            }
        }
    }

    pub fn assert_no_panic(&self) {
        assert!(self.panics.is_empty(), "{}", self.panics.join("\n"));
    }
}

/// True if `message` encodes within the codec's frame limit. Small messages are not encoded:
/// their payload is far below any frame these tests use.
pub fn fits(codec: &Codec, message: &Message) -> bool {
    let payload: usize = match &message.body {
        Body::Accept { entries, .. } => entries.iter().map(|e| e.value.size_bytes()).sum(),
        Body::Promise { accepted, .. }
        | Body::FetchReply {
            entries: accepted, ..
        } => accepted.iter().map(|e| e.value.size_bytes()).sum(),
        Body::Forward { commands } => commands.iter().map(|c| c.data.len()).sum(),
        _ => 0,
    };
    payload < codec.frame_bytes_max() / 2 || codec.encode(message).is_ok()
}

pub fn is_to(message: &Message, to: u64, kind: &str) -> bool {
    message.to == NodeId(to) && message.body.kind() == kind
}

pub fn is_from(message: &Message, from: u64, kind: &str) -> bool {
    message.from == NodeId(from) && message.body.kind() == kind
}

pub fn command(data: &str) -> Value {
    Value::Command {
        id: ProposalId {
            node: NodeId(9),
            incarnation: 1,
            sequence: 1,
        },
        data: Bytes::from(data.to_string()),
    }
}

pub fn prepare(from: u64, to: u64, ballot: Ballot, first_slot: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Prepare {
            ballot,
            first_slot,
            transfer: None,
        },
    }
}

/// Hands out every ready of `replica`, writing nothing anywhere: returns every message, the
/// persisted ones included.
pub fn drain(replica: &mut Replica) -> Vec<Message> {
    let mut out = Vec::new();
    while replica.has_ready() {
        let mut ready = replica.ready();
        out.extend(ready.take_messages());
        out.extend(ready.take_persisted_messages());
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
    out
}

/// n1 of {1, 2, 3} (with `tweak`) campaigns and wins its pre-vote with n2's grant: it is a
/// candidate whose own promise is durable, waiting for one more Promise. Returns its ballot.
pub fn candidate_n1_with(tweak: impl Fn(&mut Config)) -> (Replica, Ballot) {
    let mut config = config(1, 3);
    tweak(&mut config);
    let mut storage = MemStorage::new();
    let mut replica = Replica::new(config, storage.recover().unwrap()).unwrap();
    let mut ready = replica.ready();
    storage.write(ready.persist_mut()).unwrap();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    replica.campaign();
    let pre_vote = drain(&mut replica)
        .into_iter()
        .find_map(|message| match message.body {
            Body::PreVote { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("a pre-vote");
    replica
        .step(Message {
            from: NodeId(2),
            to: NodeId(1),
            body: Body::PreVoteReply {
                ballot: pre_vote,
                granted: true,
                promised: Ballot::ZERO,
                chosen: 0,
            },
        })
        .unwrap();
    drain(&mut replica);
    assert_eq!(replica.role(), synod::Role::Candidate);
    let ballot = replica.status().promised;
    (replica, ballot)
}
