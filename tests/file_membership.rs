//! Memberships in `FileStorage`: the membership list of write batches, membership entries,
//! and the membership of a saved snapshot, across reopen, compaction, damage and old formats,
//! with `MemStorage` as the model.

mod file_log;

use file_log::{
    entry, hard_state, model, only_segment, open, open_bytes, options, segment_files, written_log,
};
use proptest::prelude::*;
use std::fs;
use synod::storage::file::{
    MEMBERSHIPS_MAX, SEGMENT_HEADER_BYTES, SNAPSHOT_FILE_NAME, SNAPSHOT_HEADER_BYTES,
};
use synod::storage::FileStorageOptions;
use synod::{
    Ballot, Entry, HardState, MemStorage, Membership, MembershipAt, NodeId, Recovered, Snapshot,
    Storage, StorageError, Value, WriteBatch,
};
use tempfile::TempDir;

const CLUSTER: u64 = 0xC1;
const NODE: NodeId = NodeId(3);
/// Bytes of a record's header: length, checksum, kind.
const RECORD_HEADER_BYTES: usize = 9;
/// The record kind of a membership list.
const KIND_MEMBERSHIPS: u8 = 6;

fn small_segments() -> FileStorageOptions {
    FileStorageOptions {
        segment_bytes_max: 200,
        ..FileStorageOptions::default()
    }
}

fn membership(voters: &[u64], learners: &[u64]) -> Membership {
    Membership::new(
        voters.iter().copied().map(NodeId),
        learners.iter().copied().map(NodeId),
    )
}

fn at(slot: u64, voters: &[u64], learners: &[u64]) -> MembershipAt {
    MembershipAt {
        slot,
        membership: membership(voters, learners),
    }
}

fn membership_entry(slot: u64, round: u64, voters: &[u64], learners: &[u64]) -> Entry {
    Entry {
        slot,
        ballot: Ballot::new(round, NodeId(1)),
        value: Value::Membership(Box::new(membership(voters, learners))),
    }
}

/// A batch that stores `memberships` and nothing else.
fn memberships_only(memberships: Vec<MembershipAt>, must_sync: bool) -> WriteBatch {
    WriteBatch {
        memberships: Some(memberships),
        must_sync,
        ..WriteBatch::default()
    }
}

/// `batch` with its membership list set to `memberships`.
fn with_memberships(mut batch: WriteBatch, memberships: Vec<MembershipAt>) -> WriteBatch {
    batch.memberships = Some(memberships);
    batch
}

/// A log of six batches mixing entries, membership entries, hard states and membership lists
/// (one batch holds a list only). `must_sync[i]` says whether batch `i` asks for a sync.
fn sample_batches(must_sync: [bool; 6]) -> Vec<WriteBatch> {
    vec![
        with_memberships(
            WriteBatch::new(
                Some(hard_state(1, 0)),
                vec![entry(1, 1, 5), entry(2, 1, 0)],
                must_sync[0],
            ),
            vec![at(0, &[1, 2, 3], &[])],
        ),
        WriteBatch::new(
            None,
            vec![membership_entry(3, 1, &[1, 2, 3], &[4])],
            must_sync[1],
        ),
        memberships_only(
            vec![at(0, &[1, 2, 3], &[]), at(3, &[1, 2, 3], &[4])],
            must_sync[2],
        ),
        WriteBatch::new(
            Some(hard_state(2, 3)),
            vec![entry(4, 2, 3), membership_entry(5, 2, &[1, 2, 4], &[])],
            must_sync[3],
        ),
        with_memberships(
            WriteBatch::new(Some(hard_state(2, 5)), vec![], must_sync[4]),
            vec![at(3, &[1, 2, 3], &[4]), at(5, &[1, 2, 4], &[])],
        ),
        WriteBatch::new(None, vec![entry(6, 2, 9)], must_sync[5]),
    ]
}

/// The checksum of a record: CRC32C continued from `seed` over its length field, then its
/// kind and body (seed 0 for the segment header, [`segment_seed`] for the others).
fn record_checksum(seed: u32, record: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(seed, &record[0..4]), &record[8..])
}

/// The checksum seed of a segment's records after its header: CRC32C of the salt, the last
/// field of the header (format 3).
fn segment_seed(segment: &[u8]) -> u32 {
    let header = SEGMENT_HEADER_BYTES as usize;
    crc32c::crc32c(&segment[header - 8..header])
}

/// Splits the records of a segment's bytes (header included): (offset, kind, whole record).
fn records(bytes: &[u8]) -> Vec<(usize, u8, &[u8])> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let end = offset + RECORD_HEADER_BYTES + length;
        found.push((offset, bytes[offset + 8], &bytes[offset..end]));
        offset = end;
    }
    found
}

fn assert_invalid_input(result: Result<(), StorageError>, what: &str) {
    match result {
        Err(StorageError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{what}");
        }
        other => panic!("{what}: expected Io(InvalidInput), got {other:?}"),
    }
}

fn assert_corrupt<T: std::fmt::Debug>(
    result: Result<T, StorageError>,
    reason_contains: &str,
) -> (String, u64) {
    match result {
        Err(StorageError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert!(
                reason.contains(reason_contains),
                "reason {reason:?} lacks {reason_contains:?}"
            );
            (path, offset)
        }
        other => panic!("expected Corrupt ({reason_contains}), got {other:?}"),
    }
}

#[test]
fn memberships_round_trip_across_reopen() {
    let directory = TempDir::new().unwrap();
    let batches = sample_batches([true, false, true, false, true, false]);
    let no_cache = FileStorageOptions {
        cache_bytes_max: 0,
        ..small_segments()
    };
    let mut storage = open(directory.path(), no_cache).unwrap();
    for batch in &batches {
        storage.write(&mut batch.clone()).unwrap();
    }
    let expected = model(&batches);
    assert_eq!(
        expected.memberships,
        [at(3, &[1, 2, 3], &[4]), at(5, &[1, 2, 4], &[])]
    );
    assert_eq!(storage.recover().unwrap(), expected);
    assert_eq!(storage.memberships(), expected.memberships.as_slice());
    assert!(segment_files(directory.path()).len() > 1, "segments rotate");
    drop(storage);
    for options in [no_cache, options()] {
        let mut storage = open(directory.path(), options).unwrap();
        assert_eq!(storage.recover().unwrap(), expected);
        assert_eq!(storage.memberships(), expected.memberships.as_slice());
    }
}

#[test]
fn the_last_membership_list_written_wins() {
    let directory = TempDir::new().unwrap();
    let lists = [
        vec![at(0, &[1], &[])],
        vec![at(0, &[1], &[]), at(4, &[1, 2], &[])],
        vec![at(4, &[1, 2], &[]), at(9, &[1, 2, 3], &[7])],
        // An empty list replaces the one before too.
        vec![],
        vec![at(12, &[2, 3], &[1])],
    ];
    let mut written = Vec::new();
    for (index, list) in lists.iter().enumerate() {
        let mut storage = open(directory.path(), options()).unwrap();
        // Batches without a list in between change nothing.
        let plain = WriteBatch::new(None, vec![entry(index as u64 + 1, 1, 4)], false);
        storage.write(&mut plain.clone()).unwrap();
        written.push(plain);
        let batch = with_memberships(
            WriteBatch::new(Some(hard_state(index as u64, 0)), vec![], index % 2 == 0),
            list.clone(),
        );
        storage.write(&mut batch.clone()).unwrap();
        written.push(batch);
        let expected = model(&written);
        assert_eq!(&expected.memberships, list);
        assert_eq!(storage.recover().unwrap(), expected, "list {index}");
        drop(storage);
        let mut storage = open(directory.path(), options()).unwrap();
        assert_eq!(
            storage.recover().unwrap(),
            expected,
            "list {index} after reopen"
        );
    }
}

#[test]
fn a_batch_with_only_memberships_is_written() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    let path = only_segment(directory.path());
    let batch = memberships_only(vec![at(0, &[1, 2, 3], &[])], true);
    assert!(!batch.is_empty());
    let length = fs::metadata(&path).unwrap().len();
    let syncs = storage.sync_count();
    storage.write(&mut batch.clone()).unwrap();
    assert!(
        fs::metadata(&path).unwrap().len() > length,
        "a record was appended"
    );
    assert_eq!(storage.sync_count() - syncs, 1, "it asked for a sync");
    assert_eq!(storage.write_count(), 1);
    // The batch is left as it was.
    assert_eq!(
        batch.memberships.as_deref(),
        Some(&[at(0, &[1, 2, 3], &[])][..])
    );
    drop(storage);

    let mut storage = open(directory.path(), options()).unwrap();
    assert_eq!(
        storage.recover().unwrap(),
        Recovered {
            hard_state: HardState::default(),
            entries: vec![],
            memberships: vec![at(0, &[1, 2, 3], &[])],
        }
    );
    // An unsynced one is written too (and survives a clean reopen).
    storage
        .write(&mut memberships_only(vec![at(2, &[1, 2], &[])], false))
        .unwrap();
    drop(storage);
    let mut storage = open(directory.path(), options()).unwrap();
    assert_eq!(
        storage.recover().unwrap().memberships,
        [at(2, &[1, 2], &[])]
    );
}

#[test]
fn memberships_survive_compaction_and_segment_deletion() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), small_segments()).unwrap();
    let mut memory = MemStorage::new();
    // The list and the hard state are written once, first: they live in the oldest segment.
    let list = vec![at(0, &[1, 2, 3], &[]), at(2, &[1, 2, 3, 4], &[5])];
    let first = with_memberships(
        WriteBatch::new(
            Some(hard_state(7, 3)),
            vec![entry(1, 7, 20), membership_entry(2, 7, &[1, 2, 3, 4], &[5])],
            true,
        ),
        list.clone(),
    );
    let mut batches = vec![first];
    for slot in 3..=40 {
        batches.push(WriteBatch::new(None, vec![entry(slot, 7, 20)], false));
    }
    for batch in &batches {
        storage.write(&mut batch.clone()).unwrap();
        memory.write(&mut batch.clone()).unwrap();
    }
    let oldest = segment_files(directory.path()).remove(0);
    let segments_before = storage.segment_paths().len();
    assert!(segments_before > 5, "{segments_before} segments");

    let deleted = storage.compact(30).unwrap();
    memory.compact(30);
    assert!(
        deleted > 0 && deleted < segments_before,
        "deleted {deleted}"
    );
    assert!(
        !oldest.exists(),
        "the segment that held the list is deleted"
    );
    assert_eq!(storage.segment_paths(), segment_files(directory.path()));
    assert_eq!(storage.memberships(), list.as_slice());
    let expected = memory.recover().unwrap();
    assert_eq!(expected.memberships, list);
    assert_eq!(storage.recover().unwrap(), expected);
    drop(storage);

    let mut storage = open(directory.path(), small_segments()).unwrap();
    assert_eq!(storage.recover().unwrap(), expected);
    // More writes and compacting everything: all but the current segment go, the list stays.
    for slot in 41..=60 {
        let batch = WriteBatch::new(None, vec![entry(slot, 8, 20)], false);
        storage.write(&mut batch.clone()).unwrap();
        memory.write(&mut batch.clone()).unwrap();
    }
    // (Not `u64::MAX`: `MemStorage::compact` overflows there.)
    storage.compact(1000).unwrap();
    memory.compact(1000);
    assert_eq!(segment_files(directory.path()).len(), 1);
    drop(storage);
    let mut storage = open(directory.path(), small_segments()).unwrap();
    let recovered = storage.recover().unwrap();
    assert_eq!(recovered, memory.recover().unwrap());
    assert_eq!(recovered.memberships, list);
    assert_eq!(recovered.hard_state, hard_state(7, 3));
    assert!(recovered.entries.is_empty());
}

#[test]
fn compaction_without_a_membership_list_writes_none() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    storage
        .write(&mut WriteBatch::new(
            Some(hard_state(1, 1)),
            vec![entry(1, 1, 3), entry(2, 1, 3)],
            true,
        ))
        .unwrap();
    storage.compact(1).unwrap();
    drop(storage);
    let bytes = fs::read(only_segment(directory.path())).unwrap();
    assert!(
        records(&bytes)
            .iter()
            .all(|&(_, kind, _)| kind != KIND_MEMBERSHIPS),
        "no memberships record"
    );
    let mut storage = open(directory.path(), options()).unwrap();
    assert!(storage.recover().unwrap().memberships.is_empty());
}

#[test]
fn membership_entries_round_trip_through_write_recover_and_entries() {
    let directory = TempDir::new().unwrap();
    let no_cache = FileStorageOptions {
        cache_bytes_max: 0,
        ..options()
    };
    let largest: Vec<u64> = (1..=synod::config::MEMBERS_MAX as u64).collect();
    let entries = vec![
        entry(1, 1, 4),
        membership_entry(2, 1, &[1, 2, 3], &[]),
        membership_entry(3, 1, &largest[..33], &largest[33..]),
        entry(4, 1, 0),
        membership_entry(5, 1, &[9], &[1, 2]),
    ];
    let mut storage = open(directory.path(), no_cache).unwrap();
    storage
        .write(&mut WriteBatch::new(None, entries.clone(), true))
        .unwrap();
    // A later entry for a slot replaces a membership entry, and the other way round.
    let overwrites = vec![entry(2, 2, 7), membership_entry(4, 2, &[1, 2], &[3])];
    storage
        .write(&mut WriteBatch::new(None, overwrites.clone(), false))
        .unwrap();
    let batches = [
        WriteBatch::new(None, entries, true),
        WriteBatch::new(None, overwrites, false),
    ];
    let expected = model(&batches);
    for options in [None, Some(no_cache), Some(options())] {
        if let Some(options) = options {
            drop(storage);
            storage = open(directory.path(), options).unwrap();
        }
        assert_eq!(storage.recover().unwrap(), expected);
        assert_eq!(storage.entries(1, 10).unwrap(), expected.entries);
        assert_eq!(
            storage.entries(3, 3).unwrap(),
            vec![expected.entries[2].clone()]
        );
    }
    // Entries hold memberships; the list stays as written (none here).
    assert!(expected.memberships.is_empty());
}

#[test]
fn memberships_are_not_limited_by_command_bytes_max() {
    let directory = TempDir::new().unwrap();
    let limited = FileStorageOptions {
        command_bytes_max: 8,
        ..options()
    };
    let largest: Vec<u64> = (1..=synod::config::MEMBERS_MAX as u64).collect();
    let list: Vec<MembershipAt> = (0..200)
        .map(|slot| at(slot, &largest[..7], &largest[7..]))
        .collect();
    let batch = with_memberships(
        WriteBatch::new(
            None,
            vec![
                membership_entry(1, 1, &largest[..1], &largest[1..]),
                entry(2, 1, 8),
            ],
            true,
        ),
        list.clone(),
    );
    let mut storage = open(directory.path(), limited).unwrap();
    storage.write(&mut batch.clone()).unwrap();
    drop(storage);
    let mut storage = open(directory.path(), limited).unwrap();
    assert_eq!(storage.recover().unwrap(), model(&[batch]));
    assert_eq!(storage.memberships(), list.as_slice());
}

#[test]
fn invalid_memberships_and_overlong_lists_are_refused_without_writing_anything() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    let path = only_segment(directory.path());
    let length = fs::metadata(&path).unwrap().len();
    let no_voter = Membership {
        voters: vec![],
        learners: vec![NodeId(1)],
    };
    let unsorted = Membership {
        voters: vec![NodeId(2), NodeId(1)],
        learners: vec![],
    };
    let too_many = membership(&(1..=65).collect::<Vec<_>>(), &[]);
    for (what, invalid) in [
        ("no voter", no_voter),
        ("unsorted", unsorted),
        ("too many", too_many),
    ] {
        let entry_batch = WriteBatch::new(
            Some(hard_state(1, 0)),
            vec![
                entry(1, 1, 3),
                Entry {
                    slot: 2,
                    ballot: Ballot::new(1, NodeId(1)),
                    value: Value::Membership(Box::new(invalid.clone())),
                },
            ],
            true,
        );
        assert_invalid_input(storage.write(&mut entry_batch.clone()), what);
        let list_batch = memberships_only(
            vec![
                at(0, &[1], &[]),
                MembershipAt {
                    slot: 3,
                    membership: invalid.clone(),
                },
            ],
            true,
        );
        assert_invalid_input(storage.write(&mut list_batch.clone()), what);
        let snapshot = Snapshot {
            slot: 5,
            data: bytes::Bytes::from_static(b"state"),
            membership: Some(MembershipAt {
                slot: 4,
                membership: invalid,
            }),
        };
        assert_invalid_input(storage.save_snapshot(&snapshot), what);
    }
    let overlong = memberships_only(
        (0..=MEMBERSHIPS_MAX as u64)
            .map(|slot| at(slot, &[1], &[]))
            .collect(),
        true,
    );
    assert_invalid_input(storage.write(&mut overlong.clone()), "overlong list");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        length,
        "nothing written"
    );
    assert!(!storage.snapshot_path().exists());
    assert_eq!(storage.recover().unwrap(), Recovered::default());
    // The storage is still usable.
    let good = sample_batches([true; 6]);
    storage.write(&mut good[0].clone()).unwrap();
    drop(storage);
    let mut storage = open(directory.path(), options()).unwrap();
    assert_eq!(storage.recover().unwrap(), model(&good[..1]));
}

/// Flips every byte of a log holding membership records in turn (see
/// `file_log::check_every_byte_flip`).
fn check_every_byte_flip(must_sync: [bool; 6]) -> (usize, usize) {
    file_log::check_every_byte_flip(&sample_batches(must_sync), must_sync, false)
}

#[test]
fn every_byte_flip_in_membership_records_is_refused_or_a_torn_tail() {
    let (refused, truncated) = check_every_byte_flip([true; 6]);
    assert!(refused > 0 && truncated > 0);
    let (refused, truncated) = check_every_byte_flip([false, true, false, false, true, false]);
    assert!(refused > 0 && truncated > 0);
    let (refused, _) = check_every_byte_flip([false; 6]);
    assert_eq!(refused as u64, SEGMENT_HEADER_BYTES);
}

/// Replaces the body of the first memberships record in `bytes` by `body` (same length) and
/// gives it a correct checksum: damage that only the decoder can see.
fn forge_memberships_record(bytes: &mut [u8], body: &[u8]) -> usize {
    let (offset, _, record) = *records(bytes)
        .iter()
        .find(|&&(_, kind, _)| kind == KIND_MEMBERSHIPS)
        .expect("a memberships record");
    let end = offset + record.len();
    assert_eq!(record.len(), RECORD_HEADER_BYTES + body.len());
    bytes[offset + RECORD_HEADER_BYTES..end].copy_from_slice(body);
    let checksum = record_checksum(segment_seed(bytes), &bytes[offset..end]);
    bytes[offset + 4..offset + 8].copy_from_slice(&checksum.to_le_bytes());
    offset
}

#[test]
fn an_ill_formed_memberships_record_with_a_good_checksum_is_a_torn_tail_or_corruption() {
    let good = vec![at(1, &[1, 2], &[])];
    let earlier = WriteBatch::new(Some(hard_state(1, 0)), vec![entry(1, 1, 4)], true);
    // Each as long as the good list's body (count 1, slot, voter count 2, two ids, learner
    // count 0: 36 bytes). No voter (and zeros left over):
    let mut no_voter = Vec::new();
    no_voter.extend_from_slice(&1u32.to_le_bytes());
    no_voter.extend_from_slice(&1u64.to_le_bytes());
    no_voter.extend_from_slice(&[0; 24]);
    let mut miscounted = Vec::new();
    miscounted.extend_from_slice(&2u32.to_le_bytes()); // two items, room for one
    miscounted.extend_from_slice(&1u64.to_le_bytes());
    miscounted.extend_from_slice(&2u32.to_le_bytes());
    miscounted.extend_from_slice(&1u64.to_le_bytes());
    miscounted.extend_from_slice(&2u64.to_le_bytes());
    miscounted.extend_from_slice(&0u32.to_le_bytes());
    let mut duplicate = miscounted.clone();
    duplicate[..4].copy_from_slice(&1u32.to_le_bytes());
    duplicate[16..24].copy_from_slice(&2u64.to_le_bytes()); // voters [2, 2]
    for (what, body) in [
        ("no voter", no_voter),
        ("miscounted", miscounted),
        ("duplicate voter", duplicate),
    ] {
        // The damaged batch is the last: a torn tail, truncated away.
        let batches = [earlier.clone(), memberships_only(good.clone(), false)];
        let (mut bytes, ends) = written_log(&batches);
        let offset = forge_memberships_record(&mut bytes, &body) as u64;
        let (_directory, opened) = open_bytes(&bytes);
        let mut storage = opened.unwrap_or_else(|error| panic!("{what}: {error}"));
        assert_eq!(storage.recover().unwrap(), model(&batches[..1]), "{what}");
        assert_eq!(ends[0], offset, "the record opens the second batch");

        // A synced batch follows: corruption, at the record.
        let batches = [
            earlier.clone(),
            memberships_only(good.clone(), false),
            WriteBatch::new(None, vec![entry(2, 1, 1)], true),
        ];
        let (mut bytes, _) = written_log(&batches);
        let forged_at = forge_memberships_record(&mut bytes, &body) as u64;
        let (_directory, opened) = open_bytes(&bytes);
        let (_, offset) = assert_corrupt(opened, "ill-formed Memberships record");
        assert_eq!(offset, forged_at, "{what}");
    }
}

/// Saves `snapshot` in a fresh directory; returns it and the snapshot file's bytes.
fn saved(snapshot: &Snapshot) -> (TempDir, Vec<u8>) {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    storage.save_snapshot(snapshot).unwrap();
    drop(storage);
    let bytes = fs::read(directory.path().join(SNAPSHOT_FILE_NAME)).unwrap();
    (directory, bytes)
}

fn snapshot_with(slot: u64, membership: Option<MembershipAt>) -> Snapshot {
    Snapshot {
        slot,
        data: (0..40).map(|index| (slot + index) as u8).collect(),
        membership,
    }
}

#[test]
fn snapshot_membership_round_trips_and_recover_adds_it_when_newer() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    let mut memory = MemStorage::new();
    let list = vec![at(0, &[1, 2, 3], &[]), at(4, &[1, 2], &[])];
    let batch = with_memberships(
        WriteBatch::new(Some(hard_state(2, 4)), vec![entry(1, 1, 3)], true),
        list.clone(),
    );
    storage.write(&mut batch.clone()).unwrap();
    memory.write(&mut batch.clone()).unwrap();

    // Newer than the list: recover appends it.
    let newer = snapshot_with(20, Some(at(15, &[1, 2, 5], &[6])));
    storage.save_snapshot(&newer).unwrap();
    memory.save_snapshot(&newer).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(newer.clone()));
    let expected = memory.recover().unwrap();
    assert_eq!(
        expected.memberships,
        [list[0].clone(), list[1].clone(), at(15, &[1, 2, 5], &[6])]
    );
    assert_eq!(storage.recover().unwrap(), expected);
    // The written list is unchanged.
    assert_eq!(storage.memberships(), list.as_slice());
    drop(storage);
    let mut storage = open(directory.path(), options()).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(newer.clone()));
    assert_eq!(storage.recover().unwrap(), expected);

    // A later list that reaches past it: the snapshot's is no longer added.
    let later = vec![at(15, &[1, 2, 5], &[6]), at(25, &[1, 5], &[])];
    let batch = memberships_only(later.clone(), true);
    storage.write(&mut batch.clone()).unwrap();
    memory.write(&mut batch.clone()).unwrap();
    assert_eq!(storage.recover().unwrap().memberships, later);
    assert_eq!(storage.recover().unwrap(), memory.recover().unwrap());

    // A snapshot without a membership adds nothing and replaces the one with.
    let plain = snapshot_with(30, None);
    storage.save_snapshot(&plain).unwrap();
    memory.save_snapshot(&plain).unwrap();
    storage.write(&mut memberships_only(vec![], true)).unwrap();
    memory.write(&mut memberships_only(vec![], true)).unwrap();
    drop(storage);
    let mut storage = open(directory.path(), options()).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(plain));
    assert_eq!(storage.recover().unwrap(), memory.recover().unwrap());
    assert!(storage.recover().unwrap().memberships.is_empty());

    // With no list written at all, the snapshot's membership is the one recovered.
    let (fresh, _) = saved(&newer);
    let mut storage = open(fresh.path(), options()).unwrap();
    assert_eq!(
        storage.recover().unwrap().memberships,
        [at(15, &[1, 2, 5], &[6])]
    );
}

#[test]
fn every_byte_flip_of_a_snapshot_with_a_membership_is_refused() {
    let snapshot = snapshot_with(9, Some(at(7, &[1, 2, 3], &[4, 5])));
    let (directory, bytes) = saved(&snapshot);
    let path = directory.path().join(SNAPSHOT_FILE_NAME);
    assert!(bytes.len() as u64 > SNAPSHOT_HEADER_BYTES + 40);
    for offset in 0..bytes.len() {
        for flip in [0x01, 0x80, 0xFF] {
            let mut damaged = bytes.clone();
            damaged[offset] ^= flip;
            fs::write(&path, &damaged).unwrap();
            match open(directory.path(), options()) {
                Err(StorageError::Corrupt { path, .. }) => {
                    assert!(path.ends_with(SNAPSHOT_FILE_NAME), "{path}");
                }
                other => panic!("byte {offset} ^ {flip:#x}: expected Corrupt, got {other:?}"),
            }
        }
    }
    for length in 0..bytes.len() {
        fs::write(&path, &bytes[..length]).unwrap();
        assert!(
            matches!(
                open(directory.path(), options()),
                Err(StorageError::Corrupt { .. })
            ),
            "length {length}"
        );
    }
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        open(directory.path(), options())
            .unwrap()
            .load_snapshot()
            .unwrap(),
        Some(snapshot)
    );
}

/// Offsets of the snapshot header fields (see the module documentation of
/// `synod::storage::file`).
const SNAPSHOT_VERSION_OFFSET: usize = 8;
const SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET: usize = 8 + 2 + 8 + 8 + 8 + 8;
const SNAPSHOT_CHECKSUM_OFFSET: usize = SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET + 4;

/// Recomputes the checksum of a snapshot file's bytes.
fn reseal_snapshot(bytes: &mut [u8]) {
    let checksum = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[..SNAPSHOT_CHECKSUM_OFFSET]),
        &bytes[SNAPSHOT_HEADER_BYTES as usize..],
    );
    bytes[SNAPSHOT_CHECKSUM_OFFSET..SNAPSHOT_CHECKSUM_OFFSET + 4]
        .copy_from_slice(&checksum.to_le_bytes());
}

#[test]
fn a_snapshot_membership_that_is_ill_formed_or_too_long_is_refused() {
    let snapshot = snapshot_with(9, Some(at(7, &[1, 2], &[])));
    let (directory, bytes) = saved(&snapshot);
    let path = directory.path().join(SNAPSHOT_FILE_NAME);
    let membership_start = SNAPSHOT_HEADER_BYTES as usize;
    // A checksum-correct block whose voters are out of order: the decoder refuses it.
    let mut unsorted = bytes.clone();
    let voters = membership_start + 8 + 4;
    unsorted[voters..voters + 8].copy_from_slice(&5u64.to_le_bytes());
    reseal_snapshot(&mut unsorted);
    fs::write(&path, &unsorted).unwrap();
    let (_, offset) = assert_corrupt(open(directory.path(), options()), "membership");
    assert_eq!(offset, SNAPSHOT_HEADER_BYTES);
    // A huge membership length is refused before anything is read or allocated.
    let mut huge = bytes.clone();
    huge[SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET..SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET + 4]
        .copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_snapshot(&mut huge);
    fs::write(&path, &huge).unwrap();
    let (_, offset) = assert_corrupt(open(directory.path(), options()), "membership length");
    assert_eq!(offset, SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET as u64);
    // A block length that moves bytes between the block and the data: refused, lengths agree
    // with the file but the block does not decode.
    let mut shifted = bytes.clone();
    let length = u32::from_le_bytes(
        bytes[SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET..SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET + 4]
            .try_into()
            .unwrap(),
    );
    shifted[SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET..SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET + 4]
        .copy_from_slice(&(length + 1).to_le_bytes());
    let data_length_offset = SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET - 8;
    shifted[data_length_offset..data_length_offset + 8].copy_from_slice(&39u64.to_le_bytes());
    reseal_snapshot(&mut shifted);
    fs::write(&path, &shifted).unwrap();
    assert_corrupt(open(directory.path(), options()), "membership");
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        open(directory.path(), options())
            .unwrap()
            .load_snapshot()
            .unwrap(),
        Some(snapshot)
    );
}

#[test]
fn a_version_1_snapshot_is_refused_with_a_clear_error() {
    // The version-1 layout: no membership length, and a version field of 1.
    let data = b"state through 9";
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"SYNODSNP");
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&CLUSTER.to_le_bytes());
    bytes.extend_from_slice(&NODE.0.to_le_bytes());
    bytes.extend_from_slice(&9u64.to_le_bytes());
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&bytes), data);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes.extend_from_slice(data);
    for length in [bytes.len(), SNAPSHOT_VERSION_OFFSET + 2] {
        let directory = TempDir::new().unwrap();
        fs::write(directory.path().join(SNAPSHOT_FILE_NAME), &bytes[..length]).unwrap();
        let (path, offset) = assert_corrupt(
            open(directory.path(), options()),
            "unsupported snapshot format version 1",
        );
        assert!(path.ends_with(SNAPSHOT_FILE_NAME), "{path}");
        assert_eq!(offset, SNAPSHOT_VERSION_OFFSET as u64);
    }
}

#[test]
fn segments_of_earlier_versions_are_refused_with_a_clear_error() {
    let batches = [WriteBatch::new(
        Some(hard_state(1, 0)),
        vec![entry(1, 1, 3)],
        true,
    )];
    let (written, _) = written_log(&batches);
    // The version field of the header body, after the record header and the magic.
    let version = RECORD_HEADER_BYTES + 8;
    assert_eq!(
        u16::from_le_bytes([written[version], written[version + 1]]),
        3
    );
    for old in [1u16, 2] {
        let mut bytes = written.clone();
        bytes[version..version + 2].copy_from_slice(&old.to_le_bytes());
        let header = SEGMENT_HEADER_BYTES as usize;
        let checksum = record_checksum(0, &bytes[..header]);
        bytes[4..8].copy_from_slice(&checksum.to_le_bytes());
        let (_directory, opened) = open_bytes(&bytes);
        let (path, offset) =
            assert_corrupt(opened, &format!("unsupported segment format version {old}"));
        assert!(path.ends_with(".seg"), "{path}");
        assert_eq!(offset, 0);
    }
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    Write(WriteBatch),
    Compact(u64),
    SaveSnapshot(Snapshot),
    Reopen,
}

fn arbitrary_membership() -> impl Strategy<Value = Membership> {
    proptest::collection::btree_set(1..10u64, 1..6).prop_flat_map(|ids| {
        let ids: Vec<u64> = ids.into_iter().collect();
        let count = ids.len();
        (Just(ids), 1..=count).prop_map(|(ids, voters)| membership(&ids[..voters], &ids[voters..]))
    })
}

fn arbitrary_list() -> impl Strategy<Value = Vec<MembershipAt>> {
    proptest::collection::vec((0..40u64, arbitrary_membership()), 0..4).prop_map(|items| {
        let mut slot = 0;
        items
            .into_iter()
            .map(|(step, membership)| {
                slot += step;
                MembershipAt { slot, membership }
            })
            .collect()
    })
}

fn arbitrary_entry() -> impl Strategy<Value = Entry> {
    (
        1..30u64,
        1..10u64,
        0..20usize,
        proptest::option::of(arbitrary_membership()),
    )
        .prop_map(|(slot, round, data_bytes, membership)| match membership {
            Some(membership) => Entry {
                slot,
                ballot: Ballot::new(round, NodeId(1)),
                value: Value::Membership(Box::new(membership)),
            },
            None => entry(slot, round, data_bytes),
        })
}

fn arbitrary_step() -> impl Strategy<Value = Step> {
    let batch = (
        proptest::option::of((1..10u64, 0..20u64)),
        proptest::collection::vec(arbitrary_entry(), 0..4),
        proptest::option::of(arbitrary_list()),
        any::<bool>(),
    )
        .prop_map(|(hard, entries, memberships, must_sync)| {
            let mut batch = WriteBatch::new(
                hard.map(|(round, chosen)| hard_state(round, chosen)),
                entries,
                must_sync,
            );
            batch.memberships = memberships;
            batch
        });
    let snapshot = (
        0..40u64,
        proptest::option::of((0..40u64, arbitrary_membership())),
    )
        .prop_map(|(slot, membership)| Snapshot {
            slot,
            data: bytes::Bytes::from(vec![slot as u8; 3]),
            membership: membership.map(|(slot, membership)| MembershipAt { slot, membership }),
        });
    prop_oneof![
        6 => batch.prop_map(Step::Write),
        1 => (0..30u64).prop_map(Step::Compact),
        1 => snapshot.prop_map(Step::SaveSnapshot),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn file_storage_agrees_with_mem_storage_on_memberships(
        steps in proptest::collection::vec(arbitrary_step(), 1..30),
    ) {
        let directory = TempDir::new().unwrap();
        let options = FileStorageOptions { segment_bytes_max: 300, ..FileStorageOptions::default() };
        let mut storage = open(directory.path(), options).unwrap();
        let mut memory = MemStorage::new();
        for step in steps {
            match step {
                Step::Write(batch) => {
                    storage.write(&mut batch.clone()).unwrap();
                    memory.write(&mut batch.clone()).unwrap();
                }
                Step::Compact(through) => {
                    Storage::compact(&mut storage, through).unwrap();
                    Storage::compact(&mut memory, through).unwrap();
                }
                Step::SaveSnapshot(snapshot) => {
                    storage.save_snapshot(&snapshot).unwrap();
                    memory.save_snapshot(&snapshot).unwrap();
                }
                Step::Reopen => {
                    drop(storage);
                    storage = open(directory.path(), options).unwrap();
                }
            }
            prop_assert_eq!(storage.recover().unwrap(), memory.recover().unwrap());
            prop_assert_eq!(storage.load_snapshot().unwrap(), memory.load_snapshot().unwrap());
        }
        drop(storage);
        let mut storage = open(directory.path(), options).unwrap();
        prop_assert_eq!(storage.recover().unwrap(), memory.recover().unwrap());
    }
}
