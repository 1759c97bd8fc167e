//! The messages Multi-Paxos replicas exchange.
//!
//! Names follow *Paxos Made Simple*: phase 1 is `Prepare`/`Promise`, phase 2 is
//! `Accept`/`Accepted`. Everything else is the machinery of a practical Multi-Paxos: pre-votes
//! (so a node that was cut off cannot disturb a healthy leader), heartbeats (failure detection
//! and check-quorum), chosen marks (`Commit`), catch-up (`Fetch`/`FetchReply`) and forwarded
//! proposals.

use crate::types::{Ballot, Entries, Entry, MembershipAt, NodeId, ProposalId, Slot};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A message from one replica to another.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// What the message says.
    pub body: Body,
}

/// A command forwarded from a follower to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// The id the follower's `propose` returned.
    pub id: ProposalId,
    /// The command bytes.
    pub data: Bytes,
}

/// The content of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// "Would you promise `ballot` if I asked?" Changes no state; lets a node find out whether
    /// it can win an election before it raises any acceptor's promise.
    PreVote {
        /// The ballot the sender would use.
        ballot: Ballot,
        /// The sender's chosen mark: a replica does not vote for a candidate that knows fewer
        /// chosen slots than itself (it would have to re-propose them all).
        chosen: Slot,
    },
    /// The answer to a [`Body::PreVote`].
    PreVoteReply {
        /// The ballot asked about.
        ballot: Ballot,
        /// True if the sender would promise it: it has not heard from a live leader within
        /// the election timeout and has promised nothing higher.
        granted: bool,
        /// The sender's promised ballot, so the candidate can pick a higher round next time.
        promised: Ballot,
        /// The sender's chosen mark: a candidate that is behind it (refused for that) fetches
        /// the slots it lacks from the sender, which may be how it learns of a membership
        /// change.
        chosen: Slot,
    },
    /// Phase 1a: "promise not to accept anything below `ballot`, and tell me what you accepted
    /// in every slot from `first_slot` on."
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The candidate's first slot not known chosen.
        first_slot: Slot,
        /// `Some(b)`: the leader of ballot `b` handed its leadership over to the candidate
        /// ([`Body::TimeoutNow`]). An acceptor that still follows (or is) that leadership,
        /// having promised `b`, answers even though it heard from the leader recently
        /// (leader stickiness only protects a leader that wants to stay); one that follows
        /// a later leadership keeps its stickiness, so a handover's Prepare that arrives
        /// late cannot depose a later leader (or break its lease).
        transfer: Option<Ballot>,
    },
    /// Phase 1b: the promise, with every value accepted at or above the requested slot.
    /// Sent only once the promise is durable.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The slot the Prepare asked from.
        first_slot: Slot,
        /// The acceptor's highest-ballot accepted entry for each slot from `first_slot` on
        /// (up to `next_slot`, excluded, if there is one).
        accepted: Vec<Entry>,
        /// The acceptor's chosen mark.
        chosen: Slot,
        /// `Some(slot)`: the promise is paged (its entries would not fit one message of
        /// [`Config::fetch_bytes_max`](crate::Config::fetch_bytes_max)) and continues from
        /// `slot`: the candidate asks again with a `Prepare` of the same ballot from `slot`,
        /// and counts the acceptor once the last page (`None`) has come.
        next_slot: Option<Slot>,
    },
    /// Phase 2a: "accept these values in these contiguous slots under `ballot`". Also carries
    /// the leader's chosen mark.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's chosen mark (every slot up to it is chosen).
        chosen: Slot,
        /// The entries, contiguous and in slot order, each with `ballot` as its ballot: a run
        /// shared with the leader's log, not a copy (encoded as a vector).
        entries: Entries,
    },
    /// Phase 2b: "I accepted every slot in `first_slot..=last_slot` under `ballot`". Sent only
    /// once those entries are durable.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The first slot of the acknowledged Accept.
        first_slot: Slot,
        /// The last slot of the acknowledged Accept.
        last_slot: Slot,
    },
    /// "I have promised a higher ballot than yours": the reply to a Prepare or Accept that an
    /// acceptor refuses.
    Reject {
        /// The ballot refused.
        ballot: Ballot,
        /// The acceptor's promised ballot.
        promised: Ballot,
    },
    /// The leader's periodic keep-alive, carrying its chosen mark; also sent at once to
    /// confirm the leadership for reads ([`Replica::read_index`](crate::Replica::read_index)).
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's chosen mark.
        chosen: Slot,
        /// The leader's latest read round (0: none yet): a reply echoing it confirms, for
        /// every read of that round and before, that the follower had promised no higher
        /// ballot after the reads were asked.
        read: u64,
    },
    /// The answer to a heartbeat: the follower still follows `ballot`.
    HeartbeatReply {
        /// The ballot of the heartbeat.
        ballot: Ballot,
        /// The follower's chosen mark, so the leader can see who lags.
        chosen: Slot,
        /// The heartbeat's read round, echoed.
        read: u64,
    },
    /// The leader's chosen mark moved: sent at once, so followers apply without waiting for
    /// the next Accept or heartbeat.
    Commit {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's chosen mark.
        chosen: Slot,
    },
    /// A follower asks the leader for chosen entries from `first_slot` on.
    Fetch {
        /// The ballot of the leader asked.
        ballot: Ballot,
        /// The first slot wanted.
        first_slot: Slot,
    },
    /// Chosen entries in slot order, contiguous from the Fetch's `first_slot`. Also sent
    /// unasked, without entries, by a replica that does not vote and hears no leader: "I know
    /// every slot up to `chosen` chosen; fetch from me" (a voter that missed a membership
    /// change learns it that way).
    FetchReply {
        /// The leader's ballot.
        ballot: Ballot,
        /// The entries (chosen values).
        entries: Vec<Entry>,
        /// The leader's chosen mark.
        chosen: Slot,
    },
    /// Proposals a follower forwards to the leader it knows.
    Forward {
        /// The commands, in the order they were proposed.
        commands: Vec<Command>,
    },
    /// A chunk of the application's snapshot, for a replica that needs slots the sender
    /// compacted away (sent by [`Replica::send_snapshot`](crate::Replica::send_snapshot)
    /// after an [`Event::SnapshotNeeded`](crate::replica::Event::SnapshotNeeded)), in chunks
    /// of at most `Config::snapshot_chunk_bytes`, a few at a time, each acknowledged with
    /// [`Body::SnapshotAck`].
    ///
    /// It carries no ballot: a snapshot holds only chosen state, true whoever sends it.
    Snapshot {
        /// The last slot the snapshot covers; every slot up to it is chosen.
        slot: Slot,
        /// Where this chunk starts in the snapshot's bytes.
        offset: u64,
        /// The snapshot's whole size in bytes.
        total: u64,
        /// The chunk: the state machine's bytes from `offset` on, opaque to synod.
        data: Bytes,
        /// The membership in force after `slot` (the receiver adopts it with the snapshot).
        /// Boxed: it would make every message larger.
        membership: Box<MembershipAt>,
    },
    /// "Campaign now": a leader hands its leadership over to the receiver
    /// ([`Replica::transfer_leadership`](crate::Replica::transfer_leadership)), which starts
    /// phase 1 at once, without pre-votes, if it still follows `ballot`.
    TimeoutNow {
        /// The leader's ballot.
        ballot: Ballot,
    },
    /// A follower asks the leader it knows to confirm reads asked of it
    /// ([`Replica::read_index`](crate::Replica::read_index) on a follower): the reads asked
    /// there before this request share it.
    ReadIndex {
        /// The follower's incarnation (it grows at every restart and is durable before the
        /// first request): a reply to a request of an earlier life answers nothing.
        incarnation: u64,
        /// The request's number in this incarnation (from 1, growing): the reply echoes it.
        round: u64,
    },
    /// The receiver of a snapshot's chunks holds its first `received` bytes (all of them:
    /// installed, or not needed); the sender goes on from there.
    SnapshotAck {
        /// The snapshot's slot.
        slot: Slot,
        /// Bytes held, from the start of the snapshot.
        received: u64,
    },
    /// The leader's answer to [`Body::ReadIndex`].
    ReadIndexReply {
        /// The request's incarnation, echoed.
        incarnation: u64,
        /// The request answered: it also answers the same follower's earlier requests to
        /// this leader that are still waiting.
        round: u64,
        /// The slot to serve the reads from once applied, confirmed by a quorum after the
        /// request arrived; `None` if the sender does not lead (or has no room for reads).
        slot: Option<Slot>,
    },
}

impl Body {
    /// True for the messages a leader or a candidate sends (Prepare, PreVote, Accept,
    /// Heartbeat, Commit, FetchReply, Snapshot, TimeoutNow): a replica takes them from a node
    /// outside the membership it knows, which may be a leader of a membership it has not
    /// learned yet. Replies are taken only from members.
    pub fn is_from_leader_or_candidate(&self) -> bool {
        matches!(
            self,
            Body::PreVote { .. }
                | Body::Prepare { .. }
                | Body::Accept { .. }
                | Body::Heartbeat { .. }
                | Body::Commit { .. }
                | Body::FetchReply { .. }
                | Body::Snapshot { .. }
                | Body::TimeoutNow { .. }
        )
    }

    /// The ballot the message speaks for, if any (`Forward`, `ReadIndex`, `ReadIndexReply`,
    /// `Snapshot` and `SnapshotAck` have none).
    pub fn ballot(&self) -> Option<Ballot> {
        match self {
            Body::PreVote { ballot, .. }
            | Body::PreVoteReply { ballot, .. }
            | Body::Prepare { ballot, .. }
            | Body::Promise { ballot, .. }
            | Body::Accept { ballot, .. }
            | Body::Accepted { ballot, .. }
            | Body::Reject { ballot, .. }
            | Body::Heartbeat { ballot, .. }
            | Body::TimeoutNow { ballot }
            | Body::HeartbeatReply { ballot, .. }
            | Body::Commit { ballot, .. }
            | Body::Fetch { ballot, .. }
            | Body::FetchReply { ballot, .. } => Some(*ballot),
            Body::Snapshot { .. }
            | Body::Forward { .. }
            | Body::ReadIndex { .. }
            | Body::ReadIndexReply { .. }
            | Body::SnapshotAck { .. } => None,
        }
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::PreVote { .. } => "PreVote",
            Body::PreVoteReply { .. } => "PreVoteReply",
            Body::Prepare { .. } => "Prepare",
            Body::Promise { .. } => "Promise",
            Body::Accept { .. } => "Accept",
            Body::Accepted { .. } => "Accepted",
            Body::Reject { .. } => "Reject",
            Body::Heartbeat { .. } => "Heartbeat",
            Body::TimeoutNow { .. } => "TimeoutNow",
            Body::HeartbeatReply { .. } => "HeartbeatReply",
            Body::Commit { .. } => "Commit",
            Body::Fetch { .. } => "Fetch",
            Body::FetchReply { .. } => "FetchReply",
            Body::Forward { .. } => "Forward",
            Body::Snapshot { .. } => "Snapshot",
            Body::ReadIndex { .. } => "ReadIndex",
            Body::ReadIndexReply { .. } => "ReadIndexReply",
            Body::SnapshotAck { .. } => "SnapshotAck",
        }
    }
}
