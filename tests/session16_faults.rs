//! Faults found (and rules confirmed) by an adversarial review of session 16's changes: API
//! misuse answered with typed errors (`AcknowledgeError`, `CompactError`), the panic audit of
//! the session and key-value tables, and the 2PC participant's durable floors.
//!
//! Deterministic: no clock, no thread, no randomness beyond the replicas' seeded RNGs.
//!
//! Bugs found (each test named here failed before its fix):
//! - `a_ready_the_parent_took_after_the_clone_is_foreign_to_the_clone` and
//!   `a_paxos_node_clone_refuses_its_parents_later_readies`: a clone kept its parent's stamp
//!   for good, so a ready the parent took *after* the clone was made passed the clone's
//!   `advance` and counted the clone's own promise as durable although the clone's write was
//!   never made (two lone candidates, one promise written, both led).
//! - `a_torn_participant_write_never_loses_a_floor`: a participant's ready listed a finished
//!   record before the floor record for the transaction it pushed out of the window. An
//!   application that writes the records in order and keeps only the newest
//!   `finished_remembered` finished ones, crashing between the two, lost both the finished
//!   record and the floor: a duplicated vote request for the committed transaction was then
//!   taken for a new one.
//!
//! (`readies_taken_before_a_clone_belong_to_every_fork` failed too, at its check that the
//! parent's later ready is foreign to the fork; the rest of it confirms what still holds.)
//!
//! The other tests confirm rules that held under attack: refused acknowledgements and
//! compactions leave the whole replica equal to what it was, a ready from before a restart is
//! refused, the session and key-value tables take the ends of the `u64` range and seeded
//! random misuse without a panic, a refused call or replayed slot changes nothing, and every
//! state they reach saves and loads back equal.

use bytes::Bytes;
use std::collections::BTreeMap;
use synod::kv::{Command, KvError, KvLimits, KvStateMachine, Operation, Response};
use synod::paxos::{self, DurableState, InstanceId, Node};
use synod::session::{ClientId, Outcome, RequestHeader, SessionLimits, SessionTable};
use synod::twopc::{
    Body, Message, Outcome as TxnOutcome, Participant, ParticipantConfig, ParticipantEvent,
    ParticipantRecord, TxnId,
};
use synod::{AcknowledgeError, CompactError, Config, MemStorage, NodeId, Replica, Role, Storage};

// ---- replicas: acknowledgements and compaction --------------------------------------------

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

/// Ticks `replica` (taking no ready) until it campaigns.
fn tick_until_candidate(replica: &mut Replica) {
    for _ in 0..1_000 {
        if replica.role() == Role::Candidate {
            return;
        }
        replica.tick();
    }
    panic!("a lone replica campaigns");
}

/// BUG (fixed): a clone kept its parent's stamp, so the parent's readies taken after the
/// clone was made were accepted by the clone. Two forks of one replica campaign alike and
/// number their readies alike; only the parent writes its ready. Acknowledged on the clone,
/// that ready made the clone count its own, unwritten, promise and lead.
#[test]
fn a_ready_the_parent_took_after_the_clone_is_foreign_to_the_clone() {
    let mut parent = lone_replica(1);
    let mut storage = MemStorage::new();
    drain(&mut parent, &mut storage);
    let mut fork = parent.clone();

    tick_until_candidate(&mut parent);
    tick_until_candidate(&mut fork);
    let mut written = parent.ready();
    storage
        .write(written.persist_mut())
        .expect("memory storage");
    let unwritten = fork.ready();
    assert_eq!(written.number(), unwritten.number(), "the forks run alike");
    assert!(parent == fork);

    let before = fork.clone();
    let number = written.number();
    assert_eq!(
        fork.advance(written),
        Err(AcknowledgeError::ForeignReady { number }),
        "the parent's ready is not the clone's: its write says nothing of the clone's"
    );
    assert_eq!(fork.role(), Role::Candidate, "no unwritten promise counted");
    assert!(fork == before, "a refused acknowledgement changes nothing");

    // The clone's own ready still goes through, and the parent refuses it in turn.
    assert_eq!(fork.advance(unwritten), Ok(()));
    assert!(fork.is_leader());
    let theirs = fork.ready();
    let number = theirs.number();
    assert_eq!(
        parent.advance(theirs),
        Err(AcknowledgeError::ForeignReady { number })
    );
    assert_eq!(parent.role(), Role::Candidate);
}

/// Confirms (kept with the fix): readies taken before a clone was made belong to both forks,
/// across clones of clones, while each fork's later readies are its own. What the model
/// checker relies on: it clones a world and drives each copy on its own.
#[test]
fn readies_taken_before_a_clone_belong_to_every_fork() {
    let mut replica = lone_replica(1);
    tick_until_candidate(&mut replica);
    let first = replica.ready(); // the incarnation and the promise
    let mut child = replica.clone();
    let second = child.ready();
    let mut grandchild = child.clone();
    let third = grandchild.ready();

    // The grandchild holds the writes of all three: its parent's and grandparent's readies
    // taken before it was made are its own.
    assert_eq!(grandchild.advance(first), Ok(()));
    assert_eq!(grandchild.advance(second), Ok(()));
    assert_eq!(grandchild.advance(third), Ok(()));
    assert!(grandchild.is_leader());

    // The same first ready (a second copy of the history) goes through on the other forks.
    let mut replica = lone_replica(2);
    tick_until_candidate(&mut replica);
    let first = replica.ready();
    let mut fork = replica.clone();
    let mine = fork.ready();
    let theirs = replica.ready();
    let number = theirs.number();
    assert_eq!(fork.advance(first), Ok(()));
    assert_eq!(
        fork.advance(theirs),
        Err(AcknowledgeError::ForeignReady { number }),
        "taken by the parent after the clone"
    );
    assert_eq!(fork.advance(mine), Ok(()));
}

/// BUG (fixed), the same hole in single-decree Paxos: a clone of a `paxos::Node` accepted
/// its parent's later readies, and counted its own promise as durable.
#[test]
fn a_paxos_node_clone_refuses_its_parents_later_readies() {
    let config = paxos::Config::new(InstanceId(1), NodeId(1), vec![NodeId(1)]);
    let mut parent = Node::new(config, DurableState::default()).expect("a valid config");
    let mut fork = parent.clone();
    parent
        .propose(Bytes::from_static(b"v"))
        .expect("no value yet");
    fork.propose(Bytes::from_static(b"v"))
        .expect("no value yet");
    let written = parent.ready();
    let unwritten = fork.ready();
    assert_eq!(written.number(), unwritten.number());

    let before = fork.clone();
    let number = written.number();
    assert_eq!(
        fork.advance(written),
        Err(AcknowledgeError::ForeignReady { number })
    );
    assert!(fork == before, "no promise counted");
    assert_eq!(fork.advance(unwritten), Ok(()));
    assert!(fork != before, "its own write counts");
}

/// Confirms: every refused acknowledgement or compaction leaves the replica equal to what it
/// was (the whole state, not only its status), and repeating an accepted one is a no-op.
#[test]
fn refused_acknowledgements_and_compactions_change_nothing() {
    let mut replica = lone_replica(1);
    let mut storage = MemStorage::new();
    for _ in 0..1_000 {
        if replica.is_leader() {
            break;
        }
        replica.tick();
        drain(&mut replica, &mut storage);
    }
    for index in 0..4 {
        replica
            .propose(Bytes::from(format!("command {index}")))
            .expect("a leader takes a command");
        drain(&mut replica, &mut storage);
    }
    // Two readies in flight, neither acknowledged.
    replica.propose(Bytes::from_static(b"a")).expect("leader");
    let first = replica.ready();
    replica.propose(Bytes::from_static(b"b")).expect("leader");
    let second = replica.ready();
    let applied = replica.status().applied;

    let before = replica.clone();
    let debug = format!("{replica:?}");
    let last = second.number();
    assert_eq!(
        replica.on_persisted(last + 1),
        Err(AcknowledgeError::NeverHandedOut {
            number: last + 1,
            last
        })
    );
    assert_eq!(
        replica.compact(applied + 1),
        Err(CompactError::NotApplied {
            through: applied + 1,
            applied
        })
    );
    assert_eq!(
        replica.advance(lone_replica(1).ready()),
        Err(AcknowledgeError::ForeignReady { number: 1 })
    );
    assert!(replica == before);
    assert_eq!(format!("{replica:?}"), debug);

    // Acknowledging the second acknowledges the first too (writes complete in order); the
    // first is then refused, and the second again changes nothing.
    assert_eq!(replica.advance(second), Ok(()));
    let after = replica.clone();
    assert_eq!(
        replica.advance(first),
        Err(AcknowledgeError::OutOfOrder {
            number: last - 1,
            acknowledged: last
        })
    );
    assert_eq!(replica.on_persisted(last), Ok(()));
    assert!(replica == after);

    // Compacting twice, or below what was compacted, does nothing the second time.
    drain(&mut replica, &mut storage);
    let applied = replica.status().applied;
    assert_eq!(replica.compact(applied), Ok(()));
    let compacted = replica.clone();
    assert_eq!(replica.compact(applied), Ok(()));
    assert_eq!(replica.compact(1), Ok(()));
    assert_eq!(replica.compact(0), Ok(()));
    assert!(replica == compacted);
    assert_eq!(replica.status().first_slot, applied + 1);
}

/// Confirms: a ready from before a restart is refused by the replica recovered from the same
/// storage, even though the numbers line up (both start counting at 1).
#[test]
fn a_ready_from_before_a_restart_is_refused() {
    let mut replica = lone_replica(1);
    let mut storage = MemStorage::new();
    drain(&mut replica, &mut storage);
    tick_until_candidate(&mut replica);
    let stale = replica.ready(); // never written
    let recovered = storage.recover().expect("memory storage");
    let mut restarted =
        Replica::new(Config::new(NodeId(1), vec![NodeId(1)]), recovered).expect("valid");
    let mut scratch = MemStorage::new();
    drain(&mut restarted, &mut scratch);
    tick_until_candidate(&mut restarted);
    let fresh = restarted.ready();
    assert_eq!(fresh.number(), stale.number());
    let before = restarted.clone();
    let number = stale.number();
    assert_eq!(
        restarted.advance(stale),
        Err(AcknowledgeError::ForeignReady { number })
    );
    assert!(restarted == before);
    assert_eq!(restarted.advance(fresh), Ok(()));
}

// ---- session and key-value tables ----------------------------------------------------------

fn header(client: ClientId, sequence: u64, acknowledged_below: u64) -> RequestHeader {
    RequestHeader {
        client,
        sequence,
        acknowledged_below,
    }
}

/// Confirms: the largest indices, sequences and watermarks neither panic nor wrap, and a
/// table that saw them still saves and loads.
#[test]
fn session_table_at_the_top_of_the_u64_range() {
    let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
    let client = table.open(u64::MAX - 1).unwrap().client;
    let request = header(client, u64::MAX, u64::MAX);
    assert_eq!(table.check(request, u64::MAX), Outcome::New);
    table.record(request, Bytes::from_static(b"top")).unwrap();
    assert_eq!(
        table.check(request, u64::MAX),
        Outcome::Duplicate(Bytes::from_static(b"top"))
    );
    assert_eq!(table.check(header(client, 7, 0), u64::MAX), Outcome::Stale);
    assert_eq!(table.expire_inactive(u64::MAX), Ok(0));
    let bytes = bincode::serde::encode_to_vec(&table, bincode::config::standard()).unwrap();
    let (loaded, _): (SessionTable<Bytes>, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(loaded, table);
}

/// Confirms: a key-value store applied at the last slot refuses every later slot without a
/// panic, and a failed command of a session is cached like any other answer (a retry gets
/// the same error and the store is unchanged).
#[test]
fn kv_store_at_the_last_slot_and_refused_retries() {
    let mut machine = KvStateMachine::new(KvLimits::default()).unwrap();
    let opened = machine.apply_command(1, Command::OpenSession);
    let Response::SessionOpened { client } = opened else {
        panic!("{opened:?}");
    };
    let put = Command::Request {
        header: header(client, 1, 0),
        operation: Operation::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; KvLimits::default().value_bytes_max + 1]),
        },
    };
    let first = machine.apply_command(2, put.clone());
    assert!(
        matches!(first, Response::Error(KvError::ValueTooLarge { .. })),
        "{first:?}"
    );
    let digest = machine.digest();
    assert_eq!(machine.apply_command(u64::MAX, put.clone()), first);
    assert_ne!(machine.digest(), digest, "only the slot and activity moved");
    let snapshot = machine.snapshot();
    assert_eq!(
        machine.apply_command(u64::MAX, put),
        Response::Error(KvError::SlotReplayed {
            slot: u64::MAX,
            last: u64::MAX
        })
    );
    assert_eq!(
        machine.snapshot(),
        snapshot,
        "a replayed slot changes nothing"
    );
    let restored = KvStateMachine::restore(&snapshot).expect("a valid snapshot");
    assert_eq!(restored, machine);
}

// ---- 2PC participant: torn writes and floors -----------------------------------------------

const COORDINATOR: NodeId = NodeId(100);
const PARTICIPANT: NodeId = NodeId(1);

fn participant_config(remembered: usize) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(PARTICIPANT);
    config.finished_remembered = remembered;
    config
}

fn vote_request(txn: u64) -> Message {
    Message {
        txn: TxnId(txn),
        from: COORDINATOR,
        to: PARTICIPANT,
        body: Body::VoteRequest {
            payload: Bytes::from(format!("part of t{txn}")),
        },
    }
}

fn commit(txn: u64) -> Message {
    Message {
        txn: TxnId(txn),
        from: COORDINATOR,
        to: PARTICIPANT,
        body: Body::Decision {
            outcome: TxnOutcome::Commit,
        },
    }
}

/// A participant's disk as a trimming application keeps it, record by record: the newest
/// `remembered` finished records (older ones are dropped as soon as a newer one is written,
/// which the records' contract allows), the newest floor of each coordinator, and the
/// prepared records not followed by their finished one.
#[derive(Clone, Debug, Default)]
struct Disk {
    remembered: usize,
    prepared: BTreeMap<TxnId, ParticipantRecord>,
    finished: Vec<ParticipantRecord>,
    floors: BTreeMap<NodeId, ParticipantRecord>,
    /// Commits applied, each atomically with its finished record.
    applied: Vec<TxnId>,
}

impl Disk {
    fn write(&mut self, record: ParticipantRecord) {
        match &record {
            ParticipantRecord::Prepared { txn, .. } => {
                self.prepared.insert(*txn, record);
            }
            ParticipantRecord::Finished { txn, outcome, .. } => {
                self.prepared.remove(txn);
                if *outcome == TxnOutcome::Commit {
                    self.applied.push(*txn);
                }
                self.finished.push(record);
                let excess = self.finished.len().saturating_sub(self.remembered);
                self.finished.drain(..excess);
            }
            ParticipantRecord::Floor { coordinator, txn } => {
                let higher = match self.floors.get(coordinator) {
                    Some(ParticipantRecord::Floor { txn: kept, .. }) => txn > kept,
                    _ => true,
                };
                if higher {
                    self.floors.insert(*coordinator, record);
                }
            }
        }
    }

    fn records(&self) -> Vec<ParticipantRecord> {
        self.floors
            .values()
            .chain(&self.finished)
            .chain(self.prepared.values())
            .cloned()
            .collect()
    }
}

/// Steps `message` and handles the participant's readies: records written to `disk`, every
/// vote asked for is yes. Returns the transactions the application was asked to vote on and
/// the yes votes sent.
fn handle(participant: &mut Participant, disk: &mut Disk, message: Message) -> (Vec<TxnId>, usize) {
    participant.step(message).expect("a sound message");
    let mut asked = Vec::new();
    let mut yes_votes = 0;
    while participant.has_ready() {
        let mut ready = participant.ready();
        let _ = ready.take_messages();
        for record in ready.take_records() {
            disk.write(record);
        }
        yes_votes += ready
            .take_persisted_messages()
            .iter()
            .filter(|message| message.body == Body::Vote { yes: true })
            .count();
        for event in ready.take_events() {
            if let ParticipantEvent::VoteRequested { txn, .. } = event {
                asked.push(txn);
                participant.vote(txn, true).expect("asked");
            }
        }
    }
    (asked, yes_votes)
}

/// BUG (fixed): t1 commits, then t2 commits and pushes t1 out of a window of one. The ready
/// that finishes t2 listed `Finished(t2)` before `Floor(t1)`; a crash between the two, with
/// `Finished(t1)` already dropped for `Finished(t2)`, left the disk with neither t1's
/// finished record nor its floor, and a duplicate of t1's vote request (the network keeps
/// copies) prepared t1 again: its coordinator, whose log still remembers the commit, would
/// have t1 applied twice. The floor now comes first: every prefix of the ready's records
/// leaves t1 covered, by its finished record or by the floor.
#[test]
fn a_torn_participant_write_never_loses_a_floor() {
    for remembered in [0, 1, 2] {
        let mut participant = Participant::new(participant_config(remembered)).unwrap();
        let mut disk = Disk {
            remembered,
            ..Disk::default()
        };
        // Commits t1..=remembered (all still remembered), each fully written.
        for txn in 1..=remembered as u64 {
            handle(&mut participant, &mut disk, vote_request(txn));
            handle(&mut participant, &mut disk, commit(txn));
        }
        // The next transaction is prepared; its commit pushes the oldest one out of the
        // window (with a window of 0, itself).
        let last = remembered as u64 + 1;
        handle(&mut participant, &mut disk, vote_request(last));
        participant.step(commit(last)).unwrap();
        let mut ready = participant.ready();
        let records = ready.take_records();
        assert!(
            records
                .iter()
                .any(|record| matches!(record, ParticipantRecord::Floor { txn: TxnId(1), .. })),
            "the floor rises to t1: {records:?}"
        );

        // A crash after each prefix of the ready's records.
        for written in 0..=records.len() {
            let mut torn = disk.clone();
            for record in records.iter().take(written).cloned() {
                torn.write(record);
            }
            let mut restarted =
                Participant::recover(participant_config(remembered), torn.records()).unwrap();
            while restarted.has_ready() {
                for record in restarted.ready().take_records() {
                    torn.write(record);
                }
            }
            // Still prepared on t1 (the write that finishes it was lost whole), the
            // participant says its yes again; otherwise t1 is over and must stay so.
            let prepared = restarted.prepared().any(|txn| txn == TxnId(1));
            let (asked, yes_votes) = handle(&mut restarted, &mut torn, vote_request(1));
            assert_eq!(
                (asked, yes_votes),
                (vec![], usize::from(prepared)),
                "window {remembered}, crash after {written} of {records:?}: the duplicate \
                 of t1's vote request prepared the committed t1 again"
            );
            // (A crash before the finished record leaves t1 prepared and not yet applied.)
            let applied = torn.applied.iter().filter(|txn| **txn == TxnId(1)).count();
            assert_eq!(
                applied,
                usize::from(!prepared),
                "t1 applied {applied} times"
            );
        }
    }
}

// ---- randomized misuse of the tables (seeded, deterministic) -------------------------------

/// A tiny deterministic generator (SplitMix64): the same sequence on every run.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Mostly small values, sometimes the edges of the `u64` range.
    fn number(&mut self, around: u64) -> u64 {
        match self.below(64) {
            0 => u64::MAX,
            1 => u64::MAX - self.below(3),
            2 => 0,
            3 => around.saturating_sub(self.below(3)),
            _ => around.saturating_add(self.below(4)),
        }
    }
}

/// Confirms: whatever calls come, in whatever order, at whatever indices, a session table
/// never panics, every refused call leaves it equal to what it was, it always saves and
/// loads back equal (loading checks every invariant), and no request is answered `New`
/// twice.
#[test]
fn session_table_survives_random_misuse() {
    for seed in 0..128 {
        let mut dice = Dice(seed);
        let limits = SessionLimits {
            sessions_max: 1 + dice.below(4) as usize,
            responses_per_session_max: 1 + dice.below(4) as usize,
            response_bytes_per_session_max: 1 + dice.below(8) as usize,
        };
        let mut table = SessionTable::<Bytes>::new(limits).unwrap();
        let mut applied: std::collections::BTreeSet<(ClientId, u64)> = Default::default();
        let mut pending: Option<RequestHeader> = None;
        let mut index = 0u64;
        let mut newest = 0u64;
        for _ in 0..400 {
            let before = table.clone();
            // Forward mostly, sometimes backwards (refused), rarely to the end of the range.
            index = match dice.below(300) {
                0 => u64::MAX - dice.below(3),
                1..=8 => index.saturating_sub(1 + dice.below(2)),
                _ => index.saturating_add(dice.below(3)),
            };
            // One of the newest sessions mostly, sometimes an expired or never opened one.
            let client = ClientId((newest + 2).saturating_sub(dice.below(8)));
            let acknowledged = if dice.below(16) == 0 {
                u64::MAX
            } else {
                dice.below(4)
            };
            let sequence = acknowledged.saturating_add(dice.below(6));
            let refused = match dice.below(11) {
                0 => match table.open(index) {
                    Ok(opened) => {
                        newest = opened.client.0;
                        false
                    }
                    Err(_) => true,
                },
                1 => table.close(client).is_err(),
                2 => table.expire_inactive(dice.number(index)).is_err(),
                3..=5 => {
                    let request = match pending {
                        Some(pending) if dice.below(4) != 0 => pending,
                        _ => header(client, sequence, acknowledged),
                    };
                    let response = Bytes::from(vec![1u8; dice.below(6) as usize]);
                    let refused = table.record(request, response).is_err();
                    if !refused {
                        pending = None;
                        assert!(
                            applied.insert((request.client, request.sequence)),
                            "seed {seed}: {request:?} recorded twice"
                        );
                    }
                    refused
                }
                _ => {
                    let request = header(client, sequence, acknowledged);
                    match table.check(request, index) {
                        Outcome::New => {
                            assert!(
                                !applied.contains(&(request.client, request.sequence)),
                                "seed {seed}: {request:?} answered New after it was applied"
                            );
                            pending = Some(request);
                            false
                        }
                        Outcome::Misuse(_) => true,
                        _ => false,
                    }
                }
            };
            if refused {
                assert_eq!(
                    table, before,
                    "seed {seed}: a refused call changed the table"
                );
            }
            if let Ok(bytes) = bincode::serde::encode_to_vec(&table, bincode::config::standard()) {
                let (loaded, _): (SessionTable<Bytes>, usize) =
                    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                        .unwrap_or_else(|error| {
                            panic!("seed {seed}: a saved table does not load: {error}")
                        });
                assert_eq!(loaded, table);
            }
        }
    }
}

/// Confirms: a key-value store fed random commands at random slots (replays included) never
/// panics, a replayed slot changes nothing, and its snapshot always restores to an equal store.
#[test]
fn kv_store_survives_random_commands_and_replays() {
    for seed in 0..32 {
        let mut dice = Dice(1_000 + seed);
        let limits = KvLimits {
            keys_max: 1 + dice.below(3) as usize,
            key_bytes_max: 1 + dice.below(3) as usize,
            value_bytes_max: 1 + dice.below(6) as usize,
            store_bytes_max: 1 + dice.below(12) as usize,
            command_bytes_max: 64,
            sessions: SessionLimits {
                sessions_max: 1 + dice.below(3) as usize,
                responses_per_session_max: 1 + dice.below(3) as usize,
                response_bytes_per_session_max: 1 + dice.below(400) as usize,
            },
        };
        let mut machine = KvStateMachine::new(limits).unwrap();
        let mut slot = 0u64;
        let mut newest = 0u64;
        for _ in 0..300 {
            let at = match dice.below(20) {
                0 => slot.saturating_sub(dice.below(3)),
                1 if dice.below(10) == 0 => u64::MAX,
                _ => slot.saturating_add(1 + dice.below(2)),
            };
            let key = Bytes::from(vec![b'k'; dice.below(4) as usize]);
            let value = Bytes::from(vec![b'v'; dice.below(8) as usize]);
            let operation = match dice.below(5) {
                0 => Operation::Get { key },
                1 => Operation::Put { key, value },
                2 => Operation::Delete { key },
                3 => Operation::Append { key, value },
                _ => Operation::CompareAndSwap {
                    key,
                    expected: (dice.below(2) == 0).then(|| Bytes::from_static(b"v")),
                    new: (dice.below(2) == 0).then_some(value),
                },
            };
            let acknowledged = dice.below(3);
            let command = match dice.below(8) {
                0 => Command::OpenSession,
                1 => Command::CloseSession {
                    client: ClientId(newest.saturating_sub(dice.below(3))),
                },
                2 => Command::ExpireSessions {
                    inactive_before: slot.saturating_sub(dice.below(10)),
                },
                _ => Command::Request {
                    header: header(
                        ClientId((newest + 1).saturating_sub(dice.below(3))),
                        acknowledged + dice.below(4),
                        acknowledged,
                    ),
                    operation,
                },
            };
            let before = machine.snapshot();
            let response = if dice.below(4) == 0 {
                machine.apply(at, &command.encode())
            } else {
                machine.apply_command(at, command)
            };
            match response {
                Response::Error(KvError::SlotReplayed { .. }) => {
                    assert!(at <= slot, "seed {seed}: slot {at} after {slot} refused");
                    assert_eq!(
                        machine.snapshot(),
                        before,
                        "seed {seed}: a replay changed it"
                    );
                }
                response => {
                    assert!(at > slot, "seed {seed}: slot {at} after {slot} applied");
                    slot = at;
                    if let Response::SessionOpened { client } = response {
                        newest = client.0;
                    }
                }
            }
            let restored = KvStateMachine::restore(&machine.snapshot())
                .unwrap_or_else(|error| panic!("seed {seed}: {error}"));
            assert_eq!(restored, machine, "seed {seed}");
        }
    }
}
