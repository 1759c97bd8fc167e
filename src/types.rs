//! The vocabulary shared by every module: node ids, ballots, slots, proposals and log entries.

use crate::page::Shared;
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
    /// A change of the cluster's membership ([`Replica::change_membership`]): once this slot
    /// is chosen, `Membership` governs every later slot. The application skips it when
    /// applying (the replica acts on it, and reports it with
    /// [`Event::MembershipChanged`](crate::Event::MembershipChanged)).
    ///
    /// [`Replica::change_membership`]: crate::Replica::change_membership
    Membership(Box<Membership>),
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
            Value::Noop | Value::Membership(_) => 0,
            Value::Command { data, .. } => data.len(),
        }
    }
}

/// The members of a cluster: the **voters**, whose majorities choose values and elect leaders,
/// and the **learners**, which receive every chosen value (and accept like voters, so that one
/// promoted to voter is already caught up) but are never counted and never campaign.
///
/// Built with [`Membership::new`], which sorts both lists; [`Membership::validate`] says what
/// makes one usable.
///
/// ```
/// use synod::{Membership, NodeId};
///
/// let membership = Membership::new([NodeId(3), NodeId(1), NodeId(2)], [NodeId(4)]);
/// assert_eq!(membership.voters, [NodeId(1), NodeId(2), NodeId(3)]);
/// assert!(membership.is_voter(NodeId(2)) && !membership.is_voter(NodeId(4)));
/// assert!(membership.contains(NodeId(4)));
/// assert!(membership.validate().is_ok());
/// assert!(Membership::new([], [NodeId(1)]).validate().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The voting members, sorted.
    pub voters: Vec<NodeId>,
    /// The non-voting members (learners), sorted.
    pub learners: Vec<NodeId>,
}

impl Membership {
    /// A membership of these voters and learners (each list sorted here).
    pub fn new(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Membership {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        let mut learners: Vec<NodeId> = learners.into_iter().collect();
        voters.sort_unstable();
        learners.sort_unstable();
        Membership { voters, learners }
    }

    /// True if `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// True if `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters then learners.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }

    /// Checks that the membership is usable: at least one voter, at most
    /// [`MEMBERS_MAX`](crate::config::MEMBERS_MAX) members in all, no node listed twice
    /// (in either list or in both), and both lists sorted.
    ///
    /// # Errors
    /// A [`ConfigError`](crate::ConfigError) naming the rule broken.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        use crate::ConfigError;
        if self.voters.is_empty() {
            return Err(ConfigError::new("voters", "at least one voter is needed"));
        }
        if self.voters.len() + self.learners.len() > crate::config::MEMBERS_MAX {
            return Err(ConfigError::new(
                "members",
                "at most MEMBERS_MAX (63) members, voters and learners together",
            ));
        }
        let sorted_unique = |list: &[NodeId]| list.windows(2).all(|pair| pair[0] < pair[1]);
        if !sorted_unique(&self.voters) || !sorted_unique(&self.learners) {
            return Err(ConfigError::new(
                "members",
                "voters and learners must be sorted, without duplicates (use Membership::new)",
            ));
        }
        if self.learners.iter().any(|id| self.voters.contains(id)) {
            return Err(ConfigError::new(
                "learners",
                "a node is either a voter or a learner, not both",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ids: &[NodeId]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        write!(formatter, "voters [{}]", list(&self.voters).join(", "))?;
        if !self.learners.is_empty() {
            write!(formatter, " learners [{}]", list(&self.learners).join(", "))?;
        }
        Ok(())
    }
}

/// A membership and the slot of the chosen entry that made it (0 for the initial one): it
/// governs every slot after `slot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MembershipAt {
    /// The slot of the configuration entry; the membership governs the slots after it.
    pub slot: Slot,
    /// The membership.
    pub membership: Membership,
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

/// A run of log entries in consecutive slots, shared and immutable: cloning it, or taking a
/// sub-run with [`Entries::slots`], costs one reference-count increment for the whole run, not
/// one per entry.
///
/// The replica hands runs out without copying them: the leader's Accept to every follower, its
/// log and its storage write hold the same run, and a follower keeps the run an Accept brought
/// (see `Body::Accept` and `WriteBatch::runs`). It dereferences to `&[Entry]`; on the wire it
/// is encoded exactly as a `Vec<Entry>`.
///
/// Building one from a `Vec<Entry>` moves the entries into a page of their own. The replica's
/// own runs are parts of larger pages: the runs of consecutive `ready`s share one page, which
/// lives until its last run is dropped. A run built by
/// the replica always holds consecutive slots; one built by the application should too (a
/// replica refuses an Accept whose entries are not, with `StepError::Malformed`, and the slot
/// arithmetic of [`Entries::slots`] and [`Entries::last_slot`] assumes it).
///
/// ```
/// use synod::{Ballot, Entries, Entry, NodeId, Value};
///
/// let ballot = Ballot::new(1, NodeId(1));
/// let run: Entries = (5..=9).map(|slot| Entry { slot, ballot, value: Value::Noop }).collect();
/// let middle = run.slots(6, 7); // shares `run`'s allocation: no entry is copied
/// assert_eq!(middle.iter().map(|entry| entry.slot).collect::<Vec<_>>(), [6, 7]);
/// assert_eq!((middle.first_slot(), middle.last_slot()), (Some(6), Some(7)));
/// assert!(run.slots(10, 20).is_empty());
/// ```
#[derive(Clone, Default)]
pub struct Entries {
    /// The entries, in a page shared with other runs (empty: no page).
    run: Shared<Entry>,
    /// The slot of `run[0]` (0 for the empty run), so that finding a slot in a run reads no
    /// entry.
    first: Slot,
}

impl Entries {
    /// The empty run.
    pub const fn new() -> Entries {
        Entries {
            run: Shared::empty(),
            first: 0,
        }
    }

    /// The run of `run`'s entries (which must hold consecutive slots).
    #[inline]
    pub(crate) fn from_shared(run: Shared<Entry>) -> Entries {
        let first = run.first().map_or(0, |entry| entry.slot);
        Entries { run, first }
    }

    /// A run of one entry.
    pub fn one(entry: Entry) -> Entries {
        Entries::from(vec![entry])
    }

    /// The slot of the first entry, if any.
    #[inline]
    pub fn first_slot(&self) -> Option<Slot> {
        (!self.run.is_empty()).then_some(self.first)
    }

    /// The slot of the last entry, if any (computed from the first: the run holds
    /// consecutive slots).
    #[inline]
    pub fn last_slot(&self) -> Option<Slot> {
        (!self.run.is_empty()).then(|| self.first + (self.run.len() - 1) as Slot)
    }

    /// The first slot of a run known not to be empty (the log's runs never are): no check.
    #[inline]
    pub(crate) fn first_slot_of_held(&self) -> Slot {
        debug_assert!(!self.run.is_empty(), "an empty run");
        self.first
    }

    /// The last slot of a run known not to be empty: no check.
    #[inline]
    pub(crate) fn last_slot_of_held(&self) -> Slot {
        debug_assert!(!self.run.is_empty(), "an empty run");
        self.first
            .wrapping_add(self.run.len() as Slot)
            .wrapping_sub(1)
    }

    /// The sub-run `first..=last` of a run starting at slot `low`, which holds all of them
    /// (checked by the caller): [`slots`](Entries::slots) without the clipping.
    #[inline]
    pub(crate) fn held_slots(&self, low: Slot, first: Slot, last: Slot) -> Entries {
        debug_assert!(low == self.first && low <= first && first <= last);
        debug_assert!(last <= self.last_slot_of_held());
        Entries {
            run: self
                .run
                .sub((first - low) as usize, (last - low) as usize + 1),
            first,
        }
    }

    /// The sub-run of the entries whose slots lie in `first..=last`, sharing this run's
    /// allocation (no entry is copied). Assumes the run holds consecutive slots; an empty range
    /// or one outside the run gives the empty run.
    pub fn slots(&self, first: Slot, last: Slot) -> Entries {
        let (Some(low), Some(high)) = (self.first_slot(), self.last_slot()) else {
            return Entries::new();
        };
        let (first, last) = (first.max(low), last.min(high));
        if first > last {
            return Entries::new();
        }
        self.held_slots(low, first, last)
    }

    /// Drops the entries of slots below `slot` from the front (no copy).
    pub(crate) fn drop_below(&mut self, slot: Slot) {
        if let Some(low) = self.first_slot() {
            if slot > low {
                self.run
                    .drop_front(usize::try_from(slot - low).unwrap_or(usize::MAX));
                self.first = if self.run.is_empty() { 0 } else { slot };
            }
        }
    }

    /// Extends this run by `next` when `next` continues it, slot after slot, in the same page
    /// (the next seal of the same log), and says whether it did; `next` is untouched. Lets a
    /// holder keep one run for many consecutive one-entry batches.
    #[inline]
    pub(crate) fn try_extend(&mut self, next: &Entries) -> bool {
        !self.run.is_empty()
            && self.last_slot_of_held().wrapping_add(1) == next.first
            && self.run.try_extend(&next.run)
    }

    /// True if both runs share a page (or are both empty): for tests.
    #[cfg(test)]
    pub(crate) fn same_page(&self, other: &Entries) -> bool {
        self.run.same_page(&other.run)
    }
}

impl std::ops::Deref for Entries {
    type Target = [Entry];

    #[inline]
    fn deref(&self) -> &[Entry] {
        &self.run
    }
}

impl From<Vec<Entry>> for Entries {
    /// Moves the entries into one shared allocation (none for an empty vector).
    fn from(entries: Vec<Entry>) -> Entries {
        if entries.is_empty() {
            return Entries::new(); // no allocation for the empty run
        }
        Entries::from_shared(Shared::from_vec(entries))
    }
}

impl FromIterator<Entry> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry>>(entries: I) -> Entries {
        Entries::from(entries.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Entries) -> bool {
        **self == **other
    }
}

impl Eq for Entries {}

impl std::hash::Hash for Entries {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Entries {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Entries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        Vec::<Entry>::deserialize(deserializer).map(Entries::from)
    }
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

    fn entry(slot: Slot) -> Entry {
        Entry {
            slot,
            ballot: Ballot::new(1, NodeId(1)),
            value: Value::Noop,
        }
    }

    #[test]
    fn entries_share_and_slice_by_slot() {
        let run = Entries::from((3..=7).map(entry).collect::<Vec<_>>());
        assert_eq!(
            (run.first_slot(), run.last_slot(), run.len()),
            (Some(3), Some(7), 5)
        );
        let middle = run.slots(4, 5);
        assert_eq!(middle.iter().map(|e| e.slot).collect::<Vec<_>>(), [4, 5]);
        assert!(run.same_page(&middle));
        assert_eq!(run.slots(0, 100), run);
        assert!(run.slots(8, 9).is_empty() && run.slots(5, 4).is_empty());
        assert_eq!(middle.slots(5, 9).first_slot(), Some(5));
        let mut tail = run.clone();
        tail.drop_below(6);
        assert_eq!(tail.first_slot(), Some(6));
        tail.drop_below(100);
        assert!(tail.is_empty() && tail.same_page(&Entries::new()));
        assert!(Entries::from(Vec::new()).same_page(&Entries::new()));
        assert_eq!(
            format!("{:?}", Entries::one(entry(1))),
            format!("{:?}", [entry(1)])
        );
        // Equality and hashing look at the entries, not at how the run shares them.
        let hash = |run: &Entries| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            run.hash(&mut hasher);
            hasher.finish()
        };
        let copy = Entries::from(vec![entry(4), entry(5)]);
        assert_eq!(copy, middle);
        assert_eq!(hash(&copy), hash(&middle));
        assert_ne!(copy, run.slots(5, 6));
        assert_ne!(hash(&copy), hash(&run.slots(5, 6)));
        assert_eq!((&middle).into_iter().map(|e| e.slot).sum::<Slot>(), 9);
    }

    #[test]
    fn entries_encode_as_a_vector() {
        let entries: Vec<Entry> = (1..=3).map(entry).collect();
        let config = bincode::config::standard();
        let run = Entries::from(entries.clone()).slots(2, 3);
        let bytes = bincode::serde::encode_to_vec(&run, config).unwrap();
        assert_eq!(
            bytes,
            bincode::serde::encode_to_vec(&entries[1..], config).unwrap()
        );
        let (back, _): (Entries, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn ballots_order_by_round_then_node() {
        let low = Ballot::new(1, NodeId(9));
        let high = Ballot::new(2, NodeId(1));
        assert!(low < high);
        assert!(Ballot::new(2, NodeId(1)) < Ballot::new(2, NodeId(2)));
        assert!(Ballot::ZERO < Ballot::new(0, NodeId(1)));
    }
}

/// Stamps the [`Ready`](crate::Ready) batches of one replica (or [`paxos::Node`](crate::paxos::Node))
/// with the instance that made them, so that `advance` refuses a ready from another one: its
/// number would pass the order checks and mark this one's unwritten votes durable.
///
/// Unique within the process (a counter; 0 is never handed out, so a `Ready::default()` is
/// foreign everywhere). Not part of any state's identity: two replicas built from the same
/// inputs are equal, and they behave the same, whatever their stamps.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Origin(u64);

impl fmt::Debug for Origin {
    /// Without the stamp: the `Debug` output of a replica stays the same from run to run.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Origin(_)")
    }
}

impl Origin {
    /// A stamp no other instance in this process has.
    pub(crate) fn next() -> Origin {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // Relaxed: only uniqueness matters, and `fetch_add` gives that under any ordering.
        Origin(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The readies one replica (or node) accepts back: those it stamped itself, and those its
/// ancestors stamped before it was cloned from them.
///
/// A clone shares its parent's history up to the clone, so the readies taken before are the
/// writes of both; the readies either takes afterwards are its own alone. A clone that kept
/// its parent's stamp would accept the parent's later readies, whose numbers line up with its
/// own: acknowledging one would count the clone's unwritten votes as durable. So `Clone`
/// gives the copy a fresh stamp and the ranges of numbers it inherits.
///
/// Not part of any state's identity (see [`Origin`]).
#[derive(Default)]
pub(crate) struct Lineage {
    /// The stamp of the readies this instance hands out.
    own: Origin,
    /// The number of the last ready handed out (stamped).
    handed: u64,
    /// The first number stamped with `own`: 1, or one past `handed` when cloned.
    own_from: u64,
    /// `(stamp, first, last)`: readies numbered `first..=last` with an ancestor's stamp are
    /// this instance's too. Oldest first, ranges disjoint and rising; entries below the last
    /// acknowledged number are dropped (see [`Lineage::acknowledged`]), so the list holds at
    /// most one entry per clone made while readies were unacknowledged.
    inherited: Vec<(Origin, u64, u64)>,
}

impl Lineage {
    /// A fresh lineage, for an instance built from its inputs (not cloned).
    pub(crate) fn new() -> Lineage {
        Lineage {
            own: Origin::next(),
            handed: 0,
            own_from: 1,
            inherited: Vec::new(),
        }
    }

    /// The stamp for ready `number`, the next one handed out.
    #[inline]
    pub(crate) fn stamp(&mut self, number: u64) -> Origin {
        self.handed = number;
        self.own
    }

    /// Whether ready `number` stamped `origin` is this instance's.
    #[inline]
    pub(crate) fn accepts(&self, origin: Origin, number: u64) -> bool {
        if origin == self.own {
            return number >= self.own_from;
        }
        self.inherited
            .iter()
            .any(|&(stamp, first, last)| stamp == origin && (first..=last).contains(&number))
    }

    /// Ready `number` and those before it are acknowledged: inherited ranges wholly below it
    /// can only be refused as out of order, and are forgotten.
    #[inline]
    pub(crate) fn acknowledged(&mut self, number: u64) {
        if !self.inherited.is_empty() {
            self.inherited.retain(|&(_, _, last)| last >= number);
        }
    }
}

impl Clone for Lineage {
    /// A fresh stamp for the copy, which inherits every number handed out so far.
    fn clone(&self) -> Lineage {
        let mut inherited = self.inherited.clone();
        if self.own_from <= self.handed {
            inherited.push((self.own, self.own_from, self.handed));
        }
        Lineage {
            own: Origin::next(),
            handed: self.handed,
            own_from: self.handed + 1,
            inherited,
        }
    }
}

impl fmt::Debug for Lineage {
    /// Without the stamps, as [`Origin`]'s.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Origin(_)")
    }
}
