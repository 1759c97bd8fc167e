//! Durable storage in a directory of append-only, checksummed segment files.
//!
//! # Files
//!
//! The directory holds segment files named by a sequence number, `00000000000000000001.seg`,
//! `00000000000000000002.seg`, ... with no gaps. Only the last segment is written; when it
//! reaches [`FileStorageOptions::segment_bytes_max`] it is synced and a new one is started
//! (created, its header written and synced, the directory synced). Other files in the
//! directory are left alone.
//!
//! One more file, `LOCK`, keeps two processes (or two `FileStorage`s in one process) from
//! writing the same log: [`FileStorage::open`] takes an exclusive `flock` on it and holds it
//! until the storage is dropped; a second open fails with [`StorageError::Locked`]. The
//! operating system releases the lock when its holder exits, even by `SIGKILL`, so a crashed
//! node restarts without cleanup. The file holds the holder's process id, for the error
//! message only. (On platforms without `flock` — not Linux, macOS or the BSDs — there is no
//! lock.)
//!
//! # Snapshot
//!
//! The file `snapshot` holds the last [`Snapshot`] saved with [`Storage::save_snapshot`]:
//!
//! ```text
//! snapshot   := magic b"SYNODSNP" | format version u16 (2) | cluster id u64 | node id u64
//!               | slot u64 | data length u64 | membership length u32 | checksum u32
//!               | membership[membership length] | data[data length]
//! membership := empty (length 0: the snapshot has none)
//!               | slot u64 | voter count u32 | voter ids u64... | learner count u32
//!               | learner ids u64...
//! checksum    = CRC32C(every header byte before the checksum, membership, data)
//! ```
//!
//! The membership block is [`Snapshot::membership`], present on a snapshot a replica installed
//! from a peer; it is small (at most [`MEMBERS_MAX`](crate::config::MEMBERS_MAX) ids).
//!
//! It is replaced atomically: the new snapshot is written to `snapshot.tmp`, the file is
//! synced, renamed over `snapshot`, and the directory is synced. A crash at any point leaves
//! either the old or the new snapshot in force, never a mix. A `snapshot.tmp` found by
//! [`FileStorage::open`] was never renamed, so it never counted: it is deleted.
//!
//! The snapshot is checked whole on open and on every [`Storage::load_snapshot`]: a bad
//! magic, format version (a version-1 snapshot, from before memberships, is refused too), a
//! length (lengths that disagree with the file's size, a data length above
//! [`FileStorageOptions::snapshot_bytes_max`] or a membership length above the largest valid
//! membership, so a corrupt length cannot make recovery allocate), checksum, or an ill-formed
//! membership block is [`StorageError::Corrupt`]; a snapshot of another cluster or node is
//! [`StorageError::Foreign`]. Neither is ever ignored: a snapshot that silently
//! vanished would lose the state that the compacted log no longer holds.
//!
//! Saving a snapshot does not compact the log; [`FileStorage::compact`] (or
//! [`Storage::compact`]) through the snapshot's slot is the caller's call.
//!
//! # Records
//!
//! A segment is a sequence of records. All integers are little-endian.
//!
//! ```text
//! record  := length u32 | checksum u32 | kind u8 | body[length]
//! checksum = CRC32C(salt u64, length bytes, kind, body)   (every record but the header)
//!          = CRC32C(length bytes, kind, body)             (the segment header)
//!
//! kind 1  segment header: magic b"SYNODLOG", format version u16 (3), cluster id u64,
//!                         node id u64, segment sequence number u64, number of its first
//!                         batch u64, salt u64 (random, drawn when the segment is created)
//! kind 2  entry:          slot u64, ballot round u64, ballot node u64, value tag u8
//!                         (0 no-op; 1 command: proposer node u64, incarnation u64,
//!                         sequence u64, data = the rest of the body; 2 membership:
//!                         membership, and nothing after it)
//! kind 3  hard state:     promised round u64, promised node u64, chosen u64, incarnation u64
//! kind 4  compaction:     every slot up to this one is discarded u64
//! kind 5  commit:         batch number u64, records in the batch u32, flags u8 (bit 0: the
//!                         batch is synced; bit 1: the batch before it was synced by the same
//!                         open of the storage before this one was appended)
//! kind 6  memberships:    count u32, then per item: slot u64, membership
//!
//! membership := voter count u32 | voter ids u64... | learner count u32 | learner ids u64...
//! ```
//!
//! A membership must pass [`Membership::validate`](crate::Membership::validate) (at least one
//! voter, at most [`MEMBERS_MAX`](crate::config::MEMBERS_MAX) members, both lists sorted
//! without duplicates); a record holding one that does not, or whose counts disagree with its
//! length, is ill-formed. A memberships record holds the whole list of a
//! [`WriteBatch::memberships`], at most [`MEMBERSHIPS_MAX`] items.
//!
//! The header is the first record of every segment and nowhere else. Every other record
//! belongs to a batch: one [`Storage::write`] appends the batch's entry, hard state,
//! memberships and compaction records, then one commit record that closes it. Batch numbers
//! run on without a gap across segments, and a batch never spans two segments.
//!
//! Version 2 of the segment format added membership entries and the memberships record;
//! version 3 the salt, which keys every later record's checksum so that the application's
//! bytes inside a command cannot pass for a record (recovery looks for commit records at
//! every byte offset past damage, below). A segment of another version (1 and 2 included) is
//! refused as [`StorageError::Corrupt`] ("unsupported segment format version").
//!
//! # Recovery
//!
//! [`FileStorage::open`] replays every segment, oldest first. Records take effect only at the
//! commit record that closes their batch, so a batch is recovered whole or not at all; for each
//! slot the entry written last wins; the hard state written last wins; the membership list
//! written last wins, and [`Storage::recover`] returns it extended with the saved snapshot's
//! membership if that one is newer. What it refuses:
//!
//! - A missing segment (a gap in the sequence numbers), a segment header that does not check
//!   out, and any damage (a short, checksum-bad or ill-formed record, records without their
//!   commit) in a segment that is not the last: [`StorageError::Corrupt`], naming the file and
//!   the byte offset. These segments were synced before the next one was started, so damage
//!   there is lost acknowledged data and needs an operator.
//! - A segment of another cluster or node: [`StorageError::Foreign`].
//!
//! What it repairs: damage in the **last** segment is a torn tail — the batches written just
//! before a crash — and is truncated away, back to the end of the last intact batch. The
//! exception keeps that safe: when an intact commit record after the damage proves the
//! damaged batch was durable, the damage is corruption, not a torn write, and the storage is
//! refused as `Corrupt`. The proofs: a commit of a later batch that was *synced* (its sync
//! covered the damaged batch), or a commit of a later batch whose flag says the batch before
//! it was synced by the same open of the storage before it was appended. (A sync that `open`
//! makes of what it recovered does not count for that flag: after a failed fsync the page
//! cache may hold bytes the disk does not, and a reopen in the same process would read
//! them.) Batches written without a sync carry no durability promise; a power cut may persist
//! them out of order, so damage in an unsynced batch followed only by unsynced batches is
//! still a torn tail. The first proof also refuses one crash: a power cut during a later
//! batch's sync that persisted that batch's commit but not an earlier unsynced batch's
//! bytes. Refusing needs an operator there, where accepting would silently drop acknowledged
//! data after bit rot; the storage chooses the refusal. A last segment whose header was never
//! completely written is removed. After recovery `open` syncs the last segment, so that what
//! the replica recovers is durable before it acts on it.
//!
//! # Memory
//!
//! Entry payloads stay on disk. Memory holds an index from slot to record location, the
//! number of live entries of each segment, a bounded cache of recently written entries
//! ([`FileStorageOptions::cache_bytes_max`]) and a bounded set of open read handles.
//!
//! # Compaction
//!
//! [`FileStorage::compact`] discards every slot up to a mark (the prefix a snapshot covers):
//! it writes a compaction record together with the current hard state and the current
//! membership list (if one was ever written), synced, then deletes the oldest segments that no
//! longer hold a live entry. The newest hard state, membership list and compaction mark always
//! live in a segment that is kept.

// The file format and its I/O are split by file: `format` holds the record layout and its
// encoding, `segment` the segment files and their replay at recovery, `snapshot` the snapshot
// file. This module holds `FileStorage` and the helpers they share.
mod format;
mod segment;
mod snapshot;

pub(crate) use format::COMMIT_RECORD_BYTES;
pub use format::{MEMBERSHIPS_MAX, SEGMENT_HEADER_BYTES};
pub use snapshot::{SNAPSHOT_FILE_NAME, SNAPSHOT_HEADER_BYTES, SNAPSHOT_TMP_FILE_NAME};

use super::{recovered_memberships, Recovered, Snapshot, Storage, WriteBatch};
use crate::error::{ConfigError, StorageError};
use crate::types::{Entry, HardState, MembershipAt, NodeId, Slot, Value};
use bytes::Bytes;
use format::{
    append_record, check_record, decode_entry, encode_entry, encode_hard_state, encode_memberships,
    put_u64, Commit, Kind, COMMIT_FLAG_PREVIOUS_DURABLE, COMMIT_FLAG_SYNCED,
    ENTRY_COMMAND_FIXED_BYTES, ENTRY_MEMBERSHIP_BYTES_MAX, MEMBERSHIPS_BODY_BYTES_MAX,
};
use segment::{create_segment, has_torn_header, list_segments, scan_segment, segment_path};
use snapshot::{read_snapshot, remove_snapshot_tmp};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file in the storage directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Tuning of a [`FileStorage`]. [`Default`] suits most uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStorageOptions {
    /// A segment is closed and a new one started before a batch is written to a segment that
    /// has reached this size. A single batch may make a segment larger. Compaction deletes
    /// whole segments, so smaller segments free space sooner; larger ones mean fewer files.
    pub segment_bytes_max: u64,
    /// The most payload bytes (plus a fixed overhead per entry) kept in the cache of recently
    /// written entries, which serves [`Storage::entries`] without reading the files.
    pub cache_bytes_max: usize,
    /// The largest command (`Value::Command` data) an entry may carry. A write with a larger
    /// one is refused; a record claiming more is treated as damage on recovery, so a corrupt
    /// length cannot make recovery allocate. Memberships (entries and lists) are not counted
    /// here: they have their own fixed bounds ([`MEMBERS_MAX`](crate::config::MEMBERS_MAX)
    /// members, [`MEMBERSHIPS_MAX`] items).
    pub command_bytes_max: usize,
    /// The most segment files kept open for reading at once.
    pub open_files_max: usize,
    /// The largest snapshot data accepted. Saving a larger snapshot is refused; a snapshot
    /// file claiming more is refused as corrupt, so a corrupt length cannot make recovery
    /// allocate. [`Storage::load_snapshot`] holds the whole snapshot in memory.
    pub snapshot_bytes_max: u64,
}

impl Default for FileStorageOptions {
    fn default() -> FileStorageOptions {
        FileStorageOptions {
            segment_bytes_max: 64 << 20,
            cache_bytes_max: 8 << 20,
            command_bytes_max: 64 << 20,
            open_files_max: 16,
            snapshot_bytes_max: 1 << 30,
        }
    }
}

impl FileStorageOptions {
    /// Checks the options are usable, as [`FileStorage::open`] does first.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first unusable field: `segment_bytes_max` not above the
    /// [`SEGMENT_HEADER_BYTES`]-byte segment header, `command_bytes_max` too large for a record
    /// length (a `u32`), or `open_files_max` zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.segment_bytes_max <= SEGMENT_HEADER_BYTES {
            return Err(ConfigError::new(
                "segment_bytes_max",
                "must exceed the segment header (SEGMENT_HEADER_BYTES)",
            ));
        }
        if self.command_bytes_max > u32::MAX as usize - ENTRY_COMMAND_FIXED_BYTES {
            return Err(ConfigError::new(
                "command_bytes_max",
                "must leave the record length within a u32",
            ));
        }
        if self.open_files_max == 0 {
            return Err(ConfigError::new("open_files_max", "must be at least 1"));
        }
        Ok(())
    }

    /// The largest record body any record may have: the largest command entry, membership
    /// entry or membership list.
    fn record_body_bytes_max(&self) -> usize {
        (ENTRY_COMMAND_FIXED_BYTES + self.command_bytes_max)
            .max(ENTRY_MEMBERSHIP_BYTES_MAX)
            .max(MEMBERSHIPS_BODY_BYTES_MAX)
    }
}

/// Where an entry's record lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    segment: u64,
    /// Offset of the record's first byte in the segment file.
    offset: u64,
    /// The whole record: header and body.
    record_bytes: u32,
}

/// A record read (or written) that takes effect when its batch commits.
#[derive(Clone, Debug)]
enum Pending {
    Entry {
        slot: Slot,
        location: Location,
    },
    HardState(HardState),
    Compaction(Slot),
    /// A membership list record: the whole list, replacing the one before.
    Memberships(Vec<MembershipAt>),
}

/// What recovery and the writer know of one existing segment.
#[derive(Clone, Copy, Debug)]
struct SegmentState {
    /// How many index locations point into it.
    live_entries: usize,
    /// The checksum seed of its records after the header ([`format::checksum_seed`]).
    seed: u32,
}

/// The replayed state: what the committed batches say.
#[derive(Debug, Default)]
struct State {
    /// For each live slot, the location of the entry written last. Invariant: every key is
    /// above `compacted_through`.
    index: BTreeMap<Slot, Location>,
    /// Every existing segment, by sequence number.
    segments: BTreeMap<u64, SegmentState>,
    hard_state: HardState,
    /// The membership list written last (empty if none was).
    memberships: Vec<MembershipAt>,
    /// Every slot up to this one is discarded.
    compacted_through: Slot,
    /// The number the next batch's commit record carries.
    next_batch: u64,
}

impl State {
    /// Applies the records of one committed batch, in order, draining `pending` (which keeps
    /// its capacity).
    fn apply(&mut self, pending: &mut Vec<Pending>) {
        for record in pending.drain(..) {
            match record {
                Pending::Entry { slot, location } => {
                    if slot <= self.compacted_through {
                        continue;
                    }
                    self.segments
                        .get_mut(&location.segment)
                        .expect("an entry's segment exists")
                        .live_entries += 1;
                    if let Some(previous) = self.index.insert(slot, location) {
                        self.release(previous.segment);
                    }
                }
                Pending::HardState(hard_state) => self.hard_state = hard_state,
                Pending::Compaction(mark) => self.discard_through(mark),
                Pending::Memberships(memberships) => self.memberships = memberships,
            }
        }
    }

    /// Discards every slot up to `mark`.
    fn discard_through(&mut self, mark: Slot) {
        if mark <= self.compacted_through {
            return;
        }
        self.compacted_through = mark;
        let kept = match mark.checked_add(1) {
            Some(first_kept) => self.index.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        let discarded = std::mem::replace(&mut self.index, kept);
        for location in discarded.values() {
            self.release(location.segment);
        }
    }

    fn release(&mut self, segment: u64) {
        let segment = self
            .segments
            .get_mut(&segment)
            .expect("an indexed segment is counted");
        assert!(segment.live_entries > 0);
        segment.live_entries -= 1;
    }
}

/// A bounded cache of entries, evicting the lowest slots first (the log's tail is what
/// leaders and lagging followers read).
#[derive(Debug, Default)]
struct EntryCache {
    entries: BTreeMap<Slot, Entry>,
    /// Sum of `cost` over `entries`. Invariant: `bytes <= bytes_max`.
    bytes: usize,
    bytes_max: usize,
}

impl EntryCache {
    fn cost(entry: &Entry) -> usize {
        entry.value.size_bytes() + std::mem::size_of::<Entry>() + 32
    }

    fn insert(&mut self, entry: Entry) {
        self.remove(entry.slot);
        let cost = EntryCache::cost(&entry);
        if cost > self.bytes_max {
            return;
        }
        self.bytes += cost;
        self.entries.insert(entry.slot, entry);
        while self.bytes > self.bytes_max {
            let (_, evicted) = self.entries.pop_first().expect("bytes > 0 means entries");
            self.bytes -= EntryCache::cost(&evicted);
        }
        assert!(self.bytes <= self.bytes_max);
    }

    fn remove(&mut self, slot: Slot) {
        if let Some(removed) = self.entries.remove(&slot) {
            self.bytes -= EntryCache::cost(&removed);
        }
    }

    fn discard_through(&mut self, mark: Slot) {
        while let Some(entry) = self.entries.first_entry() {
            if *entry.key() > mark {
                break;
            }
            let removed = entry.remove();
            self.bytes -= EntryCache::cost(&removed);
        }
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct CurrentSegment {
    sequence: u64,
    path: PathBuf,
    file: File,
    /// Bytes in the file; the next record goes here.
    length: u64,
    /// Bytes were appended since the last sync.
    unsynced: bool,
    /// The checksum seed of its records after the header.
    seed: u32,
}

/// Durable [`Storage`] in a directory of checksummed, append-only segment files.
///
/// See the [module documentation](self) for the file format and the recovery rules. Open it
/// with [`FileStorage::open`]; the last successful writes are what
/// [`Storage::recover`] returns after a restart.
///
/// After a failed write or sync the storage refuses every further write: what reached the disk
/// is unknown (and after a failed fsync the kernel may have dropped the dirty pages). Stop the
/// node and open the storage again, which truncates whatever was torn.
pub struct FileStorage {
    directory: PathBuf,
    cluster_id: u64,
    node_id: NodeId,
    options: FileStorageOptions,
    state: State,
    current: CurrentSegment,
    cache: EntryCache,
    /// Read handles by segment sequence number. Invariant: `len() <= open_files_max`.
    readers: BTreeMap<u64, File>,
    /// The records of the batch being written (kept to reuse its allocation).
    write_buffer: Vec<u8>,
    /// The records of the write in progress, kept between writes for its capacity.
    pending_buffer: Vec<Pending>,
    /// Why the storage stopped accepting writes, if it did.
    failure: Option<String>,
    writes: u64,
    syncs: u64,
    /// The number of the last batch this open of the storage appended.
    last_written: Option<u64>,
    /// The number of the last batch a sync by this open of the storage made durable (a sync
    /// made at open, of what recovery found, does not count: after a failed fsync the page
    /// cache may hold what the disk does not).
    durable_through: Option<u64>,
    /// The slot of the snapshot in force, if there is one.
    snapshot_slot: Option<Slot>,
    /// The membership of the snapshot in force ([`Snapshot::membership`]), kept so that
    /// [`Storage::recover`] need not read the snapshot file.
    snapshot_membership: Option<MembershipAt>,
    /// The open lock file; its `flock` is held as long as this storage lives (`None` where
    /// there is no `flock`).
    _lock: Option<File>,
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("FileStorage")
            .field("directory", &self.directory)
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("segments", &self.state.segments.len())
            .field("current_segment", &self.current.sequence)
            .field("slots", &self.state.index.len())
            .field("compacted_through", &self.state.compacted_through)
            .field("snapshot_slot", &self.snapshot_slot)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path, source: io::Error) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

/// Takes the exclusive lock of `directory` (see the module documentation): opens or creates
/// its lock file, locks it without waiting, and writes this process's id into it.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
fn lock_directory(directory: &Path) -> Result<Option<File>, StorageError> {
    use rustix::fs::{flock, FlockOperation};
    let path = directory.join(LOCK_FILE_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| io_error(&path, error))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {
            let holder_pid = fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            return Err(StorageError::Locked {
                path: path.display().to_string(),
                holder_pid,
            });
        }
        Err(errno) => return Err(io_error(&path, errno.into())),
    }
    // The pid is for the error message of a later open only: not synced, not checked.
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(|error| io_error(&path, error))?;
    Ok(Some(file))
}

/// No `flock` on this platform: no lock (see the module documentation).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
fn lock_directory(_directory: &Path) -> Result<Option<File>, StorageError> {
    Ok(None)
}

/// Makes the directory entries (created or removed files) durable.
fn sync_directory(directory: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        File::open(directory)
            .and_then(|handle| handle.sync_all())
            .map_err(|error| io_error(directory, error))?;
    }
    #[cfg(not(unix))]
    {
        let _ = directory;
    }
    Ok(())
}

/// Reads up to `buffer.len()` bytes, fewer only at the end of the file.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

impl FileStorage {
    /// Opens (or creates) the storage in `directory` for node `node_id` of cluster
    /// `cluster_id`, replaying the log and repairing a torn tail (see the module
    /// documentation).
    ///
    /// # Errors
    /// - [`StorageError::Locked`] if another storage (in any process) has the directory open.
    /// - [`StorageError::Foreign`] if a segment or the snapshot belongs to another cluster or
    ///   node.
    /// - [`StorageError::Corrupt`] if a segment is missing, a header is bad, data other than
    ///   a torn tail is damaged, or the snapshot file does not check out (see
    ///   [Snapshot](self#snapshot)); the error names the file and the byte offset.
    /// - [`StorageError::Io`] if the directory or a file cannot be read, written or synced.
    /// - [`StorageError::InvalidOptions`] if `options` are unusable (see
    ///   [`FileStorageOptions::validate`]); nothing is opened or created then.
    pub fn open(
        directory: impl AsRef<Path>,
        cluster_id: u64,
        node_id: NodeId,
        options: FileStorageOptions,
    ) -> Result<FileStorage, StorageError> {
        options.validate().map_err(StorageError::InvalidOptions)?;
        let directory = directory.as_ref().to_path_buf();
        if !directory.is_dir() {
            fs::create_dir_all(&directory).map_err(|error| io_error(&directory, error))?;
            if let Some(parent) = directory.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_directory(parent)?;
            }
        }
        // Before anything is read or repaired: a second writer would corrupt the log.
        let lock = lock_directory(&directory)?;
        remove_snapshot_tmp(&directory)?;
        let (snapshot_slot, snapshot_membership) =
            match read_snapshot(&directory, cluster_id, node_id, &options, false)? {
                Some(snapshot) => (Some(snapshot.slot), snapshot.membership),
                None => (None, None),
            };
        let mut sequences = list_segments(&directory)?;
        for pair in sequences.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(corrupt(
                    &segment_path(&directory, pair[0] + 1),
                    0,
                    format!(
                        "segment missing: the log jumps from segment {} to {}",
                        pair[0], pair[1]
                    ),
                ));
            }
        }
        // A segment is created only after the previous one was synced, so once a torn new
        // segment is removed, the one before it is replayed as strictly as any closed one.
        let mut removed_torn_segment = false;
        if let Some(&last) = sequences.last() {
            let path = segment_path(&directory, last);
            if has_torn_header(&path)? {
                if last != 1 && sequences.len() == 1 {
                    return Err(corrupt(
                        &path,
                        0,
                        "the only segment has an incomplete header and is not the first",
                    ));
                }
                tracing::warn!(path = %path.display(), "removing segment with a torn header");
                fs::remove_file(&path).map_err(|error| io_error(&path, error))?;
                sync_directory(&directory)?;
                sequences.pop();
                removed_torn_segment = true;
            }
        }

        let mut storage_state = State {
            next_batch: 1,
            ..State::default()
        };
        let mut last_length = 0;
        for (position, &sequence) in sequences.iter().enumerate() {
            let is_last = position + 1 == sequences.len() && !removed_torn_segment;
            let scan = scan_segment(
                &directory,
                sequence,
                is_last,
                position > 0,
                cluster_id,
                node_id,
                &options,
                &mut storage_state,
            )?;
            last_length = scan.length;
        }

        let mut syncs = 0;
        let current = match sequences.last() {
            Some(&sequence) => {
                let path = segment_path(&directory, sequence);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|error| io_error(&path, error))?;
                // What recovery found may be in the page cache only (the previous process
                // died before its sync): make it durable before the replica acts on it and
                // before anything is appended after it.
                file.sync_data().map_err(|error| io_error(&path, error))?;
                syncs += 1;
                CurrentSegment {
                    sequence,
                    path,
                    file,
                    length: last_length,
                    unsynced: false,
                    seed: storage_state.segments[&sequence].seed,
                }
            }
            None => {
                let current =
                    create_segment(&directory, 1, storage_state.next_batch, cluster_id, node_id)?;
                storage_state.segments.insert(
                    1,
                    SegmentState {
                        live_entries: 0,
                        seed: current.seed,
                    },
                );
                current
            }
        };
        Ok(FileStorage {
            directory,
            cluster_id,
            node_id,
            cache: EntryCache {
                bytes_max: options.cache_bytes_max,
                ..EntryCache::default()
            },
            options,
            state: storage_state,
            current,
            readers: BTreeMap::new(),
            write_buffer: Vec::new(),
            pending_buffer: Vec::new(),
            failure: None,
            writes: 0,
            syncs,
            last_written: None,
            durable_through: None,
            snapshot_slot,
            snapshot_membership,
            _lock: lock,
        })
    }

    /// The directory holding the segments.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The number of successful `write` calls since open.
    pub fn write_count(&self) -> u64 {
        self.writes
    }

    /// The number of times segment data or a snapshot was synced to stable storage since open
    /// (once by the open itself when segments existed, by writes that asked for it, by segment
    /// rotation, by compaction, and once per saved snapshot).
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.state
            .segments
            .keys()
            .map(|&sequence| segment_path(&self.directory, sequence))
            .collect()
    }

    /// The slot of the snapshot in force, if one was saved.
    pub fn snapshot_slot(&self) -> Option<Slot> {
        self.snapshot_slot
    }

    /// The path of the snapshot file (which exists only once a snapshot was saved).
    pub fn snapshot_path(&self) -> PathBuf {
        self.directory.join(SNAPSHOT_FILE_NAME)
    }

    /// Every slot up to this one has been discarded by [`FileStorage::compact`] (0: none).
    pub fn compacted_through(&self) -> Slot {
        self.state.compacted_through
    }

    /// The hard state last written.
    pub fn hard_state(&self) -> HardState {
        self.state.hard_state
    }

    /// The membership list last written ([`WriteBatch::memberships`]; empty if none was),
    /// without the saved snapshot's membership that [`Storage::recover`] may add.
    pub fn memberships(&self) -> &[MembershipAt] {
        &self.state.memberships
    }

    /// The number of slots stored.
    pub fn len(&self) -> usize {
        self.state.index.len()
    }

    /// True if no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.state.index.is_empty()
    }

    /// Payload bytes (plus per-entry overhead) held by the entry cache; never above
    /// [`FileStorageOptions::cache_bytes_max`].
    pub fn cached_bytes(&self) -> usize {
        self.cache.bytes
    }

    /// Discards every slot up to and including `up_to_slot` (they are covered by a snapshot),
    /// then deletes the oldest segments that no longer hold a live entry. Returns the number of
    /// segments deleted.
    ///
    /// The discard is durable before any file is deleted: a compaction record, the current
    /// hard state and the current membership list (if one was written) are written and synced
    /// into the current segment first, so the newest hard state and membership list never live
    /// in a deleted segment. The current segment is never deleted; a segment holding an entry
    /// above the mark keeps every segment after it too (the sequence has no gaps). Compacting
    /// below the current mark discards nothing more.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the write, a sync or a deletion fails. A crash or failure
    /// midway leaves a consistent log: the oldest segments are deleted first.
    pub fn compact(&mut self, up_to_slot: Slot) -> Result<usize, StorageError> {
        self.check_usable()?;
        let mark = up_to_slot.max(self.state.compacted_through);
        if mark > self.state.compacted_through || self.deletable_prefix(mark) > 0 {
            let hard_state = self.state.hard_state;
            let memberships = self.state.memberships.clone();
            self.write_records(
                Some(&hard_state),
                std::iter::empty(),
                (!memberships.is_empty()).then_some(memberships.as_slice()),
                Some(mark),
                true,
            )?;
        }
        assert_eq!(self.state.compacted_through, mark);
        let deletable = self.deletable_prefix(mark);
        let sequences: Vec<u64> = self
            .state
            .segments
            .keys()
            .take(deletable)
            .copied()
            .collect();
        for sequence in sequences {
            assert!(sequence < self.current.sequence);
            assert_eq!(
                self.state
                    .segments
                    .get(&sequence)
                    .map(|segment| segment.live_entries),
                Some(0)
            );
            let path = segment_path(&self.directory, sequence);
            self.readers.remove(&sequence);
            fs::remove_file(&path).map_err(|error| io_error(&path, error))?;
            self.state.segments.remove(&sequence);
            // One directory sync per deletion keeps the surviving segments contiguous even
            // on a file system that would reorder the removals.
            sync_directory(&self.directory)?;
        }
        Ok(deletable)
    }
    /// How many of the oldest segments hold no entry above `mark` and are not current.
    fn deletable_prefix(&self, mark: Slot) -> usize {
        let lowest_live = match mark.checked_add(1) {
            Some(first_kept) => self
                .state
                .index
                .range(first_kept..)
                .map(|(_, location)| location.segment)
                .min(),
            None => None,
        };
        let limit = lowest_live
            .unwrap_or(self.current.sequence)
            .min(self.current.sequence);
        self.state
            .segments
            .keys()
            .take_while(|&&sequence| sequence < limit)
            .count()
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.failure {
            None => Ok(()),
            Some(reason) => Err(io_error(
                &self.current.path,
                io::Error::other(format!(
                    "an earlier write failed ({reason}); reopen the storage"
                )),
            )),
        }
    }

    /// Stops accepting writes after a failure.
    fn fail(&mut self, error: StorageError) -> StorageError {
        self.failure = Some(error.to_string());
        error
    }

    /// Why the storage cannot write this batch (a command above `command_bytes_max`, an
    /// invalid membership, too long a membership list), if it cannot: recovery would not read
    /// it back.
    fn refusal<'a>(
        &self,
        mut entries: impl Iterator<Item = &'a Entry>,
        memberships: Option<&[MembershipAt]>,
    ) -> Option<String> {
        let entry_refusal = entries.find_map(|entry| match &entry.value {
            Value::Command { data, .. } if data.len() > self.options.command_bytes_max => {
                Some(format!(
                    "entry for slot {} carries {} bytes, above command_bytes_max {}",
                    entry.slot,
                    data.len(),
                    self.options.command_bytes_max
                ))
            }
            Value::Membership(membership) => membership.validate().err().map(|error| {
                format!(
                    "entry for slot {} carries an invalid membership: {}",
                    entry.slot, error.reason
                )
            }),
            _ => None,
        });
        if entry_refusal.is_some() {
            return entry_refusal;
        }
        let memberships = memberships?;
        if memberships.len() > MEMBERSHIPS_MAX {
            return Some(format!(
                "membership list of {} items is above MEMBERSHIPS_MAX {MEMBERSHIPS_MAX}",
                memberships.len()
            ));
        }
        memberships.iter().find_map(|at| {
            at.membership.validate().err().map(|error| {
                format!(
                    "membership list holds an invalid membership (slot {}): {}",
                    at.slot, error.reason
                )
            })
        })
    }

    /// Appends one batch and applies it; the common path of `write` and `compact`.
    fn write_records<'a>(
        &mut self,
        hard_state: Option<&HardState>,
        entries: impl Iterator<Item = &'a Entry> + Clone,
        memberships: Option<&[MembershipAt]>,
        compaction: Option<Slot>,
        must_sync: bool,
    ) -> Result<(), StorageError> {
        self.check_usable()?;
        if let Some(reason) = self.refusal(entries.clone(), memberships) {
            return Err(io_error(
                &self.current.path,
                io::Error::new(io::ErrorKind::InvalidInput, reason),
            ));
        }
        self.rotate_if_full()?;

        let seed = self.current.seed;
        let mut buffer = std::mem::take(&mut self.write_buffer);
        buffer.clear();
        let mut pending = std::mem::take(&mut self.pending_buffer);
        pending.clear(); // reused across writes: it keeps the capacity it grew to
        for entry in entries.clone() {
            let offset = self.current.length + buffer.len() as u64;
            let record_bytes = append_record(&mut buffer, seed, Kind::Entry, |body| {
                encode_entry(body, entry);
            });
            pending.push(Pending::Entry {
                slot: entry.slot,
                location: Location {
                    segment: self.current.sequence,
                    offset,
                    record_bytes,
                },
            });
        }
        if let Some(hard_state) = hard_state {
            append_record(&mut buffer, seed, Kind::HardState, |body| {
                encode_hard_state(body, hard_state);
            });
            pending.push(Pending::HardState(*hard_state));
        }
        if let Some(memberships) = memberships {
            append_record(&mut buffer, seed, Kind::Memberships, |body| {
                encode_memberships(body, memberships);
            });
            pending.push(Pending::Memberships(memberships.to_vec()));
        }
        if let Some(mark) = compaction {
            append_record(&mut buffer, seed, Kind::Compaction, |body| {
                put_u64(body, mark)
            });
            pending.push(Pending::Compaction(mark));
        }
        let batch_number = self.state.next_batch;
        let Some(next_batch) = batch_number.checked_add(1) else {
            return Err(corrupt(
                &self.current.path,
                self.current.length,
                "batch numbers are exhausted",
            ));
        };
        let mut flags = if must_sync { COMMIT_FLAG_SYNCED } else { 0 };
        if self
            .durable_through
            .is_some_and(|durable| durable.checked_add(1) == Some(batch_number))
        {
            flags |= COMMIT_FLAG_PREVIOUS_DURABLE;
        }
        let commit = Commit {
            batch: batch_number,
            records: u32::try_from(pending.len()).expect("a batch has fewer than 2^32 records"),
            flags,
        };
        append_record(&mut buffer, seed, Kind::Commit, |body| {
            put_u64(body, commit.batch);
            body.extend_from_slice(&commit.records.to_le_bytes());
            body.push(commit.flags);
        });

        let written = self.current.file.write_all(&buffer);
        let batch_bytes = buffer.len() as u64;
        // Give a big batch's memory back; keep a small buffer for the next write.
        if buffer.capacity() <= 1 << 20 {
            self.write_buffer = buffer;
        }
        if let Err(error) = written {
            // Best effort to cut the partial batch off; recovery would truncate it anyway.
            let _ = self.current.file.set_len(self.current.length);
            let error = io_error(&self.current.path, error);
            return Err(self.fail(error));
        }
        self.current.length += batch_bytes;
        self.current.unsynced = true;
        self.last_written = Some(batch_number);
        if must_sync {
            self.sync_current()?;
        }

        self.state.next_batch = next_batch;
        if let Some(mark) = compaction {
            self.cache.discard_through(mark);
        }
        self.state.apply(&mut pending);
        if pending.capacity() <= 1 << 16 {
            self.pending_buffer = pending;
        }
        for entry in entries {
            if entry.slot > self.state.compacted_through {
                self.cache.insert(entry.clone());
            }
        }
        self.writes += 1;
        Ok(())
    }

    fn sync_current(&mut self) -> Result<(), StorageError> {
        if let Err(error) = self.current.file.sync_data() {
            let error = io_error(&self.current.path, error);
            return Err(self.fail(error));
        }
        self.current.unsynced = false;
        self.syncs += 1;
        // Every batch this open appended is in a synced segment: closed segments were synced
        // before the next one was created.
        self.durable_through = self.last_written;
        Ok(())
    }

    /// Starts a new segment if the current one is full (and holds at least one batch).
    fn rotate_if_full(&mut self) -> Result<(), StorageError> {
        if self.current.length < self.options.segment_bytes_max
            || self.current.length <= SEGMENT_HEADER_BYTES
        {
            return Ok(());
        }
        // The closed segment must be durable before a later one exists: recovery treats
        // damage in any segment but the last as corruption.
        if self.current.unsynced {
            self.sync_current()?;
        }
        let sequence = self.current.sequence + 1;
        let created = create_segment(
            &self.directory,
            sequence,
            self.state.next_batch,
            self.cluster_id,
            self.node_id,
        );
        match created {
            Ok(current) => {
                self.state.segments.insert(
                    sequence,
                    SegmentState {
                        live_entries: 0,
                        seed: current.seed,
                    },
                );
                self.current = current;
                Ok(())
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Reads one entry record back from its segment.
    fn read_entry(&mut self, location: Location) -> Result<Entry, StorageError> {
        let path = segment_path(&self.directory, location.segment);
        if !self.readers.contains_key(&location.segment) {
            if self.readers.len() >= self.options.open_files_max {
                self.readers.pop_first();
            }
            let file = File::open(&path).map_err(|error| io_error(&path, error))?;
            self.readers.insert(location.segment, file);
        }
        let file = self
            .readers
            .get_mut(&location.segment)
            .expect("opened above");
        let mut record = vec![0; location.record_bytes as usize];
        file.seek(SeekFrom::Start(location.offset))
            .and_then(|_| file.read_exact(&mut record))
            .map_err(|error| io_error(&path, error))?;
        let seed = self.state.segments[&location.segment].seed;
        let (kind, body) = check_record(&record, seed)
            .map_err(|reason| corrupt(&path, location.offset, reason))?;
        if kind != Kind::Entry {
            return Err(corrupt(
                &path,
                location.offset,
                format!("expected an entry record, found {kind:?}"),
            ));
        }
        decode_entry(body).ok_or_else(|| corrupt(&path, location.offset, "ill-formed entry"))
    }

    /// Reads the entries at `locations`, from the cache when it has them.
    fn read_entries(
        &mut self,
        locations: Vec<(Slot, Location)>,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::with_capacity(locations.len());
        for (slot, location) in locations {
            let entry = match self.cache.entries.get(&slot) {
                Some(entry) => entry.clone(),
                None => self.read_entry(location)?,
            };
            if entry.slot != slot {
                let path = segment_path(&self.directory, location.segment);
                return Err(corrupt(
                    &path,
                    location.offset,
                    format!("record holds slot {}, index says {slot}", entry.slot),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl Storage for FileStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        let locations: Vec<(Slot, Location)> = self
            .state
            .index
            .iter()
            .map(|(&slot, &location)| (slot, location))
            .collect();
        // The snapshot's membership is kept in memory: the file need not be read again.
        let snapshot = self.snapshot_slot.map(|slot| Snapshot {
            slot,
            data: Bytes::new(),
            membership: self.snapshot_membership.clone(),
        });
        Ok(Recovered {
            hard_state: self.state.hard_state,
            entries: self.read_entries(locations)?,
            memberships: recovered_memberships(&self.state.memberships, snapshot.as_ref()),
        })
    }

    /// Appends the batch's entries, its hard state, its membership list and a commit record
    /// in one `write`, then syncs the data if `batch.must_sync`. An empty batch writes nothing;
    /// if it asks for a sync, earlier unsynced writes are synced. The batch is left as it was.
    ///
    /// An entry for a slot at or below [`FileStorage::compacted_through`] is written but
    /// ignored: that slot is covered by a snapshot.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the write or the sync failed (the storage then refuses further
    /// writes until reopened), or, with [`io::ErrorKind::InvalidInput`] and nothing written
    /// (the storage stays usable), if an entry's command exceeds
    /// [`FileStorageOptions::command_bytes_max`], a membership (in an entry or in
    /// `batch.memberships`) fails [`Membership::validate`](crate::Membership::validate), or
    /// `batch.memberships` holds more than [`MEMBERSHIPS_MAX`] items.
    fn write(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        self.check_usable()?;
        if batch.is_empty() {
            if batch.must_sync && self.current.unsynced {
                self.sync_current()?;
            }
            self.writes += 1;
            return Ok(());
        }
        // A compaction mark is recorded with the batch, in the same commit; the segments it
        // frees are deleted by the next `compact`.
        let compaction = batch
            .compact_through
            .map(|through| through.max(self.state.compacted_through));
        self.write_records(
            batch.hard_state.as_ref(),
            batch.entries(),
            batch.memberships.as_deref(),
            compaction,
            batch.must_sync,
        )
    }

    /// # Errors
    /// [`StorageError::Unavailable`] if `first` is at or below the compaction mark;
    /// [`StorageError::Io`] or [`StorageError::Corrupt`] if a record cannot be read back
    /// intact.
    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError> {
        if first > last {
            return Ok(Vec::new());
        }
        if first <= self.state.compacted_through {
            let compacted_through = self.state.compacted_through;
            return Err(StorageError::Unavailable {
                slot: first,
                first: compacted_through + 1,
                last: self
                    .state
                    .index
                    .last_key_value()
                    .map_or(compacted_through, |(&slot, _)| slot),
            });
        }
        let locations: Vec<(Slot, Location)> = self
            .state
            .index
            .range(first..=last)
            .map(|(&slot, &location)| (slot, location))
            .collect();
        self.read_entries(locations)
    }

    /// Writes the snapshot atomically (see [Snapshot](self#snapshot)): it is durable, and in
    /// force, when this returns `Ok`. A snapshot at or below the slot of the one in force is
    /// ignored. The log is not compacted.
    ///
    /// # Errors
    /// [`StorageError::Io`] if `snapshot.data` is larger than
    /// [`FileStorageOptions::snapshot_bytes_max`] or `snapshot.membership` fails
    /// [`Membership::validate`](crate::Membership::validate) (nothing is written then, and the
    /// error is [`io::ErrorKind::InvalidInput`]), or if writing,
    /// syncing or renaming the file, or syncing the directory, fails. If the failure came
    /// before the rename, the previous snapshot stays in force. If only the directory sync
    /// failed, the new snapshot is in force in this process (later saves must be newer), but
    /// after a crash either snapshot may be found. The log is unaffected either way.
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        if self
            .snapshot_slot
            .is_some_and(|current| snapshot.slot <= current)
        {
            return Ok(());
        }
        if snapshot.data.len() as u64 > self.options.snapshot_bytes_max {
            return Err(io_error(
                &self.snapshot_path(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "snapshot of {} bytes is above snapshot_bytes_max {}",
                        snapshot.data.len(),
                        self.options.snapshot_bytes_max
                    ),
                ),
            ));
        }
        if let Some(Err(error)) = snapshot
            .membership
            .as_ref()
            .map(|at| at.membership.validate())
        {
            return Err(io_error(
                &self.snapshot_path(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("snapshot carries an invalid membership: {}", error.reason),
                ),
            ));
        }
        self.write_snapshot_file(snapshot)?;
        self.snapshot_slot = Some(snapshot.slot);
        self.snapshot_membership = snapshot.membership.clone();
        sync_directory(&self.directory)
    }

    /// Reads the snapshot file and checks it whole.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] (naming the file and the offset of the bad field) if the
    /// file's magic, format version, a length, the checksum or the membership is bad; [`StorageError::Foreign`] if
    /// it belongs to another cluster or node; [`StorageError::Io`] if it cannot be read.
    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        read_snapshot(
            &self.directory,
            self.cluster_id,
            self.node_id,
            &self.options,
            true,
        )
    }

    /// Delegates to [`FileStorage::compact`].
    ///
    /// # Errors
    /// As [`FileStorage::compact`].
    fn compact(&mut self, through: Slot) -> Result<(), StorageError> {
        FileStorage::compact(self, through).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, ProposalId, Value};
    use bytes::Bytes;

    #[test]
    fn cache_stays_within_its_bound_and_evicts_low_slots() {
        let entry = |slot| Entry {
            slot,
            ballot: Ballot::ZERO,
            value: Value::Command {
                id: ProposalId::default(),
                data: Bytes::from(vec![0; 100]),
            },
        };
        let cost = EntryCache::cost(&entry(1));
        let mut cache = EntryCache {
            bytes_max: cost * 3,
            ..EntryCache::default()
        };
        for slot in 1..=10 {
            cache.insert(entry(slot));
            assert!(cache.bytes <= cache.bytes_max);
        }
        assert_eq!(
            cache.entries.keys().copied().collect::<Vec<_>>(),
            [8, 9, 10]
        );
        cache.discard_through(9);
        assert_eq!(cache.entries.keys().copied().collect::<Vec<_>>(), [10]);
        assert_eq!(cache.bytes, cost);
    }
}
