//! The learner role: counts acceptors' votes per ballot and learns the value once a majority
//! accepted it in one ballot (*Paxos Made Simple* §2.3), or from a `Decided` announcement.

use crate::quorum::VoteSet;
use crate::types::Ballot;
use bytes::Bytes;
use std::collections::BTreeMap;

/// A vote that contradicts what the learner already knows. Only a broken or forged peer
/// produces one; the learner is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// Another value was already reported for the same ballot (a ballot carries one value).
    BallotValue,
    /// Another value is already known chosen.
    ChosenValue,
}

/// A learner. Invariant: `chosen`, once set, never changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Learner {
    /// The number of acceptors (voters are their indices `0..members`).
    members: usize,
    /// For each ballot heard of, its value and the acceptors that accepted it. At most
    /// `members` ballots are tracked, the highest ones: each acceptor's latest vote fits, and a
    /// value chosen in an evicted ballot is also the value of every higher ballot that gathers a
    /// majority (P2c), or it arrives by `Decided`.
    votes: BTreeMap<Ballot, (Bytes, VoteSet)>,
    chosen: Option<Bytes>,
}

impl Learner {
    /// A learner of `members` acceptors that may already know the chosen value (recovered).
    pub(crate) fn new(members: usize, chosen: Option<Bytes>) -> Learner {
        assert!(members > 0 && members <= 64, "1 to 64 acceptors");
        Learner {
            members,
            votes: BTreeMap::new(),
            chosen,
        }
    }

    pub(crate) fn chosen(&self) -> Option<&Bytes> {
        self.chosen.as_ref()
    }

    /// Checks a vote without counting it: `Err` if it contradicts what is known.
    pub(crate) fn check_accepted(&self, ballot: Ballot, value: &Bytes) -> Result<(), Conflict> {
        match self.votes.get(&ballot) {
            Some((known, _)) if known != value => Err(Conflict::BallotValue),
            _ => Ok(()),
        }
    }

    /// Counts acceptor `voter`'s acceptance of `value` in `ballot`. Returns the value if this
    /// vote made it chosen (once; later votes return `None`).
    ///
    /// A chosen value is not cross-checked against later votes of other ballots: by P2c every
    /// higher ballot proposes the chosen value, so a different one would be a safety bug
    /// elsewhere; [`check_accepted`](Learner::check_accepted) still catches two values in one
    /// ballot.
    pub(crate) fn on_accepted(
        &mut self,
        voter: usize,
        ballot: Ballot,
        value: Bytes,
    ) -> Result<Option<Bytes>, Conflict> {
        assert!(voter < self.members, "voter index out of range");
        self.check_accepted(ballot, &value)?;
        if self.chosen.is_some() {
            return Ok(None);
        }
        if !self.votes.contains_key(&ballot) && self.votes.len() >= self.members {
            let lowest = *self
                .votes
                .keys()
                .next()
                .expect("the map is full, not empty");
            if ballot < lowest {
                return Ok(None); // older than every tracked ballot: cannot matter more than they
            }
            self.votes.remove(&lowest);
        }
        let (known, voters) = self
            .votes
            .entry(ballot)
            .or_insert_with(|| (value, VoteSet::EMPTY));
        voters.insert(voter);
        if voters.is_majority_of(self.members) {
            let value = known.clone();
            self.learn(value.clone());
            return Ok(Some(value));
        }
        Ok(None)
    }

    /// Learns `value` from an announcement. Returns it if it is news.
    pub(crate) fn on_decided(&mut self, value: Bytes) -> Result<Option<Bytes>, Conflict> {
        match &self.chosen {
            Some(chosen) if *chosen == value => Ok(None),
            Some(_) => Err(Conflict::ChosenValue),
            None => {
                self.learn(value.clone());
                Ok(Some(value))
            }
        }
    }

    fn learn(&mut self, value: Bytes) {
        debug_assert!(self.chosen.is_none());
        self.chosen = Some(value);
        // Votes are no longer needed; free them.
        self.votes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn ballot(round: u64) -> Ballot {
        Ballot::new(round, NodeId(1))
    }

    #[test]
    fn learns_from_a_majority_of_one_ballot_only() {
        let value = Bytes::from_static(b"v");
        let mut learner = Learner::new(3, None);
        assert_eq!(learner.on_accepted(0, ballot(1), value.clone()), Ok(None));
        assert_eq!(learner.on_accepted(0, ballot(1), value.clone()), Ok(None));
        assert_eq!(learner.on_accepted(1, ballot(2), value.clone()), Ok(None));
        assert_eq!(learner.chosen(), None, "two ballots are not a quorum");
        assert_eq!(
            learner.on_accepted(2, ballot(2), value.clone()),
            Ok(Some(value.clone()))
        );
        assert_eq!(learner.on_accepted(0, ballot(2), value.clone()), Ok(None));
        assert_eq!(learner.chosen(), Some(&value));
    }

    #[test]
    fn refuses_contradictions_unchanged() {
        let mut learner = Learner::new(3, None);
        learner
            .on_accepted(0, ballot(1), Bytes::from_static(b"a"))
            .unwrap();
        let before = learner.clone();
        assert_eq!(
            learner.on_accepted(1, ballot(1), Bytes::from_static(b"b")),
            Err(Conflict::BallotValue)
        );
        assert_eq!(learner, before);
        learner.on_decided(Bytes::from_static(b"a")).unwrap();
        assert_eq!(
            learner.on_decided(Bytes::from_static(b"b")),
            Err(Conflict::ChosenValue)
        );
    }

    #[test]
    fn tracks_a_bounded_number_of_ballots() {
        let mut learner = Learner::new(3, None);
        for round in 1..=100 {
            learner
                .on_accepted(0, ballot(round), Bytes::from_static(b"v"))
                .unwrap();
        }
        assert_eq!(learner.votes.len(), 3);
        assert_eq!(
            learner.on_accepted(1, ballot(100), Bytes::from_static(b"v")),
            Ok(Some(Bytes::from_static(b"v")))
        );
    }

    /// With the vote table full, a vote for a ballot older than every tracked one is dropped;
    /// it must not evict a tracked ballot that may still gather a majority.
    #[test]
    fn an_older_ballot_does_not_evict_tracked_ones() {
        let mut learner = Learner::new(3, None);
        for round in 2..=4 {
            learner
                .on_accepted(0, ballot(round), Bytes::from_static(b"v"))
                .unwrap();
        }
        assert_eq!(
            learner.on_accepted(1, ballot(1), Bytes::from_static(b"v")),
            Ok(None)
        );
        assert_eq!(
            learner.on_accepted(1, ballot(2), Bytes::from_static(b"v")),
            Ok(Some(Bytes::from_static(b"v"))),
            "ballot 2 had to stay tracked"
        );
    }

    /// A repeated announcement of the chosen value is not news and not a conflict.
    #[test]
    fn a_repeated_decision_is_accepted_quietly() {
        let mut learner = Learner::new(3, None);
        let value = Bytes::from_static(b"v");
        assert_eq!(learner.on_decided(value.clone()), Ok(Some(value.clone())));
        assert_eq!(learner.on_decided(value.clone()), Ok(None));
        assert_eq!(learner.chosen(), Some(&value));
    }
}
