//! The TCP transport over loopback: delivery both ways, reconnection, bounded queues, every
//! kind of bad input refused (with its counter) while good peers keep being served, and three
//! drivers replicating over it.
#![cfg(feature = "net")]

mod tcp_support;

use bytes::Bytes;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use synod::driver::{Driver, DriverConfig, Handle, ProposalError};
use synod::transport::codec::{Codec, HEADER_BYTES};
use synod::transport::tcp::{
    Hello, TcpConfig, TcpInbound, TcpPeerError, TcpStats, TcpTransport, WireFrame,
    HANDSHAKE_FRAME_BYTES_MAX, PROTOCOL_VERSION,
};
use synod::{
    Config, MemStorage, Message, NodeId, ProposeError, Replica, Role, Storage, Transport, Value,
};
use tcp_support::{deliver, eventually, heartbeat, pair, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLUSTER: u64 = 0xC1A5;

async fn bind_loopback(count: usize) -> (Vec<TcpListener>, BTreeMap<NodeId, SocketAddr>) {
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for index in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.insert(NodeId(index as u64 + 1), listener.local_addr().unwrap());
        listeners.push(listener);
    }
    (listeners, addresses)
}

fn config(id: u64, peers: &BTreeMap<NodeId, SocketAddr>) -> TcpConfig {
    let mut config = TcpConfig::new(NodeId(id), CLUSTER, peers[&NodeId(id)], peers.clone());
    config.reconnect_backoff_min = Duration::from_millis(10);
    config.reconnect_backoff_max = Duration::from_millis(200);
    config
}

/// Starts nodes 1..=count on fresh loopback ports, with `adjust` applied to each config.
async fn cluster(
    count: usize,
    adjust: impl Fn(&mut TcpConfig),
) -> (
    Vec<(TcpTransport, TcpInbound)>,
    BTreeMap<NodeId, SocketAddr>,
) {
    let (listeners, addresses) = bind_loopback(count).await;
    let mut nodes = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let mut config = config(index as u64 + 1, &addresses);
        adjust(&mut config);
        nodes.push(TcpTransport::start_with_listener(config, listener).unwrap());
    }
    (nodes, addresses)
}

/// The next message from `from`, skipping late copies of earlier deliveries from others.
async fn next_from(inbound: &mut TcpInbound, from: u64) -> Message {
    loop {
        let message = tokio::time::timeout(PATIENCE, inbound.next())
            .await
            .expect("a message in time")
            .expect("stream open");
        if message.from == NodeId(from) {
            return message;
        }
    }
}

#[tokio::test]
async fn three_transports_exchange_messages_both_ways() {
    let (mut nodes, _) = cluster(3, |_| {}).await;
    // Every ordered pair: connections come up.
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let message = heartbeat(from as u64 + 1, to as u64 + 1, 0);
            let (sender, receiver) = pair(&mut nodes, from, to);
            deliver(&mut sender.0, &mut receiver.1, message).await;
        }
    }
    // Once connected, nothing is lost and each sender's messages arrive in order.
    const COUNT: u64 = 500;
    for round in 1..=COUNT {
        for from in 0..3u64 {
            for to in 0..3u64 {
                if from != to {
                    nodes[from as usize]
                        .0
                        .send(heartbeat(from + 1, to + 1, round));
                }
            }
        }
        if round % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for (index, (_, inbound)) in nodes.iter_mut().enumerate() {
        let mut next_round: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut received = 0;
        while received < 2 * COUNT {
            let message = tokio::time::timeout(PATIENCE, inbound.next())
                .await
                .expect("message in time")
                .expect("stream open");
            if message.body.ballot().unwrap().round == 0 {
                continue; // a late copy of the connection check
            }
            received += 1;
            assert_eq!(message.to, NodeId(index as u64 + 1));
            let expected = next_round.entry(message.from).or_insert(1);
            assert_eq!(message.body.ballot().unwrap().round, *expected);
            *expected += 1;
        }
        assert!(next_round.values().all(|next| *next == COUNT + 1));
    }
    for (transport, _) in &nodes {
        let stats = transport.stats();
        assert_eq!(
            stats.sent,
            stats.queued - stats.dropped_disconnected,
            "{stats:#?}"
        );
        assert_eq!(stats.dropped_full, 0);
        assert!(stats.dialed >= 2 && stats.accepted >= 2, "{stats:#?}");
        assert_eq!(
            stats.rejected_total() + stats.refused_total(),
            0,
            "{stats:#?}"
        );
        assert!(stats.frames_received >= 2 * COUNT);
    }
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again() {
    let (mut nodes, addresses) = cluster(2, |_| {}).await;
    let (one, two) = pair(&mut nodes, 0, 1);
    deliver(&mut one.0, &mut two.1, heartbeat(1, 2, 1)).await;
    deliver(&mut two.0, &mut one.1, heartbeat(2, 1, 1)).await;
    let dialed_before = one.0.stats().dialed;

    // Node 2 stops (its listener and connections close) and comes back on the same address.
    let (two_transport, two_inbound) = nodes.pop().unwrap();
    two_transport.shutdown().await;
    drop(two_inbound);
    let mut one = nodes.pop().unwrap();
    for round in 2..50 {
        one.0.send(heartbeat(1, 2, round)); // dropped or lost: the peer is down
    }
    let mut two = TcpTransport::start(config(2, &addresses)).await.unwrap();
    deliver(&mut one.0, &mut two.1, heartbeat(1, 2, 100)).await;
    deliver(&mut two.0, &mut one.1, heartbeat(2, 1, 100)).await;

    let stats = one.0.stats();
    assert!(stats.reconnects >= 1, "{stats:#?}");
    assert!(stats.dialed > dialed_before, "{stats:#?}");
    assert!(
        stats.accepted >= 2,
        "node 2 dialed node 1 again: {stats:#?}"
    );
    one.0.shutdown().await;
    two.0.shutdown().await;
}

/// Peers change while the transports run: node 3 is unknown to node 1 until node 1 adds it
/// (its hello refused before, its messages delivered after, and node 1 can send to it); node 1
/// removes node 2 (sends to it dropped as unknown, its open connection closed and new ones
/// refused), then adds it back at a new address where node 2 restarted.
#[tokio::test]
async fn peers_are_added_moved_and_removed_while_the_transport_runs() {
    let (listeners, mut addresses) = bind_loopback(3).await;
    let mut listeners = listeners.into_iter();
    let first_two: BTreeMap<NodeId, SocketAddr> = addresses
        .iter()
        .filter(|(id, _)| id.0 <= 2)
        .map(|(id, address)| (*id, *address))
        .collect();
    let mut one =
        TcpTransport::start_with_listener(config(1, &first_two), listeners.next().unwrap())
            .unwrap();
    let mut two =
        TcpTransport::start_with_listener(config(2, &first_two), listeners.next().unwrap())
            .unwrap();
    let mut three =
        TcpTransport::start_with_listener(config(3, &addresses), listeners.next().unwrap())
            .unwrap();
    let peers = one.0.peers();
    let one_stats = one.0.stats_handle();
    assert_eq!(
        peers.addresses(),
        [(NodeId(2), addresses[&NodeId(2)])].into()
    );
    deliver(&mut two.0, &mut one.1, heartbeat(2, 1, 1)).await;

    // Node 3 is not a peer of node 1 yet: its hellos are refused, node 1 cannot send to it.
    three.0.send(heartbeat(3, 1, 1));
    eventually(&one_stats, "node 3 refused", |stats| {
        stats.rejected_unknown_node >= 1
    })
    .await;
    one.0.send(heartbeat(1, 3, 1));
    assert_eq!(one.0.stats().dropped_unknown, 1);

    // Added (through a clone of the handle, as an application holding it in a driver would).
    assert_eq!(
        peers.clone().set(NodeId(3), addresses[&NodeId(3)]),
        Ok(None)
    );
    deliver(&mut three.0, &mut one.1, heartbeat(3, 1, 2)).await;
    deliver(&mut one.0, &mut three.1, heartbeat(1, 3, 2)).await;
    assert_eq!(
        peers.set(NodeId(3), addresses[&NodeId(3)]),
        Ok(Some(addresses[&NodeId(3)])),
        "the same address changes nothing"
    );
    assert_eq!(
        peers.set(NodeId(1), addresses[&NodeId(3)]),
        Err(TcpPeerError::ThisNode(NodeId(1)))
    );

    // Node 2 removed: node 1 sends it nothing and closes what node 2 sends on.
    let unknown_before = one.0.stats().dropped_unknown;
    assert_eq!(peers.remove(NodeId(2)), Some(addresses[&NodeId(2)]));
    assert_eq!(peers.remove(NodeId(2)), None);
    one.0.send(heartbeat(1, 2, 3));
    assert_eq!(one.0.stats().dropped_unknown, unknown_before + 1);
    let refused_before = one_stats.get().rejected_unknown_node;
    for round in 3..40 {
        two.0.send(heartbeat(2, 1, round));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(&one_stats, "node 2's reconnection refused", |stats| {
        stats.rejected_unknown_node > refused_before
    })
    .await;
    // Nothing from node 2 after its removal reached node 1's inbound stream (node 3's
    // heartbeat, sent after, arrives; anything from node 2 before it would be a late copy
    // of round 1 at most).
    deliver(&mut three.0, &mut one.1, heartbeat(3, 1, 50)).await;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(50), one.1.next()).await
    {
        assert!(
            message.from != NodeId(2) || message.body.ballot().unwrap().round < 3,
            "a removed peer's message was delivered: {message:?}"
        );
    }

    // Node 2 restarts at another address; node 1 adds it there.
    two.0.shutdown().await;
    drop(two.1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    addresses.insert(NodeId(2), listener.local_addr().unwrap());
    let mut two = TcpTransport::start_with_listener(config(2, &addresses), listener).unwrap();
    assert_eq!(peers.set(NodeId(2), addresses[&NodeId(2)]), Ok(None));
    deliver(&mut one.0, &mut two.1, heartbeat(1, 2, 60)).await;
    deliver(&mut two.0, &mut one.1, heartbeat(2, 1, 60)).await;
    assert_eq!(
        peers.addresses(),
        addresses
            .clone()
            .into_iter()
            .filter(|(id, _)| id.0 != 1)
            .collect()
    );

    // Moved again (to node 3's address, which answers as node 3): the dialer at the old
    // address stops and the new one is refused by the wrong node.
    assert_eq!(
        peers.set(NodeId(2), addresses[&NodeId(3)]),
        Ok(Some(addresses[&NodeId(2)]))
    );
    let failures_before = one_stats.get().dial_failures;
    one.0.send(heartbeat(1, 2, 70));
    eventually(
        &one_stats,
        "dialing node 2 at node 3's address fails",
        |stats| stats.dial_failures > failures_before,
    )
    .await;

    one.0.shutdown().await;
    assert_eq!(
        peers.set(NodeId(4), addresses[&NodeId(3)]),
        Err(TcpPeerError::Stopped)
    );
    two.0.shutdown().await;
    three.0.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    // Node 2's address answers TCP but never the hello: node 1's queue for it cannot drain.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peers = BTreeMap::new();
    peers.insert(NodeId(1), "127.0.0.1:0".parse().unwrap());
    peers.insert(NodeId(2), silent.local_addr().unwrap());
    let mut config = TcpConfig::new(NodeId(1), CLUSTER, peers[&NodeId(1)], peers);
    config.send_queue_messages_max = 8;
    let (mut transport, _inbound) = TcpTransport::start(config).await.unwrap();
    let started = std::time::Instant::now();
    for round in 0..1000 {
        transport.send(heartbeat(1, 2, round));
    }
    transport.send(heartbeat(1, 9, 0)); // not a peer
    transport.send(heartbeat(1, 1, 0)); // itself: not a peer either
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "send blocked: {elapsed:?}"
    );
    let stats = transport.stats();
    // On this single-threaded runtime the dialer has not even run yet.
    assert_eq!(stats.queued, 8, "{stats:#?}");
    assert_eq!(stats.dropped_full, 992, "{stats:#?}");
    assert_eq!(stats.dropped_unknown, 2, "{stats:#?}");
    assert_eq!(stats.sent, 0);
    transport.shutdown().await;
}

/// A raw client speaking to node 1 of a test cluster by hand.
struct Intruder {
    stream: TcpStream,
}

impl Intruder {
    async fn connect(address: SocketAddr) -> Intruder {
        Intruder {
            stream: TcpStream::connect(address).await.unwrap(),
        }
    }

    /// Connects and completes a handshake as `from` (a peer node 1 knows).
    async fn identified(address: SocketAddr, from: u64) -> Intruder {
        let mut intruder = Intruder::connect(address).await;
        intruder
            .write(&hello_frame(CLUSTER, CLUSTER, from, 1))
            .await;
        let mut header = [0u8; HEADER_BYTES];
        intruder.stream.read_exact(&mut header).await.unwrap();
        let codec = Codec::new(CLUSTER, HANDSHAKE_FRAME_BYTES_MAX)
            .expect("a frame size within the codec's limits");
        let Err(synod::DecodeError::Truncated { needed, .. }) = codec.decode::<WireFrame>(&header)
        else {
            panic!("not a welcome header");
        };
        let mut frame = vec![0u8; needed];
        frame[..HEADER_BYTES].copy_from_slice(&header);
        intruder
            .stream
            .read_exact(&mut frame[HEADER_BYTES..])
            .await
            .unwrap();
        let (welcome, _) = codec.decode::<WireFrame>(&frame).unwrap();
        assert!(matches!(welcome, WireFrame::Welcome(w) if w.node == NodeId(1)));
        intruder
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The node may already have closed the connection: that is fine.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Waits until node 1 closes the connection.
    async fn expect_closed(mut self) {
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut buffer))
            .await
            .expect("the node closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "unexpected {read:?}");
    }
}

fn hello_frame(frame_cluster: u64, hello_cluster: u64, from: u64, to: u64) -> Vec<u8> {
    Codec::new(frame_cluster, HANDSHAKE_FRAME_BYTES_MAX)
        .expect("a frame size within the codec's limits")
        .encode(&WireFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: hello_cluster,
            from: NodeId(from),
            to: NodeId(to),
        }))
        .unwrap()
}

fn message_frame(message: Message) -> Vec<u8> {
    Codec::new(CLUSTER, 16 << 20)
        .expect("a frame size within the codec's limits")
        .encode(&WireFrame::Message(message))
        .unwrap()
}

/// Node 1 (with peers 2 and 3; node 3 never runs, the intruder claims its id) and node 2.
async fn victim() -> (Vec<(TcpTransport, TcpInbound)>, SocketAddr) {
    let (listeners, mut addresses) = bind_loopback(2).await;
    // Node 3's address is closed: node 1's dials to it fail, which is harmless here.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    addresses.insert(NodeId(3), closed.local_addr().unwrap());
    drop(closed);
    let mut nodes = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let mut config = config(index as u64 + 1, &addresses);
        config.handshake_timeout = Duration::from_millis(500);
        nodes.push(TcpTransport::start_with_listener(config, listener).unwrap());
    }
    let address = addresses[&NodeId(1)];
    (nodes, address)
}

/// Node 2 still reaches node 1 (and the reverse).
async fn still_serving(nodes: &mut [(TcpTransport, TcpInbound)], round: u64) {
    let (one, two) = pair(nodes, 0, 1);
    deliver(&mut two.0, &mut one.1, heartbeat(2, 1, round)).await;
    deliver(&mut one.0, &mut two.1, heartbeat(1, 2, round)).await;
}

#[tokio::test]
async fn bad_handshakes_are_rejected_and_counted_while_good_peers_are_served() {
    let (mut nodes, address) = victim().await;
    let stats = nodes[0].0.stats_handle();
    still_serving(&mut nodes, 1).await;

    type Check = fn(&TcpStats) -> u64;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "garbage bytes",
            b"GET / HTTP/1.1\r\nHost: synod\r\n\r\n".to_vec(),
            |s| s.rejected_malformed,
        ),
        (
            "bad magic",
            {
                let mut frame = hello_frame(CLUSTER, CLUSTER, 2, 1);
                frame[0] ^= 0xFF;
                frame
            },
            |s| s.rejected_malformed,
        ),
        (
            "bad format version",
            {
                let mut frame = hello_frame(CLUSTER, CLUSTER, 2, 1);
                frame[4..6].copy_from_slice(&9u16.to_le_bytes());
                frame
            },
            |s| s.rejected_version,
        ),
        (
            "bad protocol version",
            Codec::new(CLUSTER, HANDSHAKE_FRAME_BYTES_MAX)
                .expect("a frame size within the codec's limits")
                .encode(&WireFrame::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION + 1,
                    cluster_id: CLUSTER,
                    from: NodeId(2),
                    to: NodeId(1),
                }))
                .unwrap(),
            |s| s.rejected_version,
        ),
        (
            "wrong cluster id in the frame",
            hello_frame(CLUSTER + 1, CLUSTER + 1, 2, 1),
            |s| s.rejected_foreign_cluster,
        ),
        (
            "wrong cluster id in the hello",
            hello_frame(CLUSTER, CLUSTER + 1, 2, 1),
            |s| s.rejected_foreign_cluster,
        ),
        (
            "unknown node id",
            hello_frame(CLUSTER, CLUSTER, 77, 1),
            |s| s.rejected_unknown_node,
        ),
        (
            "the node itself",
            hello_frame(CLUSTER, CLUSTER, 1, 1),
            |s| s.rejected_unknown_node,
        ),
        (
            "hello for another node",
            hello_frame(CLUSTER, CLUSTER, 2, 3),
            |s| s.rejected_wrong_recipient,
        ),
        (
            "oversize hello",
            {
                let mut frame = hello_frame(CLUSTER, CLUSTER, 2, 1);
                frame[14..18].copy_from_slice(&1000u32.to_le_bytes());
                frame
            },
            |s| s.rejected_oversized,
        ),
        (
            "a message before the hello",
            message_frame(heartbeat(2, 1, 5)),
            |s| s.rejected_malformed,
        ),
        (
            "truncated hello, then close",
            hello_frame(CLUSTER, CLUSTER, 2, 1)[..HEADER_BYTES + 2].to_vec(),
            |s| s.rejected_closed,
        ),
        (
            "silence",
            Vec::new(), // the handshake timeout closes it
            |s| s.rejected_timeout,
        ),
    ];
    for (round, (name, bytes, counter)) in cases.into_iter().enumerate() {
        let before = counter(&stats.get());
        let mut intruder = Intruder::connect(address).await;
        intruder.write(&bytes).await;
        if name.ends_with("then close") {
            intruder.stream.shutdown().await.unwrap();
        }
        eventually(&stats, name, |now| counter(now) == before + 1).await;
        intruder.expect_closed().await;
        still_serving(&mut nodes, round as u64 + 2).await;
    }
    let final_stats = stats.get();
    assert_eq!(final_stats.rejected_total(), 13, "{final_stats:#?}");
    // Node 1's only identified inbound connections are node 2's.
    assert_eq!(final_stats.refused_total(), 0, "{final_stats:#?}");
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}

#[tokio::test]
async fn bad_frames_after_the_handshake_close_that_connection_only() {
    let (mut nodes, address) = victim().await;
    let stats = nodes[0].0.stats_handle();
    still_serving(&mut nodes, 1).await;

    let valid = message_frame(heartbeat(3, 1, 7));
    type Check = fn(&TcpStats) -> u64;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("garbage bytes", vec![0xAB; 100], |s| s.refused_malformed),
        (
            "checksum mismatch",
            {
                let mut frame = valid.clone();
                let last = frame.len() - 1;
                frame[last] ^= 1;
                frame
            },
            |s| s.refused_malformed,
        ),
        (
            "truncated frame, then close",
            valid[..valid.len() - 3].to_vec(),
            |s| s.refused_truncated,
        ),
        (
            "oversize length header",
            {
                let mut frame = valid.clone();
                frame[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
                frame
            },
            |s| s.refused_oversized,
        ),
        ("spoofed from", message_frame(heartbeat(2, 1, 7)), |s| {
            s.refused_spoofed
        }),
        (
            "addressed to another node",
            message_frame(heartbeat(3, 2, 7)),
            |s| s.refused_misaddressed,
        ),
        ("a second hello", hello_frame(CLUSTER, CLUSTER, 3, 1), |s| {
            s.refused_unexpected
        }),
    ];
    for (round, (name, bytes, counter)) in cases.into_iter().enumerate() {
        let before = counter(&stats.get());
        let mut intruder = Intruder::identified(address, 3).await;
        // A valid message first: it is delivered, the bad frame after it is not.
        intruder.write(&valid).await;
        assert_eq!(next_from(&mut nodes[0].1, 3).await, heartbeat(3, 1, 7));
        intruder.write(&bytes).await;
        if name.ends_with("then close") {
            intruder.stream.shutdown().await.unwrap();
        }
        eventually(&stats, name, |now| counter(now) == before + 1).await;
        intruder.expect_closed().await;
        still_serving(&mut nodes, round as u64 + 2).await;
    }
    let final_stats = stats.get();
    assert_eq!(final_stats.refused_total(), 7, "{final_stats:#?}");
    assert_eq!(final_stats.rejected_total(), 0, "{final_stats:#?}");
    for (transport, _) in nodes {
        transport.shutdown().await;
    }
}

#[tokio::test]
async fn connections_are_bounded() {
    let (listeners, mut addresses) = bind_loopback(1).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    addresses.insert(NodeId(3), closed.local_addr().unwrap());
    drop(closed);
    let mut config = config(1, &addresses);
    config.handshake_connections_max = 2;
    config.connections_per_peer_max = 2;
    config.handshake_timeout = Duration::from_secs(30);
    let listener = listeners.into_iter().next().unwrap();
    let (transport, mut inbound) = TcpTransport::start_with_listener(config, listener).unwrap();
    let stats = transport.stats_handle();
    let address = transport.local_address();

    // Two silent connections fill the handshake places; a third is closed at once.
    let silent_one = Intruder::connect(address).await;
    let silent_two = Intruder::connect(address).await;
    // (Give the listener time to accept them before the third arrives.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = Intruder::connect(address).await;
    eventually(&stats, "a busy rejection", |now| now.rejected_busy == 1).await;
    third.expect_closed().await;
    // Once they leave, identified connections are accepted again.
    drop(silent_one);
    drop(silent_two);
    eventually(&stats, "the silent ones closed", |now| {
        now.rejected_closed == 2
    })
    .await;

    // Node 3 connects three times: the oldest connection is displaced by the third.
    let first = Intruder::identified(address, 3).await;
    let mut second = Intruder::identified(address, 3).await;
    let mut third = Intruder::identified(address, 3).await;
    eventually(&stats, "a displacement", |now| now.displaced == 1).await;
    first.expect_closed().await;
    for (round, intruder) in [&mut second, &mut third].into_iter().enumerate() {
        intruder
            .write(&message_frame(heartbeat(3, 1, round as u64)))
            .await;
        assert_eq!(
            next_from(&mut inbound, 3).await,
            heartbeat(3, 1, round as u64)
        );
    }
    assert_eq!(stats.get().accepted, 3);
    transport.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Three drivers over TCP.

async fn wait_for_leader(handles: &mut [Handle]) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        for (index, handle) in handles.iter_mut().enumerate() {
            if handle
                .status()
                .await
                .is_some_and(|status| status.role == Role::Leader)
            {
                return index;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn propose(handle: &mut Handle, command: Bytes) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match handle.propose(command.clone()).await {
            Ok(_) => return,
            Err(ProposalError::Rejected(
                ProposeError::Busy { .. } | ProposeError::NotLeader { .. },
            )) => {
                assert!(tokio::time::Instant::now() < deadline, "proposal refused");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_drivers_commit_the_same_order_over_tcp() {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let (nodes, _) = cluster(3, |_| {}).await;
    let mut handles = Vec::new();
    let mut committed = Vec::new();
    let mut drivers = Vec::new();
    let mut transport_stats = Vec::new();
    for ((transport, inbound), id) in nodes.into_iter().zip(&ids) {
        let mut config = Config::new(*id, ids.clone());
        config.cluster_id = CLUSTER;
        // Ticks are real milliseconds and CI machines stall: keep leadership stable.
        config.election_ticks = 100;
        config.heartbeat_ticks = 10;
        config.retransmit_ticks = 20;
        let mut storage = MemStorage::new();
        let replica = Replica::new(config, storage.recover().unwrap()).unwrap();
        let mut interval = tokio::time::interval(Duration::from_millis(2));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks = futures::stream::unfold(interval, |mut interval| async move {
            interval.tick().await;
            Some(((), interval))
        })
        .boxed();
        transport_stats.push(transport.stats_handle());
        let (driver, handle, entries) = Driver::new(
            replica,
            storage,
            transport,
            ticks,
            inbound.boxed(),
            DriverConfig::default(),
        );
        drivers.push(tokio::spawn(driver.run()));
        handles.push(handle);
        committed.push(entries);
    }
    let leader = wait_for_leader(&mut handles).await;
    let follower = (leader + 1) % 3;
    const COUNT: usize = 300;
    // Proposals at the leader and, forwarded, at a follower, interleaved.
    for index in 0..COUNT {
        let at = if index % 3 == 0 { follower } else { leader };
        propose(&mut handles[at], Bytes::from(format!("c{index}"))).await;
    }
    let mut logs = Vec::new();
    for entries in &mut committed {
        let mut log = Vec::new();
        while log.len() < COUNT {
            let entry = tokio::time::timeout(PATIENCE, entries.next())
                .await
                .expect("entries committed in time")
                .expect("driver running");
            if let synod::driver::Applied::Entry(synod::Entry {
                value: Value::Command { data, .. },
                ..
            }) = entry
            {
                log.push(data);
            }
        }
        logs.push(log);
    }
    assert_eq!(logs[0], logs[1], "same order everywhere");
    assert_eq!(logs[1], logs[2], "same order everywhere");
    let mut sorted: Vec<Bytes> = logs[0].clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), COUNT, "every proposal exactly once");
    for stats in &transport_stats {
        let stats = stats.get();
        assert!(stats.sent > 0 && stats.frames_received > 0, "{stats:#?}");
        assert_eq!(
            stats.rejected_total() + stats.refused_total(),
            0,
            "{stats:#?}"
        );
    }
    for driver in drivers {
        driver.abort();
    }
}
