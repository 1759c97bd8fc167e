//! The accepting side: the listener task ([`run_listener`]); one task per accepted connection
//! ([`serve_inbound`]) that runs the acceptor's handshake ([`accept`]) and then reads the
//! peer's messages ([`Reader`]); and the bookkeeping that bounds connections, the
//! [`HandshakeSlot`]s of connections in their handshake and the [`Registry`] of identified
//! connections per peer.
//!
//! Invariants: at most `handshake_connections_max` accepted connections hold a handshake slot
//! (more are refused at once), and a connection gives its slot back when its handshake ends;
//! at most `connections_per_peer_max` identified connections per peer are registered, a new
//! one displacing the oldest; a reader hands on only message frames `from` the peer its hello
//! named and `to` this node, in the order the connection carried them, and any other frame
//! closes that connection only; every task ends as soon as the transport stops.

use super::handshake::{read_hello, welcome, Rejection};
use super::stats::bump;
use super::{Lifetime, Shared, WireFrame};
use crate::error::DecodeError;
use crate::message::Message;
use crate::transport::codec::FrameDecoder;
use crate::types::NodeId;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Bytes read from a socket at a time.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The longest wait after a failed `accept` (out of file descriptors, ...), so a persistent
/// failure does not spin.
const ACCEPT_RETRY_DELAY_MAX: Duration = Duration::from_secs(1);

/// The identified inbound connections of every peer, oldest first.
#[derive(Debug, Default)]
pub(super) struct Registry {
    next_serial: u64,
    /// Invariant: each list holds at most `connections_per_peer_max` entries.
    pub(super) connections: BTreeMap<NodeId, VecDeque<(u64, oneshot::Sender<()>)>>,
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

/// An accepted connection, after its handshake.
enum Inbound {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Accepts connections until the transport stops; each gets its own task.
pub(super) async fn run_listener(
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
    // Checked again once registered: a peer removed meanwhile is not served (one removed
    // after this point has its registered connections closed by `TcpPeers::remove`).
    if !shared.is_peer(peer) {
        let rejection = Rejection::UnknownNode(peer);
        bump(rejection.counter(&shared.counters));
        warn!(%node, %address, %rejection, "connection refused");
        return;
    }
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
