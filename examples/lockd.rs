//! A replicated lock server: the [`synod::lock`] service on a three-replica synod cluster,
//! with clients speaking the Redis protocol (RESP2), so `redis-cli` is a client. One process
//! per replica, each with its own durable [`FileStorage`], replicating over TCP with the synod
//! [`Driver`] on tokio.
//!
//! # Run a three-node cluster on one machine
//!
//! ```text
//! cargo build --release --example lockd --features net
//! PEERS=1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103
//! target/release/examples/lockd --id 1 --peers $PEERS --client 127.0.0.1:6400 --data /tmp/lock1 &
//! target/release/examples/lockd --id 2 --peers $PEERS --client 127.0.0.1:6401 --data /tmp/lock2 &
//! target/release/examples/lockd --id 3 --peers $PEERS --client 127.0.0.1:6402 --data /tmp/lock3 &
//! S=$(redis-cli -p 6400 open 7 3000 | head -1)  # client 7, lease of 3000 ticks: the session
//! redis-cli -p 6401 acquire $S printer          # the fencing token
//! redis-cli -p 6402 acquire $S printer          # again: the same token (a retry is harmless)
//! redis-cli -p 6400 holders printer             # session mode token
//! redis-cli -p 6400 release $S printer
//! ```
//!
//! Any replica serves any client (followers forward proposals to the leader). One tick is
//! `--tick-ms` (10 ms): a lease of 3000 ticks is 30 s. A client connection that sends
//! nothing for `--client-idle-secs` (300; 0: never) while no command of its runs is closed
//! (an `ACQUIRE` waiting for its lock is not idle; the session outlives the connection);
//! client connections have TCP keep-alive.
//!
//! # Commands
//!
//! - `OPEN client lease` opens (or renews) the session of `client` (a number the client
//!   picks): `*3 :session :lease_end *N`, the lease's end in log time (ticks) and the locks
//!   the session holds, one `name mode token` string each (a client that restarted and
//!   opened its session again learns what it holds).
//! - `KEEPALIVE session`: `:lease_end`.
//! - `ACQUIRE session name [SHARED] [TRY | WAIT ticks]`: blocks until granted (default:
//!   exclusive, wait forever), then `:token`; `TRY` fails at once with `-BUSY`; a wait that
//!   runs out answers `-TIMEOUT`; a session that expires meanwhile, `-EXPIRED`.
//! - `RELEASE session name [token]`: `+OK` (released) or `+WITHDRAWN` (a wait was
//!   withdrawn). With the token of the grant, only that grant is released: a retried
//!   `RELEASE` can then never release a later grant of the same lock.
//! - `CLOSE session`: `+OK`; its locks are released at once.
//! - `HOLDERS name`: one `session mode token` line per holder, linearizable without a log
//!   entry: read-index (the leader confirms it still leads; this replica answers once it has
//!   applied what the leader had chosen), `-TRYAGAIN` if no leader confirms.
//! - `INFO`, `PING`, `QUIT`.
//! - `SYNOD.SETMEMBERS voters [learners]` (at the leader) and `SYNOD.MEMBERS`: membership
//!   change, as in the `kv` example (start a node to add with `--join`); `SYNOD.SETPEER id
//!   ip:port`, `SYNOD.DELPEER id` and `SYNOD.PEERS`: this node's transport peers (a node
//!   to add that is not in `--peers`). With `--admin-token TOKEN` (or the
//!   `SYNOD_ADMIN_TOKEN` environment variable) a connection must first send
//!   `SYNOD.AUTH TOKEN`, or these answer `-NOAUTH ...`, as in the `kv` example (a wrong
//!   token is answered after 1 s, at most 10 a second per node, and a connection is closed
//!   after its third); without a token they are open to every client (a warning at start).
//!
//! Errors are `-ERR` plus the [`LockError`] in words. A command that cannot reach the cluster
//! within 10 s gets `-TRYAGAIN` (it may or may not have taken effect; every
//! command is safe to retry: `OPEN` renews the client's session, `ACQUIRE` answers with the
//! grant the session already has).
//!
//! # Semantics
//!
//! - **Exactly once.** A replica proposes a client's command again when no answer came
//!   (the leader changed, say), so a command may be chosen twice. Each connection therefore
//!   proposes through a proposer session of the lock service (`Command::OpenProposer` at its
//!   first command, then every command as `Command::Once`): a second copy is answered from
//!   the service's table and never applied again (a copy of an `ACQUIRE` chosen after the
//!   `RELEASE` that followed it would otherwise take the lock again).
//!
//! - **Log time.** The leader proposes `Time` every `--clock-interval` ticks and a `Grace` of
//!   `--grace` ticks when it takes over ([`LeaseClock`]); leases expire, waits time out and
//!   lock-delays end only at those entries, on every replica alike.
//! - **Fencing.** A token is the slot of the entry that granted the lock: present it to
//!   whatever the lock guards, which refuses tokens below the largest it has seen.
//! - **Snapshots bound the log.** Every `--snapshot-every` applied slots the lock service is
//!   snapshotted and the log compacted through it; a restarted replica restores the snapshot
//!   and replays the log after it. The snapshot is encoded under the state lock (the
//!   applier's, which every command takes): for a large table that is one pause of tens of
//!   milliseconds per `--snapshot-every` slots (about 30 to 50 ms for 10 000 sessions and
//!   100 000 locks, 8 MB, release build). Encoding a clone off the lock would be no better:
//!   cloning the service under the lock takes longer than encoding it (84 to 143 ms for
//!   that table). Saving the snapshot and compacting the log run on a task of their own,
//!   one compaction at a time. A peer's snapshot this replica cannot restore (a peer
//!   running another program or version) stops it with `lockd[N]: fatal: ...` and exit
//!   status 1 rather than serve from a state that is not the replicated one; restarted, it
//!   refuses the snapshot it saved with the same reason.
//!
//! # Tests
//!
//! `tests/lockd_processes.rs` runs three of these processes, kills the leader with `SIGKILL`
//! while a client holds a lock and another waits for it, and checks that the holder keeps its
//! lock through the new leader, and that once it stops its keep-alives the waiter gets the
//! lock with a larger token.

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
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use support::{After, Unanswered};
use synod::driver::{Applied, Driver, DriverConfig, Handle};
use synod::lock::{
    Command, FencingToken, LeaseClock, LockError, LockEvent, LockLimits, LockService, Mode,
    Outcome, SessionId, Wait,
};
use synod::session::{ClientId, RequestHeader};
use synod::storage::Snapshot;
use synod::transport::tcp::{TcpPeers, TcpTransport};
use synod::{FileStorage, FileStorageOptions, NodeId, Replica, Role, Slot, Storage, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The header of every log entry: the proposing node and its request number (0: the lease
/// clock's entries, which nobody waits for).
const HEADER_BYTES: usize = 16;

const REQUEST_LIMITS: resp::Limits = resp::Limits {
    args_max: 16,
    arg_bytes_max: 4096,
    request_bytes_max: 64 * 1024,
    inline_bytes_max: 64 * 1024,
};

/// A replicated lock server speaking RESP2 (see the module documentation).
#[derive(Parser, Debug)]
#[command(
    name = "lockd",
    about = "A replicated lock server (synod, Redis protocol)"
)]
struct Args {
    #[command(flatten)]
    node: support::NodeArgs,
    /// Where clients connect.
    #[arg(long)]
    client: SocketAddr,
    /// Ticks between the leader's `Time` entries.
    #[arg(long, default_value_t = 10)]
    clock_interval: u64,
    /// Ticks every lease is extended by when a new leader takes over.
    #[arg(long, default_value_t = 500)]
    grace: u64,
    /// Ticks a lock stays unavailable after its holder's session expired.
    #[arg(long, default_value_t = 50)]
    lock_delay: u64,
    /// Snapshot and compact every this many applied slots (0: never).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Client connections served at once.
    #[arg(long, default_value_t = 1024)]
    connections_max: usize,
    #[command(flatten)]
    clients: support::ClientArgs,
    #[command(flatten)]
    admin: support::AdminArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let id = match args.node.node_id() {
        Ok(id) => id,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let client_policy = match args.admin.gate(&format!("lockd[{id}]")) {
        Ok(gate) => support::ClientPolicy {
            idle: args.clients.idle(),
            admin: Some(gate),
        },
        Err(error) => {
            eprintln!("lockd[{id}]: {error}");
            return ExitCode::from(2);
        }
    };
    support::run_server("lockd", serve(args, client_policy))
}

/// What the applier maintains, behind one lock.
struct State {
    service: LockService,
    slot: Slot,
    /// Commands proposed through this node, by request number, waiting for their outcome:
    /// the entry proposed (an applied entry is answered only if it is that very entry) and
    /// where its outcome goes.
    waiters: HashMap<u64, (Bytes, oneshot::Sender<Outcome>)>,
    /// Queued acquires of this node's clients, waiting for their grant (or its end).
    grants: HashMap<(SessionId, String), oneshot::Sender<LockEvent>>,
    /// Whether this replica leads (for `INFO`).
    role: Role,
}

struct Node {
    id: NodeId,
    state: Mutex<State>,
    next_request: AtomicU64,
    /// The last slot applied here (set while the state's lock is held): `HOLDERS` waits on
    /// it after a read-index.
    applied: watch::Sender<Slot>,
    /// The transport's peers (`SYNOD.SETPEER`, `SYNOD.DELPEER`, `SYNOD.PEERS`).
    peers: TcpPeers,
}

impl Node {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("applier lock poisoned")
    }
}

fn limits(args: &Args) -> LockLimits {
    LockLimits {
        lock_delay: args.lock_delay,
        lease_max: 10_000_000,
        ..LockLimits::default()
    }
}

async fn serve(args: Args, client_policy: support::ClientPolicy) -> Result<(), Box<dyn Error>> {
    let id = NodeId(args.node.id);
    let mut storage = FileStorage::open(
        &args.node.data,
        args.node.cluster_id,
        id,
        FileStorageOptions::default(),
    )?;
    let recovered = storage.recover()?;
    let (service, applied) = match storage.load_snapshot()? {
        Some(snapshot) => (restore(&snapshot)?, snapshot.slot),
        None => (LockService::new(limits(&args))?, 0),
    };
    let mut config = args.node.replica_config(id);
    config.applied = applied;
    let replica = Replica::new(config, recovered)?;
    let listener = TcpListener::bind(args.client)
        .await
        .map_err(|error| format!("cannot listen for clients on {}: {error}", args.client))?;
    let tcp = args.node.tcp_config(id);
    let (transport, inbound) = TcpTransport::start(tcp).await?;
    let node = Arc::new(Node {
        id,
        state: Mutex::new(State {
            service,
            slot: applied,
            waiters: HashMap::new(),
            grants: HashMap::new(),
            role: Role::Follower,
        }),
        next_request: AtomicU64::new(first_request_number()),
        applied: watch::Sender::new(applied),
        peers: transport.peers(),
    });
    let ticks = support::ticks(args.node.tick_ms, args.node.lease_ticks > 0).boxed();
    let (driver, handle, committed) = Driver::new(
        replica,
        storage,
        transport,
        ticks,
        inbound.boxed(),
        DriverConfig::default(),
    );
    let driver = tokio::spawn(driver.run());
    tokio::spawn(apply_committed(
        node.clone(),
        committed,
        handle.clone(),
        args.snapshot_every,
    ));
    let clock = LeaseClock::new(args.clock_interval.max(1), args.grace)?;
    tokio::spawn(run_clock(
        node.clone(),
        handle.clone(),
        clock,
        Duration::from_millis(args.node.tick_ms.max(1)),
    ));
    eprintln!(
        "lockd[{id}]: serving clients on {}, peers on {}, data in {}",
        listener.local_addr()?,
        args.node.peers[&id],
        args.node.data.display()
    );
    tokio::spawn(support::accept_clients(
        format!("lockd[{id}]"),
        listener,
        args.connections_max,
        Arc::default(),
        move |stream| {
            let connection = Connection {
                node: node.clone(),
                handle: handle.clone(),
                proposer: None,
                next_sequence: 1,
            };
            connection.serve(stream, client_policy.clone())
        },
    ));
    match driver.await {
        Ok(Ok(_)) => Err("the driver stopped".into()),
        Ok(Err(error)) => Err(format!("the driver stopped: {error}").into()),
        Err(error) => Err(format!("the driver panicked: {error}").into()),
    }
}

fn restore(snapshot: &Snapshot) -> Result<LockService, String> {
    LockService::restore(&snapshot.data).map_err(|error| {
        format!(
            "the snapshot of slot {} cannot be restored: {error}",
            snapshot.slot
        )
    })
}

/// Proposes the lease clock's entries while this replica leads.
async fn run_clock(node: Arc<Node>, mut handle: Handle, mut clock: LeaseClock, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        let Some(status) = handle.status().await else {
            return;
        };
        let leading = status.role == Role::Leader;
        let now = {
            let mut state = node.state();
            state.role = status.role;
            state.service.now()
        };
        if let Some(command) = clock.tick(leading, now) {
            // Lost if leadership just ended; the next leader's clock takes over.
            let _ = handle.propose(entry(node.id, 0, &command)).await;
        }
    }
}

/// Where this process's request numbers start: random, so that an entry an earlier process
/// of this node proposed, chosen after a restart, does not carry a number a waiter of this
/// one uses (in [1, 2^63): never 0, which marks the clock's entries).
fn first_request_number() -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let random =
        std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos));
    (random >> 1).max(1)
}

/// A log entry: the header, then the encoded command.
fn entry(node: NodeId, request: u64, command: &Command) -> Bytes {
    let mut data = Vec::with_capacity(HEADER_BYTES + 64);
    data.extend_from_slice(&node.0.to_le_bytes());
    data.extend_from_slice(&request.to_le_bytes());
    data.extend_from_slice(&command.encode());
    Bytes::from(data)
}

async fn apply_committed(
    node: Arc<Node>,
    mut committed: synod::driver::Committed,
    handle: Handle,
    snapshot_every: u64,
) {
    let mut last_snapshot = node.state().slot;
    // A compaction under way (its snapshot being encoded or saved): the next waits for it.
    let compacting = Arc::new(AtomicBool::new(false));
    while let Some(applied) = committed.next().await {
        let entry = match applied {
            Applied::Entry(entry) => entry,
            Applied::Snapshot(snapshot) => {
                // The driver installed a peer's snapshot: the log before it is gone, and the
                // entries that follow apply to the state it holds. A state machine that cannot
                // take it cannot go on (applying them to the old state would silently depart
                // from the replicated one): stop the node, loudly. It was saved before it was
                // handed out, so a restart refuses it too, with the same reason.
                let service = match restore(&snapshot) {
                    Ok(service) => service,
                    Err(error) => support::fatal(
                        &format!("lockd[{}]", node.id),
                        &format!("a peer's snapshot was installed, but {error}"),
                    ),
                };
                let mut state = node.state();
                state.service = service;
                state.slot = snapshot.slot;
                node.applied.send_replace(snapshot.slot);
                // Their commands may be in the snapshot, their outcomes are not: the
                // connections answer -TRYAGAIN, and a retry is harmless.
                state.waiters.clear();
                continue;
            }
        };
        let mut state = node.state();
        state.slot = entry.slot;
        node.applied.send_replace(entry.slot);
        let Value::Command { data, .. } = &entry.value else {
            continue;
        };
        if data.len() < HEADER_BYTES {
            // Not written by lockd: the service refuses it like any malformed entry.
            state.service.apply(entry.slot, data);
            continue;
        }
        let origin = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let request = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let outcome = state.service.apply(entry.slot, &data[HEADER_BYTES..]);
        // An entry an earlier process of this node proposed may be chosen after a restart:
        // it is answered only to a waiter that proposed exactly these bytes.
        if origin == node.id.0
            && request != 0
            && state
                .waiters
                .get(&request)
                .is_some_and(|(proposed, _)| proposed[..] == data[..])
        {
            let (_, waiter) = state.waiters.remove(&request).expect("checked");
            let _ = waiter.send(outcome);
        }
        for event in state.service.take_events() {
            match &event {
                LockEvent::Granted { session, name, .. }
                | LockEvent::TimedOut { session, name } => {
                    if let Some(waiter) = state.grants.remove(&(*session, name.clone())) {
                        let _ = waiter.send(event);
                    }
                }
                LockEvent::Expired { session, .. } => {
                    let keys: Vec<(SessionId, String)> = state
                        .grants
                        .keys()
                        .filter(|(waiting, _)| waiting == session)
                        .cloned()
                        .collect();
                    for key in keys {
                        if let Some(waiter) = state.grants.remove(&key) {
                            let _ = waiter.send(event.clone());
                        }
                    }
                }
            }
        }
        if snapshot_every > 0
            && entry.slot >= last_snapshot + snapshot_every
            && !compacting.swap(true, Ordering::AcqRel)
        {
            // Encoded under the lock (the module documentation says why: a clone to encode
            // off the lock holds it longer than the encoding); saved and compacted by a task
            // of its own, one compaction at a time.
            last_snapshot = entry.slot;
            let snapshot = Snapshot {
                slot: entry.slot,
                data: Bytes::from(state.service.snapshot()),
                membership: None,
            };
            drop(state);
            let (mut handle, compacting, id) = (handle.clone(), compacting.clone(), node.id);
            tokio::spawn(async move {
                if let Err(error) = handle.compact(snapshot).await {
                    eprintln!("lockd[{id}]: compaction failed: {error}");
                }
                compacting.store(false, Ordering::Release);
            });
        }
    }
}

struct Connection {
    node: Arc<Node>,
    handle: Handle,
    /// This connection's proposer session: its commands are proposed exactly once
    /// (`Command::Once`), however often they are re-proposed. Opened at the first command.
    proposer: Option<ClientId>,
    /// The sequence number of the next command in the proposer session.
    next_sequence: u64,
}

impl support::Commands for Connection {
    async fn command(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> After {
        self.execute(args, out).await
    }
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream, policy: support::ClientPolicy) {
        support::serve_resp(&mut self, &mut stream, &REQUEST_LIMITS, 16 * 1024, &policy).await;
    }

    /// Runs one command and appends its reply to `out`.
    async fn execute(&mut self, args: &[Bytes], out: &mut Vec<u8>) -> After {
        let name = args[0].to_ascii_uppercase();
        let text = |index: usize| String::from_utf8_lossy(&args[index]).into_owned();
        let number = |index: usize| -> Result<u64, String> {
            text(index)
                .parse()
                .map_err(|_| format!("ERR '{}' is not a number", text(index)))
        };
        let result: Result<(), String> = match (name.as_slice(), args.len()) {
            (b"PING", 1) => {
                resp::simple(out, "PONG");
                Ok(())
            }
            (b"QUIT", _) => {
                resp::simple(out, "OK");
                return After::Close;
            }
            (b"OPEN", 3) => match (number(1), number(2)) {
                (Ok(client), Ok(lease)) => match self
                    .run(Command::Open {
                        client,
                        lease,
                        tag: 0,
                    })
                    .await
                {
                    Ok(Outcome::Opened {
                        session,
                        expires_at,
                        held,
                    }) => {
                        resp::array(out, 3);
                        resp::integer_reply(out, session.0 as i64);
                        resp::integer_reply(out, expires_at as i64);
                        // The locks the session holds (a client that restarted and opened
                        // its session again learns them): `name mode token` each.
                        resp::array(out, held.len());
                        for lock in held {
                            let line =
                                format!("{} {} {}", lock.name, mode_name(lock.mode), lock.token.0);
                            resp::bulk(out, Some(line.as_bytes()));
                        }
                        Ok(())
                    }
                    other => Err(failure(other)),
                },
                (Err(error), _) | (_, Err(error)) => Err(error),
            },
            (b"KEEPALIVE", 2) => match number(1) {
                Ok(session) => {
                    let session = SessionId(session);
                    match self.run(Command::KeepAlive { session, tag: 0 }).await {
                        Ok(Outcome::Renewed { expires_at }) => {
                            resp::integer_reply(out, expires_at as i64);
                            Ok(())
                        }
                        other => Err(failure(other)),
                    }
                }
                Err(error) => Err(error),
            },
            (b"ACQUIRE", 3..=6) => match acquire_command(args, number(1)) {
                Ok(command) => self.acquire(command, out).await,
                Err(error) => Err(error),
            },
            (b"RELEASE", 3..=4) => match (number(1), (args.len() == 4).then(|| number(3))) {
                (Err(error), _) | (_, Some(Err(error))) => Err(error),
                (Ok(session), token) => {
                    let command = Command::Release {
                        session: SessionId(session),
                        name: text(2),
                        token: token.map(|token| FencingToken(token.expect("checked"))),
                    };
                    match self.run(command).await {
                        Ok(Outcome::Released { .. }) => {
                            resp::simple(out, "OK");
                            Ok(())
                        }
                        Ok(Outcome::Withdrawn) => {
                            resp::simple(out, "WITHDRAWN");
                            Ok(())
                        }
                        other => Err(failure(other)),
                    }
                }
            },
            (b"CLOSE", 2) => match number(1) {
                Ok(session) => match self
                    .run(Command::Close {
                        session: SessionId(session),
                    })
                    .await
                {
                    Ok(Outcome::Closed { .. }) => {
                        resp::simple(out, "OK");
                        Ok(())
                    }
                    other => Err(failure(other)),
                },
                Err(error) => Err(error),
            },
            (b"HOLDERS", 2) if !self.read_index().await => {
                Err("TRYAGAIN no leader confirmed the lock table".into())
            }
            (b"HOLDERS", 2) => {
                let holders = self.node.state().service.holders(&text(1));
                resp::array(out, holders.len());
                for (session, mode, token) in holders {
                    let line = format!("{} {} {}", session.0, mode_name(mode), token.0);
                    resp::bulk(out, Some(line.as_bytes()));
                }
                Ok(())
            }
            (b"INFO", 1) => {
                let info = {
                    let state = self.node.state();
                    format!(
                        "node:{}\r\nrole:{:?}\r\napplied_slot:{}\r\nlog_time:{}\r\nsessions:{}\r\n",
                        self.node.id.0,
                        state.role,
                        state.slot,
                        state.service.now(),
                        state.service.session_count()
                    )
                };
                resp::bulk(out, Some(info.as_bytes()));
                Ok(())
            }
            (b"SYNOD.SETMEMBERS", 2..=3) => {
                support::set_members(&mut self.handle, &self.node.peers, self.node.id, args, out)
                    .await;
                Ok(())
            }
            (b"SYNOD.MEMBERS", 1) => {
                support::members(&mut self.handle, out).await;
                Ok(())
            }
            (b"SYNOD.SETPEER", 3) => {
                support::set_peer(&self.node.peers, args, out);
                Ok(())
            }
            (b"SYNOD.DELPEER", 2) => {
                support::remove_peer(&self.node.peers, args, out);
                Ok(())
            }
            (b"SYNOD.PEERS", 1) => {
                support::list_peers(&self.node.peers, out);
                Ok(())
            }
            _ => Err(format!(
                "ERR unknown command or wrong number of arguments: '{}'",
                String::from_utf8_lossy(&args[0])
            )),
        };
        if let Err(error) = result {
            resp::error(out, &error);
        }
        After::Continue
    }

    /// Waits, without a log entry, until this replica has applied every entry acknowledged
    /// before the call (read-index); false if no leader confirmed or the applier did not get
    /// there within the request timeout.
    async fn read_index(&mut self) -> bool {
        support::read_index(&mut self.handle, &self.node.applied).await
    }

    /// `ACQUIRE`: proposes it; if queued, waits for the grant (or its end).
    async fn acquire(&mut self, command: Command, out: &mut Vec<u8>) -> Result<(), String> {
        let Command::Acquire { session, name, .. } = &command else {
            unreachable!("built by acquire_command");
        };
        let key = (*session, name.clone());
        // Registered before the proposal, so a grant right after it is not missed.
        let (sender, receiver) = oneshot::channel();
        self.node.state().grants.insert(key.clone(), sender);
        let outcome = self.run(command).await;
        let answer = match outcome {
            Ok(Outcome::Granted { token }) => Ok(token),
            Ok(Outcome::Queued { .. }) => match receiver.await {
                Ok(LockEvent::Granted { token, .. }) => Ok(token),
                Ok(LockEvent::TimedOut { .. }) => Err("TIMEOUT the wait ran out".to_string()),
                Ok(LockEvent::Expired { .. }) => Err("EXPIRED the session expired".to_string()),
                Err(_) => Err("TRYAGAIN the wait was lost; acquire again".to_string()),
            },
            Ok(Outcome::Refused(LockError::Busy)) => Err("BUSY the lock is held".to_string()),
            other => Err(failure(other)),
        };
        self.node.state().grants.remove(&key);
        let token = answer?;
        resp::integer_reply(out, token.0 as i64);
        Ok(())
    }

    /// Proposes `command` exactly once, in this connection's proposer session (again, until
    /// applied here or timed out), and returns its outcome.
    async fn run(&mut self, command: Command) -> Result<Outcome, String> {
        // A proposer session can expire (evicted by newer ones): open another and try again,
        // but only when the refused copy is the only one that was proposed.
        for _ in 0..2 {
            let proposer = self.proposer().await?;
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let once = Command::Once {
                header: RequestHeader {
                    client: proposer,
                    sequence,
                    // One command at a time: every earlier answer was received (or given up
                    // on, and then a late copy of it must not be applied either).
                    acknowledged_below: sequence,
                },
                command: Box::new(command.clone()),
            };
            match self.propose(&once).await? {
                (
                    Outcome::Refused(LockError::ProposerExpired(_) | LockError::UnknownProposer(_)),
                    1,
                ) => self.proposer = None,
                (outcome, _) => return Ok(outcome),
            }
        }
        Err("TRYAGAIN the proposer session expired twice; retry".to_string())
    }

    /// This connection's proposer session, opened if there is none yet.
    async fn proposer(&mut self) -> Result<ClientId, String> {
        if let Some(proposer) = self.proposer {
            return Ok(proposer);
        }
        // A copy of the open opens a proposer session nobody uses: evicted in time.
        match self.propose(&Command::OpenProposer).await? {
            (Outcome::ProposerOpened { proposer }, _) => {
                self.proposer = Some(proposer);
                self.next_sequence = 1;
                Ok(proposer)
            }
            (other, _) => Err(failure(Ok(other))),
        }
    }

    /// Proposes `command` (again, until applied here or timed out); returns its outcome and
    /// how many copies were proposed.
    async fn propose(&mut self, command: &Command) -> Result<(Outcome, usize), String> {
        let request = self.node.next_request.fetch_add(1, Ordering::Relaxed);
        let data = entry(self.node.id, request, command);
        let (sender, mut receiver) = oneshot::channel();
        self.node
            .state()
            .waiters
            .insert(request, (data.clone(), sender));
        let outcome = support::propose_until_answered(&mut self.handle, data, &mut receiver)
            .await
            .map_err(Unanswered::reply);
        self.node.state().waiters.remove(&request);
        outcome
    }
}

/// `ACQUIRE session name [SHARED] [TRY | WAIT ticks]`.
fn acquire_command(args: &[Bytes], session: Result<u64, String>) -> Result<Command, String> {
    let session = SessionId(session?);
    let name = String::from_utf8_lossy(&args[2]).into_owned();
    let mut mode = Mode::Exclusive;
    let mut wait = Wait::Forever;
    let mut index = 3;
    while index < args.len() {
        match args[index].to_ascii_uppercase().as_slice() {
            b"SHARED" => mode = Mode::Shared,
            b"EXCLUSIVE" => mode = Mode::Exclusive,
            b"TRY" => wait = Wait::Try,
            b"WAIT" => {
                index += 1;
                let ticks = args
                    .get(index)
                    .and_then(|ticks| String::from_utf8_lossy(ticks).parse().ok())
                    .ok_or("ERR WAIT takes a number of ticks")?;
                wait = Wait::Ticks(ticks);
            }
            other => {
                return Err(format!(
                    "ERR unknown ACQUIRE option '{}'",
                    String::from_utf8_lossy(other)
                ))
            }
        }
        index += 1;
    }
    Ok(Command::Acquire {
        session,
        name,
        mode,
        wait,
    })
}

/// How `HOLDERS` and `OPEN` name a mode.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Shared => "shared",
        Mode::Exclusive => "exclusive",
    }
}

/// The error reply for an outcome that is not the one expected.
fn failure(outcome: Result<Outcome, String>) -> String {
    match outcome {
        Ok(Outcome::Refused(error)) => format!("ERR {error}"),
        Ok(other) => format!("ERR unexpected outcome {other:?}"),
        Err(error) => error,
    }
}
