//! The batch of work a [`Node`](super::Node) hands the application: [`Ready`], and the
//! [`Event`]s in it.

use super::{DurableState, Message};
use crate::types::{Ballot, Origin};
use bytes::Bytes;

/// Something that happened inside the node that the application may want to know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// This node's proposer started phase 1 with `ballot`.
    Preparing {
        /// The new ballot.
        ballot: Ballot,
    },
    /// This node's proposer won phase 1 and asks the acceptors to accept `value` in `ballot`.
    /// `adopted` is true when `value` is not the one proposed here but the highest-ballot
    /// value a promise reported (P2c): then another value may win, never a third.
    Accepting {
        /// The ballot.
        ballot: Ballot,
        /// The value proposed in it.
        value: Bytes,
        /// True if `value` was adopted from a promise.
        adopted: bool,
    },
    /// This node's proposer abandoned `ballot`: an acceptor had promised `promised` (a Nack),
    /// or no quorum answered within `phase_ticks` (`promised` is `None`). It retries with a
    /// higher ballot after `backoff_ticks`.
    Abandoned {
        /// The abandoned ballot.
        ballot: Ballot,
        /// The higher promise that beat it, if one was reported.
        promised: Option<Ballot>,
        /// Ticks before the retry.
        backoff_ticks: u32,
    },
    /// This node learned the chosen value. Reported once per node lifetime: a node recovered
    /// with the value already chosen reports nothing (read [`Node::chosen`](super::Node::chosen)).
    Chosen {
        /// The chosen value; it never changes.
        value: Bytes,
    },
}

/// One numbered batch of work, produced by [`Node::ready`](super::Node::ready).
///
/// Drain it in this order:
/// 1. [`take_messages`](Ready::take_messages): send at once (safe before the write);
/// 2. [`persist`](Ready::persist): if `Some`, write it durably, replacing the previous record
///    (sync it if [`must_sync`](Ready::must_sync));
/// 3. [`take_persisted_messages`](Ready::take_persisted_messages): send only once that write
///    is durable (promises, acceptances, and Prepares of a new ballot);
/// 4. [`take_events`](Ready::take_events): react to them (e.g. [`Event::Chosen`]);
/// 5. hand the ready back with [`Node::advance`](super::Node::advance), or, if the write
///    completes later, call [`Node::on_persisted`](super::Node::on_persisted) with
///    [`number`](Ready::number) when it does (writes must complete in order).
#[derive(Debug, Default)]
#[must_use = "a Ready carries messages and writes that must be handled"]
pub struct Ready {
    pub(super) number: u64,
    /// The node that made the ready (zero, which no node has, in a default one).
    pub(super) origin: Origin,
    pub(super) write: Option<DurableState>,
    pub(super) must_sync: bool,
    pub(super) messages: Vec<Message>,
    pub(super) persisted_messages: Vec<Message>,
    pub(super) events: Vec<Event>,
}

impl Ready {
    /// The batch's number: pass it to `on_persisted` once the write is durable.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The node's durable state to write, replacing the previous record, before sending the
    /// persisted messages; `None` if it did not change. Recover the node from the last record
    /// written with [`Node::new`](super::Node::new).
    pub fn persist(&self) -> Option<&DurableState> {
        self.write.as_ref()
    }

    /// True if the write must be synced (fsync) before the persisted messages go out: it
    /// changes a promise, an acceptance or a proposer ballot. A write that only records the
    /// chosen value may be lazy (the value can be learned again).
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    /// Takes the write out of the ready, for a writer that completes it later (asynchronous
    /// storage); acknowledge it with `on_persisted(number)` once durable.
    pub fn take_persist(&mut self) -> Option<DurableState> {
        self.write.take()
    }

    /// Messages that may be sent before the write (or concurrently with it).
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    /// Messages that may be sent only after the write is durable.
    pub fn take_persisted_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.persisted_messages)
    }

    /// What happened since the last ready.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}
