//! A seeded, single-threaded world of [`Replica`]s: a network that loses, duplicates, delays,
//! partitions and clogs messages; disks whose writes complete late and are lost, kept or torn
//! on a crash (optionally real [`FileStorage`](crate::FileStorage)s, see
//! [`SimConfig::file_disks`]); crashes and restarts; snapshots with log compaction
//! ([`Faults::compaction`]); membership changes that add spare nodes and remove members
//! ([`Faults::membership`]); readies left undrained while messages arrive
//! ([`Faults::ready_hold`]) and crashes inside the handling of a ready or a snapshot
//! ([`Faults::crash_in_ready`], [`Faults::crash_in_snapshot`]); and checkers run after
//! every step.
//!
//! Every random choice comes from one ChaCha8 RNG seeded by [`SimConfig::seed`], and every
//! collection iterates in a fixed order, so a seed replays the same run, byte for byte; the
//! [`trace_hash`](Simulation::trace_hash) proves it.

use super::checkers::{Checker, Violation};
use super::config::{SimConfig, SimStats};
use super::disk::{FileDisk, ScratchDir};
use crate::config::Config;
use crate::error::{ConfigError, SendSnapshotError, StepError, StorageError};
use crate::message::{Body, Message};
use crate::replica::{Event, Replica, Role, StepDownReason};
use crate::storage::{MemStorage, Recovered, Snapshot, Storage, WriteBatch};
use crate::types::{Entry, Membership, MembershipAt, NodeId, ProposalId, Slot, Value};
use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

// Only named in documentation links.
#[cfg(doc)]
use super::config::Faults;

/// A write in progress on a node's disk.
#[derive(Debug)]
struct PendingWrite {
    complete_at: u64,
    number: u64,
    batch: WriteBatch,
    messages: Vec<Message>,
    /// The node crashes once this write is durable, before its messages are sent
    /// ([`Faults::crash_in_ready`]).
    crash_after: bool,
}

/// The application's last snapshot of a node's state machine. Durable (the application's own
/// storage): it survives crashes.
#[derive(Clone, Debug)]
struct AppSnapshot {
    /// The applied mark it covers.
    slot: Slot,
    /// The key-value state machine's bytes (with `kv_clients`).
    kv: Option<Vec<u8>>,
    /// The membership in force after `slot`, as the application knows it from what it
    /// applied (or from the peer's snapshot it installed): a restart from the snapshot hands
    /// it to the replica, whose own record of it may not have reached the disk.
    membership: Option<MembershipAt>,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    config: Config,
    /// False for a spare node until a membership change names it: it does not run yet.
    started: bool,
    replica: Option<Replica>,
    storage: MemStorage,
    /// What a lying disk really made durable (only with `Bugs::lying_disk`).
    truly_synced: MemStorage,
    writes: VecDeque<PendingWrite>,
    /// The next slot this incarnation expects to apply.
    next_apply: Slot,
    /// Proposals made through this node, not yet seen committed.
    pending: BTreeSet<ProposalId>,
    /// The node does nothing before this step.
    paused_until: u64,
    /// The node leaves its ready undrained before this step ([`Faults::ready_hold`]).
    ready_held_until: u64,
    /// Ticks per step (clock skew), and the fraction of a tick carried over.
    tick_rate: f64,
    tick_carry: f64,
    /// The replica's `Status::lease_reads` when last counted into the stats.
    lease_reads_counted: u64,
    /// The disk was found corrupt: the node never starts again.
    lost: bool,
    /// The node's file-backed disk, with `SimConfig::file_disks`.
    file: Option<FileDisk>,
    /// The node's key-value state machine (with `kv_clients`), rebuilt at restart from the
    /// snapshot (or from slot 1).
    kv: Option<crate::kv::KvStateMachine>,
    /// The application's last snapshot.
    snapshot: Option<AppSnapshot>,
    /// The membership in force after the applied mark, as the application tracks it: the
    /// last configuration entry applied, or the membership of the snapshot it restored
    /// (`None`: a joining node that applied none yet).
    applied_membership: Option<MembershipAt>,
    /// Client waiting for the response to each of its commands proposed through this node.
    kv_waiters: BTreeMap<ProposalId, (usize, u64)>,
    /// Reads asked of this node with `read_index`, by context.
    kv_reads: BTreeMap<u64, KvRead>,
    /// Reads confirmed, waiting for the state machine to apply their slot.
    kv_reads_ready: Vec<(Slot, KvRead)>,
}

/// A client's key-value read served by read-index.
#[derive(Clone, Debug)]
struct KvRead {
    client: usize,
    sequence: u64,
    key: Bytes,
}

impl SimNode {
    /// The application's snapshot as the protocol carries it: the key-value state machine's
    /// bytes (empty without one).
    fn snapshot_data(&self) -> Bytes {
        match self
            .snapshot
            .as_ref()
            .and_then(|snapshot| snapshot.kv.as_ref())
        {
            Some(bytes) => Bytes::from(bytes.clone()),
            None => Bytes::new(),
        }
    }

    /// The membership the node's configuration starts it with, before it applies anything:
    /// the cluster's initial one, or none for a joining node.
    fn configured_membership(&self) -> Option<MembershipAt> {
        (!self.config.join).then(|| MembershipAt {
            slot: 0,
            membership: self.config.initial_membership(),
        })
    }

    /// Saves `snapshot` on every disk the node has, as a driver saves it in its storage
    /// ([`Storage::save_snapshot`]): the model disk, the lying disk's truth and the files.
    /// (The application keeps its own copy too, [`AppSnapshot`].)
    fn save_snapshot_on_disks(&mut self, snapshot: &Snapshot) -> Result<(), Violation> {
        self.storage
            .save_snapshot(snapshot)
            .expect("MemStorage cannot fail");
        self.truly_synced
            .save_snapshot(snapshot)
            .expect("MemStorage cannot fail");
        if let Some(file) = self.file.as_mut() {
            file.save_snapshot(snapshot)
                .map_err(|error| Violation::new("file_storage", error))?;
        }
        Ok(())
    }

    /// Drops the log through `slot` on every disk the node has: the model disk, the lying
    /// disk's truth and the files.
    fn compact_disks(&mut self, slot: Slot) -> Result<(), Violation> {
        self.storage.compact(slot);
        self.truly_synced.compact(slot);
        if let Some(file) = self.file.as_mut() {
            file.compact(slot)
                .map_err(|error| Violation::new("file_storage", error))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct InTransit {
    deliver_at: u64,
    sequence: u64,
    message: Message,
}

/// [`Simulation::new`] could not build the world from its [`SimConfig`]; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum SimSetupError {
    /// A field of the configuration (or of its replica template) is invalid.
    #[error("invalid simulation config: {0}")]
    Config(#[from] ConfigError),
    /// The file disks (`SimConfig::file_disks`) could not be created.
    #[error("file disks: {0}")]
    Disk(String),
}

/// A deterministic world of replicas. See the [module documentation](crate::sim).
#[derive(Debug)]
pub struct Simulation {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    nodes: Vec<SimNode>,
    network: Vec<InTransit>,
    message_sequence: u64,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Directed links whose messages are held until the given step.
    clogged: BTreeMap<(NodeId, NodeId), u64>,
    checker: Checker,
    stats: SimStats,
    trace: Fnv,
    command_counter: u64,
    /// The context of the last read asked with `read_index`.
    read_counter: u64,
    /// When false, no new fault is injected (the liveness phase).
    faults_on: bool,
    /// A short log of recent happenings, printed with a violation.
    recent: VecDeque<String>,
    /// A violation found outside `step`'s own checks (at a restart), reported by `step`.
    violation: Option<Violation>,
    /// The key-value clients, with `kv_clients`.
    clients: Option<super::clients::Clients>,
    /// Client requests sent to a paused node, handled once it wakes.
    deferred_sends: Vec<super::clients::Send>,
    /// The membership changes leaders took ([`Faults::membership`]), with their slots: any
    /// of those after the last one chosen may still be chosen.
    membership_proposals: Vec<(Slot, Membership)>,
    /// The directory of the file disks, with `file_disks`: held only to be removed on drop.
    _scratch: Option<ScratchDir>,
}

impl Simulation {
    /// Builds the world: every initial node starts fresh; spare nodes wait to be added.
    ///
    /// # Errors
    /// [`SimSetupError::Config`] if `config.nodes` is 0, there are more than 64 nodes with
    /// the spare ones, or the replica template is invalid; [`SimSetupError::Disk`] if the
    /// file disks cannot be created.
    pub fn new(config: SimConfig) -> Result<Simulation, SimSetupError> {
        let total = config
            .nodes
            .checked_add(config.spare_nodes)
            .filter(|total| config.nodes >= 1 && *total <= 64)
            .ok_or(SimSetupError::Config(ConfigError::new(
                "nodes",
                "1 to 64 nodes, spare ones included",
            )))?;
        let members: Vec<NodeId> = (1..=config.nodes as u64).map(NodeId).collect();
        let scratch = match config.file_disks.as_ref() {
            Some(root) => Some(ScratchDir::create(root, config.seed).map_err(SimSetupError::Disk)?),
            None => None,
        };
        let nodes = (1..=total as u64)
            .map(NodeId)
            .map(|id| -> Result<SimNode, SimSetupError> {
                let spare = id.0 > config.nodes as u64;
                let mut replica_config = config.replica.clone();
                replica_config.id = id;
                replica_config.members = if spare { Vec::new() } else { members.clone() };
                replica_config.learners = Vec::new();
                replica_config.join = spare;
                replica_config.seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.0;
                let storage = MemStorage::new();
                let replica = match spare {
                    false => Some(Replica::new(replica_config.clone(), Default::default())?),
                    true => None,
                };
                let file = match scratch.as_ref() {
                    Some(scratch) => Some(
                        FileDisk::create(scratch.path().join(format!("node-{id}")), id).map_err(
                            |error| SimSetupError::Disk(format!("file disk of {id}: {error}")),
                        )?,
                    ),
                    None => None,
                };
                let mut node = SimNode {
                    id,
                    config: replica_config,
                    started: !spare,
                    replica,
                    truly_synced: storage.clone(),
                    storage,
                    writes: VecDeque::new(),
                    next_apply: 1,
                    pending: BTreeSet::new(),
                    paused_until: 0,
                    ready_held_until: 0,
                    tick_rate: 1.0,
                    tick_carry: 0.0,
                    lease_reads_counted: 0,
                    lost: false,
                    file,
                    kv: (config.kv_clients > 0).then(|| {
                        crate::kv::KvStateMachine::new(Default::default())
                            .expect("the default limits are valid")
                    }),
                    snapshot: None,
                    applied_membership: None,
                    kv_waiters: BTreeMap::new(),
                    kv_reads: BTreeMap::new(),
                    kv_reads_ready: Vec::new(),
                };
                node.applied_membership = node.configured_membership();
                Ok(node)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let initial = Membership::new(members, []);
        let mut checker = Checker::new(total, initial.clone());
        for index in 0..config.nodes {
            checker.on_start(index, Some(&initial), 0);
        }
        let mut simulation = Simulation {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            checker,
            config,
            now: 0,
            nodes,
            network: Vec::new(),
            message_sequence: 0,
            blocked: BTreeSet::new(),
            clogged: BTreeMap::new(),
            stats: SimStats::default(),
            trace: Fnv::new(),
            command_counter: 0,
            read_counter: 0,
            faults_on: true,
            recent: VecDeque::new(),
            violation: None,
            clients: None,
            deferred_sends: Vec::new(),
            membership_proposals: Vec::new(),
            _scratch: scratch,
        };
        if simulation.config.kv_clients > 0 {
            simulation.clients = Some(super::clients::Clients::new(simulation.config.kv_clients));
        }
        simulation.assign_clock_rates();
        Ok(simulation)
    }

    /// Draws each node's clock rate from `1 ± tick_skew`.
    fn assign_clock_rates(&mut self) {
        let skew = self.config.faults.tick_skew;
        for index in 0..self.nodes.len() {
            let unit = self.rng.next_u64() as f64 / u64::MAX as f64;
            self.nodes[index].tick_rate = 1.0 + skew * (2.0 * unit - 1.0);
        }
    }

    /// The current step.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// What happened so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// A hash of every delivery, write and commit so far: equal hashes, equal runs.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// The replica of `id`, if it is up.
    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.node(id).replica.as_ref()
    }

    /// The current leaders (replicas in the leader role that are up).
    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| {
                node.replica
                    .as_ref()
                    .is_some_and(|replica| replica.role() == Role::Leader)
            })
            .map(|node| node.id)
            .collect()
    }

    /// The last membership chosen (per the checkers' count of durable acceptances) and the
    /// slot of its configuration entry (0: the initial membership).
    pub fn membership(&self) -> (Slot, &Membership) {
        self.checker.latest_membership()
    }

    /// The last lines of the run's log, for failure reports.
    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }

    /// Switches fault injection on or off (off for a liveness phase).
    pub fn set_faults(&mut self, on: bool) {
        self.faults_on = on;
    }

    /// Ends every fault: heals partitions and restarts crashed nodes.
    pub fn heal_all(&mut self) {
        self.blocked.clear();
        self.clogged.clear();
        for index in 0..self.nodes.len() {
            self.nodes[index].paused_until = 0;
            self.nodes[index].ready_held_until = 0;
            self.nodes[index].tick_rate = 1.0;
            if self.nodes[index].replica.is_none() && !self.nodes[index].lost {
                self.restart(self.nodes[index].id);
            }
        }
    }

    /// Blocks messages from `from` to `to` (a one-way partition).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Isolates `id` from every other node, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.node_ids() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// Removes every partition.
    pub fn heal_partitions(&mut self) {
        self.blocked.clear();
    }

    /// Every node id, spare nodes included.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// Crashes `id`: its replica is dropped and its unfinished writes are lost.
    pub fn crash(&mut self, id: NodeId) {
        let index = self.index(id);
        let node = &mut self.nodes[index];
        if node.replica.take().is_some() {
            self.stats.crashes += 1;
            // Unfinished writes reach the disk in order: a prefix of them may have made it, and
            // the first one that did not may be torn.
            let writes = std::mem::take(&mut node.writes);
            let mut kept_all_so_far = true;
            for write in writes {
                let kept = kept_all_so_far
                    && self.faults_on
                    && self.chance(self.config.faults.unsynced_kept);
                let torn = kept_all_so_far
                    && !kept
                    && self.faults_on
                    && self.chance(self.config.faults.torn_write);
                kept_all_so_far = kept;
                if kept {
                    self.stats.writes_kept += 1;
                    let file = self.nodes[index].file.as_mut();
                    if let Err(error) = file.map_or(Ok(()), |file| file.write(write.batch.clone()))
                    {
                        self.violation
                            .get_or_insert(Violation::new("file_storage", error));
                    }
                    self.reached_disk(index, &write.batch);
                } else if torn {
                    self.stats.writes_torn += 1;
                    if let Some(mut file) = self.nodes[index].file.take() {
                        let land = self.config.bugs.torn_writes_land;
                        let result = file
                            .write_torn(write.batch.clone(), land, &mut |bound| self.below(bound));
                        self.nodes[index].file = Some(file);
                        match result {
                            Ok((note, whole)) => {
                                self.note(format!("{id}: write {note}"));
                                if whole {
                                    // The bytes that survived are the whole batch: it made it.
                                    self.reached_disk(index, &write.batch);
                                }
                            }
                            Err(error) => {
                                self.violation
                                    .get_or_insert(Violation::new("file_storage", error));
                            }
                        }
                    }
                } else {
                    self.stats.writes_lost += 1;
                }
            }
            let node = &mut self.nodes[index];
            if let Some(file) = node.file.as_mut() {
                file.crash();
            }
            node.kv_waiters.clear();
            node.kv_reads.clear();
            node.kv_reads_ready.clear();
            node.ready_held_until = 0;
            if self.config.bugs.lying_disk {
                node.storage = node.truly_synced.clone();
            }
            node.pending.clear();
            self.note(format!("crash {id}"));
        }
    }

    /// Restarts `id` from its disk (a spare node not started yet stays down). If
    /// `Replica::new` refuses what the disk holds, the node stays down and the next
    /// [`step`](Self::step) reports `check_restart_from_disk`.
    pub fn restart(&mut self, id: NodeId) {
        let index = self.index(id);
        let node = &mut self.nodes[index];
        if node.replica.is_some() || node.lost || !node.started {
            return;
        }
        if self.faults_on && self.may_lose(index) && self.chance(self.config.faults.corrupt_disk) {
            // The disk's checksums catch corruption: the node refuses to start, for good.
            if let Err(violation) = self.corrupt_file_disk(index) {
                self.violation.get_or_insert(violation);
                return;
            }
            self.nodes[index].lost = true;
            self.stats.corrupt_disks += 1;
            self.note(format!("{id}: corrupt disk, node lost"));
            return;
        }
        let node = &mut self.nodes[index];
        let mut recovered = node.storage.recover().expect("MemStorage cannot fail");
        if node.file.is_some() {
            match self.recover_file_disk(index, recovered) {
                Ok(from_file) => recovered = from_file,
                Err(violation) => {
                    self.violation.get_or_insert(violation);
                    return;
                }
            }
        }
        let node = &mut self.nodes[index];
        let applied = node.snapshot.as_ref().map_or(0, |snapshot| snapshot.slot);
        if let Err(violation) = self.checker.on_restart(index, &recovered, applied) {
            self.violation.get_or_insert(violation);
        }
        let mut config = node.config.clone();
        let mut kv = node.kv.is_some().then(|| {
            crate::kv::KvStateMachine::new(Default::default())
                .expect("the default limits are valid")
        });
        let mut applied_membership = node.configured_membership();
        if let Some(snapshot) = &node.snapshot {
            config.applied = snapshot.slot;
            if let Some(bytes) = &snapshot.kv {
                kv = Some(
                    crate::kv::KvStateMachine::restore(bytes).expect("the sim's own snapshot"),
                );
            }
            // The membership in force after the snapshot is saved with it: the replica's own
            // record of it may not have reached the disk before the crash (the storage does
            // the same with the snapshots it saves).
            if let Some(at) = &snapshot.membership {
                if recovered
                    .memberships
                    .last()
                    .map_or(true, |last| at.slot > last.slot)
                {
                    recovered.memberships.push(at.clone());
                }
            }
            applied_membership = snapshot.membership.clone();
            self.stats.snapshot_restarts += 1;
        }
        if self.config.bugs.restarts_forget_memberships {
            recovered.memberships.clear();
            if !config.join {
                recovered.memberships.push(MembershipAt {
                    slot: 0,
                    membership: config.initial_membership(),
                });
            }
        }
        let recovered_slot = recovered.memberships.last().map_or(0, |at| at.slot);
        let replica = match Replica::new(config.clone(), recovered) {
            Ok(replica) => replica,
            Err(error) => {
                // What the node's own writes left on its disk must always be startable.
                let detail = format!("{id} cannot restart from its disk: {error}");
                self.violation
                    .get_or_insert(Violation::new("check_restart_from_disk", detail));
                return;
            }
        };
        let node = &mut self.nodes[index];
        self.checker
            .on_start(index, replica.membership(), recovered_slot);
        node.replica = Some(replica);
        node.lease_reads_counted = 0;
        node.next_apply = config.applied + 1;
        node.kv = kv;
        node.applied_membership = applied_membership;
        self.stats.restarts += 1;
        self.note(format!("restart {id}"));
    }

    /// Starts spare node `id` for a change to `target` that names it: with
    /// [`Config::joining`] (it learns the membership from the cluster), or, with the
    /// deliberate bug `joiner_guesses_membership`, as a founding member of `target`.
    fn start_spare(&mut self, id: NodeId, target: &Membership) {
        let index = self.index(id);
        let guess = self.config.bugs.joiner_guesses_membership;
        let node = &mut self.nodes[index];
        if node.started {
            return;
        }
        if guess {
            node.config.join = false;
            node.config.members = target.voters.clone();
            node.config.learners = target.learners.clone();
        }
        node.started = true;
        node.applied_membership = node.configured_membership();
        let replica =
            Replica::new(node.config.clone(), Default::default()).expect("valid spare config");
        self.checker.on_start(index, replica.membership(), 0);
        node.replica = Some(replica);
        self.stats.spares_started += 1;
        self.note(format!("start spare {id}"));
    }

    /// True if node `index` may be lost to disk corruption: in every membership that governs
    /// a slot some surviving node has not durably learned chosen (from the one in force at
    /// the lowest durable chosen mark on), and in every change proposed after the last one
    /// chosen (which may still be chosen), the lost voters stay a minority, so that a
    /// majority of voters can still be gathered for every slot still to be learned. (A
    /// change can be chosen without any node knowing it: its slot must then be recovered by
    /// a phase 1 among the voters that chose it.)
    fn may_lose(&self, index: usize) -> bool {
        let floor = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, node)| *other != index && node.started && !node.lost)
            .map(|(_, node)| node.storage.hard_state().chosen)
            .min()
            .unwrap_or(0);
        let (latest_slot, _) = self.checker.latest_membership();
        let in_force = self.checker.memberships_after(floor);
        let pending = self
            .membership_proposals
            .iter()
            .filter(|(slot, _)| *slot > latest_slot)
            .map(|(_, membership)| membership);
        let chosen = in_force.into_iter().map(|(_, membership)| membership);
        chosen.chain(pending).all(|membership| {
            let lost = membership
                .voters
                .iter()
                .filter(|id| self.node(**id).lost || self.index(**id) == index)
                .count();
            lost <= (membership.voters.len() - 1) / 2
        })
    }

    /// An unfinished write reached `index`'s disk at a crash: the model disk (and the lying
    /// disk's truth) take it, and the checkers see it durable.
    fn reached_disk(&mut self, index: usize, batch: &WriteBatch) {
        let node = &mut self.nodes[index];
        node.storage
            .write(&mut batch.clone())
            .expect("MemStorage cannot fail");
        node.truly_synced
            .write(&mut batch.clone())
            .expect("MemStorage cannot fail");
        if let Err(violation) = self.checker.on_durable(index, batch) {
            self.violation.get_or_insert(violation);
        }
    }

    /// With a file disk: flips a byte of it and requires that opening it now fails as
    /// corrupt (or foreign, if the flip hit the owner's ids). Without one: nothing to do.
    fn corrupt_file_disk(&mut self, index: usize) -> Result<(), Violation> {
        let Some(mut file) = self.nodes[index].file.take() else {
            return Ok(());
        };
        let id = self.nodes[index].id;
        let in_tail = self.config.bugs.corruption_in_open_tail;
        let result = file
            .corrupt(in_tail, &mut |bound| self.below(bound))
            .and_then(|note| {
                self.note(format!("{id}: {note}"));
                match file.open() {
                    Err(StorageError::Corrupt { .. } | StorageError::Foreign { .. }) => Ok(()),
                    Err(other) => Err(format!(
                        "reopening failed with an unexpected error: {other}"
                    )),
                    Ok(_) => Err(format!("{note}, yet the storage opened without an error")),
                }
            });
        self.nodes[index].file = Some(file);
        result.map_err(|detail| Violation::new("check_corruption_detected", detail))
    }

    /// With a file disk: opens it and requires that it recovered exactly the model's state
    /// (every completed write, nothing of a torn one). Returns what it recovered.
    fn recover_file_disk(
        &mut self,
        index: usize,
        model: Recovered,
    ) -> Result<Recovered, Violation> {
        let lying = self.config.bugs.lying_disk;
        let node = &mut self.nodes[index];
        let file = node.file.as_mut().expect("file disk");
        let recovered = file.open().map_err(|error| {
            Violation::new(
                "check_file_recovery",
                format!("{}: the file storage did not open: {error}", node.id),
            )
        })?;
        self.stats.file_recoveries += 1;
        if lying {
            // The lying disk is a bug of the model; the files hold every completed write.
            return Ok(model);
        }
        if recovered != model {
            let slot = recovered
                .entries
                .iter()
                .zip(&model.entries)
                .find(|(file, model)| file != model)
                .map(|(entry, _)| entry.slot);
            return Err(Violation::new(
                "check_file_recovery",
                format!(
                    "{} recovered from its files a state other than its disk's: hard state {:?} vs {:?}, {} vs {} entries, first difference at slot {slot:?}, memberships {:?} vs {:?}",
                    node.id,
                    recovered.hard_state,
                    model.hard_state,
                    recovered.entries.len(),
                    model.entries.len(),
                    recovered.memberships,
                    model.memberships
                ),
            ));
        }
        // The snapshot file holds the last snapshot saved, whatever crash came after it.
        let from_file = file.load_snapshot().map_err(|error| {
            Violation::new(
                "check_file_recovery",
                format!("{}: the snapshot file did not load: {error}", node.id),
            )
        })?;
        let saved = node
            .storage
            .load_snapshot()
            .expect("MemStorage cannot fail");
        if from_file != saved {
            let slot = |snapshot: &Option<Snapshot>| snapshot.as_ref().map(|at| at.slot);
            return Err(Violation::new(
                "check_file_recovery",
                format!(
                    "{} loaded from its files the snapshot of slot {:?}, but saved the one of slot {:?} last",
                    node.id,
                    slot(&from_file),
                    slot(&saved)
                ),
            ));
        }
        Ok(recovered)
    }

    /// Proposes `data` at `id`. Returns the proposal id, or `None` if the node is down or
    /// refused it.
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Option<ProposalId> {
        let index = self.index(id);
        let replica = self.nodes[index].replica.as_mut()?;
        let proposal = replica.propose(data.clone()).ok()?;
        self.checker.on_proposed(proposal, data);
        self.nodes[index].pending.insert(proposal);
        self.stats.proposed += 1;
        Some(proposal)
    }

    /// With leases, a paused process's clock keeps running (its ticks follow real time, as
    /// `Config::lease_ticks` requires), unless `Bugs::pauses_stop_clocks`.
    fn keeps_clocks_in_pauses(&self) -> bool {
        self.config.replica.lease_ticks > 0 && !self.config.bugs.pauses_stop_clocks
    }

    /// Delivers, before anything else in this step, the ticks a process missed while it was
    /// paused (the lease contract: a process that stalled ticks before it steps a message).
    fn catch_up_clocks(&mut self) {
        for node in &mut self.nodes {
            if node.paused_until > self.now || node.tick_carry < 1.0 {
                continue;
            }
            let ticks = node.tick_carry.floor();
            node.tick_carry -= ticks;
            if let Some(replica) = node.replica.as_mut() {
                for _ in 0..ticks as u64 {
                    replica.tick();
                }
            }
        }
    }

    /// Runs one step: faults, delivery of due messages (in random order), one tick per node,
    /// completion of due writes, and every ready (but those left undrained for now,
    /// [`Faults::ready_hold`]); then the checkers.
    ///
    /// # Errors
    /// The first safety [`Violation`] found.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        self.stats.steps += 1;
        if self.keeps_clocks_in_pauses() {
            self.catch_up_clocks();
        }
        if self.faults_on {
            self.inject_faults();
        }
        if self.clients.is_some() {
            self.step_clients();
        } else if self.faults_on && self.chance(self.config.propose_rate) {
            self.propose_random()
        }
        self.deliver_due()?;
        for index in 0..self.nodes.len() {
            let keep_clock = self.keeps_clocks_in_pauses();
            let node = &mut self.nodes[index];
            if node.paused_until > self.now {
                if keep_clock {
                    node.tick_carry += node.tick_rate;
                }
                continue;
            }
            node.tick_carry += node.tick_rate;
            let ticks = node.tick_carry.floor();
            node.tick_carry -= ticks;
            if let Some(replica) = node.replica.as_mut() {
                for _ in 0..ticks as u64 {
                    replica.tick();
                }
            }
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused_until > self.now {
                continue; // a paused process runs nothing, not even its completions
            }
            self.complete_writes(index)?;
            if self.holds_ready(index) {
                continue;
            }
            self.drain_ready(index)?;
        }
        let counts = self.checker.membership_counts();
        self.stats.membership_chosen = counts.chosen;
        self.stats.members_added = counts.added;
        self.stats.members_removed = counts.removed;
        self.stats.members_role_changed = counts.role_changed;
        match self.violation.take() {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    }

    /// Runs `steps` steps.
    ///
    /// # Errors
    /// The first safety violation.
    pub fn run(&mut self, steps: u64) -> Result<(), Violation> {
        for _ in 0..steps {
            self.step()?;
        }
        Ok(())
    }

    /// The liveness phase: stops faults, heals everything, and requires that within
    /// `steps_max` steps a leader is elected, every live node has applied everything chosen,
    /// and a fresh command proposed at the leader is applied on every node.
    ///
    /// # Errors
    /// A safety violation, or a liveness violation if the bound passes.
    pub fn check_liveness(&mut self, steps_max: u64) -> Result<(), Violation> {
        self.set_faults(false);
        self.heal_all();
        let deadline = self.now + steps_max;
        let mut probe: Option<(NodeId, ProposalId)> = None;
        // Commands acknowledged before the probe is proposed must be everywhere once the probe
        // is; later ones (forwards still queued from the safety phase) may legitimately follow
        // the probe in the log.
        let mut acknowledged_before_probe = BTreeSet::new();
        while self.now < deadline {
            self.step()?;
            match probe {
                None => {
                    if let [leader] = self.leaders()[..] {
                        self.command_counter += 1;
                        let data = Bytes::from(format!("probe-{}", self.command_counter));
                        acknowledged_before_probe = self.checker.acknowledged();
                        probe = self.propose(leader, data).map(|id| (leader, id));
                    }
                }
                Some((proposer, id)) => {
                    let live = self.live_set(proposer);
                    if self.checker.applied_by_all(id, live) {
                        self.checker
                            .check_acknowledged_survive(&acknowledged_before_probe, live)?;
                        return self.check_linearizable();
                    }
                    if self.leaders() != [proposer] {
                        // Leadership moved before the probe was chosen; an unchosen value may
                        // be lost (Paxos promises nothing for it): probe the new leader.
                        probe = None;
                    }
                }
            }
        }
        let mut states = String::new();
        for node in &self.nodes {
            let state = match (&node.replica, node.lost) {
                (_, true) => "lost (corrupt disk)".to_string(),
                (None, false) if !node.started => "spare, not started".to_string(),
                (None, false) => "down".to_string(),
                (Some(replica), false) => {
                    let status = replica.status();
                    let membership = replica
                        .membership()
                        .map_or_else(|| "none".to_string(), |membership| membership.to_string());
                    format!(
                        "{:?} promised {} leader {:?} chosen {} applied {} last {} membership {membership}",
                        status.role,
                        status.promised,
                        status.leader,
                        status.chosen,
                        status.applied,
                        status.last_slot
                    )
                }
            };
            states.push_str(&format!("\n    {}: {state}", node.id));
        }
        Err(Violation::new(
            "check_liveness",
            format!("no probe command applied on every live node within {steps_max} steps; probe {probe:?}{states}"),
        ))
    }

    /// Checks the key-value clients' history (if any) for linearizability.
    ///
    /// # Errors
    /// A `check_linearizable` violation with a compact report of the offending key's history.
    pub fn check_linearizable(&self) -> Result<(), Violation> {
        match &self.clients {
            Some(clients) => clients
                .check()
                .map_err(|report| Violation::new("check_linearizable", report)),
            None => Ok(()),
        }
    }

    /// The members (voters and learners) of the membership `leader` has in force, but those
    /// lost to disk corruption, as a vote set of indexes: the nodes that must apply what it
    /// proposes. Removed nodes and spare nodes never added are not among them.
    fn live_set(&self, leader: NodeId) -> crate::quorum::VoteSet {
        let membership = self.replica(leader).and_then(Replica::membership);
        let mut live = crate::quorum::VoteSet::EMPTY;
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.lost && membership.is_some_and(|membership| membership.contains(node.id)) {
                live.insert(index);
            }
        }
        live
    }

    // ---- internals ----

    fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[self.index(id)]
    }

    fn index(&self, id: NodeId) -> usize {
        let index = (id.0 as usize).wrapping_sub(1);
        assert!(index < self.nodes.len(), "no node {id}");
        index
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < probability
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.rng.next_u64() % bound
        }
    }

    /// Node `index`, if live, snapshots its state machine at its applied mark and compacts
    /// through it: nodes behind it are sent the snapshot when they need it. With
    /// `crash_allowed`, it may crash between saving the snapshot and compacting
    /// ([`Faults::crash_in_snapshot`]).
    fn compact(&mut self, index: usize, crash_allowed: bool) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        if node.replica.is_none() {
            return Ok(());
        }
        // The snapshot may cover slots whose chosen mark is not durable yet: a restart from it
        // raises the chosen mark to its slot (they are chosen: they were applied).
        let applied = node.next_apply - 1;
        if applied <= node.storage.compacted_through() {
            return Ok(());
        }
        node.snapshot = Some(AppSnapshot {
            slot: applied,
            kv: node.kv.as_ref().map(|kv| kv.snapshot()),
            membership: node.applied_membership.clone(),
        });
        let data = node.snapshot_data();
        self.checker.on_snapshot(applied, &data)?;
        // The application's own snapshot carries no membership (the replica keeps it in its
        // write batches).
        let saved = Snapshot {
            slot: applied,
            data,
            membership: None,
        };
        self.nodes[index].save_snapshot_on_disks(&saved)?;
        let id = self.nodes[index].id;
        if crash_allowed && self.faults_on && self.chance(self.config.faults.crash_in_snapshot) {
            self.stats.crashes_before_compaction += 1;
            self.note(format!(
                "{id}: snapshot at {applied} saved, crash before compacting"
            ));
            self.crash(id);
            return Ok(());
        }
        let node = &mut self.nodes[index];
        node.replica
            .as_mut()
            .expect("live")
            .compact(applied)
            .map_err(|error| Violation::new("replica_compact", error.to_string()))?;
        node.compact_disks(applied)?;
        self.stats.compactions += 1;
        self.note(format!("{id}: snapshot at {applied}, compacted through it"));
        Ok(())
    }

    fn note(&mut self, line: String) {
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("[{}] {line}", self.now));
    }

    fn inject_faults(&mut self) {
        let faults = self.config.faults.clone();
        let nodes = self.nodes.len() as u64;
        for index in 0..self.nodes.len() {
            let id = self.nodes[index].id;
            if !self.nodes[index].started {
                continue;
            }
            if self.nodes[index].replica.is_some() {
                if self.chance(faults.crash) {
                    self.crash(id);
                }
            } else if self.chance(faults.restart) {
                self.restart(id);
            }
        }
        if nodes > 1 && self.chance(faults.partition) {
            self.stats.partitions += 1;
            let victim = NodeId(1 + self.below(nodes));
            match self.below(3) {
                0 => self.isolate(victim),
                1 => {
                    let other = NodeId(1 + (victim.0 % nodes));
                    self.block(victim, other);
                }
                _ => {
                    let other = NodeId(1 + (victim.0 % nodes));
                    self.block(other, victim);
                }
            }
            self.note(format!("partition around {victim}"));
        }
        if nodes > 1 && self.chance(faults.transfer) {
            let index = self.below(nodes) as usize;
            let to = NodeId(1 + self.below(nodes));
            let from = self.nodes[index].id;
            if let Some(replica) = self.nodes[index].replica.as_mut() {
                if replica.is_leader() && replica.transfer_leadership(to).is_ok() && to != from {
                    self.stats.transfers += 1;
                    self.note(format!("{from} hands its leadership to {to}"));
                }
            }
        }
        if self.chance(faults.membership) {
            self.change_membership_at_random();
        }
        if self.chance(faults.compaction) {
            let index = self.below(nodes) as usize;
            if let Err(violation) = self.compact(index, true) {
                self.violation.get_or_insert(violation);
            }
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].replica.is_some() && self.chance(faults.pause) {
                let steps = 1 + self.below(faults.pause_ticks_max.max(1));
                self.nodes[index].paused_until = self.now + steps;
                self.stats.pauses += 1;
                let id = self.nodes[index].id;
                self.note(format!("pause {id} for {steps}"));
            }
        }
        if nodes > 1 && self.chance(faults.clog) {
            let from = NodeId(1 + self.below(nodes));
            let until = self.now + 1 + self.below(faults.clog_ticks_max.max(1));
            self.stats.clogs += 1;
            if self.below(2) == 0 {
                let to = NodeId(1 + (from.0 + self.below(nodes - 1)) % nodes);
                self.clogged.insert((from, to), until);
                self.note(format!("clog {from}->{to} until {until}"));
            } else {
                // The whole node: every link into and out of it.
                for other in (1..=nodes).map(NodeId).filter(|&other| other != from) {
                    self.clogged.insert((from, other), until);
                    self.clogged.insert((other, from), until);
                }
                self.note(format!("clog node {from} until {until}"));
            }
        }
        if !self.blocked.is_empty() && self.chance(faults.heal) {
            self.blocked.clear();
            self.note("heal".to_string());
        }
    }

    /// The operator changes the membership ([`Faults::membership`]): asks a leader (any node
    /// that believes it leads, deposed or not) to change to a random target, sometimes the
    /// membership in force (starting the spare nodes it names first). Refusals are counted.
    fn change_membership_at_random(&mut self) {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| {
                let node = &self.nodes[index];
                node.paused_until <= self.now
                    && node.replica.as_ref().is_some_and(Replica::is_leader)
            })
            .collect();
        if leaders.is_empty() {
            self.stats.membership_skipped += 1;
            return;
        }
        let index = leaders[self.below(leaders.len() as u64) as usize];
        let current = self.nodes[index]
            .replica
            .as_ref()
            .and_then(Replica::membership)
            .cloned()
            .expect("a leader knows its membership");
        // One change in eight names the membership in force, as an operator's retry of a
        // change chosen meanwhile does: it changes nothing, but phase 1 recovers it like any
        // other change (and must not stop there for good).
        let target = if self.below(8) == 0 {
            Some(current.clone())
        } else {
            self.draw_membership(&current)
        };
        let Some(target) = target else {
            self.stats.membership_skipped += 1;
            return;
        };
        for id in target.all() {
            if !self.node(id).started {
                self.start_spare(id, &target);
            }
        }
        let leader = self.nodes[index].id;
        let replica = self.nodes[index].replica.as_mut().expect("checked");
        match replica.change_membership(target.clone()) {
            Ok(slot) => {
                self.stats.membership_proposed += 1;
                self.note(format!(
                    "{leader} proposes {target} (from {current}) at slot {slot}"
                ));
                self.membership_proposals.push((slot, target));
            }
            Err(error) => {
                self.stats.membership_refused += 1;
                self.note(format!("{leader} refuses {target}: {error}"));
            }
        }
    }

    /// A random membership near `current`: one or two of add a learner, promote a learner,
    /// demote a voter, remove a voter, add a voter, replace a voter, remove a learner. Keeps 1
    /// to 5 voters, mostly 3 or more (as many as there are nodes, with fewer), never adds a
    /// lost node, and keeps lost voters a minority. `None` if no draw found one.
    fn draw_membership(&mut self, current: &Membership) -> Option<Membership> {
        let usable: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|node| !node.lost)
            .map(|node| node.id)
            .collect();
        let preferred_voters = usable.len().min(3);
        // One change in four may leave fewer voters (down to one).
        let small_allowed = self.below(4) == 0;
        for _ in 0..8 {
            let mut voters: BTreeSet<NodeId> = current.voters.iter().copied().collect();
            let mut learners: BTreeSet<NodeId> = current.learners.iter().copied().collect();
            let changes = if self.below(4) == 0 { 2 } else { 1 };
            for _ in 0..changes {
                let outsiders: Vec<NodeId> = usable
                    .iter()
                    .copied()
                    .filter(|id| !voters.contains(id) && !learners.contains(id))
                    .collect();
                let usable_learners: Vec<NodeId> = learners
                    .iter()
                    .copied()
                    .filter(|id| usable.contains(id))
                    .collect();
                let voter_list: Vec<NodeId> = voters.iter().copied().collect();
                let learner_list: Vec<NodeId> = learners.iter().copied().collect();
                match self.below(7) {
                    0 => {
                        if let Some(id) = self.pick(&outsiders) {
                            learners.insert(id);
                        }
                    }
                    1 => {
                        if let Some(id) = self.pick(&usable_learners) {
                            learners.remove(&id);
                            voters.insert(id);
                        }
                    }
                    2 => {
                        if let Some(id) = self.pick(&voter_list) {
                            voters.remove(&id);
                            learners.insert(id);
                        }
                    }
                    3 => {
                        if let Some(id) = self.pick(&voter_list) {
                            voters.remove(&id);
                        }
                    }
                    4 => {
                        if let Some(id) = self.pick(&outsiders) {
                            voters.insert(id);
                        }
                    }
                    5 => {
                        let mut incoming = outsiders.clone();
                        incoming.extend(&usable_learners);
                        if let (Some(out), Some(id)) =
                            (self.pick(&voter_list), self.pick(&incoming))
                        {
                            voters.remove(&out);
                            learners.remove(&id);
                            voters.insert(id);
                        }
                    }
                    _ => {
                        if let Some(id) = self.pick(&learner_list) {
                            learners.remove(&id);
                        }
                    }
                }
            }
            let target = Membership::new(voters, learners);
            let voter_count = target.voters.len();
            if target == *current || !(1..=5).contains(&voter_count) {
                continue;
            }
            let lost = target
                .voters
                .iter()
                .filter(|id| self.node(**id).lost)
                .count();
            if lost > (voter_count - 1) / 2 {
                continue;
            }
            if voter_count < preferred_voters && !small_allowed {
                continue;
            }
            return Some(target);
        }
        None
    }

    /// One of `ids` at random, or `None` if it is empty.
    fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        (!ids.is_empty()).then(|| ids[self.below(ids.len() as u64) as usize])
    }

    fn step_clients(&mut self) {
        let mut clients = self.clients.take().expect("kv mode");
        let nodes = self.nodes.len() as u64;
        let (now, issue) = (self.now, self.faults_on);
        let mut sends = std::mem::take(&mut self.deferred_sends);
        sends.extend(clients.step(now, nodes, issue, &mut |bound| self.below(bound)));
        for send in sends {
            let index = self.index(send.node);
            if self.nodes[index].paused_until > now {
                // A paused process handles nothing: the request waits until it wakes.
                self.deferred_sends.push(send);
                continue;
            }
            if let Ok(crate::kv::Command::Request {
                operation: crate::kv::Operation::Get { key },
                ..
            }) = crate::kv::Command::decode(&send.command)
            {
                if self.read_without_log(index, &send, key, &mut clients) {
                    continue;
                }
            }
            if let Some(id) = self.propose(send.node, send.command) {
                self.nodes[index]
                    .kv_waiters
                    .insert(id, (send.client, send.sequence));
            }
        }
        let (operations, returned) = clients.counts();
        self.stats.kv_operations = operations as u64;
        self.stats.kv_returned = returned as u64;
        self.clients = Some(clients);
    }

    /// Serves a client's read without the log if this node can: through read-index (half
    /// the time, so reads through the log stay covered too; a follower asks its leader), or
    /// as the
    /// deliberately broken reads of `Bugs::stale_reads` and `Bugs::unconfirmed_reads`.
    /// Returns false if the read must go through the log.
    fn read_without_log(
        &mut self,
        index: usize,
        send: &super::clients::Send,
        key: Bytes,
        clients: &mut super::clients::Clients,
    ) -> bool {
        let bugs = &self.config.bugs;
        let node = &self.nodes[index];
        let (Some(replica), Some(kv)) = (node.replica.as_ref(), node.kv.as_ref()) else {
            return false;
        };
        if bugs.stale_reads || (bugs.unconfirmed_reads && replica.is_leader()) {
            let value = kv.get(&key).cloned();
            let response = crate::kv::Response::Output(crate::kv::Output::Value(value));
            clients.on_response(send.client, send.sequence, self.now, response);
            return true;
        }
        if self.below(2) == 0 {
            return false;
        }
        self.read_counter += 1;
        let context = self.read_counter;
        let node = &mut self.nodes[index];
        let replica = node.replica.as_mut().expect("checked");
        let lease_reads = replica.status().lease_reads;
        if replica.read_index(context).is_err() {
            return false;
        }
        let leased = replica.status().lease_reads > lease_reads;
        let read = KvRead {
            client: send.client,
            sequence: send.sequence,
            key,
        };
        node.kv_reads.insert(context, read);
        if leased {
            self.check_lease(index);
        }
        true
    }

    /// Node `index` just answered a read under its lease: no member may lead in a higher
    /// ballot (the lease's own invariant; stronger than linearizability, which only notices
    /// once a client's write lands in the overlap).
    fn check_lease(&mut self, index: usize) {
        let this = &self.nodes[index];
        let Some(ballot) = this
            .replica
            .as_ref()
            .map(|replica| replica.status().promised)
        else {
            return;
        };
        let newer = self.nodes.iter().find_map(|node| {
            let replica = node.replica.as_ref()?;
            let promised = replica.status().promised;
            (replica.is_leader() && promised > ballot).then_some((node.id, promised))
        });
        if let Some((leader, promised)) = newer {
            let detail = format!(
                "{} answered a read under its lease in {ballot} while {leader} leads in {promised}",
                this.id
            );
            self.violation
                .get_or_insert(Violation::new("check_lease", detail));
        }
    }

    /// Adds the reads node `index` answered under its lease since the last count.
    fn count_lease_reads(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let total = replica.status().lease_reads;
        self.stats.lease_reads += total.saturating_sub(node.lease_reads_counted);
        node.lease_reads_counted = total;
    }

    /// Answers the confirmed reads of node `index` whose slot its state machine has applied.
    fn serve_reads(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let applied = node.next_apply - 1;
        let (Some(kv), Some(clients)) = (node.kv.as_ref(), self.clients.as_mut()) else {
            return;
        };
        let wait_for_apply = !self.config.bugs.reads_before_apply;
        node.kv_reads_ready.retain(|(slot, read)| {
            if *slot > applied && wait_for_apply {
                return true;
            }
            let value = kv.get(&read.key).cloned();
            let response = crate::kv::Response::Output(crate::kv::Output::Value(value));
            clients.on_response(read.client, read.sequence, self.now, response);
            self.stats.kv_index_reads += 1;
            false
        });
    }

    fn propose_random(&mut self) {
        let nodes = self.nodes.len() as u64;
        let target = NodeId(1 + self.below(nodes));
        self.command_counter += 1;
        let data = Bytes::from(format!("cmd-{}", self.command_counter));
        self.propose(target, data);
    }

    fn send(&mut self, message: Message) {
        let faults = &self.config.faults;
        let (loss, duplicate, delay) = if self.faults_on {
            (faults.loss, faults.duplicate, faults.delay_ticks_max)
        } else {
            (0.0, 0.0, 0)
        };
        if self.blocked.contains(&(message.from, message.to)) || self.chance(loss) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.chance(duplicate) { 2 } else { 1 };
        if copies == 2 {
            self.stats.duplicated += 1;
        }
        for _ in 0..copies {
            let mut deliver_at = self.now + 1 + self.below(delay + 1);
            if let Some(until) = self.clogged.get(&(message.from, message.to)) {
                deliver_at = deliver_at.max(*until);
            }
            self.message_sequence += 1;
            self.network.push(InTransit {
                deliver_at,
                sequence: self.message_sequence,
                message: message.clone(),
            });
        }
    }

    fn deliver_due(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let mut due: Vec<InTransit> = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at <= now {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|transit| transit.sequence);
        // A seeded shuffle: messages due at the same step arrive in random order.
        for position in (1..due.len()).rev() {
            let other = self.below(position as u64 + 1) as usize;
            due.swap(position, other);
        }
        for transit in due {
            let message = transit.message;
            if self.blocked.contains(&(message.from, message.to)) {
                self.stats.dropped += 1;
                continue;
            }
            let to = self.index(message.to);
            if self.nodes[to].paused_until > now {
                let deliver_at = self.nodes[to].paused_until;
                self.network.push(InTransit {
                    deliver_at,
                    sequence: transit.sequence,
                    message,
                });
                continue;
            }
            let Some(replica) = self.nodes[to].replica.as_mut() else {
                self.stats.dropped += 1;
                continue;
            };
            message.hash(&mut self.trace);
            self.stats.delivered += 1;
            let (from, kind) = (message.from, message.body.kind());
            match replica.step(message) {
                Ok(()) => {}
                // A reply or a request from a node outside the receiver's membership: removed
                // meanwhile, or not added yet (a node that still believes it is a member asks
                // its old leader). Refused and counted, as a transport would; but a member's
                // message must never be refused so.
                Err(StepError::UnknownNode(sender))
                    if !replica
                        .membership()
                        .is_some_and(|membership| membership.contains(sender)) =>
                {
                    self.stats.unknown_sender += 1;
                }
                Err(error) => {
                    return Err(Violation::new(
                        "step",
                        format!("a valid {kind} from {from} was refused: {error}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// True if node `index` leaves its ready undrained this step ([`Faults::ready_hold`]):
    /// still held, or a ready waits and a new hold is drawn.
    fn holds_ready(&mut self, index: usize) -> bool {
        if self.nodes[index].ready_held_until > self.now {
            return true;
        }
        let waiting = self.nodes[index]
            .replica
            .as_ref()
            .is_some_and(Replica::has_ready);
        if !(waiting && self.faults_on && self.chance(self.config.faults.ready_hold)) {
            return false;
        }
        let steps = 1 + self.below(self.config.faults.ready_hold_ticks_max.max(1));
        self.nodes[index].ready_held_until = self.now + steps;
        self.stats.readies_held += 1;
        let id = self.nodes[index].id;
        self.note(format!("{id} leaves its ready undrained for {steps}"));
        true
    }

    /// Completes the writes of `index` that are due, in order, releasing their messages (or
    /// crashes the node between a write and its messages, [`Faults::crash_in_ready`]).
    fn complete_writes(&mut self, index: usize) -> Result<(), Violation> {
        loop {
            let node = &mut self.nodes[index];
            let due = node
                .writes
                .front()
                .is_some_and(|write| write.complete_at <= self.now);
            if !due {
                return Ok(());
            }
            let write = node.writes.pop_front().expect("checked");
            node.storage
                .write(&mut write.batch.clone())
                .expect("MemStorage cannot fail");
            if let Some(file) = node.file.as_mut() {
                file.write(write.batch.clone())
                    .map_err(|error| Violation::new("file_storage", error))?;
            }
            write.batch.hash(&mut self.trace);
            self.checker.on_durable(index, &write.batch)?;
            if write.crash_after && self.faults_on {
                let id = self.nodes[index].id;
                self.stats.crashes_after_write += 1;
                self.note(format!(
                    "{id}: write of ready {} durable, crash before its messages",
                    write.number
                ));
                self.crash(id);
                return Ok(());
            }
            for message in &write.messages {
                self.checker
                    .on_release(index, &self.nodes[index].storage, message)?;
            }
            if let Some(replica) = self.nodes[index].replica.as_mut() {
                replica
                    .on_persisted(write.number)
                    .map_err(|error| Violation::new("replica_acknowledge", error.to_string()))?;
            }
            for message in write.messages {
                self.send(message);
            }
        }
    }

    fn drain_ready(&mut self, index: usize) -> Result<(), Violation> {
        // Bounded: each round either empties the replica's output or the loop ends.
        for _ in 0..4 {
            let Some(replica) = self.nodes[index].replica.as_mut() else {
                return Ok(());
            };
            if !replica.has_ready() {
                return Ok(());
            }
            let mut ready = replica.ready();
            let number = ready.number();
            for message in ready.take_messages() {
                if matches!(message.body, Body::Promise { .. } | Body::Accepted { .. }) {
                    return Err(Violation::new(
                        "check_persistence_before_promise",
                        format!("{} sent before its write: {message:?}", message.body.kind()),
                    ));
                }
                self.send(message);
            }
            let id = self.nodes[index].id;
            if let Some(snapshot) = ready.take_snapshot() {
                let slot = snapshot.slot;
                let crash = self.faults_on && self.chance(self.config.faults.crash_in_snapshot);
                let before_compaction = crash && self.below(2) == 0;
                self.install_snapshot(index, snapshot)?;
                if before_compaction {
                    self.stats.crashes_before_compaction += 1;
                    self.note(format!(
                        "{id}: installed snapshot of slot {slot} saved, crash before compacting"
                    ));
                    self.crash(id);
                    return Ok(());
                }
                self.nodes[index].compact_disks(slot)?;
                if crash {
                    // The ready's write (its new chosen mark) was handed to the disk and had
                    // not finished: the crash loses, keeps or tears it.
                    self.stats.crashes_after_compaction += 1;
                    self.note(format!(
                        "{id}: installed snapshot of slot {slot} saved and compacted, crash before the write"
                    ));
                    let batch = self.to_disk(ready.take_persist());
                    self.nodes[index].writes.push_back(PendingWrite {
                        complete_at: self.now,
                        number,
                        batch,
                        messages: Vec::new(),
                        crash_after: false,
                    });
                    self.crash(id);
                    return Ok(());
                }
            }
            for event in ready.take_events() {
                match event {
                    Event::ElectionStarted { ballot } => {
                        self.checker.on_election_started(index, id, ballot)?;
                    }
                    Event::MembershipChanged { slot, membership } => {
                        self.note(format!("{id}: membership {membership} after slot {slot}"));
                        self.checker
                            .check_membership_agreement(index, id, slot, &membership)?;
                    }
                    Event::BecameLeader { ballot } => {
                        self.stats.elections += 1;
                        self.note(format!("{} leads in {ballot}", self.nodes[index].id));
                        self.checker
                            .on_leader(index, self.nodes[index].id, ballot)?;
                    }
                    Event::SnapshotNeeded { follower } => self.send_snapshot(index, follower)?,
                    Event::SteppedDown {
                        reason: StepDownReason::Transferred,
                        ..
                    } => self.stats.transfers_completed += 1,
                    Event::TransferAborted { .. } => self.stats.transfers_aborted += 1,
                    Event::ReadReady { context, slot } => {
                        self.count_lease_reads(index);
                        let node = &mut self.nodes[index];
                        if let Some(read) = node.kv_reads.remove(&context) {
                            node.kv_reads_ready.push((slot, read));
                        }
                    }
                    Event::ReadAborted { context } => {
                        let asked = self.nodes[index].kv_reads.remove(&context).is_some();
                        self.stats.kv_reads_aborted += u64::from(asked);
                    }
                    _ => {}
                }
            }
            let committed: Vec<Entry> = match self.nodes[index].replica.as_ref() {
                Some(replica) => replica.committed(&ready).cloned().collect(),
                None => Vec::new(),
            };
            self.apply(index, committed)?;
            self.serve_reads(index);
            let delay = if self.faults_on {
                self.config.faults.write_delay_ticks_max
            } else {
                0
            };
            let complete_at = self.now + self.below(delay + 1);
            // A crash inside this ready's handling: before its write reached the disk, or
            // once it is durable and before its messages are sent.
            let crash = self.faults_on && self.chance(self.config.faults.crash_in_ready);
            let crash_after = crash && self.below(2) == 0;
            let batch = self.to_disk(ready.take_persist());
            let mut messages = ready.take_persisted_messages();
            if self.config.bugs.send_before_persist {
                for message in messages.drain(..) {
                    self.checker
                        .on_release(index, &self.nodes[index].storage, &message)?;
                    self.send(message);
                }
            }
            self.nodes[index].writes.push_back(PendingWrite {
                complete_at,
                number,
                batch,
                messages,
                crash_after,
            });
            if crash && !crash_after {
                self.stats.crashes_before_write += 1;
                self.note(format!(
                    "{id}: messages of ready {number} sent, crash before its write"
                ));
                self.crash(id);
                return Ok(());
            }
            self.complete_writes(index)?;
        }
        Ok(())
    }

    /// The write the disk does for `batch`: all of it (without
    /// `Bugs::storage_ignores_compact_through`).
    fn to_disk(&self, mut batch: WriteBatch) -> WriteBatch {
        if self.config.bugs.storage_ignores_compact_through {
            batch.compact_through = None;
        }
        batch
    }

    /// Node `index` reports that `follower` needs compacted slots: it sends its snapshot, as an
    /// application answering `Event::SnapshotNeeded` does.
    fn send_snapshot(&mut self, index: usize, follower: NodeId) -> Result<(), Violation> {
        self.send_snapshot_once(index, follower, false)
    }

    /// [`send_snapshot`](Self::send_snapshot), after a fresh snapshot if `retried`.
    fn send_snapshot_once(
        &mut self,
        index: usize,
        follower: NodeId,
        retried: bool,
    ) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        let Some(own) = &node.snapshot else {
            return Err(Violation::new(
                "check_snapshot_needed_only_after_compaction",
                format!("{} has no snapshot but compacted", node.id),
            ));
        };
        let slot = own.slot;
        // The application's own snapshot: the replica sends the membership it knows in force
        // after the slot.
        let snapshot = Snapshot {
            slot,
            data: node.snapshot_data(),
            membership: None,
        };
        let id = node.id;
        let replica = node.replica.as_mut().expect("a live node raised the event");
        match replica.send_snapshot(follower, &snapshot) {
            Ok(()) => {}
            // The same ready removed the follower from the membership after it asked: it no
            // longer needs the snapshot.
            Err(SendSnapshotError::UnknownNode(_))
                if !replica
                    .membership()
                    .is_some_and(|membership| membership.contains(follower)) =>
            {
                self.note(format!(
                    "{id}: no snapshot for {follower}, removed meanwhile"
                ));
                return Ok(());
            }
            // The snapshot is older than the first membership this replica knows (it joined
            // after it was taken): a fresh one, at the applied mark, is not.
            Err(SendSnapshotError::UnknownMembership { slot }) if !retried => {
                self.note(format!(
                    "{id}: no membership known at {slot}, snapshots again"
                ));
                self.compact(index, false)?;
                return self.send_snapshot_once(index, follower, true);
            }
            Err(error) => return Err(Violation::new("send_snapshot", format!("{id}: {error}"))),
        }
        self.stats.snapshots_sent += 1;
        self.note(format!("{id}: snapshot at {slot} sent to {follower}"));
        Ok(())
    }

    /// Node `index`'s replica installed a snapshot from a peer: the application restores its
    /// state machine from it and saves it as its own snapshot (the caller then compacts the
    /// disks through it), all before the ready's write.
    fn install_snapshot(&mut self, index: usize, snapshot: Snapshot) -> Result<(), Violation> {
        self.checker.on_snapshot(snapshot.slot, &snapshot.data)?;
        self.checker.on_snapshot_installed(index, snapshot.slot)?;
        snapshot.hash(&mut self.trace);
        let node = &mut self.nodes[index];
        let id = node.id;
        if snapshot.slot < node.next_apply {
            return Err(Violation::new(
                "check_applied_in_order",
                format!(
                    "{id} installed a snapshot of slot {} after applying slot {}",
                    snapshot.slot,
                    node.next_apply - 1
                ),
            ));
        }
        let kv_bytes = node.kv.as_ref().map(|_| snapshot.data.to_vec());
        if let Some(bytes) = &kv_bytes {
            let restored = crate::kv::KvStateMachine::restore(bytes).map_err(|error| {
                Violation::new("check_snapshot_restores", format!("{id}: {error}"))
            })?;
            node.kv = Some(restored);
        }
        if snapshot.membership.is_none() {
            return Err(Violation::new(
                "check_snapshot_carries_membership",
                format!(
                    "{id} installed a snapshot of slot {} without its membership",
                    snapshot.slot
                ),
            ));
        }
        node.snapshot = Some(AppSnapshot {
            slot: snapshot.slot,
            kv: kv_bytes,
            membership: snapshot.membership.clone(),
        });
        node.save_snapshot_on_disks(&snapshot)?;
        node.applied_membership = snapshot.membership.clone();
        node.next_apply = snapshot.slot + 1;
        self.stats.snapshots_installed += 1;
        self.note(format!(
            "{id}: installed a snapshot of slot {}",
            snapshot.slot
        ));
        Ok(())
    }

    fn apply(&mut self, index: usize, committed: Vec<Entry>) -> Result<(), Violation> {
        for entry in committed {
            let node = &mut self.nodes[index];
            if entry.slot != node.next_apply {
                return Err(Violation::new(
                    "check_applied_in_order",
                    format!(
                        "{} applied slot {} but expected {}",
                        node.id, entry.slot, node.next_apply
                    ),
                ));
            }
            node.next_apply += 1;
            if let Value::Membership(membership) = &entry.value {
                node.applied_membership = Some(MembershipAt {
                    slot: entry.slot,
                    membership: (**membership).clone(),
                });
            }
            if let Value::Command { id, .. } = &entry.value {
                if node.pending.remove(id) {
                    self.stats.acknowledged += 1;
                    self.checker.on_acknowledged(*id);
                }
            }
            entry.hash(&mut self.trace);
            self.checker.on_applied(index, &entry)?;
            let node = &mut self.nodes[index];
            if let (Some(kv), Value::Command { id, data }) = (node.kv.as_mut(), &entry.value) {
                let response = kv.apply(entry.slot, data);
                if let Some((client, sequence)) = node.kv_waiters.remove(id) {
                    if let Some(clients) = self.clients.as_mut() {
                        clients.on_response(client, sequence, self.now, response);
                    }
                }
            }
        }
        Ok(())
    }
}

/// FNV-1a, 64-bit: a stable hash for traces (std's hashers are not promised stable).
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
