//! The record format of segment files: the byte layout constants, the record kinds, record
//! framing and checksums ([`append_record`], [`check_record`]), and the encoding and decoding
//! of record bodies (see the [record layout](super#records)).
//!
//! Nothing here does I/O. Invariants: a record is `length u32 | checksum u32 | kind u8 |
//! body`, little-endian, its checksum covering the length field, the kind and the body,
//! keyed with the segment's salt (every record but the segment header, which carries the
//! salt and is checksummed with [`HEADER_SEED`]); the
//! `*_BYTES` constants are the sizes of that fixed layout and agree with the encoders and
//! decoders here; decoders return `None` (or an error) for ill-formed input and never panic
//! on it; a decoded membership always passes [`Membership::validate`], and a count is checked
//! against the bytes left before anything is allocated for it. Any change here is a format
//! change and needs a new [`FORMAT_VERSION`].
//!
//! Version 2 added membership entries (value tag 2) and the membership list record
//! ([`Kind::Memberships`]). Version 3 added the segment salt: a random `u64` in the header
//! that keys the checksum of every later record of the segment, so that bytes the
//! application wrote (a command's data) cannot pass for a record, a commit record in
//! particular, when recovery looks for one at every byte offset past damage.

use crate::config::MEMBERS_MAX;
use crate::types::{
    Ballot, Entry, HardState, Membership, MembershipAt, NodeId, ProposalId, Slot, Value,
};
use bytes::Bytes;

/// The magic at the start of every segment header body.
pub(super) const SEGMENT_MAGIC: [u8; 8] = *b"SYNODLOG";
/// The segment format version this build writes and the only one it reads.
pub(super) const FORMAT_VERSION: u16 = 3;

/// Bytes before a record's body: length, checksum, kind.
pub(super) const RECORD_HEADER_BYTES: usize = 4 + 4 + 1;
const HEADER_BODY_BYTES: usize = 8 + 2 + 8 + 8 + 8 + 8 + 8;
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
const VALUE_TAG_MEMBERSHIP: u8 = 2;
/// Bytes of the largest valid membership encoding: two counts and [`MEMBERS_MAX`] ids.
pub(super) const MEMBERSHIP_BYTES_MAX: usize = 4 + 4 + 8 * MEMBERS_MAX;
/// Bytes of the largest valid membership-at encoding: a slot and a membership.
pub(super) const MEMBERSHIP_AT_BYTES_MAX: usize = 8 + MEMBERSHIP_BYTES_MAX;
/// The most memberships a membership list record may hold (a storage limit: a replica keeps
/// only the memberships its log still needs, a handful).
pub const MEMBERSHIPS_MAX: usize = 4096;
/// Bytes of the largest valid membership list record body.
pub(super) const MEMBERSHIPS_BODY_BYTES_MAX: usize = 4 + MEMBERSHIPS_MAX * MEMBERSHIP_AT_BYTES_MAX;
/// Bytes of the largest valid membership entry body.
pub(super) const ENTRY_MEMBERSHIP_BYTES_MAX: usize = ENTRY_FIXED_BYTES + MEMBERSHIP_BYTES_MAX;
pub(super) const COMMIT_FLAG_SYNCED: u8 = 1;
/// Commit flag: the batch before this one was synced, by the same open of the storage,
/// before this batch was appended (so it was durable).
pub(super) const COMMIT_FLAG_PREVIOUS_DURABLE: u8 = 2;

/// The kinds of record in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    Header = 1,
    Entry = 2,
    HardState = 3,
    Compaction = 4,
    Commit = 5,
    Memberships = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Header),
            2 => Some(Kind::Entry),
            3 => Some(Kind::HardState),
            4 => Some(Kind::Compaction),
            5 => Some(Kind::Commit),
            6 => Some(Kind::Memberships),
            _ => None,
        }
    }
}

/// The checksum seed of the segment header record (which is read before the salt is known).
pub(super) const HEADER_SEED: u32 = 0;

/// The checksum seed of a segment's records after its header: CRC32C of its salt.
pub(super) fn checksum_seed(salt: u64) -> u32 {
    crc32c::crc32c(&salt.to_le_bytes())
}

/// A fresh segment salt: unpredictable to the application (from the standard library's
/// randomly keyed hasher), mixed with the segment's identity and the time.
pub(super) fn new_salt(cluster_id: u64, node_id: u64, sequence: u64) -> u64 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((cluster_id, node_id, sequence, nanos))
}

/// Appends one record to `buffer`: a header placeholder, the body `write_body` appends, then
/// the length and the checksum keyed with `seed`. Returns the record's length.
pub(super) fn append_record(
    buffer: &mut Vec<u8>,
    seed: u32,
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
    let checksum = record_checksum(seed, &buffer[start..start + 4], &buffer[start + 8..]);
    buffer[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    u32::try_from(buffer.len() - start).expect("record fits u32")
}

/// The checksum of a record: CRC32C continued from `seed` over its length field, then its
/// kind and body.
pub(super) fn record_checksum(seed: u32, length: &[u8], kind_and_body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(seed, length), kind_and_body)
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
        Value::Membership(membership) => {
            buffer.push(VALUE_TAG_MEMBERSHIP);
            encode_membership(buffer, membership);
        }
    }
}

/// Appends a membership: voter count u32, voter ids u64 each, learner count u32, learner ids
/// u64 each. The caller checked it with [`Membership::validate`], so the counts fit a `u32`.
pub(super) fn encode_membership(buffer: &mut Vec<u8>, membership: &Membership) {
    for list in [&membership.voters, &membership.learners] {
        let count = u32::try_from(list.len()).expect("a valid membership has few members");
        buffer.extend_from_slice(&count.to_le_bytes());
        for id in list {
            put_u64(buffer, id.0);
        }
    }
}

/// Appends a membership list record body: count u32, then per item its slot u64 and its
/// membership. The caller checked the count against [`MEMBERSHIPS_MAX`].
pub(super) fn encode_memberships(buffer: &mut Vec<u8>, memberships: &[MembershipAt]) {
    let count = u32::try_from(memberships.len()).expect("at most MEMBERSHIPS_MAX memberships");
    buffer.extend_from_slice(&count.to_le_bytes());
    for at in memberships {
        encode_membership_at(buffer, at);
    }
}

/// Appends a membership and its slot: slot u64, then the membership.
pub(super) fn encode_membership_at(buffer: &mut Vec<u8>, at: &MembershipAt) {
    put_u64(buffer, at.slot);
    encode_membership(buffer, &at.membership);
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

    /// A list of node ids: count u32, then the ids. `None` if the count claims more ids than
    /// the bytes left hold (checked before allocating) or more than [`MEMBERS_MAX`].
    fn node_ids(&mut self) -> Option<Vec<NodeId>> {
        let count = self.u32()? as usize;
        if count > MEMBERS_MAX || count > self.rest.len() / 8 {
            return None;
        }
        (0..count).map(|_| self.u64().map(NodeId)).collect()
    }

    /// A membership (see [`encode_membership`]); `None` if it is ill-formed or fails
    /// [`Membership::validate`].
    pub(super) fn membership(&mut self) -> Option<Membership> {
        let membership = Membership {
            voters: self.node_ids()?,
            learners: self.node_ids()?,
        };
        membership.validate().is_ok().then_some(membership)
    }

    /// A membership and its slot (see [`encode_membership_at`]).
    pub(super) fn membership_at(&mut self) -> Option<MembershipAt> {
        Some(MembershipAt {
            slot: self.u64()?,
            membership: self.membership()?,
        })
    }
}

/// Decodes a whole membership encoding; `None` if it is ill-formed, invalid, or followed by
/// extra bytes.
fn decode_membership(body: &[u8]) -> Option<Membership> {
    let mut reader = BodyReader { rest: body };
    let membership = reader.membership()?;
    reader.rest.is_empty().then_some(membership)
}

/// Decodes a membership list record body; `None` if it is ill-formed (a count that the body
/// cannot hold, extra bytes, an invalid membership).
pub(super) fn decode_memberships(body: &[u8]) -> Option<Vec<MembershipAt>> {
    /// The fewest bytes one membership-at takes: a slot, one voter, two counts.
    const MEMBERSHIP_AT_BYTES_MIN: usize = 8 + 4 + 8 + 4;
    let mut reader = BodyReader { rest: body };
    let count = reader.u32()? as usize;
    if count > MEMBERSHIPS_MAX || count > reader.rest.len() / MEMBERSHIP_AT_BYTES_MIN {
        return None;
    }
    let memberships = (0..count)
        .map(|_| reader.membership_at())
        .collect::<Option<Vec<_>>>()?;
    reader.rest.is_empty().then_some(memberships)
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
        VALUE_TAG_MEMBERSHIP => Value::Membership(Box::new(decode_membership(reader.rest)?)),
        _ => return None,
    };
    Some(Entry {
        slot,
        ballot,
        value,
    })
}

/// Checks an entry body's structure without copying a command's data (a membership, small,
/// is decoded and validated whole); returns its slot.
pub(super) fn entry_slot(body: &[u8]) -> Option<Slot> {
    let tag = *body.get(ENTRY_FIXED_BYTES - 1)?;
    let well_formed = match tag {
        VALUE_TAG_NOOP => body.len() == ENTRY_FIXED_BYTES,
        VALUE_TAG_COMMAND => body.len() >= ENTRY_COMMAND_FIXED_BYTES,
        VALUE_TAG_MEMBERSHIP => decode_membership(&body[ENTRY_FIXED_BYTES..]).is_some(),
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
    /// Keys the checksums of the segment's other records ([`checksum_seed`]).
    pub(super) salt: u64,
}

pub(super) fn encode_segment_header(buffer: &mut Vec<u8>, header: &SegmentHeader) {
    buffer.extend_from_slice(&header.magic);
    buffer.extend_from_slice(&header.version.to_le_bytes());
    put_u64(buffer, header.cluster_id);
    put_u64(buffer, header.node_id);
    put_u64(buffer, header.sequence);
    put_u64(buffer, header.first_batch);
    put_u64(buffer, header.salt);
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
        salt: reader.u64()?,
    })
}

/// Checks a record's header and its checksum keyed with `seed`, given its whole bytes;
/// returns its kind and body.
pub(super) fn check_record(record: &[u8], seed: u32) -> Result<(Kind, &[u8]), String> {
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
    let actual = record_checksum(seed, &header[0..4], &record[8..]);
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

    fn membership(voters: &[u64], learners: &[u64]) -> Membership {
        Membership::new(
            voters.iter().copied().map(NodeId),
            learners.iter().copied().map(NodeId),
        )
    }

    /// The body of a membership entry for slot 9.
    fn membership_entry_body(membership: &Membership) -> Vec<u8> {
        let mut body = Vec::new();
        encode_entry(
            &mut body,
            &Entry {
                slot: 9,
                ballot: Ballot::new(4, NodeId(5)),
                value: Value::Membership(Box::new(membership.clone())),
            },
        );
        body
    }

    /// The body of a membership entry for slot 9 whose membership part is `tail`, verbatim.
    fn raw_membership_entry_body(tail: &[u8]) -> Vec<u8> {
        let mut body = membership_entry_body(&membership(&[1], &[]));
        body.truncate(ENTRY_FIXED_BYTES);
        body.extend_from_slice(tail);
        body
    }

    /// A raw membership encoding: the counts as given, then the ids.
    fn raw_membership(
        voter_count: u32,
        voters: &[u64],
        learner_count: u32,
        learners: &[u64],
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&voter_count.to_le_bytes());
        for &id in voters {
            put_u64(&mut bytes, id);
        }
        bytes.extend_from_slice(&learner_count.to_le_bytes());
        for &id in learners {
            put_u64(&mut bytes, id);
        }
        bytes
    }

    #[test]
    fn membership_entries_encode_and_decode() {
        let largest: Vec<u64> = (1..=MEMBERS_MAX as u64).collect();
        for membership in [
            membership(&[1], &[]),
            membership(&[3, 1, 2], &[7, 4]),
            membership(&largest[..MEMBERS_MAX - 1], &largest[MEMBERS_MAX - 1..]),
        ] {
            let body = membership_entry_body(&membership);
            assert!(body.len() <= ENTRY_MEMBERSHIP_BYTES_MAX);
            assert_eq!(entry_slot(&body), Some(9));
            let decoded = decode_entry(&body).expect("well formed");
            assert_eq!(decoded.value, Value::Membership(Box::new(membership)));
            assert_eq!(decoded.slot, 9);
        }
    }

    #[test]
    fn malformed_membership_entries_are_refused_without_panicking() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no membership at all", vec![]),
            ("half a count", vec![1, 0]),
            (
                "voter count without learner count",
                raw_membership(1, &[1], 0, &[])[..12].to_vec(),
            ),
            ("voter count above the ids", raw_membership(2, &[1], 0, &[])),
            (
                "voter count below the ids",
                raw_membership(1, &[1, 2], 0, &[]),
            ),
            (
                "learner count above the ids",
                raw_membership(1, &[1], 3, &[2]),
            ),
            (
                "learner count below the ids",
                raw_membership(1, &[1], 0, &[2]),
            ),
            ("huge voter count", raw_membership(u32::MAX, &[1], 0, &[])),
            ("huge learner count", raw_membership(1, &[1], u32::MAX, &[])),
            ("a trailing byte", {
                let mut bytes = raw_membership(1, &[1], 0, &[]);
                bytes.push(0);
                bytes
            }),
            ("no voter", raw_membership(0, &[], 1, &[1])),
            ("unsorted voters", raw_membership(2, &[2, 1], 0, &[])),
            ("duplicate voter", raw_membership(2, &[1, 1], 0, &[])),
            ("unsorted learners", raw_membership(1, &[1], 2, &[5, 4])),
            ("voter and learner", raw_membership(1, &[1], 1, &[1])),
            ("too many members", {
                let ids: Vec<u64> = (1..=MEMBERS_MAX as u64 + 1).collect();
                raw_membership(ids.len() as u32, &ids, 0, &[])
            }),
        ];
        for (what, tail) in cases {
            let body = raw_membership_entry_body(&tail);
            assert_eq!(entry_slot(&body), None, "{what}");
            assert_eq!(decode_entry(&body), None, "{what}");
            assert_eq!(decode_membership(&tail), None, "{what}");
        }
        // Every prefix of a good body, and every body with one byte changed, decodes to
        // `None` or to a valid membership; never a panic.
        let good = membership_entry_body(&membership(&[1, 2, 3], &[4]));
        for length in 0..good.len() {
            assert_eq!(
                decode_entry(&good[..length]),
                None,
                "prefix of {length} bytes"
            );
            assert_eq!(
                entry_slot(&good[..length]),
                None,
                "prefix of {length} bytes"
            );
        }
        for position in ENTRY_FIXED_BYTES..good.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut damaged = good.clone();
                damaged[position] ^= flip;
                match decode_entry(&damaged) {
                    Some(Entry {
                        value: Value::Membership(membership),
                        ..
                    }) => assert!(membership.validate().is_ok()),
                    Some(other) => panic!("byte {position}: decoded as {other:?}"),
                    None => {}
                }
                assert_eq!(
                    entry_slot(&damaged).is_some(),
                    decode_entry(&damaged).is_some(),
                    "byte {position}"
                );
            }
        }
    }

    #[test]
    fn membership_lists_encode_and_decode_and_malformed_ones_are_refused() {
        let list = vec![
            MembershipAt {
                slot: 0,
                membership: membership(&[1, 2, 3], &[]),
            },
            MembershipAt {
                slot: 17,
                membership: membership(&[1, 2], &[3, 9]),
            },
        ];
        for memberships in [Vec::new(), list.clone()] {
            let mut body = Vec::new();
            encode_memberships(&mut body, &memberships);
            assert_eq!(decode_memberships(&body), Some(memberships));
        }
        let mut good = Vec::new();
        encode_memberships(&mut good, &list);
        for length in 0..good.len() {
            assert_eq!(
                decode_memberships(&good[..length]),
                None,
                "prefix of {length} bytes"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode_memberships(&longer), None, "a trailing byte");
        for count in [0u32, 1, 3, u32::MAX] {
            let mut miscounted = good.clone();
            miscounted[..4].copy_from_slice(&count.to_le_bytes());
            assert_eq!(decode_memberships(&miscounted), None, "count {count}");
        }
        // An invalid membership inside the list.
        let mut invalid = Vec::new();
        invalid.extend_from_slice(&1u32.to_le_bytes());
        put_u64(&mut invalid, 5);
        invalid.extend_from_slice(&raw_membership(0, &[], 0, &[]));
        assert_eq!(decode_memberships(&invalid), None);
        for position in 0..good.len() {
            let mut damaged = good.clone();
            damaged[position] ^= 0xFF;
            if let Some(decoded) = decode_memberships(&damaged) {
                assert!(decoded.iter().all(|at| at.membership.validate().is_ok()));
            }
        }
    }

    #[test]
    fn the_largest_valid_encodings_fit_their_bounds() {
        let ids: Vec<u64> = (1..=MEMBERS_MAX as u64).collect();
        let largest = MembershipAt {
            slot: u64::MAX,
            membership: membership(&ids[..1], &ids[1..]),
        };
        let mut body = Vec::new();
        encode_membership_at(&mut body, &largest);
        assert_eq!(body.len(), MEMBERSHIP_AT_BYTES_MAX);
        let mut body = Vec::new();
        encode_memberships(&mut body, &vec![largest; 3]);
        assert_eq!(body.len(), 4 + 3 * MEMBERSHIP_AT_BYTES_MAX);
        assert!(MEMBERSHIPS_BODY_BYTES_MAX < u32::MAX as usize);
    }
}
