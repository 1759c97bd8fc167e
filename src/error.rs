//! The error taxonomy (DESIGN.md §5).
//!
//! - Misuse of the API (a programming error) gets a typed error that says what was wrong and
//!   changes nothing ([`AcknowledgeError`], [`CompactError`], a [`ConfigError`] or
//!   [`StorageError::InvalidOptions`] for unusable options), not a panic; a transport drops
//!   and counts a message it cannot send. The few functions that still assert a documented
//!   precondition (pure helpers such as [`quorum::majority`](crate::quorum::majority)) say so
//!   under `# Panics`.
//! - An expected rejection is a typed error that hands ownership back ([`ProposeError`]).
//! - Bad input from the network is a [`StepError`] or a [`DecodeError`]: it never panics and
//!   never changes state.
//! - Storage and I/O failures are [`StorageError`]s, returned to the application.

use crate::types::{NodeId, Slot};
use bytes::Bytes;
use thiserror::Error;

/// A configuration field is invalid. Fix the field and build the replica again.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid config field `{field}`: {reason}")]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ConfigError {
    /// Creates the error for `field`.
    pub fn new(field: &'static str, reason: &'static str) -> ConfigError {
        ConfigError { field, reason }
    }
}

/// An acknowledgement of written readies was refused
/// ([`Replica::advance`](crate::Replica::advance),
/// [`Replica::on_persisted`](crate::Replica::on_persisted), and the same methods of a
/// [`paxos::Node`](crate::paxos::Node)). Nothing changed: no vote was counted as durable.
///
/// It is a bug in the event loop, not a fault of the storage: acknowledge each ready once its
/// write is durable, in the order the readies were taken, on the replica that made it. A
/// replica whose writes did complete should go on with the next correct acknowledgement; if
/// the loop has lost track of which writes are durable, stop the node and restart it from its
/// storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum AcknowledgeError {
    /// `number` was never handed out: the last ready taken has number `last`. Acknowledge only
    /// numbers read from [`Ready::number`](crate::Ready::number).
    #[error("ready {number} was never handed out (the last one handed out is {last})")]
    NeverHandedOut {
        /// The number acknowledged.
        number: u64,
        /// The number of the last ready handed out.
        last: u64,
    },
    /// `number` is below `acknowledged`, a number already acknowledged: writes complete, and
    /// are acknowledged, in the order the readies were taken. (Acknowledging the same number
    /// again is allowed and does nothing.)
    #[error("ready {number} acknowledged after ready {acknowledged}: acknowledge in order")]
    OutOfOrder {
        /// The number acknowledged.
        number: u64,
        /// The highest number acknowledged before.
        acknowledged: u64,
    },
    /// The ready handed to `advance` was made by another replica or node (or is a
    /// `Ready::default()`): its number says nothing about this one's writes. Hand each ready
    /// back to the one that made it. A clone of a replica or node shares its parent's
    /// history: a ready taken before the clone was made is accepted by both, one taken by
    /// either afterwards only by the one that took it. (A ready older than the last one
    /// acknowledged may be answered so as well as [`OutOfOrder`](Self::OutOfOrder).)
    #[error("ready {number} was made by another replica")]
    ForeignReady {
        /// The foreign ready's number.
        number: u64,
    },
}

impl AcknowledgeError {
    /// The order rules of an acknowledgement of ready `number`, shared by
    /// [`Replica`](crate::Replica) and [`paxos::Node`](crate::paxos::Node): handed out (at
    /// most `last`, the newest number handed out) and not below `acknowledged`.
    #[inline]
    pub(crate) fn check(number: u64, last: u64, acknowledged: u64) -> Result<(), AcknowledgeError> {
        if number > last {
            return Err(AcknowledgeError::NeverHandedOut { number, last });
        }
        if number < acknowledged {
            return Err(AcknowledgeError::OutOfOrder {
                number,
                acknowledged,
            });
        }
        Ok(())
    }
}

/// [`Replica::compact`](crate::Replica::compact) was refused; nothing was compacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum CompactError {
    /// `through` is beyond the applied mark: the entries after `applied` are not handed out
    /// yet (through [`Replica::committed`](crate::Replica::committed)), so the application
    /// cannot have them in its snapshot. Compact only through a slot the application has
    /// applied and saved in a snapshot (at most [`Status::applied`](crate::Status::applied)).
    #[error("cannot compact through slot {through}: only slots through {applied} are applied")]
    NotApplied {
        /// The slot asked for.
        through: Slot,
        /// The replica's applied mark: the last slot handed out as chosen.
        applied: Slot,
    },
}

/// A proposal was not accepted; the command is handed back untouched.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProposeError {
    /// This replica is not the leader (and is not forwarding). Send the command to `hint` if it
    /// is `Some`, or retry later: an election is under way.
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader this replica knows of, if any.
        hint: Option<NodeId>,
        /// The command, handed back.
        command: Bytes,
    },
    /// A bound in the [`Config`](crate::Config) is reached (uncommitted backlog, forward queue).
    /// Retry after some committed entries have been applied.
    #[error("busy: too much uncommitted work")]
    Busy {
        /// The command, handed back.
        command: Bytes,
    },
    /// The command is larger than [`Config::command_bytes_max`](crate::Config::command_bytes_max):
    /// no message could carry it. Split it, or raise the limit (and the transport's frame).
    #[error("command of {} bytes is above command_bytes_max ({max})", command.len())]
    TooLarge {
        /// The command, handed back.
        command: Bytes,
        /// The limit.
        max: usize,
    },
}

impl ProposeError {
    /// Takes the command back out of the error.
    pub fn into_command(self) -> Bytes {
        match self {
            ProposeError::NotLeader { command, .. }
            | ProposeError::Busy { command }
            | ProposeError::TooLarge { command, .. } => command,
        }
    }
}

/// [`Replica::read_index`](crate::Replica::read_index) refused a read; nothing was started.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReadError {
    /// This replica does not lead. Ask `hint` if it is `Some`, or retry later (an election is
    /// under way); or read through the log instead.
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader this replica knows of, if any.
        hint: Option<NodeId>,
    },
    /// [`Config::reads_max`](crate::Config::reads_max) reads are waiting for their
    /// confirmation already (or a follower has just started: its first ready is not written
    /// yet, or a leader is finishing a membership change its election recovered, after which
    /// it campaigns again). Retry once some are reported, or shortly.
    #[error("busy: too many reads waiting")]
    Busy,
}

/// [`Replica::transfer_leadership`](crate::Replica::transfer_leadership) refused; nothing
/// changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TransferError {
    /// This replica does not lead: only a leader hands its leadership over. `hint` is the
    /// leader it knows of, if any.
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader this replica knows of, if any.
        hint: Option<NodeId>,
    },
    /// The target is not a voting member of the cluster (a learner cannot lead).
    #[error("{0} is not a voting member")]
    UnknownNode(NodeId),
}

/// [`Replica::change_membership`](crate::Replica::change_membership) refused a change;
/// nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MembershipError {
    /// This replica does not lead: ask the leader (`hint`, if known).
    #[error("not the leader (leader hint: {hint:?})")]
    NotLeader {
        /// The leader this replica knows of, if any.
        hint: Option<NodeId>,
    },
    /// The new membership is not usable (no voter, a node listed twice, too many members):
    /// fix it and ask again.
    #[error("invalid membership: {0}")]
    Invalid(ConfigError),
    /// A change is already under way (its entry, at `slot`, is not chosen yet; or this
    /// leader was just elected and has not finished recovering one): one change at a time.
    /// Wait for [`Event::MembershipChanged`](crate::Event::MembershipChanged) and retry.
    #[error("a membership change is already under way (slot {slot})")]
    InProgress {
        /// The slot of the change under way.
        slot: Slot,
    },
    /// The leader cannot take a proposal now: it has just started (its incarnation is not
    /// durable yet), a leadership transfer is under way, or the uncommitted bounds are
    /// reached. Retry shortly.
    #[error("the leader is busy; retry shortly")]
    Busy,
}

/// [`Replica::send_snapshot`](crate::Replica::send_snapshot) refused to send a snapshot;
/// nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SendSnapshotError {
    /// The destination is not another member of this cluster. Check the id: the one an
    /// [`Event::SnapshotNeeded`](crate::replica::Event::SnapshotNeeded) names was a member
    /// when the event was raised, and is refused only if a membership change removed it
    /// since (then it needs nothing).
    #[error("{0} is not another member of this cluster")]
    UnknownNode(NodeId),
    /// This replica does not know the membership in force at the snapshot's slot (it joined
    /// the cluster and has not caught up to a membership change yet). Send the snapshot from
    /// another replica.
    #[error("the membership at slot {slot} is not known here")]
    UnknownMembership {
        /// The snapshot's slot.
        slot: Slot,
    },
    /// The snapshot covers no slot (slot 0): there is nothing to send.
    #[error("a snapshot at slot 0 covers nothing")]
    Empty,
    /// The snapshot covers slots this replica does not know to be chosen: it cannot vouch for
    /// them. Send a snapshot taken at or below the replica's chosen mark (its applied mark is).
    #[error("the snapshot covers slots through {slot}, beyond the chosen mark {chosen}")]
    NotChosen {
        /// The snapshot's slot.
        slot: Slot,
        /// This replica's chosen mark.
        chosen: Slot,
    },
    /// The snapshot is older than this replica's compaction point: the receiver would still
    /// lack slots only the compacted log had. Send the snapshot saved when compacting.
    #[error("the snapshot covers slots through {slot}, but the log is compacted through {compacted_through}")]
    TooOld {
        /// The snapshot's slot.
        slot: Slot,
        /// The last slot compacted away.
        compacted_through: Slot,
    },
    /// The snapshot is larger than `Config::snapshot_bytes_max`. Raise the limit (and the
    /// transport's frame limit with it) or make the state machine's snapshot smaller.
    #[error("the snapshot has {size} bytes, more than snapshot_bytes_max ({max})")]
    TooLarge {
        /// The snapshot's data size.
        size: usize,
        /// `Config::snapshot_bytes_max`.
        max: usize,
    },
}

/// A message given to `step` was refused. The replica's state is unchanged; count it and move
/// on (it usually means a misrouted, stale or forged message).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StepError {
    /// The sender is not a member of this cluster.
    #[error("message from unknown node {0}")]
    UnknownNode(NodeId),
    /// The message is addressed to another node.
    #[error("message addressed to {to}, this is {this}")]
    WrongRecipient {
        /// The addressee.
        to: NodeId,
        /// This replica.
        this: NodeId,
    },
    /// The message is well-formed but breaks a protocol invariant (e.g. an Accept whose
    /// entries are not contiguous, or a ballot owned by another node than the sender).
    #[error("malformed {kind} from {from}: {reason}")]
    Malformed {
        /// The sender.
        from: NodeId,
        /// The message kind.
        kind: &'static str,
        /// The broken invariant.
        reason: &'static str,
    },
}

/// Bytes from the wire could not be decoded into a message. Drop the frame (or the connection).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than a frame header, or than the header's length says.
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The frame does not start with synod's magic number.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// The frame uses a wire format version this build does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u16),
    /// The frame belongs to another cluster.
    #[error("frame from cluster {found}, expected {expected}")]
    ForeignCluster {
        /// The cluster id in the frame.
        found: u64,
        /// This node's cluster id.
        expected: u64,
    },
    /// The frame's declared length is above the configured maximum.
    #[error("frame of {length} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Declared length.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch: frame says {expected:#010x}, payload has {actual:#010x}")]
    Checksum {
        /// Checksum in the frame.
        expected: u32,
        /// Checksum of the payload.
        actual: u32,
    },
    /// The payload is not a valid encoding of the message type.
    #[error("undecodable payload: {0}")]
    Payload(String),
}

/// A storage operation failed. The replica's durable state is whatever the last successful
/// write left; stop the node (or retry the write) — never acknowledge what failed to persist.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An I/O error from the operating system.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is corrupt (bad checksum or structure) somewhere other than a torn tail.
    /// Data would be lost by continuing; restore the node from a peer or a backup.
    #[error("corrupt storage in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The storage belongs to another cluster or node.
    #[error("storage in {path} belongs to cluster {cluster_id} node {node}, not this one")]
    Foreign {
        /// The file.
        path: String,
        /// Its cluster id.
        cluster_id: u64,
        /// Its node id.
        node: NodeId,
    },
    /// The storage directory is in use: another [`FileStorage`](crate::FileStorage) (in this
    /// process or another one) holds its lock file. Two writers would corrupt the log: stop
    /// the other process, or use another directory. The lock is released when the holder
    /// drops its storage or exits, however it exits (the operating system releases it).
    #[error("storage in {path} is locked by another process{}", holder_text(*.holder_pid))]
    Locked {
        /// The lock file.
        path: String,
        /// The process id the holder wrote into the lock file, if it could be read.
        holder_pid: Option<u32>,
    },
    /// The [`FileStorageOptions`](crate::FileStorageOptions) given to
    /// [`FileStorage::open`](crate::FileStorage::open) are unusable; nothing was opened or
    /// created. Fix the field the error names (see
    /// [`FileStorageOptions::validate`](crate::FileStorageOptions::validate)).
    #[error("unusable storage options: {0}")]
    InvalidOptions(ConfigError),
    /// Entries were asked for that are not stored (compacted away, or never written).
    #[error("slot {slot} is not available (stored range {first}..={last})")]
    Unavailable {
        /// The slot asked for.
        slot: Slot,
        /// First stored slot.
        first: Slot,
        /// Last stored slot.
        last: Slot,
    },
}

/// The holder part of [`StorageError::Locked`]'s message.
fn holder_text(holder_pid: Option<u32>) -> String {
    match holder_pid {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}
