//! `FileStorage` helpers shared by the storage tests (`tests/file_storage.rs`,
//! `tests/file_membership.rs`, `tests/transport_storage_faults.rs`,
//! `tests/session15_faults.rs`): opening a log, the entries and hard states written into it,
//! its segment files, logs written whole or made of given bytes, and the state `MemStorage`
//! (the model) recovers.
//!
//! The log belongs to the cluster and node that the including test file names at its root:
//! `const CLUSTER: u64` and `const NODE: NodeId`.
#![allow(dead_code)]

use super::{CLUSTER, NODE};
use std::fs;
use std::path::{Path, PathBuf};
use synod::storage::file::SEGMENT_HEADER_BYTES;
use synod::storage::{FileStorage, FileStorageOptions};
use synod::{
    Ballot, Entry, HardState, MemStorage, NodeId, ProposalId, Recovered, Storage, StorageError,
    Value, WriteBatch,
};
use tempfile::TempDir;

pub fn options() -> FileStorageOptions {
    FileStorageOptions::default()
}

pub fn open(directory: &Path, options: FileStorageOptions) -> Result<FileStorage, StorageError> {
    FileStorage::open(directory, CLUSTER, NODE, options)
}

/// An entry of `data_bytes` bytes of command (a no-op if none), its proposer and ballot
/// varying with `round`.
pub fn entry(slot: u64, round: u64, data_bytes: usize) -> Entry {
    let value = if data_bytes == 0 {
        Value::Noop
    } else {
        Value::Command {
            id: ProposalId {
                node: NodeId(round % 5),
                incarnation: round,
                sequence: slot,
            },
            data: (0..data_bytes)
                .map(|index| (slot as usize * 31 + index) as u8)
                .collect(),
        }
    };
    Entry {
        slot,
        ballot: Ballot::new(round, NodeId(round % 3 + 1)),
        value,
    }
}

/// A command entry of n1 holding `data`.
pub fn command(slot: u64, round: u64, data: Vec<u8>) -> Entry {
    Entry {
        slot,
        ballot: Ballot::new(round, NodeId(1)),
        value: Value::Command {
            id: ProposalId {
                node: NodeId(1),
                incarnation: round,
                sequence: slot,
            },
            data: data.into(),
        },
    }
}

pub fn hard_state(round: u64, chosen: u64) -> HardState {
    HardState {
        promised: Ballot::new(round, NodeId(1)),
        chosen,
        incarnation: round + 100,
    }
}

/// What `MemStorage` (the model) recovers after `batches`.
pub fn model(batches: &[WriteBatch]) -> Recovered {
    let mut memory = MemStorage::new();
    for batch in batches {
        memory.write(&mut batch.clone()).unwrap();
    }
    memory.recover().unwrap()
}

pub fn segment_files(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(directory)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    files.sort();
    files
}

pub fn only_segment(directory: &Path) -> PathBuf {
    let segments = segment_files(directory);
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.into_iter().next().unwrap()
}

/// Writes `batches` into a fresh single-segment log; returns its bytes and the file length
/// after each batch.
pub fn written_log(batches: &[WriteBatch]) -> (Vec<u8>, Vec<u64>) {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    let path = only_segment(directory.path());
    let mut ends = Vec::new();
    for batch in batches {
        storage.write(&mut batch.clone()).unwrap();
        ends.push(fs::metadata(&path).unwrap().len());
    }
    drop(storage);
    assert_eq!(segment_files(directory.path()).len(), 1);
    (fs::read(&path).unwrap(), ends)
}

/// Opens a log made of `bytes` as the only segment of a fresh directory.
pub fn open_bytes(bytes: &[u8]) -> (TempDir, Result<FileStorage, StorageError>) {
    open_bytes_in(TempDir::new().unwrap(), bytes)
}

/// Opens a log made of `bytes` as the only segment of `directory`, a fresh one.
pub fn open_bytes_in(
    directory: TempDir,
    bytes: &[u8],
) -> (TempDir, Result<FileStorage, StorageError>) {
    fs::write(directory.path().join("00000000000000000001.seg"), bytes).unwrap();
    let result = open(directory.path(), options());
    (directory, result)
}

/// Flips every byte of the log that `batches` (written with `must_sync`) make, in turn. A
/// flip in the segment header, or in a batch that a later synced batch vouches for (or a later
/// batch written after its sync), must be refused as `Corrupt` (at an offset in the damaged
/// batch, if `check_offsets`); any other flip is a torn tail that loses exactly the damaged
/// batch and those after it. Never a panic, never wrong data. Returns how many flips were
/// refused and how many truncated.
pub fn check_every_byte_flip(
    batches: &[WriteBatch],
    must_sync: [bool; 6],
    check_offsets: bool,
) -> (usize, usize) {
    let (bytes, ends) = written_log(batches);
    let (mut refused, mut truncated) = (0, 0);
    for position in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x5A;
        let (_directory, opened) = open_bytes(&damaged);
        let batch = ends.iter().filter(|&&end| end <= position as u64).count();
        // A later batch that asked for a sync makes this one durable before it; so does a
        // later batch whose previous batch was synced by the writer (its commit says so).
        let vouched = must_sync[batch + 1..].iter().any(|&synced| synced)
            || (batch + 1 < ends.len() && must_sync[batch..ends.len() - 1].iter().any(|&s| s));
        let in_header = (position as u64) < SEGMENT_HEADER_BYTES;
        match opened {
            Err(StorageError::Corrupt { offset, reason, .. }) => {
                assert!(
                    in_header || vouched,
                    "flip at {position} (batch {batch}) refused: {reason}"
                );
                if check_offsets {
                    let batch_start = if batch == 0 {
                        SEGMENT_HEADER_BYTES
                    } else {
                        ends[batch - 1]
                    };
                    if in_header {
                        assert_eq!(offset, 0);
                    } else {
                        assert!(
                            batch_start <= offset && offset <= position as u64,
                            "flip at {position}: reported offset {offset}"
                        );
                    }
                }
                refused += 1;
            }
            Err(error) => panic!("flip at {position}: unexpected {error}"),
            Ok(mut storage) => {
                assert!(
                    !in_header && !vouched,
                    "flip at {position} (batch {batch}) was not refused"
                );
                assert_eq!(
                    storage.recover().unwrap(),
                    model(&batches[..batch]),
                    "flip at {position}"
                );
                truncated += 1;
            }
        }
    }
    (refused, truncated)
}
