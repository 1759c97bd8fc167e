//! The transport's configuration, [`TcpConfig`] (its defaults and its checks), and
//! [`TcpError`], why [`TcpTransport::start`] failed.
//!
//! Invariants: the transport starts only with a config [`TcpConfig::validate`] accepts: every
//! queue, batch and connection bound at least 1, `frame_bytes_max` between
//! [`HANDSHAKE_FRAME_BYTES_MAX`] and [`FRAME_BYTES_MAX_LIMIT`], a reconnect backoff above zero
//! whose maximum is at least its minimum, and both timeouts above zero. The peer set
//! ([`TcpConfig::peer_ids`]) never holds this node, even when `peers` names it.

use super::HANDSHAKE_FRAME_BYTES_MAX;
use crate::error::ConfigError;
use crate::transport::codec::FRAME_BYTES_MAX_LIMIT;
use crate::types::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

#[cfg(feature = "tls")]
use crate::transport::tls::{TlsConfig, TlsError};

// Only named in documentation links.
#[cfg(doc)]
use super::{TcpInbound, TcpTransport};

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
    /// Every peer's id and listen address at start. An entry for `node_id` itself is
    /// ignored, so all nodes may share one map. Only peers may connect, and only they can be
    /// sent to; [`TcpTransport::peers`] adds, moves and removes peers while the transport
    /// runs.
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
    pub(super) fn peer_ids(&self) -> BTreeSet<NodeId> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Node 1 of two on the loopback address: a valid configuration for unit tests.
    pub(in crate::transport::tcp) fn config() -> TcpConfig {
        let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let peers = [(NodeId(1), address), (NodeId(2), address)].into();
        TcpConfig::new(NodeId(1), 7, address, peers)
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
    fn the_peer_set_leaves_this_node_out() {
        assert_eq!(config().peer_ids(), [NodeId(2)].into());
    }
}
