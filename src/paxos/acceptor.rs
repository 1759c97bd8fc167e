//! The acceptor role: the promise and the accepted proposal, the only state Paxos needs to be
//! durable. Pure logic; the [`Node`](super::Node) persists the state and releases the replies.

use super::{FaultInjection, Proposal};
use crate::types::Ballot;
use bytes::Bytes;

/// The answer of an acceptor to a Prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrepareReply {
    /// Promised; `accepted` is the highest-ballot proposal accepted so far.
    Promise { accepted: Option<Proposal> },
    /// Refused: `promised` is higher than the ballot asked for.
    Nack { promised: Ballot },
}

/// The answer of an acceptor to an Accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AcceptReply {
    /// Accepted.
    Accepted,
    /// Refused: `promised` is higher than the proposal's ballot.
    Nack { promised: Ballot },
}

/// An acceptor. Invariants: `accepted.ballot <= promised`; `promised` never decreases; the
/// accepted ballot never decreases.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Acceptor {
    /// The highest ballot promised: no proposal below it is accepted.
    promised: Ballot,
    /// The highest-ballot proposal accepted.
    accepted: Option<Proposal>,
    fault_injection: FaultInjection,
}

impl Acceptor {
    /// An acceptor resuming from its durable state (`Ballot::ZERO` and `None` when fresh).
    pub(crate) fn new(
        promised: Ballot,
        accepted: Option<Proposal>,
        fault_injection: FaultInjection,
    ) -> Acceptor {
        assert!(
            accepted.as_ref().map_or(true, |a| a.ballot <= promised),
            "an accepted ballot is never above the promise"
        );
        Acceptor {
            promised,
            accepted,
            fault_injection,
        }
    }

    pub(crate) fn promised(&self) -> Ballot {
        self.promised
    }

    pub(crate) fn accepted(&self) -> Option<&Proposal> {
        self.accepted.as_ref()
    }

    /// Phase 1b. *Paxos Made Simple* §2.2, P1a: an acceptor promises `ballot` iff it has not
    /// promised a higher one (an equal one is a retransmission: promise again). The promise
    /// reports the highest-ballot proposal accepted so far (§2.2, phase 1 (b)).
    pub(crate) fn on_prepare(&mut self, ballot: Ballot) -> PrepareReply {
        if ballot < self.promised {
            return PrepareReply::Nack {
                promised: self.promised,
            };
        }
        self.promised = ballot;
        PrepareReply::Promise {
            accepted: self.accepted.clone(),
        }
    }

    /// Phase 2b. P1a: an acceptor accepts a proposal numbered `ballot` iff it has not promised
    /// a higher one. Accepting also promises `ballot` (it will not accept lower ones again).
    pub(crate) fn on_accept(&mut self, ballot: Ballot, value: Bytes) -> AcceptReply {
        let ignore_promise = self.fault_injection == FaultInjection::IgnorePromise;
        if ballot < self.promised && !ignore_promise {
            return AcceptReply::Nack {
                promised: self.promised,
            };
        }
        self.promised = self.promised.max(ballot);
        let newer = self.accepted.as_ref().map_or(true, |a| a.ballot < ballot);
        if newer || ignore_promise {
            self.accepted = Some(Proposal { ballot, value });
        }
        AcceptReply::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn ballot(round: u64, node: u64) -> Ballot {
        Ballot::new(round, NodeId(node))
    }

    #[test]
    fn promises_never_go_backwards() {
        let mut acceptor = Acceptor::new(Ballot::ZERO, None, FaultInjection::None);
        assert_eq!(
            acceptor.on_prepare(ballot(2, 1)),
            PrepareReply::Promise { accepted: None }
        );
        assert_eq!(
            acceptor.on_prepare(ballot(1, 3)),
            PrepareReply::Nack {
                promised: ballot(2, 1)
            }
        );
        assert_eq!(acceptor.promised(), ballot(2, 1));
        // A retransmitted Prepare of the promised ballot is promised again.
        assert!(matches!(
            acceptor.on_prepare(ballot(2, 1)),
            PrepareReply::Promise { .. }
        ));
    }

    #[test]
    fn accepts_at_or_above_the_promise_only() {
        let mut acceptor = Acceptor::new(Ballot::ZERO, None, FaultInjection::None);
        acceptor.on_prepare(ballot(2, 2));
        assert_eq!(
            acceptor.on_accept(ballot(1, 1), Bytes::from_static(b"a")),
            AcceptReply::Nack {
                promised: ballot(2, 2)
            }
        );
        assert_eq!(acceptor.accepted(), None);
        assert_eq!(
            acceptor.on_accept(ballot(3, 1), Bytes::from_static(b"b")),
            AcceptReply::Accepted
        );
        assert_eq!(acceptor.promised(), ballot(3, 1), "accepting promises too");
        let reported = acceptor.on_prepare(ballot(4, 2));
        assert_eq!(
            reported,
            PrepareReply::Promise {
                accepted: Some(Proposal {
                    ballot: ballot(3, 1),
                    value: Bytes::from_static(b"b")
                })
            }
        );
    }

    /// P2b: a higher ballot's Accept replaces the accepted proposal (its promise then reports
    /// the newer one); a repeated Accept of the same ballot keeps it.
    #[test]
    fn a_higher_accept_replaces_the_accepted_proposal() {
        let mut acceptor = Acceptor::new(Ballot::ZERO, None, FaultInjection::None);
        let (low, high) = (ballot(1, 1), ballot(2, 2));
        assert_eq!(
            acceptor.on_accept(low, Bytes::from_static(b"old")),
            AcceptReply::Accepted
        );
        assert_eq!(
            acceptor.on_accept(high, Bytes::from_static(b"new")),
            AcceptReply::Accepted
        );
        let expected = Proposal {
            ballot: high,
            value: Bytes::from_static(b"new"),
        };
        assert_eq!(acceptor.accepted(), Some(&expected));
        assert_eq!(
            acceptor.on_accept(high, Bytes::from_static(b"new")),
            AcceptReply::Accepted
        );
        assert_eq!(acceptor.accepted(), Some(&expected));
        assert_eq!(
            acceptor.on_prepare(ballot(3, 1)),
            PrepareReply::Promise {
                accepted: Some(expected)
            }
        );
    }
}
