//! A sharded bank with cross-shard transfers: accounts are placed on shards by a
//! consistent-hash [`ring`](synod::ring), every shard is a synod Paxos group, and a transfer
//! between shards is a two-phase commit ([`synod::twopc`]) whose decisions live in one more
//! Paxos group, the ledger, so that a coordinator crash blocks no one. Clients speak the Redis
//! protocol (RESP2): `redis-cli` is a client.
//!
//! Every process hosts one replica of every group (the ledger, group 0, and shards 1 to
//! `--shards`), each with its own [`FileStorage`] directory, its own TCP port and its own
//! [`Driver`]; any process serves any client.
//!
//! # Run a three-node bank with two shards on one machine
//!
//! ```text
//! cargo build --release --example bank --features net
//! PEERS=1=127.0.0.1:7201,2=127.0.0.1:7211,3=127.0.0.1:7221   # group g uses port + g
//! target/release/examples/bank --id 1 --peers $PEERS --client 127.0.0.1:6500 --data /tmp/bank1 &
//! target/release/examples/bank --id 2 --peers $PEERS --client 127.0.0.1:6501 --data /tmp/bank2 &
//! target/release/examples/bank --id 3 --peers $PEERS --client 127.0.0.1:6502 --data /tmp/bank3 &
//! redis-cli -p 6500 shard alice; redis-cli -p 6500 shard carol   # 1 and 2 (of 2 shards)
//! redis-cli -p 6500 deposit alice 100          # :100, alice's balance
//! redis-cli -p 6501 transfer alice carol 30    # +COMMITTED tN (N: the transaction's id)
//! redis-cli -p 6502 transfer alice carol 500   # -ABORTED tN ... (not enough money)
//! redis-cli -p 6500 balance carol              # :30
//! redis-cli -p 6501 audit                      # this node's view: total, prepared, pending
//! ```
//!
//! # Commands
//!
//! - `DEPOSIT account amount [KEY k]`, `WITHDRAW account amount [KEY k]`: `:balance` after
//!   it; a withdrawal beyond the balance less what prepared transfers hold answers
//!   `-INSUFFICIENT`. One entry in the account's shard.
//! - `TRANSFER from to amount [KEY k]`: `+COMMITTED tN` or `-ABORTED tN ...` (a participant
//!   voted no: not enough money, or the votes did not come in time). Two accounts on one
//!   shard still go through the ledger, with that shard the only participant.
//!   `+COMMITTED` comes once the commit is visible: the ledger decided it and every shard
//!   of the transfer has applied the decision (this node's replica of each shard has, or
//!   the ledger's `Forget` says all have), so a `BALANCE`, `DEPOSIT` or `WITHDRAW` sent
//!   after it, on any node, includes it. A commit not visible within the request timeout
//!   answers `-TRYAGAIN tN is committed, but not every shard ... has applied it yet`
//!   (`TXN N` tells when it is). `-ABORTED` comes on the ledger's decision: the shards
//!   release the debit they held just after, so a `WITHDRAW` right after it may still meet
//!   it as held (`-INSUFFICIENT ... held by transfers under way`).
//! - `BALANCE account`: `:balance`, linearizable: by read-index on the shard's group (its
//!   leader confirms it leads; this node answers once it has applied what the leader had
//!   chosen), through the shard's log if no leader answers.
//! - `TXN n`: `+COMMITTED`, `+ABORTED`, `+PENDING`, `+FORGOTTEN` or `+UNKNOWN`, from this
//!   node's copy of the ledger once read-index says it holds every decision made before the
//!   command (`-TRYAGAIN` if no ledger leader confirms). `+COMMITTED`, like `TRANSFER`'s,
//!   comes once the commit is visible to every read (it waits for that up to the request
//!   timeout, then answers `-TRYAGAIN ... is committed, but not every shard ...`); only a
//!   transfer too old for the ledger to know its shards any more (its `Forget` logged: every
//!   shard had applied it) is answered at once. The ledger keeps the outcomes of
//!   the last 110 000 transfers decided (`OUTCOMES_MAX`, more than the keys it remembers, so
//!   a keyed retry always finds its transfer's outcome), an abort at the 2PC decision log's
//!   floor included (a transfer whose first `Decide` comes in after the log dropped that
//!   many later ones is aborted there without being recorded in the log). `+FORGOTTEN`: no
//!   outcome is kept and `n` is at or below the highest transaction forgotten (if it was a
//!   transfer, it was decided long ago); `+UNKNOWN`: above that, no such transfer (yet).
//! - `SHARD account`: `:shard`. `AUDIT`: `*3 :total :prepared :pending`, the sum of the
//!   balances, the transactions prepared at the shards and the transfers not yet decided,
//!   as this node's replicas have applied them, without read-index (not linearizable: a
//!   lagging replica may not have applied a transfer answered `+COMMITTED` elsewhere; and
//!   consistent only when nothing is in flight).
//! - `INFO`, `PING`, `QUIT`.
//!
//! A client connection that sends nothing for `--client-idle-secs` (300; 0: never) while no
//! command of its runs is closed (a transfer waiting for its decision is not idle); client
//! connections have TCP keep-alive. The bank has no `SYNOD.*` operator commands.
//!
//! **Snapshots.** Every `--snapshot-every` applied slots a group's state machine is encoded
//! under its lock (the ledger's or the shard's: the commands of that group wait meanwhile),
//! and the group's log compacted through it by a task of its own, one compaction per group
//! at a time. A large group pauses for tens of milliseconds each time (release build: about
//! 14 ms for a full ledger, 3.4 MB, and 20 ms for a shard of 100 000 accounts, 3.8 MB). A
//! clone to encode off the lock would hold the lock longer than that (about 21 and 44 ms
//! for the same states). A peer's snapshot this node cannot restore (a peer running
//! another program or version) stops it with `bank[N]: fatal: ...` and exit status 1;
//! restarted, it refuses the snapshot it saved with the same reason. (The ledger's
//! snapshot now holds the outcomes it keeps: a snapshot of an older build does not
//! restore.)
//!
//! **Retries.** A command that cannot reach the cluster within 10 s answers `-TRYAGAIN`: it
//! may or may not have taken effect. `KEY k` (a number, unique per intended operation
//! across all clients) makes a retry safe: every group remembers the last 100 000 keys and
//! answers a repeat with the first answer (for a transfer: the same transaction, and its
//! outcome: `+COMMITTED tN` or `-ABORTED tN`, at once if it is decided). Without a
//! key the node makes one up per command, so its own re-proposals are safe, but a client's
//! retry is a new operation.
//!
//! # How a transfer runs
//!
//! 1. The serving node proposes `Begin` to the ledger; the transaction's id is its slot.
//! 2. The ledger's leader runs the [`Coordinator`](synod::twopc::Coordinator). Its vote
//!    requests are proposed to the shards' logs; every replica of a shard steps its copy of
//!    the shard's [`Participant`](synod::twopc::Participant) with them and decides the vote
//!    from the same balances (yes: the debit is held). The vote is the replica's output,
//!    which the coordinator's process reads off its own replica of the shard.
//! 3. The decision is proposed to the ledger (the first one logged wins), then to the
//!    shards, which apply or release what they held and acknowledge; once every shard
//!    acknowledged a commit, the coordinator logs its `Forget` in the ledger. The serving
//!    node answers a commit once its own replicas of the transfer's shards have applied the
//!    decision (or the `Forget` is in its ledger), not on the ledger's decision alone: a
//!    read-index read of a shard includes every entry chosen before it, and a replica
//!    applies chosen entries only.
//! 4. A new ledger leader recovers the coordinator from its ledger, begins again every
//!    transfer begun and not decided, and asks for the decision of every transaction its
//!    replicas of the shards hold prepared (presumed abort for the unknown ones).
//!
//! The state machines and that wiring are in `bank/state.rs`, tested in memory with
//! faults (`cargo test --example bank --features net`); `tests/bank_processes.rs` runs three
//! of these processes, kills leaders with `SIGKILL` under a load of transfers, and checks
//! that no money was made or lost and that every answered transfer's effect is there.

#[path = "kv/resp.rs"]
mod resp;
#[path = "bank/state.rs"]
mod state;
#[path = "support/mod.rs"]
mod support;

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use state::{
    Answer, Coordination, Entry, Key, Ledger, Origin, Placement, Shard, Transfer, TxnStatus, LEDGER,
};
use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use support::{After, Unanswered};
use synod::driver::{Applied, Committed, Driver, DriverConfig, Handle};
use synod::storage::Snapshot;
use synod::transport::tcp::TcpTransport;
use synod::twopc::{Outcome, TxnId};
use synod::{Ballot, FileStorage, FileStorageOptions, NodeId, Replica, Role, Slot, Storage, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

const REQUEST_LIMITS: resp::Limits = resp::Limits {
    args_max: 16,
    arg_bytes_max: 4096,
    request_bytes_max: 64 * 1024,
    inline_bytes_max: 64 * 1024,
};

/// A sharded bank with cross-shard transfers (see the module documentation).
#[derive(Parser, Debug)]
#[command(
    name = "bank",
    about = "A sharded bank: Paxos groups per shard, two-phase commit across them (synod, Redis protocol)"
)]
struct Args {
    /// --peers gives each node's base address; group g (0: the ledger) listens on port + g.
    #[command(flatten)]
    node: support::NodeArgs,
    /// Where clients connect.
    #[arg(long)]
    client: SocketAddr,
    /// Shards (the same on every node: it places the accounts).
    #[arg(long, default_value_t = 2)]
    shards: u64,
    /// Ticks the coordinator waits for every vote before aborting.
    #[arg(long, default_value_t = 300)]
    vote_ticks: u64,
    /// Ticks between the coordinator's resends of an unanswered vote request or decision.
    #[arg(long, default_value_t = 50)]
    resend_ticks: u64,
    /// Ticks between the coordinator's questions about transactions prepared at the shards.
    #[arg(long, default_value_t = 100)]
    query_ticks: u64,
    /// Snapshot and compact a group every this many applied slots (0: never).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Client connections served at once.
    #[arg(long, default_value_t = 1024)]
    connections_max: usize,
    #[command(flatten)]
    clients: support::ClientArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = args.node.node_id() {
        eprintln!("{error}");
        return ExitCode::from(2);
    }
    support::run_server("bank", serve(args))
}

/// A group's state machine and the clients waiting on it.
struct Group<M> {
    machine: M,
    slot: Slot,
    /// Entries proposed through this node, by request number, waiting for their answer.
    waiters: HashMap<u64, oneshot::Sender<Answer>>,
    role: Role,
    /// Snapshots installed from a peer since this process started.
    installed: u64,
}

impl<M> Group<M> {
    fn new(machine: M, slot: Slot) -> Group<M> {
        Group {
            machine,
            slot,
            waiters: HashMap::new(),
            role: Role::Follower,
            installed: 0,
        }
    }

    fn answer(&mut self, node: NodeId, origin: Option<Origin>, answer: Option<Answer>) {
        if let (Some(origin), Some(answer)) = (origin, answer) {
            if origin.node == node.0 {
                if let Some(waiter) = self.waiters.remove(&origin.request) {
                    let _ = waiter.send(answer);
                }
            }
        }
    }
}

/// The ledger's replica here, and the clients waiting for decisions.
struct LedgerState {
    group: Group<Ledger>,
    decisions: HashMap<TxnId, Vec<oneshot::Sender<Outcome>>>,
}

/// Everything a node shares between its tasks. Lock order: the ledger, then the
/// coordination; a shard's lock is never held with another.
struct Bank {
    id: NodeId,
    placement: Placement,
    /// The first half of the keys this node makes up (new at every start, never 0).
    boot: u64,
    next_request: AtomicU64,
    ledger: Mutex<LedgerState>,
    shards: Vec<Mutex<Group<Shard>>>,
    coordination: Mutex<Coordination>,
    proposals: mpsc::UnboundedSender<(u64, Entry)>,
    /// Per group (the ledger first), the last slot its state machine applied here: reads by
    /// read-index wait on it.
    applied: Vec<watch::Sender<Slot>>,
    /// Reads answered by read-index (`BALANCE`, `TXN`) since this process started.
    reads_by_index: AtomicU64,
}

impl Bank {
    fn ledger(&self) -> MutexGuard<'_, LedgerState> {
        self.ledger.lock().expect("ledger lock poisoned")
    }

    fn shard(&self, shard: u64) -> MutexGuard<'_, Group<Shard>> {
        self.shards[shard as usize - 1]
            .lock()
            .expect("shard lock poisoned")
    }

    fn coordination(&self) -> MutexGuard<'_, Coordination> {
        self.coordination
            .lock()
            .expect("coordination lock poisoned")
    }

    /// Hands the coordinator's proposals to the proposing task.
    fn forward(&self, coordination: &mut Coordination) {
        for proposal in coordination.take_proposals() {
            let _ = self.proposals.send(proposal);
        }
    }
}

/// A group's cluster id: the bank's, with the group number in the low 16 bits, so that no
/// message of one group is ever taken for another's.
fn cluster_id(bank: u64, group: u64) -> u64 {
    (bank << 16) | group
}

async fn serve(args: Args) -> Result<(), Box<dyn Error>> {
    let id = NodeId(args.node.id);
    let placement = Placement::new(args.shards)?;
    let coordination = Coordination::new(placement.clone(), args.vote_ticks, args.resend_ticks)?;
    if args.node.cluster_id >= 1 << 47 {
        return Err("--cluster-id must be below 2^47".into());
    }
    let listener = TcpListener::bind(args.client)
        .await
        .map_err(|error| format!("cannot listen for clients on {}: {error}", args.client))?;

    // Every group's storage, replica, transport and driver.
    let mut handles = Vec::new();
    let mut committed_streams = Vec::new();
    let mut drivers = Vec::new();
    let mut ledger = None;
    let mut shards = Vec::new();
    for group in 0..=args.shards {
        let mut peers = BTreeMap::new();
        for (node, address) in &args.node.peers {
            let port = u16::try_from(u64::from(address.port()) + group)
                .map_err(|_| format!("node {node}'s port + {group} is not a port"))?;
            peers.insert(*node, SocketAddr::new(address.ip(), port));
        }
        let cluster = cluster_id(args.node.cluster_id, group);
        let mut storage = FileStorage::open(
            args.node.data.join(format!("group-{group}")),
            cluster,
            id,
            FileStorageOptions::default(),
        )?;
        let recovered = storage.recover()?;
        let snapshot = storage.load_snapshot()?;
        let applied = snapshot.as_ref().map_or(0, |snapshot| snapshot.slot);
        if group == LEDGER {
            let machine = match &snapshot {
                Some(snapshot) => Ledger::restore(&snapshot.data).map_err(|error| {
                    format!("the ledger's snapshot cannot be restored: {error}")
                })?,
                None => Ledger::new(),
            };
            ledger = Some(Group::new(machine, applied));
        } else {
            let machine = match &snapshot {
                Some(snapshot) => Shard::restore(group, &snapshot.data).map_err(|error| {
                    format!("shard {group}'s snapshot cannot be restored: {error}")
                })?,
                None => Shard::new(group),
            };
            shards.push(Mutex::new(Group::new(machine, applied)));
        }
        let mut config = args.node.replica_config(id);
        config.cluster_id = cluster;
        config.applied = applied;
        let replica = Replica::new(config, recovered)?;
        let mut tcp = args.node.tcp_config(id);
        tcp.cluster_id = cluster;
        tcp.listen_address = peers[&id];
        tcp.peers = peers;
        let (transport, inbound) = TcpTransport::start(tcp).await?;
        let (driver, handle, committed) = Driver::new(
            replica,
            storage,
            transport,
            support::ticks(args.node.tick_ms, args.node.lease_ticks > 0).boxed(),
            inbound.boxed(),
            DriverConfig::default(),
        );
        drivers.push(tokio::spawn(driver.run()));
        handles.push(handle);
        committed_streams.push(committed);
    }
    let (proposals, proposals_inbox) = mpsc::unbounded_channel();
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    let bank = Arc::new(Bank {
        id,
        placement,
        boot,
        next_request: AtomicU64::new(1),
        ledger: Mutex::new(LedgerState {
            group: ledger.expect("group 0 is the ledger"),
            decisions: HashMap::new(),
        }),
        shards,
        coordination: Mutex::new(coordination),
        proposals,
        applied: (0..handles.len()).map(|_| watch::Sender::new(0)).collect(),
        reads_by_index: AtomicU64::new(0),
    });
    for (group, committed) in committed_streams.into_iter().enumerate() {
        let group = group as u64;
        tokio::spawn(apply_committed(
            bank.clone(),
            group,
            committed,
            handles[group as usize].clone(),
            args.snapshot_every,
        ));
    }
    tokio::spawn(propose(proposals_inbox, handles.clone()));
    tokio::spawn(coordinate(
        bank.clone(),
        handles.clone(),
        args.query_ticks.max(1),
        args.node.tick_ms,
    ));
    eprintln!(
        "bank[{id}]: serving clients on {}, {} shards, groups from {}, data in {}",
        listener.local_addr()?,
        args.shards,
        args.node.peers[&id],
        args.node.data.display()
    );
    // The bank has no SYNOD.* operator commands: nothing to guard.
    let client_policy = support::ClientPolicy {
        idle: args.clients.idle(),
        admin: None,
    };
    tokio::spawn(support::accept_clients(
        format!("bank[{id}]"),
        listener,
        args.connections_max,
        Arc::default(),
        move |stream| {
            let connection = Connection {
                bank: bank.clone(),
                handles: handles.clone(),
            };
            connection.serve(stream, client_policy.clone())
        },
    ));
    let (stopped, index, _) = futures::future::select_all(drivers).await;
    match stopped {
        Ok(Ok(_)) => Err(format!("group {index}'s driver stopped").into()),
        Ok(Err(error)) => Err(format!("group {index}'s driver stopped: {error}").into()),
        Err(error) => Err(format!("group {index}'s driver panicked: {error}").into()),
    }
}

/// Proposes what the coordinator asks for. A refusal (no leader yet) is a lost message:
/// the coordinator resends vote requests and commit decisions, and asks again about what
/// stays prepared.
async fn propose(mut inbox: mpsc::UnboundedReceiver<(u64, Entry)>, mut handles: Vec<Handle>) {
    while let Some((group, entry)) = inbox.recv().await {
        if let Some(handle) = handles.get_mut(group as usize) {
            let _ = handle.propose(entry.encode()).await;
        }
    }
}

/// Runs the coordinator while this node leads the ledger: takes over when leadership
/// starts (or its ballot changes), steps down when it ends, ticks it, and asks on behalf of
/// the shards' participants about what they hold prepared.
async fn coordinate(bank: Arc<Bank>, mut handles: Vec<Handle>, query_ticks: u64, tick_ms: u64) {
    let mut interval = tokio::time::interval(Duration::from_millis(tick_ms.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut led: Option<Ballot> = None;
    let mut ticks: u64 = 0;
    loop {
        interval.tick().await;
        let mut roles = Vec::with_capacity(handles.len());
        for handle in &mut handles {
            match handle.status().await {
                Some(status) => roles.push(status),
                None => return,
            }
        }
        for (index, status) in roles.iter().enumerate().skip(1) {
            bank.shard(index as u64).role = status.role;
        }
        let ledger_status = &roles[LEDGER as usize];
        let leading = (ledger_status.role == Role::Leader).then_some(ledger_status.leader_ballot);
        {
            let mut ledger = bank.ledger();
            ledger.group.role = ledger_status.role;
            let mut coordination = bank.coordination();
            if leading != led {
                coordination.step_down();
                if leading.is_some() {
                    coordination.take_over(&ledger.group.machine);
                }
                led = leading;
            }
            drop(ledger);
            coordination.tick();
            bank.forward(&mut coordination);
        }
        ticks += 1;
        if led.is_some() && ticks % query_ticks == 0 {
            for shard in 1..=bank.shards.len() as u64 {
                let prepared = bank.shard(shard).machine.prepared();
                if !prepared.is_empty() {
                    let mut coordination = bank.coordination();
                    coordination.query(shard, prepared);
                    bank.forward(&mut coordination);
                }
            }
        }
    }
}

async fn apply_committed(
    bank: Arc<Bank>,
    group: u64,
    mut committed: Committed,
    handle: Handle,
    snapshot_every: u64,
) {
    let mut last_snapshot = if group == LEDGER {
        bank.ledger().group.slot
    } else {
        bank.shard(group).slot
    };
    // A compaction under way (its snapshot being encoded or saved): the next waits for it.
    let compacting = Arc::new(AtomicBool::new(false));
    while let Some(applied) = committed.next().await {
        let (slot, data) = match applied {
            Applied::Entry(entry) => match entry.value {
                Value::Command { data, .. } => (entry.slot, Some(data)),
                _ => (entry.slot, None),
            },
            Applied::Snapshot(snapshot) => {
                restore(&bank, group, &snapshot);
                last_snapshot = snapshot.slot;
                bank.applied[group as usize].send_replace(snapshot.slot);
                continue;
            }
        };
        // A snapshot is due (and none is being taken): the state machine's bytes.
        let due = snapshot_every > 0
            && slot >= last_snapshot + snapshot_every
            && !compacting.load(Ordering::Acquire);
        let image = if group == LEDGER {
            apply_ledger(&bank, slot, data.as_deref(), due)
        } else {
            apply_shard(&bank, group, slot, data.as_deref(), due)
        };
        bank.applied[group as usize].send_replace(slot);
        if let Some(image) = image {
            // Encoded under the group's lock (see "Snapshots" in the module documentation);
            // saved and compacted by a task of its own.
            compacting.store(true, Ordering::Release);
            last_snapshot = slot;
            let (mut handle, compacting, id) = (handle.clone(), compacting.clone(), bank.id);
            tokio::spawn(async move {
                let snapshot = Snapshot {
                    slot,
                    data: Bytes::from(image),
                    membership: None,
                };
                if let Err(error) = handle.compact(snapshot).await {
                    eprintln!("bank[{id}]: group {group}: compaction failed: {error}");
                }
                compacting.store(false, Ordering::Release);
            });
        }
    }
}

/// Replaces a group's state with a snapshot from the leader. The answers of the entries it
/// covers are lost: their clients get `-TRYAGAIN` (a retry with the same key is safe).
fn restore(bank: &Bank, group: u64, snapshot: &Snapshot) {
    let id = bank.id;
    if group == LEDGER {
        let machine = Ledger::restore(&snapshot.data).unwrap_or_else(|error| {
            cannot_restore(id, "the ledger", snapshot, &error);
        });
        let mut ledger = bank.ledger();
        ledger.group.machine = machine;
        ledger.group.slot = snapshot.slot;
        ledger.group.waiters.clear();
        ledger.group.installed += 1;
        // Decided meanwhile: their waiters look again (see `wait_decision`).
        ledger.decisions.clear();
        // A coordinator must not run on a state it did not see being built.
        let mut coordination = bank.coordination();
        if coordination.running() {
            coordination.step_down();
            coordination.take_over(&ledger.group.machine);
            bank.forward(&mut coordination);
        }
    } else {
        let machine = Shard::restore(group, &snapshot.data).unwrap_or_else(|error| {
            cannot_restore(id, &format!("shard {group}"), snapshot, &error);
        });
        let mut shard = bank.shard(group);
        shard.machine = machine;
        shard.slot = snapshot.slot;
        shard.waiters.clear();
        shard.installed += 1;
    }
}

/// A peer's snapshot of a group was installed (the log before it is gone, what follows
/// applies to the state it holds) but its state machine cannot take it: going on with the
/// old state would silently depart from the replicated one, so the node stops (exit status
/// 1, the reason on stderr). The driver saved it before handing it out: a restart refuses it
/// too.
fn cannot_restore(id: NodeId, group: &str, snapshot: &Snapshot, error: &str) -> ! {
    support::fatal(
        &format!("bank[{id}]"),
        &format!(
            "a peer's snapshot of {group} (slot {}) was installed, but it cannot be restored: {error}",
            snapshot.slot
        ),
    )
}

/// Applies a ledger entry; returns the ledger's snapshot if one is `due`.
fn apply_ledger(bank: &Bank, slot: Slot, data: Option<&[u8]>, due: bool) -> Option<Vec<u8>> {
    let mut ledger = bank.ledger();
    ledger.group.slot = slot;
    if let Some(data) = data {
        let applied = ledger.group.machine.apply(slot, data);
        let origin = Entry::decode(data).and_then(|entry| entry.origin());
        ledger.group.answer(bank.id, origin, applied.answer);
        if let Some((txn, _)) = &applied.decided {
            // The transfer's outcome as the ledger keeps it: a late copy of a `Decide` about
            // a transfer the log forgot is answered abort there, which is no news of the
            // transfer (its waiters, if any, look again).
            let outcome = ledger.group.machine.outcome(*txn);
            for waiter in ledger.decisions.remove(txn).unwrap_or_default() {
                if let Some(outcome) = outcome {
                    let _ = waiter.send(outcome);
                }
            }
        }
        if applied.begun.is_some() || applied.decided.is_some() {
            let mut coordination = bank.coordination();
            if let Some((txn, transfer)) = &applied.begun {
                coordination.begun(*txn, transfer);
            }
            if let Some((txn, decided)) = &applied.decided {
                coordination.logged(*txn, decided);
            }
            bank.forward(&mut coordination);
        }
    }
    due.then(|| ledger.group.machine.snapshot())
}

/// Applies a shard entry; hands the participant's messages to the coordinator (if it runs
/// here); returns the shard's snapshot if one is `due`.
fn apply_shard(
    bank: &Bank,
    group: u64,
    slot: Slot,
    data: Option<&[u8]>,
    due: bool,
) -> Option<Vec<u8>> {
    let mut shard = bank.shard(group);
    shard.slot = slot;
    let mut messages = Vec::new();
    if let Some(data) = data {
        let applied = shard.machine.apply(data);
        let origin = Entry::decode(data).and_then(|entry| entry.origin());
        shard.answer(bank.id, origin, applied.answer);
        messages = applied.messages;
    }
    let image = due.then(|| shard.machine.snapshot());
    drop(shard);
    if !messages.is_empty() {
        let mut coordination = bank.coordination();
        coordination.deliver(messages);
        bank.forward(&mut coordination);
    }
    image
}

struct Connection {
    bank: Arc<Bank>,
    handles: Vec<Handle>,
}

impl support::Commands for Connection {
    async fn command(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> After {
        let name = args[0].to_ascii_uppercase();
        if name == b"QUIT" {
            resp::simple(out, "OK");
            return After::Close;
        }
        if let Err(error) = self.execute(&name, args, out).await {
            resp::error(out, &error);
        }
        After::Continue
    }
}

/// The text of argument `index`.
fn text(args: &[Bytes], index: usize) -> String {
    String::from_utf8_lossy(&args[index]).into_owned()
}

/// Argument `index`, an account name: UTF-8 (decoding other bytes lossily would give two
/// different names one account).
fn account_name(args: &[Bytes], index: usize) -> Result<String, String> {
    std::str::from_utf8(&args[index])
        .map(str::to_owned)
        .map_err(|_| "ERR account names must be UTF-8".to_string())
}

/// Argument `index`, a number.
fn number<T: std::str::FromStr>(args: &[Bytes], index: usize) -> Result<T, String> {
    text(args, index)
        .parse()
        .map_err(|_| format!("ERR '{}' is not a number", text(args, index)))
}

/// An optional trailing `KEY k`, from argument `index` on.
fn client_key(args: &[Bytes], index: usize) -> Result<Option<u64>, String> {
    match args.len() - index {
        0 => Ok(None),
        2 if args[index].eq_ignore_ascii_case(b"KEY") => number(args, index + 1).map(Some),
        _ => Err("ERR syntax error: only KEY k may follow".to_string()),
    }
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream, policy: support::ClientPolicy) {
        support::serve_resp(&mut self, &mut stream, &REQUEST_LIMITS, 16 * 1024, &policy).await;
    }

    /// Runs one command and appends its reply to `out`; an error is the error reply.
    async fn execute(
        &mut self,
        name: &[u8],
        args: &[Bytes],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match (name, args.len()) {
            (b"PING", 1) => resp::simple(out, "PONG"),
            (b"DEPOSIT" | b"WITHDRAW", 3 | 5) => {
                let account = account_name(args, 1)?;
                state::check_name(&account).map_err(|error| format!("ERR {error}"))?;
                let amount: i64 = number(args, 2)?;
                state::check_amount(amount).map_err(|error| format!("ERR {error}"))?;
                let key = client_key(args, 3)?;
                let delta = if name == b"DEPOSIT" { amount } else { -amount };
                let shard = self.bank.placement.shard(&account);
                let answer = self
                    .run(
                        shard,
                        |origin, key| Entry::Adjust {
                            origin,
                            key,
                            account,
                            delta,
                        },
                        key,
                    )
                    .await?;
                match answer {
                    Answer::Balance { balance, .. } => resp::integer_reply(out, balance),
                    Answer::Insufficient { balance, held } => {
                        return Err(format!(
                            "INSUFFICIENT balance {balance}, held by transfers under way {held}"
                        ))
                    }
                    other => return Err(failure(other)),
                }
            }
            (b"BALANCE", 2) => {
                let account = account_name(args, 1)?;
                state::check_name(&account).map_err(|error| format!("ERR {error}"))?;
                let shard = self.bank.placement.shard(&account);
                if self.read_index(shard).await {
                    let (balance, _) = self.bank.shard(shard).machine.balance(&account);
                    resp::integer_reply(out, balance);
                    return Ok(());
                }
                let answer = self
                    .run(shard, |origin, _| Entry::Read { origin, account }, None)
                    .await?;
                match answer {
                    Answer::Balance { balance, .. } => resp::integer_reply(out, balance),
                    other => return Err(failure(other)),
                }
            }
            (b"TRANSFER", 4 | 6) => {
                let transfer = Transfer {
                    from: account_name(args, 1)?,
                    to: account_name(args, 2)?,
                    amount: number(args, 3)?,
                };
                transfer.check().map_err(|error| format!("ERR {error}"))?;
                let key = client_key(args, 4)?;
                let answer = self
                    .run(
                        LEDGER,
                        |origin, key| Entry::Begin {
                            origin,
                            key,
                            transfer,
                        },
                        key,
                    )
                    .await?;
                let txn = match answer {
                    Answer::Begun(txn) => txn,
                    other => return Err(failure(other)),
                };
                let deadline = tokio::time::Instant::now() + support::REQUEST_TIMEOUT;
                match self.wait_decision(txn, deadline).await {
                    // Answered once a read of the accounts cannot miss it.
                    Some(TxnStatus::Decided(Outcome::Commit)) => {
                        if !self.wait_commit_visible(txn, deadline).await {
                            return Err(not_yet_applied(txn));
                        }
                        resp::simple(out, &format!("COMMITTED {txn}"))
                    }
                    Some(TxnStatus::Decided(Outcome::Abort)) => {
                        return Err(format!(
                            "ABORTED {txn} (not enough money, or the votes did not come in time)"
                        ))
                    }
                    Some(TxnStatus::Forgotten | TxnStatus::Unknown) => {
                        return Err(format!(
                            "FORGOTTEN {txn} was decided long ago and its outcome is no longer kept"
                        ))
                    }
                    Some(TxnStatus::Pending) | None => {
                        return Err(format!(
                            "TRYAGAIN {txn} is not decided yet; ask with TXN {}",
                            txn.0
                        ))
                    }
                }
            }
            (b"TXN", 2) => {
                let txn = TxnId(number(args, 1)?);
                if !self.read_index(LEDGER).await {
                    return Err("TRYAGAIN no leader confirmed the ledger's state".into());
                }
                let status = self.bank.ledger().group.machine.status(txn);
                if status == TxnStatus::Decided(Outcome::Commit) {
                    let deadline = tokio::time::Instant::now() + support::REQUEST_TIMEOUT;
                    if !self.wait_commit_visible(txn, deadline).await {
                        return Err(not_yet_applied(txn));
                    }
                }
                let answer = match status {
                    TxnStatus::Decided(Outcome::Commit) => "COMMITTED",
                    TxnStatus::Decided(Outcome::Abort) => "ABORTED",
                    TxnStatus::Pending => "PENDING",
                    TxnStatus::Forgotten => "FORGOTTEN",
                    TxnStatus::Unknown => "UNKNOWN",
                };
                resp::simple(out, answer);
            }
            (b"SHARD", 2) => {
                let account = account_name(args, 1)?;
                resp::integer_reply(out, self.bank.placement.shard(&account) as i64);
            }
            (b"AUDIT", 1) => {
                let (mut total, mut prepared) = (0, 0);
                for shard in 1..=self.bank.shards.len() as u64 {
                    let shard = self.bank.shard(shard);
                    total += shard.machine.total();
                    prepared += shard.machine.prepared().len();
                }
                let pending = self.bank.ledger().group.machine.pending_count();
                resp::array(out, 3);
                resp::integer_reply(out, total);
                resp::integer_reply(out, prepared as i64);
                resp::integer_reply(out, pending as i64);
            }
            (b"INFO", 1) => {
                let info = self.info();
                resp::bulk(out, Some(info.as_bytes()));
            }
            _ => {
                return Err(format!(
                    "ERR unknown command or wrong number of arguments: '{}'",
                    String::from_utf8_lossy(name)
                ))
            }
        }
        Ok(())
    }

    /// `INFO`: one `field:value` line each, as this node sees it.
    fn info(&self) -> String {
        let bank = &self.bank;
        let mut lines = vec![
            format!("node:{}", bank.id),
            format!("shards:{}", bank.shards.len()),
            format!(
                "reads_by_index:{}",
                bank.reads_by_index.load(Ordering::Relaxed)
            ),
        ];
        {
            let ledger = bank.ledger();
            lines.push(format!("ledger_role:{:?}", ledger.group.role));
            lines.push(format!("ledger_applied:{}", ledger.group.slot));
            lines.push(format!("ledger_installed:{}", ledger.group.installed));
            lines.push(format!("pending:{}", ledger.group.machine.pending_count()));
        }
        let running = bank.coordination().running();
        lines.push(format!(
            "coordinator:{}",
            if running { "here" } else { "elsewhere" }
        ));
        for shard in 1..=bank.shards.len() as u64 {
            let group = bank.shard(shard);
            lines.push(format!("shard{shard}_role:{:?}", group.role));
            lines.push(format!("shard{shard}_applied:{}", group.slot));
            lines.push(format!(
                "shard{shard}_accounts:{}",
                group.machine.accounts()
            ));
            lines.push(format!(
                "shard{shard}_prepared:{}",
                group.machine.prepared().len()
            ));
        }
        lines.join("\r\n") + "\r\n"
    }

    /// Proposes the entry `make(origin, key)` to `group` (again, until applied here or timed
    /// out) and returns its answer. The key is the client's, or one made up here.
    async fn run(
        &mut self,
        group: u64,
        make: impl FnOnce(Origin, Key) -> Entry,
        client_key: Option<u64>,
    ) -> Result<Answer, String> {
        let bank = self.bank.clone();
        let request = bank.next_request.fetch_add(1, Ordering::Relaxed);
        let origin = Origin {
            node: bank.id.0,
            request,
        };
        let key = match client_key {
            Some(key) => (0, key),
            None => (bank.boot, request),
        };
        let data = make(origin, key).encode();
        let (sender, mut receiver) = oneshot::channel();
        let handle = &mut self.handles[group as usize];
        let result = if group == LEDGER {
            bank.ledger().group.waiters.insert(request, sender);
            let result = support::propose_until_answered(handle, data, &mut receiver).await;
            bank.ledger().group.waiters.remove(&request);
            result
        } else {
            bank.shard(group).waiters.insert(request, sender);
            let result = support::propose_until_answered(handle, data, &mut receiver).await;
            bank.shard(group).waiters.remove(&request);
            result
        };
        result.map(|(answer, _)| answer).map_err(Unanswered::reply)
    }

    /// Waits, without a log entry, until this node's copy of `group` holds every entry
    /// acknowledged before the call (read-index: the group's leader confirms it still leads,
    /// this node applies through the slot it names); false if no leader confirmed it or the
    /// applier did not get there within the request timeout.
    async fn read_index(&mut self, group: u64) -> bool {
        let handle = &mut self.handles[group as usize];
        let reached = support::read_index(handle, &self.bank.applied[group as usize]).await;
        if reached {
            self.bank.reads_by_index.fetch_add(1, Ordering::Relaxed);
        }
        reached
    }

    /// Waits (until `deadline`) for the ledger to decide `txn`: its status once it is not
    /// pending any more (decided, or, for a retried key of a transfer long past, forgotten),
    /// or `None` if it is still pending.
    async fn wait_decision(&self, txn: TxnId, deadline: tokio::time::Instant) -> Option<TxnStatus> {
        loop {
            let receiver = {
                let mut ledger = self.bank.ledger();
                let status = ledger.group.machine.status(txn);
                if status != TxnStatus::Pending {
                    // Decided, or nothing left to wait for: no decision of it will come.
                    return Some(status);
                }
                let (sender, receiver) = oneshot::channel();
                ledger.decisions.entry(txn).or_default().push(sender);
                receiver
            };
            match tokio::time::timeout_at(deadline, receiver).await {
                Ok(Ok(outcome)) => return Some(TxnStatus::Decided(outcome)),
                // A snapshot replaced the ledger: look again.
                Ok(Err(_)) => continue,
                Err(_) => {
                    let mut ledger = self.bank.ledger();
                    if let Some(waiters) = ledger.decisions.get_mut(&txn) {
                        waiters.retain(|waiter| !waiter.is_closed());
                        if waiters.is_empty() {
                            ledger.decisions.remove(&txn);
                        }
                    }
                    return ledger.group.machine.outcome(txn).map(TxnStatus::Decided);
                }
            }
        }
    }

    /// Waits (until `deadline`) until the commit of `txn` is visible to every read of the
    /// accounts it moved ([`Ledger::commit_visible`]): every shard it involves has applied
    /// the decision, as the ledger knows (the coordinator logged its `Forget` once every
    /// shard acknowledged it) or as this node's replicas of the shards show (a replica
    /// applies chosen entries only: the decision is in the shard's log, so a later
    /// `BALANCE` on any node, by read-index or through the log, includes it). The ledger
    /// decides before the shards hear of the decision: answering `+COMMITTED` on the
    /// ledger's word alone let a `BALANCE` sent after it miss the transfer. False if it is
    /// still not visible at the deadline.
    async fn wait_commit_visible(&self, txn: TxnId, deadline: tokio::time::Instant) -> bool {
        let bank = &self.bank;
        let known = |shard: &u64| (1..=bank.shards.len() as u64).contains(shard);
        let shards: Vec<u64> = {
            let ledger = bank.ledger();
            let shards = ledger.group.machine.unacknowledged_commit(txn);
            shards
                .unwrap_or_default()
                .into_iter()
                .filter(known)
                .collect()
        };
        let visible = || {
            // A shard's lock is never held with the ledger's (see `Bank`). Both conditions
            // only ever become true: looking at one lock after the other is enough.
            let applied: Vec<u64> = shards
                .iter()
                .copied()
                .filter(|&shard| bank.shard(shard).machine.commit_applied(txn))
                .collect();
            let ledger = bank.ledger();
            ledger
                .group
                .machine
                .commit_visible(txn, |shard| applied.contains(&shard))
        };
        // Woken by every entry applied to the ledger or to the shards involved (subscribed to
        // before each look, so that nothing applied meanwhile is missed).
        let groups = std::iter::once(LEDGER).chain(shards.iter().copied());
        let mut applied: Vec<watch::Receiver<Slot>> = groups
            .map(|group| bank.applied[group as usize].subscribe())
            .collect();
        loop {
            for receiver in &mut applied {
                receiver.borrow_and_update();
            }
            if visible() {
                return true;
            }
            let changed = futures::future::select_all(
                applied
                    .iter_mut()
                    .map(|receiver| Box::pin(receiver.changed())),
            );
            match tokio::time::timeout_at(deadline, changed).await {
                Ok((Ok(()), _, _)) => {}
                // The applier is gone, or the time is up: one last look.
                Ok((Err(_), _, _)) | Err(_) => return visible(),
            }
        }
    }
}

/// The error reply for a committed transfer whose effect a read could still miss.
fn not_yet_applied(txn: TxnId) -> String {
    format!(
        "TRYAGAIN {txn} is committed, but not every shard it involves has applied it yet; ask with TXN {}",
        txn.0
    )
}

/// The error reply for an answer that is not the one expected.
fn failure(answer: Answer) -> String {
    match answer {
        Answer::Refused(reason) => format!("ERR {reason}"),
        other => format!("ERR unexpected answer {other:?}"),
    }
}
