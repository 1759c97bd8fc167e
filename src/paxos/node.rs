//! The [`Node`]: one member of one Paxos instance — acceptor, learner and (on demand) proposer
//! — behind the crate's sans-IO face.

use super::acceptor::{AcceptReply, Acceptor, PrepareReply};
use super::learner::{Conflict, Learner};
use super::proposer::{Proposer, ProposerPhase, TickOutcome};
use super::{
    Body, Config, DurableState, Event, InstanceId, Message, Proposal, ProposeError, Ready,
    StepError,
};
use crate::error::{AcknowledgeError, ConfigError};
use crate::types::{Ballot, Lineage, NodeId};
use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// The highest ballot round a node accepts from a peer or from its storage: far beyond any
/// real number of retries, and far enough below `u64::MAX` that a node always has a next
/// round to propose with.
pub const ROUND_MAX: u64 = 1 << 62;

/// A vote of this node's own acceptor for its own proposer or learner, counted only once the
/// write it depends on is durable (the same rule as for a remote acceptor's reply).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SelfVote {
    /// The own acceptor promised `ballot`, reporting `accepted`.
    Promise {
        ballot: Ballot,
        accepted: Option<Proposal>,
    },
    /// The own acceptor accepted `value` in `ballot`.
    Accepted { ballot: Ballot, value: Bytes },
}

/// The seeded RNG, compared and hashed by its seed and position so that a [`Node`] is `Eq` and
/// `Hash` (a model checker explores node states).
#[derive(Clone, Debug)]
struct SeededRng(ChaCha8Rng);

impl PartialEq for SeededRng {
    fn eq(&self, other: &SeededRng) -> bool {
        self.0.get_seed() == other.0.get_seed() && self.0.get_word_pos() == other.0.get_word_pos()
    }
}

impl Eq for SeededRng {}

impl std::hash::Hash for SeededRng {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.get_seed().hash(state);
        self.0.get_word_pos().hash(state);
    }
}

/// The node's stamps ([`Lineage`]), left out of its `Eq` and `Hash`: they name the value in
/// memory, not the state (two nodes built from the same inputs are equal, and a model checker
/// must see them so).
#[derive(Clone, Debug)]
struct OriginStamp(Lineage);

impl PartialEq for OriginStamp {
    fn eq(&self, _other: &OriginStamp) -> bool {
        true
    }
}

impl Eq for OriginStamp {}

impl std::hash::Hash for OriginStamp {
    fn hash<H: std::hash::Hasher>(&self, _state: &mut H) {}
}

/// One member of one single-decree Paxos instance: acceptor, learner and, once
/// [`propose`](Node::propose) is called, proposer. See the [module documentation](super) for
/// the protocol and the event loop.
///
/// Inputs: [`tick`](Node::tick), [`step`](Node::step), [`propose`](Node::propose), and write
/// acknowledgements ([`advance`](Node::advance) / [`on_persisted`](Node::on_persisted)).
/// Outputs: numbered [`Ready`] batches, drained in the order [`Ready`] documents.
///
/// `Clone`, `Eq` and `Hash` cover the whole state (the RNG by its seed and position), so a
/// model checker can explore node states and a test can fork one.
/// A fork shares its parent's history: each [`advance`]s the readies taken before the fork was
/// made, but only its own afterwards (see [`AcknowledgeError::ForeignReady`]).
///
/// [`advance`]: Node::advance
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    config: Config,
    /// Sorted member ids; a member's index is its bit in vote sets.
    members: Vec<NodeId>,
    /// This node's index in `members`.
    self_index: usize,
    rng: SeededRng,

    acceptor: Acceptor,
    proposer: Proposer,
    learner: Learner,
    /// The highest round this node's proposer has used; durable before any ballot of it is
    /// revealed, so a restarted proposer never reuses a ballot (*Paxos Made Simple* §2.4).
    proposer_round: u64,
    /// The highest round seen in any ballot; the next ballot goes above it.
    round_seen: u64,
    /// The durable state changed since the last ready.
    durable_dirty: bool,
    /// The change includes a promise, an acceptance or a proposer round: sync it.
    durable_needs_sync: bool,

    // Output, gathered until the next `ready()`.
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    events: Vec<Event>,
    pending_self_votes: Vec<SelfVote>,
    /// Self votes waiting for the write of the ready numbered with them.
    self_votes: VecDeque<(u64, SelfVote)>,
    ready_number: u64,
    persisted_number: u64,
    /// Messages refused since start.
    dropped_messages: u64,
    /// Stamped on every ready, so that `advance` refuses a ready made by another node.
    origin: OriginStamp,
}

impl Node {
    /// Creates a node from its configuration and the last [`DurableState`] its storage holds
    /// (`DurableState::default()` for a fresh node).
    ///
    /// A recovered node keeps its promise, its accepted proposal and the chosen value, and its
    /// proposer starts above every round it used before; a proposal in progress at the crash is
    /// not resumed (propose again: if a value was chosen meanwhile, the new ballot adopts it).
    ///
    /// # Errors
    /// A [`ConfigError`] if the configuration is invalid, or if `recovered` is inconsistent
    /// (field `recovered`: an accepted ballot above the promise).
    pub fn new(config: Config, recovered: DurableState) -> Result<Node, ConfigError> {
        config.validate()?;
        let DurableState {
            promised,
            accepted,
            proposer_round,
            chosen,
        } = recovered;
        if accepted.as_ref().is_some_and(|a| a.ballot > promised) {
            return Err(ConfigError::new(
                "recovered",
                "the accepted ballot is above the promise",
            ));
        }
        if promised.round > ROUND_MAX || proposer_round > ROUND_MAX {
            return Err(ConfigError::new(
                "recovered",
                "a round beyond ROUND_MAX (no real node gets there)",
            ));
        }
        let mut members = config.members.clone();
        members.sort_unstable();
        let self_index = members
            .binary_search(&config.id)
            .expect("validated: id is a member");
        let round_seen = promised
            .round
            .max(proposer_round)
            .max(accepted.as_ref().map_or(0, |a| a.ballot.round));
        // Mixing the round in gives every incarnation that proposed its own backoff sequence.
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ proposer_round.rotate_left(32));
        Ok(Node {
            members,
            self_index,
            rng: SeededRng(rng),
            acceptor: Acceptor::new(promised, accepted, config.fault_injection),
            proposer: Proposer::new(config.members.len(), config.fault_injection),
            learner: Learner::new(config.members.len(), chosen),
            proposer_round,
            round_seen,
            durable_dirty: false,
            durable_needs_sync: false,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            events: Vec::new(),
            pending_self_votes: Vec::new(),
            self_votes: VecDeque::new(),
            ready_number: 0,
            persisted_number: 0,
            dropped_messages: 0,
            origin: OriginStamp(Lineage::new()),
            config,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The instance this node belongs to.
    pub fn instance(&self) -> InstanceId {
        self.config.instance
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The chosen value, once this node has learned it. It never changes afterwards.
    pub fn chosen(&self) -> Option<&Bytes> {
        self.learner.chosen()
    }

    /// The highest ballot this node's acceptor has promised (durable once every ready handed
    /// out so far is acknowledged).
    pub fn promised(&self) -> Ballot {
        self.acceptor.promised()
    }

    /// The highest-ballot proposal this node's acceptor has accepted.
    pub fn accepted(&self) -> Option<&Proposal> {
        self.acceptor.accepted()
    }

    /// What this node's proposer is doing.
    pub fn proposer_phase(&self) -> ProposerPhase {
        self.proposer.phase()
    }

    /// The durable state as it will be once every ready handed out so far is acknowledged
    /// (what the next write would hold).
    pub fn durable_state(&self) -> DurableState {
        DurableState {
            promised: self.acceptor.promised(),
            accepted: self.acceptor.accepted().cloned(),
            proposer_round: self.proposer_round,
            chosen: self.learner.chosen().cloned(),
        }
    }

    /// Messages refused by [`step`](Node::step) since the node started.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped_messages
    }

    /// Advances logical time by one tick. A proposer waiting for a quorum abandons its ballot
    /// after `phase_ticks` ticks, and retries with a higher ballot once its randomized backoff
    /// has elapsed. Does nothing when not proposing.
    pub fn tick(&mut self) {
        match self.proposer.tick(self.config.phase_ticks) {
            TickOutcome::Nothing => {}
            TickOutcome::TimedOut(ballot) => self.abandon(ballot, None),
            TickOutcome::Retry => self.start_prepare(),
        }
    }

    /// Proposes `value` for this instance and starts phase 1; returns the first ballot used.
    ///
    /// The proposer keeps going — retrying with higher ballots after Nacks and timeouts — until
    /// a value is chosen: its own, or one some acceptor had already accepted (P2c), which it then
    /// drives to completion. Watch for [`Event::Chosen`] or poll [`chosen`](Node::chosen).
    ///
    /// Proposing is also how a node that missed the outcome (its Accepteds and the `Decided`
    /// announcement were lost) finds it out for sure: the new ballot adopts the chosen value,
    /// and members that know it answer with `Decided`. Propose a value you can live with.
    ///
    /// # Errors
    /// [`ProposeError::AlreadyChosen`] with the outcome, [`ProposeError::InProgress`] while
    /// this node is already proposing, [`ProposeError::TooLarge`] above `value_bytes_max`. The
    /// value is handed back in each.
    pub fn propose(&mut self, value: Bytes) -> Result<Ballot, ProposeError> {
        if let Some(chosen) = self.learner.chosen() {
            let chosen = chosen.clone();
            return Err(ProposeError::AlreadyChosen { value, chosen });
        }
        if value.len() > self.config.value_bytes_max {
            let bytes = value.len();
            let bytes_max = self.config.value_bytes_max;
            return Err(ProposeError::TooLarge {
                value,
                bytes,
                bytes_max,
            });
        }
        if self.proposer.is_active() {
            return Err(ProposeError::InProgress { value });
        }
        self.proposer.set_value(value);
        self.start_prepare();
        Ok(self.proposer.ballot().expect("phase 1 just started"))
    }

    /// Handles a message from a peer.
    ///
    /// # Errors
    /// A [`StepError`] if the message is for another instance or node, not from a member, from
    /// this node itself, or breaks a protocol invariant. The node's state is unchanged then
    /// (only [`dropped_messages`](Node::dropped_messages) counts it).
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        let voter = match self.validate(&message) {
            Ok(voter) => voter,
            Err(error) => {
                self.dropped_messages += 1;
                tracing::debug!(node = %self.config.id, %error, "refused paxos message");
                return Err(error);
            }
        };
        let Message { from, body, .. } = message;
        match body {
            Body::Prepare { ballot } => self.on_prepare(from, ballot),
            Body::Promise { ballot, accepted } => self.on_promise(voter, ballot, accepted),
            Body::Accept { ballot, value } => self.on_accept(from, ballot, value),
            Body::Accepted { ballot, value } => self.on_accepted(voter, ballot, value),
            Body::Nack { ballot, promised } => self.on_nack(ballot, promised),
            Body::Decided { value } => self.on_decided(value),
        }
        Ok(())
    }

    /// Checks that `message` is for this instance and node, from another member, and
    /// consistent with what this node knows. Returns the sender's member index.
    fn validate(&self, message: &Message) -> Result<usize, StepError> {
        if message.instance != self.config.instance {
            return Err(StepError::WrongInstance {
                found: message.instance,
                this: self.config.instance,
            });
        }
        if message.to != self.config.id {
            return Err(StepError::WrongRecipient {
                to: message.to,
                this: self.config.id,
            });
        }
        let from = message.from;
        let Some(voter) = self.member_index(from) else {
            return Err(StepError::UnknownNode(from));
        };
        if voter == self.self_index {
            return Err(StepError::FromSelf(from));
        }
        let kind = message.body.kind();
        let malformed = |reason| StepError::Malformed { from, kind, reason };
        let value_bytes_max = self.config.value_bytes_max;
        match &message.body {
            Body::Prepare { ballot } | Body::Accept { ballot, .. } => {
                if ballot.node != from {
                    return Err(malformed("ballot owned by another node than the sender"));
                }
            }
            Body::Promise { ballot, .. } | Body::Nack { ballot, .. }
                if ballot.node != self.config.id =>
            {
                return Err(malformed("answers a ballot this node does not own"));
            }
            Body::Promise { ballot, accepted } => {
                if accepted.as_ref().is_some_and(|a| a.ballot > *ballot) {
                    return Err(malformed("reports an accepted ballot above the promise"));
                }
                if accepted
                    .as_ref()
                    .is_some_and(|a| a.value.len() > value_bytes_max || a.ballot.round == 0)
                {
                    return Err(malformed("reports an impossible accepted proposal"));
                }
            }
            Body::Nack { ballot, promised } => {
                if promised <= ballot {
                    return Err(malformed("the promise is not above the refused ballot"));
                }
            }
            Body::Accepted { .. } | Body::Decided { .. } => {}
        }
        match &message.body {
            Body::Prepare { ballot }
            | Body::Promise { ballot, .. }
            | Body::Accept { ballot, .. }
            | Body::Accepted { ballot, .. }
            | Body::Nack { ballot, .. } => {
                if ballot.round == 0 {
                    return Err(malformed("round 0 is below every real ballot"));
                }
            }
            Body::Decided { .. } => {}
        }
        // Rounds far beyond any real retry count would leave no next round to propose with.
        let highest_round = match &message.body {
            Body::Prepare { ballot }
            | Body::Accept { ballot, .. }
            | Body::Accepted { ballot, .. } => ballot.round,
            Body::Promise { ballot, accepted } => ballot
                .round
                .max(accepted.as_ref().map_or(0, |a| a.ballot.round)),
            Body::Nack { ballot, promised } => ballot.round.max(promised.round),
            Body::Decided { .. } => 0,
        };
        if highest_round > ROUND_MAX {
            return Err(malformed("round beyond ROUND_MAX"));
        }
        match &message.body {
            Body::Accept { ballot, value } | Body::Accepted { ballot, value } => {
                if value.len() > value_bytes_max {
                    return Err(malformed("value exceeds value_bytes_max"));
                }
                let own = self.acceptor.accepted();
                if own.is_some_and(|own| own.ballot == *ballot && own.value != *value)
                    || self.learner.check_accepted(*ballot, value) == Err(Conflict::BallotValue)
                {
                    return Err(malformed("another value is known for this ballot"));
                }
            }
            Body::Decided { value } => {
                if value.len() > value_bytes_max {
                    return Err(malformed("value exceeds value_bytes_max"));
                }
                if self.learner.chosen().is_some_and(|chosen| chosen != value) {
                    return Err(malformed("another value is known chosen"));
                }
            }
            _ => {}
        }
        Ok(voter)
    }

    /// True if [`ready`](Node::ready) has anything to hand out.
    pub fn has_ready(&self) -> bool {
        self.durable_dirty
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || !self.events.is_empty()
            || !self.pending_self_votes.is_empty()
    }

    /// Takes the next batch of work. Call it when [`has_ready`](Node::has_ready) is true (an
    /// empty batch is harmless), handle it in the order [`Ready`] documents, then acknowledge
    /// it.
    pub fn ready(&mut self) -> Ready {
        self.ready_number += 1;
        let number = self.ready_number;
        for vote in self.pending_self_votes.drain(..) {
            self.self_votes.push_back((number, vote));
        }
        let write = self.durable_dirty.then(|| self.durable_state());
        let must_sync = self.durable_needs_sync;
        self.durable_dirty = false;
        self.durable_needs_sync = false;
        Ready {
            number,
            origin: self.origin.0.stamp(number),
            write,
            must_sync,
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            events: std::mem::take(&mut self.events),
        }
    }

    /// Acknowledges a ready whose write is durable and whose messages were handed to the
    /// transport. Same as `on_persisted(ready.number())`, once the ready is known to be this
    /// node's.
    ///
    /// # Errors
    /// [`AcknowledgeError::ForeignReady`] if another node made `ready` (or it is a
    /// `Ready::default()`); otherwise as [`on_persisted`](Node::on_persisted). Nothing is
    /// acknowledged then.
    pub fn advance(&mut self, ready: Ready) -> Result<(), AcknowledgeError> {
        if !self.origin.0.accepts(ready.origin, ready.number) {
            return Err(AcknowledgeError::ForeignReady {
                number: ready.number,
            });
        }
        self.on_persisted(ready.number)
    }

    /// Tells the node that the writes of every ready up to `number` are durable, so its own
    /// acceptor's promises and acceptances count from now on. Acknowledging the same number
    /// again does nothing.
    ///
    /// # Errors
    /// [`AcknowledgeError::NeverHandedOut`] if no ready with `number` was handed out yet;
    /// [`AcknowledgeError::OutOfOrder`] if `number` is lower than a number already
    /// acknowledged (writes must complete in order). Nothing is acknowledged then.
    pub fn on_persisted(&mut self, number: u64) -> Result<(), AcknowledgeError> {
        AcknowledgeError::check(number, self.ready_number, self.persisted_number)?;
        self.persisted_number = number;
        self.origin.0.acknowledged(number);
        while let Some((vote_number, _)) = self.self_votes.front() {
            if *vote_number > number {
                break;
            }
            let (_, vote) = self.self_votes.pop_front().expect("front exists");
            let own = self.self_index;
            match vote {
                SelfVote::Promise { ballot, accepted } => self.on_promise(own, ballot, accepted),
                SelfVote::Accepted { ballot, value } => self.on_accepted(own, ballot, value),
            }
        }
        Ok(())
    }

    // ---- acceptor ----

    /// Phase 1b: promise (released after the write) or refuse.
    fn on_prepare(&mut self, from: NodeId, ballot: Ballot) {
        self.see(ballot);
        let before = self.acceptor.promised();
        match self.acceptor.on_prepare(ballot) {
            PrepareReply::Promise { accepted } => {
                self.mark_durable_changed(before != self.acceptor.promised(), true);
                self.send_after_persist(from, Body::Promise { ballot, accepted });
            }
            PrepareReply::Nack { promised } => self.send(from, Body::Nack { ballot, promised }),
        }
        self.tell_chosen(from);
    }

    /// Phase 2b: accept (the acceptance goes to every learner after the write) or refuse.
    fn on_accept(&mut self, from: NodeId, ballot: Ballot, value: Bytes) {
        self.see(ballot);
        self.accept_locally(ballot, value, Some(from));
        self.tell_chosen(from);
    }

    /// Runs an Accept through this node's acceptor; `from` is the remote proposer to Nack,
    /// `None` when the proposer is this node.
    fn accept_locally(&mut self, ballot: Ballot, value: Bytes, from: Option<NodeId>) {
        let before = (self.acceptor.promised(), self.acceptor.accepted().cloned());
        match self.acceptor.on_accept(ballot, value.clone()) {
            AcceptReply::Accepted => {
                let changed = before.0 != self.acceptor.promised()
                    || before.1.as_ref() != self.acceptor.accepted();
                self.mark_durable_changed(changed, true);
                for index in 0..self.members.len() {
                    if index != self.self_index {
                        let body = Body::Accepted {
                            ballot,
                            value: value.clone(),
                        };
                        self.send_after_persist(self.members[index], body);
                    }
                }
                self.pending_self_votes
                    .push(SelfVote::Accepted { ballot, value });
            }
            AcceptReply::Nack { promised } => match from {
                Some(from) => self.send(from, Body::Nack { ballot, promised }),
                None => self.on_nack(ballot, promised),
            },
        }
    }

    /// A member that knows the chosen value tells a proposer still at work.
    fn tell_chosen(&mut self, to: NodeId) {
        if let Some(value) = self.learner.chosen() {
            let value = value.clone();
            self.send(to, Body::Decided { value });
        }
    }

    // ---- proposer ----

    /// Starts phase 1 with a ballot above every ballot seen. The Prepares wait for the write of
    /// the new round: a proposer must never reuse a ballot, even across a crash.
    fn start_prepare(&mut self) {
        if self.learner.chosen().is_some() {
            self.proposer.finish();
            return;
        }
        let round = self
            .round_seen
            .max(self.proposer_round)
            .max(self.acceptor.promised().round)
            .checked_add(1)
            .expect("ballot rounds do not run out (2^64 retries)");
        self.proposer_round = round;
        self.round_seen = round;
        self.mark_durable_changed(true, true);
        let ballot = Ballot::new(round, self.config.id);
        self.proposer.prepare(ballot);
        tracing::debug!(node = %self.config.id, instance = %self.config.instance, %ballot, "prepare");
        self.events.push(Event::Preparing { ballot });
        for index in 0..self.members.len() {
            if index != self.self_index {
                self.send_after_persist(self.members[index], Body::Prepare { ballot });
            }
        }
        match self.acceptor.on_prepare(ballot) {
            PrepareReply::Promise { accepted } => {
                // The raised promise goes out with the round, already marked for a synced write.
                self.pending_self_votes
                    .push(SelfVote::Promise { ballot, accepted });
            }
            // Unreachable while the round is above the own promise; handled all the same.
            PrepareReply::Nack { promised } => self.on_nack(ballot, promised),
        }
    }

    /// A promise from acceptor `voter` (this node's own once durable).
    fn on_promise(&mut self, voter: usize, ballot: Ballot, accepted: Option<Proposal>) {
        self.see(ballot);
        if let Some(proposal) = &accepted {
            self.see(proposal.ballot);
        }
        let Some((proposal, adopted)) = self.proposer.on_promise(voter, ballot, accepted) else {
            return;
        };
        let Proposal { ballot, value } = proposal;
        tracing::debug!(node = %self.config.id, instance = %self.config.instance, %ballot, adopted, "accept");
        self.events.push(Event::Accepting {
            ballot,
            value: value.clone(),
            adopted,
        });
        // The ballot's round is durable (the Prepares waited for it): Accepts may go now.
        for index in 0..self.members.len() {
            if index != self.self_index {
                let body = Body::Accept {
                    ballot,
                    value: value.clone(),
                };
                self.send(self.members[index], body);
            }
        }
        self.accept_locally(ballot, value, None);
    }

    /// A refusal: if it is for the current ballot, abandon it.
    fn on_nack(&mut self, ballot: Ballot, promised: Ballot) {
        self.see(promised);
        if self.proposer.on_nack(ballot) {
            self.abandon(ballot, Some(promised));
        }
    }

    /// Abandons `ballot` and backs off for a random number of ticks, drawn from a window that
    /// doubles with every retry (up to `backoff_ticks_max`), so duelling proposers drift apart
    /// and one of them completes both phases alone.
    fn abandon(&mut self, ballot: Ballot, promised: Option<Ballot>) {
        let doublings = self.proposer.retries().min(32);
        let window = (u64::from(self.config.backoff_ticks_initial) << doublings)
            .min(u64::from(self.config.backoff_ticks_max));
        let backoff_ticks = 1 + (self.rng.0.next_u64() % window) as u32;
        tracing::debug!(node = %self.config.id, instance = %self.config.instance, %ballot, backoff_ticks, "abandon");
        self.proposer.back_off(backoff_ticks);
        self.events.push(Event::Abandoned {
            ballot,
            promised,
            backoff_ticks,
        });
    }

    // ---- learner ----

    /// Acceptor `voter` accepted `value` in `ballot` (this node's own once durable).
    fn on_accepted(&mut self, voter: usize, ballot: Ballot, value: Bytes) {
        self.see(ballot);
        match self.learner.on_accepted(voter, ballot, value) {
            Ok(Some(value)) => self.on_chosen(value),
            Ok(None) => {}
            // Only a peer that broke the protocol gets here (validation caught remote ones).
            Err(conflict) => {
                tracing::warn!(node = %self.config.id, ?conflict, %ballot, "conflicting own vote")
            }
        }
    }

    fn on_decided(&mut self, value: Bytes) {
        if let Ok(Some(value)) = self.learner.on_decided(value) {
            self.on_chosen(value);
        }
    }

    /// Learned the chosen value. A proposer still at work stops and announces the value to
    /// every other member: some may have missed the Accepteds (lost, or sent before they
    /// restarted), and a proposer is what set them waiting.
    fn on_chosen(&mut self, value: Bytes) {
        tracing::debug!(node = %self.config.id, instance = %self.config.instance, "chosen");
        self.mark_durable_changed(true, false);
        if self.proposer.is_active() {
            self.proposer.finish();
            for index in 0..self.members.len() {
                if index != self.self_index {
                    let body = Body::Decided {
                        value: value.clone(),
                    };
                    self.send(self.members[index], body);
                }
            }
        }
        self.events.push(Event::Chosen { value });
    }

    // ---- helpers ----

    fn member_index(&self, id: NodeId) -> Option<usize> {
        self.members.binary_search(&id).ok()
    }

    /// Raises the round to beat.
    fn see(&mut self, ballot: Ballot) {
        self.round_seen = self.round_seen.max(ballot.round);
    }

    fn mark_durable_changed(&mut self, changed: bool, must_sync: bool) {
        if changed {
            self.durable_dirty = true;
            self.durable_needs_sync |= must_sync;
        }
    }

    fn send(&mut self, to: NodeId, body: Body) {
        self.messages.push(self.message(to, body));
    }

    fn send_after_persist(&mut self, to: NodeId, body: Body) {
        let message = self.message(to, body);
        self.persisted_messages.push(message);
    }

    fn message(&self, to: NodeId, body: Body) -> Message {
        debug_assert_ne!(to, self.config.id, "a node never messages itself");
        Message {
            instance: self.config.instance,
            from: self.config.id,
            to,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    /// Node states are compared and hashed (the model checker deduplicates them), so two
    /// generators are equal exactly when seed and position are.
    #[test]
    fn seeded_generators_are_equal_by_seed_and_position() {
        let hasher = RandomState::new();
        let fresh = |seed| SeededRng(ChaCha8Rng::seed_from_u64(seed));
        let (a, b) = (fresh(1), fresh(1));
        assert_eq!(a, b);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        assert_ne!(fresh(1), fresh(2), "different seeds, same position");
        let mut advanced = fresh(1);
        advanced.0.next_u64();
        assert_ne!(a, advanced, "same seed, different positions");
        assert_ne!(hasher.hash_one(&a), hasher.hash_one(&advanced));
        let mut other = fresh(2);
        other.0.next_u64();
        assert_ne!(advanced, other);
    }
}
