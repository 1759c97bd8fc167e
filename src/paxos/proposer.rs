//! The proposer role: phase 1 with a quorum of promises, adoption of the highest-ballot
//! accepted value (*Paxos Made Simple* §2.2, P2c), phase 2, and retries with higher ballots
//! after a randomized backoff. Pure logic: the [`Node`](super::Node) picks ballots, persists
//! them, sends the messages and counts ticks into it.

use super::{FaultInjection, Proposal};
use crate::quorum::VoteSet;
use crate::types::Ballot;
use bytes::Bytes;

/// What a proposer is doing, as reported by [`Node::proposer_phase`](super::Node::proposer_phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProposerPhase {
    /// Not proposing: `propose` was never called (since the last start), or the value is
    /// chosen.
    Idle,
    /// Phase 1: waiting for a quorum of promises for `ballot`.
    Preparing {
        /// The ballot being prepared.
        ballot: Ballot,
    },
    /// Phase 2: waiting for a quorum of acceptances of the value proposed in `ballot`.
    Accepting {
        /// The ballot of the proposal.
        ballot: Ballot,
    },
    /// The last ballot was beaten or timed out; phase 1 starts again with a higher ballot
    /// after `ticks_left` more ticks.
    BackingOff {
        /// Ticks until the retry.
        ticks_left: u32,
    },
}

/// The proposer's state machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Idle,
    Preparing {
        ballot: Ballot,
        /// Acceptors that promised `ballot` (this node's own only once durable).
        promised: VoteSet,
        /// The highest-ballot proposal reported by those promises.
        highest: Option<Proposal>,
    },
    Accepting {
        ballot: Ballot,
    },
    BackingOff {
        ticks_left: u32,
    },
}

/// What a tick did to the proposer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TickOutcome {
    /// Nothing to do.
    Nothing,
    /// The current ballot got no quorum within `phase_ticks`: it is abandoned; back off.
    TimedOut(Ballot),
    /// The backoff is over: start phase 1 with a higher ballot.
    Retry,
}

/// A proposer. Invariants: it proposes at most one value per ballot; `value` is set whenever
/// the phase is not `Idle`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Proposer {
    /// The number of acceptors.
    members: usize,
    /// The value the application proposed (it may lose to an adopted one).
    value: Option<Bytes>,
    phase: Phase,
    /// Ticks spent in the current phase.
    phase_elapsed_ticks: u32,
    /// Ballots abandoned since `propose`: sizes the backoff window.
    retries: u32,
    fault_injection: FaultInjection,
}

impl Proposer {
    pub(crate) fn new(members: usize, fault_injection: FaultInjection) -> Proposer {
        Proposer {
            members,
            value: None,
            phase: Phase::Idle,
            phase_elapsed_ticks: 0,
            retries: 0,
            fault_injection,
        }
    }

    pub(crate) fn phase(&self) -> ProposerPhase {
        match self.phase {
            Phase::Idle => ProposerPhase::Idle,
            Phase::Preparing { ballot, .. } => ProposerPhase::Preparing { ballot },
            Phase::Accepting { ballot } => ProposerPhase::Accepting { ballot },
            Phase::BackingOff { ticks_left } => ProposerPhase::BackingOff { ticks_left },
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.phase != Phase::Idle
    }

    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// The ballot currently in phase 1 or 2.
    pub(crate) fn ballot(&self) -> Option<Ballot> {
        match self.phase {
            Phase::Preparing { ballot, .. } | Phase::Accepting { ballot } => Some(ballot),
            Phase::Idle | Phase::BackingOff { .. } => None,
        }
    }

    /// Takes on `value` to propose. The node then starts phase 1 with [`prepare`](Self::prepare).
    pub(crate) fn set_value(&mut self, value: Bytes) {
        assert!(!self.is_active(), "one proposal at a time");
        self.value = Some(value);
        self.retries = 0;
    }

    /// Starts phase 1 with `ballot`, which the node picked above every ballot it has seen and
    /// made durable before revealing it.
    pub(crate) fn prepare(&mut self, ballot: Ballot) {
        assert!(self.value.is_some(), "a proposal needs a value");
        assert!(
            self.ballot().map_or(true, |current| current < ballot),
            "ballots only grow"
        );
        self.phase = Phase::Preparing {
            ballot,
            promised: VoteSet::EMPTY,
            highest: None,
        };
        self.phase_elapsed_ticks = 0;
    }

    /// Phase 1 (a promise). Returns the proposal to send in phase 2 — the value of the
    /// highest-ballot proposal reported by the quorum, or the proposer's own if none was (P2c) —
    /// the moment a majority has promised, with `true` if the value was adopted. Stale or
    /// duplicate promises return `None`.
    pub(crate) fn on_promise(
        &mut self,
        voter: usize,
        ballot: Ballot,
        accepted: Option<Proposal>,
    ) -> Option<(Proposal, bool)> {
        let Phase::Preparing {
            ballot: current,
            promised,
            highest,
        } = &mut self.phase
        else {
            return None;
        };
        if *current != ballot || !promised.insert(voter) {
            return None;
        }
        if let Some(reported) = accepted {
            debug_assert!(reported.ballot <= ballot, "validated by the node");
            if highest
                .as_ref()
                .map_or(true, |h| h.ballot < reported.ballot)
            {
                *highest = Some(reported);
            }
        }
        if !promised.is_majority_of(self.members) {
            return None;
        }
        let own = self.value.clone().expect("set while active");
        let (value, adopted) = match highest.take() {
            Some(_) if self.fault_injection == FaultInjection::SkipAdoption => (own, false),
            Some(reported) => (reported.value, true),
            None => (own, false),
        };
        self.phase = Phase::Accepting { ballot };
        self.phase_elapsed_ticks = 0;
        Some((Proposal { ballot, value }, adopted))
    }

    /// An acceptor refused `ballot`. Returns true if that was the current ballot, which is
    /// then abandoned: the node must call [`back_off`](Self::back_off).
    pub(crate) fn on_nack(&mut self, ballot: Ballot) -> bool {
        self.ballot() == Some(ballot)
    }

    /// Abandons the current ballot; phase 1 starts again after `ticks` ticks.
    pub(crate) fn back_off(&mut self, ticks: u32) {
        assert!(self.is_active() && ticks > 0);
        self.retries = self.retries.saturating_add(1);
        self.phase = Phase::BackingOff { ticks_left: ticks };
        self.phase_elapsed_ticks = 0;
    }

    /// One tick of logical time.
    pub(crate) fn tick(&mut self, phase_ticks: u32) -> TickOutcome {
        match &mut self.phase {
            Phase::Idle => TickOutcome::Nothing,
            Phase::Preparing { ballot, .. } | Phase::Accepting { ballot } => {
                self.phase_elapsed_ticks += 1;
                if self.phase_elapsed_ticks >= phase_ticks {
                    TickOutcome::TimedOut(*ballot)
                } else {
                    TickOutcome::Nothing
                }
            }
            Phase::BackingOff { ticks_left } => {
                *ticks_left -= 1;
                if *ticks_left == 0 {
                    TickOutcome::Retry
                } else {
                    TickOutcome::Nothing
                }
            }
        }
    }

    /// The value is chosen (this one or another): stop.
    pub(crate) fn finish(&mut self) {
        self.phase = Phase::Idle;
        self.value = None;
        self.phase_elapsed_ticks = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn ballot(round: u64, node: u64) -> Ballot {
        Ballot::new(round, NodeId(node))
    }

    fn proposal(round: u64, node: u64, value: &'static [u8]) -> Option<Proposal> {
        Some(Proposal {
            ballot: ballot(round, node),
            value: Bytes::from_static(value),
        })
    }

    #[test]
    fn adopts_the_highest_ballot_value_reported() {
        // Paxos Made Simple §2.2, P2c.
        let mut proposer = Proposer::new(5, FaultInjection::None);
        proposer.set_value(Bytes::from_static(b"own"));
        proposer.prepare(ballot(9, 1));
        assert_eq!(
            proposer.on_promise(0, ballot(9, 1), proposal(3, 2, b"x")),
            None
        );
        assert_eq!(
            proposer.on_promise(0, ballot(9, 1), None),
            None,
            "duplicate"
        );
        assert_eq!(proposer.on_promise(1, ballot(8, 1), None), None, "stale");
        assert_eq!(
            proposer.on_promise(1, ballot(9, 1), proposal(5, 3, b"y")),
            None
        );
        assert_eq!(
            proposer.on_promise(2, ballot(9, 1), proposal(4, 4, b"z")),
            Some((proposal(9, 1, b"y").unwrap(), true))
        );
        assert_eq!(
            proposer.phase(),
            ProposerPhase::Accepting {
                ballot: ballot(9, 1)
            }
        );
    }

    #[test]
    fn proposes_its_own_value_when_nothing_was_accepted() {
        let mut proposer = Proposer::new(3, FaultInjection::None);
        proposer.set_value(Bytes::from_static(b"own"));
        proposer.prepare(ballot(1, 1));
        proposer.on_promise(0, ballot(1, 1), None);
        assert_eq!(
            proposer.on_promise(2, ballot(1, 1), None),
            Some((proposal(1, 1, b"own").unwrap(), false))
        );
    }

    #[test]
    fn times_out_then_retries_after_the_backoff() {
        let mut proposer = Proposer::new(3, FaultInjection::None);
        proposer.set_value(Bytes::from_static(b"v"));
        proposer.prepare(ballot(1, 1));
        assert_eq!(proposer.tick(2), TickOutcome::Nothing);
        assert_eq!(proposer.tick(2), TickOutcome::TimedOut(ballot(1, 1)));
        proposer.back_off(2);
        assert_eq!(proposer.tick(2), TickOutcome::Nothing);
        assert_eq!(proposer.tick(2), TickOutcome::Retry);
        assert_eq!(proposer.retries(), 1);
    }
}
