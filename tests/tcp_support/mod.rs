//! What the tests of the TCP transport over loopback share (`tests/tcp_transport.rs`,
//! `tests/tls_transport.rs`, the `tcp` module of `tests/transport_storage_faults.rs`): the
//! message they send, delivery retried until it arrives, and waits on the counters.
#![allow(dead_code)]

use futures::StreamExt;
use std::time::Duration;
use synod::transport::tcp::{TcpInbound, TcpStats, TcpStatsHandle, TcpTransport};
use synod::{Ballot, Body, Message, NodeId, Transport};

/// Long enough for a loaded CI machine; every wait returns as soon as it can.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn heartbeat(from: u64, to: u64, round: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Heartbeat {
            ballot: Ballot::new(round, NodeId(from)),
            chosen: round,
            read: 0,
        },
    }
}

/// Sends `message` again every few milliseconds (the first ones are dropped while the
/// connection is being dialed) until the receiver gets it. Other messages received meanwhile
/// (late copies of earlier deliveries) are skipped.
pub async fn deliver(transport: &mut TcpTransport, inbound: &mut TcpInbound, message: Message) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        transport.send(message.clone());
        let wait = tokio::time::Instant::now() + Duration::from_millis(20);
        while let Ok(Some(received)) = tokio::time::timeout_at(wait, inbound.next()).await {
            if received == message {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{message:?} was never delivered"
        );
    }
}

/// Waits until `condition` holds for the counters.
pub async fn eventually(stats: &TcpStatsHandle, what: &str, condition: impl Fn(&TcpStats) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = stats.get();
        if condition(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Two distinct elements of `nodes`, mutably.
pub fn pair<T>(nodes: &mut [T], first: usize, second: usize) -> (&mut T, &mut T) {
    assert_ne!(first, second);
    if first < second {
        let (left, right) = nodes.split_at_mut(second);
        (&mut left[first], &mut right[0])
    } else {
        let (left, right) = nodes.split_at_mut(first);
        (&mut right[0], &mut left[second])
    }
}
