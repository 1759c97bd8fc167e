//! Drives a 3-replica cluster with the input: ticks, proposals, deliveries of the queued
//! messages, and messages of the fuzzer's own (decoded from the input by the wire codec, so
//! any sender, recipient, kind and number can appear). No call may panic, and every Ready loop
//! must end: bad input gets an error, never a crash (`tests/replica_bad_input.rs` is the
//! proptest twin of this target; coverage guidance reaches states its generator does not,
//! such as a candidate receiving a forged Promise).
//!
//! Each action is one byte, `op`:
//! - `op % 8` in 0..=2: tick replica `op % 8`;
//! - 3: at replica `(op / 8) % 3`, by `(op / 24) % 4`: propose a command (0, 1), ask a
//!   read-index read (2), or (3) hand the leadership to the next replica (`op < 96`) or
//!   change the membership (voters: a non-empty subset of the three picked by `op / 8`);
//! - 4: deliver every queued message (one round);
//! - 5: forge a message that fits the recipient's current state (its promised ballot and
//!   chosen mark), from the next 10 bytes: recipient, kind, and a number (`u64`) that places
//!   slots and marks, up to the edges. A forged Promise for a candidate's own ballot is how the
//!   fuzzer reaches phase 1 with a report at a huge slot;
//! - 6, 7: the next byte is a length `n`, the next `n` bytes a message payload (bincode, as on
//!   the wire, without a frame): decoded and stepped into its recipient if it is a member.
//!
//! Run from the repository root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run step -- -max_total_time=60`
#![no_main]

#[path = "../../tests/bad_input_cluster/mod.rs"]
mod bad_input_cluster;

use bad_input_cluster::Cluster;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use synod::transport::codec::decode_payload;
use synod::{Ballot, Body, Entries, Entry, Membership, Message, NodeId, Value};

/// A message for replica `to` (0-based) that its current state will not dismiss out of hand.
fn forge(cluster: &Cluster, to: usize, kind: u8, number: u64) -> Message {
    let status = cluster.replicas[to].status();
    let (promised, chosen) = (status.promised, status.chosen);
    let target = NodeId(to as u64 + 1);
    // A sender other than the recipient: the owner of its promised ballot when that is a peer.
    let from = if promised.node != target && (1..=3).contains(&promised.node.0) {
        promised.node
    } else {
        NodeId((to as u64 + 1 + number % 2) % 3 + 1)
    };
    let slot = chosen.saturating_add(1).saturating_add(number);
    let entry = |slot, ballot| Entry {
        slot,
        ballot,
        value: Value::Noop,
    };
    let body = match kind % 7 {
        0 => Body::PreVoteReply {
            ballot: Ballot::new(promised.round + 1 + number % 2, target),
            granted: true,
            promised,
            chosen: chosen.saturating_add(number % 3),
        },
        1 => Body::Promise {
            ballot: promised,
            first_slot: chosen + 1,
            accepted: vec![entry(
                slot,
                Ballot::new(promised.round.saturating_sub(1).max(1), from),
            )],
            chosen: 0,
            next_slot: None,
        },
        2 => Body::Accepted {
            ballot: promised,
            first_slot: chosen + 1,
            last_slot: slot,
        },
        3 => Body::Commit {
            ballot: Ballot::new(promised.round.max(1), from),
            chosen: number,
        },
        4 => Body::ReadIndex {
            incarnation: number % 4,
            round: number.max(1),
        },
        5 => Body::ReadIndexReply {
            incarnation: 1 + number % 3,
            round: 1 + number % 4,
            slot: Some(chosen.saturating_add(number)),
        },
        _ => {
            let ballot = Ballot::new(promised.round.max(1), from);
            Body::Accept {
                ballot,
                chosen: chosen.saturating_add(number % 4),
                entries: Entries::from(vec![entry(slot, ballot)]),
            }
        }
    };
    Message {
        from,
        to: target,
        body,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cluster = Cluster::new();
    let mut input = data;
    let mut proposals = 0u64;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        match op % 8 {
            index @ 0..=2 => {
                cluster.replicas[usize::from(index)].tick();
                cluster.drain(usize::from(index));
            }
            3 => {
                let index = usize::from(op / 8) % 3;
                proposals += 1;
                let replica = &mut cluster.replicas[index];
                match (op / 24) % 4 {
                    0 | 1 => {
                        let _ = replica.propose(Bytes::from(proposals.to_le_bytes().to_vec()));
                    }
                    2 => {
                        let _ = replica.read_index(proposals);
                    }
                    _ if op / 96 == 0 => {
                        let _ = replica.transfer_leadership(NodeId((index as u64 + 1) % 3 + 1));
                    }
                    _ => {
                        // Voters: a non-empty subset of the three; one of the others a learner.
                        let mask = u64::from(op / 8) % 7 + 1;
                        let voters = (1..=3).filter(|id| mask & (1 << (id - 1)) != 0);
                        let learners = (1..=3).filter(|id| mask & (1 << (id - 1)) == 0).take(1);
                        let _ = replica.change_membership(Membership::new(
                            voters.map(NodeId),
                            learners.map(NodeId),
                        ));
                    }
                }
                cluster.drain(index);
            }
            4 => {
                for message in std::mem::take(&mut cluster.queue) {
                    cluster.step(message);
                }
            }
            5 => {
                let [to, kind, number @ ..] = input else {
                    break;
                };
                let mut bytes = [0u8; 8];
                let taken = number.len().min(8);
                bytes[..taken].copy_from_slice(&number[..taken]);
                input = &number[taken..];
                let message = forge(
                    &cluster,
                    usize::from(*to) % 3,
                    *kind,
                    u64::from_le_bytes(bytes),
                );
                cluster.step(message);
            }
            _ => {
                let Some((&length, rest)) = input.split_first() else {
                    break;
                };
                let (payload, rest) = rest.split_at(usize::from(length).min(rest.len()));
                input = rest;
                if let Ok(message) = decode_payload::<Message>(payload) {
                    cluster.step(message);
                }
            }
        }
    }
});
