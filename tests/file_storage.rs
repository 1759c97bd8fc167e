//! Crash and corruption tests of `FileStorage`, with `MemStorage` as the model.

mod file_log;

use file_log::{entry, hard_state, model, open, open_bytes, options, segment_files, written_log};
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use synod::storage::file::{LOCK_FILE_NAME, SEGMENT_HEADER_BYTES};
use synod::storage::{FileStorage, FileStorageOptions};
use synod::{Entry, MemStorage, NodeId, Recovered, Storage, StorageError, WriteBatch};
use tempfile::TempDir;

const CLUSTER: u64 = 0xC1;
const NODE: NodeId = NodeId(3);

fn small_segments() -> FileStorageOptions {
    FileStorageOptions {
        segment_bytes_max: 200,
        ..FileStorageOptions::default()
    }
}

/// A log of six batches: new slots, overwrites of earlier slots, hard states, and one
/// hard-state-only batch. `must_sync[i]` says whether batch `i` asks for a sync.
fn sample_batches(must_sync: [bool; 6]) -> Vec<WriteBatch> {
    vec![
        WriteBatch::new(
            Some(hard_state(1, 0)),
            vec![entry(1, 1, 5), entry(2, 1, 0)],
            must_sync[0],
        ),
        WriteBatch::new(None, vec![entry(3, 1, 12)], must_sync[1]),
        WriteBatch::new(
            Some(hard_state(2, 1)),
            vec![entry(2, 2, 7), entry(4, 2, 1)],
            must_sync[2],
        ),
        WriteBatch::new(Some(hard_state(3, 2)), vec![], must_sync[3]),
        WriteBatch::new(
            None,
            vec![entry(5, 3, 3), entry(1, 3, 0), entry(5, 3, 4)],
            must_sync[4],
        ),
        WriteBatch::new(Some(hard_state(4, 4)), vec![entry(6, 4, 9)], must_sync[5]),
    ]
}

#[test]
fn written_batches_round_trip_across_reopen() {
    let directory = TempDir::new().unwrap();
    let batches = sample_batches([true, false, true, false, true, false]);
    // No cache: every read goes to the files.
    let no_cache = FileStorageOptions {
        cache_bytes_max: 0,
        ..small_segments()
    };
    let mut storage = open(directory.path(), no_cache).unwrap();
    for batch in &batches {
        storage.write(&mut batch.clone()).unwrap();
    }
    let expected = model(&batches);
    assert_eq!(storage.recover().unwrap(), expected);
    assert!(segment_files(directory.path()).len() > 1, "segments rotate");
    assert_eq!(storage.cached_bytes(), 0);
    drop(storage);

    for options in [no_cache, options()] {
        let mut storage = open(directory.path(), options).unwrap();
        assert_eq!(storage.recover().unwrap(), expected);
        assert_eq!(storage.hard_state(), hard_state(4, 4));
        assert_eq!(storage.len(), 6);
        let mut memory = MemStorage::new();
        for batch in &batches {
            memory.write(&mut batch.clone()).unwrap();
        }
        for first in 1..=7 {
            for last in first..=7 {
                assert_eq!(
                    storage.entries(first, last).unwrap(),
                    memory.entries(first, last).unwrap()
                );
            }
        }
    }
}

#[test]
fn writes_continue_after_reopen() {
    let directory = TempDir::new().unwrap();
    let batches = sample_batches([true; 6]);
    for batch in &batches {
        let mut storage = open(directory.path(), small_segments()).unwrap();
        storage.write(&mut batch.clone()).unwrap();
    }
    let mut storage = open(directory.path(), small_segments()).unwrap();
    assert_eq!(storage.recover().unwrap(), model(&batches));
}

#[test]
fn every_truncation_recovers_exactly_the_wholly_written_batches() {
    let batches = sample_batches([true, false, true, true, false, true]);
    let (bytes, ends) = written_log(&batches);
    assert_eq!(*ends.last().unwrap(), bytes.len() as u64);
    for cut in 0..=bytes.len() {
        let whole = ends.iter().filter(|&&end| end <= cut as u64).count();
        let (directory, opened) = open_bytes(&bytes[..cut]);
        let mut storage = opened.unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        assert_eq!(
            storage.recover().unwrap(),
            model(&batches[..whole]),
            "cut at {cut}"
        );
        // The repaired log takes new writes and replays them after them.
        if cut % 7 == 0 {
            let extra = WriteBatch::new(Some(hard_state(9, 0)), vec![entry(2, 9, 2)], false);
            storage.write(&mut extra.clone()).unwrap();
            drop(storage);
            let mut expected: Vec<WriteBatch> = batches[..whole].to_vec();
            expected.push(extra);
            let mut storage = open(directory.path(), options()).unwrap();
            assert_eq!(storage.recover().unwrap(), model(&expected), "cut at {cut}");
        }
    }
}

/// Flips every byte of the sample log in turn (see `file_log::check_every_byte_flip`), and
/// checks that a refusal reports an offset in the damaged batch.
fn check_every_byte_flip(must_sync: [bool; 6]) -> (usize, usize) {
    file_log::check_every_byte_flip(&sample_batches(must_sync), must_sync, true)
}

#[test]
fn every_byte_flip_is_refused_or_truncated_as_the_torn_last_batch() {
    let (refused, truncated) = check_every_byte_flip([true; 6]);
    assert!(refused > 0 && truncated > 0);
}

#[test]
fn every_byte_flip_in_unsynced_batches_is_a_torn_tail_unless_a_sync_follows() {
    let (refused, truncated) = check_every_byte_flip([false, true, false, false, true, false]);
    assert!(refused > 0 && truncated > 0);
    let (refused, _) = check_every_byte_flip([false; 6]);
    assert_eq!(refused as u64, SEGMENT_HEADER_BYTES);
}

/// Writes the sample batches with small segments; returns the directory and the batches.
fn multi_segment_log() -> (TempDir, Vec<WriteBatch>) {
    let directory = TempDir::new().unwrap();
    let batches = sample_batches([false; 6]);
    let mut storage = open(directory.path(), small_segments()).unwrap();
    for batch in &batches {
        storage.write(&mut batch.clone()).unwrap();
    }
    assert!(storage.segment_paths().len() >= 3);
    assert_eq!(storage.segment_paths(), segment_files(directory.path()));
    (directory, batches)
}

#[test]
fn a_missing_segment_is_refused() {
    let (directory, _) = multi_segment_log();
    let segments = segment_files(directory.path());
    fs::remove_file(&segments[1]).unwrap();
    match open(directory.path(), small_segments()) {
        Err(StorageError::Corrupt { path, offset, .. }) => {
            assert_eq!(Path::new(&path), segments[1]);
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn damage_in_a_closed_segment_is_refused_even_at_its_end() {
    let (directory, _) = multi_segment_log();
    let first = segment_files(directory.path()).remove(0);
    let bytes = fs::read(&first).unwrap();

    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    fs::write(&first, &flipped).unwrap();
    let error = open(directory.path(), small_segments()).unwrap_err();
    assert!(
        matches!(&error, StorageError::Corrupt { path, .. } if Path::new(path) == first),
        "{error}"
    );

    fs::write(&first, &bytes[..bytes.len() - 3]).unwrap();
    let error = open(directory.path(), small_segments()).unwrap_err();
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");

    fs::write(&first, &bytes).unwrap();
    assert!(open(directory.path(), small_segments()).is_ok());
}

#[test]
fn a_torn_header_of_the_last_segment_is_removed() {
    let (directory, batches) = multi_segment_log();
    let segments = segment_files(directory.path());
    // Which batches lie in the segments before the last: replay them and watch rotations.
    let scratch = TempDir::new().unwrap();
    let mut probe = open(scratch.path(), small_segments()).unwrap();
    let mut before_last = Vec::new();
    for batch in &batches {
        probe.write(&mut batch.clone()).unwrap();
        if probe.segment_paths().len() < segments.len() {
            before_last.push(batch.clone());
        }
    }
    assert!(!before_last.is_empty() && before_last.len() < batches.len());

    let last = segments.last().unwrap();
    let bytes = fs::read(last).unwrap();
    fs::write(last, &bytes[..20]).unwrap();
    let mut storage = open(directory.path(), small_segments()).unwrap();
    assert_eq!(storage.recover().unwrap(), model(&before_last));
    assert_eq!(segment_files(directory.path()).len(), segments.len() - 1);
    // It goes on writing, into a new segment.
    storage.write(&mut batches[5].clone()).unwrap();
    assert_eq!(segment_files(directory.path()).len(), segments.len());
}

#[test]
fn foreign_storage_is_refused() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    storage
        .write(&mut sample_batches([true; 6])[0].clone())
        .unwrap();
    drop(storage);
    for (cluster_id, node) in [(CLUSTER + 1, NODE), (CLUSTER, NodeId(NODE.0 + 1))] {
        match FileStorage::open(directory.path(), cluster_id, node, options()) {
            Err(StorageError::Foreign {
                cluster_id: found_cluster,
                node: found_node,
                ..
            }) => {
                assert_eq!((found_cluster, found_node), (CLUSTER, NODE));
            }
            other => panic!("expected Foreign, got {other:?}"),
        }
    }
    assert!(open(directory.path(), options()).is_ok());
}

#[test]
fn a_directory_in_use_is_refused_until_its_storage_is_dropped() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    storage
        .write(&mut sample_batches([true; 6])[0].clone())
        .unwrap();
    // flock locks belong to the open file, so a second open in this same process conflicts
    // exactly as one in another process would.
    for _ in 0..2 {
        match open(directory.path(), options()) {
            Err(StorageError::Locked { path, holder_pid }) => {
                assert_eq!(Path::new(&path), directory.path().join(LOCK_FILE_NAME));
                assert_eq!(holder_pid, Some(std::process::id()));
                let message = open(directory.path(), options()).unwrap_err().to_string();
                assert!(message.contains("locked by another process"), "{message}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
    }
    // A refused open changed nothing: the holder goes on writing.
    storage
        .write(&mut sample_batches([true; 6])[1].clone())
        .unwrap();
    drop(storage);
    let mut storage = open(directory.path(), options()).unwrap();
    assert_eq!(
        storage.recover().unwrap(),
        model(&sample_batches([true; 6])[..2])
    );
    // The lock file is not a segment.
    assert_eq!(segment_files(directory.path()).len(), 1);
}

#[test]
fn a_sync_happens_exactly_when_asked() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    let batches = sample_batches([true, false, true, false, false, true]);
    for (index, batch) in batches.iter().enumerate() {
        let before = storage.sync_count();
        storage.write(&mut batch.clone()).unwrap();
        assert_eq!(
            storage.sync_count() - before,
            u64::from(batch.must_sync),
            "batch {index}"
        );
    }
    // An empty batch asking for a sync syncs the unsynced writes before it, once.
    storage.write(&mut batches[4].clone()).unwrap();
    let sync_request = WriteBatch {
        must_sync: true,
        ..WriteBatch::default()
    };
    let before = storage.sync_count();
    storage.write(&mut sync_request.clone()).unwrap();
    storage.write(&mut sync_request.clone()).unwrap();
    assert_eq!(storage.sync_count() - before, 1);
    assert_eq!(storage.write_count(), 9);
}

#[test]
fn an_oversize_command_is_refused_without_writing_anything() {
    let directory = TempDir::new().unwrap();
    let limited = FileStorageOptions {
        command_bytes_max: 8,
        ..options()
    };
    let mut storage = open(directory.path(), limited).unwrap();
    let batch = WriteBatch::new(
        Some(hard_state(1, 0)),
        vec![entry(1, 1, 4), entry(2, 1, 9)],
        true,
    );
    let error = storage.write(&mut batch.clone()).unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "{error}");
    assert_eq!(storage.recover().unwrap(), Recovered::default());
    // The storage is still usable.
    storage
        .write(&mut sample_batches([true; 6])[0].clone())
        .unwrap();
}

#[test]
fn compaction_deletes_whole_segments_and_keeps_the_hard_state() {
    let directory = TempDir::new().unwrap();
    let mut storage = open(directory.path(), small_segments()).unwrap();
    let mut memory = MemStorage::new();
    // The hard state is written once, first: it lives in the oldest segment.
    let first = WriteBatch::new(Some(hard_state(7, 3)), vec![entry(1, 7, 20)], true);
    storage.write(&mut first.clone()).unwrap();
    memory.write(&mut first.clone()).unwrap();
    for slot in 2..=40 {
        let batch = WriteBatch::new(None, vec![entry(slot, 7, 20)], false);
        storage.write(&mut batch.clone()).unwrap();
        memory.write(&mut batch.clone()).unwrap();
    }
    // Slot 3 rewritten late: its newest entry lives in a late segment.
    let late = WriteBatch::new(None, vec![entry(3, 8, 1)], false);
    storage.write(&mut late.clone()).unwrap();
    memory.write(&mut late.clone()).unwrap();
    let segments_before = storage.segment_paths().len();
    assert!(segments_before > 5);

    let deleted = storage.compact(30).unwrap();
    assert!(
        deleted > 0 && deleted < segments_before,
        "deleted {deleted}"
    );
    assert_eq!(storage.segment_paths(), segment_files(directory.path()));
    assert_eq!(storage.compacted_through(), 30);
    assert!(matches!(
        storage.entries(30, 35),
        Err(StorageError::Unavailable {
            slot: 30,
            first: 31,
            last: 40
        })
    ));
    let expected: Vec<Entry> = memory
        .recover()
        .unwrap()
        .entries
        .into_iter()
        .filter(|entry| entry.slot > 30)
        .collect();
    assert_eq!(storage.entries(31, 100).unwrap(), expected);
    drop(storage);

    let mut storage = open(directory.path(), small_segments()).unwrap();
    let recovered = storage.recover().unwrap();
    assert_eq!(recovered.hard_state, hard_state(7, 3));
    assert_eq!(recovered.entries, expected);
    assert_eq!(storage.compacted_through(), 30);

    // Compacting everything deletes all but the current segment; the hard state survives.
    storage.compact(u64::MAX).unwrap();
    assert_eq!(segment_files(directory.path()).len(), 1);
    assert!(storage.is_empty());
    drop(storage);
    let mut storage = open(directory.path(), small_segments()).unwrap();
    assert_eq!(
        storage.recover().unwrap(),
        Recovered {
            hard_state: hard_state(7, 3),
            entries: vec![],
            memberships: vec![],
        }
    );
}

/// One step of the crash model.
#[derive(Clone, Debug)]
enum Step {
    Write(WriteBatch),
    /// Drop the storage and cut the last segment somewhere in its unsynced tail.
    Crash(prop::sample::Index),
    /// Drop and reopen without losing anything.
    Reopen,
}

fn arbitrary_batch() -> impl Strategy<Value = WriteBatch> {
    (
        proptest::option::of((1..10u64, 0..20u64)),
        proptest::collection::vec((1..24u64, 1..10u64, 0..40usize), 0..5),
        any::<bool>(),
    )
        .prop_map(|(hard, entries, must_sync)| {
            WriteBatch::new(
                hard.map(|(round, chosen)| hard_state(round, chosen)),
                entries
                    .into_iter()
                    .map(|(slot, round, data_bytes)| entry(slot, round, data_bytes))
                    .collect(),
                must_sync,
            )
        })
}

fn arbitrary_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => arbitrary_batch().prop_map(Step::Write),
        1 => any::<prop::sample::Index>().prop_map(Step::Crash),
        1 => Just(Step::Reopen),
    ]
}

/// A write not yet known durable: where the log's last segment ended after it.
struct Unsynced {
    batch: WriteBatch,
    segment: PathBuf,
    end: u64,
}

fn last_segment(storage: &FileStorage) -> (PathBuf, u64) {
    let path = storage.segment_paths().pop().unwrap();
    let length = fs::metadata(&path).unwrap().len();
    (path, length)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn crashes_lose_only_unsynced_batches_and_never_reorder(
        steps in proptest::collection::vec(arbitrary_step(), 1..40),
    ) {
        let directory = TempDir::new().unwrap();
        let options = FileStorageOptions { segment_bytes_max: 600, ..FileStorageOptions::default() };
        let mut storage = Some(open(directory.path(), options).unwrap());
        let mut durable: Vec<WriteBatch> = Vec::new();
        let mut unsynced: Vec<Unsynced> = Vec::new();
        // Where the unsynced tail starts: everything before it is durable.
        let mut tail_start = last_segment(storage.as_ref().unwrap());
        for step in steps {
            match step {
                Step::Write(batch) => {
                    let handle = storage.as_mut().unwrap();
                    handle.write(&mut batch.clone()).unwrap();
                    let (segment, end) = last_segment(handle);
                    if unsynced.first().is_some_and(|first| first.segment != segment) {
                        // A rotation synced the closed segment.
                        durable.extend(unsynced.drain(..).map(|write| write.batch));
                    }
                    unsynced.push(Unsynced { batch: batch.clone(), segment: segment.clone(), end });
                    if batch.must_sync {
                        durable.extend(unsynced.drain(..).map(|write| write.batch));
                        tail_start = (segment, end);
                    } else if unsynced.len() == 1 && tail_start.0 != segment {
                        // The tail begins in a fresh segment: its header may tear too.
                        tail_start = (segment, 0);
                    }
                }
                Step::Crash(cut) => {
                    drop(storage.take());
                    if let Some(last) = unsynced.last() {
                        let segment = last.segment.clone();
                        let low = if tail_start.0 == segment { tail_start.1 } else { 0 };
                        let high = last.end;
                        let cut_at = low + cut.index((high - low + 1) as usize) as u64;
                        let bytes = fs::read(&segment).unwrap();
                        fs::write(&segment, &bytes[..cut_at as usize]).unwrap();
                        durable.extend(
                            unsynced
                                .drain(..)
                                .filter(|write| write.segment == segment && write.end <= cut_at)
                                .map(|write| write.batch),
                        );
                    }
                    storage = Some(open(directory.path(), options).unwrap());
                    tail_start = last_segment(storage.as_ref().unwrap());
                    let recovered = storage.as_mut().unwrap().recover().unwrap();
                    prop_assert_eq!(recovered, model(&durable));
                }
                Step::Reopen => {
                    drop(storage.take());
                    durable.extend(unsynced.drain(..).map(|write| write.batch));
                    storage = Some(open(directory.path(), options).unwrap());
                    tail_start = last_segment(storage.as_ref().unwrap());
                    let recovered = storage.as_mut().unwrap().recover().unwrap();
                    prop_assert_eq!(recovered, model(&durable));
                }
            }
        }
        let mut all = durable;
        all.extend(unsynced.into_iter().map(|write| write.batch));
        let handle = storage.as_mut().unwrap();
        prop_assert_eq!(handle.recover().unwrap(), model(&all));
        let memory_entries = model(&all).entries;
        prop_assert_eq!(handle.entries(1, 30).unwrap(), memory_entries);
    }
}

/// Measures how many `write`s with `must_sync` this disk completes per second.
/// Run with `cargo test --release --test file_storage -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_synced_writes_per_second() {
    let directory = TempDir::new_in(".").unwrap();
    let mut storage = open(directory.path(), options()).unwrap();
    let start = std::time::Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < std::time::Duration::from_secs(3) {
        writes += 1;
        let batch = WriteBatch::new(None, vec![entry(writes, 1, 100)], true);
        storage.write(&mut batch.clone()).unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{writes} synced writes in {seconds:.2} s: {:.0} per second",
        writes as f64 / seconds
    );
}
