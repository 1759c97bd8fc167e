//! The record format of segment files: the byte layout constants, the record kinds, record
//! framing and checksums ([`append_record`], [`check_record`]), and the encoding and decoding
//! of record bodies (see the [record layout](super#records)).
//!
//! Nothing here does I/O. Invariants: a record is `length u32 | checksum u32 | kind u8 |
//! body`, little-endian, its checksum covering the length field, the kind and the body; the
//! `*_BYTES` constants are the sizes of that fixed layout and agree with the encoders and
//! decoders here; decoders return `None` (or an error) for ill-formed input and never panic
//! on it. Any change here is a format change and needs a new [`FORMAT_VERSION`].

use crate::types::{Ballot, Entry, HardState, NodeId, ProposalId, Slot, Value};
use bytes::Bytes;

/// The magic at the start of every segment header body.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"SYNODLOG";
/// The segment format version this build writes and the only one it reads.
pub(super) const FORMAT_VERSION: u16 = 1;

/// Bytes before a record's body: length, checksum, kind.
pub(super) const RECORD_HEADER_BYTES: usize = 4 + 4 + 1;
const HEADER_BODY_BYTES: usize = 8 + 2 + 8 + 8 + 8 + 8;
/// Bytes of the header record at the start of every segment.
pub const SEGMENT_HEADER_BYTES: u64 = (RECORD_HEADER_BYTES + HEADER_BODY_BYTES) as u64;
const HARD_STATE_BODY_BYTES: usize = 4 * 8;
pub(super) const COMPACTION_BODY_BYTES: usize = 8;
pub(super) const COMMIT_BODY_BYTES: usize = 8 + 4 + 1;
pub(crate) const COMMIT_RECORD_BYTES: usize = RECORD_HEADER_BYTES + COMMIT_BODY_BYTES;
/// Entry body bytes before the value's own fields: slot, ballot round, ballot node, tag.
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 8 + 1;
/// Entry body bytes of a command before its data: the fixed part and the proposal id.
pub(super) const ENTRY_COMMAND_FIXED_BYTES: usize = ENTRY_FIXED_BYTES + 3 * 8;
const VALUE_TAG_NOOP: u8 = 0;
const VALUE_TAG_COMMAND: u8 = 1;
pub(super) const COMMIT_FLAG_SYNCED: u8 = 1;

/// The kinds of record in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    Header = 1,
    Entry = 2,
    HardState = 3,
    Compaction = 4,
    Commit = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Header),
            2 => Some(Kind::Entry),
            3 => Some(Kind::HardState),
            4 => Some(Kind::Compaction),
            5 => Some(Kind::Commit),
            _ => None,
        }
    }
}

/// Appends one record to `buffer`: a header placeholder, the body `write_body` appends, then
/// the length and checksum. Returns the record's length.
pub(super) fn append_record(
    buffer: &mut Vec<u8>,
    kind: Kind,
    write_body: impl FnOnce(&mut Vec<u8>),
) -> u32 {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 8]);
    buffer.push(kind as u8);
    write_body(buffer);
    let body_bytes =
        u32::try_from(buffer.len() - start - RECORD_HEADER_BYTES).expect("body fits u32");
    buffer[start..start + 4].copy_from_slice(&body_bytes.to_le_bytes());
    let checksum = record_checksum(&buffer[start..start + 4], &buffer[start + 8..]);
    buffer[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    u32::try_from(buffer.len() - start).expect("record fits u32")
}

/// The checksum of a record: over its length field, then its kind and body.
fn record_checksum(length: &[u8], kind_and_body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(length), kind_and_body)
}

pub(super) fn put_u64(buffer: &mut Vec<u8>, value: u64) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

pub(super) fn encode_entry(buffer: &mut Vec<u8>, entry: &Entry) {
    put_u64(buffer, entry.slot);
    put_u64(buffer, entry.ballot.round);
    put_u64(buffer, entry.ballot.node.0);
    match &entry.value {
        Value::Noop => buffer.push(VALUE_TAG_NOOP),
        Value::Command { id, data } => {
            buffer.push(VALUE_TAG_COMMAND);
            put_u64(buffer, id.node.0);
            put_u64(buffer, id.incarnation);
            put_u64(buffer, id.sequence);
            buffer.extend_from_slice(data);
        }
    }
}

pub(super) fn encode_hard_state(buffer: &mut Vec<u8>, hard_state: &HardState) {
    put_u64(buffer, hard_state.promised.round);
    put_u64(buffer, hard_state.promised.node.0);
    put_u64(buffer, hard_state.chosen);
    put_u64(buffer, hard_state.incarnation);
}

/// Reads little-endian integers off the front of a record body.
pub(super) struct BodyReader<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    pub(super) fn u64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_le_bytes(*bytes))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        let (bytes, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(u32::from_le_bytes(*bytes))
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        let (bytes, rest) = self.rest.split_first_chunk::<2>()?;
        self.rest = rest;
        Some(u16::from_le_bytes(*bytes))
    }

    fn u8(&mut self) -> Option<u8> {
        let (byte, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*byte)
    }
}

/// Decodes an entry body; `None` if it is ill-formed.
pub(super) fn decode_entry(body: &[u8]) -> Option<Entry> {
    let mut reader = BodyReader { rest: body };
    let slot = reader.u64()?;
    let ballot = Ballot::new(reader.u64()?, NodeId(reader.u64()?));
    let value = match reader.u8()? {
        VALUE_TAG_NOOP if reader.rest.is_empty() => Value::Noop,
        VALUE_TAG_COMMAND => {
            let id = ProposalId {
                node: NodeId(reader.u64()?),
                incarnation: reader.u64()?,
                sequence: reader.u64()?,
            };
            Value::Command {
                id,
                data: Bytes::copy_from_slice(reader.rest),
            }
        }
        _ => return None,
    };
    Some(Entry {
        slot,
        ballot,
        value,
    })
}

/// Checks an entry body's structure without copying its data; returns its slot.
pub(super) fn entry_slot(body: &[u8]) -> Option<Slot> {
    let tag = *body.get(ENTRY_FIXED_BYTES - 1)?;
    let well_formed = match tag {
        VALUE_TAG_NOOP => body.len() == ENTRY_FIXED_BYTES,
        VALUE_TAG_COMMAND => body.len() >= ENTRY_COMMAND_FIXED_BYTES,
        _ => false,
    };
    well_formed.then(|| BodyReader { rest: body }.u64())?
}

pub(super) fn decode_hard_state(body: &[u8]) -> Option<HardState> {
    if body.len() != HARD_STATE_BODY_BYTES {
        return None;
    }
    let mut reader = BodyReader { rest: body };
    Some(HardState {
        promised: Ballot::new(reader.u64()?, NodeId(reader.u64()?)),
        chosen: reader.u64()?,
        incarnation: reader.u64()?,
    })
}

/// The body of a commit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Commit {
    pub(super) batch: u64,
    pub(super) records: u32,
    pub(super) flags: u8,
}

pub(super) fn decode_commit(body: &[u8]) -> Option<Commit> {
    if body.len() != COMMIT_BODY_BYTES {
        return None;
    }
    let mut reader = BodyReader { rest: body };
    Some(Commit {
        batch: reader.u64()?,
        records: reader.u32()?,
        flags: reader.u8()?,
    })
}

/// The body of a segment header record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    pub(super) magic: [u8; 8],
    pub(super) version: u16,
    pub(super) cluster_id: u64,
    pub(super) node_id: u64,
    pub(super) sequence: u64,
    pub(super) first_batch: u64,
}

pub(super) fn encode_segment_header(buffer: &mut Vec<u8>, header: &SegmentHeader) {
    buffer.extend_from_slice(&header.magic);
    buffer.extend_from_slice(&header.version.to_le_bytes());
    put_u64(buffer, header.cluster_id);
    put_u64(buffer, header.node_id);
    put_u64(buffer, header.sequence);
    put_u64(buffer, header.first_batch);
}

pub(super) fn decode_segment_header(body: &[u8]) -> Option<SegmentHeader> {
    if body.len() != HEADER_BODY_BYTES {
        return None;
    }
    let (magic, rest) = body.split_first_chunk::<8>()?;
    let mut reader = BodyReader { rest };
    Some(SegmentHeader {
        magic: *magic,
        version: reader.u16()?,
        cluster_id: reader.u64()?,
        node_id: reader.u64()?,
        sequence: reader.u64()?,
        first_batch: reader.u64()?,
    })
}

/// Checks a record's header and checksum given its whole bytes; returns its kind and body.
pub(super) fn check_record(record: &[u8]) -> Result<(Kind, &[u8]), String> {
    let Some((header, body)) = record.split_first_chunk::<RECORD_HEADER_BYTES>() else {
        return Err("record shorter than its header".into());
    };
    let body_bytes = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if body_bytes != body.len() {
        return Err(format!(
            "record length {body_bytes} does not match its {} body bytes",
            body.len()
        ));
    }
    let expected = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let actual = record_checksum(&header[0..4], &record[8..]);
    if expected != actual {
        return Err(format!(
            "checksum mismatch: record says {expected:#010x}, bytes have {actual:#010x}"
        ));
    }
    match Kind::from_byte(header[8]) {
        Some(kind) => Ok((kind, body)),
        None => Err(format!("unknown record kind {}", header[8])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_encode_and_decode() {
        for value in [
            Value::Noop,
            Value::Command {
                id: ProposalId {
                    node: NodeId(1),
                    incarnation: 2,
                    sequence: 3,
                },
                data: Bytes::from_static(b"abc"),
            },
        ] {
            let entry = Entry {
                slot: 9,
                ballot: Ballot::new(4, NodeId(5)),
                value,
            };
            let mut body = Vec::new();
            encode_entry(&mut body, &entry);
            assert_eq!(entry_slot(&body), Some(9));
            assert_eq!(decode_entry(&body), Some(entry));
        }
        assert_eq!(entry_slot(&[0; 10]), None);
        assert_eq!(decode_entry(&[0; ENTRY_FIXED_BYTES + 1]), None);
    }
}
