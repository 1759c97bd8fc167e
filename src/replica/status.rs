//! A point-in-time view of a replica, for monitoring and tests.

use crate::types::{Ballot, NodeId, Slot};

/// What a replica is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepting from a leader (or waiting for one).
    Follower,
    /// Asking for pre-votes before starting an election.
    PreCandidate,
    /// Running phase 1 with its own ballot.
    Candidate,
    /// Leading: phase 1 done, proposing in phase 2.
    Leader,
}

/// The leader's view of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The follower.
    pub id: NodeId,
    /// The next slot a fresh Accept to it starts at.
    pub next_slot: Slot,
    /// Accepts in flight to it.
    pub inflight_msgs: usize,
    /// Payload bytes in flight to it.
    pub inflight_bytes: usize,
    /// Its chosen mark as last reported.
    pub chosen: Slot,
    /// Ticks since the leader last heard from it.
    pub ticks_since_heard: u64,
    /// True for a voter, false for a learner (promote a learner once its `chosen` is close
    /// to the leader's).
    pub voter: bool,
}

/// A snapshot of a replica's state, from [`Replica::status`](super::Replica::status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The replica.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its promised ballot (possibly not yet durable).
    pub promised: Ballot,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// That leader's ballot.
    pub leader_ballot: Ballot,
    /// Every slot up to this one is chosen and held locally.
    pub chosen: Slot,
    /// The last slot handed to the application.
    pub applied: Slot,
    /// The highest slot in the local log.
    pub last_slot: Slot,
    /// The first slot still held in memory (after compaction).
    pub first_slot: Slot,
    /// The incarnation (number of starts).
    pub incarnation: u64,
    /// Payload bytes proposed and not yet chosen (leader only).
    pub uncommitted_bytes: usize,
    /// Messages refused by `step` since start.
    pub dropped_messages: u64,
    /// Reads answered under the leader's lease, without a round of heartbeats, since start
    /// ([`Config::lease_ticks`](crate::Config::lease_ticks)).
    pub lease_reads: u64,
    /// Per-follower progress (leader only).
    pub followers: Vec<FollowerStatus>,
    /// The membership in force (`None`: a node joining with `Config::join` that has not
    /// learned it yet).
    pub membership: Option<crate::types::Membership>,
    /// The slot of a membership change this leader proposed (or recovered) that is not
    /// chosen yet: proposals wait for it.
    pub membership_pending: Option<Slot>,
}
