//! Pure quorum arithmetic: majorities and vote sets. No replica types.

/// The number of votes that forms a majority of `members` voters.
///
/// # Panics
/// If `members` is zero (a cluster has at least one member).
pub fn majority(members: usize) -> usize {
    assert!(members > 0, "a cluster has at least one member");
    members / 2 + 1
}

/// A set of voters, each named by its index (`0..64`) in the member list.
///
/// Counting votes for a slot is one OR and one popcount: cheap enough to do per entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VoteSet(u64);

impl VoteSet {
    /// The empty set.
    pub const EMPTY: VoteSet = VoteSet(0);

    /// Adds the voter at `index`; returns true if it was not there yet.
    ///
    /// # Panics
    /// If `index >= 64`.
    pub fn insert(&mut self, index: usize) -> bool {
        assert!(index < 64, "voter index out of range");
        let bit = 1u64 << index;
        let fresh = self.0 & bit == 0;
        self.0 |= bit;
        fresh
    }

    /// True if the voter at `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        index < 64 && self.0 & (1u64 << index) != 0
    }

    /// The number of voters in the set.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// True if at least `count` voters are in the set: `len() >= count`, counting only up to
    /// `count` (one step per voter counted, cheaper than a full popcount on a CPU without one
    /// for the few voters a quorum needs).
    #[inline]
    pub fn has_at_least(&self, count: usize) -> bool {
        let mut rest = self.0;
        for _ in 0..count {
            if rest == 0 {
                return false;
            }
            rest &= rest - 1;
        }
        true
    }

    /// True if no voter is in the set.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// True if every voter of `other` is in this set.
    pub fn contains_all(&self, other: VoteSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if the set holds at least a majority of `members` voters.
    pub fn is_majority_of(&self, members: usize) -> bool {
        self.len() >= majority(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn any_two_majorities_intersect() {
        // Paxos Made Simple §2.2 rests on this: every two majorities share an acceptor.
        for members in 1..=9usize {
            for a in 0u64..(1 << members) {
                for b in 0u64..(1 << members) {
                    let (set_a, set_b) = (VoteSet(a), VoteSet(b));
                    if set_a.is_majority_of(members) && set_b.is_majority_of(members) {
                        assert_ne!(a & b, 0, "{members} members: {a:b} and {b:b} are disjoint");
                    }
                }
            }
        }
    }

    #[test]
    fn vote_set_counts_each_voter_once() {
        let mut votes = VoteSet::EMPTY;
        assert!(votes.insert(2));
        assert!(!votes.insert(2));
        assert!(votes.insert(0));
        assert_eq!(votes.len(), 2);
        assert!(votes.contains(2) && !votes.contains(1) && !votes.contains(99));
        assert!(votes.is_majority_of(3));
        assert!(votes.has_at_least(0) && votes.has_at_least(2) && !votes.has_at_least(3));
        assert!(VoteSet(u64::MAX).has_at_least(64) && !VoteSet(u64::MAX).has_at_least(65));
        assert!(VoteSet::EMPTY.has_at_least(0) && !VoteSet::EMPTY.has_at_least(1));
        assert!(!votes.is_majority_of(4));
    }
}
