//! Snapshot transfer in chunks: the sender keeps, per receiver, the snapshot and how much of
//! it was acknowledged, and sends at most [`SNAPSHOT_CHUNKS_INFLIGHT`] chunks beyond that;
//! the receiver appends chunks that continue what it holds, acknowledges what it holds, and
//! installs the snapshot once it is whole. Go-back-N: a chunk lost (or arriving out of
//! order) is sent again, with those after it, once `retransmit_ticks` pass without progress.

use super::{Replica, Role};
use crate::message::{Body, Message};
use crate::storage::Snapshot;
use crate::types::{MembershipAt, NodeId, Slot};
use bytes::{Bytes, BytesMut};

/// Chunks of a snapshot sent to one receiver and not yet acknowledged, at most.
pub const SNAPSHOT_CHUNKS_INFLIGHT: u64 = 4;

/// A snapshot being sent to one member.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct OutgoingSnapshot {
    slot: Slot,
    data: Bytes,
    /// The membership in force after `slot`, sent with every chunk.
    membership: MembershipAt,
    /// Bytes the receiver acknowledged holding.
    acked: u64,
    /// The next byte to send.
    next: u64,
    /// The tick of the last progress (the start, or an acknowledgement that moved `acked`).
    progress_tick: u64,
    /// The tick chunks were last (re)sent from `acked`.
    resent_tick: u64,
}

impl OutgoingSnapshot {
    pub(super) fn new(snapshot: &Snapshot, membership: MembershipAt, now: u64) -> OutgoingSnapshot {
        OutgoingSnapshot {
            slot: snapshot.slot,
            data: snapshot.data.clone(),
            membership,
            acked: 0,
            next: 0,
            progress_tick: now,
            resent_tick: now,
        }
    }

    fn total(&self) -> u64 {
        self.data.len() as u64
    }
}

/// A snapshot whose chunks are arriving.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct IncomingSnapshot {
    from: NodeId,
    pub(super) slot: Slot,
    total: u64,
    data: BytesMut,
    membership: MembershipAt,
}

impl Replica {
    /// Sends member `index` the chunks of its snapshot that fit in the window.
    pub(super) fn send_snapshot_chunks(&mut self, index: usize) {
        let to = self.members[index];
        let chunk = self.config.snapshot_chunk_bytes as u64;
        let Some(out) = self.snapshots_out[index].as_mut() else {
            return;
        };
        let total = out.total();
        let window_end = out
            .acked
            .saturating_add(SNAPSHOT_CHUNKS_INFLIGHT.saturating_mul(chunk));
        // An empty snapshot is one empty chunk (`next` becomes 1 once it is sent).
        while out.next < total.max(1) && out.next < window_end {
            let end = out.next.saturating_add(chunk).min(total);
            let data = out.data.slice(out.next as usize..end as usize);
            let body = Body::Snapshot {
                slot: out.slot,
                offset: out.next,
                total,
                data,
                membership: Box::new(out.membership.clone()),
            };
            out.next = end.max(1);
            self.messages.push(Message {
                from: self.config.id,
                to,
                body,
            });
        }
    }

    /// On a tick: sends again from what was acknowledged when `retransmit_ticks` passed
    /// without progress; drops transfers without progress for two election timeouts.
    pub(super) fn retransmit_snapshots(&mut self) {
        let retransmit = u64::from(self.config.retransmit_ticks);
        let give_up = 2 * u64::from(self.config.election_ticks);
        for index in 0..self.snapshots_out.len() {
            let Some(out) = self.snapshots_out[index].as_mut() else {
                continue;
            };
            if self.now - out.progress_tick >= give_up {
                tracing::debug!(node = %self.config.id, to = %self.members[index], slot = out.slot, "snapshot transfer dropped");
                self.snapshots_out[index] = None;
                continue;
            }
            if self.now - out.progress_tick.max(out.resent_tick) >= retransmit {
                out.next = out.acked;
                out.resent_tick = self.now;
                self.send_snapshot_chunks(index);
            }
        }
    }

    /// The receiver of a snapshot holds its first `received` bytes.
    pub(super) fn on_snapshot_ack(&mut self, from: NodeId, slot: Slot, received: u64) {
        let index = self.member_index(from).expect("validated sender");
        let Some(out) = self.snapshots_out[index].as_mut() else {
            return;
        };
        if out.slot != slot {
            return; // about a transfer this one replaced
        }
        if received >= out.total() {
            self.snapshots_out[index] = None; // installed, or not needed
            return;
        }
        if received > out.acked {
            out.acked = received;
            out.progress_tick = self.now;
        }
        self.send_snapshot_chunks(index);
    }

    /// A chunk of a peer's snapshot (see [`install_snapshot`](Replica::install_snapshot)).
    pub(super) fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        slot: Slot,
        offset: u64,
        total: u64,
        data: Bytes,
        membership: MembershipAt,
    ) {
        if !matches!(self.role, Role::Follower | Role::PreCandidate) || slot <= self.hard.chosen {
            // Not wanted here (see `install_snapshot`): the sender can stop.
            self.send(
                from,
                Body::SnapshotAck {
                    slot,
                    received: total,
                },
            );
            return;
        }
        let same = self.snapshot_in.as_ref().is_some_and(|incoming| {
            incoming.from == from
                && incoming.slot == slot
                && incoming.total == total
                && incoming.membership == membership
        });
        if !same {
            if offset != 0 {
                // A chunk of a transfer not started here (its start was lost, or this one
                // replaced it): ask for the start.
                self.send(from, Body::SnapshotAck { slot, received: 0 });
                return;
            }
            // A new transfer replaces any other. Room grows with the chunks, not with what a
            // peer declares.
            self.snapshot_in = Some(IncomingSnapshot {
                from,
                slot,
                total,
                data: BytesMut::new(),
                membership,
            });
        }
        let incoming = self.snapshot_in.as_mut().expect("set above");
        if offset == incoming.data.len() as u64 {
            incoming.data.extend_from_slice(&data);
        }
        let received = incoming.data.len() as u64;
        if received == total {
            let incoming = self.snapshot_in.take().expect("set above");
            let IncomingSnapshot {
                data, membership, ..
            } = incoming;
            self.install_snapshot(from, slot, data.freeze(), membership);
        }
        self.send(from, Body::SnapshotAck { slot, received });
    }
}
