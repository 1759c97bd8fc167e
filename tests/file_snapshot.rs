//! Snapshot files of `FileStorage` (and the `Storage` snapshot methods of `MemStorage`):
//! atomic replacement, crash leftovers, and refusal of every damaged or foreign file.

use bytes::Bytes;
use std::fs;
use std::path::Path;
use synod::storage::file::{SNAPSHOT_FILE_NAME, SNAPSHOT_HEADER_BYTES, SNAPSHOT_TMP_FILE_NAME};
use synod::storage::{FileStorage, FileStorageOptions};
use synod::{
    Ballot, Entry, HardState, MemStorage, NodeId, Snapshot, Storage, StorageError, Value,
    WriteBatch,
};
use tempfile::TempDir;

const CLUSTER: u64 = 0xC1;
const NODE: NodeId = NodeId(3);

fn open(directory: &Path) -> Result<FileStorage, StorageError> {
    FileStorage::open(directory, CLUSTER, NODE, FileStorageOptions::default())
}

fn snapshot(slot: u64, data_bytes: usize) -> Snapshot {
    Snapshot {
        slot,
        data: (0..data_bytes)
            .map(|index| (slot as usize * 7 + index) as u8)
            .collect(),
        membership: None,
    }
}

fn noop(slot: u64) -> Entry {
    Entry {
        slot,
        ballot: Ballot::new(1, NodeId(1)),
        value: Value::Noop,
    }
}

/// A directory whose storage holds one snapshot, and the snapshot file's bytes.
fn saved(snapshot_to_save: &Snapshot) -> (TempDir, Vec<u8>) {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path()).unwrap();
    storage.save_snapshot(snapshot_to_save).unwrap();
    drop(storage);
    let bytes = fs::read(directory.path().join(SNAPSHOT_FILE_NAME)).unwrap();
    (directory, bytes)
}

/// Asserts `result` is `Corrupt` naming the snapshot file.
fn assert_corrupt_snapshot<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::Corrupt { path, .. }) => {
            assert!(
                path.ends_with(SNAPSHOT_FILE_NAME),
                "{what}: error names {path}"
            );
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

/// The trait's contract, for any storage.
fn check_round_trip_and_staleness(storage: &mut impl Storage) {
    assert_eq!(storage.load_snapshot().unwrap(), None);
    let first = snapshot(10, 100);
    storage.save_snapshot(&first).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(first.clone()));
    // Older and equal snapshots are ignored.
    storage.save_snapshot(&snapshot(5, 3)).unwrap();
    storage.save_snapshot(&snapshot(10, 4)).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(first));
    let second = snapshot(11, 0);
    storage.save_snapshot(&second).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(second));
}

#[test]
fn mem_storage_round_trip() {
    check_round_trip_and_staleness(&mut MemStorage::new());
}

#[test]
fn file_storage_round_trip_survives_reopen() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path()).unwrap();
    assert_eq!(storage.snapshot_slot(), None);
    check_round_trip_and_staleness(&mut storage);
    assert_eq!(storage.snapshot_slot(), Some(11));
    let big = snapshot(12, 300_000);
    storage.save_snapshot(&big).unwrap();
    drop(storage);

    let mut storage = open(directory.path()).unwrap();
    assert_eq!(storage.snapshot_slot(), Some(12));
    assert_eq!(storage.load_snapshot().unwrap(), Some(big.clone()));
    // The slot in force came back from the file: an older snapshot is still ignored.
    storage.save_snapshot(&snapshot(7, 9)).unwrap();
    drop(storage);
    assert_eq!(
        open(directory.path()).unwrap().load_snapshot().unwrap(),
        Some(big)
    );
    assert!(!directory.path().join(SNAPSHOT_TMP_FILE_NAME).exists());
}

#[test]
fn an_older_snapshot_does_not_replace_a_newer_one_and_writes_nothing() {
    let (directory, bytes) = saved(&snapshot(20, 50));
    let mut storage = open(directory.path()).unwrap();
    let syncs = storage.sync_count();
    for slot in [0, 19, 20] {
        storage.save_snapshot(&snapshot(slot, 10)).unwrap();
    }
    assert_eq!(storage.sync_count(), syncs);
    assert_eq!(
        fs::read(directory.path().join(SNAPSHOT_FILE_NAME)).unwrap(),
        bytes
    );
    assert_eq!(storage.load_snapshot().unwrap(), Some(snapshot(20, 50)));
}

#[test]
fn saving_a_snapshot_syncs() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path()).unwrap();
    for slot in 1..=3 {
        let before = storage.sync_count();
        storage.save_snapshot(&snapshot(slot, 10)).unwrap();
        assert_eq!(storage.sync_count() - before, 1, "slot {slot}");
    }
}

#[test]
fn a_crash_between_write_and_rename_leaves_the_previous_snapshot_in_force() {
    // A complete, valid newer snapshot file that was never renamed, and plain garbage.
    let (_newer_directory, newer_bytes) = saved(&snapshot(30, 40));
    let leftovers = [newer_bytes, vec![0xAB; 77], Vec::new()];
    for (index, leftover) in leftovers.iter().enumerate() {
        // With a previous snapshot.
        let (directory, _) = saved(&snapshot(25, 40));
        let tmp = directory.path().join(SNAPSHOT_TMP_FILE_NAME);
        fs::write(&tmp, leftover).unwrap();
        let mut storage = open(directory.path()).unwrap();
        assert!(!tmp.exists(), "leftover {index} is deleted on open");
        assert_eq!(storage.snapshot_slot(), Some(25));
        assert_eq!(
            storage.load_snapshot().unwrap(),
            Some(snapshot(25, 40)),
            "leftover {index}"
        );
        // A later save works and replaces it.
        storage.save_snapshot(&snapshot(26, 1)).unwrap();
        assert_eq!(storage.load_snapshot().unwrap(), Some(snapshot(26, 1)));

        // Without one.
        let empty = TempDir::new().unwrap();
        let tmp = empty.path().join(SNAPSHOT_TMP_FILE_NAME);
        fs::write(&tmp, leftover).unwrap();
        let mut storage = open(empty.path()).unwrap();
        assert!(!tmp.exists());
        assert_eq!(storage.load_snapshot().unwrap(), None, "leftover {index}");
    }
}

#[test]
fn every_single_byte_corruption_is_refused_on_open_and_on_load() {
    let (directory, bytes) = saved(&snapshot(9, 40));
    let path = directory.path().join(SNAPSHOT_FILE_NAME);
    assert_eq!(bytes.len() as u64, SNAPSHOT_HEADER_BYTES + 40);
    for offset in 0..bytes.len() {
        for flip in [0x01, 0x80, 0xFF] {
            let mut damaged = bytes.clone();
            damaged[offset] ^= flip;
            fs::write(&path, &damaged).unwrap();
            assert_corrupt_snapshot(
                open(directory.path()),
                &format!("open, byte {offset} ^ {flip:#x}"),
            );
            // Damage after open is caught by the load.
            fs::write(&path, &bytes).unwrap();
            let mut storage = open(directory.path()).unwrap();
            fs::write(&path, &damaged).unwrap();
            assert_corrupt_snapshot(
                storage.load_snapshot(),
                &format!("load, byte {offset} ^ {flip:#x}"),
            );
        }
    }
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        open(directory.path()).unwrap().load_snapshot().unwrap(),
        Some(snapshot(9, 40))
    );
}

#[test]
fn a_truncated_snapshot_is_refused_at_every_length() {
    let (directory, bytes) = saved(&snapshot(9, 40));
    let path = directory.path().join(SNAPSHOT_FILE_NAME);
    for length in 0..bytes.len() {
        fs::write(&path, &bytes[..length]).unwrap();
        assert_corrupt_snapshot(open(directory.path()), &format!("length {length}"));
    }
    // Trailing bytes are refused too.
    let mut longer = bytes.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert_corrupt_snapshot(open(directory.path()), "one byte too many");
}

#[test]
fn a_length_above_the_limit_is_refused_without_reading() {
    let (directory, _) = saved(&snapshot(9, 1000));
    let limited = FileStorageOptions {
        snapshot_bytes_max: 999,
        ..FileStorageOptions::default()
    };
    match FileStorage::open(directory.path(), CLUSTER, NODE, limited) {
        Err(StorageError::Corrupt { offset, reason, .. }) => {
            assert!(offset < SNAPSHOT_HEADER_BYTES, "{offset}");
            assert!(reason.contains("snapshot_bytes_max"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn an_oversize_snapshot_is_refused_without_writing_anything() {
    let (directory, bytes) = saved(&snapshot(9, 10));
    let limited = FileStorageOptions {
        snapshot_bytes_max: 100,
        ..FileStorageOptions::default()
    };
    let mut storage = FileStorage::open(directory.path(), CLUSTER, NODE, limited).unwrap();
    match storage.save_snapshot(&snapshot(10, 101)) {
        Err(StorageError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(storage.snapshot_slot(), Some(9));
    assert_eq!(
        fs::read(directory.path().join(SNAPSHOT_FILE_NAME)).unwrap(),
        bytes
    );
    assert!(!directory.path().join(SNAPSHOT_TMP_FILE_NAME).exists());
    storage.save_snapshot(&snapshot(10, 100)).unwrap();
}

#[test]
fn a_snapshot_of_another_cluster_or_node_is_refused() {
    let (directory, bytes) = saved(&snapshot(9, 10));
    for (cluster_id, node) in [(CLUSTER + 1, NODE), (CLUSTER, NodeId(NODE.0 + 1))] {
        // A fresh directory holding only the snapshot: the snapshot alone is foreign.
        let other = TempDir::new().unwrap();
        fs::write(other.path().join(SNAPSHOT_FILE_NAME), &bytes).unwrap();
        match FileStorage::open(
            other.path(),
            cluster_id,
            node,
            FileStorageOptions::default(),
        ) {
            Err(StorageError::Foreign {
                path,
                cluster_id: found_cluster,
                node: found_node,
            }) => {
                assert!(path.ends_with(SNAPSHOT_FILE_NAME), "{path}");
                assert_eq!((found_cluster, found_node), (CLUSTER, NODE));
            }
            other => panic!("expected Foreign, got {other:?}"),
        }
    }
    assert!(open(directory.path()).is_ok());
}

#[test]
fn compacting_through_the_snapshot_keeps_the_rest_across_reopen() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path()).unwrap();
    let hard_state = HardState {
        promised: Ballot::new(2, NodeId(1)),
        chosen: 6,
        incarnation: 1,
    };
    storage
        .write(&mut WriteBatch {
            hard_state: Some(hard_state),
            runs: vec![(1..=6).map(noop).collect()],
            must_sync: true,
            memberships: None,
            compact_through: None,
        })
        .unwrap();
    let taken = Snapshot {
        slot: 4,
        data: Bytes::from_static(b"state through 4"),
        membership: None,
    };
    storage.save_snapshot(&taken).unwrap();
    // Saving does not compact by itself.
    assert_eq!(storage.compacted_through(), 0);
    Storage::compact(&mut storage, taken.slot).unwrap();
    assert_eq!(storage.compacted_through(), 4);
    drop(storage);

    let mut storage = open(directory.path()).unwrap();
    assert_eq!(storage.load_snapshot().unwrap(), Some(taken));
    let recovered = storage.recover().unwrap();
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(recovered.entries, vec![noop(5), noop(6)]);
}
