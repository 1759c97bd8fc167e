//! File-backed disks for the simulator ([`SimConfig::file_disks`](super::SimConfig)).
//!
//! With file disks every completed write of a node also goes to a real [`FileStorage`] in a
//! scratch directory, and the node restarts from what that storage recovers. The simulator
//! keeps its in-memory model of the disk (what the checkers read) and requires, at every
//! restart, that the file storage recovered exactly the model's state. Two faults work on the
//! bytes of the files:
//!
//! - **Torn writes**: at a crash, the first unfinished write past the prefix that made it is
//!   written and then cut at a random byte of the batch (and sometimes followed by zeros or
//!   garbage, as a power cut leaves a partly written sector). Recovery must drop that batch
//!   whole and keep everything before it.
//! - **Corruption**: at a restart, one byte of a segment that was synced and closed (or of a
//!   segment header, which is synced at creation) is flipped. Recovery must refuse the storage
//!   ([`StorageError::Corrupt`] or [`StorageError::Foreign`]); opening it as if nothing
//!   happened is a violation.
//!
//! Damage inside the *last* batch of the open segment is left out on purpose: it cannot be
//! told from a torn write, and `FileStorage` (like every write-ahead log) truncates it.

use crate::error::StorageError;
use crate::storage::file::{COMMIT_RECORD_BYTES, SEGMENT_HEADER_BYTES};
use crate::storage::{FileStorage, FileStorageOptions, Recovered, Snapshot, Storage, WriteBatch};
use crate::types::{NodeId, Slot};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The cluster id every simulated file storage is opened with.
const CLUSTER_ID: u64 = 0x5157_0001;

/// Small segments, so that runs rotate through many of them and corruption has closed
/// segments to hit.
fn options() -> FileStorageOptions {
    FileStorageOptions {
        segment_bytes_max: 4096,
        cache_bytes_max: 64 << 10,
        ..FileStorageOptions::default()
    }
}

/// A scratch directory removed (with everything in it) when dropped.
#[derive(Debug)]
pub(super) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a fresh directory under `root`, named so that concurrent simulations (threads
    /// or processes) never share one.
    pub(super) fn create(root: &Path, seed: u64) -> Result<ScratchDir, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "synod-sim-{}-{seed}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(name);
        fs::create_dir_all(&path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// One node's file-backed disk.
#[derive(Debug)]
pub(super) struct FileDisk {
    directory: PathBuf,
    node: NodeId,
    /// The open storage; `None` while the node is down.
    storage: Option<FileStorage>,
}

impl FileDisk {
    /// A disk in `directory` (created empty) for `node`, opened.
    pub(super) fn create(directory: PathBuf, node: NodeId) -> Result<FileDisk, String> {
        let mut disk = FileDisk {
            directory,
            node,
            storage: None,
        };
        disk.open().map_err(|error| error.to_string())?;
        Ok(disk)
    }

    /// Opens the storage (replaying and repairing the files) and returns what it recovered.
    pub(super) fn open(&mut self) -> Result<Recovered, StorageError> {
        self.storage = None;
        let mut storage = FileStorage::open(&self.directory, CLUSTER_ID, self.node, options())?;
        let recovered = storage.recover()?;
        self.storage = Some(storage);
        Ok(recovered)
    }

    /// Writes `batch` (a completed write: it reached the files).
    pub(super) fn write(&mut self, mut batch: WriteBatch) -> Result<(), String> {
        let storage = self
            .storage
            .as_mut()
            .ok_or_else(|| "write to a file disk whose node is down".to_string())?;
        storage.write(&mut batch).map_err(|error| error.to_string())
    }

    /// Saves `snapshot` in the snapshot file (durable when this returns; an older one than
    /// the file's is ignored).
    pub(super) fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let storage = self
            .storage
            .as_mut()
            .ok_or_else(|| "snapshot saved on a file disk whose node is down".to_string())?;
        storage
            .save_snapshot(snapshot)
            .map_err(|error| error.to_string())
    }

    /// The snapshot the files hold (the node must be up: after [`open`](Self::open)).
    pub(super) fn load_snapshot(&mut self) -> Result<Option<Snapshot>, String> {
        let storage = self
            .storage
            .as_mut()
            .ok_or_else(|| "snapshot read from a file disk whose node is down".to_string())?;
        storage.load_snapshot().map_err(|error| error.to_string())
    }

    /// Compacts the files through `through` (durable when this returns).
    pub(super) fn compact(&mut self, through: Slot) -> Result<(), String> {
        let storage = self
            .storage
            .as_mut()
            .ok_or_else(|| "compaction of a file disk whose node is down".to_string())?;
        storage
            .compact(through)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// The process died: files are closed and the lock released, nothing else changes.
    pub(super) fn crash(&mut self) {
        self.storage = None;
    }

    /// The process died while writing `batch`: it is written, then cut at a byte drawn with
    /// `below` inside its own records, sometimes followed by zeros or garbage. Returns a note
    /// for the run's log, and whether the batch nevertheless made it whole (the stray bytes
    /// happened to be exactly the missing ones, e.g. zeros where the batch had zeros).
    ///
    /// With `land` (a deliberate bug, `Bugs::torn_writes_land`) the batch is left whole and
    /// reported torn.
    pub(super) fn write_torn(
        &mut self,
        batch: WriteBatch,
        land: bool,
        below: &mut dyn FnMut(u64) -> u64,
    ) -> Result<(String, bool), String> {
        let before = self.segments()?;
        self.write(batch)?;
        self.crash();
        let after = self.segments()?;
        let (path, end) = after
            .last()
            .cloned()
            .ok_or_else(|| "no segment after a write".to_string())?;
        // A batch never spans segments, and a new segment's header is synced before any batch
        // goes into it: the batch is the growth of the last segment, or a new segment's body.
        let start = match before.last() {
            Some((last, length)) if *last == path => *length,
            _ => SEGMENT_HEADER_BYTES,
        };
        if end <= start {
            // A batch with neither entries nor hard state writes nothing: nothing to tear.
            return Ok(("empty: nothing written to tear".to_string(), true));
        }
        if land {
            return Ok(("left whole (bug: torn_writes_land)".to_string(), false));
        }
        let cut = start + below(end - start);
        let tail: Vec<u8> = match below(3) {
            0 => Vec::new(),
            1 => vec![0; below(64) as usize],
            _ => (0..below(64)).map(|_| below(256) as u8).collect(),
        };
        let original =
            fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let missing = &original[cut as usize..end as usize];
        let whole = tail.len() >= missing.len() && tail[..missing.len()] == *missing;
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
        file.set_len(cut)
            .map_err(|error| format!("cannot truncate {}: {error}", path.display()))?;
        if !tail.is_empty() {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(cut))
                .and_then(|_| file.write_all(&tail))
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        let note = format!(
            "torn at byte {cut} of {} (batch {start}..{end}), then {} stray bytes{}",
            name.unwrap_or_default(),
            tail.len(),
            if whole { " that complete it" } else { "" }
        );
        Ok((note, whole))
    }

    /// Flips one byte of a closed segment, or of the only segment's header (both synced). The
    /// node must be down. Returns a note for the run's log.
    ///
    /// With `in_tail` (a deliberate bug, `Bugs::corruption_in_open_tail`) the byte is in the
    /// last commit record of the last segment instead.
    pub(super) fn corrupt(
        &mut self,
        in_tail: bool,
        below: &mut dyn FnMut(u64) -> u64,
    ) -> Result<String, String> {
        debug_assert!(self.storage.is_none(), "corrupting a disk in use");
        let segments = self.segments()?;
        let Some((last, last_length)) = segments.last().cloned() else {
            return Err("no segment to corrupt".to_string());
        };
        let (path, first, length) = if in_tail {
            // A commit record ends the segment (when it holds a batch).
            let commit = COMMIT_RECORD_BYTES as u64;
            (
                last,
                last_length.saturating_sub(commit).max(SEGMENT_HEADER_BYTES),
                last_length,
            )
        } else if segments.len() == 1 {
            (last, 0, SEGMENT_HEADER_BYTES.min(last_length))
        } else {
            let (path, length) = segments[below(segments.len() as u64 - 1) as usize].clone();
            (path, 0, length)
        };
        if length <= first {
            return Err(format!("nothing to corrupt in {}", path.display()));
        }
        let offset = first + below(length - first);
        let mut bytes =
            fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        bytes[offset as usize] ^= 1 + below(255) as u8;
        fs::write(&path, &bytes)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        Ok(format!(
            "flipped byte {offset} of {}",
            name.unwrap_or_default()
        ))
    }

    /// The segment files and their lengths, oldest first.
    fn segments(&self) -> Result<Vec<(PathBuf, u64)>, String> {
        let listing = fs::read_dir(&self.directory)
            .map_err(|error| format!("cannot list {}: {error}", self.directory.display()))?;
        let mut segments = Vec::new();
        for item in listing {
            let item = item.map_err(|error| error.to_string())?;
            let path = item.path();
            if path.extension().is_some_and(|extension| extension == "seg") {
                let length = item.metadata().map_err(|error| error.to_string())?.len();
                segments.push((path, length));
            }
        }
        // Segment names are zero-padded sequence numbers: name order is log order.
        segments.sort();
        Ok(segments)
    }
}
