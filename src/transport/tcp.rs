//! A TCP transport on tokio (feature `net`), with optional mutual TLS (feature `tls`).
//!
//! [`TcpTransport::start`] binds this node's listen address on the current tokio runtime and
//! returns the transport (hand it to the [`Driver`](crate::driver::Driver) as its
//! [`Transport`]) and a [`TcpInbound`] stream of the messages peers sent to this node (hand it
//! to the driver as its inbound stream, `inbound.boxed()`).
//!
//! ```no_run
//! use futures::StreamExt;
//! use std::collections::BTreeMap;
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use synod::driver::{Driver, DriverConfig};
//! use synod::transport::tcp::{TcpConfig, TcpTransport};
//! use synod::{Config, MemStorage, NodeId, Replica, Storage};
//!
//! # async fn node_one() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster_id = 42;
//! let peers: BTreeMap<NodeId, SocketAddr> = [
//!     (NodeId(1), "127.0.0.1:7001".parse()?),
//!     (NodeId(2), "127.0.0.1:7002".parse()?),
//!     (NodeId(3), "127.0.0.1:7003".parse()?),
//! ]
//! .into();
//! let tcp = TcpConfig::new(NodeId(1), cluster_id, peers[&NodeId(1)], peers.clone());
//! let (transport, inbound) = TcpTransport::start(tcp).await?;
//! let transport_stats = transport.stats_handle(); // readable after the driver took it
//!
//! let mut config = Config::new(NodeId(1), peers.keys().copied().collect());
//! config.cluster_id = cluster_id;
//! let mut storage = MemStorage::new();
//! let replica = Replica::new(config, storage.recover()?)?;
//! let interval = tokio::time::interval(Duration::from_millis(10)); // one tick
//! let ticks = futures::stream::unfold(interval, |mut interval| async move {
//!     interval.tick().await;
//!     Some(((), interval))
//! });
//! let (driver, handle, committed) = Driver::new(
//!     replica,
//!     storage,
//!     transport,
//!     ticks.boxed(),
//!     inbound.boxed(),
//!     DriverConfig::default(),
//! );
//! tokio::spawn(driver.run());
//! # drop((handle, committed, transport_stats));
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! Every node dials one outbound connection to each peer and writes only on it; it reads only
//! on the connections peers dialed to it. A connection therefore carries messages one way,
//! after a handshake:
//!
//! 1. (with TLS) the TLS 1.3 handshake: each side presents a certificate signed by the
//!    cluster's CA, and the dialer checks the acceptor's certificate names the node it dialed
//!    (see the `tls` module, feature `tls`);
//! 2. the dialer sends [`WireFrame::Hello`]: protocol version, cluster id, its node id and the
//!    node id it means to reach;
//! 3. the acceptor checks the hello (and, with TLS, that the dialer's certificate names the
//!    node id the hello claims) and answers [`WireFrame::Welcome`]; otherwise it closes the
//!    connection;
//! 4. the dialer sends [`WireFrame::Message`] frames, written in batches (every queued message,
//!    up to [`TcpConfig::write_batch_bytes_max`], then one flush).
//!
//! Every frame is a [`codec`](crate::transport::codec) frame: magic, format version, cluster
//! id, length and CRC32C around a bincode [`WireFrame`]. Handshake frames may be at most
//! [`HANDSHAKE_FRAME_BYTES_MAX`] bytes, so a peer that has not identified itself cannot make
//! the node buffer more than that.
//!
//! # What a peer cannot do
//!
//! The acceptor closes a connection (and counts why, in [`TcpStats`], and logs it with
//! `tracing`) on: a handshake not finished within [`TcpConfig::handshake_timeout`]; bad magic,
//! format or protocol version; another cluster id; a node id that is not a peer; a hello meant
//! for another node; garbage, a checksum mismatch, a frame longer than
//! [`TcpConfig::frame_bytes_max`] (refused from its header, before its payload is buffered) or
//! a stream that ends inside a frame; a message whose `from` is not the node the hello named
//! (spoofing) or whose `to` is not this node. Each such failure closes that connection only.
//!
//! Connections are bounded: at most [`TcpConfig::handshake_connections_max`] accepted
//! connections may be in their handshake at once (more are closed at once), and at most
//! [`TcpConfig::connections_per_peer_max`] identified connections per peer (a new one closes
//! the peer's oldest, so a restarted peer replaces its half-open predecessor). A dialer whose
//! writes stall for [`TcpConfig::write_timeout`] drops the connection and dials again.
//!
//! # Never blocking the replica
//!
//! [`Transport::send`] puts the message into the peer's bounded queue with `try_send` and
//! returns; a full queue, an unknown peer or a stopped transport drops the message and counts
//! it. While a peer is unreachable, the messages queued for it are dropped (and counted) as
//! they come, so the queue holds fresh messages when the connection returns. Paxos tolerates
//! the loss; the replica retransmits what matters.
//!
//! Reconnection waits an exponential backoff between [`TcpConfig::reconnect_backoff_min`] and
//! [`TcpConfig::reconnect_backoff_max`], each delay drawn from its upper half by an RNG seeded
//! from the cluster and node ids (reproducible, and peers do not reconnect in lockstep).

use crate::error::{ConfigError, DecodeError};
use crate::message::Message;
use crate::transport::codec::{Codec, FrameDecoder, FRAME_BYTES_MAX_LIMIT, HEADER_BYTES};
use crate::transport::Transport;
use crate::types::NodeId;
use futures::Stream;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

#[cfg(feature = "tls")]
use crate::transport::tls::{TlsConfig, TlsContext, TlsError};

/// The version of the connection protocol (hello, welcome, messages) this build speaks. The
/// acceptor refuses a hello of another version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest handshake frame ([`WireFrame::Hello`], [`WireFrame::Welcome`]), header included.
/// A real hello is under 64 bytes; this bounds what an unidentified peer can make a node read.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 256;

/// Bytes read from a socket at a time.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The longest wait after a failed `accept` (out of file descriptors, ...), so a persistent
/// failure does not spin.
const ACCEPT_RETRY_DELAY_MAX: Duration = Duration::from_secs(1);

/// What a TCP connection carries, one per codec frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireFrame {
    /// The dialer's first frame.
    Hello(Hello),
    /// The acceptor's answer to a hello it accepts; the only frame an acceptor sends.
    Welcome(Welcome),
    /// A message, dialer to acceptor, after the handshake.
    Message(Message),
}

/// The dialer introduces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the dialer.
    pub protocol_version: u16,
    /// The dialer's cluster (also in the frame header; both must match the acceptor's).
    pub cluster_id: u64,
    /// The dialer's node id: every message on the connection must be `from` it.
    pub from: NodeId,
    /// The node the dialer means to reach; an acceptor with another id refuses (the dialer's
    /// address map is wrong).
    pub to: NodeId,
}

/// The acceptor accepts a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`] of the acceptor.
    pub protocol_version: u16,
    /// The acceptor's node id (the hello's `to`).
    pub node: NodeId,
}

/// Everything a [`TcpTransport`] needs. Build it with [`TcpConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// This node's id: the `from` of everything it sends.
    pub node_id: NodeId,
    /// The cluster id written into every frame and required of every frame read; must equal
    /// the replica's [`Config::cluster_id`](crate::Config::cluster_id).
    pub cluster_id: u64,
    /// Where this node listens for its peers' connections (used by [`TcpTransport::start`]).
    pub listen_address: SocketAddr,
    /// Every peer's id and listen address. An entry for `node_id` itself is ignored, so all
    /// nodes may share one map. Only these ids may connect, and only they can be sent to.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Messages queued per peer; `send` drops (and counts) past it.
    pub send_queue_messages_max: usize,
    /// Messages received and not yet taken from the [`TcpInbound`] stream; past it the
    /// connections wait (TCP then pushes back on the senders, whose queues fill and drop).
    pub inbound_messages_max: usize,
    /// The largest frame sent or accepted, header included; at most
    /// [`FRAME_BYTES_MAX_LIMIT`]. A message that does not fit is not sent (counted); a peer's
    /// frame above it closes that peer's connection. Use the same value on every node.
    pub frame_bytes_max: usize,
    /// Bytes of frames gathered into one write before a flush (one message is always sent,
    /// whatever its size).
    pub write_batch_bytes_max: usize,
    /// The first delay before dialing a peer again.
    pub reconnect_backoff_min: Duration,
    /// The longest delay before dialing a peer again. A connection that lived at least this
    /// long resets the backoff.
    pub reconnect_backoff_max: Duration,
    /// Time allowed to dial (connect, TLS, hello, welcome) and, for the acceptor, to receive a
    /// valid hello.
    pub handshake_timeout: Duration,
    /// Time allowed for one batch to be written and flushed; past it the dialer drops the
    /// connection (the peer is gone or stalled) and dials again.
    pub write_timeout: Duration,
    /// Identified inbound connections kept per peer; a new one closes the peer's oldest.
    pub connections_per_peer_max: usize,
    /// Accepted connections allowed in their handshake at once; more are closed at once.
    pub handshake_connections_max: usize,
    /// Mutual TLS: `None` for plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<TlsConfig>,
}

impl TcpConfig {
    /// A configuration with sensible defaults for node `node_id` of cluster `cluster_id`,
    /// listening on `listen_address`, with the peers of `peers` (plain TCP, no TLS).
    pub fn new(
        node_id: NodeId,
        cluster_id: u64,
        listen_address: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> TcpConfig {
        TcpConfig {
            node_id,
            cluster_id,
            listen_address,
            peers,
            send_queue_messages_max: 4096,
            inbound_messages_max: 4096,
            frame_bytes_max: 16 << 20,
            write_batch_bytes_max: 1 << 20,
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            connections_per_peer_max: 2,
            handshake_connections_max: 16,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Checks every field; returns the first problem found.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field that is wrong and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field: &'static str, value: usize| {
            if value == 0 {
                Err(ConfigError::new(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("send_queue_messages_max", self.send_queue_messages_max)?;
        positive("inbound_messages_max", self.inbound_messages_max)?;
        positive("write_batch_bytes_max", self.write_batch_bytes_max)?;
        positive("connections_per_peer_max", self.connections_per_peer_max)?;
        positive("handshake_connections_max", self.handshake_connections_max)?;
        if self.frame_bytes_max < HANDSHAKE_FRAME_BYTES_MAX {
            return Err(ConfigError::new(
                "frame_bytes_max",
                "must be at least HANDSHAKE_FRAME_BYTES_MAX",
            ));
        }
        if self.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return Err(ConfigError::new(
                "frame_bytes_max",
                "must be at most FRAME_BYTES_MAX_LIMIT",
            ));
        }
        if self.reconnect_backoff_min.is_zero() {
            return Err(ConfigError::new(
                "reconnect_backoff_min",
                "must be above zero",
            ));
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return Err(ConfigError::new(
                "reconnect_backoff_max",
                "must be at least reconnect_backoff_min",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::new("handshake_timeout", "must be above zero"));
        }
        if self.write_timeout.is_zero() {
            return Err(ConfigError::new("write_timeout", "must be above zero"));
        }
        Ok(())
    }

    /// The peers' ids, without this node.
    fn peer_ids(&self) -> BTreeSet<NodeId> {
        self.peers
            .keys()
            .copied()
            .filter(|id| *id != self.node_id)
            .collect()
    }
}

/// The transport could not start.
#[derive(Debug, Error)]
pub enum TcpError {
    /// A field of the [`TcpConfig`] is invalid: fix it and start again.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound (in use, not local, no permission): free it or
    /// pick another one.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The listener's own address could not be read (the socket is unusable): bind a new one.
    #[error("cannot read the listener's address: {0}")]
    LocalAddress(#[source] std::io::Error),
    /// The TLS material is unusable (see [`TlsError`]): fix the certificates or key.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Declares the counters once: the public snapshot [`TcpStats`] and the atomics behind it.
macro_rules! counters {
    ($($(#[doc = $doc:expr])+ $name:ident,)+) => {
        /// The transport's counters, as read at one moment (from [`TcpTransport::stats`] or a
        /// [`TcpStatsHandle`]). Every count only grows.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct TcpStats {
            $($(#[doc = $doc])+ pub $name: u64,)+
        }

        /// The live counters, shared by every task of one transport.
        #[derive(Debug, Default)]
        struct Counters {
            $($name: AtomicU64,)+
        }

        impl Counters {
            fn snapshot(&self) -> TcpStats {
                TcpStats {
                    $($name: self.$name.load(Ordering::Relaxed),)+
                }
            }
        }
    };
}

counters! {
    /// Messages `send` put into a peer's queue.
    queued,
    /// Messages written (and flushed) to a peer's connection.
    sent,
    /// Messages `send` dropped because the peer's queue was full.
    dropped_full,
    /// Messages `send` dropped because `to` is not a peer (or is this node itself).
    dropped_unknown,
    /// Messages `send` dropped because the transport is shutting down.
    dropped_stopped,
    /// Messages dropped because they do not fit in `frame_bytes_max` (or cannot be encoded).
    dropped_encode,
    /// Messages dropped because their peer was unreachable: queued while it was, or in a
    /// batch whose write failed.
    dropped_disconnected,
    /// Outbound connections established (handshake done).
    dialed,
    /// Outbound dials that failed (refused, timed out, handshake refused).
    dial_failures,
    /// Dials made after the first one to the same peer.
    reconnects,
    /// Inbound connections accepted (handshake done, peer identified).
    accepted,
    /// Inbound connections closed because the same peer opened a newer one beyond
    /// `connections_per_peer_max`.
    displaced,
    /// `accept` calls that failed (the OS refused a socket).
    accept_errors,
    /// Inbound connections refused: too many handshakes in progress.
    rejected_busy,
    /// Inbound connections refused: no valid hello within `handshake_timeout`.
    rejected_timeout,
    /// Inbound connections refused: closed (or failed) before the hello was complete.
    rejected_closed,
    /// Inbound connections refused: the TLS handshake failed (no certificate, a certificate
    /// not signed by the CA, not TLS at all).
    rejected_tls,
    /// Inbound connections refused: the certificate does not name the node id of the hello.
    rejected_identity,
    /// Inbound connections refused: garbage, bad magic, checksum mismatch, or another frame
    /// than a hello first.
    rejected_malformed,
    /// Inbound connections refused: a hello frame longer than `HANDSHAKE_FRAME_BYTES_MAX`.
    rejected_oversized,
    /// Inbound connections refused: another frame format or protocol version.
    rejected_version,
    /// Inbound connections refused: another cluster id.
    rejected_foreign_cluster,
    /// Inbound connections refused: the hello's node id is not a peer.
    rejected_unknown_node,
    /// Inbound connections refused: the hello is meant for another node.
    rejected_wrong_recipient,
    /// Messages received and handed to the inbound stream.
    frames_received,
    /// Connections closed for a frame that is garbage, fails its checksum or is not a value.
    refused_malformed,
    /// Connections closed for a frame header declaring more than `frame_bytes_max`.
    refused_oversized,
    /// Connections that ended inside a frame.
    refused_truncated,
    /// Connections closed for a message whose `from` is not the node the hello named.
    refused_spoofed,
    /// Connections closed for a message whose `to` is not this node.
    refused_misaddressed,
    /// Connections closed for a handshake frame after the handshake.
    refused_unexpected,
}

impl TcpStats {
    /// Inbound connections refused during their handshake, for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_busy
            + self.rejected_timeout
            + self.rejected_closed
            + self.rejected_tls
            + self.rejected_identity
            + self.rejected_malformed
            + self.rejected_oversized
            + self.rejected_version
            + self.rejected_foreign_cluster
            + self.rejected_unknown_node
            + self.rejected_wrong_recipient
    }

    /// Identified connections closed for a bad frame, for any reason.
    pub fn refused_total(&self) -> u64 {
        self.refused_malformed
            + self.refused_oversized
            + self.refused_truncated
            + self.refused_spoofed
            + self.refused_misaddressed
            + self.refused_unexpected
    }

    /// Messages dropped on the sending side, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_full
            + self.dropped_unknown
            + self.dropped_stopped
            + self.dropped_encode
            + self.dropped_disconnected
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, count: u64) {
    counter.fetch_add(count, Ordering::Relaxed);
}

/// Reads a transport's counters; keeps working after the transport moved into a driver.
#[derive(Clone, Debug)]
pub struct TcpStatsHandle {
    counters: Arc<Counters>,
}

impl TcpStatsHandle {
    /// The counters now.
    pub fn get(&self) -> TcpStats {
        self.counters.snapshot()
    }
}

/// The messages peers sent to this node, in the order each connection delivered them. Feed it
/// to the [`Driver`](crate::driver::Driver) as its inbound stream. It ends once the transport
/// has stopped.
#[derive(Debug)]
pub struct TcpInbound {
    receiver: mpsc::Receiver<Message>,
}

impl Stream for TcpInbound {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Message>> {
        self.receiver.poll_recv(context)
    }
}

/// What every task of a transport holds: the stop signal, and a token whose release tells
/// [`TcpTransport::shutdown`] the task has finished.
#[derive(Clone, Debug)]
struct Lifetime {
    stop: watch::Receiver<()>,
    _alive: mpsc::Sender<()>,
}

impl Lifetime {
    /// Completes once the transport is stopped (its stop sender dropped).
    async fn stopped(&mut self) {
        // Nothing is ever sent: `changed` only returns, with an error, when the sender drops.
        while self.stop.changed().await.is_ok() {}
    }
}

/// State shared by the transport and its tasks.
#[derive(Debug)]
struct Shared {
    config: TcpConfig,
    peers: BTreeSet<NodeId>,
    codec: Codec,
    handshake_codec: Codec,
    counters: Arc<Counters>,
    /// Accepted connections still in their handshake. Invariant: at most
    /// `config.handshake_connections_max`.
    handshaking: AtomicUsize,
    registry: Mutex<Registry>,
    #[cfg(feature = "tls")]
    tls: Option<TlsContext>,
}

impl Shared {
    fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry is consistent after every statement; a panic elsewhere cannot break it.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The identified inbound connections of every peer, oldest first.
#[derive(Debug, Default)]
struct Registry {
    next_serial: u64,
    /// Invariant: each list holds at most `connections_per_peer_max` entries.
    connections: BTreeMap<NodeId, VecDeque<(u64, oneshot::Sender<()>)>>,
}

/// An identified inbound connection's place in the registry; dropping it frees the place.
struct Registration {
    shared: Arc<Shared>,
    peer: NodeId,
    serial: u64,
}

impl Registration {
    /// Registers a connection from `peer`, closing its oldest one if it has too many. The
    /// receiver completes when a newer connection displaces this one.
    fn new(shared: &Arc<Shared>, peer: NodeId) -> (Registration, oneshot::Receiver<()>) {
        let (displace, displaced) = oneshot::channel();
        let mut registry = shared.registry();
        let serial = registry.next_serial;
        registry.next_serial += 1;
        let list = registry.connections.entry(peer).or_default();
        list.push_back((serial, displace));
        let limit = shared.config.connections_per_peer_max;
        while list.len() > limit {
            if let Some((_, oldest)) = list.pop_front() {
                let _ = oldest.send(());
                bump(&shared.counters.displaced);
            }
        }
        drop(registry);
        let registration = Registration {
            shared: shared.clone(),
            peer,
            serial,
        };
        (registration, displaced)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        if let Some(list) = registry.connections.get_mut(&self.peer) {
            list.retain(|(serial, _)| *serial != self.serial);
            if list.is_empty() {
                registry.connections.remove(&self.peer);
            }
        }
    }
}

/// A place among the connections in their handshake; dropping it frees the place.
struct HandshakeSlot {
    shared: Arc<Shared>,
}

impl HandshakeSlot {
    fn acquire(shared: &Arc<Shared>) -> Option<HandshakeSlot> {
        let limit = shared.config.handshake_connections_max;
        let taken = shared
            .handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < limit).then_some(count + 1)
            });
        taken.ok().map(|_| HandshakeSlot {
            shared: shared.clone(),
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.shared.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends messages to peers over TCP (or mutual TLS); see the [module documentation](self).
///
/// Dropping the transport stops every task it started (listener, dialers, connections);
/// [`shutdown`](TcpTransport::shutdown) does the same and waits for them.
pub struct TcpTransport {
    node_id: NodeId,
    local_address: SocketAddr,
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    counters: Arc<Counters>,
    /// Dropped to stop every task.
    stop: watch::Sender<()>,
    /// Yields `None` once every task has finished.
    alive: mpsc::Receiver<()>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TcpTransport")
            .field("node_id", &self.node_id)
            .field("local_address", &self.local_address)
            .field("peers", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TcpTransport {
    /// Binds `config.listen_address` and starts the transport on the current tokio runtime:
    /// a listener task, and one dialer task per peer. Returns the transport and the stream of
    /// inbound messages.
    ///
    /// # Errors
    /// [`TcpError::Config`] for an invalid config, [`TcpError::Bind`] if the address cannot be
    /// bound, `TcpError::Tls` (feature `tls`) for unusable TLS material.
    ///
    /// # Panics
    /// If called outside a tokio runtime (as `tokio::spawn` does).
    pub async fn start(config: TcpConfig) -> Result<(TcpTransport, TcpInbound), TcpError> {
        config.validate()?;
        let address = config.listen_address;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| TcpError::Bind { address, source })?;
        TcpTransport::start_with_listener(config, listener)
    }

    /// As [`start`](TcpTransport::start), on a listener already bound (for example to port 0,
    /// to learn the address before telling the peers); `config.listen_address` is not used.
    ///
    /// # Errors
    /// As [`start`](TcpTransport::start); [`TcpError::LocalAddress`] if the listener's address
    /// cannot be read.
    ///
    /// # Panics
    /// If called outside a tokio runtime.
    pub fn start_with_listener(
        config: TcpConfig,
        listener: TcpListener,
    ) -> Result<(TcpTransport, TcpInbound), TcpError> {
        config.validate()?;
        let local_address = listener.local_addr().map_err(TcpError::LocalAddress)?;
        #[cfg(feature = "tls")]
        let tls = match &config.tls {
            Some(tls) => Some(TlsContext::new(tls)?),
            None => None,
        };
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            peers: config.peer_ids(),
            codec: Codec::new(config.cluster_id, config.frame_bytes_max),
            handshake_codec: Codec::new(config.cluster_id, HANDSHAKE_FRAME_BYTES_MAX),
            counters: counters.clone(),
            handshaking: AtomicUsize::new(0),
            registry: Mutex::new(Registry::default()),
            #[cfg(feature = "tls")]
            tls,
            config,
        });
        let (stop, stop_receiver) = watch::channel(());
        let (alive_sender, alive) = mpsc::channel(1);
        let lifetime = Lifetime {
            stop: stop_receiver,
            _alive: alive_sender,
        };
        let (inbound_sender, inbound) = mpsc::channel(shared.config.inbound_messages_max);
        let mut queues = BTreeMap::new();
        for peer in &shared.peers {
            let Some(address) = shared.config.peers.get(peer).copied() else {
                continue;
            };
            let (queue, receiver) = mpsc::channel(shared.config.send_queue_messages_max);
            queues.insert(*peer, queue);
            tokio::spawn(run_dialer(
                shared.clone(),
                *peer,
                address,
                receiver,
                lifetime.clone(),
            ));
        }
        info!(
            node = %shared.node_id(),
            address = %local_address,
            peers = shared.peers.len(),
            "tcp transport listening"
        );
        let node_id = shared.node_id();
        tokio::spawn(run_listener(listener, shared, inbound_sender, lifetime));
        let transport = TcpTransport {
            node_id,
            local_address,
            queues,
            counters,
            stop,
            alive,
        };
        Ok((transport, TcpInbound { receiver: inbound }))
    }

    /// The address this node listens on (the real port when it bound port 0).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The counters now.
    pub fn stats(&self) -> TcpStats {
        self.counters.snapshot()
    }

    /// A handle that reads the counters, also after the transport moved into a driver.
    pub fn stats_handle(&self) -> TcpStatsHandle {
        TcpStatsHandle {
            counters: self.counters.clone(),
        }
    }

    /// Stops every task of the transport (closing the listener and every connection) and
    /// waits until they have finished, so the listen address can be bound again at once.
    pub async fn shutdown(self) {
        let TcpTransport {
            stop,
            mut alive,
            queues,
            ..
        } = self;
        drop(stop);
        drop(queues);
        // Every task holds a sender of `alive`; `recv` yields `None` once all are dropped.
        while alive.recv().await.is_some() {}
    }
}

impl Transport for TcpTransport {
    /// Queues `message` for its peer without waiting; drops and counts it if the peer's queue
    /// is full, the peer is unknown, or the transport is stopping.
    ///
    /// # Panics
    /// If `message.from` is not this node (a programming error: the peer would refuse it).
    fn send(&mut self, message: Message) {
        assert_eq!(
            message.from, self.node_id,
            "TcpTransport of {} asked to send a message from {}",
            self.node_id, message.from
        );
        let Some(queue) = self.queues.get(&message.to) else {
            trace!(node = %self.node_id, to = %message.to, "dropped a message to an unknown node");
            bump(&self.counters.dropped_unknown);
            return;
        };
        match queue.try_send(message) {
            Ok(()) => bump(&self.counters.queued),
            Err(mpsc::error::TrySendError::Full(message)) => {
                trace!(node = %self.node_id, to = %message.to, "send queue full: dropped a message");
                bump(&self.counters.dropped_full);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => bump(&self.counters.dropped_stopped),
        }
    }
}

/// Why an inbound connection was refused during its handshake.
#[derive(Debug, Error)]
enum Rejection {
    #[error("too many connections in their handshake")]
    Busy,
    #[error("no valid hello within the handshake timeout")]
    Timeout,
    #[error("closed before the handshake completed: {0}")]
    Closed(String),
    #[cfg(feature = "tls")]
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[cfg(feature = "tls")]
    #[error("certificate does not identify node {node}: {reason}")]
    Identity { node: NodeId, reason: String },
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("handshake frame too long: {0}")]
    Oversized(DecodeError),
    #[error("unsupported version: {0}")]
    Version(String),
    #[error("foreign cluster: {0}")]
    ForeignCluster(String),
    #[error("node {0} is not a peer")]
    UnknownNode(NodeId),
    #[error("hello meant for node {0}")]
    WrongRecipient(NodeId),
}

impl Rejection {
    fn counter<'a>(&self, counters: &'a Counters) -> &'a AtomicU64 {
        match self {
            Rejection::Busy => &counters.rejected_busy,
            Rejection::Timeout => &counters.rejected_timeout,
            Rejection::Closed(_) => &counters.rejected_closed,
            #[cfg(feature = "tls")]
            Rejection::Tls(_) => &counters.rejected_tls,
            #[cfg(feature = "tls")]
            Rejection::Identity { .. } => &counters.rejected_identity,
            Rejection::Malformed(_) => &counters.rejected_malformed,
            Rejection::Oversized(_) => &counters.rejected_oversized,
            Rejection::Version(_) => &counters.rejected_version,
            Rejection::ForeignCluster(_) => &counters.rejected_foreign_cluster,
            Rejection::UnknownNode(_) => &counters.rejected_unknown_node,
            Rejection::WrongRecipient(_) => &counters.rejected_wrong_recipient,
        }
    }
}

impl From<DecodeError> for Rejection {
    fn from(error: DecodeError) -> Rejection {
        match error {
            DecodeError::Truncated { .. } => Rejection::Closed(error.to_string()),
            DecodeError::Oversized { .. } => Rejection::Oversized(error),
            DecodeError::UnsupportedVersion(_) => Rejection::Version(error.to_string()),
            DecodeError::ForeignCluster { .. } => Rejection::ForeignCluster(error.to_string()),
            DecodeError::BadMagic(_) | DecodeError::Checksum { .. } | DecodeError::Payload(_) => {
                Rejection::Malformed(error.to_string())
            }
        }
    }
}

/// Why a dial failed, or why an outbound connection ended.
#[derive(Debug, Error)]
enum LinkError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(Rejection),
    #[error("welcome from node {found}, dialed node {expected}")]
    WrongPeer { found: NodeId, expected: NodeId },
    #[error("the peer closed the connection")]
    ClosedByPeer,
    #[error("the peer sent bytes on an outbound connection")]
    UnexpectedBytes,
    #[error("a write did not finish within the write timeout")]
    WriteTimeout,
}

/// Why an identified inbound connection ended.
#[derive(Debug, Error)]
enum InboundEnd {
    #[error("the peer closed the connection")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("a newer connection from the same peer replaced it")]
    Displaced,
    #[error("the transport stopped")]
    Stopped,
    #[error("the inbound stream was dropped")]
    InboundDropped,
    #[error("refused frame: {0}")]
    Refused(String),
}

/// A dialed connection, after its handshake.
enum Outbound {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// An accepted connection, after its handshake.
enum Inbound {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Reads one handshake frame: the header, then exactly the frame's length (so no byte of the
/// next frame is consumed), never more than [`HANDSHAKE_FRAME_BYTES_MAX`].
async fn read_handshake_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    codec: &Codec,
) -> Result<WireFrame, Rejection> {
    let mut frame = [0u8; HANDSHAKE_FRAME_BYTES_MAX];
    let closed = |error: std::io::Error| Rejection::Closed(error.to_string());
    stream
        .read_exact(&mut frame[..HEADER_BYTES])
        .await
        .map_err(closed)?;
    let frame_bytes = match codec.decode::<WireFrame>(&frame[..HEADER_BYTES]) {
        Ok((value, _)) => return Ok(value),
        // A valid header: the codec checked the length is within the handshake limit.
        Err(DecodeError::Truncated { needed, .. }) => needed,
        Err(error) => return Err(error.into()),
    };
    let Some(payload) = frame.get_mut(HEADER_BYTES..frame_bytes) else {
        return Err(Rejection::Malformed(format!(
            "frame length {frame_bytes} out of bounds"
        )));
    };
    stream.read_exact(payload).await.map_err(closed)?;
    let (value, _) = codec.decode::<WireFrame>(&frame[..frame_bytes])?;
    Ok(value)
}

/// Writes one handshake frame and flushes it.
async fn write_handshake_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    codec: &Codec,
    frame: &WireFrame,
) -> Result<(), std::io::Error> {
    let bytes = codec
        .encode(frame)
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

// ---------------------------------------------------------------------------------------------
// Dialing side.

/// Keeps one outbound connection to `peer`: dials, writes queued messages in batches, and
/// dials again with backoff when the connection fails, until the transport stops.
async fn run_dialer(
    shared: Arc<Shared>,
    peer: NodeId,
    address: SocketAddr,
    mut queue: mpsc::Receiver<Message>,
    mut lifetime: Lifetime,
) {
    let node = shared.node_id();
    let counters = &shared.counters;
    let seed = shared.config.cluster_id
        ^ node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ peer.0.rotate_left(32);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut failures: u32 = 0;
    let mut first_dial = true;
    loop {
        if !first_dial {
            bump(&counters.reconnects);
        }
        first_dial = false;
        let dialed = tokio::select! {
            biased;
            () = lifetime.stopped() => return,
            dialed = tokio::time::timeout(shared.config.handshake_timeout, dial(&shared, peer, address)) => dialed,
        };
        match dialed {
            Ok(Ok(connection)) => {
                bump(&counters.dialed);
                debug!(%node, %peer, %address, "connected");
                let connected_at = Instant::now();
                let ended = match connection {
                    Outbound::Plain(stream) => {
                        write_messages(stream, &shared, &mut queue, &mut lifetime).await
                    }
                    #[cfg(feature = "tls")]
                    Outbound::Tls(stream) => {
                        write_messages(*stream, &shared, &mut queue, &mut lifetime).await
                    }
                };
                match ended {
                    None => return,
                    Some(error) => info!(%node, %peer, %address, %error, "connection lost"),
                }
                failures = if connected_at.elapsed() >= shared.config.reconnect_backoff_max {
                    0
                } else {
                    failures.saturating_add(1)
                };
            }
            Ok(Err(error)) => {
                bump(&counters.dial_failures);
                debug!(%node, %peer, %address, %error, "dial failed");
                failures = failures.saturating_add(1);
            }
            Err(_elapsed) => {
                bump(&counters.dial_failures);
                debug!(%node, %peer, %address, "dial timed out");
                failures = failures.saturating_add(1);
            }
        }
        let delay = backoff_delay(&shared.config, failures, &mut rng);
        if !discard_while_waiting(delay, &shared, &mut queue, &mut lifetime).await {
            return;
        }
    }
}

/// The delay before the next dial after `failures` failures in a row: `min * 2^failures`
/// capped at `max`, then drawn from its upper half.
fn backoff_delay(config: &TcpConfig, failures: u32, rng: &mut ChaCha8Rng) -> Duration {
    let min = config.reconnect_backoff_min;
    let max = config.reconnect_backoff_max;
    let factor = 1u32 << failures.min(20);
    let capped = min.saturating_mul(factor).min(max);
    let nanos = u64::try_from(capped.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    let jitter = rng.next_u64() % (half + 1);
    Duration::from_nanos(nanos - half + jitter)
}

/// Waits `delay`, dropping (and counting) whatever is queued for the unreachable peer.
/// Returns false if the transport stopped.
async fn discard_while_waiting(
    delay: Duration,
    shared: &Shared,
    queue: &mut mpsc::Receiver<Message>,
    lifetime: &mut Lifetime,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            () = lifetime.stopped() => return false,
            () = &mut sleep => return true,
            message = queue.recv() => match message {
                Some(_) => bump(&shared.counters.dropped_disconnected),
                None => return false,
            },
        }
    }
}

/// Connects to `peer` at `address` and runs the dialer's side of the handshake.
async fn dial(shared: &Shared, peer: NodeId, address: SocketAddr) -> Result<Outbound, LinkError> {
    let stream = TcpStream::connect(address).await?;
    // Latency matters more than packet count: batches are already gathered before writing.
    stream.set_nodelay(true)?;
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.tls {
        let mut stream = tls.connect(peer, stream).await?;
        hello(&mut stream, shared, peer).await?;
        return Ok(Outbound::Tls(Box::new(stream)));
    }
    let mut stream = stream;
    hello(&mut stream, shared, peer).await?;
    Ok(Outbound::Plain(stream))
}

/// Sends the hello and waits for the welcome.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    peer: NodeId,
) -> Result<(), LinkError> {
    let hello = WireFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: shared.config.cluster_id,
        from: shared.node_id(),
        to: peer,
    });
    write_handshake_frame(stream, &shared.handshake_codec, &hello).await?;
    let answer = read_handshake_frame(stream, &shared.handshake_codec)
        .await
        .map_err(LinkError::Handshake)?;
    match answer {
        WireFrame::Welcome(welcome) if welcome.protocol_version != PROTOCOL_VERSION => {
            Err(LinkError::Handshake(Rejection::Version(format!(
                "protocol version {}",
                welcome.protocol_version
            ))))
        }
        WireFrame::Welcome(welcome) if welcome.node != peer => Err(LinkError::WrongPeer {
            found: welcome.node,
            expected: peer,
        }),
        WireFrame::Welcome(_) => Ok(()),
        WireFrame::Hello(_) | WireFrame::Message(_) => Err(LinkError::Handshake(
            Rejection::Malformed("expected a welcome".to_string()),
        )),
    }
}

/// Writes queued messages to an established connection, in batches, until the connection
/// fails (returns the error) or the transport stops (returns `None`).
async fn write_messages<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: &Shared,
    queue: &mut mpsc::Receiver<Message>,
    lifetime: &mut Lifetime,
) -> Option<LinkError> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let counters = &shared.counters;
    let batch_bytes_max = shared.config.write_batch_bytes_max;
    let mut probe = [0u8; 1];
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            () = lifetime.stopped() => return None,
            // The acceptor never writes after its welcome: a read ends only with the
            // connection (or a broken peer), which is how a dead connection is noticed early.
            read = reader.read(&mut probe) => {
                return Some(match read {
                    Ok(0) => LinkError::ClosedByPeer,
                    Ok(_) => LinkError::UnexpectedBytes,
                    Err(error) => LinkError::Io(error),
                });
            }
            message = queue.recv() => match message {
                Some(message) => message,
                None => return None,
            },
        };
        batch.clear();
        let mut messages = 0u64;
        let mut next = Some(first);
        // Bounded by the queue's capacity and by `batch_bytes_max`.
        while let Some(message) = next.take() {
            let to = message.to;
            match shared
                .codec
                .encode_into(&WireFrame::Message(message), &mut batch)
            {
                Ok(()) => messages += 1,
                Err(error) => {
                    warn!(node = %shared.node_id(), %to, %error, "message not sent");
                    bump(&counters.dropped_encode);
                }
            }
            if batch.len() < batch_bytes_max {
                next = queue.try_recv().ok();
            }
        }
        if messages == 0 {
            continue;
        }
        let write = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        let written = tokio::select! {
            biased;
            () = lifetime.stopped() => return None,
            written = tokio::time::timeout(shared.config.write_timeout, write) => written,
        };
        match written {
            Ok(Ok(())) => add(&counters.sent, messages),
            Ok(Err(error)) => {
                add(&counters.dropped_disconnected, messages);
                return Some(LinkError::Io(error));
            }
            Err(_elapsed) => {
                add(&counters.dropped_disconnected, messages);
                return Some(LinkError::WriteTimeout);
            }
        }
        // Give back the memory of an unusually large batch.
        if batch.capacity() > batch_bytes_max.saturating_mul(4) {
            batch = Vec::new();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting side.

/// Accepts connections until the transport stops; each gets its own task.
async fn run_listener(
    listener: TcpListener,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    mut lifetime: Lifetime,
) {
    let node = shared.node_id();
    let mut accept_failures: u32 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            () = lifetime.stopped() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => {
                accept_failures = 0;
                accepted
            }
            Err(error) => {
                // Usually out of file descriptors: wait for connections to close.
                bump(&shared.counters.accept_errors);
                warn!(%node, %error, "accept failed");
                accept_failures = accept_failures.saturating_add(1);
                let delay = shared
                    .config
                    .reconnect_backoff_min
                    .saturating_mul(accept_failures.min(20))
                    .min(ACCEPT_RETRY_DELAY_MAX);
                tokio::select! {
                    () = lifetime.stopped() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let Some(slot) = HandshakeSlot::acquire(&shared) else {
            let rejection = Rejection::Busy;
            bump(rejection.counter(&shared.counters));
            debug!(%node, %address, %rejection, "connection refused");
            continue;
        };
        tokio::spawn(serve_inbound(
            stream,
            address,
            slot,
            shared.clone(),
            inbound.clone(),
            lifetime.clone(),
        ));
    }
}

/// Runs one accepted connection: handshake within the timeout, then reads its messages.
async fn serve_inbound(
    stream: TcpStream,
    address: SocketAddr,
    slot: HandshakeSlot,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    mut lifetime: Lifetime,
) {
    let node = shared.node_id();
    let _ = stream.set_nodelay(true);
    let handshake = tokio::select! {
        biased;
        () = lifetime.stopped() => return,
        handshake = tokio::time::timeout(shared.config.handshake_timeout, accept(stream, &shared)) => handshake,
    };
    let handshake = handshake.unwrap_or(Err(Rejection::Timeout));
    drop(slot);
    let (connection, peer) = match handshake {
        Ok(accepted) => accepted,
        Err(rejection) => {
            bump(rejection.counter(&shared.counters));
            warn!(%node, %address, %rejection, "connection refused");
            return;
        }
    };
    bump(&shared.counters.accepted);
    debug!(%node, %peer, %address, "accepted");
    let (_registration, displaced) = Registration::new(&shared, peer);
    let mut reader = Reader {
        shared: &shared,
        peer,
        inbound,
        displaced,
    };
    let ended = match connection {
        Inbound::Plain(stream) => reader.read_messages(stream, &mut lifetime).await,
        #[cfg(feature = "tls")]
        Inbound::Tls(stream) => reader.read_messages(*stream, &mut lifetime).await,
    };
    match ended {
        InboundEnd::Refused(reason) => {
            warn!(%node, %peer, %address, %reason, "connection closed: refused a frame");
        }
        other => debug!(%node, %peer, %address, reason = %other, "connection closed"),
    }
}

/// The acceptor's side of the handshake; returns the connection and the identified peer.
async fn accept(stream: TcpStream, shared: &Shared) -> Result<(Inbound, NodeId), Rejection> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.tls {
        let mut stream = tls
            .accept(stream)
            .await
            .map_err(|error| Rejection::Tls(error.to_string()))?;
        let hello = read_hello(&mut stream, shared).await?;
        let (_, connection) = stream.get_ref();
        tls.check_identity(connection.peer_certificates(), hello.from)
            .map_err(|reason| Rejection::Identity {
                node: hello.from,
                reason,
            })?;
        welcome(&mut stream, shared).await?;
        return Ok((Inbound::Tls(Box::new(stream)), hello.from));
    }
    let mut stream = stream;
    let hello = read_hello(&mut stream, shared).await?;
    welcome(&mut stream, shared).await?;
    Ok((Inbound::Plain(stream), hello.from))
}

/// Reads and checks the dialer's hello.
async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    shared: &Shared,
) -> Result<Hello, Rejection> {
    let hello = match read_handshake_frame(stream, &shared.handshake_codec).await? {
        WireFrame::Hello(hello) => hello,
        WireFrame::Welcome(_) | WireFrame::Message(_) => {
            return Err(Rejection::Malformed("first frame is not a hello".into()))
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Rejection::Version(format!(
            "protocol version {}",
            hello.protocol_version
        )));
    }
    if hello.cluster_id != shared.config.cluster_id {
        return Err(Rejection::ForeignCluster(format!(
            "hello names cluster {}",
            hello.cluster_id
        )));
    }
    if !shared.peers.contains(&hello.from) {
        return Err(Rejection::UnknownNode(hello.from));
    }
    if hello.to != shared.node_id() {
        return Err(Rejection::WrongRecipient(hello.to));
    }
    Ok(hello)
}

/// Answers an accepted hello.
async fn welcome<S: AsyncWrite + Unpin>(stream: &mut S, shared: &Shared) -> Result<(), Rejection> {
    let welcome = WireFrame::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        node: shared.node_id(),
    });
    write_handshake_frame(stream, &shared.handshake_codec, &welcome)
        .await
        .map_err(|error| Rejection::Closed(error.to_string()))
}

/// Reads the messages of one identified inbound connection.
struct Reader<'a> {
    shared: &'a Shared,
    peer: NodeId,
    inbound: mpsc::Sender<Message>,
    displaced: oneshot::Receiver<()>,
}

impl Reader<'_> {
    /// Decodes frames and hands their messages to the inbound stream, until the connection
    /// ends, a frame is refused, a newer connection displaces this one, or the transport
    /// stops. The `displaced` receiver is never polled again once it completed.
    async fn read_messages<S: AsyncRead + Unpin>(
        &mut self,
        mut stream: S,
        lifetime: &mut Lifetime,
    ) -> InboundEnd {
        let mut decoder = FrameDecoder::<WireFrame>::new(self.shared.codec);
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut frames = Vec::new();
        loop {
            let read = tokio::select! {
                biased;
                () = lifetime.stopped() => return InboundEnd::Stopped,
                _ = &mut self.displaced => return InboundEnd::Displaced,
                read = stream.read(&mut buffer) => read,
            };
            let bytes = match read {
                Ok(0) => {
                    return match decoder.finish() {
                        Ok(()) => InboundEnd::Closed,
                        Err(error) => self.refuse(&error),
                    }
                }
                Ok(bytes) => bytes,
                Err(error) => return InboundEnd::Io(error),
            };
            let pushed = decoder.push(&buffer[..bytes], &mut frames);
            // Frames decoded before an error are valid and delivered; at most one read's
            // worth (READ_BUFFER_BYTES / HEADER_BYTES frames).
            for frame in frames.drain(..) {
                let message = match self.check(frame) {
                    Ok(message) => message,
                    Err(end) => return end,
                };
                let delivered = tokio::select! {
                    biased;
                    () = lifetime.stopped() => return InboundEnd::Stopped,
                    _ = &mut self.displaced => return InboundEnd::Displaced,
                    delivered = self.inbound.send(message) => delivered,
                };
                if delivered.is_err() {
                    return InboundEnd::InboundDropped;
                }
                bump(&self.shared.counters.frames_received);
            }
            if let Err(error) = pushed {
                return self.refuse(&error);
            }
        }
    }

    /// The message of a frame the peer may send, or why the connection must close.
    fn check(&self, frame: WireFrame) -> Result<Message, InboundEnd> {
        let counters = &self.shared.counters;
        let message = match frame {
            WireFrame::Message(message) => message,
            WireFrame::Hello(_) | WireFrame::Welcome(_) => {
                bump(&counters.refused_unexpected);
                return Err(InboundEnd::Refused(
                    "handshake frame after the handshake".into(),
                ));
            }
        };
        if message.from != self.peer {
            bump(&counters.refused_spoofed);
            return Err(InboundEnd::Refused(format!(
                "{} message claims to be from {}",
                message.body.kind(),
                message.from
            )));
        }
        if message.to != self.shared.node_id() {
            bump(&counters.refused_misaddressed);
            return Err(InboundEnd::Refused(format!(
                "{} message addressed to {}",
                message.body.kind(),
                message.to
            )));
        }
        Ok(message)
    }

    /// Counts a decoding failure and ends the connection.
    fn refuse(&self, error: &DecodeError) -> InboundEnd {
        let counters = &self.shared.counters;
        let counter = match error {
            DecodeError::Truncated { .. } => &counters.refused_truncated,
            DecodeError::Oversized { .. } => &counters.refused_oversized,
            _ => &counters.refused_malformed,
        };
        bump(counter);
        InboundEnd::Refused(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TcpConfig {
        let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let peers = [(NodeId(1), address), (NodeId(2), address)].into();
        TcpConfig::new(NodeId(1), 7, address, peers)
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() {
        let config = config();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for failures in 0..40 {
            let capped = config
                .reconnect_backoff_min
                .saturating_mul(1 << failures.min(20))
                .min(config.reconnect_backoff_max);
            for _ in 0..20 {
                let delay = backoff_delay(&config, failures, &mut rng);
                assert!(delay <= capped, "{failures}: {delay:?} > {capped:?}");
                assert!(
                    delay >= capped / 2,
                    "{failures}: {delay:?} < half {capped:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_is_reproducible_from_its_seed() {
        let config = config();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..10)
                .map(|failures| backoff_delay(&config, failures, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn validate_names_the_wrong_field() {
        assert_eq!(config().validate(), Ok(()));
        type Breaker = fn(&mut TcpConfig);
        let cases: [(&str, Breaker); 9] = [
            ("send_queue_messages_max", |c| c.send_queue_messages_max = 0),
            ("inbound_messages_max", |c| c.inbound_messages_max = 0),
            ("frame_bytes_max", |c| c.frame_bytes_max = 100),
            ("frame_bytes_max", |c| {
                c.frame_bytes_max = FRAME_BYTES_MAX_LIMIT + 1
            }),
            ("reconnect_backoff_min", |c| {
                c.reconnect_backoff_min = Duration::ZERO
            }),
            ("reconnect_backoff_max", |c| {
                c.reconnect_backoff_max = Duration::from_millis(1)
            }),
            ("handshake_timeout", |c| {
                c.handshake_timeout = Duration::ZERO
            }),
            ("connections_per_peer_max", |c| {
                c.connections_per_peer_max = 0
            }),
            ("handshake_connections_max", |c| {
                c.handshake_connections_max = 0
            }),
        ];
        for (field, break_it) in cases {
            let mut config = config();
            break_it(&mut config);
            assert_eq!(config.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn a_hello_fits_the_handshake_frame_limit() {
        let codec = Codec::new(u64::MAX, HANDSHAKE_FRAME_BYTES_MAX);
        let hello = WireFrame::Hello(Hello {
            protocol_version: u16::MAX,
            cluster_id: u64::MAX,
            from: NodeId(u64::MAX),
            to: NodeId(u64::MAX),
        });
        assert!(codec.encode(&hello).unwrap().len() < 64);
    }

    #[test]
    fn the_peer_set_leaves_this_node_out() {
        assert_eq!(config().peer_ids(), [NodeId(2)].into());
    }
}
