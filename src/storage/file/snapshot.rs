//! The snapshot file: its names, its header layout, writing it atomically and reading it back
//! checked whole (see [Snapshot](super#snapshot)).
//!
//! Invariants: a snapshot is written to [`SNAPSHOT_TMP_FILE_NAME`], synced, and only then
//! renamed over [`SNAPSHOT_FILE_NAME`], so the file in force is always a whole snapshot; its
//! header is [`SNAPSHOT_HEADER_BYTES`] long, followed by the membership block (empty when the
//! snapshot has no membership) and the data, and its checksum covers every header byte before
//! it, the membership block and the data; a read checks both lengths (together against the
//! file's size, the data length against `snapshot_bytes_max`, the membership length against
//! the largest valid membership) before it allocates, and checks the checksum before the
//! cluster and node ids and before decoding the membership, so damage is reported as
//! corruption, never as a foreign snapshot.
//!
//! Version 2 added the membership block (its length in the header); a version-1 file is
//! refused as corrupt, with a message naming both versions.

use super::format::{encode_membership_at, put_u64, BodyReader, MEMBERSHIP_AT_BYTES_MAX};
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
const SNAPSHOT_FORMAT_VERSION: u16 = 2;
/// Offset of the format version field in the snapshot header.
const SNAPSHOT_VERSION_OFFSET: usize = 8;
/// Offset of the data length field in the snapshot header.
const SNAPSHOT_LENGTH_OFFSET: usize = 8 + 2 + 8 + 8 + 8;
/// Offset of the membership length field in the snapshot header.
const SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET: usize = SNAPSHOT_LENGTH_OFFSET + 8;
/// Offset of the checksum field in the snapshot header.
const SNAPSHOT_CHECKSUM_OFFSET: usize = SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET + 4;
/// Bytes of the snapshot file's header, before the membership block and the data.
pub const SNAPSHOT_HEADER_BYTES: u64 = (SNAPSHOT_CHECKSUM_OFFSET + 4) as u64;

impl FileStorage {
    /// Writes `snapshot` to the temporary file, syncs it and renames it over the snapshot
    /// file; the directory sync is left to the caller. On failure the temporary file is
    /// removed (best effort) and the previous snapshot file is untouched.
    ///
    /// The caller checked `snapshot.membership` with `Membership::validate`, so its block is
    /// at most [`MEMBERSHIP_AT_BYTES_MAX`] bytes long.
    pub(super) fn write_snapshot_file(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let tmp_path = self.directory.join(SNAPSHOT_TMP_FILE_NAME);
        let mut membership = Vec::new();
        if let Some(at) = &snapshot.membership {
            encode_membership_at(&mut membership, at);
        }
        assert!(membership.len() <= MEMBERSHIP_AT_BYTES_MAX);
        let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES as usize);
        header.extend_from_slice(&SNAPSHOT_MAGIC);
        header.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        put_u64(&mut header, self.cluster_id);
        put_u64(&mut header, self.node_id.0);
        put_u64(&mut header, snapshot.slot);
        put_u64(&mut header, snapshot.data.len() as u64);
        header.extend_from_slice(&(membership.len() as u32).to_le_bytes());
        let checksum = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&header), &membership),
            &snapshot.data,
        );
        header.extend_from_slice(&checksum.to_le_bytes());
        debug_assert_eq!(header.len() as u64, SNAPSHOT_HEADER_BYTES);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .and_then(|mut file| {
                file.write_all(&header)?;
                file.write_all(&membership)?;
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
/// empty, its slot and membership are read), so memory stays bounded by a read buffer.
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
    // The magic and the version first, so that a file of another version (whose header may be
    // shorter) is named as such.
    if read >= SNAPSHOT_VERSION_OFFSET && header[..SNAPSHOT_VERSION_OFFSET] != SNAPSHOT_MAGIC {
        return Err(corrupt(&path, 0, "not a synod snapshot (bad magic)"));
    }
    if read >= SNAPSHOT_VERSION_OFFSET + 2 {
        let version = u16::from_le_bytes([
            header[SNAPSHOT_VERSION_OFFSET],
            header[SNAPSHOT_VERSION_OFFSET + 1],
        ]);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(corrupt(
                &path,
                SNAPSHOT_VERSION_OFFSET as u64,
                format!(
                    "unsupported snapshot format version {version} (this build reads only \
                     version {SNAPSHOT_FORMAT_VERSION})"
                ),
            ));
        }
    }
    if read < header.len() {
        return Err(corrupt(
            &path,
            read as u64,
            format!("snapshot file of {file_bytes} bytes is shorter than its header"),
        ));
    }
    let mut reader = BodyReader {
        rest: &header[SNAPSHOT_VERSION_OFFSET + 2..],
    };
    let file_cluster = reader.u64().expect("in the header");
    let file_node = reader.u64().expect("in the header");
    let slot = reader.u64().expect("in the header");
    let data_bytes = reader.u64().expect("in the header");
    let membership_bytes = reader.u32().expect("in the header");
    let expected = reader.u32().expect("in the header");
    if membership_bytes as usize > MEMBERSHIP_AT_BYTES_MAX {
        return Err(corrupt(
            &path,
            SNAPSHOT_MEMBERSHIP_LENGTH_OFFSET as u64,
            format!(
                "snapshot membership length {membership_bytes} is above the largest valid \
                 membership ({MEMBERSHIP_AT_BYTES_MAX} bytes)"
            ),
        ));
    }
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
    let after_header = file_bytes - SNAPSHOT_HEADER_BYTES;
    if data_bytes.checked_add(u64::from(membership_bytes)) != Some(after_header) {
        return Err(corrupt(
            &path,
            SNAPSHOT_LENGTH_OFFSET as u64,
            format!(
                "snapshot length {data_bytes} and membership length {membership_bytes} do not \
                 match the {after_header} bytes after the header"
            ),
        ));
    }
    // Bounded by `MEMBERSHIP_AT_BYTES_MAX` just above.
    let mut membership = vec![0; membership_bytes as usize];
    file.read_exact(&mut membership)
        .map_err(|error| io_error(&path, error))?;
    let mut checksum = crc32c::crc32c_append(
        crc32c::crc32c(&header[..SNAPSHOT_CHECKSUM_OFFSET]),
        &membership,
    );
    // Bounded by `snapshot_bytes_max` above.
    let mut data = Vec::new();
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
    // After the checksum too: the block is as it was written.
    let membership = if membership.is_empty() {
        None
    } else {
        let mut reader = BodyReader { rest: &membership };
        match reader.membership_at() {
            Some(at) if reader.rest.is_empty() => Some(at),
            _ => {
                return Err(corrupt(
                    &path,
                    SNAPSHOT_HEADER_BYTES,
                    "ill-formed or invalid membership in the snapshot",
                ))
            }
        }
    };
    Ok(Some(Snapshot {
        slot,
        data: Bytes::from(data),
        membership,
    }))
}
