//! Configuration of one member of one Paxos instance: identity, membership, timeouts in ticks
//! and limits.

use super::InstanceId;
use crate::config::validate_membership;
use crate::error::ConfigError;
use crate::types::NodeId;

/// Everything a [`Node`](super::Node) needs to know before it starts.
///
/// Timeouts are counted in ticks (calls to [`Node::tick`](super::Node::tick)); the application
/// decides how long a tick is. Build one with [`Config::new`] and adjust fields; [`Node::new`]
/// calls [`validate`](Config::validate).
///
/// [`Node::new`]: super::Node::new
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// The instance this node takes part in. Messages of other instances are refused, so many
    /// instances can share one transport (route each message by its `instance` field).
    pub instance: InstanceId,
    /// This node's id; must be one of `members`.
    pub id: NodeId,
    /// Every acceptor of the instance, this node included. Every member is also a learner and
    /// may propose.
    pub members: Vec<NodeId>,
    /// Ticks a proposer waits for a quorum of answers in one phase before it abandons the
    /// ballot and retries with a higher one (after a backoff).
    pub phase_ticks: u32,
    /// The backoff window before the first retry: the delay is drawn uniformly from
    /// `1..=window` by the seeded RNG, and the window doubles at every further retry.
    pub backoff_ticks_initial: u32,
    /// The largest backoff window.
    pub backoff_ticks_max: u32,
    /// The largest value this node proposes or accepts; larger ones are refused.
    pub value_bytes_max: usize,
    /// Seed of the RNG that randomizes the backoff; runs are reproducible from it. Give every
    /// member a different seed, or duelling proposers back off in lockstep.
    pub seed: u64,
    /// Deliberately breaks the protocol. Only for proving that the model checker and the
    /// property tests can catch a safety bug; never set it in real use.
    #[doc(hidden)]
    pub fault_injection: FaultInjection,
}

/// A deliberate protocol bug, for testing the tests. See [`Config::fault_injection`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FaultInjection {
    /// The protocol as specified.
    #[default]
    None,
    /// The proposer ignores the values reported in promises and always proposes its own
    /// (breaks *Paxos Made Simple* P2c).
    SkipAdoption,
    /// The acceptor accepts proposals below its promise (breaks P1a).
    IgnorePromise,
}

impl Config {
    /// A configuration with sensible defaults for node `id` of instance `instance` among
    /// `members`: a phase timeout of 10 ticks, backoff windows from 4 to 64 ticks, values up to
    /// 1 MiB, and the node id as the seed.
    pub fn new(instance: InstanceId, id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            instance,
            id,
            members,
            phase_ticks: 10,
            backoff_ticks_initial: 4,
            backoff_ticks_max: 64,
            value_bytes_max: 1 << 20,
            seed: id.0,
            fault_injection: FaultInjection::None,
        }
    }

    /// Checks every field; returns the first problem found.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field that is wrong and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_membership(self.id, &self.members)?;
        if self.phase_ticks == 0 {
            return Err(ConfigError::new("phase_ticks", "must be at least 1"));
        }
        if self.backoff_ticks_initial == 0 {
            return Err(ConfigError::new(
                "backoff_ticks_initial",
                "must be at least 1",
            ));
        }
        if self.backoff_ticks_max < self.backoff_ticks_initial {
            return Err(ConfigError::new(
                "backoff_ticks_max",
                "must be at least backoff_ticks_initial",
            ));
        }
        if self.value_bytes_max == 0 {
            return Err(ConfigError::new("value_bytes_max", "must be at least 1"));
        }
        Ok(())
    }

    /// The number of acceptors that makes a majority of the members.
    pub fn quorum(&self) -> usize {
        crate::quorum::majority(self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MEMBERS_MAX;

    fn three() -> Config {
        Config::new(
            InstanceId(7),
            NodeId(1),
            vec![NodeId(1), NodeId(2), NodeId(3)],
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(three().validate(), Ok(()));
        assert_eq!(three().quorum(), 2);
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let field = |tweak: fn(&mut Config)| {
            let mut config = three();
            tweak(&mut config);
            config.validate().unwrap_err().field
        };
        assert_eq!(field(|c| c.members.clear()), "members");
        assert_eq!(field(|c| c.members.push(NodeId(2))), "members");
        assert_eq!(field(|c| c.id = NodeId(9)), "id");
        assert_eq!(field(|c| c.phase_ticks = 0), "phase_ticks");
        assert_eq!(
            field(|c| c.backoff_ticks_initial = 0),
            "backoff_ticks_initial"
        );
        assert_eq!(field(|c| c.backoff_ticks_max = 1), "backoff_ticks_max");
        assert_eq!(field(|c| c.value_bytes_max = 0), "value_bytes_max");
        assert_eq!(
            field(|c| {
                c.members = (0..65).map(NodeId).collect();
                c.id = NodeId(0);
            }),
            "members"
        );
    }

    #[test]
    fn sixty_four_members_is_the_limit() {
        let members: Vec<NodeId> = (1..=MEMBERS_MAX as u64).map(NodeId).collect();
        let mut config = Config::new(InstanceId(1), NodeId(1), members.clone());
        assert_eq!(config.validate(), Ok(()));
        config.members.push(NodeId(MEMBERS_MAX as u64 + 1));
        assert_eq!(config.validate().unwrap_err().field, "members");
    }
}
