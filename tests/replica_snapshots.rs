//! Snapshot transfer: a replica behind a peer's compaction point is sent the application's
//! snapshot (`Event::SnapshotNeeded` -> `Replica::send_snapshot` -> `Body::Snapshot` ->
//! `Ready::take_snapshot`), installs it and follows the log from the slot after it.

mod common;

use bytes::Bytes;
use common::{n3_behind_the_compaction_point_with, Net};
use synod::message::{Body, Message};
use synod::replica::Event;
use synod::{
    Ballot, Entry, HardState, NodeId, ProposalId, Recovered, Replica, SendSnapshotError, Snapshot,
    StepError, Storage, Value,
};

fn command(data: &'static str) -> Value {
    Value::Command {
        id: ProposalId::default(),
        data: Bytes::from_static(data.as_bytes()),
    }
}

fn snapshot_message(from: u64, to: u64, slot: u64, data: &[u8]) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Snapshot {
            slot,
            offset: 0,
            total: data.len() as u64,
            data: Bytes::copy_from_slice(data),
            membership: three_members(),
        },
    }
}

/// n3 misses slots 1..=3 while n1 and n2 choose, apply, snapshot and compact them.
fn n3_behind_the_compaction_point() -> Net {
    n3_behind_the_compaction_point_with(|_| {})
}

#[test]
fn a_follower_behind_the_compaction_point_is_sent_the_snapshot_and_catches_up() {
    let mut net = n3_behind_the_compaction_point();
    net.heal();
    net.propose(1, "d");
    net.stabilize();
    net.tick_all(5);
    assert!(
        net.reported_snapshot_needed(1, 3),
        "{events:?}",
        events = net.nodes[&NodeId(1)].events
    );
    assert_eq!(net.nodes[&NodeId(3)].snapshots_installed, 1);
    assert_eq!(net.commands(3), ["a", "b", "c", "d"]);
    assert_eq!(net.replica(3).status().chosen, 4);
    // The snapshot is durable at n3, with its storage compacted through it.
    let storage = &mut net.nodes.get_mut(&NodeId(3)).unwrap().storage;
    assert_eq!(storage.load_snapshot().unwrap().map(|s| s.slot), Some(3));
    assert_eq!(storage.compacted_through(), 3);
    // It keeps up afterwards, and restarts from the snapshot.
    net.propose(1, "e");
    net.stabilize();
    net.crash(3);
    net.restart(3);
    net.propose(1, "f");
    net.stabilize();
    net.tick_all(3);
    assert_eq!(net.commands(3), ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(net.replica(3).status().applied, 6);
    net.assert_agreement();
}

#[test]
fn the_snapshot_needed_event_is_raised_once_per_election_timeout_per_follower() {
    // Without a saved snapshot the Net cannot answer, so n3 keeps fetching every
    // retransmit_ticks; the leader reports it once per election timeout, not per Fetch.
    let mut net = Net::new(3);
    net.isolate(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    for id in [1, 2] {
        let applied = net.replica(id).status().applied;
        net.replica_mut(id)
            .compact(applied)
            .expect("compacting at or below the applied mark");
        net.nodes
            .get_mut(&NodeId(id))
            .unwrap()
            .storage
            .compact(applied);
    }
    net.heal();
    net.propose(1, "b");
    net.stabilize();
    let election_ticks = net.replica(1).config().election_ticks;
    let retransmit_ticks = net.replica(1).config().retransmit_ticks;
    net.tick_all(3 * election_ticks);
    let fetches = net
        .sent
        .iter()
        .filter(|m| m.from == NodeId(3) && matches!(m.body, Body::Fetch { .. }))
        .count();
    let reports = net.nodes[&NodeId(1)]
        .events
        .iter()
        .filter(|event| matches!(event, Event::SnapshotNeeded { .. }))
        .count();
    assert!(
        fetches as u32 >= 3 * election_ticks / retransmit_ticks,
        "n3 kept asking: {fetches} fetches"
    );
    assert!(
        (3..=4).contains(&reports),
        "{reports} reports for {fetches} fetches"
    );
}

#[test]
fn only_a_follower_behind_the_snapshot_installs_it() {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    net.tick_all(2);
    // The leader never installs one (its vote window starts at its chosen mark).
    let before = net.replica(1).status();
    net.replica_mut(1)
        .step(snapshot_message(2, 1, 9, b"state"))
        .unwrap();
    let leader = net.replica_mut(1);
    let ready = leader.ready();
    assert!(ready.snapshot().is_none());
    leader
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    assert_eq!(net.replica(1).status().chosen, before.chosen);
    // A follower already at or past the slot ignores it.
    let chosen = net.replica(2).status().chosen;
    net.replica_mut(2)
        .step(snapshot_message(1, 2, chosen, b"state"))
        .unwrap();
    let mut ready = net.replica_mut(2).ready();
    assert!(ready.take_snapshot().is_none());
    net.replica_mut(2)
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    assert_eq!(net.replica(2).status().chosen, chosen);
}

#[test]
fn an_installed_snapshot_moves_the_marks_and_drops_what_it_covers() {
    // n2 accepted slots 1 and 2 from n1 (not yet written) when a snapshot of slot 1 arrives
    // from n3: the ready hands the snapshot out, writes only slot 2 with chosen mark 1, and the
    // acceptance waiting for that write no longer claims slot 1.
    let mut replica = common::started(2, 3);
    let ballot = Ballot::new(1, NodeId(1));
    let entries = vec![
        Entry {
            slot: 1,
            ballot,
            value: command("x"),
        },
        Entry {
            slot: 2,
            ballot,
            value: command("y"),
        },
    ];
    replica
        .step(Message {
            from: NodeId(1),
            to: NodeId(2),
            body: Body::Accept {
                ballot,
                chosen: 0,
                entries: entries.into(),
            },
        })
        .unwrap();
    replica
        .step(snapshot_message(3, 2, 1, b"state at 1"))
        .unwrap();
    let mut ready = replica.ready();
    let snapshot = ready.take_snapshot().expect("installed");
    assert_eq!(snapshot.slot, 1);
    assert_eq!(&snapshot.data[..], b"state at 1");
    let write = ready.persist();
    assert_eq!(write.hard_state.map(|hard| hard.chosen), Some(1));
    assert_eq!(
        write.entries().map(|entry| entry.slot).collect::<Vec<_>>(),
        [2]
    );
    assert!(
        ready.committed_slots().is_empty(),
        "slot 1 is in the snapshot"
    );
    assert!(replica.committed(&ready).next().is_none());
    let acceptances: Vec<(u64, u64)> = ready
        .take_persisted_messages()
        .into_iter()
        .filter_map(|message| match message.body {
            Body::Accepted {
                first_slot,
                last_slot,
                ..
            } => Some((first_slot, last_slot)),
            _ => None,
        })
        .collect();
    assert_eq!(acceptances, [(2, 2)]);
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let status = replica.status();
    assert_eq!((status.chosen, status.applied), (1, 1));
}

#[test]
fn send_snapshot_refuses_what_it_cannot_vouch_for() {
    let mut net = Net::with(3, |config| config.snapshot_bytes_max = 1 << 16);
    net.elect(1);
    net.propose(1, "a");
    net.propose(1, "b");
    net.stabilize();
    let chosen = net.replica(1).status().chosen;
    assert!(chosen >= 2);
    let snapshot = |slot, size| Snapshot {
        slot,
        data: Bytes::from(vec![7u8; size]),
        membership: None,
    };
    let replica = net.replica_mut(1);
    let max = replica.config().snapshot_bytes_max;
    assert_eq!(
        replica.send_snapshot(NodeId(9), &snapshot(1, 1)),
        Err(SendSnapshotError::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        replica.send_snapshot(NodeId(1), &snapshot(1, 1)),
        Err(SendSnapshotError::UnknownNode(NodeId(1)))
    );
    assert_eq!(
        replica.send_snapshot(NodeId(2), &snapshot(0, 1)),
        Err(SendSnapshotError::Empty)
    );
    assert_eq!(
        replica.send_snapshot(NodeId(2), &snapshot(chosen + 1, 1)),
        Err(SendSnapshotError::NotChosen {
            slot: chosen + 1,
            chosen
        })
    );
    assert_eq!(
        replica.send_snapshot(NodeId(2), &snapshot(chosen, max + 1)),
        Err(SendSnapshotError::TooLarge { size: max + 1, max })
    );
    // Older than the compaction point: the receiver would still lack compacted slots.
    replica
        .compact(chosen)
        .expect("compacting at or below the applied mark");
    assert_eq!(
        replica.send_snapshot(NodeId(2), &snapshot(chosen - 1, 1)),
        Err(SendSnapshotError::TooOld {
            slot: chosen - 1,
            compacted_through: chosen
        })
    );
    assert!(!replica.has_ready(), "nothing was sent");
    replica
        .send_snapshot(NodeId(2), &snapshot(chosen, max))
        .unwrap();
    let mut ready = replica.ready();
    let sent = ready.take_messages();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    // The first window of chunks.
    let chunk = replica.config().snapshot_chunk_bytes;
    assert_eq!(sent.len(), (max / chunk).clamp(1, 4));
    assert!(sent.iter().all(|message| matches!(
        &message.body,
        Body::Snapshot { slot, total, data, .. }
            if message.to == NodeId(2) && *slot == chosen && *total == max as u64 && data.len() <= chunk
    )));
}

#[test]
fn malformed_snapshots_are_refused_without_a_change() {
    let mut config = common::config(2, 3);
    config.snapshot_bytes_max = 1 << 16;
    let mut replica = Replica::new(config, Default::default()).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    let before = replica.clone();
    let error = replica.step(snapshot_message(1, 2, 0, b"x")).unwrap_err();
    assert!(matches!(error, StepError::Malformed { .. }), "{error}");
    let max = replica.config().snapshot_bytes_max;
    let huge = snapshot_message(1, 2, 5, &vec![0u8; max + 1]);
    assert!(matches!(
        replica.step(huge).unwrap_err(),
        StepError::Malformed { .. }
    ));
    // A membership from after the snapshot's slot, or an unusable one.
    for membership in [
        synod::MembershipAt {
            slot: 6,
            ..*three_members()
        },
        synod::MembershipAt {
            slot: 0,
            membership: synod::Membership::new([], [NodeId(1)]),
        },
    ] {
        let mut message = snapshot_message(1, 2, 5, b"x");
        if let Body::Snapshot { membership: m, .. } = &mut message.body {
            **m = membership;
        }
        let error = replica.step(message).unwrap_err();
        assert!(matches!(error, StepError::Malformed { .. }), "{error}");
    }
    // Only the refused-message counter moved.
    assert_eq!(replica.status().dropped_messages, 4);
    assert_eq!(replica.status().chosen, before.status().chosen);
    assert!(!replica.has_ready());
    // A snapshot of exactly snapshot_bytes_max bytes is within the limit.
    replica
        .step(snapshot_message(1, 2, 5, &vec![0u8; max]))
        .unwrap();
    let mut ready = replica.ready();
    assert_eq!(ready.take_snapshot().map(|s| s.data.len()), Some(max));
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
}

#[test]
fn a_crash_after_saving_the_snapshot_but_before_the_chosen_mark_restarts_from_the_snapshot() {
    // The application saved the snapshot of slot 3 and crashed before the ready's write: its
    // storage still says chosen = 1 and holds accepted values for slots 2..=4 that may not be
    // the chosen ones. Restarting with `Config::applied` = 3 makes slots up to 3 chosen and
    // never serves those old values.
    let ballot = Ballot::new(1, NodeId(1));
    let entry = |slot, data| Entry {
        slot,
        ballot,
        value: command(data),
    };
    let recovered = Recovered {
        hard_state: HardState {
            promised: ballot,
            chosen: 1,
            incarnation: 1,
        },
        entries: vec![
            entry(1, "a"),
            entry(2, "stale"),
            entry(3, "stale"),
            entry(4, "d"),
        ],
        // A founding member's storage holds its first membership (written at its first start).
        memberships: common::first_memberships(3),
    };
    let mut config = common::config(2, 3);
    config.applied = 3;
    let mut replica = Replica::new(config, recovered).unwrap();
    let status = replica.status();
    assert_eq!((status.chosen, status.applied), (3, 3));
    let ready = replica.ready();
    assert_eq!(ready.persist().hard_state.map(|hard| hard.chosen), Some(3));
    assert!(replica.committed(&ready).next().is_none());
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    // A peer asking for slot 2 is told it needs a snapshot, not given the stale value.
    replica
        .step(Message {
            from: NodeId(3),
            to: NodeId(2),
            body: Body::Fetch {
                ballot,
                first_slot: 2,
            },
        })
        .unwrap();
    let mut ready = replica.ready();
    assert!(ready.take_messages().is_empty());
    assert_eq!(
        ready.take_events(),
        [Event::SnapshotNeeded {
            follower: NodeId(3)
        }]
    );
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
}

/// A replica of a 3-member cluster restarted after compacting through slot 3 (its log starts
/// at slot 4), with its incarnation write done.
fn compacted_through_3(id: u64) -> Replica {
    let recovered = Recovered {
        hard_state: HardState {
            promised: Ballot::new(1, NodeId(1)),
            chosen: 3,
            incarnation: 1,
        },
        entries: Vec::new(),
        // A founding member's storage holds its first membership (written at its first start).
        memberships: common::first_memberships(3),
    };
    let mut config = common::config(id, 3);
    config.applied = 3;
    let mut replica = Replica::new(config, recovered).unwrap();
    let ready = replica.ready();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    replica
}

fn fetch(from: u64, to: u64, first_slot: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        body: Body::Fetch {
            ballot: Ballot::new(1, NodeId(1)),
            first_slot,
        },
    }
}

fn snapshot_needed(replica: &mut Replica) -> usize {
    let mut ready = replica.ready();
    let count = ready
        .take_events()
        .iter()
        .filter(|event| matches!(event, Event::SnapshotNeeded { .. }))
        .count();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    count
}

#[test]
fn a_lagging_member_is_reported_again_exactly_when_an_election_timeout_has_passed() {
    let mut replica = compacted_through_3(1);
    let election_ticks = replica.config().election_ticks;
    replica.step(fetch(2, 1, 1)).unwrap();
    assert_eq!(snapshot_needed(&mut replica), 1);
    for _ in 1..election_ticks {
        replica.tick();
        replica.step(fetch(2, 1, 1)).unwrap();
        assert_eq!(
            snapshot_needed(&mut replica),
            0,
            "within the election timeout"
        );
    }
    replica.tick();
    replica.step(fetch(2, 1, 1)).unwrap();
    assert_eq!(
        snapshot_needed(&mut replica),
        1,
        "an election timeout later"
    );
    // Another member is reported on its own schedule.
    replica.step(fetch(3, 1, 2)).unwrap();
    assert_eq!(snapshot_needed(&mut replica), 1);
}

fn fetches(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|message| match message.body {
            Body::Fetch { first_slot, .. } => Some(first_slot),
            _ => None,
        })
        .collect()
}

#[test]
fn after_installing_a_snapshot_a_follower_fetches_only_what_is_still_missing() {
    // n2 hears that slots up to 5 are chosen and fetches; a snapshot of slot 3 arrives first:
    // it fetches from slot 4 at once. A snapshot of slot 5 instead leaves nothing to fetch.
    for (snapshot_slot, expected) in [(3, vec![4]), (5, vec![])] {
        let mut replica = common::started(2, 3);
        replica
            .step(Message {
                from: NodeId(1),
                to: NodeId(2),
                body: Body::Commit {
                    ballot: Ballot::new(1, NodeId(1)),
                    chosen: 5,
                },
            })
            .unwrap();
        let mut ready = replica.ready();
        assert_eq!(fetches(&ready.take_messages()), [1]);
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
        replica
            .step(snapshot_message(1, 2, snapshot_slot, b"state"))
            .unwrap();
        let mut ready = replica.ready();
        assert_eq!(
            fetches(&ready.take_messages()),
            expected,
            "snapshot of {snapshot_slot}"
        );
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
    }
}

#[test]
fn a_snapshot_at_the_last_representable_slot_is_refused() {
    // Bad input: a snapshot at `Slot::MAX` leaves no slot after it (the log's next first slot
    // would overflow); it is malformed, not installed.
    let mut replica = common::started(2, 3);
    let error = replica
        .step(snapshot_message(1, 2, u64::MAX, b"state"))
        .unwrap_err();
    assert!(matches!(error, StepError::Malformed { .. }), "{error:?}");
    assert_eq!(replica.status().chosen, 0);
}

fn chunk_message(from: u64, slot: u64, offset: u64, total: u64, data: &[u8]) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(2),
        body: Body::Snapshot {
            slot,
            offset,
            total,
            data: Bytes::copy_from_slice(data),
            membership: three_members(),
        },
    }
}

/// Steps `message` into `replica` and returns the acknowledgements it sends, and the
/// snapshot its ready installs, if any.
fn step_chunk(replica: &mut Replica, message: Message) -> (Vec<(u64, u64)>, Option<Snapshot>) {
    replica.step(message).unwrap();
    let mut ready = replica.ready();
    let acks = ready
        .take_messages()
        .into_iter()
        .filter_map(|message| match message.body {
            Body::SnapshotAck { slot, received } => Some((slot, received)),
            _ => None,
        })
        .collect();
    let snapshot = ready.take_snapshot();
    replica
        .advance(ready)
        .expect("its own ready, acknowledged in order");
    (acks, snapshot)
}

#[test]
fn a_receiver_assembles_chunks_in_order_and_asks_for_what_it_lacks() {
    let mut replica = common::started(2, 3);
    // The first chunk starts a transfer; a chunk beyond what is held, or a repeat, is not
    // appended: the acknowledgement says what is held.
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 5, 0, 10, b"abcd")),
        (vec![(5, 4)], None)
    );
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 5, 8, 10, b"ij")),
        (vec![(5, 4)], None)
    );
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 5, 0, 10, b"abcd")),
        (vec![(5, 4)], None)
    );
    // A chunk of another transfer that does not start it is refused: start over.
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 6, 4, 10, b"efgh")),
        (vec![(6, 0)], None)
    );
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 5, 4, 10, b"efgh")),
        (vec![(5, 8)], None)
    );
    // The last chunk completes it: installed with exactly the bytes sent.
    let (acks, snapshot) = step_chunk(&mut replica, chunk_message(1, 5, 8, 10, b"ij"));
    assert_eq!(acks, [(5, 10)]);
    let snapshot = snapshot.expect("installed");
    assert_eq!((snapshot.slot, &snapshot.data[..]), (5, &b"abcdefghij"[..]));
    assert_eq!(replica.status().chosen, 5);
    // Once installed, more chunks of it are not needed: acknowledged whole.
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 5, 0, 10, b"abcd")),
        (vec![(5, 10)], None)
    );
}

#[test]
fn a_new_transfer_replaces_one_under_way() {
    let mut replica = common::started(2, 3);
    step_chunk(&mut replica, chunk_message(1, 5, 0, 8, b"abcd"));
    // The sender took a newer snapshot and starts again with it.
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 7, 0, 8, b"wxyz")),
        (vec![(7, 4)], None)
    );
    // The rest of the old one no longer continues anything.
    assert_eq!(
        step_chunk(&mut replica, chunk_message(1, 5, 4, 8, b"efgh")),
        (vec![(5, 0)], None)
    );
    let (_, snapshot) = step_chunk(&mut replica, chunk_message(1, 7, 4, 8, b"1234"));
    assert_eq!(
        snapshot.map(|s| (s.slot, s.data)),
        Some((7, Bytes::from_static(b"wxyz1234")))
    );
}

/// Queued snapshot chunks to `to`: (slot, offset, length).
fn chunks_to(net: &Net, to: u64) -> Vec<(u64, u64, usize)> {
    net.queue
        .iter()
        .filter(|message| message.to == NodeId(to))
        .filter_map(|message| match &message.body {
            Body::Snapshot {
                slot, offset, data, ..
            } => Some((*slot, *offset, data.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sender_keeps_a_window_of_chunks_and_resends_what_was_lost() {
    let chunk = 2;
    let mut net = n3_behind_the_compaction_point_with(|config| config.snapshot_chunk_bytes = chunk);
    let snapshot = net.nodes[&NodeId(1)]
        .storage
        .clone()
        .load_snapshot()
        .unwrap()
        .unwrap();
    assert!(
        snapshot.data.len() > 6 * chunk,
        "{} bytes",
        snapshot.data.len()
    );
    net.heal();
    net.queue.clear();
    net.replica_mut(1)
        .send_snapshot(NodeId(3), &snapshot)
        .unwrap();
    net.process(NodeId(1));
    let window = synod::replica::SNAPSHOT_CHUNKS_INFLIGHT as usize;
    let first: Vec<(u64, u64, usize)> = (0..window)
        .map(|index| (3, (index * chunk) as u64, chunk))
        .collect();
    assert_eq!(chunks_to(&net, 3), first, "one window, nothing more");
    // The second chunk is lost; the others arrive and are acknowledged as "4 bytes held".
    net.drop_where(|message| matches!(message.body, Body::Snapshot { offset: 2, .. }));
    net.stabilize();
    assert_eq!(net.nodes[&NodeId(3)].snapshots_installed, 0);
    // After retransmit_ticks without progress, n1 goes back to the lost chunk.
    let retransmit_ticks = net.replica(1).config().retransmit_ticks;
    for _ in 0..retransmit_ticks {
        net.tick(1);
    }
    assert_eq!(chunks_to(&net, 3)[0], (3, 2, chunk));
    net.stabilize();
    assert_eq!(net.nodes[&NodeId(3)].snapshots_installed, 1);
    assert_eq!(net.replica(3).status().chosen, 3);
    assert_eq!(net.commands(3), ["a", "b", "c"]);
}

#[test]
fn a_sender_gives_up_on_a_transfer_without_progress() {
    let mut net = n3_behind_the_compaction_point();
    let snapshot = net.nodes[&NodeId(1)]
        .storage
        .clone()
        .load_snapshot()
        .unwrap()
        .unwrap();
    net.queue.clear();
    net.replica_mut(1)
        .send_snapshot(NodeId(3), &snapshot)
        .unwrap();
    net.process(NodeId(1));
    let chunks_sent = |net: &Net| {
        net.sent
            .iter()
            .filter(|message| {
                message.to == NodeId(3) && matches!(message.body, Body::Snapshot { .. })
            })
            .count()
    };
    let first = chunks_sent(&net);
    assert!(first > 0);
    // n3 stays cut off: n1 resends, then stops after two election timeouts.
    let election_ticks = net.replica(1).config().election_ticks;
    for _ in 0..2 * election_ticks {
        net.tick(1);
    }
    let resent = chunks_sent(&net);
    assert!(resent > first, "the chunks were sent again");
    for _ in 0..3 * election_ticks {
        net.tick(1);
    }
    assert_eq!(chunks_sent(&net), resent, "and then no more");
}

/// A snapshot larger than a transport frame (16 MiB by default) gets through: every chunk
/// is encoded with the TCP transport's default frame limit and decoded on the other side.
#[test]
fn a_snapshot_larger_than_a_frame_arrives_whole_through_the_wire_codec() {
    use synod::transport::codec::Codec;
    let codec = Codec::new(0, 16 << 20).expect("a frame size within the codec's limits");
    let mut net = n3_behind_the_compaction_point();
    // The "state machine" of slots 1..=3 with a 20 MiB value in slot 1.
    let big: Vec<u8> = (0..20u32 << 20).map(|index| (index % 251) as u8).collect();
    let mut applied = net.nodes[&NodeId(1)].applied.clone();
    applied.insert(
        1,
        Value::Command {
            id: ProposalId::default(),
            data: Bytes::from(big),
        },
    );
    let snapshot = common::encode_snapshot(3, &applied);
    assert!(snapshot.data.len() > 20 << 20);
    net.heal();
    net.queue.clear();
    net.replica_mut(1)
        .send_snapshot(NodeId(3), &snapshot)
        .unwrap();
    net.process(NodeId(1));
    let mut chunks = 0;
    for _ in 0..100_000 {
        let Some(message) = net.queue.first() else {
            break;
        };
        if matches!(message.body, Body::Snapshot { .. }) {
            chunks += 1;
        }
        // Through the codec, as on a connection.
        let frame = codec.encode(message).expect("every message fits a frame");
        let (decoded, _): (Message, usize) = codec.decode(&frame).expect("and decodes");
        assert_eq!(&decoded, message);
        net.deliver(0);
    }
    assert!(chunks >= 20, "{chunks} chunks");
    // n3 installed exactly the bytes sent (the Net saved what the ready handed out).
    assert_eq!(net.nodes[&NodeId(3)].snapshots_installed, 1);
    let storage = &mut net.nodes.get_mut(&NodeId(3)).unwrap().storage;
    let saved = storage.load_snapshot().unwrap().expect("installed");
    assert_eq!(saved.slot, 3);
    assert!(saved.data == snapshot.data, "the assembled bytes differ");
}

/// The membership of the three-member test clusters, as a snapshot message carries it.
fn three_members() -> Box<synod::MembershipAt> {
    Box::new(synod::MembershipAt {
        slot: 0,
        membership: synod::Membership::new(common::ids(3), []),
    })
}
