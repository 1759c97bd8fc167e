//! The transport's counters: [`TcpStats`], the public snapshot of them; `Counters`, the
//! atomics every task of a transport shares; and [`TcpStatsHandle`], which reads them after
//! the transport moved into a driver.
//!
//! Invariants: the `counters!` macro declares each counter once, so [`TcpStats`] and
//! `Counters` always have the same fields; counts only grow, through [`bump`] and [`add`]
//! (relaxed atomics: each counter is exact on its own, and a snapshot reads them one after
//! another).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// Only named in documentation links.
#[cfg(doc)]
use super::TcpTransport;

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
        pub(super) struct Counters {
            $(pub(super) $name: AtomicU64,)+
        }

        impl Counters {
            pub(super) fn snapshot(&self) -> TcpStats {
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
    /// Messages `send` dropped because their `from` is not this node (a programming error in
    /// the caller, logged as an error: the peer would refuse them).
    dropped_wrong_sender,
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
            + self.dropped_wrong_sender
            + self.dropped_encode
            + self.dropped_disconnected
    }
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn add(counter: &AtomicU64, count: u64) {
    counter.fetch_add(count, Ordering::Relaxed);
}

/// Reads a transport's counters; keeps working after the transport moved into a driver.
#[derive(Clone, Debug)]
pub struct TcpStatsHandle {
    pub(super) counters: Arc<Counters>,
}

impl TcpStatsHandle {
    /// The counters now.
    pub fn get(&self) -> TcpStats {
        self.counters.snapshot()
    }
}
