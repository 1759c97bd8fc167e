//! The simulator's public configuration and statistics: [`Faults`] (fault probabilities and
//! bounds), [`Bugs`] (deliberate application bugs, for testing the checkers), [`SimConfig`]
//! (how to build a [`Simulation`]) and [`SimStats`] (what happened in a run).
//!
//! Plain data, no behaviour beyond the constructors ([`Faults::none`], [`Faults::all`],
//! [`SimConfig::new`]). Invariants: every struct is `#[non_exhaustive]`, so a field can be
//! added without breaking callers, who start from a constructor (or `Default`) and set fields;
//! probabilities are per message or per node per step, in `0.0..=1.0`; every random choice
//! of a run comes from [`SimConfig::seed`].

use crate::config::Config;
use crate::types::NodeId;

// Only named in documentation links.
#[cfg(doc)]
use super::Simulation;
#[cfg(doc)]
use crate::replica::{Event, Replica};
#[cfg(doc)]
use crate::storage::Recovered;
#[cfg(doc)]
use crate::storage::Storage;

/// Fault knobs. Probabilities are per message or per node per step; all in `0.0..=1.0`.
///
/// Start from [`Faults::all`] or [`Faults::none`] and set fields: the struct is
/// `#[non_exhaustive]`, so new faults can be added without breaking your code.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Faults {
    /// A message is dropped.
    pub loss: f64,
    /// A message is delivered twice.
    pub duplicate: f64,
    /// Messages are delayed by `0..=delay_ticks_max` steps, which reorders them.
    pub delay_ticks_max: u64,
    /// A live node crashes (its unfinished writes are lost).
    pub crash: f64,
    /// A crashed node restarts from its disk.
    pub restart: f64,
    /// A new random partition starts (symmetric or one-way).
    pub partition: f64,
    /// All partitions heal.
    pub heal: f64,
    /// Writes complete `0..=write_delay_ticks_max` steps after the ready that asked for them.
    pub write_delay_ticks_max: u64,
    /// At a crash, each unfinished write (in order) reached the disk anyway with this
    /// probability: the node restarts with state it never acknowledged. The rest are lost.
    pub unsynced_kept: f64,
    /// A live node pauses (no ticks, no deliveries; messages to it wait) for up to
    /// `pause_ticks_max` steps.
    pub pause: f64,
    /// The longest pause.
    pub pause_ticks_max: u64,
    /// A link is clogged: messages on it are held for up to `clog_ticks_max` steps.
    pub clog: f64,
    /// The longest clog.
    pub clog_ticks_max: u64,
    /// Each node's clock runs at a rate drawn from `1 ± tick_skew` (ticks per step).
    pub tick_skew: f64,
    /// At a restart, the disk reports corruption (detected by checksums) with this
    /// probability: the node refuses to start and stays down for good. At most a minority of
    /// nodes is ever lost this way. With [file disks](SimConfig::file_disks) one byte of a
    /// synced segment is really flipped, and the restart must find it.
    pub corrupt_disk: f64,
    /// At a crash, the first unfinished write that did not make it whole is torn instead of
    /// lost, with this probability: with [file disks](SimConfig::file_disks) the batch is
    /// written and cut at a random byte, and recovery must drop it whole. (In memory a torn
    /// batch is a lost one: [`Storage::write`] is atomic, so it is counted but changes nothing.)
    pub torn_write: f64,
    /// Not a fault but an application action, at random: a live node snapshots its state
    /// machine at its applied mark and compacts its replica's log and its storage (the model
    /// disk, and the files with [file disks](SimConfig::file_disks)) through that mark. A
    /// restart then starts from the snapshot, and a node that lags behind the compaction point
    /// is sent the snapshot when it asks for compacted slots ([`Event::SnapshotNeeded`] ->
    /// [`Replica::send_snapshot`]) and installs it.
    pub compaction: f64,
    /// Not a fault but an operator's action, at random: the leader hands its leadership over
    /// to another member ([`Replica::transfer_leadership`]).
    pub transfer: f64,
    /// Not a fault but an operator's action, at random: the leader is asked to change the
    /// membership ([`Replica::change_membership`]) to a random target drawn from every node
    /// (the initial ones and the [spare ones](SimConfig::spare_nodes)): add or remove a
    /// learner, promote a learner, demote or remove a voter, add a voter, replace a voter by
    /// another node, or two of these at once, keeping 1 to 5 voters (mostly 3 or more) of
    /// which lost nodes are a minority. A spare node is started (with
    /// [`Config::joining`]) just before the first change that names it. Refusals
    /// (`InProgress`, `Busy`) are normal and counted.
    pub membership: f64,
    /// A live node with a ready to hand out leaves it undrained: it does not call
    /// [`Replica::ready`] for `1..=ready_hold_ticks_max` steps, while messages, ticks and
    /// proposals go on being stepped into its replica (and its writes in flight complete).
    /// The ready then holds everything they produced since: an application busy elsewhere
    /// (applying, or waiting on its transport) drains late, and nothing in the API obliges it
    /// to drain at once.
    pub ready_hold: f64,
    /// The longest hold of a ready ([`ready_hold`](Faults::ready_hold)), in steps.
    pub ready_hold_ticks_max: u64,
    /// A node crashes inside the handling of one ready, with this probability per ready
    /// handed out: half the time after the ready's messages are sent (and its snapshot
    /// installed and its committed entries applied) but before its write reached the disk
    /// (the write is then unfinished: lost, kept or torn as any other), half the time once
    /// its write is durable but before the messages that waited for it are sent.
    pub crash_in_ready: f64,
    /// A node crashes inside the handling of a snapshot, with this probability per snapshot
    /// saved: for a snapshot installed from a peer, half the time after the application saved
    /// it and before it compacted the storage through its slot, half the time after the
    /// compaction but before the ready's write (which records the new chosen mark) reached
    /// the disk; for the node's own snapshot ([`compaction`](Faults::compaction)), after
    /// saving it and before compacting. The node restarts from the saved snapshot and a
    /// storage that does not reflect it (yet).
    pub crash_in_snapshot: f64,
}

impl Faults {
    /// A perfect world: no loss, no delay, no crash.
    pub fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            delay_ticks_max: 0,
            crash: 0.0,
            restart: 0.0,
            partition: 0.0,
            heal: 0.0,
            write_delay_ticks_max: 0,
            unsynced_kept: 0.0,
            pause: 0.0,
            pause_ticks_max: 0,
            clog: 0.0,
            clog_ticks_max: 0,
            tick_skew: 0.0,
            corrupt_disk: 0.0,
            torn_write: 0.0,
            compaction: 0.0,
            transfer: 0.0,
            membership: 0.0,
            ready_hold: 0.0,
            ready_hold_ticks_max: 0,
            crash_in_ready: 0.0,
            crash_in_snapshot: 0.0,
        }
    }

    /// Every fault on, at rates that still let a cluster make progress between them.
    pub fn all() -> Faults {
        Faults {
            loss: 0.05,
            duplicate: 0.02,
            delay_ticks_max: 3,
            crash: 0.002,
            restart: 0.05,
            partition: 0.005,
            heal: 0.03,
            write_delay_ticks_max: 2,
            unsynced_kept: 0.5,
            pause: 0.002,
            pause_ticks_max: 150,
            clog: 0.003,
            clog_ticks_max: 30,
            tick_skew: 0.3,
            corrupt_disk: 0.02,
            torn_write: 0.5,
            compaction: 0.005,
            transfer: 0.003,
            membership: 0.003,
            ready_hold: 0.02,
            ready_hold_ticks_max: 4,
            crash_in_ready: 0.0005,
            crash_in_snapshot: 0.2,
        }
    }
}

/// Deliberately broken application behaviour, to prove that the checkers catch it. Never enable
/// these outside tests of the checkers themselves. Start from `Bugs::default()` (none) and set
/// fields (`#[non_exhaustive]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bugs {
    /// The application sends promises and acceptances before their write is durable (breaks
    /// persistence before promise).
    pub send_before_persist: bool,
    /// The disk acknowledges syncs it does not perform: a crash loses acknowledged writes (the
    /// node forgets promises and acceptances it revealed).
    pub lying_disk: bool,
    /// Key-value reads are served from the local state machine of whichever replica the client
    /// asked, without going through the log (breaks linearizability: stale reads).
    pub stale_reads: bool,
    /// A replica that believes it leads answers key-value reads from its state machine at
    /// once, without confirming its leadership (a leader without read-index or a lease: a
    /// deposed leader that has not noticed serves stale reads).
    pub unconfirmed_reads: bool,
    /// A replica answers a read-index read as soon as it is confirmed, from whatever its
    /// state machine has applied, instead of waiting until it has applied the read's slot
    /// (a follower that lags behind its leader serves stale reads).
    pub reads_before_apply: bool,
    /// With leases (`Config::lease_ticks`): a paused process's clock stops, and it serves
    /// reads under a lease it believes still runs when it wakes (breaks the lease contract).
    pub pauses_stop_clocks: bool,
    /// With file disks: a torn write is left whole in the files while the model counts it
    /// lost (a disk that keeps what it never finished; `check_file_recovery` must notice).
    pub torn_writes_land: bool,
    /// With file disks: corruption hits the last batch of the open segment, which recovery
    /// cannot tell from a torn write and truncates (`check_corruption_detected` must notice).
    pub corruption_in_open_tail: bool,
    /// With [`Faults::membership`]: a spare node is started as a founding member of the
    /// membership it is about to be added to (`Config::new(id, target voters)`, the target's
    /// learners as learners) instead of with [`Config::joining`]: an operator error. The
    /// node believes that membership governs the log from slot 1, knows nothing of the
    /// cluster's history, and campaigns with its guess.
    pub joiner_guesses_membership: bool,
    /// A node restarts with a stale membership list: [`Recovered::memberships`] holds only
    /// the membership it was first started with (`Config::members`; nothing on a node
    /// started to join), which a change may have replaced long ago.
    pub restarts_forget_memberships: bool,
    /// The disk ignores [`WriteBatch::compact_through`](crate::storage::WriteBatch): a
    /// [`Storage`] that misses it. After a crash between saving a snapshot and compacting
    /// ([`Faults::crash_in_snapshot`]), the entries up to the snapshot that the restarted
    /// replica asked the disk to drop stay on it, and the restart after the next one reads
    /// them back as chosen.
    pub storage_ignores_compact_through: bool,
}

/// How to build a simulation. Start from [`SimConfig::new`] and set fields
/// (`#[non_exhaustive]`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// Number of replicas the cluster starts with (ids `1..=nodes`), every one a voter.
    pub nodes: usize,
    /// Spare nodes (ids `nodes + 1..=nodes + spare_nodes`) that [`Faults::membership`] may
    /// add to the cluster. Each is started with [`Config::joining`] just before the first
    /// change that names it (it knows no membership until it learns one), and from then on
    /// crashes, restarts, pauses, partitions and disk faults hit it as any other node.
    pub spare_nodes: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// The faults to inject.
    pub faults: Faults,
    /// Probability per step that the client proposes a new command.
    pub propose_rate: f64,
    /// Template for every replica's [`Config`] (`id`, `members`, `learners`, `join` and `seed`
    /// are set per node).
    pub replica: Config,
    /// Deliberate bugs (all off by default).
    pub bugs: Bugs,
    /// Key-value clients (0: the client proposes opaque commands instead). With clients, every
    /// node runs a [`KvStateMachine`](crate::kv::KvStateMachine) and the clients' history is
    /// checked for linearizability at the end of the liveness phase.
    pub kv_clients: usize,
    /// `None`: disks are in memory. `Some(root)`: every node's disk is also a real
    /// [`FileStorage`](crate::FileStorage) in a fresh directory under `root` (removed when the
    /// simulation is dropped), nodes restart from what it recovers, and torn writes and
    /// corruption are applied to its bytes (see [`Faults::torn_write`]). A tmpfs such as
    /// `/dev/shm` keeps this fast. The [`Bugs`] act on the in-memory model only.
    pub file_disks: Option<std::path::PathBuf>,
}

impl SimConfig {
    /// A simulation of `nodes` replicas with every fault on.
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        let members: Vec<NodeId> = (1..=nodes as u64).map(NodeId).collect();
        let mut replica = Config::new(NodeId(1), members);
        replica.inflight_msgs_max = 8;
        replica.accept_bytes_max = 64;
        // Tight, so that followers refuse Accepts beyond it and leave holes, and candidates
        // check honest promises against the hole bound it sets.
        replica.accept_lookahead_slots_max = 16;
        // Small, so that snapshots travel in many chunks through loss, duplication and
        // reordering.
        replica.snapshot_chunk_bytes = 32;
        SimConfig {
            nodes,
            spare_nodes: 0,
            seed,
            faults: Faults::all(),
            propose_rate: 0.3,
            replica,
            bugs: Bugs::default(),
            kv_clients: 0,
            file_disks: None,
        }
    }
}

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Steps run.
    pub steps: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped by loss or partitions.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Unfinished writes that reached the disk anyway at a crash.
    pub writes_kept: u64,
    /// Pauses injected.
    pub pauses: u64,
    /// Links clogged.
    pub clogs: u64,
    /// Disks found corrupt at restart (nodes lost for good).
    pub corrupt_disks: u64,
    /// Writes lost to crashes.
    pub writes_lost: u64,
    /// Writes torn by crashes (cut inside the batch, with file disks).
    pub writes_torn: u64,
    /// Restarts whose file storage recovery was compared with the model (file disks).
    pub file_recoveries: u64,
    /// Snapshots taken and logs compacted ([`Faults::compaction`]).
    pub compactions: u64,
    /// Restarts that started from a snapshot.
    pub snapshot_restarts: u64,
    /// Snapshots sent to a lagging node.
    pub snapshots_sent: u64,
    /// Snapshots received from a peer and installed.
    pub snapshots_installed: u64,
    /// Commands proposed (accepted by `propose`).
    pub proposed: u64,
    /// Commands committed at the node that proposed them.
    pub acknowledged: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Leadership transfers asked of a leader ([`Faults::transfer`]).
    pub transfers: u64,
    /// Leaders that stepped down because they handed over (the target took over).
    pub transfers_completed: u64,
    /// Transfers abandoned after `election_ticks`.
    pub transfers_aborted: u64,
    /// Key-value operations issued by clients (with `kv_clients`).
    pub kv_operations: u64,
    /// Key-value operations that got their response.
    pub kv_returned: u64,
    /// Key-value reads answered through [`Replica::read_index`](crate::Replica::read_index)
    /// instead of the log.
    pub kv_index_reads: u64,
    /// Reads a leader answered under its lease (`Config::lease_ticks`), without a round (as
    /// counted when the leader next reports a read: a few before a crash may be missed).
    pub lease_reads: u64,
    /// Read-index reads aborted: the leadership ended, or a follower's leader refused or
    /// did not answer (the client retried).
    pub kv_reads_aborted: u64,
    /// Membership changes a leader took ([`Faults::membership`]; `change_membership`
    /// returned a slot).
    pub membership_proposed: u64,
    /// Membership changes a leader refused (`InProgress`, `Busy`: one change at a time).
    pub membership_refused: u64,
    /// Membership changes that fired with no leader to ask, or no valid target to ask for.
    pub membership_skipped: u64,
    /// Configuration entries chosen that changed the membership (per the checkers' count of
    /// durable acceptances).
    pub membership_chosen: u64,
    /// Nodes that became members (voter or learner) through a chosen change.
    pub members_added: u64,
    /// Members that left the membership through a chosen change.
    pub members_removed: u64,
    /// Voters that a chosen change made learners, or learners it made voters.
    pub members_role_changed: u64,
    /// Spare nodes started ([`SimConfig::spare_nodes`]).
    pub spares_started: u64,
    /// Messages a replica refused as coming from a node outside its membership (a reply or a
    /// request from a node removed meanwhile, or not added yet): counted, not a violation.
    pub unknown_sender: u64,
    /// Readies left undrained for a few steps while messages and ticks were stepped in
    /// ([`Faults::ready_hold`]).
    pub readies_held: u64,
    /// Crashes after a ready's messages were sent, before its write reached the disk
    /// ([`Faults::crash_in_ready`]; also counted in `crashes`).
    pub crashes_before_write: u64,
    /// Crashes after a ready's write was durable, before the messages that waited for it
    /// were sent ([`Faults::crash_in_ready`]; also counted in `crashes`).
    pub crashes_after_write: u64,
    /// Crashes after a snapshot (installed from a peer, or the node's own) was saved, before
    /// the storage was compacted through it ([`Faults::crash_in_snapshot`]; also counted in
    /// `crashes`).
    pub crashes_before_compaction: u64,
    /// Crashes after an installed snapshot was saved and the storage compacted, before the
    /// ready's write reached the disk ([`Faults::crash_in_snapshot`]; also counted in
    /// `crashes`).
    pub crashes_after_compaction: u64,
}
