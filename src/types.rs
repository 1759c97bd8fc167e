//! The vocabulary shared by every module: node ids, ballots, slots, proposals and log entries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of one replica within a cluster. Must be unique within the cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "n{}", self.0)
    }
}

/// A Paxos ballot (also called a proposal number): a round and the node that owns it.
///
/// Ballots are totally ordered, first by `round`, then by `node`, so two nodes never own the
/// same ballot. [`Ballot::ZERO`] is lower than every ballot a node can own.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round; a node starting an election picks a round above every round it has seen.
    pub round: u64,
    /// The node that owns this ballot (the only node allowed to propose in it).
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real ballot: nothing has been promised or accepted.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };

    /// Creates a ballot.
    pub const fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}.{}", self.round, self.node.0)
    }
}

/// A position in the replicated log. Slots start at 1; slot 0 means "none".
pub type Slot = u64;

/// Identifies one proposal: the node that proposed it, that node's incarnation (bumped, durably,
/// at every restart) and a sequence number within the incarnation.
///
/// The proposer uses it to recognise its own commands among the committed entries; it is unique
/// across restarts of the proposing node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ProposalId {
    /// The node whose `propose` created the command.
    pub node: NodeId,
    /// The proposing node's incarnation when it proposed.
    pub incarnation: u64,
    /// Sequence number within the incarnation, starting at 1.
    pub sequence: u64,
}

/// The value chosen for one slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// Fills a slot that a new leader found empty (or a hole). The application skips it.
    Noop,
    /// An application command.
    Command {
        /// Who proposed it; lets the proposer match it to its `propose` call.
        id: ProposalId,
        /// The command bytes, opaque to synod. Shared, never copied, on the hot path.
        data: Bytes,
    },
}

impl Value {
    /// The payload size in bytes that flow-control limits count.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Command { data, .. } => data.len(),
        }
    }
}

/// One log entry: a value accepted (or chosen) in `slot` under `ballot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The slot this entry fills.
    pub slot: Slot,
    /// The ballot under which the value was proposed and accepted.
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
}

/// The state an acceptor must keep durable besides its log.
///
/// `promised` must reach stable storage before any Promise or Accepted that depends on it is
/// sent. `incarnation` is bumped on every start so proposal ids stay unique.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    /// The highest ballot this acceptor has promised (it will not accept anything lower).
    pub promised: Ballot,
    /// Every slot up to and including this one is known chosen, and the local log holds the
    /// chosen value for each of them.
    pub chosen: Slot,
    /// Bumped at every start of the node.
    pub incarnation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        let low = Ballot::new(1, NodeId(9));
        let high = Ballot::new(2, NodeId(1));
        assert!(low < high);
        assert!(Ballot::new(2, NodeId(1)) < Ballot::new(2, NodeId(2)));
        assert!(Ballot::ZERO < Ballot::new(0, NodeId(1)));
    }
}
