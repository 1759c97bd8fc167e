//! The wire codec's allocation bound under hostile payloads (`synod::transport::codec`, "What
//! decoding allocates"): frames with a correct header and checksum whose bincode payload
//! declares huge lengths (sequences, nested sequences, maps, strings, byte strings) at every
//! position. Decoding must never panic, the whole-buffer and the incremental decoders must
//! agree, and the memory decoding takes must stay within the documented bound for a payload
//! of `n` bytes:
//!
//! * no single allocation above `n * E`, `E` the in-memory size of the largest element of a
//!   sequence in the decoded type (for `Message` and `WireFrame`: `Entry`, 88 bytes on 64-bit
//!   targets); hash maps and sets, whose table holds about twice the elements asked for, up to
//!   [`HASHED_FACTOR`] times that;
//! * less than [`PEAK_FACTOR`]` * n * E` bytes live at once (the decoded value included).
//!
//! Before the decoder bounded serde's preallocation, these frames made it allocate up to
//! 1 MiB at once for a payload of a few dozen bytes (serde's cap per sequence, 2 MiB live for
//! two nested sequences, 100 MiB for a 300-byte payload of a recursive type), a hash map's
//! table of 2.25 MiB, and a byte string's declared length up to bincode's limit.
//!
//! This binary installs a global allocator that records, per thread, the largest single
//! request and the peak of live bytes; it defers to `System`.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use synod::error::DecodeError;
use synod::message::Command;
use synod::transport::codec::{Codec, FrameDecoder, FORMAT_VERSION, HEADER_BYTES, MAGIC};
use synod::{Ballot, Body, Entry, Membership, MembershipAt, Message, NodeId, ProposalId, Value};

/// Records the largest request and the live bytes of the current thread; defers to `System`.
struct Measuring;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(allocated: usize, freed: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(allocated)));
    let _ = LIVE.try_with(|live| {
        let now = live.get() + allocated as isize - freed as isize;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping touches only const-initialized thread-local `Cell`s,
// which never allocate.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        record(size, layout.size());
        unsafe { System.realloc(pointer, layout, size) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        record(0, layout.size());
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Measuring = Measuring;

/// What one closure allocated on this thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    /// The largest single request (allocation or reallocation).
    largest: usize,
    /// The most bytes live at once above what was live before the closure, its result
    /// included.
    peak: usize,
}

fn measure<R>(work: impl FnOnce() -> R) -> (R, Usage) {
    let start = LIVE.with(Cell::get);
    LARGEST.with(|largest| largest.set(0));
    PEAK.with(|peak| peak.set(start));
    let result = work();
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        peak: usize::try_from(PEAK.with(Cell::get) - start).unwrap(),
    };
    (result, usage)
}

/// The documented peak: less than this many times `n * E` bytes live at once.
const PEAK_FACTOR: usize = 2;

/// Hash maps and sets: their table holds up to about twice the elements preallocated (and a
/// control byte each), so their allocations may reach this many times `n * E`.
const HASHED_FACTOR: usize = 3;

const CLUSTER: u64 = 0xB0;

fn codec() -> Codec {
    Codec::new(CLUSTER, 1 << 20).expect("a frame size within the codec's limits")
}

fn frame_around(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame.extend_from_slice(&CLUSTER.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn payload_of<T: Serialize>(value: &T) -> Vec<u8> {
    codec().encode(value).unwrap()[HEADER_BYTES..].to_vec()
}

/// Bincode (standard configuration) varints of huge lengths: the largest u16, 1 GiB, the
/// largest u32, 2^40 and the largest u64.
fn huge_lengths() -> Vec<Vec<u8>> {
    let tagged = |tag: u8, bytes: &[u8]| [&[tag][..], bytes].concat();
    vec![
        tagged(0xFB, &u16::MAX.to_le_bytes()),
        tagged(0xFC, &(1u32 << 30).to_le_bytes()),
        tagged(0xFC, &u32::MAX.to_le_bytes()),
        tagged(0xFD, &(1u64 << 40).to_le_bytes()),
        tagged(0xFD, &u64::MAX.to_le_bytes()),
    ]
}

/// Every payload made from `valid` by writing a huge length over the byte at each position
/// (the rest following, or cut after it).
fn one_huge_length(valid: &[u8]) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    for at in 0..valid.len() {
        for huge in huge_lengths() {
            let cut = [&valid[..at], &huge[..]].concat();
            payloads.push([&cut[..], &valid[at + 1..]].concat());
            payloads.push(cut);
        }
    }
    payloads
}

/// Every payload made from `valid` by writing a huge length over the bytes at two positions
/// (so that a sequence nested in another can declare one too).
fn two_huge_lengths(valid: &[u8]) -> Vec<Vec<u8>> {
    let lengths = huge_lengths();
    let mut payloads = Vec::new();
    for first in 0..valid.len() {
        for second in first + 1..valid.len() {
            for outer in [&lengths[0], &lengths[3]] {
                for inner in [&lengths[0], &lengths[4]] {
                    payloads.push(
                        [
                            &valid[..first],
                            &outer[..],
                            &valid[first + 1..second],
                            &inner[..],
                            &valid[second + 1..],
                        ]
                        .concat(),
                    );
                }
            }
        }
    }
    payloads
}

/// The bound a decoded type is held to.
#[derive(Clone, Copy, Debug)]
struct Bound {
    /// `E`: the in-memory size of the largest sequence element of the type.
    element_bytes: usize,
    /// 1 for types without hash maps or sets, [`HASHED_FACTOR`] otherwise.
    factor: usize,
}

impl Bound {
    fn largest(&self, payload_bytes: usize) -> usize {
        self.factor * payload_bytes * self.element_bytes
    }

    fn peak(&self, payload_bytes: usize) -> usize {
        PEAK_FACTOR * self.factor * payload_bytes * self.element_bytes
    }
}

/// The worst usage met, and the payload that caused it.
#[derive(Debug, Default)]
struct Worst {
    frames: usize,
    refused: usize,
    largest: (usize, usize),
    peak: (usize, usize),
}

impl Worst {
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} hostile frames ({} refused); largest allocation {} bytes \
             (payload of {} bytes), peak {} bytes live (payload of {} bytes)",
            self.frames, self.refused, self.largest.0, self.largest.1, self.peak.0, self.peak.1
        );
    }
}

/// Decodes `payload` in a checksummed frame with both decoders: neither panics, they agree,
/// and neither allocates beyond `bound`.
fn check<T>(payload: &[u8], bound: Bound, worst: &mut Worst)
where
    T: DeserializeOwned + PartialEq + Debug,
{
    let frame = frame_around(payload);
    let codec = codec();
    let whole = catch_unwind(AssertUnwindSafe(|| {
        measure(|| codec.decode::<T>(&frame).map(|(value, _)| value))
    }))
    .unwrap_or_else(|_| panic!("decode panicked on payload {payload:02x?}"));
    let (whole, usage) = whole;
    let n = payload.len();
    assert!(
        usage.largest <= bound.largest(n) && usage.peak < bound.peak(n),
        "{usage:?} beyond {} / {} for the payload of {n} bytes {payload:02x?}",
        bound.largest(n),
        bound.peak(n)
    );
    worst.frames += 1;
    worst.refused += usize::from(whole.is_err());
    if usage.largest > worst.largest.0 {
        worst.largest = (usage.largest, n);
    }
    if usage.peak > worst.peak.0 {
        worst.peak = (usage.peak, n);
    }

    // The incremental decoder, fed the header and then the payload (so the frame goes
    // through its buffer): its buffer aside, it allocates as much.
    let incremental = catch_unwind(AssertUnwindSafe(|| {
        let mut decoder = FrameDecoder::<T>::new(codec);
        let mut values = Vec::with_capacity(1);
        measure(|| {
            decoder.push(&frame[..HEADER_BYTES], &mut values)?;
            decoder.push(&frame[HEADER_BYTES..], &mut values)?;
            decoder.finish()?;
            Ok::<_, DecodeError>(values.pop().expect("one frame"))
        })
    }))
    .unwrap_or_else(|_| panic!("FrameDecoder panicked on payload {payload:02x?}"));
    let (incremental, usage) = incremental;
    let buffer = 2 * frame.len().max(2 * HEADER_BYTES);
    assert!(
        usage.largest <= bound.largest(n).max(buffer) && usage.peak < bound.peak(n) + buffer,
        "FrameDecoder: {usage:?} for the payload of {n} bytes {payload:02x?}"
    );
    assert_eq!(whole.is_ok(), incremental.is_ok(), "{payload:02x?}");
    if let (Ok(whole), Ok(incremental)) = (whole, incremental) {
        assert_eq!(whole, incremental);
    }
}

fn ballot() -> Ballot {
    Ballot::new(7, NodeId(2))
}

fn membership() -> Membership {
    Membership::new([NodeId(1), NodeId(2), NodeId(3)], [NodeId(4)])
}

fn entries() -> Vec<Entry> {
    vec![
        Entry {
            slot: 5,
            ballot: ballot(),
            value: Value::Noop,
        },
        Entry {
            slot: 6,
            ballot: ballot(),
            value: Value::Command {
                id: ProposalId {
                    node: NodeId(3),
                    incarnation: 4,
                    sequence: 9,
                },
                data: Bytes::from_static(b"set x"),
            },
        },
        Entry {
            slot: 7,
            ballot: ballot(),
            value: Value::Membership(Box::new(membership())),
        },
    ]
}

fn command(data: &'static [u8]) -> Command {
    Command {
        id: ProposalId {
            node: NodeId(1),
            incarnation: 1,
            sequence: 1,
        },
        data: Bytes::from_static(data),
    }
}

/// One message of every `Body` variant; those with sequences carry several kinds of element.
fn every_message() -> Vec<Message> {
    let bodies = vec![
        Body::PreVote {
            ballot: ballot(),
            chosen: 3,
        },
        Body::PreVoteReply {
            ballot: ballot(),
            granted: true,
            promised: Ballot::ZERO,
            chosen: 3,
        },
        Body::Prepare {
            ballot: ballot(),
            first_slot: 3,
            transfer: Some(ballot()),
        },
        Body::Promise {
            ballot: ballot(),
            first_slot: 5,
            accepted: entries(),
            chosen: 4,
            next_slot: None,
        },
        Body::Accept {
            ballot: ballot(),
            chosen: 4,
            entries: entries().into(),
        },
        Body::Accepted {
            ballot: ballot(),
            first_slot: 5,
            last_slot: 7,
        },
        Body::Reject {
            ballot: ballot(),
            promised: ballot(),
        },
        Body::Heartbeat {
            ballot: ballot(),
            chosen: 6,
            read: 3,
        },
        Body::HeartbeatReply {
            ballot: ballot(),
            chosen: 6,
            read: 3,
        },
        Body::Commit {
            ballot: ballot(),
            chosen: 6,
        },
        Body::Fetch {
            ballot: ballot(),
            first_slot: 1,
        },
        Body::FetchReply {
            ballot: ballot(),
            entries: entries(),
            chosen: 7,
        },
        Body::Forward {
            commands: vec![command(b"a"), command(b"bc")],
        },
        Body::Snapshot {
            slot: 6,
            offset: 0,
            total: 3,
            data: Bytes::from_static(b"abc"),
            membership: Box::new(MembershipAt {
                slot: 4,
                membership: membership(),
            }),
        },
        Body::TimeoutNow { ballot: ballot() },
        Body::ReadIndex {
            incarnation: 2,
            round: 7,
        },
        Body::SnapshotAck {
            slot: 6,
            received: 3,
        },
        Body::ReadIndexReply {
            incarnation: 2,
            round: 7,
            slot: Some(6),
        },
    ];
    bodies
        .into_iter()
        .map(|body| Message {
            from: NodeId(1),
            to: NodeId(2),
            body,
        })
        .collect()
}

fn message_bound() -> Bound {
    Bound {
        element_bytes: size_of::<Entry>(),
        factor: 1,
    }
}

/// The element sizes the documented bound for `Message` rests on: `Entry` is the largest
/// element of any sequence in a `Message` (64-bit targets).
#[test]
#[cfg(target_pointer_width = "64")]
fn entry_is_the_largest_sequence_element_of_a_message() {
    assert_eq!(size_of::<Entry>(), 88);
    assert!(size_of::<Command>() <= size_of::<Entry>());
    assert!(size_of::<NodeId>() <= size_of::<Entry>());
}

/// A huge length written at every payload position of a message of every variant.
#[test]
fn a_huge_length_anywhere_in_a_message_allocates_within_the_bound() {
    let mut worst = Worst::default();
    for message in every_message() {
        let valid = payload_of(&message);
        check::<Message>(&valid, message_bound(), &mut worst);
        for payload in one_huge_length(&valid) {
            check::<Message>(&payload, message_bound(), &mut worst);
        }
    }
    worst.report("Message, one huge length");
    assert!(worst.refused * 2 > worst.frames, "{worst:?}");
}

/// Huge lengths at two positions, so that a sequence nested in a sequence (a membership's
/// voters in an entry of a FetchReply) declares one while its parent's preallocation is live.
#[test]
fn nested_huge_lengths_in_a_message_allocate_within_the_bound() {
    let nested = Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::FetchReply {
            ballot: ballot(),
            entries: vec![entries().swap_remove(2)],
            chosen: 7,
        },
    };
    let mut worst = Worst::default();
    for message in [nested, every_message().swap_remove(12)] {
        for payload in two_huge_lengths(&payload_of(&message)) {
            check::<Message>(&payload, message_bound(), &mut worst);
        }
    }
    worst.report("Message, two huge lengths");

    // The entry count declares 2^40: the entries take the whole budget, so the 200 voters of
    // the first entry's membership are not preallocated but grow (to 256) as they come.
    let many_voters = Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::FetchReply {
            ballot: ballot(),
            entries: vec![Entry {
                slot: 7,
                ballot: ballot(),
                value: Value::Membership(Box::new(Membership::new((1..=200).map(NodeId), []))),
            }],
            chosen: 7,
        },
    };
    let mut payload = payload_of(&many_voters);
    assert_eq!(
        payload[5], 1,
        "the entry count follows from, to, variant and ballot"
    );
    payload.splice(5..6, [0xFD].into_iter().chain((1u64 << 40).to_le_bytes()));
    let mut worst = Worst::default();
    check::<Message>(&payload, message_bound(), &mut worst);
    worst.report("Message, 2^40 entries then 200 voters");
    assert_eq!(worst.refused, 1);
}

/// The frame of the review (session 14): a FetchReply of a few dozen bytes declaring 2^40
/// entries, every other byte valid.
#[test]
fn a_tiny_fetch_reply_declaring_2_pow_40_entries_allocates_within_the_bound() {
    let empty = Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::FetchReply {
            ballot: ballot(),
            entries: Vec::new(),
            chosen: 0,
        },
    };
    let mut payload = payload_of(&empty);
    // The entry count: the third byte from the end (before the chosen mark).
    let at = payload.len() - 2;
    assert_eq!(payload[at], 0);
    payload.splice(
        at..=at,
        [0xFD].into_iter().chain((1u64 << 40).to_le_bytes()),
    );
    let mut worst = Worst::default();
    check::<Message>(&payload, message_bound(), &mut worst);
    worst.report("FetchReply declaring 2^40 entries");
    assert_eq!(worst.refused, 1);
    assert!(
        worst.largest.0 <= payload.len() * size_of::<Entry>(),
        "{worst:?}"
    );
}

/// A valid message's sequences get exactly the capacity they need: the preallocation budget
/// (one element per payload byte) never shortens a real sequence's.
#[test]
fn valid_sequences_are_preallocated_exactly() {
    let count = 1000;
    let message = Message {
        from: NodeId(1),
        to: NodeId(2),
        body: Body::FetchReply {
            ballot: ballot(),
            entries: (0..count)
                .map(|slot| Entry {
                    slot,
                    ballot: ballot(),
                    value: Value::Membership(Box::new(membership())),
                })
                .collect(),
            chosen: count,
        },
    };
    let frame = codec().encode(&message).unwrap();
    let (decoded, usage) = measure(|| codec().decode::<Message>(&frame).unwrap().0);
    assert_eq!(decoded, message);
    // One allocation of exactly `count` entries, none larger, and per entry one box and two
    // exact-size vectors of node ids.
    assert_eq!(usage.largest, count as usize * size_of::<Entry>());
    let per_entry = size_of::<Entry>() + size_of::<Membership>() + 4 * size_of::<NodeId>();
    assert_eq!(usage.peak, count as usize * per_entry);
}

/// A type with every kind of value serde preallocates for or bincode allocates: strings,
/// byte strings (`Bytes`, and a type asking for borrowed bytes), vectors nested three deep,
/// hash and B-tree maps, a hash set, a deque.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Zoo {
    name: String,
    blob: Bytes,
    slice: ByteSlice,
    raw: Vec<u8>,
    nested: Vec<Vec<Vec<u32>>>,
    hashed: HashMap<u64, String>,
    sorted: BTreeMap<String, Vec<u64>>,
    set: HashSet<u64>,
    deque: VecDeque<u64>,
    texts: Vec<String>,
    boxed: Option<Box<[u16]>>,
}

/// Bytes deserialized with `deserialize_bytes` (most byte containers ask for `byte_buf`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
struct ByteSlice(#[serde(serialize_with = "as_bytes")] Vec<u8>);

fn as_bytes<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

impl<'de> Deserialize<'de> for ByteSlice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ByteSlice, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSlice;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ByteSlice, E> {
                Ok(ByteSlice(bytes.to_vec()))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

fn zoo() -> Zoo {
    Zoo {
        name: "zoo".into(),
        blob: Bytes::from_static(b"blob"),
        slice: ByteSlice(b"slice".to_vec()),
        raw: vec![1, 2],
        nested: vec![vec![vec![1, 2], vec![]], vec![vec![3]]],
        hashed: HashMap::from([(1, "one".into())]),
        sorted: BTreeMap::from([("k".into(), vec![5, 6])]),
        set: HashSet::from([9]),
        deque: VecDeque::from([1, 2]),
        texts: vec!["a".into(), "bc".into()],
        boxed: Some(vec![7, 8].into_boxed_slice()),
    }
}

fn zoo_bound() -> Bound {
    Bound {
        // The largest element: (u64, String), in the hash map.
        element_bytes: size_of::<(u64, String)>(),
        factor: HASHED_FACTOR,
    }
}

/// Huge lengths at one and at two positions of a value with strings, byte strings, maps and
/// nested vectors.
#[test]
fn huge_lengths_in_strings_byte_strings_and_maps_allocate_within_the_bound() {
    let valid = payload_of(&zoo());
    let (decoded, _) = codec().decode::<Zoo>(&frame_around(&valid)).unwrap();
    assert_eq!(decoded, zoo());
    let mut worst = Worst::default();
    check::<Zoo>(&valid, zoo_bound(), &mut worst);
    for payload in one_huge_length(&valid) {
        check::<Zoo>(&payload, zoo_bound(), &mut worst);
    }
    worst.report("Zoo, one huge length");
    let mut worst = Worst::default();
    for payload in two_huge_lengths(&valid) {
        check::<Zoo>(&payload, zoo_bound(), &mut worst);
    }
    worst.report("Zoo, two huge lengths");
}

/// A byte string or string declaring more bytes than the payload holds is refused before
/// any buffer for it is allocated; one declaring more than bincode's allocation limit is
/// refused by the limit.
#[test]
fn a_byte_string_is_allocated_only_once_its_bytes_are_there() {
    for declared in [100u64, 60_000, 1 << 20, 1 << 30] {
        for field in 0..2 {
            // `name` (a string) declares `declared` bytes; or `name` is empty and `blob`
            // (a byte string) declares them.
            let mut payload = if field == 0 { vec![] } else { vec![0] };
            payload.push(0xFD);
            payload.extend_from_slice(&declared.to_le_bytes());
            payload.extend_from_slice(&[b'x'; 40]);
            let (result, usage) = measure(|| codec().decode::<Zoo>(&frame_around(&payload)));
            let error = result.unwrap_err();
            assert!(matches!(error, DecodeError::Payload(_)), "{error}");
            // The frame itself is the largest allocation.
            assert!(
                usage.largest <= HEADER_BYTES + payload.len(),
                "{declared} declared: {usage:?}"
            );
        }
    }
}

/// A recursive type lets a payload nest sequences as deep as it has bytes, each declaring a
/// huge length: the budget is shared, so the preallocations of all levels together stay
/// within one element per payload byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Tree(Vec<Tree>);

#[test]
fn nested_huge_lengths_in_a_recursive_type_share_one_budget() {
    let bound = Bound {
        element_bytes: size_of::<Tree>(),
        factor: 1,
    };
    let tree = Tree(vec![Tree(vec![]), Tree(vec![Tree(vec![])])]);
    let (decoded, _) = codec()
        .decode::<Tree>(&frame_around(&payload_of(&tree)))
        .unwrap();
    assert_eq!(decoded, tree);
    let mut worst = Worst::default();
    for huge in huge_lengths() {
        for levels in [1, 2, 10, 100] {
            let payload = huge.repeat(levels);
            check::<Tree>(&payload, bound, &mut worst);
            let mut payload = payload;
            payload.push(0);
            check::<Tree>(&payload, bound, &mut worst);
        }
    }
    worst.report("Tree, huge lengths at every level");
    assert_eq!(worst.refused, worst.frames);
}

#[cfg(feature = "net")]
mod wire {
    use super::*;
    use synod::transport::tcp::{Hello, WireFrame};

    /// The frames a TCP connection carries, the handshake's included (an unidentified peer
    /// can send any `WireFrame` before the acceptor checks it is a hello).
    #[test]
    fn a_huge_length_anywhere_in_a_wire_frame_allocates_within_the_bound() {
        let mut frames = vec![WireFrame::Hello(Hello {
            protocol_version: 1,
            cluster_id: CLUSTER,
            from: NodeId(1),
            to: NodeId(2),
        })];
        frames.extend(
            every_message()
                .into_iter()
                .filter(|message| {
                    matches!(
                        message.body,
                        Body::Promise { .. } | Body::Forward { .. } | Body::Snapshot { .. }
                    )
                })
                .map(WireFrame::Message),
        );
        let mut worst = Worst::default();
        for frame in frames {
            for payload in one_huge_length(&payload_of(&frame)) {
                check::<WireFrame>(&payload, message_bound(), &mut worst);
            }
        }
        worst.report("WireFrame, one huge length");
    }
}
