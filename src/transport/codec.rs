//! The wire codec: frames that carry one serde-serializable message each.
//!
//! Every message a transport sends is wrapped in a frame:
//!
//! ```text
//! offset  size  field
//!      0     4  magic            b"SYND" (the u32 0x444e5953, little-endian)
//!      4     2  format version   FORMAT_VERSION (currently 5)
//!      6     8  cluster id       the sender's cluster; frames of another cluster are refused
//!     14     4  payload length   bytes that follow the header
//!     18     4  payload CRC32C   checksum of the payload bytes
//!     22     n  payload          the message, bincode 2 (serde API, standard configuration)
//! ```
//!
//! All integers are little-endian. A frame never exceeds the codec's `frame_bytes_max`
//! (header included); the length is checked as soon as the header is seen, before any payload
//! byte is buffered, so a peer cannot make the receiver allocate what it merely declares.
//!
//! Decoding never panics on bad input and every failure is a [`DecodeError`]:
//!
//! | input                                   | error                            |
//! |-----------------------------------------|----------------------------------|
//! | fewer bytes than a header or a frame    | [`DecodeError::Truncated`]       |
//! | first four bytes are not `SYND`         | [`DecodeError::BadMagic`]        |
//! | another format version                  | [`DecodeError::UnsupportedVersion`] |
//! | another cluster id                      | [`DecodeError::ForeignCluster`]  |
//! | frame longer than `frame_bytes_max`     | [`DecodeError::Oversized`]       |
//! | payload does not match its CRC32C       | [`DecodeError::Checksum`]        |
//! | payload is not a value of the type      | [`DecodeError::Payload`]         |
//!
//! ## What decoding allocates
//!
//! A peer must not make the receiver allocate what a frame merely declares. Decoding a payload
//! of `n` bytes allocates in proportion to `n`, whatever lengths its bincode declares:
//!
//! * A string or byte string is allocated only once its bytes are known to be in the payload:
//!   it is read in place from the frame, then copied (bincode alone would allocate its
//!   declared length first). At most `n` bytes for all of them together.
//! * serde preallocates a sequence or map for the number of elements it declares (up to
//!   1 MiB per collection, serde's `size_hint::cautious`, whatever the payload's size). The
//!   decoder reports to serde at most as many elements, over all the sequences and maps of
//!   the value together, as the payload has bytes: every element takes at least one. A valid
//!   payload's sequences still get exactly the capacity they declare.
//! * Bincode's allocation limit, at most [`CLAIM_BYTES_PER_PAYLOAD_BYTE`] times `n` rounded
//!   up to a power of four (at least 64 KiB), caps the in-memory size bincode counts for the
//!   primitives, strings and byte strings decoded: a 100-byte frame that declares a 4 GiB byte
//!   string is refused (`LimitExceeded`) before anything is read for it.
//!
//! For synod's messages, [`Message`](crate::Message) and the TCP transport's `WireFrame`,
//! whose largest sequence element is an [`Entry`](crate::Entry) (88 bytes on 64-bit targets),
//! decoding a payload of `n` bytes therefore makes no single allocation larger than `n * 88`
//! bytes and holds less than twice that at once, the decoded value included: a 37-byte frame
//! declaring 2^40 entries costs at most 15 × 88 bytes for its 15-byte payload.
//! `tests/codec_bounds.rs` measures both bounds on hostile frames. For another type, a
//! hostile payload can make serde preallocate at most `n` elements of its sequences and maps
//! in all (a hash map or set allocates a table of about twice the elements reported). The
//! decoder does not bound nesting: a type that contains itself would be decoded as deep as
//! the payload nests it; synod's message types do not. None of this involves the wire
//! format: the decoder reads the same bytes as plain bincode.
//!
//! [`Codec`] encodes and decodes whole frames held in one buffer; [`FrameDecoder`] cuts frames
//! out of a byte stream fed in arbitrary chunks (as read from a TCP socket).

use crate::error::{ConfigError, DecodeError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use thiserror::Error;

/// The first four bytes of every frame: `b"SYND"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SYND");

/// The frame format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 5;

/// Bytes in a frame header: magic, version, cluster id, payload length, payload checksum.
pub const HEADER_BYTES: usize = 4 + 2 + 8 + 4 + 4;

/// The largest `frame_bytes_max` a [`Codec`] accepts: 64 MiB.
///
/// It keeps the bincode allocation limit (a multiple of the payload length) within 1 GiB.
pub const FRAME_BYTES_MAX_LIMIT: usize = 64 << 20;

/// Bincode counts ("claims") the in-memory size of every primitive, string and byte string it
/// decodes (not the sequences serde preallocates; see the module documentation): at most
/// 16 bytes (an `u128`) for the smallest encoding of 1 byte. A well-formed payload of `n`
/// bytes never claims more than `16 * n`, so that is the limit the decoder allows, rounded up.
pub const CLAIM_BYTES_PER_PAYLOAD_BYTE: usize = 16;

/// The smallest bincode allocation limit used, for small payloads.
const CLAIM_BYTES_MIN: usize = 1 << 16;

const MAGIC_RANGE: std::ops::Range<usize> = 0..4;
const VERSION_RANGE: std::ops::Range<usize> = 4..6;
const CLUSTER_RANGE: std::ops::Range<usize> = 6..14;
const LENGTH_RANGE: std::ops::Range<usize> = 14..18;
const CHECKSUM_RANGE: std::ops::Range<usize> = 18..22;

/// A message could not be encoded into a frame. The message is not sent; this is a local
/// problem (a message too large for the configured frame size, or a type serde cannot encode
/// with bincode), not a peer's.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The encoded frame would exceed `frame_bytes_max`. Send smaller messages (fewer entries
    /// per Accept or FetchReply) or raise the limit on every node.
    #[error("encoded frame of {length} bytes exceeds the maximum of {max}")]
    Oversized {
        /// The frame length the message needs, header included.
        length: usize,
        /// The codec's `frame_bytes_max`.
        max: usize,
    },
    /// Serde or bincode refused the value (for example a sequence of unknown length).
    #[error("cannot encode payload: {0}")]
    Payload(String),
}

/// The fields of a frame header, as read from the wire (not yet validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    magic: u32,
    version: u16,
    cluster_id: u64,
    payload_bytes: u32,
    checksum: u32,
}

impl Header {
    /// Reads the header fields from the first [`HEADER_BYTES`] of `bytes`.
    fn read(bytes: &[u8; HEADER_BYTES]) -> Header {
        let array = |range: std::ops::Range<usize>| -> &[u8] { &bytes[range] };
        Header {
            magic: u32::from_le_bytes(array(MAGIC_RANGE).try_into().expect("4 bytes")),
            version: u16::from_le_bytes(array(VERSION_RANGE).try_into().expect("2 bytes")),
            cluster_id: u64::from_le_bytes(array(CLUSTER_RANGE).try_into().expect("8 bytes")),
            payload_bytes: u32::from_le_bytes(array(LENGTH_RANGE).try_into().expect("4 bytes")),
            checksum: u32::from_le_bytes(array(CHECKSUM_RANGE).try_into().expect("4 bytes")),
        }
    }
}

/// Encodes values into frames and decodes frames back, for one cluster.
///
/// A `Codec` is a small `Copy` value: keep one per transport. Both sides of a connection must
/// use the same cluster id; the frame size limit may differ, but a frame above the receiver's
/// limit is refused by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    /// The cluster id written into every frame and required of every frame decoded.
    cluster_id: u64,
    /// The largest frame, header included, encoded or accepted.
    /// Invariant: `HEADER_BYTES < frame_bytes_max <= FRAME_BYTES_MAX_LIMIT`.
    frame_bytes_max: usize,
}

impl Codec {
    /// A codec for `cluster_id` with frames of at most `frame_bytes_max` bytes, header included.
    ///
    /// # Errors
    /// A [`ConfigError`] for field `frame_bytes_max` if it is not above [`HEADER_BYTES`] (no
    /// payload would fit) or is above [`FRAME_BYTES_MAX_LIMIT`].
    pub fn new(cluster_id: u64, frame_bytes_max: usize) -> Result<Codec, ConfigError> {
        if frame_bytes_max <= HEADER_BYTES {
            return Err(ConfigError::new(
                "frame_bytes_max",
                "must exceed the frame header (HEADER_BYTES)",
            ));
        }
        if frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return Err(ConfigError::new(
                "frame_bytes_max",
                "must be at most FRAME_BYTES_MAX_LIMIT",
            ));
        }
        Ok(Codec {
            cluster_id,
            frame_bytes_max,
        })
    }

    /// The cluster id this codec writes and requires.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The largest frame this codec writes or accepts, header included.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Encodes `value` into a new frame.
    ///
    /// # Errors
    /// [`EncodeError::Oversized`] if the frame would exceed `frame_bytes_max`;
    /// [`EncodeError::Payload`] if bincode cannot encode the value.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut frame = Vec::new();
        self.encode_into(value, &mut frame)?;
        Ok(frame)
    }

    /// Appends the frame of `value` to `buffer` (to batch several frames into one write).
    /// On error `buffer` is left as it was.
    ///
    /// # Errors
    /// As [`Codec::encode`].
    pub fn encode_into<T: Serialize>(
        &self,
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let frame_start = buffer.len();
        buffer.resize(frame_start + HEADER_BYTES, 0);
        let encoded =
            bincode::serde::encode_into_std_write(value, buffer, bincode::config::standard());
        let payload_bytes = match encoded {
            Ok(payload_bytes) => payload_bytes,
            Err(error) => {
                buffer.truncate(frame_start);
                return Err(EncodeError::Payload(error.to_string()));
            }
        };
        let frame_bytes = HEADER_BYTES + payload_bytes;
        if frame_bytes > self.frame_bytes_max {
            buffer.truncate(frame_start);
            return Err(EncodeError::Oversized {
                length: frame_bytes,
                max: self.frame_bytes_max,
            });
        }
        assert_eq!(buffer.len(), frame_start + frame_bytes);
        let payload_start = frame_start + HEADER_BYTES;
        let checksum = crc32c::crc32c(&buffer[payload_start..]);
        let payload_bytes = u32::try_from(payload_bytes).expect("bounded by frame_bytes_max");
        let header = &mut buffer[frame_start..payload_start];
        header[MAGIC_RANGE].copy_from_slice(&MAGIC.to_le_bytes());
        header[VERSION_RANGE].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[CLUSTER_RANGE].copy_from_slice(&self.cluster_id.to_le_bytes());
        header[LENGTH_RANGE].copy_from_slice(&payload_bytes.to_le_bytes());
        header[CHECKSUM_RANGE].copy_from_slice(&checksum.to_le_bytes());
        Ok(())
    }

    /// Decodes the frame at the start of `bytes`; returns the value and the frame's length, so
    /// the caller can decode the next frame from `&bytes[length..]`.
    ///
    /// Allocates in proportion to the frame's real length, never to what it declares: for a
    /// [`Message`](crate::Message) with a payload of `n` bytes, no allocation above `n * 88`
    /// bytes and less than twice that live at once (module documentation, "What decoding
    /// allocates", also for other types).
    ///
    /// # Errors
    /// Any [`DecodeError`] (see the module documentation); `Truncated` means the frame may
    /// still be completed by more bytes, every other error means the bytes are not a frame for
    /// this node.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), DecodeError> {
        let header = self.check_header(bytes)?;
        let frame_bytes = HEADER_BYTES + header.payload_bytes as usize;
        if bytes.len() < frame_bytes {
            return Err(DecodeError::Truncated {
                needed: frame_bytes,
                available: bytes.len(),
            });
        }
        let value = decode_checked_payload(&header, &bytes[HEADER_BYTES..frame_bytes])?;
        Ok((value, frame_bytes))
    }

    /// Validates the header at the start of `bytes` (magic, version, cluster, length).
    fn check_header(&self, bytes: &[u8]) -> Result<Header, DecodeError> {
        let Some(header_bytes) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Err(DecodeError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        };
        let header = Header::read(header_bytes);
        if header.magic != MAGIC {
            return Err(DecodeError::BadMagic(header.magic));
        }
        if header.version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(header.version));
        }
        if header.cluster_id != self.cluster_id {
            return Err(DecodeError::ForeignCluster {
                found: header.cluster_id,
                expected: self.cluster_id,
            });
        }
        // u32 -> usize cannot overflow on the 32- and 64-bit targets Rust std supports with
        // the addition below, since HEADER_BYTES is tiny; use checked arithmetic anyway.
        let frame_bytes = (header.payload_bytes as usize).checked_add(HEADER_BYTES);
        match frame_bytes {
            Some(frame_bytes) if frame_bytes <= self.frame_bytes_max => Ok(header),
            _ => Err(DecodeError::Oversized {
                length: (header.payload_bytes as usize).saturating_add(HEADER_BYTES),
                max: self.frame_bytes_max,
            }),
        }
    }
}

/// Verifies the payload against the header's checksum, then decodes it.
fn decode_checked_payload<T: DeserializeOwned>(
    header: &Header,
    payload: &[u8],
) -> Result<T, DecodeError> {
    assert_eq!(payload.len(), header.payload_bytes as usize);
    let actual = crc32c::crc32c(payload);
    if actual != header.checksum {
        return Err(DecodeError::Checksum {
            expected: header.checksum,
            actual,
        });
    }
    decode_payload(payload)
}

/// Decodes a bincode (serde API, standard configuration) payload that must be consumed whole,
/// allocating in proportion to the payload's real length (module documentation, "What
/// decoding allocates"): the body of a frame, without its header or checksum (for a transport
/// that frames and checks messages itself, or a fuzzer).
///
/// # Errors
/// [`DecodeError::Payload`] if the bytes are not exactly one value of `T`, or if decoding
/// would allocate more than the limit allows; [`DecodeError::Oversized`] if the payload is
/// beyond what any codec accepts.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let claim_bytes = payload
        .len()
        .saturating_mul(CLAIM_BYTES_PER_PAYLOAD_BYTE)
        .max(CLAIM_BYTES_MIN);
    // Bincode's limit is a const generic: pick the smallest of a few powers of four that
    // covers the claim, so the limit is at most four times what the payload can need.
    macro_rules! decode_with_first_limit_above_claim {
        ($($limit:expr),+) => {
            $(
                if claim_bytes <= $limit {
                    let config = bincode::config::standard().with_limit::<{ $limit }>();
                    let decoded = bincode::serde::seed_decode_from_slice(
                        bounded::Payload::<T>::new(payload.len()),
                        payload,
                        config,
                    );
                    return finish_decode(decoded, payload.len());
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
    Err(DecodeError::Oversized {
        length: payload.len(),
        max: FRAME_BYTES_MAX_LIMIT,
    })
}

/// Maps bincode's result to ours and refuses trailing bytes.
fn finish_decode<T>(
    decoded: Result<(T, usize), bincode::error::DecodeError>,
    payload_bytes: usize,
) -> Result<T, DecodeError> {
    match decoded {
        Ok((value, consumed)) if consumed == payload_bytes => Ok(value),
        Ok((_, consumed)) => Err(DecodeError::Payload(format!(
            "{} trailing bytes after the value",
            payload_bytes - consumed
        ))),
        Err(error) => Err(DecodeError::Payload(error.to_string())),
    }
}

/// Cuts frames out of a byte stream delivered in arbitrary chunks and decodes them.
///
/// Feed every chunk read from the connection to [`FrameDecoder::push`]; it appends each
/// complete frame's value to the output vector. Memory stays bounded: at most one partial frame
/// (never more than the codec's `frame_bytes_max`) is buffered between calls, the frame length
/// is validated as soon as the header is complete, the buffer only grows with bytes that
/// actually arrived, and decoding a frame allocates in proportion to its length as
/// [`Codec::decode`] does (module documentation, "What decoding allocates").
///
/// After any error the stream's framing can no longer be trusted: the decoder stays failed and
/// returns the same error from every later `push`. Close the connection.
#[derive(Debug)]
pub struct FrameDecoder<T> {
    codec: Codec,
    /// The start of a frame that has not fully arrived yet (empty between frames).
    /// Invariant: `partial.len() < HEADER_BYTES`, or the header in it is valid and
    /// `partial.len() < ` its frame length.
    partial: Vec<u8>,
    /// The first error met; the decoder refuses everything after it.
    failure: Option<DecodeError>,
    frames_decoded: u64,
    _value: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> FrameDecoder<T> {
    /// A decoder for a fresh stream.
    pub fn new(codec: Codec) -> FrameDecoder<T> {
        FrameDecoder {
            codec,
            partial: Vec::new(),
            failure: None,
            frames_decoded: 0,
            _value: PhantomData,
        }
    }

    /// Consumes `chunk`, the next bytes of the stream, and appends to `frames` the value of
    /// every frame it completes, in stream order.
    ///
    /// # Errors
    /// The first [`DecodeError`] met (never `Truncated`: an incomplete frame just waits for
    /// more bytes). Values decoded before the error are in `frames`; the decoder is failed for
    /// good (see the type's documentation).
    pub fn push(&mut self, mut chunk: &[u8], frames: &mut Vec<T>) -> Result<(), DecodeError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        // Each turn completes or extends one frame; every turn consumes at least one byte of
        // `chunk` or returns, so the loop runs at most `chunk.len() + 1` times.
        loop {
            let result = if self.partial.is_empty() {
                self.decode_from_chunk(&mut chunk, frames)
            } else {
                self.extend_partial(&mut chunk, frames)
            };
            match result {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(error) => {
                    self.partial = Vec::new();
                    self.failure = Some(error.clone());
                    return Err(error);
                }
            }
        }
    }

    /// With no partial frame buffered: decodes a whole frame straight from `chunk`, or buffers
    /// the incomplete frame it starts. Returns whether to go on.
    fn decode_from_chunk(
        &mut self,
        chunk: &mut &[u8],
        frames: &mut Vec<T>,
    ) -> Result<bool, DecodeError> {
        if chunk.is_empty() {
            return Ok(false);
        }
        match self.codec.decode::<T>(chunk) {
            Ok((value, frame_bytes)) => {
                frames.push(value);
                self.frames_decoded += 1;
                *chunk = &chunk[frame_bytes..];
                Ok(true)
            }
            Err(DecodeError::Truncated { .. }) => {
                // The header, if complete, was validated by `decode`: the frame fits the limit.
                assert!(chunk.len() < self.codec.frame_bytes_max);
                self.partial.extend_from_slice(chunk);
                *chunk = &[];
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// With a partial frame buffered: moves into it the bytes of `chunk` that belong to it,
    /// and decodes it once complete. Returns whether to go on.
    fn extend_partial(
        &mut self,
        chunk: &mut &[u8],
        frames: &mut Vec<T>,
    ) -> Result<bool, DecodeError> {
        if self.partial.len() < HEADER_BYTES {
            let wanted = (HEADER_BYTES - self.partial.len()).min(chunk.len());
            self.partial.extend_from_slice(&chunk[..wanted]);
            *chunk = &chunk[wanted..];
            if self.partial.len() < HEADER_BYTES {
                assert!(chunk.is_empty());
                return Ok(false);
            }
        }
        // The header is complete: refuse a bad or oversize frame before buffering its payload.
        let header = self.codec.check_header(&self.partial)?;
        let frame_bytes = HEADER_BYTES + header.payload_bytes as usize;
        assert!(self.partial.len() <= frame_bytes);
        let wanted = (frame_bytes - self.partial.len()).min(chunk.len());
        self.partial.extend_from_slice(&chunk[..wanted]);
        *chunk = &chunk[wanted..];
        if self.partial.len() < frame_bytes {
            assert!(chunk.is_empty());
            return Ok(false);
        }
        let value = decode_checked_payload(&header, &self.partial[HEADER_BYTES..])?;
        frames.push(value);
        self.frames_decoded += 1;
        // Keep the allocation only if it is small; a big frame's buffer is given back.
        if self.partial.capacity() > 64 << 10 {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
        }
        Ok(true)
    }

    /// Bytes of an incomplete frame held, waiting for the rest of it.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.len()
    }

    /// The number of frames decoded so far.
    pub fn frames_decoded(&self) -> u64 {
        self.frames_decoded
    }

    /// Call at the end of the stream: checks that it did not stop inside a frame.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if an incomplete frame is buffered; the decoder's earlier
    /// error if it failed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.partial.is_empty() {
            return Ok(());
        }
        let needed = match self.codec.check_header(&self.partial) {
            Ok(header) => HEADER_BYTES + header.payload_bytes as usize,
            Err(_) => HEADER_BYTES,
        };
        Err(DecodeError::Truncated {
            needed,
            available: self.partial.len(),
        })
    }
}

/// The serde layer between bincode's slice deserializer and the decoded type that keeps what a
/// payload can make the receiver allocate in proportion to its length (see the module
/// documentation, "What decoding allocates"). It forwards every call unchanged, except that:
///
/// * the length of a sequence or map read from the payload (`deserialize_seq`,
///   `deserialize_map`) is reported to the visitor (`size_hint`, from which serde
///   preallocates) as at most what is left of a budget of one element per payload byte, and
///   the budget is charged with what was reported;
/// * an owned string or byte string (`deserialize_string`, `deserialize_byte_buf`) is read
///   borrowed from the payload and then copied, so it is allocated only once its bytes are
///   known to be there, instead of at its declared length before they are read.
///
/// The wire format is untouched: bincode reads the same bytes either way. (An element type
/// that is not zero-sized yet encodes to no bytes, say a struct of skipped fields, may make a
/// valid sequence outgrow its reported size: that costs reallocations, never a refusal.)
///
/// Every method is `#[inline]`: without the hints the extra layer cost about a quarter of the
/// decoding time of a small message (a Heartbeat); with them it costs nothing measurable.
mod bounded {
    use serde::de::{
        Deserialize, DeserializeSeed, Deserializer, EnumAccess, Error, MapAccess, SeqAccess,
        VariantAccess, Visitor,
    };
    use std::cell::Cell;
    use std::fmt;
    use std::marker::PhantomData;

    /// Deserializes a `T` whose payload is `payload_bytes` long through the bounding layer.
    pub(super) struct Payload<T> {
        payload_bytes: usize,
        _value: PhantomData<fn() -> T>,
    }

    impl<T> Payload<T> {
        pub(super) fn new(payload_bytes: usize) -> Payload<T> {
            Payload {
                payload_bytes,
                _value: PhantomData,
            }
        }
    }

    impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Payload<T> {
        type Value = T;

        #[inline]
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
            // Every element of a sequence or map takes at least one payload byte (its first
            // byte is its own: an element's sequences start after their length prefix), so a
            // valid payload's sequences and maps declare at most this many elements together.
            let budget = Cell::new(self.payload_bytes);
            T::deserialize(Bounded::new(deserializer, &budget))
        }
    }

    /// Wraps a deserializer, visitor, seed, enum access or variant access of one decode.
    struct Bounded<'b, X> {
        inner: X,
        /// Elements the sequences and maps still to come may be preallocated for.
        budget: &'b Cell<usize>,
        /// For a visitor: the sequence or map it may visit has a length read from the payload
        /// (to charge to the budget), not one its type fixes (tuples, structs).
        charged: bool,
    }

    impl<'b, X> Bounded<'b, X> {
        #[inline]
        fn new(inner: X, budget: &'b Cell<usize>) -> Bounded<'b, X> {
            Bounded {
                inner,
                budget,
                charged: false,
            }
        }

        /// The size hint to report for a sequence or map of `declared` elements.
        #[inline]
        fn grant(&self, declared: Option<usize>) -> usize {
            match declared {
                Some(declared) if self.charged => {
                    let granted = declared.min(self.budget.get());
                    self.budget.set(self.budget.get() - granted);
                    granted
                }
                _ => usize::MAX,
            }
        }
    }

    macro_rules! forward_deserialize {
        ($($method:ident($($argument:ident: $type:ty),*);)*) => {$(
            #[inline]
            fn $method<V: Visitor<'de>>(
                self,
                $($argument: $type,)*
                visitor: V,
            ) -> Result<V::Value, D::Error> {
                self.inner.$method($($argument,)* Bounded::new(visitor, self.budget))
            }
        )*};
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
        type Error = D::Error;

        forward_deserialize! {
            deserialize_any();
            deserialize_bool();
            deserialize_i8();
            deserialize_i16();
            deserialize_i32();
            deserialize_i64();
            deserialize_i128();
            deserialize_u8();
            deserialize_u16();
            deserialize_u32();
            deserialize_u64();
            deserialize_u128();
            deserialize_f32();
            deserialize_f64();
            deserialize_char();
            deserialize_str();
            deserialize_bytes();
            deserialize_option();
            deserialize_unit();
            deserialize_unit_struct(name: &'static str);
            deserialize_newtype_struct(name: &'static str);
            deserialize_tuple(length: usize);
            deserialize_tuple_struct(name: &'static str, length: usize);
            deserialize_struct(name: &'static str, fields: &'static [&'static str]);
            deserialize_enum(name: &'static str, variants: &'static [&'static str]);
            deserialize_identifier();
            deserialize_ignored_any();
        }

        #[inline]
        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_str(Owned(visitor))
        }

        #[inline]
        fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_bytes(Owned(visitor))
        }

        #[inline]
        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let mut visitor = Bounded::new(visitor, self.budget);
            visitor.charged = true;
            self.inner.deserialize_seq(visitor)
        }

        #[inline]
        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let mut visitor = Bounded::new(visitor, self.budget);
            visitor.charged = true;
            self.inner.deserialize_map(visitor)
        }

        #[inline]
        fn is_human_readable(&self) -> bool {
            self.inner.is_human_readable()
        }
    }

    macro_rules! forward_visit {
        ($($method:ident($type:ty);)*) => {$(
            #[inline]
            fn $method<E: Error>(self, value: $type) -> Result<V::Value, E> {
                self.inner.$method(value)
            }
        )*};
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Bounded<'_, V> {
        type Value = V::Value;

        #[inline]
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.inner.expecting(formatter)
        }

        forward_visit! {
            visit_bool(bool);
            visit_i8(i8);
            visit_i16(i16);
            visit_i32(i32);
            visit_i64(i64);
            visit_i128(i128);
            visit_u8(u8);
            visit_u16(u16);
            visit_u32(u32);
            visit_u64(u64);
            visit_u128(u128);
            visit_f32(f32);
            visit_f64(f64);
            visit_char(char);
            visit_str(&str);
            visit_borrowed_str(&'de str);
            visit_string(String);
            visit_bytes(&[u8]);
            visit_borrowed_bytes(&'de [u8]);
            visit_byte_buf(Vec<u8>);
        }

        #[inline]
        fn visit_none<E: Error>(self) -> Result<V::Value, E> {
            self.inner.visit_none()
        }

        #[inline]
        fn visit_unit<E: Error>(self) -> Result<V::Value, E> {
            self.inner.visit_unit()
        }

        #[inline]
        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
            self.inner
                .visit_some(Bounded::new(deserializer, self.budget))
        }

        #[inline]
        fn visit_newtype_struct<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<V::Value, D::Error> {
            self.inner
                .visit_newtype_struct(Bounded::new(deserializer, self.budget))
        }

        #[inline]
        fn visit_seq<A: SeqAccess<'de>>(self, access: A) -> Result<V::Value, A::Error> {
            let granted = self.grant(access.size_hint());
            self.inner.visit_seq(Elements {
                inner: access,
                budget: self.budget,
                granted,
            })
        }

        #[inline]
        fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<V::Value, A::Error> {
            let granted = self.grant(access.size_hint());
            self.inner.visit_map(Elements {
                inner: access,
                budget: self.budget,
                granted,
            })
        }

        #[inline]
        fn visit_enum<A: EnumAccess<'de>>(self, access: A) -> Result<V::Value, A::Error> {
            self.inner.visit_enum(Bounded::new(access, self.budget))
        }
    }

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<'_, S> {
        type Value = S::Value;

        #[inline]
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
            self.inner
                .deserialize(Bounded::new(deserializer, self.budget))
        }
    }

    impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Bounded<'b, A> {
        type Error = A::Error;
        type Variant = Bounded<'b, A::Variant>;

        #[inline]
        fn variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Self::Variant), A::Error> {
            let (value, variant) = self.inner.variant_seed(Bounded::new(seed, self.budget))?;
            Ok((value, Bounded::new(variant, self.budget)))
        }
    }

    impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Bounded<'_, A> {
        type Error = A::Error;

        #[inline]
        fn unit_variant(self) -> Result<(), A::Error> {
            self.inner.unit_variant()
        }

        #[inline]
        fn newtype_variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<S::Value, A::Error> {
            self.inner
                .newtype_variant_seed(Bounded::new(seed, self.budget))
        }

        #[inline]
        fn tuple_variant<V: Visitor<'de>>(
            self,
            length: usize,
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            self.inner
                .tuple_variant(length, Bounded::new(visitor, self.budget))
        }

        #[inline]
        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            self.inner
                .struct_variant(fields, Bounded::new(visitor, self.budget))
        }
    }

    /// The elements of a sequence or the entries of a map, reported as at most `granted`.
    struct Elements<'b, A> {
        inner: A,
        budget: &'b Cell<usize>,
        granted: usize,
    }

    impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Elements<'_, A> {
        type Error = A::Error;

        #[inline]
        fn next_element_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<Option<S::Value>, A::Error> {
            self.inner
                .next_element_seed(Bounded::new(seed, self.budget))
        }

        #[inline]
        fn size_hint(&self) -> Option<usize> {
            self.inner.size_hint().map(|left| left.min(self.granted))
        }
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Elements<'_, A> {
        type Error = A::Error;

        #[inline]
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            self.inner.next_key_seed(Bounded::new(seed, self.budget))
        }

        #[inline]
        fn next_value_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<S::Value, A::Error> {
            self.inner.next_value_seed(Bounded::new(seed, self.budget))
        }

        #[inline]
        fn next_entry_seed<K: DeserializeSeed<'de>, S: DeserializeSeed<'de>>(
            &mut self,
            key: K,
            value: S,
        ) -> Result<Option<(K::Value, S::Value)>, A::Error> {
            self.inner.next_entry_seed(
                Bounded::new(key, self.budget),
                Bounded::new(value, self.budget),
            )
        }

        #[inline]
        fn size_hint(&self) -> Option<usize> {
            self.inner.size_hint().map(|left| left.min(self.granted))
        }
    }

    /// Hands a visitor that asked for an owned string or byte string the borrowed one,
    /// copied: bincode then checks that its bytes are in the payload before anything is
    /// allocated for it.
    struct Owned<V>(V);

    impl<'de, V: Visitor<'de>> Visitor<'de> for Owned<V> {
        type Value = V::Value;

        #[inline]
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(formatter)
        }

        #[inline]
        fn visit_str<E: Error>(self, value: &str) -> Result<V::Value, E> {
            self.0.visit_string(value.to_owned())
        }

        #[inline]
        fn visit_string<E: Error>(self, value: String) -> Result<V::Value, E> {
            self.0.visit_string(value)
        }

        #[inline]
        fn visit_bytes<E: Error>(self, value: &[u8]) -> Result<V::Value, E> {
            self.0.visit_byte_buf(value.to_vec())
        }

        #[inline]
        fn visit_byte_buf<E: Error>(self, value: Vec<u8>) -> Result<V::Value, E> {
            self.0.visit_byte_buf(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Command, Message};
    use crate::types::{Ballot, Entry, NodeId, ProposalId, Value};
    use bytes::Bytes;
    use proptest::prelude::*;

    const CLUSTER: u64 = 0x5EED;

    fn codec() -> Codec {
        Codec::new(CLUSTER, 1 << 20).expect("a frame size within the codec's limits")
    }

    fn ballot() -> Ballot {
        Ballot::new(7, NodeId(2))
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
                        sequence: u64::MAX,
                    },
                    data: Bytes::from_static(b"set x = 1"),
                },
            },
            Entry {
                slot: 7,
                ballot: ballot(),
                value: Value::Membership(Box::new(crate::types::Membership::new(
                    [NodeId(1), NodeId(2)],
                    [NodeId(9)],
                ))),
            },
        ]
    }

    /// One message of every `Body` variant.
    fn every_body() -> Vec<Body> {
        vec![
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
                transfer: Some(Ballot::new(2, NodeId(1))),
            },
            Body::TimeoutNow { ballot: ballot() },
            Body::Promise {
                ballot: ballot(),
                first_slot: 3,
                accepted: entries(),
                chosen: 2,
                next_slot: Some(9),
            },
            Body::Accept {
                ballot: ballot(),
                chosen: 4,
                entries: entries().into(),
            },
            Body::Accepted {
                ballot: ballot(),
                first_slot: 5,
                last_slot: 6,
            },
            Body::Reject {
                ballot: ballot(),
                promised: Ballot::new(9, NodeId(1)),
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
                chosen: 6,
            },
            Body::ReadIndex {
                incarnation: 2,
                round: 7,
            },
            Body::ReadIndexReply {
                incarnation: 2,
                round: 7,
                slot: Some(6),
            },
            Body::Forward {
                commands: vec![Command {
                    id: ProposalId {
                        node: NodeId(1),
                        incarnation: 1,
                        sequence: 1,
                    },
                    data: Bytes::from(vec![0u8; 300]),
                }],
            },
            Body::SnapshotAck {
                slot: 6,
                received: 300,
            },
            Body::Snapshot {
                slot: 6,
                offset: 100,
                total: 300,
                data: Bytes::from(vec![5u8; 200]),
                membership: Box::new(crate::types::MembershipAt {
                    slot: 4,
                    membership: crate::types::Membership::new(
                        [NodeId(1), NodeId(2), NodeId(3)],
                        [NodeId(4)],
                    ),
                }),
            },
        ]
    }

    fn message(body: Body) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            body,
        }
    }

    fn valid_frame() -> Vec<u8> {
        codec()
            .encode(&message(every_body().swap_remove(4)))
            .unwrap()
    }

    #[test]
    fn every_body_variant_round_trips() {
        let codec = codec();
        for body in every_body() {
            let original = message(body);
            let frame = codec.encode(&original).unwrap();
            let (decoded, consumed) = codec.decode::<Message>(&frame).unwrap();
            assert_eq!(decoded, original, "{}", original.body.kind());
            assert_eq!(consumed, frame.len());
        }
    }

    #[test]
    fn frame_header_has_the_documented_layout() {
        let frame = valid_frame();
        assert_eq!(&frame[0..4], b"SYND");
        assert_eq!(u16::from_le_bytes([frame[4], frame[5]]), FORMAT_VERSION);
        assert_eq!(
            u64::from_le_bytes(frame[6..14].try_into().unwrap()),
            CLUSTER
        );
        let payload_bytes = u32::from_le_bytes(frame[14..18].try_into().unwrap()) as usize;
        assert_eq!(frame.len(), HEADER_BYTES + payload_bytes);
        let checksum = u32::from_le_bytes(frame[18..22].try_into().unwrap());
        assert_eq!(checksum, crc32c::crc32c(&frame[HEADER_BYTES..]));
    }

    #[test]
    fn truncated_frames_are_refused() {
        let frame = valid_frame();
        for length in 0..frame.len() {
            let error = codec().decode::<Message>(&frame[..length]).unwrap_err();
            let needed = if length < HEADER_BYTES {
                HEADER_BYTES
            } else {
                frame.len()
            };
            assert_eq!(
                error,
                DecodeError::Truncated {
                    needed,
                    available: length
                }
            );
        }
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut frame = valid_frame();
        frame[0] = b'X';
        let error = codec().decode::<Message>(&frame).unwrap_err();
        assert!(matches!(error, DecodeError::BadMagic(_)), "{error}");
    }

    #[test]
    fn wrong_version_is_refused() {
        // The previous format (before the heartbeats' read rounds) and the next one.
        for version in [FORMAT_VERSION - 1, FORMAT_VERSION + 1] {
            let mut frame = valid_frame();
            frame[4..6].copy_from_slice(&version.to_le_bytes());
            let error = codec().decode::<Message>(&frame).unwrap_err();
            assert_eq!(error, DecodeError::UnsupportedVersion(version));
        }
    }

    #[test]
    fn foreign_cluster_is_refused() {
        let frame = Codec::new(CLUSTER + 1, 1 << 20)
            .expect("a frame size within the codec's limits")
            .encode(&message(Body::PreVote {
                ballot: ballot(),
                chosen: 3,
            }))
            .unwrap();
        let error = codec().decode::<Message>(&frame).unwrap_err();
        assert_eq!(
            error,
            DecodeError::ForeignCluster {
                found: CLUSTER + 1,
                expected: CLUSTER
            }
        );
    }

    #[test]
    fn oversized_frames_are_refused_on_both_sides() {
        let small = Codec::new(CLUSTER, 64).expect("a frame size within the codec's limits");
        let big = message(every_body().pop().unwrap());
        let error = small.encode(&big).unwrap_err();
        assert!(
            matches!(error, EncodeError::Oversized { max: 64, .. }),
            "{error}"
        );

        // A header declaring 4 GiB is refused from the header alone.
        let mut frame = valid_frame();
        frame[LENGTH_RANGE].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = codec()
            .decode::<Message>(&frame[..HEADER_BYTES])
            .unwrap_err();
        assert_eq!(
            error,
            DecodeError::Oversized {
                length: u32::MAX as usize + HEADER_BYTES,
                max: 1 << 20
            }
        );
    }

    #[test]
    fn bad_checksum_is_refused() {
        let mut frame = valid_frame();
        let last = frame.len() - 1;
        frame[last] ^= 0x01;
        let error = codec().decode::<Message>(&frame).unwrap_err();
        assert!(matches!(error, DecodeError::Checksum { .. }), "{error}");
    }

    /// Builds a frame around arbitrary payload bytes, with a correct checksum.
    fn frame_with_payload(payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&MAGIC.to_le_bytes());
        frame.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        frame.extend_from_slice(&CLUSTER.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn undecodable_payload_is_refused() {
        // Body variant index 200 does not exist.
        let frame = frame_with_payload(&[1, 2, 200]);
        let error = codec().decode::<Message>(&frame).unwrap_err();
        assert!(matches!(error, DecodeError::Payload(_)), "{error}");

        // Trailing bytes after a valid value.
        let mut payload = valid_frame()[HEADER_BYTES..].to_vec();
        payload.push(0);
        let error = codec()
            .decode::<Message>(&frame_with_payload(&payload))
            .unwrap_err();
        assert!(matches!(error, DecodeError::Payload(_)), "{error}");
    }

    #[test]
    fn a_declared_huge_byte_string_is_refused_without_allocating_it() {
        // A Forward with one command whose data claims u64::MAX / 2 bytes: bincode would
        // allocate the declared length if its limit did not stop it first.
        let mut payload = vec![1, 2, 12, 1, 1, 1, 1];
        payload.push(0xFD); // varint tag: u64 follows
        payload.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        payload.extend_from_slice(&[0; 16]);
        let frame = frame_with_payload(&payload);
        let error = codec().decode::<Message>(&frame).unwrap_err();
        assert!(error.to_string().contains("LimitExceeded"), "{error}");

        // 1 GiB declared, a plausible size that an allocator would grant.
        let mut payload = vec![1, 2, 12, 1, 1, 1, 1];
        payload.push(0xFC); // varint tag: u32 follows
        payload.extend_from_slice(&(1u32 << 30).to_le_bytes());
        let error = codec()
            .decode::<Message>(&frame_with_payload(&payload))
            .unwrap_err();
        assert!(error.to_string().contains("LimitExceeded"), "{error}");
    }

    #[test]
    fn frame_decoder_reports_errors_and_stays_failed() {
        let mut decoder = FrameDecoder::<Message>::new(codec());
        let mut frames = Vec::new();
        let mut stream = valid_frame();
        let mut bad = valid_frame();
        bad[0] = 0;
        stream.extend_from_slice(&bad);
        let error = decoder.push(&stream, &mut frames).unwrap_err();
        assert!(matches!(error, DecodeError::BadMagic(_)));
        assert_eq!(frames.len(), 1);
        assert_eq!(decoder.push(&valid_frame(), &mut frames), Err(error));
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn frame_decoder_refuses_an_oversize_header_before_its_payload() {
        let mut decoder = FrameDecoder::<Message>::new(codec());
        let mut frames = Vec::new();
        let mut frame = valid_frame();
        frame[LENGTH_RANGE].copy_from_slice(&(1u32 << 30).to_le_bytes());
        // Feed the header a byte at a time: the error comes with its last byte.
        for (index, byte) in frame[..HEADER_BYTES].iter().enumerate() {
            let result = decoder.push(std::slice::from_ref(byte), &mut frames);
            if index + 1 < HEADER_BYTES {
                assert_eq!(result, Ok(()));
            } else {
                assert!(matches!(result, Err(DecodeError::Oversized { .. })));
            }
        }
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn frame_decoder_finish_reports_a_stream_cut_inside_a_frame() {
        let mut decoder = FrameDecoder::<Message>::new(codec());
        let mut frames = Vec::new();
        let frame = valid_frame();
        decoder.push(&frame[..30], &mut frames).unwrap();
        assert_eq!(
            decoder.finish(),
            Err(DecodeError::Truncated {
                needed: frame.len(),
                available: 30
            })
        );
        decoder.push(&frame[30..], &mut frames).unwrap();
        assert_eq!(decoder.finish(), Ok(()));
        assert_eq!(frames.len(), 1);
        assert_eq!(decoder.frames_decoded(), 1);
    }

    fn arbitrary_message() -> impl Strategy<Value = Message> {
        (
            0..every_body().len(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(variant, from, slot, data)| {
                let mut body = every_body().swap_remove(variant);
                match &mut body {
                    Body::Prepare { first_slot, .. } => *first_slot = slot,
                    Body::Forward { commands } => commands[0].data = Bytes::from(data),
                    Body::Accept { entries, .. } => {
                        let mut changed = entries.to_vec();
                        changed[0].slot = slot;
                        changed[1].value = Value::Command {
                            id: ProposalId::default(),
                            data: Bytes::from(data),
                        };
                        *entries = changed.into();
                    }
                    _ => {}
                }
                Message {
                    from: NodeId(from),
                    to: NodeId(2),
                    body,
                }
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = codec().decode::<Message>(&bytes);
            let mut decoder = FrameDecoder::<Message>::new(codec());
            let _ = decoder.push(&bytes, &mut Vec::new());
            // Random bytes behind a valid header reach the payload decoder.
            let _ = codec().decode::<Message>(&frame_with_payload(&bytes));
        }

        #[test]
        fn mutated_frames_decode_to_the_original_or_fail(
            original in arbitrary_message(),
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut frame = codec().encode(&original).unwrap();
            for (position, byte) in mutations {
                let position = position.index(frame.len());
                frame[position] = byte;
            }
            if truncate {
                frame.truncate(cut.index(frame.len()));
            }
            if let Ok((decoded, _)) = codec().decode::<Message>(&frame) {
                prop_assert_eq!(decoded, original);
            }
        }

        #[test]
        fn chunked_stream_yields_the_same_frames(
            messages in proptest::collection::vec(arbitrary_message(), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let codec = codec();
            let mut stream = Vec::new();
            for message in &messages {
                codec.encode_into(message, &mut stream).unwrap();
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut decoder = FrameDecoder::<Message>::new(codec);
            let mut frames = Vec::new();
            for window in cuts.windows(2) {
                decoder.push(&stream[window[0]..window[1]], &mut frames).unwrap();
                prop_assert!(decoder.buffered_bytes() < codec.frame_bytes_max());
            }
            prop_assert_eq!(decoder.finish(), Ok(()));
            prop_assert_eq!(frames, messages);
        }
    }
}
