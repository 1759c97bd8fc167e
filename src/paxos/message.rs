//! The messages members of a Paxos instance exchange.
//!
//! Names follow *Paxos Made Simple*: phase 1 is [`Prepare`](Body::Prepare) /
//! [`Promise`](Body::Promise), phase 2 is [`Accept`](Body::Accept) /
//! [`Accepted`](Body::Accepted). [`Nack`](Body::Nack) tells a proposer its ballot is beaten
//! (the paper's optimisation of §2.5), and [`Decided`](Body::Decided) announces the chosen
//! value to learners (§2.3).

use super::{InstanceId, Proposal};
use crate::types::{Ballot, NodeId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A message from one member of an instance to another.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// The instance the message belongs to; route it to that instance's [`Node`](super::Node).
    pub instance: InstanceId,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// What the message says.
    pub body: Body,
}

/// The content of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// Phase 1a, proposer to acceptors: "promise not to accept any proposal numbered below
    /// `ballot`, and tell me the highest-numbered proposal you have accepted." The ballot must
    /// be owned by the sender.
    Prepare {
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Phase 1b, acceptor to proposer: the promise, sent only once it is durable.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The highest-ballot proposal the acceptor has accepted, if any; its ballot is at most
        /// `ballot`.
        accepted: Option<Proposal>,
    },
    /// Phase 2a, proposer to acceptors: "accept `value` in `ballot`." The ballot must be owned
    /// by the sender, and a proposer sends at most one value per ballot.
    Accept {
        /// The proposer's ballot.
        ballot: Ballot,
        /// The value: the proposer's own, or the one adopted from the promises (P2c).
        value: Bytes,
    },
    /// Phase 2b, acceptor to every learner (every other member): "I accepted `value` in
    /// `ballot`." Sent only once the acceptance is durable. A learner that hears it from a
    /// majority for one ballot knows the value is chosen.
    Accepted {
        /// The ballot of the accepted proposal.
        ballot: Ballot,
        /// The accepted value.
        value: Bytes,
    },
    /// Acceptor to proposer: "I have promised `promised`, above your `ballot`; your Prepare or
    /// Accept is refused." The proposer abandons `ballot` and retries higher, after a backoff.
    Nack {
        /// The refused ballot.
        ballot: Ballot,
        /// The acceptor's promise, above `ballot`.
        promised: Ballot,
    },
    /// Learner to learner: "`value` is chosen." Sent by a proposer that saw its own proposal
    /// chosen, and by any member that knows the chosen value when it receives a Prepare or an
    /// Accept (a late proposer then stops at once).
    Decided {
        /// The chosen value.
        value: Bytes,
    },
}

impl Body {
    /// The message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Prepare { .. } => "Prepare",
            Body::Promise { .. } => "Promise",
            Body::Accept { .. } => "Accept",
            Body::Accepted { .. } => "Accepted",
            Body::Nack { .. } => "Nack",
            Body::Decided { .. } => "Decided",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ballot, NodeId};

    #[test]
    fn kinds_name_the_message() {
        let ballot = Ballot::new(1, NodeId(1));
        let value = Bytes::from_static(b"v");
        let kinds = [
            (Body::Prepare { ballot }, "Prepare"),
            (
                Body::Promise {
                    ballot,
                    accepted: None,
                },
                "Promise",
            ),
            (
                Body::Accept {
                    ballot,
                    value: value.clone(),
                },
                "Accept",
            ),
            (
                Body::Accepted {
                    ballot,
                    value: value.clone(),
                },
                "Accepted",
            ),
            (
                Body::Nack {
                    ballot,
                    promised: ballot,
                },
                "Nack",
            ),
            (Body::Decided { value }, "Decided"),
        ];
        for (body, kind) in kinds {
            assert_eq!(body.kind(), kind);
        }
    }
}
