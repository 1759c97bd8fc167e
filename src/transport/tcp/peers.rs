//! The live peer set: which nodes this transport sends to and accepts connections from, and
//! [`TcpPeers`], the handle that changes it while the transport runs (inside a driver, say),
//! so that a node added by a membership change can be reached without restarting anyone.
//!
//! Invariants: every peer in [`Links`] has exactly one dialer task, fed by the queue whose
//! sending side its [`Link`] holds and stopped when that link is dropped (the peer was removed
//! or moved to another address); this node is never its own peer; `version` grows with every
//! change, so a [`TcpTransport`](super::TcpTransport) that caches the queues notices a change
//! with one atomic load per message.

use super::dial::run_dialer;
use super::{Lifetime, Shared};
use crate::message::Message;
use crate::types::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::info;

/// One peer: where it listens, and the dialer that keeps a connection to it.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) address: SocketAddr,
    /// The sending side of the dialer's queue (the transport clones it).
    pub(super) queue: mpsc::Sender<Message>,
    /// Dropped with the link: the dialer stops.
    _retire: watch::Sender<()>,
}

/// Every peer, by id.
pub(super) type Links = BTreeMap<NodeId, Link>;

/// Why the peer set could not be changed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TcpPeerError {
    /// The id is this node's own: a node is never its own peer. Nothing changed.
    #[error("node {0} is this node, not a peer")]
    ThisNode(NodeId),
    /// The transport has stopped (shut down or dropped): there is nothing to change.
    #[error("the transport has stopped")]
    Stopped,
    /// The transport has [`PEERS_MAX`] peers already: a new one is refused (moving a peer to
    /// another address is not). Remove peers that left the membership first.
    #[error("the transport has {max} peers already")]
    TooMany {
        /// [`PEERS_MAX`].
        max: usize,
    },
}

/// The most peers a [`TcpTransport`](super::TcpTransport) dials: twice the largest membership,
/// room for a whole membership being replaced by another. Each peer costs a dialer task and
/// its connections.
pub const PEERS_MAX: usize = 2 * crate::config::MEMBERS_MAX;

/// Starts a dialer for `peer` at `address` and returns its link.
pub(super) fn start_link(
    shared: &Arc<Shared>,
    peer: NodeId,
    address: SocketAddr,
) -> Result<Link, TcpPeerError> {
    // Once the stop sender is gone the tasks are ending; a new one would outlive shutdown's
    // wait if it could still upgrade the weak `alive` sender.
    if shared.stop.has_changed().is_err() {
        return Err(TcpPeerError::Stopped);
    }
    let alive = shared.alive.upgrade().ok_or(TcpPeerError::Stopped)?;
    let (retire, retired) = watch::channel(());
    let (queue, receiver) = mpsc::channel(shared.config.send_queue_messages_max);
    let lifetime = Lifetime {
        stop: shared.stop.clone(),
        retired: Some(retired),
        _alive: alive,
    };
    shared.runtime.spawn(run_dialer(
        shared.clone(),
        peer,
        address,
        receiver,
        lifetime,
    ));
    Ok(Link {
        address,
        queue,
        _retire: retire,
    })
}

/// Changes the peer set of a running [`TcpTransport`](super::TcpTransport): add a node (a
/// membership change is about to name it), move a peer to a new address, or remove one. Get it
/// with [`TcpTransport::peers`](super::TcpTransport::peers); clones share the transport, and
/// the handle keeps working after the transport moved into a
/// [`Driver`](crate::driver::Driver).
///
/// The peer set decides who this node sends to and whose connections it accepts; it is the
/// transport's, not the cluster's membership (which lives in the log): add a node here on
/// every member before (or as) it is added to the membership, and remove it once it has left.
#[derive(Clone, Debug)]
pub struct TcpPeers {
    pub(super) shared: Arc<Shared>,
}

impl TcpPeers {
    /// Makes `id` a peer listening at `address`: messages to it are queued from now on, and
    /// its connections are accepted. If it already was a peer at another address, its
    /// connection there is dropped (with the messages queued for it) and it is dialed at the
    /// new one; at the same address nothing changes. Returns the previous address.
    ///
    /// # Errors
    /// [`TcpPeerError::ThisNode`] for this node's own id; [`TcpPeerError::Stopped`] once the
    /// transport has stopped; [`TcpPeerError::TooMany`] for a new peer beyond [`PEERS_MAX`].
    pub fn set(&self, id: NodeId, address: SocketAddr) -> Result<Option<SocketAddr>, TcpPeerError> {
        let shared = &self.shared;
        if id == shared.node_id() {
            return Err(TcpPeerError::ThisNode(id));
        }
        let mut links = shared.links();
        let previous = links.get(&id).map(|link| link.address);
        if previous == Some(address) {
            return Ok(previous);
        }
        if previous.is_none() && links.len() >= PEERS_MAX {
            return Err(TcpPeerError::TooMany { max: PEERS_MAX });
        }
        let link = start_link(shared, id, address)?;
        // Replacing the link drops the old one: its dialer stops.
        links.insert(id, link);
        shared.links_version.fetch_add(1, Ordering::AcqRel);
        drop(links);
        info!(node = %shared.node_id(), peer = %id, %address, ?previous, "peer set");
        Ok(previous)
    }

    /// Removes peer `id`: messages to it are dropped (counted as to an unknown node), its
    /// dialer stops, its connections to this node are closed and new ones refused. Returns
    /// its address, or `None` if it was not a peer.
    pub fn remove(&self, id: NodeId) -> Option<SocketAddr> {
        let shared = &self.shared;
        let link = shared.links().remove(&id)?;
        shared.links_version.fetch_add(1, Ordering::AcqRel);
        // After the removal above: a connection registered later sees it (`serve_inbound`
        // checks the peer set after registering), one registered earlier is closed here.
        shared.close_inbound(id);
        info!(node = %shared.node_id(), peer = %id, address = %link.address, "peer removed");
        Some(link.address)
    }

    /// Every peer and its address, now.
    pub fn addresses(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.shared
            .links()
            .iter()
            .map(|(id, link)| (*id, link.address))
            .collect()
    }
}
