//! Recovers a `FileStorage` from segment files built from the input. Recovery must end in
//! `Ok` or a `StorageError` (corrupt, foreign, ...), never a panic or a huge allocation, and
//! a storage it accepts must serve what it recovered, take a write and recover again.
//!
//! The records get correct lengths and checksums (random bytes would all stop at the first
//! checksum), so the fuzzer reaches the record decoders, the batch and commit logic and the
//! torn-tail rules; a flag byte can then damage the files. Input:
//! - byte 0, flags: bit 0 puts the records after the first half into a second segment; bit 1
//!   flips one byte (at the offset in the next two bytes) of the last segment; bit 2 cuts the
//!   last segment short by the third byte's value; bit 3 gives the header a wrong node id.
//! - then records: kind `u8`, body length `u8`, body.
//!
//! Run from the repository root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run recover -- -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use synod::{FileStorage, FileStorageOptions, NodeId, Storage, WriteBatch};

const CLUSTER: u64 = 7;
const NODE: u64 = 2;

/// The segments' salt (format 3): any value, the fuzzer need not hide it.
const SALT: u64 = 0x5A17;

/// Appends a record whose checksum is continued from `seed` (0 for the segment header, the
/// CRC32C of the salt for every other record).
fn record(buffer: &mut Vec<u8>, seed: u32, kind: u8, body: &[u8]) {
    let length = (body.len() as u32).to_le_bytes();
    let mut kind_and_body = Vec::with_capacity(1 + body.len());
    kind_and_body.push(kind);
    kind_and_body.extend_from_slice(body);
    let checksum = crc32c::crc32c_append(crc32c::crc32c_append(seed, &length), &kind_and_body);
    buffer.extend_from_slice(&length);
    buffer.extend_from_slice(&checksum.to_le_bytes());
    buffer.extend_from_slice(&kind_and_body);
}

fn segment(sequence: u64, first_batch: u64, node: u64, records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(b"SYNODLOG");
    header.extend_from_slice(&3u16.to_le_bytes());
    for value in [CLUSTER, node, sequence, first_batch, SALT] {
        header.extend_from_slice(&value.to_le_bytes());
    }
    let mut file = Vec::new();
    record(&mut file, 0, 1, &header);
    let seed = crc32c::crc32c(&SALT.to_le_bytes());
    for (kind, body) in records {
        record(&mut file, seed, *kind, body);
    }
    file
}

/// A directory of this process's own, emptied for each input.
fn directory() -> PathBuf {
    let path = std::env::temp_dir().join(format!("synod-fuzz-recover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("temporary directory");
    path
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut input)) = data.split_first() else {
        return;
    };
    let (mut offset, mut cut) = (0usize, 0usize);
    if flags & 2 != 0 && input.len() >= 2 {
        offset = usize::from(u16::from_le_bytes([input[0], input[1]]));
        input = &input[2..];
    }
    if flags & 4 != 0 && !input.is_empty() {
        cut = usize::from(input[0]);
        input = &input[1..];
    }
    let mut records: Vec<(u8, &[u8])> = Vec::new();
    while let [kind, length, rest @ ..] = input {
        let (body, rest) = rest.split_at(usize::from(*length).min(rest.len()));
        records.push((*kind, body));
        input = rest;
    }
    let node = if flags & 8 != 0 { NODE + 1 } else { NODE };
    let mut files = Vec::new();
    if flags & 1 != 0 {
        let half = records.len() / 2;
        files.push(segment(1, 1, node, &records[..half]));
        files.push(segment(2, 1 + half as u64, node, &records[half..]));
    } else {
        files.push(segment(1, 1, node, &records));
    }
    let last = files.last_mut().expect("one segment at least");
    if flags & 2 != 0 && !last.is_empty() {
        let at = offset % last.len();
        last[at] ^= 0x5A;
    }
    last.truncate(last.len().saturating_sub(cut));

    let path = directory();
    for (index, bytes) in files.iter().enumerate() {
        let name = format!("{:020}.seg", index + 1);
        std::fs::write(path.join(name), bytes).expect("write a segment");
    }
    let options = FileStorageOptions {
        command_bytes_max: 1 << 12,
        snapshot_bytes_max: 1 << 12,
        ..FileStorageOptions::default()
    };
    let Ok(mut storage) = FileStorage::open(&path, CLUSTER, NodeId(NODE), options) else {
        let _ = std::fs::remove_dir_all(&path);
        return;
    };
    if let Ok(recovered) = storage.recover() {
        let last = recovered
            .entries
            .iter()
            .map(|entry| entry.slot)
            .max()
            .unwrap_or(0);
        let _ = storage.entries(1, last.min(1 << 20));
        let mut batch = WriteBatch::new(Some(recovered.hard_state), Vec::new(), true);
        let _ = storage.write(&mut batch);
    }
    drop(storage);
    if let Ok(mut again) = FileStorage::open(&path, CLUSTER, NodeId(NODE), options) {
        let _ = again.recover();
    }
    let _ = std::fs::remove_dir_all(&path);
});
