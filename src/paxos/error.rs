//! The errors of a Paxos [`Node`](super::Node), in the crate's taxonomy (DESIGN.md §5): bad
//! input from the network is a [`StepError`] that leaves the node unchanged; an expected
//! rejection of a proposal is a [`ProposeError`] that hands the value back.

use super::InstanceId;
use crate::types::NodeId;
use bytes::Bytes;
use thiserror::Error;

/// A message given to [`Node::step`](super::Node::step) was refused. The node's state is
/// unchanged; count it and move on (it usually means a misrouted, stale or forged message).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StepError {
    /// The message belongs to another instance: route messages by their `instance` field.
    #[error("message for instance {found}, this is instance {this}")]
    WrongInstance {
        /// The message's instance.
        found: InstanceId,
        /// This node's instance.
        this: InstanceId,
    },
    /// The message is addressed to another node.
    #[error("message addressed to {to}, this is {this}")]
    WrongRecipient {
        /// The addressee.
        to: NodeId,
        /// This node.
        this: NodeId,
    },
    /// The sender is not a member of this instance.
    #[error("message from unknown node {0}")]
    UnknownNode(NodeId),
    /// The message claims to come from this node itself; a node never messages itself (its
    /// roles talk to each other directly), so it is forged or misrouted.
    #[error("message from this node itself ({0})")]
    FromSelf(NodeId),
    /// The message is well-formed but breaks a protocol invariant: a Prepare or Accept for a
    /// ballot owned by another node than the sender, a Promise or Nack for a ballot this node
    /// does not own, round 0, a value above `value_bytes_max`, or a value that contradicts one
    /// already known for the same ballot (or the chosen value).
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

/// A proposal was refused; the value is handed back untouched.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProposeError {
    /// A value is already chosen for this instance (it never changes). `chosen` is the
    /// outcome; the value is handed back.
    #[error("a value is already chosen")]
    AlreadyChosen {
        /// The value proposed, handed back.
        value: Bytes,
        /// The chosen value.
        chosen: Bytes,
    },
    /// This node's proposer is already driving a value for this instance. Wait for
    /// [`Event::Chosen`](super::Event::Chosen): the outcome may be either value (or another
    /// member's).
    #[error("this node is already proposing in this instance")]
    InProgress {
        /// The value proposed, handed back.
        value: Bytes,
    },
    /// The value is longer than [`Config::value_bytes_max`](super::Config::value_bytes_max).
    #[error("value of {bytes} bytes exceeds value_bytes_max of {bytes_max}")]
    TooLarge {
        /// The value proposed, handed back.
        value: Bytes,
        /// Its length.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
}

impl ProposeError {
    /// Takes the proposed value back out of the error.
    pub fn into_value(self) -> Bytes {
        match self {
            ProposeError::AlreadyChosen { value, .. }
            | ProposeError::InProgress { value }
            | ProposeError::TooLarge { value, .. } => value,
        }
    }
}
