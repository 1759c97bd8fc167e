//! Single-decree Paxos — the Synod protocol of *Paxos Made Simple* — sans-IO.
//!
//! A Paxos **instance** chooses one value out of those proposed, and never changes its mind.
//! Each member of an instance is a [`Node`]: an acceptor and a learner, and a proposer once
//! the application calls [`Node::propose`]. Values are opaque [`Bytes`]; an instance is named
//! by an [`InstanceId`] the application picks, and every [`Message`] carries it, so many
//! instances (one per transaction of a non-blocking commit, say) share one transport.
//!
//! # The protocol
//! Ballots ([`Ballot`]: a round and the node that owns it) are totally ordered and each node
//! owns its own, so no two proposers ever use the same one.
//! 1. **Phase 1.** A proposer picks a ballot above every ballot it has seen, makes its round
//!    durable (a proposer must never reuse a ballot, even across a crash: §2.4), and sends
//!    `Prepare(ballot)` to every acceptor.
//! 2. An acceptor that has promised nothing higher **promises** `ballot` — it will not accept
//!    anything lower any more — and answers `Promise` with the highest-ballot proposal it has
//!    accepted, once that promise is durable; otherwise it answers `Nack` with its promise (P1a).
//! 3. **Phase 2.** With promises from a majority, the proposer asks every acceptor to accept,
//!    in its ballot, the value of the highest-ballot proposal those promises reported — or its
//!    own value if they reported none (P2c). That adoption is what makes Paxos safe: once a
//!    value is chosen, every higher ballot proposes that same value.
//! 4. An acceptor that has promised nothing higher **accepts** and, once that is durable, tells
//!    every learner (`Accepted`); otherwise it answers `Nack`.
//! 5. **Learning.** A learner that hears `Accepted` for one ballot from a majority of acceptors
//!    knows the value is chosen (§2.3). The proposer announces it with `Decided`, and any node
//!    that knows it answers a late proposer's Prepare or Accept with `Decided` too.
//! 6. **Liveness.** A proposer that gets a `Nack`, or no quorum within
//!    [`Config::phase_ticks`], abandons its ballot and retries higher after a random backoff
//!    (seeded, in ticks, doubling up to [`Config::backoff_ticks_max`]), so two duelling
//!    proposers drift apart and one completes both phases (§2.4 calls for a distinguished
//!    proposer; randomized backoff is the leaderless way to get one often enough).
//!
//! A node's own acceptor answers its own proposer directly, but by the same rule: its promise
//! and acceptance count only once the write they depend on is durable.
//!
//! # The event loop
//! The same face as the Multi-Paxos [`Replica`](crate::Replica): feed [`Node::tick`],
//! [`Node::step`] and [`Node::propose`]; whenever [`Node::has_ready`] says so, take a numbered
//! [`Ready`] and drain it in this order:
//! 1. [`Ready::take_messages`]: send now (Nacks, Accepts, Decided: nothing that needs a write);
//! 2. [`Ready::persist`]: if `Some`, write the [`DurableState`] record, replacing the previous
//!    one, and sync it if [`Ready::must_sync`];
//! 3. [`Ready::take_persisted_messages`]: send only once the write is durable (Promises,
//!    Accepteds, and the Prepares of a new ballot);
//! 4. [`Ready::take_events`]: [`Event::Chosen`] carries the outcome;
//! 5. [`Node::advance`] (or [`Node::on_persisted`] when the write completes later, in order).
//!
//! Three nodes choosing a value:
//!
//! ```
//! use bytes::Bytes;
//! use synod::paxos::{Config, DurableState, Event, InstanceId, Message, Node};
//! use synod::NodeId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let members = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let instance = InstanceId(42);
//! let mut nodes = Vec::new();
//! let mut disks: Vec<DurableState> = Vec::new(); // each node's last durable record
//! for id in &members {
//!     let config = Config::new(instance, *id, members.clone());
//!     nodes.push(Node::new(config, DurableState::default())?); // or the recovered record
//!     disks.push(DurableState::default());
//! }
//!
//! // Two nodes propose different values at once: exactly one of them is chosen.
//! nodes[0].propose(Bytes::from_static(b"commit"))?;
//! nodes[2].propose(Bytes::from_static(b"abort"))?;
//!
//! let mut network: Vec<Message> = Vec::new();
//! for _round in 0..1_000 {
//!     for (index, node) in nodes.iter_mut().enumerate() {
//!         node.tick(); // time is ticks: phase timeouts and backoff count them
//!         while node.has_ready() {
//!             let mut ready = node.ready();
//!             network.extend(ready.take_messages()); // safe before the write
//!             if let Some(state) = ready.persist() {
//!                 disks[index] = state.clone(); // write (and fsync if ready.must_sync())
//!             }
//!             network.extend(ready.take_persisted_messages()); // only once durable
//!             for event in ready.take_events() {
//!                 if let Event::Chosen { value } = event {
//!                     println!("{} learned {:?}", node.id(), value);
//!                 }
//!             }
//!             node.advance(ready)?; // this node's ready, acknowledged in order
//!         }
//!     }
//!     for message in std::mem::take(&mut network) {
//!         let to = nodes.iter().position(|node| node.id() == message.to).unwrap();
//!         nodes[to].step(message)?; // bad input is an Err, never a panic
//!     }
//!     if nodes.iter().all(|node| node.chosen().is_some()) {
//!         break;
//!     }
//! }
//! let chosen = nodes[0].chosen().expect("chosen").clone();
//! assert!(chosen == "commit" || chosen == "abort");
//! assert!(nodes.iter().all(|node| node.chosen() == Some(&chosen)));
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//! Bad input from the network is a [`StepError`] and leaves the node unchanged; a refused
//! proposal is a [`ProposeError`] that hands the value back; an invalid [`Config`] or recovered
//! state is a [`ConfigError`](crate::ConfigError); an acknowledgement of a ready that was not
//! handed out, out of order or from another node is an [`AcknowledgeError`].

mod acceptor;
mod config;
mod error;
mod learner;
mod message;
mod node;
mod proposer;
mod ready;

/// Re-exported for convenience: the error of [`Node::advance`] and [`Node::on_persisted`].
pub use crate::error::AcknowledgeError;
pub use config::Config;
#[doc(hidden)]
pub use config::FaultInjection;
pub use error::{ProposeError, StepError};
pub use message::{Body, Message};
pub use node::{Node, ROUND_MAX};
pub use proposer::ProposerPhase;
pub use ready::{Event, Ready};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Re-exported for convenience: the ballot and node id types of the whole crate.
pub use crate::types::{Ballot, NodeId};

/// Names one Paxos instance. The application picks it (a transaction id, a key's hash, ...);
/// every member of the instance must use the same one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct InstanceId(pub u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "i{}", self.0)
    }
}

/// A proposal: a value in a ballot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proposal {
    /// The ballot it was proposed in.
    pub ballot: Ballot,
    /// The value.
    pub value: Bytes,
}

/// What a [`Node`] must keep durable: its acceptor's state, its proposer's highest round and
/// the chosen value. Every [`Ready`] that changes it carries the whole record; write it,
/// replacing the previous one, and give the last one written to [`Node::new`] after a restart.
///
/// `promised` and `accepted` must be durable before the Promise or Accepted that reveals them
/// is sent, and `proposer_round` before a Prepare of that round: [`Ready`] holds those messages
/// back for exactly that reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DurableState {
    /// The highest ballot the acceptor has promised: it accepts nothing below it.
    pub promised: Ballot,
    /// The highest-ballot proposal the acceptor has accepted; its ballot is at most `promised`.
    pub accepted: Option<Proposal>,
    /// The highest round the node's proposer has used; it never uses a round at or below it
    /// again.
    pub proposer_round: u64,
    /// The chosen value, once learned. Recording it needs no sync (it can be learned again).
    pub chosen: Option<Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_display_with_an_i() {
        assert_eq!(InstanceId(7).to_string(), "i7");
    }
}
