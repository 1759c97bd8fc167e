//! Multi-Paxos, sans-IO: the [`Replica`].
//!
//! A replica is proposer, acceptor and learner at once. It owns no socket, file, thread or
//! clock: the application feeds it
//! - [`tick`](Replica::tick): one unit of logical time (all timeouts are counted in ticks);
//! - [`step`](Replica::step): a message from a peer;
//! - [`propose`](Replica::propose): a command to replicate;
//! - [`read_index`](Replica::read_index): a linearizable read, without a log entry;
//! - [`transfer_leadership`](Replica::transfer_leadership): hand the leadership over;
//! - [`change_membership`](Replica::change_membership): add, remove or replace members;
//!
//! and drains, whenever [`has_ready`](Replica::has_ready) says so, a numbered [`Ready`] batch:
//! messages to send now, a [`WriteBatch`](crate::storage::WriteBatch) to persist, messages to
//! send once that write is durable, entries newly chosen (to apply in slot order) and events.
//! It acknowledges the write with [`advance`](Replica::advance) or, when writes complete
//! asynchronously (group commit), with [`on_persisted`](Replica::on_persisted).
//!
//! # The protocol, as built here
//! - **Election.** A follower that hears no leader for its randomized election timeout first
//!   asks for *pre-votes* (no state changes), and only with a quorum of them runs phase 1:
//!   `Prepare(ballot, first_slot)` over every slot from its first unchosen one. A replica that
//!   heard from a live leader within `election_ticks` denies pre-votes and ignores Prepares
//!   (leader stickiness), so a replica that was cut off cannot depose a healthy leader.
//! - **Recovery.** With a quorum of promises (its own counted only once durable) the new leader
//!   re-proposes, in its own ballot, the highest-ballot value reported for each slot and a
//!   no-op for each hole (*Paxos Made Simple* §2.2, P2c; §3 for the holes).
//! - **Steady state.** Phase 2 only: proposals get consecutive slots; Accepts are batched per
//!   follower up to `accept_bytes_max` and pipelined within a window of `inflight_msgs_max`
//!   messages and `inflight_bytes_max` bytes. Acceptors accept per slot, so a lost or
//!   reordered Accept leaves a hole that is retransmitted, never a stall.
//! - **Learning.** A slot is chosen when a majority accepted it in one ballot. The leader's
//!   chosen mark travels on Accepts, Commits and heartbeats; a follower whose log lacks a
//!   chosen value fetches it.
//! - **Liveness.** Heartbeats every `heartbeat_ticks`; a leader that does not hear from a
//!   quorum within `election_ticks` steps down (check-quorum).
//! - **Reads (read-index).** A read asked of the leader takes as its slot the leader's
//!   chosen mark, or the last slot phase 1 recovered if that is higher (a value an earlier
//!   leader got chosen, and perhaps acknowledged, lies at or below it). The next ready sends
//!   a new *read round* on heartbeats; once a quorum (the leader included) echoes that round
//!   at the leader's ballot, no higher ballot had a quorum of promises when the read was
//!   asked, so no write acknowledged by then lies beyond the slot. The application serves the
//!   read once it has applied the slot. No log entry, no fsync; leadership that ends aborts
//!   the reads waiting. A follower sends the reads asked of it to the leader, one
//!   `ReadIndex` request per ready; the leader takes the slot when the request arrives and
//!   answers once a round sent after it is echoed; the follower reports that slot (and
//!   aborts the reads if the leader refuses or stays silent for `election_ticks`).
//!   Requests are numbered within the follower's durable incarnation, so an answer to a
//!   previous life answers nothing.
//! - **Leases (opt-in, `Config::lease_ticks`).** Every heartbeat then starts a read round,
//!   and the leader notes when it sent it. Once a quorum echoes a round sent at tick `t`, the
//!   leader answers reads at once until `t + lease_ticks`: each member that echoed heard it
//!   after `t` and refuses other candidates for `election_ticks` from then (stickiness), so
//!   no other leader can exist before the lease ends, given the bounds on clock rates and
//!   stalls that `lease_ticks` documents. Where stickiness has exceptions, leases close
//!   them: a replica refuses votes for its first `election_ticks` after it starts, a forced
//!   `campaign` waits for the leader to go quiet, a transfer ends the leadership's leases,
//!   and a handover's Prepare sets stickiness aside only at acceptors that still follow
//!   the leadership that handed over.
//! - **Membership change** ([`change_membership`](Replica::change_membership)). A change is a
//!   log entry; once chosen, its membership (voters and learners) governs every later slot.
//!   The leader proposes nothing after a change until it is chosen, and phase 1 stops at a
//!   change (the slots after it belong to the new membership's majorities), so each slot has
//!   one membership and no joint quorums are needed. See the `membership` module's source
//!   documentation for the argument.
//! - **Leadership transfer.** The leader stops taking proposals, waits until the target has
//!   acknowledged every unchosen slot and sends it `TimeoutNow`; the target runs phase 1 at
//!   once, without pre-votes, with Prepares flagged as a handover, which acceptors answer
//!   despite leader stickiness (it protects a leader that wants to stay, not one that
//!   leaves). Safety does not depend on any of it: phase 1 is phase 1.

mod acceptor;
mod election;
mod leader;
mod learner;
mod membership;
mod progress;
mod reads;
mod ready;
mod snapshots;
mod status;

use ready::Batch;
pub use ready::{Event, Ready, StepDownReason};
pub use snapshots::SNAPSHOT_CHUNKS_INFLIGHT;
use snapshots::{IncomingSnapshot, OutgoingSnapshot};
pub use status::{FollowerStatus, Role, Status};

use crate::config::Config;
use crate::error::{
    AcknowledgeError, CompactError, ConfigError, ProposeError, ReadError, SendSnapshotError,
    StepError, TransferError,
};
use crate::log::Log;
use crate::message::{Body, Command, Message};
use crate::quorum::VoteSet;
use crate::storage::{Recovered, Snapshot};
use crate::types::{
    Ballot, Entries, Entry, HardState, Lineage, MembershipAt, NodeId, ProposalId, Slot,
};
use bytes::Bytes;
use progress::Progress;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};

/// A vote of this replica's own acceptor, counted only once the write it depends on is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SelfVote {
    /// Promised `ballot` to itself as candidate.
    Promise(Ballot),
    /// Accepted `first..=last` in `ballot` as leader.
    Accepted(Ballot, Slot, Slot),
    /// The bumped incarnation is durable: proposal ids are unique from now on.
    Incarnation,
}

/// Phase-1 state of a candidate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Candidacy {
    /// The first slot the Prepare asked from (the candidate's first unchosen slot).
    first_slot: Slot,
    /// Acceptors that promised (this replica only once its own promise is durable).
    promised: VoteSet,
    /// For each slot, the highest-ballot entry reported so far.
    reported: BTreeMap<Slot, Entry>,
    /// Acceptors whose promise is paged: the slot the next page starts at (asked for with a
    /// `Prepare` from that slot), and the slots their pages so far left unreported (an
    /// honest acceptor leaves at most `accept_lookahead_slots_max` in its whole promise).
    /// Counted in `promised` once their last page came.
    pages: BTreeMap<usize, (Slot, u64)>,
    /// Tick of the last (re)transmission of the Prepare.
    sent_tick: u64,
    /// Started by the `TimeoutNow` of the leader of this ballot: the Prepares ask the
    /// acceptors that follow it to set leader stickiness aside.
    transfer: Option<Ballot>,
}

/// The ids of the commands one member forwarded that a leader proposed: every id at or below
/// `floor`, and those in `above`. At most [`FORWARD_WINDOW`] ids are kept above the floor;
/// past it the lowest is folded into the floor (a forward arriving later than that many
/// newer ones from the same member is taken for a duplicate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct ForwardWindow {
    floor: (u64, u64),
    above: std::collections::BTreeSet<(u64, u64)>,
}

/// The most forwarded ids a leader remembers above each member's floor.
const FORWARD_WINDOW: usize = 1024;

impl ForwardWindow {
    fn seen(&self, id: (u64, u64)) -> bool {
        id <= self.floor || self.above.contains(&id)
    }

    fn insert(&mut self, id: (u64, u64)) {
        self.above.insert(id);
        while self.above.len() > FORWARD_WINDOW {
            let lowest = self.above.pop_first().expect("not empty");
            self.floor = self.floor.max(lowest);
        }
    }
}

/// The acceptors of one unchosen slot, and its payload bytes (released from
/// `Leadership::uncommitted_bytes` when the slot is chosen, without reading the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SlotVotes {
    acceptors: VoteSet,
    bytes: usize,
}

impl SlotVotes {
    fn new(bytes: usize) -> SlotVotes {
        SlotVotes {
            acceptors: VoteSet::EMPTY,
            bytes,
        }
    }
}

/// Phase-2 state of a leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Leadership {
    /// The next slot a proposal gets.
    next_slot: Slot,
    /// `votes[i]` holds the acceptors of slot `chosen + 1 + i`, for every slot up to
    /// `next_slot - 1`, with the slot's payload size.
    votes: VecDeque<SlotVotes>,
    /// Progress of every member, indexed like `Replica::members` (own entry unused).
    followers: Vec<Progress>,
    /// Payload bytes of slots proposed but not yet chosen.
    uncommitted_bytes: usize,
    /// Ticks since the last heartbeat.
    heartbeat_elapsed: u32,
    /// Ticks since the last check-quorum.
    check_quorum_elapsed: u32,
    /// The (incarnation, sequence) ids each member forwarded that were proposed: a command
    /// seen there is a duplicate and is dropped. Forwards may arrive out of order, so the ids
    /// are kept exactly, in a bounded window.
    forwarded_seen: Vec<ForwardWindow>,
    /// The last slot phase 1 recovered: any value a previous leader got chosen is at or below
    /// it, so no read is served from a slot below it.
    read_floor: Slot,
    /// The last read round sent out (heartbeats carry it).
    read_round: u64,
    /// Reads asked since the last read round was sent: the next ready sends a new one.
    read_round_wanted: bool,
    /// Per member (indexed like `Replica::members`), the highest read round it echoed.
    read_acks: Vec<u64>,
    /// Reads waiting for a quorum to echo their round, oldest (lowest round) first.
    reads: VecDeque<PendingRead>,
    /// A leadership transfer under way: no new proposals meanwhile.
    transfer: Option<Transfer>,
    /// With leases: reads are answered at once before this tick.
    lease_until: u64,
    /// The slot of a membership change proposed or recovered and not chosen yet: no slot
    /// after it is given out until it is chosen.
    membership_pending: Option<Slot>,
    /// Phase 1 stopped at a recovered change (`membership_pending`): this leadership knows
    /// nothing of the slots after it, which a majority of the change's membership may have
    /// chosen values in. It serves no read, and once the change is chosen it runs phase 1
    /// again, even if the change named the membership already in force.
    phase_one_stopped: bool,
    /// With leases: the tick each read round still unconfirmed was sent at, oldest first
    /// (bounded: rounds beyond the bound cannot renew the lease).
    round_ticks: VecDeque<(u64, u64)>,
    /// A transfer was started: its target is elected without waiting out the followers'
    /// stickiness, so this leadership holds no lease any more.
    lease_ended: bool,
}

/// A leadership transfer ([`Replica::transfer_leadership`]) under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Transfer {
    /// The intended new leader (index into `Replica::members`).
    to: usize,
    /// Ticks since the transfer started: it is abandoned after `election_ticks`.
    elapsed: u32,
    /// The tick `TimeoutNow` was last sent at, if it was.
    sent_tick: Option<u64>,
}

/// A read asked of a leader ([`Replica::read_index`]) or requested by a follower
/// (`Body::ReadIndex`), waiting for its confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PendingRead {
    /// The application's context, or the follower's request round.
    context: u64,
    /// The follower that asked and its incarnation, for a request (`None`: a read asked
    /// here).
    from: Option<(NodeId, u64)>,
    /// Serve it from the state at or after this slot.
    slot: Slot,
    /// Confirmed once a quorum echoed this read round (or a later one).
    round: u64,
}

/// A read asked of a follower ([`Replica::read_index`]), for the leader to confirm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RemoteRead {
    context: u64,
    /// The leader the request went to and its round (`None`: not sent yet).
    sent: Option<(NodeId, u64)>,
    /// The tick it was asked at: it is aborted `election_ticks` later if still unanswered.
    asked: u64,
}

/// A Multi-Paxos replica. See the [module documentation](self) for the protocol and the
/// crate documentation for the event loop.
///
/// `Clone`, `Eq` and `Hash` cover the whole state (the RNG by its seed and position), so a
/// model checker can explore replica states and a test can fork one.
/// A fork shares its parent's history: each [`advance`]s the readies taken before the fork was
/// made, but only its own afterwards (see [`AcknowledgeError::ForeignReady`]).
///
/// [`advance`]: Replica::advance
#[derive(Clone, Debug)]
pub struct Replica {
    config: Config,
    /// The memberships still needed, oldest first: the last one is in force (it governs the
    /// slots after the chosen mark), the earlier ones the slots still in the log (to send a
    /// snapshot with the membership of its slot). Empty only on a node joining with
    /// `Config::join` that has not learned a membership.
    memberships: Vec<MembershipAt>,
    /// `memberships` changed: the next write batch stores it.
    memberships_dirty: bool,
    /// No slot above the chosen mark below this one holds a membership entry (`Slot::MAX`:
    /// none does), so that moving the chosen mark reads no entry in the common case.
    membership_floor: Slot,
    /// Sorted member ids (voters and learners of the membership in force, and this replica
    /// even if it is neither); a member's index is its bit in vote sets.
    members: Vec<NodeId>,
    /// This replica's index in `members`.
    self_index: usize,
    /// The indices in `members` of the voters; only their votes count.
    voters: VoteSet,
    /// A majority of `voters` (1 when there are none), kept with them: counting acceptances
    /// needs it for every Accepted, and a popcount is a dozen instructions without `popcnt`.
    quorum: usize,
    rng: ChaCha8Rng,

    /// The hard state as it will be once every pending write is durable.
    hard: HardState,
    /// `hard` changed since the last ready.
    hard_dirty: bool,
    /// The change includes the promise or the incarnation: the write must be synced.
    hard_needs_sync: bool,
    log: Log,
    /// The last slot handed to the application in `committed`.
    applied: Slot,

    role: Role,
    /// The leader this replica follows (itself when leading), if known.
    leader: Option<NodeId>,
    /// The ballot of `leader`.
    leader_ballot: Ballot,
    /// The highest round seen in any ballot; the next election goes above it.
    round_seen: u64,
    /// The highest chosen mark any leader has announced.
    leader_chosen: Slot,

    /// Logical time: ticks since start.
    now: u64,
    /// The tick this replica last heard from the leader it follows.
    leader_heard_tick: u64,
    /// The tick at which this replica last saw the phase 1 of the ballot it promised progress
    /// (a page asked for, as an acceptor; a page received, as the candidate). While it is
    /// recent, pre-votes for others are denied: a long paged phase 1 must not be preempted
    /// by a replica that already promised and whose timer ran out.
    phase_one_heard_tick: Option<u64>,
    /// Ticks since the election timer was reset.
    election_elapsed: u32,
    /// The current randomized election timeout.
    election_timeout: u32,
    /// Grants of the current pre-vote round, and its ballot.
    pre_votes: VoteSet,
    pre_vote_ballot: Ballot,
    candidacy: Option<Candidacy>,
    leadership: Option<Leadership>,
    /// Tick a Fetch was last sent (`None`: no fetch outstanding).
    fetch_sent_tick: Option<u64>,
    /// The peer that last said it knows more slots chosen than this replica: fetched from
    /// when no leader is known.
    fetch_from: Option<NodeId>,
    /// Per member (indexed like `members`), the tick this replica last reported it with
    /// `Event::SnapshotNeeded`, to report a lagging member once per election timeout rather
    /// than at every Fetch it retries.
    snapshot_wanted_tick: Vec<Option<u64>>,
    /// Per member, the snapshot being sent to it in chunks.
    snapshots_out: Vec<Option<OutgoingSnapshot>>,
    /// The snapshot whose chunks are arriving here.
    snapshot_in: Option<IncomingSnapshot>,
    /// A snapshot received from a peer and installed, for the next ready to hand out.
    installed_snapshot: Option<Snapshot>,

    /// The incarnation write is durable; proposals may be numbered.
    incarnation_durable: bool,
    proposal_sequence: u64,
    forward_queue: Vec<Command>,
    /// Set by `new` when the storage must discard the entries up to this slot with the first
    /// ready's batch ([`WriteBatch::compact_through`]).
    compact_through: Option<Slot>,
    /// With leases: no vote is granted before this tick (a restarted replica may have
    /// acknowledged a lease it no longer remembers).
    votes_blocked_until: u64,
    /// Reads asked of this replica while another member leads ([`Replica::read_index`] on a
    /// follower), oldest first, waiting to be sent to the leader or for its answer.
    remote_reads: VecDeque<RemoteRead>,
    /// The last read request sent to a leader (the round of a `Body::ReadIndex`).
    remote_round: u64,

    // Output, gathered until the next `ready()`.
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    /// Runs stored in the log and not yet handed to a write (the log's unsealed tail is too).
    unpersisted: Vec<Entries>,
    events: Vec<Event>,
    pending_self_votes: Vec<SelfVote>,
    /// Self votes waiting for the write of the ready numbered with them.
    self_votes: VecDeque<(u64, SelfVote)>,
    ready_number: u64,
    persisted_number: u64,
    /// Messages refused or dropped since start, for `Status`.
    dropped_messages: u64,
    /// Reads answered under the leader's lease, without a round.
    lease_reads: u64,
    /// The emptied batch handed back through `advance`, reused by the next `ready` so a steady
    /// stream of batches allocates nothing for it or its buffers. Always empty (only its
    /// buffers' capacity matters), so it is not part of the replica's identity.
    spare: Option<Box<Batch>>,
    /// Stamps every ready, so that `advance` refuses a ready made by another replica. Not
    /// part of the replica's identity (see [`Lineage`]); a clone gets a stamp of its own and
    /// accepts the readies taken before it was made.
    origin: Lineage,
}

/// False for a membership entry that fails [`Membership::validate`](crate::Membership::validate)
/// (a peer's bug: no replica proposes one).
#[inline]
fn value_is_valid(value: &crate::types::Value) -> bool {
    match value {
        crate::types::Value::Membership(membership) => membership_is_valid(membership),
        _ => true,
    }
}

/// Out of line: membership entries are rare, and the loops that check values are hot.
#[cold]
#[inline(never)]
fn membership_is_valid(membership: &crate::types::Membership) -> bool {
    membership.validate().is_ok()
}

/// Moves what a replica buffer gathered into the batch's (empty) buffer by swapping the two,
/// so the replica gathers the next batch in the batch's old buffer. Nothing gathered: nothing
/// to swap (both are empty, and each keeps its own room). A buffer empties only here, its
/// elements going with it to the batch, whose reset bounds the room it keeps; the one place
/// that empties one in place (a snapshot install dropping unwritten runs) bounds it too.
#[inline(always)]
fn hand_over<T>(gathered: &mut Vec<T>, batch: &mut Vec<T>) {
    debug_assert!(batch.is_empty(), "a spare batch's buffers are empty");
    if !gathered.is_empty() {
        std::mem::swap(gathered, batch);
    }
}

/// Lets go of the room of a gathering buffer emptied in place, beyond what a recycled batch
/// keeps: `ready` hands over (and so bounds) only a buffer that holds something.
#[cold]
fn bound_emptied<T>(buffer: &mut Vec<T>) {
    if buffer.is_empty() && buffer.capacity() > SPARE_CAPACITY_MAX {
        *buffer = Vec::new();
    }
}

/// A recycled buffer keeps at most this many elements' room: one huge batch must not pin its
/// memory for the replica's lifetime.
const SPARE_CAPACITY_MAX: usize = 4096;

/// The replica's whole state as one comparable, hashable value (see `Replica::identity`). A
/// named alias, not a spelled-out tuple, so tools that walk return types (cargo-mutants) see one
/// opaque type.
type Identity<'a> = (
    (&'a Config, &'a Vec<NodeId>, usize, [u8; 32], u128),
    (&'a Vec<MembershipAt>, bool, Slot, VoteSet, Option<NodeId>),
    (&'a HardState, bool, bool, &'a Log, Slot),
    (Role, Option<NodeId>, Ballot, u64, Slot),
    (u64, u64, u32, u32, VoteSet, Ballot),
    (
        &'a Option<Candidacy>,
        &'a Option<Leadership>,
        Option<u64>,
        bool,
        u64,
        &'a Vec<Command>,
    ),
    (
        &'a Vec<Message>,
        &'a Vec<Message>,
        Vec<&'a Entry>,
        &'a Vec<Event>,
        &'a Vec<SelfVote>,
    ),
    (&'a VecDeque<(u64, SelfVote)>, u64, u64, u64),
    (
        &'a Vec<Option<u64>>,
        &'a Option<Snapshot>,
        &'a VecDeque<RemoteRead>,
        u64,
        u64,
        u64,
    ),
    (
        &'a Vec<Option<OutgoingSnapshot>>,
        &'a Option<IncomingSnapshot>,
        Option<Slot>,
    ),
);

impl Replica {
    /// Every field but the RNG, plus the RNG's seed and position: the replica's whole state.
    fn identity(&self) -> Identity<'_> {
        (
            (
                &self.config,
                &self.members,
                self.self_index,
                self.rng.get_seed(),
                self.rng.get_word_pos(),
            ),
            (
                &self.memberships,
                self.memberships_dirty,
                self.membership_floor,
                self.voters,
                self.fetch_from,
            ),
            (
                &self.hard,
                self.hard_dirty,
                self.hard_needs_sync,
                &self.log,
                self.applied,
            ),
            (
                self.role,
                self.leader,
                self.leader_ballot,
                self.round_seen,
                self.leader_chosen,
            ),
            (
                self.now,
                self.leader_heard_tick,
                self.election_elapsed,
                self.election_timeout,
                self.pre_votes,
                self.pre_vote_ballot,
            ),
            (
                &self.candidacy,
                &self.leadership,
                self.fetch_sent_tick,
                self.incarnation_durable,
                self.proposal_sequence,
                &self.forward_queue,
            ),
            (
                &self.messages,
                &self.persisted_messages,
                // What the next write will hold, however it is split into runs so far.
                self.unpersisted
                    .iter()
                    .flat_map(|run| run.iter())
                    .chain(self.log.unsealed())
                    .collect(),
                &self.events,
                &self.pending_self_votes,
            ),
            (
                &self.self_votes,
                self.ready_number,
                self.persisted_number,
                self.dropped_messages,
            ),
            (
                &self.snapshot_wanted_tick,
                &self.installed_snapshot,
                &self.remote_reads,
                self.remote_round,
                self.votes_blocked_until,
                self.lease_reads,
            ),
            (&self.snapshots_out, &self.snapshot_in, self.compact_through),
        )
    }
}

impl PartialEq for Replica {
    fn eq(&self, other: &Replica) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Replica {}

impl std::hash::Hash for Replica {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl Replica {
    /// Creates a replica from its configuration and what its storage recovered
    /// (`Recovered::default()` for a fresh node).
    ///
    /// The first ready carries a hard-state write (the incarnation is bumped so proposal ids
    /// stay unique across restarts); proposals return `Busy` until it is acknowledged.
    ///
    /// The membership comes from `recovered.memberships`. On a fresh node (nothing recovered:
    /// no incarnation) it is `config.members` and `config.learners`, written with the first
    /// ready, or none with `config.join` (the node learns it from the cluster). At later
    /// starts `config.members`, `config.learners` and `config.join` are not read: a node that
    /// was started to join and has not learned a membership goes on joining even if it is now
    /// configured as a founding member. Changes chosen in recovered entries beyond the last
    /// stored membership are applied too.
    ///
    /// A `config.applied` beyond the recovered chosen mark is the slot of a snapshot the
    /// application restored (installed from a peer before its chosen mark reached the disk):
    /// the chosen mark is raised to it and recovered entries up to it are dropped.
    ///
    /// # Errors
    /// A [`ConfigError`] if the configuration is invalid, or if `recovered` is inconsistent
    /// with it (`config.applied` below the first recovered entry when earlier ones were
    /// compacted away, so they could not be handed out again; a chosen slot without an entry;
    /// entries out of order; a stored membership that is invalid or out of slot order).
    pub fn new(config: Config, recovered: Recovered) -> Result<Replica, ConfigError> {
        config.validate()?;
        let mut hard = recovered.hard_state;
        if hard.chosen > SLOT_OR_ROUND_MAX || hard.promised.round > SLOT_OR_ROUND_MAX {
            return Err(ConfigError::new(
                "recovered",
                "the stored chosen mark or promised round is beyond SLOT_OR_ROUND_MAX",
            ));
        }
        let mut memberships = recovered.memberships;
        for at in &memberships {
            at.membership
                .validate()
                .map_err(|_| ConfigError::new("recovered", "a stored membership is invalid"))?;
        }
        if memberships
            .windows(2)
            .any(|pair| pair[0].slot >= pair[1].slot)
        {
            return Err(ConfigError::new(
                "recovered",
                "stored memberships must be in increasing slot order",
            ));
        }
        // The first membership is the configuration's at the node's very first start, and is
        // written with its first batch (with the incarnation, before any promise): from then
        // on the storage has it and `config.members` is not read again. A storage that holds
        // a start (an incarnation) but no membership belongs to a node started to join that
        // has not learned one yet: it goes on joining whatever `config.join` says now, instead
        // of taking the configuration's members for the cluster's first membership (they are
        // the voters of some later change at best).
        if memberships.is_empty() && !config.join {
            if hard.incarnation == 0 {
                memberships.push(MembershipAt {
                    slot: 0,
                    membership: config.initial_membership(),
                });
            } else {
                tracing::warn!(
                    node = %config.id,
                    "the storage holds no membership: this node was started to join a cluster \
                     and goes on waiting for the cluster to send its membership"
                );
            }
        }
        // Any list, a recovered one too, is written with the first ready: a recovered one may
        // hold a membership that only the saved snapshot had (one installed from a peer,
        // before the crash let the ready's batch write it), and the application's next own
        // snapshot, which carries none, would replace that snapshot and lose it.
        let mut memberships_dirty = !memberships.is_empty();
        let mut recovered_entries = recovered.entries;
        let mut compact_through = None;
        if config.applied > hard.chosen {
            // The application restored a snapshot installed from a peer whose chosen mark did
            // not reach the disk before a crash (the snapshot is saved first). The snapshot
            // covers only chosen slots: they are chosen, and what the log holds up to there
            // (older accepted values, perhaps not the chosen ones) must never be served.
            hard.chosen = config.applied;
            recovered_entries.retain(|entry| entry.slot > config.applied);
            // The storage drops them too, with the first ready's batch, which makes the new
            // chosen mark durable: a later restart must not read them back as chosen.
            compact_through = Some(config.applied);
        }
        // With no entry at all, every chosen slot was compacted away (or none is chosen yet):
        // the log starts after the chosen mark, which also tells phase 1 where it stops.
        let first = recovered_entries
            .first()
            .map_or(hard.chosen + 1, |entry| entry.slot)
            .max(1);
        let mut log = Log::new(first.min(hard.chosen + 1).max(1));
        let mut previous = 0;
        for entry in recovered_entries {
            if entry.slot <= previous || entry.slot == 0 {
                return Err(ConfigError::new(
                    "recovered",
                    "entries must be in increasing slot order",
                ));
            }
            previous = entry.slot;
            log.set(entry, &mut Vec::new());
        }
        log.seal(&mut Vec::new()); // recovered entries are durable already
        for slot in log.first()..=hard.chosen {
            if log.get(slot).is_none() {
                return Err(ConfigError::new("recovered", "a chosen slot has no entry"));
            }
        }
        if config.applied + 1 < log.first() {
            return Err(ConfigError::new(
                "applied",
                "below the storage's compaction point: restore the snapshot first and pass its \
                 slot",
            ));
        }
        // Changes chosen after the last membership stored, in entries that reached the disk
        // with their chosen mark but not with a membership (written by another build).
        let known = memberships.last().map_or(0, |at| at.slot);
        let recovered_changes = membership::memberships_in(log.range(known + 1, hard.chosen));
        memberships_dirty |= !recovered_changes.is_empty();
        memberships.extend(recovered_changes);
        let (members, self_index, voters) =
            membership::member_list(config.id, memberships.last().map(|at| &at.membership));
        hard.incarnation += 1;
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ hard.incarnation.rotate_left(32));
        let applied = config.applied;
        let round_seen = hard.promised.round;
        let member_count = members.len();
        let mut replica = Replica {
            memberships,
            memberships_dirty,
            membership_floor: Slot::MAX,
            members,
            self_index,
            voters,
            quorum: voters.len() / 2 + 1,
            rng,
            hard,
            hard_dirty: true,
            hard_needs_sync: true,
            log,
            applied,
            role: Role::Follower,
            leader: None,
            leader_ballot: Ballot::ZERO,
            round_seen,
            leader_chosen: hard.chosen,
            now: 0,
            leader_heard_tick: 0,
            phase_one_heard_tick: None,
            election_elapsed: 0,
            election_timeout: 0,
            pre_votes: VoteSet::EMPTY,
            pre_vote_ballot: Ballot::ZERO,
            candidacy: None,
            leadership: None,
            fetch_sent_tick: None,
            fetch_from: None,
            snapshot_wanted_tick: vec![None; member_count],
            snapshots_out: vec![None; member_count],
            snapshot_in: None,
            installed_snapshot: None,
            incarnation_durable: false,
            proposal_sequence: 0,
            forward_queue: Vec::new(),
            compact_through,
            remote_reads: VecDeque::new(),
            remote_round: 0,
            // One tick more than `election_ticks`: the first tick may come at once after
            // the start (see `in_leader_lease`).
            votes_blocked_until: if config.lease_ticks > 0 {
                u64::from(config.election_ticks) + 1
            } else {
                0
            },
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            unpersisted: Vec::new(),
            events: Vec::new(),
            pending_self_votes: vec![SelfVote::Incarnation],
            self_votes: VecDeque::new(),
            ready_number: 0,
            persisted_number: 0,
            dropped_messages: 0,
            lease_reads: 0,
            spare: None,
            origin: Lineage::new(),
            config,
        };
        replica.prune_memberships();
        replica.membership_floor = replica.unchosen_membership_floor();
        replica.reset_election_timer();
        Ok(replica)
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The leader this replica knows of (itself if leading).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// What this replica is doing now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True if this replica leads (phase 1 done, accepting proposals).
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Starts an election now instead of waiting for the election timeout (an operator's
    /// "take over", or a test). It still begins with a pre-vote, so it cannot disturb a leader
    /// that the other replicas still hear from. Does nothing on a leader, nor, with leases
    /// ([`Config::lease_ticks`](crate::Config::lease_ticks)), while this replica follows a
    /// live leader or has just started (its vote would break the leader's lease): use
    /// [`transfer_leadership`](Replica::transfer_leadership) at the leader instead. A
    /// replica that does not vote (a learner, a removed or joining node) never campaigns.
    pub fn campaign(&mut self) {
        if self.role == Role::Leader
            || (self.config.lease_ticks > 0 && self.in_leader_lease(self.config.id))
        {
            return;
        }
        self.start_pre_vote();
    }

    /// Advances logical time by one tick: elections, heartbeats, retransmissions and
    /// check-quorum all count ticks.
    pub fn tick(&mut self) {
        self.now += 1;
        self.retransmit_snapshots();
        if !self.remote_reads.is_empty() {
            self.expire_remote_reads();
        }
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
    }

    /// Handles a message from a peer.
    ///
    /// # Errors
    /// A [`StepError`] if the message is not from a member, not for this replica, or breaks a
    /// protocol invariant. The replica's state is unchanged then.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        // The slot of the first membership entry an Accept carries, if any (found while
        // validating, so that accepting needs no second pass over the entries).
        let membership_slot = match self.validate(&message) {
            Ok(slot) => slot,
            Err(error) => return Err(self.refuse(error)),
        };
        let Message { from, body, .. } = message;
        // Pre-vote ballots are hypothetical: only real ones raise the round to beat.
        if let (Some(ballot), false) = (
            body.ballot(),
            matches!(body, Body::PreVote { .. } | Body::PreVoteReply { .. }),
        ) {
            self.round_seen = self.round_seen.max(ballot.round);
        }
        match body {
            Body::PreVote { ballot, chosen } => self.on_pre_vote(from, ballot, chosen),
            Body::PreVoteReply {
                ballot,
                granted,
                promised,
                chosen,
            } => self.on_pre_vote_reply(from, ballot, granted, promised, chosen),
            Body::Prepare {
                ballot,
                first_slot,
                transfer,
            } => self.on_prepare(from, ballot, first_slot, transfer),
            Body::TimeoutNow { ballot } => self.on_timeout_now(from, ballot),
            Body::Promise {
                ballot,
                first_slot,
                accepted,
                chosen,
                next_slot,
            } => self.on_promise(from, ballot, first_slot, accepted, chosen, next_slot),
            Body::Accept {
                ballot,
                chosen,
                entries,
            } => self.on_accept(from, ballot, chosen, entries, membership_slot),
            Body::Accepted {
                ballot,
                first_slot,
                last_slot,
            } => self.on_accepted(from, ballot, first_slot, last_slot),
            Body::Reject { ballot, promised } => self.on_reject(from, ballot, promised),
            Body::Heartbeat {
                ballot,
                chosen,
                read,
            } => self.on_heartbeat(from, ballot, chosen, Some(read)),
            Body::Commit { ballot, chosen } => self.on_heartbeat(from, ballot, chosen, None),
            Body::HeartbeatReply {
                ballot,
                chosen,
                read,
            } => self.on_heartbeat_reply(from, ballot, chosen, read),
            Body::Fetch { first_slot, .. } => self.on_fetch(from, first_slot),
            Body::FetchReply {
                entries, chosen, ..
            } => self.on_fetch_reply(from, entries, chosen),
            Body::Forward { commands } => self.on_forward(from, commands),
            Body::Snapshot {
                slot,
                offset,
                total,
                data,
                membership,
                ..
            } => self.on_snapshot_chunk(from, slot, offset, total, data, *membership),
            Body::SnapshotAck { slot, received } => self.on_snapshot_ack(from, slot, received),
            Body::ReadIndex { incarnation, round } => self.on_read_index(from, incarnation, round),
            Body::ReadIndexReply {
                incarnation,
                round,
                slot,
            } => self.on_read_index_reply(from, incarnation, round, slot),
        }
        Ok(())
    }

    /// Counts and logs a refused message (out of line: `step`'s hot path stays small).
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, error: StepError) -> StepError {
        self.dropped_messages += 1;
        tracing::debug!(node = %self.config.id, %error, "refused message");
        error
    }

    /// Checks that `message` is addressed here, from a member, and internally consistent.
    /// For an Accept, returns the slot of its first membership entry (`None`: none).
    fn validate(&self, message: &Message) -> Result<Option<Slot>, StepError> {
        let mut membership_slot = None;
        let from = message.from;
        if message.to != self.config.id {
            return Err(StepError::WrongRecipient {
                to: message.to,
                this: self.config.id,
            });
        }
        if self.member_index(from).is_none() && !message.body.is_from_leader_or_candidate() {
            // A leader or candidate may belong to a membership this replica has not learned
            // yet (see `membership`): following it is how this replica catches up. Replies
            // come only from members asked.
            return Err(StepError::UnknownNode(from));
        }
        // The kind is looked up only for an error: a valid message needs no name.
        let malformed = |reason| StepError::Malformed {
            from,
            kind: message.body.kind(),
            reason,
        };
        if from == self.config.id {
            return Err(malformed("a replica does not message itself"));
        }
        match &message.body {
            Body::PreVote { ballot, .. }
            | Body::Prepare { ballot, .. }
            | Body::Accept { ballot, .. }
            | Body::Heartbeat { ballot, .. }
            | Body::TimeoutNow { ballot }
            | Body::Commit { ballot, .. } => {
                if ballot.node != from {
                    return Err(malformed("ballot owned by another node than the sender"));
                }
                if ballot.round == 0 {
                    return Err(malformed("round 0 is below every real ballot"));
                }
            }
            _ => {}
        }
        match &message.body {
            Body::Accept {
                ballot, entries, ..
            } => {
                let first = entries.first().map_or(1, |entry| entry.slot);
                if first == 0 {
                    return Err(malformed("slot 0 does not exist"));
                }
                for (offset, entry) in entries.iter().enumerate() {
                    // Checked: slots that wrap past `Slot::MAX` to 0 are not contiguous.
                    if Some(entry.slot) != first.checked_add(offset as Slot) {
                        return Err(malformed("entries are not contiguous"));
                    }
                    if entry.ballot != *ballot {
                        return Err(malformed("entry ballot differs from the Accept's"));
                    }
                    if let crate::types::Value::Membership(membership) = &entry.value {
                        if !membership_is_valid(membership) {
                            return Err(malformed("an invalid membership"));
                        }
                        membership_slot = membership_slot.or(Some(entry.slot));
                    }
                }
            }
            Body::Accepted {
                first_slot,
                last_slot,
                ..
            } if *first_slot == 0 || first_slot > last_slot => {
                return Err(malformed("empty or invalid slot range"));
            }
            Body::FetchReply { entries, .. } => {
                let first = entries.first().map_or(1, |entry| entry.slot);
                for (offset, entry) in entries.iter().enumerate() {
                    if first == 0 || Some(entry.slot) != first.checked_add(offset as Slot) {
                        return Err(malformed("entries are not contiguous"));
                    }
                    if !value_is_valid(&entry.value) {
                        return Err(malformed("an invalid membership"));
                    }
                }
            }
            Body::Snapshot {
                slot,
                offset,
                total,
                data,
                membership,
                ..
            } => {
                if *slot == 0 {
                    return Err(malformed("a snapshot at slot 0 covers nothing"));
                }
                if membership.slot > *slot || !membership_is_valid(&membership.membership) {
                    return Err(malformed(
                        "an invalid membership, or one from after the snapshot",
                    ));
                }
                if *total > self.config.snapshot_bytes_max as u64 {
                    return Err(malformed("snapshot larger than snapshot_bytes_max"));
                }
                if !offset
                    .checked_add(data.len() as u64)
                    .is_some_and(|end| end <= *total)
                {
                    return Err(malformed("snapshot chunk beyond the snapshot's size"));
                }
            }
            Body::SnapshotAck { slot: 0, .. } => {
                return Err(malformed("a snapshot at slot 0 covers nothing"));
            }
            Body::Promise {
                first_slot,
                accepted,
                next_slot,
                ..
            } => {
                let mut previous = first_slot.saturating_sub(1);
                for entry in accepted {
                    if entry.slot <= previous {
                        return Err(malformed("entries out of order or below first_slot"));
                    }
                    if !value_is_valid(&entry.value) {
                        return Err(malformed("an invalid membership"));
                    }
                    previous = entry.slot;
                }
                if let Some(next_slot) = next_slot {
                    // A page holds at least one entry, and the next starts after it.
                    if accepted.is_empty() || *next_slot <= previous {
                        return Err(malformed("a promise page that does not advance"));
                    }
                }
            }
            Body::ReadIndex { round, .. } | Body::ReadIndexReply { round, .. } if *round == 0 => {
                return Err(malformed("read requests are numbered from 1"));
            }
            _ => {}
        }
        if highest_slot_or_round(&message.body) > SLOT_OR_ROUND_MAX {
            return Err(malformed("slot or round beyond SLOT_OR_ROUND_MAX"));
        }
        if let Body::Promise {
            first_slot,
            accepted,
            next_slot,
            ..
        } = &message.body
        {
            // A new leader fills every slot no promise reports with a no-op. An honest acceptor
            // holds every slot up to its chosen mark and accepts none beyond that mark plus
            // `accept_lookahead_slots_max`, so it leaves at most that many unreported slots
            // below its highest report (a former leader's own log has none). More would let
            // one faulty peer make the candidate allocate a no-op for each.
            if promise_page_unreported(*first_slot, accepted, *next_slot)
                > self.config.accept_lookahead_slots_max
            {
                return Err(malformed(
                    "more unreported slots than accept_lookahead_slots_max allows",
                ));
            }
        }
        Ok(membership_slot)
    }

    /// Proposes `command` for replication and returns the id it will carry when committed.
    ///
    /// On the leader the command gets the next slot at once; on a follower it is forwarded to
    /// the leader (if `forward_proposals`), in which case it may be lost if the leader changes:
    /// retry commands that do not commit within your own timeout. A leader drops forwarded
    /// duplicates it has already proposed, but a forward duplicated by the network across a
    /// change of leader can commit twice under the same [`ProposalId`]: make commands
    /// idempotent, or deduplicate on the id (or on client sessions) when applying.
    ///
    /// # Errors
    /// [`ProposeError::NotLeader`] with a leader hint (not leading and not forwarding, or no
    /// leader known); [`ProposeError::Busy`] when a bound is reached;
    /// [`ProposeError::TooLarge`] above
    /// [`Config::command_bytes_max`](crate::Config::command_bytes_max). The command is handed
    /// back in each.
    pub fn propose(&mut self, command: Bytes) -> Result<ProposalId, ProposeError> {
        if command.len() > self.config.command_bytes_max {
            let max = self.config.command_bytes_max;
            return Err(ProposeError::TooLarge { command, max });
        }
        if !self.incarnation_durable {
            return Err(ProposeError::Busy { command });
        }
        match self.role {
            Role::Leader => {
                if !self.has_room_for(command.len()) {
                    return Err(ProposeError::Busy { command });
                }
                let id = self.next_proposal_id();
                self.append_command(id, command);
                Ok(id)
            }
            _ => {
                let leader = match self.leader {
                    Some(leader) if self.config.forward_proposals => leader,
                    hint => return Err(ProposeError::NotLeader { hint, command }),
                };
                debug_assert_ne!(leader, self.config.id);
                if self.forward_queue.len() >= self.config.forward_commands_max {
                    return Err(ProposeError::Busy { command });
                }
                let id = self.next_proposal_id();
                self.forward_queue.push(Command { id, data: command });
                Ok(id)
            }
        }
    }

    /// Asks for a linearizable read (read-index). The leader confirms that it still leads
    /// with one round of heartbeats to a quorum, sent with the next ready, and then reports
    /// [`Event::ReadReady`] with this `context` (any number the application picks to match
    /// the answer) and a slot: serve the read from the state machine once it has applied that
    /// slot. The state then includes every write acknowledged before this call. If the
    /// leadership ends first, [`Event::ReadAborted`] reports it: ask the new leader.
    ///
    /// On a follower (with [`Config::forward_reads`](crate::Config::forward_reads), the
    /// default) the read goes to the leader it knows, with the next ready: the leader takes
    /// the slot when the request arrives, confirms it the same way and answers, and this
    /// replica reports [`Event::ReadReady`] with the leader's slot (serve the read once this
    /// replica has applied it) or [`Event::ReadAborted`] if the leader refuses, or if no
    /// answer comes within `election_ticks` ticks (a lost message, a leader gone).
    ///
    /// Reads cost no log entry and no write: many reads asked before the same ready share
    /// one round of heartbeats (and, on a follower, one request).
    ///
    /// # Errors
    /// - [`ReadError::NotLeader`]: this replica neither leads nor knows a leader to ask (or
    ///   does not forward reads); ask `hint`, or read through the log (propose the read as a
    ///   command).
    /// - [`ReadError::Busy`]: [`Config::reads_max`](crate::Config::reads_max) reads are
    ///   waiting already, or (on a follower) this replica has just started and its first
    ///   ready has not been written yet.
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadError> {
        if self.leadership.is_none() {
            return self.read_index_at_follower(context);
        }
        if !self.confirm_read(PendingRead {
            context,
            from: None,
            slot: 0,
            round: 0,
        }) {
            return Err(ReadError::Busy);
        }
        Ok(())
    }

    /// Hands the leadership over to member `to` (to take a node down for maintenance, or to
    /// move the leader next to its clients). The leader stops taking proposals
    /// ([`propose`](Replica::propose) returns `Busy`, forwarded commands are dropped), waits
    /// until `to` has acknowledged every slot not yet chosen, then sends it `TimeoutNow`: `to` starts
    /// phase 1 at once with a higher ballot, which the acceptors answer even though they
    /// heard from this leader recently, and this leader steps down
    /// ([`StepDownReason::Transferred`]) when the Prepare reaches it. Nothing is lost: the
    /// new leader's phase 1 recovers every accepted value, as after any election. If `to`
    /// has not taken over within `election_ticks`, the transfer is abandoned
    /// ([`Event::TransferAborted`]) and proposals are taken again. A second call replaces the
    /// target and restarts the clock; `to` being this replica cancels a transfer under way.
    ///
    /// # Errors
    /// - [`TransferError::NotLeader`]: only the leader can hand its leadership over.
    /// - [`TransferError::UnknownNode`]: `to` is not a voting member (a learner cannot lead).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        let Some(index) = self
            .member_index(to)
            .filter(|index| self.voters.contains(*index))
        else {
            return Err(TransferError::UnknownNode(to));
        };
        let Some(leadership) = self.leadership.as_mut() else {
            return Err(TransferError::NotLeader { hint: self.leader });
        };
        if index == self.self_index {
            leadership.transfer = None;
            return Ok(());
        }
        tracing::info!(node = %self.config.id, %to, "leadership transfer started");
        leadership.lease_ended = true;
        leadership.transfer = Some(Transfer {
            to: index,
            elapsed: 0,
            sent_tick: None,
        });
        self.send_timeout_now_if_caught_up();
        Ok(())
    }

    fn next_proposal_id(&mut self) -> ProposalId {
        self.proposal_sequence += 1;
        ProposalId {
            node: self.config.id,
            incarnation: self.hard.incarnation,
            sequence: self.proposal_sequence,
        }
    }

    /// True if [`ready`](Replica::ready) has anything to hand out.
    #[inline]
    pub fn has_ready(&self) -> bool {
        // Evaluated whole, without a branch per check: a loop asks until the answer is no, so
        // the common answer needs every check anyway.
        let gathered = self.hard_dirty
            | !self.messages.is_empty()
            | !self.persisted_messages.is_empty()
            | !self.unpersisted.is_empty()
            | self.log.has_unsealed()
            | !self.events.is_empty()
            | !self.pending_self_votes.is_empty()
            | !self.forward_queue.is_empty()
            | (self.applied < self.hard.chosen)
            | self.installed_snapshot.is_some()
            | self.memberships_dirty;
        gathered
            || self.remote_reads_unsent()
            || self
                .leadership
                .as_ref()
                .is_some_and(|leadership| leadership.read_round_wanted || self.leader_has_work())
    }

    /// Takes the next batch of work. Call it when [`has_ready`](Replica::has_ready) is true (an
    /// empty batch is harmless), handle it in the order [`Ready`] documents, then acknowledge it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.flush_accepts();
            self.send_read_round();
        }
        self.flush_forwards();
        if self.remote_reads_unsent() {
            self.send_remote_reads();
        }
        self.ready_number += 1;
        let number = self.ready_number;
        // Only a leader's or candidate's readies carry own votes: skip the `Drain` otherwise.
        if !self.pending_self_votes.is_empty() {
            for vote in self.pending_self_votes.drain(..) {
                self.self_votes.push_back((number, vote));
            }
        }
        self.log.seal(&mut self.unpersisted);
        // The spare batch's buffers are empty: swapping hands out what was gathered and leaves
        // them to gather the next batch.
        let mut batch = self.spare.take().unwrap_or_default();
        batch.number = number;
        batch.origin = self.origin.stamp(number);
        batch.write.must_sync = self.hard_needs_sync || !self.unpersisted.is_empty();
        batch.write.hard_state = self.hard_dirty.then_some(self.hard);
        batch.write.compact_through = self.compact_through.take();
        if self.memberships_dirty {
            self.memberships_dirty = false;
            batch.write.memberships = Some(self.memberships.clone());
        }
        hand_over(&mut self.unpersisted, &mut batch.write.runs);
        self.hard_dirty = false;
        self.hard_needs_sync = false;
        // Committed entries are not copied into the ready: the application reads them from the
        // log through `committed(&ready)`. Chosen slots never change, so the range stays valid
        // until the application itself compacts it.
        batch.committed = (self.applied + 1, self.hard.chosen);
        self.applied = self.hard.chosen;
        hand_over(&mut self.messages, &mut batch.messages);
        hand_over(&mut self.persisted_messages, &mut batch.persisted_messages);
        // Rarely set: testing first spares moving the whole (empty) option, and the spare
        // batch's slot is empty already.
        if self.installed_snapshot.is_some() {
            batch.snapshot = self.installed_snapshot.take();
        }
        hand_over(&mut self.events, &mut batch.events);
        Ready { batch }
    }

    /// The entries `ready` hands out as newly chosen ([`Ready::committed_slots`]), in slot
    /// order, borrowed from the log: apply each exactly once. `Value::Noop` entries fill slots
    /// and carry no command; skip them. Clone an entry (its payload is a shared `Bytes`, so a
    /// clone copies no command bytes) to keep it past the next call that changes the replica.
    ///
    /// Chosen slots never change, so the entries stay readable after later calls to `step`,
    /// `ready` or `advance`, until the application compacts them away: slots compacted since
    /// `ready` was taken are skipped (compacting them says they were applied). A ready from
    /// another replica reads this replica's log over the same slots.
    #[inline]
    pub fn committed<'a>(&'a self, ready: &Ready) -> impl Iterator<Item = &'a Entry> + 'a {
        let (first, last) = ready.batch.committed;
        self.log.range(first, last)
    }

    /// Acknowledges a ready whose write is durable and whose messages were handed to the
    /// transport. Same as `on_persisted(ready.number())`, once the ready is known to be this
    /// replica's.
    ///
    /// The ready's buffers are kept for reuse: drain it with the `drain_*` methods rather than
    /// the `take_*` ones and steady-state batches allocate no output vectors.
    ///
    /// # Errors
    /// [`AcknowledgeError::ForeignReady`] if another replica made `ready` (or it is a
    /// `Ready::default()`); otherwise as [`on_persisted`](Replica::on_persisted). Nothing is
    /// acknowledged then, and the ready is dropped.
    #[inline]
    pub fn advance(&mut self, ready: Ready) -> Result<(), AcknowledgeError> {
        if !self.origin.accepts(ready.batch.origin, ready.batch.number) {
            return Err(AcknowledgeError::ForeignReady {
                number: ready.batch.number,
            });
        }
        self.on_persisted(ready.batch.number)?;
        self.recycle(ready);
        Ok(())
    }

    /// Hands back a ready whose write is still in flight, so that the next
    /// [`ready`](Replica::ready) reuses it and its emptied buffers instead of allocating them:
    /// for a loop that takes the write out ([`Ready::take_persist`]) and acknowledges it later
    /// with [`on_persisted`](Replica::on_persisted). Acknowledges nothing. Whatever the ready
    /// still holds is dropped. ([`advance`](Replica::advance) is `on_persisted` and this.)
    #[inline]
    pub fn recycle(&mut self, ready: Ready) {
        let mut batch = ready.batch;
        batch.reset(SPARE_CAPACITY_MAX);
        self.spare = Some(batch);
    }

    /// Tells the replica that the writes of every ready up to `number` are durable, so its own
    /// promises and acceptances count from now on. Acknowledging the same number again does
    /// nothing.
    ///
    /// # Errors
    /// [`AcknowledgeError::NeverHandedOut`] if no ready with `number` was handed out yet;
    /// [`AcknowledgeError::OutOfOrder`] if `number` is lower than a number already
    /// acknowledged (writes must complete in order). Nothing is acknowledged then.
    #[inline]
    pub fn on_persisted(&mut self, number: u64) -> Result<(), AcknowledgeError> {
        AcknowledgeError::check(number, self.ready_number, self.persisted_number)?;
        self.persisted_number = number;
        self.origin.acknowledged(number);
        if !self.self_votes.is_empty() {
            self.count_self_votes(number);
        }
        Ok(())
    }

    /// Counts this replica's own votes whose write is durable (ready `number` or earlier).
    #[inline(never)]
    fn count_self_votes(&mut self, number: u64) {
        while let Some(&(vote_number, vote)) = self.self_votes.front() {
            if vote_number > number {
                break;
            }
            self.self_votes.pop_front();
            match vote {
                SelfVote::Incarnation => self.incarnation_durable = true,
                SelfVote::Promise(ballot) => self.count_own_promise(ballot),
                SelfVote::Accepted(ballot, first, last) => {
                    self.record_acceptance(self.self_index, ballot, first, last)
                }
            }
        }
    }

    /// Forgets in-memory entries up to `through`, which the application has applied and made
    /// durable in its own state (a snapshot). Compact only with a snapshot a peer can be sent
    /// (at most `Config::snapshot_bytes_max`, see [`send_snapshot`](Replica::send_snapshot)):
    /// a follower behind the compaction point catches up only through it. A follower that later needs them is reported
    /// with [`Event::SnapshotNeeded`]; a candidate that needs them (its first unchosen slot is
    /// at or below `through`) gets no promise from this replica, which could not report the
    /// values it accepted there.
    ///
    /// Compacting through a slot already compacted does nothing.
    ///
    /// # Errors
    /// [`CompactError::NotApplied`] if `through` is beyond the applied mark (the last slot
    /// handed out by [`committed`](Replica::committed)); nothing is compacted then.
    pub fn compact(&mut self, through: Slot) -> Result<(), CompactError> {
        if through > self.applied {
            return Err(CompactError::NotApplied {
                through,
                applied: self.applied,
            });
        }
        self.log.compact(through);
        self.prune_memberships();
        Ok(())
    }

    /// Sends `snapshot` to `to`: the answer to an [`Event::SnapshotNeeded`] naming `to`, a
    /// replica that needs slots this one compacted away. Pass the snapshot the application
    /// saved (with [`Storage::save_snapshot`](crate::Storage::save_snapshot)) before it
    /// compacted: it must cover every compacted slot, and may cover more.
    ///
    /// The snapshot travels in chunks of at most `Config::snapshot_chunk_bytes`
    /// ([`Body::Snapshot`]), [`SNAPSHOT_CHUNKS_INFLIGHT`] unacknowledged at a time; a chunk
    /// not acknowledged within `retransmit_ticks` is sent again, and a transfer without
    /// progress for two election timeouts is dropped (the event is raised again once an
    /// election timeout has passed and the replica still needs it). A later call for the
    /// same member replaces the transfer. The receiver assembles the chunks and installs the
    /// snapshot only if it is a follower behind `snapshot.slot`, then keeps catching up by
    /// fetching the slots after it.
    ///
    /// # Errors
    /// A [`SendSnapshotError`] if `to` is not another member, the snapshot covers nothing (slot
    /// 0), slots this replica does not know chosen, or not every slot it compacted, or it
    /// exceeds `Config::snapshot_bytes_max`. Nothing is sent then.
    pub fn send_snapshot(
        &mut self,
        to: NodeId,
        snapshot: &Snapshot,
    ) -> Result<(), SendSnapshotError> {
        if to == self.config.id || self.member_index(to).is_none() {
            return Err(SendSnapshotError::UnknownNode(to));
        }
        if snapshot.slot == 0 {
            return Err(SendSnapshotError::Empty);
        }
        if snapshot.slot > self.hard.chosen {
            return Err(SendSnapshotError::NotChosen {
                slot: snapshot.slot,
                chosen: self.hard.chosen,
            });
        }
        if snapshot.slot + 1 < self.log.first() {
            return Err(SendSnapshotError::TooOld {
                slot: snapshot.slot,
                compacted_through: self.log.first() - 1,
            });
        }
        if snapshot.data.len() > self.config.snapshot_bytes_max {
            return Err(SendSnapshotError::TooLarge {
                size: snapshot.data.len(),
                max: self.config.snapshot_bytes_max,
            });
        }
        let Some(membership) = self.membership_at(snapshot.slot).cloned() else {
            return Err(SendSnapshotError::UnknownMembership {
                slot: snapshot.slot,
            });
        };
        let index = self.member_index(to).expect("checked above");
        self.snapshots_out[index] = Some(OutgoingSnapshot::new(snapshot, membership, self.now));
        self.send_snapshot_chunks(index);
        Ok(())
    }

    /// A snapshot of the replica's state, for monitoring and tests.
    pub fn status(&self) -> Status {
        let followers = match &self.leadership {
            Some(leadership) => self
                .members
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != self.self_index)
                .map(|(index, id)| {
                    let progress = &leadership.followers[index];
                    FollowerStatus {
                        id: *id,
                        next_slot: progress.next_slot,
                        inflight_msgs: progress.inflight.len(),
                        inflight_bytes: progress.inflight_bytes,
                        chosen: progress.follower_chosen,
                        ticks_since_heard: self.now - progress.heard_tick,
                        voter: self.voters.contains(index),
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        Status {
            id: self.config.id,
            role: self.role,
            promised: self.hard.promised,
            leader: self.leader,
            leader_ballot: self.leader_ballot,
            chosen: self.hard.chosen,
            applied: self.applied,
            last_slot: self.log.last(),
            first_slot: self.log.first(),
            incarnation: self.hard.incarnation,
            uncommitted_bytes: self.leadership.as_ref().map_or(0, |l| l.uncommitted_bytes),
            dropped_messages: self.dropped_messages,
            lease_reads: self.lease_reads,
            followers,
            membership: self.membership().cloned(),
            membership_pending: self
                .leadership
                .as_ref()
                .and_then(|leadership| leadership.membership_pending),
        }
    }

    // ---- helpers shared by the parts ----

    /// The index of `id` in the (sorted) member list. A linear scan: clusters have a handful
    /// of members (at most 64 with this replica), and every message looks its sender up.
    #[inline]
    fn member_index(&self, id: NodeId) -> Option<usize> {
        if self.members.len() <= 16 {
            self.members.iter().position(|member| *member == id)
        } else {
            self.members.binary_search(&id).ok()
        }
    }

    /// A majority of the voters (1 when there are none: nothing is counted then).
    #[inline]
    fn quorum(&self) -> usize {
        debug_assert_eq!(self.quorum, self.voters.len() / 2 + 1);
        self.quorum
    }

    fn send(&mut self, to: NodeId, body: Body) {
        self.messages.push(Message {
            from: self.config.id,
            to,
            body,
        });
    }

    fn send_after_persist(&mut self, to: NodeId, body: Body) {
        self.persisted_messages.push(Message {
            from: self.config.id,
            to,
            body,
        });
    }

    /// Raises the promise to `ballot` (never lowers it). Must be synced before it is revealed.
    fn promise(&mut self, ballot: Ballot) {
        assert!(
            ballot >= self.hard.promised,
            "a promise never goes backwards"
        );
        if ballot > self.hard.promised {
            self.hard.promised = ballot;
            self.hard_dirty = true;
            self.hard_needs_sync = true;
            // What was heard of an earlier ballot's phase 1 says nothing of this one.
            self.phase_one_heard_tick = None;
        }
    }

    /// Stores `entry` in the log; it reaches the next write (`unpersisted`, or the log's tail
    /// until sealed).
    #[inline]
    fn store(&mut self, entry: Entry) {
        if let crate::types::Value::Membership(_) = entry.value {
            self.membership_floor = self.membership_floor.min(entry.slot);
        }
        self.log.set(entry, &mut self.unpersisted);
    }

    #[inline]
    fn set_chosen(&mut self, chosen: Slot) {
        debug_assert!(chosen >= self.hard.chosen);
        if chosen > self.hard.chosen {
            let from = self.hard.chosen;
            self.hard.chosen = chosen;
            self.hard_dirty = true;
            if self.membership_floor <= chosen {
                self.adopt_chosen_membership(from);
            }
            // A snapshot still arriving that the chosen mark has passed is not needed any
            // more: its chunks (up to `snapshot_bytes_max`) are dropped, not kept until another
            // transfer replaces them.
            if self
                .snapshot_in
                .as_ref()
                .is_some_and(|incoming| incoming.slot <= chosen)
            {
                self.snapshot_in = None;
            }
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let spread = u64::from(self.config.election_ticks);
        self.election_timeout = self.config.election_ticks + (self.rng.next_u64() % spread) as u32;
    }

    /// Records the leader this replica follows (an event if it changed). Inlined: every
    /// Accept and Commit calls it, and the leader rarely changes.
    #[inline]
    fn set_leader(&mut self, leader: Option<NodeId>, ballot: Ballot) {
        if self.leader != leader || self.leader_ballot != ballot {
            self.change_leader(leader, ballot);
        }
    }

    #[cold]
    #[inline(never)]
    fn change_leader(&mut self, leader: Option<NodeId>, ballot: Ballot) {
        self.leader = leader;
        self.leader_ballot = ballot;
        if leader.is_some() && leader != Some(self.config.id) {
            tracing::debug!(node = %self.config.id, leader = ?leader, %ballot, "following");
        }
        self.events.push(Event::LeaderChanged { leader, ballot });
    }
}

/// The largest slot or ballot round a message may carry: larger ones are refused as malformed
/// by [`Replica::step`].
///
/// A log would need 2^62 commands, and a cluster 2^62 elections, to reach it, while every
/// `slot + 1` and `round + 1` the replica computes stays far from overflowing: a corrupt or
/// hostile number (`Slot::MAX`, a round of `u64::MAX`) is an error, never a panic or a
/// wrapped ballot.
pub const SLOT_OR_ROUND_MAX: u64 = 1 << 62;

/// The largest slot or ballot round in `body`, given that `validate` found its entries in
/// increasing slot order.
fn highest_slot_or_round(body: &Body) -> u64 {
    let entries_highest = |entries: &[Entry]| {
        entries
            .iter()
            .map(|entry| entry.ballot.round)
            .max()
            .unwrap_or(0)
            .max(entries.last().map_or(0, |entry| entry.slot))
    };
    match body {
        Body::PreVote { ballot, chosen } => ballot.round.max(*chosen),
        Body::PreVoteReply {
            ballot,
            promised,
            chosen,
            ..
        } => ballot.round.max(promised.round).max(*chosen),
        Body::Reject { ballot, promised } => ballot.round.max(promised.round),
        Body::Prepare {
            ballot,
            first_slot,
            transfer,
        } => ballot
            .round
            .max(*first_slot)
            .max(transfer.map_or(0, |handed_over| handed_over.round)),
        Body::Fetch { ballot, first_slot } => ballot.round.max(*first_slot),
        Body::TimeoutNow { ballot } => ballot.round,
        Body::Promise {
            ballot,
            first_slot,
            accepted,
            chosen,
            next_slot,
        } => ballot
            .round
            .max(*first_slot)
            .max(*chosen)
            .max(entries_highest(accepted))
            .max(next_slot.unwrap_or(0)),
        // Every entry of an Accept carries its ballot (checked): only the last slot is new.
        Body::Accept {
            ballot,
            chosen,
            entries,
        } => ballot
            .round
            .max(*chosen)
            .max(entries.last_slot().unwrap_or(0)),
        Body::Accepted {
            ballot, last_slot, ..
        } => ballot.round.max(*last_slot),
        Body::Heartbeat { ballot, chosen, .. }
        | Body::HeartbeatReply { ballot, chosen, .. }
        | Body::Commit { ballot, chosen } => ballot.round.max(*chosen),
        Body::FetchReply {
            ballot,
            entries,
            chosen,
        } => ballot.round.max(*chosen).max(entries_highest(entries)),
        Body::Forward { .. } => 0,
        Body::ReadIndex { incarnation, .. } => *incarnation,
        Body::ReadIndexReply {
            incarnation, slot, ..
        } => slot.unwrap_or(0).max(*incarnation),
        Body::Snapshot { slot, .. } => *slot,
        Body::SnapshotAck { slot, .. } => *slot,
    }
}

/// The slots a Promise page from `first_slot` leaves unreported: those up to its next page
/// (`next_slot`), or up to its last entry, that it holds no entry for.
fn promise_page_unreported(first_slot: Slot, accepted: &[Entry], next_slot: Option<Slot>) -> u64 {
    let first_slot = first_slot.max(1);
    let end = match (next_slot, accepted.last()) {
        (Some(next_slot), _) => next_slot,
        (None, Some(last)) => last.slot + 1,
        (None, None) => first_slot,
    };
    end.saturating_sub(first_slot)
        .saturating_sub(accepted.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::ready::tests::heartbeat;
    use super::*;
    use crate::storage::{MemStorage, Storage};
    use crate::types::Value;

    /// A follower of three with every ready handed out: nothing pending.
    fn idle_follower() -> Replica {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        let recovered = MemStorage::new().recover().expect("fresh storage");
        let mut replica =
            Replica::new(Config::new(NodeId(2), members), recovered).expect("valid config");
        while replica.has_ready() {
            let ready = replica.ready();
            replica
                .advance(ready)
                .expect("its own ready, acknowledged in order");
        }
        replica
    }

    fn entry() -> Entry {
        Entry {
            slot: 1,
            ballot: Ballot {
                round: 1,
                node: NodeId(1),
            },
            value: Value::Noop,
        }
    }

    /// Puts one kind of pending work into a replica.
    type SetPending = fn(&mut Replica);

    /// Each way a replica can have work pending, set directly.
    const PENDING: [(&str, SetPending); 11] = [
        ("hard state", |r| r.hard_dirty = true),
        ("message", |r| r.messages.push(heartbeat(1))),
        ("persisted message", |r| {
            r.persisted_messages.push(heartbeat(1))
        }),
        ("unpersisted run", |r| {
            r.unpersisted.push(Entries::one(entry()))
        }),
        ("unsealed tail", |r| {
            let mut sink = Vec::new();
            r.log.set(entry(), &mut sink);
            assert!(sink.is_empty() && r.log.has_unsealed());
        }),
        ("event", |r| {
            r.events.push(Event::LeaderChanged {
                leader: None,
                ballot: Ballot::default(),
            })
        }),
        ("own vote", |r| {
            r.pending_self_votes.push(SelfVote::Incarnation)
        }),
        ("forward", |r| {
            r.forward_queue.push(Command {
                id: ProposalId::default(),
                data: Bytes::from_static(b"x"),
            })
        }),
        ("chosen not applied", |r| r.hard.chosen = r.applied + 1),
        ("installed snapshot", |r| {
            r.installed_snapshot = Some(Snapshot::default())
        }),
        ("read to send to the leader", |r| {
            r.remote_reads.push_back(RemoteRead {
                context: 1,
                sent: None,
                asked: 0,
            })
        }),
    ];

    #[test]
    fn recycle_reuses_the_batch_without_acknowledging_its_write() {
        let mut replica = idle_follower();
        let acknowledged = replica.persisted_number;
        replica.messages.push(heartbeat(1));
        let mut ready = replica.ready();
        assert_eq!(ready.take_messages().len(), 1);
        let number = ready.number();
        let reused: *const Batch = &*ready.batch;
        replica.recycle(ready);
        assert_eq!(
            replica.persisted_number, acknowledged,
            "recycle acknowledges nothing"
        );
        let ready = replica.ready();
        assert!(
            std::ptr::eq(&*ready.batch, reused),
            "the next ready reuses the batch"
        );
        assert_eq!(ready.number(), number + 1);
        replica
            .advance(ready)
            .expect("its own ready, acknowledged in order");
        assert_eq!(replica.persisted_number, number + 1);
    }

    /// `has_ready` is the Ready loop's only way to know there is work: any pending item, alone
    /// or together with any other, must make it true, or the loop stops with work left.
    #[test]
    fn has_ready_sees_every_pending_item_alone_and_in_pairs() {
        assert!(!idle_follower().has_ready());
        for (first, (first_name, set_first)) in PENDING.iter().enumerate() {
            let mut replica = idle_follower();
            set_first(&mut replica);
            assert!(replica.has_ready(), "{first_name} alone");
            for (second_name, set_second) in &PENDING[first + 1..] {
                let mut replica = idle_follower();
                set_first(&mut replica);
                set_second(&mut replica);
                assert!(replica.has_ready(), "{first_name} with {second_name}");
            }
        }
    }
}
