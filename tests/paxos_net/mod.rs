//! A hand-driven in-memory network of single-decree Paxos nodes for the scenario and property
//! tests. The test decides the fate of every message (deliver, drop, duplicate, reorder), when
//! each node ticks, when each write becomes durable, and when nodes crash and restart (writes
//! not yet durable are lost, and so are the messages that waited for them).
//!
//! It also keeps the ground truth the checkers need: every acceptance an acceptor revealed
//! (`votes`), every value proposed, every durable record written.
#![allow(dead_code)]

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use synod::paxos::{Body, Config, DurableState, Event, InstanceId, Message, Node, ProposeError};
use synod::{Ballot, NodeId};

pub const INSTANCE: InstanceId = InstanceId(7);

/// A write handed out by a ready, not yet durable.
pub struct PendingWrite {
    pub number: u64,
    pub state: Option<DurableState>,
    /// Messages released once the write is durable.
    pub messages: Vec<Message>,
}

pub struct Member {
    pub config: Config,
    pub node: Option<Node>,
    /// The last durable record.
    pub disk: DurableState,
    /// Every durable record written, in order (across restarts).
    pub disk_history: Vec<DurableState>,
    pub pending: VecDeque<PendingWrite>,
    pub events: Vec<Event>,
}

pub struct Net {
    pub members: BTreeMap<NodeId, Member>,
    /// Messages in transit, in send order.
    pub queue: Vec<Message>,
    /// Complete every write as soon as it is handed out.
    pub sync_writes: bool,
    /// Directed links that lose every message.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Every acceptance revealed by an acceptor (an Accepted released after its write):
    /// (acceptor, ballot, value).
    pub votes: BTreeSet<(NodeId, Ballot, Bytes)>,
    /// Every value given to a successful `propose`.
    pub proposed: BTreeSet<Bytes>,
    /// Every message ever sent, in order.
    pub sent: Vec<Message>,
}

pub fn ids(count: u64) -> Vec<NodeId> {
    (1..=count).map(NodeId).collect()
}

pub fn config(id: u64, members: u64) -> Config {
    let mut config = Config::new(INSTANCE, NodeId(id), ids(members));
    config.phase_ticks = 6;
    config.backoff_ticks_initial = 3;
    config.backoff_ticks_max = 24;
    config.seed = 1000 + id;
    config
}

impl Net {
    pub fn new(members: u64) -> Net {
        Net::with(members, |_| {})
    }

    pub fn with(members: u64, tweak: impl Fn(&mut Config)) -> Net {
        let mut map = BTreeMap::new();
        for id in 1..=members {
            let mut config = config(id, members);
            tweak(&mut config);
            let node = Node::new(config.clone(), DurableState::default()).unwrap();
            map.insert(
                NodeId(id),
                Member {
                    config,
                    node: Some(node),
                    disk: DurableState::default(),
                    disk_history: Vec::new(),
                    pending: VecDeque::new(),
                    events: Vec::new(),
                },
            );
        }
        Net {
            members: map,
            queue: Vec::new(),
            sync_writes: true,
            blocked: BTreeSet::new(),
            votes: BTreeSet::new(),
            proposed: BTreeSet::new(),
            sent: Vec::new(),
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    pub fn node(&self, id: u64) -> &Node {
        self.members[&NodeId(id)].node.as_ref().expect("alive")
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.members
            .get_mut(&NodeId(id))
            .unwrap()
            .node
            .as_mut()
            .expect("alive")
    }

    pub fn is_alive(&self, id: u64) -> bool {
        self.members[&NodeId(id)].node.is_some()
    }

    pub fn events(&self, id: u64) -> &[Event] {
        &self.members[&NodeId(id)].events
    }

    fn enqueue(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.sent.push(message.clone());
            if let Body::Accepted { ballot, value } = &message.body {
                self.votes.insert((message.from, *ballot, value.clone()));
            }
            if !self.blocked.contains(&(message.from, message.to)) {
                self.queue.push(message);
            }
        }
    }

    /// Drains node `id`'s readies: messages out, writes queued (and completed at once if
    /// `sync_writes`).
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..1_000 {
            let member = self.members.get_mut(&id).unwrap();
            let Some(node) = member.node.as_mut() else {
                return;
            };
            if !node.has_ready() {
                return;
            }
            let mut ready = node.ready();
            let out = ready.take_messages();
            member.pending.push_back(PendingWrite {
                number: ready.number(),
                state: ready.take_persist(),
                messages: ready.take_persisted_messages(),
            });
            member.events.extend(ready.take_events());
            // The ready is dropped unacknowledged: `persist_one` acknowledges it by number.
            self.enqueue(out);
            if self.sync_writes {
                self.persist_all(id);
            }
        }
        panic!("{id} never runs out of ready work");
    }

    /// Completes node `id`'s oldest pending write; returns false if none is pending.
    pub fn persist_one(&mut self, id: NodeId) -> bool {
        let member = self.members.get_mut(&id).unwrap();
        let Some(write) = member.pending.pop_front() else {
            return false;
        };
        if let Some(state) = write.state {
            let previous = &member.disk;
            assert!(
                state.promised >= previous.promised,
                "{id}: a promise went backwards on disk ({} after {})",
                state.promised,
                previous.promised
            );
            assert!(state.proposer_round >= previous.proposer_round);
            member.disk = state.clone();
            member.disk_history.push(state);
        }
        member
            .node
            .as_mut()
            .expect("only live nodes have pending writes")
            .on_persisted(write.number)
            .expect("a number handed out, acknowledged in order");
        self.enqueue(write.messages);
        self.process(id);
        true
    }

    pub fn persist_all(&mut self, id: NodeId) {
        while self.persist_one(id) {}
    }

    /// Delivers the message at `index` of the queue. Messages to a crashed node are lost.
    pub fn deliver(&mut self, index: usize) {
        let message = self.queue.remove(index);
        let to = message.to;
        let member = self.members.get_mut(&to).unwrap();
        if let Some(node) = member.node.as_mut() {
            node.step(message).expect("nodes send only valid messages");
            self.process(to);
        }
    }

    /// Delivers everything in the queue, in order, until it is empty.
    pub fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            if self.queue.is_empty() {
                return;
            }
            self.deliver(0);
        }
        panic!("the network never quiesces");
    }

    pub fn tick(&mut self, id: u64) {
        let id = NodeId(id);
        if let Some(node) = self.members.get_mut(&id).unwrap().node.as_mut() {
            node.tick();
            self.process(id);
        }
    }

    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id.0);
        }
    }

    pub fn propose(&mut self, id: u64, value: &'static str) -> Result<Ballot, ProposeError> {
        let value = Bytes::from_static(value.as_bytes());
        let result = self.node_mut(id).propose(value.clone());
        if result.is_ok() {
            self.proposed.insert(value);
        }
        self.process(NodeId(id));
        result
    }

    /// Crashes node `id`: writes not yet durable are lost with the messages that waited for
    /// them.
    pub fn crash(&mut self, id: u64) {
        let member = self.members.get_mut(&NodeId(id)).unwrap();
        member.node = None;
        member.pending.clear();
    }

    /// Restarts node `id` from its last durable record.
    pub fn restart(&mut self, id: u64) {
        let member = self.members.get_mut(&NodeId(id)).unwrap();
        assert!(member.node.is_none(), "restart a crashed node");
        let node = Node::new(member.config.clone(), member.disk.clone()).unwrap();
        assert_eq!(node.promised(), member.disk.promised);
        member.node = Some(node);
        self.process(NodeId(id));
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != NodeId(id) {
                self.blocked.insert((NodeId(id), other));
                self.blocked.insert((other, NodeId(id)));
            }
        }
    }

    /// Ticks every node and delivers everything, `rounds` times or until every live node has
    /// learned a value; returns the rounds run.
    pub fn run_until_learned(&mut self, rounds: usize) -> usize {
        for round in 0..rounds {
            if self.all_learned() {
                return round;
            }
            self.tick_all();
            self.deliver_all();
        }
        rounds
    }

    pub fn all_learned(&self) -> bool {
        self.members
            .values()
            .filter_map(|member| member.node.as_ref())
            .all(|node| node.chosen().is_some())
    }

    /// The values chosen according to the acceptors' revealed votes: a majority accepted the
    /// value in one ballot.
    pub fn chosen_by_votes(&self) -> BTreeSet<Bytes> {
        let mut by_ballot: BTreeMap<(Ballot, Bytes), BTreeSet<NodeId>> = BTreeMap::new();
        for (acceptor, ballot, value) in &self.votes {
            by_ballot
                .entry((*ballot, value.clone()))
                .or_default()
                .insert(*acceptor);
        }
        by_ballot
            .into_iter()
            .filter(|(_, voters)| voters.len() >= self.quorum())
            .map(|((_, value), _)| value)
            .collect()
    }

    /// Every value some node has learned (live or on disk).
    pub fn learned(&self) -> BTreeSet<Bytes> {
        let mut learned = BTreeSet::new();
        for member in self.members.values() {
            if let Some(value) = member.node.as_ref().and_then(|node| node.chosen()) {
                learned.insert(value.clone());
            }
            for state in &member.disk_history {
                if let Some(value) = &state.chosen {
                    learned.insert(value.clone());
                }
            }
        }
        learned
    }

    /// Safety, checked from the acceptors' votes rather than from what the nodes claim:
    /// at most one value is chosen (Paxos Made Simple §2.1), it was proposed, and every learner
    /// learned that value and no other.
    pub fn check_safety(&self) -> Result<(), String> {
        let chosen = self.chosen_by_votes();
        if chosen.len() > 1 {
            return Err(format!("several values chosen: {chosen:?}"));
        }
        if let Some(value) = chosen.iter().next() {
            if !self.proposed.contains(value) {
                return Err(format!("chosen value {value:?} was never proposed"));
            }
        }
        let learned = self.learned();
        if !learned.is_subset(&chosen) {
            return Err(format!(
                "learned {learned:?}, but the votes chose {chosen:?}"
            ));
        }
        Ok(())
    }
}
