//! Misuse of the API gets a clear error, never a panic: each public function that used to
//! assert its preconditions now refuses the call with a typed error and changes nothing.

use bytes::Bytes;
use synod::paxos::{self, DurableState, InstanceId, Node};
use synod::storage::file::SEGMENT_HEADER_BYTES;
use synod::transport::codec::{FRAME_BYTES_MAX_LIMIT, HEADER_BYTES};
use synod::{
    AcknowledgeError, Codec, CompactError, Config, ConfigError, FileStorage, FileStorageOptions,
    MemStorage, NodeId, Ready, Replica, Role, Storage, StorageError,
};

/// A replica alone in its cluster: it elects itself and chooses by itself.
fn lone_replica(id: u64) -> Replica {
    Replica::new(
        Config::new(NodeId(id), vec![NodeId(id)]),
        Default::default(),
    )
    .expect("a valid config")
}

/// Takes and acknowledges every ready `replica` has, writing them to `storage`.
fn drain(replica: &mut Replica, storage: &mut MemStorage) {
    while replica.has_ready() {
        let mut ready = replica.ready();
        storage.write(ready.persist_mut()).expect("memory storage");
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
}

/// `replica` (alone in its cluster) as leader, with `count` commands chosen and applied.
fn lone_leader_with(replica: &mut Replica, storage: &mut MemStorage, count: usize) {
    for _ in 0..1_000 {
        if replica.is_leader() {
            break;
        }
        replica.tick();
        drain(replica, storage);
    }
    assert!(replica.is_leader(), "a lone replica elects itself");
    for index in 0..count {
        replica
            .propose(Bytes::from(format!("command {index}")))
            .expect("a leader takes a command");
        drain(replica, storage);
    }
}

#[test]
fn compacting_beyond_the_applied_mark_is_refused() {
    let mut replica = lone_replica(1);
    let mut storage = MemStorage::new();
    lone_leader_with(&mut replica, &mut storage, 3);
    let before = replica.status();
    assert!(before.applied >= 3, "{before:?}");

    assert_eq!(
        replica.compact(before.applied + 1),
        Err(CompactError::NotApplied {
            through: before.applied + 1,
            applied: before.applied,
        })
    );
    assert_eq!(
        replica.compact(u64::MAX),
        Err(CompactError::NotApplied {
            through: u64::MAX,
            applied: before.applied,
        })
    );
    assert_eq!(
        replica.status().first_slot,
        before.first_slot,
        "nothing was compacted"
    );
    let error = replica.compact(before.applied + 1).unwrap_err();
    assert!(error.to_string().contains("applied"), "{error}");

    // At the applied mark it is fine, and so is compacting the same slot again.
    assert_eq!(replica.compact(before.applied), Ok(()));
    assert_eq!(replica.status().first_slot, before.applied + 1);
    assert_eq!(replica.compact(before.applied), Ok(()));
    assert_eq!(replica.compact(0), Ok(()));
}

#[test]
fn acknowledging_a_number_never_handed_out_is_refused() {
    let mut replica = lone_replica(1);
    assert_eq!(
        replica.on_persisted(1),
        Err(AcknowledgeError::NeverHandedOut { number: 1, last: 0 })
    );
    let ready = replica.ready();
    assert_eq!(ready.number(), 1);
    assert_eq!(
        replica.on_persisted(2),
        Err(AcknowledgeError::NeverHandedOut { number: 2, last: 1 })
    );
    assert_eq!(
        replica.on_persisted(u64::MAX),
        Err(AcknowledgeError::NeverHandedOut {
            number: u64::MAX,
            last: 1
        })
    );
    assert_eq!(replica.on_persisted(0), Ok(()), "zero acknowledges nothing");
    assert_eq!(
        replica.advance(ready),
        Ok(()),
        "the real number goes through"
    );
}

#[test]
fn acknowledging_below_the_last_acknowledged_number_is_refused() {
    let mut replica = lone_replica(1);
    let first = replica.ready();
    let second = replica.ready();
    assert_eq!(replica.on_persisted(second.number()), Ok(()));
    assert_eq!(
        replica.on_persisted(first.number()),
        Err(AcknowledgeError::OutOfOrder {
            number: first.number(),
            acknowledged: second.number(),
        })
    );
    assert_eq!(
        replica.advance(first),
        Err(AcknowledgeError::OutOfOrder {
            number: 1,
            acknowledged: 2,
        }),
        "advance checks the order too"
    );
    // The same number again is no error, nor is the ready it came with.
    assert_eq!(replica.on_persisted(second.number()), Ok(()));
    assert_eq!(replica.advance(second), Ok(()));
    let error = replica.on_persisted(1).unwrap_err();
    assert!(error.to_string().contains("in order"), "{error}");
}

#[test]
fn advancing_another_replicas_ready_is_refused_and_counts_no_vote() {
    // Built from the same inputs, the two replicas are equal and behave the same: their
    // readies carry the same numbers, so only the stamp tells them apart.
    let mut replica = lone_replica(1);
    let mut twin = lone_replica(1);
    assert!(replica == twin, "the stamp is not part of the state");

    // Both campaign with nothing acknowledged: the incarnation and the own promise wait in
    // unacknowledged writes (written, say, but not yet reported durable).
    let mut own = None;
    let mut foreign = None;
    for _ in 0..1_000 {
        if replica.role() == Role::Candidate {
            break;
        }
        replica.tick();
        twin.tick();
        if replica.has_ready() {
            if let Some(older) = own.replace(replica.ready()) {
                replica.recycle(older);
            }
            if let Some(older) = foreign.replace(twin.ready()) {
                twin.recycle(older);
            }
        }
    }
    assert_eq!(replica.role(), Role::Candidate);
    let (own, foreign) = (own.expect("a ready"), foreign.expect("a ready"));
    assert_eq!(own.number(), foreign.number());

    // The twin's ready has the right number: taken for the replica's own, it would count the
    // unwritten promise, and the lone candidate would lead.
    let number = foreign.number();
    assert_eq!(
        replica.advance(foreign),
        Err(AcknowledgeError::ForeignReady { number })
    );
    assert_eq!(
        replica.advance(Ready::default()),
        Err(AcknowledgeError::ForeignReady { number: 0 }),
        "a default ready was made by no replica"
    );
    assert_eq!(replica.role(), Role::Candidate, "no vote was counted");
    assert!(replica == twin, "nothing changed");

    // Its own ready goes through, and its promise counts.
    assert_eq!(replica.advance(own), Ok(()));
    assert!(replica.is_leader());
    assert!(replica != twin);

    // A clone shares the readies taken before it was made (a fork of one history).
    let mut storage = MemStorage::new();
    drain(&mut replica, &mut storage);
    replica
        .propose(Bytes::from_static(b"x"))
        .expect("a leader with a durable incarnation takes a command");
    let ready = replica.ready();
    let mut fork = replica.clone();
    assert_eq!(fork.advance(ready), Ok(()));
}

#[test]
fn paxos_nodes_refuse_misused_acknowledgements() {
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let config = |id: u64| paxos::Config::new(InstanceId(7), NodeId(id), members.clone());
    let mut node = Node::new(config(1), DurableState::default()).expect("a valid config");
    let mut other = Node::new(config(2), DurableState::default()).expect("a valid config");
    assert_eq!(
        node.on_persisted(1),
        Err(AcknowledgeError::NeverHandedOut { number: 1, last: 0 })
    );

    node.propose(Bytes::from_static(b"v"))
        .expect("no value yet");
    let first = node.ready();
    let second = node.ready();
    let foreign = other.ready();
    assert_eq!(foreign.number(), 1);
    assert_eq!(
        node.advance(foreign),
        Err(AcknowledgeError::ForeignReady { number: 1 })
    );
    assert_eq!(
        node.advance(paxos::Ready::default()),
        Err(AcknowledgeError::ForeignReady { number: 0 })
    );
    assert_eq!(node.advance(second), Ok(()));
    assert_eq!(
        node.advance(first),
        Err(AcknowledgeError::OutOfOrder {
            number: 1,
            acknowledged: 2
        })
    );
    assert_eq!(
        node.on_persisted(3),
        Err(AcknowledgeError::NeverHandedOut { number: 3, last: 2 })
    );
}

#[test]
fn file_storage_refuses_unusable_options_without_touching_the_disk() {
    let root = tempfile::tempdir().expect("a temporary directory");
    let directory = root.path().join("never-created");
    let cases = [
        (
            "segment_bytes_max",
            FileStorageOptions {
                segment_bytes_max: SEGMENT_HEADER_BYTES,
                ..FileStorageOptions::default()
            },
        ),
        (
            "segment_bytes_max",
            FileStorageOptions {
                segment_bytes_max: 0,
                ..FileStorageOptions::default()
            },
        ),
        (
            "command_bytes_max",
            FileStorageOptions {
                command_bytes_max: usize::MAX,
                ..FileStorageOptions::default()
            },
        ),
        (
            "open_files_max",
            FileStorageOptions {
                open_files_max: 0,
                ..FileStorageOptions::default()
            },
        ),
    ];
    for (field, options) in cases {
        assert_eq!(options.validate().map_err(|error| error.field), Err(field));
        match FileStorage::open(&directory, 1, NodeId(1), options) {
            Err(StorageError::InvalidOptions(ConfigError { field: named, .. })) => {
                assert_eq!(named, field)
            }
            other => panic!("{field}: expected InvalidOptions, got {other:?}"),
        }
        assert!(!directory.exists(), "{field}: nothing was created");
    }
    let error = FileStorage::open(
        &directory,
        1,
        NodeId(1),
        FileStorageOptions {
            open_files_max: 0,
            ..FileStorageOptions::default()
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("open_files_max"), "{error}");

    // The smallest usable options open.
    let smallest = FileStorageOptions {
        segment_bytes_max: SEGMENT_HEADER_BYTES + 1,
        open_files_max: 1,
        ..FileStorageOptions::default()
    };
    assert_eq!(smallest.validate(), Ok(()));
    FileStorage::open(&directory, 1, NodeId(1), smallest).expect("usable options");
}

#[test]
fn codec_refuses_a_frame_size_out_of_range() {
    for frame_bytes_max in [0, 1, HEADER_BYTES, FRAME_BYTES_MAX_LIMIT + 1, usize::MAX] {
        let error = Codec::new(1, frame_bytes_max).unwrap_err();
        assert_eq!(error.field, "frame_bytes_max", "{frame_bytes_max}");
        assert!(error.to_string().contains("frame_bytes_max"), "{error}");
    }
    for frame_bytes_max in [HEADER_BYTES + 1, 1 << 20, FRAME_BYTES_MAX_LIMIT] {
        let codec = Codec::new(1, frame_bytes_max).expect("in range");
        assert_eq!(codec.frame_bytes_max(), frame_bytes_max);
    }
}

#[cfg(feature = "net")]
mod tcp {
    use std::collections::BTreeMap;
    use synod::message::{Body, Message};
    use synod::transport::tcp::{TcpConfig, TcpTransport};
    use synod::{Ballot, NodeId, Transport};
    use tokio::net::TcpListener;

    fn heartbeat(from: u64, to: u64) -> Message {
        Message {
            from: NodeId(from),
            to: NodeId(to),
            body: Body::Heartbeat {
                ballot: Ballot::new(1, NodeId(from)),
                chosen: 0,
                read: 0,
            },
        }
    }

    #[tokio::test]
    async fn tcp_send_of_another_nodes_message_is_dropped_and_counted() {
        let one = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let two = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let peers = BTreeMap::from([
            (NodeId(1), one.local_addr().expect("bound")),
            (NodeId(2), two.local_addr().expect("bound")),
        ]);
        let config = TcpConfig::new(NodeId(1), 0xC1A5, peers[&NodeId(1)], peers.clone());
        let (mut transport, _inbound) =
            TcpTransport::start_with_listener(config, one).expect("a valid config");

        // From node 3 (not this node) to node 2 (a peer), and from node 2 to this node.
        transport.send(heartbeat(3, 2));
        transport.send(heartbeat(2, 1));
        let stats = transport.stats();
        assert_eq!(stats.dropped_wrong_sender, 2, "{stats:#?}");
        assert_eq!(stats.queued, 0, "{stats:#?}");
        assert_eq!(stats.dropped_unknown, 0, "{stats:#?}");
        assert_eq!(stats.dropped_total(), 2, "{stats:#?}");

        // The transport goes on: its own node's messages are queued.
        transport.send(heartbeat(1, 2));
        assert_eq!(transport.stats().queued, 1);
        transport.shutdown().await;
        drop(two);
    }
}
