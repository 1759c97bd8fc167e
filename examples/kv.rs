//! A replicated key-value server that speaks the Redis protocol (RESP2): one process per
//! replica, each with its own durable [`FileStorage`], replicating over TCP with the synod
//! [`Driver`] on tokio. `redis-cli` and `redis-benchmark` work against any replica.
//!
//! # Run a three-node cluster on one machine
//!
//! ```text
//! cargo build --release --example kv --features net
//! PEERS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! target/release/examples/kv --id 1 --peers $PEERS --client 127.0.0.1:6379 --data /tmp/kv1 &
//! target/release/examples/kv --id 2 --peers $PEERS --client 127.0.0.1:6380 --data /tmp/kv2 &
//! target/release/examples/kv --id 3 --peers $PEERS --client 127.0.0.1:6381 --data /tmp/kv3 &
//! redis-cli -p 6380 set greeting hello      # any node: followers forward to the leader
//! redis-cli -p 6381 get greeting
//! redis-cli -p 6379 info                    # role, leader, voters, slots, fsyncs, proposals per fsync
//! ```
//!
//! Options: `--cluster-id X` (every node alike; frames of other clusters are refused),
//! `--tick-ms 10` (one replica tick), `--election-ticks 50`, `--heartbeat-ticks 5`,
//! `--connections-max 1024`, `--client-idle-secs 300` (a client connection that sends
//! nothing for that long while no command of its runs is closed; 0: never; every client
//! connection also has TCP keep-alive, so a vanished client is noticed), `--admin-token`
//! (below). `SIGTERM` or ctrl-c stops a node cleanly (the writes in progress
//! finish); `SIGKILL` is a crash, which the node recovers from on restart with the same
//! `--data`. A directory is locked by the process using it ([`StorageError::Locked`]), so two
//! nodes can never share one.
//!
//! # Commands
//!
//! `GET`, `SET key value` (no options), `DEL`, `EXISTS`, `INCR`, `DECR`, `INCRBY`, `DECRBY`,
//! `DBSIZE`, `PING`, `ECHO`, `INFO`, `QUIT`, `SELECT 0`, and minimal `COMMAND` and
//! `CONFIG GET` replies so that `redis-cli` and `redis-benchmark` start quietly. Debugging:
//! `SYNOD.DIGEST` answers `applied_slot:N log_digest:X state_digest:Y keys:K` — replicas
//! that applied the same slots have equal digests exactly when they applied the same entries
//! in the same order (`log_digest` chains every applied entry) and hold the same state
//! (`state_digest` is [`KvStateMachine::digest`]); `SYNOD.LOCALGET key` reads this replica's
//! copy without going through the log (it may be stale: for tests and debugging only).
//!
//! # Operator commands and their token
//!
//! The `SYNOD.*` commands (membership, peers, debugging) reconfigure the cluster. Start
//! every node with `--admin-token TOKEN` (or the `SYNOD_ADMIN_TOKEN` environment variable,
//! which other users of the machine cannot read off the command line), and a connection
//! must send `SYNOD.AUTH TOKEN` (`+OK`; a wrong token: `-WRONGPASS`, and the connection is
//! not authenticated any more) before any other `SYNOD.*` command, which is otherwise
//! answered `-NOAUTH ...`; the data commands stay open to every client. Guessing is slow: a
//! wrong token's `-WRONGPASS` comes after 1 s (that connection waits; no other does), a node
//! answers at most 10 wrong tokens a second in all, and a connection is closed after its
//! third wrong token. The token is compared in constant time. Without a token
//! every client may run them, as before, and the node warns about it at start.
//!
//! ```text
//! export SYNOD_ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64)   # before starting the nodes
//! redis-cli -p 6379 synod.members          # (error) NOAUTH the SYNOD.* commands need ...
//! printf 'synod.auth %s\nsynod.members\n' "$SYNOD_ADMIN_TOKEN" | redis-cli -p 6379   # OK, then the members
//! ```
//!
//! # Membership
//!
//! `--peers` may list more nodes than the cluster starts with: `--members 1,2,3` names the
//! first voters (default: every node in `--peers`). Start a node to add with `--join` (it
//! waits to be told the membership), then ask the leader (`INFO` shows `leader_id`) for
//! `SYNOD.SETMEMBERS 1,2,3 4` (voters, then learners: add n4 as a learner), and once
//! `SYNOD.MEMBERS` on n4 shows it caught up, `SYNOD.SETMEMBERS 1,2,3,4` (promote it), or
//! `SYNOD.SETMEMBERS 2,3,4` (and n1 leaves; a removed leader hands over at once). One
//! change at a time; the reply is the slot of the change.
//!
//! ```text
//! PEERS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,4=127.0.0.1:7004
//! # n1..n3 started with --members 1,2,3, then:
//! target/release/examples/kv --id 4 --join --peers $PEERS --client 127.0.0.1:6382 --data /tmp/kv4 &
//! redis-cli -p 6379 synod.setmembers 1,2,3,4    # at the leader
//! redis-cli -p 6382 synod.members               # "voters 1,2,3,4 learners "
//! ```
//!
//! A node that is not in the others' `--peers` is made known to them while they run:
//! `SYNOD.SETPEER 4 127.0.0.1:7004` on every member before the change (`SYNOD.PEERS` lists a
//! node's peers, `SYNOD.DELPEER 1` forgets a node that left). This is not saved: list the new
//! node in `--peers` when a member restarts.
//!
//! # Semantics
//!
//! - **Writes are acknowledged once durable and applied.** A write is proposed to the log and
//!   answered only after its entry is chosen (accepted, and fsync'd, by a majority) *and*
//!   applied to this replica's state machine. A write that was answered `+OK` survives any
//!   minority of crashes.
//! - **Any replica serves any client: followers forward.** A follower forwards proposals to
//!   the leader (synod's `forward_proposals`) and still answers only once the entry is
//!   applied locally, so a client never needs to know the leader and never follows a
//!   redirection (the alternative, a `-MOVED`-style error, would push that work onto every
//!   client, and plain Redis clients such as `redis-cli` and `redis-benchmark` only report
//!   such an error instead of following it). While no leader is known (an
//!   election), requests wait and are retried; after 10 s the client gets
//!   `-TRYAGAIN`, and the command may or may not have taken effect (as after any timeout).
//! - **Exactly once.** Each connection has a client session in the replicated state machine
//!   ([`synod::session`]). The server retries a proposal that may have been lost (a forwarded
//!   proposal dies with the leader it was forwarded to) with the same session sequence
//!   number, so a retried write is applied once even if both copies are chosen.
//! - **Reads are linearizable, by read-index.** `GET`, `EXISTS` and `DBSIZE` ask the driver
//!   for a read index ([`synod::driver::Handle::read_index`]: the leader confirms with one
//!   round of heartbeats to a quorum, shared by every read waiting; a follower asks the
//!   leader in one request per batch; no log entry and no fsync), wait until the local state
//!   machine has applied that slot and answer from it; it then includes every write
//!   acknowledged before the command started. If no read index can be had (no leader known,
//!   the leadership ended meanwhile, the leader did not answer) a `GET` is proposed through
//!   the log like a write and answered with the value at its slot, and `EXISTS` and `DBSIZE`
//!   propose a read barrier first. (Leases would save the leader's round; not done here.)
//! - **Multi-key commands are not atomic.** `DEL a b` deletes each key with its own log
//!   entry; `EXISTS a b` is a consistent snapshot (one barrier).
//! - **`INCR` is a read and a compare-and-swap** ([`synod::kv`] has no increment), retried on
//!   conflict, so concurrent increments are never lost; it costs two log round trips, and
//!   increments of one key from one node run one at a time. A hot counter is therefore slow
//!   (about one increment per two commits).
//! - **Bounded.** Requests: at most [`ARGS_MAX`] arguments, arguments of at most
//!   [`ARG_BYTES_MAX`] bytes (the largest value), [`REQUEST_BYTES_MAX`] bytes in all. A
//!   malformed or oversized request gets `-ERR Protocol error: ...` and the connection is
//!   closed (the stream cannot be resynchronized); an unknown command or a wrong argument
//!   count gets `-ERR` and the connection stays. At most `--connections-max` clients.
//! - **Snapshots bound the log.** Every `--snapshot-every` applied slots (default 100 000)
//!   the applier snapshots the state machine and the driver saves it and compacts the log
//!   through it ([`synod::driver::Handle::compact`]). A restarted replica restores its last
//!   snapshot and replays the log after it; a replica that fell behind the others' compacted
//!   log is sent their snapshot and starts over from it
//!   ([`synod::driver::Applied::Snapshot`]). Requests waiting on that replica for slots the
//!   snapshot covers are answered with an error (the client retries under its session). A
//!   peer's snapshot this replica cannot restore (a peer running another program or
//!   version) stops it with `kv[N]: fatal: ...` and exit status 1: going on from the old
//!   state would silently depart from the replicated one; restarted, it refuses the
//!   snapshot it saved with the same reason.
//!
//! # Measure throughput and proposals per fsync
//!
//! ```text
//! apt-get install -y redis-tools            # redis-cli and redis-benchmark
//! # start the three nodes as above (release build), then, against the leader:
//! redis-benchmark -p 6379 -t set -n 20000 -c 50 -q        # 50 clients, pipeline depth 1
//! redis-cli -p 6379 info | grep -E 'role|per_sync|syncs|commands_applied'
//! ```
//!
//! or `examples/kv/bench.sh` (`REQUESTS=20000 CLIENTS=50 TESTS=set,get` by default), which
//! starts three release nodes on fresh directories, benchmarks the leader and then a
//! follower, and prints the proposals per fsync of each run from the `INFO` counters before
//! and after it. The README has the figures measured so far. A connection's pipelined
//! commands are committed one after another, so throughput grows with connections, not with
//! `redis-benchmark -P`.
//!
//! `INFO` counts since the process started: `storage_syncs` (fsyncs of the log, from
//! [`FileStorage::sync_count`]), `commands_applied_per_sync` (commands applied per fsync of
//! this node: on the leader, the proposals each fsync covered), `entries_written_per_sync`,
//! and the driver's group-commit factor `driver_batches_per_storage_write` (from
//! [`DriverStats`], via [`Handle::stats`]).
//!
//! # Tests
//!
//! `tests/kv_processes.rs` runs three of these processes on loopback, kills the leader with
//! `SIGKILL` under load, restarts it, and checks that every acknowledged write is on every
//! replica, in the same order.

#[path = "kv/resp.rs"]
mod resp;
#[path = "support/mod.rs"]
mod support;

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use support::{After, Unanswered, REFUSED_BACKOFF, REPROPOSE_INTERVAL, REQUEST_TIMEOUT};
use synod::driver::{Driver, DriverConfig, DriverStats, Handle, ProposalError};
use synod::kv::{Command, KvError, KvLimits, KvStateMachine, Operation, Output, Response};
use synod::session::{ClientId, RequestHeader};
use synod::storage::{Recovered, Snapshot, WriteBatch};
use synod::transport::tcp::{TcpPeers, TcpStatsHandle, TcpTransport};
use synod::{
    Entry, FileStorage, FileStorageOptions, NodeId, ProposalId, Replica, Role, Slot, Storage,
    StorageError, Value,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Arguments in one request, the command name included.
pub const ARGS_MAX: usize = 1024;
/// Bytes of one argument: the largest value the store accepts.
pub const ARG_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of one request.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of an inline (telnet-style) request line.
const INLINE_BYTES_MAX: usize = 64 * 1024;
/// Compare-and-swap rounds an `INCR` tries before giving up under contention.
const INCR_ATTEMPTS_MAX: usize = 64;
/// Stripes of the per-node `INCR` serialization (see [`Node`]).
const INCREMENT_STRIPES: usize = 64;
/// Replies gathered before they are written out mid-pipeline.
const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;

const REQUEST_LIMITS: resp::Limits = resp::Limits {
    args_max: ARGS_MAX,
    arg_bytes_max: ARG_BYTES_MAX,
    request_bytes_max: REQUEST_BYTES_MAX,
    inline_bytes_max: INLINE_BYTES_MAX,
};

/// A replicated key-value server speaking RESP2 (see the module documentation).
#[derive(Parser, Debug)]
#[command(
    name = "kv",
    about = "A replicated key-value server (synod, Redis protocol)"
)]
struct Args {
    #[command(flatten)]
    node: support::NodeArgs,
    /// Where this node serves clients (RESP).
    #[arg(long, default_value = "127.0.0.1:6379")]
    client: SocketAddr,
    /// Client connections served at once.
    #[arg(long, default_value_t = 1024)]
    connections_max: usize,
    /// Snapshot the state machine and compact the log every this many applied slots (0:
    /// never). A peer that falls behind the compacted log is sent the snapshot.
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    #[command(flatten)]
    clients: support::ClientArgs,
    #[command(flatten)]
    admin: support::AdminArgs,
}

fn main() -> ExitCode {
    support::crash_only();
    let args = Args::parse();
    let id = args.node.id;
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv[{id}]: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let id = args.node.node_id()?;
    let client_policy = support::ClientPolicy {
        idle: args.clients.idle(),
        admin: Some(args.admin.gate(&format!("kv[{id}]"))?),
    };
    // The lock first: a second process on this directory stops here, before touching a port.
    let storage = FileStorage::open(
        &args.node.data,
        args.node.cluster_id,
        id,
        FileStorageOptions::default(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, storage, client_policy))
}

/// Counters of the storage, readable while the driver's storage thread owns it.
#[derive(Debug, Default)]
struct StorageMeters {
    syncs: AtomicU64,
    writes: AtomicU64,
    entries_written: AtomicU64,
}

/// A [`FileStorage`] that publishes its counters after every write.
struct MeteredStorage {
    inner: FileStorage,
    meters: Arc<StorageMeters>,
}

impl Storage for MeteredStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.inner.recover()
    }

    fn write(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let entries = batch.entries().count() as u64;
        self.inner.write(batch)?;
        let meters = &self.meters;
        meters
            .syncs
            .store(self.inner.sync_count(), Ordering::Relaxed);
        meters
            .writes
            .store(self.inner.write_count(), Ordering::Relaxed);
        meters.entries_written.fetch_add(entries, Ordering::Relaxed);
        Ok(())
    }

    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(first, last)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.inner.save_snapshot(snapshot)?;
        self.meters
            .syncs
            .store(self.inner.sync_count(), Ordering::Relaxed);
        Ok(())
    }

    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.load_snapshot()
    }

    fn compact(&mut self, through: Slot) -> Result<(), StorageError> {
        Storage::compact(&mut self.inner, through)?;
        self.meters
            .syncs
            .store(self.inner.sync_count(), Ordering::Relaxed);
        Ok(())
    }
}

/// A peer's snapshot (installed by the driver after this node fell behind the compacted log):
/// the state machine starts over from it.
fn install_snapshot(node: &Node, snapshot: &Snapshot) {
    let state = match SnapshotState::decode(snapshot) {
        Ok(state) => state,
        // Checksummed on the wire, so it is what the peer saved: a peer running another
        // program or version, or a bug. The log before it is gone and what follows applies
        // to the state it holds: going on with the old state would silently depart from the
        // replicated one, so the node stops (exit status 1, the reason on stderr). The driver
        // saved the snapshot before handing it out: a restart refuses it too.
        Err(error) => support::fatal(
            &format!("kv[{}]", node.id),
            &format!(
                "a peer's snapshot of slot {} was installed, but it cannot be restored: {error}",
                snapshot.slot
            ),
        ),
    };
    let mut applied = node.applied();
    applied.kv = state.kv;
    applied.slot = state.slot;
    applied.log_digest = state.log_digest;
    applied.commands_applied = state.commands_applied;
    // Requests waiting here were proposed through this node; if they were chosen, the
    // snapshot holds their effect but their responses are gone: the dropped senders tell the
    // connections to answer with an error, and the client retries under its session.
    applied.waiters.clear();
    drop(applied);
    node.applied_slot.send_replace(state.slot);
    eprintln!(
        "kv[{}]: installed a peer's snapshot of slot {}",
        node.id, state.slot
    );
}

/// What a kv snapshot holds: the state machine's own snapshot, plus the applier's counters so
/// that `INFO` (the log digest) stays comparable across replicas.
struct SnapshotState {
    slot: Slot,
    kv: KvStateMachine,
    log_digest: u64,
    commands_applied: u64,
}

impl SnapshotState {
    /// The state to snapshot: a clone of the applier's (it shares the keys and values).
    fn of(applied: &Applied) -> SnapshotState {
        SnapshotState {
            slot: applied.slot,
            kv: applied.kv.clone(),
            log_digest: applied.log_digest,
            commands_applied: applied.commands_applied,
        }
    }

    /// `[log_digest u64 LE][commands_applied u64 LE][KvStateMachine::snapshot()]`.
    fn encode(&self) -> Snapshot {
        let mut data = Vec::new();
        data.extend_from_slice(&self.log_digest.to_le_bytes());
        data.extend_from_slice(&self.commands_applied.to_le_bytes());
        data.extend_from_slice(&self.kv.snapshot());
        Snapshot {
            slot: self.slot,
            data: Bytes::from(data),
            membership: None,
        }
    }

    fn decode(snapshot: &Snapshot) -> Result<SnapshotState, String> {
        let data = &snapshot.data[..];
        if data.len() < 16 {
            return Err(format!("{} bytes is too short", data.len()));
        }
        let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        let kv = KvStateMachine::restore(&data[16..]).map_err(|error| error.to_string())?;
        Ok(SnapshotState {
            slot: snapshot.slot,
            kv,
            log_digest: word(0),
            commands_applied: word(8),
        })
    }
}

/// What the applier maintains, behind one lock.
struct Applied {
    kv: KvStateMachine,
    /// The last slot applied (no-ops included).
    slot: Slot,
    /// A chain of every applied entry: equal on two replicas at the same slot exactly when
    /// they applied the same entries in the same order (up to hash collisions).
    log_digest: u64,
    commands_applied: u64,
    /// Requests of this node's connections waiting for their response, by session and
    /// sequence number. Registered before the proposal, so none is missed.
    waiters: HashMap<(ClientId, u64), oneshot::Sender<Response>>,
    /// Sessions opened by this node's proposals, by proposal id, until the opener takes them.
    opened: HashMap<ProposalId, (ClientId, Slot)>,
}

/// Sessions opened for connections that went away before taking them are forgotten past
/// this many slots.
const OPENED_RETAIN_SLOTS: u64 = 100_000;

/// What every task of the node shares.
struct Node {
    id: NodeId,
    client_address: SocketAddr,
    data: PathBuf,
    applied: Mutex<Applied>,
    /// The last applied slot, for connections waiting for one.
    applied_slot: watch::Sender<Slot>,
    meters: Arc<StorageMeters>,
    transport: TcpStatsHandle,
    /// The transport's peers (`SYNOD.SETPEER`, `SYNOD.DELPEER`, `SYNOD.PEERS`).
    peers: TcpPeers,
    connections: Arc<AtomicUsize>,
    connections_max: usize,
    /// The idle timeout and the operator token of the client connections.
    client_policy: support::ClientPolicy,
    started: Instant,
    /// `INCR`s of keys in the same stripe run one at a time on this node, so that clients of
    /// one node do not make each other's compare-and-swap fail.
    increment_stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Node {
    fn applied(&self) -> MutexGuard<'_, Applied> {
        // Poisoning needs a panic, and a panic aborts the process (see `main`).
        self.applied.lock().expect("applier lock poisoned")
    }
}

async fn serve(
    args: Args,
    storage: FileStorage,
    client_policy: support::ClientPolicy,
) -> Result<(), Box<dyn Error>> {
    let id = NodeId(args.node.id);
    let meters = Arc::new(StorageMeters::default());
    let mut storage = MeteredStorage {
        inner: storage,
        meters: meters.clone(),
    };
    let recovered = storage.recover()?;
    let recovered_slots = recovered.entries.len();
    // The state machine restarts from the last snapshot (if any) and applies what follows.
    let restored = match storage.load_snapshot()? {
        Some(snapshot) => Some(
            SnapshotState::decode(&snapshot)
                .map_err(|error| format!("the saved snapshot cannot be restored: {error}"))?,
        ),
        None => None,
    };
    let mut config = args.node.replica_config(id);
    // The state machine is rebuilt from the snapshot, then from the log after it.
    config.applied = restored.as_ref().map_or(0, |state| state.slot);
    let config_applied = config.applied;
    let replica = Replica::new(config, recovered)?;

    let client_listener = TcpListener::bind(args.client)
        .await
        .map_err(|error| format!("cannot listen for clients on {}: {error}", args.client))?;
    let mut tcp = args.node.tcp_config(id);
    tcp.reconnect_backoff_max = Duration::from_millis(500);
    let (transport, inbound) = TcpTransport::start(tcp).await?;
    let node = Arc::new(Node {
        id,
        client_address: client_listener.local_addr()?,
        data: args.node.data.clone(),
        applied: Mutex::new(match restored {
            Some(state) => Applied {
                kv: state.kv,
                slot: state.slot,
                log_digest: state.log_digest,
                commands_applied: state.commands_applied,
                waiters: HashMap::new(),
                opened: HashMap::new(),
            },
            None => Applied {
                kv: KvStateMachine::new(KvLimits::default()).expect("the default limits are valid"),
                slot: 0,
                log_digest: FNV_OFFSET,
                commands_applied: 0,
                waiters: HashMap::new(),
                opened: HashMap::new(),
            },
        }),
        applied_slot: watch::Sender::new(config_applied),
        meters,
        transport: transport.stats_handle(),
        peers: transport.peers(),
        connections: Arc::new(AtomicUsize::new(0)),
        connections_max: args.connections_max,
        client_policy,
        started: Instant::now(),
        increment_stripes: (0..INCREMENT_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
    });

    let (stop_ticks, ticks_stopped) = futures::channel::oneshot::channel::<()>();
    let ticks = support::ticks(args.node.tick_ms, args.node.lease_ticks > 0)
        .take_until(ticks_stopped)
        .boxed();
    let (driver, handle, committed) = Driver::new(
        replica,
        storage,
        transport,
        ticks,
        inbound.boxed(),
        DriverConfig::default(),
    );
    let mut driver = tokio::spawn(driver.run());
    let applier = tokio::spawn(apply_committed(
        node.clone(),
        committed,
        handle.clone(),
        args.snapshot_every,
    ));
    let role_logger = tokio::spawn(log_role_changes(id, handle.clone()));
    let acceptor = tokio::spawn(support::accept_clients(
        format!("kv[{id}]"),
        client_listener,
        node.connections_max,
        node.connections.clone(),
        {
            let node = node.clone();
            move |stream| {
                let connection = Connection {
                    node: node.clone(),
                    handle: handle.clone(),
                    session: None,
                    next_sequence: 1,
                };
                connection.serve(stream)
            }
        },
    ));
    eprintln!(
        "kv[{id}]: serving clients on {}, peers on {}, data in {} ({recovered_slots} slots recovered)",
        node.client_address,
        args.node.peers[&id],
        args.node.data.display()
    );

    let outcome = tokio::select! {
        result = &mut driver => match result {
            Ok(Ok(_)) => Err("the driver stopped".into()),
            Ok(Err(error)) => Err(format!("the driver stopped: {error}").into()),
            Err(error) => Err(format!("the driver panicked: {error}").into()),
        },
        signal = shutdown_signal() => {
            eprintln!("kv[{id}]: {signal}: stopping");
            acceptor.abort();
            let _ = stop_ticks.send(());
            match tokio::time::timeout(Duration::from_secs(5), &mut driver).await {
                Ok(Ok(Ok(stats))) => {
                    eprintln!("kv[{id}]: stopped cleanly; {}", describe_driver(&stats));
                    Ok(())
                }
                Ok(Ok(Err(error))) => Err(format!("the driver stopped: {error}").into()),
                Ok(Err(error)) => Err(format!("the driver panicked: {error}").into()),
                Err(_) => Err("the driver did not stop within 5 s".into()),
            }
        }
    };
    applier.abort();
    role_logger.abort();
    outcome
}

/// Logs every change of role or leader (polled from the driver's status), for operators and
/// for the logs a failed test prints.
async fn log_role_changes(id: NodeId, mut handle: Handle) {
    let mut last = None;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let Some(status) = handle.status().await else {
            return;
        };
        let now = (status.role, status.leader, status.leader_ballot);
        if last != Some(now) {
            let leader = status
                .leader
                .map_or_else(|| "none".to_string(), |leader| leader.to_string());
            eprintln!(
                "kv[{id}]: {:?}, leader {leader} (ballot {}), chosen slot {}",
                status.role, status.leader_ballot, status.chosen
            );
            last = Some(now);
        }
    }
}

/// Resolves on ctrl-c or `SIGTERM`, naming it.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = terminate.recv() => "terminated",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupted"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

fn describe_driver(stats: &DriverStats) -> String {
    format!(
        "{} ready batches in {} storage writes",
        stats.writes, stats.storage_writes
    )
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The log digest after `entry`: the previous digest, chained with the entry's slot and
/// value (what was chosen, which is the same on every replica).
fn chain_digest(previous: u64, entry: &Entry) -> u64 {
    let mut hash = fnv1a(previous, &entry.slot.to_le_bytes());
    match &entry.value {
        Value::Noop => fnv1a(hash, &[0]),
        Value::Command { id, data } => {
            hash = fnv1a(hash, &[1]);
            for part in [id.node.0, id.incarnation, id.sequence, data.len() as u64] {
                hash = fnv1a(hash, &part.to_le_bytes());
            }
            fnv1a(hash, data)
        }
        Value::Membership(membership) => {
            hash = fnv1a(hash, &[2]);
            for id in membership.voters.iter().chain([&NodeId(0)]) {
                hash = fnv1a(hash, &id.0.to_le_bytes());
            }
            for id in &membership.learners {
                hash = fnv1a(hash, &id.0.to_le_bytes());
            }
            hash
        }
    }
}

/// Applies every committed entry, in slot order, and answers the connections waiting for it.
async fn apply_committed(
    node: Arc<Node>,
    mut committed: synod::driver::Committed,
    handle: Handle,
    snapshot_every: u64,
) {
    // One compaction at a time, off this task: the driver must keep handing out entries
    // while the snapshot is written.
    let compacting = Arc::new(AtomicBool::new(false));
    let mut last_snapshot = node.applied().slot;
    while let Some(applied) = committed.next().await {
        if snapshot_every > 0
            && node.applied().slot >= last_snapshot + snapshot_every
            && !compacting.swap(true, Ordering::AcqRel)
        {
            // A clone of the state shares its keys and values: cheap under the lock, where
            // encoding the whole state would hold up the applier and every reader.
            let state = SnapshotState::of(&node.applied());
            last_snapshot = state.slot;
            let (mut handle, compacting, id) = (handle.clone(), compacting.clone(), node.id);
            tokio::spawn(async move {
                match tokio::task::spawn_blocking(move || state.encode()).await {
                    Ok(snapshot) => {
                        if let Err(error) = handle.compact(snapshot).await {
                            eprintln!("kv[{id}]: compaction failed: {error}");
                        }
                    }
                    Err(error) => eprintln!("kv[{id}]: encoding the snapshot failed: {error}"),
                }
                compacting.store(false, Ordering::Release);
            });
        }
        let entry = match applied {
            synod::driver::Applied::Entry(entry) => entry,
            synod::driver::Applied::Snapshot(snapshot) => {
                install_snapshot(&node, &snapshot);
                continue;
            }
        };
        let slot = entry.slot;
        let mut applied = node.applied();
        applied.log_digest = chain_digest(applied.log_digest, &entry);
        applied.slot = slot;
        if let Value::Command { id, data } = &entry.value {
            applied.commands_applied += 1;
            apply_command(&node, &mut applied, slot, *id, data);
        }
        drop(applied);
        node.applied_slot.send_replace(slot);
    }
}

fn apply_command(node: &Node, applied: &mut Applied, slot: Slot, id: ProposalId, data: &[u8]) {
    // `KvStateMachine::apply` refuses oversized and undecodable commands the same way on
    // every replica; decode here only to learn who waits for the response.
    let decoded = if data.len() > applied.kv.limits().command_bytes_max {
        None
    } else {
        Command::decode(data).ok()
    };
    let Some(command) = decoded else {
        applied.kv.apply(slot, data);
        return;
    };
    let waiter = match &command {
        Command::Request { header, .. } => Some((header.client, header.sequence)),
        _ => None,
    };
    let opens_session = matches!(command, Command::OpenSession);
    let response = applied.kv.apply_command(slot, command);
    if let Some(key) = waiter {
        if let Some(sender) = applied.waiters.remove(&key) {
            let _ = sender.send(response);
        }
    } else if opens_session && id.node == node.id {
        if let Response::SessionOpened { client } = response {
            if applied.opened.len() >= 1024 {
                applied
                    .opened
                    .retain(|_, (_, opened_slot)| *opened_slot + OPENED_RETAIN_SLOTS > slot);
            }
            applied.opened.insert(id, (client, slot));
        }
    }
}

/// One client connection: its session in the replicated state machine, and the handle it
/// proposes through.
struct Connection {
    node: Arc<Node>,
    handle: Handle,
    /// The session, once opened (lazily, by the first command that needs the log).
    session: Option<ClientId>,
    /// The next request's sequence number within the session.
    next_sequence: u64,
}

/// Why a command got no result: the error reply to send.
type Failure = String;

impl support::Commands for Connection {
    async fn command(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> After {
        self.execute(args, out).await
    }
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream) {
        let policy = self.node.client_policy.clone();
        support::serve_resp(
            &mut self,
            &mut stream,
            &REQUEST_LIMITS,
            OUTPUT_FLUSH_BYTES,
            &policy,
        )
        .await;
        self.close_session().await;
    }

    /// Runs one command and appends its reply to `out`.
    async fn execute(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> After {
        let name = args[0].to_ascii_uppercase();
        let arity_ok = |min: usize, max: usize| (min..=max).contains(&args.len());
        let arity_error = |out: &mut Vec<u8>| {
            resp::error(
                out,
                &format!(
                    "ERR wrong number of arguments for '{}' command",
                    String::from_utf8_lossy(&args[0]).to_lowercase()
                ),
            );
        };
        let result = match name.as_slice() {
            b"PING" if arity_ok(1, 2) => {
                match args.get(1) {
                    Some(message) => resp::bulk(out, Some(message)),
                    None => resp::simple(out, "PONG"),
                }
                Ok(())
            }
            b"ECHO" if arity_ok(2, 2) => {
                resp::bulk(out, Some(&args[1]));
                Ok(())
            }
            b"QUIT" => {
                resp::simple(out, "OK");
                return After::Close;
            }
            b"SELECT" if arity_ok(2, 2) => {
                if args[1].as_ref() == b"0" {
                    resp::simple(out, "OK");
                } else {
                    resp::error(out, "ERR DB index is out of range");
                }
                Ok(())
            }
            b"GET" if arity_ok(2, 2) => self.get(args[1].clone(), out).await,
            b"SET" if arity_ok(3, 3) => self.set(args[1].clone(), args[2].clone(), out).await,
            b"SET" if args.len() > 3 => {
                resp::error(out, "ERR syntax error (SET options are not supported)");
                Ok(())
            }
            b"DEL" if args.len() >= 2 => self.delete(&args[1..], out).await,
            b"EXISTS" if args.len() >= 2 => self.exists(&args[1..], out).await,
            b"DBSIZE" if arity_ok(1, 1) => self.dbsize(out).await,
            b"INCR" if arity_ok(2, 2) => self.increment(args[1].clone(), 1, out).await,
            b"DECR" if arity_ok(2, 2) => self.increment(args[1].clone(), -1, out).await,
            b"INCRBY" | b"DECRBY" if arity_ok(3, 3) => match integer(&args[2]) {
                Some(delta) => {
                    let delta = if name.as_slice() == b"DECRBY" {
                        delta.checked_neg()
                    } else {
                        Some(delta)
                    };
                    match delta {
                        Some(delta) => self.increment(args[1].clone(), delta, out).await,
                        None => Err("ERR decrement would overflow".to_string()),
                    }
                }
                None => Err("ERR value is not an integer or out of range".to_string()),
            },
            b"INFO" if arity_ok(1, 2) => {
                let text = self.info().await;
                resp::bulk(out, Some(text.as_bytes()));
                Ok(())
            }
            b"COMMAND" => {
                match args.get(1).map(|sub| sub.to_ascii_uppercase()) {
                    Some(sub) if sub == b"COUNT" => resp::integer_reply(out, COMMANDS.len() as i64),
                    // `COMMAND`, `COMMAND DOCS` (redis-cli asks at start), ...: nothing to
                    // describe, which clients accept.
                    _ => resp::array(out, 0),
                }
                Ok(())
            }
            b"CONFIG" if args.len() >= 2 => {
                if args[1].eq_ignore_ascii_case(b"GET") && args.len() == 3 {
                    // redis-benchmark asks for these two at start; answer what is true.
                    let parameter = args[2].to_ascii_lowercase();
                    match parameter.as_slice() {
                        b"save" => config_pair(out, "save", ""),
                        b"appendonly" => config_pair(out, "appendonly", "no"),
                        _ => resp::array(out, 0),
                    }
                } else {
                    resp::error(out, "ERR only CONFIG GET is supported");
                }
                Ok(())
            }
            b"SYNOD.DIGEST" if arity_ok(1, 1) => match self.digest().await {
                Some(text) => {
                    resp::bulk(out, Some(text.as_bytes()));
                    Ok(())
                }
                None => Err("ERR the digest could not be computed".to_string()),
            },
            b"SYNOD.SETMEMBERS" if arity_ok(2, 3) => {
                support::set_members(&mut self.handle, &self.node.peers, self.node.id, args, out)
                    .await;
                Ok(())
            }
            b"SYNOD.MEMBERS" if arity_ok(1, 1) => {
                support::members(&mut self.handle, out).await;
                Ok(())
            }
            b"SYNOD.SETPEER" if arity_ok(3, 3) => {
                support::set_peer(&self.node.peers, args, out);
                Ok(())
            }
            b"SYNOD.DELPEER" if arity_ok(2, 2) => {
                support::remove_peer(&self.node.peers, args, out);
                Ok(())
            }
            b"SYNOD.PEERS" if arity_ok(1, 1) => {
                support::list_peers(&self.node.peers, out);
                Ok(())
            }
            b"SYNOD.LOCALGET" if arity_ok(2, 2) => {
                let value = self.node.applied().kv.get(&args[1]).cloned();
                resp::bulk(out, value.as_deref());
                Ok(())
            }
            _ if COMMANDS.contains(&name.as_slice()) => {
                arity_error(out);
                Ok(())
            }
            _ => {
                resp::error(
                    out,
                    &format!(
                        "ERR unknown command '{}'",
                        String::from_utf8_lossy(&args[0]).escape_default()
                    ),
                );
                Ok(())
            }
        };
        if let Err(failure) = result {
            resp::error(out, &failure);
        }
        After::Continue
    }

    async fn get(&mut self, key: Bytes, out: &mut Vec<u8>) -> Result<(), Failure> {
        let value = self.read(key).await?;
        resp::bulk(out, value.as_deref());
        Ok(())
    }

    /// The value of `key`, linearizably: by read-index, or through the log if no read index
    /// can be had.
    async fn read(&mut self, key: Bytes) -> Result<Option<Bytes>, Failure> {
        if self.read_index().await {
            return Ok(self.node.applied().kv.get(&key).cloned());
        }
        match self.submit(Operation::Get { key }).await? {
            Output::Value(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits, without a log entry, until the local state machine holds every write
    /// acknowledged before the call; false if no leader confirmed the read (none known, the
    /// leadership ended, the leader did not answer) or the applier did not get there in
    /// time.
    async fn read_index(&mut self) -> bool {
        support::read_index(&mut self.handle, &self.node.applied_slot).await
    }

    async fn set(&mut self, key: Bytes, value: Bytes, out: &mut Vec<u8>) -> Result<(), Failure> {
        match self.submit(Operation::Put { key, value }).await? {
            Output::Written => resp::simple(out, "OK"),
            other => return Err(unexpected(&other)),
        }
        Ok(())
    }

    async fn delete(&mut self, keys: &[Bytes], out: &mut Vec<u8>) -> Result<(), Failure> {
        let mut deleted = 0;
        for key in keys {
            match self.submit(Operation::Delete { key: key.clone() }).await? {
                Output::Deleted(existed) => deleted += i64::from(existed),
                other => return Err(unexpected(&other)),
            }
        }
        resp::integer_reply(out, deleted);
        Ok(())
    }

    /// A read barrier: once it is applied, the local copy holds every write acknowledged
    /// before it was proposed (see the module documentation).
    async fn barrier(&mut self) -> Result<(), Failure> {
        if self.read_index().await {
            return Ok(());
        }
        self.submit(Operation::Get { key: Bytes::new() })
            .await
            .map(|_| ())
    }

    async fn exists(&mut self, keys: &[Bytes], out: &mut Vec<u8>) -> Result<(), Failure> {
        self.barrier().await?;
        let applied = self.node.applied();
        let count = keys
            .iter()
            .filter(|key| applied.kv.get(key).is_some())
            .count();
        drop(applied);
        resp::integer_reply(out, count as i64);
        Ok(())
    }

    async fn dbsize(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        self.barrier().await?;
        let count = self.node.applied().kv.len();
        resp::integer_reply(out, count as i64);
        Ok(())
    }

    /// `INCR` and friends: a read, then a compare-and-swap from what was read, retried when
    /// another client changed the value in between.
    async fn increment(
        &mut self,
        key: Bytes,
        delta: i64,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let node = self.node.clone();
        let stripe = fnv1a(FNV_OFFSET, &key) as usize % INCREMENT_STRIPES;
        let _serialized = node.increment_stripes[stripe].lock().await;
        for attempt in 0..INCR_ATTEMPTS_MAX {
            if attempt > 0 {
                // Another node's client won the swap: back off a little, differently per
                // connection, so the contenders do not collide again in lockstep.
                let jitter = fnv1a(FNV_OFFSET, &self.next_sequence.to_le_bytes()) % 10;
                tokio::time::sleep(Duration::from_millis(1 + jitter)).await;
            }
            let current = self.read(key.clone()).await?;
            let number = match &current {
                None => 0,
                Some(bytes) => integer(bytes)
                    .ok_or_else(|| "ERR value is not an integer or out of range".to_string())?,
            };
            let new = number
                .checked_add(delta)
                .ok_or_else(|| "ERR increment or decrement would overflow".to_string())?;
            let swap = Operation::CompareAndSwap {
                key: key.clone(),
                expected: current,
                new: Some(Bytes::from(new.to_string())),
            };
            match self.submit(swap).await? {
                Output::Swapped(true) => {
                    resp::integer_reply(out, new);
                    return Ok(());
                }
                Output::Swapped(false) => continue,
                other => return Err(unexpected(&other)),
            }
        }
        Err("TRYAGAIN too many concurrent updates of the key".to_string())
    }

    /// Proposes `operation` in this connection's session and waits for its output.
    async fn submit(&mut self, operation: Operation) -> Result<Output, Failure> {
        // A session can expire (evicted by newer ones): open another and try again, but only
        // when the refused copy is the only one that was proposed.
        for _ in 0..2 {
            let client = self.session().await?;
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let header = RequestHeader {
                client,
                sequence,
                // One request at a time: every earlier response has been received.
                acknowledged_below: sequence,
            };
            let command = Command::Request {
                header,
                operation: operation.clone(),
            };
            let (response, proposals) = self
                .propose_until_applied(Bytes::from(command.encode()), (client, sequence))
                .await?;
            match response {
                Response::Output(output) => return Ok(output),
                Response::Error(KvError::SessionExpired | KvError::UnknownSession)
                    if proposals == 1 =>
                {
                    self.session = None;
                }
                Response::Error(error) => return Err(format!("ERR {error}")),
                other => return Err(format!("ERR unexpected response {other:?}")),
            }
        }
        Err("ERR the session expired twice; retry".to_string())
    }

    /// Proposes `command` until it is applied here; returns its response and how many
    /// copies were proposed. The waiter is registered before the first proposal.
    async fn propose_until_applied(
        &mut self,
        command: Bytes,
        key: (ClientId, u64),
    ) -> Result<(Response, usize), Failure> {
        let (sender, mut receiver) = oneshot::channel();
        self.node.applied().waiters.insert(key, sender);
        let outcome = support::propose_until_answered(&mut self.handle, command, &mut receiver)
            .await
            .map_err(Unanswered::reply);
        if outcome.is_err() {
            self.node.applied().waiters.remove(&key);
        }
        outcome
    }

    /// This connection's session, opened through the log on first use.
    async fn session(&mut self) -> Result<ClientId, Failure> {
        if let Some(client) = self.session {
            return Ok(client);
        }
        let command = Bytes::from(Command::OpenSession.encode());
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while Instant::now() < deadline {
            let wait_until = (Instant::now() + REPROPOSE_INTERVAL).min(deadline);
            let proposed =
                tokio::time::timeout_at(wait_until, self.handle.propose_and_wait(command.clone()))
                    .await;
            match proposed {
                Ok(Ok((id, slot))) => {
                    let mut applied_slot = self.node.applied_slot.subscribe();
                    if applied_slot
                        .wait_for(|applied| *applied >= slot)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    let opened = self.node.applied().opened.remove(&id);
                    let Some((client, _)) = opened else {
                        return Err("ERR internal: opened session not found".to_string());
                    };
                    self.session = Some(client);
                    self.next_sequence = 1;
                    return Ok(client);
                }
                Ok(Err(ProposalError::Rejected(_))) => {
                    tokio::time::sleep_until((Instant::now() + REFUSED_BACKOFF).min(deadline))
                        .await;
                }
                Ok(Err(ProposalError::Stopped { .. })) => {
                    return Err("ERR the node is stopping".to_string());
                }
                // Lost or slow: open another (an unused session is evicted in time).
                Ok(Err(ProposalError::Unknown)) | Err(_) => {}
            }
        }
        Err(timeout_failure())
    }

    /// Closes the session when the client leaves, without waiting (if the proposal is lost,
    /// the session is evicted in time).
    async fn close_session(&mut self) {
        if let Some(client) = self.session.take() {
            let command = Command::CloseSession { client };
            let _ = self.handle.propose(Bytes::from(command.encode())).await;
        }
    }

    /// `SYNOD.DIGEST`'s line. The applier's lock is held only to copy the state machine
    /// (its keys and values are shared, not copied: `Bytes`); the copy is encoded, hashed
    /// and dropped on a blocking thread, off the lock and off the runtime's workers. `None`
    /// if that thread failed.
    ///
    /// Measured (release build, one core of a busy 2-vCPU VM), the lock held by the copy
    /// against by hashing in place: 400 values of 1 MiB, 0.06 ms against 650 to 770 ms;
    /// 100 000 keys of 1 KiB, 6 to 11 ms against 140 to 160 ms; 1 000 000 keys of 16 bytes
    /// (the key limit), 90 ms (250 ms the first time: it makes every value shareable)
    /// against 115 to 135 ms. Encoding the snapshot under the lock and hashing outside it
    /// held the lock longer (170 to 230 ms, 17 to 29 ms, 80 to 105 ms).
    async fn digest(&self) -> Option<String> {
        let (slot, log_digest, kv) = {
            let applied = self.node.applied();
            (applied.slot, applied.log_digest, applied.kv.clone())
        };
        tokio::task::spawn_blocking(move || {
            format!(
                "applied_slot:{slot} log_digest:{log_digest:016x} state_digest:{:016x} keys:{}",
                kv.digest(),
                kv.len()
            )
        })
        .await
        .ok()
    }

    async fn info(&mut self) -> String {
        let status = self.handle.status().await;
        let stats = self.handle.stats().await.unwrap_or_default();
        let (slot, commands_applied, keys, sessions) = {
            let applied = self.node.applied();
            (
                applied.slot,
                applied.commands_applied,
                applied.kv.len(),
                applied.kv.sessions().len(),
            )
        };
        let meters = &self.node.meters;
        let syncs = meters.syncs.load(Ordering::Relaxed);
        let entries_written = meters.entries_written.load(Ordering::Relaxed);
        let transport = self.node.transport.get();
        let ratio = |numerator: u64, denominator: u64| {
            if denominator == 0 {
                0.0
            } else {
                numerator as f64 / denominator as f64
            }
        };
        let mut text = String::new();
        let mut line = |key: &str, value: String| {
            text.push_str(key);
            if !key.starts_with('#') {
                text.push(':');
                text.push_str(&value);
            }
            text.push_str("\r\n");
        };
        line("# Server", String::new());
        line("synod_node_id", self.node.id.0.to_string());
        line("client_address", self.node.client_address.to_string());
        line("data_directory", self.node.data.display().to_string());
        line("process_id", std::process::id().to_string());
        line(
            "uptime_in_seconds",
            self.node.started.elapsed().as_secs().to_string(),
        );
        line(
            "connected_clients",
            self.node.connections.load(Ordering::Relaxed).to_string(),
        );
        line("# Replication", String::new());
        match &status {
            Some(status) => {
                let role = match status.role {
                    Role::Leader => "leader",
                    Role::Follower => "follower",
                    Role::PreCandidate => "precandidate",
                    Role::Candidate => "candidate",
                };
                line("role", role.to_string());
                line(
                    "leader_id",
                    status
                        .leader
                        .map_or_else(|| "none".to_string(), |leader| leader.0.to_string()),
                );
                line("leader_ballot", status.leader_ballot.to_string());
                line("chosen_slot", status.chosen.to_string());
                line("last_slot", status.last_slot.to_string());
                line("incarnation", status.incarnation.to_string());
                line("lease_reads", status.lease_reads.to_string());
                let ids = |list: &[NodeId]| {
                    list.iter()
                        .map(|id| id.0.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                match &status.membership {
                    Some(membership) => {
                        line("voters", ids(&membership.voters));
                        line("learners", ids(&membership.learners));
                    }
                    None => line("voters", "none".to_string()), // joining: not learned yet
                }
            }
            None => line("role", "stopped".to_string()),
        }
        line("applied_slot", slot.to_string());
        line("commands_applied", commands_applied.to_string());
        line("keys", keys.to_string());
        line("sessions", sessions.to_string());
        line("# Storage", String::new());
        line("storage_syncs", syncs.to_string());
        line(
            "storage_writes",
            meters.writes.load(Ordering::Relaxed).to_string(),
        );
        line("storage_entries_written", entries_written.to_string());
        line(
            "entries_written_per_sync",
            format!("{:.2}", ratio(entries_written, syncs)),
        );
        line(
            "commands_applied_per_sync",
            format!("{:.2}", ratio(commands_applied, syncs)),
        );
        line("# Driver", String::new());
        line("driver_ready_batches", stats.writes.to_string());
        line("driver_storage_writes", stats.storage_writes.to_string());
        line(
            "driver_batches_per_storage_write",
            format!("{:.2}", ratio(stats.writes, stats.storage_writes)),
        );
        line(
            "driver_refused_messages",
            stats.refused_messages.to_string(),
        );
        line("driver_reads_confirmed", stats.reads_confirmed.to_string());
        line("# Transport", String::new());
        line("transport_messages_sent", transport.sent.to_string());
        line(
            "transport_frames_received",
            transport.frames_received.to_string(),
        );
        line("transport_dropped", transport.dropped_total().to_string());
        text
    }
}

/// The commands this server runs (for `COMMAND COUNT` and arity errors); `SYNOD.AUTH` is
/// answered before they are (`support::AdminGate`).
const COMMANDS: [&[u8]; 23] = [
    b"PING",
    b"ECHO",
    b"QUIT",
    b"SELECT",
    b"GET",
    b"SET",
    b"DEL",
    b"EXISTS",
    b"DBSIZE",
    b"INCR",
    b"DECR",
    b"INCRBY",
    b"DECRBY",
    b"INFO",
    b"COMMAND",
    b"CONFIG",
    b"SYNOD.DIGEST",
    b"SYNOD.LOCALGET",
    b"SYNOD.SETMEMBERS",
    b"SYNOD.MEMBERS",
    b"SYNOD.SETPEER",
    b"SYNOD.DELPEER",
    b"SYNOD.PEERS",
];

fn config_pair(out: &mut Vec<u8>, name: &str, value: &str) {
    resp::array(out, 2);
    resp::bulk(out, Some(name.as_bytes()));
    resp::bulk(out, Some(value.as_bytes()));
}

/// A signed 64-bit decimal, as Redis writes and reads them: no sign `+`, no leading zeros
/// beyond a lone `0`, no spaces.
fn integer(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let value: i64 = text.parse().ok()?;
    (value.to_string() == text).then_some(value)
}

fn unexpected(output: &Output) -> Failure {
    format!("ERR internal: unexpected output {output:?}")
}

fn timeout_failure() -> Failure {
    Unanswered::TimedOut.reply()
}
