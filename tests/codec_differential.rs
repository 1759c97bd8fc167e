//! Differential tests of the codec's payload decoder (`synod::transport::codec::decode_payload`)
//! against plain bincode 2.0.1.
//!
//! `decode_payload` puts a private serde layer (`mod bounded`) between bincode's slice
//! deserializer and the decoded type: it caps the size hints serde preallocates from and reads
//! owned strings and byte strings borrowed first. It must not change what is decoded: for every
//! input, `decode_payload::<T>` must agree with
//! `bincode::serde::decode_from_slice::<T, _>(bytes, standard().with_limit::<N>())` (the same
//! limit `N` the codec picks) followed by the same "consumed the whole payload" check: both
//! `Ok` with equal values, or both `Err` (the error text may differ).
//!
//! Covered: arbitrary `Message`s (every `Body` variant) and, with the `net` feature, the TCP
//! transport's `WireFrame`, round-tripped; arbitrary byte strings; valid encodings with random
//! byte flips, overwrites, truncations, insertions and deletions; and a few other serde shapes
//! (strings, byte strings, maps, options, nested sequences) the generic decoder accepts.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use synod::message::Command;
use synod::transport::codec::{decode_payload, Codec, CLAIM_BYTES_PER_PAYLOAD_BYTE, HEADER_BYTES};
use synod::{
    Ballot, Body, Entries, Entry, Membership, MembershipAt, Message, NodeId, ProposalId, Value,
};

/// The smallest bincode limit `decode_payload` uses (its private `CLAIM_BYTES_MIN`).
const CLAIM_BYTES_MIN: usize = 1 << 16;

/// Plain bincode, mirroring `decode_payload` and `finish_decode` exactly: the same limit (the
/// first power of four from 2^16 to 2^30 that covers `16 * len`, at least 64 KiB), the same
/// slice decoder, the same refusal of trailing bytes; but no `bounded` layer.
fn plain_decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let claim_bytes = payload
        .len()
        .saturating_mul(CLAIM_BYTES_PER_PAYLOAD_BYTE)
        .max(CLAIM_BYTES_MIN);
    macro_rules! decode_with_first_limit_above_claim {
        ($($limit:expr),+) => {
            $(
                if claim_bytes <= $limit {
                    let config = bincode::config::standard().with_limit::<{ $limit }>();
                    let decoded = bincode::serde::decode_from_slice::<T, _>(payload, config);
                    return match decoded {
                        Ok((value, consumed)) if consumed == payload.len() => Ok(value),
                        Ok((_, consumed)) => Err(format!(
                            "{} trailing bytes after the value",
                            payload.len() - consumed
                        )),
                        Err(error) => Err(error.to_string()),
                    };
                }
            )+
        };
    }
    decode_with_first_limit_above_claim!(
        1 << 16,
        1 << 18,
        1 << 20,
        1 << 22,
        1 << 24,
        1 << 26,
        1 << 28,
        1 << 30
    );
    Err(format!("payload of {} bytes is oversized", payload.len()))
}

/// The codec's payload decoder, errors as text.
fn codec_decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    decode_payload::<T>(payload).map_err(|error| error.to_string())
}

/// Decodes `payload` both ways; `Ok(Some(value))` if both decoded the same value, `Ok(None)`
/// if both refused it, `Err` (both results) if they disagree.
fn differential<T: DeserializeOwned + PartialEq + Debug>(
    payload: &[u8],
) -> Result<Option<T>, String> {
    let codec = codec_decode::<T>(payload);
    let plain = plain_decode::<T>(payload);
    match (codec, plain) {
        (Ok(codec), Ok(plain)) if codec == plain => Ok(Some(codec)),
        (Err(_), Err(_)) => Ok(None),
        (codec, plain) => Err(format!("codec: {codec:?}, plain bincode: {plain:?}")),
    }
}

/// The payload the codec writes for `value`: the frame without its header.
fn payload_of<T: Serialize>(value: &T) -> Vec<u8> {
    let frame = Codec::new(1, 64 << 20)
        .expect("a frame size within the codec's limits")
        .encode(value)
        .expect("encodes");
    let payload = frame[HEADER_BYTES..].to_vec();
    assert_eq!(
        payload,
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap(),
        "the frame's payload is plain bincode"
    );
    payload
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn node_id() -> impl Strategy<Value = NodeId> {
    prop_oneof![3 => 0..8u64, 1 => any::<u64>()].prop_map(NodeId)
}

/// A slot, round or counter: small, at a varint boundary, or anything.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..300u64,
        1 => prop::sample::select(vec![
            250u64,
            251,
            252,
            u16::MAX as u64,
            u16::MAX as u64 + 1,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
        2 => any::<u64>(),
    ]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (number(), node_id()).prop_map(|(round, node)| Ballot::new(round, node))
}

fn proposal_id() -> impl Strategy<Value = ProposalId> {
    (node_id(), number(), number()).prop_map(|(node, incarnation, sequence)| ProposalId {
        node,
        incarnation,
        sequence,
    })
}

/// Byte strings: usually short, sometimes empty, sometimes large (over 250 bytes, so the
/// length takes a 3-byte varint, or over 64 KiB for a 5-byte one).
fn data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..40),
        2 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 250..1200),
        1 => (0..3usize, any::<u8>()).prop_map(|(extra, byte)| vec![byte; (64 << 10) + extra]),
    ]
    .prop_map(Bytes::from)
}

fn node_ids() -> impl Strategy<Value = Vec<NodeId>> {
    prop_oneof![
        6 => prop::collection::vec(node_id(), 0..6),
        1 => prop::collection::vec(node_id(), 250..300),
    ]
}

fn membership() -> impl Strategy<Value = Membership> {
    // The fields directly, not `Membership::new`: the decoder must reproduce any value,
    // unsorted and duplicated ids included.
    (node_ids(), node_ids()).prop_map(|(voters, learners)| Membership { voters, learners })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => Just(Value::Noop),
        1 => membership().prop_map(|membership| Value::Membership(Box::new(membership))),
        4 => (proposal_id(), data()).prop_map(|(id, data)| Value::Command { id, data }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (number(), ballot(), value()).prop_map(|(slot, ballot, value)| Entry {
        slot,
        ballot,
        value,
    })
}

/// Entries: empty, a few, or many (a 3-byte length).
fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop_oneof![
        2 => Just(Vec::new()),
        8 => prop::collection::vec(entry(), 1..6),
        1 => prop::collection::vec(
            (number(), ballot(), prop_oneof![Just(Value::Noop), (proposal_id(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(id, data)| Value::Command { id, data: Bytes::from(data) })]),
            250..400,
        )
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(slot, ballot, value)| Entry {
                    slot,
                    ballot,
                    value,
                })
                .collect()
        }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    let command = (proposal_id(), data()).prop_map(|(id, data)| Command { id, data });
    prop_oneof![
        1 => Just(Vec::new()),
        6 => prop::collection::vec(command, 1..5),
        1 => prop::collection::vec(
            (proposal_id(), prop::collection::vec(any::<u8>(), 0..3))
                .prop_map(|(id, data)| Command { id, data: Bytes::from(data) }),
            250..300,
        ),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (ballot(), number()).prop_map(|(ballot, chosen)| Body::PreVote { ballot, chosen }),
        (ballot(), any::<bool>(), ballot(), number()).prop_map(
            |(ballot, granted, promised, chosen)| Body::PreVoteReply {
                ballot,
                granted,
                promised,
                chosen,
            }
        ),
        (ballot(), number(), prop::option::of(ballot())).prop_map(
            |(ballot, first_slot, transfer)| Body::Prepare {
                ballot,
                first_slot,
                transfer,
            }
        ),
        (
            ballot(),
            number(),
            entries(),
            number(),
            prop::option::of(number())
        )
            .prop_map(
                |(ballot, first_slot, accepted, chosen, next_slot)| Body::Promise {
                    ballot,
                    first_slot,
                    accepted,
                    chosen,
                    next_slot,
                }
            ),
        (ballot(), number(), entries()).prop_map(|(ballot, chosen, entries)| Body::Accept {
            ballot,
            chosen,
            entries: Entries::from(entries),
        }),
        (ballot(), number(), number()).prop_map(|(ballot, first_slot, last_slot)| {
            Body::Accepted {
                ballot,
                first_slot,
                last_slot,
            }
        }),
        (ballot(), ballot()).prop_map(|(ballot, promised)| Body::Reject { ballot, promised }),
        (ballot(), number(), number()).prop_map(|(ballot, chosen, read)| Body::Heartbeat {
            ballot,
            chosen,
            read,
        }),
        (ballot(), number(), number()).prop_map(|(ballot, chosen, read)| {
            Body::HeartbeatReply {
                ballot,
                chosen,
                read,
            }
        }),
        (ballot(), number()).prop_map(|(ballot, chosen)| Body::Commit { ballot, chosen }),
        (ballot(), number()).prop_map(|(ballot, first_slot)| Body::Fetch { ballot, first_slot }),
        (ballot(), entries(), number()).prop_map(|(ballot, entries, chosen)| {
            Body::FetchReply {
                ballot,
                entries,
                chosen,
            }
        }),
        commands().prop_map(|commands| Body::Forward { commands }),
        (number(), number(), number(), data(), number(), membership()).prop_map(
            |(slot, offset, total, data, at, membership)| Body::Snapshot {
                slot,
                offset,
                total,
                data,
                membership: Box::new(MembershipAt {
                    slot: at,
                    membership,
                }),
            }
        ),
        ballot().prop_map(|ballot| Body::TimeoutNow { ballot }),
        (number(), number())
            .prop_map(|(incarnation, round)| Body::ReadIndex { incarnation, round }),
        (number(), number()).prop_map(|(slot, received)| Body::SnapshotAck { slot, received }),
        (number(), number(), prop::option::of(number())).prop_map(|(incarnation, round, slot)| {
            Body::ReadIndexReply {
                incarnation,
                round,
                slot,
            }
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (node_id(), node_id(), body()).prop_map(|(from, to, body)| Message { from, to, body })
}

/// One edit of a payload.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR the byte at a position with a non-zero mask.
    Flip(Index, u8),
    /// Overwrite the byte at a position, with bytes that matter to bincode more likely.
    Set(Index, u8),
    /// Insert bytes at a position.
    Insert(Index, Vec<u8>),
    /// Delete up to that many bytes at a position.
    Delete(Index, usize),
    /// Cut the payload at a position.
    Truncate(Index),
}

/// A byte that bincode reads specially: small values (enum tags, option tags, lengths, bools),
/// the varint markers 251..=254 and 255, or anything.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => 0..4u8,
        2 => 250..=255u8,
        1 => Just(0x7f),
        3 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        3 => (any::<Index>(), interesting_byte()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        2 => (any::<Index>(), prop::collection::vec(interesting_byte(), 1..10))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        2 => (any::<Index>(), 1..10usize).prop_map(|(at, count)| Mutation::Delete(at, count)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(payload: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        match mutation {
            Mutation::Flip(at, mask) if !payload.is_empty() => {
                let at = at.index(payload.len());
                payload[at] ^= mask;
            }
            Mutation::Set(at, byte) if !payload.is_empty() => {
                let at = at.index(payload.len());
                payload[at] = *byte;
            }
            Mutation::Insert(at, bytes) => {
                let at = at.index(payload.len() + 1);
                payload.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(at, count) if !payload.is_empty() => {
                let at = at.index(payload.len());
                let end = (at + count).min(payload.len());
                payload.drain(at..end);
            }
            Mutation::Truncate(at) => {
                let at = at.index(payload.len() + 1);
                payload.truncate(at);
            }
            _ => {}
        }
    }
}

/// Arbitrary payloads: uniform bytes, or bytes biased to what bincode reads specially.
fn arbitrary_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(interesting_byte(), 0..300),
    ]
}

/// Valid `Message` payloads with one to four edits.
fn mutated_message_payload() -> impl Strategy<Value = Vec<u8>> {
    (message(), prop::collection::vec(mutation(), 1..5)).prop_map(|(message, mutations)| {
        let mut payload = payload_of(&message);
        apply(&mut payload, &mutations);
        payload
    })
}

fn assert_agree<T: DeserializeOwned + PartialEq + Debug>(
    payload: &[u8],
) -> Result<(), TestCaseError> {
    if let Err(disagreement) = differential::<T>(payload) {
        return Err(TestCaseError::fail(format!(
            "codec and plain bincode disagree on {} payload {payload:02x?}: {disagreement}",
            std::any::type_name::<T>()
        )));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Keep runs reproducible in CI without a regressions file of this test's own.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every message round-trips through the codec's payload decoder and plain bincode alike.
    #[test]
    fn messages_round_trip_through_decode_payload(original in message()) {
        let payload = payload_of(&original);
        prop_assert_eq!(codec_decode::<Message>(&payload), Ok(original.clone()));
        prop_assert_eq!(plain_decode::<Message>(&payload), Ok(original.clone()));
        // Through a whole frame too.
        let codec = Codec::new(7, 1 << 20).expect("a frame size within the codec's limits");
        if let Ok(frame) = codec.encode(&original) {
            let (decoded, consumed) = codec.decode::<Message>(&frame).unwrap();
            prop_assert_eq!(decoded, original);
            prop_assert_eq!(consumed, frame.len());
        }
    }

    /// Arbitrary bytes: both decoders accept the same value, or both refuse.
    #[test]
    fn arbitrary_bytes_decode_alike_as_messages(payload in arbitrary_payload()) {
        assert_agree::<Message>(&payload)?;
    }

    /// Valid encodings with flips, overwrites, insertions, deletions and truncations: both
    /// decoders accept the same value, or both refuse.
    #[test]
    fn mutated_messages_decode_alike(payload in mutated_message_payload()) {
        assert_agree::<Message>(&payload)?;
    }

    /// A valid payload followed by trailing bytes, or cut at every length, is refused by both.
    #[test]
    fn trailing_and_cut_payloads_decode_alike(
        original in message(),
        trailing in prop::collection::vec(any::<u8>(), 1..4),
    ) {
        let payload = payload_of(&original);
        let mut longer = payload.clone();
        longer.extend_from_slice(&trailing);
        prop_assert!(codec_decode::<Message>(&longer).is_err());
        assert_agree::<Message>(&longer)?;
        // Every prefix, for short payloads (long ones: a sample of cuts).
        let step = (payload.len() / 64).max(1);
        for cut in (0..payload.len()).step_by(step) {
            prop_assert!(codec_decode::<Message>(&payload[..cut]).is_err());
            assert_agree::<Message>(&payload[..cut])?;
        }
    }

    /// Other serde shapes the generic decoder accepts: strings, byte strings, maps, options,
    /// nested sequences, tuples, from arbitrary bytes.
    #[test]
    fn arbitrary_bytes_decode_alike_as_other_types(payload in arbitrary_payload()) {
        assert_agree::<String>(&payload)?;
        assert_agree::<Vec<String>>(&payload)?;
        assert_agree::<serde_bytes_like::ByteBuf>(&payload)?;
        assert_agree::<Vec<Vec<u8>>>(&payload)?;
        assert_agree::<Option<Box<str>>>(&payload)?;
        assert_agree::<BTreeMap<u8, Vec<u16>>>(&payload)?;
        assert_agree::<(u8, String, Vec<u64>)>(&payload)?;
        assert_agree::<Vec<(bool, Option<char>)>>(&payload)?;
        assert_agree::<Bytes>(&payload)?;
        assert_agree::<Vec<Bytes>>(&payload)?;
    }

    /// Valid encodings of those shapes, mutated.
    #[test]
    fn mutated_other_types_decode_alike(
        strings in prop::collection::vec(".{0,12}", 0..5),
        map in prop::collection::btree_map(any::<u8>(), prop::collection::vec(any::<u16>(), 0..5), 0..5),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut payload = payload_of(&strings);
        apply(&mut payload, &mutations);
        assert_agree::<Vec<String>>(&payload)?;
        assert_agree::<Vec<serde_bytes_like::ByteBuf>>(&payload)?;
        let mut payload = payload_of(&map);
        apply(&mut payload, &mutations);
        assert_agree::<BTreeMap<u8, Vec<u16>>>(&payload)?;
    }
}

/// A `Vec<u8>` that serde reads with `deserialize_byte_buf` (what `serde_bytes::ByteBuf`
/// does), to reach the layer's owned byte string path with a plain `Vec`.
mod serde_bytes_like {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::{Deserialize, Serialize, Serializer};
    use std::fmt;

    #[derive(Debug, PartialEq, Eq)]
    pub struct ByteBuf(pub Vec<u8>);

    impl Serialize for ByteBuf {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
            struct ByteBufVisitor;
            impl<'de> Visitor<'de> for ByteBufVisitor {
                type Value = ByteBuf;
                fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                    formatter.write_str("a byte string")
                }
                fn visit_bytes<E: Error>(self, value: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(value.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, value: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(value))
                }
            }
            deserializer.deserialize_byte_buf(ByteBufVisitor)
        }
    }
}

#[cfg(feature = "net")]
mod wire_frame {
    use super::*;
    use synod::transport::tcp::{Hello, Welcome, WireFrame};

    fn wire_frame() -> impl Strategy<Value = WireFrame> {
        prop_oneof![
            1 => (any::<u16>(), number(), node_id(), node_id()).prop_map(
                |(protocol_version, cluster_id, from, to)| WireFrame::Hello(Hello {
                    protocol_version,
                    cluster_id,
                    from,
                    to,
                })
            ),
            1 => (any::<u16>(), node_id()).prop_map(|(protocol_version, node)| {
                WireFrame::Welcome(Welcome {
                    protocol_version,
                    node,
                })
            }),
            4 => message().prop_map(WireFrame::Message),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Every wire frame round-trips through the codec's payload decoder.
        #[test]
        fn wire_frames_round_trip_through_decode_payload(original in wire_frame()) {
            let payload = payload_of(&original);
            prop_assert_eq!(codec_decode::<WireFrame>(&payload), Ok(original.clone()));
            prop_assert_eq!(plain_decode::<WireFrame>(&payload), Ok(original));
        }

        /// Arbitrary bytes: both decoders agree on `WireFrame`.
        #[test]
        fn arbitrary_bytes_decode_alike_as_wire_frames(payload in arbitrary_payload()) {
            assert_agree::<WireFrame>(&payload)?;
        }

        /// Mutated valid wire frames: both decoders agree.
        #[test]
        fn mutated_wire_frames_decode_alike(
            original in wire_frame(),
            mutations in prop::collection::vec(mutation(), 1..5),
        ) {
            let mut payload = payload_of(&original);
            apply(&mut payload, &mutations);
            assert_agree::<WireFrame>(&payload)?;
        }
    }
}

/// Declared lengths and varint values at the edges that matter to the layer and to bincode's
/// limit, written at every position of valid payloads: the bytes left in the payload, one
/// more, the limit, one more, and the largest of each varint width; both decoders agree.
#[test]
fn edge_lengths_at_every_position_decode_alike() {
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut compared = 0u32;
    for _ in 0..40 {
        let original = strategy.new_tree(&mut runner).unwrap().current();
        let payload = payload_of(&original);
        if payload.len() > 400 {
            continue;
        }
        for position in 0..payload.len() {
            let left = (payload.len() - position) as u64;
            for value in [
                0,
                1,
                left.saturating_sub(2),
                left.saturating_sub(1),
                left,
                left + 1,
                (1 << 16) - 1,
                1 << 16,
                (1 << 16) + 1,
                u16::MAX as u64,
                u32::MAX as u64,
                u64::MAX / 2,
                u64::MAX,
            ] {
                let mut varint = Vec::new();
                if value < 251 {
                    varint.push(value as u8);
                } else if value <= u16::MAX as u64 {
                    varint.push(251);
                    varint.extend_from_slice(&(value as u16).to_le_bytes());
                } else if value <= u32::MAX as u64 {
                    varint.push(252);
                    varint.extend_from_slice(&(value as u32).to_le_bytes());
                } else {
                    varint.push(253);
                    varint.extend_from_slice(&value.to_le_bytes());
                }
                // Replace the byte at `position` with the varint, and insert it there.
                for replace in [true, false] {
                    let mut edited = payload.clone();
                    let end = if replace { position + 1 } else { position };
                    edited.splice(position..end, varint.iter().copied());
                    if let Err(disagreement) = differential::<Message>(&edited) {
                        panic!("disagreement on {edited:02x?}: {disagreement}");
                    }
                    compared += 1;
                }
            }
        }
    }
    eprintln!("edge lengths: {compared} payloads decoded alike");
}

/// The mutation strategy reaches both outcomes: a fair share of mutated payloads still decode
/// (to a value both decoders agree on), so the differential is not only comparing errors.
#[test]
fn mutated_payloads_reach_both_outcomes() {
    let mut runner = TestRunner::deterministic();
    let strategy = mutated_message_payload();
    let (mut decoded, mut refused) = (0u32, 0u32);
    for _ in 0..4000 {
        let payload = strategy.new_tree(&mut runner).unwrap().current();
        match differential::<Message>(&payload) {
            Ok(Some(_)) => decoded += 1,
            Ok(None) => refused += 1,
            Err(disagreement) => {
                panic!("disagreement on {payload:02x?}: {disagreement}")
            }
        }
    }
    eprintln!("mutated Message payloads: {decoded} decoded alike, {refused} refused alike");
    assert!(decoded >= 200, "only {decoded} of 4000 decoded");
    assert!(refused >= 200, "only {refused} of 4000 refused");
}
