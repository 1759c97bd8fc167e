//! Replica configuration: identity, membership, every timeout (in ticks) and every limit.

use crate::error::ConfigError;
use crate::types::{NodeId, Slot};

/// The largest membership a replica supports, voters and learners together. Votes are
/// tracked in a 64-bit mask over a replica's member list, which also holds the replica itself
/// when it is not a member (removed, or joining): hence one below 64.
pub const MEMBERS_MAX: usize = 63;

/// Everything a [`Replica`](crate::replica::Replica) needs to know before it starts.
///
/// Timeouts are counted in ticks (calls to `tick()`); the application decides how long a tick
/// is. Limits bound every queue and window; past them `propose` returns `Busy`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This replica's id; must be one of `members`.
    pub id: NodeId,
    /// Every voting member of the cluster when it was first started, this replica included
    /// (unless it is a learner). Only the node's first start (empty storage) reads it: the
    /// replica writes it with its first ready and from then on recovers the membership in
    /// force from its storage, including every change
    /// ([`Replica::change_membership`](crate::Replica::change_membership)). Ignored with
    /// `join`.
    pub members: Vec<NodeId>,
    /// The non-voting members (learners) the cluster was first started with (usually none).
    pub learners: Vec<NodeId>,
    /// This node joins a running cluster, to be added with
    /// [`Replica::change_membership`](crate::Replica::change_membership): it knows no
    /// membership until a leader sends it the cluster's (a chosen configuration entry, or a
    /// snapshot), and until then never campaigns. `members` and `learners` are ignored. Once
    /// only the node's first start (empty storage) reads it: a node that was started to join
    /// goes on joining after a restart without the flag until it has learned a membership
    /// (its storage holds a start but no membership), and a node started with members
    /// ignores the flag later.
    pub join: bool,
    /// Identifies the cluster on the wire; frames from other clusters are rejected.
    pub cluster_id: u64,
    /// Minimum ticks without hearing a leader before a follower starts an election. The actual
    /// timeout is drawn from `election_ticks..2 * election_ticks` by the seeded RNG.
    pub election_ticks: u32,
    /// Ticks between heartbeats from the leader.
    pub heartbeat_ticks: u32,
    /// Ticks after which an unacknowledged Accept (or Fetch, or election round) is sent again.
    pub retransmit_ticks: u32,
    /// A leader that has not heard from a quorum within `election_ticks` steps down.
    pub check_quorum: bool,
    /// Leader leases, in ticks (0, the default: off). A leader that a quorum acknowledged a
    /// heartbeat from, sent fewer than `lease_ticks` ticks ago, answers
    /// [`Replica::read_index`](crate::Replica::read_index) at once, without a round of
    /// heartbeats: the members that acknowledged refuse to help elect anyone else for
    /// `election_ticks` whole ticks after they heard it (leader stickiness; with leases on
    /// that is one tick count more than without, since a message may arrive at the very end
    /// of a tick). Must be below
    /// `election_ticks`, and is safe only if:
    ///
    /// - every member runs with the same `election_ticks` and leases on;
    /// - no member's ticks run faster than the leader's by a factor above
    ///   `election_ticks / lease_ticks` (half of `election_ticks` tolerates 2x);
    /// - ticks follow real time across stalls: a process that was paused (a GC, a swapped
    ///   page, a stopped VM) delivers the ticks it missed before it steps any message or
    ///   asks any read.
    ///
    /// With leases on, a replica refuses votes for its first `election_ticks` ticks after
    /// it starts (it may have acknowledged a lease it no longer remembers), and
    /// [`campaign`](crate::Replica::campaign) does nothing while the leader it follows is
    /// live. A leadership transfer ends the leases of that leadership.
    pub lease_ticks: u32,
    /// Followers forward proposals to the leader (true) or answer `NotLeader` (false).
    pub forward_proposals: bool,
    /// Followers send [`Replica::read_index`](crate::Replica::read_index) reads to the
    /// leader for confirmation (true) or answer `NotLeader` (false).
    pub forward_reads: bool,
    /// Accept messages in flight (sent, not acknowledged) per follower.
    pub inflight_msgs_max: usize,
    /// Payload bytes in flight per follower.
    pub inflight_bytes_max: usize,
    /// Payload bytes in one Accept (at least one entry is always sent).
    pub accept_bytes_max: usize,
    /// The largest command [`propose`](crate::Replica::propose) takes (a larger one is
    /// [`ProposeError::TooLarge`](crate::ProposeError::TooLarge); a larger forwarded one is
    /// dropped). Every message carries at least one entry, so keep it, plus
    /// `accept_bytes_max` or `fetch_bytes_max`, below the transport's frame limit (the TCP
    /// transport's default `frame_bytes_max` is 16 MiB): a command that no message can carry
    /// would stall the log. Default 8 MiB.
    pub command_bytes_max: usize,
    /// Payload bytes proposed but not yet chosen; past it `propose` returns `Busy`.
    pub uncommitted_bytes_max: usize,
    /// Entries proposed but not yet chosen; past it `propose` returns `Busy`.
    pub uncommitted_entries_max: usize,
    /// Payload bytes in one FetchReply, and in one page of a Promise (an acceptor whose
    /// accepted entries would not fit one message promises in pages; at least one entry per
    /// message).
    pub fetch_bytes_max: usize,
    /// The largest snapshot, in bytes of state-machine data, that this replica sends with
    /// [`Replica::send_snapshot`](crate::Replica::send_snapshot) or accepts from a peer (a
    /// receiver holds one snapshot in memory while its chunks arrive).
    pub snapshot_bytes_max: usize,
    /// The largest chunk of a snapshot in one message: keep it well below the transport's
    /// frame limit (the TCP transport's default `frame_bytes_max` is 16 MiB). Up to
    /// [`SNAPSHOT_CHUNKS_INFLIGHT`](crate::replica::SNAPSHOT_CHUNKS_INFLIGHT) chunks per
    /// receiver are unacknowledged at a time.
    pub snapshot_chunk_bytes: usize,
    /// Commands a follower holds for forwarding before `propose` returns `Busy`.
    pub forward_commands_max: usize,
    /// Reads a leader holds while it confirms its leadership
    /// ([`Replica::read_index`](crate::Replica::read_index)); past it `read_index` returns
    /// `Busy`.
    pub reads_max: usize,
    /// An acceptor ignores Accepts for slots more than this far beyond its chosen mark (it
    /// catches up with `Fetch` first). Bounds the memory a far-ahead leader can make it use.
    ///
    /// It also bounds the holes a Promise may report: a Promise with more unreported slots below
    /// its highest accepted entry is refused as malformed, so that a faulty peer cannot make a
    /// new leader fill a vast range with no-ops. Give every replica of a cluster the same value
    /// (or at least no smaller one than its peers').
    pub accept_lookahead_slots_max: u64,
    /// Seed of the RNG that randomizes election timeouts; runs are reproducible from it.
    pub seed: u64,
    /// The last slot the application has already applied (after a restart): committed entries
    /// are handed out from the slot after it. If the storage compacted its log, this must be at
    /// least the compaction point (the slot of the snapshot the application restored):
    /// `Replica::new` refuses a mark below it. A mark beyond the recovered chosen mark is the
    /// slot of a snapshot installed from a peer (whose chosen mark had not been written yet at
    /// a crash): those slots are chosen, and the replica starts from the snapshot.
    pub applied: Slot,
}

impl Config {
    /// A configuration with sensible defaults for `id` in a cluster of `members`.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            id,
            members,
            learners: Vec::new(),
            join: false,
            cluster_id: 0,
            election_ticks: 10,
            heartbeat_ticks: 2,
            retransmit_ticks: 4,
            check_quorum: true,
            lease_ticks: 0,
            forward_proposals: true,
            forward_reads: true,
            inflight_msgs_max: 256,
            inflight_bytes_max: 16 << 20,
            accept_bytes_max: 256 << 10,
            command_bytes_max: 8 << 20,
            uncommitted_bytes_max: 64 << 20,
            uncommitted_entries_max: 65_536,
            fetch_bytes_max: 1 << 20,
            snapshot_bytes_max: 1 << 30,
            snapshot_chunk_bytes: 1 << 20,
            forward_commands_max: 4096,
            reads_max: 4096,
            accept_lookahead_slots_max: 1 << 18,
            seed: id.0,
            applied: 0,
        }
    }

    /// Checks every field; returns the first problem found.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field that is wrong and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.join {
            let membership = self.initial_membership();
            membership.validate()?;
            if !membership.contains(self.id) {
                return Err(ConfigError::new(
                    "id",
                    "must be one of the members or learners",
                ));
            }
        }
        if self.applied > crate::replica::SLOT_OR_ROUND_MAX {
            return Err(ConfigError::new(
                "applied",
                "must be at most SLOT_OR_ROUND_MAX (2^62)",
            ));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::new("heartbeat_ticks", "must be at least 1"));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::new(
                "election_ticks",
                "must be greater than heartbeat_ticks",
            ));
        }
        if self.election_ticks > u32::MAX / 2 {
            // The randomized timeout is drawn from election_ticks..2 * election_ticks.
            return Err(ConfigError::new(
                "election_ticks",
                "must be at most u32::MAX / 2",
            ));
        }
        if self.retransmit_ticks == 0 {
            return Err(ConfigError::new("retransmit_ticks", "must be at least 1"));
        }
        if self.lease_ticks >= self.election_ticks {
            return Err(ConfigError::new(
                "lease_ticks",
                "must be below election_ticks (0 turns leases off)",
            ));
        }
        let positive = [
            ("inflight_msgs_max", self.inflight_msgs_max),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("accept_bytes_max", self.accept_bytes_max),
            ("command_bytes_max", self.command_bytes_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
            ("fetch_bytes_max", self.fetch_bytes_max),
            ("snapshot_bytes_max", self.snapshot_bytes_max),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("forward_commands_max", self.forward_commands_max),
            ("reads_max", self.reads_max),
            (
                "accept_lookahead_slots_max",
                self.accept_lookahead_slots_max as usize,
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// A configuration for node `id` joining a running cluster (`join` set, no members):
    /// start it, then add it at the leader with
    /// [`Replica::change_membership`](crate::Replica::change_membership).
    pub fn joining(id: NodeId) -> Config {
        Config {
            join: true,
            ..Config::new(id, Vec::new())
        }
    }

    /// The membership the cluster was first started with: `members` as voters, `learners`.
    pub fn initial_membership(&self) -> crate::types::Membership {
        crate::types::Membership::new(self.members.iter().copied(), self.learners.iter().copied())
    }

    /// The number of votes that makes a majority of the members.
    pub fn quorum(&self) -> usize {
        crate::quorum::majority(self.members.len())
    }
}

/// Checks a member list and this node's place in it (shared by every configuration that names
/// members): not empty, at most [`MEMBERS_MAX`], no duplicates, and `id` among them.
pub(crate) fn validate_membership(id: NodeId, members: &[NodeId]) -> Result<(), ConfigError> {
    if members.is_empty() {
        return Err(ConfigError::new("members", "must not be empty"));
    }
    if members.len() > MEMBERS_MAX {
        return Err(ConfigError::new(
            "members",
            "at most MEMBERS_MAX (63) members are supported",
        ));
    }
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != members.len() {
        return Err(ConfigError::new("members", "must not contain duplicates"));
    }
    if !members.contains(&id) {
        return Err(ConfigError::new("id", "must be one of the members"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Config {
        Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)])
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(three().validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let mut config = three();
        config.id = NodeId(9);
        assert_eq!(config.validate().unwrap_err().field, "id");
        let mut config = three();
        config.members.push(NodeId(2));
        assert_eq!(config.validate().unwrap_err().field, "members");
        let mut config = three();
        config.election_ticks = config.heartbeat_ticks;
        assert_eq!(config.validate().unwrap_err().field, "election_ticks");
        let mut config = three();
        config.inflight_msgs_max = 0;
        assert_eq!(config.validate().unwrap_err().field, "inflight_msgs_max");
        let mut config = three();
        config.members = (0..65).map(NodeId).collect();
        config.id = NodeId(0);
        assert_eq!(config.validate().unwrap_err().field, "members");
    }
}
