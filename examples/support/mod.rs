//! What the example servers (`kv`, `lockd`, `bank`) share: the `--peers` parser, the
//! crash-only panic hook and the runtime around a server, the tick stream that drives a
//! replica, the client acceptor and the RESP2 connection loop with its protections (TCP
//! keep-alive, the idle timeout `--client-idle-secs`, and the operator token `--admin-token`
//! that guards the `SYNOD.*` commands). Included by each with
//! `#[path = "support/mod.rs"] mod support;` (next to `mod resp;`).

use crate::resp;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::collections::BTreeMap;
use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod::driver::{Handle, ProposalError};
use synod::transport::tcp::{TcpConfig, TcpPeers};
use synod::{Config, NodeId, ProposeError, Slot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// How long a command may wait for the cluster (an election, a lost forward) before the
/// client gets `-TRYAGAIN`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A proposal not answered within this long is proposed again (the servers make a repeated
/// command harmless: a session sequence number in `kv`, idempotent commands in `lockd`).
pub const REPROPOSE_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before retrying a proposal the replica refused (no leader yet, or busy).
pub const REFUSED_BACKOFF: Duration = Duration::from_millis(10);

/// Why a proposal got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Nothing within [`REQUEST_TIMEOUT`]: the command may or may not have taken effect.
    TimedOut,
    /// The applier dropped the waiter (a snapshot replaced the state it would answer from).
    Lost,
    /// The node is stopping.
    Stopping,
    /// The command is larger than the replica takes (`Config::command_bytes_max`).
    TooLarge,
}

impl Unanswered {
    /// The error reply.
    pub fn reply(self) -> String {
        match self {
            Unanswered::TimedOut => format!(
                "TRYAGAIN no answer from the cluster within {} s (no leader?); the command may or may not have taken effect",
                REQUEST_TIMEOUT.as_secs()
            ),
            Unanswered::Lost => "TRYAGAIN the answer was lost; the command may or may not have taken effect".to_string(),
            Unanswered::Stopping => "ERR the node is stopping".to_string(),
            Unanswered::TooLarge => "ERR the command is larger than the replica takes".to_string(),
        }
    }
}

/// Proposes `command` until `answer` (registered with the applier before the call) is
/// sent: again every [`REPROPOSE_INTERVAL`] (lost with a leader, or slow), after
/// [`REFUSED_BACKOFF`] while the replica refuses (no leader yet, or busy), for at most
/// [`REQUEST_TIMEOUT`]. Returns the answer and how many copies were proposed.
pub async fn propose_until_answered<T>(
    handle: &mut Handle,
    command: Bytes,
    answer: &mut oneshot::Receiver<T>,
) -> Result<(T, usize), Unanswered> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut proposals = 0;
    loop {
        if Instant::now() >= deadline {
            return Err(Unanswered::TimedOut);
        }
        match handle.propose(command.clone()).await {
            Ok(_) => {
                proposals += 1;
                let wait_until = (Instant::now() + REPROPOSE_INTERVAL).min(deadline);
                match tokio::time::timeout_at(wait_until, &mut *answer).await {
                    Ok(Ok(value)) => return Ok((value, proposals)),
                    Ok(Err(_)) => return Err(Unanswered::Lost),
                    Err(_) => continue,
                }
            }
            Err(ProposalError::Rejected(ProposeError::NotLeader { .. }))
            | Err(ProposalError::Rejected(ProposeError::Busy { .. })) => {
                tokio::time::sleep_until((Instant::now() + REFUSED_BACKOFF).min(deadline)).await;
            }
            Err(ProposalError::Rejected(ProposeError::TooLarge { .. })) => {
                return Err(Unanswered::TooLarge);
            }
            Err(ProposalError::Stopped { .. }) | Err(ProposalError::Unknown) => {
                return Err(Unanswered::Stopping);
            }
        }
    }
}

/// The options every example server takes to be one node of a cluster.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// This node's id: one of the ids in --peers.
    #[arg(long)]
    pub id: u64,
    /// Every node's id and replication address: 1=127.0.0.1:7001,2=127.0.0.1:7002,...
    #[arg(long, value_parser = parse_peers)]
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// This node's storage directory (created if missing, locked while in use).
    #[arg(long)]
    pub data: PathBuf,
    /// The cluster id; the same on every node.
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// Milliseconds per replica tick.
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// Ticks without a leader before an election (randomized up to twice this).
    #[arg(long, default_value_t = 50)]
    pub election_ticks: u32,
    /// Ticks between the leader's heartbeats.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_ticks: u32,
    /// Leader leases of this many ticks (0: off; below --election-ticks, at most half of it
    /// advised): the leader answers reads at once while it holds one. Every node of the
    /// cluster must use the same value.
    #[arg(long, default_value_t = 0)]
    pub lease_ticks: u32,
    /// The voters the cluster is first started with (comma-separated ids, all in --peers;
    /// default: every id in --peers). --peers may list more nodes, to be added later. Read
    /// at a node's first start only (empty --data): later starts recover the membership in
    /// force from the data directory.
    #[arg(long)]
    pub members: Option<String>,
    /// Start as a node joining a running cluster: it waits to be added (SYNOD.SETMEMBERS at
    /// the leader) and learns the membership from the cluster. Read at the node's first start
    /// only: restarted with or without it, such a node goes on waiting until it has learned
    /// the membership.
    #[arg(long)]
    pub join: bool,
}

/// The options of the client port that every example server takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Close a client connection that sends nothing for this many seconds (0: never). Only a
    /// connection waiting for its next request can be idle: one waiting for a command's answer
    /// (a proposal, a lock) is not. A client that reads none of its replies for this long is
    /// closed too.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub client_idle_secs: u64,
}

impl ClientArgs {
    /// The idle timeout: `None` for never.
    pub fn idle(&self) -> Option<Duration> {
        (self.client_idle_secs > 0).then(|| Duration::from_secs(self.client_idle_secs))
    }
}

/// The environment variable the operator token is read from when `--admin-token` is not
/// given.
#[allow(dead_code)] // the bank has no operator commands
pub const ADMIN_TOKEN_ENV: &str = "SYNOD_ADMIN_TOKEN";

/// The longest operator token taken.
#[allow(dead_code)] // as `ADMIN_TOKEN_ENV`
pub const ADMIN_TOKEN_BYTES_MAX: usize = 256;

/// The operator token's option, for the servers with `SYNOD.*` commands (`kv`, `lockd`).
#[derive(clap::Args, Clone)]
pub struct AdminArgs {
    /// The operator token: when set, a connection must send `SYNOD.AUTH <token>` before any
    /// other SYNOD.* command (membership, peers, debugging), which is otherwise refused with
    /// -NOAUTH; the data commands need no token. 1 to 256 visible ASCII characters. Default:
    /// the SYNOD_ADMIN_TOKEN environment variable (preferable: a command line is visible to
    /// every user of the machine). With neither, any client may run the SYNOD.* commands,
    /// and a warning says so at start.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for AdminArgs {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.admin_token.as_ref().map(|_| "<redacted>");
        formatter
            .debug_struct("AdminArgs")
            .field("admin_token", &token)
            .finish()
    }
}

#[allow(dead_code)] // as `ADMIN_TOKEN_ENV`
impl AdminArgs {
    /// The gate of the `SYNOD.*` commands: the token of `--admin-token`, else of
    /// [`ADMIN_TOKEN_ENV`], else none, which `server` (the name its messages start with)
    /// warns about on stderr. An empty token, one longer than [`ADMIN_TOKEN_BYTES_MAX`] or
    /// one with other than visible ASCII characters is an error.
    pub fn gate(&self, server: &str) -> Result<AdminGate, String> {
        let (source, token) = match &self.admin_token {
            Some(token) => ("--admin-token", token.clone()),
            None => match std::env::var(ADMIN_TOKEN_ENV) {
                Ok(token) => (ADMIN_TOKEN_ENV, token),
                Err(std::env::VarError::NotPresent) => {
                    eprintln!(
                        "{server}: warning: no --admin-token (nor {ADMIN_TOKEN_ENV}): any client \
                         can run the SYNOD.* operator commands and reconfigure the cluster"
                    );
                    return Ok(AdminGate { token: None });
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("{ADMIN_TOKEN_ENV}: the admin token is not UTF-8"));
                }
            },
        };
        if token.is_empty() {
            return Err(format!("{source}: the admin token is empty"));
        }
        if token.len() > ADMIN_TOKEN_BYTES_MAX {
            return Err(format!(
                "{source}: the admin token is longer than {ADMIN_TOKEN_BYTES_MAX} bytes"
            ));
        }
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(format!(
                "{source}: the admin token may hold visible ASCII characters only (no spaces)"
            ));
        }
        Ok(AdminGate {
            token: Some(Arc::from(token.into_bytes())),
        })
    }
}

/// Guards a server's `SYNOD.*` operator commands: with a token, a connection must send
/// `SYNOD.AUTH <token>` (compared in constant time) before any other; without one, they
/// are open to every client (and `SYNOD.AUTH` is an error).
#[derive(Clone)]
pub struct AdminGate {
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for AdminGate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "<redacted>");
        formatter
            .debug_struct("AdminGate")
            .field("token", &token)
            .finish()
    }
}

/// What [`AdminGate::screen`] did with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Screened {
    /// Not its business: the server runs the command.
    Passed,
    /// Answered here.
    Answered,
    /// A `SYNOD.AUTH` with a wrong token, answered `-WRONGPASS` here: the connection pays
    /// for it (see [`AUTH_FAILURE_DELAY`]).
    WrongToken,
}

/// How long a wrong `SYNOD.AUTH` token waits before its `-WRONGPASS` reply (the connection
/// reads nothing meanwhile; other connections are served as usual).
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Wrong tokens a connection may send: the last one's reply is followed by the server
/// closing the connection.
pub const AUTH_FAILURES_MAX: u32 = 3;
/// Wrong tokens are answered at most one per this interval by a whole server (on top of
/// [`AUTH_FAILURE_DELAY`] each), however many connections send them: at most 10 guesses a
/// second. Only wrong tokens wait for this: the right token and every other command never
/// do, so a client guessing slows no one but other clients sending wrong tokens.
pub const AUTH_FAILURE_SPACING: Duration = Duration::from_millis(100);

/// When the next wrong token of this process may be answered (see
/// [`AUTH_FAILURE_SPACING`]).
static NEXT_AUTH_FAILURE: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Waits out the cost of one wrong token: [`AUTH_FAILURE_DELAY`], or longer while other
/// wrong tokens took the server's budget ([`AUTH_FAILURE_SPACING`]).
async fn pay_for_wrong_token() {
    let now = Instant::now();
    let until = {
        let mut next = NEXT_AUTH_FAILURE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = next.map_or(now, |next| next.max(now));
        *next = Some(slot + AUTH_FAILURE_SPACING);
        slot.max(now + AUTH_FAILURE_DELAY)
    };
    tokio::time::sleep_until(until).await;
}

impl AdminGate {
    /// Screens one command of a connection (`authenticated`: whether it has sent the right
    /// token). Answers `SYNOD.AUTH` itself (a wrong token also ends an earlier
    /// authentication), and refuses every other `SYNOD.*` command with `-NOAUTH` while a
    /// token is configured and the connection has not sent it.
    fn screen(&self, authenticated: &mut bool, args: &[Bytes], out: &mut Vec<u8>) -> Screened {
        const PREFIX: &[u8] = b"SYNOD.";
        let name = &args[0];
        if name.len() < PREFIX.len() || !name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            return Screened::Passed;
        }
        if name.eq_ignore_ascii_case(b"SYNOD.AUTH") {
            match (&self.token, args.len()) {
                (_, length) if length != 2 => resp::error(
                    out,
                    "ERR wrong number of arguments for 'synod.auth' command",
                ),
                (None, _) => resp::error(
                    out,
                    "ERR SYNOD.AUTH called, but this node has no admin token (--admin-token)",
                ),
                (Some(token), _) => {
                    *authenticated = constant_time_eq(&args[1], token);
                    if *authenticated {
                        resp::simple(out, "OK");
                    } else {
                        resp::error(out, "WRONGPASS invalid admin token");
                        return Screened::WrongToken;
                    }
                }
            }
            return Screened::Answered;
        }
        if self.token.is_some() && !*authenticated {
            resp::error(
                out,
                "NOAUTH the SYNOD.* commands need SYNOD.AUTH <admin token> first",
            );
            return Screened::Answered;
        }
        Screened::Passed
    }
}

/// Whether `given` equals `expected`, in a time that depends on their lengths only (not on
/// where they differ), so that timing answers does not reveal a token byte by byte.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, &byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(index).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

/// How a server treats its client connections (see [`serve_resp`]).
#[derive(Clone, Debug, Default)]
pub struct ClientPolicy {
    /// Close a connection that sends nothing for this long while it is waited on for a
    /// request, or reads nothing of its replies for this long (`None`: never).
    pub idle: Option<Duration>,
    /// The gate of the `SYNOD.*` commands; `None` for a server that has none (they reach
    /// the server like any other command).
    pub admin: Option<AdminGate>,
}

/// Parses a comma-separated list of node ids: `1,2,3`.
pub fn parse_ids(text: &str) -> Result<Vec<NodeId>, String> {
    text.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.trim()
                .parse()
                .map(NodeId)
                .map_err(|_| format!("bad node id `{item}`"))
        })
        .collect()
}

impl NodeArgs {
    /// This node's id, checked against --peers.
    pub fn node_id(&self) -> Result<NodeId, String> {
        let id = NodeId(self.id);
        if !self.peers.contains_key(&id) {
            return Err(format!("--id {} is not in --peers", self.id));
        }
        if let Some(unknown) = self
            .initial_members()?
            .iter()
            .find(|member| !self.peers.contains_key(member))
        {
            return Err(format!(
                "--members names {unknown}, which is not in --peers"
            ));
        }
        Ok(id)
    }

    /// The first voters: --members, or every node in --peers.
    pub fn initial_members(&self) -> Result<Vec<NodeId>, String> {
        match &self.members {
            Some(text) => parse_ids(text).map_err(|error| format!("--members: {error}")),
            None => Ok(self.peers.keys().copied().collect()),
        }
    }

    /// The replica's configuration: the members, the cluster id and the timeouts, with
    /// proposals forwarded by followers (any node serves any client).
    pub fn replica_config(&self, id: NodeId) -> Config {
        // Checked by `node_id`, which every server calls first.
        let members = self.initial_members().unwrap_or_default();
        let mut config = if self.join {
            Config::joining(id)
        } else {
            Config::new(id, members)
        };
        config.cluster_id = self.cluster_id;
        config.election_ticks = self.election_ticks;
        config.heartbeat_ticks = self.heartbeat_ticks;
        config.lease_ticks = self.lease_ticks;
        config.retransmit_ticks = self.heartbeat_ticks.saturating_mul(4).max(1);
        config.forward_proposals = true;
        config
    }

    /// The TCP transport's configuration for node `id`.
    pub fn tcp_config(&self, id: NodeId) -> TcpConfig {
        TcpConfig::new(id, self.cluster_id, self.peers[&id], self.peers.clone())
    }
}

/// Parses `--peers`: `1=127.0.0.1:7001,2=127.0.0.1:7002,...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').filter(|item| !item.is_empty()) {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not ID=ADDRESS"))?;
        let id: u64 = id.parse().map_err(|_| format!("bad node id `{id}`"))?;
        let address: SocketAddr = address
            .parse()
            .map_err(|_| format!("bad address `{address}`"))?;
        if peers.insert(NodeId(id), address).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers".to_string());
    }
    Ok(peers)
}

/// Crash-only: a panic anywhere (a broken invariant) stops the whole node, which then
/// restarts from its storage, rather than leaving it half alive with a dead task.
pub fn crash_only() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Stops the process at once with exit status 1 after printing `server: fatal: message`: for
/// a state the node cannot go on from (a peer's snapshot its state machine cannot restore,
/// say), where serving on would answer clients from a state that is not the replicated one.
/// What the node acknowledged is durable already (a stop is no worse than a crash); a
/// supervisor sees a failed process, not a hung one.
pub fn fatal(server: &str, message: &str) -> ! {
    eprintln!("{server}: fatal: {message}; stopping");
    std::process::exit(1)
}

/// A server's whole `main` once its arguments are parsed: the crash-only hook, `serve` on a
/// multi-threaded tokio runtime, and its error (if it returns one) printed as `name: error`
/// with a failing exit code.
#[allow(dead_code)] // kv builds its own runtime (it also stops on signals)
pub fn run_server(name: &str, serve: impl Future<Output = Result<(), Box<dyn Error>>>) -> ExitCode {
    crash_only();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Idle time of a client connection before the kernel's first keep-alive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keep-alive probes (where the platform lets it be set); after the kernel's
/// count of unanswered probes (9 on Linux) the connection fails: about 2.5 minutes after a
/// client vanished.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Turns on TCP keep-alive on a client connection ([`KEEPALIVE_IDLE`],
/// [`KEEPALIVE_INTERVAL`]).
pub fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Accepts client connections on `listener` forever, each served by `serve` on a task of its
/// own, at most `connections_max` at once (`open` counts them): one more is answered
/// `-ERR max number of clients reached` and closed. Every connection served gets TCP
/// keep-alive ([`set_keepalive`]) and no Nagle delay. A failed accept (out of file
/// descriptors, say) waits a moment instead of spinning.
pub async fn accept_clients<F, Fut>(
    name: String,
    listener: tokio::net::TcpListener,
    connections_max: usize,
    open: Arc<AtomicUsize>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("{name}: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= connections_max {
            open.fetch_sub(1, Ordering::AcqRel);
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        // A client that vanished (host down, cable cut) without closing is found by the
        // kernel's probes, and its connection then fails instead of lasting forever.
        if let Err(error) = set_keepalive(&stream) {
            eprintln!("{name}: cannot enable TCP keep-alive on a client connection: {error}");
        }
        let connection = serve(stream);
        let open = open.clone();
        tokio::spawn(async move {
            connection.await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// One item every `tick_ms` milliseconds (at least 1): the replica's ticks. Without leases a
/// late tick is delayed, not bunched up; with leases (`burst`) the ticks missed during a
/// stall all come at once, so the replica's clock follows real time (the lease contract).
pub fn ticks(tick_ms: u64, burst: bool) -> impl Stream<Item = ()> + Send + 'static {
    let mut interval = tokio::time::interval(Duration::from_millis(tick_ms.max(1)));
    interval.set_missed_tick_behavior(if burst {
        tokio::time::MissedTickBehavior::Burst
    } else {
        tokio::time::MissedTickBehavior::Delay
    });
    futures::stream::unfold(interval, |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}

/// Whether to keep a connection after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Read the next command.
    Continue,
    /// Write the replies so far and close.
    Close,
}

/// What a server does with one client's commands.
pub trait Commands {
    /// Runs one command (`args[0]` is its name; never empty) and appends its reply to `out`.
    fn command(
        &mut self,
        args: &[Bytes],
        out: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = After> + Send;
}

/// After a protocol error: closing with input unread would make the kernel reset the
/// connection, and a client still writing its request (a value over the limit, say) would
/// never read the error. Stop writing, then read and drop what the client still sends, for at
/// most [`DRAIN_BYTES_MAX`] bytes and [`DRAIN_TIME`], before closing.
async fn drain_and_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut drained = 0;
    let deadline = Instant::now() + DRAIN_TIME;
    while drained < DRAIN_BYTES_MAX {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => drained += read,
            _ => break, // end of input, an error, or out of time
        }
    }
}

/// The buffer capacity a connection keeps between requests; a larger one is given back.
const BUFFER_BYTES_KEPT: usize = 64 * 1024;

/// The most bytes [`drain_and_close`] reads after a protocol error.
const DRAIN_BYTES_MAX: usize = 64 << 20;
/// The longest [`drain_and_close`] waits after a protocol error.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Writes `bytes` out to the client; with an `idle` timeout, fails if the client reads
/// nothing (the write makes no progress) for that long.
async fn write_out(
    stream: &mut TcpStream,
    bytes: &[u8],
    idle: Option<Duration>,
) -> std::io::Result<()> {
    let Some(idle) = idle else {
        return stream.write_all(bytes).await;
    };
    let mut written = 0;
    while written < bytes.len() {
        match tokio::time::timeout(idle, stream.write(&bytes[written..])).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(count)) => written += count,
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}

/// Serves one client connection: parses RESP2 requests within `limits`, answers every
/// complete request buffered (a pipeline) in order, and writes the replies out at least
/// every `flush_bytes` and whenever the input runs dry. A malformed request gets
/// `-ERR Protocol error` and closes the connection (the stream cannot be resynchronized).
/// `policy.admin` screens the `SYNOD.*` commands ([`AdminGate`]) before `commands` sees
/// them. Returns when the client closes, a write fails, a command says [`After::Close`], or
/// the client stays idle past `policy.idle`: it sends nothing while no command of its runs,
/// or reads nothing of its replies (a command waiting on the cluster never counts as idle).
pub async fn serve_resp<C: Commands>(
    commands: &mut C,
    stream: &mut TcpStream,
    limits: &resp::Limits,
    flush_bytes: usize,
    policy: &ClientPolicy,
) {
    let idle = policy.idle;
    let mut authenticated = false;
    let mut wrong_tokens = 0;
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = Vec::with_capacity(16 * 1024);
    loop {
        loop {
            match resp::parse(&input, limits) {
                resp::Parsed::Incomplete => break,
                resp::Parsed::Error(error) => {
                    resp::error(&mut output, &format!("ERR {error}"));
                    let _ = write_out(stream, &output, idle).await;
                    drain_and_close(stream).await;
                    return;
                }
                resp::Parsed::Request { args, consumed } => {
                    let request = input.split_to(consumed).freeze();
                    let args: Vec<Bytes> =
                        args.into_iter().map(|range| request.slice(range)).collect();
                    if args.is_empty() {
                        continue;
                    }
                    let screened = match &policy.admin {
                        Some(gate) => gate.screen(&mut authenticated, &args, &mut output),
                        None => Screened::Passed,
                    };
                    match screened {
                        Screened::Passed => {
                            if commands.command(&args, &mut output).await == After::Close {
                                let _ = write_out(stream, &output, idle).await;
                                return;
                            }
                        }
                        Screened::Answered => {}
                        // A wrong token costs a delay before its reply (and before anything
                        // else this connection sent is read), and the connection after
                        // `AUTH_FAILURES_MAX` of them: guessing the token is slow.
                        Screened::WrongToken => {
                            wrong_tokens += 1;
                            pay_for_wrong_token().await;
                            if wrong_tokens >= AUTH_FAILURES_MAX {
                                let _ = write_out(stream, &output, idle).await;
                                drain_and_close(stream).await;
                                return;
                            }
                        }
                    }
                    if output.len() >= flush_bytes {
                        if write_out(stream, &output, idle).await.is_err() {
                            return;
                        }
                        output.clear();
                    }
                }
            }
        }
        if !output.is_empty() {
            if write_out(stream, &output, idle).await.is_err() {
                return;
            }
            output.clear();
        }
        // A large request or reply must not pin its memory while the connection idles:
        // many idle connections would hold the largest buffers each ever needed.
        if output.capacity() > BUFFER_BYTES_KEPT {
            output = Vec::with_capacity(16 * 1024);
        }
        if input.is_empty() && input.capacity() > BUFFER_BYTES_KEPT {
            input = BytesMut::with_capacity(16 * 1024);
        }
        input.reserve(16 * 1024);
        let read = match idle {
            // Idle: not a byte arrived for that long (also in the middle of a request: any
            // bytes start the wait again). Closed without a word, as Redis does.
            Some(idle) => match tokio::time::timeout(idle, stream.read_buf(&mut input)).await {
                Ok(read) => read,
                Err(_) => return,
            },
            None => stream.read_buf(&mut input).await,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A linearizable read without a log entry: asks `handle` for a read index (the leader
/// confirms it still leads; a follower asks the leader), then waits until the state machine,
/// whose last applied slot `applied` tracks, has applied that slot. True once it has: the
/// state then holds every write acknowledged before the call. False if no leader confirmed
/// (none known, the leadership ended, the leader did not answer) or the state machine did
/// not get there within [`REQUEST_TIMEOUT`].
pub async fn read_index(handle: &mut Handle, applied: &watch::Sender<Slot>) -> bool {
    let Ok(slot) = handle.read_index().await else {
        return false;
    };
    let mut applied = applied.subscribe();
    let reached = tokio::time::timeout(
        REQUEST_TIMEOUT,
        applied.wait_for(|applied| *applied >= slot),
    )
    .await;
    matches!(reached, Ok(Ok(_)))
}

/// `SYNOD.SETMEMBERS <voters> [<learners>]` (comma-separated ids; learners may be empty):
/// proposes a membership change at this node, which must lead. Replies with the slot of the
/// change (an integer), or an error (not the leader, a change under way, an invalid
/// membership). The change is done once `SYNOD.MEMBERS` shows it on the nodes.
///
/// Every node named must be this node or one of the transport's peers (`SYNOD.SETPEER`
/// first): a voter nobody can reach would leave a membership without a reachable quorum,
/// which no command could then undo.
#[allow(dead_code)] // the bank runs several groups per process and changes no membership
pub async fn set_members(
    handle: &mut Handle,
    peers: &TcpPeers,
    this_node: NodeId,
    args: &[Bytes],
    out: &mut Vec<u8>,
) {
    let list = |index: usize| match args.get(index) {
        Some(text) => std::str::from_utf8(text)
            .map_err(|_| "ids must be text".to_string())
            .and_then(parse_ids),
        None => Ok(Vec::new()),
    };
    let (voters, learners) = match (list(1), list(2)) {
        (Ok(voters), Ok(learners)) => (voters, learners),
        (Err(error), _) | (_, Err(error)) => {
            resp::error(out, &format!("ERR {error}"));
            return;
        }
    };
    let known = peers.addresses();
    if let Some(unknown) = voters
        .iter()
        .chain(&learners)
        .find(|&&id| id != this_node && !known.contains_key(&id))
    {
        resp::error(
            out,
            &format!("ERR node {unknown} has no address here: SYNOD.SETPEER it first"),
        );
        return;
    }
    match handle
        .change_membership(synod::Membership::new(voters, learners))
        .await
    {
        Some(Ok(slot)) => resp::integer_reply(out, slot as i64),
        Some(Err(error)) => resp::error(out, &format!("ERR {error}")),
        None => resp::error(out, "ERR the node is stopping"),
    }
}

/// `SYNOD.MEMBERS`: the membership in force at this node, as
/// `voters 1,2,3 learners 4` (`none` on a joining node that has not learned it yet).
#[allow(dead_code)] // as `set_members`
pub async fn members(handle: &mut Handle, out: &mut Vec<u8>) {
    let text = match handle.status().await.and_then(|status| status.membership) {
        Some(membership) => {
            let ids = |list: &[NodeId]| {
                list.iter()
                    .map(|id| id.0.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!(
                "voters {} learners {}",
                ids(&membership.voters),
                ids(&membership.learners)
            )
        }
        None => "none".to_string(),
    };
    resp::bulk(out, Some(text.as_bytes()));
}

/// `SYNOD.SETPEER <id> <ip:port>`: tells this node's transport where node `id` listens, so
/// that it can send to it and accepts its connections: before adding a node that is not in
/// `--peers` to the membership, on every member (or to follow a node that moved). Replies
/// `+OK`. Not saved: list the node in `--peers` for the next start.
#[allow(dead_code)] // as `set_members`
pub fn set_peer(peers: &TcpPeers, args: &[Bytes], out: &mut Vec<u8>) {
    let id = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|text| text.parse().ok())
        .map(NodeId);
    let address = std::str::from_utf8(&args[2])
        .ok()
        .and_then(|text| text.parse::<SocketAddr>().ok());
    match (id, address) {
        (Some(id), Some(address)) => match peers.set(id, address) {
            Ok(_) => resp::simple(out, "OK"),
            Err(error) => resp::error(out, &format!("ERR {error}")),
        },
        (None, _) => resp::error(out, "ERR bad node id"),
        (_, None) => resp::error(out, "ERR bad address (ip:port)"),
    }
}

/// `SYNOD.DELPEER <id>`: this node's transport forgets node `id` (once it has left the
/// membership): nothing is sent to it, its connections are closed and refused. Replies 1 if
/// it was a peer, 0 if not.
#[allow(dead_code)] // as `set_members`
pub fn remove_peer(peers: &TcpPeers, args: &[Bytes], out: &mut Vec<u8>) {
    match std::str::from_utf8(&args[1])
        .ok()
        .and_then(|text| text.parse().ok())
    {
        Some(id) => resp::integer_reply(out, i64::from(peers.remove(NodeId(id)).is_some())),
        None => resp::error(out, "ERR bad node id"),
    }
}

/// `SYNOD.PEERS`: this node's transport peers, as `1=127.0.0.1:7001,2=...` (the form of
/// `--peers`, without this node).
#[allow(dead_code)] // as `set_members`
pub fn list_peers(peers: &TcpPeers, out: &mut Vec<u8>) {
    let text = peers
        .addresses()
        .iter()
        .map(|(id, address)| format!("{}={address}", id.0))
        .collect::<Vec<_>>()
        .join(",");
    resp::bulk(out, Some(text.as_bytes()));
}
