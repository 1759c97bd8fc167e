//! The snapshot file: its names, its header layout, writing it atomically and reading it back
//! checked whole (see [Snapshot](super#snapshot)).
//!
//! Invariants: a snapshot is written to [`SNAPSHOT_TMP_FILE_NAME`], synced, and only then
//! renamed over [`SNAPSHOT_FILE_NAME`], so the file in force is always a whole snapshot; its
//! header is [`SNAPSHOT_HEADER_BYTES`] long and its checksum covers every header byte before
//! it and the data; a read checks the length against the file's size and `snapshot_bytes_max`
//! before it allocates, and checks the checksum before the cluster and node ids, so damage is
//! reported as corruption, never as a foreign snapshot.

use super::format::{put_u64, BodyReader};
use super::{corrupt, io_error, read_up_to, sync_directory, FileStorage, FileStorageOptions};
use crate::error::StorageError;
use crate::storage::Snapshot;
use crate::types::NodeId;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// The name of the snapshot file in the storage directory.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot";
/// The name of the file a new snapshot is written to before it is renamed to
/// [`SNAPSHOT_FILE_NAME`].
pub const SNAPSHOT_TMP_FILE_NAME: &str = "snapshot.tmp";
/// The magic at the start of the snapshot file.
const SNAPSHOT_MAGIC: [u8; 8] = *b"SYNODSNP";
/// The snapshot format version this build writes and the only one it reads.
const SNAPSHOT_FORMAT_VERSION: u16 = 1;
/// Offset of the data length field in the snapshot header.
const SNAPSHOT_LENGTH_OFFSET: usize = 8 + 2 + 8 + 8 + 8;
/// Offset of the checksum field in the snapshot header.
const SNAPSHOT_CHECKSUM_OFFSET: usize = SNAPSHOT_LENGTH_OFFSET + 8;
/// Bytes of the snapshot file's header, before the data.
pub const SNAPSHOT_HEADER_BYTES: u64 = (SNAPSHOT_CHECKSUM_OFFSET + 4) as u64;

impl FileStorage {
    /// Writes `snapshot` to the temporary file, syncs it and renames it over the snapshot
    /// file; the directory sync is left to the caller. On failure the temporary file is
    /// removed (best effort) and the previous snapshot file is untouched.
    pub(super) fn write_snapshot_file(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let tmp_path = self.directory.join(SNAPSHOT_TMP_FILE_NAME);
        let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES as usize);
        header.extend_from_slice(&SNAPSHOT_MAGIC);
        header.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        put_u64(&mut header, self.cluster_id);
        put_u64(&mut header, self.node_id.0);
        put_u64(&mut header, snapshot.slot);
        put_u64(&mut header, snapshot.data.len() as u64);
        let checksum = crc32c::crc32c_append(crc32c::crc32c(&header), &snapshot.data);
        header.extend_from_slice(&checksum.to_le_bytes());
        debug_assert_eq!(header.len() as u64, SNAPSHOT_HEADER_BYTES);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .and_then(|mut file| {
                file.write_all(&header)?;
                file.write_all(&snapshot.data)?;
                file.sync_all()
            });
        if let Err(error) = written {
            // Best effort: a leftover is deleted by the next open anyway.
            let _ = fs::remove_file(&tmp_path);
            return Err(io_error(&tmp_path, error));
        }
        self.syncs += 1;
        let path = self.snapshot_path();
        if let Err(error) = fs::rename(&tmp_path, &path) {
            let _ = fs::remove_file(&tmp_path);
            return Err(io_error(&path, error));
        }
        Ok(())
    }
}

/// Deletes a snapshot file that was written but never renamed (a save cut short by a crash),
/// and syncs the directory if there was one.
pub(super) fn remove_snapshot_tmp(directory: &Path) -> Result<(), StorageError> {
    let path = directory.join(SNAPSHOT_TMP_FILE_NAME);
    match fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removing an unfinished snapshot");
            sync_directory(directory)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(&path, error)),
    }
}

/// Reads and checks the snapshot file of `directory`; `None` if there is none. With
/// `keep_data` false the data is checked but not kept (the returned snapshot's data is
/// empty), so memory stays bounded by a read buffer.
pub(super) fn read_snapshot(
    directory: &Path,
    cluster_id: u64,
    node_id: NodeId,
    options: &FileStorageOptions,
    keep_data: bool,
) -> Result<Option<Snapshot>, StorageError> {
    let path = directory.join(SNAPSHOT_FILE_NAME);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(&path, error)),
    };
    let file_bytes = file
        .metadata()
        .map_err(|error| io_error(&path, error))?
        .len();
    let mut header = [0; SNAPSHOT_HEADER_BYTES as usize];
    let read = read_up_to(&mut file, &mut header).map_err(|error| io_error(&path, error))?;
    if read < header.len() {
        return Err(corrupt(
            &path,
            read as u64,
            format!("snapshot file of {file_bytes} bytes is shorter than its header"),
        ));
    }
    if header[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(&path, 0, "not a synod snapshot (bad magic)"));
    }
    let mut reader = BodyReader { rest: &header[8..] };
    let version = reader.u16().expect("in the header");
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(corrupt(
            &path,
            8,
            format!("unsupported snapshot format version {version}"),
        ));
    }
    let file_cluster = reader.u64().expect("in the header");
    let file_node = reader.u64().expect("in the header");
    let slot = reader.u64().expect("in the header");
    let data_bytes = reader.u64().expect("in the header");
    let expected = reader.u32().expect("in the header");
    if data_bytes > options.snapshot_bytes_max {
        return Err(corrupt(
            &path,
            SNAPSHOT_LENGTH_OFFSET as u64,
            format!(
                "snapshot length {data_bytes} is above snapshot_bytes_max {}",
                options.snapshot_bytes_max
            ),
        ));
    }
    if data_bytes != file_bytes - SNAPSHOT_HEADER_BYTES {
        return Err(corrupt(
            &path,
            SNAPSHOT_LENGTH_OFFSET as u64,
            format!(
                "snapshot length {data_bytes} does not match the {} data bytes in the file",
                file_bytes - SNAPSHOT_HEADER_BYTES
            ),
        ));
    }
    // Bounded by `snapshot_bytes_max` just above.
    let mut data = Vec::new();
    let mut checksum = crc32c::crc32c(&header[..SNAPSHOT_CHECKSUM_OFFSET]);
    if keep_data {
        data.resize(data_bytes as usize, 0);
        file.read_exact(&mut data)
            .map_err(|error| io_error(&path, error))?;
        checksum = crc32c::crc32c_append(checksum, &data);
    } else {
        let mut chunk = vec![0; 64 << 10];
        let mut left = data_bytes;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            file.read_exact(&mut chunk[..take])
                .map_err(|error| io_error(&path, error))?;
            checksum = crc32c::crc32c_append(checksum, &chunk[..take]);
            left -= take as u64;
        }
    }
    if checksum != expected {
        return Err(corrupt(
            &path,
            SNAPSHOT_CHECKSUM_OFFSET as u64,
            format!("snapshot checksum mismatch: file says {expected:#010x}, bytes have {checksum:#010x}"),
        ));
    }
    // After the checksum: a damaged id field is corruption, not a foreign snapshot.
    if file_cluster != cluster_id || file_node != node_id.0 {
        return Err(StorageError::Foreign {
            path: path.display().to_string(),
            cluster_id: file_cluster,
            node: NodeId(file_node),
        });
    }
    Ok(Some(Snapshot {
        slot,
        data: Bytes::from(data),
    }))
}
