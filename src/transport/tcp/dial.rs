//! The dialing side: one task per peer ([`run_dialer`]) keeps one outbound connection: it
//! dials ([`dial`]: connect, TLS, hello), writes the peer's queued messages in batches
//! ([`write_messages`]), and when the connection fails dials again after a backoff
//! ([`backoff_delay`]).
//!
//! Invariants: a dialer only writes (a byte from the acceptor ends the connection); a batch
//! gathers queued messages up to `write_batch_bytes_max` (at least one) and must be written
//! and flushed within `write_timeout`, or the connection is dropped; while the peer is
//! unreachable its queue is drained and counted as dropped ([`discard_while_waiting`]), so it
//! holds fresh messages when the connection returns; the backoff is drawn from the upper half
//! of `min * 2^failures` capped at `max`, by an RNG seeded from the cluster, node and peer ids,
//! and resets after a connection that lived at least `reconnect_backoff_max`; the task ends as
//! soon as the transport stops.

use super::handshake::{hello, Rejection};
use super::stats::{add, bump};
use super::{Lifetime, Shared, TcpConfig, WireFrame};
use crate::message::Message;
use crate::types::NodeId;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Why a dial failed, or why an outbound connection ended.
#[derive(Debug, Error)]
pub(super) enum LinkError {
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

/// A dialed connection, after its handshake.
enum Outbound {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Keeps one outbound connection to `peer`: dials, writes queued messages in batches, and
/// dials again with backoff when the connection fails, until the transport stops.
pub(super) async fn run_dialer(
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::transport::tcp::config::tests::config;

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
}
