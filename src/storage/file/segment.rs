//! Segment files: their names, listing them, creating a new one, and replaying them at
//! recovery ([`scan_segment`]), which tells a torn tail (truncated) from corruption (refused).
//!
//! Invariants (see the [recovery rules](super#recovery)): a segment file is named by its
//! sequence number, zero-padded to [`SEGMENT_NAME_DIGITS`] digits, with the extension `seg`,
//! and other files are ignored; a segment is created with its header written and synced, and
//! the directory synced, before it is used; a replay applies a batch only at the commit record
//! that closes it, so a batch is recovered whole or not at all; damage is truncated away only
//! in the last segment, only back to the end of its last intact batch, and never when intact
//! commit records after it prove the damaged batch was synced ([`find_durable_proof`]). A
//! segment header of another format version than [`FORMAT_VERSION`] is refused.

use super::format::{
    append_record, check_record, checksum_seed, decode_commit, decode_hard_state,
    decode_memberships, decode_segment_header, encode_segment_header, entry_slot, new_salt,
    record_checksum, Kind, SegmentHeader, COMMIT_BODY_BYTES, COMMIT_FLAG_PREVIOUS_DURABLE,
    COMMIT_FLAG_SYNCED, COMMIT_RECORD_BYTES, COMPACTION_BODY_BYTES, FORMAT_VERSION, HEADER_SEED,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC,
};
use super::{
    corrupt, io_error, read_up_to, sync_directory, CurrentSegment, FileStorageOptions, Location,
    Pending, SegmentState, State,
};
use crate::error::StorageError;
use crate::types::NodeId;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The file name extension of segment files.
const SEGMENT_EXTENSION: &str = "seg";
/// Digits in a segment file name: a zero-padded `u64`.
const SEGMENT_NAME_DIGITS: usize = 20;

pub(super) fn segment_path(directory: &Path, sequence: u64) -> PathBuf {
    directory.join(format!(
        "{sequence:0width$}.{SEGMENT_EXTENSION}",
        width = SEGMENT_NAME_DIGITS
    ))
}

/// The sequence number of a segment file name, or `None` for any other file.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The outcome of replaying one segment.
pub(super) struct SegmentScan {
    /// Bytes of the segment that hold intact, committed data (the file is truncated to it).
    pub(super) length: u64,
}

/// Damage found while replaying a segment: where the first bad byte is, and why.
struct Damage {
    offset: u64,
    reason: String,
    /// Where a commit record after the damage could begin: past every record that passed its
    /// checksum, and past a torn record's declared extent. (A record inside the application's
    /// bytes cannot pass: checksums are keyed with the segment's salt.)
    scan_from: u64,
}

/// The sequence numbers of the segment files in `directory`, ascending.
pub(super) fn list_segments(directory: &Path) -> Result<Vec<u64>, StorageError> {
    let mut sequences = Vec::new();
    let listing = fs::read_dir(directory).map_err(|error| io_error(directory, error))?;
    for item in listing {
        let item = item.map_err(|error| io_error(directory, error))?;
        if let Some(sequence) = item.file_name().to_str().and_then(parse_segment_name) {
            sequences.push(sequence);
        }
    }
    sequences.sort_unstable();
    Ok(sequences)
}

/// True if the segment's header was never completely written: the file is shorter than a
/// header, or exactly as long as one and all zero (space allocated, data never written).
pub(super) fn has_torn_header(path: &Path) -> Result<bool, StorageError> {
    let mut file = File::open(path).map_err(|error| io_error(path, error))?;
    let length = file
        .metadata()
        .map_err(|error| io_error(path, error))?
        .len();
    if length > SEGMENT_HEADER_BYTES {
        return Ok(false);
    }
    if length < SEGMENT_HEADER_BYTES {
        return Ok(true);
    }
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    file.read_exact(&mut header)
        .map_err(|error| io_error(path, error))?;
    Ok(header.iter().all(|&byte| byte == 0))
}

/// Creates segment `sequence`, writes and syncs its header, and syncs the directory.
pub(super) fn create_segment(
    directory: &Path,
    sequence: u64,
    first_batch: u64,
    cluster_id: u64,
    node_id: NodeId,
) -> Result<CurrentSegment, StorageError> {
    let path = segment_path(directory, sequence);
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|error| io_error(&path, error))?;
    let header = SegmentHeader {
        magic: SEGMENT_MAGIC,
        version: FORMAT_VERSION,
        cluster_id,
        node_id: node_id.0,
        sequence,
        first_batch,
        salt: new_salt(cluster_id, node_id.0, sequence),
    };
    let mut buffer = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize);
    append_record(&mut buffer, HEADER_SEED, Kind::Header, |body| {
        encode_segment_header(body, &header);
    });
    assert_eq!(buffer.len() as u64, SEGMENT_HEADER_BYTES);
    file.write_all(&buffer)
        .and_then(|()| file.sync_data())
        .map_err(|error| io_error(&path, error))?;
    sync_directory(directory)?;
    Ok(CurrentSegment {
        sequence,
        path,
        file,
        length: SEGMENT_HEADER_BYTES,
        unsynced: false,
        seed: checksum_seed(header.salt),
    })
}

/// Replays segment `sequence` into `state`. In the last segment a torn tail is truncated; in
/// any other, damage is an error.
#[allow(clippy::too_many_arguments)]
pub(super) fn scan_segment(
    directory: &Path,
    sequence: u64,
    is_last: bool,
    has_previous: bool,
    cluster_id: u64,
    node_id: NodeId,
    options: &FileStorageOptions,
    state: &mut State,
) -> Result<SegmentScan, StorageError> {
    let path = segment_path(directory, sequence);
    let file = OpenOptions::new()
        .read(true)
        .write(is_last)
        .open(&path)
        .map_err(|error| io_error(&path, error))?;
    let file_bytes = file
        .metadata()
        .map_err(|error| io_error(&path, error))?
        .len();
    let mut reader = BufReader::with_capacity(64 << 10, file);

    // The header.
    let mut header_bytes = [0; SEGMENT_HEADER_BYTES as usize];
    let read =
        read_up_to(&mut reader, &mut header_bytes).map_err(|error| io_error(&path, error))?;
    if read < header_bytes.len() {
        return Err(corrupt(&path, 0, "segment shorter than its header"));
    }
    let header = check_record(&header_bytes, HEADER_SEED)
        .map_err(|reason| corrupt(&path, 0, format!("bad segment header: {reason}")))
        .and_then(|(kind, body)| match (kind, decode_segment_header(body)) {
            (Kind::Header, Some(header)) => Ok(header),
            _ => Err(corrupt(&path, 0, "first record is not a segment header")),
        })?;
    if header.magic != SEGMENT_MAGIC {
        return Err(corrupt(&path, 0, "not a synod segment (bad magic)"));
    }
    if header.version != FORMAT_VERSION {
        return Err(corrupt(
            &path,
            0,
            format!(
                "unsupported segment format version {} (this build reads only version \
                 {FORMAT_VERSION})",
                header.version
            ),
        ));
    }
    if header.cluster_id != cluster_id || header.node_id != node_id.0 {
        return Err(StorageError::Foreign {
            path: path.display().to_string(),
            cluster_id: header.cluster_id,
            node: NodeId(header.node_id),
        });
    }
    if header.sequence != sequence {
        return Err(corrupt(
            &path,
            0,
            format!("header says segment {}", header.sequence),
        ));
    }
    if has_previous && header.first_batch != state.next_batch {
        return Err(corrupt(
            &path,
            0,
            format!(
                "segment starts at batch {}, but the previous one ends before batch {}",
                header.first_batch, state.next_batch
            ),
        ));
    }
    if header.first_batch == u64::MAX {
        return Err(corrupt(
            &path,
            0,
            "segment starts at the last batch number (no number left for the next batch)",
        ));
    }
    state.next_batch = header.first_batch;
    let seed = checksum_seed(header.salt);
    state.segments.insert(
        sequence,
        SegmentState {
            live_entries: 0,
            seed,
        },
    );

    // The records. Each turn consumes one whole record, so the loop is bounded by the file.
    let body_bytes_max = options.record_body_bytes_max();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut committed_end = offset;
    let mut pending: Vec<Pending> = Vec::new();
    let mut record = Vec::new();
    let damage = loop {
        if offset == file_bytes {
            if pending.is_empty() {
                break None;
            }
            break Some(Damage {
                offset: committed_end,
                reason: format!(
                    "{} records without their commit record (a torn batch)",
                    pending.len()
                ),
                // Every record up to the end is intact: nothing can follow.
                scan_from: file_bytes,
            });
        }
        if file_bytes - offset < RECORD_HEADER_BYTES as u64 {
            break Some(Damage {
                offset,
                reason: "incomplete record header at the end of the file".into(),
                scan_from: file_bytes,
            });
        }
        record.resize(RECORD_HEADER_BYTES, 0);
        reader
            .read_exact(&mut record)
            .map_err(|error| io_error(&path, error))?;
        let body_bytes = u32::from_le_bytes(record[0..4].try_into().expect("4 bytes")) as usize;
        if body_bytes > body_bytes_max {
            // Written under a higher `command_bytes_max`? A record that lies whole in the file
            // and whose checksum holds (read in bounded chunks) is acknowledged data: refuse
            // to open rather than truncate it.
            let record_bytes = (RECORD_HEADER_BYTES + body_bytes) as u64;
            if record_bytes <= file_bytes - offset
                && intact_oversized(&mut reader, seed, &record, body_bytes)
                    .map_err(|error| io_error(&path, error))?
            {
                return Err(corrupt(
                    &path,
                    offset,
                    format!(
                        "an intact record of {body_bytes} bytes is above this storage's limit \
                         of {body_bytes_max}: it was written with a higher command_bytes_max; \
                         open with that limit"
                    ),
                ));
            }
            break Some(Damage {
                offset,
                reason: format!("record length {body_bytes} is above the limit {body_bytes_max}"),
                scan_from: offset + 1,
            });
        }
        let record_bytes = (RECORD_HEADER_BYTES + body_bytes) as u64;
        if record_bytes > file_bytes - offset {
            break Some(Damage {
                offset,
                reason: format!("record of {record_bytes} bytes runs past the end of the file"),
                // The record being written when the file ended, or one whose length was
                // damaged: which, only a later commit can tell.
                scan_from: offset + 1,
            });
        }
        record.resize(RECORD_HEADER_BYTES + body_bytes, 0);
        reader
            .read_exact(&mut record[RECORD_HEADER_BYTES..])
            .map_err(|error| io_error(&path, error))?;
        let (kind, body) = match check_record(&record, seed) {
            Ok(checked) => checked,
            // Its length may be what is damaged: look for a later commit from the next byte.
            Err(reason) => {
                break Some(Damage {
                    offset,
                    reason,
                    scan_from: offset + 1,
                })
            }
        };
        let location = Location {
            segment: sequence,
            offset,
            record_bytes: u32::try_from(record_bytes).expect("bounded by body_bytes_max"),
        };
        let parsed = match kind {
            Kind::Entry => entry_slot(body).map(|slot| Pending::Entry { slot, location }),
            Kind::HardState => decode_hard_state(body).map(Pending::HardState),
            Kind::Memberships => decode_memberships(body).map(Pending::Memberships),
            Kind::Compaction => (body.len() == COMPACTION_BODY_BYTES).then(|| {
                Pending::Compaction(u64::from_le_bytes(body.try_into().expect("8 bytes")))
            }),
            Kind::Commit => {
                let Some(commit) = decode_commit(body) else {
                    break Some(Damage {
                        offset,
                        reason: "ill-formed commit record".into(),
                        scan_from: offset + record_bytes,
                    });
                };
                if commit.batch != state.next_batch || commit.records as usize != pending.len() {
                    break Some(Damage {
                        offset,
                        scan_from: offset + record_bytes,
                        reason: format!(
                            "commit of batch {} with {} records, expected batch {} with {}",
                            commit.batch,
                            commit.records,
                            state.next_batch,
                            pending.len()
                        ),
                    });
                }
                let Some(next_batch) = state.next_batch.checked_add(1) else {
                    break Some(Damage {
                        offset,
                        reason: "a commit of the last batch number".into(),
                        scan_from: offset + record_bytes,
                    });
                };
                state.apply(&mut pending);
                state.next_batch = next_batch;
                offset += record_bytes;
                committed_end = offset;
                continue;
            }
            Kind::Header => None,
        };
        match parsed {
            Some(parsed) => pending.push(parsed),
            None => {
                break Some(Damage {
                    offset,
                    reason: format!("ill-formed {kind:?} record"),
                    scan_from: offset + record_bytes,
                })
            }
        }
        offset += record_bytes;
    };
    // Keep memory bounded: the record buffer may have grown to a large entry.
    drop(record);

    let Some(damage) = damage else {
        return Ok(SegmentScan { length: file_bytes });
    };
    if !is_last {
        return Err(corrupt(&path, damage.offset, damage.reason));
    }
    let mut file = reader.into_inner();
    if let Some((commit_offset, batch)) = find_durable_proof(
        &mut file,
        seed,
        damage.scan_from,
        file_bytes,
        state.next_batch,
    )
    .map_err(|error| io_error(&path, error))?
    {
        return Err(corrupt(
            &path,
            damage.offset,
            format!(
                "{}; the commit of batch {batch} at offset {commit_offset} shows that batch {} \
                 was synced before the damage, so this is not a torn tail",
                damage.reason, state.next_batch
            ),
        ));
    }
    tracing::warn!(
        path = %path.display(),
        offset = damage.offset,
        truncated_to = committed_end,
        reason = %damage.reason,
        "truncating the torn tail of the log"
    );
    file.set_len(committed_end)
        .and_then(|()| file.sync_all())
        .map_err(|error| io_error(&path, error))?;
    Ok(SegmentScan {
        length: committed_end,
    })
}

/// True if the record whose header is `header` (its body of `body_bytes` following in
/// `reader`) has a good checksum, read in chunks of at most 1 MiB.
fn intact_oversized(
    reader: &mut impl Read,
    seed: u32,
    header: &[u8],
    body_bytes: usize,
) -> io::Result<bool> {
    const CHUNK_BYTES: usize = 1 << 20;
    let expected = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let mut checksum = record_checksum(seed, &header[0..4], &header[8..9]);
    let mut chunk = vec![0u8; CHUNK_BYTES.min(body_bytes)];
    let mut left = body_bytes;
    while left > 0 {
        let take = left.min(CHUNK_BYTES);
        reader.read_exact(&mut chunk[..take])?;
        checksum = crc32c::crc32c_append(checksum, &chunk[..take]);
        left -= take;
    }
    Ok(checksum == expected)
}

/// Looks in `file[from..file_bytes]`, at every byte offset, for an intact commit record (keyed
/// with `seed`, so the application's bytes cannot pass for one) that proves the batch
/// `damaged_batch` was durable, so that its damage is not a torn write: a commit of a later
/// batch that was synced (its sync covered the damaged batch), or a commit of a later batch
/// that says the batch before it was synced by the same open of the storage before it was
/// appended ([`COMMIT_FLAG_PREVIOUS_DURABLE`]). Returns its offset and batch number.
fn find_durable_proof(
    file: &mut File,
    seed: u32,
    from: u64,
    file_bytes: u64,
    damaged_batch: u64,
) -> io::Result<Option<(u64, u64)>> {
    const CHUNK_BYTES: usize = 1 << 20;
    let mut chunk = Vec::new();
    let mut chunk_start = from;
    // Each turn advances `chunk_start` by at least one byte until a record no longer fits.
    while file_bytes.saturating_sub(chunk_start) >= COMMIT_RECORD_BYTES as u64 {
        let chunk_bytes = (file_bytes - chunk_start).min(CHUNK_BYTES as u64) as usize;
        chunk.resize(chunk_bytes, 0);
        file.seek(SeekFrom::Start(chunk_start))?;
        file.read_exact(&mut chunk)?;
        for position in 0..=(chunk_bytes - COMMIT_RECORD_BYTES) {
            let candidate = &chunk[position..position + COMMIT_RECORD_BYTES];
            if candidate[0..4] != (COMMIT_BODY_BYTES as u32).to_le_bytes()
                || candidate[8] != Kind::Commit as u8
            {
                continue;
            }
            let Ok((_, body)) = check_record(candidate, seed) else {
                continue;
            };
            let commit = decode_commit(body).expect("length checked");
            let proves = commit.flags & (COMMIT_FLAG_SYNCED | COMMIT_FLAG_PREVIOUS_DURABLE) != 0;
            if commit.batch > damaged_batch && proves {
                return Ok(Some((chunk_start + position as u64, commit.batch)));
            }
        }
        // The next chunk starts where a record could still begin unseen.
        chunk_start += (chunk_bytes - COMMIT_RECORD_BYTES + 1) as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_other_files_are_ignored() {
        let path = segment_path(Path::new("/x"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
    }
}
