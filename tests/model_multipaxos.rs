//! Exhaustive model checking (stateright) of the real Multi-Paxos `Replica`: three replicas,
//! a network that delivers any in-flight message in any order, loses some, and a bounded number
//! of elections, proposals, ticks and crash-restarts. Every reachable state is checked for
//! agreement and validity.
//!
//! A second configuration runs a small key-value workload on top: clients write and read one
//! key (a register) through the log, and every reachable history is checked for
//! linearizability (stateright's `LinearizabilityTester`); a deliberately broken variant that
//! answers reads from the local state machine is caught.
//!
//! Run: `cargo test --release --test model_multipaxos -- --nocapture` (prints the state
//! counts); in debug builds these tests are skipped as too slow.
//!
//! The state is the replicas themselves (`Replica: Clone + Eq + Hash`), their durable storage
//! and the multiset of messages in flight; each action runs the replica's Ready loop to
//! completion with synchronous writes.

mod common;

use bytes::Bytes;
use common::{decode_snapshot, encode_snapshot};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use stateright::{Checker, Model, Property};
use std::collections::BTreeMap;
use synod::replica::Event;
use synod::storage::{Snapshot, WriteBatch};
use synod::{
    Config, Entry, HardState, MembershipAt, Message, NodeId, ProposalId, Recovered, Replica, Slot,
    Value,
};

/// A register of one byte (0 before any write): the sequential specification the clients'
/// histories must linearize to. (stateright's own `Register` is not `Eq`, which model states
/// must be.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Register(u8);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RegisterOp {
    Write(u8),
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RegisterRet {
    WriteOk,
    ReadOk(u8),
}

impl SequentialSpec for Register {
    type Op = RegisterOp;
    type Ret = RegisterRet;

    fn invoke(&mut self, op: &RegisterOp) -> RegisterRet {
        match op {
            RegisterOp::Write(value) => {
                self.0 = *value;
                RegisterRet::WriteOk
            }
            RegisterOp::Read => RegisterRet::ReadOk(self.0),
        }
    }
}

/// The register workload: client `c` invokes `client_op(c)` once, at a leader of its choice.
/// A write's command is `[b'W', value]`, a read's `[b'R', client]` (distinct bytes per client).
fn client_op(client: u8) -> RegisterOp {
    match client {
        0 => RegisterOp::Write(1),
        1 => RegisterOp::Read,
        _ => RegisterOp::Write(client),
    }
}

fn encode(client: u8, op: &RegisterOp) -> Bytes {
    match op {
        RegisterOp::Write(value) => Bytes::from(vec![b'W', *value]),
        RegisterOp::Read => Bytes::from(vec![b'R', client]),
    }
}

/// Durable state of one node (MemStorage is not `Hash`; this is its hashable twin).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct Disk {
    hard_state: HardState,
    entries: BTreeMap<Slot, Entry>,
    /// The application's snapshot (its slot is the compaction point), if it took one or
    /// installed a peer's.
    snapshot: Option<Snapshot>,
    /// The membership list last written (the first membership, at the node's first start).
    memberships: Vec<MembershipAt>,
}

impl Disk {
    fn compacted_through(&self) -> Slot {
        self.snapshot.as_ref().map_or(0, |snapshot| snapshot.slot)
    }

    /// Saves `snapshot` and drops the log up to its slot.
    fn compact(&mut self, snapshot: Snapshot) {
        self.entries = self.entries.split_off(&(snapshot.slot + 1));
        self.snapshot = Some(snapshot);
    }

    fn write(&mut self, batch: &mut WriteBatch) {
        let compacted_through = self.compacted_through();
        for entry in batch.entries() {
            if entry.slot > compacted_through {
                self.entries.insert(entry.slot, entry.clone());
            }
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(memberships) = &batch.memberships {
            self.memberships.clone_from(memberships);
        }
    }

    fn recovered(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            entries: self.entries.values().cloned().collect(),
            memberships: self.memberships.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    replicas: Vec<Option<Replica>>,
    disks: Vec<Disk>,
    /// Messages in flight, kept sorted by their debug form so equal multisets hash equally.
    network: Vec<Message>,
    /// Values applied by each node, by slot (kept across restarts).
    applied: Vec<BTreeMap<Slot, Value>>,
    proposed: Vec<Bytes>,
    campaigns_left: u8,
    proposals_left: u8,
    drops_left: u8,
    ticks_left: u8,
    crashes_left: u8,
    compactions_left: u8,
    /// A snapshot installed from a peer held a value that differs from one the node had
    /// already applied in the same slot.
    snapshot_conflict: bool,
    /// Some node installed a peer's snapshot.
    snapshot_installed: bool,
    /// The register workload (empty without one): each node's register, as its applied log
    /// leaves it (0 before any write; rebuilt from slot 1 after a restart).
    registers: Vec<u8>,
    /// Clients that have invoked their operation (a bit each).
    invoked: u8,
    /// Operations waiting for their command to be applied at the node that proposed it.
    waiting: Vec<(ProposalId, u8, usize)>,
    history: LinearizabilityTester<u8, Register>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Deliver(usize),
    Drop(usize),
    Campaign(usize),
    Propose(usize),
    Tick(usize),
    Crash(usize),
    Restart(usize),
    /// The node snapshots its applied values and compacts through its applied mark.
    Compact(usize),
    /// Client `.0` invokes its operation at node `.1`.
    Invoke(u8, usize),
}

struct MultiPaxos {
    nodes: usize,
    campaigns: u8,
    proposals: u8,
    drops: u8,
    ticks: u8,
    crashes: u8,
    /// Compactions (each followed, when a peer needs it, by a snapshot transfer).
    compactions: u8,
    /// Register clients (0: no workload).
    clients: u8,
    /// Node 1 is elected before the exploration starts (always with clients), and
    /// `campaigns` counts further elections.
    elected: bool,
    /// The broken variant: reads are answered at once from the local register, bypassing
    /// the log.
    stale_reads: bool,
}

impl MultiPaxos {
    fn new(campaigns: u8, proposals: u8, drops: u8, ticks: u8, crashes: u8) -> MultiPaxos {
        MultiPaxos {
            nodes: 3,
            campaigns,
            proposals,
            drops,
            ticks,
            crashes,
            compactions: 0,
            clients: 0,
            elected: false,
            stale_reads: false,
        }
    }
}

fn config(id: usize, nodes: usize) -> Config {
    let members = (1..=nodes as u64).map(NodeId).collect();
    let mut config = Config::new(NodeId(id as u64 + 1), members);
    config.election_ticks = 2;
    config.heartbeat_ticks = 1;
    config.retransmit_ticks = 1;
    config
}

fn message_key(message: &Message) -> String {
    format!("{message:?}")
}

impl World {
    /// Runs node `index`'s Ready loop to completion: synchronous writes, then messages out.
    fn drain(&mut self, index: usize) {
        let Some(replica) = self.replicas[index].as_mut() else {
            return;
        };
        while replica.has_ready() {
            let mut ready = replica.ready();
            let mut out = ready.take_messages();
            if let Some(snapshot) = ready.take_snapshot() {
                // Install a peer's snapshot: restore the applied values, save it and compact,
                // all before the ready's write.
                for (slot, value) in decode_snapshot(&snapshot) {
                    let previous = self.applied[index].insert(slot, value.clone());
                    if previous.is_some_and(|previous| previous != value) {
                        self.snapshot_conflict = true;
                    }
                }
                self.disks[index].compact(snapshot);
                self.snapshot_installed = true;
            }
            self.disks[index].write(ready.persist_mut());
            out.extend(ready.take_persisted_messages());
            for entry in replica.committed(&ready) {
                if let (Value::Command { id, data }, false) =
                    (&entry.value, self.registers.is_empty())
                {
                    let ret = if data[0] == b'W' {
                        self.registers[index] = data[1];
                        RegisterRet::WriteOk
                    } else {
                        RegisterRet::ReadOk(self.registers[index])
                    };
                    if let Some(position) = self
                        .waiting
                        .iter()
                        .position(|(waiting, _, node)| waiting == id && *node == index)
                    {
                        let (_, client, _) = self.waiting.remove(position);
                        // A refused return is an invalid history: the property reports it.
                        let _ = self.history.on_return(client, ret);
                    }
                }
                self.applied[index].insert(entry.slot, entry.value.clone());
            }
            let events = ready.take_events();
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
            for event in events {
                if let (Event::SnapshotNeeded { follower }, Some(snapshot)) =
                    (event, &self.disks[index].snapshot)
                {
                    replica
                        .send_snapshot(follower, snapshot)
                        .expect("the snapshot a replica compacted with is one it can send");
                }
            }
            self.network.extend(out);
        }
        self.network.sort_by_cached_key(message_key);
    }
}

impl Model for MultiPaxos {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let mut world = World {
            replicas: (0..self.nodes)
                .map(|index| {
                    Some(Replica::new(config(index, self.nodes), Recovered::default()).unwrap())
                })
                .collect(),
            disks: vec![Disk::default(); self.nodes],
            network: Vec::new(),
            applied: vec![BTreeMap::new(); self.nodes],
            proposed: Vec::new(),
            campaigns_left: self.campaigns,
            proposals_left: self.proposals,
            drops_left: self.drops,
            ticks_left: self.ticks,
            crashes_left: self.crashes,
            compactions_left: self.compactions,
            snapshot_conflict: false,
            snapshot_installed: false,
            registers: if self.clients > 0 {
                vec![0; self.nodes]
            } else {
                Vec::new()
            },
            invoked: 0,
            waiting: Vec::new(),
            history: LinearizabilityTester::new(Register(0)),
        };
        for index in 0..self.nodes {
            world.drain(index);
        }
        if self.clients > 0 || self.elected {
            // Elect node 1 and deliver everything, in order, until the cluster is quiet.
            world.replicas[0].as_mut().expect("up").campaign();
            world.drain(0);
            while !world.network.is_empty() {
                let message = world.network.remove(0);
                let to = message.to.0 as usize - 1;
                let replica = world.replicas[to].as_mut().expect("up");
                replica.step(message).expect("valid");
                world.drain(to);
            }
            assert!(world.replicas[0].as_ref().expect("up").is_leader());
        }
        vec![world]
    }

    fn actions(&self, world: &World, actions: &mut Vec<Action>) {
        for index in 0..world.network.len() {
            // Identical messages are one choice.
            if index > 0 && world.network[index] == world.network[index - 1] {
                continue;
            }
            actions.push(Action::Deliver(index));
            if world.drops_left > 0 {
                actions.push(Action::Drop(index));
            }
        }
        for node in 0..self.nodes {
            match &world.replicas[node] {
                Some(replica) => {
                    if world.campaigns_left > 0 && !replica.is_leader() {
                        actions.push(Action::Campaign(node));
                    }
                    if world.proposals_left > 0 && replica.is_leader() {
                        actions.push(Action::Propose(node));
                    }
                    if world.ticks_left > 0 {
                        actions.push(Action::Tick(node));
                    }
                    if world.crashes_left > 0 {
                        actions.push(Action::Crash(node));
                    }
                    if world.compactions_left > 0
                        && replica.status().applied > world.disks[node].compacted_through()
                    {
                        actions.push(Action::Compact(node));
                    }
                    for client in 0..self.clients {
                        if world.invoked & (1 << client) == 0 {
                            actions.push(Action::Invoke(client, node));
                        }
                    }
                }
                None => actions.push(Action::Restart(node)),
            }
        }
    }

    fn next_state(&self, world: &World, action: Action) -> Option<World> {
        let mut next = world.clone();
        match action {
            Action::Deliver(index) => {
                let message = next.network.remove(index);
                let to = message.to.0 as usize - 1;
                if let Some(replica) = next.replicas[to].as_mut() {
                    replica
                        .step(message)
                        .expect("replicas only send valid messages");
                    next.drain(to);
                }
            }
            Action::Drop(index) => {
                next.network.remove(index);
                next.drops_left -= 1;
            }
            Action::Campaign(node) => {
                next.campaigns_left -= 1;
                next.replicas[node].as_mut()?.campaign();
                next.drain(node);
            }
            Action::Propose(node) => {
                next.proposals_left -= 1;
                let value = Bytes::from(vec![b'a' + next.proposed.len() as u8]);
                next.replicas[node].as_mut()?.propose(value.clone()).ok()?;
                next.proposed.push(value);
                next.drain(node);
            }
            Action::Tick(node) => {
                next.ticks_left -= 1;
                next.replicas[node].as_mut()?.tick();
                next.drain(node);
            }
            Action::Crash(node) => {
                next.crashes_left -= 1;
                next.replicas[node] = None;
                next.network
                    .retain(|message| message.to.0 as usize - 1 != node);
            }
            Action::Compact(node) => {
                next.compactions_left -= 1;
                let applied = next.replicas[node].as_ref()?.status().applied;
                let snapshot = encode_snapshot(applied, &next.applied[node]);
                next.replicas[node]
                    .as_mut()?
                    .compact(applied)
                    .expect("compacting at or below the applied mark");
                next.disks[node].compact(snapshot);
            }
            Action::Restart(node) => {
                let recovered = next.disks[node].recovered();
                let mut config = config(node, self.nodes);
                config.applied = next.disks[node].compacted_through();
                next.replicas[node] = Some(Replica::new(config, recovered).unwrap());
                if let Some(register) = next.registers.get_mut(node) {
                    *register = 0; // the state machine is rebuilt from slot 1
                }
                next.drain(node);
            }
            Action::Invoke(client, node) => {
                next.invoked |= 1 << client;
                let op = client_op(client);
                let data = encode(client, &op);
                if self.stale_reads && op == RegisterOp::Read {
                    let local = next.registers[node];
                    next.history.on_invoke(client, op).ok()?;
                    let _ = next.history.on_return(client, RegisterRet::ReadOk(local));
                    return Some(next);
                }
                let id = next.replicas[node].as_mut()?.propose(data.clone()).ok()?;
                next.history.on_invoke(client, op).ok()?;
                next.proposed.push(data);
                next.waiting.push((id, client, node));
                next.drain(node);
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            // Paxos Made Simple §2.1 safety: only a single value is chosen (per slot), and
            // every node learns only that one.
            Property::always(
                "agreement: one value applied per slot",
                |_, world: &World| {
                    let mut by_slot: BTreeMap<Slot, &Value> = BTreeMap::new();
                    world
                        .applied
                        .iter()
                        .flatten()
                        .all(|(slot, value)| *by_slot.entry(*slot).or_insert(value) == value)
                },
            ),
            // Only a proposed value may be chosen.
            Property::always(
                "validity: applied commands were proposed",
                |_, world: &World| {
                    world
                        .applied
                        .iter()
                        .flatten()
                        .all(|(_, value)| match value {
                            Value::Noop => true,
                            Value::Command { data, .. } => world.proposed.contains(data),
                            Value::Membership(_) => false, // the model changes no membership
                        })
                },
            ),
            // A snapshot sent to a lagging node holds the values applied everywhere else.
            Property::always("installed snapshots agree", |_, world: &World| {
                !world.snapshot_conflict
            }),
            // Applied logs are gap-free prefixes.
            Property::always("applied logs are prefixes", |_, world: &World| {
                world.applied.iter().all(|log| {
                    log.keys()
                        .enumerate()
                        .all(|(position, slot)| *slot == position as Slot + 1)
                })
            }),
            // With the register workload: every history is linearizable (invalid histories,
            // such as a return without its invocation, are not).
            Property::always("linearizable register history", |_, world: &World| {
                world.history.serialized_history().is_some()
            }),
            // With the register workload: some run answers every client (a model whose
            // clients never return would make the property above vacuous).
            Property::sometimes("every client answered", |model: &Self, world: &World| {
                model.clients == 0
                    || (world.invoked.count_ones() == u32::from(model.clients)
                        && world.waiting.is_empty()
                        && world.history.len() == usize::from(model.clients))
            }),
            // With compactions: some run sends a lagging node a snapshot (or the property
            // above would be vacuous).
            Property::sometimes("a snapshot is installed", |model: &Self, world: &World| {
                model.compactions == 0 || world.snapshot_installed
            }),
            Property::sometimes("a command is applied everywhere", |_, world: &World| {
                world.applied.iter().all(|log| {
                    log.values()
                        .any(|value| matches!(value, Value::Command { .. }))
                })
            }),
        ]
    }
}

fn check(model: MultiPaxos, label: &str) -> usize {
    let started = std::time::Instant::now();
    let checker = model.checker().spawn_bfs().join();
    checker.assert_properties();
    let states = checker.unique_state_count();
    eprintln!(
        "{label}: {states} unique states in {:.1?}, all properties hold",
        started.elapsed()
    );
    states
}

#[test]
#[cfg_attr(debug_assertions, ignore = "exhaustive: run in release (.ci/run does)")]
fn one_election_one_proposal() {
    let states = check(MultiPaxos::new(1, 1, 0, 0, 0), "1 election, 1 proposal");
    assert!(states > 100);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "exhaustive: run in release (.ci/run does)")]
fn one_election_one_proposal_one_loss() {
    check(
        MultiPaxos::new(1, 1, 1, 0, 0),
        "1 election, 1 proposal, 1 loss",
    );
}

/// Two elections overflow memory (over 17 GB of states before finishing): dueling proposers are
/// covered by the scenario tests, the proptests and the simulator instead.
#[test]
#[ignore = "too large to finish: exceeds 17 GB of states"]
fn dueling_candidates() {
    check(MultiPaxos::new(2, 1, 0, 0, 0), "2 elections, 1 proposal");
}

/// A crash at any point of the single election also exceeds 8 GB of states; crashes are covered
/// by the proptests (`replica_props`) and the simulator.
#[test]
#[ignore = "too large to finish: exceeds 8 GB of states"]
fn crash_and_restart() {
    check(
        MultiPaxos::new(2, 1, 0, 0, 1),
        "2 elections, 1 proposal, 1 crash",
    );
}

/// Larger bounds: `cargo test --release --test model_multipaxos -- --ignored --nocapture`.
#[test]
#[ignore]
fn larger_bounds() {
    check(
        MultiPaxos::new(2, 2, 1, 1, 1),
        "2 elections, 2 proposals, 1 loss, 1 tick, 1 crash",
    );
}

/// Compaction and snapshot transfer, after node 1's election: two proposals, one message lost
/// anywhere (an Accept to a follower, say) and one compaction at any node at any point; a
/// follower that lacks compacted slots learns the chosen mark, fetches, and is sent the
/// snapshot, which it installs. Every reachable state keeps agreement, and an installed
/// snapshot matches what the other nodes applied.
fn snapshot_model() -> MultiPaxos {
    MultiPaxos {
        compactions: 1,
        elected: true,
        ..MultiPaxos::new(0, 2, 1, 0, 0)
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "exhaustive: run in release (.ci/run does)")]
fn compaction_and_snapshot_transfer() {
    check(
        snapshot_model(),
        "compaction: 2 proposals, 1 loss, 1 compaction",
    );
}

/// The register workload after node 1's election: two clients (a write and a read) invoke at
/// any node at any point (a follower forwards the command to the leader and answers once it
/// applies it itself), with every delivery order.
///
/// No leader change: the pre-vote and leader lease keep a competing candidate from winning
/// until a follower's election timer runs out, and the ticks that takes make the state space
/// too large for CI (leader changes under clients are covered by the simulator's
/// linearizability checker).
fn register_model(stale_reads: bool) -> MultiPaxos {
    MultiPaxos {
        clients: 2,
        stale_reads,
        ..MultiPaxos::new(0, 0, 0, 0, 0)
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "exhaustive: run in release (.ci/run does)")]
fn register_histories_are_linearizable() {
    check(register_model(false), "register: 2 clients, any node");
}

/// The checker can fail: reads answered from a follower's local register (not through the
/// log) are caught returning a value older than a completed write.
#[test]
#[cfg_attr(debug_assertions, ignore = "exhaustive: run in release (.ci/run does)")]
fn stale_local_reads_are_not_linearizable() {
    let checker = register_model(true).checker().spawn_bfs().join();
    let path = checker
        .discovery("linearizable register history")
        .expect("a stale read must be found");
    eprintln!(
        "stale local reads: counterexample of {} steps found among {} states",
        path.into_actions().len(),
        checker.unique_state_count()
    );
}
