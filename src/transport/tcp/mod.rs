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
//! # Peers
//!
//! The transport starts with the peers of [`TcpConfig::peers`]. [`TcpTransport::peers`] hands
//! out a [`TcpPeers`] handle that changes them while the transport runs (also inside a
//! driver): add the address of a node that a membership change is about to add, on every
//! member, before proposing the change; move a peer that came back at another address; remove
//! a node that has left (its dialer stops, its connections are closed, new ones refused).
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

mod config;
mod dial;
mod handshake;
mod listen;
mod peers;
mod stats;

pub use config::{TcpConfig, TcpError};
pub use peers::{TcpPeerError, TcpPeers, PEERS_MAX};
pub use stats::{TcpStats, TcpStatsHandle};

use crate::message::Message;
use crate::transport::codec::Codec;
use crate::transport::Transport;
use crate::types::NodeId;
use futures::Stream;
use listen::{run_listener, Registry};
use peers::{start_link, Links};
use serde::{Deserialize, Serialize};
use stats::{bump, Counters};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, trace};

#[cfg(feature = "tls")]
use crate::transport::tls::TlsContext;

/// The version of the connection protocol (hello, welcome, messages) this build speaks. The
/// acceptor refuses a hello of another version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest handshake frame ([`WireFrame::Hello`], [`WireFrame::Welcome`]), header included.
/// A real hello is under 64 bytes; this bounds what an unidentified peer can make a node read.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 256;

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
/// [`TcpTransport::shutdown`] the task has finished. A dialer also holds its link's retire
/// signal: it stops when its peer is removed or moved.
#[derive(Clone, Debug)]
struct Lifetime {
    stop: watch::Receiver<()>,
    retired: Option<watch::Receiver<()>>,
    _alive: mpsc::Sender<()>,
}

impl Lifetime {
    /// Completes once the transport is stopped (its stop sender dropped), or the task's peer
    /// retired (its link dropped).
    async fn stopped(&mut self) {
        // Nothing is ever sent: `changed` only returns, with an error, when the sender drops.
        let Lifetime { stop, retired, .. } = self;
        let stopped = async { while stop.changed().await.is_ok() {} };
        match retired {
            None => stopped.await,
            Some(retired) => {
                let retired = async { while retired.changed().await.is_ok() {} };
                tokio::select! {
                    () = stopped => {}
                    () = retired => {}
                }
            }
        }
    }
}

/// State shared by the transport and its tasks.
#[derive(Debug)]
struct Shared {
    config: TcpConfig,
    /// The peers now (`config.peers` is the set the transport started with).
    links: Mutex<Links>,
    /// Bumped at every change of `links`.
    links_version: AtomicU64,
    /// Where dialers of peers added later are spawned.
    runtime: tokio::runtime::Handle,
    /// The transport's stop signal, for dialers started later.
    stop: watch::Receiver<()>,
    /// The tasks' liveness token, weak: the shared state alone (held by a [`TcpPeers`]) must
    /// not keep [`TcpTransport::shutdown`] waiting.
    alive: mpsc::WeakSender<()>,
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

    fn links(&self) -> MutexGuard<'_, Links> {
        // Consistent after every statement, as the registry.
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True if `node` is a peer now: it may connect.
    fn is_peer(&self, node: NodeId) -> bool {
        self.links().contains_key(&node)
    }

    /// The send queue of every peer now.
    fn queues(&self) -> BTreeMap<NodeId, mpsc::Sender<Message>> {
        self.links()
            .iter()
            .map(|(peer, link)| (*peer, link.queue.clone()))
            .collect()
    }

    /// Closes every identified inbound connection from `peer` (it was removed).
    fn close_inbound(&self, peer: NodeId) {
        let connections = self.registry().connections.remove(&peer);
        for (_, close) in connections.into_iter().flatten() {
            let _ = close.send(());
        }
    }
}

/// Sends messages to peers over TCP (or mutual TLS); see the [module documentation](self).
///
/// Dropping the transport stops every task it started (listener, dialers, connections);
/// [`shutdown`](TcpTransport::shutdown) does the same and waits for them.
pub struct TcpTransport {
    node_id: NodeId,
    local_address: SocketAddr,
    shared: Arc<Shared>,
    /// The peers' queues as of `links_version` (refreshed when a [`TcpPeers`] changed them).
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    links_version: u64,
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
        let (stop, stop_receiver) = watch::channel(());
        let (alive_sender, alive) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            links: Mutex::new(Links::new()),
            links_version: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            stop: stop_receiver.clone(),
            alive: alive_sender.downgrade(),
            codec: Codec::new(config.cluster_id, config.frame_bytes_max)?,
            handshake_codec: Codec::new(config.cluster_id, HANDSHAKE_FRAME_BYTES_MAX)?,
            counters: counters.clone(),
            handshaking: AtomicUsize::new(0),
            registry: Mutex::new(Registry::default()),
            #[cfg(feature = "tls")]
            tls,
            config,
        });
        let lifetime = Lifetime {
            stop: stop_receiver,
            retired: None,
            _alive: alive_sender,
        };
        let (inbound_sender, inbound) = mpsc::channel(shared.config.inbound_messages_max);
        {
            let mut links = shared.links();
            for peer in shared.config.peer_ids() {
                let address = shared.config.peers[&peer];
                let link = start_link(&shared, peer, address).expect("the transport is running");
                links.insert(peer, link);
            }
        }
        let queues = shared.queues();
        info!(
            node = %shared.node_id(),
            address = %local_address,
            peers = queues.len(),
            "tcp transport listening"
        );
        let node_id = shared.node_id();
        tokio::spawn(run_listener(
            listener,
            shared.clone(),
            inbound_sender,
            lifetime,
        ));
        let transport = TcpTransport {
            node_id,
            local_address,
            shared,
            queues,
            links_version: 0,
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

    /// A handle that adds, moves and removes peers while the transport runs, also after it
    /// moved into a driver (see [`TcpPeers`]).
    pub fn peers(&self) -> TcpPeers {
        TcpPeers {
            shared: self.shared.clone(),
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
    /// A message whose `from` is not this node is a programming error (the peer would refuse
    /// it and close the connection): it is dropped, logged as an error and counted in
    /// [`TcpStats::dropped_wrong_sender`].
    fn send(&mut self, message: Message) {
        if message.from != self.node_id {
            error!(
                node = %self.node_id,
                from = %message.from,
                to = %message.to,
                "dropped a message from another node: a transport sends its own node's messages"
            );
            bump(&self.counters.dropped_wrong_sender);
            return;
        }
        let version = self.shared.links_version.load(Ordering::Acquire);
        if version != self.links_version {
            // A `TcpPeers` changed the peer set: take the queues as they are now.
            self.queues = self.shared.queues();
            self.links_version = version;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_fits_the_handshake_frame_limit() {
        let codec = Codec::new(u64::MAX, HANDSHAKE_FRAME_BYTES_MAX).expect("a valid frame size");
        let hello = WireFrame::Hello(Hello {
            protocol_version: u16::MAX,
            cluster_id: u64::MAX,
            from: NodeId(u64::MAX),
            to: NodeId(u64::MAX),
        });
        assert!(codec.encode(&hello).unwrap().len() < 64);
    }
}
