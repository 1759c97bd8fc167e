//! Feeds arbitrary bytes to the wire codec: the whole-buffer decoder and the incremental
//! `FrameDecoder` (with chunk boundaries taken from the input). Neither may panic, both must
//! agree, and whatever decodes must re-encode to a frame that decodes to the same message.
//!
//! The first input byte picks the mode and the chunk size. In "payload" mode the rest of the
//! input is wrapped in a valid header with a correct checksum, so the fuzzer reaches the
//! bincode payload decoder instead of being stopped by the CRC.
//!
//! Run from the repository root (cargo-fuzz needs nightly features):
//! `mkdir -p fuzz/corpus/decode && RUSTC_BOOTSTRAP=1 cargo fuzz run decode fuzz/corpus/decode fuzz/seeds/decode -- -max_total_time=60`
//! `fuzz/seeds/decode` holds a few valid frames and payloads (cluster id 1) to start from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synod::transport::codec::{Codec, FrameDecoder, FORMAT_VERSION, MAGIC};
use synod::Message;

const CLUSTER: u64 = 1;

fn frame_around(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(22 + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame.extend_from_slice(&CLUSTER.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let codec = Codec::new(CLUSTER, 1 << 16).expect("a frame size within the codec's limits");
    let wrapped;
    let stream = if mode & 0x80 != 0 {
        wrapped = frame_around(input);
        &wrapped[..]
    } else {
        input
    };

    // Whole-buffer decoding, frame after frame.
    let mut whole = Vec::new();
    let mut rest = stream;
    while let Ok((message, consumed)) = codec.decode::<Message>(rest) {
        assert!(consumed > 0 && consumed <= rest.len());
        rest = &rest[consumed..];
        whole.push(message);
    }

    // Incremental decoding in chunks whose size comes from the mode byte.
    let chunk_bytes = usize::from(mode % 31) + 1;
    let mut decoder = FrameDecoder::<Message>::new(codec);
    let mut incremental = Vec::new();
    for chunk in stream.chunks(chunk_bytes) {
        if decoder.push(chunk, &mut incremental).is_err() {
            break;
        }
    }
    assert_eq!(whole, incremental);

    for message in &whole {
        let frame = codec.encode(message).expect("a decoded message re-encodes");
        let (again, consumed) = codec.decode::<Message>(&frame).expect("and decodes");
        assert_eq!(consumed, frame.len());
        assert_eq!(&again, message);
    }
});
