//! A consistent-hash ring with virtual nodes, to place keys on Paxos groups.
//!
//! A deployment that outgrows one Paxos group splits its key space over several. The
//! [`Ring`] says which group owns a key: every group gets `vnodes_per_weight × weight` points
//! on a circle of 2⁶⁴ positions, a key is hashed onto the circle, and the first point at or
//! after it (clockwise) names its owner. Adding or removing a group moves only the keys of the
//! arcs that group gains or loses, and [`Ring::transfers_to`] lists exactly those arcs, so a
//! rebalancer knows what to hand over.
//!
//! ```
//! use synod::ring::{GroupId, Ring, RingConfig};
//!
//! # fn main() -> Result<(), synod::ring::RingError> {
//! let mut ring = Ring::new(RingConfig::default())?;
//! ring.insert(GroupId(1), 1)?;
//! ring.insert(GroupId(2), 1)?;
//! let owner = ring.locate(b"user:42").expect("the ring has groups");
//!
//! // Group 3 joins: the keys that move, move to it, and nowhere else.
//! let mut grown = ring.clone();
//! grown.insert(GroupId(3), 1)?;
//! for transfer in ring.transfers_to(&grown) {
//!     assert_eq!(transfer.to, GroupId(3));
//! }
//! let now = grown.locate(b"user:42").unwrap();
//! assert!(now == owner || now == GroupId(3));
//!
//! // Three distinct groups, in ring order, e.g. to place replicas or to fail over.
//! let preference: Vec<GroupId> = grown.successors(b"user:42").take(3).collect();
//! assert_eq!(preference.len(), 3);
//! # Ok(())
//! # }
//! ```
//!
//! **Placement is stable.** The hash is XXH3-64 (a published, fixed algorithm), keys are hashed
//! as given and points from the little-endian bytes of the group id and the point's index,
//! both with [`RingConfig::seed`]. The same groups, weights and configuration give the same
//! placement in every process, on every platform, whatever the order the groups were inserted
//! in, and in every release of this crate (a test pins known placements). Points that land on
//! the same position are ordered by group id, so even collisions are decided the same way
//! everywhere.
//!
//! The ring is plain data with no IO: keep its [`RingSpec`] (serde) in a Paxos group of its
//! own to change it consistently, and rebuild the ring from it with [`Ring::from_spec`].

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Names one Paxos group (one replicated log and its state machine).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// How a ring places its points.
///
/// Every participant that locates keys must use the same configuration: it is part of the
/// placement, like the groups and their weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingConfig {
    /// Points per unit of weight. More points spread the load more evenly (the deviation of a
    /// group's share shrinks as one over the square root of its points) at the cost of
    /// memory (16 bytes a point) and of a slightly longer binary search. Default 128, which
    /// keeps every group within about ±25 % of its fair share for tens of groups.
    pub vnodes_per_weight: u32,
    /// Seeds the hash of keys and points. Default 0. Changing it re-places every key.
    pub seed: u64,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            vnodes_per_weight: 128,
            seed: 0,
        }
    }
}

/// A ring's whole definition: its configuration and its groups with their weights.
///
/// This is what to replicate or store; [`Ring::from_spec`] rebuilds the ring from it, and
/// two rings built from equal specs place every key alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingSpec {
    /// How points are placed.
    pub config: RingConfig,
    /// Each group and its weight, in ascending group order.
    pub groups: Vec<(GroupId, u32)>,
}

/// A misuse of the ring: the call changed nothing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RingError {
    /// [`RingConfig::vnodes_per_weight`] was 0: no group could own anything. Use at least 1.
    #[error("vnodes_per_weight must be at least 1")]
    NoVnodes,
    /// A group was given weight 0. Remove the group instead, or give it weight 1 or more.
    #[error("group {0} was given weight 0")]
    ZeroWeight(GroupId),
    /// The group is already on the ring. Use [`Ring::set_weight`] to change its weight.
    #[error("group {0} is already on the ring")]
    DuplicateGroup(GroupId),
    /// The group is not on the ring.
    #[error("group {0} is not on the ring")]
    UnknownGroup(GroupId),
    /// The ring would hold more than [`Ring::POINTS_MAX`] points. Lower the weights or
    /// `vnodes_per_weight`.
    #[error("the ring would hold {points} points, more than the {max} allowed")]
    TooManyPoints {
        /// The points the change asked for.
        points: u64,
        /// [`Ring::POINTS_MAX`].
        max: u64,
    },
}

/// One point on the circle: a position and the group that owns the arc ending there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    position: u64,
    group: GroupId,
}

/// A consistent-hash ring of Paxos groups. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    config: RingConfig,
    /// Each group and its weight, sorted by group.
    groups: Vec<(GroupId, u32)>,
    /// Every group's points, sorted by (position, group).
    points: Vec<Point>,
}

/// An arc of the circle: the positions after `after`, clockwise, through `through`.
///
/// The arc wraps past `u64::MAX` to 0 when `through <= after`; when `after == through` it is
/// the whole circle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashRange {
    /// The position just before the arc (excluded).
    pub after: u64,
    /// The last position of the arc (included).
    pub through: u64,
}

impl HashRange {
    /// True if `position` lies on the arc.
    pub fn contains(&self, position: u64) -> bool {
        use std::cmp::Ordering;
        match self.after.cmp(&self.through) {
            Ordering::Less => self.after < position && position <= self.through,
            Ordering::Greater => position > self.after || position <= self.through,
            Ordering::Equal => true,
        }
    }

    /// The number of positions on the arc, as a fraction of the circle (1.0: all of it).
    pub fn fraction(&self) -> f64 {
        if self.after == self.through {
            return 1.0;
        }
        self.through.wrapping_sub(self.after) as f64 / 2f64.powi(64)
    }
}

/// An arc whose owner differs between two rings: its keys move from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    /// The positions that move (hash a key with [`Ring::hash_key`] to test it).
    pub range: HashRange,
    /// The owner in the ring the transfer starts from.
    pub from: GroupId,
    /// The owner in the ring it goes to.
    pub to: GroupId,
}

impl Ring {
    /// The most points a ring holds (16 bytes each: 64 MiB at the bound). A change that would
    /// exceed it is refused with [`RingError::TooManyPoints`].
    pub const POINTS_MAX: u64 = 1 << 22;

    /// An empty ring: [`locate`](Ring::locate) finds no owner until a group is inserted.
    ///
    /// # Errors
    /// [`RingError::NoVnodes`] if `config.vnodes_per_weight` is 0.
    pub fn new(config: RingConfig) -> Result<Ring, RingError> {
        if config.vnodes_per_weight == 0 {
            return Err(RingError::NoVnodes);
        }
        Ok(Ring {
            config,
            groups: Vec::new(),
            points: Vec::new(),
        })
    }

    /// Rebuilds the ring `spec` describes (as [`Ring::spec`] returned it, or written by hand:
    /// the groups may come in any order).
    ///
    /// # Errors
    /// [`RingError::NoVnodes`], [`RingError::ZeroWeight`], [`RingError::DuplicateGroup`] or
    /// [`RingError::TooManyPoints`] if the spec is not a valid ring.
    pub fn from_spec(spec: &RingSpec) -> Result<Ring, RingError> {
        let mut ring = Ring::new(spec.config)?;
        let mut groups = spec.groups.clone();
        groups.sort_unstable();
        for pair in groups.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(RingError::DuplicateGroup(pair[0].0));
            }
        }
        if let Some(&(group, _)) = groups.iter().find(|(_, weight)| *weight == 0) {
            return Err(RingError::ZeroWeight(group));
        }
        ring.check_points(groups.iter().map(|&(_, weight)| u64::from(weight)).sum())?;
        for &(group, weight) in &groups {
            ring.push_points(group, weight);
        }
        ring.groups = groups;
        ring.points.sort_unstable();
        Ok(ring)
    }

    /// The ring's definition, to store or replicate; [`Ring::from_spec`] rebuilds it.
    pub fn spec(&self) -> RingSpec {
        RingSpec {
            config: self.config,
            groups: self.groups.clone(),
        }
    }

    /// The configuration the ring was built with.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// Adds `group` with `weight` (its share of the keys is proportional to it).
    ///
    /// # Errors
    /// [`RingError::ZeroWeight`], [`RingError::DuplicateGroup`] or
    /// [`RingError::TooManyPoints`]; the ring is unchanged then.
    pub fn insert(&mut self, group: GroupId, weight: u32) -> Result<(), RingError> {
        if weight == 0 {
            return Err(RingError::ZeroWeight(group));
        }
        let index = match self.groups.binary_search_by_key(&group, |&(id, _)| id) {
            Ok(_) => return Err(RingError::DuplicateGroup(group)),
            Err(index) => index,
        };
        self.check_points(self.total_weight() + u64::from(weight))?;
        self.groups.insert(index, (group, weight));
        self.push_points(group, weight);
        self.points.sort_unstable();
        Ok(())
    }

    /// Removes `group`; its keys go to the groups that follow its points.
    ///
    /// # Errors
    /// [`RingError::UnknownGroup`] if it is not on the ring.
    pub fn remove(&mut self, group: GroupId) -> Result<(), RingError> {
        let index = self
            .groups
            .binary_search_by_key(&group, |&(id, _)| id)
            .map_err(|_| RingError::UnknownGroup(group))?;
        self.groups.remove(index);
        self.points.retain(|point| point.group != group);
        Ok(())
    }

    /// Changes `group`'s weight. Its first points are kept, so raising a weight only takes
    /// keys from others and lowering it only gives some away.
    ///
    /// # Errors
    /// [`RingError::UnknownGroup`], [`RingError::ZeroWeight`] or
    /// [`RingError::TooManyPoints`]; the ring is unchanged then.
    pub fn set_weight(&mut self, group: GroupId, weight: u32) -> Result<(), RingError> {
        let index = self
            .groups
            .binary_search_by_key(&group, |&(id, _)| id)
            .map_err(|_| RingError::UnknownGroup(group))?;
        if weight == 0 {
            return Err(RingError::ZeroWeight(group));
        }
        self.check_points(self.total_weight_with(group, weight))?;
        self.groups[index].1 = weight;
        self.points.retain(|point| point.group != group);
        self.push_points(group, weight);
        self.points.sort_unstable();
        Ok(())
    }

    /// The groups on the ring with their weights, in ascending group order.
    pub fn groups(&self) -> impl ExactSizeIterator<Item = (GroupId, u32)> + '_ {
        self.groups.iter().copied()
    }

    /// The weight of `group`, or `None` if it is not on the ring.
    pub fn weight(&self, group: GroupId) -> Option<u32> {
        self.groups
            .binary_search_by_key(&group, |&(id, _)| id)
            .ok()
            .map(|index| self.groups[index].1)
    }

    /// The number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True if the ring has no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The number of points on the circle.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// Where `key` lands on the circle.
    pub fn hash_key(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.config.seed)
    }

    /// The group that owns `key`, or `None` if the ring is empty. A binary search over the
    /// points; allocates nothing.
    pub fn locate(&self, key: &[u8]) -> Option<GroupId> {
        self.owner_of(self.hash_key(key))
    }

    /// The group that owns `position` on the circle, or `None` if the ring is empty.
    pub fn owner_of(&self, position: u64) -> Option<GroupId> {
        self.points
            .get(self.successor_index(position))
            .map(|point| point.group)
    }

    /// The distinct groups met walking clockwise from `key`'s position: its owner first,
    /// then the next group that is not the owner, and so on, each group once. Take as many as
    /// you need (e.g. the groups to place `n` copies on, in order of preference).
    pub fn successors<'a>(&'a self, key: &[u8]) -> Successors<'a> {
        let start = self.successor_index(self.hash_key(key));
        Successors {
            ring: self,
            start,
            walked: 0,
            seen: std::collections::BTreeSet::new(),
        }
    }

    /// The fraction of the circle `group` owns (0.0 if it is not on the ring): the share of
    /// uniformly hashed keys it gets.
    pub fn share(&self, group: GroupId) -> f64 {
        let Some(last) = self.points.last() else {
            return 0.0;
        };
        // The arc ending at each distinct position belongs to the first point there.
        let mut previous = last.position;
        let mut owned: u128 = 0;
        let mut distinct = 0;
        for (index, point) in self.points.iter().enumerate() {
            if index > 0 && self.points[index - 1].position == point.position {
                continue;
            }
            distinct += 1;
            if point.group == group {
                owned += u128::from(point.position.wrapping_sub(previous));
            }
            previous = point.position;
        }
        if distinct == 1 {
            return if self.points[0].group == group {
                1.0
            } else {
                0.0
            };
        }
        owned as f64 / 2f64.powi(64)
    }

    /// The arcs whose owner differs between this ring and `next`, with the owner in each:
    /// moving those keys from `from` to `to` turns this placement into `next`'s. Adjacent arcs
    /// with the same move are merged, and every position of the circle is in at most one
    /// transfer. If either ring is empty there is nothing to move from or to, and the list is
    /// empty.
    ///
    /// Both rings should share their [`RingConfig`], or almost every key moves.
    pub fn transfers_to(&self, next: &Ring) -> Vec<Transfer> {
        if self.points.is_empty() || next.points.is_empty() {
            return Vec::new();
        }
        // Every position where either ring has a point bounds an arc on which neither ring's
        // owner changes: the owner of the whole arc is each ring's owner of its last position.
        let mut bounds: Vec<u64> = self
            .points
            .iter()
            .chain(&next.points)
            .map(|point| point.position)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut transfers: Vec<Transfer> = Vec::new();
        let mut after = *bounds.last().expect("both rings have points");
        for &through in &bounds {
            let from = self.owner_of(through).expect("not empty");
            let to = next.owner_of(through).expect("not empty");
            if from != to {
                match transfers.last_mut() {
                    Some(last)
                        if last.range.through == after && last.from == from && last.to == to =>
                    {
                        last.range.through = through;
                    }
                    _ => transfers.push(Transfer {
                        range: HashRange { after, through },
                        from,
                        to,
                    }),
                }
            }
            after = through;
        }
        // The first arc wraps around from the last bound: merge it with the last transfer if
        // they touch and move the same way.
        if transfers.len() > 1 {
            let first = transfers[0];
            let last = transfers[transfers.len() - 1];
            if last.range.through == first.range.after
                && last.from == first.from
                && last.to == first.to
            {
                transfers[0].range.after = last.range.after;
                transfers.pop();
            }
        }
        transfers
    }

    fn total_weight(&self) -> u64 {
        self.groups
            .iter()
            .map(|&(_, weight)| u64::from(weight))
            .sum()
    }

    /// The total weight if `group` had `weight`.
    fn total_weight_with(&self, group: GroupId, weight: u32) -> u64 {
        self.groups
            .iter()
            .map(|&(id, old)| u64::from(if id == group { weight } else { old }))
            .sum()
    }

    fn check_points(&self, total_weight: u64) -> Result<(), RingError> {
        let points = total_weight.saturating_mul(u64::from(self.config.vnodes_per_weight));
        if points > Ring::POINTS_MAX {
            return Err(RingError::TooManyPoints {
                points,
                max: Ring::POINTS_MAX,
            });
        }
        Ok(())
    }

    /// Appends `group`'s points (unsorted: the caller sorts).
    fn push_points(&mut self, group: GroupId, weight: u32) {
        let count = u64::from(weight) * u64::from(self.config.vnodes_per_weight);
        self.points.reserve(count as usize);
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&group.0.to_le_bytes());
        for index in 0..count {
            input[8..].copy_from_slice(&index.to_le_bytes());
            self.points.push(Point {
                position: xxh3_64_with_seed(&input, self.config.seed),
                group,
            });
        }
    }

    /// The index of the first point at or after `position`, wrapping to 0 (0 if empty).
    fn successor_index(&self, position: u64) -> usize {
        let index = self
            .points
            .partition_point(|point| point.position < position);
        if index == self.points.len() {
            0
        } else {
            index
        }
    }
}

impl Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.spec().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Ring {
    /// Reads a [`RingSpec`] and rebuilds the ring; an invalid spec is a deserialization error
    /// naming the [`RingError`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ring, D::Error> {
        let spec = RingSpec::deserialize(deserializer)?;
        Ring::from_spec(&spec).map_err(serde::de::Error::custom)
    }
}

/// The distinct groups clockwise from a key: see [`Ring::successors`].
#[derive(Debug)]
pub struct Successors<'a> {
    ring: &'a Ring,
    start: usize,
    walked: usize,
    /// The groups returned so far (a set: walking every group stays O(points log groups)).
    seen: std::collections::BTreeSet<GroupId>,
}

impl Iterator for Successors<'_> {
    type Item = GroupId;

    fn next(&mut self) -> Option<GroupId> {
        let points = &self.ring.points;
        while self.walked < points.len() && self.seen.len() < self.ring.groups.len() {
            let group = points[(self.start + self.walked) % points.len()].group;
            self.walked += 1;
            if self.seen.insert(group) {
                return Some(group);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring_of(groups: &[(u64, u32)], vnodes: u32) -> Ring {
        let mut ring = Ring::new(RingConfig {
            vnodes_per_weight: vnodes,
            seed: 7,
        })
        .unwrap();
        for &(group, weight) in groups {
            ring.insert(GroupId(group), weight).unwrap();
        }
        ring
    }

    fn keys(count: u64) -> impl Iterator<Item = Vec<u8>> {
        (0..count).map(|index| format!("key-{index}").into_bytes())
    }

    #[test]
    fn an_empty_ring_places_nothing() {
        let ring = Ring::new(RingConfig::default()).unwrap();
        assert_eq!(ring.locate(b"x"), None);
        assert_eq!(ring.owner_of(0), None);
        assert_eq!(ring.successors(b"x").next(), None);
        assert_eq!(ring.share(GroupId(1)), 0.0);
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn one_group_owns_everything() {
        let ring = ring_of(&[(5, 1)], 16);
        assert_eq!(
            (ring.len(), ring.is_empty(), ring.point_count()),
            (1, false, 16)
        );
        assert_eq!(
            ring.config(),
            RingConfig {
                vnodes_per_weight: 16,
                seed: 7
            }
        );
        assert_eq!(GroupId(5).to_string(), "g5");
        for key in keys(100) {
            assert_eq!(ring.locate(&key), Some(GroupId(5)));
        }
        assert_eq!(ring.owner_of(u64::MAX), Some(GroupId(5)));
        assert_eq!(ring.share(GroupId(5)), 1.0);
        assert_eq!(ring.successors(b"k").collect::<Vec<_>>(), vec![GroupId(5)]);
    }

    #[test]
    fn misuse_is_refused_and_changes_nothing() {
        assert_eq!(
            Ring::new(RingConfig {
                vnodes_per_weight: 0,
                seed: 0
            }),
            Err(RingError::NoVnodes)
        );
        let mut ring = ring_of(&[(1, 1)], 4);
        let before = ring.clone();
        assert_eq!(
            ring.insert(GroupId(1), 1),
            Err(RingError::DuplicateGroup(GroupId(1)))
        );
        assert_eq!(
            ring.insert(GroupId(2), 0),
            Err(RingError::ZeroWeight(GroupId(2)))
        );
        assert_eq!(
            ring.remove(GroupId(9)),
            Err(RingError::UnknownGroup(GroupId(9)))
        );
        assert_eq!(
            ring.set_weight(GroupId(9), 1),
            Err(RingError::UnknownGroup(GroupId(9)))
        );
        assert_eq!(
            ring.set_weight(GroupId(1), 0),
            Err(RingError::ZeroWeight(GroupId(1)))
        );
        assert_eq!(
            ring.insert(GroupId(3), u32::MAX),
            Err(RingError::TooManyPoints {
                points: (u64::from(u32::MAX) + 1) * 4,
                max: Ring::POINTS_MAX
            })
        );
        assert_eq!(ring, before);
        assert_eq!(ring.weight(GroupId(1)), Some(1));
        assert_eq!(ring.weight(GroupId(2)), None);
    }

    #[test]
    fn an_invalid_spec_is_refused() {
        let config = RingConfig::default();
        let duplicate = RingSpec {
            config,
            groups: vec![(GroupId(2), 1), (GroupId(1), 1), (GroupId(2), 3)],
        };
        assert_eq!(
            Ring::from_spec(&duplicate),
            Err(RingError::DuplicateGroup(GroupId(2)))
        );
        let zero = RingSpec {
            config,
            groups: vec![(GroupId(1), 0)],
        };
        assert_eq!(
            Ring::from_spec(&zero),
            Err(RingError::ZeroWeight(GroupId(1)))
        );
        let huge = RingSpec {
            config,
            groups: vec![(GroupId(1), u32::MAX)],
        };
        assert!(matches!(
            Ring::from_spec(&huge),
            Err(RingError::TooManyPoints { .. })
        ));
        // Through serde too: a bad spec is a decode error, not a bad ring.
        let bytes = bincode::serde::encode_to_vec(&duplicate, bincode::config::standard()).unwrap();
        let decoded: Result<(Ring, usize), _> =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard());
        let error = decoded.unwrap_err().to_string();
        assert!(error.contains("already on the ring"), "{error}");
    }

    #[test]
    fn the_spec_round_trips_through_serde() {
        let ring = ring_of(&[(3, 2), (1, 1), (2, 5)], 8);
        let bytes = bincode::serde::encode_to_vec(&ring, bincode::config::standard()).unwrap();
        let (decoded, _): (Ring, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(decoded, ring);
        assert_eq!(
            ring.spec().groups,
            vec![(GroupId(1), 1), (GroupId(2), 5), (GroupId(3), 2)]
        );
        assert_eq!(Ring::from_spec(&ring.spec()).unwrap(), ring);
    }

    /// Placement must never change between releases: data placed by one version must be found
    /// by the next. If this test fails, the hash or the point layout changed.
    #[test]
    fn placement_is_pinned() {
        let mut ring = Ring::new(RingConfig::default()).unwrap();
        for group in 1..=4 {
            ring.insert(GroupId(group), 1).unwrap();
        }
        let placed: Vec<u64> = [&b"alpha"[..], b"beta", b"gamma", b"delta", b"", b"user:42"]
            .iter()
            .map(|key| ring.locate(key).unwrap().0)
            .collect();
        assert_eq!(placed, PINNED);
        assert_eq!(ring.hash_key(b"alpha"), PINNED_HASH);
        assert!(ring.points.contains(&Point {
            position: PINNED_POINT,
            group: GroupId(1)
        }));
    }
    // Computed independently, with the reference XXH3 (python-xxhash) over the same layout.
    const PINNED: [u64; 6] = [1, 2, 1, 4, 2, 1];
    const PINNED_HASH: u64 = 13_720_501_819_814_554_458;
    /// Group 1's first point: XXH3 of `1u64` then `0u64`, little-endian, seed 0.
    const PINNED_POINT: u64 = 2_806_482_627_441_532_945;

    #[test]
    fn shares_follow_weights() {
        let ring = ring_of(&[(1, 1), (2, 1), (3, 2), (4, 4)], 128);
        let total: f64 = ring.groups().map(|(group, _)| ring.share(group)).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
        for (group, weight) in ring.groups() {
            let fair = f64::from(weight) / 8.0;
            let share = ring.share(group);
            assert!(
                (share - fair).abs() < fair * 0.25,
                "{group}: share {share}, fair {fair}"
            );
        }
        // Keys follow the shares.
        let mut counts = [0u32; 5];
        for key in keys(40_000) {
            counts[ring.locate(&key).unwrap().0 as usize] += 1;
        }
        for (group, weight) in ring.groups() {
            let fair = 40_000.0 * f64::from(weight) / 8.0;
            let got = f64::from(counts[group.0 as usize]);
            assert!(
                (got - fair).abs() < fair * 0.3,
                "{group}: {got} keys, fair {fair}"
            );
        }
    }

    #[test]
    fn successors_are_distinct_and_start_at_the_owner() {
        let ring = ring_of(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], 32);
        for key in keys(200) {
            let all: Vec<GroupId> = ring.successors(&key).collect();
            assert_eq!(all.len(), 5);
            assert_eq!(all[0], ring.locate(&key).unwrap());
            let mut sorted = all.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 5);
        }
    }

    #[test]
    fn hash_ranges_contain_what_they_say() {
        let plain = HashRange {
            after: 10,
            through: 20,
        };
        assert!(!plain.contains(10) && plain.contains(11) && plain.contains(20));
        assert!(!plain.contains(21) && !plain.contains(0));
        let wrapping = HashRange {
            after: u64::MAX - 1,
            through: 1,
        };
        assert!(wrapping.contains(u64::MAX) && wrapping.contains(0) && wrapping.contains(1));
        assert!(!wrapping.contains(2) && !wrapping.contains(u64::MAX - 1));
        let whole = HashRange {
            after: 5,
            through: 5,
        };
        assert!(whole.contains(5) && whole.contains(0) && whole.contains(u64::MAX));
        assert_eq!(whole.fraction(), 1.0);
        assert_eq!(wrapping.fraction(), 3.0 / 2f64.powi(64));
    }

    #[test]
    fn shares_and_transfers_on_degenerate_rings() {
        // One point: its group owns the circle.
        let single = ring_of(&[(5, 1)], 1);
        assert_eq!(
            (single.share(GroupId(5)), single.share(GroupId(6))),
            (1.0, 0.0)
        );
        // Points that collide: the first at a position (the smaller group) owns its arc.
        let mut colliding = ring_of(&[(1, 1), (2, 1)], 1);
        colliding.points = vec![
            Point {
                position: 1 << 62,
                group: GroupId(1),
            },
            Point {
                position: 1 << 62,
                group: GroupId(2),
            },
            Point {
                position: 1 << 63,
                group: GroupId(2),
            },
        ];
        assert_eq!(colliding.share(GroupId(1)), 0.75);
        assert_eq!(colliding.share(GroupId(2)), 0.25);
        assert_eq!(colliding.owner_of(1 << 62), Some(GroupId(1)));
        // Replacing every group moves the whole circle, as one transfer.
        let (old, new) = (ring_of(&[(1, 1)], 8), ring_of(&[(2, 1)], 8));
        let transfers = old.transfers_to(&new);
        assert_eq!(transfers.len(), 1, "{transfers:?}");
        assert_eq!(transfers[0].range.after, transfers[0].range.through);
        assert_eq!(
            (transfers[0].from, transfers[0].to),
            (GroupId(1), GroupId(2))
        );
        // Adding a group yields maximal arcs: no two transfers touch.
        let grown = ring_of(&[(1, 1), (2, 1), (3, 1)], 8);
        let base = ring_of(&[(1, 1), (2, 1)], 8);
        let transfers = base.transfers_to(&grown);
        for (index, transfer) in transfers.iter().enumerate() {
            let next = &transfers[(index + 1) % transfers.len()];
            let touching = transfer.range.through == next.range.after
                && (transfer.from, transfer.to) == (next.from, next.to);
            assert!(transfers.len() == 1 || !touching, "{transfers:?}");
        }
    }

    #[test]
    fn the_point_bound_is_inclusive_and_counts_a_new_weight_once() {
        let config = RingConfig {
            vnodes_per_weight: (Ring::POINTS_MAX / 4) as u32,
            seed: 0,
        };
        let ring = Ring::new(config).unwrap();
        assert_eq!(ring.check_points(4), Ok(()));
        assert!(matches!(
            ring.check_points(5),
            Err(RingError::TooManyPoints { points, max: Ring::POINTS_MAX })
                if points == Ring::POINTS_MAX / 4 * 5
        ));
        let ring = ring_of(&[(1, 3), (2, 5)], 1);
        assert_eq!(ring.total_weight_with(GroupId(2), 1), 4);
        assert_eq!(ring.total_weight_with(GroupId(1), 7), 12);
    }

    #[test]
    fn transfers_between_empty_or_equal_rings_are_none() {
        let ring = ring_of(&[(1, 1), (2, 1)], 16);
        assert!(ring.transfers_to(&ring).is_empty());
        let empty = Ring::new(ring.config()).unwrap();
        assert!(ring.transfers_to(&empty).is_empty());
        assert!(empty.transfers_to(&ring).is_empty());
    }

    fn group_set() -> impl Strategy<Value = Vec<(u64, u32)>> {
        proptest::collection::btree_map(0u64..40, 1u32..4, 1..8)
            .prop_map(|groups| groups.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The placement depends on the set of groups, not on the order they were added in.
        #[test]
        fn insertion_order_does_not_matter(groups in group_set(), seed in any::<u64>()) {
            let forward = ring_of(&groups, 8);
            let mut reversed = Ring::new(RingConfig { vnodes_per_weight: 8, seed: 7 }).unwrap();
            for &(group, weight) in groups.iter().rev() {
                reversed.insert(GroupId(group), weight).unwrap();
            }
            prop_assert_eq!(&forward, &reversed);
            let key = seed.to_le_bytes();
            prop_assert_eq!(forward.locate(&key), reversed.locate(&key));
        }

        /// Adding a group moves keys only to it; removing it moves them back, and only them.
        #[test]
        fn a_new_group_takes_keys_only_for_itself(
            groups in group_set(),
            new in 40u64..50,
            weight in 1u32..4,
        ) {
            let before = ring_of(&groups, 8);
            let mut after = before.clone();
            after.insert(GroupId(new), weight).unwrap();
            for key in keys(300) {
                let (old, now) = (before.locate(&key), after.locate(&key));
                prop_assert!(old == now || now == Some(GroupId(new)));
            }
            let mut removed = after.clone();
            removed.remove(GroupId(new)).unwrap();
            prop_assert_eq!(&removed, &before);
        }

        /// Raising a weight only takes keys for that group; lowering it only gives some away.
        #[test]
        fn weight_changes_move_keys_one_way(groups in group_set(), pick in any::<prop::sample::Index>()) {
            let before = ring_of(&groups, 8);
            let (group, weight) = groups[pick.index(groups.len())];
            let group = GroupId(group);
            let mut raised = before.clone();
            raised.set_weight(group, weight + 2).unwrap();
            prop_assert_eq!(raised.weight(group), Some(weight + 2));
            prop_assert_eq!(raised.point_count(), before.point_count() + 16);
            for key in keys(300) {
                let (old, now) = (before.locate(&key).unwrap(), raised.locate(&key).unwrap());
                prop_assert!(old == now || now == group);
            }
            let mut lowered = raised.clone();
            lowered.set_weight(group, weight).unwrap();
            prop_assert_eq!(&lowered, &before);
        }

        /// A transfer list is exact: a key changes owner if and only if its position lies in a
        /// transfer, which names both owners.
        #[test]
        fn transfers_are_exact(
            a in group_set(),
            b in group_set(),
            extra in proptest::collection::vec(any::<u64>(), 0..50),
        ) {
            let (old, new) = (ring_of(&a, 4), ring_of(&b, 4));
            let transfers = old.transfers_to(&new);
            // Probe keys, every bound, and the positions right next to them.
            let mut positions: Vec<u64> = keys(200).map(|key| old.hash_key(&key)).collect();
            positions.extend(extra);
            for point in old.points.iter().chain(&new.points) {
                positions.extend([point.position, point.position.wrapping_add(1),
                    point.position.wrapping_sub(1)]);
            }
            positions.extend([0, u64::MAX]);
            for position in positions {
                let (from, to) = (old.owner_of(position).unwrap(), new.owner_of(position).unwrap());
                let covering: Vec<&Transfer> =
                    transfers.iter().filter(|t| t.range.contains(position)).collect();
                if from == to {
                    prop_assert!(covering.is_empty(), "{position}: {covering:?}");
                } else {
                    prop_assert_eq!(covering.len(), 1, "{}", position);
                    prop_assert_eq!((covering[0].from, covering[0].to), (from, to));
                }
            }
        }
    }
}
