//! The connection handshake: reading and writing handshake frames, the dialer's half
//! ([`hello`]: send a hello, check the welcome), the acceptor's half ([`read_hello`],
//! [`welcome`]), and [`Rejection`], why an acceptor refused a connection.
//!
//! Invariants: a handshake frame is read header first and then exactly its length, so no byte
//! of the next frame is consumed and no more than [`HANDSHAKE_FRAME_BYTES_MAX`] bytes are
//! buffered for a peer that has not identified itself; an acceptor welcomes only a hello of
//! this [`PROTOCOL_VERSION`] and cluster, from a peer, meant for this node; a dialer accepts
//! only a welcome of this protocol version from the node it dialed; every [`Rejection`] has
//! its own counter ([`Rejection::counter`]).

use super::dial::LinkError;
use super::stats::Counters;
use super::{Hello, Shared, Welcome, WireFrame, HANDSHAKE_FRAME_BYTES_MAX, PROTOCOL_VERSION};
use crate::error::DecodeError;
use crate::transport::codec::{Codec, HEADER_BYTES};
use crate::types::NodeId;
use std::sync::atomic::AtomicU64;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why an inbound connection was refused during its handshake.
#[derive(Debug, Error)]
pub(super) enum Rejection {
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
    pub(super) fn counter<'a>(&self, counters: &'a Counters) -> &'a AtomicU64 {
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

/// Sends the hello and waits for the welcome.
pub(super) async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
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

/// Reads and checks the dialer's hello.
pub(super) async fn read_hello<S: AsyncRead + Unpin>(
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
    if !shared.is_peer(hello.from) {
        return Err(Rejection::UnknownNode(hello.from));
    }
    if hello.to != shared.node_id() {
        return Err(Rejection::WrongRecipient(hello.to));
    }
    Ok(hello)
}

/// Answers an accepted hello.
pub(super) async fn welcome<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
) -> Result<(), Rejection> {
    let welcome = WireFrame::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        node: shared.node_id(),
    });
    write_handshake_frame(stream, &shared.handshake_codec, &welcome)
        .await
        .map_err(|error| Rejection::Closed(error.to_string()))
}
